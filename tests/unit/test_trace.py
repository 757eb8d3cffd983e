"""The trace writers and filters, fed with events the real core produced.

One scripted session (tests/tcpscript.py) runs through IP and TCP input on a
virtual clock and records every trace event and every packet the packet tap
saw: a passive open on port 80 with data both ways and a passive close, a
second connection on port 7 that the peer resets, a SYN to the closed port 9
(answered with RST), a TCP segment with a bad checksum (a counted drop) and
an ICMP echo. The writers (JSON lines, text, pcap), the filters and the fan-out
are checked on that material; scapy reads the pcap back as the independent
oracle. Last, a bulk transfer between two stacks in-process, read through its
trace (the workload of bench/trace_cost.py).
"""

from __future__ import annotations

import io
import json
import logging
import re
import struct
import time
from collections import deque
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP
from scapy.layers.inet import IP
from scapy.layers.inet import TCP
from scapy.utils import PcapReader
from scapy.utils import rdpcap
from tcpscript import OUR_ISS
from tcpscript import PEER
from tcpscript import PEER_ISS
from tcpscript import US
from tcpscript import WINDOW
from tcpscript import AppLog
from tcpscript import TcpScript
from tcpscript import canonical_flags

from ustack.stack import Stack
from ustack.study.sinks import FanOut
from ustack.study.sinks import Filtered
from ustack.study.sinks import FilteredTap
from ustack.study.sinks import JsonlWriter
from ustack.study.sinks import PcapWriter
from ustack.study.sinks import TextWriter
from ustack.study.sinks import TraceFile
from ustack.study.sinks import TraceFilter
from ustack.study.sinks import TraceRotation
from ustack.study.sinks import TraceSinks
from ustack.study.sinks import TraceSpec
from ustack.study.sinks import format_for
from ustack.tcp.connection import TcpConnection
from ustack.tcp.events import AppEvent
from ustack.tcp.events import DataReceived
from ustack.tcp.events import SendSpace
from ustack.trace.records import TRACE_SCHEMA_VERSION
from ustack.trace.records import Decision
from ustack.trace.records import Drop
from ustack.trace.records import FaultEvent
from ustack.trace.records import NewConnection
from ustack.trace.records import PeerStateChange
from ustack.trace.records import SegmentEvent
from ustack.trace.records import StateChange
from ustack.trace.records import TimerEvent
from ustack.trace.records import TraceEvent
from ustack.trace.records import dotted
from ustack.trace.records import event_dict

US_DOTTED = dotted(US)  # 198.18.0.2
PEER_DOTTED = dotted(PEER)  # 198.18.0.1
HTTP_CONN, ECHO_CONN = 1, 2  # connection ids, in the order the session opens them
HTTP_SPORT, ECHO_SPORT, CLOSED_SPORT, BAD_SPORT = 40000, 40001, 40002, 40003
ECHO_ISS, CLOSED_ISS = 7000, 9000
KINDS = {"connection", "state", "segment", "timer", "decision", "drop", "peer_state", "fault"}
ANSI = re.compile(r"\033\[[0-9;]*m")
WHAT = re.compile(r"^ *\d+\.\d{6} #\S+ +(\S+)")  # a text line's time, connection and kind


# ---- the session ---------------------------------------------------------------------------------


@dataclass
class Session:
    events: list[TraceEvent]
    packets: list[tuple[str, bytes]]  # (direction, IPv4 packet), as the tap saw them
    pcap: bytes  # what a PcapWriter on the same tap wrote
    bad_packet: bytes  # the segment with a bad checksum: on the tap, not a segment event
    wall_clock: tuple[float, float]  # time.time() before and after the session
    counters: dict[str, int]


def run_session() -> Session:
    packets: list[tuple[str, bytes]] = []
    pcap = io.BytesIO()
    writer = PcapWriter(pcap)

    def tap(direction: str, packet: bytes, now: float) -> None:
        packets.append((direction, packet))
        writer(direction, packet, now)

    started = time.time()
    t = TcpScript(listen=80)
    t.stack.ip.tap = tap
    t.tcp.listen(7, lambda conn: t.tcp.attach(conn, AppLog()), now=t.now)

    # Port 80: a passive open with options, data both ways, the peer closes first.
    t.at(0.010).send("S", seq=PEER_ISS, mss=1460, ws=7, sack_permitted=True, ts=(100, 0))
    t.expect("S.", seq=OUR_ISS, ack=PEER_ISS + 1)
    t.at(0.020).send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1)
    t.at(0.030).send("P.", seq=PEER_ISS + 1, ack=OUR_ISS + 1, payload=b"hello")
    assert t.read() == b"hello"
    t.at(0.040).write(b"world!")
    t.at(0.050).send(".", seq=PEER_ISS + 6, ack=OUR_ISS + 7)
    t.at(0.060).send("F.", seq=PEER_ISS + 6, ack=OUR_ISS + 7)
    t.at(0.070).close()
    t.at(0.080).send(".", seq=PEER_ISS + 7, ack=OUR_ISS + 8)
    t.expect_many(".", "P.", ".", "F.")
    assert t.table == {}

    # Port 7: opened, then reset by the peer.
    echo = {"sport": ECHO_SPORT, "dport": 7}
    t.at(0.100).send("S", seq=ECHO_ISS, **echo)
    t.at(0.110).send(".", seq=ECHO_ISS + 1, ack=OUR_ISS + 1, **echo)
    t.at(0.120).send("R", seq=ECHO_ISS + 1, **echo)
    t.expect_many("S.")
    assert t.table == {}

    # Port 9 has no listener: RST,ACK from a CLOSED endpoint (no connection id).
    t.at(0.130).send("S", seq=CLOSED_ISS, sport=CLOSED_SPORT, dport=9)
    t.expect("R.", seq=0, ack=CLOSED_ISS + 1)

    # A counted drop, and a packet that is not TCP at all.
    bad = bytes(IP(src=PEER_DOTTED, dst=US_DOTTED) / TCP(sport=BAD_SPORT, dport=80, chksum=1))
    t.at(0.140).stack.receive(bad, t.now)
    t.at(0.150).stack.receive(bytes(IP(src=PEER_DOTTED, dst=US_DOTTED) / ICMP() / b"ping"), t.now)
    assert t.stack.counters["tcp.drop.bad-checksum"] == 1
    assert t.stack.counters["icmp.echo"] == 1
    return Session(
        list(t.trace), packets, pcap.getvalue(), bad, (started, time.time()), dict(t.stack.counters)
    )


