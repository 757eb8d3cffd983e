"""Reading a trace: a JSONL file into records and one connection's records
out of a trace (a line into a checked record, and a record's strings back to
the vocabulary: decode.py).

`ustack ladder` and `ustack explain` both start here. A trace is read as
plain dicts (schema 3, see docs/trace-format.md; schema 2 reads too), so a
file from another ustack build, a test or a hand edit reads the same way.

A trace can be far bigger than memory, so it is read a line at a time, twice:
a first pass keeps a small summary of each connection, a second keeps the
events of the one connection drawn. Memory follows that connection, not the
file. A file that is not a trace (no header, another schema) is a TraceError
with a one-line message; a bad line in a trace (not JSON, too long, a field
missing or of the wrong type) is skipped and counted, and the commands say
how many once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import IO

from ustack.study.decode import RECORD_CLASSES
from ustack.study.decode import Record as Record  # the readers' one name for a record
from ustack.study.decode import parse_event
from ustack.study.decode import parse_line
from ustack.trace import records as trace_records
from ustack.trace.vocabulary import LOST_NOTE
from ustack.trace.vocabulary import FaultAction

_MASK = 0xFFFFFFFF

# The longest line read: an event is a few hundred bytes; a longer line is
# skipped (and counted) without being held in memory whole.
MAX_LINE_BYTES = 1 << 20
MAX_LINE_LIMIT = 1 << 30  # --max-line-bytes at most (a line is read whole into memory)


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


# ---- reading a file ------------------------------------------------------------------


class TraceFile:
    """A JSONL trace, read a line at a time: each iteration is one pass over
    the file, yielding its events (the header checked, left out). Lines
    that do not make an event are skipped; a pass counts them in `skipped`
    and keeps the first one's number and fault for the message."""

    def __init__(self, stream: IO[bytes], name: str, max_line: int = MAX_LINE_BYTES) -> None:
        self._stream = stream  # seekable: every pass starts at the top
        self.name = name
        self.max_line = max_line
        self.skipped = 0
        self.first_skipped = ""

    def __iter__(self) -> Iterator[Record]:
        self.skipped, self.first_skipped = 0, ""
        return self._events(None)

    def holding(self, *needles: str) -> Iterator[Record]:
        """A pass over only the lines that hold one of `needles` (the
        skipped lines are the first pass's to count): a quick second pass."""
        return self._events(tuple(needle.encode() for needle in needles))

    def _events(self, needles: tuple[bytes, ...] | None) -> Iterator[Record]:
        self._stream.seek(0)
        lines = self._lines()
        first = next(lines, None)
        if first is None:
            raise TraceError(f"{self.name}: empty file, not a ustack trace")
        self._check_header(*first)
        for number, line, fault in lines:
            if needles is not None and not any(needle in line for needle in needles):
                continue
            record, fault = parse_event(line) if not fault else (None, fault)
            if record is None:
                if needles is None:
                    self._skip(number, fault)
            elif record["type"] in RECORD_CLASSES:
                yield record  # (another type, a later writer's, is no concern of ours)

    def _lines(self) -> Iterator[tuple[int, bytes, str]]:
        """(number, bytes, "") of each non-blank line; (number, b"", fault)
        for a line too long, which is not kept whole."""
        readline = self._stream.readline
        number = 0
        while line := readline(self.max_line + 1):
            number += 1
            if len(line) > self.max_line and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):  # the rest of it, a piece at a time
                    line = readline(1 << 16)
                yield number, b"", f"longer than {self.max_line:,} bytes"
            elif not line.isspace():
                yield number, line, ""

    def _skip(self, number: int, fault: str) -> None:
        self.skipped += 1
        if not self.first_skipped:
            self.first_skipped = f"line {number}: {fault}"

    def _check_header(self, number: int, line: bytes, fault: str) -> None:
        header, fault = parse_line(line) if not fault else (None, fault)
        if header is None or header.get("type") != "header" or "schema" not in header:
            # (a pcap, say): say what the first line is, if it is not even JSON
            why = f" (line {number} is {fault})" if fault else " (the first line is not its header)"
            raise TraceError(f"{self.name}: not a ustack JSONL trace{why}")
        if header["schema"] not in trace_records.READABLE_SCHEMAS:
            raise TraceError(
                f"{self.name}: trace schema {header['schema']!r:.20}; this ustack reads schema "
                f"{trace_records.TRACE_SCHEMA_VERSION}"
            )

    def skipped_note(self) -> str:
        """ "" or the one line that says how many lines were skipped."""
        if not self.skipped:
            return ""
        lines = "line" if self.skipped == 1 else "lines"
        first = self.first_skipped
        return f"{self.name}: skipped {self.skipped:,} malformed {lines} (the first, {first})"


