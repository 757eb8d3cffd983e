"""`ustack ladder` and `ustack explain`, on real traces: each scenario runs on
the sans-I/O core (tests/tcpscript.py), goes through JsonlWriter into a file,
and is read back with load_trace, as the commands do.

Sequence numbers: the peer's data starts at P = PEER_ISS + 1, ours at U = OUR_ISS + 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from tcpscript import OUR_ISS
from tcpscript import PEER_ISS
from tcpscript import TcpScript

from ustack.study.explain import add_explain_arguments
from ustack.study.explain import explain
from ustack.study.explain import explain_command
from ustack.study.ladder import add_ladder_arguments
from ustack.study.ladder import build_ladder
from ustack.study.ladder import ladder_command
from ustack.study.ladder import render_ascii
from ustack.study.ladder import render_mermaid
from ustack.study.ladder import render_svg
from ustack.study.load import TraceError
from ustack.study.load import choose_connection
from ustack.study.load import connections
from ustack.study.load import load_trace
from ustack.study.sinks import JsonlWriter
from ustack.trace.records import PeerStateChange
from ustack.trace.records import SegmentEvent
from ustack.trace.records import TraceEvent

P = PEER_ISS + 1
U = OUR_ISS + 1
LOST = "dropped by fault injector"


# ---- scenarios ---------------------------------------------------------------------------


def handshake(tail_loss_probe: bool = False) -> TcpScript:
    # No tail loss probes unless asked: most scenarios tell the RTO's story.
    t = TcpScript(listen=80, tail_loss_probe=tail_loss_probe)
    t.send("S", seq=PEER_ISS, mss=1460, ws=7, sack_permitted=True)
    t.expect("S.", seq=OUR_ISS, ack=P)
    t.at(0.0004)
    t.send(".", seq=P, ack=U)
    t.expect_none()
    return t


def peer_sends_first(payload: bytes) -> TcpScript:
    """At 5 ms the peer sends `payload` and ustack acknowledges it."""
    t = handshake()
    t.at(0.005)
    t.send("P.", seq=P, ack=U, payload=payload)
    t.expect(".", ack=P + len(payload))
    return t


def ustack_closes_first() -> TcpScript:
    """At 10 ms the application closes: ustack sends its FIN."""
    t = handshake()
    t.at(0.010)
    t.close()
    t.expect("F.", seq=U, ack=P)
    return t


def active_close() -> TcpScript:
    t = handshake()
    t.at(0.010)
    t.write(b"hello")
    t.expect("P.", seq=U)
    t.at(0.0105)
    t.send(".", seq=P, ack=U + 5)
    t.at(0.020)
    t.close()
    t.expect("F.", seq=U + 5, ack=P)
    t.at(0.0204)
    t.send(".", seq=P, ack=U + 6)
    t.at(0.030)
    t.send("F.", seq=P, ack=U + 6)
    t.expect(".", seq=U + 6, ack=P + 1)
    t.at(3.0)  # TIME_WAIT (2 * msl 1 s) is over
    return t


def passive_close() -> TcpScript:
    t = peer_sends_first(b"GET / HTTP/1.0\r\n\r\n")  # 18 bytes
    t.at(0.006)
    t.read()
    t.write(b"x" * 1000)
    t.expect("P.", seq=U)
    t.at(0.0064)
    t.send(".", seq=P + 18, ack=U + 1000)
    t.at(0.010)
    t.send("F.", seq=P + 18, ack=U + 1000)
    t.expect(".", ack=P + 19)
    t.at(0.011)
    t.read()
    t.close()
    t.expect("F.", seq=U + 1000, ack=P + 19)
    t.at(0.0114)
    t.send(".", seq=P + 19, ack=U + 1001)
    t.expect_none()
    return t


def simultaneous_close() -> TcpScript:
    t = ustack_closes_first()
    t.at(0.0102)
    t.send("F.", seq=P, ack=U)  # crosses ours
    t.expect(".", seq=U + 1, ack=P + 1)
    t.at(0.0105)
    t.send(".", seq=P + 1, ack=U + 1)
    t.at(3.0)
    return t


def reset() -> TcpScript:
    t = peer_sends_first(b"hi")
    t.at(0.008)
    t.send("R.", seq=P + 2, ack=U)
    t.expect_none()
    return t


def peer(time: float, old: str, new: str, conn: int | None = 1) -> PeerStateChange:
    return PeerStateChange(time, conn, "198.18.0.2", 80, "198.18.0.1", 40000, old, new)


def lost_fin_with_peer_states() -> list[TraceEvent]:
    """Our first FIN is lost (as the fault injector marks it) and resent on
    RTO; the Linux side's own states come from its tracepoint."""
    t = ustack_closes_first()
    t.at(1.010)
    t.expect("F.", seq=U, ack=P)  # the retransmission
    t.at(1.0104)
    t.send(".", seq=P, ack=U + 1)
    t.at(1.020)
    t.send("F.", seq=P, ack=U + 1)
    t.expect(".", seq=U + 1, ack=P + 1)
    t.at(3.5)
    first_fin = next(
        e
        for e in t.trace
        if isinstance(e, SegmentEvent) and e.flags == "F." and e.direction == "out"
    )
    events = [dataclasses.replace(e, note=LOST) if e is first_fin else e for e in t.trace]
    peers = [
        peer(0.0, "CLOSED", "SYN_SENT", conn=None),  # before our connection exists
        peer(0.0002, "SYN_SENT", "ESTABLISHED"),
        peer(1.0102, "ESTABLISHED", "CLOSE_WAIT"),
        peer(1.020, "CLOSE_WAIT", "LAST_ACK"),
        peer(1.0202, "LAST_ACK", "CLOSED"),
    ]
    # Stable sort: at equal times the peer's change comes first, as it does in Linux.
    return sorted([*peers, *events], key=lambda e: e.time)


