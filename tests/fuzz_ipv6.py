"""The IPv6 half of the fuzz target (tests/fuzzworld.py): IPv6 packets and
ICMPv6 messages built from the fuzz input, structure-aware as the IPv4 ones.

A TCP segment for a connection with an IPv6 peer goes in an IPv6 packet,
sometimes with extension headers in front (hop-by-hop and destination
options with known and unknown options of each action class, a routing
header of type 0 or another, an atomic fragment header, a hop-by-hop header
out of place) or a broken fixed header (payload length, version, an unknown
next header, a martian source, a destination not ours, truncation, link
padding). Beside them: ICMPv6 echo requests, Neighbor Discovery and MLD
messages as the kernel sends them down a TUN, ICMPv6 errors quoting our
segments (Packet Too Big with every MTU, RFC 8201; unreachable, time
exceeded, parameter problem, unknown types), and datagrams in fragments
(RFC 8200 4.5), damaged as the IPv4 ones are. Checksums are mostly right,
so the packets reach the parsers and the TCBs.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any
from typing import Protocol

from ustack.wire.checksum import transport_checksum
from ustack.wire.ipv4 import PROTO_TCP
from ustack.wire.ipv4 import PROTO_UDP

US6 = 0x2001_0002_0000_0000_0000_0000_0000_0002  # 2001:2::2
PEER6 = 0x2001_0002_0000_0000_0000_0000_0000_0001  # 2001:2::1
PEER6_2 = 0x2001_0002_0000_0000_0000_0000_0000_0003  # 2001:2::3
ROUTERS6 = (0x2001_0002_0001 << 80 | 1, 0x2001_0002_0002 << 80 | 1, PEER6)
ALL_NODES = 0xFF02 << 112 | 1  # ff02::1
SOLICITED_US = 0xFF02 << 112 | 0x1_FF00_0000 | US6 & 0xFFFFFF  # ff02::1:ff00:2
MLD_ROUTERS = 0xFF02 << 112 | 0x16  # ff02::16, where MLDv2 reports go
# ::, ::1, ::ffff:198.18.0.1 (RFC 4291 2.5.5), multicast, ours.
BAD_SOURCES6 = (0, 1, 0xFFFF_C612_0001, ALL_NODES, US6)
NOT_OURS6 = (PEER6, US6 + 1, ALL_NODES, SOLICITED_US, 0xFF05 << 112 | 2)
NH_HOP_BY_HOP, NH_ROUTING, NH_FRAGMENT, NH_ICMPV6, NH_NONE, NH_DESTINATION = 0, 43, 44, 58, 59, 60
ECHO_REQUEST = 128
_ND_MLD_TYPES = (130, 131, 132, 133, 134, 135, 136, 137, 143)
MASK = 0xFFFFFFFF
# (type, code): Packet Too Big most often; each unreachable code, time
# exceeded, parameter problem; error types nobody defined.
_ERRORS = ((2, 0), (2, 0), (2, 0), (1, 4), (1, 0), (1, 1), (1, 3), (1, 5), (1, 6), (1, 7),
           (3, 0), (3, 1), (4, 0), (4, 1), (4, 2), (100, 0), (127, 0))  # fmt: skip


class Choices(Protocol):
    """fuzzworld.Source: the fuzz input read as choices."""

    def byte(self) -> int: ...
    def u16(self) -> int: ...
    def u32(self) -> int: ...
    def below(self, n: int) -> int: ...
    def pick(self, items: Sequence[Any]) -> Any: ...
    def chance(self, in_256: int) -> bool: ...


def is_ipv6(address: int) -> bool:
    return address > MASK


def _options_header(s: Choices, next_header: int) -> bytes:
    """Hop-by-hop or destination options: padding, Router Alert, and options
    of unknown types whose two high bits say skip, discard, discard and send
    a Parameter Problem, or that unless the destination was multicast (RFC 8200 4.2)."""
    options = b""
    for _ in range(1 + s.below(3)):
        kind = s.pick((0, 1, 5, 0x1E, 0x5E, 0x9E, 0xDE, s.byte()))
        if kind == 0:
            options += b"\x00"
        else:
            data = bytes(s.below(6))
            options += bytes((kind, len(data))) + data
    options += b"\x00" * (-(len(options) + 2) % 8)  # Pad1s to the 8-byte boundary
    length = (len(options) + 2) // 8 - 1
    if s.chance(20):
        length = s.byte()  # runs past the packet
    return bytes((next_header, length)) + options


def _routing_header(s: Choices, next_header: int) -> bytes:
    """Type 0 (RFC 5095: refused if segments are left), 2, 4 or any, with 0..2 segments left."""
    addresses = s.below(3)
    segments_left = s.pick((0, 0, 1, addresses, s.byte()))
    routing_type = s.pick((0, 0, 2, 4, s.byte()))
    body = struct.pack("!BBBBI", next_header, 2 * addresses, routing_type, segments_left, 0)
    return body + b"".join(PEER6.to_bytes(16, "big") for _ in range(addresses))


def fragment_header(next_header: int, offset: int, more: bool, ident: int) -> bytes:
    return struct.pack("!BBHI", next_header, 0, (offset & 0xFFF8) | more, ident & MASK)


def fixed_header(
    src: int, dst: int, next_header: int, payload_length: int, traffic_class: int = 0,
    hop_limit: int = 64, version: int = 6, flow_label: int = 0,
) -> bytes:  # fmt: skip
    first = (version & 15) << 28 | (traffic_class & 0xFF) << 20 | flow_label & 0xFFFFF
    return struct.pack(
        "!IHBB16s16s", first, payload_length & 0xFFFF, next_header & 0xFF, hop_limit & 0xFF,
        src.to_bytes(16, "big"), dst.to_bytes(16, "big"),
    )  # fmt: skip


def packet(
    s: Choices, src: int, dst: int, next_header: int, payload: bytes, mutate: bool = False
) -> bytes:
    """An IPv6 packet around `payload` (whose checksum, if any, is already
    right for src and dst); `mutate`: now and then extension headers in front
    or a broken fixed header."""
    extensions = b""
    traffic_class = s.pick((0, 0, 0, 1, 2, 3, s.byte())) if s.chance(40) else 0
    version, hop_limit, payload_length = 6, 64, -1
    tail = b""
    what = s.byte() % 13 if mutate else -1
    if what == 0:
        extensions = _options_header(s, next_header)
        next_header = NH_HOP_BY_HOP
    elif what == 1:
        extensions = _options_header(s, next_header)
        next_header = NH_DESTINATION
    elif what == 2:
        extensions = _routing_header(s, next_header)
        next_header = NH_ROUTING
    elif what == 3:  # an atomic fragment (RFC 6946): whole, behind a fragment header
        extensions = fragment_header(next_header, 0, False, s.u32())
        next_header = NH_FRAGMENT
    elif what == 4:  # hop-by-hop anywhere but first (RFC 8200 4.1)
        inner = _options_header(s, next_header)
        extensions = _options_header(s, NH_HOP_BY_HOP) + inner
        next_header = NH_DESTINATION
    elif what == 5:
        payload_length = s.pick((0, 1, len(payload) - 1, len(payload) + 1, 0xFFFF, s.u16()))
    elif what == 6:
        version = s.pick((0, 4, 5, 7, 15))
    elif what == 7:
        next_header = s.pick((NH_NONE, 2, 41, 50, 135, 253, s.byte()))
    elif what == 8:
        src = s.pick(BAD_SOURCES6)
    elif what == 9:
        dst = s.pick(NOT_OURS6)
    elif what == 10:
        tail = bytes(s.below(20))  # link padding
    elif what == 11:
        hop_limit = s.pick((0, 1, 255))
    body = extensions + payload
    if payload_length < 0:
        payload_length = len(body)
    data = fixed_header(src, dst, next_header, payload_length, traffic_class, hop_limit, version)
    data += body + tail
    if what == 12:
        data = data[: s.below(len(data) + 1)]
    return data


def damaged_pieces(s: Choices, message: bytes, unit: int) -> list[tuple[int, bytes, bool]]:
    """`message` cut in (offset, data, more) pieces of up to `unit` 8-byte
    units, then now and then broken: overlapping, duplicated, lost,
    reordered, M flipped, an odd length, an offset anywhere. For the
    fragments of both families (RFC 791 3.2, RFC 8200 4.5)."""
    pieces: list[tuple[int, bytes, bool]] = []
    offset = 0
    while offset < len(message):
        step = len(message) if len(pieces) >= 60 else 8 * (1 + s.below(unit))
        pieces.append((offset, message[offset : offset + step], True))
        offset += step
    if pieces:
        last_offset, last_data, _ = pieces[-1]
        pieces[-1] = (last_offset, last_data, False)
    for _ in range(s.below(4) if s.chance(120) else 0):
        index = s.below(len(pieces))
        offset, data, more = pieces[index]
        what = s.byte() % 7
        if what == 0:
            pieces.insert(s.below(len(pieces) + 1), (offset, data, more))  # duplicate
        elif what == 1 and len(pieces) > 1:
            del pieces[index]  # lost
        elif what == 2:
            pieces[index] = (max(offset + 8 * (s.below(5) - 2), 0), data, more)  # overlap
        elif what == 3:
            pieces[index] = (offset, data, not more)
        elif what == 4:
            pieces[index] = (offset, data[: s.below(len(data) + 1)], more)  # odd length
        elif what == 5:
            pieces[index] = (8 * (s.u16() & 0x1FFF), data, more)
        else:
            swap = s.below(len(pieces))
            pieces[index], pieces[swap] = pieces[swap], pieces[index]
    if s.chance(60):
        pieces.reverse()
    return pieces


def fragments(
    s: Choices, src: int, dst: int, protocol: int, message: bytes, ident: int
) -> list[bytes]:
    """`message` (an upper-layer header and its data) in IPv6 fragments
    (RFC 8200 4.5), damaged now and then (damaged_pieces)."""
    out = []
    for offset, data, more in damaged_pieces(s, message, s.pick((1, 8, 64, 170))):
        body = fragment_header(protocol, offset, more, ident) + data
        out.append(fixed_header(src, dst, NH_FRAGMENT, len(body)) + body)
    return out


def icmpv6(src: int, dst: int, type_: int, code: int, rest: int, body: bytes) -> bytes:
    """An ICMPv6 message with its checksum over the IPv6 pseudo-header (RFC 4443 2.3)."""
    message = bytearray(struct.pack("!BBHI", type_, code, 0, rest & MASK) + body)
    struct.pack_into("!H", message, 2, transport_checksum(src, dst, NH_ICMPV6, message))
    return bytes(message)


def icmpv6_other(s: Choices, peer: int, body: bytes) -> bytes:
    """An echo request, a Neighbor Discovery or MLD message as the kernel
    sends down a TUN (to us, all nodes, our solicited-node group, ff02::16;
    from the peer or, as DAD and early MLD do, from ::), or any type."""
    kind = s.byte()
    src, dst, hop_limit = peer, US6, 64
    if kind < 120:
        type_ = ECHO_REQUEST
    elif kind < 220:
        type_ = s.pick(_ND_MLD_TYPES)
        dst = s.pick((US6, ALL_NODES, SOLICITED_US, MLD_ROUTERS))
        src = 0 if s.chance(60) else peer
        hop_limit = 1 if type_ in (130, 131, 132, 143) else 255
    else:
        type_ = s.byte()
    message = bytearray(icmpv6(src, dst, type_, s.below(4), s.u32(), body))
    if s.chance(20):
        message[2] ^= 0x55  # a bad checksum
    return fixed_header(src, dst, NH_ICMPV6, len(message), hop_limit=hop_limit) + message


def icmpv6_error(
    s: Choices, remote: int, remote_port: int, local_port: int, sequence: int
) -> bytes:
    """A router's ICMPv6 error quoting a segment of ours to `remote`:
    Packet Too Big with every kind of MTU (RFC 8201: never below 1280),
    unreachable with each code, time exceeded, parameter problem, unknown
    error types; sometimes a quote whose source is not ours, of another
    protocol, behind an extension header, or truncated."""
    type_, code = s.pick(_ERRORS)
    rest = 0
    if type_ == 2:
        rest = s.pick((0, 68, 576, 1000, 1279, 1280, 1281, 1400, 1499, 1500, 1501, 9000,
                       65535, s.u32()))  # fmt: skip
    elif type_ == 4:
        rest = s.pick((0, 6, 40, s.u16()))
    quoted_length = s.pick((1440, 1440, 8960, 536, 20, 0, s.u16()))
    quoted_src = US6 if s.chance(235) else s.pick((PEER6, US6 + 1, 0xC6120002))
    protocol = PROTO_TCP if s.chance(240) else s.pick((PROTO_UDP, NH_ICMPV6, s.byte()))
    tcp8 = struct.pack("!HHI", local_port, remote_port, sequence & MASK)
    inner = tcp8 + bytes(s.pick((0, 0, 12, s.byte())))
    if s.chance(20):  # a destination options header before the TCP header
        inner = bytes((protocol, 0)) + b"\x01\x04" + bytes(4) + inner
        protocol = NH_DESTINATION
    quote = fixed_header(quoted_src, remote, protocol, quoted_length) + inner
    if s.chance(15):
        quote = quote[: s.below(len(quote))]
    router = s.pick(ROUTERS6)
    message = icmpv6(router, US6, type_, code, rest, quote)
    return packet(s, router, US6, NH_ICMPV6, message, mutate=s.chance(20))
