"""`ustack explain`: one connection's life, from its trace, in plain English.

Numbered steps, each with the RFC section behind it, for a reader who never
saw TCP: who sent what, what it means, and which state ustack went to. A run
of plain data and ACK segments becomes one step ("ustack sends 50 segments,
52,428,800 bytes; the peer acknowledges them").
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ustack.study.load import (
    Record,
    TraceError,
    as_records,
    choose_connection,
    is_lost,
    load_trace,
    relative_numbers,
    report_error,
)
from ustack.study.records import TraceEvent
from ustack.tcp.states import TRANSITIONS

_HANDSHAKE = "RFC 9293 3.5"
_CLOSING = "RFC 9293 3.6"
_DATA = "RFC 9293 3.8"
_RESET = "RFC 9293 3.5.3"
_RTO = "RFC 6298 5.4-5.6"
# The rules of the decisions that send data again (a timeout, duplicate ACKs,
# RACK, a tail loss probe's SACK): a retransmission cites the latest of them.
_LOSS_RULES = {_RTO, "RFC 5681 3.2", "RFC 8985 6.2", "RFC 8985 7.4"}

# What a transition means for ustack, by (old state, event); (None, event)
# for every old state. "{time_wait}" becomes the 2MSL wait of this trace.
_TIME_WAIT = (
    "it keeps the connection {time_wait}, so that it can acknowledge the peer's FIN "
    "again if its last ACK is lost, and so that old duplicate segments die out"
)
_MEANING: dict[tuple[str | None, str], str] = {
    ("LISTEN", "RCV_SYN"): "a new connection, half-open until the peer acknowledges "
    "ustack's own SYN",
    ("SYN_SENT", "RCV_SYN"): "both sides sent a SYN at the same time (simultaneous open)",
    ("SYN_SENT", "RCV_SYN_ACK"): "the handshake is complete, data may flow both ways",
    ("SYN_RECEIVED", "RCV_ACK_OF_SYN"): "the three-way handshake is complete, data may flow "
    "both ways",
    ("ESTABLISHED", "RCV_FIN"): "the peer's direction is closed; ustack may still send "
    "until its own application closes",
    ("FIN_WAIT_2", "RCV_FIN"): _TIME_WAIT,
    ("FIN_WAIT_1", "RCV_FIN_ACK_OF_FIN"): _TIME_WAIT,
    ("CLOSING", "RCV_ACK_OF_FIN"): _TIME_WAIT,
    ("FIN_WAIT_1", "RCV_FIN"): "both sides closed at the same time (simultaneous close); "
    "it still waits for the acknowledgement of its own FIN",
    ("FIN_WAIT_1", "RCV_ACK_OF_FIN"): "its own direction is closed; it waits for the peer's FIN",
    ("LAST_ACK", "RCV_ACK_OF_FIN"): "both directions are closed and the connection is "
    "deleted; the peer, which closed first, is the one that waits in TIME_WAIT",
    ("SYN_SENT", "RCV_RST"): "the connection is refused: nothing listens on that port",
    ("SYN_RECEIVED", "RCV_RST"): "the half-open connection is dropped; the listener carries on",
    (None, "RCV_RST"): "the connection ends at once, with no FIN exchange; data still in "
    "flight is lost and the application sees 'connection reset'",
    (None, "RCV_DATA_ORPHANED"): "its application has closed, nobody can read that data, "
    "so ustack answers RST and deletes the connection",
    ("TIME_WAIT", "RCV_SYN_NEW_INCARNATION"): "a new SYN reuses the 4-tuple, and the old "
    "connection gives way to a new one",
}


@dataclass
class _Item:
    """An event with what it caused at the same moment: an incoming
    segment's state changes and decisions, a timer's consequences, or an
    outgoing segment with the application call that sent it."""

    event: Record
    states: list[Record] = field(default_factory=list)
    decisions: list[Record] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return str(self.event["type"])

    @property
    def time(self) -> float:
        return float(self.event["time"])

    def segment(self, direction: str | None = None) -> bool:
        return self.kind == "segment" and direction in (None, self.event["direction"])


@dataclass
class _Context:
    peer: str
    us: str
    numbers: dict[int, tuple[int, int]]
    time_wait: str  # "for 2MSL (4,000 ms)"
    rto_set: dict[int, float]  # fired retransmit timer (by id) -> when it was set
    loss_rule: str = _RTO  # why the latest retransmissions went (see _LOSS_RULES)

    def rel(self, event: Record) -> tuple[int, int]:
        return self.numbers.get(id(event), (event["rel_seq"], event["rel_ack"]))


def explain(events: Iterable[Record | TraceEvent]) -> list[str]:
    """The numbered steps of one connection's life, each with its RFC."""
    records = as_records(events)
    summary = choose_connection(records, None)
    context = _context(summary.events, summary.peer, summary.us)
    steps = _steps(_items(summary.events), context)
    return [f"{n}. {text} [{_refs(refs)}]" for n, (text, refs) in enumerate(steps, 1)]