def write_trace(path: Path, events: Iterable[TraceEvent]) -> Path:
    with path.open("w", encoding="utf-8") as stream:
        writer = JsonlWriter(stream)
        for event in events:
            writer(event)
    return path


def trace_of(tmp_path: Path, scenario: Callable[[], Any], name: str = "") -> list[dict[str, Any]]:
    made = scenario()
    events = made.trace if isinstance(made, TcpScript) else made
    path = write_trace(tmp_path / f"{name or scenario.__name__}.jsonl", events)
    return load_trace(path)


ARROW = re.compile(r"\|(?P<body>[-<X ][^|]*[->X ])\|(?:  (?P<state>\S+))?$")


def arrows(ladder: str) -> list[tuple[str, str, str]]:
    """(direction, label, ustack state beside it) of each arrow line."""
    found = []
    for line in ladder.splitlines():
        match = ARROW.search(line)
        if match is None or "-" not in match["body"]:
            continue
        body = match["body"]
        direction = "out" if body.startswith(("<", "  X")) else "in"
        label = body.strip(" <>X-")
        found.append((direction, label, match["state"] or ""))
    return found


def peer_states(ladder: str) -> list[str]:
    """The states written left of the peer's lifeline, top to bottom."""
    pattern = re.compile(r"\s*(?:\d+\.\d{3})?\s+(\S+) \|")
    return [m[1] for line in ladder.splitlines() if (m := pattern.match(line))]


# ---- ASCII -------------------------------------------------------------------------------

ACTIVE_CLOSE_GOLDEN = """\
connection 1: Linux peer 198.18.0.1:40000 <-> ustack 198.18.0.2:80 (passive open)
win: as sent (unscaled): in bytes x128 for the peer's, x8 for ustack's after the SYNs (RFC 7323 2.2)

 time ms  Linux peer                                                              ustack
                    |                                                              |  LISTEN
   0.000            |----- S seq 0 win 65535 [mss 1460,wscale 7,sackOK] ---------->|  SYN_RECEIVED
   0.000            |<---- S. seq 0 ack 1 win 65535 [mss 1460,wscale 3,sackOK] ----|
                    |                                                              |  (RTO set 1000 ms)
   0.400            |----- . seq 1 ack 1 win 65535 ------------------------------->|  ESTABLISHED
  10.000            |<---- P. seq 1 ack 1 win 32768 len 5 -------------------------|
                    |                                                              |  (RTO set 1000 ms)
  10.500            |----- . seq 1 ack 6 win 65535 ------------------------------->|
  20.000            |<---- F. seq 6 ack 1 win 32768 -------------------------------|  FIN_WAIT_1
                    |                                                              |  (RTO set 1000 ms)
  20.400            |----- . seq 1 ack 7 win 65535 ------------------------------->|  FIN_WAIT_2
                    |                                                              |  (fin timeout 60 s)
  30.000            |----- F. seq 1 ack 7 win 65535 ------------------------------>|  TIME_WAIT
  30.000            |<---- . seq 7 ack 2 win 32768 --------------------------------|
                    |                                                              |  (2MSL timer 2000 ms)
2030.000            |                                                              |  (2MSL timer expired)
                    |                                                              |  CLOSED
"""


def test_active_close_golden_ascii(tmp_path: Path) -> None:
    # A change here is a change of layout: make it on purpose, then update the golden.
    text = render_ascii(trace_of(tmp_path, active_close))
    assert text == ACTIVE_CLOSE_GOLDEN
    assert (
        max(len(line) for line in text.splitlines()) <= 110
    )  # a wide terminal, SYN options and all


