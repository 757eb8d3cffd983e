"""Trace sinks: where trace events and raw packets go (JSON lines, text, pcap;
pcapng in pcapng.py), filters in front of them, and the set of files a daemon writes.

The records themselves, and the `Tracer` type the core calls, live in
`ustack.trace.records`; the sans-I/O core never imports this module.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import struct
import time
from collections import Counter
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import IO
from typing import TYPE_CHECKING
from typing import Any
from typing import Protocol

from ustack.study.packet_view import view
from ustack.trace.records import TRACE_SCHEMA_VERSION
from ustack.trace.records import DatagramEvent
from ustack.trace.records import Decision
from ustack.trace.records import Drop
from ustack.trace.records import FaultEvent
from ustack.trace.records import NewConnection
from ustack.trace.records import PacketTap
from ustack.trace.records import PeerStateChange
from ustack.trace.records import SegmentEvent
from ustack.trace.records import StateChange
from ustack.trace.records import TimerEvent
from ustack.trace.records import TraceEvent
from ustack.trace.records import Tracer
from ustack.trace.records import endpoint
from ustack.trace.records import event_dict
from ustack.trace.records import four_tuple_text
from ustack.trace.vocabulary import FaultAction
from ustack.wire.address import format_address
from ustack.wire.address import parse_address

if TYPE_CHECKING:
    from ustack.study.pcapng import PcapngWriter

log = logging.getLogger("ustack.trace")

# ---- filtering ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceFilter:
    """Keep only what involves these ports / addresses (empty: everything).
    Addresses of either family, held in the text the records use (RFC 5952
    for IPv6: `2001:0002::0002` given matches `2001:2::2` written)."""

    ports: frozenset[int] = field(default_factory=frozenset)
    addresses: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        canonical = frozenset(format_address(parse_address(text)) for text in self.addresses)
        object.__setattr__(self, "addresses", canonical)

    def __bool__(self) -> bool:
        return bool(self.ports or self.addresses)

    def matches(self, addresses: Iterable[str], ports: Iterable[int]) -> bool:
        if self.ports and not self.ports.intersection(ports):
            return False
        return not self.addresses or bool(self.addresses.intersection(addresses))

    def matches_packet(self, packet: bytes) -> bool:
        """An IPv4 or IPv6 packet's addresses and, for TCP and UDP, ports."""
        seen = view(packet)
        if seen is None:
            return not self
        ports = seen.ports(packet) or ()
        return self.matches((seen.text(seen.src), seen.text(seen.dst)), ports)


class Filtered:
    """A tracer that passes on only the events of matching connections."""

    def __init__(self, sink: Tracer, trace_filter: TraceFilter) -> None:
        self._sink = sink
        self._filter = trace_filter
        self._wanted: set[int] = set()

    def __call__(self, event: TraceEvent) -> None:
        if isinstance(event, NewConnection):
            ends = ((event.local, event.remote), (event.local_port, event.remote_port))
            if not self._filter.matches(*ends):
                return
            self._wanted.add(event.conn)
        elif isinstance(event, DatagramEvent) or (
            isinstance(event, SegmentEvent | PeerStateChange | FaultEvent) and event.conn is None
        ):
            ends = ((event.local, event.remote), (event.local_port, event.remote_port))
            if not self._filter.matches(*ends):
                return
        elif isinstance(event, Drop):
            if self._filter:
                return
        elif event.conn not in self._wanted:
            return
        self._sink(event)


class FanOut:
    """Several tracers fed from one place."""

    def __init__(self, sinks: list[Tracer]) -> None:
        self._sinks = sinks

    def __call__(self, event: TraceEvent) -> None:
        for sink in self._sinks:
            sink(event)


# ---- writers -------------------------------------------------------------------------------


class TextStream(Protocol):
    """Where the text and JSON-lines writers put their lines (a file, a TraceFile)."""

    def write(self, text: str, /) -> object: ...
    def flush(self) -> object: ...
    def isatty(self) -> bool: ...


