"""Memory per connection of the sans-I/O core, measured with tracemalloc:
what an idle ESTABLISHED connection costs (after its handshake, and after a
request and its answer, all acknowledged), and what is left once closed.

The figures are Python's allocations, deterministic for a given interpreter;
the bounds leave room for its version. Before the empty deques went (events,
the receive buffer's chunks, RACK's send log), an idle connection took
5.3 KB after its handshake and 6.2 KB after an exchange; now 3.2 and 3.5 KB.
"""

from __future__ import annotations

import gc
import struct
import tracemalloc

from ustack.stack import Stack
from ustack.tcp.connection import TcpConnection
from ustack.wire.ipv4 import PROTO_TCP, build_ipv4_in_place
from ustack.wire.tcp import ACK, FIN, SYN, TcpOptions, build_tcp

US, PEER = 0xC6120002, 0xC6120001
COUNT = 500
SYN_OPTIONS = TcpOptions(mss=1460, window_scale=7, sack_permitted=True, timestamps=(1, 0))
TS = TcpOptions(timestamps=(2, 0))


class Server:
    """A Stack listening on 80; the peer's side is built by hand, one port each."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.stack = Stack(US, lambda packet: self.out.append(bytes(packet)) or True)
        self.accepted: list[TcpConnection] = []
        self.stack.tcp.listen(80, self.accepted.append, backlog=COUNT * 4)
        self.ours: dict[int, int] = {}  # peer port -> our next SEQ
        self.theirs: dict[int, int] = {}  # peer port -> its next SEQ

    def segment(self, port: int, flags: int, payload: bytes = b"", now: float = 0.0) -> None:
        options = SYN_OPTIONS if flags & SYN else TS
        packet = build_tcp(
            src=PEER, dst=US, src_port=port, dst_port=80, seq=self.theirs.get(port, 1000),
            ack=self.ours.get(port, 0), flags=flags, window=64240, options=options,
            payload=payload, headroom=20,
        )  # fmt: skip
        build_ipv4_in_place(packet, src=PEER, dst=US, protocol=PROTO_TCP, ttl=64, identification=1)
        self.out.clear()
        self.stack.receive(packet, now)
        self.theirs[port] = self.theirs.get(port, 1000) + len(payload) + bool(flags & (SYN | FIN))

    def handshake(self, port: int) -> TcpConnection:
        self.segment(port, SYN)
        self.ours[port] = struct.unpack_from("!I", self.out[-1], 24)[0] + 1
        self.segment(port, ACK)
        return self.accepted[-1]

    def exchange(self, port: int, conn: TcpConnection) -> None:
        """A request, the answer, its ACK: then nothing in flight."""
        self.segment(port, ACK, b"GET / HTTP/1.1\r\n\r\n")
        assert conn.read(1 << 16, 0.0)
        conn.send(b"x" * 1000, 0.0)
        self.stack.tcp.flush(conn)
        self.ours[port] += 1000
        self.segment(port, ACK)

    def close(self, port: int, conn: TcpConnection) -> None:
        self.segment(port, FIN | ACK)
        conn.close(0.0)
        self.stack.tcp.flush(conn)
        self.ours[port] += 1
        self.segment(port, ACK)


def bytes_per_connection(exchange: bool) -> tuple[float, float]:
    """(bytes per idle ESTABLISHED connection, bytes left per connection once
    they are all closed), over COUNT connections after a warm-up."""
    server = Server()
    for port in range(1000, 1100):  # warm-up: the stack's own tables and caches
        conn = server.handshake(port)
        if exchange:
            server.exchange(port, conn)
        server.close(port, conn)
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        conns = {port: server.handshake(port) for port in range(2000, 2000 + COUNT)}
        if exchange:
            for port, conn in conns.items():
                server.exchange(port, conn)
        server.accepted.clear()
        gc.collect()
        idle = tracemalloc.get_traced_memory()[0]
        assert server.stack.tcp.queued() == {"ESTABLISHED": COUNT}
        for port, conn in conns.items():
            server.close(port, conn)
        server.stack.tcp.handle_timers(1000.0)
        del conns, conn
        gc.collect()
        closed = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert server.stack.tcp.queued() == {}
    return (idle - start) / COUNT, (closed - start) / COUNT


def test_an_idle_connection_costs_under_4_kb_and_is_freed_on_close() -> None:
    idle, left = bytes_per_connection(exchange=False)
    assert idle < 4000, f"{idle:.0f} bytes per idle connection"
    assert left < 500, f"{left:.0f} bytes per connection left after close"  # the tables' slack


def test_a_connection_idle_after_an_exchange_costs_under_4_kb() -> None:
    idle, left = bytes_per_connection(exchange=True)
    assert idle < 4000, f"{idle:.0f} bytes per idle connection after an exchange"
    assert left < 500, f"{left:.0f} bytes per connection left after close"


def bytes_per_time_wait() -> float:
    """Bytes per connection in TIME_WAIT (we closed first, the peer's FIN
    came), over COUNT connections after a warm-up; the timer structure and
    the demux's tables included."""
    server = Server()

    def into_time_wait(port: int) -> TcpConnection:
        conn = server.handshake(port)
        conn.close(0.0)
        server.stack.tcp.flush(conn)
        server.ours[port] += 1
        server.segment(port, FIN | ACK)
        return conn

    for port in range(1000, 1100):
        into_time_wait(port)
    server.stack.tcp.handle_timers(1000.0)
    server.accepted.clear()
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for port in range(2000, 2000 + COUNT):
            into_time_wait(port)
        server.accepted.clear()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert server.stack.tcp.queued() == {"TIME_WAIT": COUNT}
    return (held - start) / COUNT


def test_a_time_wait_costs_what_its_connection_keeps() -> None:
    # Issue 18's target is 512 bytes (Linux's timewait socket is ~260): the
    # connection is still kept whole in TIME_WAIT, so the bound is today's,
    # to catch growth; a compact TIME_WAIT record would bring it down.
    held = bytes_per_time_wait()
    assert held < 3700, f"{held:.0f} bytes per TIME_WAIT"
