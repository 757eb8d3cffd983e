"""ustack.api end to end: two Stacks wired back to back in one asyncio loop.

Stack A (198.18.0.1) and stack B (198.18.0.2) each hand every packet they
transmit to the other one's StackRunner through `loop.call_soon`, so nothing
re-enters a stack. A hook sees every packet first and may drop, duplicate or
hold it back (reorder), deterministically. Short timers (MSL, RTO) keep
TIME_WAIT and retransmissions quick. Everything goes through the public API:
open_connection, start_server and the services.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hashlib
import os
import re
import struct
import time
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Coroutine
from collections.abc import Iterator
from typing import Any
from typing import TypeVar

import pytest

from tests.stream_handlers import recording_resets
from ustack import services
from ustack.api import WRITE_HIGH_WATER
from ustack.api import StackServer
from ustack.api import open_connection
from ustack.api import start_server
from ustack.runner import StackRunner
from ustack.stack import Stack
from ustack.tcp.connection import TcpConfig
from ustack.wire.tcp import ACK
from ustack.wire.tcp import FIN
from ustack.wire.tcp import RST
from ustack.wire.tcp import SYN

A_ADDR = 0xC6120001
B_ADDR = 0xC6120002
A_HOST = "198.18.0.1"
B_HOST = "198.18.0.2"
A_ADDR6 = 0x2001_0002_0000_0000_0000_0000_0000_0001
B_ADDR6 = 0x2001_0002_0000_0000_0000_0000_0000_0002
A_HOST6 = "2001:2::1"
B_HOST6 = "2001:2::2"
SILENT_HOST = "198.18.0.3"  # nobody answers for it
TEST_TIMEOUT = 10.0  # the bound of every test body
STEP_TIMEOUT = 5.0  # the bound of one awaited step inside a test
STALL = 0.3  # how long "does not happen" is watched

CONFIG = TcpConfig(
    msl=0.05,  # TIME_WAIT lasts 0.1 s
    initial_rto=0.1,
    min_rto=0.05,
    max_rto=0.4,  # zero-window probes stay frequent
    syn_retries=2,
    synack_retries=2,
    retries=8,
    fin_wait_2_timeout=3.0,
)

T = TypeVar("T")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


# ---- the wire between the two stacks --------------------------------------------------------


class Action(enum.Enum):
    PASS = "pass"
    DROP = "drop"
    DUPLICATE = "duplicate"
    HOLD = "hold"  # delivered right after the next packet in the same direction


@dataclasses.dataclass(frozen=True)
class Packet:
    """One IPv4/TCP or IPv6/TCP packet as the hook sees it."""

    src: int
    dst: int
    index: int  # per direction, from 0
    flags: int
    seq: int
    payload: bytes
    raw: bytes

    @classmethod
    def parse(cls, raw: bytes, index: int) -> Packet:
        if raw[0] >> 4 == 6:  # (no extension headers between us)
            ihl = 40
            src, dst = int.from_bytes(raw[8:24], "big"), int.from_bytes(raw[24:40], "big")
        else:
            ihl = (raw[0] & 0x0F) * 4
            src, dst = struct.unpack_from("!II", raw, 12)
        (seq,) = struct.unpack_from("!I", raw, ihl + 4)
        data_offset = (raw[ihl + 12] >> 4) * 4
        flags = raw[ihl + 13]
        return cls(src, dst, index, flags, seq, raw[ihl + data_offset :], raw)

    @property
    def is_data(self) -> bool:
        return bool(self.payload)


Hook = Callable[[Packet], Action]


class Pair:
    """Two dual stacks back to back in one loop; `hook` impairs the wire."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: TcpConfig) -> None:
        self.loop = loop
        self.hook: Hook | None = None
        self.log: list[Packet] = []  # everything transmitted, before the hook
        self.errors: list[dict[str, Any]] = []
        self.a = Stack(A_ADDR, self._transmit, tcp_config=config, address6=A_ADDR6)
        self.b = Stack(B_ADDR, self._transmit, tcp_config=config, address6=B_ADDR6)
        self.ra = StackRunner(self.a, loop)
        self.rb = StackRunner(self.b, loop)
        self._runners = {A_ADDR: self.ra, B_ADDR: self.rb, A_ADDR6: self.ra, B_ADDR6: self.rb}
        self._counts: dict[tuple[int, int], int] = {}
        self._held: dict[tuple[int, int], list[bytes]] = {}
        loop.set_exception_handler(lambda _loop, context: self.errors.append(context))

    def _transmit(self, raw: bytes) -> bool:
        packet = Packet.parse(bytes(raw), 0)
        direction = (packet.src, packet.dst)
        index = self._counts.get(direction, 0)
        self._counts[direction] = index + 1
        packet = dataclasses.replace(packet, index=index)
        dst = packet.dst
        self.log.append(packet)
        action = self.hook(packet) if self.hook is not None else Action.PASS
        target = self._runners.get(dst)
        if target is None or action is Action.DROP:
            return True  # it left; the wire lost it
        if action is Action.HOLD:
            self._held.setdefault(direction, []).append(packet.raw)
            return True
        copies = 2 if action is Action.DUPLICATE else 1
        for _ in range(copies):
            self.loop.call_soon(self._deliver, target, packet.raw)
        for late in self._held.pop(direction, []):
            self.loop.call_soon(self._deliver, target, late)
        return True

    @staticmethod
    def _deliver(runner: StackRunner, raw: bytes) -> None:
        runner.receive(raw)
        runner.done()

    # ---- for the tests ------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = TEST_TIMEOUT) -> T:
        """Run a test body on the pair's loop; anything the loop had to report fails it."""
        result = self.loop.run_until_complete(asyncio.wait_for(coro, timeout))
        assert not self.errors, f"the loop reported: {self.errors}"
        return result

    def sent(self, src: int, predicate: Callable[[Packet], bool] = lambda p: True) -> list[Packet]:
        return [p for p in self.log if p.src == src and predicate(p)]

    def tables(self) -> tuple[dict[str, int], dict[str, int]]:
        return self.a.tcp.queued(), self.b.tcp.queued()

    async def settle(self, timeout: float = 2.0) -> None:
        """Until both connection tables are empty (TIME_WAIT over). No event says
        so, hence polling, bounded."""
        await until(lambda: not self.a.tcp.queued() and not self.b.tcp.queued(), timeout)


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll a condition nothing signals, within a bound."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