@pytest.fixture(scope="module")
def session() -> Session:
    return run_session()


def segments(events: list[TraceEvent], conn: int | None = HTTP_CONN) -> list[SegmentEvent]:
    return [e for e in events if isinstance(e, SegmentEvent) and e.conn == conn]


def conn_of(event: TraceEvent) -> int | None:
    return getattr(event, "conn", None)


def jsonl_lines(events: Iterable[TraceEvent]) -> list[str]:
    """The lines of a JSONL trace of `events`, header first."""
    stream = io.StringIO()
    writer = JsonlWriter(stream)
    for event in events:
        writer(event)
    return stream.getvalue().splitlines()


def text_lines(events: list[TraceEvent], colour: bool | None = None) -> list[str]:
    stream = io.StringIO()
    writer = TextWriter(stream, colour=colour)
    for event in events:
        writer(event)
    return stream.getvalue().splitlines()


def by_filter(events: list[TraceEvent], trace_filter: TraceFilter) -> list[TraceEvent]:
    passed: list[TraceEvent] = []
    filtered = Filtered(passed.append, trace_filter)
    for event in events:
        filtered(event)
    return passed


def test_the_session_made_every_kind_of_event(session: Session) -> None:
    kinds = {event_dict(e)["type"] for e in session.events}
    assert kinds == {"connection", "state", "segment", "timer", "drop"}
    assert [e.conn for e in session.events if isinstance(e, NewConnection)] == [1, 2]


# ---- JSON lines ----------------------------------------------------------------------------------


def test_jsonl_first_line_names_the_schema_version(session: Session) -> None:
    assert TRACE_SCHEMA_VERSION == 5
    assert json.loads(jsonl_lines(session.events)[0]) == {"type": "header", "schema": 5}


def test_jsonl_every_event_is_one_json_object_with_type_and_time(session: Session) -> None:
    lines = jsonl_lines(session.events)
    assert len(lines) == 1 + len(session.events)
    for line, event in zip(lines[1:], session.events, strict=True):
        record = json.loads(line)
        assert record["type"] in KINDS
        assert next(iter(record)) == "type"
        assert isinstance(record["time"], float) and record["time"] == event.time
        assert {k: v for k, v in record.items() if k != "tuple"} == json.loads(
            json.dumps(event_dict(event))
        )


def test_jsonl_enums_are_written_by_name(session: Session) -> None:
    records = [json.loads(line) for line in jsonl_lines(session.events)[1:]]
    first_change = next(r for r in records if r["type"] == "state" and r["conn"] == HTTP_CONN)
    assert (first_change["old"], first_change["new"], first_change["event"]) == (
        "LISTEN", "SYN_RECEIVED", "RCV_SYN",
    )  # fmt: skip
    assert first_change["rule"].startswith("RFC 9293")


def test_jsonl_connection_events_carry_their_4_tuple(session: Session) -> None:
    records = [json.loads(line) for line in jsonl_lines(session.events)[1:]]
    tuples = {
        HTTP_CONN: f"{US_DOTTED}:80 {PEER_DOTTED}:{HTTP_SPORT}",
        ECHO_CONN: f"{US_DOTTED}:7 {PEER_DOTTED}:{ECHO_SPORT}",
    }
    for record in records:
        if record.get("conn") in tuples:
            assert record["tuple"] == tuples[record["conn"]], record
        else:  # listeners (conn 0), segments of no connection, drops
            assert "tuple" not in record, record
    connection = next(r for r in records if r["type"] == "connection")
    assert connection == {
        "type": "connection", "time": 0.010, "conn": 1, "local": US_DOTTED, "local_port": 80,
        "remote": PEER_DOTTED, "remote_port": HTTP_SPORT, "passive": True,
        "tuple": tuples[HTTP_CONN],
    }  # fmt: skip
    # Every kind of event of a connection has it: the lines read on their own.
    assert {r["type"] for r in records if "tuple" in r} == {
        "connection", "segment", "state", "timer",
    }  # fmt: skip


