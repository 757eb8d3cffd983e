"""`ustack lesson run NAME`, every lesson, against the real daemon and real
Linux tools: it exits 0, writes its files, prints what to look for and the
ladder with both ends' states, and the trace it wrote shows the lesson's
states and segments (checked here on the trace, not only by the lesson).

Each lesson makes its own namespace (as `ustack lesson` does): no fixture."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.stopped_midway import USTACK
from tests.stopped_midway import run_clean
from tests.stopped_midway import stop_midway
from ustack.cli.lesson import run_lesson
from ustack.linux.lab import our_namespaces
from ustack.study.lessons import LESSONS
from ustack.study.lessons import Lesson
from ustack.study.lessons import ustack_states

pytestmark = pytest.mark.netns

# Per lesson: segments its connection must show, (direction, flags it has at least,
# state_before or None, note's start or None), in this order (others may come between).
SEGMENTS: dict[str, list[tuple[str, str, str | None, str | None]]] = {
    "handshake": [("in", "S", "LISTEN", None), ("out", "S.", "SYN_RECEIVED", None),
                  ("in", ".", "SYN_RECEIVED", None)],
    "close-ustack-first": [("out", "F.", "FIN_WAIT_1", None), ("in", ".", "FIN_WAIT_1", None),
                           ("in", "F.", "FIN_WAIT_2", None), ("out", ".", "TIME_WAIT", None)],
    "close-linux-first": [("in", "F.", "ESTABLISHED", None), ("out", "F.", "LAST_ACK", None),
                          ("in", ".", "LAST_ACK", None)],
    "half-close": [("out", "F.", "FIN_WAIT_1", None), ("in", "P.", None, None),
                   ("in", "F.", "FIN_WAIT_2", None)],
    "simultaneous-close": [("out", "F.", "FIN_WAIT_1", None), ("in", "F.", "FIN_WAIT_1", None),
                           ("out", ".", "CLOSING", None), ("in", ".", "CLOSING", None)],
    "lost-fin-fin-wait-1": [("out", "F.", "FIN_WAIT_1", None),
                            ("out", "F.", "FIN_WAIT_1", "retransmission")],
    "lost-fin-last-ack": [("out", "F.", "LAST_ACK", None),
                          ("out", "F.", "LAST_ACK", "retransmission"),
                          ("in", ".", "LAST_ACK", None)],
    "lost-final-ack": [("in", "F.", None, None), ("out", ".", "TIME_WAIT", None),
                       ("in", "F.", "TIME_WAIT", None), ("out", ".", "TIME_WAIT", None)],
    "old-duplicate-syn": [("in", "S", "LISTEN", None), ("out", "S.", "SYN_RECEIVED", None),
                          ("in", "R", "SYN_RECEIVED", None)],
    "closed-port": [("out", "S", "SYN_SENT", None), ("in", "R.", "SYN_SENT", None)],
}  # fmt: skip
NO_LINUX_SOCKET = {"old-duplicate-syn", "closed-port"}


def matches(segment: dict[str, Any], want: tuple[str, str, str | None, str | None]) -> bool:
    direction, flags, before, note = want
    return (
        segment["direction"] == direction
        and set(flags) <= set(segment["flags"])  # (a FIN may ride on the last data: FP.)
        and before in (None, segment["state_before"])
        and (note is None or segment["note"].startswith(note))
    )


def in_order(segments: list[dict[str, Any]], wanted: list[Any]) -> bool:
    rest = iter(segments)
    return all(any(matches(s, want) for s in rest) for want in wanted)


def test_every_lesson_has_its_checks_here() -> None:
    assert set(SEGMENTS) == {lesson.name for lesson in LESSONS}


@pytest.mark.parametrize("lesson", LESSONS, ids=[lesson.name for lesson in LESSONS])
def test_lesson(lesson: Lesson, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = run_lesson(lesson, out)
    printed = capsys.readouterr().out
    assert code == 0, printed
    written = {"trace.jsonl", "trace.pcapng", "ladder.txt", "ladder.svg", "report.html"}
    assert written <= {p.name for p in out.iterdir()}
    assert (out / "trace.pcapng").read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"  # pcapng's SHB
    assert (out / "ladder.svg").read_text().startswith("<svg")
    assert "<html" in (out / "report.html").read_text()
    # What it printed: what to look for, both ends' states, the ladder, the verdict.
    assert "What to look for:" in printed and lesson.title in printed
    assert (out / "ladder.txt").read_text() in printed
    assert "every check of the lesson holds" in printed
    linux = next(line for line in printed.splitlines() if line.startswith("Linux's states:"))
    assert ("(none" in linux) == (lesson.name in NO_LINUX_SOCKET), linux

    # The trace itself: the lesson's connection, its states and segments.
    events = [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()]
    ends = {
        e["conn"]
        for e in events
        if e["type"] == "connection" and lesson.port in (e["local_port"], e["remote_port"])
    }
    assert len(ends) == 1, ends
    (conn,) = ends
    mine = [e for e in events if e.get("conn") == conn]
    states = iter(ustack_states(mine))
    assert all(state in states for state in lesson.states), ustack_states(mine)
    segments = [e for e in mine if e["type"] == "segment"]
    assert in_order(segments, SEGMENTS[lesson.name]), [
        (s["direction"], s["flags"], s["state_before"], s["note"]) for s in segments
    ]
    if lesson.name == "half-close":  # the half-closed side received data
        assert any(s["length"] and s["state_after"] == "FIN_WAIT_2" for s in segments)
    quoted = {e["rule"] for e in mine if e["type"] in ("state", "decision")}
    assert set(lesson.rules) <= quoted


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_a_lesson_stopped_midway_leaves_nothing_behind(
    tmp_path: Path, signum: signal.Signals, code: int
) -> None:
    """Ctrl-C (or SIGTERM) during a lesson: the namespace, the daemon and the
    scratch directory go, and the exit status says which signal stopped it."""
    lesson = ["lesson", "run", "lost-final-ack", "-o", str(tmp_path)]
    # (stop_midway also checks that its scratch directory, with the control
    # socket and the log, is gone)
    assert stop_midway([*USTACK, *lesson], "ustack-lesson", signum) == code


SIGNALLED_WITHIN = Path(__file__).resolve().parents[1] / "signalled_within.py"


@pytest.mark.parametrize(
    ("where", "signum"),
    [
        ("finalizer", signal.SIGINT),
        ("finalizer", signal.SIGTERM),
        ("lock", signal.SIGTERM),  # (Popen's exit waits only briefly after KeyboardInterrupt)
        ("clean-up", signal.SIGINT),
        ("clean-up", signal.SIGTERM),
    ],
    ids=["finalizer-SIGINT", "finalizer-SIGTERM", "lock-SIGTERM", "clean-up-SIGINT",
         "clean-up-SIGTERM"],
)  # fmt: skip
def test_a_stop_signal_at_any_moment_leaves_nothing_behind(
    tmp_path: Path, where: str, signum: signal.Signals
) -> None:
    """A stop signal at the worst moments for a handler that raises (Python
    raises between any two bytecodes): in a finalizer, which can only print
    the exception ("Exception ignored in", a traceback: CI saw it, and the
    lesson played on to exit 0); just after subprocess took a waitpid lock
    (never released: the clean-up's wait hung); a second one in the clean-up
    (cut short: the namespace left). The lesson still exits 128 + N,
    silently, nothing left (tests/signalled_within.py)."""
    argv = [sys.executable, str(SIGNALLED_WITHIN), "lesson", where, str(int(signum)), str(tmp_path)]
    lesson = run_clean(argv)
    assert lesson.returncode == 128 + signum
    assert our_namespaces("ustack-lesson", lesson.pid) == []
