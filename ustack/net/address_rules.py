"""Which addresses may be answered, and which datagrams may cause an ICMP
error (RFC 1122 3.2.1.3 and 3.2.2, RFC 1812 4.3.2.7; Linux's icmp_send).

RFC 1122 3.2.2: "An ICMP error message MUST NOT be sent as the result of
receiving: an ICMP error message, or a datagram destined to an IP broadcast
or IP multicast address, or a datagram sent as a link-layer broadcast, or a
non-initial fragment, or a datagram whose source address does not define a
single host -- e.g., a zero address, a loopback address, a broadcast address,
a multicast address, or a Class E address." (A TUN has no link-layer
broadcast.) These rules hold whatever the protocol of the offending datagram.
"""

from __future__ import annotations

from collections.abc import Container

from ustack.trace.vocabulary import DropReason
from ustack.wire.icmp import ICMP_ERROR_TYPES, NR_ICMP_TYPES
from ustack.wire.ipv4 import PROTO_ICMP

_FRAGMENT_OFFSET_MASK = 0x1FFF


def is_unicast_host(address: int) -> bool:
    """RFC 1122 3.2.1.3: an address that names one host on the wire; not
    0/8 ("this host on this network"), 127/8 (loopback), 224/4 (multicast),
    240/4 (class E, reserved) or the limited broadcast. The subnet's own
    broadcasts are the caller's to add (they depend on the link)."""
    first_octet = address >> 24
    return not (first_octet == 0 or first_octet == 127 or first_octet >= 224)


def icmp_error_forbidden(
    offending: bytes | bytearray | memoryview, broadcasts: Container[int]
) -> DropReason | None:
    """Why no ICMP error may be sent about `offending` (a whole IPv4 datagram
    we received, header first), or None when one may."""
    if len(offending) < 20:
        return DropReason.ICMP_ERROR_UNQUOTABLE
    header_length = (offending[0] & 0x0F) * 4
    fragment_offset = int.from_bytes(offending[6:8], "big") & _FRAGMENT_OFFSET_MASK
    protocol = offending[9]
    src = int.from_bytes(offending[12:16], "big")
    dst = int.from_bytes(offending[16:20], "big")
    if not is_unicast_host(dst) or dst in broadcasts:
        return DropReason.ICMP_ERROR_ABOUT_BROADCAST
    if fragment_offset:
        return DropReason.ICMP_ERROR_ABOUT_FRAGMENT
    if not is_unicast_host(src) or src in broadcasts:
        return DropReason.ICMP_ERROR_TO_NON_UNICAST
    if protocol == PROTO_ICMP:
        if len(offending) <= header_length:
            return DropReason.ICMP_ERROR_UNQUOTABLE  # no ICMP type to tell: Linux sends none
        type_ = offending[header_length]
        if type_ > NR_ICMP_TYPES or type_ in ICMP_ERROR_TYPES:
            return DropReason.ICMP_ERROR_ABOUT_ICMP_ERROR
    return None
