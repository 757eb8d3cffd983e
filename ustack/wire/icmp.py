"""The ICMP header (RFC 792), with the types and codes we send or interpret.

ICMP_HEADER is the single description of the header; ICMP_FIXED is struct's
view of it, written out next to it for the per-packet codec and checked
against it by tests/unit/test_headers.py (see ustack.wire.codec).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from construct import Bytes
from construct import Int8ub
from construct import Int16ub
from construct import Struct
from construct import Switch
from construct import this

from ustack.wire.checksum import Buffer
from ustack.wire.checksum import internet_checksum
from ustack.wire.codec import ErrorReasons
from ustack.wire.codec import pack_checksum
from ustack.wire.codec import register_error_reasons
from ustack.wire.codec import tuple_new
from ustack.wire.errors import MalformedPacket

# Types.
ECHO_REPLY = 0
DEST_UNREACH = 3
SOURCE_QUENCH = 4  # deprecated (RFC 6633): ignored
REDIRECT = 5
ECHO_REQUEST = 8
TIME_EXCEEDED = 11
PARAMETER_PROBLEM = 12
# The error types (Linux's icmp_pointers[].error); a type above NR_ICMP_TYPES
# counts as an error too, and is never rate-limited (as Linux takes them).
ICMP_ERROR_TYPES = frozenset(
    {DEST_UNREACH, SOURCE_QUENCH, REDIRECT, TIME_EXCEEDED, PARAMETER_PROBLEM}
)
NR_ICMP_TYPES = 18
# DEST_UNREACH codes
NET_UNREACH = 0
HOST_UNREACH = 1
PROTO_UNREACH = 2
PORT_UNREACH = 3
FRAG_NEEDED = 4
SOURCE_ROUTE_FAILED = 5
NET_UNKNOWN = 6
HOST_UNKNOWN = 7
HOST_ISOLATED = 8
NET_PROHIBITED = 9
HOST_PROHIBITED = 10
NET_UNREACH_FOR_TOS = 11
HOST_UNREACH_FOR_TOS = 12
ADMIN_PROHIBITED = 13  # RFC 1812
PRECEDENCE_VIOLATION = 14
PRECEDENCE_CUTOFF = 15
# TIME_EXCEEDED codes
TTL_EXCEEDED = 0
REASSEMBLY_TIME_EXCEEDED = 1

ICMP_ECHO = Struct("identifier" / Int16ub, "sequence" / Int16ub)
ICMP_DEST_UNREACH = Struct("unused" / Int16ub, "next_hop_mtu" / Int16ub)  # MTU: RFC 1191

# fmt: off
ICMP_HEADER = Struct(
    "type" / Int8ub,
    "code" / Int8ub,
    "checksum" / Int16ub,
    "rest" / Switch(
        this.type,
        {ECHO_REQUEST: ICMP_ECHO, ECHO_REPLY: ICMP_ECHO, DEST_UNREACH: ICMP_DEST_UNREACH},
        default=Bytes(4),
    ),
)
# fmt: on

# struct's view of ICMP_HEADER: one code per field, in order; `rest`, whatever
# the type makes of it, as one 32-bit number.
ICMP_FIXED_FIELDS = ("type", "code", "checksum", "rest")
ICMP_FIXED = struct.Struct("!BBHI")

ICMP_HEADER_LENGTH = ICMP_FIXED.size
ICMP_CHECKSUM_OFFSET = 2  # after type and code

register_error_reasons(ICMP_HEADER, ErrorReasons("icmp", "icmp-truncated", {}))


class IcmpHeader(NamedTuple):
    type: int
    code: int
    checksum: int
    rest: int  # the 4 bytes after the checksum; echo: identifier << 16 | sequence


def parse_icmp(message: Buffer) -> IcmpHeader:
    """Parse the ICMP header; the checksum is the caller's to check."""
    if len(message) < ICMP_HEADER_LENGTH:
        raise MalformedPacket("icmp-truncated", f"{len(message)} bytes, the header needs 8")
    return tuple_new(IcmpHeader, ICMP_FIXED.unpack_from(message))


def build_icmp(*, type: int, code: int, rest: int = 0, payload: Buffer = b"") -> bytes:
    """Header and payload, checksum filled in."""
    message = bytearray(ICMP_HEADER_LENGTH)
    ICMP_FIXED.pack_into(message, 0, type, code, 0, rest)  # checksum 0 while summing
    message += payload
    pack_checksum(message, ICMP_CHECKSUM_OFFSET, internet_checksum(message))
    return bytes(message)


# An ICMP error quotes the offending datagram's IP header and at least its
# first 8 bytes of data (RFC 792): for TCP, the ports and the sequence number.
QUOTED_TRANSPORT_MIN = 8


class Quote(NamedTuple):
    """The datagram an ICMP error is about, as far as it is quoted."""

    src: int
    dst: int
    protocol: int
    total_length: int
    transport: bytes  # the quoted bytes after its IP header (8 or more)


def parse_quote(data: Buffer) -> Quote:
    """The quoted IPv4 header and what follows it, in an ICMP error's data."""
    if len(data) < 20:
        raise MalformedPacket("icmp-quote-truncated", f"{len(data)} bytes, an IP header needs 20")
    version_ihl = data[0]
    header_length = (version_ihl & 0x0F) * 4
    if version_ihl >> 4 != 4 or header_length < 20:
        raise MalformedPacket("icmp-quote-not-ipv4", f"first byte {version_ihl:#04x}")
    if len(data) < header_length + QUOTED_TRANSPORT_MIN:
        raise MalformedPacket(
            "icmp-quote-truncated",
            f"{len(data)} bytes, the quote needs {header_length + QUOTED_TRANSPORT_MIN}",
        )
    total_length, protocol, src, dst = _QUOTE_FIELDS.unpack_from(data)
    return Quote(src, dst, protocol, total_length, bytes(data[header_length:]))


# total_length, protocol, src, dst of the quoted IPv4 header.
_QUOTE_FIELDS = struct.Struct("!2xH5xB2xII")