def test_handshake_arrows_states_and_options(tmp_path: Path) -> None:
    text = render_ascii(trace_of(tmp_path, handshake))
    assert arrows(text) == [
        ("in", "S seq 0 win 65535 [mss 1460,wscale 7,sackOK]", "SYN_RECEIVED"),
        ("out", "S. seq 0 ack 1 win 65535 [mss 1460,wscale 3,sackOK]", ""),
        ("in", ". seq 1 ack 1 win 65535", "ESTABLISHED"),
    ]
    header, first_states = text.splitlines()[3:5]
    assert header.split() == ["time", "ms", "Linux", "peer", "ustack"]
    assert first_states.split() == ["|", "|", "LISTEN"]  # no peer states in this trace
    assert "(RTO set 1000 ms)" in text


# The arrows that follow the handshake, and the ustack state beside each.
AFTER_THE_HANDSHAKE = {
    passive_close: [
        ("in", "P. seq 1 ack 1 win 65535 len 18", ""),
        ("out", ". seq 1 ack 19 win 32766", ""),
        ("out", "P. seq 1 ack 19 win 32766 len 1000", ""),
        ("in", ". seq 19 ack 1001 win 65535", ""),
        ("in", "F. seq 19 ack 1001 win 65535", "CLOSE_WAIT"),
        ("out", ". seq 1001 ack 20 win 32766", ""),
        ("out", "F. seq 1001 ack 20 win 32766", "LAST_ACK"),
        ("in", ". seq 20 ack 1002 win 65535", "CLOSED"),
    ],
    simultaneous_close: [
        ("out", "F. seq 1 ack 1 win 32768", "FIN_WAIT_1"),
        ("in", "F. seq 1 ack 1 win 65535", "CLOSING"),
        ("out", ". seq 2 ack 2 win 32768", ""),
        ("in", ". seq 2 ack 2 win 65535", "TIME_WAIT"),
    ],
    reset: [
        ("in", "P. seq 1 ack 1 win 65535 len 2", ""),
        ("out", ". seq 1 ack 3 win 32768", ""),
        ("in", "R. seq 3 ack 1 win 65535", "CLOSED"),
    ],
}


@pytest.mark.parametrize("scenario", list(AFTER_THE_HANDSHAKE), ids=lambda s: s.__name__)
def test_arrows_and_states_after_the_handshake(tmp_path: Path, scenario: Callable[[], Any]) -> None:
    text = render_ascii(trace_of(tmp_path, scenario))
    assert arrows(text)[3:] == AFTER_THE_HANDSHAKE[scenario]


def test_passive_close_has_no_time_wait(tmp_path: Path) -> None:
    text = render_ascii(trace_of(tmp_path, passive_close))
    assert "TIME_WAIT" not in text  # the side that closes second has none
    assert "2MSL" not in text


def test_simultaneous_close_ends_in_time_wait_then_2msl(tmp_path: Path) -> None:
    lines = render_ascii(trace_of(tmp_path, simultaneous_close)).splitlines()
    assert lines[-3].endswith("(2MSL timer 2000 ms)")
    assert lines[-2].startswith("2010.500") and lines[-2].endswith("(2MSL timer expired)")
    assert lines[-1].endswith("|  CLOSED")


def test_absolute_numbers(tmp_path: Path) -> None:
    events = trace_of(tmp_path, handshake)
    labels = [label for _, label, _ in arrows(render_ascii(events, absolute=True))]
    assert labels == [
        f"S seq {PEER_ISS} win 65535 [mss 1460,wscale 7,sackOK]",
        f"S. seq {OUR_ISS} ack {P} win 65535 [mss 1460,wscale 3,sackOK]",
        f". seq {P} ack {U} win 65535",
    ]


def test_rst_for_a_late_segment_belongs_to_the_connection_with_relative_numbers(
    tmp_path: Path,
) -> None:
    def late_ack() -> TcpScript:
        t = passive_close()
        t.at(0.020)
        t.send(".", seq=P + 19, ack=U + 1001)  # the connection is gone
        t.expect("R", seq=U + 1001)
        return t

    events = trace_of(tmp_path, late_ack)
    assert [s.conn for s in connections(events)] == [1]
    assert arrows(render_ascii(events))[-2:] == [
        ("in", ". seq 20 ack 1002 win 65535", ""),
        ("out", "R seq 1002 win 0 (RST: no connection)", ""),
    ]


