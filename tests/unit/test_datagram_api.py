"""ustack.datagram end to end: asyncio DatagramProtocols on two Stacks wired
back to back in one loop (each packet handed over with loop.call_soon, so
nothing re-enters a stack), with the daemon's UDP services."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from ustack.datagram import UdpTransport, create_datagram_endpoint
from ustack.runner import StackRunner
from ustack.services import UdpDaytime, UdpDiscard, UdpEcho
from ustack.stack import Stack
from ustack.wire.address import parse_address

A_HOST, B_HOST = "198.18.0.1", "198.18.0.2"
A_HOST6, B_HOST6 = "2001:2::1", "2001:2::2"
STEP = 5.0


class Pair:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.a = Stack(parse_address(A_HOST), self._transmit, address6=parse_address(A_HOST6))
        self.b = Stack(parse_address(B_HOST), self._transmit, address6=parse_address(B_HOST6))
        self.ra, self.rb = StackRunner(self.a, loop), StackRunner(self.b, loop)
        self.packets = 0
        self.errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: self.errors.append(context))

    def _transmit(self, raw: bytes) -> bool:
        raw = bytes(raw)
        self.packets += 1
        if raw[0] >> 4 == 6:
            dst = int.from_bytes(raw[24:40], "big")
        else:
            dst = int.from_bytes(raw[16:20], "big")
        target = self.ra if dst in (self.a.ip.address, self.a.tcp.address6) else self.rb
        self.loop.call_soon(self._deliver, target, raw)
        return True

    @staticmethod
    def _deliver(runner: StackRunner, raw: bytes) -> None:
        runner.receive(raw)
        runner.done()

    def run(self, coro: Any) -> Any:
        result = self.loop.run_until_complete(asyncio.wait_for(coro, 10.0))
        assert not self.errors, self.errors
        return result

    def run_expecting_errors(self, coro: Any, count: int) -> None:
        """Run `coro`; the loop must have reported `count` exceptions."""
        self.loop.run_until_complete(asyncio.wait_for(coro, 10.0))
        assert len(self.errors) == count, self.errors


@pytest.fixture
def pair() -> Iterator[Pair]:
    loop = asyncio.new_event_loop()
    yield Pair(loop)
    loop.close()


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
    pair: Pair, server_host: str, client_host: str
) -> None:
    async def body() -> None:
        server, _ = await create_datagram_endpoint(pair.rb, UdpEcho, local_addr=("", 7))
        transport, client = await create_datagram_endpoint(
            pair.ra, Client, remote_addr=(server_host, 7)
        )
        assert client.made.is_set() and isinstance(transport, UdpTransport)
        data = bytes(range(256)) * 15 + b"x" * 160
        packets_before = pair.packets
        transport.sendto(data)
        got, addr = await asyncio.wait_for(client.received.get(), STEP)
        assert got == data
        assert pair.packets - packets_before == 6  # 3 fragments each way
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
        assert pair.b.counters[f"{prefix}.in"] == 1 and pair.b.counters[f"{prefix}.out"] == 1

    pair.run(body())


def test_unconnected_sendto_and_daytime_and_discard(pair: Pair) -> None:
    async def body() -> None:
        await create_datagram_endpoint(pair.rb, UdpDaytime, local_addr=(B_HOST, 13))
        await create_datagram_endpoint(pair.rb, UdpDiscard, local_addr=("::", 9))
        transport, client = await create_datagram_endpoint(
            pair.ra, Client, local_addr=("0.0.0.0", 0)
        )
        transport.sendto(b"", (B_HOST, 13))
        line, addr = await asyncio.wait_for(client.received.get(), STEP)
        assert line.endswith(b"-UTC\r\n") and addr == (B_HOST, 13)
        transport.sendto(b"gone", (B_HOST, 9))
        transport.sendto(b"x", (B_HOST, 13))
        await asyncio.wait_for(client.received.get(), STEP)  # after the discarded one
        assert client.received.empty() and pair.b.counters["udp.in"] == 3
        transport.sendto(b"x", (B_HOST6, 13))  # an IPv4 endpoint cannot reach IPv6
        error = await asyncio.wait_for(client.errors.get(), STEP)
        assert isinstance(error, OSError) and error.errno == errno.EAFNOSUPPORT

    pair.run(body())


@pytest.mark.parametrize("server_host", [B_HOST, B_HOST6], ids=["ipv4", "ipv6"])
def test_a_connected_endpoint_gets_connection_refused_from_a_closed_port(
    pair: Pair, server_host: str
) -> None:
    async def body() -> None:
        transport, client = await create_datagram_endpoint(
            pair.ra, Client, remote_addr=(server_host, 9999)
        )
        transport.sendto(b"anyone?")
        error = await asyncio.wait_for(client.errors.get(), STEP)
        assert isinstance(error, ConnectionRefusedError)
        with pytest.raises(ValueError):
            transport.sendto(b"x", (server_host, 9998))

    pair.run(body())


def test_binding_a_taken_port_raises_eaddrinuse_and_family_is_kept(pair: Pair) -> None:
    async def body() -> None:
        await create_datagram_endpoint(pair.rb, UdpEcho, local_addr=("", 7))
        with pytest.raises(OSError) as in_use:
            await create_datagram_endpoint(pair.rb, UdpEcho, local_addr=(B_HOST, 7))
        assert in_use.value.errno == errno.EADDRINUSE
        v6, _ = await create_datagram_endpoint(
            pair.rb, UdpEcho, local_addr=("", 0), family=socket.AF_INET6
        )
        assert v6.get_extra_info("sockname")[0] == "::"
        assert v6.get_extra_info("ustack_endpoint").families == frozenset({6})

    pair.run(body())


def test_a_protocol_that_raises_still_hears_the_next_datagrams(pair: Pair) -> None:
    class Fragile(Client):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            super().datagram_received(data, addr)
            if data == b"boom":
                raise RuntimeError("an application bug")

    async def body() -> None:
        _, fragile = await create_datagram_endpoint(pair.rb, Fragile, local_addr=("", 5000))
        sender, _ = await create_datagram_endpoint(pair.ra, Client, remote_addr=(B_HOST, 5000))
        for data in (b"boom", b"after", b"more"):
            sender.sendto(data)
        got = [(await asyncio.wait_for(fragile.received.get(), STEP))[0] for _ in range(3)]
        assert got == [b"boom", b"after", b"more"]

    pair.run_expecting_errors(body(), 1)
