"""Trace sinks: where trace events and raw packets go (JSON lines, text, pcap),
filters in front of them, and the set of files a daemon writes.

The records themselves, and the `Tracer` type the core calls, live in
`ustack.trace.records`; the sans-I/O core never imports this module.
"""

from __future__ import annotations

import json
import struct
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ustack.trace.records import (
    TRACE_SCHEMA_VERSION,
    Decision,
    Drop,
    FaultEvent,
    NewConnection,
    PacketTap,
    PeerStateChange,
    SegmentEvent,
    StateChange,
    TimerEvent,
    TraceEvent,
    Tracer,
    dotted,
    event_dict,
)
from ustack.trace.vocabulary import FaultAction

# ---- filtering ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceFilter:
    """Keep only what involves these ports / addresses (empty: everything)."""

    ports: frozenset[int] = field(default_factory=frozenset)
    addresses: frozenset[str] = field(default_factory=frozenset)

    def __bool__(self) -> bool:
        return bool(self.ports or self.addresses)

    def matches(self, addresses: Iterable[str], ports: Iterable[int]) -> bool:
        if self.ports and not self.ports.intersection(ports):
            return False
        return not self.addresses or bool(self.addresses.intersection(addresses))

    def matches_packet(self, packet: bytes) -> bool:
        if len(packet) < 20:
            return not self
        src, dst = (
            dotted(int.from_bytes(packet[12:16], "big")),
            dotted(int.from_bytes(packet[16:20], "big")),
        )
        ihl = (packet[0] & 0x0F) * 4
        ports: tuple[int, ...] = ()
        if packet[9] in (6, 17) and len(packet) >= ihl + 4:
            ports = struct.unpack_from("!HH", packet, ihl)
        return self.matches((src, dst), ports)


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
        elif isinstance(event, SegmentEvent | PeerStateChange | FaultEvent) and event.conn is None:
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


class JsonlWriter:
    """One JSON object per line; the first line names the schema version.
    Connection events carry their 4-tuple, so a line reads on its own."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._tuples: dict[int, str] = {}
        stream.write(json.dumps({"type": "header", "schema": TRACE_SCHEMA_VERSION}) + "\n")
        stream.flush()

    def __call__(self, event: TraceEvent) -> None:
        record = event_dict(event)
        if isinstance(event, NewConnection):
            self._tuples[event.conn] = (
                f"{event.local}:{event.local_port} {event.remote}:{event.remote_port}"
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

    def __init__(self, stream: IO[str], colour: bool | None = None) -> None:
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
    """(colour class, text) of one event, without the time."""
    if isinstance(event, SegmentEvent):
        arrow = ">" if event.direction == "in" else "<"
        ends = f"{event.remote}:{event.remote_port} {arrow} {event.local}:{event.local_port}"
        conn = f"#{event.conn}" if event.conn is not None else "#-"
        states = (
            event.state_after
            if event.state_before == event.state_after
            else f"{event.state_before} -> {event.state_after}"
        )
        note = f"  ({event.note})" if event.note else ""
        return event.direction, (
            f"{conn:<6} {event.direction:<3} {ends:<45} {event.flags:<4} seq {event.rel_seq}"
            f" ack {event.rel_ack} win {event.window} len {event.length}"
            f"{format_options(event.options)}  {states}{note}"
        )
    if isinstance(event, StateChange):
        return "state", (
            f"#{event.conn:<5} state {event.old} -> {event.new}  "
            f"({event.event.name}; {event.rule}: {event.why})"
        )
    if isinstance(event, NewConnection):
        how = "passive" if event.passive else "active"
        return "state", (
            f"#{event.conn:<5} new   {event.local}:{event.local_port} <-> "
            f"{event.remote}:{event.remote_port} ({how} open)"
        )
    if isinstance(event, FaultEvent):
        conn = f"#{event.conn}" if event.conn is not None else "#-"
        extra = f" by {event.delay:.3f}s" if event.action == FaultAction.DELAY else ""
        return "drop", (
            f"{conn:<6} fault {event.action}{extra} {event.direction} {event.flags} "
            f"seq {event.rel_seq} ack {event.rel_ack} len {event.length} (rule {event.rule})"
        )
    if isinstance(event, PeerStateChange):
        return "state", (
            f"#{event.conn if event.conn is not None else '-':<5} peer  "
            f"{event.remote}:{event.remote_port} (Linux) {event.old} -> {event.new}"
        )
    if isinstance(event, TimerEvent):
        when = f" at +{event.deadline - event.time:.3f}s" if event.deadline is not None else ""
        return "timer", f"#{event.conn:<5} timer {event.timer} {event.action}{when}"
    if isinstance(event, Decision):
        return "decision", f"#{event.conn:<5} note  {event.what} ({event.rule})"
    return "drop", f"#-     drop  {event.layer}: {event.reason} {event.summary}".rstrip()


class PcapWriter:
    """Raw IPv4 packets as a classic pcap file (LINKTYPE_RAW), for Wireshark
    and tshark. Timestamps are the wall clock at write time."""

    LINKTYPE_RAW = 101

    def __init__(self, stream: IO[bytes], snaplen: int = 65535) -> None:
        self._stream = stream
        self._snaplen = snaplen
        # magic, version 2.4, GMT offset, accuracy, snaplen, link type
        stream.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, self.LINKTYPE_RAW))
        stream.flush()

    def __call__(self, direction: str, packet: bytes, _now: float) -> None:
        stamp = time.time()
        seconds = int(stamp)
        micros = int((stamp - seconds) * 1_000_000)
        data = packet[: self._snaplen]
        self._stream.write(struct.pack("<IIII", seconds, micros, len(data), len(packet)))
        self._stream.write(data)
        self._stream.flush()


class FilteredTap:
    """A packet tap that passes on only the packets the filter keeps."""

    def __init__(self, sink: PacketTap, trace_filter: TraceFilter) -> None:
        self._sink = sink
        self._filter = trace_filter

    def __call__(self, direction: str, packet: bytes, now: float) -> None:
        if self._filter.matches_packet(packet):
            self._sink(direction, packet, now)


TRACE_FORMATS = ("text", "jsonl", "pcap")


def format_for(path: Path) -> str:
    """The format a trace file's name suggests: .pcap, .jsonl/.json, else text."""
    suffix = path.suffix.lower()
    if suffix in (".pcap", ".cap"):
        return "pcap"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    return "text"


