"""What the graphs of one connection show, taken from its trace: no drawing
here (ustack.study.plot draws with matplotlib, the report page reuses it).

The time-sequence graph is the one tcptrace and Wireshark draw (Stevens):
each data segment of the sending side a vertical bar from its first to its
last byte at the time it went out, the receiver's cumulative ACK as a step
line, the right edge of the window it offers (ACK + window, scaled), the
SACK blocks it reports, and the loss-recovery events. The other graphs come
from what no capture holds: the stack's own TCB in each segment record
(schema 4 "tcb": cwnd, ssthresh, bytes in flight, SRTT, RTTVAR, RTO, the
send and receive windows) and both ends' states. Time is relative to the
connection's first event, as Wireshark's "relative to the start" option.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from typing import Any

from ustack.study.decode import decision_note
from ustack.study.decode import is_lost
from ustack.study.decode import segment_note
from ustack.study.load import Record
from ustack.trace.vocabulary import Note
from ustack.trace.vocabulary import SegmentNote
from ustack.trace.vocabulary import TimerAction
from ustack.trace.vocabulary import TimerKind

_MASK = 0xFFFFFFFF

KINDS = ("time-sequence", "cwnd", "rtt", "window", "states")

# Loss-recovery decisions worth a mark on the time-sequence graph, and their short names.
EVENT_LABELS: dict[Note, str] = {
    Note.FAST_RETRANSMIT: "fast retransmit",
    Note.RACK_LOST: "RACK lost",
    Note.RETRANSMISSION_TIMEOUT: "RTO",
    Note.TAIL_LOSS_PROBE: "TLP",
    Note.SPURIOUS_RETRANSMISSION: "undo",
    Note.ZERO_WINDOW_PROBE: "zero-window probe",
    Note.RECOVERY_OVER: "recovery over",
}
# A timer firing, when no decision names it (an older trace).
_TIMER_LABELS = {TimerKind.RETRANSMIT: "RTO", TimerKind.PROBE: "TLP"}


@dataclass(frozen=True, slots=True)
class Sent:
    """A data segment of the sending side: bytes [start, end) at `time`."""

    time: float
    start: int
    end: int
    kind: str  # "new", "retransmission" or "probe"
    lost: bool  # dropped by the fault injector
    event: int  # its index in the connection's events


@dataclass(frozen=True, slots=True)
class Acked:
    """The receiver's cumulative ACK and the right edge of its window."""

    time: float
    ack: int
    edge: int  # ack + window (scaled)
    event: int


@dataclass(frozen=True, slots=True)
class Sacked:
    time: float
    start: int
    end: int
    event: int


@dataclass(frozen=True, slots=True)
class Marker:
    """A loss-recovery event, at the sequence number it concerns."""

    time: float
    seq: int
    label: str
    event: int


@dataclass(frozen=True, slots=True)
class StateSpan:
    side: str  # "ustack" or "Linux"
    state: str
    start: float
    end: float


@dataclass
class PlotData:
    """Everything the graphs of one connection draw (times in seconds from
    its start, sequence numbers relative to the sender's ISN)."""

    conn: int
    title: str
    sender: str  # "ustack" or "Linux peer": whose data the time-sequence graph shows
    duration: float
    window_scaled: bool  # whether both SYNs carried a window scale, applied here
    sent: list[Sent] = field(default_factory=list)
    acked: list[Acked] = field(default_factory=list)
    sacked: list[Sacked] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    # (time, event index, the segment's "tcb") for every segment that has one
    tcb: list[tuple[float, int, dict[str, float]]] = field(default_factory=list)
    states: list[StateSpan] = field(default_factory=list)

    def series(self, name: str) -> tuple[list[float], list[float]]:
        """One TCB field over time (x, y), where the trace has it."""
        xs, ys = [], []
        for time, _event, values in self.tcb:
            if name in values:
                xs.append(time)
                ys.append(values[name])
        return xs, ys


def _window_shifts(events: Sequence[Record]) -> tuple[int, int, bool]:
    """(the peer's shift, ours, whether scaling is on): RFC 7323 2.2, only
    when both SYNs carried the option."""
    shifts: dict[str, int | None] = {"in": None, "out": None}
    for event in events:
        if event["type"] == "segment" and "S" in event["flags"]:
            scale = (event.get("options") or {}).get("wscale")
            if shifts[event["direction"]] is None and isinstance(scale, int):
                shifts[event["direction"]] = scale
    peer, ours = shifts["in"], shifts["out"]
    if peer is None or ours is None:
        return 0, 0, False
    return peer, ours, True


def _payload_bytes(events: Sequence[Record], direction: str) -> int:
    return sum(
        e["length"] for e in events if e["type"] == "segment" and e["direction"] == direction
    )


def _base(events: Sequence[Record], direction: str) -> int | None:
    """The ISN of the side sending in `direction` (absolute - relative)."""
    for event in events:
        if event["type"] == "segment" and event["direction"] == direction and event.get("conn"):
            return int(event["seq"] - event["rel_seq"]) & _MASK
    return None


