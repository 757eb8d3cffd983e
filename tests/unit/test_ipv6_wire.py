"""wire/ipv6.py and wire/icmpv6.py: the struct views against their construct
schemas, builders and parsers against scapy (the independent oracle)."""

from __future__ import annotations

from construct import Container
from hypothesis import given
from hypothesis import strategies as st
from peers import PEER6 as PEER
from peers import US6 as US
from scapy.layers.inet import TCP
from scapy.layers.inet6 import ICMPv6EchoRequest
from scapy.layers.inet6 import IPv6
from scapy.layers.inet6 import IPv6ExtHdrDestOpt
from scapy.layers.inet6 import IPv6ExtHdrFragment
from scapy.layers.inet6 import IPv6ExtHdrHopByHop
from scapy.layers.inet6 import IPv6ExtHdrRouting

from ustack.wire.codec import construct_build
from ustack.wire.codec import construct_parse
from ustack.wire.icmp import parse_icmp
from ustack.wire.icmpv6 import ECHO_REQUEST
from ustack.wire.icmpv6 import build_icmpv6
from ustack.wire.icmpv6 import parse_quote_ipv6
from ustack.wire.ipv6 import FRAGMENT_FIXED
from ustack.wire.ipv6 import FRAGMENT_FIXED_FIELDS
from ustack.wire.ipv6 import FRAGMENT_HEADER
from ustack.wire.ipv6 import IPV6_FIXED
from ustack.wire.ipv6 import IPV6_FIXED_FIELDS
from ustack.wire.ipv6 import IPV6_HEADER
from ustack.wire.ipv6 import NH_FRAGMENT
from ustack.wire.ipv6 import OPTIONS_HEADER
from ustack.wire.ipv6 import ROUTING_HEADER
from ustack.wire.ipv6 import build_ipv6
from ustack.wire.ipv6 import build_ipv6_in_place
from ustack.wire.ipv6 import fragment_header
from ustack.wire.ipv6 import parse_fragment_header
from ustack.wire.ipv6 import parse_ipv6
from ustack.wire.ipv6 import remove_fragment_header

addresses = st.integers(2**32, 2**128 - 1)


@given(
    st.integers(0, 63), st.integers(0, 3), st.integers(0, 2**20 - 1), st.integers(0, 0xFFFF),
    st.integers(0, 255), st.integers(0, 255), addresses, addresses,
)  # fmt: skip
def test_fixed_header_struct_follows_the_schema(
    dscp, ecn, flow, length, next_header, hop_limit, src, dst
):
    packet = construct_build(
        IPV6_HEADER,
        {
            "version_class_flow": {
                "traffic_class": {"dscp": dscp, "ecn": ecn},
                "flow_label": flow,
            },
            "payload_length": length,
            "next_header": next_header,
            "hop_limit": hop_limit,
            "src": src,
            "dst": dst,
        },
    )
    assert len(packet) == IPV6_FIXED.size == 40
    values = IPV6_FIXED.unpack(packet)
    assert len(values) == len(IPV6_FIXED_FIELDS) == len(IPV6_HEADER.subcons)
    assert [sub.name for sub in IPV6_HEADER.subcons] == list(IPV6_FIXED_FIELDS)
    header = parse_ipv6(packet)
    parsed = construct_parse(IPV6_HEADER, packet)
    assert (header.dscp, header.ecn, header.flow_label) == (dscp, ecn, flow)
    assert (header.payload_length, header.next_header, header.hop_limit) == (
        parsed.payload_length, parsed.next_header, parsed.hop_limit,
    )  # fmt: skip
    assert (header.src, header.dst) == (parsed.src, parsed.dst) == (src, dst)


