#!/usr/bin/env python3
"""TIME_WAIT at scale, in one process on a virtual clock (issue 18 item 4).

    python -m tools.time_wait_load [--counts 1000,10000,50000] [--cycles 2000] [--json FILE]

Two sans-I/O stacks on an in-memory wire: `a` (198.18.0.1) connects to `b`
(198.18.0.2, listeners on ports 80-83) and closes first, so each connection
ends in TIME_WAIT on `a` (2 MSL of a day: none expires during the run). For
each count N of TIME_WAITs held by `a` it reports:

- bytes per TIME_WAIT: tracemalloc's traced memory of the process, before
  and after N connections went through connect, close and into TIME_WAIT,
  divided by N (the peer's side is closed and forgotten by then);
- bytes per idle ESTABLISHED connection: the same, for N connections held
  open on both ends (each end's share: half the total);
- CPU per connect+close: process time of `--cycles` more connections, each
  connect, handshake, close, FIN exchange into TIME_WAIT (both stacks' work),
  at N TIME_WAITs (the cost must not grow with N);
- the longest pause of the cyclic GC during those cycles and of one full
  collection (gc.collect()) at N TIME_WAITs, timed with gc.callbacks, with
  the daemon's GC settings (`ustack.daemon.tune_gc` after start-up when it
  exists, else the young threshold it sets).

No network, no root: the numbers are the core's. Wall-clock independent
except the GC pauses (a full collection's duration), which are noisy on a
shared machine: repeat and take ranges.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from ustack.cli.args import bounded_int
from ustack.cli.args import file_to_write
from ustack.stack import Stack
from ustack.tcp.config import TcpConfig
from ustack.tcp.connection import TcpConnection

A = 0xC6120001  # 198.18.0.1
B = 0xC6120002  # 198.18.0.2
PORTS = (80, 81, 82, 83)  # 4 x 28,232 ephemeral ports: room for 100,000 TIME_WAITs


class Pair:
    """Two stacks, packets handed over at once (no loss, no delay)."""

    def __init__(self, msl: float = 86_400.0) -> None:
        config = TcpConfig(msl=msl, max_connections=200_000, delayed_ack=0.0)
        self.now = 0.0
        self._queue: collections.deque[tuple[Stack, bytes]] = collections.deque()
        self.a = Stack(A, self._to(lambda: self.b), tcp_config=config)
        self.b = Stack(B, self._to(lambda: self.a), tcp_config=config)
        self.accepted: list[TcpConnection] = []
        for port in PORTS:
            self.b.tcp.listen(port, self._accept, backlog=1 << 20)
        self._next_port = 0

    def _to(self, peer: Callable[[], Stack]) -> Callable[..., bool]:
        def transmit(packet: bytes | bytearray, gso_size: int = 0) -> bool:
            self._queue.append((peer(), bytes(packet)))
            return True

        return transmit

    def _accept(self, conn: TcpConnection) -> None:
        self.accepted.append(conn)
        self.b.tcp.attach(conn, _ignore)

    def run(self) -> None:
        queue = self._queue
        while queue:
            stack, packet = queue.popleft()
            stack.receive(packet, self.now)

    def connect(self) -> TcpConnection:
        port = PORTS[self._next_port % len(PORTS)]
        self._next_port += 1
        conn = self.a.connect(B, port, self.now)
        self.a.tcp.attach(conn, _ignore)
        self.a.tcp.flush(conn)
        self.run()
        return conn

    def cycle(self) -> None:
        """One connection: open, then `a` closes first, `b` answers with its
        FIN; `a` ends in TIME_WAIT, `b` forgets it."""
        conn = self.connect()
        conn.close(self.now)
        self.a.tcp.flush(conn)
        self.run()
        theirs = self.accepted.pop()
        theirs.close(self.now)
        self.b.tcp.flush(theirs)
        self.run()
        self.now += 0.0001
        for stack in (self.a, self.b):  # as the runner: the timers due, each turn
            deadline = stack.next_deadline()
            if deadline is not None and deadline <= self.now:
                stack.handle_timers(self.now)
        self.run()


def _ignore(_event: object) -> None:
    pass


class GcTimer:
    """The duration of every collection, by generation (gc.callbacks)."""

    def __init__(self) -> None:
        self.longest = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        generation = info["generation"]
        self.count[generation] += 1
        self.longest[generation] = max(self.longest[generation], took)


def daemon_gc_settings() -> str:
    """What the daemon does to the collector after start-up."""
    try:
        from ustack.daemon import tune_gc
    except ImportError:
        from ustack.daemon import GC_YOUNG_THRESHOLD

        _, older, oldest = gc.get_threshold()
        gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
        return f"threshold {gc.get_threshold()}"
    tune_gc()
    return f"tune_gc: threshold {gc.get_threshold()}, frozen {gc.get_freeze_count()}"


def bytes_per_time_wait(count: int) -> float:
    pair = Pair()
    pair.cycle()  # first-use allocations out of the way
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(count):
        pair.cycle()
    pair.accepted.clear()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert pair.a.tcp.queued() == {"TIME_WAIT": count + 1}, pair.a.tcp.queued()
    assert not pair.b.tcp.queued(), pair.b.tcp.queued()
    return (after - before) / count


def bytes_per_established(count: int) -> float:
    pair = Pair()
    pair.connect()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    mine = [pair.connect() for _ in range(count)]
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert pair.a.tcp.queued() == {"ESTABLISHED": count + 1}
    del mine
    return (after - before) / count / 2  # one end's share


def at_count(count: int, cycles: int, tune: bool) -> dict[str, Any]:
    gc.collect()  # (the garbage of earlier measurements)
    pair = Pair()
    settings = daemon_gc_settings() if tune else f"threshold {gc.get_threshold()}"
    for _ in range(count):
        pair.cycle()
    pair.accepted.clear()
    timer = GcTimer()
    gc.callbacks.append(timer)
    try:
        started = time.process_time()
        for _ in range(cycles):
            pair.cycle()
        cpu = time.process_time() - started
        during = list(timer.longest)
        counts = list(timer.count)
        full = GcTimer()
        gc.callbacks.append(full)
        gc.collect()
        gc.callbacks.remove(full)
    finally:
        gc.callbacks.remove(timer)
        if hasattr(gc, "unfreeze"):
            gc.unfreeze()
    return {
        "time_waits": count,
        "us_per_connection": round(cpu / cycles * 1e6, 1),
        "gc": settings,
        "gc_longest_ms_by_generation": [round(x * 1000, 2) for x in during],
        "gc_collections_by_generation": counts,
        "full_collection_ms": round(full.longest[2] * 1000, 2),
        "tracked_objects": len(gc.get_objects()),
    }


def _counts(text: str) -> list[int]:
    """--counts: TIME_WAIT counts, comma-separated (e.g. 1000,10000)."""
    one = bounded_int(1, 10**7)
    return [one(part) for part in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=_counts, default=[1000, 10000, 50000])
    parser.add_argument("--cycles", type=bounded_int(1, 10**7), default=2000)
    parser.add_argument("--memory-count", type=bounded_int(1, 10**7), default=5000)
    parser.add_argument("--json", type=file_to_write, default=None)
    parser.add_argument(
        "--untuned", action="store_true", help="CPython's GC settings, not the daemon's"
    )
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "bytes_per_time_wait": round(bytes_per_time_wait(args.memory_count)),
        "bytes_per_established": round(bytes_per_established(args.memory_count)),
        "rows": [],
    }
    print(f"bytes per TIME_WAIT: {report['bytes_per_time_wait']}")
    print(f"bytes per idle ESTABLISHED connection (one end): {report['bytes_per_established']}")
    for count in args.counts:
        row = at_count(count, args.cycles, not args.untuned)
        report["rows"].append(row)
        print(json.dumps(row))
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
