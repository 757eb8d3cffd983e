"""The report page in a real browser (Debian's chromium, headless, offline,
from a file): it loads with no console message at all (no error, no CSP
violation, no failed fetch), holds the connections, ladder arrows, graph
SVGs and event rows, and a click on an arrow fills the details panel and
marks the graphs. The click is the page's own `?selftest=1` hook, which
writes what it found into #selftest for --dump-dom to carry out."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_ladder import write_trace
from test_plot_data import fast_retransmit

from ustack.study.plot_data import KINDS
from ustack.study.report import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs chromium (Debian: apt install chromium)"
)


def headless(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
            "--virtual-time-budget=5000", *args,
        ],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    trace = write_trace(folder / "t.jsonl", fast_retransmit().trace)
    out = folder / "session.html"
    out.write_text(build_report(trace, None), encoding="utf-8")
    return out


def selftest(tmp_path: Path, page: Path) -> tuple[dict[str, Any], str, str]:
    done = headless(tmp_path, "--dump-dom", f"{page.as_uri()}?selftest=1")
    found = re.search(r'<pre id="selftest">(.*?)</pre>', done.stdout, re.S)
    errors = re.search(r'<pre id="errors">(.*?)</pre>', done.stdout, re.S)
    assert found is not None and errors is not None, done.stdout[:500]
    return json.loads(html.unescape(found.group(1))), errors.group(1), done.stderr


def test_the_page_loads_offline_with_everything_and_no_console_message(
    tmp_path: Path, page: Path
) -> None:
    result, errors, stderr = selftest(tmp_path, page)
    assert errors == ""  # window.onerror wrote nothing
    assert console_messages(stderr) == []
    assert result["connections"] == 1
    assert result["graphs"] == len(KINDS)
    assert result["arrows"] == result["linked_arrows"] > 10
    assert result["rows"] >= result["arrows"]


def test_a_click_on_an_arrow_fills_the_details_and_marks_the_graphs(
    tmp_path: Path, page: Path
) -> None:
    result, _errors, _stderr = selftest(tmp_path, page)
    details = result["details"]
    # The first arrow is the peer's SYN: its fields, the state change, the rule, the sentence.
    assert "S seq 0" in details
    assert "LISTEN -> SYN_RECEIVED" in details
    assert "RFC 9293 3.5" in details
    assert "asks to open a connection to ustack" in details
    assert result["selected_rows"] == 1
    assert result["cursors"] == len(KINDS)  # a line at its time in every graph


def test_a_screenshot_of_the_page(tmp_path: Path, page: Path) -> None:
    shot = tmp_path / "report.png"
    done = headless(
        tmp_path, "--hide-scrollbars", "--window-size=1200,900", f"--screenshot={shot}",
        page.as_uri() + "#ev=0",
    )  # fmt: skip
    assert console_messages(done.stderr) == []
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