@dataclass(frozen=True)
class TraceSpec:
    path: Path  # "-" writes to stderr (text or jsonl)
    format: str


class TraceOutputError(Exception):
    """A trace file could not be opened; the message says which and why."""


class TraceSinks:
    """The open trace outputs of a daemon: one tracer and one packet tap that
    feed every writer (each through the filter), and their files."""

    def __init__(self, specs: list[TraceSpec], trace_filter: TraceFilter | None = None) -> None:
        self._files: list[IO[Any]] = []
        try:
            self._open(specs, trace_filter)
        except OSError as exc:
            self.close()
            raise TraceOutputError(
                f"cannot write the trace {exc.filename}: {exc.strerror}"
            ) from None

    def _open(self, specs: list[TraceSpec], trace_filter: TraceFilter | None) -> None:
        tracers: list[Tracer] = []
        taps: list[PacketTap] = []
        for spec in specs:
            if spec.format == "pcap":
                stream: IO[Any] = open(spec.path, "wb")  # noqa: SIM115 (open for the daemon's life; close() shuts it)
                self._files.append(stream)
                taps.append(PcapWriter(stream))
                continue
            if str(spec.path) == "-":
                stream = sys.stderr
            else:
                stream = open(spec.path, "w", encoding="utf-8")  # noqa: SIM115 (as above)
                self._files.append(stream)
            tracers.append(TextWriter(stream) if spec.format == "text" else JsonlWriter(stream))
        self.tracer: Tracer | None = None
        self.tap: PacketTap | None = None
        if tracers:
            tracer: Tracer = tracers[0] if len(tracers) == 1 else FanOut(tracers)
            self.tracer = Filtered(tracer, trace_filter) if trace_filter else tracer
        if taps:
            tap = taps[0] if len(taps) == 1 else _fan_out_taps(taps)
            self.tap = FilteredTap(tap, trace_filter) if trace_filter else tap

    def close(self) -> None:
        for stream in self._files:
            stream.close()


def _fan_out_taps(taps: list[PacketTap]) -> PacketTap:
    def tap(direction: str, packet: bytes, now: float) -> None:
        for each in taps:
            each(direction, packet, now)

    return tap
