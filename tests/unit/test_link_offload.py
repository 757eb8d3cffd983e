"""The virtio-net header helpers of the TUN link: finishing a partial checksum
(what the kernel hands us) and preparing a GSO super-segment (what we hand it)."""

from __future__ import annotations

import struct
from typing import Any

from ustack.linux.tun import (
    VNET_F_NEEDS_CSUM,
    VNET_GSO_TCPV4,
    VNET_HEADER,
    TunLink,
    _finish_checksum,
    _gso_header,
)
from ustack.wire.checksum import internet_checksum, pseudo_header_sum, transport_checksum
from ustack.wire.ipv4 import PROTO_TCP, build_ipv4
from ustack.wire.tcp import ACK, build_tcp

SRC, DST = 0xC6120001, 0xC6120002


def segment(payload: bytes, partial: bool = False) -> bytearray:
    tcp = build_tcp(src=SRC, dst=DST, src_port=1, dst_port=2, seq=7, ack=9, flags=ACK,
                    window=100, payload=payload, partial_checksum=partial)  # fmt: skip
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
    packet = segment(bytes(1460 * 10), partial=True)  # as TCP builds a GSO segment
    header = VNET_HEADER.unpack(_gso_header(packet, 1460))
    assert header == (VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, 40, 1460, 20, 16)
    field = struct.unpack_from("!H", packet, 36)[0]
    assert field == pseudo_header_sum(SRC, DST, PROTO_TCP, len(packet) - 20)
    assert internet_checksum(memoryview(packet)[:20]) == 0  # the IP header is untouched


def test_tcp_built_with_a_partial_checksum_is_what_the_kernel_finishes() -> None:
    """build_tcp(partial_checksum=True) leaves the pseudo-header sum, as the
    kernel expects with VIRTIO_NET_HDR_F_NEEDS_CSUM; finished the way it
    would be (or a NIC), it is the full checksum, byte for byte."""
    payload = bytes(range(256)) * 40 + b"odd"
    fields = dict(src=SRC, dst=DST, src_port=1, dst_port=2, seq=7, ack=9, flags=ACK, window=100)
    full = build_tcp(**fields, payload=payload, headroom=20)
    partial = build_tcp(**fields, payload=payload, headroom=20, partial_checksum=True)
    assert partial != full
    _finish_checksum(partial, 20, 16)
    assert partial == full


def test_the_link_marks_only_tcp_packets_for_the_kernel_to_finish(monkeypatch: Any) -> None:
    written: list[list[bytes]] = []
    monkeypatch.setattr("ustack.linux.tun.os.writev", lambda fd, parts: written.append(list(parts)))
    link = TunLink.__new__(TunLink)
    link.fd, link.mtu, link.offload = -1, 1500, True
    link.partial_tcp_checksums = True
    tcp = segment(b"x" * 100)
    udp = bytearray(tcp)
    udp[9] = 17
    for packet in (tcp, udp):
        assert link.write(packet)
    assert VNET_HEADER.unpack(written[0][0]) == (VNET_F_NEEDS_CSUM, 0, 0, 0, 20, 16)
    assert VNET_HEADER.unpack(written[1][0]) == (0, 0, 0, 0, 0, 0)  # UDP: its own checksum
    link.partial_tcp_checksums = False  # (a pcap is written: full checksums, plain header)
    assert link.write(tcp)
    assert VNET_HEADER.unpack(written[2][0]) == (0, 0, 0, 0, 0, 0)
