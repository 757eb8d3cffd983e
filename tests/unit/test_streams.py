"""Streams as asyncio users know them, on two stacks in memory (virtual clock):
get_extra_info (peername, sockname, the socket-like object, the connection),
per-connection options (TCP_NODELAY, keep-alive, SO_LINGER 0, congestion
control) given at open and through setsockopt, flow control with a slow
reader, and the errors a kernel socket raises."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import socket
import struct
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any

import pytest

import ustack
from tests.stream_handlers import recording_resets
from ustack.app import MemoryPair
from ustack.tcp.congestion.cubic import Cubic
from ustack.tcp.congestion.newreno import NewReno
from ustack.tcp.states import State
from ustack.trace.records import SegmentEvent
from ustack.trace.records import TraceEvent
from ustack.trace.vocabulary import SegmentNote

A_HOST, B_HOST, A_HOST6, B_HOST6 = "198.18.0.1", "198.18.0.2", "2001:2::1", "2001:2::2"
PORT = 5000
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def on_pair(body: Callable[[MemoryPair], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with ustack.open_memory_pair(clock="virtual") as pair:
            return await body(pair)

    return asyncio.run(main())


def data_out(events: list[TraceEvent]) -> list[SegmentEvent]:
    return [e for e in events if isinstance(e, SegmentEvent) and e.direction == "out" and e.length]


async def hold_open(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()


@pytest.mark.parametrize(("client", "server"), [(A_HOST, B_HOST), (A_HOST6, B_HOST6)])
def test_extra_info_names_the_ends_the_socket_and_the_connection(client: str, server: str) -> None:
    async def body(pair: MemoryPair) -> None:
        a, b = pair
        await b.start_server(hold_open, port=PORT)
        _, writer = await pair.run(a.open_connection(server, PORT))
        peer, local = writer.get_extra_info("peername"), writer.get_extra_info("sockname")
        assert peer[:2] == (server, PORT) and local[0] == client
        assert len(peer) == (4 if ":" in server else 2)  # AF_INET6's 4-tuple
        sock = writer.get_extra_info("socket")
        family = socket.AF_INET6 if ":" in server else socket.AF_INET
        assert (sock.family, sock.type, sock.proto) == (
            family, socket.SOCK_STREAM, socket.IPPROTO_TCP,
        )  # fmt: skip
        assert sock.getpeername() == peer and sock.getsockname() == local
        assert sock.fileno() == -1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 256 * 1024
        conn = writer.get_extra_info("connection")
        assert conn.state is State.ESTABLISHED
        assert conn.cwnd == 10 * conn.mss  # RFC 6928's initial window
        assert conn.srtt is not None and conn.srtt >= 0
        with pytest.raises(OSError) as raised:
            sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
        assert raised.value.errno == errno.ENOPROTOOPT
        writer.close()

    on_pair(body)


def acks_between_the_two_bytes(
    nodelay: bool | None, set_later: bool = False, set_while_held: bool = False
) -> int:
    """Two 1-byte writes a loop turn apart: how many ACKs came in between the
    segment of the first byte and that of the second. `set_while_held`:
    TCP_NODELAY set once Nagle holds the second byte."""

    async def body(pair: MemoryPair) -> int:
        a, b = pair
        await b.start_server(hold_open, port=PORT)
        _, writer = await pair.run(a.open_connection(B_HOST, PORT, nodelay=nodelay))
        if set_later:
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        async def two_writes() -> None:
            writer.write(b"a")
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            writer.write(b"b")
            await writer.drain()
            if set_while_held:
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        await pair.run(two_writes())
        await pair.run_until_idle(limit=1.0)
        first, second = data_out(a.events)[:2]
        between = a.events[a.events.index(first) + 1 : a.events.index(second)]
        writer.close()
        return sum(isinstance(e, SegmentEvent) and e.direction == "in" for e in between)

    result: int = on_pair(body)
    return result


def test_nagle_holds_a_small_segment_until_the_ack_and_nodelay_does_not() -> None:
    # RFC 9293 3.7.4 (Nagle): the second byte waits for the ACK of the
    # first; with TCP_NODELAY it goes at once, behind the first.
    assert acks_between_the_two_bytes(nodelay=None) == 1
    assert acks_between_the_two_bytes(nodelay=True) == 0
    assert acks_between_the_two_bytes(nodelay=None, set_later=True) == 0


def test_nodelay_set_while_nagle_holds_data_sends_it_at_once() -> None:
    # As Linux's tcp_sock_set_nodelay: turning Nagle off pushes what it held
    # (tcp_push_pending_frames), it does not wait for the ACK.
    assert acks_between_the_two_bytes(nodelay=None, set_while_held=True) == 0


def test_keepalive_probes_a_silent_peer_then_times_out() -> None:
    """RFC 1122 4.2.3.6: idle 10 s, then 3 probes 5 s apart unanswered: ETIMEDOUT at 25 s."""

    async def body(pair: MemoryPair) -> tuple[float, int]:
        a, b = pair
        await b.start_server(hold_open, port=PORT)
        options = {"keepalive_idle": 10, "keepalive_interval": 5, "keepalive_count": 3}
        reader, writer = await pair.run(a.open_connection(B_HOST, PORT, **options))
        sock = writer.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        b.faults.add(ustack.app.fault_rules(["drop:dir=in"])[0])  # b goes silent
        start = pair.now
        with pytest.raises(TimeoutError):
            await pair.run(reader.read())
        probes = [e for e in a.events if getattr(e, "note", None) is SegmentNote.KEEPALIVE_PROBE]
        return pair.now - start, len(probes)

    elapsed, probes = on_pair(body)
    assert elapsed == pytest.approx(25.0)
    assert probes == 3


def test_keepalive_turned_on_through_setsockopt() -> None:
    async def body(pair: MemoryPair) -> int:
        a, b = pair
        await b.start_server(hold_open, port=PORT)
        _, writer = await pair.run(a.open_connection(B_HOST, PORT))
        sock = writer.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
        await pair.run_until_idle(limit=35.0)  # one probe, answered by the peer
        probes = [e for e in a.events if getattr(e, "note", None) is SegmentNote.KEEPALIVE_PROBE]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
        assert writer.get_extra_info("connection").state is State.ESTABLISHED
        writer.close()
        return len(probes)

    assert on_pair(body) == 1


@pytest.mark.parametrize("how", ["option", "setsockopt"])
def test_linger_zero_makes_close_a_reset(how: str) -> None:
    seen: list[BaseException] = []
    server = recording_resets(seen)

    async def body(pair: MemoryPair) -> list[str]:
        a, b = pair
        await b.start_server(server, port=PORT)
        linger = 0 if how == "option" else None
        _, writer = await pair.run(a.open_connection(B_HOST, PORT, linger=linger))
        sock = writer.get_extra_info("socket")
        if how == "setsockopt":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert struct.unpack("ii", sock.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)) == (
            1, 0,
        )  # fmt: skip
        writer.write(b"unsent?")
        writer.close()
        await pair.run_until_idle()
        return [e.flags for e in a.events if isinstance(e, SegmentEvent) and e.direction == "out"]

    flags = on_pair(body)
    assert flags[-1].startswith("R") and not any("F" in f for f in flags)
    assert len(seen) == 1


def test_congestion_control_chosen_at_open_and_on_a_server() -> None:
    async def body(pair: MemoryPair) -> None:
        a, b = pair
        accepted: list[asyncio.StreamWriter] = []

        async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)
            await reader.read()

        await b.start_server(keep, port=PORT, congestion="reno")
        _, writer = await pair.run(a.open_connection(B_HOST, PORT, congestion="cubic"))
        await pair.run_until_idle(limit=0.1)
        sock = writer.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(
            b"\0"
        ) == b"cubic"  # fmt: skip
        assert isinstance(writer.get_extra_info("connection").recovery.cc, Cubic)
        server_side = accepted[0].get_extra_info("connection")
        assert isinstance(server_side.recovery.cc, NewReno)
        name = (
            accepted[0]
            .get_extra_info("socket")
            .getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
        )
        assert name.rstrip(b"\0") == b"reno"
        with pytest.raises(OSError) as raised:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"reno")
        assert raised.value.errno == errno.EISCONN
        with pytest.raises(ValueError, match="unknown congestion control"):
            await a.open_connection(B_HOST, PORT, congestion="bbr")
        writer.close()

    on_pair(body)


def test_a_slow_reader_pauses_the_writer_until_it_reads() -> None:
    """Flow control end to end: the reader's window closes, the writer's
    buffer fills past the high-water mark (pause_writing: drain blocks), and
    everything arrives in order once the reader reads."""
    go = asyncio.Event
    payload = bytes(range(256)) * 8192  # 2 MiB
    received: list[bytes] = []

    async def body(pair: MemoryPair) -> bool:
        a, b = pair
        start_reading = go()

        async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await start_reading.wait()
            received.append(await reader.read())

        await b.start_server(slow, port=PORT)
        _, writer = await pair.run(a.open_connection(B_HOST, PORT))

        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sending = asyncio.ensure_future(send())
        await pair.run_until_idle(limit=10.0)  # zero-window probes, no progress
        blocked = not sending.done() and writer.transport.get_write_buffer_size() > 0
        start_reading.set()

        async def finish() -> None:
            await sending

        await pair.run(finish())
        await pair.run_until_idle()
        writer.close()
        return blocked

    assert on_pair(body) is True
    assert hashlib.sha256(received[0]).digest() == hashlib.sha256(payload).digest()


def test_a_peer_abort_is_connection_reset_for_the_reader() -> None:
    async def aborts(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)
        writer.transport.abort()

    async def body(pair: MemoryPair) -> None:
        a, b = pair
        await b.start_server(aborts, port=PORT)
        reader, writer = await pair.run(a.open_connection(B_HOST, PORT))
        writer.write(b"x")
        with pytest.raises(ConnectionResetError):
            await pair.run(reader.read())
        assert writer.transport.is_closing()

    on_pair(body)


def test_wait_closed_returns_once_the_fin_is_queued_as_with_a_kernel_socket() -> None:
    """A kernel socket's close() hands the FIN to the kernel and wait_closed()
    returns at once, even if the peer has gone silent; the connection lives
    on, orphaned, retransmitting its FIN (RFC 9293 3.10.4). So here."""

    async def body(pair: MemoryPair) -> tuple[float, str]:
        a, b = pair
        await b.start_server(hold_open, port=PORT)
        _, writer = await pair.run(a.open_connection(B_HOST, PORT))
        b.faults.add(ustack.app.fault_rules(["drop:dir=in"])[0])  # b goes silent
        start = pair.now
        writer.write(b"last words")
        writer.close()
        await pair.run(writer.wait_closed(), limit=5.0)
        return pair.now - start, a.connections()[0]["state"]

    elapsed, state = on_pair(body)
    assert elapsed == 0.0
    assert state == "FIN_WAIT_1"  # still trying