@pytest.fixture
def make_pair() -> Iterator[Callable[..., Pair]]:
    """A factory: make_pair(msl=...) replaces fields of CONFIG."""
    loop = asyncio.new_event_loop()
    made: list[Pair] = []

    def factory(**overrides: Any) -> Pair:
        pair = Pair(loop, dataclasses.replace(CONFIG, **overrides))
        made.append(pair)
        return pair

    yield factory
    loop.set_exception_handler(lambda _loop, _context: None)  # cancelled handlers

    async def cancel_the_rest() -> None:
        pending = asyncio.all_tasks() - {asyncio.current_task()}
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    loop.run_until_complete(cancel_the_rest())
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.fixture
def pair(make_pair: Callable[..., Pair]) -> Pair:
    return make_pair()


# ---- helpers ----------------------------------------------------------------------------------


async def step(awaitable: Awaitable[T], timeout: float = STEP_TIMEOUT) -> T:
    return await asyncio.wait_for(awaitable, timeout)


def tracked(handler: Handler) -> tuple[Handler, asyncio.Event, list[BaseException]]:
    """The handler, an event set when it returns (or raises), and what it raised."""
    finished = asyncio.Event()
    raised: list[BaseException] = []

    async def wrapper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except BaseException as exc:
            raised.append(exc)
            raise
        finally:
            finished.set()

    return wrapper, finished, raised


async def serve(pair: Pair, handler: Handler, port: int) -> tuple[StackServer, asyncio.Event]:
    wrapper, finished, _ = tracked(handler)
    server = await start_server(pair.rb, wrapper, port)
    return server, finished


async def connected(
    pair: Pair, handler: Handler, port: int, host: str = B_HOST
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.Event]:
    """Serve `handler` on B's `port` and connect to it from A (at B's `host`,
    either family): the client's reader and writer, and the event set when
    the handler returns."""
    _, handler_done = await serve(pair, handler, port)
    reader, writer = await step(open_connection(pair.ra, host, port))
    return reader, writer, handler_done


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await step(writer.wait_closed())


