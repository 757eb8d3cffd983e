"""A `ustack.socket` socket's options (setsockopt/getsockopt: the common
SOL_SOCKET, IPPROTO_TCP and IPV6_V6ONLY ones, live on an open connection)
and its files (makefile), as `SocketOptions`, UstackSocket's base."""

from __future__ import annotations

import errno
import io
import socket as _socket
from socket import (
    AF_INET6,
    IPPROTO_IPV6,
    IPPROTO_TCP,
    IPV6_V6ONLY,
    SO_ERROR,
    SO_KEEPALIVE,
    SO_LINGER,
    SO_RCVBUF,
    SO_REUSEADDR,
    SO_REUSEPORT,
    SO_SNDBUF,
    SO_TYPE,
    SOCK_STREAM,
    SOL_SOCKET,
    TCP_KEEPCNT,
    TCP_KEEPIDLE,
    TCP_KEEPINTVL,
    TCP_NODELAY,
)
from typing import TYPE_CHECKING, Any

from ustack.sockets.loop_side import StreamState, on_loop, oserror
from ustack.stream_options import LINGER, StreamOptions

if TYPE_CHECKING:
    from ustack.socket import SocketStack


class SocketOptions:
    """setsockopt, getsockopt and makefile of a UstackSocket."""

    if TYPE_CHECKING:  # what UstackSocket keeps and these use
        family: int
        type: int
        _stack: SocketStack
        _options: dict[tuple[int, int], Any]
        _stream: StreamState | None
        _io_refs: int

        def _check_open(self) -> None: ...

    def _stream_options(self) -> tuple[StreamOptions, int | None]:
        opts = self._options
        linger = opts.get((SOL_SOCKET, SO_LINGER))
        seconds = None if linger is None or not linger[0] else linger[1]
        options = StreamOptions(
            nodelay=bool(opts[IPPROTO_TCP, TCP_NODELAY])
            if (IPPROTO_TCP, TCP_NODELAY) in opts
            else None,
            keepalive=bool(opts[SOL_SOCKET, SO_KEEPALIVE])
            if (SOL_SOCKET, SO_KEEPALIVE) in opts
            else None,
            keepalive_idle=opts.get((IPPROTO_TCP, TCP_KEEPIDLE)),
            keepalive_interval=opts.get((IPPROTO_TCP, TCP_KEEPINTVL)),
            keepalive_count=opts.get((IPPROTO_TCP, TCP_KEEPCNT)),
            linger=seconds,
        )
        return options, seconds

    # ---- options --------------------------------------------------------------------------

    def setsockopt(self, level: int, optname: int, value: Any, optlen: int | None = None) -> None:
        self._check_open()
        if (level, optname) == (SOL_SOCKET, SO_LINGER):
            if isinstance(value, int):
                onoff, seconds = int(bool(value)), 0
            else:
                onoff, seconds = LINGER.unpack(bytes(value)[: LINGER.size])
            stored: Any = (int(bool(onoff)), seconds)
        elif isinstance(value, bytes | bytearray):
            stored = int.from_bytes(bytes(value)[:4], "little")
        else:
            stored = int(value)
        known = {
            (SOL_SOCKET, SO_REUSEADDR), (SOL_SOCKET, SO_REUSEPORT), (SOL_SOCKET, SO_KEEPALIVE),
            (SOL_SOCKET, SO_LINGER), (SOL_SOCKET, SO_RCVBUF), (SOL_SOCKET, SO_SNDBUF),
            (IPPROTO_TCP, TCP_NODELAY), (IPPROTO_TCP, TCP_KEEPIDLE),
            (IPPROTO_TCP, TCP_KEEPINTVL), (IPPROTO_TCP, TCP_KEEPCNT),
            (IPPROTO_IPV6, IPV6_V6ONLY), (_socket.SOL_SOCKET, _socket.SO_BROADCAST),
        }  # fmt: skip
        if (level, optname) not in known:
            raise oserror(errno.ENOPROTOOPT)
        if level == IPPROTO_TCP and self.type != SOCK_STREAM:
            raise oserror(errno.EOPNOTSUPP)
        if (level, optname) == (IPPROTO_IPV6, IPV6_V6ONLY) and self.family != AF_INET6:
            raise oserror(errno.ENOPROTOOPT)
        self._options[level, optname] = stored
        stream = self._stream
        live = {
            (SOL_SOCKET, SO_KEEPALIVE), (IPPROTO_TCP, TCP_NODELAY), (IPPROTO_TCP, TCP_KEEPIDLE),
            (IPPROTO_TCP, TCP_KEEPINTVL), (IPPROTO_TCP, TCP_KEEPCNT), (SOL_SOCKET, SO_LINGER),
        }  # fmt: skip
        if stream is not None and stream.transport is not None and (level, optname) in live:
            transport = stream.transport
            wire = LINGER.pack(*stored) if optname == SO_LINGER and level == SOL_SOCKET else stored
            self._stack.call(
                on_loop(lambda: transport.get_extra_info("socket").setsockopt(level, optname, wire))
            )

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> Any:
        self._check_open()
        value: Any
        if (level, optname) == (SOL_SOCKET, SO_TYPE):
            value = self.type
        elif (level, optname) == (SOL_SOCKET, SO_ERROR):
            stream = self._stream
            value = 0
            if stream is not None and stream.error is not None:
                value, stream.error = stream.error.errno or errno.EIO, None
        elif (level, optname) in ((SOL_SOCKET, SO_RCVBUF), (SOL_SOCKET, SO_SNDBUF)):
            if (level, optname) in self._options:
                value = 2 * self._options[level, optname]  # as Linux: doubled for its bookkeeping
            else:
                config = self._stack.running.stack.tcp.config
                value = config.receive_buffer if optname == SO_RCVBUF else config.send_buffer
        elif (level, optname) == (SOL_SOCKET, SO_LINGER):
            onoff, seconds = self._options.get((level, optname), (0, 0))
            packed = LINGER.pack(onoff, seconds)
            return packed if buflen else onoff
        elif (level, optname) == (IPPROTO_IPV6, IPV6_V6ONLY):
            if self.family != AF_INET6:
                raise oserror(errno.ENOPROTOOPT)
            value = self._options.get((level, optname), 0)
        elif (level, optname) in (
            (SOL_SOCKET, SO_REUSEADDR), (SOL_SOCKET, SO_REUSEPORT), (SOL_SOCKET, SO_KEEPALIVE),
            (IPPROTO_TCP, TCP_NODELAY), (_socket.SOL_SOCKET, _socket.SO_BROADCAST),
        ):  # fmt: skip
            value = int(bool(self._options.get((level, optname), 0)))
        elif (level, optname) in ((IPPROTO_TCP, TCP_KEEPIDLE), (IPPROTO_TCP, TCP_KEEPINTVL),
                                  (IPPROTO_TCP, TCP_KEEPCNT)):  # fmt: skip
            stream = self._stream
            if stream is not None and stream.transport is not None:
                info = stream.transport.get_extra_info("socket")
                value = self._stack.call(on_loop(lambda: info.getsockopt(level, optname)))
            else:
                value = self._options.get((level, optname), 0)
        else:
            raise oserror(errno.ENOPROTOOPT)
        return int(value).to_bytes(4, "little") if buflen else value

    # ---- files ------------------------------------------------------------------------------

    def makefile(
        self,
        mode: str = "r",
        buffering: int | None = None,
        *,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> Any:
        """As socket.makefile: io's layers over a SocketIO on this socket."""
        if not set(mode) <= {"r", "w", "b"}:
            raise ValueError(f"invalid mode {mode!r} (only r, w, b allowed)")
        writing = "w" in mode
        reading = "r" in mode or not writing
        rawmode = ("r" if reading else "") + ("w" if writing else "")
        raw = _socket.SocketIO(self, rawmode)  # type: ignore[arg-type]
        self._io_refs += 1
        if buffering is None:
            buffering = -1
        if buffering < 0:
            buffering = io.DEFAULT_BUFFER_SIZE
        if buffering == 0:
            if "b" not in mode:
                raise ValueError("unbuffered streams must be binary")
            return raw
        buffer: io.BufferedIOBase
        if reading and writing:
            buffer = io.BufferedRWPair(raw, raw, buffering)
        elif reading:
            buffer = io.BufferedReader(raw, buffering)
        else:
            buffer = io.BufferedWriter(raw, buffering)
        if "b" in mode:
            return buffer
        text = io.TextIOWrapper(buffer, encoding, errors, newline)  # type: ignore[type-var]
        text.mode = mode  # type: ignore[misc]
        return text
