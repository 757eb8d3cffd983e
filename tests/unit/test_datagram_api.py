"""ustack.datagram end to end: asyncio DatagramProtocols on the two stacks
of ustack.open_memory_pair (real clock), with the daemon's UDP services."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any

import pytest

import ustack
from ustack.app import MemoryPair
from ustack.datagram import UdpTransport
from ustack.services import UdpDaytime
from ustack.services import UdpDiscard
from ustack.services import UdpEcho

A_HOST, B_HOST = "198.18.0.1", "198.18.0.2"
A_HOST6, B_HOST6 = "2001:2::1", "2001:2::2"
STEP = 5.0


def on_pair(body: Callable[[MemoryPair], Awaitable[None]], loop_errors: int = 0) -> None:
    """Run `body` on a memory pair (real clock); the loop must have reported
    `loop_errors` exceptions (an application's callback that raised)."""

    async def main() -> list[dict[str, Any]]:
        errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _l, context: errors.append(context))
        async with ustack.open_memory_pair() as pair:
            await asyncio.wait_for(body(pair), 10.0)
        return errors

    errors = asyncio.run(main())
    assert len(errors) == loop_errors, errors


def packets_on_the_wire(pair: MemoryPair) -> int:
    return sum(link.packets_written for link in pair.links)


class Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.made = asyncio.Event()
        self.received: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.errors: asyncio.Queue[Exception] = asyncio.Queue()
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.set()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.put_nowait((data, addr))

    def error_received(self, exc: Exception) -> None:
        self.errors.put_nowait(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


@pytest.mark.parametrize(
    ("server_host", "client_host"), [(B_HOST, A_HOST), (B_HOST6, A_HOST6)], ids=["ipv4", "ipv6"]
)
def test_echo_of_a_4000_byte_datagram_and_the_address_shapes(
    server_host: str, client_host: str
) -> None:
    async def body(pair: MemoryPair) -> None:
        server, _ = await pair.b.create_datagram_endpoint(UdpEcho, local_addr=("", 7))
        transport, client = await pair.a.create_datagram_endpoint(
            Client, remote_addr=(server_host, 7)
        )
        assert client.made.is_set() and isinstance(transport, UdpTransport)
        data = bytes(range(256)) * 15 + b"x" * 160
        packets_before = packets_on_the_wire(pair)
        transport.sendto(data)
        got, addr = await asyncio.wait_for(client.received.get(), STEP)
        assert got == data
        assert packets_on_the_wire(pair) - packets_before == 6  # 3 fragments each way
        six = ":" in server_host
        assert addr == ((server_host, 7, 0, 0) if six else (server_host, 7))
        assert transport.get_extra_info("peername") == addr
        sockname = transport.get_extra_info("sockname")
        assert sockname[0] == client_host and sockname[1] >= 32768  # connected: its source
        assert server.get_extra_info("sockname") == ("::", 7, 0, 0)  # dual stack
        assert transport.get_write_buffer_size() == 0
        transport.close()
        assert transport.is_closing()
        assert await asyncio.wait_for(client.lost, STEP) is None
        prefix = "udp6" if six else "udp"
        assert (
            pair.b.stack.counters[f"{prefix}.in"] == 1
            and pair.b.stack.counters[f"{prefix}.out"] == 1
        )

    on_pair(body)


def test_unconnected_sendto_and_daytime_and_discard() -> None:
    async def body(pair: MemoryPair) -> None:
        await pair.b.create_datagram_endpoint(UdpDaytime, local_addr=(B_HOST, 13))
        await pair.b.create_datagram_endpoint(UdpDiscard, local_addr=("::", 9))
        transport, client = await pair.a.create_datagram_endpoint(Client, local_addr=("0.0.0.0", 0))
        transport.sendto(b"", (B_HOST, 13))
        line, addr = await asyncio.wait_for(client.received.get(), STEP)
        assert line.endswith(b"-UTC\r\n") and addr == (B_HOST, 13)
        transport.sendto(b"gone", (B_HOST, 9))
        transport.sendto(b"x", (B_HOST, 13))
        await asyncio.wait_for(client.received.get(), STEP)  # after the discarded one
        assert client.received.empty() and pair.b.stack.counters["udp.in"] == 3
        transport.sendto(b"x", (B_HOST6, 13))  # an IPv4 endpoint cannot reach IPv6
        error = await asyncio.wait_for(client.errors.get(), STEP)
        assert isinstance(error, OSError) and error.errno == errno.EAFNOSUPPORT

    on_pair(body)


@pytest.mark.parametrize("server_host", [B_HOST, B_HOST6], ids=["ipv4", "ipv6"])
def test_a_connected_endpoint_gets_connection_refused_from_a_closed_port(server_host: str) -> None:
    async def body(pair: MemoryPair) -> None:
        transport, client = await pair.a.create_datagram_endpoint(
            Client, remote_addr=(server_host, 9999)
        )
        transport.sendto(b"anyone?")
        error = await asyncio.wait_for(client.errors.get(), STEP)
        assert isinstance(error, ConnectionRefusedError)
        with pytest.raises(ValueError):
            transport.sendto(b"x", (server_host, 9998))

    on_pair(body)


def test_binding_a_taken_port_raises_eaddrinuse_and_family_is_kept() -> None:
    async def body(pair: MemoryPair) -> None:
        await pair.b.create_datagram_endpoint(UdpEcho, local_addr=("", 7))
        with pytest.raises(OSError) as in_use:
            await pair.b.create_datagram_endpoint(UdpEcho, local_addr=(B_HOST, 7))
        assert in_use.value.errno == errno.EADDRINUSE
        v6, _ = await pair.b.create_datagram_endpoint(
            UdpEcho, local_addr=("", 0), family=socket.AF_INET6
        )
        assert v6.get_extra_info("sockname")[0] == "::"
        assert v6.get_extra_info("ustack_endpoint").families == frozenset({6})

    on_pair(body)


def test_a_protocol_that_raises_still_hears_the_next_datagrams() -> None:
    class Fragile(Client):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            super().datagram_received(data, addr)
            if data == b"boom":
                raise RuntimeError("an application bug")

    async def body(pair: MemoryPair) -> None:
        _, fragile = await pair.b.create_datagram_endpoint(Fragile, local_addr=("", 5000))
        sender, _ = await pair.a.create_datagram_endpoint(Client, remote_addr=(B_HOST, 5000))
        for data in (b"boom", b"after", b"more"):
            sender.sendto(data)
        got = [(await asyncio.wait_for(fragile.received.get(), STEP))[0] for _ in range(3)]
        assert got == [b"boom", b"after", b"more"]

    on_pair(body, loop_errors=1)