def test_jsonl_segments_have_absolute_and_relative_numbers(session: Session) -> None:
    records = [json.loads(line) for line in jsonl_lines(session.events)[1:]]
    http = [r for r in records if r["type"] == "segment" and r["conn"] == HTTP_CONN]
    syn, syn_ack, ack = http[:3]
    assert (syn["direction"], syn["flags"], syn["seq"], syn["rel_seq"]) == ("in", "S", PEER_ISS, 0)
    assert (syn["ack"], syn["rel_ack"]) == (0, 0)
    assert (syn_ack["direction"], syn_ack["flags"]) == ("out", "S.")
    assert (syn_ack["seq"], syn_ack["rel_seq"]) == (OUR_ISS, 0)
    assert (syn_ack["ack"], syn_ack["rel_ack"]) == (PEER_ISS + 1, 1)
    assert (ack["seq"], ack["rel_seq"], ack["ack"], ack["rel_ack"]) == (
        PEER_ISS + 1, 1, OUR_ISS + 1, 1,
    )  # fmt: skip
    first_in = next(r for r in http if r["direction"] == "in" and r["length"])
    first_out = next(r for r in http if r["direction"] == "out" and r["length"])
    assert (first_in["flags"], first_in["rel_seq"], first_in["length"]) == ("P.", 1, 5)
    assert (first_out["flags"], first_out["rel_seq"], first_out["length"]) == ("P.", 1, 6)
    assert (first_out["seq"], first_out["rel_ack"]) == (OUR_ISS + 1, 1 + 5)
    fins = [r for r in http if "F" in r["flags"]]
    assert [(r["direction"], r["rel_seq"], r["rel_ack"]) for r in fins] == [
        ("in", 6, 7), ("out", 7, 7),
    ]  # fmt: skip
    # Everywhere: relative = absolute - ISS (ours out, theirs in), mod 2^32.
    for r in http:
        ours, theirs = (PEER_ISS, OUR_ISS) if r["direction"] == "in" else (OUR_ISS, PEER_ISS)
        assert r["rel_seq"] == (r["seq"] - ours) % 2**32
        assert r["rel_ack"] == ((r["ack"] - theirs) % 2**32 if "." in r["flags"] else 0)


def test_jsonl_segments_have_flags_window_length_and_options(session: Session) -> None:
    records = [json.loads(line) for line in jsonl_lines(session.events)[1:]]
    syn, syn_ack = [r for r in records if r["type"] == "segment"][:2]
    assert syn["window"] == WINDOW and syn["length"] == 0
    assert syn["options"] == {"mss": 1460, "wscale": 7, "sackOK": True, "TS": [100, 0]}
    assert syn_ack["window"] == 65535  # a SYN's window is never scaled
    assert syn_ack["options"]["mss"] == 1460 and "wscale" in syn_ack["options"]
    data = [r for r in records if r["type"] == "segment" and r["length"]]
    # Timestamps were agreed on the HTTP connection: our segments carry them (RFC 7323).
    assert all(set(r["options"]) <= {"TS"} for r in data)
    assert all("TS" in r["options"] for r in data if r["direction"] == "out" and r["conn"] == 1)
    assert [r["flags"] for r in segments_as_records(records, HTTP_CONN)] == [
        "S", "S.", ".", "P.", ".", "P.", ".", "F.", ".", "F.", ".",
    ]  # fmt: skip


def segments_as_records(records: list[dict[str, Any]], conn: int | None) -> list[dict[str, Any]]:
    return [r for r in records if r["type"] == "segment" and r["conn"] == conn]


def test_jsonl_segments_carry_the_state_before_and_after(session: Session) -> None:
    records = [json.loads(line) for line in jsonl_lines(session.events)[1:]]
    http = segments_as_records(records, HTTP_CONN)
    moves = [(r["direction"], r["flags"], r["state_before"], r["state_after"]) for r in http]
    assert moves == [
        ("in", "S", "LISTEN", "SYN_RECEIVED"),
        ("out", "S.", "SYN_RECEIVED", "SYN_RECEIVED"),
        ("in", ".", "SYN_RECEIVED", "ESTABLISHED"),
        ("in", "P.", "ESTABLISHED", "ESTABLISHED"),
        ("out", ".", "ESTABLISHED", "ESTABLISHED"),
        ("out", "P.", "ESTABLISHED", "ESTABLISHED"),
        ("in", ".", "ESTABLISHED", "ESTABLISHED"),
        ("in", "F.", "ESTABLISHED", "CLOSE_WAIT"),
        ("out", ".", "CLOSE_WAIT", "CLOSE_WAIT"),
        ("out", "F.", "LAST_ACK", "LAST_ACK"),
        ("in", ".", "LAST_ACK", "CLOSED"),
    ]
    # Cause and effect: a segment that moved the state comes just before the
    # state change it caused (timer events may sit between them).
    for i, record in enumerate(records):
        if record["type"] == "segment" and record["state_before"] != record["state_after"]:
            change = next(r for r in records[i + 1 :] if r["type"] in ("state", "segment"))
            assert change["type"] == "state", (record, change)
            assert (change["old"], change["new"]) == (
                record["state_before"], record["state_after"],
            )  # fmt: skip
    closed = segments_as_records(records, None)
    assert [(r["direction"], r["flags"], r["state_before"], r["state_after"]) for r in closed] == [
        ("in", "S", "CLOSED", "CLOSED"), ("out", "R.", "CLOSED", "CLOSED"),
    ]  # fmt: skip
    assert closed[1]["note"] == "RST: no connection"


