"""What the study tools need to know of a raw IP packet of either family: its
addresses, its upper-layer protocol and where that header starts.

The trace filter and the fault injector look at packets at the TUN boundary,
before (or after) the stack: they must not trust them, and need no more than
this. IPv4's header length is its IHL; IPv6's extension headers are walked in
order up to the upper-layer header (RFC 8200 4), as the IPv6 layer does.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

from ustack.wire.address import format_address
from ustack.wire.address import is_ipv6
from ustack.wire.checksum import Buffer
from ustack.wire.ipv4 import PROTO_TCP
from ustack.wire.ipv4 import PROTO_UDP
from ustack.wire.ipv6 import EXTENSION_HEADERS
from ustack.wire.ipv6 import IPV6_HEADER_LENGTH
from ustack.wire.ipv6 import NH_FRAGMENT
from ustack.wire.ipv6 import extension_length

IPV4_MIN_HEADER = 20
# Version and IHL, flags and fragment offset, protocol, source, destination:
# one unpack per packet (this runs for every packet while a fault rule or a
# trace filter is set).
_IPV4_FIELDS = struct.Struct("!B5xHxB2xII")
_PORTS = struct.Struct("!HH")
_MAX_EXTENSION_HEADERS = 16  # more is an attack, not a packet (Linux stops sooner)


class PacketView(NamedTuple):
    """`upper`: the offset of the upper-layer header, or None when this
    packet does not hold it (a fragment past the first, a chain cut short)."""

    version: int
    src: int
    dst: int
    protocol: int  # IPv4's protocol, IPv6's last next header
    upper: int | None

    def ports(self, packet: Buffer) -> tuple[int, int] | None:
        """(source, destination) of the packet's TCP or UDP header, if it holds them."""
        if self.upper is None or self.protocol not in (PROTO_TCP, PROTO_UDP):
            return None
        if len(packet) < self.upper + 4:
            return None
        source, destination = _PORTS.unpack_from(packet, self.upper)
        return source, destination

    def text(self, address: int) -> str:
        """One of its addresses as the trace writes it. By the packet's
        version, not by the int: an IPv6 packet may come from :: (the
        kernel's MLD reports before it has a link-local address, RFC 3810
        5.2.13), which the int convention would take for 0.0.0.0."""
        if self.version == 6 and not is_ipv6(address):  # rare: format_address caches the rest
            return str(ipaddress.IPv6Address(address))
        return format_address(address)


def view(packet: Buffer) -> PacketView | None:
    """The packet's view, or None for bytes that are no IPv4 or IPv6 header."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= IPV4_MIN_HEADER:
        version_ihl, fragment, protocol, src, dst = _IPV4_FIELDS.unpack_from(packet)
        ihl = (version_ihl & 0x0F) * 4
        # RFC 791: only the fragment at offset 0 holds the upper-layer header.
        first = fragment & 0x1FFF == 0
        upper = ihl if first and ihl >= IPV4_MIN_HEADER else None
        return PacketView(4, src, dst, protocol, upper)
    if version == 6 and len(packet) >= IPV6_HEADER_LENGTH:
        protocol, upper = _walk_ipv6(packet)
        return PacketView(
            6,
            int.from_bytes(packet[8:24], "big"),
            int.from_bytes(packet[24:40], "big"),
            protocol,
            upper,
        )
    return None


def _walk_ipv6(packet: Buffer) -> tuple[int, int | None]:
    """(the upper-layer protocol, its offset) past the extension headers
    (RFC 8200 4.1 order is the sender's business here: we only read)."""
    next_header = packet[6]
    offset = IPV6_HEADER_LENGTH
    for _ in range(_MAX_EXTENSION_HEADERS):
        if next_header not in EXTENSION_HEADERS:
            return next_header, offset
        if len(packet) < offset + 8:
            return next_header, None
        # RFC 8200 4.5: past the first fragment, the upper header is not here.
        later_fragment = int.from_bytes(packet[offset + 2 : offset + 4], "big") & 0xFFF8
        if next_header == NH_FRAGMENT and later_fragment:
            return packet[offset], None
        following = packet[offset]
        offset += extension_length(packet, offset, next_header)
        next_header = following
    return next_header, None
