"""Ladder (sequence) diagrams of one connection, drawn from a JSONL trace.

`ustack ladder TRACE` puts the Linux peer on the left and ustack on the
right: one arrow per segment, each side's state beside it after each step,
ustack's timers as annotations, time in ms at the left margin. Three
renderings of one model: ASCII (a terminal), SVG (a page), Mermaid (GitHub).

The trace is read as plain dicts (schema version 3, see docs/trace-format.md), so
a file from another ustack build, a test or a hand edit reads the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from ustack.study.records import (
    READABLE_SCHEMAS,
    TRACE_SCHEMA_VERSION,
    Decision,
    Drop,
    NewConnection,
    PeerStateChange,
    SegmentEvent,
    StateChange,
    TimerEvent,
    TraceEvent,
    event_dict,
)

Record = dict[str, Any]

# The fault injector marks the segments it swallowed with this note.
LOST_NOTE = "dropped by fault injector"
FORMATS = ("ascii", "svg", "mermaid")
_MASK = 0xFFFFFFFF

# Required fields per event type, from the dataclasses that write them, so a
# truncated or foreign line fails at load time with its line number rather
# than as a KeyError deep in a renderer.
_REQUIRED: dict[str, tuple[str, ...]] = {
    name: tuple(f.name for f in dataclasses.fields(cls))
    for name, cls in (
        ("connection", NewConnection),
        ("state", StateChange),
        ("segment", SegmentEvent),
        ("timer", TimerEvent),
        ("decision", Decision),
        ("drop", Drop),
        ("peer_state", PeerStateChange),
    )
}
# Optional in old writers' output: don't reject a file for these.
_OPTIONAL = {"note", "deadline", "summary"}


class TraceError(Exception):
    """A trace that cannot be read or a connection that cannot be chosen;
    the message is one line, ready for stderr."""


class ChooseConnection(TraceError):
    """Several connections and no --conn: `listing` shows them."""

    def __init__(self, message: str, listing: str) -> None:
        super().__init__(message)
        self.listing = listing


# ---- loading ---------------------------------------------------------------------------


def load_trace(path: str | Path) -> list[Record]:
    """The events of a JSONL trace file (the header line left out)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not a text file (is it a pcap? want a .jsonl trace)") from None
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise TraceError(f"{path}: empty file, not a ustack trace")
    header = _parse_line(path, *numbered[0])
    if header.get("type") != "header" or "schema" not in header:
        raise TraceError(f"{path}: not a ustack JSONL trace (the first line is not its header)")
    if header["schema"] not in READABLE_SCHEMAS:
        raise TraceError(
            f"{path}: trace schema {header['schema']!r}; this ustack reads schema "
            f"{TRACE_SCHEMA_VERSION}"
        )
    events = []
    for number, line in numbered[1:]:
        record = _parse_line(path, number, line)
        kind = record.get("type")
        if not isinstance(kind, str) or not isinstance(record.get("time"), int | float):
            raise TraceError(f"{path}:{number}: an event needs a 'type' and a numeric 'time'")
        missing = [k for k in _REQUIRED.get(kind, ()) if k not in record and k not in _OPTIONAL]
        if missing:
            raise TraceError(f"{path}:{number}: {kind} event without {', '.join(missing)}")
        events.append(record)
    return events


def _parse_line(path: Path, number: int, line: str) -> Record:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TraceError(f"{path}:{number}: not JSON ({exc.msg}, column {exc.colno})") from None
    if not isinstance(record, dict):
        raise TraceError(f"{path}:{number}: not a JSON object")
    return record


def as_records(events: Iterable[Record | TraceEvent]) -> list[Record]:
    """Dicts as in a trace file; TraceEvent objects (a live tracer's) converted,
    and the fault injector's drops folded into the segments they hit."""
    records = [event if isinstance(event, dict) else event_dict(event) for event in events]
    if any(r.get("type") == "fault" for r in records):
        records = _fold_faults(records)
    # The peer's states arrive late but carry the kernel's own time: in time
    # order they fall into place (a stable sort keeps the rest as written).
    return sorted(records, key=lambda record: record.get("time", 0.0))


