"""ICMPv6 (RFC 4443), with the Neighbor Discovery (RFC 4861) and MLD (RFC
2710, RFC 3810) types a TUN sees.

The header is ICMP's layout (type, code, checksum, 32 bits that depend on the
type), so ICMP_HEADER and ICMP_FIXED in wire/icmp.py describe it; the
checksum differs: it covers the IPv6 pseudo-header too (RFC 4443 2.3), so
building and checking need the two addresses.
"""

from __future__ import annotations

from ustack.wire.checksum import Buffer
from ustack.wire.checksum import transport_checksum
from ustack.wire.codec import pack_checksum
from ustack.wire.errors import MalformedPacket
from ustack.wire.icmp import ICMP_CHECKSUM_OFFSET
from ustack.wire.icmp import ICMP_FIXED
from ustack.wire.icmp import ICMP_HEADER_LENGTH
from ustack.wire.icmp import QUOTED_TRANSPORT_MIN
from ustack.wire.icmp import Quote
from ustack.wire.ipv6 import EXTENSION_HEADERS
from ustack.wire.ipv6 import IPV6_FIXED
from ustack.wire.ipv6 import IPV6_HEADER_LENGTH
from ustack.wire.ipv6 import IPV6_VERSION
from ustack.wire.ipv6 import NH_FRAGMENT
from ustack.wire.ipv6 import NH_ICMPV6
from ustack.wire.ipv6 import extension_length

# Error types (RFC 4443 2.1: below 128) and their codes.
DEST_UNREACH = 1
NO_ROUTE = 0
ADMIN_PROHIBITED = 1
BEYOND_SCOPE = 2
ADDRESS_UNREACH = 3
PORT_UNREACH = 4
SOURCE_POLICY_FAILED = 5
REJECT_ROUTE = 6
PACKET_TOO_BIG = 2
TIME_EXCEEDED = 3
HOP_LIMIT_EXCEEDED = 0
REASSEMBLY_TIME_EXCEEDED = 1
PARAMETER_PROBLEM = 4
ERRONEOUS_HEADER_FIELD = 0
UNRECOGNIZED_NEXT_HEADER = 1
UNRECOGNIZED_OPTION = 2
HEADER_CHAIN_INCOMPLETE = 3  # RFC 7112 5
# Informational types (RFC 4443 2.1: 128 and above).
ECHO_REQUEST = 128
ECHO_REPLY = 129
MLD_QUERY = 130
MLD_REPORT = 131
MLD_DONE = 132
ROUTER_SOLICITATION = 133
ROUTER_ADVERTISEMENT = 134
NEIGHBOR_SOLICITATION = 135
NEIGHBOR_ADVERTISEMENT = 136
REDIRECT = 137
MLD2_REPORT = 143
NEIGHBOR_DISCOVERY_TYPES = frozenset(range(ROUTER_SOLICITATION, REDIRECT + 1))
MLD_TYPES = frozenset({MLD_QUERY, MLD_REPORT, MLD_DONE, MLD2_REPORT})


def is_error_type(type_: int) -> bool:
    """RFC 4443 2.1: error messages have a type below 128."""
    return type_ < ECHO_REQUEST


def build_icmpv6(
    *, src: int, dst: int, type: int, code: int, rest: int = 0, payload: Buffer = b""
) -> bytes:
    """Header and payload, the checksum over the pseudo-header filled in (RFC 4443 2.3)."""
    message = bytearray(ICMP_HEADER_LENGTH)
    ICMP_FIXED.pack_into(message, 0, type, code, 0, rest)  # checksum 0 while summing
    message += payload
    pack_checksum(message, ICMP_CHECKSUM_OFFSET, transport_checksum(src, dst, NH_ICMPV6, message))
    return bytes(message)


def upper_layer(packet: Buffer, limit: int | None = None) -> tuple[int, int]:
    """(next header, offset) of the first header past the extension headers
    of the IPv6 packet `packet` (RFC 8200 4.1), within its first `limit`
    bytes; the walk stops at a non-first fragment (its data is no header) or
    at a header that does not fit, which it returns."""
    end = len(packet) if limit is None else min(limit, len(packet))
    next_header, offset = packet[6], IPV6_HEADER_LENGTH
    while next_header in EXTENSION_HEADERS and offset + 8 <= end:
        if next_header == NH_FRAGMENT and int.from_bytes(packet[offset + 2 : offset + 4]) >> 3:
            break
        following = packet[offset]
        offset += extension_length(packet, offset, next_header)
        next_header = following
    return next_header, offset


def parse_quote_ipv6(data: Buffer) -> Quote:
    """The quoted IPv6 packet in an ICMPv6 error's data (RFC 4443 2.4(c)),
    past its extension headers: the same Quote as IPv4's, `protocol` the
    upper-layer header's, `total_length` the header's 40 plus its payload
    length."""
    if len(data) < IPV6_HEADER_LENGTH:
        raise MalformedPacket("icmp6-quote-truncated", f"{len(data)} bytes, IPv6 needs 40")
    first, payload_length, _, _, src, dst = IPV6_FIXED.unpack_from(data)
    if first >> 28 != IPV6_VERSION:
        raise MalformedPacket("icmp6-quote-not-ipv6", f"version {first >> 28}")
    protocol, offset = upper_layer(data)
    if len(data) < offset + QUOTED_TRANSPORT_MIN:
        raise MalformedPacket(
            "icmp6-quote-truncated",
            f"{len(data)} bytes, the quote needs {offset + QUOTED_TRANSPORT_MIN}",
        )
    return Quote(
        int.from_bytes(src, "big"),
        int.from_bytes(dst, "big"),
        protocol,
        IPV6_HEADER_LENGTH + payload_length,
        bytes(data[offset:]),
    )
