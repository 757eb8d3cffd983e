"""A connection's named deadlines: one per TimerKind, armed, cancelled and
fired with a TimerEvent each in the trace.

The connection has one clock (`now`, the time of the event it is handling)
and one tracer (which the demultiplexer swaps while it handles a segment):
the timers read both from their owner when they act, so the trace shows
each action at the instant and in the order it happened.
"""

from __future__ import annotations

from collections.abc import Iterator
from operator import itemgetter
from typing import Protocol

from ustack.trace.records import TimerEvent, Tracer
from ustack.trace.vocabulary import TimerAction, TimerKind

# Module-level names for the members the per-segment path uses: a global is
# cheaper to look up than an Enum class attribute (an EnumType lookup).
RETRANSMIT = TimerKind.RETRANSMIT
PROBE = TimerKind.PROBE
REORDER = TimerKind.REORDER
PERSIST = TimerKind.PERSIST
DELAYED_ACK = TimerKind.DELAYED_ACK
KEEPALIVE = TimerKind.KEEPALIVE
TIME_WAIT = TimerKind.TIME_WAIT
FIN_WAIT_2 = TimerKind.FIN_WAIT_2

_SET, _FIRED, _CANCELLED = TimerAction.SET, TimerAction.FIRED, TimerAction.CANCELLED
_BY_DEADLINE = itemgetter(1)


class Clocked(Protocol):
    """What the timers need of their owner."""

    conn_id: int
    now: float
    trace: Tracer | None


class Timers:
    """TimerKind -> deadline. `deadlines` is read directly on the hot path
    (`RETRANSMIT in timers.deadlines`); changes go through arm and cancel."""

    __slots__ = ("_owner", "deadlines")

    def __init__(self, owner: Clocked) -> None:
        self._owner = owner
        self.deadlines: dict[TimerKind, float] = {}

    def arm(self, kind: TimerKind, delay: float) -> None:
        owner = self._owner
        now = owner.now
        deadline = now + delay
        if self.deadlines.get(kind) == deadline:
            return  # set again at the same instant (e.g. the probe: ACK, then new data)
        self.deadlines[kind] = deadline
        if owner.trace is not None:
            owner.trace(TimerEvent(now, owner.conn_id, kind, _SET, deadline))

    def cancel(self, kind: TimerKind) -> None:
        if self.deadlines.pop(kind, None) is not None:
            owner = self._owner
            if owner.trace is not None:
                owner.trace(TimerEvent(owner.now, owner.conn_id, kind, _CANCELLED))

    def cancel_all(self) -> None:
        for kind in list(self.deadlines):
            self.cancel(kind)

    def earliest(self) -> float | None:
        deadlines = self.deadlines
        return min(deadlines.values()) if deadlines else None

    def expired(self, now: float) -> Iterator[TimerKind]:
        """The timers due by `now`, earliest first, each removed and traced as
        fired just before it is yielded. Lazily: what the caller does for one
        (re-arm or cancel another) counts for those after it."""
        deadlines = self.deadlines
        for kind, deadline in sorted(deadlines.items(), key=_BY_DEADLINE):
            if deadline > now or deadlines.get(kind) != deadline:
                continue
            del deadlines[kind]
            owner = self._owner
            if owner.trace is not None:
                owner.trace(TimerEvent(now, owner.conn_id, kind, _FIRED))
            yield kind