def test_peer_states_beside_the_peer_and_a_lost_segment(tmp_path: Path) -> None:
    events = trace_of(tmp_path, lost_fin_with_peer_states)
    text = render_ascii(events)
    assert peer_states(text) == ["CLOSED", "SYN_SENT", "ESTABLISHED", "CLOSE_WAIT",
                                 "LAST_ACK", "CLOSED"]  # fmt: skip
    lines = text.splitlines()
    syn = next(line for line in lines if "|----- S seq 0" in line)
    assert re.match(r" +0\.000 +SYN_SENT \|", syn)  # Linux was SYN_SENT when it sent it
    lost = next(line for line in lines if "(lost)" in line)
    assert "|  X-- F. seq 1 ack 1 win 32768 (lost) ---" in lost and lost.endswith("|  FIN_WAIT_1")
    fired = lines.index(next(line for line in lines if line.endswith("(RTO fired)")))
    assert lines[fired].startswith("1010.000")
    assert "F. seq 1 ack 1 win 32768 (retransmission)" in lines[fired + 1]
    assert lines[fired + 2].endswith("(RTO set 2000 ms)")  # backed off


def test_lost_incoming_segment_ends_in_an_x(tmp_path: Path) -> None:
    t = handshake()
    events = [
        dataclasses.replace(e, note=LOST)
        if isinstance(e, SegmentEvent) and e.flags == "." and e.direction == "in"
        else e
        for e in t.trace
    ]
    text = render_ascii(load_trace(write_trace(tmp_path / "t.jsonl", events)))
    line = next(line for line in text.splitlines() if "(lost)" in line)
    assert re.search(r"\|----- \. seq 1 ack 1 win 65535 \(lost\) -+X   \|", line)


def test_ladder_model_rows(tmp_path: Path) -> None:
    ladder = build_ladder(trace_of(tmp_path, simultaneous_close))
    assert (ladder.conn, ladder.peer, ladder.us) == (1, "198.18.0.1:40000", "198.18.0.2:80")
    assert (ladder.peer_start, ladder.ustack_start) == ("", "LISTEN")
    assert [r.ustack_state for r in ladder.rows if r.ustack_state] == [
        "SYN_RECEIVED", "ESTABLISHED", "FIN_WAIT_1", "CLOSING", "TIME_WAIT", "CLOSED",
    ]  # fmt: skip
    assert [r.time_ms for r in ladder.rows if r.kind == "arrow"] == pytest.approx(
        [0.0, 0.0, 0.4, 10.0, 10.2, 10.2, 10.5]
    )


# ---- SVG ---------------------------------------------------------------------------------

SVG = "{http://www.w3.org/2000/svg}"


def test_svg_is_self_contained_xml_with_slanting_arrows(tmp_path: Path) -> None:
    events = trace_of(tmp_path, simultaneous_close)
    svg = render_svg(events)
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    for element in root.iter():
        assert element.tag.removeprefix(SVG) not in ("script", "image", "foreignObject", "a")
        for name, value in element.attrib.items():
            assert not name.endswith("href"), (element.tag, name, value)
            assert "http" not in value or element is root
            assert "url(" not in value or value.startswith("url(#")
    assert "@import" not in svg and "@font-face" not in svg
    texts = [t.text for t in root.iter(f"{SVG}text")]
    for expected in ("Linux peer", "ustack", "LISTEN", "CLOSING", "TIME_WAIT", "CLOSED",
                     "F. seq 1 ack 1 win 65535", "2MSL timer expired", "10.200"):  # fmt: skip
        assert expected in texts, expected
    heads = [e for e in root.iter(f"{SVG}line") if "marker-end" in e.attrib]
    assert len(heads) == 7  # one arrow per segment
    for line in heads:
        assert float(line.attrib["y2"]) > float(line.attrib["y1"])  # downward: time passes
    directions = [float(line.attrib["x2"]) > float(line.attrib["x1"]) for line in heads]
    assert directions == [True, False, True, False, True, False, True]  # in = to the right


def test_svg_lost_segment_is_cut_short_under_an_x(tmp_path: Path) -> None:
    root = ET.fromstring(render_svg(trace_of(tmp_path, lost_fin_with_peer_states)))
    dashed = [e for e in root.iter(f"{SVG}line") if e.attrib.get("stroke-dasharray") == "6 3"]
    assert len(dashed) == 1
    assert "SYN_SENT" in [t.text for t in root.iter(f"{SVG}text")]


# ---- Mermaid -----------------------------------------------------------------------------


def test_mermaid_structure(tmp_path: Path) -> None:
    lines = render_mermaid(trace_of(tmp_path, simultaneous_close)).splitlines()
    assert lines[:3] == [
        "sequenceDiagram",
        "    participant P as Linux peer",
        "    participant U as ustack",
    ]
    assert lines[3] == "    Note over P,U: connection 1, 198.18.0.1:40000 - 198.18.0.2:80"
    messages = [line.strip() for line in lines if ": " in line and "Note" not in line]
    assert [m.split(":")[0] for m in messages] == ["P->>U", "U->>P", "P->>U", "U->>P", "P->>U",
                                                   "U->>P", "P->>U"]  # fmt: skip
    assert messages[4] == "P->>U: 10.200 ms F. seq 1 ack 1 win 65535"
    assert lines[lines.index(f"    {messages[4]}") + 1] == "    Note over U: CLOSING"
    assert "    Note over U: TIME_WAIT" in lines
    assert "    Note over U: 2MSL timer expired" in lines
    assert lines[-1] == "    Note over U: CLOSED"
    assert all(";" not in line for line in lines)


