"""The benchmarks and tools stop as `ustack lab` stops (the lab's Stopper):
a stop signal while they run in their namespaces ends what runs there, and
the run unwinds through its own clean-up. No traceback, no namespace left,
nothing in TMPDIR but a run's folder a tool says it kept ("kept PATH", for
its log); the exit status says the signal (128 + N; losstest: 2, its code
for an interrupted run)."""

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
def test_the_loss_test_stopped_midway_leaves_nothing_behind(signum: signal.Signals) -> None:
    losstest = [sys.executable, "-m", "tools.losstest", "--size", "1M"]
    assert stop_midway(losstest, "ustack-t", signum) == 2


# The other scripts that make namespaces run their main through lab.stoppable
# (their own helpers, run again inside the namespace, do not).
SCRIPTS = {
    "soak": ["-m", "tools.soak", "--seconds", "60"],
    "scale": ["-m", "tools.scale"],
    "synflood": ["-m", "tools.synflood"],
    "nc_bulk": [str(ROOT / "bench" / "nc_bulk.py")],
    "echo_latency": [str(ROOT / "bench" / "echo_latency.py")],
    "two_writes": [str(ROOT / "bench" / "two_writes.py")],
    "conn_cpu": [str(ROOT / "bench" / "conn_cpu.py")],
    "multiqueue": [str(ROOT / "bench" / "multiqueue.py")],
    "udp_echo": [str(ROOT / "bench" / "udp_echo.py")],
    "app_throughput": [str(ROOT / "bench" / "app_throughput.py")],
}


@pytest.mark.parametrize("script", list(SCRIPTS.values()), ids=list(SCRIPTS))
def test_every_script_that_makes_namespaces_stops_on_sigterm(script: list[str]) -> None:
    assert stop_midway([sys.executable, *script], None, signal.SIGTERM) == 128 + signal.SIGTERM
