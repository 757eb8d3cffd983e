"""The benchmark and the loss test stop as `ustack lab` stops (the lab's
Stopper): a stop signal while they run in their namespaces ends what runs
there, and the run unwinds through its own clean-up. No traceback, no
namespace and nothing in TMPDIR left; the exit status says the signal
(bench: 128 + N; losstest: 2, its code for an interrupted run)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from tests.stopped_midway import stop_midway

pytestmark = pytest.mark.netns
ROOT = Path(__file__).resolve().parents[2]
STOPS = pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"]
)


@STOPS
def test_the_benchmark_stopped_midway_leaves_nothing_behind(signum: signal.Signals) -> None:
    bench = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick"]
    assert stop_midway(bench, "ustack-b", signum) == 128 + signum


@STOPS
def test_the_loss_test_stopped_midway_leaves_nothing_behind(
    signum: signal.Signals, tmp_path: Path
) -> None:
    # --workdir: an interrupted run keeps its work directory (the daemon's log), here
    # outside the TMPDIR that must stay empty.
    losstest = [sys.executable, "-m", "tools.losstest", "--size", "1M",
                "--workdir", str(tmp_path / "work")]  # fmt: skip
    assert stop_midway(losstest, "ustack-t", signum) == 2
