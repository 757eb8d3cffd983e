"""`ustack serve --gc-stats`: how long CPython's garbage collections stop the
daemon. Every collection stops the event loop, so every connection, for as
long as it walks the generation; a full one walks every object, TIME_WAIT
connections included (bench/README.md: 0.2-0.5 s pauses at 20k+ TIME_WAITs,
Linux clients retransmitting after their 200 ms RTO). Opt-in: two clock reads
per collection, nothing per packet."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

# Pauses at least this long are counted apart (ms): a 20 ms pause is issue 18's
# bar at 10k connections, 200 ms a Linux peer's minimum RTO.
SLOW_MS = (10, 20, 200)


class GcPauses:
    """Times each collection between gc.callbacks' "start" and "stop"."""

    def __init__(self, clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self._clock = clock
        self._started = 0
        self.reset()

    def reset(self) -> None:
        self.collections = [0, 0, 0]  # per generation
        self.total_ns = 0
        self.max_ns = 0
        self.max_generation: int | None = None
        self.collected = 0  # objects freed (unreachable cycles)
        self.slow = dict.fromkeys(SLOW_MS, 0)

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def remove(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        pause = self._clock() - self._started
        generation = info.get("generation", 2)
        self.collections[generation] += 1
        self.total_ns += pause
        self.collected += info.get("collected", 0)
        if pause > self.max_ns:
            self.max_ns, self.max_generation = pause, generation
        for ms in SLOW_MS:
            if pause >= ms * 1_000_000:
                self.slow[ms] += 1

    def report(self) -> dict[str, Any]:
        """The figures since the start (or the last reset), as the stats reply's "gc"."""
        return {
            "collections": list(self.collections),
            "total_ms": round(self.total_ns / 1e6, 3),
            "max_ms": round(self.max_ns / 1e6, 3),
            "max_generation": self.max_generation,
            "collected": self.collected,
            **{f"over_{ms}ms": n for ms, n in self.slow.items()},
            "threshold": list(gc.get_threshold()),
            "counts": list(gc.get_count()),  # gc.get_count(): toward each next collection
        }