def _fold_faults(records: list[Record]) -> list[Record]:
    """A dropped "out" segment was traced as sent: mark that segment lost. A
    dropped "in" segment never reached the stack: it becomes a lost arrow."""
    folded: list[Record] = []
    for record in records:
        if record.get("type") != "fault" or record.get("action") != "drop":
            folded.append(record)
            continue
        if record["direction"] == "out":
            for index in range(len(folded) - 1, -1, -1):
                earlier = folded[index]
                if (
                    earlier.get("type") == "segment"
                    and earlier["direction"] == "out"
                    and (earlier["seq"], earlier["flags"]) == (record["seq"], record["flags"])
                    and _four_tuple(earlier) == _four_tuple(record)
                ):
                    note = " ".join(filter(None, (earlier.get("note"), LOST_NOTE)))
                    folded[index] = {**earlier, "note": note}
                    break
            continue
        state = _state_of(folded, record.get("conn"))
        kept = (
            "time",
            "conn",
            "local",
            "local_port",
            "remote",
            "remote_port",
            "flags",
            "seq",
            "ack",
            "rel_seq",
            "rel_ack",
            "length",
        )
        folded.append(
            {key: record[key] for key in kept}
            | {
                "type": "segment",
                "direction": "in",
                "window": record.get("window", 0),
                "options": {},
                "state_before": state,
                "state_after": state,
                "note": LOST_NOTE,
            }
        )
    return folded


def _state_of(records: list[Record], conn: int | None) -> str:
    """ustack's state for `conn` as of the end of `records`."""
    for record in reversed(records):
        if record.get("conn") != conn:
            continue
        if record.get("type") == "state":
            return str(record["new"])
        if record.get("type") == "segment":
            return str(record["state_after"])
    return ""


# ---- connections -----------------------------------------------------------------------

FourTuple = tuple[str, int, str, int]  # local, local_port, remote, remote_port


def _four_tuple(event: Record) -> FourTuple | None:
    try:
        return (event["local"], event["local_port"], event["remote"], event["remote_port"])
    except KeyError:
        return None


@dataclass
class ConnectionSummary:
    """One connection of a trace: what `ustack ladder` lists."""

    conn: int
    ends: FourTuple
    passive: bool | None
    first_state: str = ""
    last_state: str = ""
    start: float = 0.0
    end: float = 0.0
    events: list[Record] = field(default_factory=list, repr=False)

    @property
    def peer(self) -> str:
        return f"{self.ends[2]}:{self.ends[3]}"

    @property
    def us(self) -> str:
        return f"{self.ends[0]}:{self.ends[1]}"

    def describe(self) -> str:
        how = {True: "passive", False: "active", None: "?"}[self.passive]
        states = f"{self.first_state or '?'} -> {self.last_state or '?'}"
        return f"{self.conn:>5}  {self.peer:>21} <-> {self.us:<21}  {how:<7}  {states}"


def connections(events: Sequence[Record]) -> list[ConnectionSummary]:
    """Every connection of a trace, in order of appearance, each with its
    events: its own, plus the Linux side's states and the stack's replies
    on its 4-tuple that carry no connection id."""
    found: dict[int, ConnectionSummary] = {}
    for event in events:
        conn = event.get("conn")
        kind = event.get("type")
        # A listener's state changes carry conn 0 and no connection event.
        if conn is None or (kind == "state" and conn not in found):
            continue
        if conn not in found:
            ends = _four_tuple(event)
            if ends is None:
                continue  # a timer or decision of a connection we never saw opened
            passive = event.get("passive") if kind == "connection" else None
            found[conn] = ConnectionSummary(conn, ends, passive, start=event["time"])
        if kind == "connection":  # the peer's first state may sort before it
            found[conn].passive = event.get("passive")
        found[conn].events.append(event)
        found[conn].end = event["time"]
    by_ends: dict[FourTuple, list[ConnectionSummary]] = {}
    for summary in found.values():
        by_ends.setdefault(summary.ends, []).append(summary)
    orphans: dict[int, list[Record]] = {}
    for event in events:
        if event.get("type") not in ("segment", "peer_state") or event.get("conn") is not None:
            continue
        ends = _four_tuple(event)
        owner = _owner(event, by_ends.get(ends, [])) if ends is not None else None
        if owner is not None:
            orphans.setdefault(owner.conn, []).append(event)
    for summary in found.values():
        if summary.conn in orphans:
            extra = {id(e) for e in orphans[summary.conn]}
            mine = {id(e) for e in summary.events}
            summary.events = [e for e in events if id(e) in mine or id(e) in extra]
        summary.first_state, summary.last_state = _state_span(summary.events)
    return list(found.values())


