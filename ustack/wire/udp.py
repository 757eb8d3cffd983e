"""The UDP header (RFC 768).

UDP_HEADER is the single description of the header; UDP_FIXED is struct's
view of it, written out next to it for the per-packet codec and checked
against it by tests/unit/test_headers.py (see ustack.wire.codec).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from construct import Int16ub
from construct import Struct

from ustack.wire.checksum import Buffer
from ustack.wire.codec import ErrorReasons
from ustack.wire.codec import register_error_reasons
from ustack.wire.codec import tuple_new
from ustack.wire.errors import MalformedPacket

UDP_HEADER = Struct(
    "src_port" / Int16ub,
    "dst_port" / Int16ub,
    "length" / Int16ub,
    "checksum" / Int16ub,
)

# struct's view of UDP_HEADER: one code per field, in order.
UDP_FIXED_FIELDS = ("src_port", "dst_port", "length", "checksum")
UDP_FIXED = struct.Struct("!HHHH")

UDP_HEADER_LENGTH = UDP_FIXED.size

register_error_reasons(UDP_HEADER, ErrorReasons("udp", "udp-truncated", {}))


class UdpHeader(NamedTuple):
    src_port: int
    dst_port: int
    length: int
    checksum: int


def parse_udp(datagram: Buffer) -> UdpHeader:
    """Parse the UDP header; length and checksum are the caller's to check."""
    if len(datagram) < UDP_HEADER_LENGTH:
        raise MalformedPacket("udp-truncated", f"{len(datagram)} bytes, the header needs 8")
    return tuple_new(UdpHeader, UDP_FIXED.unpack_from(datagram))
