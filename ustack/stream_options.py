"""Per-connection options for streams on the stack, as a kernel socket has
them: TCP_NODELAY, SO_KEEPALIVE (with TCP_KEEPIDLE/KEEPINTVL/KEEPCNT),
SO_LINGER (0: close sends an RST) and TCP_CONGESTION (`StreamOptions`, the
keywords of open_connection and start_server), and the socket-like object
`get_extra_info("socket")` gives (`TcpSocketInfo`)."""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import struct
from typing import TYPE_CHECKING
from typing import Any

from ustack.tcp.connection import TcpConfig
from ustack.wire.address import is_ipv6

if TYPE_CHECKING:
    from ustack.api import TcpTransport


LINGER = struct.Struct("ii")  # struct linger: l_onoff, l_linger
# TCP_CONGESTION's names as Linux spells them, and ustack's for each.
CONGESTION_NAMES = {"reno": "newreno", "newreno": "newreno", "cubic": "cubic"}
LINUX_KEEPALIVE_IDLE = 7200.0  # tcp_keepalive_time: SO_KEEPALIVE alone waits 2 hours
# The socket options, as the (level, optname) pairs of setsockopt (the
# stream's socket-like object here, ustack.socket's sockets in sockets/).
_SOL, _TCP = socket.SOL_SOCKET, socket.IPPROTO_TCP
REUSEADDR = (_SOL, socket.SO_REUSEADDR)
REUSEPORT = (_SOL, socket.SO_REUSEPORT)
KEEPALIVE = (_SOL, socket.SO_KEEPALIVE)
BROADCAST = (_SOL, socket.SO_BROADCAST)
LINGER_OPTION = (_SOL, socket.SO_LINGER)  # its value packed as LINGER
RCVBUF = (_SOL, socket.SO_RCVBUF)
SNDBUF = (_SOL, socket.SO_SNDBUF)
SOCKET_TYPE = (_SOL, socket.SO_TYPE)  # read only
SOCKET_ERROR = (_SOL, socket.SO_ERROR)  # read only
NODELAY = (_TCP, socket.TCP_NODELAY)
KEEPIDLE = (_TCP, socket.TCP_KEEPIDLE)
KEEPINTVL = (_TCP, socket.TCP_KEEPINTVL)
KEEPCNT = (_TCP, socket.TCP_KEEPCNT)
CONGESTION = (_TCP, socket.TCP_CONGESTION)
V6ONLY = (socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)


@dataclasses.dataclass(frozen=True)
class StreamOptions:
    """Socket options of one connection (or of a server's connections), as
    open_connection and start_server take them: `nodelay` (TCP_NODELAY: Nagle
    off), `keepalive` (SO_KEEPALIVE) with `keepalive_idle`, `keepalive_interval`,
    `keepalive_count` (TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT), `linger`
    (SO_LINGER: 0 makes close() send an RST), `congestion` (TCP_CONGESTION:
    "reno" or "cubic"). None leaves the stack's default."""

    nodelay: bool | None = None
    keepalive: bool | None = None
    keepalive_idle: float | None = None
    keepalive_interval: float | None = None
    keepalive_count: int | None = None
    linger: int | None = None
    congestion: str | None = None

    def config(self, base: TcpConfig) -> TcpConfig | None:
        """The connection's TcpConfig: `base` with these options; None if none changes it."""
        changes: dict[str, Any] = {}
        if self.nodelay is not None:
            changes["nagle"] = not self.nodelay
        if self.congestion is not None:
            if self.congestion not in CONGESTION_NAMES:
                known = ", ".join(sorted(CONGESTION_NAMES))
                raise ValueError(f"unknown congestion control {self.congestion!r} ({known})")
            changes["congestion_control"] = CONGESTION_NAMES[self.congestion]
        if self.keepalive or (self.keepalive is None and self.keepalive_idle is not None):
            changes["keepalive_idle"] = self.keepalive_idle or (
                base.keepalive_idle or LINUX_KEEPALIVE_IDLE
            )
        elif self.keepalive is False:
            changes["keepalive_idle"] = None
        if self.keepalive_interval is not None:
            changes["keepalive_interval"] = self.keepalive_interval
        if self.keepalive_count is not None:
            changes["keepalive_probes"] = self.keepalive_count
        if self.linger is not None and self.linger < 0:
            raise ValueError("linger is a number of seconds, 0 or more")
        return dataclasses.replace(base, **changes) if changes else None


