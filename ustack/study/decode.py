"""One line of a JSONL trace to a checked record: JSON parsed strictly (no NaN,
no Infinity), then each field checked against its type in trace/records.py,
the one description of every record kind. What is wrong is one short reason.
And back from a record's strings to the vocabulary members behind them."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import string
from collections.abc import Callable
from typing import Any

from ustack.trace import records as trace_records
from ustack.trace.vocabulary import LOST_NOTE
from ustack.trace.vocabulary import Note
from ustack.trace.vocabulary import SegmentNote

Record = dict[str, Any]


RECORD_CLASSES: dict[str, type] = {
    "connection": trace_records.NewConnection,
    "state": trace_records.StateChange,
    "segment": trace_records.SegmentEvent,
    "timer": trace_records.TimerEvent,
    "decision": trace_records.Decision,
    "drop": trace_records.Drop,
    "peer_state": trace_records.PeerStateChange,
    "fault": trace_records.FaultEvent,
    "datagram": trace_records.DatagramEvent,
}


def _printable(value: object) -> bool:
    # No control characters or lone surrogates: they would break a drawing's
    # lines, an SVG's XML or the terminal's encoding.
    return isinstance(value, str) and value.isprintable()


def _integer(value: object) -> bool:
    # The trace's integers are ports, 32-bit numbers and counts.
    return type(value) is int and -(1 << 63) <= value < 1 << 63


def _number(value: object) -> bool:
    # NaN fails both comparisons; 1e400 reads as infinity and fails too.
    return (type(value) is int or type(value) is float) and -1e18 < value < 1e18


def _option_value(value: object) -> bool:
    """What tcp/segment.options_dict writes: a number, True, hex text, the
    TS pair or SACK blocks (lists of numbers, one level deep at most)."""
    if isinstance(value, list):
        return all(_integer(v) or (isinstance(v, list) and all(map(_integer, v))) for v in value)
    return _integer(value) or value is True or _printable(value)


def _options(value: object) -> bool:
    return isinstance(value, dict) and all(
        _printable(name) and _option_value(v) for name, v in value.items()
    )


def _numbers(value: object) -> bool:
    """A segment's tcb: names to numbers."""
    return isinstance(value, dict) and all(
        _printable(name) and _number(v) for name, v in value.items()
    )


# Each field's check, by its annotation in trace/records.py (the records are
# the one description of the file). Any other annotation is a vocabulary
# StrEnum, a State or an Event: written as text.
_CHECKS: dict[str, Callable[[object], bool]] = {
    "float": _number,
    "int": _integer,
    "bool": lambda value: type(value) is bool,
    "int | None": lambda value: value is None or _integer(value),
    "float | None": lambda value: value is None or _number(value),
    "dict[str, Any]": _options,
    "dict[str, float] | None": lambda value: value is None or _numbers(value),
}


# (name, check, required) per field: a field with a default may be absent
# (old writers' output: "kind" is schema 3's).
_FIELDS: dict[str, tuple[tuple[str, Callable[[object], bool], bool], ...]] = {
    kind: tuple(
        (
            f.name,
            _CHECKS.get(str(f.type), _printable),
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in dataclasses.fields(cls)
    )
    for kind, cls in RECORD_CLASSES.items()
}


def record_fault(record: Record) -> str:
    """What is wrong with an event record, or "" if nothing."""
    kind = record.get("type")
    if not isinstance(kind, str) or not _number(record.get("time")):
        return "an event needs a 'type' and a numeric 'time'"
    for name, check, required in _FIELDS.get(kind, ()):
        if name not in record:
            if required:
                return f"{kind} event without {name}"
        elif not check(record[name]):
            return f"{kind} event with a bad {name}"
    if kind in ("segment", "fault", "datagram") and record["direction"] not in ("in", "out"):
        return f"{kind} event with a bad direction"
    return ""


def _not_a_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


_DECODER = json.JSONDecoder(parse_constant=_not_a_constant)


def parse_line(line: bytes) -> tuple[Record | None, str]:
    """The record of a line, or None and what is wrong with it."""
    try:
        record = _DECODER.decode(line.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8"
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg}, column {exc.pos + 1})"
    except RecursionError:  # [[[[... : the decoder's own depth limit
        return None, "not JSON (nested too deeply)"
    except ValueError as exc:  # NaN, Infinity, an integer of thousands of digits
        return None, f"not JSON ({str(exc).split(':')[0]})"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    return record, ""


def parse_event(line: bytes) -> tuple[Record | None, str]:
    """The event of a line, or None and what is wrong with it."""
    record, fault = parse_line(line)
    if record is not None:
        fault = record_fault(record)
    return (None, fault) if fault else (record, "")


# ---- the vocabulary behind a record's strings ------------------------------------------


def is_lost(segment: Record) -> bool:
    """Whether the fault injector dropped this segment (see _fold_faults)."""
    return LOST_NOTE in (segment.get("note") or "")


def segment_note(segment: Record) -> SegmentNote | None:
    """Why the segment went out, the fault injector's mark left aside;
    None for a note this build does not know (a foreign or edited trace)."""
    text = (segment.get("note") or "").removesuffix(LOST_NOTE).rstrip()
    try:
        return SegmentNote(text)
    except ValueError:
        return None


@functools.cache
def _sentence_pattern(note: Note) -> re.Pattern[str]:
    """The Note's sentence with each "{field}" a named group."""
    pattern = ""
    for literal, name, _spec, _conversion in string.Formatter().parse(note.text):
        pattern += re.escape(literal)
        if name is not None:
            pattern += f"(?P<{name}>.*?)"
    return re.compile(pattern)


_NOTES_BY_KIND = {note.kind: note for note in Note}


def decision_note(decision: Record) -> tuple[Note | None, dict[str, str]]:
    """The Note behind a decision, and the values in its sentence: found by
    its kind (schema 3), else (a schema 2 trace, or a writer that gave no
    kind) by the sentence each Note's text makes. (None, {}) if neither."""
    what = str(decision.get("what", ""))
    named = _NOTES_BY_KIND.get(str(decision.get("kind") or ""))
    for note in [named] if named is not None else list(Note):
        match = _sentence_pattern(note).fullmatch(what)
        if match is not None:
            return note, match.groupdict()
    return (named, {}) if named is not None else (None, {})
