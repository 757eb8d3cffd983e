"""`ustack explain`: one connection's life, from its trace, in plain English.

Numbered steps, each with the RFC section behind it, for a reader who never
saw TCP: who sent what, what it means, and which state ustack went to. A run
of plain data and ACK segments becomes one step ("ustack sends 50 segments,
52,428,800 bytes; the peer acknowledges them").
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from collections.abc import Sequence

from ustack.study.decode import is_lost
from ustack.study.decode import segment_note
from ustack.study.load import Record
from ustack.study.load import TraceError
from ustack.study.load import add_trace_arguments
from ustack.study.load import as_records
from ustack.study.load import choose_connection
from ustack.study.load import read_connection
from ustack.study.load import relative_numbers
from ustack.study.load import report_error
from ustack.study.sentences import Context
from ustack.study.sentences import Item
from ustack.study.sentences import incoming_step
from ustack.study.sentences import is_app_call
from ustack.study.sentences import outgoing_step
from ustack.study.sentences import peer_step
from ustack.study.sentences import plain_step
from ustack.study.sentences import state_step
from ustack.study.sentences import timer_step
from ustack.tcp.states import Event
from ustack.trace.records import TraceEvent
from ustack.trace.vocabulary import LOSS_RULES
from ustack.trace.vocabulary import SegmentNote
from ustack.trace.vocabulary import TimerAction
from ustack.trace.vocabulary import TimerKind


def explain(events: Iterable[Record | TraceEvent]) -> list[str]:
    """The numbered steps of one connection's life, each with its RFC."""
    records = as_records(events)
    summary = choose_connection(records, None)
    context = _context(summary.events, summary.peer, summary.us)
    steps = _steps(_items(summary.events), context)
    return [f"{n}. {text} [{_refs(refs)}]" for n, (text, refs, _) in enumerate(steps, 1)]


def told_segments(
    events: Iterable[Record | TraceEvent], conn: int | None = None
) -> list[tuple[str, list[Record]]]:
    """Each step of `explain` of connection `conn` (without its number and
    RFCs) with the segments it tells of: what a test checks the words against."""
    records = as_records(events)
    summary = choose_connection(records, conn)
    context = _context(summary.events, summary.peer, summary.us)
    return [(text, told) for text, _, told in _steps(_items(summary.events), context)]


def event_sentences(events: Sequence[Record], peer: str, us: str) -> dict[int, tuple[str, str]]:
    """The explain sentence and its RFC references for each event of one
    connection (by id()), one event at a time (no run of plain segments
    told as one step): what the report page shows for a chosen event. A
    state change or decision caused by a segment gets that segment's."""
    context = _context(events, peer, us)
    told: dict[int, tuple[str, str]] = {}
    for item in _items(events):
        for decision in item.decisions:
            if decision["rule"] in LOSS_RULES:
                context.loss_rule = decision["rule"]
        if item.segment("in"):
            text, refs = incoming_step(item, None, context)
        elif item.segment("out"):
            text, refs = outgoing_step(item, context)
        elif item.kind == "timer":
            text, refs = timer_step(item, None, context)
        elif item.kind == "state":
            text, refs = state_step(item.event)
        elif item.kind == "peer_state":
            text, refs = peer_step(item.event)
        else:
            text, refs = f"ustack: {item.event['what']}.", [item.event["rule"]]
        for event in (item.event, *item.states, *item.decisions):
            told[id(event)] = (text, _refs(refs))
    return told


def _context(events: Sequence[Record], peer: str, us: str) -> Context:
    time_wait = "for 2MSL (twice the maximum segment lifetime)"
    rto_set: dict[int, float] = {}
    last_set: float | None = None
    for event in events:
        if event["type"] != "timer":
            continue
        timer, action = event["timer"], event["action"]
        if timer == TimerKind.TIME_WAIT and action == TimerAction.SET and event.get("deadline"):
            wait = (event["deadline"] - event["time"]) * 1000
            time_wait = f"for 2MSL, twice the maximum segment lifetime ({wait:,.0f} ms)"
        elif timer == TimerKind.RETRANSMIT:
            if action == TimerAction.SET:
                last_set = last_set if last_set is not None else event["time"]
            elif action == TimerAction.FIRED:
                if last_set is not None:
                    rto_set[id(event)] = last_set
                last_set = None
            else:
                last_set = None
    return Context(peer, us, relative_numbers(events), time_wait, rto_set)


def _items(events: Sequence[Record]) -> list[Item]:
    items: list[Item] = []
    owner: Item | None = None  # the item that absorbs what follows at its time
    for event in events:
        kind = event["type"]
        caused = owner is not None and event["time"] == owner.time
        if kind == "segment":
            item = Item(event)
            last = items[-1] if items else None
            # An application call (CLOSE, ABORT...) and the segment it sent.
            if (
                event["direction"] == "out"
                and last is not None
                and last.kind == "state"
                and last.time == event["time"]
                and is_app_call(last.event)
            ):
                item.states = [last.event]
                items[-1] = item
            else:
                items.append(item)
            owner = item if event["direction"] == "in" else None
        elif kind == "state":
            # A segment causes the RCV_ changes after it; a timer its TIMEOUT_ one.
            if owner is not None and caused and not is_app_call(event):
                owner.states.append(event)
            elif event["event"] != Event.APP_LISTEN.name:
                items.append(Item(event))
                owner = None
        elif kind == "decision":
            if caused and owner is not None:
                owner.decisions.append(event)
            else:
                items.append(Item(event))
        elif kind == "timer" and event["action"] == TimerAction.FIRED:
            owner = Item(event)
            items.append(owner)
        elif kind == "peer_state":
            items.append(Item(event))
            owner = None
    return items


