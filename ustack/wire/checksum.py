"""The Internet checksum, computed by the C core in csrc/ (RFC 1071, RFC 1624).

Every function takes any contiguous buffer (bytes, bytearray, memoryview,
including slices) and hands it to C without copying, through ffi.from_buffer.
The length passed to C is that of the cdata (the buffer's size in bytes), not
len(data), which counts items in a memoryview whose itemsize is not 1.
16-bit values are the numbers as they stand on the wire: pack them with "!H".
"""

from __future__ import annotations

from ustack.wire._checksum import ffi, lib

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
    """Folded sum of the IPv4 pseudo-header; addresses as integers."""
    return lib.us_pseudo_sum_v4(src, dst, protocol, length)


def transport_checksum(src: int, dst: int, protocol: int, segment: Buffer) -> int:
    """TCP/UDP checksum over the pseudo-header and segment: 0 means valid
    (checksum field filled), else the value to write (checksum field zeroed)."""
    buf = _from_buffer(segment)
    return lib.us_l4_checksum_v4(src, dst, protocol, buf, len(buf))


def update16(checksum: int, old_word: int, new_word: int) -> int:
    """RFC 1624 incremental update for one changed 16-bit field."""
    return lib.us_update16(checksum, old_word, new_word)


def update32(checksum: int, old_value: int, new_value: int) -> int:
    """RFC 1624 incremental update for one changed 32-bit field."""
    return lib.us_update32(checksum, old_value, new_value)
