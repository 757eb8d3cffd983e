"""bench/calls.py, the count of calls per segment, runs and counts what it says.

The figures themselves are the benchmark's (issue 18 compares them before and
after); here only that the count is taken over a whole transfer, both
families, and that it sees the segments and ACKs that went by.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "calls.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_calls", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("family", [4, 6])
def test_calls_are_counted_over_a_whole_transfer(family: int) -> None:
    result = _load().run(200_000, 1460, family, detail=True)
    segments = result["data segments"]
    assert 200_000 // 1460 <= segments <= 200_000 // 1448 + 10  # every byte once (1448: timestamps)
    assert 0 < result["ACKs"] <= segments
    assert result["receive path: calls per data segment in"] > 10
    assert result["send path: calls per ACK in"] > 10
    # The stack's input, seen by the profiler once per packet at least.
    assert result["receiver functions"]["stack.py:receive"] >= segments


def test_time_mode_runs_the_transfer_without_the_profiler() -> None:
    result = _load().timed(200_000, 1460, 4, batch=False, repeat=1)
    assert result["data segments"] >= 200_000 // 1448
    assert result["µs per data segment (best of 1, no profiler)"] > 0
    assert sys.getprofile() is None


def test_batch_mode_sends_fewer_acks_for_the_same_segments() -> None:
    calls = _load()
    one_by_one = calls.run(200_000, 1460, 4, detail=False)
    batched = calls.run(200_000, 1460, 4, detail=False, batch=True)
    assert batched["data segments"] == one_by_one["data segments"]
    assert batched["ACKs"] < one_by_one["ACKs"]
