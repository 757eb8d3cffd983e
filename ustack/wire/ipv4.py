"""The IPv4 header (RFC 791 3.1) and the protocol numbers it carries.

IPV4_HEADER is the single description of the header; IPV4_FIXED is struct's
view of its fixed 20 bytes, written out next to it for the per-packet codec
and checked against it by tests/unit/test_headers.py (see ustack.wire.codec).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from construct import BitsInteger
from construct import BitStruct
from construct import Bytes
from construct import Const
from construct import ExprValidator
from construct import Flag
from construct import Int8ub
from construct import Int16ub
from construct import Int32ub
from construct import Nibble
from construct import Struct
from construct import obj_
from construct import this

from ustack.wire.checksum import Buffer
from ustack.wire.checksum import internet_checksum
from ustack.wire.checksum import prefix_checksum
from ustack.wire.codec import MAX_OPTIONS_LENGTH
from ustack.wire.codec import ErrorReasons
from ustack.wire.codec import pack_checksum
from ustack.wire.codec import register_error_reasons
from ustack.wire.codec import tuple_new
from ustack.wire.errors import MalformedPacket

# Protocol numbers of the payloads we handle (the IANA registry).
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

IPV4_VERSION = 4

# The ECN field, the low two bits of the old TOS byte (RFC 3168 5).
ECN_NOT_ECT = 0b00
ECN_ECT1 = 0b01
ECN_ECT0 = 0b10
ECN_CE = 0b11
ECN_MASK = 0b11

# Laid out like the RFC diagram, which the formatter would undo.
# fmt: off
IPV4_HEADER = Struct(
    "version_ihl" / BitStruct(
        "version" / Const(IPV4_VERSION, Nibble),
        "ihl" / ExprValidator(Nibble, obj_ >= 5),  # header length in 32-bit words
    ),
    "dscp_ecn" / BitStruct(
        "dscp" / BitsInteger(6),
        "ecn" / BitsInteger(2),
    ),
    "total_length" / Int16ub,
    "identification" / Int16ub,
    "flags_fragment" / BitStruct(
        "reserved" / Flag,
        "dont_fragment" / Flag,
        "more_fragments" / Flag,
        "fragment_offset" / BitsInteger(13),  # in 8-byte units
    ),
    "ttl" / Int8ub,
    "protocol" / Int8ub,
    "checksum" / Int16ub,
    "src" / Int32ub,
    "dst" / Int32ub,
    "options" / Bytes(this.version_ihl.ihl * 4 - 20),
)

# struct's view of IPV4_HEADER up to its options: one code per field, in order.
IPV4_FIXED_FIELDS = (
    "version_ihl", "dscp_ecn", "total_length", "identification", "flags_fragment",
    "ttl", "protocol", "checksum", "src", "dst",
)
IPV4_FIXED = struct.Struct("!BBHHHBBHII")
# fmt: on

# The bit fields inside those bytes, as the BitStructs above lay them out.
_DONT_FRAGMENT = 0x4000
DONT_FRAGMENT = _DONT_FRAGMENT  # the flags-and-offset field of a whole datagram with DF
_MORE_FRAGMENTS = 0x2000
_FRAGMENT_OFFSET = 0x1FFF
# (public names for IP's per-packet paths, which read the fields themselves)
IPV4_DONT_FRAGMENT = _DONT_FRAGMENT
IPV4_MORE_FRAGMENTS = _MORE_FRAGMENTS
IPV4_FRAGMENT_OFFSET = _FRAGMENT_OFFSET

IPV4_MIN_HEADER_LENGTH = IPV4_FIXED.size
IPV4_CHECKSUM_OFFSET = 10  # after version_ihl .. protocol

# The receive path's shortcut for the common header (version 4, IHL 5: no
# options), which parse_ipv4 would accept: the fields IP input checks, without
# building an IPv4Header. A packet whose first byte differs takes parse_ipv4.
IPV4_PLAIN_FIRST_BYTE = IPV4_VERSION << 4 | IPV4_MIN_HEADER_LENGTH >> 2
# IPV4_FIXED with the fields the shortcut does not read as pad bytes (x), which
# struct skips without making objects of them: total_length, flags_fragment,
# ttl, protocol, src, dst.
_IP_INPUT_FIELDS = struct.Struct("!2xH2xHBB2xII")

register_error_reasons(
    IPV4_HEADER,
    ErrorReasons(
        "ipv4",
        "ipv4-truncated",
        {
            ("version_ihl", "version"): "ipv4-bad-version",
            ("version_ihl", "ihl"): "ipv4-bad-ihl",
        },
    ),
)


class IPv4Header(NamedTuple):
    version: int
    ihl: int
    dscp: int
    ecn: int
    total_length: int
    identification: int
    dont_fragment: bool
    more_fragments: bool
    fragment_offset: int
    ttl: int
    protocol: int
    checksum: int
    src: int
    dst: int
    options: bytes

    @property
    def header_length(self) -> int:
        return self.ihl * 4


def _ipv4_error(packet: Buffer) -> MalformedPacket:
    """Why `packet` is malformed, checked in the order the construct parse meets it."""
    if not packet:
        return MalformedPacket("ipv4-truncated", "0 bytes, the header needs 20")
    version, ihl = packet[0] >> 4, packet[0] & 0x0F
    if version != IPV4_VERSION:
        return MalformedPacket("ipv4-bad-version", f"version {version}, expected 4")
    if ihl < 5:
        return MalformedPacket("ipv4-bad-ihl", f"ihl {ihl} is below the minimum 5")
    return MalformedPacket("ipv4-truncated", f"{len(packet)} bytes, the header needs {ihl * 4}")


def ipv4_plain_fields(packet: Buffer) -> tuple[int, bool, int, int, int, int, int]:
    """(total_length, more_fragments, fragment_offset, ttl, protocol, src, dst)
    of a packet whose first byte is IPV4_PLAIN_FIRST_BYTE, at least 20 bytes long."""
    total_length, flags_fragment, ttl, protocol, src, dst = _IP_INPUT_FIELDS.unpack_from(packet)
    more_fragments = (flags_fragment & _MORE_FRAGMENTS) != 0
    return total_length, more_fragments, flags_fragment & _FRAGMENT_OFFSET, ttl, protocol, src, dst


def fragment_field(offset: int, more_fragments: bool) -> int:
    """The flags and fragment offset field (RFC 791 3.1) of a fragment whose
    data starts `offset` bytes into the datagram (a multiple of 8), DF clear."""
    return (_MORE_FRAGMENTS if more_fragments else 0) | offset >> 3


def parse_ipv4(packet: Buffer) -> IPv4Header:
    """Parse the IPv4 header at the start of `packet`.

    Checksum, total_length and ttl are left to the caller, which counts them.
    """
    if len(packet) < IPV4_MIN_HEADER_LENGTH:
        raise _ipv4_error(packet)
    (
        version_ihl, dscp_ecn, total_length, identification, flags_fragment,
        ttl, protocol, checksum, src, dst,
    ) = IPV4_FIXED.unpack_from(packet)  # fmt: skip
    options = b""
    if version_ihl != IPV4_PLAIN_FIRST_BYTE:
        header_length = (version_ihl & 0x0F) * 4
        too_short = header_length < IPV4_MIN_HEADER_LENGTH  # IHL below 5
        if version_ihl >> 4 != IPV4_VERSION or too_short or header_length > len(packet):
            raise _ipv4_error(packet)
        options = bytes(packet[IPV4_MIN_HEADER_LENGTH:header_length])
    return tuple_new(
        IPv4Header,
        (
            version_ihl >> 4, version_ihl & 0x0F, dscp_ecn >> 2, dscp_ecn & 0x03,
            total_length, identification,
            (flags_fragment & _DONT_FRAGMENT) != 0, (flags_fragment & _MORE_FRAGMENTS) != 0,
            flags_fragment & _FRAGMENT_OFFSET,
            ttl, protocol, checksum, src, dst, options,
        ),
    )  # fmt: skip


def build_ipv4(
    *,
    src: int,
    dst: int,
    protocol: int,
    payload_length: int,
    ttl: int = 64,
    identification: int = 0,
    dont_fragment: bool = True,
    dscp: int = 0,
    ecn: int = 0,
    options: bytes = b"",
) -> bytes:
    """The IPv4 header (options zero-padded to 4 bytes), checksum filled in."""
    padded_options = options + bytes(-len(options) % 4)
    if len(padded_options) > MAX_OPTIONS_LENGTH:
        raise ValueError(f"{len(options)} bytes of IPv4 options, at most 40 fit")
    header_length = IPV4_MIN_HEADER_LENGTH + len(padded_options)
    total_length = header_length + payload_length
    if total_length > 0xFFFF:
        raise ValueError(f"IPv4 total length {total_length} exceeds 65535")
    header = bytearray(header_length)
    IPV4_FIXED.pack_into(
        header,
        0,
        IPV4_VERSION << 4 | header_length >> 2,
        (dscp & 0x3F) << 2 | ecn & 0x03,  # masked: a wide value cannot spill over
        total_length,
        identification,
        _DONT_FRAGMENT if dont_fragment else 0,  # reserved bit, MF and offset 0
        ttl,
        protocol,
        0,  # checksum: summed below, with the field 0
        src,
        dst,
    )
    header[IPV4_MIN_HEADER_LENGTH:] = padded_options
    pack_checksum(header, IPV4_CHECKSUM_OFFSET, internet_checksum(header))
    return bytes(header)


def build_ipv4_in_place(
    packet: bytearray,
    *,
    src: int,
    dst: int,
    protocol: int,
    ttl: int,
    identification: int,
    flags_fragment: int = _DONT_FRAGMENT,
    ecn: int = ECN_NOT_ECT,
) -> None:
    """build_ipv4's header with no options, DF set (or the `flags_fragment`
    field of a fragment: fragment_field()), DSCP 0 and the ECN field `ecn`,
    written over the first 20 bytes of `packet` (the payload follows them):
    no header object, no copy."""
    total_length = len(packet)
    if total_length > 0xFFFF:
        raise ValueError(f"IPv4 total length {total_length} exceeds 65535")
    IPV4_FIXED.pack_into(
        packet,
        0,
        IPV4_PLAIN_FIRST_BYTE,
        ecn & ECN_MASK,  # DSCP 0
        total_length,
        identification,
        flags_fragment,
        ttl,
        protocol,
        0,  # checksum: summed below, with the field 0
        src,
        dst,
    )
    pack_checksum(packet, IPV4_CHECKSUM_OFFSET, prefix_checksum(packet, IPV4_MIN_HEADER_LENGTH))
