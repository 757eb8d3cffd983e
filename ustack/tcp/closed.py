"""What a CLOSED endpoint answers (RFC 9293 3.10.7.1): the RST, or nothing.

The demux sends it for a segment that matches no connection and no listener,
and for a segment a listener refuses (RFC 9293 3.10.7.2, an ACK to LISTEN).
"""

from __future__ import annotations

from typing import NamedTuple

from ustack.tcp import seq
from ustack.tcp.segment import Segment
from ustack.wire.tcp import ACK
from ustack.wire.tcp import FIN
from ustack.wire.tcp import RST
from ustack.wire.tcp import SYN
from ustack.wire.tcp import TcpHeader


class ResetReply(NamedTuple):
    seq: int
    ack: int
    flags: int


def reset_for_closed_port(header: TcpHeader | Segment, payload_length: int) -> ResetReply | None:
    """RFC 9293 3.10.7.1: the reply of a CLOSED endpoint to an incoming segment.

    - a RST is never answered (no RST wars);
    - a segment with ACK gets <SEQ=SEG.ACK><CTL=RST>;
    - one without gets <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>, where SYN and
      FIN each count one in SEG.LEN.
    """
    if header.flags & RST:
        return None
    if header.flags & ACK:
        return ResetReply(seq=header.ack, ack=0, flags=RST)
    seg_len = payload_length + bool(header.flags & SYN) + bool(header.flags & FIN)
    return ResetReply(seq=0, ack=seq.add(header.seq, seg_len), flags=RST | ACK)
