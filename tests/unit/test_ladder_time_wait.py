"""The ladder tells why TIME_WAIT exists (issue 17): our final ACK is lost,
the peer resends its FIN, ustack acknowledges it again and the 2MSL timer
starts over (RFC 9293 3.10.7.4, behaviour 43). And it says how to read its
"win" numbers: as sent, scaled or not.

The scripts run on the sans-I/O core (tests/tcpscript.py) and go through a
JSONL file, as `ustack ladder` reads them.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from tcpscript import TcpScript
from test_ladder import LOST
from test_ladder import P
from test_ladder import U
from test_ladder import arrows
from test_ladder import handshake
from test_ladder import trace_of

from ustack.study.explain import explain
from ustack.study.ladder import build_ladder
from ustack.study.ladder import render_ascii
from ustack.study.ladder import render_mermaid
from ustack.study.ladder import render_svg
from ustack.trace.records import SegmentEvent
from ustack.trace.records import TraceEvent


def lost_final_ack_in_time_wait() -> list[TraceEvent]:
    """ustack closes first; its ACK of the peer's FIN (at 30 ms) is lost, so
    at 500 ms the peer sends its FIN again: ustack answers the same ACK and
    waits 2MSL (2 s here) from then on, until 2.5 s, not 2.03 s."""
    t = handshake()
    t.at(0.020)
    t.close()
    t.expect("F.", seq=U, ack=P)
    t.at(0.0204)
    t.send(".", seq=P, ack=U + 1)
    t.at(0.030)
    t.send("F.", seq=P, ack=U + 1)
    final_ack = t.expect(".", seq=U + 1, ack=P + 1)
    t.at(0.500)
    t.send("F.", seq=P, ack=U + 1)
    t.expect(".", seq=U + 1, ack=P + 1)
    t.at(2.1)
    # (the table, not the application's handle: once in TIME_WAIT the stack
    # keeps a compact record, time_wait.py, and the handle reads CLOSED)
    assert t.table == {"TIME_WAIT": 1}  # restarted: not over yet
    t.at(3.0)
    assert t.table == {}
    first = next(
        e for e in t.trace
        if isinstance(e, SegmentEvent) and e.direction == "out" and e.time == 0.030
    )  # fmt: skip
    assert (first.flags, first.rel_ack) == (final_ack.flags, 2)
    return [dataclasses.replace(e, note=LOST) if e is first else e for e in t.trace]


def test_the_re_ack_and_the_2msl_restart_are_drawn(tmp_path: Path) -> None:
    text = render_ascii(trace_of(tmp_path, lost_final_ack_in_time_wait))
    assert arrows(text)[-4:] == [
        ("in", "F. seq 1 ack 2 win 65535", "TIME_WAIT"),
        ("out", ". seq 2 ack 2 win 32768 (lost)", ""),
        ("in", "F. seq 1 ack 2 win 65535", ""),
        ("out", ". seq 2 ack 2 win 32768 (re-ACK of the resent FIN)", ""),
    ]
    lines = text.splitlines()
    re_ack = next(i for i, line in enumerate(lines) if "re-ACK" in line)
    lost = next(i for i, line in enumerate(lines) if "(lost)" in line)
    assert "  X--" in lines[lost] and lines[lost + 1].endswith("(2MSL timer 2000 ms)")
    assert lost + 3 == re_ack  # the lost ACK, the 2MSL timer, the resent FIN, the re-ACK
    assert lines[re_ack].lstrip().startswith("500.000")
    assert lines[re_ack + 1].endswith("(2MSL restarted 2000 ms)")
    assert lines[re_ack + 2].split()[0] == "2500.000"  # 2 s after the restart
    assert lines[re_ack + 2].endswith("(2MSL timer expired)")
    assert lines[-1].endswith("CLOSED")


def test_the_restart_shows_in_every_drawing(tmp_path: Path) -> None:
    trace = trace_of(tmp_path, lost_final_ack_in_time_wait)
    ladder = build_ladder(trace)
    notes = [row.note for row in ladder.rows if row.kind == "note"]
    assert notes.count("2MSL timer 2000 ms") == 1 and "2MSL restarted 2000 ms" in notes
    mermaid = render_mermaid(trace).splitlines()
    assert "    U->>P: 500.000 ms . seq 2 ack 2 win 32768 (re-ACK of the resent FIN)" in mermaid
    assert "    Note over U: 2MSL restarted 2000 ms" in mermaid
    svg = render_svg(trace)
    assert "win 32768 (re-ACK of the resent FIN)</text>" in svg
    assert 'font-style="italic">2MSL restarted 2000 ms</text>' in svg
    assert ">win: as sent (unscaled): in bytes x128" in svg


def test_explain_tells_the_resent_fin_and_the_restart(tmp_path: Path) -> None:
    steps = explain(trace_of(tmp_path, lost_final_ack_in_time_wait))
    assert "The ACK never arrives: the fault injector dropped it" in steps[-3]
    assert "2MSL restarts" in steps[-2] and "acknowledges it (ack 2)" in steps[-2]
    assert steps[-1].startswith(f"{len(steps)}. TIME_WAIT is over")


# ---- windows: as sent, and what they are in bytes ---------------------------------------------


def test_the_window_legend_says_the_numbers_are_unscaled(tmp_path: Path) -> None:
    ladder = build_ladder(trace_of(tmp_path, lost_final_ack_in_time_wait))
    # The peer offered window scale 7, ustack 3 (handshake()'s SYN and our SYN,ACK).
    assert ladder.windows == (
        "win: as sent (unscaled): in bytes x128 for the peer's, x8 for ustack's after the "
        "SYNs (RFC 7323 2.2)"
    )
    assert render_ascii(trace_of(tmp_path, lost_final_ack_in_time_wait)).splitlines()[1] == (
        ladder.windows
    )


def test_without_window_scaling_the_numbers_are_bytes(tmp_path: Path) -> None:
    def no_scale() -> TcpScript:
        t = TcpScript(listen=80)
        t.send("S", seq=P - 1, mss=1460)  # no window scale: neither side scales
        t.expect("S.", ack=P)
        t.at(0.001)
        t.send(".", seq=P, ack=U)
        return t

    ladder = build_ladder(trace_of(tmp_path, no_scale))
    assert ladder.windows == "win: in bytes (no window scaling on this connection)"


def test_a_trace_without_the_syns_cannot_scale(tmp_path: Path) -> None:
    trace = [e for e in trace_of(tmp_path, lost_final_ack_in_time_wait) if e.get("time", 0) > 0.01]
    text = render_ascii(trace)
    assert "the window scale is unknown" in text.splitlines()[1]
    assert re.search(r"win 32768 \(re-ACK", text)
