"""Addresses of both families as plain ints (issue 15).

IPv4 is 0 <= a < 2**32, IPv6 its 128-bit value. The IPv6 layer never accepts
nor sends from or to ::/96 (unspecified, loopback, the deprecated
IPv4-compatible addresses, RFC 4291 2.5.5.1) nor ::ffff:0:0/96 (IPv4-mapped,
RFC 4291 2.5.5.2), so every IPv6 address it handles is above 0xFFFFFFFF and
`is_ipv6` needs no family tag: the TCP demux keeps int-keyed tables for both.
"""

from __future__ import annotations

import functools
import ipaddress

IPV4_MAX = 0xFFFFFFFF
# ::ffff:0:0/96, RFC 4291 2.5.5.2: an IPv4 address in IPv6 clothing.
_IPV4_MAPPED_PREFIX = 0xFFFF << 32


def is_ipv6(address: int) -> bool:
    """True for an IPv6 address under the convention above."""
    return address > IPV4_MAX


def is_embedded_ipv4(address: int) -> bool:
    """::/96 or ::ffff:0:0/96: the IPv6 ranges an IPv6 packet never carries here."""
    return address >> 32 in (0, 0xFFFF)


@functools.lru_cache(maxsize=4096)
def format_address(address: int) -> str:
    """198.18.0.2 or 2001:2::2 (RFC 5952 text; cached: a trace names the same
    few addresses)."""
    if address > IPV4_MAX:
        return str(ipaddress.IPv6Address(address))
    return str(ipaddress.IPv4Address(address))


def format_endpoint(address: int, port: int) -> str:
    """198.18.0.2:80 or [2001:2::2]:80, as ss(8) writes them (RFC 5952 6)."""
    if address > IPV4_MAX:
        return f"[{format_address(address)}]:{port}"
    return f"{format_address(address)}:{port}"


def parse_address(text: str) -> int:
    """The int of an IPv4 or IPv6 address in text; ValueError says why not,
    including for an IPv6 address in ::/96 or ::ffff:0:0/96."""
    try:
        parsed = ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither an IPv4 nor an IPv6 address") from None
    value = int(parsed)
    if parsed.version == 6 and is_embedded_ipv4(value):
        raise ValueError(
            f"{text!r} is in ::/96 or ::ffff:0:0/96 (RFC 4291 2.5.5): "
            "write an IPv4 address as such, an IPv6 one outside those ranges"
        )
    return value
