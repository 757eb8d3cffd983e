"""Pure-Python Internet checksum, straight from RFC 1071: the reference that
tests and benchmarks hold the C core against. Not used on the packet path."""

from __future__ import annotations


def ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    data = bytes(data)
    if len(data) % 2:
        data += b"\x00"
    total = initial
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def internet_checksum(data: bytes | bytearray | memoryview) -> int:
    return ~ones_sum(data) & 0xFFFF


def pseudo_header_sum(src: int, dst: int, protocol: int, length: int) -> int:
    if src > 0xFFFFFFFF or dst > 0xFFFFFFFF:
        # RFC 8200 8.1: source, destination, 32-bit upper-layer length,
        # three zero bytes, next header.
        pseudo = src.to_bytes(16, "big") + dst.to_bytes(16, "big")
        pseudo += length.to_bytes(4, "big") + bytes([0, 0, 0, protocol])
        return ones_sum(pseudo)
    pseudo = src.to_bytes(4, "big") + dst.to_bytes(4, "big")
    pseudo += bytes([0, protocol]) + length.to_bytes(2, "big")
    return ones_sum(pseudo)


def transport_checksum(
    src: int, dst: int, protocol: int, segment: bytes | bytearray | memoryview
) -> int:
    return ~ones_sum(segment, pseudo_header_sum(src, dst, protocol, len(segment))) & 0xFFFF