def test_mermaid_lost_arrow_and_peer_notes(tmp_path: Path) -> None:
    text = render_mermaid(trace_of(tmp_path, lost_fin_with_peer_states))
    assert "    U-xP: 10.000 ms F. seq 1 ack 1 win 32768 (lost)\n" in text
    assert "    Note over P: SYN_SENT\n" in text
    assert "    Note over P: CLOSE_WAIT\n" in text


# ---- loading and choosing ------------------------------------------------------------------


def two_connections() -> TcpScript:
    t = handshake()
    t.at(0.1)
    t.send("S", seq=PEER_ISS, sport=40001)
    t.expect("S.")
    t.send(".", seq=P, ack=U, sport=40001)
    t.at(0.2)
    t.send("R.", seq=P, ack=U)  # the first one is reset
    return t


def test_connections_listing(tmp_path: Path) -> None:
    found = connections(trace_of(tmp_path, two_connections))
    assert [(s.conn, s.peer, s.us, s.first_state, s.last_state) for s in found] == [
        (1, "198.18.0.1:40000", "198.18.0.2:80", "LISTEN", "CLOSED"),
        (2, "198.18.0.1:40001", "198.18.0.2:80", "LISTEN", "ESTABLISHED"),
    ]
    with pytest.raises(TraceError, match="choose one with --conn"):
        choose_connection(trace_of(tmp_path, two_connections), None)
    with pytest.raises(TraceError, match=r"no connection 7 \(the trace has: 1, 2\)"):
        choose_connection(trace_of(tmp_path, two_connections), 7)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty file"),
        ("not json at all\n", "not a ustack JSONL trace (line 1 is not JSON"),
        ('{"type": "header", "schema": 1}\n', "trace schema 1; this ustack reads schema 5"),
        ('{"type": "segment", "time": 0}\n', "not a ustack JSONL trace"),
        ("\xff\xfe\n", "not a ustack JSONL trace (line 1 is not UTF-8)"),
    ],
)
def test_bad_trace_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    # (the bad lines of a good trace are skipped: tests/unit/test_readers.py)
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(TraceError, match=re.escape(message)):
        load_trace(path)


# ---- the commands --------------------------------------------------------------------------


def run(
    command: Callable[[argparse.Namespace], int],
    add: Callable[[argparse.ArgumentParser], None],
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="ustack")
    add(parser)
    code = command(parser.parse_args(argv))
    out, err = capsys.readouterr()
    return code, out, err


