"""The sentences of `ustack explain`: one connection's steps told in plain
English, each with the RFC sections behind it. `ustack.study.explain` groups
a trace's events into steps (an `Item` each); this module words them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field

from ustack.study.decode import decision_note
from ustack.study.decode import is_lost
from ustack.study.decode import segment_note
from ustack.study.load import Record
from ustack.tcp.states import TRANSITIONS
from ustack.tcp.states import Event
from ustack.tcp.states import State
from ustack.trace.vocabulary import Note
from ustack.trace.vocabulary import Rule
from ustack.trace.vocabulary import SegmentNote
from ustack.trace.vocabulary import TimerKind

# The sections a step cites besides the rules the trace names.
_HANDSHAKE = "RFC 9293 3.5"
_CLOSING = "RFC 9293 3.6"
_DATA = "RFC 9293 3.8"
_RESET = "RFC 9293 3.5.3"
_RST_SENT = "RFC 9293 3.5.2"
_TIME_WAIT_RULE = "RFC 9293 3.6.1"  # where the 2MSL wait is required
_ZERO_WINDOW_PROBE = "RFC 9293 3.8.6.1"
_TIMER_FIRES = "RFC 9293 3.10.8"  # timeouts, in general
_KEEPALIVE = "RFC 1122 4.2.3.6"

# What a transition means for ustack, by (old state, event); (None, event)
# for every old state. "{time_wait}" becomes the 2MSL wait of this trace.
_TIME_WAIT = (
    "it keeps the connection {time_wait}, so that it can acknowledge the peer's FIN "
    "again if its last ACK is lost, and so that old duplicate segments die out"
)
_MEANING: dict[tuple[State | None, Event | None], str] = {
    (State.LISTEN, Event.RCV_SYN): "a new connection, half-open until the peer acknowledges "
    "ustack's own SYN",
    (State.SYN_SENT, Event.RCV_SYN): "both sides sent a SYN at the same time (simultaneous open)",
    (State.SYN_SENT, Event.RCV_SYN_ACK): "the handshake is complete, data may flow both ways",
    (
        State.SYN_RECEIVED,
        Event.RCV_ACK_OF_SYN,
    ): "the three-way handshake is complete, data may flow both ways",
    (State.ESTABLISHED, Event.RCV_FIN): "the peer's direction is closed; ustack may still send "
    "until its own application closes",
    (State.FIN_WAIT_2, Event.RCV_FIN): _TIME_WAIT,
    (State.FIN_WAIT_1, Event.RCV_FIN_ACK_OF_FIN): _TIME_WAIT,
    (State.CLOSING, Event.RCV_ACK_OF_FIN): _TIME_WAIT,
    (State.FIN_WAIT_1, Event.RCV_FIN): "both sides closed at the same time (simultaneous close); "
    "it still waits for the acknowledgement of its own FIN",
    (
        State.FIN_WAIT_1,
        Event.RCV_ACK_OF_FIN,
    ): "its own direction is closed; it waits for the peer's FIN",
    (State.LAST_ACK, Event.RCV_ACK_OF_FIN): "both directions are closed and the connection is "
    "deleted; the peer, which closed first, is the one that waits in TIME_WAIT",
    (State.SYN_SENT, Event.RCV_RST): "the connection is refused: nothing listens on that port",
    (
        State.SYN_RECEIVED,
        Event.RCV_RST,
    ): "the half-open connection is dropped; the listener carries on",
    (None, Event.RCV_RST): "the connection ends at once, with no FIN exchange; data still in "
    "flight is lost and the application sees 'connection reset'",
    (None, Event.RCV_DATA_ORPHANED): "its application has closed, nobody can read that data, "
    "so ustack answers RST and deletes the connection",
    (State.TIME_WAIT, Event.RCV_SYN_NEW_INCARNATION): "a new SYN reuses the 4-tuple, and the old "
    "connection gives way to a new one",
}


@dataclass
class Item:
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
class Context:
    peer: str
    us: str
    numbers: dict[int, tuple[int, int]]
    time_wait: str  # "for 2MSL (4,000 ms)"
    rto_set: dict[int, float]  # fired retransmit timer (by id) -> when it was set
    loss_rule: str = Rule.RFC6298_TIMEOUT  # why the latest retransmissions went (LOSS_RULES)

    def rel(self, event: Record) -> tuple[int, int]:
        return self.numbers.get(id(event), (event["rel_seq"], event["rel_ack"]))


def _event(state_change: Record) -> Event | None:
    """The Event of a state change record (by its name), None if unknown."""
    return Event.__members__.get(state_change["event"])


def _state(name: str) -> State | None:
    return State.__members__.get(name)


# The application's calls (the other Events come from segments and timers).
APP_CALLS = frozenset(event for event in Event if event.name.startswith("APP_"))


def is_app_call(state_change: Record) -> bool:
    return _event(state_change) in APP_CALLS


def _also_carries(flags: str, text: str) -> str:
    """The control flags a sentence that names one of them leaves out: a
    forged or broken segment may carry SYN, FIN and RST together."""
    named = {word for word in ("SYN", "FIN", "RST") if f" {word}" in text}
    others = [w for f, w in (("S", "SYN"), ("F", "FIN"), ("R", "RST")) if f in flags]
    left = [word for word in others if word not in named]
    if not left or not named:
        return ""
    return f" (It also carries {' and '.join(left)}: an unusual combination.)"


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


def _what(event: Record, context: Context) -> str:
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


def _meaning(state: Record, context: Context) -> str:
    event = _event(state)
    meaning = _MEANING.get((_state(state["old"]), event)) or _MEANING.get((None, event))
    if meaning is None:
        return str(state["why"])  # (the trace's own words: not a template)
    return meaning.format(time_wait=context.time_wait)


def incoming_step(item: Item, reply: Item | None, context: Context) -> tuple[str, list[str]]:
    event = item.event
    flags, (seq, ack) = event["flags"], context.rel(event)
    length = event["length"]
    data = f" with {length:,} bytes of data" if length else ""
    names = {_event(state) for state in item.states}
    if "R" in flags:
        # Whether it really resets anything depends on its number (RFC 5961).
        resets = ": it resets the connection" if names else ""
        text, refs = f"The peer sends RST (seq {seq}){resets}.", [_RESET]
    elif "S" in flags and "." not in flags:
        if _state(event["state_before"]) is State.LISTEN:
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
        if Event.RCV_FIN_ACK_OF_FIN in names:
            text = (
                f"The peer acknowledges ustack's FIN (ack {ack}) and sends its own FIN{data} "
                f"in the same segment: it has nothing more to send."
            )
        elif _state(event["state_before"]) is State.FIN_WAIT_1 and Event.RCV_FIN in names:
            text = (
                f"The peer sends FIN{data} before it acknowledges ustack's: the two FINs "
                f"crossed on the way."
            )
        elif _state(event["state_before"]) is State.FIN_WAIT_2:
            text = f"The peer sends its FIN too{data}: it has nothing more to send."
        elif names:
            text = f"The peer sends FIN{data}: it has nothing more to send."
        else:
            text = f"The peer sends FIN (seq {seq}){data}."
        refs = [_CLOSING]
    elif Event.RCV_ACK_OF_SYN in names:
        text, refs = f"The peer acknowledges ustack's SYN (ack {ack}){data}.", [_HANDSHAKE]
    elif Event.RCV_ACK_OF_FIN in names:
        text, refs = f"The peer acknowledges ustack's FIN (ack {ack}).", [_CLOSING]
    elif length:
        text, refs = f"The peer sends {length:,} bytes of data (seq {seq}).", [_DATA]
    else:
        text, refs = f"The peer sends an ACK (seq {seq}, ack {ack}).", [_DATA]
    text += _also_carries(flags, text)
    if event["window"] == 0 and "R" not in flags:
        # A zero window is the same scaled or not (RFC 7323 2.3).
        text += " Its window is 0: ustack may send no new data until the peer opens it."
        refs.append(_ZERO_WINDOW_PROBE)
    if is_lost(event):
        return text + _never_arrives(event), refs

    answer = ""
    challenge = False
    if reply is not None:
        reply_event = reply.event
        r_seq, r_ack = context.rel(reply_event)
        reply_note = segment_note(reply_event)
        challenge = reply_note is SegmentNote.CHALLENGE_ACK
        if reply_note is SegmentNote.RST_NO_CONNECTION:
            answer = (
                f"has no connection for it any more: it answers RST (seq {r_seq}), as a "
                f"closed port does"
            )
            refs.append(Rule.RFC9293_CLOSED)
        elif "R" in reply_event["flags"]:
            answer = f"answers RST (seq {r_seq})"
            refs.append(_RST_SENT)
        elif not challenge:
            answer = f"acknowledges it (ack {r_ack})"
    for decision in item.decisions:
        refs.append(decision["rule"])
        note, values = decision_note(decision)
        if note is Note.CHALLENGE_ACK and "what" in values:
            ack_text = f" (ack {context.rel(reply.event)[1]})" if challenge and reply else ""
            why = values["what"].split(":")[0]  # the Challenge, without its ": dropped"
            text += (
                f" ustack does not trust it ({why}): a blind "
                f"attacker could have forged it. It answers a challenge ACK{ack_text} that "
                f"shows the numbers it expects; a genuine peer answers that correctly."
            )
        else:
            text += f" ustack: {decision['what']}."
    for n, state in enumerate(item.states):
        verb = f"{answer} and goes" if n == 0 and answer else "goes"
        text += f" ustack {verb} to {state['new']}: {_meaning(state, context)}."
        refs.append(state["rule"])
        if _state(state["new"]) is State.TIME_WAIT:
            refs.append(_TIME_WAIT_RULE)
    if answer and not item.states:
        text += f" ustack {answer}."
    return text, refs


def outgoing_step(item: Item, context: Context) -> tuple[str, list[str]]:
    event = item.event
    flags, note = event["flags"], event.get("note") or ""
    seq, ack = context.rel(event)
    length = event["length"]
    data = f" and {length:,} bytes of data" if length else ""
    refs: list[str] = []
    state = item.states[0] if item.states else None
    cause = _event(state) if state is not None else None
    kind = segment_note(event)
    prefix = ""
    if cause is not None and not _carries_what_it_caused(cause, flags):
        # The call's own segment comes later (a FIN after the data still
        # queued, RFC 9293 3.10.4): tell the call, then this segment as it is.
        prefix = state_step(item.states[0])[0] + " "
        cause = None
    if cause is Event.APP_CONNECT:
        text = (
            f"The application connects: ustack sends SYN to the Linux peer ({context.peer}) "
            f"with its initial sequence number{_options(event)}, and goes to SYN_SENT."
        )
        refs.append(_HANDSHAKE)
    elif cause is Event.APP_CLOSE and state is not None and _state(state["new"]) is State.LAST_ACK:
        text = (
            f"ustack's application closes too: ustack sends its own FIN (seq {seq}){data} and "
            f"goes to LAST_ACK, waiting for the acknowledgement of this last FIN."
        )
        refs.append(_CLOSING)
    elif cause is Event.APP_CLOSE:
        text = (
            f"The application closes the connection: ustack sends FIN (seq {seq}){data}: it "
            f"has nothing more to send. It goes to {event['state_after']} and waits for the "
            f"peer to acknowledge the FIN."
        )
        refs.append(_CLOSING)
    elif cause is Event.APP_ABORT:
        text = (
            f"The application aborts the connection: ustack sends RST (seq {seq}) and deletes "
            f"the connection at once (CLOSED); the peer sees 'connection reset'."
        )
    elif cause is Event.APP_CLOSE_UNREAD:
        text = (
            f"The application closes while received data is still unread: ustack sends RST "
            f"(seq {seq}) instead of FIN, so the peer learns that data was lost, and deletes "
            f"the connection (CLOSED)."
        )
    elif "R" in flags:
        if kind is SegmentNote.RST_NO_CONNECTION:
            text = (
                f"ustack has no connection for that segment (any more): it answers RST "
                f"(seq {seq}), as a closed port does."
            )
            refs.append(Rule.RFC9293_CLOSED)
        else:
            why = f" ({note})" if note else ""
            text = f"ustack sends RST (seq {seq}){why}: the peer must drop the connection."
            refs.append(_RST_SENT)
    elif kind is SegmentNote.RETRANSMISSION:
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
    elif kind is SegmentNote.CHALLENGE_ACK:
        text = f"ustack sends a challenge ACK (ack {ack})."
        refs.append("RFC 5961 7")
    elif kind is SegmentNote.ZERO_WINDOW_PROBE:
        text = (
            f"The peer's window is closed: ustack sends a zero-window probe (seq {seq}) to "
            f"learn when it opens again."
        )
        refs.append(_ZERO_WINDOW_PROBE)
    elif kind is SegmentNote.KEEPALIVE_PROBE:
        text = (
            f"ustack has heard nothing from the peer for a while: it sends a keep-alive probe "
            f"(seq {seq}, one below what the peer acknowledged) that the peer must answer "
            f"with an ACK, to learn whether it is still there."
        )
        refs.append(_KEEPALIVE)
    elif length:
        text = f"ustack sends {length:,} bytes of data (seq {seq})."
        refs.append(_DATA)
    else:
        text = f"ustack sends an ACK (ack {ack})."
        refs.append(_DATA)
    refs.extend(s["rule"] for s in item.states)
    if is_lost(event):
        text += _never_arrives(event)
    return prefix + text, refs


# The flag of the segment each application call sends at once.
_CALL_FLAGS = {
    Event.APP_CONNECT: "S",
    Event.APP_CLOSE: "F",
    Event.APP_ABORT: "R",
    Event.APP_CLOSE_UNREAD: "R",
}


def _carries_what_it_caused(cause: Event, flags: str) -> bool:
    """Whether this segment is the one the call sent (a close with data
    still queued sends the data first: the FIN rides on the last segment)."""
    flag = _CALL_FLAGS.get(cause)
    return flag is None or flag in flags


def _seconds(text: str) -> float | None:
    """A decision's "{rto:.3f}" read back; None if the sentence holds no number there."""
    try:
        seconds = float(text)
    except ValueError:
        return None
    return seconds if 0 <= seconds < 1e9 else None


