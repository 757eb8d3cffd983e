"""The virtio-net header helpers of the TUN link: finishing a partial checksum
(what the kernel hands us) and preparing a GSO super-segment (what we hand it)."""

from __future__ import annotations

import struct

from ustack.checksum import internet_checksum, pseudo_header_sum, transport_checksum
from ustack.headers import ACK, PROTO_TCP, build_ipv4, build_tcp
from ustack.link import (
    VNET_F_NEEDS_CSUM,
    VNET_GSO_TCPV4,
    VNET_HEADER,
    _finish_checksum,
    _gso_header,
)

SRC, DST = 0xC6120001, 0xC6120002


def segment(payload: bytes) -> bytearray:
    tcp = build_tcp(src=SRC, dst=DST, src_port=1, dst_port=2, seq=7, ack=9, flags=ACK,
                    window=100, payload=payload)  # fmt: skip
    return bytearray(
        build_ipv4(src=SRC, dst=DST, protocol=PROTO_TCP, payload_length=len(tcp)) + tcp
    )


def test_partial_checksum_is_finished_like_a_nic_would() -> None:
    packet = segment(bytes(range(256)) * 100)
    good = bytes(packet)
    # What the kernel sends with VIRTIO_NET_HDR_F_NEEDS_CSUM: the pseudo-header sum only.
    struct.pack_into("!H", packet, 36, pseudo_header_sum(SRC, DST, PROTO_TCP, len(packet) - 20))
    _finish_checksum(packet, 20, 16)
    assert bytes(packet) == good
    assert transport_checksum(SRC, DST, PROTO_TCP, memoryview(packet)[20:]) == 0


def test_gso_header_and_partial_checksum() -> None:
    packet = segment(bytes(1460 * 10))
    header = VNET_HEADER.unpack(_gso_header(packet, 1460))
    assert header == (VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, 40, 1460, 20, 16)
    field = struct.unpack_from("!H", packet, 36)[0]
    assert field == pseudo_header_sum(SRC, DST, PROTO_TCP, len(packet) - 20)
    assert internet_checksum(memoryview(packet)[:20]) == 0  # the IP header is untouched
