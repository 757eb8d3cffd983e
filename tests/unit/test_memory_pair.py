"""Two ustack instances talking in one process over ustack.open_memory_pair:
a handshake, data, the four-way close and TIME_WAIT, on the virtual clock
(deterministic, in no real time) and on the loop's real clock; the traces of
both ends, in memory and in files, drawn as ladders."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ustack
from ustack.app import MemoryPair
from ustack.app import Stuck
from ustack.daemon.running import RunningStack
from ustack.study.ladder import render_ascii
from ustack.study.load import load_trace
from ustack.tcp.connection import TcpConfig
from ustack.tcp.states import State
from ustack.trace.records import SegmentEvent
from ustack.trace.records import StateChange
from ustack.trace.records import TraceEvent

A_HOST, B_HOST = "198.18.0.1", "198.18.0.2"
B_HOST6 = "2001:2::2"
PORT = 7
STEP = 5.0  # the bound of a real-clock step


async def upper_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads to EOF, answers in capitals, closes (the server's FIN second)."""
    data = await reader.read()
    writer.write(data.upper())
    await writer.drain()
    writer.close()


async def exchange(a: RunningStack, host: str, payload: bytes) -> bytes:
    """a's client: sends, half-closes, reads the answer to EOF, closes."""
    reader, writer = await a.open_connection(host, PORT)
    writer.write(payload)
    writer.write_eof()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


def states(events: list[TraceEvent]) -> list[State]:
    return [event.new for event in events if isinstance(event, StateChange)]


def segments(events: list[TraceEvent], direction: str = "out") -> list[tuple[str, int]]:
    return [
        (event.flags, event.length)
        for event in events
        if isinstance(event, SegmentEvent) and event.direction == direction
    ]


async def virtual_session() -> tuple[MemoryPair, bytes, float]:
    async with ustack.open_memory_pair(clock="virtual") as pair:
        a, b = pair
        await b.start_server(upper_echo, port=PORT)
        answer = await pair.run(exchange(a, B_HOST, b"hello"))
        idle_at = await pair.run_until_idle()
    return pair, answer, idle_at


def test_virtual_clock_handshake_data_and_four_way_close_in_both_traces() -> None:
    started = time.monotonic()
    pair, answer, idle_at = asyncio.run(virtual_session())
    assert answer == b"HELLO"
    a, b = pair
    # The client (a) closes first after the server's FIN: ESTABLISHED, the
    # half-close, then TIME_WAIT for 2*MSL (60 s of virtual time), CLOSED.
    assert states(a.events) == [
        State.SYN_SENT, State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2,
        State.TIME_WAIT, State.CLOSED,
    ]  # fmt: skip
    listener, server_side = State.LISTEN, states(b.events)
    assert server_side[0] is listener and server_side[-1] is State.CLOSED  # (closed at the end)
    assert server_side[1:-1] == [
        State.SYN_RECEIVED, State.ESTABLISHED, State.CLOSE_WAIT, State.LAST_ACK, State.CLOSED,
    ]  # fmt: skip
    # The wire, as each end saw it: what one sent, the other received.
    assert segments(a.events, "out") == segments(b.events, "in")
    assert segments(b.events, "out") == segments(a.events, "in")
    assert segments(a.events, "out")[0][0] == "S"
    assert segments(b.events, "out")[0][0] == "S."
    assert ("P.", 5) in segments(a.events, "out")
    assert ("P.", 5) in segments(b.events, "out")
    assert sum("F" in flags for flags, _ in segments(a.events, "out")) == 1
    assert sum("F" in flags for flags, _ in segments(b.events, "out")) == 1
    assert not any("R" in flags for flags, _ in segments(a.events) + segments(b.events))
    # TIME_WAIT ran its 60 virtual seconds, and no real ones.
    assert idle_at == pytest.approx(60.0)
    assert time.monotonic() - started < 10
    assert a.connections() == [] and b.connections() == []
    # The ladder of each side draws the whole session.
    ladder = render_ascii(a.events)
    assert "SYN_SENT" in ladder and "TIME_WAIT" in ladder and "2MSL timer expired" in ladder
    assert "LAST_ACK" in render_ascii(b.events)