def _context(events: Sequence[Record], peer: str, us: str) -> _Context:
    time_wait = "for 2MSL (twice the maximum segment lifetime)"
    rto_set: dict[int, float] = {}
    last_set: float | None = None
    for event in events:
        if event["type"] != "timer":
            continue
        if event["timer"] == "time_wait" and event["action"] == "set" and event.get("deadline"):
            wait = (event["deadline"] - event["time"]) * 1000
            time_wait = f"for 2MSL, twice the maximum segment lifetime ({wait:,.0f} ms)"
        elif event["timer"] == "retransmit":
            if event["action"] == "set":
                last_set = last_set if last_set is not None else event["time"]
            elif event["action"] == "fired":
                if last_set is not None:
                    rto_set[id(event)] = last_set
                last_set = None
            else:
                last_set = None
    return _Context(peer, us, relative_numbers(events), time_wait, rto_set)


def _items(events: Sequence[Record]) -> list[_Item]:
    items: list[_Item] = []
    owner: _Item | None = None  # the item that absorbs what follows at its time
    for event in events:
        kind = event["type"]
        caused = owner is not None and event["time"] == owner.time
        if kind == "segment":
            item = _Item(event)
            last = items[-1] if items else None
            # An application call (CLOSE, ABORT...) and the segment it sent.
            if (
                event["direction"] == "out"
                and last is not None
                and last.kind == "state"
                and last.time == event["time"]
                and last.event["event"].startswith("APP_")
            ):
                item.states = [last.event]
                items[-1] = item
            else:
                items.append(item)
            owner = item if event["direction"] == "in" else None
        elif kind == "state":
            cause = event["event"]
            # A segment causes the RCV_ changes after it; a timer its TIMEOUT_ one.
            if owner is not None and caused and not cause.startswith("APP_"):
                owner.states.append(event)
            elif event["event"] != "APP_LISTEN":
                items.append(_Item(event))
                owner = None
        elif kind == "decision":
            if caused and owner is not None:
                owner.decisions.append(event)
            else:
                items.append(_Item(event))
        elif kind == "timer" and event["action"] == "fired":
            owner = _Item(event)
            items.append(owner)
        elif kind == "peer_state":
            items.append(_Item(event))
            owner = None
    return items


def _plain(item: _Item) -> bool:
    """Data or a bare ACK, nothing else happening: grouped with its kind."""
    event = item.event
    return (
        item.segment()
        and event.get("conn") is not None
        and event["flags"] in (".", "P.")
        and not event.get("note")
        and not item.states
        and not item.decisions
    )


def _steps(items: list[_Item], context: _Context) -> list[tuple[str, list[str]]]:
    steps: list[tuple[str, list[str]]] = []
    peer_news: list[Record] = []  # the peer's state changes, told with its next segment
    i = 0
    while i < len(items):
        item = items[i]
        for decision in item.decisions:
            if decision["rule"] in _LOSS_RULES:
                context.loss_rule = decision["rule"]
        if item.kind == "peer_state":
            peer_news.append(item.event)
            i += 1
            if i < len(items) and items[i].segment("in"):
                continue
            for event in peer_news:
                steps.append(_peer_step(event))
            peer_news.clear()
            continue
        if _plain(item) and not peer_news:
            j = i
            while j < len(items) and _plain(items[j]):
                j += 1
            steps.append(_plain_step([it.event for it in items[i:j]], context))
            i = j
            continue
        follow = items[i + 1] if i + 1 < len(items) else None
        if item.segment("in"):
            reply = follow if follow is not None and _is_reply(item, follow) else None
            text, refs = _incoming(item, reply, context)
            if peer_news:
                states = ", then ".join(e["new"] for e in peer_news)
                text += f" (The Linux socket is now {states}.)"
                peer_news.clear()
            steps.append((text, refs))
            i += 2 if reply is not None else 1
        elif item.segment("out"):
            steps.append(_outgoing(item, context))
            i += 1
        elif item.kind == "timer":
            resent = follow if follow is not None and _is_resend(item, follow) else None
            steps.append(_timer_step(item, resent, context))
            i += 2 if resent is not None else 1
        elif item.kind == "state":
            steps.append(_state_step(item.event))
            i += 1
        else:
            steps.append((f"ustack: {item.event['what']}.", [item.event["rule"]]))
            i += 1
    for event in peer_news:
        steps.append(_peer_step(event))
    return steps