def _retransmit_fires(item: Item, resent: Item | None, context: Context) -> tuple[str, str]:
    event = item.event
    waited = ""
    if id(event) in context.rto_set:
        elapsed = (event["time"] - context.rto_set[id(event)]) * 1000
        waited = f" within {elapsed:,.0f} ms"
    text = f"No acknowledgement came{waited}: ustack's retransmission timer fires."
    if any(_state(s["new"]) is State.CLOSED for s in item.states):
        text += (
            " ustack has retried too often and gives up: the connection timed out "
            "(CLOSED), the application sees a timeout."
        )
    elif resent is not None:
        text += f" ustack sends {_what(resent.event, context)} again"
        for decision in item.decisions:
            note, values = decision_note(decision)
            rto = _seconds(values.get("rto", "")) if note is Note.RETRANSMISSION_TIMEOUT else None
            if rto is not None:
                text += f" and doubles its timeout, to {rto * 1000:,.0f} ms"
                break
        text += "."
        if is_lost(resent.event):
            text += _never_arrives(resent.event)
    return text, Rule.RFC6298_TIMEOUT


def _time_wait_over(item: Item, resent: Item | None, context: Context) -> tuple[str, str]:
    text = (
        f"TIME_WAIT is over: ustack waited {context.time_wait.removeprefix('for ')}, "
        f"so no segment of this connection can still be in the network. ustack deletes "
        f"the connection (CLOSED)."
    )
    return text, _TIME_WAIT_RULE