def test_every_segment_tcp_took_in_is_a_segment_event(session: Session) -> None:
    inbound = [e for e in session.events if isinstance(e, SegmentEvent) and e.direction == "in"]
    assert len(inbound) == session.counters["tcp.in"]


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param("S", id="SYN-with-the-backlog-full"),
        pytest.param("SR", id="SYN-RST-to-a-listener"),
    ],
)
def test_a_segment_a_listener_drops_is_a_segment_event(flags: str) -> None:
    t = TcpScript(listen=80, backlog=1, syncookies=False)  # a full backlog drops the SYN
    t.send("S", seq=PEER_ISS, sport=HTTP_SPORT)
    t.expect("S.")
    t.send(flags, seq=PEER_ISS, sport=ECHO_SPORT)
    t.expect_none()
    assert sum(isinstance(e, Drop) for e in t.trace) == 1
    inbound = [e for e in t.trace if isinstance(e, SegmentEvent) and e.direction == "in"]
    assert len(inbound) == t.stack.counters["tcp.in"] == 2
    passed = by_filter(t.trace, TraceFilter(ports=frozenset({80})))
    assert [(e.remote_port, e.flags) for e in passed if isinstance(e, SegmentEvent)][-1] == (
        ECHO_SPORT, canonical_flags(flags),
    )  # fmt: skip


def test_relative_numbers_of_an_active_open_across_the_wrap() -> None:
    """Our ISS and the peer's both sit just below 2^32: the relative numbers
    still count 0, 1, 2, ... while the absolute ones wrap."""
    our_iss, peer_iss = 2**32 - 1, 2**32 - 2
    t = TcpScript(listen=None, our_iss=our_iss)
    t.connect(port=8080, local_port=50000)
    t.expect("S", seq=our_iss)
    t.send("S.", seq=peer_iss, ack=our_iss + 1, sport=8080, mss=1460)
    t.expect(".", seq=0, ack=peer_iss + 1)
    t.write(b"abc")
    t.expect("P.", seq=0, payload=b"abc")
    t.send("P.", seq=peer_iss + 1, ack=our_iss + 4, sport=8080, payload=b"xy")
    rows = [
        (e.direction, e.flags, e.seq, e.ack, e.rel_seq, e.rel_ack, e.length)
        for e in t.trace
        if isinstance(e, SegmentEvent)
    ]
    assert rows == [
        ("out", "S", our_iss, 0, 0, 0, 0),
        ("in", "S.", peer_iss, 0, 0, 1, 0),
        ("out", ".", 0, peer_iss + 1, 1, 1, 0),
        ("out", "P.", 0, peer_iss + 1, 1, 1, 3),
        ("in", "P.", peer_iss + 1, 3, 1, 4, 2),
        ("out", ".", 3, 1, 4, 3, 0),
    ]
    states = [(e.state_before, e.state_after) for e in t.trace if isinstance(e, SegmentEvent)]
    assert states[:2] == [("SYN_SENT", "SYN_SENT"), ("SYN_SENT", "ESTABLISHED")]


# ---- text ----------------------------------------------------------------------------------------