def _plain(item: Item) -> bool:
    """Data or a bare ACK, nothing else happening: grouped with its kind."""
    event = item.event
    return (
        item.segment()
        and event.get("conn") is not None
        and event["flags"] in (".", "P.")
        and not event.get("note")
        and not item.states
        and not item.decisions
        and not (event["direction"] == "in" and event["window"] == 0)  # told on its own
    )


Step = tuple[str, list[str], list[Record]]  # text, RFC references, the segments told


def _told(*items: Item | None) -> list[Record]:
    return [item.event for item in items if item is not None and item.segment()]


def _steps(items: list[Item], context: Context) -> list[Step]:
    steps: list[Step] = []
    peer_news: list[Record] = []  # the peer's state changes, told with its next segment
    i = 0
    while i < len(items):
        item = items[i]
        for decision in item.decisions:
            if decision["rule"] in LOSS_RULES:
                context.loss_rule = decision["rule"]
        if item.kind == "peer_state":
            peer_news.append(item.event)
            i += 1
            if i < len(items) and items[i].segment("in"):
                continue
            for event in peer_news:
                steps.append((*peer_step(event), []))
            peer_news.clear()
            continue
        if _plain(item) and not peer_news:
            j = i
            while j < len(items) and _plain(items[j]):
                j += 1
            steps.append(
                (*plain_step([it.event for it in items[i:j]], context), _told(*items[i:j]))
            )
            i = j
            continue
        follow = items[i + 1] if i + 1 < len(items) else None
        if item.segment("in"):
            reply = follow if follow is not None and _is_reply(item, follow) else None
            text, refs = incoming_step(item, reply, context)
            if peer_news:
                states = ", then ".join(e["new"] for e in peer_news)
                text += f" (The Linux socket is now {states}.)"
                peer_news.clear()
            steps.append((text, refs, _told(item, reply)))
            i += 2 if reply is not None else 1
        elif item.segment("out"):
            steps.append((*outgoing_step(item, context), _told(item)))
            i += 1
        elif item.kind == "timer":
            resent = follow if follow is not None and _is_resend(item, follow) else None
            steps.append((*timer_step(item, resent, context), _told(resent)))
            i += 2 if resent is not None else 1
        elif item.kind == "state":
            steps.append((*state_step(item.event), []))
            i += 1
        else:
            steps.append((f"ustack: {item.event['what']}.", [item.event["rule"]], []))
            i += 1
    for event in peer_news:
        steps.append((*peer_step(event), []))
    return steps


def _is_reply(item: Item, follow: Item) -> bool:
    """An ACK or RST ustack sent at once in answer to `item`."""
    event = follow.event
    return (
        follow.segment("out")
        and follow.time == item.time
        and not follow.states
        and not is_lost(item.event)
        and not is_lost(event)
        and (("R" in event["flags"]) or (event["flags"] == "." and not event["length"]))
    )


def _is_resend(timer: Item, follow: Item) -> bool:
    return (
        follow.segment("out")
        and follow.time == timer.time
        and segment_note(follow.event) is SegmentNote.RETRANSMISSION
    )


def _refs(refs: Sequence[str]) -> str:
    """'RFC 9293 3.5', 'RFC 9293 3.10.7.2' -> 'RFC 9293 3.5, 3.10.7.2'."""
    grouped: dict[str, list[str]] = {}
    for ref in refs:
        for part in ref.split(" / "):
            match = re.fullmatch(r"(RFC \d+) (.+)", part.strip())
            doc, section = (match.group(1), match.group(2)) if match else (part.strip(), "")
            sections = grouped.setdefault(doc, [])
            if section and section not in sections:
                sections.append(section)
    return "; ".join(f"{doc} {', '.join(s)}".strip() for doc, s in grouped.items())


# ---- command line ----------------------------------------------------------------------


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    """`ustack explain TRACE [--conn ID] [--max-line-bytes N]`."""
    add_trace_arguments(parser)
    parser.add_argument(
        "--conn", type=int, help="the connection to explain (needed when there are several)"
    )


def explain_command(args: argparse.Namespace) -> int:
    try:
        summary = read_connection(args.trace, args.conn, args.max_line_bytes)
        steps = explain(summary.events)
    except TraceError as exc:
        return report_error(exc)
    how = {True: "passive open", False: "active open", None: "open"}[summary.passive]
    print(f"Connection {summary.conn}: Linux peer {summary.peer}, ustack {summary.us} ({how})")
    print()
    for step in steps:
        print(step)
    return 0