def _owner(event: Record, candidates: list[ConnectionSummary]) -> ConnectionSummary | None:
    """The connection an id-less event on its 4-tuple belongs to: the one
    alive at that time; for the peer's states before ours exists (Linux
    goes to SYN_SENT before its SYN reaches us), the next one; else the
    last one before (a RST answering a late segment)."""
    when = event["time"]
    alive = [c for c in candidates if c.start <= when <= c.end]
    if alive:
        return alive[-1]
    later = [c for c in candidates if c.start > when]
    if event["type"] == "peer_state" and later:
        return later[0]
    earlier = [c for c in candidates if c.start <= when]
    if earlier:
        return earlier[-1]
    return later[0] if later else None


def _state_span(events: Sequence[Record]) -> tuple[str, str]:
    """ustack's first and last state in these events."""
    first = last = ""
    for event in events:
        if event.get("conn") is None:
            continue
        if event["type"] == "segment":
            first = first or event["state_before"]
            last = event["state_after"]
        elif event["type"] == "state":
            first = first or event["old"]
            last = event["new"]
    return first, last


def _listing(summaries: Sequence[ConnectionSummary]) -> str:
    head = f"{'conn':>5}  {'Linux peer':>21}     {'ustack':<21}  {'open':<7}  first -> last state"
    return "\n".join([head, *(s.describe() for s in summaries)])


def choose_connection(
    events: Sequence[Record], conn: int | None, source: str = "the trace"
) -> ConnectionSummary:
    """The connection `conn` of the trace; without an id, the only one.
    Raises ChooseConnection (with the listing) when several would do."""
    summaries = connections(events)
    if not summaries:
        raise TraceError(f"{source}: no connections in this trace")
    if conn is None:
        if len(summaries) > 1:
            raise ChooseConnection(
                f"{source} holds {len(summaries)} connections: choose one with --conn ID",
                _listing(summaries),
            )
        return summaries[0]
    for summary in summaries:
        if summary.conn == conn:
            return summary
    ids = ", ".join(str(s.conn) for s in summaries)
    raise TraceError(f"{source}: no connection {conn} (the trace has: {ids})")


# ---- the model -------------------------------------------------------------------------


@dataclass
class Row:
    """One step of the ladder: an arrow, a timer note, or a change of state."""

    time_ms: float
    kind: str  # "arrow", "note" (a timer, on the ustack side), "state"
    direction: str = ""  # arrows: "in" = peer -> ustack, "out" = ustack -> peer
    flags: str = ""
    label: str = ""
    lost: bool = False
    peer_state: str = ""  # set when the peer's state changed at this step
    ustack_state: str = ""  # set when ustack's state changed at this step
    note: str = ""


@dataclass
class Ladder:
    conn: int
    peer: str  # address:port
    us: str
    passive: bool | None
    peer_start: str  # "" when the trace has no peer_state events
    ustack_start: str
    rows: list[Row]

    @property
    def title(self) -> str:
        how = {True: " (passive open)", False: " (active open)", None: ""}[self.passive]
        return f"connection {self.conn}: Linux peer {self.peer} <-> ustack {self.us}{how}"


# Timer notes: (when set, with its delay; when fired).
_TIMER_NOTES = {
    "retransmit": ("RTO set {}", "RTO fired"),
    "time_wait": ("2MSL timer {}", "2MSL timer expired"),
    "fin_wait_2": ("fin timeout {}", "fin timeout expired"),
    "persist": ("persist timer {}", "persist timer fired"),
    "probe": ("loss probe {}", "loss probe fired"),
    "reorder": ("RACK reorder timer {}", "RACK reorder timer fired"),
}


def _duration(seconds: float) -> str:
    """ms for the short timers, s for the long ones (keeps notes narrow)."""
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"  # (RACK's reordering window: tenths of a ms)
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.0f} s"


def _options_text(options: dict[str, Any]) -> str:
    """Compact SYN options: names and the values that fit (not TS's)."""
    parts = []
    for name, value in options.items():
        if value is True or name in ("TS", "sack"):
            parts.append(name)
        else:
            parts.append(f"{name} {value}")
    return f" [{','.join(parts)}]" if parts else ""


