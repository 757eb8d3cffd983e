"""The trace's vocabulary (ustack/trace/vocabulary.py) against its readers
and its documentation: every timer kind, segment note and decision the core
can write is one that `ustack ladder` and `ustack explain` know; every drop
reason makes a counter name; docs/trace-format.md lists every member and
every record field, so neither can drift from the code.
"""

from __future__ import annotations

import dataclasses
import json
import re
import string
from pathlib import Path

import pytest
from test_trace import jsonl_lines
from test_trace import text_lines

from ustack.counters import Counters
from ustack.study import ladder
from ustack.study import sentences
from ustack.study.decode import decision_note
from ustack.study.decode import is_lost
from ustack.study.decode import segment_note
from ustack.study.explain import explain
from ustack.study.load import as_records
from ustack.study.load import load_trace
from ustack.trace.records import _KINDS
from ustack.trace.records import READABLE_SCHEMAS
from ustack.trace.records import TRACE_SCHEMA_VERSION
from ustack.trace.records import Decision
from ustack.trace.records import Drop
from ustack.trace.records import FaultEvent
from ustack.trace.records import SegmentEvent
from ustack.trace.records import TimerEvent
from ustack.trace.records import TraceEvent
from ustack.trace.records import event_dict
from ustack.trace.vocabulary import LOSS_RULES
from ustack.trace.vocabulary import LOST_NOTE
from ustack.trace.vocabulary import Challenge
from ustack.trace.vocabulary import DropReason
from ustack.trace.vocabulary import FaultAction
from ustack.trace.vocabulary import Layer
from ustack.trace.vocabulary import Note
from ustack.trace.vocabulary import OutOfWindow
from ustack.trace.vocabulary import Rule
from ustack.trace.vocabulary import SegmentNote
from ustack.trace.vocabulary import TimerAction
from ustack.trace.vocabulary import TimerKind
from ustack.wire.errors import MalformedPacket

DOC = Path(__file__).resolve().parents[2] / "docs" / "trace-format.md"


# ---- the readers know every member -----------------------------------------------------


def test_every_timer_kind_has_a_ladder_note_and_an_explain_sentence() -> None:
    assert set(ladder.TIMER_NOTES) == set(TimerKind)
    assert set(sentences.TIMER_SENTENCES) == set(TimerKind)
    for when_set, _ in ladder.TIMER_NOTES.values():
        assert when_set.count("{}") == 1  # the delay goes there


@pytest.mark.parametrize("timer", list(TimerKind))
def test_every_timer_kind_reads_in_both_tools(timer: TimerKind) -> None:
    events: list[TraceEvent] = [
        SegmentEvent(0.0, 1, "in", "198.18.0.2", 80, "198.18.0.1", 4000, "S", 9, 0, 0, 0,
                     100, 0, {}, "LISTEN", "SYN_RECEIVED"),
        TimerEvent(0.0, 1, timer, TimerAction.SET, 0.5),
        TimerEvent(0.5, 1, timer, TimerAction.FIRED),
    ]  # fmt: skip
    fired = ladder.TIMER_NOTES[timer][1]
    assert f"({fired})" in ladder.render_ascii(events)
    records = as_records(events)
    context = sentences.Context("198.18.0.1:4000", "198.18.0.2:80", {}, "", {})
    told, _ = sentences.TIMER_SENTENCES[timer](sentences.Item(records[-1]), None, context)
    # (its opening words: the rest depends on what the trace says about the timer)
    assert explain(events)[-1].startswith(f"2. {told.split(':')[0]}")


def _out_segment(note: str, flags: str = ".", length: int = 0) -> dict[str, object]:
    return {
        "type": "segment", "time": 1.0, "conn": 1, "direction": "out",
        "local": "198.18.0.2", "local_port": 80, "remote": "198.18.0.1", "remote_port": 4000,
        "flags": flags, "seq": 101, "ack": 201, "rel_seq": 1, "rel_ack": 1, "window": 100,
        "length": length, "options": {}, "state_before": "ESTABLISHED",
        "state_after": "ESTABLISHED", "note": note,
    }  # fmt: skip


# How `ustack explain` tells a segment with each note: its flags, and words of
# its sentence. A new SegmentNote fails here until the readers know it.
TOLD = {
    SegmentNote.NONE: (".", "ustack sends an ACK (ack 1)"),
    SegmentNote.RETRANSMISSION: ("P.", "again (retransmission)"),
    SegmentNote.ZERO_WINDOW_PROBE: ("P.", "zero-window probe"),
    SegmentNote.KEEPALIVE_PROBE: (".", "sends a keep-alive probe (seq 1,"),
    SegmentNote.CHALLENGE_ACK: (".", "a challenge ACK (ack 1)"),
    SegmentNote.RST_UNACCEPTABLE_ACK: ("R", "(RST for an unacceptable ACK)"),
    SegmentNote.RST_NO_CONNECTION: ("R.", "no connection for that segment"),
    SegmentNote.SYN_COOKIE: ("S.", "ustack answers SYN,ACK"),
}