def _is_reply(item: _Item, follow: _Item) -> bool:
    """An ACK or RST ustack sent at once in answer to `item`."""
    event = follow.event
    return (
        follow.segment("out")
        and follow.time == item.time
        and not follow.states
        and not _lost(item.event)
        and not _lost(event)
        and (("R" in event["flags"]) or (event["flags"] == "." and not event["length"]))
    )


def _is_resend(timer: _Item, follow: _Item) -> bool:
    return (
        follow.segment("out")
        and follow.time == timer.time
        and "retransmission" in (follow.event.get("note") or "")
    )


def _lost(event: Record) -> bool:
    return is_lost(event)


def _never_arrives(event: Record) -> str:
    flags = event["flags"]
    kind = next(
        (name for flag, name in (("R", "RST"), ("S", "SYN"), ("F", "FIN")) if flag in flags),
        "data" if event["length"] else "ACK",
    )
    if kind == "SYN" and "." in flags:
        kind = "SYN,ACK"
    verb = "never arrive" if kind == "data" else "never arrives"
    return f" The {kind} {verb}: the fault injector dropped it on the way."


# ---- sentences ---------------------------------------------------------------------------


def _options(event: Record) -> str:
    words = []
    for name, value in (event.get("options") or {}).items():
        if name == "mss":
            words.append(f"MSS {value}")
        elif name == "wscale":
            words.append(f"window scale {value}")
        elif name == "sackOK":
            words.append("SACK")
        elif name == "TS":
            words.append("timestamps")
    return f", offering {', '.join(words)}" if words else ""


def _what(event: Record, context: _Context) -> str:
    """A segment as a noun: "its FIN (seq 6)", "1,460 bytes of data (seq 1)"."""
    flags, (seq, _) = event["flags"], context.rel(event)
    length = event["length"]
    if "S" in flags:
        return ("its SYN,ACK" if "." in flags else "its SYN") + f" (seq {seq})"
    if "F" in flags:
        data = f" with {length:,} bytes of data" if length else ""
        return f"its FIN (seq {seq}){data}"
    if length:
        return f"{length:,} bytes of data (seq {seq})"
    return f"an ACK (seq {seq})"


def _meaning(state: Record, context: _Context) -> str:
    meaning = _MEANING.get((state["old"], state["event"])) or _MEANING.get(
        (None, state["event"]), state["why"]
    )
    return meaning.format(time_wait=context.time_wait)


