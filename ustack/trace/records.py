"""Trace events: what the stack did and why, for study, tools and tests.

The core hands events to a `Tracer` (any callable) when one is set; with
none set, tracing costs one `is not None` test per place. Raw packets go to
packet taps (the pcap writer) the same way.

Schema version 5 (docs/trace-format.md): every event has a "type" and a
"time"; events of a connection have its id ("conn") and 4-tuple, whose
addresses are text of either family (198.18.0.2, 2001:2::2). Fields
typed with the vocabulary's StrEnums (ustack.trace.vocabulary) are written
as their text, so the file holds plain strings.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any

from ustack.trace.vocabulary import DropReason
from ustack.trace.vocabulary import FaultAction
from ustack.trace.vocabulary import Layer
from ustack.trace.vocabulary import SegmentNote
from ustack.trace.vocabulary import TimerAction
from ustack.trace.vocabulary import TimerKind
from ustack.wire.address import format_address

if TYPE_CHECKING:  # annotations only: the trace sits below the TCP core
    from ustack.tcp.states import Event
    from ustack.tcp.states import State

TRACE_SCHEMA_VERSION = 5
# Schemas the readers accept: 2 lacks Decision.kind, which readers treat as "";
# 2 and 3 lack SegmentEvent.tcb, which readers treat as None.
# 4 promised dotted quads; 5 holds IPv6 addresses too (issue 15).
READABLE_SCHEMAS = (2, 3, 4, 5)


@dataclass(frozen=True, slots=True)
class NewConnection:
    """A TCB was made: its id and 4-tuple."""

    time: float
    conn: int
    local: str
    local_port: int
    remote: str
    remote_port: int
    passive: bool


@dataclass(frozen=True, slots=True)
class StateChange:
    time: float
    conn: int
    old: State
    new: State
    event: Event
    rule: str  # RFC and section
    why: str


@dataclass(frozen=True, slots=True)
class SegmentEvent:
    """A TCP segment in or out. Relative numbers count from our ISS for our
    sequence space and from the peer's IRS for theirs (0 where unknown)."""

    time: float
    conn: int | None  # None: it matched no connection
    direction: str  # "in" or "out"
    local: str
    local_port: int
    remote: str
    remote_port: int
    flags: str  # tcpdump style: S F R P . (ACK)
    seq: int
    ack: int
    rel_seq: int
    rel_ack: int
    window: int  # the 16-bit field as on the wire
    length: int  # payload bytes
    options: dict[str, Any]
    state_before: str
    state_after: str
    note: SegmentNote = SegmentNote.NONE  # why we sent it, when that is not plain
    ecn: str = ""  # its IP ECN field (RFC 3168 5): "", "ECT(0)", "ECT(1)" or "CE"
    # Schema 4: the connection's sender and receiver state once the segment
    # was handled (in) or queued (out): cwnd, ssthresh, flight, srtt, rttvar,
    # rto, snd_wnd, rcv_wnd (TCB_FIELDS). What a capture cannot show, for the
    # plots; None for a segment of no connection.
    tcb: dict[str, float] | None = None


@dataclass(frozen=True, slots=True)
class DatagramEvent:
    """A UDP datagram in (delivered to an endpoint, or dropped at its full
    queue) or out (RFC 768). Schema 5 readers that predate it skip it."""

    time: float
    direction: str  # "in" or "out"
    local: str
    local_port: int
    remote: str
    remote_port: int
    length: int  # payload bytes


@dataclass(frozen=True, slots=True)
class TimerEvent:
    time: float
    conn: int
    timer: TimerKind
    action: TimerAction
    deadline: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """A branch the core took that is worth explaining (a drop, a challenge
    ACK, a configurable choice), with the rule behind it."""

    time: float
    conn: int
    what: str  # the sentence: the Note's text with its values
    rule: str  # RFC and section (the Note's Rule)
    kind: str = ""  # the vocabulary's Note, in lower case (e.g. "fast_retransmit")


@dataclass(frozen=True, slots=True)
class Drop:
    """A packet the stack did not accept, and why (the counter's reason)."""

    time: float
    layer: Layer
    reason: DropReason | str  # or a parser's MalformedPacket.reason (the wire layer's)
    summary: str = ""


@dataclass(frozen=True, slots=True)
class PeerStateChange:
    """The Linux peer's own socket changed state (kernel tracepoint
    sock:inet_sock_set_state), as seen from our side of the 4-tuple: `local`
    is the stack's address, `remote` the Linux socket's. States are named
    like ours (SYN_SENT, FIN_WAIT_1, ...). `conn` is our connection on that
    4-tuple, if one exists when the event arrives."""

    time: float
    conn: int | None
    local: str
    local_port: int
    remote: str
    remote_port: int
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """The fault injector acted on a packet at the TUN boundary. For TCP, the
    segment's fields (relative numbers as in SegmentEvent) say which one; an
    "out" segment dropped here was traced as sent just before."""

    time: float
    conn: int | None
    direction: str  # "in" or "out"
    action: FaultAction
    rule: int
    local: str
    local_port: int
    remote: str
    remote_port: int
    flags: str
    seq: int
    ack: int
    rel_seq: int
    rel_ack: int
    length: int
    window: int = 0
    delay: float = 0.0


TraceEvent = (
    NewConnection
    | StateChange
    | SegmentEvent
    | TimerEvent
    | Decision
    | Drop
    | PeerStateChange
    | FaultEvent
    | DatagramEvent
)
Tracer = Callable[[TraceEvent], None]
# (direction "in"/"out", the raw IP packet (IPv4 or IPv6), time)
PacketTap = Callable[[str, bytes, float], None]

# The keys of SegmentEvent.tcb, in bytes and seconds; ssthresh and srtt are
# left out while they have no value yet (before the first loss, the first sample).
TCB_FIELDS = ("cwnd", "ssthresh", "flight", "srtt", "rttvar", "rto", "snd_wnd", "rcv_wnd")

_KINDS: dict[type, str] = {
    NewConnection: "connection",
    StateChange: "state",
    SegmentEvent: "segment",
    TimerEvent: "timer",
    Decision: "decision",
    Drop: "drop",
    PeerStateChange: "peer_state",
    FaultEvent: "fault",
    DatagramEvent: "datagram",
}


# The text of an address of either family (wire/address.py); the old name
# stays for its callers in tcp/, daemon and study/, being split right now.
dotted = format_address


def endpoint(address: str, port: int) -> str:
    """An address already in text and a port, as ss(8) writes them:
    198.18.0.2:80, [2001:2::2]:80 (RFC 5952 6: an IPv6 address in brackets,
    so that its colons and the port's stay apart)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def four_tuple_text(local: str, local_port: int, remote: str, remote_port: int) -> str:
    """The "tuple" field of a connection's events: "local:port remote:port"."""
    return f"{endpoint(local, local_port)} {endpoint(remote, remote_port)}"


_FIELD_NAMES: dict[type, tuple[str, ...]] = {
    kind: tuple(f.name for f in dataclasses.fields(kind)) for kind in _KINDS
}


def event_dict(event: TraceEvent) -> dict[str, Any]:
    """The event as JSON-ready data, with its "type" first (a shallow copy:
    dataclasses.asdict would deep-copy every options dict). A State or Event
    is written by its name; a vocabulary StrEnum is its own text already."""
    record: dict[str, Any] = {"type": _KINDS[type(event)]}
    for name in _FIELD_NAMES[type(event)]:
        value = getattr(event, name)
        if isinstance(value, enum.Enum) and not isinstance(value, str):
            value = value.name
        record[name] = value
    return record