def test_the_virtual_clock_gives_the_same_session_every_time() -> None:
    def shape(pair: MemoryPair) -> list[tuple[float, str, str, int]]:
        return [
            (e.time, e.direction, e.flags, e.length)
            for e in pair.a.events
            if isinstance(e, SegmentEvent)
        ]

    first, second = asyncio.run(virtual_session())[0], asyncio.run(virtual_session())[0]
    assert shape(first) == shape(second)
    assert len(shape(first)) >= 9  # 3 for the handshake, 2 data, 4 for the close


def test_virtual_clock_over_ipv6_and_a_refused_connect() -> None:
    async def main() -> tuple[bytes, BaseException | None]:
        async with ustack.open_memory_pair(clock="virtual") as pair:
            a, b = pair
            await b.start_server(upper_echo, port=PORT)
            answer = await pair.run(exchange(a, B_HOST6, b"six"))
            refused = None
            try:
                await pair.run(a.open_connection(B_HOST, 9))
            except ConnectionRefusedError as exc:
                refused = exc
            return answer, refused

    answer, refused = asyncio.run(main())
    assert answer == b"SIX"
    assert isinstance(refused, ConnectionRefusedError)


def test_a_silent_peer_times_the_connect_out_in_virtual_time() -> None:
    """No listener's RST when b drops every SYN: the SYN retransmissions run
    on the virtual clock (1+2+4+... s) until ETIMEDOUT, at once in real time."""

    async def main() -> tuple[float, float]:
        async with ustack.open_memory_pair(clock="virtual", faults_b=["drop:dir=in"]) as pair:
            a, _ = pair
            start = pair.now
            with pytest.raises(TimeoutError):
                await pair.run(a.open_connection(B_HOST, PORT))
            return start, pair.now

    started = time.monotonic()
    start, end = asyncio.run(main())
    # 1+2+4+8+16+32 s, then max_rto (60 s) for the last: 123 s
    assert end - start == pytest.approx(TcpConfig().connect_timeout) == 123.0
    assert time.monotonic() - started < 10


def test_waiting_for_what_never_comes_is_stuck() -> None:
    async def main() -> None:
        async with ustack.open_memory_pair(clock="virtual") as pair:
            _, b = pair
            never = asyncio.get_running_loop().create_future()
            with pytest.raises(Stuck):
                await pair.run(never)
            assert b.connections() == []

    asyncio.run(main())


def test_real_clock_echo_and_traces_in_files(tmp_path: Path) -> None:
    trace_a, trace_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"

    async def main() -> tuple[bytes, list[dict[str, object]]]:
        async with ustack.open_memory_pair(trace_a=[trace_a], trace_b=[trace_b]) as pair:
            a, b = pair
            await b.start_server(upper_echo, port=PORT)
            reader, writer = await asyncio.wait_for(a.open_connection(B_HOST, PORT), STEP)
            row = a.connections()
            writer.write(b"real")
            writer.write_eof()
            answer = await asyncio.wait_for(reader.read(), STEP)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), STEP)
            assert b.counters["tcp.passive-opens"] == 1
            assert a.counters["tcp.out"] >= 3 and b.counters["tcp.in"] >= 3
            return answer, row

    answer, rows = asyncio.run(main())
    assert answer == b"REAL"
    assert rows[0]["state"] == "ESTABLISHED" and rows[0]["remote"] == f"{B_HOST}:{PORT}"
    # Both files hold the session, and each draws its ladder.
    ladder_a, ladder_b = render_ascii(load_trace(trace_a)), render_ascii(load_trace(trace_b))
    assert "SYN_SENT" in ladder_a and "FIN_WAIT_2" in ladder_a
    assert "SYN_RECEIVED" in ladder_b and "LAST_ACK" in ladder_b


