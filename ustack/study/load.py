"""Reading a trace: a JSONL file into records, one connection's records out
of a trace, and the vocabulary members behind a record's strings.

`ustack ladder` and `ustack explain` both start here. A trace is read as
plain dicts (schema 3, see docs/trace-format.md; schema 2 reads too), so a
file from another ustack build, a test or a hand edit reads the same way.
Every way a file can be wrong is a TraceError with a one-line message.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import string
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ustack.trace import records as trace_records
from ustack.trace.vocabulary import LOST_NOTE, FaultAction, Note, SegmentNote

Record = dict[str, Any]

_MASK = 0xFFFFFFFF

# Required fields per event type, from the dataclasses that write them, so a
# truncated or foreign line fails at load time with its line number rather
# than as a KeyError deep in a renderer.
_REQUIRED: dict[str, tuple[str, ...]] = {
    name: tuple(f.name for f in dataclasses.fields(cls))
    for name, cls in (
        ("connection", trace_records.NewConnection),
        ("state", trace_records.StateChange),
        ("segment", trace_records.SegmentEvent),
        ("timer", trace_records.TimerEvent),
        ("decision", trace_records.Decision),
        ("drop", trace_records.Drop),
        ("peer_state", trace_records.PeerStateChange),
    )
}
# Optional in old writers' output: don't reject a file for these ("kind": schema 2).
_OPTIONAL = {"note", "deadline", "summary", "kind"}


class TraceError(Exception):
    """A trace that cannot be read or a connection that cannot be chosen;
    the message is one line, ready for stderr."""


class ChooseConnection(TraceError):
    """Several connections and no --conn: `listing` shows them."""

    def __init__(self, message: str, listing: str) -> None:
        super().__init__(message)
        self.listing = listing


def report_error(exc: TraceError) -> int:
    """Print a listing (if any) to stdout and the one-line error to stderr."""
    if isinstance(exc, ChooseConnection):
        print(exc.listing)
    print(f"ustack: error: {exc}", file=sys.stderr)
    return 1


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
    if header["schema"] not in trace_records.READABLE_SCHEMAS:
        raise TraceError(
            f"{path}: trace schema {header['schema']!r}; this ustack reads schema "
            f"{trace_records.TRACE_SCHEMA_VERSION}"
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


def as_records(events: Iterable[Record | trace_records.TraceEvent]) -> list[Record]:
    """Dicts as in a trace file; TraceEvent objects (a live tracer's) converted,
    and the fault injector's drops folded into the segments they hit."""
    records = [
        event if isinstance(event, dict) else trace_records.event_dict(event) for event in events
    ]
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
        if record.get("type") != "fault" or record.get("action") != FaultAction.DROP:
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


# ---- the vocabulary behind a record's strings ------------------------------------------


def is_lost(segment: Record) -> bool:
    """Whether the fault injector dropped this segment (see _fold_faults)."""
    return LOST_NOTE in (segment.get("note") or "")


def segment_note(segment: Record) -> SegmentNote | None:
    """Why the segment went out, the fault injector's mark left aside;
    None for a note this build does not know (a foreign or edited trace)."""
    text = (segment.get("note") or "").removesuffix(LOST_NOTE).rstrip()
    try:
        return SegmentNote(text)
    except ValueError:
        return None


@functools.cache
def _sentence_pattern(note: Note) -> re.Pattern[str]:
    """The Note's sentence with each "{field}" a named group."""
    pattern = ""
    for literal, name, _spec, _conversion in string.Formatter().parse(note.text):
        pattern += re.escape(literal)
        if name is not None:
            pattern += f"(?P<{name}>.*?)"
    return re.compile(pattern)


_NOTES_BY_KIND = {note.kind: note for note in Note}


def decision_note(decision: Record) -> tuple[Note | None, dict[str, str]]:
    """The Note behind a decision, and the values in its sentence: found by
    its kind (schema 3), else (a schema 2 trace, or a writer that gave no
    kind) by the sentence each Note's text makes. (None, {}) if neither."""
    what = str(decision.get("what", ""))
    named = _NOTES_BY_KIND.get(str(decision.get("kind") or ""))
    for note in [named] if named is not None else list(Note):
        match = _sentence_pattern(note).fullmatch(what)
        if match is not None:
            return note, match.groupdict()
    return (named, {}) if named is not None else (None, {})


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
