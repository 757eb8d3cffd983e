"""The trace's JSON Schema (draft 2020-12), made from the records themselves.

`docs/trace-schema.json` is this module's output (`python -m
ustack.study.schema > docs/trace-schema.json`); a unit test checks that the
file is what the code makes, and validates real traces against it. Each line
of a JSONL trace is one instance: the first the `header`, every other line
one event. The fields, their types and which may be absent come from the
dataclasses of `ustack/trace/records.py` (as the readers' checks in
decode.py do); the vocabulary's enums give the strings their allowed values.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

from ustack.study.decode import RECORD_CLASSES
from ustack.tcp.states import Event
from ustack.tcp.states import State
from ustack.trace.records import READABLE_SCHEMAS
from ustack.trace.records import TCB_FIELDS
from ustack.trace.records import TRACE_SCHEMA_VERSION
from ustack.trace.vocabulary import FaultAction
from ustack.trace.vocabulary import Layer
from ustack.trace.vocabulary import Note
from ustack.trace.vocabulary import SegmentNote
from ustack.trace.vocabulary import TimerAction
from ustack.trace.vocabulary import TimerKind

SCHEMA_ID = f"urn:ustack:trace-schema:{TRACE_SCHEMA_VERSION}"

_INTEGER = {"type": "integer"}
_NUMBER = {"type": "number"}
_STATES = {"enum": [state.name for state in State]}
_PAIR = {"type": "array", "items": _INTEGER, "minItems": 2, "maxItems": 2}
_OPTIONS = {
    "type": "object",
    "description": "the TCP options, as tcpdump names them",
    "properties": {
        "mss": _INTEGER,
        "wscale": _INTEGER,
        "sackOK": {"const": True},
        "sack": {"type": "array", "items": _PAIR, "description": "SACK blocks [left, right]"},
        "TS": {**_PAIR, "description": "[TSval, TSecr]"},
    },
    "patternProperties": {"^opt-[0-9]+$": {"type": "string", "description": "data in hex"}},
    "additionalProperties": False,
}
_TCB = {
    "description": "schema 4: the connection's state once the segment was handled (in) "
    "or queued (out); null for a segment of no connection",
    "oneOf": [
        {"type": "null"},
        {
            "type": "object",
            "properties": {name: _NUMBER for name in TCB_FIELDS},
            "additionalProperties": False,
        },
    ],
}

# Each annotation of records.py, as a JSON Schema type.
_BY_ANNOTATION: dict[str, dict[str, Any]] = {
    "float": _NUMBER,
    "int": _INTEGER,
    "bool": {"type": "boolean"},
    "str": {"type": "string"},
    "int | None": {"type": ["integer", "null"]},
    "float | None": {"type": ["number", "null"]},
    "dict[str, Any]": _OPTIONS,
    "dict[str, float] | None": _TCB,
    "State": _STATES,
    "Event": {"enum": [event.name for event in Event]},
    "TimerKind": {"enum": list(TimerKind)},
    "TimerAction": {"enum": list(TimerAction)},
    "FaultAction": {"enum": list(FaultAction)},
    "Layer": {"enum": list(Layer)},
    "SegmentNote": {"enum": list(SegmentNote)},
    # A DropReason, or the wire parser's own code (MalformedPacket.reason).
    "DropReason | str": {"type": "string"},
}

# Fields whose annotation is a plain str but whose values are fewer.
_BY_FIELD: dict[tuple[str, str], dict[str, Any]] = {
    ("segment", "direction"): {"enum": ["in", "out"]},
    ("fault", "direction"): {"enum": ["in", "out"]},
    ("datagram", "direction"): {"enum": ["in", "out"]},
    ("segment", "state_before"): _STATES,
    ("segment", "state_after"): _STATES,
    ("segment", "ecn"): {"enum": ["", "ECT(0)", "ECT(1)", "CE"]},
    ("decision", "kind"): {"enum": ["", *(note.kind for note in Note)]},
}

_DESCRIPTIONS = {
    "connection": "a TCB was made",
    "segment": "a TCP segment in or out",
    "state": "a connection (or a listener, conn 0) changed state",
    "timer": "a connection's timer was set, fired or cancelled",
    "decision": "a branch the core took that is worth explaining, with its rule",
    "drop": "a packet the stack did not accept",
    "peer_state": "the Linux peer's socket changed state (--peer-states)",
    "fault": "the fault injector acted on a packet",
    "datagram": "a UDP datagram in (to an endpoint) or out",
}

# Events of a connection carry its 4-tuple as text, added by the writer.
_TUPLE = {"type": "string", "description": "'local:port remote:port', added by the writer"}


def _event_schema(kind: str, cls: type) -> dict[str, Any]:
    properties: dict[str, Any] = {"type": {"const": kind}}
    required = ["type"]
    for field in dataclasses.fields(cls):
        schema = _BY_FIELD.get((kind, field.name)) or _BY_ANNOTATION[str(field.type)]
        properties[field.name] = schema
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            required.append(field.name)
    if "conn" in properties:
        properties["tuple"] = _TUPLE
    return {
        "type": "object",
        "description": _DESCRIPTIONS[kind],
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def trace_schema() -> dict[str, Any]:
    """The schema of one line of a trace: the header or an event."""
    definitions: dict[str, Any] = {
        "header": {
            "type": "object",
            "description": "the first line of a trace",
            "properties": {"type": {"const": "header"}, "schema": {"enum": [*READABLE_SCHEMAS]}},
            "required": ["type", "schema"],
            "additionalProperties": False,
        }
    }
    for kind, cls in RECORD_CLASSES.items():
        definitions[kind] = _event_schema(kind, cls)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"ustack trace, schema {TRACE_SCHEMA_VERSION}",
        "description": "One line of a ustack JSONL trace (docs/trace-format.md): the first "
        "line is a header, each other line one event. Made from ustack/trace/records.py by "
        "ustack/study/schema.py; it also accepts the files of schemas "
        f"{', '.join(map(str, READABLE_SCHEMAS[:-1]))} (fields added since are optional).",
        "oneOf": [{"$ref": f"#/$defs/{kind}"} for kind in definitions],
        "$defs": definitions,
    }


def schema_text() -> str:
    """docs/trace-schema.json's text."""
    return json.dumps(trace_schema(), indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(schema_text())