class TtyStringIO(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_text_one_plain_line_per_event_when_not_a_tty(session: Session) -> None:
    lines = text_lines(session.events)
    assert len(lines) == len(session.events)
    assert not any("\033" in line for line in lines)
    assert lines[0].startswith("   0.000000 ")
    assert all(re.match(r"^ *\d+\.\d{6} #", line) for line in lines), lines


def test_text_segment_lines_read_like_tcpdump(session: Session) -> None:
    lines = text_lines(session.events)
    syn = next(line for line in lines if " in " in line)
    assert f"{PEER_DOTTED}:{HTTP_SPORT} > {US_DOTTED}:80" in syn
    assert re.search(r" S +seq 0 ack 0 win 65535 len 0 ", syn)
    assert "[mss 1460,wscale 7,sackOK,TS 100 0]" in syn
    assert syn.endswith("LISTEN -> SYN_RECEIVED")
    syn_ack = next(line for line in lines if " out " in line)
    assert f"{PEER_DOTTED}:{HTTP_SPORT} < {US_DOTTED}:80" in syn_ack
    assert re.search(r" S\. +seq 0 ack 1 ", syn_ack)
    data_in = next(line for line in lines if " len 5" in line)
    assert re.search(r" P\. +seq 1 ack 1 ", data_in)
    rst = next(line for line in lines if "R." in line)
    assert rst.split()[1] == "#-" and rst.endswith("(RST: no connection)")
    assert "state ESTABLISHED -> CLOSE_WAIT  (RCV_FIN; RFC 9293" in "\n".join(lines)
    assert any("drop  tcp: bad-checksum from 198.18.0.1" in line for line in lines)


def test_text_columns_line_up(session: Session) -> None:
    lines = text_lines(session.events)
    # Time right-aligned in 11, then the connection, then what happened.
    assert {line.index(" #") for line in lines} == {11}
    matches = [WHAT.match(line) for line in lines]
    assert all(matches)
    assert len({m.start(1) for m in matches if m}) == 1
    segment_lines = [line for line in lines if re.search(r" (in|out) +\d", line)]
    assert len(segment_lines) == sum(isinstance(e, SegmentEvent) for e in session.events)
    for column in (" seq ", f" {US_DOTTED}:"):
        assert len({line.index(column) for line in segment_lines}) == 1, column
    flags = [re.search(r"\S+ +seq ", line) for line in segment_lines]
    assert len({m.start() for m in flags if m}) == 1 and all(flags)


def _wide_events() -> list[tuple[str, list[TraceEvent]]]:
    base = SegmentEvent(0.0, 1, "in", US_DOTTED, 80, PEER_DOTTED, 40000, ".", 1, 1, 1, 1,
                        65535, 0, {}, "ESTABLISHED", "ESTABLISHED")  # fmt: skip
    return [
        ("a connection id of 5 digits", [base, replace(base, conn=12345)]),
        ("1000 s and more since the first event", [base, replace(base, time=1000.5)]),
        (
            "two 15-character addresses and 5-digit ports",
            [
                base,
                replace(
                    base,
                    local="192.168.100.200",
                    local_port=54321,
                    remote="192.168.100.101",
                    remote_port=65535,
                ),
            ],
        ),
    ]


@pytest.mark.parametrize(
    "events",
    [pytest.param(events, id=name) for name, events in _wide_events()],
)
def test_text_columns_line_up_with_wide_values(events: list[TraceEvent]) -> None:
    lines = text_lines(events)
    assert len({line.index(" seq ") for line in lines}) == 1, lines
    assert len({line.index(" in ") for line in lines}) == 1, lines


def test_text_colour_only_when_asked(session: Session) -> None:
    plain = text_lines(session.events, colour=False)
    coloured = text_lines(session.events, colour=True)
    assert not any("\033" in line for line in plain)
    assert len(coloured) == len(plain)
    for colour_line, plain_line in zip(coloured, plain, strict=True):
        assert colour_line.startswith("\033[") and colour_line.endswith("\033[0m")
        assert ANSI.sub("", colour_line) == plain_line  # colour adds nothing else
    expected = {"in": "\033[36m", "out": "\033[33m", "state": "\033[1;32m",
                "new": "\033[1;32m", "drop": "\033[31m", "timer": "\033[2m"}  # fmt: skip
    seen = set()
    for colour_line, plain_line in zip(coloured, plain, strict=True):
        match = WHAT.match(plain_line)
        assert match is not None, plain_line
        seen.add(match[1])
        assert colour_line.startswith(expected[match[1]]), colour_line
    assert seen == set(expected)


def test_text_colour_by_default_on_a_tty_and_off_when_refused(session: Session) -> None:
    tty = TtyStringIO()
    writer = TextWriter(tty)
    for event in session.events:
        writer(event)
    assert all(line.startswith("\033[") for line in tty.getvalue().splitlines())
    refused = TtyStringIO()
    writer = TextWriter(refused, colour=False)
    for event in session.events:
        writer(event)
    assert "\033" not in refused.getvalue()


def test_text_times_count_from_the_first_event(session: Session) -> None:
    lines = text_lines(session.events)
    times = [float(line.split()[0]) for line in lines]
    first = session.events[0].time
    assert times == pytest.approx([e.time - first for e in session.events], abs=1e-6)


# ---- filters -------------------------------------------------------------------------------------


def test_filter_by_port_passes_only_that_connection(session: Session) -> None:
    http = [e for e in session.events if conn_of(e) == HTTP_CONN]
    echo = [e for e in session.events if conn_of(e) == ECHO_CONN]
    assert by_filter(session.events, TraceFilter(ports=frozenset({80}))) == http
    assert by_filter(session.events, TraceFilter(ports=frozenset({7}))) == echo
    both = by_filter(session.events, TraceFilter(ports=frozenset({7, 80})))
    assert both == [e for e in session.events if conn_of(e) in (HTTP_CONN, ECHO_CONN)]
    kinds = {type(e) for e in http}
    assert kinds == {NewConnection, SegmentEvent, StateChange, TimerEvent}


def test_filter_matches_a_remote_port_too(session: Session) -> None:
    passed = by_filter(session.events, TraceFilter(ports=frozenset({ECHO_SPORT})))
    assert passed == [e for e in session.events if conn_of(e) == ECHO_CONN]


def test_filter_passes_segments_of_no_connection_by_their_ports(session: Session) -> None:
    passed = by_filter(session.events, TraceFilter(ports=frozenset({9})))
    assert passed == segments(session.events, None)
    assert [(e.direction, e.flags) for e in passed] == [("in", "S"), ("out", "R.")]


def test_filter_by_host(session: Session) -> None:
    peer = by_filter(session.events, TraceFilter(addresses=frozenset({PEER_DOTTED})))
    assert peer == [
        e for e in session.events if conn_of(e) in (HTTP_CONN, ECHO_CONN) or (
            isinstance(e, SegmentEvent) and e.conn is None)
    ]  # fmt: skip
    ours = by_filter(session.events, TraceFilter(addresses=frozenset({US_DOTTED})))
    assert ours == peer  # either end of the 4-tuple matches
    assert by_filter(session.events, TraceFilter(addresses=frozenset({"10.9.9.9"}))) == []


def test_filter_wants_the_port_and_the_host_when_given_both(session: Session) -> None:
    both = TraceFilter(frozenset({80}), frozenset({PEER_DOTTED}))
    assert by_filter(session.events, both) == [e for e in session.events if conn_of(e) == HTTP_CONN]
    other_host = TraceFilter(frozenset({80}), frozenset({"10.9.9.9"}))
    assert by_filter(session.events, other_host) == []


def test_filter_drops_the_drop_events(session: Session) -> None:
    """A drop names no connection: a filtered trace leaves them all out."""
    assert any(isinstance(e, Drop) for e in session.events)
    for trace_filter in (
        TraceFilter(ports=frozenset({80})),
        TraceFilter(addresses=frozenset({PEER_DOTTED})),
    ):
        assert not any(isinstance(e, Drop) for e in by_filter(session.events, trace_filter))


def test_filter_of_decisions_peer_states_and_faults() -> None:
    new = NewConnection(0.0, 5, US_DOTTED, 80, PEER_DOTTED, 40000, True)
    other = NewConnection(0.0, 6, US_DOTTED, 7, PEER_DOTTED, 40001, True)
    events: list[TraceEvent] = [
        new,
        other,
        Decision(0.1, 5, "challenge ACK", "RFC 5961 4"),
        Decision(0.1, 6, "challenge ACK", "RFC 5961 4"),
        PeerStateChange(0.2, 5, US_DOTTED, 80, PEER_DOTTED, 40000, "SYN_SENT", "ESTABLISHED"),
        PeerStateChange(0.2, 6, US_DOTTED, 7, PEER_DOTTED, 40001, "SYN_SENT", "ESTABLISHED"),
        PeerStateChange(0.3, None, US_DOTTED, 80, PEER_DOTTED, 40002, "CLOSE", "SYN_SENT"),
        PeerStateChange(0.3, None, US_DOTTED, 7, PEER_DOTTED, 40003, "CLOSE", "SYN_SENT"),
        fault(5, 80),
        fault(6, 7),
        fault(None, 80),
        fault(None, 7),
    ]
    passed = by_filter(events, TraceFilter(ports=frozenset({80})))
    assert passed == events[0::2]


def fault(conn: int | None, port: int) -> FaultEvent:
    return FaultEvent(0.4, conn, "in", "drop", 1, US_DOTTED, port, PEER_DOTTED, 40000, "S",
                      1000, 0, 0, 0, 0)  # fmt: skip


def test_trace_filter_truth_and_matching() -> None:
    assert not TraceFilter()
    assert TraceFilter(ports=frozenset({80}))
    assert TraceFilter(addresses=frozenset({"10.0.0.1"}))
    assert TraceFilter().matches((), ())
    assert TraceFilter(ports=frozenset({80})).matches(("1.2.3.4",), (1234, 80))
    assert not TraceFilter(ports=frozenset({80})).matches(("1.2.3.4",), (1234, 8080))


# ---- the packet tap filter -----------------------------------------------------------------------


def ports_of(packet: bytes) -> set[int]:
    ip = IP(packet)
    return {ip[TCP].sport, ip[TCP].dport} if TCP in ip else set()


def by_tap_filter(packets: list[tuple[str, bytes]], trace_filter: TraceFilter) -> list[bytes]:
    passed: list[bytes] = []
    tap = FilteredTap(lambda _d, packet, _t: passed.append(packet), trace_filter)
    for direction, packet in packets:
        tap(direction, packet, 0.0)
    return passed


def test_filtered_tap_by_port(session: Session) -> None:
    every = [packet for _, packet in session.packets]
    assert any(ICMP in IP(p) for p in every)
    for port in (80, 7, 9):
        passed = by_tap_filter(session.packets, TraceFilter(ports=frozenset({port})))
        assert passed == [p for p in every if port in ports_of(p)]
        assert passed
    # The bad-checksum segment was for port 80: the tap, before TCP, keeps it.
    assert session.bad_packet in by_tap_filter(session.packets, TraceFilter(frozenset({80})))


def test_filtered_tap_by_host_keeps_icmp(session: Session) -> None:
    every = [packet for _, packet in session.packets]
    assert by_tap_filter(session.packets, TraceFilter(addresses=frozenset({PEER_DOTTED}))) == every
    assert by_tap_filter(session.packets, TraceFilter(addresses=frozenset({"10.9.9.9"}))) == []
    icmp_only = by_tap_filter(session.packets, TraceFilter(ports=frozenset({80})))
    assert not any(ICMP in IP(p) for p in icmp_only)


def test_filtered_tap_short_packet_passes_only_an_empty_filter() -> None:
    runt = [("in", b"\x45\x00\x00")]
    assert by_tap_filter(runt, TraceFilter()) == [b"\x45\x00\x00"]
    assert by_tap_filter(runt, TraceFilter(ports=frozenset({80}))) == []


# ---- fan-out -------------------------------------------------------------------------------------


def test_fan_out_gives_every_sink_every_event_in_order(session: Session) -> None:
    order: list[tuple[str, TraceEvent]] = []

    def sink(name: str) -> Callable[[TraceEvent], None]:
        return lambda event: order.append((name, event))

    fan_out = FanOut([sink("a"), sink("b"), sink("c")])
    for event in session.events:
        fan_out(event)
    assert order == [(name, e) for e in session.events for name in ("a", "b", "c")]


def test_fan_out_of_writers_gives_the_same_output_as_each_alone(session: Session) -> None:
    text, jsonl = io.StringIO(), io.StringIO()
    fan_out = FanOut([TextWriter(text), JsonlWriter(jsonl)])
    for event in session.events:
        fan_out(event)
    assert text.getvalue().splitlines() == text_lines(session.events)
    assert jsonl.getvalue().splitlines() == jsonl_lines(session.events)


# ---- pcap ----------------------------------------------------------------------------------------


def pcap_records(data: bytes) -> Iterator[tuple[int, int, int, int, bytes]]:
    """(seconds, microseconds, captured length, original length, bytes) per record."""
    offset = 24
    while offset < len(data):
        seconds, micros, incl, orig = struct.unpack_from("<IIII", data, offset)
        offset += 16
        yield seconds, micros, incl, orig, data[offset : offset + incl]
        offset += incl
    assert offset == len(data), "a record runs past the end of the file"


def test_pcap_global_header(session: Session) -> None:
    header = struct.unpack_from("<IHHiIII", session.pcap)
    assert header == (0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)
    assert session.pcap[:4] == bytes.fromhex("d4c3b2a1")  # little-endian, microseconds
    assert PcapWriter.LINKTYPE_RAW == 101


def test_pcap_records_hold_every_packet_whole(session: Session) -> None:
    records = list(pcap_records(session.pcap))
    assert len(records) == len(session.packets)
    first, last = session.wall_clock
    for (seconds, micros, incl, orig, data), (_, packet) in zip(
        records, session.packets, strict=True
    ):
        assert incl == orig == len(packet) and data == packet
        assert 0 <= micros < 1_000_000
        assert int(first) <= seconds + micros / 1e6 <= last + 1


def test_pcap_reads_back_with_scapy_as_the_packets_and_the_segment_events(
    session: Session,
) -> None:
    with PcapReader(io.BytesIO(session.pcap)) as reader:
        assert reader.linktype == 101
    packets = rdpcap(io.BytesIO(session.pcap))
    assert [bytes(p) for p in packets] == [packet for _, packet in session.packets]
    for packet, (direction, _) in zip(packets, session.packets, strict=True):
        assert isinstance(packet, IP)
        assert (packet.src, packet.dst) == (
            (PEER_DOTTED, US_DOTTED) if direction == "in" else (US_DOTTED, PEER_DOTTED)
        )
    # One to one: every TCP packet that reached TCP input, and every one we
    # sent, is a segment event with the same numbers, in the same order.
    tcp = [p for p in packets if TCP in p and bytes(p) != session.bad_packet]
    events = [e for e in session.events if isinstance(e, SegmentEvent)]
    assert len(tcp) == len(events)
    for packet, event in zip(tcp, events, strict=True):
        assert packet.src == (PEER_DOTTED if event.direction == "in" else US_DOTTED)
        seg = packet[TCP]
        local, remote = (
            (seg.dport, seg.sport) if event.direction == "in" else (seg.sport, seg.dport)
        )
        assert (local, remote) == (event.local_port, event.remote_port)
        assert (seg.seq, seg.ack, seg.window) == (event.seq, event.ack, event.window)
        assert len(bytes(seg.payload)) == event.length
        assert scapy_flags(str(seg.flags)) == event.flags
        assert scapy_options(seg.options) == event.options


def scapy_flags(text: str) -> str:
    """scapy's flag letters (e.g. "SA", "FA", "PA") in our tcpdump order."""
    names = {"S": "S", "F": "F", "R": "R", "P": "P", "A": ".", "U": "U", "E": "E", "C": "W"}
    return "".join(names[c] for c in "SFRPAUEC" if c in text) or "none"


def scapy_options(options: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, value in options:
        if name == "MSS":
            found["mss"] = value
        elif name == "WScale":
            found["wscale"] = value
        elif name == "SAckOK":
            found["sackOK"] = True
        elif name == "Timestamp":
            found["TS"] = list(value)
    return found


def test_pcap_snaplen_cuts_the_capture_not_the_original_length() -> None:
    stream = io.BytesIO()
    writer = PcapWriter(stream, snaplen=64)
    packet = bytes(IP(src=PEER_DOTTED, dst=US_DOTTED) / TCP() / (b"x" * 1000))
    writer("in", packet, 0.0)
    assert struct.unpack_from("<I", stream.getvalue(), 16)[0] == 64
    (record,) = pcap_records(stream.getvalue())
    assert record[2:4] == (64, len(packet)) and record[4] == packet[:64]
    (read,) = rdpcap(io.BytesIO(stream.getvalue()))
    assert read.wirelen == len(packet) and bytes(read) == packet[:64]


# ---- the sinks of a daemon -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("t.pcap", "pcap"), ("T.CAP", "pcap"), ("t.jsonl", "jsonl"), ("t.json", "jsonl"),
     ("t.txt", "text"), ("t.log", "text"), ("trace", "text")],
)  # fmt: skip
def test_format_from_the_file_name(name: str, fmt: str) -> None:
    assert format_for(Path(name)) == fmt


