"""The textbook figures, each a lesson: what it shows, what to look for, and
how to tell from a trace that a run really showed it.

A lesson is played by `ustack lesson run NAME` (ustack/cli/lesson.py: a
throwaway namespace, the daemon and real Linux tools). Here, with no I/O: the
lessons' words and their checks over the trace's records, so that a run which
did not show the figure (a loaded machine, a kernel that acknowledged
differently) says so instead of printing a wrong picture.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field

from ustack.study.load import ConnectionSummary
from ustack.study.load import Record
from ustack.study.load import as_records
from ustack.study.load import choose_connection
from ustack.study.load import connections

Check = Callable[[Sequence[Record]], bool]


@dataclass(frozen=True)
class Sign:
    """One thing the lesson's connection must show: said in words, checked on its records."""

    words: str
    holds: Check


@dataclass(frozen=True)
class Lesson:
    name: str
    title: str
    look_for: str  # which arrows, which states, which rule
    port: int  # the lesson's connection has this port, at either end
    states: tuple[str, ...]  # ustack's states, in this order (others may come between)
    linux: tuple[str, ...] = ()  # the Linux socket's, where they are the point, likewise
    rules: tuple[str, ...] = ()  # rules its state changes or decisions must quote
    signs: tuple[Sign, ...] = field(default=())
    serve_args: tuple[str, ...] = ()  # the daemon's extra options (fault rules)
    msl: str = "0.5"  # seconds: short, so that TIME_WAIT (2 MSL) is seen ending


def _segments(records: Sequence[Record], direction: str) -> list[Record]:
    return [r for r in records if r["type"] == "segment" and r["direction"] == direction]


def _has(flag: str, segment: Record) -> bool:
    return flag in segment["flags"]


def _retransmitted_fin_from(state: str) -> Sign:
    def holds(records: Sequence[Record]) -> bool:
        fins = [s for s in _segments(records, "out") if _has("F", s)]
        lost = any("dropped by fault injector" in s.get("note", "") for s in fins)
        again = any(
            s.get("note", "").startswith("retransmission") and s["state_before"] == state
            for s in fins
        )
        return lost and again

    return Sign(f"ustack's FIN lost, then retransmitted from {state} after the RTO", holds)


def _timer(kind: str, action: str, at_least: int = 1) -> Check:
    def holds(records: Sequence[Record]) -> bool:
        fired = [
            r
            for r in records
            if r["type"] == "timer" and (r["timer"], r["action"]) == (kind, action)
        ]
        return len(fired) >= at_least

    return holds


def _segment(direction: str, test: Callable[[Record], bool]) -> Check:
    return lambda records: any(test(s) for s in _segments(records, direction))


def _decision(words: str) -> Check:
    return lambda records: any(
        r["type"] == "decision" and words in r.get("what", "") for r in records
    )


def _lost_fin(state: str, look_for: str, port: int, states: tuple[str, ...]) -> Lesson:
    """The lesson of ustack's FIN dropped once by a fault rule and
    retransmitted from `state` when the retransmission timer fires."""
    return Lesson(
        f"lost-fin-{state.lower().replace('_', '-')}",
        f"A lost FIN retransmitted from {state} (RFC 9293 3.10.4, RFC 6298 5)",
        look_for,
        port=port,
        states=states,
        rules=("RFC 6298 5.4-5.6",),
        signs=(_retransmitted_fin_from(state),),
        serve_args=("--fault", "drop:dir=out,flags=FIN,count=1"),
    )