@contextlib.contextmanager
def open_trace(path: str | Path, max_line: int = MAX_LINE_BYTES) -> Iterator[TraceFile]:
    """A trace file to read (twice), "-" for stdin. A pipe (stdin, or a
    shell's <(zcat t.jsonl.gz)) reads only once: it is copied to a
    temporary file first, so memory stays bounded for it too."""
    name = str(path)
    with contextlib.ExitStack() as stack:
        try:
            source: IO[bytes] = (
                sys.stdin.buffer if name == "-" else stack.enter_context(open(path, "rb"))
            )
            if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
                copy = stack.enter_context(tempfile.TemporaryFile())
                shutil.copyfileobj(source, copy, 1 << 20)
                source = copy
        except OSError as exc:
            raise TraceError(f"{name}: {exc.strerror or exc}") from None
        yield TraceFile(source, name, max_line)


def load_trace(path: str | Path) -> list[Record]:
    """The events of a (small) JSONL trace file, in a list; bad lines skipped."""
    with open_trace(path) as trace:
        return list(trace)


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


# ---- connections -----------------------------------------------------------------------

FourTuple = tuple[str, int, str, int]  # local, local_port, remote, remote_port


def _four_tuple(event: Record) -> FourTuple | None:
    try:
        return (event["local"], event["local_port"], event["remote"], event["remote_port"])
    except KeyError:
        return None


@dataclass(slots=True)
class ConnectionSummary:
    """One connection of a trace: what `ustack ladder` lists. A trace's first
    pass keeps one for each connection; `events` are filled in only for the
    connection chosen (see choose_connection)."""

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
        """198.18.0.1:40000 or [2001:2::1]:40000, as ss(8) writes them."""
        return trace_records.endpoint(self.ends[2], self.ends[3])

    @property
    def us(self) -> str:
        return trace_records.endpoint(self.ends[0], self.ends[1])

    def describe(self) -> str:
        how = {True: "passive", False: "active", None: "?"}[self.passive]
        states = f"{self.first_state or '?'} -> {self.last_state or '?'}"
        return f"{self.conn:>5}  {self.peer:>21} <-> {self.us:<21}  {how:<7}  {states}"


class _Census:
    """The connections of a trace, told one event at a time: which event is
    a connection's own, and a summary of each (no events kept)."""

    def __init__(self) -> None:
        self.found: dict[int, ConnectionSummary] = {}

    def admit(self, event: Record) -> ConnectionSummary | None:
        """The connection `event` belongs to by its id, if any, its summary
        brought up to date."""
        conn = event.get("conn")
        kind = event["type"]
        summary = self.found.get(conn) if conn is not None else None
        if summary is None:
            # A listener's state changes carry conn 0 and no connection event.
            if conn is None or kind == "state":
                return None
            ends = _four_tuple(event)
            if ends is None:
                return None  # a timer or decision of a connection we never saw opened
            passive = event.get("passive") if kind == "connection" else None
            summary = self.found[conn] = ConnectionSummary(conn, ends, passive, start=event["time"])
        if kind == "connection":  # the peer's first state may come before it
            summary.passive = event.get("passive")
        summary.end = event["time"]
        # ustack's first and last state, as its segments and state changes say.
        if kind == "segment":
            summary.first_state = summary.first_state or event["state_before"]
            summary.last_state = event["state_after"]
        elif kind == "state":
            summary.first_state = summary.first_state or event["old"]
            summary.last_state = event["new"]
        return summary


def _orphan_ends(event: Record) -> FourTuple | None:
    """The 4-tuple of an event that may belong to a connection without its
    id: the Linux side's states, and the stack's replies on its 4-tuple."""
    if event["type"] not in ("segment", "peer_state") or event.get("conn") is not None:
        return None
    return _four_tuple(event)