def _incoming(item: _Item, reply: _Item | None, context: _Context) -> tuple[str, list[str]]:
    event = item.event
    flags, (seq, ack) = event["flags"], context.rel(event)
    length = event["length"]
    data = f" with {length:,} bytes of data" if length else ""
    names = {state["event"] for state in item.states}
    if "R" in flags:
        # Whether it really resets anything depends on its number (RFC 5961).
        resets = ": it resets the connection" if names else ""
        text, refs = f"The peer sends RST (seq {seq}){resets}.", [_RESET]
    elif "S" in flags and "." not in flags:
        if event["state_before"] == "LISTEN":
            text = (
                f"The Linux peer ({context.peer}) asks to open a connection to ustack "
                f"({context.us}): SYN with its initial sequence number{_options(event)}."
            )
        else:
            text = f"The peer sends SYN (seq {seq}){_options(event)}."
        refs = [_HANDSHAKE]
    elif "S" in flags:
        text = (
            f"The peer answers SYN,ACK: its own initial sequence number, and ack {ack} "
            f"acknowledges ustack's SYN{_options(event)}."
        )
        refs = [_HANDSHAKE]
    elif "F" in flags:
        if "RCV_FIN_ACK_OF_FIN" in names:
            text = (
                f"The peer acknowledges ustack's FIN (ack {ack}) and sends its own FIN{data} "
                f"in the same segment: it has nothing more to send."
            )
        elif event["state_before"] == "FIN_WAIT_1" and "RCV_FIN" in names:
            text = (
                f"The peer sends FIN{data} before it acknowledges ustack's: the two FINs "
                f"crossed on the way."
            )
        elif event["state_before"] == "FIN_WAIT_2":
            text = f"The peer sends its FIN too{data}: it has nothing more to send."
        elif names:
            text = f"The peer sends FIN{data}: it has nothing more to send."
        else:
            text = f"The peer sends FIN (seq {seq}){data}."
        refs = [_CLOSING]
    elif "RCV_ACK_OF_SYN" in names:
        text, refs = f"The peer acknowledges ustack's SYN (ack {ack}){data}.", [_HANDSHAKE]
    elif names & {"RCV_ACK_OF_FIN"}:
        text, refs = f"The peer acknowledges ustack's FIN (ack {ack}).", [_CLOSING]
    elif length:
        text, refs = f"The peer sends {length:,} bytes of data (seq {seq}).", [_DATA]
    else:
        text, refs = f"The peer sends an ACK (seq {seq}, ack {ack}).", [_DATA]
    if _lost(event):
        return text + _never_arrives(event), refs

    answer = ""
    challenge = False
    if reply is not None:
        reply_event = reply.event
        r_seq, r_ack = context.rel(reply_event)
        challenge = "challenge" in (reply_event.get("note") or "")
        if "no connection" in (reply_event.get("note") or ""):
            answer = (
                f"has no connection for it any more: it answers RST (seq {r_seq}), as a "
                f"closed port does"
            )
            refs.append("RFC 9293 3.10.7.1")
        elif "R" in reply_event["flags"]:
            answer = f"answers RST (seq {r_seq})"
            refs.append("RFC 9293 3.5.2")
        elif not challenge:
            answer = f"acknowledges it (ack {r_ack})"
    for decision in item.decisions:
        refs.append(decision["rule"])
        if "challenge ACK" in decision["what"] and "suppressed" not in decision["what"]:
            ack_text = f" (ack {context.rel(reply.event)[1]})" if challenge and reply else ""
            text += (
                f" ustack does not trust it ({decision['what'].split(':')[0]}): a blind "
                f"attacker could have forged it. It answers a challenge ACK{ack_text} that "
                f"shows the numbers it expects; a genuine peer answers that correctly."
            )
        else:
            text += f" ustack: {decision['what']}."
    for n, state in enumerate(item.states):
        verb = f"{answer} and goes" if n == 0 and answer else "goes"
        text += f" ustack {verb} to {state['new']}: {_meaning(state, context)}."
        refs.append(state["rule"])
        if state["new"] == "TIME_WAIT":
            refs.append("RFC 9293 3.6.1")  # where the 2MSL wait is required
    if answer and not item.states:
        text += f" ustack {answer}."
    return text, refs