def feed(sinks: TraceSinks, session: Session) -> None:
    assert sinks.tracer is not None and sinks.tap is not None
    for event in session.events:
        sinks.tracer(event)
    for direction, packet in session.packets:
        sinks.tap(direction, packet, 0.0)
    sinks.close()


def test_trace_sinks_write_every_format(session: Session, tmp_path: Path) -> None:
    specs = [TraceSpec(tmp_path / "t.txt", "text"), TraceSpec(tmp_path / "t.jsonl", "jsonl"),
             TraceSpec(tmp_path / "t.pcap", "pcap")]  # fmt: skip
    sinks = TraceSinks(specs)
    assert isinstance(sinks.tracer, FanOut)
    feed(sinks, session)
    assert (tmp_path / "t.txt").read_text().splitlines() == text_lines(session.events)
    assert (tmp_path / "t.jsonl").read_text().splitlines() == jsonl_lines(session.events)
    records = list(pcap_records((tmp_path / "t.pcap").read_bytes()))
    assert [r[4] for r in records] == [packet for _, packet in session.packets]


def test_trace_sinks_filter_every_output(session: Session, tmp_path: Path) -> None:
    specs = [TraceSpec(tmp_path / "t.jsonl", "jsonl"), TraceSpec(tmp_path / "t.pcap", "pcap")]
    sinks = TraceSinks(specs, TraceFilter(ports=frozenset({7})))
    assert isinstance(sinks.tracer, Filtered) and isinstance(sinks.tap, FilteredTap)
    feed(sinks, session)
    echo = [e for e in session.events if conn_of(e) == ECHO_CONN]
    assert (tmp_path / "t.jsonl").read_text().splitlines() == jsonl_lines(echo)
    captured = [r[4] for r in pcap_records((tmp_path / "t.pcap").read_bytes())]
    assert captured == [p for _, p in session.packets if 7 in ports_of(p)]
    assert len(captured) == len(segments(echo, ECHO_CONN)) == 4


