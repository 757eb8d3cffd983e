"""The graphs and the report page of a real lossy download: curl fetches
2 MB from the daemon, whose fault injector drops 1% of its segments; the
trace's segments carry the TCB, the time-sequence graph shows the
retransmissions, the cwnd graph the cuts, and the page stays in its budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from ustack.linux.lab import STACK_ADDRESS
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon
from ustack.study import load
from ustack.study.plot import connection_plot_data
from ustack.study.plot import render
from ustack.study.report import REPORT_BUDGET
from ustack.study.report import build_report

pytestmark = pytest.mark.netns

SIZE = 2_000_000


def test_a_lossy_download_in_pictures(ns: Netns, tmp_path: Path) -> None:
    args = ["--no-offload", "--fault", "drop:dir=out,prob=0.01", "--fault-seed", "17"]
    with UstackDaemon.start(ns, tmp_path, *args) as daemon:
        got = ns.run(
            "curl", "-sS", "--max-time", "60", "-o", str(tmp_path / "got.bin"),
            f"http://{STACK_ADDRESS}/bytes/{SIZE}", timeout=90,
        )  # fmt: skip
        assert got.returncode == 0, got.stderr
        daemon.wait_until_no_connections()
    summary = load.read_connection(daemon.trace, None)
    _events, data = connection_plot_data(summary)
    assert data.sender == "ustack" and data.window_scaled  # Linux and ustack both scale
    assert max(s.end for s in data.sent) >= SIZE
    lost = [s for s in data.sent if s.lost]
    resent = [s for s in data.sent if s.kind == "retransmission"]
    assert lost and resent  # the injector's drops, and what was sent again
    assert {m.label for m in data.markers} & {"fast retransmit", "RACK lost", "RTO", "TLP"}
    _times, cwnd = data.series("cwnd")
    _times, ssthresh = data.series("ssthresh")
    assert ssthresh and min(cwnd[len(cwnd) // 10 :]) < max(cwnd)  # a loss cut the window
    _times, srtt = data.series("srtt")
    # (TSecr times in 1 ms ticks, RFC 7323 4: a sub-millisecond path reads 0.)
    assert srtt and all(0 <= value < 1 for value in srtt)
    assert any(s.state == "ESTABLISHED" for s in data.states)
    png = render(data, "time-sequence", "png")
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    page = build_report(daemon.trace, None)
    assert len(page.encode()) < REPORT_BUDGET
    assert page.count("(retransmission)") >= len(resent)