def ladder(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return run(ladder_command, add_ladder_arguments, argv, capsys)


def test_ladder_command_draws_the_only_connection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_trace(tmp_path / "a.jsonl", active_close().trace)
    code, out, err = ladder([str(path)], capsys)
    assert (code, out, err) == (0, ACTIVE_CLOSE_GOLDEN, "")


def test_ladder_command_lists_connections_and_asks_for_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_trace(tmp_path / "two.jsonl", two_connections().trace)
    code, out, err = ladder([str(path)], capsys)
    assert code == 1
    rows = [line.split() for line in out.splitlines()]
    assert rows[1] == ["1", "198.18.0.1:40000", "<->", "198.18.0.2:80", "passive", "LISTEN",
                       "->", "CLOSED"]  # fmt: skip
    assert rows[2] == ["2", "198.18.0.1:40001", "<->", "198.18.0.2:80", "passive", "LISTEN",
                       "->", "ESTABLISHED"]  # fmt: skip
    assert err.count("\n") == 1 and err.startswith("ustack: error: ")
    assert "2 connections" in err and "--conn" in err

    code, out, err = ladder([str(path), "--conn", "2"], capsys)
    assert code == 0 and err == ""
    assert out.startswith("connection 2: Linux peer 198.18.0.1:40001 <-> ustack 198.18.0.2:80")


@pytest.mark.parametrize(
    ("fmt", "suffix", "check"),
    [
        ("svg", ".out", lambda text: ET.fromstring(text).tag == f"{SVG}svg"),
        (None, ".svg", lambda text: ET.fromstring(text).tag == f"{SVG}svg"),
        ("mermaid", ".txt", lambda text: text.startswith("sequenceDiagram\n")),
        (None, ".mmd", lambda text: text.startswith("sequenceDiagram\n")),
        (None, ".txt", lambda text: text == ACTIVE_CLOSE_GOLDEN),
    ],
)
def test_ladder_command_output_file(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fmt: str | None,
    suffix: str,
    check: Callable[[str], bool],
) -> None:
    path = write_trace(tmp_path / "a.jsonl", active_close().trace)
    target = tmp_path / f"ladder{suffix}"
    argv = [str(path), "-o", str(target), *(["--format", fmt] if fmt else [])]
    assert ladder(argv, capsys) == (0, "", "")
    assert check(target.read_text(encoding="utf-8"))


def test_ladder_command_absolute(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_trace(tmp_path / "a.jsonl", handshake().trace)
    code, out, _ = ladder([str(path), "--absolute"], capsys)
    assert code == 0 and f"S. seq {OUR_ISS} ack {P}" in out


@pytest.mark.parametrize(
    ("setup", "extra", "message"),
    [
        (lambda p: p.write_text("{oops\n"), [], "not JSON"),
        (lambda p: None, [], "No such file"),
        (lambda p: p.write_text('{"type": "header", "schema": 2}\n'), [], "no connections"),
        (lambda p: write_trace(p, handshake().trace), ["--conn", "5"], "no connection 5"),
        (lambda p: write_trace(p, handshake().trace), ["-o", "/nonexistent/dir/x"], "/x"),
    ],
)
def test_ladder_command_errors_are_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    setup: Callable[[Path], object],
    extra: list[str],
    message: str,
) -> None:
    path = tmp_path / "t.jsonl"
    setup(path)
    code, out, err = ladder([str(path), *extra], capsys)
    assert code == 1 and out == ""
    assert err.startswith("ustack: error: ") and err.count("\n") == 1 and message in err


# ---- explain -------------------------------------------------------------------------------

STEP = re.compile(r"(\d+)\. (.+) \[(RFC \d+ [^\]]+|Linux [^\]]+)\]$")


def steps_of(tmp_path: Path, scenario: Callable[[], Any]) -> list[str]:
    steps = explain(trace_of(tmp_path, scenario))
    for number, step in enumerate(steps, 1):
        match = STEP.match(step)
        assert match is not None, step  # numbered, and each with its RFC
        assert int(match[1]) == number
    return steps


def test_explain_passive_close(tmp_path: Path) -> None:
    steps = steps_of(tmp_path, passive_close)
    assert steps[0].startswith(
        "1. The Linux peer (198.18.0.1:40000) asks to open a connection to ustack "
        "(198.18.0.2:80): SYN with its initial sequence number, offering MSS 1460, window "
        "scale 7, SACK. ustack goes to SYN_RECEIVED"
    )
    assert steps[0].endswith("[RFC 9293 3.5, 3.10.7.2]")
    assert steps[1].startswith("2. ustack answers SYN,ACK: its own initial sequence number")
    assert "three-way handshake is complete" in steps[2] and "ESTABLISHED" in steps[2]
    assert steps[3] == (
        "4. The peer sends 18 bytes of data (seq 1); ustack acknowledges them (ack 19). "
        "ustack sends 1,000 bytes of data (seq 1); the peer acknowledges them (ack 1001). "
        "[RFC 9293 3.8]"
    )
    assert steps[4].startswith(
        "5. The peer sends FIN: it has nothing more to send. ustack acknowledges it (ack 20) "
        "and goes to CLOSE_WAIT"
    )
    assert steps[4].endswith("[RFC 9293 3.6, 3.10.7.4]")
    assert "sends its own FIN (seq 1001) and goes to LAST_ACK" in steps[5]
    assert steps[6].startswith(
        "7. The peer acknowledges ustack's FIN (ack 1002). ustack goes to CLOSED"
    )
    assert len(steps) == 7


def test_explain_active_close_time_wait_and_expiry(tmp_path: Path) -> None:
    steps = steps_of(tmp_path, active_close)
    assert steps[3] == (
        "4. ustack sends 5 bytes of data (seq 1); the peer acknowledges them (ack 6). "
        "[RFC 9293 3.8]"
    )
    assert "The application closes the connection: ustack sends FIN (seq 6)" in steps[4]
    assert "FIN_WAIT_1" in steps[4]
    assert "goes to FIN_WAIT_2" in steps[5]
    assert "goes to TIME_WAIT" in steps[6] and "(2,000 ms)" in steps[6]
    assert steps[6].endswith("[RFC 9293 3.6, 3.10.7.4, 3.6.1]")
    assert steps[7].startswith("8. TIME_WAIT is over") and "(CLOSED)" in steps[7]
    assert steps[7].endswith("[RFC 9293 3.6.1]")


def test_explain_simultaneous_close(tmp_path: Path) -> None:
    steps = steps_of(tmp_path, simultaneous_close)
    closing = next(s for s in steps if "CLOSING" in s)
    assert "the two FINs crossed" in closing and "simultaneous close" in closing
    assert any("goes to TIME_WAIT" in s for s in steps)
    assert steps[-1].startswith(f"{len(steps)}. TIME_WAIT is over")


def test_explain_reset(tmp_path: Path) -> None:
    steps = steps_of(tmp_path, reset)
    assert steps[-1].startswith("5. The peer sends RST (seq 3): it resets the connection.")
    assert "goes to CLOSED" in steps[-1] and "no FIN exchange" in steps[-1]
    assert "RFC 5961 3.2" in steps[-1]


def test_explain_retransmission_loss_and_peer_states(tmp_path: Path) -> None:
    steps = steps_of(tmp_path, lost_fin_with_peer_states)
    assert "(The Linux socket is now SYN_SENT.)" in steps[0]
    assert "The FIN never arrives: the fault injector dropped it" in steps[3]
    assert steps[4] == (
        "5. No acknowledgement came within 1,000 ms: ustack's retransmission timer fires. "
        "ustack sends its FIN (seq 1) again and doubles its timeout, to 2,000 ms. "
        "[RFC 6298 5.4-5.6]"
    )
    assert any(s.endswith("The Linux peer's socket goes from LAST_ACK to CLOSED. "
                          "[RFC 9293 3.10.7.4]") for s in steps)  # fmt: skip


def test_explain_challenge_acks_and_rst_for_a_closed_connection(tmp_path: Path) -> None:
    def scenario() -> TcpScript:
        t = handshake()
        t.at(0.002)
        t.send("R", seq=P + 100)  # in the window, not at RCV.NXT
        t.expect(".", seq=U, ack=P)
        t.at(0.010)
        t.send("F.", seq=P, ack=U)
        t.expect(".")
        t.close()
        t.expect("F.")
        t.send(".", seq=P + 1, ack=U + 1)
        t.at(0.020)
        t.send(".", seq=P + 1, ack=U + 1)
        t.expect("R", seq=U + 1)
        return t

    steps = steps_of(tmp_path, scenario)
    challenge = steps[3]
    assert challenge.startswith("4. The peer sends RST (seq 101). ustack does not trust it")
    assert "challenge ACK (ack 1)" in challenge
    assert challenge.endswith("[RFC 9293 3.5.3; RFC 5961 3.2]")
    assert steps[-1].endswith(
        "ustack has no connection for it any more: it answers RST (seq 2), as a closed port "
        "does. [RFC 9293 3.8, 3.10.7.1]"
    )


def test_explain_groups_a_bulk_transfer_into_one_step(tmp_path: Path) -> None:
    def bulk() -> TcpScript:
        t = TcpScript(listen=80)
        t.send("S", seq=PEER_ISS, mss=1000, ws=7)
        t.expect("S.")
        t.send(".", seq=P, ack=U)
        sent = 0
        for _ in range(10):
            t.write(b"d" * 5000)
            sent += sum(len(o.payload) for o in t.sent())
            t.send(".", seq=P, ack=U + sent)
        t.sent()
        return t

    steps = steps_of(tmp_path, bulk)
    assert steps[3] == (
        "4. ustack sends 50 segments, 50,000 bytes; the peer acknowledges them (ack 50001). "
        "[RFC 9293 3.8]"
    )
    assert len(steps) == 4


def test_explain_active_open_and_abort(tmp_path: Path) -> None:
    def scenario() -> TcpScript:
        t = TcpScript(listen=None)
        t.connect(port=8080, local_port=50000)
        t.expect("S", seq=OUR_ISS)
        t.at(0.0003)
        t.send("S.", seq=PEER_ISS, ack=U, sport=8080, mss=1460)
        t.expect(".", seq=U, ack=P)
        t.at(0.001)
        t.abort()
        t.expect("R.", seq=U)
        return t

    steps = steps_of(tmp_path, scenario)
    assert steps[0].startswith(
        "1. The application connects: ustack sends SYN to the Linux peer (198.18.0.1:8080)"
    )
    assert "SYN_SENT" in steps[0]
    assert "The peer answers SYN,ACK" in steps[1] and "ustack acknowledges it (ack 1)" in steps[1]
    assert "aborts" in steps[2] and "RST (seq 1)" in steps[2] and "RFC 9293 3.10.5" in steps[2]


def test_explain_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_trace(tmp_path / "p.jsonl", passive_close().trace)
    code, out, err = run(explain_command, add_explain_arguments, [str(path), "--conn", "1"], capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == (
        "Connection 1: Linux peer 198.18.0.1:40000, ustack 198.18.0.2:80 (passive open)"
    )
    assert lines[2].startswith("1. The Linux peer (198.18.0.1:40000) asks to open")
    assert lines[-1].startswith("7. ")

    two = write_trace(tmp_path / "two.jsonl", two_connections().trace)
    code, out, err = run(explain_command, add_explain_arguments, [str(two)], capsys)
    assert code == 1 and "40001" in out and err.count("\n") == 1
    code, out, err = run(explain_command, add_explain_arguments, [str(two), "--conn", "3"], capsys)
    assert code == 1 and out == "" and "no connection 3" in err


def rack_reordering_window() -> TcpScript:
    """Three segments; the peer SACKs the third: RACK waits a quarter of the
    0.4 ms handshake RTT past a round trip, then calls the first two lost."""
    t = handshake()
    t.at(0.010)
    t.write(bytes(4000))
    t.sent()
    t.at(0.0104)
    t.send(".", seq=P, ack=U, sack=((U + 2920, U + 4000),))
    t.expect_none()
    t.at(0.0106)
    assert [s.seq for s in t.sent()] == [U, U + 1460]
    return t


def test_rack_reorder_timer_in_the_ladder_and_explained(tmp_path: Path) -> None:
    text = render_ascii(trace_of(tmp_path, rack_reordering_window))
    assert "(RACK reorder timer 0.1 ms)" in text
    assert "(RACK reorder timer fired)" in text
    steps = steps_of(tmp_path, rack_reordering_window)
    fired = [i for i, s in enumerate(steps) if "RACK's reordering timer fires" in s]
    assert len(fired) == 1
    assert "ustack sends 1,460 bytes of data (seq 1) again. [RFC 8985 6.2]" in steps[fired[0]]
    # The next loss goes in its own step, and cites RACK, not the RTO.
    assert steps[fired[0] + 1].endswith("(seq 1461) again (retransmission). [RFC 8985 6.2]")


def tail_loss_probe() -> TcpScript:
    """Three segments and no ACK: at 2*SRTT (at least 10 ms) the last goes again."""
    t = handshake(tail_loss_probe=True)
    t.at(0.010)
    t.write(bytes(4000))
    t.sent()
    t.at(0.020)
    t.expect("P.", seq=U + 2540)  # the last MSS sent, again
    return t


def test_a_tail_loss_probe_is_explained_with_what_it_sends(tmp_path: Path) -> None:
    steps = steps_of(tmp_path, tail_loss_probe)
    assert steps[-1].startswith("5. No acknowledgement came within two round trips")
    assert steps[-1].endswith("ustack sends 1,460 bytes of data (seq 2541) again. [RFC 8985 7.3]")


def zero_window_stall() -> TcpScript:
    """The peer's window closes with data waiting: two probes refused, then it opens."""
    t = TcpScript(listen=80)
    t.establish(mss=1000, win=1000)
    t.write(b"x" * 1500)
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1001, win=0)
    for _ in range(2):
        t.wait(t.conn.recovery.rtt.rto if t.conn else 1.0)
        t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1001, win=0)
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1001, win=1000)
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1501, win=1000)
    return t