# ---- found with the trace while benchmarking (bench/trace_cost.py) -------------------------------


class BackToBack:
    """Two Stacks wired to each other in-process; the server reads everything at once."""

    def __init__(self, tracer: Callable[[TraceEvent], None]) -> None:
        self.to_server: deque[bytes] = deque()
        self.to_client: deque[bytes] = deque()
        self.client = Stack(PEER, self._queue(self.to_server), trace=tracer)
        self.server = Stack(US, self._queue(self.to_client), trace=tracer)
        self.received = 0
        self.server.tcp.listen(9, self._accept)

    @staticmethod
    def _queue(queue: deque[bytes]) -> Callable[[bytes], bool]:
        """A transmit callable that puts each packet on `queue` for the other side."""

        def transmit(packet: bytes) -> bool:
            queue.append(packet)
            return True

        return transmit

    def _accept(self, conn: TcpConnection) -> None:
        def read(event: AppEvent) -> None:
            if isinstance(event, DataReceived):
                self.received += len(conn.read(1 << 30, 0.0))

        self.server.tcp.attach(conn, read)

    def pump(self) -> None:
        while self.to_server or self.to_client:
            while self.to_server:
                self.server.receive(self.to_server.popleft())
            while self.to_client:
                self.client.receive(self.to_client.popleft())


