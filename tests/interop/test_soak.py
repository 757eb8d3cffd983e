"""The soak's short version: tools/soak.py's mixed load for 45 s through the
fault injector (this kernel has no netem): ab, curl downloads and uploads with
their SHA-256 checked, and nc half-closes to the echo service, all at once,
with 2% loss, 5% reordering and 1% duplication both ways. Every body must
match, nothing may fail, no connection or fd may be left, RSS must stay flat.
`sudo python -m tools.soak --minutes 30` is the long run.
"""

from __future__ import annotations

from pathlib import Path

from tools import soak
from tools.losstest import fault_rules
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon

SEED = 20261125
SECONDS = 45


def test_mixed_load_through_loss_reordering_and_duplication(ns: Netns, tmp_path: Path) -> None:
    rules = fault_rules(loss=0.02, reorder=0.05, duplicate=0.01, delay=0.005)
    faults = [arg for rule in rules for arg in ("--fault", rule)]
    with UstackDaemon.start(
        ns, tmp_path, "--log-level", "info", "--no-offload", *faults,
        "--fault-seed", str(SEED), trace=False,
    ) as daemon:  # fmt: skip
        report = soak.run_soak(ns, daemon, SECONDS, rules, SEED, log=lambda _line: None)
        assert daemon.process.poll() is None, daemon.log_text()
    soak.print_report(report)  # shown by pytest when an assertion fails
    assert report.problems == []
    assert "Traceback" not in daemon.log_text()
    for kind, tally in report.tallies.items():
        assert tally.transfers > 0 and tally.bytes > 0, kind
        assert tally.corrupt == tally.failed == tally.ab_failed_requests == 0, kind
    assert report.left == {} and report.fds_end == report.fds_start
    # The impairment was there, and ustack recovered from it.
    counters = report.counters
    assert counters["fault.drop"] and counters["fault.delay"] and counters["fault.duplicate"]
    assert counters["tcp.out.retransmit"] > 0
