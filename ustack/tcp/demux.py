"""TCP input: checksum, parse, and delivery by 4-tuple.

Until connections exist, every segment is for a closed port and is answered
the way RFC 9293 3.10.7.1 says a CLOSED endpoint answers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

from ustack.checksum import transport_checksum
from ustack.errors import MalformedPacket
from ustack.headers import ACK, FIN, PROTO_TCP, RST, SYN, TcpHeader, build_tcp, parse_tcp

Buffer = bytes | bytearray | memoryview
# Hands a TCP segment (header + payload, checksum filled) to IP for `dst`.
SendSegment = Callable[[int, bytes], None]


class ResetReply(NamedTuple):
    seq: int
    ack: int
    flags: int


def reset_for_closed_port(header: TcpHeader, payload_length: int) -> ResetReply | None:
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
    return ResetReply(seq=0, ack=(header.seq + seg_len) & 0xFFFFFFFF, flags=RST | ACK)


class TcpDemux:
    def __init__(self, address: int, send: SendSegment, counters: Counter[str]) -> None:
        self.address = address
        self._send = send
        self._counters = counters

    def receive(self, src: int, dst: int, segment: Buffer) -> None:
        counters = self._counters
        if transport_checksum(src, dst, PROTO_TCP, segment) != 0:
            counters["tcp.drop.bad-checksum"] += 1
            return
        try:
            header = parse_tcp(segment)
        except MalformedPacket as exc:
            counters[f"tcp.drop.{exc.reason}"] += 1
            return
        counters["tcp.in"] += 1
        reply = reset_for_closed_port(header, len(segment) - header.header_length)
        if reply is None:
            counters["tcp.drop.rst-to-closed-port"] += 1
            return
        counters["tcp.out.rst"] += 1
        self._send(
            src,
            build_tcp(
                src=dst,
                dst=src,
                src_port=header.dst_port,
                dst_port=header.src_port,
                seq=reply.seq,
                ack=reply.ack,
                flags=reply.flags,
                window=0,
            ),
        )