async def read_all(reader: asyncio.StreamReader) -> bytes:
    return await step(reader.read())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pattern_bytes(n: int) -> bytes:
    """Byte i is i % 256: the body of GET /bytes/N."""
    return (bytes(range(256)) * (n // 256 + 1))[:n]


# ---- echo -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "peername", "our_host"),
    [(B_HOST, (B_HOST, 7), A_HOST), (B_HOST6, (B_HOST6, 7, 0, 0), A_HOST6)],
    ids=["ipv4", "ipv6"],
)
def test_echo_round_trip_of_one_megabyte(
    pair: Pair, host: str, peername: tuple[object, ...], our_host: str
) -> None:
    """Over either family; the names are asyncio's: (host, port) for IPv4,
    (host, port, flowinfo, scope_id) for IPv6."""
    payload = os.urandom(1 << 20)

    async def main() -> None:
        reader, writer, handler_done = await connected(pair, services.echo, 7, host)
        assert writer.get_extra_info("peername") == peername
        assert writer.get_extra_info("sockname")[0] == our_host

        async def send() -> None:
            view = memoryview(payload)
            for offset in range(0, len(payload), 50_000):
                writer.write(view[offset : offset + 50_000])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.ensure_future(send())
        echoed = await read_all(reader)
        await step(sender)
        assert len(echoed) == len(payload)
        assert sha(echoed) == sha(payload)
        assert reader.at_eof()
        await close(writer)
        await step(handler_done.wait())
        await pair.settle()

    pair.run(main())


def test_write_eof_half_close_then_the_whole_echo_and_eof(pair: Pair) -> None:
    payload = os.urandom(100_000)  # fits in the buffers: no need to read while writing

    async def main() -> None:
        reader, writer, handler_done = await connected(pair, services.echo, 7)
        writer.write(payload)
        assert writer.can_write_eof()
        writer.write_eof()
        with pytest.raises(RuntimeError):
            writer.write(b"after eof")
        await step(writer.drain())
        echoed = await read_all(reader)
        assert echoed == payload
        assert reader.at_eof()
        assert await step(reader.read(10)) == b""
        await close(writer)
        await step(handler_done.wait())
        await pair.settle()

    pair.run(main())


def test_data_waiting_behind_a_paused_reader_survives_the_close(pair: Pair) -> None:
    """The client half-closes, then does not read while the server sends more than the
    StreamReader takes before it pauses (2 * limit) and closes. The client's connection
    has every byte and the FIN (TIME_WAIT): the application must still get them all."""
    payload = os.urandom(300_000)  # > 128 KiB reader buffer, < 128 KiB + 256 KiB window

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client's FIN
        writer.write(payload)
        await services._finish(writer)

    async def main() -> None:
        reader, writer, handler_done = await connected(pair, handler, 5000)
        writer.write_eof()
        await step(handler_done.wait())  # the server's FIN was ACKed: all is at the client
        received = await read_all(reader)
        assert len(received) == len(payload)
        assert received == payload

    pair.run(main())


# ---- who closes first ---------------------------------------------------------------------


def test_server_closes_first_server_keeps_time_wait(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(msl=0.25)  # TIME_WAIT of 0.5 s, long enough to be seen

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye\n")
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        reader, writer, handler_done = await connected(pair, handler, 5000)
        assert await read_all(reader) == b"bye\n"
        # As with a kernel socket, the handler's wait_closed returned once its
        # FIN was queued; its connection waits on, orphaned, in FIN_WAIT_2.
        await step(handler_done.wait())
        await until(lambda: pair.tables()[1] == {"FIN_WAIT_2": 1})  # our ACK of its FIN
        await close(writer)
        await step(handler_done.wait())
        client_table, server_table = pair.tables()
        assert server_table == {"TIME_WAIT": 1}  # the active closer
        assert client_table == {}  # LAST_ACK is over once our FIN is ACKed
        await pair.settle()
        assert pair.tables() == ({}, {})

    pair.run(main())


def test_client_closes_first_client_keeps_time_wait(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(msl=0.25)
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read())  # until the client's FIN
        writer.write(b"done\n")  # CLOSE_WAIT may still send
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        reader, writer, handler_done = await connected(pair, handler, 5000)
        writer.write(b"hello")
        writer.write_eof()
        assert await read_all(reader) == b"done\n"
        await close(writer)
        await step(handler_done.wait())
        assert seen == [b"hello"]
        client_table, server_table = pair.tables()
        assert client_table == {"TIME_WAIT": 1}
        assert server_table == {}
        await pair.settle()

    pair.run(main())


def test_server_half_closes_and_keeps_reading(pair: Pair) -> None:
    """The server's write_eof: the client sees EOF and may still send."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"say something\n")
        writer.write_eof()
        seen.append(await reader.read())
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        reader, writer, handler_done = await connected(pair, handler, 5000)
        assert await read_all(reader) == b"say something\n"
        assert not writer.is_closing()
        payload = os.urandom(200_000)
        writer.write(payload)
        await step(writer.drain())
        writer.write_eof()
        await step(handler_done.wait())
        assert seen == [payload]
        await close(writer)
        await pair.settle()

    pair.run(main())


def test_closing_the_server_keeps_established_connections(pair: Pair) -> None:
    async def main() -> None:
        server, _ = await serve(pair, services.echo, 7)
        reader, writer = await step(open_connection(pair.ra, B_HOST, 7))
        async with server:
            pass  # __aexit__ closes the listener
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await step(open_connection(pair.ra, B_HOST, 7))
        writer.write(b"still here")
        writer.write_eof()
        assert await read_all(reader) == b"still here"
        await close(writer)
        await pair.settle()

    pair.run(main())


def test_client_close_without_half_close(pair: Pair) -> None:
    """writer.close() straight away: FIN, the server sees EOF and closes too."""

    async def main() -> None:
        _reader, writer, handler_done = await connected(pair, services.discard, 9)
        writer.write(b"x" * 10_000)
        await close(writer)
        await step(handler_done.wait())
        await pair.settle()

    pair.run(main())


# ---- flow control ---------------------------------------------------------------------------


def test_a_reader_that_does_not_read_blocks_the_writers_drain(pair: Pair) -> None:
    start_reading = asyncio.Event()
    got: list[bytes] = []
    chunk = os.urandom(64 * 1024)
    total = 32 * len(chunk)  # 2 MiB: far more than both windows and buffers hold

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await start_reading.wait()
        got.append(await reader.read())
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        _reader, writer, handler_done = await connected(pair, handler, 5000)
        transport = writer.transport
        for _ in range(total // len(chunk)):
            writer.write(chunk)
        assert transport.get_write_buffer_size() > WRITE_HIGH_WATER
        drain = asyncio.ensure_future(writer.drain())
        done, _ = await asyncio.wait({drain}, timeout=STALL)
        assert not done, "drain() completed although nobody reads"
        stalled = transport.get_write_buffer_size()
        # Whatever moved went into the pipeline, which is bounded: most of it still waits.
        assert stalled > total - (1 << 20)
        writer.write(chunk)  # nothing moves: the buffer grows by exactly that much
        assert transport.get_write_buffer_size() == stalled + len(chunk)
        assert not drain.done()
        start_reading.set()
        await step(drain)
        writer.write_eof()
        await step(handler_done.wait())
        assert sha(got[0]) == sha(chunk * (total // len(chunk) + 1))
        assert transport.get_write_buffer_size() == 0
        await close(writer)
        await pair.settle()

    pair.run(main())


def test_a_slow_reader_still_gets_everything_in_order(pair: Pair) -> None:
    """Reading in small pieces, with pauses: pause_reading/resume_reading cycles."""
    payload = os.urandom(700_000)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        reader, writer, _ = await connected(pair, handler, 5000)
        parts = []
        while part := await step(reader.read(7_000)):
            parts.append(part)
            if len(parts) % 20 == 0:
                await asyncio.sleep(0.01)  # a slow consumer, not synchronisation
        assert b"".join(parts) == payload
        await close(writer)
        await pair.settle()

    pair.run(main())


def test_a_server_hears_both_families_unless_its_host_names_one(pair: Pair) -> None:
    async def main() -> None:
        peers: list[tuple[object, ...]] = []

        async def who(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peers.append(writer.get_extra_info("peername"))
            writer.close()

        both = await start_server(pair.rb, who, 80)
        v4_only = await start_server(pair.rb, who, 81, host=B_HOST)
        v6_only = await start_server(pair.rb, who, 82, host=B_HOST6)
        for host in (B_HOST, B_HOST6):
            _, writer = await step(open_connection(pair.ra, host, 80))
            await close(writer)
        await until(lambda: len(peers) == 2)
        assert {len(p) for p in peers} == {2, 4}
        _, writer = await step(open_connection(pair.ra, B_HOST, 81))
        await close(writer)
        _, writer = await step(open_connection(pair.ra, B_HOST6, 82))
        await close(writer)
        # The other family finds the port closed: RST, refused at once.
        with pytest.raises(ConnectionRefusedError):
            await step(open_connection(pair.ra, B_HOST6, 81))
        with pytest.raises(ConnectionRefusedError):
            await step(open_connection(pair.ra, B_HOST, 82))
        with pytest.raises(OSError, match="not an address of this stack"):
            await start_server(pair.rb, who, 83, host="198.18.0.9")
        for server in (both, v4_only, v6_only):
            server.close()
        await pair.settle()

    pair.run(main())


def test_connect_to_a_text_that_is_no_address_raises_value_error(pair: Pair) -> None:
    async def main() -> None:
        for text in ("example.org", "::ffff:198.18.0.2"):
            with pytest.raises(ValueError):
                await open_connection(pair.ra, text, 80)

    pair.run(main())


# ---- failures to connect, resets ---------------------------------------------------------


def test_connect_to_a_port_without_listener_is_refused(pair: Pair) -> None:
    async def main() -> None:
        with pytest.raises(ConnectionRefusedError):
            await step(open_connection(pair.ra, B_HOST, 5555))
        await pair.settle()
        assert pair.b.counters["tcp.out.rst"] == 1

    pair.run(main())


def test_connect_to_a_listener_that_was_closed_is_refused(pair: Pair) -> None:
    async def main() -> None:
        server, _ = await serve(pair, services.echo, 7)
        server.close()
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await step(open_connection(pair.ra, B_HOST, 7))

    pair.run(main())


def test_connect_to_a_host_that_never_answers_times_out(pair: Pair) -> None:
    pair.hook = lambda _packet: Action.DROP

    async def main() -> None:
        started = time.monotonic()
        with pytest.raises(TimeoutError) as caught:
            await step(open_connection(pair.ra, B_HOST, 7), timeout=5.0)
        # The stack's ETIMEDOUT, not the wait_for bound.
        assert caught.value.args == ("ETIMEDOUT",)
        assert time.monotonic() - started < 3.0
        syns = pair.sent(A_ADDR, lambda p: p.flags & SYN != 0)
        assert len(syns) == 1 + CONFIG.syn_retries
        assert len({p.seq for p in syns}) == 1  # the same ISN every time
        assert pair.tables() == ({}, {})

    pair.run(main())


def test_connect_to_an_address_nobody_has_times_out(pair: Pair) -> None:
    async def main() -> None:
        with pytest.raises(TimeoutError) as caught:
            await step(open_connection(pair.ra, SILENT_HOST, 80))
        assert caught.value.args == ("ETIMEDOUT",)

    pair.run(main())


def test_a_cancelled_connect_leaves_nothing_behind(pair: Pair) -> None:
    pair.hook = lambda _packet: Action.DROP

    async def main() -> None:
        with pytest.raises(TimeoutError) as caught:
            await asyncio.wait_for(open_connection(pair.ra, B_HOST, 7), 0.02)
        assert caught.value.args == ()  # wait_for's own timeout: the connect was cancelled
        syns = len(pair.sent(A_ADDR))
        # The stack would retransmit the SYN at 0.1 s and give up at 0.7 s on its own.
        await until(lambda: not pair.a.tcp.connections, timeout=0.05)
        assert len(pair.sent(A_ADDR)) == syns

    pair.run(main())


def test_client_abort_resets_the_server_reader(pair: Pair) -> None:
    errors: list[BaseException] = []
    handler = recording_resets(errors)

    async def main() -> None:
        _reader, writer, handler_done = await connected(pair, handler, 5000)
        writer.write(b"some data first")
        await writer.drain()
        writer.transport.abort()
        assert writer.transport.is_closing()
        await step(handler_done.wait())
        assert len(errors) == 1
        assert pair.sent(A_ADDR, lambda p: p.flags & RST != 0)
        await step(writer.wait_closed())  # our side: plain connection_lost(None)
        await pair.settle(timeout=0.5)  # no TIME_WAIT after a reset

    pair.run(main())


def test_server_abort_resets_the_client_reader(pair: Pair) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(4)
        writer.transport.abort()

    async def main() -> None:
        reader, writer, handler_done = await connected(pair, handler, 5000)
        writer.write(b"ping")
        with pytest.raises(ConnectionResetError):
            await step(reader.read())
        with pytest.raises(ConnectionResetError):
            await step(writer.wait_closed())
        await step(handler_done.wait())
        await pair.settle(timeout=0.5)

    pair.run(main())


def test_client_drain_raises_after_the_peer_reset(pair: Pair) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    async def main() -> None:
        reader, writer, _ = await connected(pair, handler, 5000)
        with pytest.raises(ConnectionResetError):
            await step(reader.read())
        writer.write(b"into the void")  # ignored, as asyncio does after connection_lost
        with pytest.raises(ConnectionResetError):
            await step(writer.drain())

    pair.run(main())


# ---- HTTP -------------------------------------------------------------------------------------


async def http_request(
    writer: asyncio.StreamWriter, method: str, target: str, headers: dict[str, str] | None = None
) -> None:
    lines = [f"{method} {target} HTTP/1.1", "Host: 198.18.0.2"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()


async def http_response(
    reader: asyncio.StreamReader, head_only: bool = False
) -> tuple[int, dict[str, str], bytes]:
    head = await step(reader.readuntil(b"\r\n\r\n"))
    status_line, *header_lines = head.decode("ascii")[:-4].split("\r\n")
    version, status, _reason = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    length = 0 if head_only else int(headers["content-length"])
    body = await step(reader.readexactly(length))
    return int(status), headers, body


async def http_pair(pair: Pair) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.Event]:
    return await connected(pair, services.http, 80)


def run_http(pair: Pair, exchange: Handler, settle: bool = False) -> None:
    """Connect to the HTTP service, run `exchange` with the client's reader
    and writer, then close; with `settle`, also wait for the server's handler
    to return and both connection tables to empty."""

    async def main() -> None:
        reader, writer, handler_done = await http_pair(pair)
        await exchange(reader, writer)
        await close(writer)
        if settle:
            await step(handler_done.wait())
            await pair.settle()

    pair.run(main())


def test_http_get_index(pair: Pair) -> None:
    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await http_request(writer, "GET", "/", {"Connection": "close"})
        status, headers, body = await http_response(reader)
        assert status == 200
        assert headers["content-type"] == "text/html"
        assert headers["connection"] == "close"
        assert body == services.INDEX
        assert await read_all(reader) == b""  # the server closes first

    run_http(pair, exchange, settle=True)


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65_536, 65_537, 300_001])
def test_http_get_bytes_checks_every_byte(pair: Pair, size: int) -> None:
    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await http_request(writer, "GET", f"/bytes/{size}")
        status, headers, body = await http_response(reader)
        assert status == 200
        assert headers["content-type"] == "application/octet-stream"
        assert int(headers["content-length"]) == size
        assert body == pattern_bytes(size)

    run_http(pair, exchange)


def test_http_head_has_no_body(pair: Pair) -> None:
    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await http_request(writer, "HEAD", "/bytes/5000")
        status, headers, body = await http_response(reader, head_only=True)
        assert (status, headers["content-length"], body) == (200, "5000", b"")
        await http_request(writer, "HEAD", "/")
        status, headers, _ = await http_response(reader, head_only=True)
        assert (status, int(headers["content-length"])) == (200, len(services.INDEX))
        # No body bytes followed either head: the next response starts cleanly.
        await http_request(writer, "GET", "/bytes/3", {"Connection": "close"})
        assert await http_response(reader) == (200, headers | _len(3, "close"), b"\x00\x01\x02")
        assert await read_all(reader) == b""

    run_http(pair, exchange)


def _len(length: int, connection: str) -> dict[str, str]:
    return {
        "content-length": str(length),
        "connection": connection,
        "content-type": "application/octet-stream",
    }


def test_http_not_found(pair: Pair) -> None:
    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await http_request(writer, "GET", "/nowhere")
        status, headers, body = await http_response(reader)
        assert (status, body) == (404, b"not found\n")
        assert headers["connection"] == "keep-alive"

    run_http(pair, exchange)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NONSENSE\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: \xff\r\n\r\n",
        b"POST /upload HTTP/1.1\r\nContent-Length: lots\r\n\r\n",
        b"POST /upload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
def test_http_bad_request_gets_400_and_close(pair: Pair, request_bytes: bytes) -> None:
    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(request_bytes)
        status, headers, _body = await http_response(reader)
        assert status == 400
        assert headers["connection"] == "close"
        assert await read_all(reader) == b""

    run_http(pair, exchange, settle=True)


def test_http_keep_alive_serves_two_requests_on_one_connection(pair: Pair) -> None:
    async def main() -> None:
        reader, writer, handler_done = await http_pair(pair)
        await http_request(writer, "GET", "/bytes/1000")
        status, headers, body = await http_response(reader)
        assert (status, headers["connection"], body) == (200, "keep-alive", pattern_bytes(1000))
        await http_request(writer, "GET", "/")
        status, headers, body = await http_response(reader)
        assert (status, headers["connection"], body) == (200, "keep-alive", services.INDEX)
        assert not handler_done.is_set()
        assert len(pair.b.tcp.connections) == 1
        # Our FIN ends the keep-alive loop; the server closes in turn.
        writer.write_eof()
        assert await read_all(reader) == b""
        await step(handler_done.wait())
        await close(writer)
        await pair.settle()

    pair.run(main())


def test_http_pipelined_requests_are_answered_in_order(pair: Pair) -> None:
    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"GET /bytes/10 HTTP/1.1\r\n\r\n"
            b"GET /missing HTTP/1.1\r\n\r\n"
            b"GET /bytes/20 HTTP/1.1\r\nConnection: close\r\n\r\n"
        )
        assert (await http_response(reader))[::2] == (200, pattern_bytes(10))
        assert (await http_response(reader))[::2] == (404, b"not found\n")
        assert (await http_response(reader))[::2] == (200, pattern_bytes(20))
        assert await read_all(reader) == b""

    run_http(pair, exchange)


def test_http_post_upload_returns_the_sha256(pair: Pair) -> None:
    body = os.urandom(1_000_003)

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await http_request(writer, "POST", "/upload", {"Content-Length": str(len(body))})
        for offset in range(0, len(body), 100_000):
            writer.write(body[offset : offset + 100_000])
            await writer.drain()
        status, headers, answer = await http_response(reader)
        assert status == 200
        assert headers["content-type"] == "text/plain"
        assert answer == f"{len(body)} {sha(body)}\n".encode()

    run_http(pair, exchange, settle=True)


def test_http_client_cut_short_during_upload(pair: Pair) -> None:
    """A body that never completes: the handler gives up and closes."""

    async def main() -> None:
        reader, writer, handler_done = await http_pair(pair)
        await http_request(writer, "POST", "/upload", {"Content-Length": "1000"})
        writer.write(b"only a little")
        writer.write_eof()
        await step(handler_done.wait())
        assert await step(reader.read(), timeout=1.0) == b""
        await close(writer)
        await pair.settle()

    pair.run(main())


# ---- daytime, chargen, discard ---------------------------------------------------------------


def test_daytime_server_closes_first(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(msl=0.25)

    async def main() -> None:
        reader, writer, handler_done = await connected(pair, services.daytime, 13)
        line = await read_all(reader)
        assert re.fullmatch(
            rb"[A-Z][a-z]+day, [A-Z][a-z]+ \d\d, \d{4} \d\d:\d\d:\d\d-UTC\r\n", line
        )
        first_fin = next(p for p in pair.log if p.flags & FIN)
        assert first_fin.src == B_ADDR  # the server's FIN went first
        await close(writer)
        await step(handler_done.wait())
        assert pair.tables() == ({}, {"TIME_WAIT": 1})
        await pair.settle()

    pair.run(main())


def test_chargen_until_the_client_closes(pair: Pair) -> None:
    cycle = services.chargen_pattern()

    async def main() -> None:
        reader, writer, handler_done = await connected(pair, services.chargen, 19)
        n = 3 * len(cycle) + 1234
        data = await step(reader.readexactly(n))
        assert data == (cycle * 4)[:n]
        assert data[:74] == bytes(range(32, 104)) + b"\r\n"
        assert not any(p.flags & (FIN | RST) for p in pair.log)
        await close(writer)
        await step(handler_done.wait())
        first_fin_or_rst = next(p for p in pair.log if p.flags & (FIN | RST))
        assert first_fin_or_rst.src == A_ADDR  # the client ended it
        await pair.settle()

    pair.run(main())


def test_discard_swallows_everything(pair: Pair) -> None:
    payload = os.urandom(500_000)

    async def main() -> None:
        reader, writer, handler_done = await connected(pair, services.discard, 9)
        writer.write(payload)
        await step(writer.drain())
        writer.write_eof()
        assert await read_all(reader) == b""  # nothing comes back, then the server's FIN
        await step(handler_done.wait())
        received = sum(len(p.payload) for p in pair.sent(A_ADDR))
        assert received >= len(payload)
        assert not any(p.payload for p in pair.sent(B_ADDR))
        await close(writer)
        await pair.settle()

    pair.run(main())


def test_many_concurrent_echo_connections(pair: Pair) -> None:
    async def one(i: int) -> None:
        message = f"connection {i} ".encode() * 1000
        reader, writer = await step(open_connection(pair.ra, B_HOST, 7))
        writer.write(message)
        writer.write_eof()
        assert await read_all(reader) == message
        await close(writer)

    async def main() -> None:
        await serve(pair, services.echo, 7)
        await asyncio.gather(*(one(i) for i in range(20)))
        ports = {p.raw[20:22] for p in pair.sent(A_ADDR)}  # TCP source ports
        assert len(ports) == 20
        await pair.settle()

    pair.run(main())


# ---- a lossy wire -----------------------------------------------------------------------------


def nth_data_segment(src: int, n: int, action: Action) -> Hook:
    """`action` on the n-th (from 0) first transmission of a data segment from `src`."""
    seen: set[int] = set()

    def hook(packet: Packet) -> Action:
        if packet.src != src or not packet.is_data or packet.seq in seen:
            return Action.PASS
        seen.add(packet.seq)
        return action if len(seen) == n + 1 else Action.PASS

    return hook


@pytest.mark.parametrize("action", [Action.DROP, Action.DUPLICATE, Action.HOLD])
@pytest.mark.parametrize("src", [A_ADDR, B_ADDR], ids=["client-data", "echoed-data"])
def test_an_impaired_data_segment_does_not_corrupt_the_stream(
    pair: Pair, action: Action, src: int
) -> None:
    payload = os.urandom(200_000)
    pair.hook = nth_data_segment(src, 5, action)

    async def main() -> None:
        reader, writer, _ = await connected(pair, services.echo, 7)
        writer.write(payload)
        writer.write_eof()
        echoed = await read_all(reader)
        assert len(echoed) == len(payload)
        assert sha(echoed) == sha(payload)
        await close(writer)
        await pair.settle()

    pair.run(main())
    if action is Action.DROP:
        data = pair.sent(src, lambda p: p.is_data)
        firsts: dict[int, Packet] = {}
        for p in data:
            firsts.setdefault(p.seq, p)
        lost = list(firsts.values())[5]
        resent = [p for p in data if p.seq == lost.seq]
        assert len(resent) >= 2, "the dropped segment was never retransmitted"
        # The same bytes again (a retransmission may be cut differently).
        common = min(len(resent[1].payload), len(lost.payload))
        assert common > 0 and resent[1].payload[:common] == lost.payload[:common]


def test_a_lost_data_segment_is_retransmitted_and_the_data_arrives(pair: Pair) -> None:
    payload = os.urandom(50_000)
    pair.hook = nth_data_segment(A_ADDR, 2, Action.DROP)
    got: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await reader.read())
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        reader, writer, handler_done = await connected(pair, handler, 5000)
        writer.write(payload)
        writer.write_eof()
        await step(handler_done.wait())
        assert got == [payload]
        assert await read_all(reader) == b""
        await close(writer)
        await pair.settle()

    pair.run(main())
    seqs = [p.seq for p in pair.sent(A_ADDR, lambda p: p.is_data)]
    assert len(seqs) > len(set(seqs)), "no retransmission happened"


@pytest.mark.parametrize(
    "which",
    [
        pytest.param(lambda p: p.flags == SYN, id="syn"),
        pytest.param(lambda p: p.flags == SYN | ACK, id="syn-ack"),
        pytest.param(lambda p: p.src == A_ADDR and p.flags & FIN != 0, id="client-fin"),
        pytest.param(lambda p: p.src == B_ADDR and p.flags & FIN != 0, id="server-fin"),
    ],
)
def test_a_lost_control_segment_is_recovered(pair: Pair, which: Callable[[Packet], bool]) -> None:
    dropped: list[Packet] = []

    def hook(packet: Packet) -> Action:
        if not dropped and which(packet):
            dropped.append(packet)
            return Action.DROP
        return Action.PASS

    pair.hook = hook

    async def main() -> None:
        reader, writer, handler_done = await connected(pair, services.echo, 7)
        writer.write(b"through loss")
        writer.write_eof()
        assert await read_all(reader) == b"through loss"
        await close(writer)
        await step(handler_done.wait())
        await pair.settle()

    pair.run(main())
    assert len(dropped) == 1


def test_duplicated_and_reordered_everything(pair: Pair) -> None:
    """Every 7th packet duplicated, every 11th held back behind the next one."""
    payload = os.urandom(150_000)

    def hook(packet: Packet) -> Action:
        if packet.index % 11 == 10:
            return Action.HOLD
        if packet.index % 7 == 6:
            return Action.DUPLICATE
        return Action.PASS

    pair.hook = hook

    async def main() -> None:
        reader, writer, _ = await connected(pair, services.echo, 7)

        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sender = asyncio.ensure_future(send())
        echoed = await read_all(reader)
        await step(sender)
        assert echoed == payload
        with contextlib.suppress(ConnectionError):
            await close(writer)
        await pair.settle(timeout=3.0)

    pair.run(main())
