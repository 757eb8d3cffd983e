"""The trace for other tools: its JSON Schema (docs/trace-schema.json) and
`ustack export TRACE --qlog` (qlog's JSON-SEQ shape).

The schema file must be what ustack/study/schema.py makes from the records,
and real traces of the scripted core must validate against it (jsonschema,
the reference validator, is the independent check): a passive open, data,
close, a RST, a closed port, drops (tests/unit/test_trace.py's session); a
fast retransmit with SACK and the tcb; a lost FIN with fault and peer-state
events. The qlog export is read back as RFC 7464 JSON-SEQ and checked
against the shape docs/trace-format.md documents.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from test_ladder import lost_fin_with_peer_states
from test_ladder import write_trace
from test_plot_data import fast_retransmit
from test_trace import run_session

from ustack import cli
from ustack.study.export import RECORD_SEPARATOR
from ustack.study.schema import schema_text
from ustack.study.schema import trace_schema
from ustack.trace.records import DatagramEvent
from ustack.trace.records import FaultEvent
from ustack.trace.records import SegmentEvent
from ustack.trace.records import TraceEvent
from ustack.trace.vocabulary import LOST_NOTE
from ustack.trace.vocabulary import FaultAction
from ustack.trace.vocabulary import SegmentNote

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "docs" / "trace-schema.json"


def lost_fin_as_the_daemon_writes_it() -> list[TraceEvent]:
    """test_ladder's lost FIN, written as the daemon writes it: the segment
    with its plain note, then the fault injector's drop (the readers, not the
    file, mark the segment lost)."""
    events: list[TraceEvent] = []
    for event in lost_fin_with_peer_states():
        if isinstance(event, SegmentEvent) and event.note == LOST_NOTE:
            events.append(dataclasses.replace(event, note=SegmentNote.NONE))
            events.append(
                FaultEvent(
                    event.time,
                    event.conn,
                    "out",
                    FaultAction.DROP,
                    1,
                    event.local,
                    event.local_port,
                    event.remote,
                    event.remote_port,
                    event.flags,
                    event.seq,
                    event.ack,
                    event.rel_seq,
                    event.rel_ack,
                    event.length,
                    event.window,
                )
            )
        else:
            events.append(event)
    return events


def udp_exchange() -> list[TraceEvent]:
    """A session, then a datagram to a ustack endpoint and its reply over
    IPv6, as net/udp.py traces them (test_udp.py drives the real layer)."""
    return [
        *run_session().events,
        DatagramEvent(100.0, "in", "2001:2::2", 7, "2001:2::1", 40000, 4000),
        DatagramEvent(100.0, "out", "2001:2::2", 7, "2001:2::1", 40000, 4000),
    ]


SCENARIOS: dict[str, Callable[[], list[TraceEvent]]] = {
    "session": lambda: run_session().events,
    "fast_retransmit": lambda: fast_retransmit().trace,
    "lost_fin_with_peer_states": lost_fin_as_the_daemon_writes_it,
    "udp_exchange": udp_exchange,
}


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("traces")
    return {name: write_trace(folder / f"{name}.jsonl", make()) for name, make in SCENARIOS.items()}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---- the JSON Schema --------------------------------------------------------------------------


def test_the_schema_file_is_what_the_records_make() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), (
        "docs/trace-schema.json is stale: python -m ustack.study.schema > docs/trace-schema.json"
    )
    assert trace_schema()["$id"] == "urn:ustack:trace-schema:5"


@pytest.mark.parametrize("name", SCENARIOS)
def test_real_traces_validate(
    name: str, traces: dict[str, Path], validator: jsonschema.Draft202012Validator
) -> None:
    records = lines_of(traces[name])
    for number, record in enumerate(records, 1):
        errors = [e.message for e in validator.iter_errors(record)]
        assert not errors, f"line {number}: {record}: {errors}"
    kinds = {r["type"] for r in records}
    assert {"header", "connection", "segment", "state", "timer"} <= kinds


def test_the_traces_hold_every_kind_of_record(traces: dict[str, Path]) -> None:
    kinds = {r["type"] for path in traces.values() for r in lines_of(path)}
    assert kinds == set(trace_schema()["$defs"])


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda r: r.pop("seq"), "'seq' is a required property"),
        (lambda r: r.update(direction="sideways"), "'sideways' is not one of"),
        (lambda r: r.update(state_after="ESTABLISHED_ISH"), "is not one of"),
        (lambda r: r.update(window="wide"), "'wide' is not of type 'integer'"),
        (lambda r: r.update(options={"mss": 1460, "bogus": 1}), "'bogus' does not match any"),
        (lambda r: r.update(tcb={"cwnd": "big"}), "is not valid under any of the given schemas"),
        (lambda r: r.update(extra=1), "'extra' was unexpected"),
    ],
)
def test_bad_segments_fail(
    change: Callable[[dict[str, Any]], object],
    why: str,
    traces: dict[str, Path],
    validator: jsonschema.Draft202012Validator,
) -> None:
    segment = next(r for r in lines_of(traces["fast_retransmit"]) if r["type"] == "segment")
    assert not list(validator.iter_errors(segment))
    change(segment)
    # oneOf names no branch: ask the segment's own definition what is wrong.
    schema = {key: value for key, value in validator.schema.items() if key != "oneOf"}
    own = jsonschema.Draft202012Validator({**schema, "$ref": "#/$defs/segment"})
    messages = " ".join(e.message for e in own.iter_errors(segment))
    assert why in messages, messages
    assert not validator.is_valid(segment)


def test_older_schemas_validate_too(validator: jsonschema.Draft202012Validator) -> None:
    assert validator.is_valid({"type": "header", "schema": 2})
    assert not validator.is_valid({"type": "header", "schema": 6})
    # A schema 2 decision has no kind; a schema 3 segment no tcb.
    decision = {"type": "decision", "time": 1.0, "conn": 1, "what": "x", "rule": "RFC 1"}
    assert validator.is_valid(decision)


# ---- qlog -------------------------------------------------------------------------------------


def read_json_seq(data: bytes) -> list[dict[str, Any]]:
    """RFC 7464 strictly: every record RS-led and LF-ended, UTF-8 JSON between."""
    text = data.decode("utf-8")
    assert text.startswith(RECORD_SEPARATOR)
    chunks = text.split(RECORD_SEPARATOR)[1:]
    assert all(chunk.endswith("\n") and "\n" not in chunk[:-1] for chunk in chunks)
    return [json.loads(chunk) for chunk in chunks]


def export(trace: Path, out: Path, *extra: str) -> list[dict[str, Any]]:
    assert cli.main(["export", str(trace), "--qlog", "-o", str(out), *extra]) == 0
    return read_json_seq(out.read_bytes())


def test_qlog_header_and_events_have_the_documented_shape(
    traces: dict[str, Path], tmp_path: Path
) -> None:
    header, *events = export(traces["fast_retransmit"], tmp_path / "t.sqlog", "--conn", "1")
    assert header["qlog_format"] == "JSON-SEQ" and header["qlog_version"] == "0.3"
    trace = header["trace"]
    assert trace["vantage_point"] == {"name": "ustack", "type": "server"}  # a passive open
    assert trace["common_fields"]["time_format"] == "relative"
    assert trace["common_fields"]["protocol_type"] == ["TCP"]
    assert isinstance(trace["common_fields"]["reference_time"], float)
    names = {e["name"] for e in events}
    assert names >= {
        "connectivity:connection_started",
        "transport:packet_received",
        "transport:packet_sent",
        "recovery:metrics_updated",
        "connectivity:connection_state_updated",
        "recovery:loss_timer_updated",
        "ustack:decision",
    }
    times = [e["time"] for e in events]
    assert times[0] == 0.0 and times == sorted(times)
    for event in events:
        assert set(event) == {"time", "name", "data", "group_id"} and event["group_id"] == "1"
        if event["name"].startswith("transport:packet_"):
            header_fields = set(event["data"]["header"])
            assert {"flags", "seq", "ack", "window", "length"} <= header_fields


def test_qlog_events_carry_the_trace_values(traces: dict[str, Path], tmp_path: Path) -> None:
    _, *events = export(traces["fast_retransmit"], tmp_path / "t.sqlog")
    syn = next(e for e in events if e["name"] == "transport:packet_received")
    assert syn["data"]["header"]["flags"] == "S" and syn["data"]["options"]["mss"] == 1000
    states = [
        (e["data"]["old"], e["data"]["new"])
        for e in events
        if e["name"] == "connectivity:connection_state_updated"
    ]
    # (the listener's own open is conn 0's: the events of the trace's order)
    assert ("LISTEN", "SYN_RECEIVED") in states and ("SYN_RECEIVED", "ESTABLISHED") in states
    decision = next(e for e in events if e["name"] == "ustack:decision")
    assert decision["data"]["kind"] == "fast_retransmit"
    assert decision["data"]["rule"] == "RFC 5681 3.2"
    resent = [e for e in events if e["data"].get("trigger") == "retransmission"]
    assert len(resent) == 1 and resent[0]["name"] == "transport:packet_sent"
    metrics = [e["data"] for e in events if e["name"] == "recovery:metrics_updated"]
    assert metrics[0]["congestion_window"] > 0 and "rto" in metrics[0]
    assert any("ssthresh" in m for m in metrics)  # set by the fast retransmit
    # Only what changed: no two updates in a row say the same value.
    last: dict[str, float] = {}
    for update in metrics:
        assert update and all(last.get(k) != v for k, v in update.items()), update
        last.update(update)


def test_qlog_of_every_kind_of_record(traces: dict[str, Path], tmp_path: Path) -> None:
    header, *events = export(traces["lost_fin_with_peer_states"], tmp_path / "t.sqlog")
    assert header["trace"]["vantage_point"]["type"] == "unknown"  # all connections
    names = {e["name"] for e in events}
    assert {"ustack:fault", "ustack:peer_state_updated", "ustack:timer_updated"} <= names
    _, *session = export(traces["session"], tmp_path / "s.sqlog")
    dropped = [e for e in session if e["name"] == "transport:packet_dropped"]
    assert dropped and dropped[0]["data"]["trigger"] == "bad-checksum"
    assert "group_id" not in dropped[0]  # a drop belongs to no connection


def test_qlog_to_stdout(
    traces: dict[str, Path], capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    assert cli.main(["export", str(traces["session"]), "--qlog", "--conn", "2"]) == 0
    header, *events = read_json_seq(capsysbinary.readouterr().out)
    assert header["qlog_format"] == "JSON-SEQ"
    assert events and all(e["group_id"] == "2" for e in events)


def test_export_errors(
    traces: dict[str, Path], tmp_path: Path, cli_error: Callable[..., str]
) -> None:
    """One line "ustack: error: ..." each: 2 for the command line, 1 at run time."""
    session = str(traces["session"])
    assert "one of the arguments --qlog is required" in cli_error(["export", session])
    assert "no events of connection 99" in cli_error(
        ["export", session, "--qlog", "--conn", "99"], 1
    )
    not_a_trace = tmp_path / "t.pcap"
    not_a_trace.write_bytes(b"\xd4\xc3\xb2\xa1")
    assert "not a ustack JSONL trace" in cli_error(["export", str(not_a_trace), "--qlog"], 1)
    bad_out = tmp_path / "no" / "such" / "t.sqlog"
    assert "No such file or directory" in cli_error(
        ["export", session, "--qlog", "-o", str(bad_out)], 1
    )