def segment_label(
    event: Record, absolute: bool = False, numbers: tuple[int, int] | None = None
) -> str:
    """`flags seq N [ack N] win N [len N] [options] (note)`; `numbers` are
    relative seq/ack worked out by the caller when the event has none."""
    flags = event["flags"]
    seq, ack = (event["seq"], event["ack"]) if absolute else (numbers or (0, 0))
    text = f"{flags} seq {seq}"
    if "." in flags:
        text += f" ack {ack}"
    text += f" win {event['window']}"
    if event["length"]:
        text += f" len {event['length']}"
    if "S" in flags:
        text += _options_text(event.get("options") or {})
    note = event.get("note") or ""
    if LOST_NOTE in note:
        note = note.replace(LOST_NOTE, "lost")
    if note:
        text += f" ({note})"
    return text


def relative_numbers(events: Sequence[Record]) -> dict[int, tuple[int, int]]:
    """Relative (seq, ack) per segment event (by id). Events of the
    connection carry them; the stack's id-less replies on the same 4-tuple
    (a RST after the end) get them from the ISS and IRS the others imply."""
    iss = irs = None
    for event in events:
        if event["type"] != "segment" or event.get("conn") is None:
            continue
        base = (event["seq"] - event["rel_seq"]) & _MASK
        if event["direction"] == "out" and iss is None:
            iss = base
        elif event["direction"] == "in" and irs is None:
            irs = base
    numbers = {}
    for event in events:
        if event["type"] != "segment":
            continue
        if event.get("conn") is not None:
            numbers[id(event)] = (event["rel_seq"], event["rel_ack"])
            continue
        ours, theirs = (irs, iss) if event["direction"] == "in" else (iss, irs)
        seq = (event["seq"] - ours) & _MASK if ours is not None else event["seq"]
        ack = (event["ack"] - theirs) & _MASK if theirs is not None else event["ack"]
        numbers[id(event)] = (seq, ack)
    return numbers


def build_ladder(
    events: Iterable[Record | TraceEvent], absolute: bool = False, conn: int | None = None
) -> Ladder:
    """The rows of one connection's ladder. `events` are that connection's
    (see `choose_connection`), or a whole trace with `conn` to pick one."""
    records = as_records(events)
    summary = choose_connection(records, conn)
    records = summary.events
    numbers = relative_numbers(records)
    start = records[0]["time"]
    peer_start = next((e["old"] for e in records if e["type"] == "peer_state"), "")
    ladder = Ladder(
        summary.conn, summary.peer, summary.us, summary.passive, peer_start, summary.first_state, []
    )
    rows = ladder.rows

    def ms(event: Record) -> float:
        return (event["time"] - start) * 1000.0

    shown = summary.first_state  # ustack's state as the ladder shows it so far
    pending_state: tuple[float, str] | None = None  # a change no arrow showed yet
    pending_peer: tuple[float, str] | None = None
    pending_notes: list[tuple[float, str]] = []  # timers set just before a segment goes out
    running: set[str] = set()

    def flush_notes() -> None:
        for at, text in pending_notes:
            rows.append(Row(at, "note", note=text))
        pending_notes.clear()

    def flush_state() -> None:
        nonlocal pending_state
        if pending_state is not None:
            rows.append(Row(pending_state[0], "state", ustack_state=pending_state[1]))
            pending_state = None

    def flush_peer() -> None:
        nonlocal pending_peer
        if pending_peer is not None:
            rows.append(Row(pending_peer[0], "state", peer_state=pending_peer[1]))
            pending_peer = None

    for event in records:
        kind = event["type"]
        if kind == "segment":
            at = ms(event)
            direction = event["direction"]
            # A change of ours shows on the segment it sends (CLOSE -> FIN);
            # a timer set for that segment shows after it.
            if direction != "out" or any(t != at for t, _ in pending_notes):
                flush_notes()
            if pending_state is not None and not (direction == "out" and pending_state[0] == at):
                flush_state()
            # The peer changes state and then sends (SYN_SENT, then the SYN).
            if direction != "in":
                flush_peer()
            row = Row(
                at,
                "arrow",
                direction,
                event["flags"],
                segment_label(event, absolute, numbers[id(event)]),
                LOST_NOTE in (event.get("note") or ""),
            )
            if pending_peer is not None:
                row.peer_state = pending_peer[1]
                pending_peer = None
            if event.get("conn") is not None:
                if pending_state is not None or event["state_after"] != shown:
                    row.ustack_state = shown = event["state_after"]
                pending_state = None
            rows.append(row)
            flush_notes()
        elif kind == "state":
            if event["new"] != shown:
                flush_state()
                pending_state = (ms(event), event["new"])
                shown = event["new"]
        elif kind == "timer":
            name, action = event["timer"], event["action"]
            when_set, when_fired = _TIMER_NOTES.get(name, (name + " set {}", name + " fired"))
            if action == "set":
                # Re-arming a running timer (every new segment) is noise.
                if name not in running and event.get("deadline") is not None:
                    delay = _duration(event["deadline"] - event["time"])
                    pending_notes.append((ms(event), when_set.format(delay)))
                running.add(name)
            elif action == "fired":
                flush_notes()
                flush_state()
                flush_peer()
                running.discard(name)
                rows.append(Row(ms(event), "note", note=when_fired))
            else:
                running.discard(name)
                unset = when_set.split("{}")[0]
                pending_notes[:] = [(t, n) for t, n in pending_notes if not n.startswith(unset)]
        elif kind == "peer_state":
            flush_peer()
            pending_peer = (ms(event), event["new"])
    flush_notes()
    flush_state()
    flush_peer()
    return ladder


