"""The IPv6 header (RFC 8200 3) and its extension headers (RFC 8200 4).

IPV6_HEADER is the single description of the fixed header, and the
EXTENSION_* schemas of the extension headers; IPV6_FIXED and FRAGMENT_FIXED
are struct's views of them, written out next to them for the per-packet
codec and checked against them by tests/unit/test_ipv6_wire.py (see
ustack.wire.codec). Addresses are ints (wire/address.py).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from construct import BitsInteger
from construct import BitStruct
from construct import Bytes
from construct import BytesInteger
from construct import Const
from construct import Flag
from construct import Int8ub
from construct import Int16ub
from construct import Int32ub
from construct import Nibble
from construct import Struct
from construct import this

from ustack.wire.checksum import Buffer
from ustack.wire.codec import ErrorReasons
from ustack.wire.codec import register_error_reasons
from ustack.wire.codec import tuple_new
from ustack.wire.errors import MalformedPacket
from ustack.wire.ipv4 import ECN_MASK
from ustack.wire.ipv4 import ECN_NOT_ECT

IPV6_VERSION = 6
# Next header values (the IANA protocol numbers) RFC 8200 4 and 4.1 name.
NH_HOP_BY_HOP = 0
NH_ROUTING = 43
NH_FRAGMENT = 44
NH_ICMPV6 = 58
NH_NONE = 59  # RFC 8200 4.7: nothing follows
NH_DESTINATION = 60
# RFC 8200 4: the extension headers this layer walks, each (length + 1) * 8
# bytes long but the fragment header, always 8.
EXTENSION_HEADERS = frozenset({NH_HOP_BY_HOP, NH_ROUTING, NH_FRAGMENT, NH_DESTINATION})
DEFAULT_HOP_LIMIT = 64  # Linux's hop_limit (ipv6 conf default)
IPV6_MIN_MTU = 1280  # RFC 8200 5: every link carries 1280 bytes

# fmt: off
IPV6_HEADER = Struct(
    "version_class_flow" / BitStruct(
        "version" / Const(IPV6_VERSION, Nibble),
        "traffic_class" / Struct(  # (inside a BitStruct: bits already)
            "dscp" / BitsInteger(6),
            "ecn" / BitsInteger(2),  # RFC 3168 5, as IPv4's
        ),
        "flow_label" / BitsInteger(20),  # RFC 6437
    ),
    "payload_length" / Int16ub,  # what follows the fixed header, extension headers too
    "next_header" / Int8ub,
    "hop_limit" / Int8ub,
    "src" / BytesInteger(16),
    "dst" / BytesInteger(16),
)

# RFC 8200 4.5.
FRAGMENT_HEADER = Struct(
    "next_header" / Int8ub,
    "reserved" / Int8ub,
    "offset_flags" / BitStruct(
        "fragment_offset" / BitsInteger(13),  # in 8-byte units
        "reserved" / BitsInteger(2),
        "more_fragments" / Flag,
    ),
    "identification" / Int32ub,
)

# RFC 8200 4.3 (hop-by-hop) and 4.6 (destination options): the same layout.
OPTIONS_HEADER = Struct(
    "next_header" / Int8ub,
    "length" / Int8ub,  # in 8-byte units, not counting the first 8
    "options" / Bytes(this.length * 8 + 6),
)

# RFC 8200 4.4.
ROUTING_HEADER = Struct(
    "next_header" / Int8ub,
    "length" / Int8ub,
    "routing_type" / Int8ub,
    "segments_left" / Int8ub,
    "data" / Bytes(this.length * 8 + 4),
)

# struct's views: one code per field, in order (the two addresses as 16-byte
# strings: struct has no 128-bit integer).
IPV6_FIXED_FIELDS = (
    "version_class_flow", "payload_length", "next_header", "hop_limit", "src", "dst",
)
IPV6_FIXED = struct.Struct("!IHBB16s16s")
# IPV6_FIXED with each address as two 64-bit halves: IP input makes the
# addresses' integers from them with no int.from_bytes call per packet.
IPV6_FIXED_HALVES = struct.Struct("!IHBBQQQQ")
FRAGMENT_FIXED_FIELDS = ("next_header", "reserved", "offset_flags", "identification")
FRAGMENT_FIXED = struct.Struct("!BBHI")
# fmt: on

IPV6_HEADER_LENGTH = IPV6_FIXED.size  # 40
FRAGMENT_HEADER_LENGTH = FRAGMENT_FIXED.size  # 8
PAYLOAD_LENGTH_OFFSET = 4
NEXT_HEADER_OFFSET = 6
_MORE_FRAGMENTS = 0x0001
_OFFSET_MASK = 0xFFF8

register_error_reasons(
    IPV6_HEADER,
    ErrorReasons(
        "ipv6",
        "ipv6-truncated",
        {("version_class_flow", "version"): "ipv6-bad-version"},
    ),
)


class IPv6Header(NamedTuple):
    version: int
    dscp: int
    ecn: int
    flow_label: int
    payload_length: int
    next_header: int
    hop_limit: int
    src: int
    dst: int


class FragmentHeader(NamedTuple):
    next_header: int
    fragment_offset: int  # in 8-byte units
    more_fragments: bool
    identification: int


def parse_ipv6(packet: Buffer) -> IPv6Header:
    """The fixed header at the start of `packet`; payload length and hop
    limit are the caller's to check, which counts them."""
    if len(packet) < IPV6_HEADER_LENGTH:
        raise MalformedPacket("ipv6-truncated", f"{len(packet)} bytes, the header needs 40")
    first, payload_length, next_header, hop_limit, src, dst = IPV6_FIXED.unpack_from(packet)
    if first >> 28 != IPV6_VERSION:
        raise MalformedPacket("ipv6-bad-version", f"version {first >> 28}, expected 6")
    return tuple_new(
        IPv6Header,
        (
            IPV6_VERSION, (first >> 22) & 0x3F, (first >> 20) & ECN_MASK, first & 0xFFFFF,
            payload_length, next_header, hop_limit,
            int.from_bytes(src, "big"), int.from_bytes(dst, "big"),
        ),
    )  # fmt: skip