def _outgoing(item: _Item, context: _Context) -> tuple[str, list[str]]:
    event = item.event
    flags, note = event["flags"], event.get("note") or ""
    seq, ack = context.rel(event)
    length = event["length"]
    data = f" and {length:,} bytes of data" if length else ""
    refs: list[str] = []
    state = item.states[0] if item.states else None
    cause = state["event"] if state is not None else ""
    if cause == "APP_CONNECT":
        text = (
            f"The application connects: ustack sends SYN to the Linux peer ({context.peer}) "
            f"with its initial sequence number{_options(event)}, and goes to SYN_SENT."
        )
        refs.append(_HANDSHAKE)
    elif cause == "APP_CLOSE" and state is not None and state["new"] == "LAST_ACK":
        text = (
            f"ustack's application closes too: ustack sends its own FIN (seq {seq}){data} and "
            f"goes to LAST_ACK, waiting for the acknowledgement of this last FIN."
        )
        refs.append(_CLOSING)
    elif cause == "APP_CLOSE":
        text = (
            f"The application closes the connection: ustack sends FIN (seq {seq}){data}: it "
            f"has nothing more to send. It goes to {event['state_after']} and waits for the "
            f"peer to acknowledge the FIN."
        )
        refs.append(_CLOSING)
    elif cause == "APP_ABORT":
        text = (
            f"The application aborts the connection: ustack sends RST (seq {seq}) and deletes "
            f"the connection at once (CLOSED); the peer sees 'connection reset'."
        )
    elif cause == "APP_CLOSE_UNREAD":
        text = (
            f"The application closes while received data is still unread: ustack sends RST "
            f"(seq {seq}) instead of FIN, so the peer learns that data was lost, and deletes "
            f"the connection (CLOSED)."
        )
    elif "R" in flags:
        if "no connection" in note:
            text = (
                f"ustack has no connection for that segment (any more): it answers RST "
                f"(seq {seq}), as a closed port does."
            )
            refs.append("RFC 9293 3.10.7.1")
        else:
            why = f" ({note})" if note else ""
            text = f"ustack sends RST (seq {seq}){why}: the peer must drop the connection."
            refs.append("RFC 9293 3.5.2")
    elif "retransmission" in note:
        text = f"ustack sends {_what(event, context)} again (retransmission)."
        refs.append(context.loss_rule)
    elif "S" in flags and "." in flags:
        text = (
            f"ustack answers SYN,ACK: its own initial sequence number, and ack {ack} "
            f"acknowledges the peer's SYN{_options(event)}."
        )
        refs.append(_HANDSHAKE)
    elif "S" in flags:
        text = f"ustack sends SYN (seq {seq}){_options(event)}."
        refs.append(_HANDSHAKE)
    elif "F" in flags:
        text = f"ustack sends its FIN (seq {seq}){data}: it has nothing more to send."
        refs.append(_CLOSING)
    elif "challenge" in note:
        text = f"ustack sends a challenge ACK (ack {ack})."
        refs.append("RFC 5961 7")
    elif "probe" in note:
        text = (
            f"The peer's window is closed: ustack sends a zero-window probe (seq {seq}) to "
            f"learn when it opens again."
        )
        refs.append("RFC 9293 3.8.6.1")
    elif length:
        text = f"ustack sends {length:,} bytes of data (seq {seq})."
        refs.append(_DATA)
    else:
        text = f"ustack sends an ACK (ack {ack})."
        refs.append(_DATA)
    refs.extend(s["rule"] for s in item.states)
    if _lost(event):
        text += _never_arrives(event)
    return text, refs


def _timer_step(item: _Item, resent: _Item | None, context: _Context) -> tuple[str, list[str]]:
    event = item.event
    name = event["timer"]
    refs = [d["rule"] for d in item.decisions] + [s["rule"] for s in item.states]
    gone = next((s for s in item.states if s["new"] == "CLOSED"), None)
    if name == "retransmit":
        waited = ""
        if id(event) in context.rto_set:
            elapsed = (event["time"] - context.rto_set[id(event)]) * 1000
            waited = f" within {elapsed:,.0f} ms"
        text = f"No acknowledgement came{waited}: ustack's retransmission timer fires."
        if gone is not None:
            text += (
                " ustack has retried too often and gives up: the connection timed out "
                "(CLOSED), the application sees a timeout."
            )
        elif resent is not None:
            text += f" ustack sends {_what(resent.event, context)} again"
            rto = next(
                (m for d in item.decisions if (m := re.search(r"RTO now ([0-9.]+)s", d["what"]))),
                None,
            )
            if rto is not None:
                text += f" and doubles its timeout, to {float(rto.group(1)) * 1000:,.0f} ms"
            text += "."
            if _lost(resent.event):
                text += _never_arrives(resent.event)
        return text, refs or [_RTO]
    if name == "time_wait":
        text = (
            f"TIME_WAIT is over: ustack waited {context.time_wait.removeprefix('for ')}, "
            f"so no segment of this connection can still be in the network. ustack deletes "
            f"the connection (CLOSED)."
        )
        return text, refs or ["RFC 9293 3.6.1"]
    if name == "fin_wait_2":
        text = (
            "The peer never sent its FIN: with the application gone, ustack stops waiting "
            "in FIN_WAIT_2 and deletes the connection (CLOSED)."
        )
        return text, refs or ["Linux tcp_fin_timeout"]
    if name == "persist":
        text = "ustack's persist timer fires: the peer's window is still closed."
        if resent is not None:
            text += " ustack probes it again."
        return text, refs or ["RFC 9293 3.8.6.1"]
    if name == "reorder":
        text = (
            "RACK's reordering timer fires: segments sent before one the peer has "
            "acknowledged have had a round trip and the reordering window to arrive; "
            "those still missing are lost."
        )
        default = "RFC 8985 6.2"
    elif name == "probe":
        text = (
            "No acknowledgement came within two round trips: ustack's tail loss probe "
            "timer fires, and the probe's ACK or SACK will show what is missing."
        )
        default = "RFC 8985 7.3"
    else:
        text, default = f"ustack's {name} timer fires.", "RFC 9293 3.10.8"
    if resent is not None:
        text += f" ustack sends {_what(resent.event, context)} again."
        if _lost(resent.event):
            text += _never_arrives(resent.event)
    return text, refs or [default]


