"""Trace events: what the core did and why, for study and for tests.

The core hands events to a `Tracer` (any callable) when one is set; with none
set, tracing costs one attribute test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


TraceEvent = StateChange | Decision
Tracer = Callable[[TraceEvent], None]