def parse_fragment_header(data: Buffer, offset: int) -> FragmentHeader:
    """The fragment header at `offset` of `data` (RFC 8200 4.5)."""
    if len(data) < offset + FRAGMENT_HEADER_LENGTH:
        raise MalformedPacket("ipv6-truncated", "a fragment header needs 8 bytes")
    next_header, _, offset_flags, identification = FRAGMENT_FIXED.unpack_from(data, offset)
    return FragmentHeader(
        next_header, offset_flags >> 3, bool(offset_flags & _MORE_FRAGMENTS), identification
    )


def fragment_header(next_header: int, offset: int, more: bool, identification: int) -> bytes:
    """A fragment header for data starting `offset` bytes into the datagram
    (a multiple of 8)."""
    field = (offset & _OFFSET_MASK) | (_MORE_FRAGMENTS if more else 0)
    return FRAGMENT_FIXED.pack(next_header, 0, field, identification)


def extension_length(data: Buffer, offset: int, next_header: int) -> int:
    """The length of the extension header of type `next_header` at `offset`
    (RFC 8200 4: in 8-byte units past the first 8; the fragment header is 8)."""
    if next_header == NH_FRAGMENT:
        return FRAGMENT_HEADER_LENGTH
    return (data[offset + 1] + 1) * 8


def first_word(traffic_class: int, flow_label: int) -> int:
    """Version, traffic class and flow label: the header's first 32 bits."""
    return IPV6_VERSION << 28 | (traffic_class & 0xFF) << 20 | flow_label & 0xFFFFF


def build_ipv6_in_place(
    packet: bytearray,
    *,
    src: int,
    dst: int,
    next_header: int,
    flow_label: int = 0,
    ecn: int = ECN_NOT_ECT,
    hop_limit: int = DEFAULT_HOP_LIMIT,
) -> None:
    """The fixed header (DSCP 0, the ECN field `ecn`, the flow label, the
    payload length of what follows the first 40 bytes) written over the
    first 40 bytes of `packet`: no header object, no copy. IPv6 has no
    header checksum (RFC 8200 3)."""
    payload_length = len(packet) - IPV6_HEADER_LENGTH
    if payload_length > 0xFFFF:
        raise ValueError(f"IPv6 payload length {payload_length} exceeds 65535 (no jumbograms)")
    IPV6_FIXED.pack_into(
        packet,
        0,
        first_word(ecn & ECN_MASK, flow_label),
        payload_length,
        next_header,
        hop_limit,
        src.to_bytes(16, "big"),
        dst.to_bytes(16, "big"),
    )


def build_ipv6(
    *,
    src: int,
    dst: int,
    next_header: int,
    payload: Buffer = b"",
    flow_label: int = 0,
    traffic_class: int = 0,
    hop_limit: int = DEFAULT_HOP_LIMIT,
) -> bytes:
    """A whole packet: the fixed header, then `payload` (extension headers
    included, if any)."""
    packet = bytearray(IPV6_HEADER_LENGTH)
    packet += payload
    build_ipv6_in_place(
        packet, src=src, dst=dst, next_header=next_header, flow_label=flow_label,
        hop_limit=hop_limit,
    )  # fmt: skip
    struct.pack_into("!I", packet, 0, first_word(traffic_class, flow_label))
    return bytes(packet)


def remove_fragment_header(header: Buffer) -> bytearray:
    """The unfragmentable part of a first fragment's headers (RFC 8200 4.5):
    `header` ends with the fragment header; what is returned lacks it, and the
    next-header byte that named it names what the fragment header named."""
    result = bytearray(header)
    pointer, position, next_header = NEXT_HEADER_OFFSET, IPV6_HEADER_LENGTH, result[6]
    while next_header != NH_FRAGMENT:
        length = extension_length(result, position, next_header)
        pointer = position
        next_header = result[position]
        position += length
    result[pointer] = result[position]
    del result[position : position + FRAGMENT_HEADER_LENGTH]
    return result
