"""The demux's timer heap (issue 18 item 4): stale entries are dropped once
they outnumber the live ones, so its size follows the connections that have
a timer, not how often they were rescheduled; and what pops, in which order,
is unchanged by that."""

from __future__ import annotations

import heapq
import itertools
import random

from ustack.tcp.timers import _STALE_SLACK
from ustack.tcp.timers import TimerHeap


class Owner:
    """A connection, as the heap sees it: hashable by identity."""

    def __init__(self, name: int) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


class LazyReference:
    """The heap as it was before compaction: lazy deletion only."""

    def __init__(self) -> None:
        self.entries: list[tuple[float, int, Owner]] = []
        self.scheduled: dict[Owner, float] = {}
        self.order = itertools.count()

    def schedule(self, owner: Owner, deadline: float | None) -> None:
        if deadline is None:
            self.scheduled.pop(owner, None)
        elif self.scheduled.get(owner) != deadline:
            self.scheduled[owner] = deadline
            heapq.heappush(self.entries, (deadline, next(self.order), owner))

    def forget(self, owner: Owner) -> None:
        self.scheduled.pop(owner, None)

    def pop_due(self, now: float) -> Owner | None:
        while self.entries and self.entries[0][0] <= now:
            deadline, _, owner = heapq.heappop(self.entries)
            if self.scheduled.get(owner) == deadline:
                del self.scheduled[owner]
                return owner
        return None


def test_rescheduling_one_owner_over_and_over_keeps_the_heap_small() -> None:
    heap: TimerHeap[Owner] = TimerHeap()
    owners = [Owner(i) for i in range(10)]
    for step in range(100_000):
        heap.schedule(owners[step % 10], 1000.0 + step)  # every ACK re-arms the RTO
    assert len(heap.scheduled) == 10
    assert len(heap.entries) <= 2 * 10 + _STALE_SLACK + 1


def test_forgotten_owners_do_not_stay_on_the_heap_until_their_deadline() -> None:
    """Connections forgotten with a far deadline (a keep-alive's two hours)
    would otherwise keep their entry, and so themselves, that long."""
    heap: TimerHeap[Owner] = TimerHeap()
    for i in range(50_000):
        owner = Owner(i)
        heap.schedule(owner, 7200.0 + i)
        heap.forget(owner)
    assert heap.scheduled == {}
    assert len(heap.entries) <= _STALE_SLACK + 1


def test_size_follows_the_live_owners_at_every_scale() -> None:
    """The heap's size per live owner is bounded whatever their number: each
    operation costs O(log n) amortised, n the connections with a timer."""
    for live in (1_000, 10_000, 50_000):
        heap: TimerHeap[Owner] = TimerHeap()
        owners = [Owner(i) for i in range(live)]
        for round_ in range(5):
            for i, owner in enumerate(owners):
                heap.schedule(owner, round_ * 100.0 + i)
        assert len(heap.scheduled) == live
        assert len(heap.entries) <= 2 * live + _STALE_SLACK + 1


def test_compaction_pops_the_same_owners_at_the_same_times() -> None:
    """Against lazy deletion alone: the same owners come due at each step,
    (Between equal deadlines the order may differ
    where an owner was given again a deadline it had had before: the old heap
    then revived its earlier, stale entry, which a compaction may have dropped.)"""
    rng = random.Random(18)
    heap: TimerHeap[Owner] = TimerHeap()
    reference = LazyReference()
    owners = [Owner(i) for i in range(40)]
    compactions = 0
    now = 0.0
    popped = 0
    for _ in range(20_000):
        owner = rng.choice(owners)
        choice = rng.random()
        if choice < 0.7:
            # Few distinct deadlines: many ties; far ones (a keep-alive) go
            # stale before they come up.
            deadline = now + rng.choice((0.5, 1.0, 1.5, 100.0, 200.0))
            before = len(heap.entries)
            heap.schedule(owner, deadline)
            reference.schedule(owner, deadline)
            compactions += len(heap.entries) < before
        elif choice < 0.8:
            heap.schedule(owner, None)
            reference.schedule(owner, None)
        elif choice < 0.99:
            heap.forget(owner)
            reference.forget(owner)
        else:
            now += 0.5
            got: list[int] = []
            while (due := heap.pop_due(now)) is not None:
                got.append(due.name)
            want: list[int] = []
            while (due := reference.pop_due(now)) is not None:
                want.append(due.name)
            assert sorted(got) == sorted(want)
            popped += len(got)
        assert heap.scheduled == reference.scheduled
    assert compactions > 10
    assert popped > 500


def test_compaction_keeps_the_order_of_equal_deadlines() -> None:
    """Many owners on one deadline (a virtual clock's ties), and compactions
    while they wait: they come due in the order they were scheduled."""
    heap: TimerHeap[Owner] = TimerHeap()
    owners = [Owner(i) for i in range(300)]
    for owner in owners:
        heap.schedule(owner, 5.0)
    for step in range(2_000):  # others churn: compactions happen
        churn = Owner(1000 + step)
        heap.schedule(churn, 9.0)
        heap.forget(churn)
    for owner in owners[::2]:  # half move away and back (the old entry counts again)
        heap.schedule(owner, 6.0)
        heap.schedule(owner, 5.0)
    assert len(heap.entries) < 2 * len(owners) + _STALE_SLACK + 1  # compacted meanwhile
    order = []
    while (due := heap.pop_due(5.0)) is not None:
        order.append(due.name)
    assert order == [o.name for o in owners]