# ---- ASCII -----------------------------------------------------------------------------

_MIN_SPAN = 50  # with the columns around it, a 100-column terminal


def _ascii_room(row: Row) -> int:
    """Columns an arrow needs besides its label: its ends and a few dashes."""
    return 13 if row.direction == "in" and row.lost else 11


def _ascii_arrow(row: Row, span: int) -> str:
    label = f" {row.label} "
    if row.direction == "in":
        tail = "X   " if row.lost else ">"
        return "-----" + label + "-" * (span - 5 - len(label) - len(tail)) + tail
    head = "  X--" if row.lost else "<----"
    return head + label + "-" * (span - 5 - len(label))


def render_ascii(events: Iterable[Record | TraceEvent], absolute: bool = False) -> str:
    """The ladder as text for a terminal (100 columns for usual labels)."""
    ladder = build_ladder(events, absolute)
    span = max([_MIN_SPAN] + [len(r.label) + _ascii_room(r) for r in ladder.rows if r.label])
    blank = " " * span
    # The margins are as wide as their widest entry, to leave the arrows room.
    times = [f"{row.time_ms:.3f}" for row in ladder.rows]
    time_w = max(len("time ms"), *map(len, times))
    peers = [ladder.peer_start] + [row.peer_state for row in ladder.rows]
    peer_w = max(len("Linux peer"), *map(len, peers))

    def line(time: str, peer: str, middle: str, right: str) -> str:
        return f"{time:>{time_w}} {peer:>{peer_w}} |{middle}|  {right}".rstrip()

    out = [
        ladder.title,
        "",
        # Each name stands on its lifeline: "Linux peer" ends on it, "ustack" starts on it.
        f"{'time ms':>{time_w}} {'Linux peer':>{peer_w + 1}}{'':{span}}ustack",
        line("", ladder.peer_start, blank, ladder.ustack_start),
    ]
    last_time: float | None = None
    for row, time in zip(ladder.rows, times, strict=True):
        # Notes and state rows at the time of the row above leave it blank.
        if row.kind != "arrow" and row.time_ms == last_time:
            time = ""
        last_time = row.time_ms
        if row.kind == "arrow":
            out.append(line(time, row.peer_state, _ascii_arrow(row, span), row.ustack_state))
        elif row.kind == "note":
            out.append(line(time, "", blank, f"({row.note})"))
        else:
            out.append(line(time, row.peer_state, blank, row.ustack_state))
    return "\n".join(out) + "\n"


# ---- SVG -------------------------------------------------------------------------------

_CHAR_PX = 7.2  # a 12 px monospace glyph, near enough for layout
_ROW_PX = 38
_SLANT_PX = 16  # how far an arrow drops on its way: time passes in flight
_COLOURS = {"in": "#1f5fa8", "out": "#b5541b", "rst": "#c62828", "lost": "#7a7a7a"}