def connections(events: Iterable[Record]) -> list[ConnectionSummary]:
    """Every connection of a trace, in order of appearance (one pass, no
    events kept: see choose_connection for a connection's events)."""
    census = _Census()
    for event in events:
        census.admit(event)
    return list(census.found.values())


def _gather(
    events: Iterable[Record], chosen: ConnectionSummary, others: list[ConnectionSummary]
) -> list[Record]:
    """The events of `chosen`, in file order: its own, plus the Linux side's
    states and the stack's replies on its 4-tuple that carry no connection
    id, when they are its rather than those of another connection on the
    same 4-tuple (`others`, chosen among them)."""
    mine = _Census()  # (admits the chosen connection's events as the first pass did)
    gathered = []
    for event in events:
        conn = event.get("conn")
        if conn == chosen.conn and conn is not None:
            if mine.admit(event) is not None:
                gathered.append(event)
        elif _orphan_ends(event) == chosen.ends and _owner(event, others) is chosen:
            gathered.append(event)
    return gathered


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


def _listing(summaries: Sequence[ConnectionSummary]) -> str:
    head = f"{'conn':>5}  {'Linux peer':>21}     {'ustack':<21}  {'open':<7}  first -> last state"
    return "\n".join([head, *(s.describe() for s in summaries)])


def choose_connection(
    events: Iterable[Record], conn: int | None, source: str = "the trace"
) -> ConnectionSummary:
    """The connection `conn` of the trace, with its events; without an id,
    the only one. Raises ChooseConnection (with the listing) when several
    would do. `events` is read twice (a list, or a TraceFile: two passes)."""
    summaries = connections(events)
    if not summaries:
        datagrams = sum(1 for event in events if event.get("type") == "datagram")
        if datagrams:
            # UDP has no connection to tell: its datagrams are in the text
            # trace and on the pcapng frames, each with its line.
            raise TraceError(
                f"{source}: no connections in this trace, only {datagrams} UDP datagrams"
                " (the text and pcapng traces show them)"
            )
        raise TraceError(f"{source}: no connections in this trace")
    if conn is None:
        if len(summaries) > 1:
            raise ChooseConnection(
                f"{source} holds {len(summaries)} connections: choose one with --conn ID",
                _listing(summaries),
            )
        chosen = summaries[0]
    else:
        found = [s for s in summaries if s.conn == conn]
        if not found:
            ids = ", ".join(str(s.conn) for s in summaries[:20])
            more = f" and {len(summaries) - 20:,} more" if len(summaries) > 20 else ""
            raise TraceError(f"{source}: no connection {conn} (the trace has: {ids}{more})")
        chosen = found[0]
    others = [s for s in summaries if s.ends == chosen.ends]
    del summaries  # (only those on its 4-tuple matter now)
    if isinstance(events, TraceFile):
        # Each line of the connection holds its id, or its peer's port for
        # those without one, as digits (JSON writes an integer no other
        # way): the other lines need not be parsed again.
        events = events.holding(str(chosen.conn), str(chosen.ends[3]))
    chosen.events = _gather(events, chosen, others)
    return chosen


def _line_limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 64 <= value <= MAX_LINE_LIMIT:
        raise argparse.ArgumentTypeError(
            f"want a number of bytes from 64 to {MAX_LINE_LIMIT}, not {text!r}"
        )
    return value


def add_trace_arguments(parser: argparse.ArgumentParser) -> None:
    """The trace a reader (ladder, explain) reads, and its line limit."""
    parser.add_argument(
        "trace", type=Path, help="a JSONL trace (ustack serve --trace X.jsonl); - for stdin"
    )
    parser.add_argument(
        "--max-line-bytes",
        type=_line_limit,
        default=MAX_LINE_BYTES,
        metavar="N",
        help=f"skip (and count) longer lines (default {MAX_LINE_BYTES})",
    )


def read_connection(
    path: str | Path, conn: int | None, max_line: int = MAX_LINE_BYTES
) -> ConnectionSummary:
    """Connection `conn` of the trace file at `path` (see choose_connection),
    saying on stderr how many lines were skipped, if any."""
    with open_trace(path, max_line) as trace:
        try:
            return choose_connection(trace, conn, trace.name)
        finally:
            if trace.skipped:
                print(f"ustack: warning: {trace.skipped_note()}", file=sys.stderr)


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
