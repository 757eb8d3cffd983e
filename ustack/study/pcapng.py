"""The pcapng trace: every packet the stack takes or sends, each with the
stack's reasons as packet comments, so Wireshark and tshark show them beside
the dissection (`tshark -r t.pcapng -Y frame.comment -T fields -e frame.comment`).

The file is pcapng (the IETF draft-ietf-opsawg-pcapng): one Section Header
Block, one Interface Description Block with LINKTYPE_RAW (101: raw IPv4 or
IPv6, told apart by the version nibble), then one Enhanced Packet Block per
packet with its direction (epb_flags) and one `opt_comment` per reason.

Written by hand (about 60 lines of struct packing) rather than through
scapy's PcapNgWriter: scapy stays a test dependency (it is the independent
reader in the tests), and a TraceFile needs each block as one whole record
(rotation and SIGHUP start a new file with the header bytes).

How packets and reasons meet: the writer is both a packet tap and a tracer.
The stack taps a packet it takes before handling it, then traces what that
caused (the segment, state changes, timers, decisions, drops); a packet it
sends is traced (decisions first, then the segment) just before it is
tapped. So an incoming packet is held until the next packet, the first
segment sent in reply, or `settle()` (the daemon calls it after each batch
it reads); the events meanwhile are its comments. Events before a packet
sent are that packet's comments. Events that end on no packet (a timer that
fires and sends nothing, the Linux peers' states, which come late from the
kernel) are in the JSON trace only.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from ustack import __version__
from ustack.study.sinks import BinaryStream
from ustack.study.sinks import format_event
from ustack.trace.records import DatagramEvent
from ustack.trace.records import FaultEvent
from ustack.trace.records import PeerStateChange
from ustack.trace.records import SegmentEvent
from ustack.trace.records import TraceEvent
from ustack.trace.vocabulary import FaultAction
from ustack.trace.vocabulary import Rule
from ustack.trace.vocabulary import SegmentNote

LINKTYPE_RAW = 101  # raw IP: IPv4 or IPv6 by the first nibble
SNAPLEN = 65535

# Block types and option codes (pcapng draft, sections 4 and 3.5).
_SHB, _IDB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_END, _OPT_COMMENT = 0, 1
_SHB_USERAPPL = 4
_IF_NAME = 2
_EPB_FLAGS = 2
_INBOUND, _OUTBOUND = 0b01, 0b10  # epb_flags bits 0-1: the packet's direction
_MAX_OPTION = 0xFFFF  # an option's length is 16 bits

# The rule behind a segment note that carries none in the trace (the
# decisions and state changes carry their own).
NOTE_RULES: dict[SegmentNote, str] = {
    SegmentNote.RST_NO_CONNECTION: Rule.RFC9293_CLOSED,
    SegmentNote.CHALLENGE_ACK: "RFC 5961",
    SegmentNote.ZERO_WINDOW_PROBE: Rule.RFC9293_PERSIST,
    SegmentNote.KEEPALIVE_PROBE: "RFC 1122 4.2.3.6",
    SegmentNote.SYN_COOKIE: "RFC 4987 3.6",
}


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    value = value[:_MAX_OPTION]
    return struct.pack("<HH", code, len(value)) + _pad(value)


def _block(block_type: int, body: bytes) -> bytes:
    """A whole block: type, total length, body (padded), total length again."""
    length = 12 + len(body)
    return struct.pack("<II", block_type, length) + body + struct.pack("<I", length)


def pcapng_header(snaplen: int = SNAPLEN) -> bytes:
    """The file's start: a Section Header Block (little-endian, version 1.0,
    section length unknown) and the one interface, LINKTYPE_RAW."""
    shb_options = _option(_SHB_USERAPPL, f"ustack {__version__}".encode()) + _option(_OPT_END, b"")
    shb = _block(_SHB, struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1) + shb_options)
    idb_options = _option(_IF_NAME, b"ustack") + _option(_OPT_END, b"")
    idb = _block(_IDB, struct.pack("<HHI", LINKTYPE_RAW, 0, snaplen) + idb_options)
    return shb + idb


def enhanced_packet_block(
    packet: bytes, stamp: float, direction: str, comments: list[str], snaplen: int = SNAPLEN
) -> bytes:
    """One packet: timestamp in microseconds (the IDB's default resolution),
    the direction, and each comment as its own opt_comment."""
    micros = int(stamp * 1_000_000)
    data = packet[:snaplen]
    body = struct.pack("<IIIII", 0, micros >> 32, micros & 0xFFFFFFFF, len(data), len(packet))
    body += _pad(data)
    options = b"".join(_option(_OPT_COMMENT, text.encode()) for text in comments)
    flags = _INBOUND if direction == "in" else _OUTBOUND
    options += _option(_EPB_FLAGS, struct.pack("<I", flags)) + _option(_OPT_END, b"")
    return _block(_EPB, body + options)


def segment_comment(event: SegmentEvent) -> str:
    """The segment's line: connection, direction, states, and why it was
    sent when that is not plain (with the rule behind the note)."""
    conn = "-" if event.conn is None else str(event.conn)
    states = (
        event.state_after
        if event.state_before == event.state_after
        else f"{event.state_before} -> {event.state_after}"
    )
    text = f"ustack #{conn} {event.direction}: {states}"
    if event.note:
        rule: str | None = NOTE_RULES.get(event.note)
        if event.note == SegmentNote.RST_UNACCEPTABLE_ACK:
            syn_sent = event.state_before == "SYN_SENT"
            rule = Rule.RFC9293_SYN_SENT if syn_sent else Rule.RFC9293_OTHERWISE
        text += f" ({event.note}; {rule})" if rule else f" ({event.note})"
    return text


def tcb_comment(tcb: dict[str, float]) -> str:
    """The sender's and receiver's state the segment left (schema 4's tcb)."""
    parts = [f"cwnd {tcb['cwnd']:.0f}"] if "cwnd" in tcb else []
    if "ssthresh" in tcb:
        parts.append(f"ssthresh {tcb['ssthresh']:.0f}")
    if "flight" in tcb:
        parts.append(f"flight {tcb['flight']:.0f}")
    for name in ("srtt", "rttvar", "rto"):
        if name in tcb:
            parts.append(f"{name} {tcb[name] * 1000:.1f} ms")
    for name in ("snd_wnd", "rcv_wnd"):
        if name in tcb:
            parts.append(f"{name} {tcb[name]:.0f}")
    return "ustack tcb: " + ", ".join(parts)


def event_comment(event: TraceEvent) -> str:
    """One event as one comment line: the text trace's line, without its
    column padding (a segment gets its own, shorter line: the dissection
    shows its fields)."""
    if isinstance(event, SegmentEvent):
        return segment_comment(event)
    return " ".join(format_event(event)[1].split())


class PcapngWriter:
    """A packet tap and a tracer at once: writes each packet with the events
    that explain it as its comments (see the module's docstring).

    `clock` stamps the packets (the wall clock, as the pcap writer).
    header=False: the stream writes the header itself (a TraceFile does)."""

    def __init__(
        self,
        stream: BinaryStream,
        snaplen: int = SNAPLEN,
        header: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stream = stream
        self._snaplen = snaplen
        self._clock = clock
        # An incoming packet waiting for what it causes: (bytes, stamp, the stack's time).
        self._held: tuple[bytes, float, float] | None = None
        self._comments: list[str] = []  # of the held packet, else of the next sent
        if header:
            stream.write(pcapng_header(snaplen))
            stream.flush()

    def tap(self, direction: str, packet: bytes, now: float) -> None:
        """The packet tap (PacketTap)."""
        stamp = self._clock()
        if direction == "in":
            self.settle()
            self._held = (packet, stamp, now)
            # What came before an incoming packet with none held caused no
            # packet (a timer that sent nothing): not its reasons.
            self._comments = [c for c in self._comments if c.startswith(_FAULT_IN)]
            return
        self.settle()
        self._write(packet, stamp, "out", self._comments)
        self._comments = []

    def __call__(self, event: TraceEvent) -> None:
        """The tracer (Tracer)."""
        if isinstance(event, PeerStateChange):
            return  # the kernel's, read late: it belongs to no packet here
        held = self._held
        if held is not None and event.time != held[2]:
            # What a packet causes is traced at its own time: a later event
            # (a timer, the application) comes after its handling ended.
            self.settle()
        if isinstance(event, DatagramEvent):
            # A UDP datagram's own line, as a segment's: an outgoing one
            # begins a reply (the datagram taken has all its reasons).
            if event.direction == "out":
                self.settle()
            self._comments[0:0] = [event_comment(event)]
            return
        if isinstance(event, SegmentEvent) and event.direction == "out":
            self.settle()  # the reply begins: the packet taken has all its reasons
        elif isinstance(event, FaultEvent) and event.direction == "in":
            if event.action not in (FaultAction.DUPLICATE, FaultAction.MARK):
                return  # the packet is lost or comes late: nothing to hang it on now
            self.settle()
            self._comments.append(_FAULT_IN + event_comment(event))
            return
        if not isinstance(event, SegmentEvent):
            self._comments.append(event_comment(event))
            return
        lines = [segment_comment(event)]
        if event.tcb:
            lines.append(tcb_comment(event.tcb))
        # The packet's own lines first, then what led to it or followed from it
        # (a new connection is traced before its SYN, a timeout before the resend).
        self._comments[0:0] = lines

    def settle(self) -> None:
        """Write the incoming packet held, with its comments: everything it
        caused has been traced (the daemon calls this after each read batch)."""
        held = self._held
        if held is None:
            return
        self._held = None
        comments, self._comments = self._comments, []
        self._write(held[0], held[1], "in", comments)

    def _write(self, packet: bytes, stamp: float, direction: str, comments: list[str]) -> None:
        # One write per block: a TraceFile rotates between records, never inside one.
        self._stream.write(enhanced_packet_block(packet, stamp, direction, comments, self._snaplen))
        self._stream.flush()


_FAULT_IN = "before ustack: "  # a fault the injector applied to the packet on its way in