def render_svg(events: Iterable[Record | TraceEvent], absolute: bool = False) -> str:
    """The ladder as a self-contained SVG: no fonts, scripts or links outside."""
    ladder = build_ladder(events, absolute)
    longest = max((len(r.label) for r in ladder.rows if r.kind == "arrow"), default=0)
    peer_x = 220.0
    span = max(460.0, longest * _CHAR_PX + 60)
    us_x = peer_x + span
    right = max((len(r.ustack_state or r.note) + 2 for r in ladder.rows), default=12)
    width = us_x + 24 + max(right, 14) * _CHAR_PX
    top = 112.0
    height = top + len(ladder.rows) * _ROW_PX + 40

    parts: list[str] = []
    add = parts.append
    add(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="monospace" font-size="12">'
    )
    add(f"<title>{escape(ladder.title)}</title>")
    add("<defs>")
    for name, colour in _COLOURS.items():
        add(
            f'<marker id="head-{name}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" '
            f'markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
            f'fill="{colour}"/></marker>'
        )
    add("</defs>")
    add(f'<rect width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>')
    add(_svg_text(12, 22, ladder.title, weight="bold"))
    for x, name in ((peer_x, "Linux peer"), (us_x, "ustack")):
        add(
            f'<rect x="{x - 60:.1f}" y="38" width="120" height="26" rx="4" fill="#eef2f7" '
            f'stroke="#44546a"/>'
        )
        add(_svg_text(x, 55, name, anchor="middle", weight="bold"))
        add(
            f'<line x1="{x:.1f}" y1="64" x2="{x:.1f}" y2="{height - 16:.1f}" stroke="#44546a" '
            f'stroke-dasharray="4 3"/>'
        )
    add(_svg_text(80, 90, "time ms", anchor="end", colour="#555555"))
    if ladder.peer_start:
        add(_svg_text(peer_x - 8, 90, ladder.peer_start, anchor="end", weight="bold"))
    add(_svg_text(us_x + 8, 90, ladder.ustack_start, weight="bold"))

    last_time: float | None = None
    for index, row in enumerate(ladder.rows):
        y = top + index * _ROW_PX
        if row.kind == "arrow" or row.time_ms != last_time:
            add(_svg_text(80, y + 4, f"{row.time_ms:.3f}", anchor="end", colour="#555555"))
        last_time = row.time_ms
        # A state goes where it changed: the sender's beside the arrow's
        # start (it sent in that state), the receiver's beside its head.
        peer_y = us_y = y
        if row.kind == "arrow":
            add(_svg_arrow(row, peer_x, us_x, y))
            if row.direction == "in":
                us_y += _SLANT_PX
            else:
                peer_y += _SLANT_PX
        if row.peer_state:
            add(_svg_text(peer_x - 8, peer_y + 4, row.peer_state, anchor="end", weight="bold"))
        if row.ustack_state:
            add(_svg_text(us_x + 8, us_y + 4, row.ustack_state, weight="bold"))
        if row.note:
            add(_svg_text(us_x + 8, y + 4, row.note, colour="#666666", italic=True))
    add("</svg>")
    return "\n".join(parts) + "\n"


def _svg_text(
    x: float,
    y: float,
    text: str,
    anchor: str = "start",
    colour: str = "#1a1a1a",
    weight: str = "normal",
    italic: bool = False,
) -> str:
    style = ' font-style="italic"' if italic else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{colour}" '
        f'font-weight="{weight}"{style}>{escape(text)}</text>'
    )


