"""bench/tun_ceiling.py's pure parts (no namespace, no TUN): the daemon's write
sizes, the checksum patched per write, and SND.UNA across the wrap of 2^32."""

from __future__ import annotations

import struct

import pytest
import tun_ceiling as ceiling

from ustack.wire.checksum import transport_checksum
from ustack.wire.ipv4 import PROTO_TCP
from ustack.wire.tcp import ACK
from ustack.wire.tcp import TcpOptions
from ustack.wire.tcp import build_tcp

SRC, DST = 0xC6120002, 0xC6120001


def test_plan_is_the_daemons_write_sizes() -> None:
    # MTU 65535: one segment of 65,415 bytes per write, under the MTU: no GSO.
    assert ceiling.plan(65535, offload=True) == ceiling.Plan(65483, 65415, 0)
    # MTU 1500: 44 segments of 1,448 (1,460 less the timestamps) cut by the kernel.
    big = ceiling.plan(1500, offload=True)
    assert big == ceiling.Plan(1448, 44 * 1448, 1448) and big.segments_per_write == 44
    assert ceiling.plan(1500, offload=False) == ceiling.Plan(1448, 1448, 0)
    assert ceiling.plan(65535, offload=False, peer_mss=9000) == ceiling.Plan(8988, 8988, 0)


def _segment(seq: int, tsval: int = 7, tsecr: int = 9) -> bytearray:
    payload = bytes(range(256)) * 5 + b"x"  # an odd length
    options = TcpOptions(timestamps=(tsval, tsecr))
    return build_tcp(SRC, DST, 40000, 5001, seq, 1234, ACK, 65535, options, payload)


def _base(tsval: int = 7, tsecr: int = 9) -> int:
    """The sum checksum_with starts from: seq 0, checksum field 0, pseudo-header in."""
    segment = _segment(0, tsval, tsecr)
    struct.pack_into("!H", segment, 16, 0)
    return ~transport_checksum(SRC, DST, PROTO_TCP, segment) & 0xFFFF


@pytest.mark.parametrize("seq", [0, 1, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFF0000, 0xFFFFFFFF])
def test_checksum_with_seq_is_the_full_checksum(seq: int) -> None:
    want = struct.unpack_from("!H", _segment(seq), 16)[0]
    assert ceiling.checksum_with(_base(), seq) == want


def test_replace_in_sum_moves_the_timestamps() -> None:
    base = ceiling.replace_in_sum(_base(7, 9), 7, 0xFFFFFFFE)
    base = ceiling.replace_in_sum(base, 9, 0x12345678)
    want = struct.unpack_from("!H", _segment(4242, 0xFFFFFFFE, 0x12345678), 16)[0]
    assert ceiling.checksum_with(base, 4242) == want


def test_una_of_across_the_wrap() -> None:
    base = 0xFFFFFF00
    assert ceiling.una_of(base, base, 0) == 0
    assert ceiling.una_of(0x100, base, 0x300) == 0x200  # the ACK wrapped, the offset not
    assert ceiling.una_of((base + 5_000_000_000) & 0xFFFFFFFF, base, 5_000_000_000) == 5_000_000_000
    assert ceiling.una_of(base + 0x10, base, 0x8) > 0x8  # beyond what was sent: the caller aborts