def _fin_wait_2_over(item: Item, resent: Item | None, context: Context) -> tuple[str, str]:
    text = (
        "The peer never sent its FIN: with the application gone, ustack stops waiting "
        "in FIN_WAIT_2 and deletes the connection (CLOSED)."
    )
    return text, "Linux tcp_fin_timeout"


def _persist_fires(item: Item, resent: Item | None, context: Context) -> tuple[str, str]:
    text = "ustack's persist timer fires: the peer's window is still closed."
    if resent is not None:
        text += " ustack probes it again."
    return text, _ZERO_WINDOW_PROBE


_TimerSentence = Callable[[Item, Item | None, Context], tuple[str, str]]


def _fires(text: str, rule: str) -> _TimerSentence:
    """A timer told in one sentence, then what it sent again (if anything)."""

    def sentence(item: Item, resent: Item | None, context: Context) -> tuple[str, str]:
        told = text
        if resent is not None:
            told += f" ustack sends {_what(resent.event, context)} again."
            if is_lost(resent.event):
                told += _never_arrives(resent.event)
        return told, rule

    return sentence


# What each timer's firing means, and the rule cited when no decision or
# state change at that moment names one.
TIMER_SENTENCES: dict[TimerKind, _TimerSentence] = {
    TimerKind.RETRANSMIT: _retransmit_fires,
    TimerKind.PROBE: _fires(
        "No acknowledgement came within two round trips: ustack's tail loss probe "
        "timer fires, and the probe's ACK or SACK will show what is missing.",
        Rule.RFC8985_PROBE,
    ),
    TimerKind.REORDER: _fires(
        "RACK's reordering timer fires: segments sent before one the peer has "
        "acknowledged have had a round trip and the reordering window to arrive; "
        "those still missing are lost.",
        Rule.RFC8985_RACK,
    ),
    TimerKind.PERSIST: _persist_fires,
    TimerKind.DELAYED_ACK: _fires("ustack's delayed_ack timer fires.", _TIMER_FIRES),
    TimerKind.KEEPALIVE: _fires("ustack's keepalive timer fires.", _TIMER_FIRES),
    TimerKind.TIME_WAIT: _time_wait_over,
    TimerKind.FIN_WAIT_2: _fin_wait_2_over,
}


