"""A connection's named deadlines: one per TimerKind, armed, cancelled and
fired with a TimerEvent each in the trace; and the demux's heap of every
connection's earliest one (`TimerHeap`).

The connection has one clock (`now`, the time of the event it is handling)
and one tracer (which the demultiplexer swaps while it handles a segment):
the timers read both from their owner when they act, so the trace shows
each action at the instant and in the order it happened.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from collections.abc import Iterator
from operator import itemgetter
from typing import Generic
from typing import Protocol
from typing import TypeVar

from ustack.trace.records import TimerEvent
from ustack.trace.records import Tracer
from ustack.trace.vocabulary import TimerAction
from ustack.trace.vocabulary import TimerKind

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

Owner = TypeVar("Owner", bound=Hashable)

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
    # The links back that TcpConnection.release() drops (mypyc: deletable).
    __deletable__ = ("_owner",)

    def __init__(self, owner: Clocked) -> None:
        self._owner = owner
        self.deadlines: dict[TimerKind, float] = {}

    def arm(self, kind: TimerKind, delay: float) -> None:
        owner = self._owner
        now = owner.now
        deadline = now + delay
        deadlines = self.deadlines
        # (a membership test, not dict.get: armed on every ACK)
        if kind in deadlines and deadlines[kind] == deadline:
            return  # set again at the same instant (e.g. the probe: ACK, then new data)
        deadlines[kind] = deadline
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


# Stale entries the heap may hold beyond one per scheduled owner before it is
# rebuilt: a little slack, so a small heap is not rebuilt on every push.
_STALE_SLACK = 64


class TimerHeap(Generic[Owner]):
    """Every connection's earliest deadline on one heap, for the demux. A
    connection rescheduled or forgotten leaves its old entry behind, skipped
    when it comes up (lazy deletion): `scheduled` holds the one that counts.

    Stale entries would otherwise live until their deadline comes up (a
    keep-alive's two hours), each holding its connection: once they outnumber
    the live ones (plus a slack), the heap is rebuilt from the live ones, in
    O(n) after at least n/2 pushes, so each operation stays O(log n) amortised
    and the heap's size proportional to the connections that have a timer."""

    __slots__ = ("_order", "entries", "scheduled")

    def __init__(self) -> None:
        self.entries: list[tuple[float, int, Owner]] = []
        self.scheduled: dict[Owner, float] = {}
        self._order = itertools.count()  # ties between equal deadlines

    def schedule(self, owner: Owner, deadline: float | None) -> None:
        if deadline is None:
            # Its timers are all cancelled: the heap entry goes stale, so no
            # wake-up comes for nothing (one per handshake: the SYN,ACK's).
            self.scheduled.pop(owner, None)
        elif self.scheduled.get(owner) != deadline:
            self.scheduled[owner] = deadline
            entries = self.entries
            heapq.heappush(entries, (deadline, next(self._order), owner))
            if len(entries) > 2 * len(self.scheduled) + _STALE_SLACK:
                self.compact()

    def forget(self, owner: Owner) -> None:
        scheduled = self.scheduled
        if (
            scheduled.pop(owner, None) is not None
            and len(self.entries) > 2 * len(scheduled) + _STALE_SLACK
        ):
            self.compact()

    def compact(self) -> None:
        """Drop the stale entries. Each live owner keeps the entry that would
        come up first (its tie-break number too): what pops, and in which
        order, is the same as before."""
        scheduled = self.scheduled
        live: dict[Owner, tuple[float, int, Owner]] = {}
        for entry in self.entries:
            deadline, order, owner = entry
            if scheduled.get(owner) == deadline:
                kept = live.get(owner)
                if kept is None or order < kept[1]:
                    live[owner] = entry
        entries = list(live.values())
        heapq.heapify(entries)
        self.entries = entries

    def next_deadline(self) -> float | None:
        entries = self.entries
        while entries:
            deadline, _, owner = entries[0]
            if self.scheduled.get(owner) == deadline:
                return deadline
            heapq.heappop(entries)  # stale: rescheduled or gone
        return None

    def pop_due(self, now: float) -> Owner | None:
        """The next owner whose deadline is `now` or earlier, now unscheduled."""
        entries = self.entries
        while entries and entries[0][0] <= now:
            deadline, _, owner = heapq.heappop(entries)
            if self.scheduled.get(owner) == deadline:
                del self.scheduled[owner]
                return owner
        return None