class BinaryStream(Protocol):
    """Where the pcap writer puts its records."""

    def write(self, data: bytes, /) -> object: ...
    def flush(self) -> object: ...


JSONL_HEADER = json.dumps({"type": "header", "schema": TRACE_SCHEMA_VERSION}) + "\n"


class JsonlWriter:
    """One JSON object per line; the first line names the schema version.
    Connection events carry their 4-tuple, so a line reads on its own.
    header=False: the stream writes the header itself (a TraceFile does, at
    the top of each file it starts)."""

    def __init__(self, stream: TextStream, header: bool = True) -> None:
        self._stream = stream
        self._tuples: dict[int, str] = {}
        if header:
            stream.write(JSONL_HEADER)
            stream.flush()

    def __call__(self, event: TraceEvent) -> None:
        record = event_dict(event)
        if isinstance(event, NewConnection):
            self._tuples[event.conn] = four_tuple_text(
                event.local, event.local_port, event.remote, event.remote_port
            )
        conn = record.get("conn")
        if conn is not None and "tuple" not in record and conn in self._tuples:
            record["tuple"] = self._tuples[conn]
        self._stream.write(json.dumps(record) + "\n")
        self._stream.flush()


_COLOURS = {"in": "\033[36m", "out": "\033[33m", "state": "\033[1;32m", "drop": "\033[31m",
            "decision": "\033[35m", "timer": "\033[2m"}  # fmt: skip
_RESET = "\033[0m"


def format_options(options: dict[str, Any]) -> str:
    parts = []
    for name, value in options.items():
        if value is True:
            parts.append(name)
        elif isinstance(value, list | tuple):
            parts.append(f"{name} {' '.join(str(v) for v in value)}")
        else:
            parts.append(f"{name} {value}")
    return f" [{','.join(parts)}]" if parts else ""


class TextWriter:
    """One aligned line per event, tcpdump-like plus states; coloured on a TTY."""

    def __init__(self, stream: TextStream, colour: bool | None = None) -> None:
        self._stream = stream
        self._colour = stream.isatty() if colour is None else colour
        self._start: float | None = None

    def __call__(self, event: TraceEvent) -> None:
        if self._start is None:
            self._start = event.time
        kind, text = format_event(event)
        stamp = f"{event.time - self._start:11.6f}"
        line = f"{stamp} {text}"
        if self._colour:
            line = f"{_COLOURS.get(kind, '')}{line}{_RESET}"
        self._stream.write(line + "\n")
        self._stream.flush()


def format_event(event: TraceEvent) -> tuple[str, str]:
    """(colour class, text) of one event, without the time: the connection
    column ("#7", "#-" for none) and what happened."""
    conn = getattr(event, "conn", None)
    kind, text = _event_text(event)
    return kind, f"{'#' + ('-' if conn is None else str(conn)):<6} {text}"


# The lines that are only their record's fields: (colour class, template of
# the record `e`).
_TEMPLATE_LINES: dict[type, tuple[str, str]] = {
    StateChange: ("state", "state {e.old} -> {e.new}  ({e.event.name}; {e.rule}: {e.why})"),
    Decision: ("decision", "note  {e.what} ({e.rule})"),
    Drop: ("drop", "drop  {e.layer}: {e.reason} {e.summary}"),  # the summary may be ""
}


