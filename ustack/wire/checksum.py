"""The Internet checksum, computed by the C core in csrc/ (RFC 1071, RFC 1624).

Every function takes any contiguous buffer (bytes, bytearray, memoryview,
including slices) and hands it to C without copying, through ffi.from_buffer.
The length passed to C is that of the cdata (the buffer's size in bytes), not
len(data), which counts items in a memoryview whose itemsize is not 1.
16-bit values are the numbers as they stand on the wire: pack them with "!H".
"""

from __future__ import annotations

from ustack.wire._checksum import ffi
from ustack.wire._checksum import lib
from ustack.wire.address import IPV4_MAX

Buffer = bytes | bytearray | memoryview

_from_buffer = ffi.from_buffer


def ones_sum(data: Buffer, initial: int = 0) -> int:
    """Folded one's-complement sum of data plus `initial`, not complemented."""
    buf = _from_buffer(data)
    return lib.us_ones_sum(buf, len(buf), initial)


def internet_checksum(data: Buffer) -> int:
    """The checksum to put in a header; a header with a correct one sums to 0."""
    buf = _from_buffer(data)
    return lib.us_checksum(buf, len(buf))


def prefix_checksum(data: Buffer, length: int) -> int:
    """internet_checksum of the first `length` bytes of `data` (a header at
    the front of its packet), without slicing a view of them first."""
    buf = _from_buffer(data)
    if not 0 <= length <= len(buf):
        raise ValueError(f"prefix of {length} bytes of a {len(buf)}-byte buffer")
    return lib.us_checksum(buf, length)


def pseudo_header_sum(src: int, dst: int, protocol: int, length: int) -> int:
    """Folded sum of the pseudo-header, IPv4 (RFC 793 3.1) or IPv6 (RFC 8200
    8.1: 16-byte addresses, a 32-bit upper-layer length, the next header);
    addresses as integers, an IPv6 one above 0xFFFFFFFF (wire/address.py)."""
    if (src | dst) > IPV4_MAX:
        return _pseudo_sum_v6(src, dst, protocol, length)
    return lib.us_pseudo_sum_v4(src, dst, protocol, length)


def _pseudo_sum_v6(src: int, dst: int, protocol: int, length: int) -> int:
    # 2**16 = 1 modulo 0xFFFF, so an integer modulo 0xFFFF is the one's-complement
    # sum of its 16-bit words (RFC 1071 2(A)) up to 0 for 0xFFFF: a 128-bit
    # address folds in one operation, no bytes, no call into C.
    total = src % 0xFFFF + dst % 0xFFFF + (length >> 16) + (length & 0xFFFF) + protocol
    # End-around carry folds a non-zero sum to 1..0xFFFF, never 0, and an IPv6
    # address is never 0: so a 0 here is 0xFFFF.
    return total % 0xFFFF or 0xFFFF


def transport_checksum(src: int, dst: int, protocol: int, segment: Buffer) -> int:
    """TCP/UDP/ICMPv6 checksum over the pseudo-header and segment, either
    family: 0 means valid (checksum field filled), else the value to write
    (checksum field zeroed)."""
    buf = _from_buffer(segment)
    length = len(buf)
    if (src | dst) > IPV4_MAX:
        # _pseudo_sum_v6 inlined (twice per IPv6 segment: in and out).
        pseudo = src % 0xFFFF + dst % 0xFFFF + (length >> 16) + (length & 0xFFFF) + protocol
        return ~lib.us_ones_sum(buf, length, pseudo % 0xFFFF or 0xFFFF) & 0xFFFF
    return lib.us_l4_checksum_v4(src, dst, protocol, buf, length)


def update16(checksum: int, old_word: int, new_word: int) -> int:
    """RFC 1624 incremental update for one changed 16-bit field."""
    return lib.us_update16(checksum, old_word, new_word)


def update32(checksum: int, old_value: int, new_value: int) -> int:
    """RFC 1624 incremental update for one changed 32-bit field."""
    return lib.us_update32(checksum, old_value, new_value)