def test_a_bulk_transfer_goes_out_in_full_segments() -> None:
    events: list[TraceEvent] = []
    wire = BackToBack(events.append)
    total, mss = 1000 * 1460, 1460 - 12  # timestamps take 12 bytes of every segment
    data = bytes(total)
    sent = 0

    def write(event: AppEvent | None = None) -> None:
        nonlocal sent
        if event is None or isinstance(event, SendSpace):
            while sent < total and (n := conn.send(data[sent : sent + 65536], 0.0)):
                sent += n

    conn = wire.client.tcp.connect(US, 9, 0.0, local_port=HTTP_SPORT)
    wire.client.tcp.attach(conn, write)
    wire.pump()
    write()
    wire.client.tcp.flush(conn)
    wire.pump()
    assert wire.received == total
    sizes = [
        e.length
        for e in events
        if isinstance(e, SegmentEvent) and e.direction == "out" and e.local == PEER_DOTTED
        and e.length
    ]  # fmt: skip
    small = [size for size in sizes[:-1] if size < mss]
    assert len(sizes) <= total // mss + 10, f"{len(sizes)} segments, {len(small)} below the MSS"


# ---- TraceFile: failed writes, rotation, reopening (issue 13) ----------------------------------


def trace_file(
    path: Path, max_bytes: int | None = None, keep: int = 1
) -> tuple[TraceFile, list[int]]:
    errors: list[int] = []
    file = TraceFile(path, b"H\n", TraceRotation(max_bytes, keep), lambda: errors.append(1))
    return file, errors


def test_trace_file_on_a_full_disk_reports_once_writes_nothing_more_and_closes_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="ustack.trace"):
        file, errors = trace_file(Path("/dev/full"))  # the header fails (ENOSPC)
        file.write("a record\n")
        file.close()
    assert errors == [1]
    assert [r.getMessage() for r in caplog.records] == [
        "cannot write the trace /dev/full: No space left on device (ENOSPC); that trace is stopped"
    ]


def test_trace_file_rotates_before_a_record_would_pass_max_bytes_and_keeps_k_old_files(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.jsonl"
    file, errors = trace_file(path, max_bytes=10, keep=2)
    for n in range(6):
        file.write(f"{n}{n}{n}\n")  # 4 bytes: the header and two records make 10
    file.write("a record larger than a whole file\n")
    file.close()
    assert errors == []
    assert path.read_text() == "H\na record larger than a whole file\n"
    assert (tmp_path / "t.jsonl.1").read_text() == "H\n444\n555\n"
    assert (tmp_path / "t.jsonl.2").read_text() == "H\n222\n333\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl", "t.jsonl.1", "t.jsonl.2"]


def test_trace_file_reopen_starts_a_moved_file_anew_and_continues_one_left_in_place(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.jsonl"
    file, errors = trace_file(path)
    file.write("1\n")
    path.rename(tmp_path / "t.jsonl.1")
    assert file.reopen()
    file.write("2\n")
    assert file.reopen()  # not moved this time: appended to, no second header
    file.write("3\n")
    file.close()
    assert errors == []
    assert (tmp_path / "t.jsonl.1").read_text() == "H\n1\n"
    assert path.read_text() == "H\n2\n3\n"