def _svg_arrow(row: Row, peer_x: float, us_x: float, y: float) -> str:
    x1, x2 = (peer_x, us_x) if row.direction == "in" else (us_x, peer_x)
    y2 = y + _SLANT_PX
    colour_key = "lost" if row.lost else ("rst" if "R" in row.flags else row.direction)
    colour = _COLOURS[colour_key]
    # A lost segment's line stops three quarters across; its label centres on what is drawn.
    reach = 0.75 if row.lost else 1.0
    end_x, end_y = x1 + (x2 - x1) * reach, y + (y2 - y) * reach
    mid_x, mid_y = (x1 + end_x) / 2, (y + end_y) / 2
    # The label runs along its arrow, just above it, read left to right.
    angle = math.degrees(math.atan2(y2 - y, abs(x2 - x1))) * (1 if x2 > x1 else -1)
    label = (
        f'<g transform="rotate({angle:.2f} {mid_x:.1f} {mid_y:.1f})">'
        f"{_svg_text(mid_x, mid_y - 5, row.label, anchor='middle', colour=colour)}</g>"
    )
    if not row.lost:
        return (
            f'<g><line x1="{x1:.1f}" y1="{y:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" '
            f'stroke-width="1.6" marker-end="url(#head-{colour_key})"/>{label}</g>'
        )
    cross = " ".join(
        f'<line x1="{end_x - 6:.1f}" y1="{end_y + dy:.1f}" x2="{end_x + 6:.1f}" '
        f'y2="{end_y - dy:.1f}" stroke="{colour}" stroke-width="2"/>'
        for dy in (-6, 6)
    )
    return (
        f'<g><line x1="{x1:.1f}" y1="{y:.1f}" x2="{end_x:.1f}" y2="{end_y:.1f}" '
        f'stroke="{colour}" stroke-width="1.6" stroke-dasharray="6 3"/>{cross}{label}</g>'
    )


# ---- Mermaid ---------------------------------------------------------------------------

# Mermaid reads ';' as a line break and '#' as the start of an entity code.
_MERMAID_ESCAPES = str.maketrans({"#": "#35;", ";": "#59;"})


def render_mermaid(events: Iterable[Record | TraceEvent], absolute: bool = False) -> str:
    """The ladder as a Mermaid sequenceDiagram (GitHub renders it in Markdown)."""
    ladder = build_ladder(events, absolute)

    def clean(text: str) -> str:
        return text.translate(_MERMAID_ESCAPES)

    out = [
        "sequenceDiagram",
        "    participant P as Linux peer",
        "    participant U as ustack",
        # No "<->" here: Mermaid passes note text through an HTML sanitizer.
        f"    Note over P,U: connection {ladder.conn}, {ladder.peer} - {ladder.us}",
    ]
    if ladder.peer_start:
        out.append(f"    Note over P: {ladder.peer_start}")
    if ladder.ustack_start:
        out.append(f"    Note over U: {ladder.ustack_start}")
    for row in ladder.rows:
        if row.kind == "arrow":
            ends = "P", "U"
            if row.direction == "out":
                ends = "U", "P"
            arrow = "-x" if row.lost else "->>"
            out.append(f"    {ends[0]}{arrow}{ends[1]}: {row.time_ms:.3f} ms {clean(row.label)}")
        elif row.kind == "note":
            out.append(f"    Note over U: {clean(row.note)}")
        if row.peer_state:
            out.append(f"    Note over P: {row.peer_state}")
        if row.ustack_state:
            out.append(f"    Note over U: {row.ustack_state}")
    return "\n".join(out) + "\n"


RENDERERS = {"ascii": render_ascii, "svg": render_svg, "mermaid": render_mermaid}


# ---- command line ----------------------------------------------------------------------


def add_ladder_arguments(parser: argparse.ArgumentParser) -> None:
    """`ustack ladder TRACE [--conn ID] [--format F] [-o FILE] [--absolute]`."""
    parser.add_argument("trace", type=Path, help="a JSONL trace (ustack serve --trace X.jsonl)")
    parser.add_argument("--conn", type=int, help="the connection to draw (see the listing)")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="ascii (default), svg or mermaid; default from -o's suffix (.svg, .mmd, .md)",
    )
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    parser.add_argument(
        "--absolute", action="store_true", help="absolute sequence numbers (default: relative)"
    )


def _format_for(args: argparse.Namespace) -> str:
    if args.format:
        return str(args.format)
    suffix = args.output.suffix.lower() if args.output else ""
    return {".svg": "svg", ".mmd": "mermaid", ".mermaid": "mermaid", ".md": "mermaid"}.get(
        suffix, "ascii"
    )


def report_error(exc: TraceError) -> int:
    """Print a listing (if any) to stdout and the one-line error to stderr."""
    if isinstance(exc, ChooseConnection):
        print(exc.listing)
    print(f"ustack: error: {exc}", file=sys.stderr)
    return 1


def ladder_command(args: argparse.Namespace) -> int:
    try:
        events = load_trace(args.trace)
        summary = choose_connection(events, args.conn, str(args.trace))
        text = RENDERERS[_format_for(args)](summary.events, args.absolute)
    except TraceError as exc:
        return report_error(exc)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"ustack: error: {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
