"""What tracing costs the TCP core, per segment.

Run: python bench/trace_cost.py

Two Stack instances are wired back to back in this process (no asyncio, no
TUN, no sockets): each one's transmit callable queues the packet for the
other, and a pump delivers the queues until they are empty. A client sends
SEGMENTS full-sized segments to a server that reads everything at once, so
every packet goes through the whole path: TCP output, IP output, IP input
(checksums, parsing), demultiplexing, segment processing and the ACK back.

Each mode is one way of setting `trace` on both stacks:

    off      trace=None: one `is not None` test per place
    null     a callable that does nothing: the cost of building the events
    jsonl    JsonlWriter(io.StringIO()): events as JSON lines
    text     TextWriter(io.StringIO()): events as aligned text lines
    pcap     (extra) trace=None, but a PcapWriter(io.BytesIO()) packet tap
    pcapng   a PcapngWriter(io.BytesIO()) as both tap and tracer: every
             packet with its events as packet comments

"us/segment" divides the time of a whole transfer by the TCP segments the
two stacks received (data one way, ACKs the other). Every cell is the best of
REPEATS transfers; the modes take turns within a repeat so that a slow patch
of the machine does not fall on one mode only.
"""

from __future__ import annotations

import argparse
import io
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import machine  # bench/machine.py: scripts here run as python bench/NAME.py

from ustack.stack import Stack
from ustack.study.pcapng import PcapngWriter
from ustack.study.sinks import JsonlWriter
from ustack.study.sinks import PcapWriter
from ustack.study.sinks import TextWriter
from ustack.tcp.connection import TcpConfig
from ustack.tcp.connection import TcpConnection
from ustack.tcp.events import AppEvent
from ustack.tcp.events import DataReceived
from ustack.tcp.events import SendSpace
from ustack.trace.records import PacketTap
from ustack.trace.records import TraceEvent
from ustack.trace.records import Tracer

CLIENT = 0xC6120001  # 198.18.0.1
SERVER = 0xC6120002  # 198.18.0.2
PORT = 9
MSS = 1460
SEGMENTS = 4000  # data segments per transfer
REPEATS = 5
WRITE_CHUNK = 64 * 1024  # bytes per write, once that much send buffer is free
STEP = 1e-5  # virtual seconds per delivered packet: the clock moves, no timer fires


@dataclass(frozen=True)
class Mode:
    name: str
    what: str
    # A fresh (tracer, packet tap) for one transfer; both stacks share them.
    make: Callable[[], tuple[Tracer | None, PacketTap | None]]


def _null(_event: TraceEvent) -> None:
    """A trace sink that does nothing: what remains is the cost of the events."""


def _pcapng() -> tuple[Tracer, PacketTap]:
    writer = PcapngWriter(io.BytesIO())
    return writer, writer.tap


MODES = (
    Mode("off", "trace=None", lambda: (None, None)),
    Mode("null", "no-op callable", lambda: (_null, None)),
    Mode("jsonl", "JsonlWriter(StringIO)", lambda: (JsonlWriter(io.StringIO()), None)),
    Mode("text", "TextWriter(StringIO)", lambda: (TextWriter(io.StringIO()), None)),
    Mode("pcap", "PcapWriter(BytesIO) tap", lambda: (None, PcapWriter(io.BytesIO()))),
    Mode("pcapng", "PcapngWriter tap+tracer", _pcapng),
)


class BackToBack:
    """A client and a server Stack whose packets go straight to each other."""

    def __init__(self, tracer: Tracer | None, tap: PacketTap | None) -> None:
        config = TcpConfig(mss=MSS)
        self.now = 0.0
        self._to_server: deque[bytes] = deque()
        self._to_client: deque[bytes] = deque()
        self.client = Stack(CLIENT, self._queue_for_server, 1500, config, tracer, tap=tap)
        self.server = Stack(SERVER, self._queue_for_client, 1500, config, tracer, tap=tap)
        self.received = 0
        self._server_conn: TcpConnection | None = None
        self.server.tcp.listen(PORT, self._accept, now=self.now)

    def _queue_for_server(self, packet: bytes) -> bool:
        self._to_server.append(packet)
        return True

    def _queue_for_client(self, packet: bytes) -> bool:
        self._to_client.append(packet)
        return True

    def _accept(self, conn: TcpConnection) -> None:
        self._server_conn = conn
        self.server.tcp.attach(conn, self._on_server_event)

    def _on_server_event(self, event: AppEvent) -> None:
        # An application that reads at once keeps the receive window open.
        if isinstance(event, DataReceived) and self._server_conn is not None:
            self.received += len(self._server_conn.read(1 << 30, self.now))

    def pump(self) -> None:
        """Deliver packets both ways until neither side has anything to say."""
        to_server, to_client = self._to_server, self._to_client
        while to_server or to_client:
            while to_server:
                self.now += STEP
                self.server.receive(to_server.popleft(), self.now)
            while to_client:
                self.now += STEP
                self.client.receive(to_client.popleft(), self.now)

    def segments(self) -> int:
        """TCP segments the two stacks received."""
        return self.client.counters["tcp.in"] + self.server.counters["tcp.in"]


def transfer(mode: Mode, segments: int) -> tuple[float, int]:
    """One bulk transfer of `segments` full segments: (seconds, segments handled)."""
    tracer, tap = mode.make()
    wire = BackToBack(tracer, tap)
    total = segments * MSS
    data = memoryview(bytes(range(256)) * (total // 256 + 1))[:total]
    sent = 0

    conn: TcpConnection

    def push(event: AppEvent | None = None) -> None:
        nonlocal sent
        # Like a transport with a low-water mark: write once a good share of
        # the send buffer is free, not after every ACK (that would make the
        # core send a small segment per ACK: it has no sender-side SWS
        # avoidance of its own).
        if event is None or (isinstance(event, SendSpace) and conn.send_space >= WRITE_CHUNK):
            while sent < total and (n := conn.send(data[sent : sent + WRITE_CHUNK], wire.now)):
                sent += n

    start = time.perf_counter()
    conn = wire.client.tcp.connect(SERVER, PORT, wire.now)
    wire.client.tcp.attach(conn, push)
    wire.pump()
    push()
    wire.client.tcp.flush(conn)
    wire.pump()
    elapsed = time.perf_counter() - start
    if wire.received != total:
        raise RuntimeError(f"{mode.name}: {wire.received} of {total} bytes arrived")
    return elapsed, wire.segments()


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # (--help)
    print(machine.describe())
    transfer(MODES[0], 200)  # warm-up: imports, caches, the compiled header structs
    best: dict[str, float] = {mode.name: float("inf") for mode in MODES}
    handled: dict[str, int] = {}
    started = time.perf_counter()
    for _ in range(REPEATS):
        for mode in MODES:
            seconds, count = transfer(mode, SEGMENTS)
            best[mode.name] = min(best[mode.name], seconds)
            handled[mode.name] = count
    print(
        f"{SEGMENTS} data segments of {MSS} bytes per transfer, best of {REPEATS};"
        f" segments handled per transfer: {handled['off']} (data + ACKs)"
    )
    header = f"{'mode':<6} {'sink':<24} {'us/segment':>11} {'vs off':>8}"
    print(header)
    print("-" * len(header))
    off = best["off"] / handled["off"]
    for mode in MODES:
        per_segment = best[mode.name] / handled[mode.name]
        print(
            f"{mode.name:<6} {mode.what:<24} {per_segment * 1e6:>11.2f} {per_segment / off:>7.2f}x"
        )
    print(f"(measured in {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