def _event_text(event: TraceEvent) -> tuple[str, str]:
    template_line = _TEMPLATE_LINES.get(type(event))
    if template_line is not None:
        kind, template = template_line
        return kind, template.format(e=event).rstrip()
    if isinstance(event, SegmentEvent):
        arrow = ">" if event.direction == "in" else "<"
        ends = (
            f"{endpoint(event.remote, event.remote_port)} {arrow} "
            f"{endpoint(event.local, event.local_port)}"
        )
        states = (
            event.state_after
            if event.state_before == event.state_after
            else f"{event.state_before} -> {event.state_after}"
        )
        note = f"  ({event.note})" if event.note else ""
        return event.direction, (
            f"{event.direction:<3} {ends:<45} {event.flags:<4} seq {event.rel_seq}"
            f" ack {event.rel_ack} win {event.window} len {event.length}"
            f"{' ' + event.ecn if event.ecn else ''}"
            f"{format_options(event.options)}  {states}{note}"
        )
    if isinstance(event, NewConnection):
        how = "passive" if event.passive else "active"
        return "state", (
            f"new   {endpoint(event.local, event.local_port)} <-> "
            f"{endpoint(event.remote, event.remote_port)} ({how} open)"
        )
    if isinstance(event, PeerStateChange):
        # (not a template: an IPv6 end is bracketed beside its port)
        return "state", (
            f"peer  {endpoint(event.remote, event.remote_port)} (Linux) {event.old} -> {event.new}"
        )
    if isinstance(event, DatagramEvent):
        arrow = ">" if event.direction == "in" else "<"
        ends = (
            f"{endpoint(event.remote, event.remote_port)} {arrow} "
            f"{endpoint(event.local, event.local_port)}"
        )
        return event.direction, f"{event.direction:<3} {ends:<45} UDP  len {event.length}"
    if isinstance(event, TimerEvent):
        when = f" at +{event.deadline - event.time:.3f}s" if event.deadline is not None else ""
        return "timer", f"timer {event.timer} {event.action}{when}"
    assert isinstance(event, FaultEvent), event
    extra = f" by {event.delay:.3f}s" if event.action == FaultAction.DELAY else ""
    return "drop", (
        f"fault {event.action}{extra} {event.direction} {event.flags} "
        f"seq {event.rel_seq} ack {event.rel_ack} len {event.length} (rule {event.rule})"
    )


def pcap_header(snaplen: int = 65535) -> bytes:
    """A classic pcap file's global header: magic, version 2.4, GMT offset,
    accuracy, snaplen, link type (LINKTYPE_RAW: raw IP, each packet's
    version nibble says IPv4 or IPv6)."""
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, PcapWriter.LINKTYPE_RAW)


class PcapWriter:
    """Raw IP packets, IPv4 and IPv6 alike, as a classic pcap file
    (LINKTYPE_RAW, 101: no link header; readers tell the family by the
    version nibble), for Wireshark and tshark. Timestamps are the wall
    clock at write time. header=False: the stream writes the global header
    itself (as JsonlWriter)."""

    LINKTYPE_RAW = 101

    def __init__(self, stream: BinaryStream, snaplen: int = 65535, header: bool = True) -> None:
        self._stream = stream
        self._snaplen = snaplen
        if header:
            stream.write(pcap_header(snaplen))
            stream.flush()

    def __call__(self, direction: str, packet: bytes, _now: float) -> None:
        stamp = time.time()
        seconds = int(stamp)
        micros = int((stamp - seconds) * 1_000_000)
        data = packet[: self._snaplen]
        # One write per record: a TraceFile rotates between records, never inside one.
        self._stream.write(struct.pack("<IIII", seconds, micros, len(data), len(packet)) + data)
        self._stream.flush()


class FilteredTap:
    """A packet tap that passes on only the packets the filter keeps."""

    def __init__(self, sink: PacketTap, trace_filter: TraceFilter) -> None:
        self._sink = sink
        self._filter = trace_filter

    def __call__(self, direction: str, packet: bytes, now: float) -> None:
        if self._filter.matches_packet(packet):
            self._sink(direction, packet, now)


TRACE_FORMATS = ("text", "jsonl", "pcap", "pcapng")


def format_for(path: Path) -> str:
    """The format a trace file's name suggests: .pcap, .pcapng, .jsonl/.json, else text."""
    suffix = path.suffix.lower()
    if suffix in (".pcapng", ".ntar"):
        return "pcapng"
    if suffix in (".pcap", ".cap"):
        return "pcap"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    return "text"


