"""The virtio-net header helpers of the TUN link: finishing a partial checksum
(what the kernel hands us) and preparing a GSO super-segment (what we hand it)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import pytest

from ustack.linux.tun import VNET_F_NEEDS_CSUM
from ustack.linux.tun import VNET_GSO_TCPV4
from ustack.linux.tun import VNET_GSO_TCPV6
from ustack.linux.tun import VNET_HEADER
from ustack.linux.tun import TunLink
from ustack.linux.tun import _finish_checksum
from ustack.linux.tun import _gso_header
from ustack.wire.checksum import pseudo_header_sum
from ustack.wire.checksum import transport_checksum
from ustack.wire.ipv4 import PROTO_TCP
from ustack.wire.ipv4 import PROTO_UDP
from ustack.wire.ipv4 import build_ipv4
from ustack.wire.ipv6 import build_ipv6
from ustack.wire.tcp import ACK
from ustack.wire.tcp import build_tcp


@dataclass(frozen=True)
class Family:
    src: int
    dst: int
    ip_header: int  # bytes before TCP
    gso_type: int
    protocol_offset: int  # IPv4's protocol field, IPv6's next header

    def segment(self, payload: bytes, partial: bool = False) -> bytearray:
        tcp = build_tcp(src=self.src, dst=self.dst, src_port=1, dst_port=2, seq=7, ack=9,
                        flags=ACK, window=100, payload=payload,
                        partial_checksum=partial)  # fmt: skip
        if self.ip_header == 20:
            ip = build_ipv4(src=self.src, dst=self.dst, protocol=PROTO_TCP, payload_length=len(tcp))
            return bytearray(ip + tcp)
        return bytearray(build_ipv6(src=self.src, dst=self.dst, next_header=PROTO_TCP, payload=tcp))

    @property
    def checksum_field(self) -> int:
        return self.ip_header + 16


IPV4 = Family(0xC6120001, 0xC6120002, 20, VNET_GSO_TCPV4, 9)
IPV6 = Family(0x20010002 << 96 | 1, 0x20010002 << 96 | 2, 40, VNET_GSO_TCPV6, 6)
by_family = pytest.mark.parametrize("family", [IPV4, IPV6], ids=["ipv4", "ipv6"])


@by_family
def test_partial_checksum_is_finished_like_a_nic_would(family: Family) -> None:
    packet = family.segment(bytes(range(256)) * 100)
    good = bytes(packet)
    # What the kernel sends with VIRTIO_NET_HDR_F_NEEDS_CSUM: the pseudo-header
    # sum only (RFC 8200 8.1's for IPv6).
    tcp_length = len(packet) - family.ip_header
    partial = pseudo_header_sum(family.src, family.dst, PROTO_TCP, tcp_length)
    struct.pack_into("!H", packet, family.checksum_field, partial)
    _finish_checksum(packet, family.ip_header, 16)
    assert bytes(packet) == good
    segment = memoryview(packet)[family.ip_header :]
    assert transport_checksum(family.src, family.dst, PROTO_TCP, segment) == 0


@by_family
def test_gso_header_and_partial_checksum(family: Family) -> None:
    packet = family.segment(bytes(1460 * 10), partial=True)  # as TCP builds a GSO segment
    header = VNET_HEADER.unpack(_gso_header(packet, 1440))
    # hdr_len: the IP and TCP headers every piece repeats; csum_start: TCP's.
    hdr_len = family.ip_header + 20
    assert header == (VNET_F_NEEDS_CSUM, family.gso_type, hdr_len, 1440, family.ip_header, 16)
    field = struct.unpack_from("!H", packet, family.checksum_field)[0]
    tcp_length = len(packet) - family.ip_header
    assert field == pseudo_header_sum(family.src, family.dst, PROTO_TCP, tcp_length)


def test_tcp_built_with_a_partial_checksum_is_what_the_kernel_finishes() -> None:
    """build_tcp(partial_checksum=True) leaves the pseudo-header sum, as the
    kernel expects with VIRTIO_NET_HDR_F_NEEDS_CSUM; finished the way it
    would be (or a NIC), it is the full checksum, byte for byte."""
    payload = bytes(range(256)) * 40 + b"odd"
    fields = dict(
        src=IPV4.src, dst=IPV4.dst, src_port=1, dst_port=2, seq=7, ack=9, flags=ACK, window=100
    )
    full = build_tcp(**fields, payload=payload, headroom=20)
    partial = build_tcp(**fields, payload=payload, headroom=20, partial_checksum=True)
    assert partial != full
    _finish_checksum(partial, 20, 16)
    assert partial == full


@by_family
def test_the_link_marks_only_tcp_packets_for_the_kernel_to_finish(
    monkeypatch: Any, family: Family
) -> None:
    written: list[list[bytes]] = []
    monkeypatch.setattr("ustack.linux.tun.os.writev", lambda fd, parts: written.append(list(parts)))
    link = TunLink.__new__(TunLink)
    link.fd, link.mtu, link.offload = -1, 1500, True
    link.partial_tcp_checksums = True
    tcp = family.segment(b"x" * 100)
    udp = bytearray(tcp)
    udp[family.protocol_offset] = PROTO_UDP
    for packet in (tcp, udp):
        assert link.write(packet)
    partial = (VNET_F_NEEDS_CSUM, 0, 0, 0, family.ip_header, 16)
    assert VNET_HEADER.unpack(written[0][0]) == partial
    assert VNET_HEADER.unpack(written[1][0]) == (0, 0, 0, 0, 0, 0)  # UDP: its own checksum
    link.partial_tcp_checksums = False  # (a pcap is written: full checksums, plain header)
    assert link.write(tcp)
    assert VNET_HEADER.unpack(written[2][0]) == (0, 0, 0, 0, 0, 0)