LESSONS: tuple[Lesson, ...] = (
    Lesson(
        "handshake",
        "Three-way handshake (RFC 9293 3.5, figure 6): a Linux client opens to echo",
        "The first three arrows: Linux's SYN (with its MSS, window scale, SACK-permitted and "
        "timestamps), ustack's SYN,ACK acknowledging it (ack 1), Linux's ACK. ustack goes LISTEN "
        "-> SYN_RECEIVED on the SYN (RFC 9293 3.10.7.2) and SYN_RECEIVED -> ESTABLISHED on the "
        "ACK (3.10.7.4); Linux's column goes SYN_SENT -> ESTABLISHED as it sends that ACK.",
        port=7,
        states=("LISTEN", "SYN_RECEIVED", "ESTABLISHED"),
        rules=("RFC 9293 3.10.7.2",),
        signs=(
            Sign("a SYN in, then a SYN,ACK out", _segment("out", lambda s: s["flags"] == "S.")),
        ),
    ),
    Lesson(
        "close-ustack-first",
        "Four-way close, ustack first (RFC 9293 3.6, figure 12: ustack is TCP A)",
        "ustack's daytime service sends its line and closes: FIN out (ESTABLISHED -> FIN_WAIT_1, "
        "RFC 9293 3.10.4), Linux's ACK of it (FIN_WAIT_2), then, once the Linux client closes "
        "(half a second later here), Linux's FIN and ustack's ACK: ustack holds TIME_WAIT for "
        "2 MSL (the note '2MSL timer set') and ends CLOSED when it fires (3.6.1); Linux went "
        "CLOSE_WAIT -> LAST_ACK -> CLOSED.",
        port=13,
        states=("ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT", "CLOSED"),
        linux=("ESTABLISHED", "CLOSE_WAIT", "LAST_ACK"),
        rules=("RFC 9293 3.10.4",),
        signs=(Sign("the 2MSL timer fired", _timer("time_wait", "fired")),),
    ),
    Lesson(
        "close-linux-first",
        "Four-way close, Linux first (RFC 9293 3.6, figure 12: ustack is TCP B)",
        "ustack connects to a Linux server (`ustack connect`), which sends a line and closes: "
        "Linux's FIN in (ustack ESTABLISHED -> CLOSE_WAIT, RFC 9293 3.10.7.4), ustack's ACK; "
        "then ustack's application closes: FIN out (CLOSE_WAIT -> LAST_ACK), Linux's ACK ends "
        "it (LAST_ACK -> CLOSED). Linux holds TIME_WAIT (its column).",
        port=9000,
        states=("SYN_SENT", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"),
        linux=("ESTABLISHED", "FIN_WAIT_1"),
        rules=("RFC 9293 3.10.7.4",),
    ),
    Lesson(
        "half-close",
        "Half-close (RFC 9293 3.6): a side that sent its FIN still receives data",
        "ustack sends a question and its FIN (FIN_WAIT_1); Linux ACKs it (FIN_WAIT_2; the ACK "
        "often rides on its first data) but has not closed: it answers with data, which "
        "ustack, half-closed, still receives and ACKs in "
        "FIN_WAIT_2 (RFC 9293 3.10.7.4: the segment text is processed in FIN-WAIT-1 and "
        "FIN-WAIT-2 as in ESTABLISHED); only "
        "then Linux's FIN, ustack's ACK, TIME_WAIT.",
        port=9000,
        states=("ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT", "CLOSED"),
        signs=(
            Sign(
                "data from Linux received while ustack is in FIN_WAIT_2",
                _segment("in", lambda s: s["length"] > 0 and s["state_after"] == "FIN_WAIT_2"),
            ),
        ),
    ),
    Lesson(
        "simultaneous-close",
        "Simultaneous close (RFC 9293 3.6, figure 13): the FINs cross, both go CLOSING",
        "Every packet of the connection is delayed 0.25 s (a fault rule), so the two FINs are in "
        "flight together: each end sends its FIN (FIN_WAIT_1), then receives the other's FIN "
        "before the ACK of its own: FIN_WAIT_1 -> CLOSING (RFC 9293 3.10.7.4), ACK; the ACK of "
        "its own FIN then takes it CLOSING -> TIME_WAIT. Both columns show CLOSING and "
        "TIME_WAIT.",
        port=9000,
        states=("ESTABLISHED", "FIN_WAIT_1", "CLOSING", "TIME_WAIT", "CLOSED"),
        linux=("ESTABLISHED", "FIN_WAIT_1", "CLOSING"),
        rules=("RFC 9293 3.10.7.4",),
        serve_args=("--fault", "delay:dir=both,port=9000,delay=0.25"),
    ),
    _lost_fin(
        "FIN_WAIT_1",
        "ustack's first FIN is dropped by a fault rule (the crossed arrow, 'lost'): no ACK comes, "
        "ustack stays in FIN_WAIT_1 until the retransmission timer fires ('retransmit fired', "
        "RFC 6298 5.4-5.6) and resends the same FIN (same seq, 'retransmission'); then the close "
        "goes on as usual to TIME_WAIT.",
        port=13,
        states=("ESTABLISHED", "FIN_WAIT_1", "TIME_WAIT", "CLOSED"),
    ),
    _lost_fin(
        "LAST_ACK",
        "A Linux client (nc -N) sends lines to ustack's echo and its FIN (ustack CLOSE_WAIT); echo "
        "finishes and closes: ustack's FIN is dropped by a fault rule (the crossed arrow); ustack "
        "waits in LAST_ACK until the retransmission timer fires (RFC 6298 5.4-5.6) and resends "
        "it; Linux's ACK of that one ends the connection.",
        port=7,
        states=("ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"),
    ),
    Lesson(
        "lost-final-ack",
        "A lost final ACK: Linux resends its FIN into TIME_WAIT (RFC 9293 3.10.7.4)",
        "Why TIME_WAIT exists: ustack's ACK of Linux's FIN is dropped (the crossed arrow), so "
        "Linux, in LAST_ACK, resends its FIN; ustack, in TIME_WAIT, ACKs it again ('re-ACK of "
        "the resent FIN') and restarts the 2MSL timer ('2MSL restarted'), RFC 9293 3.10.7.4. "
        "Had ustack already forgotten the connection, it would have answered with a RST. The "
        "2MSL timer then fires and ustack ends CLOSED.",
        port=13,
        states=("FIN_WAIT_1", "TIME_WAIT", "CLOSED"),
        linux=("CLOSE_WAIT", "LAST_ACK"),
        rules=("RFC 9293 3.10.7.4",),
        signs=(
            Sign(
                "Linux's FIN received again in TIME_WAIT",
                _segment("in", lambda s: "F" in s["flags"] and s["state_before"] == "TIME_WAIT"),
            ),
            Sign("ustack ACKed it again", _decision("FIN retransmitted in TIME_WAIT")),
            Sign("the 2MSL timer set twice (restarted)", _timer("time_wait", "set", 2)),
            Sign("the 2MSL timer fired", _timer("time_wait", "fired")),
        ),
        serve_args=("--fault", "drop:dir=out,flags=ACK,only=1,port=13,count=1"),
        msl="1",  # 2 s of TIME_WAIT: room for Linux's resent FIN (its RTO, 200 ms and up)
    ),
    Lesson(
        "old-duplicate-syn",
        "An old duplicate SYN (RFC 9293 3.5, figure 8): a RST puts ustack back in LISTEN",
        "A SYN that Linux's socket layer never sent (an old duplicate, put on the TUN by a raw "
        "socket) reaches ustack's listener: LISTEN -> SYN_RECEIVED, SYN,ACK out. Linux has no "
        "connection on that 4-tuple, so it answers the SYN,ACK with a RST (RFC 9293 3.10.7.1); "
        "ustack, passively opened, returns to LISTEN (3.10.7.4: 'return this connection to "
        "LISTEN state'). Linux's column stays empty: no socket of it ever had this connection.",
        port=40000,
        states=("LISTEN", "SYN_RECEIVED", "LISTEN"),
        rules=("RFC 9293 3.10.7.4",),
        signs=(Sign("Linux's RST in", _segment("in", lambda s: "R" in s["flags"])),),
    ),
    Lesson(
        "closed-port",
        "A connection to a closed port (RFC 9293 3.10.7.1): answered with RST,ACK",
        "ustack connects to Linux's port 9, where nothing listens: its SYN is answered by "
        "Linux's RST,ACK (no connection: a RST whose ACK acknowledges the SYN, RFC 9293 "
        "3.10.7.1); ustack's SYN_SENT accepts it (the ACK acknowledges its SYN, 3.10.7.3) and "
        "goes CLOSED: `ustack connect` fails with ECONNREFUSED.",
        port=9,
        states=("SYN_SENT", "CLOSED"),
        rules=("RFC 9293 3.10.7.3",),
        signs=(Sign("Linux's RST,ACK in", _segment("in", lambda s: s["flags"] == "R.")),),
    ),
)


def lesson_names() -> list[str]:
    return [lesson.name for lesson in LESSONS]


def find_lesson(name: str) -> Lesson | None:
    return next((lesson for lesson in LESSONS if lesson.name == name), None)


def the_connection(records: Sequence[Record], port: int) -> ConnectionSummary | None:
    """The lesson's connection, with its events: the first with `port` at either end."""
    for summary in connections(records):
        if port in (summary.ends[1], summary.ends[3]):
            return choose_connection(records, summary.conn)
    return None


def ustack_states(records: Sequence[Record]) -> list[str]:
    """The states ustack's end went through, from its state records."""
    changes = [r for r in records if r["type"] == "state"]
    return [changes[0]["old"], *(r["new"] for r in changes)] if changes else []


def peer_states(records: Sequence[Record]) -> list[str]:
    """The Linux socket's states, as the kernel's tracepoint told them."""
    changes = [r for r in records if r["type"] == "peer_state"]
    return [changes[0]["old"], *(r["new"] for r in changes)] if changes else []


def _in_order(wanted: Sequence[str], seen: Sequence[str]) -> bool:
    rest = iter(seen)
    return all(state in rest for state in wanted)


def missing(lesson: Lesson, records: Sequence[Record]) -> list[str]:
    """What the run did not show of the lesson (empty: it showed it all)."""
    records = as_records(records)  # the fault injector's drops marked on their segments
    gaps = []
    states = ustack_states(records)
    if not _in_order(lesson.states, states):
        gaps.append(
            f"ustack's states {' -> '.join(lesson.states)} (seen: {' -> '.join(states) or 'none'})"
        )
    linux = peer_states(records)
    if not _in_order(lesson.linux, linux):
        gaps.append(
            f"Linux's states {' -> '.join(lesson.linux)} (seen: {' -> '.join(linux) or 'none'})"
        )
    quoted = {r.get("rule") for r in records if r["type"] in ("state", "decision")}
    gaps += [f"a step quoting {rule}" for rule in lesson.rules if rule not in quoted]
    gaps += [sign.words for sign in lesson.signs if not sign.holds(records)]
    return gaps