def test_leaving_the_block_resets_connections_and_ends_handlers() -> None:
    """An exception out of the block: the server's handler (blocked in a
    read) ends, the connections were reset, both links are closed."""
    ended: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ended.append(await reader.read())  # its own stack going away: the end of the stream

    async def main() -> MemoryPair:
        pair_seen: list[MemoryPair] = []
        with pytest.raises(RuntimeError, match="application failed"):
            async with ustack.open_memory_pair() as pair:
                pair_seen.append(pair)
                a, b = pair
                await b.start_server(handler, port=PORT)
                _, writer = await asyncio.wait_for(a.open_connection(B_HOST, PORT), STEP)
                raise RuntimeError("application failed")
        assert writer.is_closing()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert others == []
        return pair_seen[0]

    pair = asyncio.run(main())
    assert ended == [b""]
    assert all(link.closed for link in pair.links)
    # b, leaving first, reset its end; a took b's RST (its connection is gone).
    assert any("R" in flags for flags, _ in segments(pair.b.events, "out"))
    assert any("R" in flags for flags, _ in segments(pair.a.events, "in"))
    assert states(pair.a.events)[-1] is State.CLOSED


def test_cancelled_inside_the_block_it_still_takes_everything_down() -> None:
    async def main() -> MemoryPair:
        pairs: list[MemoryPair] = []
        ready = asyncio.Event()

        async def app() -> None:
            async with ustack.open_memory_pair() as pair:
                pairs.append(pair)
                a, b = pair
                await b.start_server(upper_echo, port=PORT)
                await a.open_connection(B_HOST, PORT)
                ready.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(app())
        await asyncio.wait_for(ready.wait(), STEP)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
        return pairs[0]

    pair = asyncio.run(main())
    assert all(link.closed for link in pair.links)
    assert pair.a.runner is not None and pair.a.runner._timer is None


def test_import_ustack_stays_light() -> None:
    """`import ustack` loads neither asyncio's stack nor the TUN's bindings;
    ustack.open_stack brings them when first named."""
    code = (
        "import sys, ustack; print('ustack.app' in sys.modules, 'pytun' in sys.modules);"
        "ustack.open_stack; print('ustack.app' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == ["False", "False", "True"]


class _Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[bytes, object]] = asyncio.Queue()
        self.errors: list[Exception] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.got.put_nowait((data, addr))

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)


@pytest.mark.parametrize("host", [B_HOST, B_HOST6])
def test_udp_datagrams_between_two_stacks_in_memory(host: str) -> None:
    """The stack object makes UDP endpoints too: b echoes what a sends, a
    4,000-byte datagram goes in fragments, and a connected endpoint sending
    to a closed port hears ECONNREFUSED (b's ICMP port unreachable)."""

    async def session() -> tuple[list[tuple[bytes, object]], list[Exception], dict[str, int]]:
        async with ustack.open_memory_pair(clock="virtual") as pair:
            a, b = pair
            echo, echo_protocol = await b.create_datagram_endpoint(_Collect, (host, 7))
            client, mine = await a.create_datagram_endpoint(_Collect, remote_addr=(host, 7))
            refused, refused_protocol = await a.create_datagram_endpoint(
                _Collect, remote_addr=(host, 9)
            )

            async def talk() -> list[tuple[bytes, object]]:
                answers = []
                for payload in (b"one", bytes(range(250)) * 16):
                    client.sendto(payload)
                    data, addr = await echo_protocol.got.get()
                    echo.sendto(data, addr)  # type: ignore[arg-type]
                    answers.append(await mine.got.get())
                refused.sendto(b"anyone?")
                return answers

            answers = await pair.run(talk())
            await pair.run_until_idle()
            return answers, refused_protocol.errors, b.counters

    answers, errors, counters = asyncio.run(session())
    assert [len(data) for data, _ in answers] == [3, 4000]
    assert answers[1][0] == bytes(range(250)) * 16
    assert answers[0][1][:2] == (host, 7)  # type: ignore[index]
    assert [type(error) for error in errors] == [ConnectionRefusedError]
    udp = "udp6" if ":" in host else "udp"
    assert counters[f"{udp}.out.port-unreachable"] == 1
    assert counters[f"{'ip6' if ':' in host else 'ip'}.reasm.oks"] == 1  # the 4,000 bytes
