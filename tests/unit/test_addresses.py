"""Addresses of both families as ints (wire/address.py) and the IPv6
pseudo-header (RFC 8200 8.1) against the RFC 1071 reference and scapy."""

from __future__ import annotations

import ipaddress
from functools import partial

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from peers import PEER6
from peers import US4
from peers import US6
from scapy.layers.inet import TCP
from scapy.layers.inet6 import UDP
from scapy.layers.inet6 import ICMPv6EchoRequest
from scapy.layers.inet6 import IPv6

from ustack.trace.records import dotted
from ustack.wire import checksum as cs
from ustack.wire import checksum_ref as ref
from ustack.wire.address import format_address
from ustack.wire.address import format_endpoint
from ustack.wire.address import is_ipv6
from ustack.wire.address import parse_address

# IPv6 addresses outside ::/96 and ::ffff:0:0/96: the ones the layer handles.
ipv6_addresses = st.integers(2**32, 2**128 - 1).filter(lambda a: a >> 32 not in (0, 0xFFFF))


def test_is_ipv6_splits_at_32_bits() -> None:
    assert not is_ipv6(0) and not is_ipv6(US4) and not is_ipv6(0xFFFFFFFF)
    assert is_ipv6(US6) and is_ipv6(2**32)


def test_format_address_both_families() -> None:
    assert format_address(US4) == "198.18.0.2"
    assert format_address(US6) == "2001:2::2"
    assert format_address(int(ipaddress.IPv6Address("fe80::1:0:0:1"))) == "fe80::1:0:0:1"
    assert dotted is format_address  # the trace's name for it


def test_format_endpoint_brackets_ipv6_as_ss() -> None:
    assert format_endpoint(US4, 80) == "198.18.0.2:80"
    assert format_endpoint(US6, 80) == "[2001:2::2]:80"


def test_parse_address_round_trips() -> None:
    assert parse_address("198.18.0.2") == US4
    assert parse_address("2001:2::2") == US6
    assert parse_address(" 2001:2:0::2 ") == US6


@pytest.mark.parametrize(
    "text",
    ["::", "::1", "::198.18.0.2", "::ffff:198.18.0.2", "::ffff:0:0", "::ffff:ffff:ffff"],
)
def test_parse_address_refuses_the_embedded_ipv4_ranges(text: str) -> None:
    with pytest.raises(ValueError, match=r"::/96 or ::ffff:0:0/96"):
        parse_address(text)


@pytest.mark.parametrize("text", ["", "198.18.0", "2001:2:::2", "host.example", "1.2.3.4/24"])
def test_parse_address_says_why_not(text: str) -> None:
    with pytest.raises(ValueError, match="neither an IPv4 nor an IPv6 address"):
        parse_address(text)


@settings(deadline=None)
@given(ipv6_addresses, ipv6_addresses, st.integers(0, 255), st.integers(0, 2**32 - 1))
def test_ipv6_pseudo_header_sum_matches_reference(src: int, dst: int, proto: int, n: int) -> None:
    assert cs.pseudo_header_sum(src, dst, proto, n) == ref.pseudo_header_sum(src, dst, proto, n)


def test_ipv6_pseudo_header_sum_edges() -> None:
    all_ones = 2**128 - 1
    for src, dst, proto, n in [
        (all_ones, all_ones, 0, 0),
        (all_ones, all_ones, 255, 2**32 - 1),
        (2**127, 2**32, 0, 0xFFFF),
        (US6, PEER6, 58, 0x10000),  # a jumbogram length needs its high word
    ]:
        assert cs.pseudo_header_sum(src, dst, proto, n) == ref.pseudo_header_sum(src, dst, proto, n)


@settings(deadline=None, max_examples=50)
@given(ipv6_addresses, ipv6_addresses, st.binary(min_size=0, max_size=3000))
def test_ipv6_transport_checksum_matches_reference(src: int, dst: int, payload: bytes) -> None:
    segment = b"\x00" * 8 + payload
    assert cs.transport_checksum(src, dst, 17, segment) == ref.transport_checksum(
        src, dst, 17, segment
    )


def _scapy_src_dst() -> dict[str, str]:
    return {"src": "2001:2::1", "dst": "2001:2::2"}


@pytest.mark.parametrize(
    ("proto", "layer"),
    [
        (6, TCP(sport=40000, dport=80, seq=1, flags="S") / b"hello"),
        (17, UDP(sport=5353, dport=9) / (b"x" * 1001)),
        (58, ICMPv6EchoRequest(id=7, seq=1, data=b"ping" * 30)),
    ],
)
def test_ipv6_transport_checksum_agrees_with_scapy(proto: int, layer: object) -> None:
    """scapy, the independent oracle, fills the checksum; ours sums it to 0,
    and recomputing it with the field zeroed gives scapy's value."""
    packet = bytes(IPv6(**_scapy_src_dst(), hlim=64) / layer)
    segment = bytearray(packet[40:])
    assert cs.transport_checksum(PEER6, US6, proto, segment) == 0
    offset = {6: 16, 17: 6, 58: 2}[proto]
    wire_value = int.from_bytes(segment[offset : offset + 2], "big")
    segment[offset : offset + 2] = b"\x00\x00"
    assert cs.transport_checksum(PEER6, US6, proto, segment) == wire_value


def test_ipv4_pseudo_header_unchanged() -> None:
    assert cs.pseudo_header_sum(US4, 0xC6120001, 6, 20) == ref.pseudo_header_sum(
        US4, 0xC6120001, 6, 20
    )


def test_build_tcp_for_an_ipv6_four_tuple_checks_out_in_scapy() -> None:
    from ustack.wire.tcp import build_tcp

    # A SYN-ACK from us to the peer, built whole and with the partial checksum.
    synack = partial(
        build_tcp,
        src=US6,
        dst=PEER6,
        src_port=80,
        dst_port=40000,
        seq=5,
        ack=9,
        flags=0x12,
        window=65535,
    )
    segment = synack(payload=b"data")
    header = bytes(IPv6(src="2001:2::2", dst="2001:2::1", nh=6, plen=len(segment)))
    parsed = IPv6(header + bytes(segment))
    wire_value = parsed[TCP].chksum
    del parsed[TCP].chksum
    assert IPv6(bytes(parsed))[TCP].chksum == wire_value
    # The partial checksum (offload) is the bare pseudo-header sum.
    partial_sum = synack(partial_checksum=True)
    assert int.from_bytes(partial_sum[16:18], "big") == ref.pseudo_header_sum(US6, PEER6, 6, 20)