def plot_data(events: Sequence[Record], conn: int, title: str) -> PlotData:
    """The graphs' data from one connection's events (load.choose_connection's,
    faults folded: load.as_records). Event indexes refer to `events`."""
    start = events[0]["time"] if events else 0.0
    end = events[-1]["time"] if events else 0.0
    peer_shift, our_shift, scaled = _window_shifts(events)
    # The sender is whichever side sent more payload (ustack on a tie).
    data_dir = "in" if _payload_bytes(events, "in") > _payload_bytes(events, "out") else "out"
    ack_dir = "out" if data_dir == "in" else "in"
    shift = our_shift if ack_dir == "out" else peer_shift
    base = _base(events, data_dir)
    sender = "ustack" if data_dir == "out" else "Linux peer"
    data = PlotData(conn, title, sender, end - start, scaled)

    highest = 0  # the highest byte the sender sent so far
    last_ack = 0
    probe_pending = False  # a tail loss probe decided: the next segment out is it
    for index, event in enumerate(events):
        kind = event["type"]
        at = event["time"] - start
        if kind == "segment" and event.get("conn") is not None:
            if event.get("tcb"):
                data.tcb.append((at, index, event["tcb"]))
            direction = event["direction"]
            if direction == data_dir and event["length"]:
                first = event["rel_seq"]
                last = first + event["length"]
                note = segment_note(event)
                if note in (SegmentNote.ZERO_WINDOW_PROBE, SegmentNote.KEEPALIVE_PROBE) or (
                    probe_pending and direction == "out"
                ):
                    sent_kind = "probe"
                elif note is SegmentNote.RETRANSMISSION or last <= highest:
                    sent_kind = "retransmission"
                else:
                    sent_kind = "new"
                probe_pending = False
                highest = max(highest, last)
                data.sent.append(Sent(at, first, last, sent_kind, is_lost(event), index))
            if direction == ack_dir and "." in event["flags"] and not is_lost(event):
                ack = event["rel_ack"]
                window = event["window"] << (0 if "S" in event["flags"] else shift)
                data.acked.append(Acked(at, ack, ack + window, index))
                last_ack = max(last_ack, ack)
                for block in (event.get("options") or {}).get("sack") or ():
                    if base is not None and len(block) == 2:
                        left, right = ((edge - base) & _MASK for edge in block)
                        data.sacked.append(Sacked(at, left, right, index))
        elif kind == "decision":
            decided, _values = decision_note(event)
            if decided is not None and decided in EVENT_LABELS:
                data.markers.append(Marker(at, last_ack, EVENT_LABELS[decided], index))
                probe_pending = decided is Note.TAIL_LOSS_PROBE
        elif kind == "timer" and event["action"] == TimerAction.FIRED:
            label = _TIMER_LABELS.get(event["timer"])
            # (a decision at the same time says it better; older traces have none)
            if label and not _decided_at(events, index):
                data.markers.append(Marker(at, last_ack, label, index))
    data.states = _state_spans(events, start, end)
    return data


def _decided_at(events: Sequence[Record], index: int) -> bool:
    """Whether a decision follows events[index] at the same time."""
    when = events[index]["time"]
    for event in events[index + 1 :]:
        if event["time"] != when:
            return False
        if event["type"] == "decision":
            return True
    return False


def _state_spans(events: Sequence[Record], start: float, end: float) -> list[StateSpan]:
    """Each side's states as spans of time; Linux's only with peer states."""
    spans: list[StateSpan] = []
    current: dict[str, tuple[str, float]] = {}
    for event in events:
        kind = event["type"]
        if kind == "state" or (kind == "segment" and event.get("conn") is not None):
            side = "ustack"
            old, new = (
                (event["old"], event["new"])
                if kind == "state"
                else (event["state_before"], event["state_after"])
            )
        elif kind == "peer_state":
            side, old, new = "Linux", event["old"], event["new"]
        else:
            continue
        at = event["time"] - start
        if side not in current:
            current[side] = (old, 0.0)
        state, since = current[side]
        if new != state:
            spans.append(StateSpan(side, state, since, at))
            current[side] = (new, at)
    for side, (state, since) in current.items():
        spans.append(StateSpan(side, state, since, end - start))
    return [s for s in spans if s.end > s.start or s.state not in ("", "CLOSED")]


def decimate(data: PlotData, points: int) -> PlotData:
    """The same graphs with at most about `points` plain bars, ACK, SACK
    and TCB points each, for a page of bounded size: time is cut into
    `points` buckets; a bucket's new segments become one bar from its lowest
    to its highest byte, its ACKs and SACK blocks their last, its TCB values
    the lowest cwnd and the last. Retransmissions, lost segments, probes,
    markers and states are all kept."""
    if max(len(data.sent), len(data.acked), len(data.sacked), len(data.tcb)) <= points:
        return data
    span = max(data.duration, 1e-9)

    def bucket(time: float) -> int:
        return min(int(time / span * points), points - 1)

    merged: dict[int, Sent] = {}
    sent = []
    for s in data.sent:
        if s.kind != "new" or s.lost:
            sent.append(s)
            continue
        key = bucket(s.time)
        bar = merged.get(key)
        merged[key] = (
            s
            if bar is None
            else replace(bar, start=min(bar.start, s.start), end=max(bar.end, s.end))
        )
    sent.extend(merged.values())
    sent.sort(key=lambda s: s.time)

    def last_per_bucket(items: Sequence[Any]) -> list[Any]:
        if len(items) <= points:
            return list(items)
        kept: dict[int, Any] = {}
        for item in items:
            kept[bucket(item.time)] = item
        return list(kept.values())

    tcb: dict[int, list[tuple[float, int, dict[str, float]]]] = {}
    for point in data.tcb:
        lowest_and_last = tcb.setdefault(bucket(point[0]), [point, point])
        if point[2].get("cwnd", 0) < lowest_and_last[0][2].get("cwnd", 0):
            lowest_and_last[0] = point
        lowest_and_last[1] = point
    tcb_points = sorted({p[1]: p for pair in tcb.values() for p in pair}.values())
    return replace(
        data,
        sent=sent,
        acked=last_per_bucket(data.acked),
        sacked=last_per_bucket(data.sacked),
        tcb=tcb_points,
    )