class TcpSocketInfo:
    """What get_extra_info("socket") gives, as asyncio's TransportSocket
    does for a kernel socket: family, type, proto, getsockname, getpeername,
    and getsockopt / setsockopt for the options ustack has per connection
    (TCP_NODELAY, SO_KEEPALIVE, TCP_KEEPIDLE/KEEPINTVL/KEEPCNT, SO_LINGER,
    TCP_CONGESTION; SO_TYPE, SO_ERROR, SO_SNDBUF, SO_RCVBUF to read).
    Others: OSError ENOPROTOOPT, as the kernel answers an unknown option."""

    type = socket.SOCK_STREAM
    proto = socket.IPPROTO_TCP

    def __init__(self, transport: TcpTransport) -> None:
        self._transport = transport
        remote = transport._key[0]
        self.family = socket.AF_INET6 if is_ipv6(remote) else socket.AF_INET

    def __repr__(self) -> str:
        return (
            f"<ustack TcpSocketInfo family={self.family!r} laddr={self.getsockname()} "
            f"raddr={self.getpeername()}>"
        )

    def fileno(self) -> int:
        return -1  # no file descriptor: the connection lives in the stack

    def getsockname(self) -> Any:
        return self._transport.get_extra_info("sockname")

    def getpeername(self) -> Any:
        return self._transport.get_extra_info("peername")

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> int | bytes:
        conn = self._transport._conn
        config = conn.config
        value: int | bytes
        option = (level, optname)
        if option == CONGESTION:
            name = "reno" if config.congestion_control == "newreno" else config.congestion_control
            return name.encode().ljust(buflen or 16, b"\0")[: buflen or 16]
        if option == LINGER_OPTION:
            linger = self._transport.linger
            packed = LINGER.pack(linger is not None, linger or 0)
            return packed if buflen else int(linger is not None)
        if option == NODELAY:
            value = int(conn.sender.nodelay)
        elif option == KEEPIDLE:
            value = int(config.keepalive_idle or LINUX_KEEPALIVE_IDLE)
        elif option == KEEPINTVL:
            value = int(config.keepalive_interval)
        elif option == KEEPCNT:
            value = config.keepalive_probes
        elif option == KEEPALIVE:
            value = int(config.keepalive_idle is not None)
        elif option == SOCKET_TYPE:
            value = socket.SOCK_STREAM
        elif option == SOCKET_ERROR:
            value = 0
        elif option == SNDBUF:
            value = config.send_buffer
        elif option == RCVBUF:
            value = config.receive_buffer
        else:
            raise OSError(errno.ENOPROTOOPT, os.strerror(errno.ENOPROTOOPT))
        return value.to_bytes(4, "little") if buflen else value

    def setsockopt(self, level: int, optname: int, value: int | bytes) -> None:
        transport = self._transport
        conn, now = transport._conn, transport._runner.now()
        config = conn.config
        number = int.from_bytes(value[:4], "little") if isinstance(value, bytes) else value
        option = (level, optname)
        keepalive = (config.keepalive_idle, config.keepalive_interval, config.keepalive_probes)
        if option == NODELAY:
            conn.set_nodelay(bool(number), now)  # (what Nagle held goes now, as Linux)
        elif option == LINGER_OPTION:
            if isinstance(value, bytes):
                onoff, seconds = LINGER.unpack(value[: LINGER.size])
            else:
                onoff, seconds = int(bool(value)), 0
            transport.linger = seconds if onoff else None
            return
        elif option == KEEPALIVE:
            idle = (config.keepalive_idle or LINUX_KEEPALIVE_IDLE) if number else None
            conn.set_keepalive(idle, keepalive[1], keepalive[2], now)
        elif option == KEEPIDLE:
            conn.set_keepalive(float(number), keepalive[1], keepalive[2], now)
        elif option == KEEPINTVL:
            conn.config = dataclasses.replace(config, keepalive_interval=float(number))
        elif option == KEEPCNT:
            conn.config = dataclasses.replace(config, keepalive_probes=number)
        elif option == CONGESTION:
            # ustack's congestion control is chosen when the connection opens.
            raise OSError(errno.EISCONN, "congestion control is chosen at open (congestion=)")
        else:
            raise OSError(errno.ENOPROTOOPT, os.strerror(errno.ENOPROTOOPT))
        transport._runner.done(conn)