@pytest.mark.parametrize("note", list(SegmentNote))
def test_every_segment_note_is_known_to_the_readers(note: SegmentNote) -> None:
    flags, told = TOLD[note]
    record = _out_segment(note, flags, length=1 if "P" in flags else 0)
    assert segment_note(record) is note and not is_lost(record)
    lost = {**record, "note": " ".join(filter(None, (note, LOST_NOTE)))}
    assert segment_note(lost) is note and is_lost(lost)

    label = ladder.segment_label(record, numbers=(1, 1))
    assert label.endswith(f" ({note})") if note else "(" not in label
    assert ladder.segment_label(lost, numbers=(1, 1)).endswith(
        f" ({note} lost)" if note else " (lost)"
    )
    context = sentences.Context("198.18.0.1:4000", "198.18.0.2:80", {}, "", {})
    text, refs = sentences.outgoing_step(sentences.Item(record), context)
    assert told in text and refs


def _sample_values(note: Note) -> dict[str, object]:
    """A value for each of the Note's fields (a number where it has a format)."""
    fields = [(name, spec) for _, name, spec, _ in string.Formatter().parse(note.text) if name]
    return {name: 1.25 if spec else f"<{name}>" for name, spec in fields}


@pytest.mark.parametrize("note", list(Note))
def test_every_decision_is_known_by_kind_and_by_its_sentence(note: Note) -> None:
    values = _sample_values(note)
    what = note.sentence(**values)
    written = Decision(0.0, 1, what, note.rule, note.kind)
    record = event_dict(written)
    assert decision_note(record)[0] is note
    # A schema 2 trace (or a writer that named no kind): the sentence alone.
    found, parsed = decision_note({**record, "kind": ""})
    assert found is note
    assert set(parsed) == set(values)


def test_the_values_explain_reads_from_decisions_are_in_their_sentences() -> None:
    assert "rto" in _sample_values(Note.RETRANSMISSION_TIMEOUT)
    assert "what" in _sample_values(Note.CHALLENGE_ACK)
    for challenge in Challenge:
        what = Note.CHALLENGE_ACK.sentence(what=challenge.text)
        record = {"type": "decision", "what": what, "rule": challenge.rule, "kind": ""}
        assert decision_note(record) == (Note.CHALLENGE_ACK, {"what": challenge.text})


def test_loss_rules_are_rules() -> None:
    assert set(Rule) >= LOSS_RULES
    assert {note.rule for note in Note} <= set(Rule)


def test_fault_drops_fold_by_the_fault_action() -> None:
    sent = _out_segment(SegmentNote.RETRANSMISSION, "P.", 1)
    fault = dataclasses.asdict(
        FaultEvent(1.0, 1, "out", FaultAction.DROP, 1, "198.18.0.2", 80, "198.18.0.1", 4000,
                   "P.", 101, 201, 1, 1, 1)
    )  # fmt: skip
    folded = as_records([sent, {"type": "fault", **fault}])
    assert [r["note"] for r in folded] == [f"retransmission {LOST_NOTE}"]


# ---- drop reasons are counter names ----------------------------------------------------

COUNTER_PART = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


@pytest.mark.parametrize("reason", list(DropReason))
def test_every_drop_reason_is_a_counter_name(reason: DropReason) -> None:
    assert COUNTER_PART.fullmatch(reason), reason
    for layer in Layer:
        assert COUNTER_PART.fullmatch(layer)
        counters = Counters()
        counters.drop(layer, reason, 0.0)
        (name,) = counters
        assert name.split(".") == [layer, "drop", reason]


def test_a_parser_reason_is_counted_and_traced_as_the_wire_layer_gives_it() -> None:
    traced: list[TraceEvent] = []
    counters = Counters()
    counters.tracer = traced.append
    counters.drop(Layer.TCP, MalformedPacket("tcp-bad-offset", "data offset 3"), 2.0, "x")
    assert dict(counters) == {"tcp.drop.tcp-bad-offset": 1}
    assert traced == [Drop(2.0, Layer.TCP, "tcp-bad-offset", "x")]


# ---- the file: StrEnums are their text -------------------------------------------------


