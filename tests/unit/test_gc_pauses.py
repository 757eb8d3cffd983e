"""ustack serve --gc-stats: the recorder times real collections (gc.callbacks),
counts the slow ones, and resets; `ustack stats` shows it on one line."""

from __future__ import annotations

import gc
import itertools

from ustack.cli.clients import gc_line
from ustack.daemon.gc_pauses import GcPauses


def test_a_full_collection_is_timed_and_counted_by_generation() -> None:
    ticks = itertools.count(0, 25_000_000)  # each clock read 25 ms later: every pause 25 ms
    pauses = GcPauses(clock=lambda: next(ticks))
    pauses.install()
    try:
        gc.collect(2)
    finally:
        pauses.remove()
    assert pauses._callback not in gc.callbacks
    report = pauses.report()
    assert report["collections"][2] >= 1
    assert report["max_ms"] == 25.0 and report["max_generation"] is not None
    n = sum(report["collections"])
    assert report["total_ms"] == 25.0 * n
    assert (report["over_10ms"], report["over_20ms"], report["over_200ms"]) == (n, n, 0)
    pauses.reset()
    assert pauses.report()["collections"] == [0, 0, 0] and pauses.report()["max_ms"] == 0


def test_nothing_is_recorded_once_removed() -> None:
    pauses = GcPauses()
    pauses.install()
    pauses.install()  # twice: still one callback
    assert gc.callbacks.count(pauses._callback) == 1
    pauses.remove()
    gc.collect()
    assert pauses.report()["collections"] == [0, 0, 0]


def test_the_stats_line() -> None:
    pauses = GcPauses(clock=iter([0, 30_000_000]).__next__)
    pauses._callback("start", {"generation": 2})
    pauses._callback("stop", {"generation": 2, "collected": 7})
    line = gc_line(pauses.report())
    assert line.startswith("gc: collections 0/0/1 (gen 0/1/2), longest pause 30.0 ms (gen 2)")
    assert "10ms 1, 20ms 1, 200ms 0" in line