def timer_step(item: Item, resent: Item | None, context: Context) -> tuple[str, list[str]]:
    """A timer fired, and what it made ustack do (`resent`: the segment it sent again)."""
    name = item.event["timer"]
    refs = [d["rule"] for d in item.decisions] + [s["rule"] for s in item.states]
    # (a timer this build does not know: by its name)
    told = TIMER_SENTENCES.get(name) or _fires(f"ustack's {name} timer fires.", _TIMER_FIRES)
    text, rule = told(item, resent, context)
    return text, refs or [rule]


def state_step(event: Record) -> tuple[str, list[str]]:
    cause, new = _event(event), event["new"]
    if cause is Event.APP_CLOSE:
        text = (
            f"The application closes the connection: ustack goes to {new}; its FIN follows "
            f"the data still queued ({event['why']})."
        )
    elif cause in APP_CALLS:
        text = f"The application acts ({event['why']}): ustack goes to {new}."
    else:
        text = f"ustack goes from {event['old']} to {new}: {event['why']}."
    return text, [event["rule"]]


def peer_step(event: Record) -> tuple[str, list[str]]:
    old, new = event["old"], event["new"]
    rule = next(
        (t.rule for (state, _), t in TRANSITIONS.items()
         if state.name == old and t.new_state.name == new),
        "RFC 9293 3.3.2",
    )  # fmt: skip
    return f"The Linux peer's socket goes from {old} to {new}.", [rule]


def plain_step(events: list[Record], context: Context) -> tuple[str, list[str]]:
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
            start = min(context.rel(e)[0] for e in sent[direction])
            end = max(context.rel(e)[0] + e["length"] for e in sent[direction])
            ack = max(context.rel(e)[1] for e in replies)
            # An ACK at or below the run's first byte acknowledges none of
            # it (the two sides' data crossed): say so, not "up to ack 1".
            if ack >= end:
                clause += f"; {sides[other]} acknowledges them (ack {ack})"
            elif ack > start:
                clause += f"; {sides[other]} acknowledges them up to ack {ack} so far"
            else:
                clause += f"; {sides[other]} has not acknowledged any of them yet"
        sentences.append(_capital(clause) + ".")
    return " ".join(sentences), [_DATA]


def _capital(text: str) -> str:
    # "ustack" is a name and keeps its lower case, as in the ladder.
    return text if text.startswith("ustack") else text[:1].upper() + text[1:]
