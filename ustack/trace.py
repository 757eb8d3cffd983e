"""Trace events: what the core did and why, for study and for tests.

The core hands events to a `Tracer` (any callable) when one is set; with none
set, tracing costs one attribute test.
"""

from __future__ import annotations

import enum
import ipaddress
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import IO, Any

from ustack.tcp.states import Event, State


@dataclass(frozen=True, slots=True)
class StateChange:
    time: float
    conn: int
    old: State
    new: State
    event: Event
    rule: str
    why: str


@dataclass(frozen=True, slots=True)
class Decision:
    """A branch the core took that is worth explaining (a drop, a challenge
    ACK, a configurable choice), with the rule behind it."""

    time: float
    conn: int
    what: str
    rule: str


@dataclass(frozen=True, slots=True)
class NewConnection:
    """A TCB was made: its id and 4-tuple, for reading the events that follow."""

    time: float
    conn: int
    local: str
    local_port: int
    remote: str
    remote_port: int
    passive: bool


TraceEvent = StateChange | Decision | NewConnection
Tracer = Callable[[TraceEvent], None]

_KINDS = {StateChange: "state", Decision: "decision", NewConnection: "connection"}
TRACE_SCHEMA_VERSION = 1


def event_dict(event: TraceEvent) -> dict[str, Any]:
    """The event as JSON-ready data, with a "type" field."""
    fields = {
        key: (value.name if isinstance(value, enum.Enum) else value)
        for key, value in asdict(event).items()
    }
    return {"type": _KINDS[type(event)], **fields}


class JsonlWriter:
    """One JSON object per line (schema version in the first line)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        stream.write(json.dumps({"type": "header", "schema": TRACE_SCHEMA_VERSION}) + "\n")
        stream.flush()

    def __call__(self, event: TraceEvent) -> None:
        self._stream.write(json.dumps(event_dict(event)) + "\n")
        self._stream.flush()


def dotted(address: int) -> str:
    return str(ipaddress.IPv4Address(address))
