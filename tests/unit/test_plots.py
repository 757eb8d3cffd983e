"""`ustack plot` and `ustack report` as a user runs them: SVG and PNG files
written with the expected elements, one file per graph with --kind all, a
page of bounded size, and the one-line errors (no matplotlib: exit 2)."""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from test_ladder import write_trace
from test_plot_data import fast_retransmit
from test_plot_data import long_transfer

from ustack import cli
from ustack.study import report
from ustack.study.plot_data import KINDS

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    return write_trace(tmp_path / "t.jsonl", fast_retransmit().trace)


def texts(svg: Path) -> list[str]:
    root = ET.parse(svg).getroot()
    return ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


def gids(svg: Path) -> set[str]:
    return {e.get("id", "") for e in ET.parse(svg).getroot().iter()}


def test_time_sequence_svg_has_its_bars_lines_and_marks(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "ts.svg"
    assert cli.main(["plot", str(trace), "-o", str(out)]) == 0
    words = texts(out)
    assert any(w.startswith("time-sequence: ustack's data") for w in words)
    assert "time since the connection's start (s)" in words
    assert {"segment sent", "retransmission", "ACK", "fast retransmit"} <= set(words)
    assert "ACK + receive window (unscaled)" in words
    ids = gids(out)
    assert {"sent-new", "sent-retransmission", "ack-line", "window-line"} <= ids
    # the bars are paths: one per segment in the collection of new segments
    bars = next(e for e in ET.parse(out).getroot().iter() if e.get("id") == "sent-new")
    assert len(list(bars.iter(f"{SVG}path"))) == 8


def test_every_kind_into_a_directory_svg_and_png(trace: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "graphs"
    assert cli.main(["plot", str(trace), "--kind", "all", "-o", str(folder)]) == 0
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == sorted(f"conn-1-{kind}.svg" for kind in KINDS)
    assert capsys.readouterr().out.splitlines() == [str(folder / f"conn-1-{k}.svg") for k in KINDS]
    assert {"cwnd", "ssthresh", "bytes in flight"} <= set(texts(folder / "conn-1-cwnd.svg"))
    assert {"SRTT", "RTTVAR", "RTO"} <= set(texts(folder / "conn-1-rtt.svg"))
    states = texts(folder / "conn-1-states.svg")
    assert {"ESTABLISHED", "SYN_RECEIVED", "ustack"} <= set(states)
    png = tmp_path / "cwnd.png"
    assert cli.main(["plot", str(trace), "--kind", "cwnd", "-o", str(png)]) == 0
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_without_matplotlib_one_line_names_the_extra(
    trace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    assert cli.main(["plot", str(trace), "-o", str(tmp_path / "x.svg")]) == 2
    assert cli.main(["report", str(trace), "-o", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["ustack: error: ustack plot needs matplotlib: pip install 'ustack[plot]'"] * 2
    assert not list(tmp_path.glob("x.*"))


def test_a_trace_that_is_not_one_is_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("hello\n")
    assert cli.main(["plot", str(bad)]) == 1
    assert cli.main(["report", str(bad), "-o", str(tmp_path / "r.html")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("not a ustack JSONL trace" in line for line in err)


def test_report_is_self_contained(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    assert cli.main(["report", str(trace), "-o", str(out)]) == 0
    page = out.read_text()
    # nothing fetched: no src= or href= to anywhere, a CSP that forbids it
    assert not re.search(r"""(src|href)=["'](https?:|//|file:)""", page)
    assert "default-src 'none'" in page
    assert page.count("<svg") == 1 + len(KINDS)  # the ladder and the graphs
    rows = re.findall(r'<tr class="ev [^"]*" data-ev="(\d+)">', page)
    assert len(rows) == page.count('class="ev ') > 10


def test_report_of_a_long_transfer_stays_in_its_budget(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(report, "MAX_ROWS", 150)
    monkeypatch.setattr(report, "GRAPH_POINTS", 100)
    trace = write_trace(tmp_path / "long.jsonl", long_transfer(600).trace)
    page = report.build_report(trace, None)
    assert "plain segments left out" in page
    assert page.count('class="ev ') <= 150 + 2 * report.EDGE_ROWS
    full = len(trace.read_bytes())
    assert len(page) < full  # summarised, not copied


def test_report_lists_every_connection_and_ids_are_unique(tmp_path: Path) -> None:
    t = fast_retransmit()
    t.send("S", seq=9000, mss=1000, sport=40001)  # a second connection, half-open
    trace = write_trace(tmp_path / "two.jsonl", t.trace)
    page = report.build_report(trace, None)
    listing = page[page.index('<table id="connections">') : page.index("</table>")]
    assert listing.count("<tr") == 3  # the head and two connections
    assert '<tr class="chosen"><td>1</td>' in listing  # the longest-lived one, shown
    assert "--conn ID" in page
    ids = re.findall(r' id="([^"]+)"', page)
    assert len(ids) == len(set(ids))
    for ref in set(re.findall(r"url\(#([^)]+)\)", page)):
        assert ref in ids