def test_vocabulary_fields_are_written_as_their_text() -> None:
    events: list[TraceEvent] = [
        TimerEvent(1.0, 1, TimerKind.RETRANSMIT, TimerAction.SET, 2.0),
        Drop(1.0, Layer.IP, DropReason.NOT_FOR_US, "from 10.0.0.1"),
        SegmentEvent(1.0, 1, "out", "198.18.0.2", 80, "198.18.0.1", 4000, ".", 1, 2, 0, 0,
                     100, 0, {}, "ESTABLISHED", "ESTABLISHED", SegmentNote.CHALLENGE_ACK),
        Decision(1.0, 1, Note.PAWS.text, Note.PAWS.rule, Note.PAWS.kind),
    ]  # fmt: skip
    lines = [json.loads(line) for line in jsonl_lines(events)[1:]]
    assert (lines[0]["timer"], lines[0]["action"]) == ("retransmit", "set")
    assert (lines[1]["layer"], lines[1]["reason"]) == ("ip", "not-for-us")
    assert lines[2]["note"] == "challenge ACK"
    assert (lines[3]["rule"], lines[3]["kind"]) == ("RFC 7323 5.3", "paws")
    text = "\n".join(text_lines(events))
    assert "timer retransmit set" in text
    assert "drop  ip: not-for-us" in text
    assert "(challenge ACK)" in text


def test_a_schema_2_trace_reads_without_decision_kinds(tmp_path: Path) -> None:
    decision = Note.OUT_OF_ORDER_HELD
    lines = [
        {"type": "header", "schema": 2},
        {"type": "decision", "time": 0.0, "conn": 1, "what": decision.text, "rule": decision.rule},
    ]
    path = tmp_path / "old.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    (record,) = load_trace(path)
    assert decision_note(record)[0] is decision


# ---- docs/trace-format.md --------------------------------------------------------------


def _table(text: str, start: int) -> list[list[str]]:
    """The rows of the first Markdown table at or after `start` (header left out)."""
    lines = text[start:].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[first + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _vocabulary_table(name: str) -> list[list[str]]:
    text = DOC.read_text(encoding="utf-8")
    marker = f"<!-- vocabulary: {name} -->"
    assert marker in text, f"docs/trace-format.md has no table for {name}"
    return _table(text, text.index(marker))


def _code(cell: str) -> str:
    assert cell.startswith("`") and cell.endswith("`"), cell
    return "" if cell == '`""`' else cell[1:-1]


@pytest.mark.parametrize(
    "vocabulary", [TimerKind, TimerAction, SegmentNote, Layer, DropReason, FaultAction]
)
def test_the_doc_lists_every_member(vocabulary: type) -> None:
    listed = [_code(row[0]) for row in _vocabulary_table(vocabulary.__name__)]
    assert listed == [member.value for member in vocabulary]


def test_the_doc_lists_every_decision_with_its_rule_and_sentence() -> None:
    rows = _vocabulary_table("Note")
    assert [(_code(kind), rule, _code(text)) for kind, rule, text in rows] == [
        (note.kind, note.rule.value, note.text) for note in Note
    ]
    rows = _vocabulary_table("Challenge")
    assert [(_code(name), _code(text), rule) for name, text, rule in rows] == [
        (c.name.lower(), c.text, c.rule.value) for c in Challenge
    ]
    rows = _vocabulary_table("OutOfWindow")
    assert [(_code(name), _code(text), rule) for name, text, rule in rows] == [
        (str(o), o.text, o.rule.value) for o in OutOfWindow
    ]
    rows = _vocabulary_table("Rule")
    assert [(text, _code(name)) for text, name in rows] == [(r.value, r.name) for r in Rule]


def test_the_doc_gives_each_drop_reason_its_layers() -> None:
    for row in _vocabulary_table("DropReason"):
        layers = [layer.strip() for layer in row[1].split(",")]
        assert layers and set(layers) <= {layer.value for layer in Layer}, row


def test_the_doc_lists_every_record_field() -> None:
    text = DOC.read_text(encoding="utf-8")
    for kind, name in _KINDS.items():
        heading = re.search(rf"^### `{name}`", text, re.MULTILINE)
        assert heading is not None, f"no section for {name} records"
        documented = {
            field
            for row in _table(text, heading.start())
            for field in re.findall(r"`(\w+)`", row[0])
        }
        fields = {f.name for f in dataclasses.fields(kind)} - {"time"}
        assert documented == fields, name


def test_the_doc_is_for_this_schema() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert text.startswith(f"# The trace format (schema {TRACE_SCHEMA_VERSION})")
    assert f'{{"type": "header", "schema": {TRACE_SCHEMA_VERSION}}}' in text
    text_start = text.index("### Versions")
    versions = [int(row[0]) for row in _table(text, text_start)]
    assert set(READABLE_SCHEMAS) <= set(versions)
    assert LOST_NOTE in text
