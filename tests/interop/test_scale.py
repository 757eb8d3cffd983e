"""10,000 concurrent connections, three rounds: tools/scale.py's run in the test suite.

Each round a Linux client in the namespace opens 10,000 connections (64
handshakes at a time), exchanges data on each (half echo, half HTTP keep-alive),
holds them all open at once, then closes them all with data once more: on the
echo half Linux sends the first FIN, on the HTTP half ustack does and holds
TIME_WAIT. The daemon runs without its trace (thousands of connections would
make the trace the thing measured). Measured at 7ca25fc on the 2-core machine:
about 8 s a round, 10.2 KiB of daemon RSS per held connection.
"""

from __future__ import annotations

from pathlib import Path

from tools import scale
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon

CONNECTIONS, ROUNDS = 10_000, 3
OPTIONS = scale.ScaleOptions(connections=CONNECTIONS, rounds=ROUNDS)


def test_ten_thousand_connections_three_rounds(ns: Netns, tmp_path: Path) -> None:
    with UstackDaemon.start(ns, tmp_path, "--log-level", "info", trace=False) as daemon:
        report = scale.run_scale(ns, daemon, OPTIONS, log=lambda _line: None)
        assert daemon.process.poll() is None, daemon.log_text()
    scale.print_report(report)  # shown by pytest when an assertion fails
    assert report.problems == []
    assert "Traceback" not in daemon.log_text()
    for r in report.rounds:
        # Every connection opened, was checked, was held at once, and closed.
        assert (r.opened, r.established, r.connections_rows, r.closed) == (CONNECTIONS,) * 4
        assert r.open_errors == r.close_errors == {}
        assert r.counters["tcp.passive-opens"] == CONNECTIONS
        assert r.counters["tcp.syncookies.sent"] == 0  # the pacing kept the backlog free
        assert r.empty_s is not None  # TIME_WAIT and LAST_ACK all ended
        # The stack's connections cost no file descriptor, in any round.
        assert r.before.fds == r.held.fds == r.after.fds == report.fds_start
    assert report.final_left == {}
    assert report.probe["failures"] == 0
