"""The lessons' checks over a trace (ustack/study/lessons.py) and what
`ustack lesson` prints, on traces real runs wrote (tests/lesson_traces/:
`ustack lesson run closed-port` and `lost-fin-last-ack`): a run that showed
the lesson passes; one that did not is told, named, and exits 1."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from ustack.cli.lesson import SCENARIOS
from ustack.cli.lesson import show
from ustack.study.lessons import LESSONS
from ustack.study.lessons import find_lesson
from ustack.study.lessons import missing
from ustack.study.lessons import the_connection
from ustack.study.load import Record
from ustack.study.load import load_trace

TRACES = Path(__file__).parent.parent / "lesson_traces"


def lesson_records(name: str) -> list[Record]:
    lesson = find_lesson(name)
    assert lesson is not None
    summary = the_connection(load_trace(TRACES / f"{name}.jsonl"), lesson.port)
    assert summary is not None
    return summary.events


def test_every_lesson_is_played_and_unique() -> None:
    names = [lesson.name for lesson in LESSONS]
    assert len(set(names)) == len(names) == len(SCENARIOS)
    assert set(SCENARIOS) == set(names)


@pytest.mark.parametrize("name", ["closed-port", "lost-fin-last-ack"])
def test_a_run_that_showed_the_lesson_passes(name: str) -> None:
    lesson = find_lesson(name)
    assert lesson is not None
    assert missing(lesson, lesson_records(name)) == []


def test_a_fin_that_was_not_lost_is_named_missing() -> None:
    lesson = find_lesson("lost-fin-last-ack")
    assert lesson is not None
    records = [r for r in lesson_records("lost-fin-last-ack") if r["type"] != "fault"]
    assert missing(lesson, records) == [
        "ustack's FIN lost, then retransmitted from LAST_ACK after the RTO"
    ]


def test_states_out_of_order_and_a_rule_not_quoted_are_named() -> None:
    lesson = find_lesson("closed-port")
    assert lesson is not None
    records = [
        r
        for r in lesson_records("closed-port")
        if not (r["type"] == "state" and r["new"] == "CLOSED")
    ]
    gaps = missing(lesson, records)
    assert gaps[0] == "ustack's states SYN_SENT -> CLOSED (seen: CLOSED -> SYN_SENT)"
    assert "a step quoting RFC 9293 3.10.7.3" in gaps


def test_show_prints_what_to_look_for_the_states_and_the_ladder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(TRACES / "closed-port.jsonl", tmp_path / "trace.jsonl")
    lesson = find_lesson("closed-port")
    assert lesson is not None
    assert show(lesson, tmp_path) == 0
    out = capsys.readouterr().out
    assert "What to look for:" in out and "ECONNREFUSED" in out
    assert "ustack's states: CLOSED -> SYN_SENT -> CLOSED" in out
    assert "Linux's states:  (none: no Linux socket had it)" in out
    assert (tmp_path / "ladder.txt").read_text() in out
    assert "R. seq 0 ack 1" in out  # Linux's RST,ACK arrow
    assert {"ladder.svg", "report.html"} <= {p.name for p in tmp_path.iterdir()}
    assert out.rstrip().endswith("every check of the lesson holds.")


@pytest.mark.filterwarnings("error")  # (matplotlib's, for a graph with nothing named in it)
def test_show_says_clearly_when_the_run_did_not_show_the_lesson(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The same run, without Linux's RST: as if it never came.
    kept = [
        line
        for line in (TRACES / "closed-port.jsonl").read_text().splitlines()
        if json.loads(line).get("flags") != "R."
    ]
    (tmp_path / "trace.jsonl").write_text("\n".join(kept) + "\n")
    lesson = find_lesson("closed-port")
    assert lesson is not None
    assert show(lesson, tmp_path, failure="ustack connect said nothing") == 1
    out = capsys.readouterr().out
    assert "This run did NOT show the lesson" in out
    assert "missing: the run failed: ustack connect said nothing" in out
    assert "missing: Linux's RST,ACK in" in out


def test_show_without_the_connection_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(TRACES / "closed-port.jsonl", tmp_path / "trace.jsonl")
    lesson = find_lesson("handshake")  # port 7: not in this trace
    assert lesson is not None
    assert show(lesson, tmp_path) == 1
    assert "missing: a connection on port 7 (the trace has none)" in capsys.readouterr().out


def test_the_linux_states_a_lesson_wants_are_checked_on_the_peer_states() -> None:
    lesson = find_lesson("lost-fin-last-ack")
    assert lesson is not None
    records = lesson_records("lost-fin-last-ack")
    assert missing(replace(lesson, linux=("FIN_WAIT_1", "FIN_WAIT_2")), records) == []
    assert missing(replace(lesson, linux=("FIN_WAIT_1", "CLOSING")), records) == [
        "Linux's states FIN_WAIT_1 -> CLOSING (seen: CLOSED -> SYN_SENT -> ESTABLISHED -> "
        "FIN_WAIT_1 -> FIN_WAIT_2 -> TIME_WAIT)"
    ]
