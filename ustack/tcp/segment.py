"""The segment the TCP core works on: header fields that matter plus payload.

Ports and addresses are not here: the demultiplexer has matched them already.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Protocol

from ustack.tcp import seq
from ustack.tcp.congestion.newreno import INITIAL_SSTHRESH
from ustack.trace.records import SegmentEvent
from ustack.trace.records import dotted
from ustack.trace.vocabulary import SegmentNote
from ustack.wire.tcp import ACK
from ustack.wire.tcp import CWR
from ustack.wire.tcp import ECE
from ustack.wire.tcp import FIN
from ustack.wire.tcp import PSH
from ustack.wire.tcp import RST
from ustack.wire.tcp import SYN
from ustack.wire.tcp import URG
from ustack.wire.tcp import TcpOptions

if TYPE_CHECKING:  # (the connection imports this module)
    from ustack.tcp.connection import TcpConnection

_FLAG_NAMES = ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, "."), (URG, "U"),
               (ECE, "E"), (CWR, "W"))  # fmt: skip
NO_OPTIONS = TcpOptions()
# The IP ECN field of a segment (RFC 3168 5), as the trace names it: Not-ECT
# is "", 0b01 ECT(1), 0b10 ECT(0), 0b11 CE.
ECN_NAMES = ("", "ECT(1)", "ECT(0)", "CE")


@dataclass(slots=True)
class Segment:
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes | memoryview = b""
    options: TcpOptions = field(default_factory=lambda: NO_OPTIONS)
    note: str = ""  # for the trace: why this segment was sent, when not plain
    gso_size: int = 0  # a super-segment the link cuts into segments of this size
    ecn: int = 0  # the IP ECN field it came with, or goes with (ustack.wire.ipv4.ECN_*)

    @property
    def seg_len(self) -> int:
        """SEG.LEN: the payload, plus one each for SYN and FIN (RFC 9293 3.4)."""
        return len(self.payload) + bool(self.flags & SYN) + bool(self.flags & FIN)

    def __repr__(self) -> str:
        return (
            f"<{flag_string(self.flags)} seq={self.seq} ack={self.ack} win={self.window}"
            f" len={len(self.payload)}>"
        )


def flag_string(flags: int) -> str:
    """tcpdump-style flags: S, F, R, P, '.' for ACK (e.g. 'S.' is SYN,ACK)."""
    return "".join(name for bit, name in _FLAG_NAMES if flags & bit) or "none"


def options_dict(options: TcpOptions) -> dict[str, object]:
    """The options present, named as tcpdump names them."""
    found: dict[str, object] = {}
    if options.mss is not None:
        found["mss"] = options.mss
    if options.window_scale is not None:
        found["wscale"] = options.window_scale
    if options.sack_permitted:
        found["sackOK"] = True
    if options.sack_blocks:
        found["sack"] = [list(block) for block in options.sack_blocks]
    if options.timestamps is not None:
        found["TS"] = list(options.timestamps)
    for kind, data in options.unknown:
        found[f"opt-{kind}"] = data.hex()
    return found


class Numbered(Protocol):
    """What the trace of a segment needs of its connection (or of its
    TIME_WAIT record, time_wait.py)."""

    @property
    def conn_id(self) -> int: ...
    @property
    def iss(self) -> int: ...
    @property
    def irs(self) -> int: ...


def tcb_snapshot(conn: TcpConnection) -> dict[str, float]:
    """The sender's and receiver's state for a segment's trace record
    (records.TCB_FIELDS): only called with tracing on, so free without it.
    Flight is SND.MAX - SND.UNA, what tcptrace calls outstanding data (not
    RFC 6675's pipe, which walks the whole SACK log)."""
    recovery, sender, receiver = conn.recovery, conn.sender, conn.receiver
    cc, rtt = recovery.cc, recovery.rtt
    tcb: dict[str, float] = {"cwnd": cc.cwnd}
    if cc.ssthresh < INITIAL_SSTHRESH:  # "arbitrarily high" until the first loss
        tcb["ssthresh"] = cc.ssthresh
    tcb["flight"] = max(seq.diff(sender.snd_max, sender.snd_una), 0)
    if rtt.srtt is not None:
        tcb["srtt"] = round(rtt.srtt, 6)
        tcb["rttvar"] = round(rtt.rttvar, 6)
    tcb["rto"] = round(rtt.rto, 6)
    tcb["snd_wnd"] = sender.snd_wnd
    tcb["rcv_wnd"] = max(seq.diff(receiver.rcv_adv, receiver.rcv_nxt), 0)
    return tcb


def segment_event(
    now: float,
    conn: Numbered | None,
    address: int,
    key: tuple[int, int, int],
    direction: str,
    seg: Segment,
    before: str,
    after: str,
    tcb: dict[str, float] | None = None,
) -> SegmentEvent:
    """The trace record of `seg` going `direction` ("in" or "out") between our
    `address` and the (remote, remote port, local port) `key`, with its
    numbers relative to the connection's ISNs when it has one."""
    remote, remote_port, local_port = key
    rel_seq, rel_ack = seg.seq, seg.ack
    if conn is not None:
        ours, theirs = (conn.irs, conn.iss) if direction == "in" else (conn.iss, conn.irs)
        rel_seq = (seg.seq - ours) & seq.MASK
        rel_ack = (seg.ack - theirs) & seq.MASK if seg.flags & ACK else 0
    return SegmentEvent(
        now,
        conn.conn_id if conn is not None else None,
        direction,
        dotted(address),
        local_port,
        dotted(remote),
        remote_port,
        flag_string(seg.flags),
        seg.seq,
        seg.ack,
        rel_seq,
        rel_ack,
        seg.window,
        len(seg.payload),
        options_dict(seg.options),
        before,
        after,
        SegmentNote(seg.note),
        ECN_NAMES[seg.ecn],
        tcb,
    )