@given(st.integers(0, 255), st.integers(0, 8191), st.booleans(), st.integers(0, 2**32 - 1))
def test_fragment_header_struct_follows_the_schema(next_header, offset_units, more, ident):
    built = fragment_header(next_header, offset_units * 8, more, ident)
    assert [sub.name for sub in FRAGMENT_HEADER.subcons] == list(FRAGMENT_FIXED_FIELDS)
    assert len(built) == FRAGMENT_FIXED.size
    parsed = construct_parse(FRAGMENT_HEADER, built)
    assert parsed.offset_flags.fragment_offset == offset_units
    assert parsed.offset_flags.more_fragments == more
    assert parsed.identification == ident and parsed.next_header == next_header
    assert tuple(parse_fragment_header(built, 0)) == (next_header, offset_units, more, ident)
    scapy = IPv6ExtHdrFragment(built)
    assert (scapy.nh, scapy.offset, scapy.m, scapy.id) == (next_header, offset_units, more, ident)


def test_option_and_routing_schemas_read_scapy_headers():
    hop = bytes(IPv6ExtHdrHopByHop(nh=60, options=[]) / b"")[:8]
    assert construct_parse(OPTIONS_HEADER, hop) == Container(
        next_header=60, length=0, options=hop[2:]
    )
    routing = bytes(IPv6ExtHdrRouting(nh=6, type=0, segleft=1, addresses=["2001:2::9"]))
    parsed = construct_parse(ROUTING_HEADER, routing)
    assert (parsed.next_header, parsed.routing_type, parsed.segments_left) == (6, 0, 1)
    assert len(parsed.data) == len(routing) - 4


@given(st.integers(0, 3), st.integers(0, 2**20 - 1), st.binary(max_size=100))
def test_build_in_place_agrees_with_scapy(ecn, flow, payload):
    packet = bytearray(40) + payload
    build_ipv6_in_place(packet, src=US, dst=PEER, next_header=59, flow_label=flow, ecn=ecn)
    scapy = IPv6(bytes(packet))
    assert scapy.version == 6 and scapy.tc == ecn and scapy.fl == flow
    assert scapy.plen == len(payload) and scapy.nh == 59 and scapy.hlim == 64
    assert (scapy.src, scapy.dst) == ("2001:2::2", "2001:2::1")
    assert bytes(packet) == bytes(
        IPv6(src="2001:2::2", dst="2001:2::1", tc=ecn, fl=flow, nh=59, hlim=64) / payload
    )


def test_icmpv6_checksum_covers_the_pseudo_header_as_scapy_does():
    message = build_icmpv6(src=PEER, dst=US, type=ECHO_REQUEST, code=0, rest=7 << 16 | 1,
                           payload=b"abc")  # fmt: skip
    theirs = bytes(ICMPv6EchoRequest(id=7, seq=1, data=b"abc"))
    ip = IPv6(src="2001:2::1", dst="2001:2::2") / ICMPv6EchoRequest(id=7, seq=1, data=b"abc")
    assert message == bytes(ip)[40:]
    assert parse_icmp(message).type == ECHO_REQUEST and len(theirs) == len(message)


def test_quote_walks_extension_headers_to_tcp():
    quoted = bytes(
        IPv6(src="2001:2::2", dst="2001:2::1")
        / IPv6ExtHdrDestOpt()
        / TCP(sport=80, dport=40000, seq=99)
    )
    quote = parse_quote_ipv6(quoted)
    assert (quote.src, quote.dst, quote.protocol) == (US, PEER, 6)
    assert quote.total_length == len(quoted)
    assert quote.transport[:8] == bytes(TCP(sport=80, dport=40000, seq=99))[:8]


def test_remove_fragment_header_relinks_the_chain():
    first = bytes(
        IPv6(src="2001:2::1", dst="2001:2::2") / IPv6ExtHdrDestOpt(nh=NH_FRAGMENT)
        / IPv6ExtHdrFragment(nh=17, m=1, id=5)
    )  # fmt: skip
    whole = remove_fragment_header(first)
    assert len(whole) == 48 and whole[40] == 17 and whole[6] == 60


def test_build_ipv6_writes_traffic_class():
    packet = build_ipv6(src=US, dst=PEER, next_header=59, traffic_class=0xB8, flow_label=3)
    assert IPv6(packet).tc == 0xB8 and IPv6(packet).fl == 3
