"""asyncio datagram endpoints on the stack: `create_datagram_endpoint`.

A UDP endpoint of the stack (net/udp.py) wrapped in an
`asyncio.DatagramTransport`, so an application's `asyncio.DatagramProtocol`
runs on ustack as it runs on `loop.create_datagram_endpoint`:

    transport, protocol = await create_datagram_endpoint(
        runner, EchoClient, remote_addr=("198.18.0.1", 9000)
    )
    transport.sendto(b"hello")

Addresses are in asyncio's shapes: (host, port) for IPv4, (host, port, 0, 0)
for IPv6. An ICMP error about a datagram a connected endpoint sent reaches
`error_received` as the OSError of its errno (ConnectionRefusedError for
port unreachable); an unconnected endpoint hears none, as on Linux.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable
from typing import Any
from typing import TypeVar

from ustack.net.udp import IPV4
from ustack.net.udp import IPV6
from ustack.net.udp import ReceivedDatagram
from ustack.net.udp import UdpEndpoint
from ustack.runner import StackRunner
from ustack.wire.address import format_address
from ustack.wire.address import is_ipv6
from ustack.wire.address import parse_address

_Protocol = TypeVar("_Protocol", bound=asyncio.BaseProtocol)

SocketAddress = tuple[str, int] | tuple[str, int, int, int]


def socket_address(address: int, port: int) -> SocketAddress:
    """As asyncio gives an address: (host, port) for IPv4, (host, port,
    flowinfo, scope_id) for IPv6 (AF_INET6's 4-tuple)."""
    if is_ipv6(address):
        return (format_address(address), port, 0, 0)
    return (format_address(address), port)


def _errno_error(name: str) -> OSError:
    """The OSError for an errno name: OSError picks the subclass itself
    (ECONNREFUSED makes a ConnectionRefusedError)."""
    code = getattr(errno, name, errno.EIO)
    return OSError(code, os.strerror(code))


class UdpTransport(asyncio.DatagramTransport):
    """One stack UDP endpoint as an asyncio datagram transport."""

    def __init__(
        self, runner: StackRunner, endpoint: UdpEndpoint, protocol: asyncio.DatagramProtocol
    ) -> None:
        super().__init__()
        self._runner = runner
        self._endpoint = endpoint
        self._protocol = protocol
        self._closing = False
        self._delivery_scheduled = False
        endpoint.wake = self._wake

    # ---- from the stack ---------------------------------------------------------

    def _wake(self) -> None:
        # Called from inside the stack's input: the protocol hears of it on
        # the next turn of the loop, as from a socket's reader callback.
        if not self._delivery_scheduled:
            self._delivery_scheduled = True
            self._runner.loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        self._delivery_scheduled = False
        endpoint = self._endpoint
        try:
            while not self._closing and (item := endpoint.take()) is not None:
                if isinstance(item, ReceivedDatagram):
                    self._protocol.datagram_received(
                        item.data, socket_address(item.remote, item.remote_port)
                    )
                else:
                    self._protocol.error_received(_errno_error(item.error))
        finally:
            # A protocol that raised (the loop reports it) still hears the rest:
            # the stack wakes us only when the queue stops being empty.
            if endpoint.queue and not self._closing:
                self._wake()

    # ---- the application's calls ------------------------------------------------

    def sendto(self, data: Any, addr: Any = None) -> None:
        """One datagram to `addr` ((host, port) or AF_INET6's 4-tuple), or to
        the connected peer. As asyncio's: a ValueError for another address
        than the peer's, and an OSError of the send (EMSGSIZE...) goes to
        error_received."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__}")
        if self._closing:
            return
        endpoint = self._endpoint
        remote: int | None = None
        port = 0
        if addr is not None:
            remote, port = parse_address(addr[0]), int(addr[1])
            if endpoint.remote is not None and (remote, port) != (
                endpoint.remote,
                endpoint.remote_port,
            ):
                raise ValueError(
                    f"Invalid address: must be None or {self.get_extra_info('peername')}"
                )
        runner = self._runner
        try:
            endpoint.sendto(data, runner.now(), remote, port)
        except OSError as exc:
            self._protocol.error_received(exc)
            return
        runner.done()

    def get_write_buffer_size(self) -> int:
        return 0  # a datagram goes to the link at once (or is dropped there, counted)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        endpoint = self._endpoint
        if name == "peername":
            if endpoint.remote is None:
                return default
            return socket_address(endpoint.remote, endpoint.remote_port)
        if name == "sockname":
            return self._sockname()
        if name == "ustack_endpoint":
            return endpoint
        if name == "ustack_runner":  # to open more endpoints on the same stack
            return self._runner
        return default

    def _sockname(self) -> SocketAddress:
        endpoint = self._endpoint
        if endpoint.local is not None:
            return socket_address(endpoint.local, endpoint.local_port)
        if endpoint.remote is not None:
            # Connected: the address it sends from, as getsockname() says
            # once connect() has chosen the route.
            udp = endpoint.layer
            source = udp.address6 if is_ipv6(endpoint.remote) else udp.address
            assert source is not None
            return socket_address(source, endpoint.local_port)
        if IPV6 in endpoint.families:
            return ("::", endpoint.local_port, 0, 0)
        return ("0.0.0.0", endpoint.local_port)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._endpoint.close()
        self._runner.loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()  # nothing is buffered: the same as close

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.DatagramProtocol)
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


def _family_of(host: str | None, family: int) -> int | None:
    """The endpoint's family: 4, 6, or None for both (a dual-stack wildcard).
    `family` is socket's AF_INET, AF_INET6 or 0 (its constants only: the
    endpoint is the stack's, no socket is made)."""
    if family == socket.AF_INET:
        return IPV4
    if family == socket.AF_INET6:
        return IPV6
    if family:
        raise OSError(errno.EAFNOSUPPORT, f"address family {family}")
    if host is not None and host not in ("", "::"):
        return IPV6 if is_ipv6(parse_address(host)) else IPV4
    return None


async def create_datagram_endpoint(
    runner: StackRunner,
    protocol_factory: Callable[[], _Protocol],
    local_addr: tuple[str, int] | tuple[str, int, int, int] | None = None,
    remote_addr: tuple[str, int] | tuple[str, int, int, int] | None = None,
    *,
    family: int = 0,
) -> tuple[asyncio.DatagramTransport, _Protocol]:
    """As `loop.create_datagram_endpoint`: a UDP endpoint of the stack bound
    to `local_addr` (host "", "::" or "0.0.0.0": the wildcard; port 0: an
    ephemeral one; None: both), connected to `remote_addr` if given, with
    the protocol from `protocol_factory` (its connection_made first).
    OSError EADDRINUSE for a taken port, EADDRNOTAVAIL for an address the
    stack does not have."""
    udp = runner.stack.udp
    host: str | None = None if local_addr is None else local_addr[0]
    family_of: int | None
    if family == 0 and remote_addr is not None and host in (None, ""):
        # The remote's family, as getaddrinfo on remote_addr decides it in asyncio.
        family_of = IPV6 if is_ipv6(parse_address(remote_addr[0])) else IPV4
    else:
        family_of = _family_of(host, family)
    local: int | None = None
    if host not in (None, "", "::", "0.0.0.0"):
        assert host is not None
        local = parse_address(host)
    elif host == "0.0.0.0":
        family_of = IPV4
    port = 0 if local_addr is None else int(local_addr[1])
    endpoint = udp.bind(local, port, family_of)
    try:
        if remote_addr is not None:
            endpoint.connect(parse_address(remote_addr[0]), int(remote_addr[1]))
        protocol = protocol_factory()
        assert isinstance(protocol, asyncio.DatagramProtocol)
        transport = UdpTransport(runner, endpoint, protocol)
    except BaseException:
        endpoint.close()
        raise
    protocol.connection_made(transport)
    return transport, protocol