def test_zero_window_probes_are_told_as_probes_not_timeouts(tmp_path: Path) -> None:
    """Each probe is the persist timer's (RFC 9293 3.8.6.1), in the trace,
    the ladder and explain: never "retransmission timeout" (issue 14)."""
    t = zero_window_stall()
    assert t.stack.counters["tcp.persist-probes"] == 2
    decisions = t.decisions()
    assert [d.split(":")[0] for d in decisions if "probe" in d] == [
        "zero-window probe #1",
        "zero-window probe #2",
    ]
    assert not any("retransmission timeout" in d for d in decisions)
    events = trace_of(tmp_path, zero_window_stall)
    fired = [e["timer"] for e in events if e["type"] == "timer" and e["action"] == "fired"]
    assert fired == ["persist", "persist"]
    text = "\n".join(steps_of(tmp_path, zero_window_stall))
    assert text.count("persist timer fires") == 2 and "retransmission timer" not in text
    assert "zero-window probe" in text and "RFC 9293 3.8.6.1" in text
    drawn = render_ascii(events)
    assert drawn.count("(persist timer fired)") == 2 and "RTO fired" not in drawn
    assert drawn.count("len 1 (zero-window probe)") == 2


def test_the_other_end_can_be_named_when_it_is_not_linux() -> None:
    # A memory pair's other end is a second ustack: "Linux peer" would be wrong.
    events = active_close().trace
    for text in (
        render_ascii(events, peer_name="ustack b"),
        render_svg(events, peer_name="ustack b"),
        render_mermaid(events, peer_name="ustack b"),
    ):
        assert "ustack b" in text and "Linux peer" not in text
