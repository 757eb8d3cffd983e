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
from ustack.wire.address import is_embedded_ipv4
from ustack.wire.icmp import ICMP_ERROR_TYPES
from ustack.wire.icmp import NR_ICMP_TYPES
from ustack.wire.icmpv6 import PACKET_TOO_BIG
from ustack.wire.icmpv6 import PARAMETER_PROBLEM
from ustack.wire.icmpv6 import UNRECOGNIZED_OPTION
from ustack.wire.icmpv6 import is_error_type
from ustack.wire.icmpv6 import upper_layer
from ustack.wire.ipv4 import PROTO_ICMP
from ustack.wire.ipv6 import IPV6_HEADER_LENGTH
from ustack.wire.ipv6 import NH_ICMPV6

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


# ---- IPv6 (RFC 4291, RFC 4443 2.4(e)) ------------------------------------------------


def is_ipv6_multicast(address: int) -> bool:
    """ff00::/8 (RFC 4291 2.7)."""
    return address >> 120 == 0xFF


def is_ipv6_unicast_host(address: int) -> bool:
    """An IPv6 address that names one host: not multicast (RFC 4291 2.7:
    never a source), and outside ::/96 (unspecified, loopback, the deprecated
    IPv4-compatible ones) and ::ffff:0:0/96 (IPv4-mapped: Linux's
    ip6_rcv_core drops those as a source), RFC 4291 2.5.5."""
    return not (is_ipv6_multicast(address) or is_embedded_ipv4(address))


def icmpv6_error_forbidden(
    offending: bytes | bytearray | memoryview, type_: int, code: int
) -> DropReason | None:
    """Why no ICMPv6 error of (type_, code) may be sent about `offending` (a
    whole IPv6 packet we received), or None when one may (RFC 4443 2.4(e)):
    none about an ICMPv6 error (or a packet too short to tell), none about a
    packet to a multicast address but Packet Too Big and Parameter Problem
    code 2, none to a source that is no single host."""
    if len(offending) < IPV6_HEADER_LENGTH:
        return DropReason.ICMP_ERROR_UNQUOTABLE
    src = int.from_bytes(offending[8:24], "big")
    dst = int.from_bytes(offending[24:40], "big")
    exempt = type_ == PACKET_TOO_BIG or (type_ == PARAMETER_PROBLEM and code == UNRECOGNIZED_OPTION)
    if is_ipv6_multicast(dst) and not exempt:
        return DropReason.ICMP_ERROR_ABOUT_BROADCAST
    if not is_ipv6_unicast_host(src):
        return DropReason.ICMP_ERROR_TO_NON_UNICAST
    next_header, offset = upper_layer(offending)
    if next_header == NH_ICMPV6:
        if len(offending) <= offset:
            return DropReason.ICMP_ERROR_UNQUOTABLE  # no type to tell
        if is_error_type(offending[offset]):
            return DropReason.ICMP_ERROR_ABOUT_ICMP_ERROR
    return None