def _state_step(event: Record) -> tuple[str, list[str]]:
    cause, new = event["event"], event["new"]
    if cause == "APP_CLOSE":
        text = (
            f"The application closes the connection: ustack goes to {new}; its FIN follows "
            f"the data still queued ({event['why']})."
        )
    elif cause.startswith("APP_"):
        text = f"The application acts ({event['why']}): ustack goes to {new}."
    else:
        text = f"ustack goes from {event['old']} to {new}: {event['why']}."
    return text, [event["rule"]]


def _peer_step(event: Record) -> tuple[str, list[str]]:
    old, new = event["old"], event["new"]
    rule = next(
        (t.rule for (state, _), t in TRANSITIONS.items()
         if state.name == old and t.new_state.name == new),
        "RFC 9293 3.3.2",
    )  # fmt: skip
    return f"The Linux peer's socket goes from {old} to {new}.", [rule]


def _plain_step(events: list[Record], context: _Context) -> tuple[str, list[str]]:
    """A run of data and bare ACKs, told as who sent how much and how far
    the other side acknowledged it."""
    sides = {"out": "ustack", "in": "the peer"}
    sent: dict[str, list[Record]] = {"in": [], "out": []}
    acks: dict[str, list[Record]] = {"in": [], "out": []}
    for event in events:
        (sent if event["length"] else acks)[event["direction"]].append(event)
    talkers = [d for d in ("in", "out") if sent[d]]
    if not talkers:
        parts = []
        for direction in ("in", "out"):
            if acks[direction]:
                count = len(acks[direction])
                last = context.rel(acks[direction][-1])[1]
                noun = "an ACK" if count == 1 else f"{count} ACKs"
                parts.append(f"{sides[direction]} sends {noun} (ack {last})")
        return _capital("; ".join(parts)) + ".", [_DATA]
    clauses: list[str] = []
    for direction in talkers:
        segments = sent[direction]
        total = sum(e["length"] for e in segments)
        if len(segments) == 1:
            seq = context.rel(segments[0])[0]
            clauses.append(f"{sides[direction]} sends {total:,} bytes of data (seq {seq})")
        else:
            count = len(segments)
            clauses.append(f"{sides[direction]} sends {count} segments, {total:,} bytes")
    sentences = []
    for direction, clause in zip(talkers, clauses, strict=True):
        other = "in" if direction == "out" else "out"
        replies = [e for e in events if e["direction"] == other]
        if replies:
            end = max(context.rel(e)[0] + e["length"] for e in sent[direction])
            ack = context.rel(replies[-1])[1]
            if ack >= end:
                clause += f"; {sides[other]} acknowledges them (ack {ack})"
            else:
                clause += f"; {sides[other]} acknowledges them up to ack {ack} so far"
        sentences.append(_capital(clause) + ".")
    return " ".join(sentences), [_DATA]


def _capital(text: str) -> str:
    # "ustack" is a name and keeps its lower case, as in the ladder.
    return text if text.startswith("ustack") else text[:1].upper() + text[1:]


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
    """`ustack explain TRACE [--conn ID]`."""
    parser.add_argument("trace", type=Path, help="a JSONL trace (ustack serve --trace X.jsonl)")
    parser.add_argument(
        "--conn", type=int, help="the connection to explain (needed when there are several)"
    )


def explain_command(args: argparse.Namespace) -> int:
    try:
        events = load_trace(args.trace)
        summary = choose_connection(events, args.conn, str(args.trace))
        steps = explain(summary.events)
    except TraceError as exc:
        return report_error(exc)
    how = {True: "passive open", False: "active open", None: "open"}[summary.passive]
    print(f"Connection {summary.conn}: Linux peer {summary.peer}, ustack {summary.us} ({how})")
    print()
    for step in steps:
        print(step)
    return 0