@dataclass(frozen=True)
class TraceSpec:
    path: Path  # "-" writes to stderr (text or jsonl)
    format: str


@dataclass(frozen=True)
class TraceRotation:
    """When a trace file has max_bytes, it is renamed FILE.1 (FILE.1 to FILE.2,
    and so on: `keep` old files) and a fresh FILE started, with its header."""

    max_bytes: int | None = None  # None: one file, however large
    keep: int = 1


class TraceOutputError(Exception):
    """A trace file could not be opened; the message says which and why."""


class TraceFile:
    """One trace output (a file, or stderr for "-"): each write is one whole
    record, flushed at once, so the file always ends on a record boundary.

    A failed write (ENOSPC, EPIPE from a reader that went away...) stops
    this output only: one error line, one call of `on_error`, nothing more
    written; the stack serves on. `reopen()` (SIGHUP) starts the file again
    where its path now points (logrotate moved it), and with `rotation`
    it rotates itself by size; each new file starts with `header`."""

    def __init__(
        self, path: Path, header: bytes, rotation: TraceRotation, on_error: Callable[[], None]
    ) -> None:
        self.path = path
        self._header = header
        self._on_error = on_error
        self._stderr = str(path) == "-"
        # Only a regular file can be rotated or reopened (not stderr, a FIFO, /dev/full).
        self._regular = not self._stderr and (not path.exists() or path.is_file())
        self._max_bytes = rotation.max_bytes if self._regular else None
        self._keep = rotation.keep
        # stderr through a file of our own (a dup of fd 2): after a failed
        # write, its buffer is ours to drop, not sys.stderr's to retry at exit.
        self._stream: IO[bytes] | None = (
            os.fdopen(os.dup(2), "wb") if self._stderr else open(path, "wb")  # noqa: SIM115 (open for the daemon's life; close() shuts it)
        )
        self._tty = self._stream.isatty()
        self._size = 0
        if header:
            self.write(header)

    def isatty(self) -> bool:
        return self._tty

    def flush(self) -> None:
        """Nothing to do: write() flushes each record."""

    def write(self, record: str | bytes, /) -> None:
        stream = self._stream
        if stream is None:  # stopped by a failed write
            return
        data = record.encode() if isinstance(record, str) else record
        try:
            if (
                self._max_bytes is not None
                and self._size + len(data) > self._max_bytes
                and self._size > len(self._header)  # a record larger than a file still goes in
            ):
                stream = self._rotate()
            stream.write(data)
            stream.flush()
        except OSError as exc:
            self._fail(exc)
            return
        self._size += len(data)

    def reopen(self) -> bool:
        """Close the file and open its path again, appending (a file still
        there is continued, without a second header); True if reopened.
        Also retries a file stopped by a failed write."""
        if not self._regular:
            return False
        self._close_quietly()
        try:
            self._stream = open(self.path, "ab")  # noqa: SIM115 (as above)
            self._size = self._stream.tell()
            if self._size == 0:
                self._stream.write(self._header)
                self._stream.flush()
                self._size = len(self._header)
        except OSError as exc:
            self._fail(exc)
            return False
        return True

    def close(self) -> None:
        """Closing never raises: what could not be written was reported."""
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except OSError as exc:
                self._report(exc)

    def _rotate(self) -> IO[bytes]:
        """FILE.(keep-1) -> FILE.keep, ..., FILE -> FILE.1; a fresh FILE."""
        assert self._stream is not None
        self._stream.close()
        self._stream = None
        for n in range(self._keep - 1, 0, -1):
            older = self._numbered(n)
            if older.exists():
                older.replace(self._numbered(n + 1))
        if self.path.exists():  # (gone if someone moved it away meanwhile)
            self.path.replace(self._numbered(1))
        stream = self._stream = open(self.path, "wb")  # noqa: SIM115 (as above)
        stream.write(self._header)
        self._size = len(self._header)
        return stream

    def _numbered(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")

    def _fail(self, exc: OSError) -> None:
        self._close_quietly()
        self._report(exc)

    def _report(self, exc: OSError) -> None:
        self._on_error()
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        where = "stderr" if self._stderr else str(self.path)
        log.error("cannot write the trace %s: %s (%s); that trace is stopped", where,
                  exc.strerror or exc, code)  # fmt: skip

    def _close_quietly(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(OSError):  # the data left in its buffer is given up
                stream.close()


class TraceSinks:
    """The open trace outputs of a daemon: one tracer and one packet tap that
    feed every writer (each through the filter), and their files. Failed
    writes are counted in `counters` (trace.write_errors)."""

    def __init__(
        self,
        specs: list[TraceSpec],
        trace_filter: TraceFilter | None = None,
        rotation: TraceRotation | None = None,
    ) -> None:
        self.files: list[TraceFile] = []
        self.counters: Counter[str] = Counter()
        self._pcapng: list[PcapngWriter] = []
        try:
            self._open(specs, trace_filter, rotation or TraceRotation())
        except OSError as exc:
            self.close()
            raise TraceOutputError(
                f"cannot write the trace {exc.filename}: {exc.strerror}"
            ) from None

    def _open(
        self, specs: list[TraceSpec], trace_filter: TraceFilter | None, rotation: TraceRotation
    ) -> None:
        # (pcapng builds on this module's text lines: imported here, not at the top)
        from ustack.study.pcapng import PcapngWriter
        from ustack.study.pcapng import pcapng_header

        tracers: list[Tracer] = []
        taps: list[PacketTap] = []
        for spec in specs:
            header = pcap_header() if spec.format == "pcap" else b""
            if spec.format == "jsonl":
                header = JSONL_HEADER.encode()
            elif spec.format == "pcapng":
                header = pcapng_header()
            file = TraceFile(spec.path, header, rotation, self._count_write_error)
            self.files.append(file)
            if spec.format == "pcapng":
                # Packets and the events that explain them, in one writer.
                pcapng = PcapngWriter(file, header=False)
                self._pcapng.append(pcapng)
                taps.append(pcapng.tap)
                tracers.append(pcapng)
            elif spec.format == "pcap":
                taps.append(PcapWriter(file, header=False))
            elif spec.format == "jsonl":
                tracers.append(JsonlWriter(file, header=False))
            else:
                tracers.append(TextWriter(file))
        self.tracer: Tracer | None = None
        self.tap: PacketTap | None = None
        if tracers:
            tracer: Tracer = tracers[0] if len(tracers) == 1 else FanOut(tracers)
            self.tracer = Filtered(tracer, trace_filter) if trace_filter else tracer
        if taps:
            tap = taps[0] if len(taps) == 1 else _fan_out_taps(taps)
            self.tap = FilteredTap(tap, trace_filter) if trace_filter else tap

    def count_into(self, counters: Counter[str]) -> None:
        """Count in `counters` from now on (the stack's, which `ustack stats`
        shows), with what was counted so far (a header that failed at start)."""
        counters.update(self.counters)
        self.counters = counters

    def _count_write_error(self) -> None:
        self.counters["trace.write_errors"] += 1

    def reopen(self) -> int:
        """SIGHUP: every file opened again at its path; how many were."""
        return sum(file.reopen() for file in self.files)

    def settle(self) -> None:
        """After a batch of packets handled: a pcapng writes the packet it
        held for its reasons (every one it caused has been traced)."""
        for pcapng in self._pcapng:
            pcapng.settle()

    def close(self) -> None:
        self.settle()
        for file in self.files:
            file.close()


def _fan_out_taps(taps: list[PacketTap]) -> PacketTap:
    def tap(direction: str, packet: bytes, now: float) -> None:
        for each in taps:
            each(direction, packet, now)

    return tap
