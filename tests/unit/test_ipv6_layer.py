"""The IPv6 layer (net/ipv6.py): packets in -> packets out and counters, on a
virtual clock. scapy builds what comes in and reads what goes out (the
independent oracle), fragment6/defragment6 included."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from peers import PEER6 as PEER
from peers import PEER6_TEXT as PEER_TEXT
from peers import US6 as US
from peers import US6_TEXT as US_TEXT
from scapy.layers.inet import TCP
from scapy.layers.inet import UDP
from scapy.layers.inet6 import HBHOptUnknown
from scapy.layers.inet6 import ICMPv6DestUnreach
from scapy.layers.inet6 import ICMPv6EchoReply
from scapy.layers.inet6 import ICMPv6EchoRequest
from scapy.layers.inet6 import ICMPv6MLReport2
from scapy.layers.inet6 import ICMPv6ND_NS
from scapy.layers.inet6 import ICMPv6ND_RS
from scapy.layers.inet6 import ICMPv6PacketTooBig
from scapy.layers.inet6 import ICMPv6ParamProblem
from scapy.layers.inet6 import ICMPv6TimeExceeded
from scapy.layers.inet6 import IPv6
from scapy.layers.inet6 import IPv6ExtHdrDestOpt
from scapy.layers.inet6 import IPv6ExtHdrFragment
from scapy.layers.inet6 import IPv6ExtHdrHopByHop
from scapy.layers.inet6 import IPv6ExtHdrRouting
from scapy.layers.inet6 import RouterAlert
from scapy.layers.inet6 import defragment6
from scapy.layers.inet6 import fragment6
from virtual_wire import VirtualWire

from ustack.counters import Counters
from ustack.net.address_rules import icmpv6_error_forbidden
from ustack.net.fragments import DATAGRAM_OVERHEAD
from ustack.net.fragments import FRAGMENT_OVERHEAD
from ustack.net.fragments import FragmentLimits
from ustack.net.ipv4 import Unreachable
from ustack.net.ipv6 import IPv6Layer
from ustack.trace.records import Drop
from ustack.trace.vocabulary import DropReason
from ustack.wire.icmp import Quote


class Wire(VirtualWire[IPv6]):
    """An IPv6Layer whose transmit appends to a list, on a virtual clock."""

    def __init__(self, mtu: int = 1500, limits: FragmentLimits | None = None) -> None:
        super().__init__(IPv6)
        self.counters = Counters()
        self.counters.tracer = self.trace.append
        self.ip = IPv6Layer(US, self.transmit, self.counters, mtu=mtu, fragment_limits=limits)
        self.layer = self.ip
        self.tcp: list[tuple[int, int, bytes, int]] = []
        self.errors: list[tuple[int, int, int, Quote]] = []
        self.ip.tcp_input = lambda src, dst, seg, now, ok=False, ecn=0: self.tcp.append(
            (src, dst, bytes(seg), ecn)
        )
        self.ip.tcp_error = lambda t, c, mtu, quote, now: self.errors.append((t, c, mtu, quote))

    def drops(self) -> list[tuple[str, str]]:
        return [(e.layer, e.reason) for e in self.trace if isinstance(e, Drop)]


def from_peer(**fields: object) -> IPv6:
    return IPv6(src=PEER_TEXT, dst=US_TEXT, **fields)


def echo(size: int = 56, ident: int = 0x4242, seq: int = 1) -> ICMPv6EchoRequest:
    return ICMPv6EchoRequest(id=ident, seq=seq, data=bytes(i & 0xFF for i in range(size)))


def only(packets: list[IPv6]) -> IPv6:
    assert len(packets) == 1, packets
    return packets[0]


def assert_valid_checksum(packet: IPv6, layer: type) -> None:
    theirs = packet[layer].cksum
    del packet[layer].cksum
    assert IPv6(bytes(packet))[layer].cksum == theirs


# ---- echo ----------------------------------------------------------------------------


def test_echo_request_gets_the_same_data_back_with_a_flow_label():
    wire = Wire()
    reply = only(wire.send(from_peer(tc=0x10, fl=99) / echo(100)))
    assert (reply.src, reply.dst, reply.hlim, reply.tc) == (US_TEXT, PEER_TEXT, 64, 0)
    assert 0 < reply.fl <= 0xFFFFF and reply.fl != 99  # ours (RFC 6437), not theirs
    answer = reply[ICMPv6EchoReply]
    assert (answer.id, answer.seq, answer.data) == (0x4242, 1, bytes(range(100)))
    assert_valid_checksum(reply, ICMPv6EchoReply)
    assert wire.counters["icmp6.echo"] == 1 and wire.counters["ip6.out"] == 1


def test_trailing_link_padding_is_not_payload():
    wire = Wire()
    reply = only(wire.send(bytes(from_peer() / echo(8)) + b"\x00" * 6))
    assert reply[ICMPv6EchoReply].data == bytes(range(8))


def test_echo_to_all_nodes_is_not_answered():
    wire = Wire()
    assert wire.send(IPv6(src=PEER_TEXT, dst="ff02::1") / echo()) == []
    assert wire.drops() == [("icmp6", "not-for-us")]


# ---- what the kernel sends down a TUN: counted, never answered --------------------------


def test_neighbor_discovery_and_mld_are_counted_not_answered():
    wire = Wire()
    solicited = "ff02::1:ff00:2"
    packets = [
        IPv6(src="::", dst=solicited, hlim=255) / ICMPv6ND_NS(tgt=US_TEXT),  # DAD
        IPv6(src="fe80::1", dst="ff02::2", hlim=255) / ICMPv6ND_RS(),
        IPv6(src="fe80::1", dst="ff02::16", hlim=1)
        / IPv6ExtHdrHopByHop(options=[RouterAlert()])
        / ICMPv6MLReport2(),
        IPv6(src="::", dst="ff02::16", hlim=1)
        / IPv6ExtHdrHopByHop(options=[RouterAlert()])
        / ICMPv6MLReport2(),
    ]
    assert wire.send(*packets) == []
    assert wire.counters["icmp6.in.nd"] == 2 and wire.counters["icmp6.in.mld"] == 2
    assert wire.drops() == []


# ---- input rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("::1", "bad-source"),
        ("::", "bad-source"),
        ("::198.18.0.1", "bad-source"),
        ("::ffff:198.18.0.1", "bad-source"),
        ("ff02::1", "bad-source"),
        (US_TEXT, "local-source"),
    ],
)
def test_sources_no_host_may_have_are_dropped(source, reason):
    wire = Wire()
    assert wire.send(IPv6(src=source, dst=US_TEXT) / echo()) == []
    assert wire.drops() == [("ip6", reason)]
    assert wire.counters[f"ip6.drop.{reason}"] == 1


def test_not_for_us_truncated_and_wrong_version():
    wire = Wire()
    assert wire.send(IPv6(src=PEER_TEXT, dst="2001:2::9") / echo()) == []
    whole = bytes(from_peer() / echo())
    assert wire.send(whole[:-1]) == []  # payload length past the end
    assert wire.send(whole[:39]) == []
    assert wire.send(b"\x45" + whole[1:]) == []
    assert wire.drops() == [
        ("ip6", "not-for-us"),
        ("ip6", "ipv6-bad-payload-length"),
        ("ip6", "ipv6-truncated"),
        ("ip6", "ipv6-bad-version"),
    ]


def parameter_problem(packet: IPv6) -> tuple[int, int, bytes]:
    problem = packet[ICMPv6ParamProblem]
    assert_valid_checksum(packet, ICMPv6ParamProblem)
    return problem.code, problem.ptr, bytes(problem.payload)


def test_unknown_next_header_gets_parameter_problem_code_1_at_that_byte():
    wire = Wire()
    offending = from_peer(nh=253) / b"12345678"
    error = only(wire.send(offending))
    assert parameter_problem(error) == (1, 6, bytes(offending))
    behind_options = from_peer() / IPv6ExtHdrDestOpt(nh=253) / b"12345678"
    error = only(wire.send(behind_options))
    assert parameter_problem(error)[:2] == (1, 40)
    assert wire.counters["ip6.drop.unknown-next-header"] == 2


def test_hop_by_hop_anywhere_but_first_is_refused():
    wire = Wire()
    error = only(wire.send(from_peer() / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop() / echo()))
    assert parameter_problem(error)[:2] == (1, 40)
    assert wire.drops() == [("ip6", "hop-by-hop-not-first")]


def test_no_next_header_ends_quietly():
    wire = Wire()
    assert wire.send(from_peer(nh=59) / b"ignored") == []
    assert wire.counters["ip6.in.no-next-header"] == 1 and wire.drops() == []


@pytest.mark.parametrize(
    ("option", "answered", "problem"),
    [(0x1E, True, None), (0x5E, False, None), (0x9E, False, 42), (0xDE, False, 42)],
)
def test_unknown_options_by_their_two_high_order_bits(option, answered, problem):
    wire = Wire()
    opts = IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=option, optdata=b"\x00\x00")])
    sent = wire.send(from_peer() / opts / echo())
    if answered:
        assert ICMPv6EchoReply in only(sent)
        return
    if problem is None:
        assert sent == [] and wire.drops() == [("ip6", "unknown-option")]
    else:
        assert parameter_problem(only(sent))[:2] == (2, problem)


def test_unknown_option_to_multicast_action_11_gets_no_error_but_10_does():
    wire = Wire()
    for option, errors in ((0xDE, 0), (0x9E, 1)):
        opts = IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=option, optdata=b"\x00\x00")])
        sent = wire.send(IPv6(src=PEER_TEXT, dst="ff02::1") / opts / echo())
        assert len(sent) == errors  # RFC 4443 2.4(e.3): code 2 may answer a multicast
    error = IPv6(wire.sent[-1])
    assert error.src == US_TEXT and parameter_problem(error)[0] == 2


def test_truncated_extension_header():
    wire = Wire()
    broken = bytes(from_peer() / IPv6ExtHdrDestOpt(len=3) / b"")
    assert wire.send(broken) == []
    assert wire.drops() == [("ip6", "extension-header-truncated")]


@pytest.mark.parametrize("routing_type", [0, 2, 4])
def test_routing_header_with_segments_left_is_refused_at_its_type(routing_type):
    wire = Wire()
    routing = IPv6ExtHdrRouting(type=routing_type, segleft=1, addresses=["2001:2::9"])
    error = only(wire.send(from_peer() / routing / echo()))
    assert parameter_problem(error)[:2] == (0, 42)
    assert wire.drops() == [("ip6", "routing-header")]


def test_routing_header_without_segments_left_is_skipped():
    wire = Wire()
    routing = IPv6ExtHdrRouting(type=0, segleft=0, addresses=["2001:2::9"])
    assert ICMPv6EchoReply in only(wire.send(from_peer() / routing / echo()))


# ---- UDP, TCP ------------------------------------------------------------------------------


def test_udp_to_a_closed_port_gets_port_unreachable_code_4():
    wire = Wire()
    datagram = from_peer() / UDP(sport=5000, dport=9999) / b"hello"
    error = only(wire.send(datagram))
    unreachable = error[ICMPv6DestUnreach]
    assert (unreachable.type, unreachable.code) == (1, 4)
    assert bytes(unreachable.payload) == bytes(datagram)
    assert_valid_checksum(error, ICMPv6DestUnreach)
    assert wire.counters["udp6.out.port-unreachable"] == 1


def test_udp_with_a_zero_checksum_is_dropped():
    wire = Wire()
    raw = bytearray(bytes(from_peer() / UDP(sport=5000, dport=9999) / b"hello"))
    raw[46:48] = b"\x00\x00"
    assert wire.send(bytes(raw)) == []
    assert wire.drops() == [("udp", "bad-checksum")]


def test_errors_quote_as_much_as_fits_in_1280_bytes():
    wire = Wire()
    error = only(wire.send(from_peer() / UDP(sport=5000, dport=9999) / (b"x" * 1400)))
    assert len(bytes(error)) == 1280


def test_tcp_goes_up_with_its_ecn_bits():
    wire = Wire()
    packet = bytes(from_peer(tc=0b11) / TCP(sport=40000, dport=80, flags="S"))
    assert wire.send(packet) == []
    assert wire.tcp == [(PEER, US, packet[40:], 0b11)]


def test_send_in_place_writes_a_stable_flow_label_and_the_ecn_field():
    wire = Wire()
    labels = set()
    for ecn in (0, 2, 2):
        packet = bytearray(40) + bytes(TCP(sport=80, dport=40000, flags="A"))
        wire.ip.send_in_place(PEER, packet, ecn=ecn)
        sent = IPv6(wire.sent[-1])
        assert sent.tc == ecn and sent.nh == 6 and sent.plen == 20
        labels.add(sent.fl)
    other = bytearray(40) + bytes(TCP(sport=80, dport=40001, flags="A"))
    wire.ip.send_in_place(PEER, other)
    assert len(labels) == 1 and 0 not in labels and IPv6(wire.sent[-1]).fl not in labels


def test_check_destination():
    layer = Wire().ip
    for text in ("ff02::1", "::1", "::ffff:198.18.0.1", US_TEXT):
        with pytest.raises(Unreachable):
            layer.check_destination(int(ipaddress.IPv6Address(text)))
    layer.check_destination(PEER)


# ---- ICMPv6 errors received ------------------------------------------------------------


def our_segment() -> bytes:
    return bytes(IPv6(src=US_TEXT, dst=PEER_TEXT) / TCP(sport=80, dport=40000, seq=1000))


@pytest.mark.parametrize(("mtu", "taken"), [(1400, 1400), (1280, 1280), (1000, 1280), (0, 1280)])
def test_packet_too_big_goes_to_tcp_never_below_1280(mtu, taken):
    wire = Wire()
    wire.send(from_peer() / ICMPv6PacketTooBig(mtu=mtu) / our_segment())
    ((type_, code, got, quote),) = wire.errors
    assert (type_, code, got) == (2, 0, taken)
    assert (quote.src, quote.dst, quote.protocol) == (US, PEER, 6)


def test_errors_about_tcp_go_up_others_are_counted():
    wire = Wire()
    wire.send(
        from_peer() / ICMPv6DestUnreach(code=1) / our_segment(),
        from_peer() / ICMPv6TimeExceeded(code=0) / our_segment(),
        from_peer()
        / ICMPv6DestUnreach(code=4)
        / bytes(
            IPv6(src=PEER_TEXT, dst=US_TEXT) / TCP(sport=1, dport=2)  # not ours
        ),
        from_peer()
        / ICMPv6DestUnreach(code=4)
        / bytes(IPv6(src=US_TEXT, dst=PEER_TEXT) / UDP(sport=1, dport=2)),
        from_peer() / ICMPv6DestUnreach(code=9) / our_segment(),
    )
    assert [(t, c, mtu) for t, c, mtu, _ in wire.errors] == [(1, 1, 0), (3, 0, 0)]
    assert wire.drops() == [
        ("icmp6", "quote-not-ours"),
        ("icmp6", "quote-unhandled-protocol"),
        ("icmp6", "unhandled-error"),
    ]


def test_bad_icmpv6_checksum_is_dropped():
    wire = Wire()
    raw = bytearray(bytes(from_peer() / echo()))
    raw[42] ^= 0xFF
    assert wire.send(bytes(raw)) == []
    assert wire.drops() == [("icmp6", "bad-checksum")]


# ---- RFC 4443 2.4(e) and (f) ---------------------------------------------------------------


def test_no_error_about_an_error_or_a_multicast_or_to_a_non_unicast():
    error = bytes(from_peer() / ICMPv6DestUnreach() / our_segment())
    assert icmpv6_error_forbidden(error, 4, 1) == DropReason.ICMP_ERROR_ABOUT_ICMP_ERROR
    to_group = bytes(IPv6(src=PEER_TEXT, dst="ff02::1") / UDP())
    assert icmpv6_error_forbidden(to_group, 1, 4) == DropReason.ICMP_ERROR_ABOUT_BROADCAST
    assert icmpv6_error_forbidden(to_group, 2, 0) is None  # Packet Too Big
    assert icmpv6_error_forbidden(to_group, 4, 2) is None  # unrecognised option
    from_nobody = bytes(IPv6(src="::", dst=US_TEXT) / UDP())
    assert icmpv6_error_forbidden(from_nobody, 1, 4) == DropReason.ICMP_ERROR_TO_NON_UNICAST
    assert icmpv6_error_forbidden(b"\x60" * 20, 1, 4) == DropReason.ICMP_ERROR_UNQUOTABLE
    echo_request = bytes(from_peer() / echo())
    assert icmpv6_error_forbidden(echo_request, 4, 1) is None


def test_errors_are_rate_limited_per_destination():
    wire = Wire()
    sent = wire.send(*[from_peer() / UDP(sport=5000, dport=9999) for _ in range(10)])
    assert len(sent) == 6  # XRLIM_BURST_FACTOR
    assert wire.counters["icmp6.drop.rate-limited-host"] == 4
    wire.now = 1.0
    assert len(wire.send(from_peer() / UDP(sport=5000, dport=9999))) == 1


def test_echo_replies_are_not_rate_limited():
    wire = Wire()
    assert len(wire.send(*[from_peer() / echo(seq=i) for i in range(20)])) == 20


# ---- fragments (RFC 8200 4.5) ------------------------------------------------------------


def fragments_of(size: int, ident: int = 7, fragment_size: int = 1280) -> list[IPv6]:
    whole = from_peer() / IPv6ExtHdrFragment(id=ident) / echo(size)
    return list(fragment6(whole, fragment_size))


def reassembled_reply(sent: list[IPv6]) -> IPv6:
    assert all(IPv6ExtHdrFragment in p for p in sent)
    assert len({p[IPv6ExtHdrFragment].id for p in sent}) == 1
    assert all(len(bytes(p)) <= 1500 for p in sent)
    return IPv6(bytes(defragment6(sent)))


@pytest.mark.parametrize("order", ["in order", "reversed"])
def test_a_fragmented_echo_is_answered_in_fragments(order):
    wire = Wire()
    pieces = fragments_of(3000)
    assert len(pieces) == 3
    if order == "reversed":
        pieces.reverse()
    sent = wire.send(*pieces)
    reply = reassembled_reply(sent)
    assert reply[ICMPv6EchoReply].data == bytes(i & 0xFF for i in range(3000))
    assert wire.counters["ip6.reasm.oks"] == 1 and wire.counters["ip6.frag.oks"] == 1
    assert wire.counters["ip6.frag.creates"] == len(sent) == 3


def test_overlapping_fragments_drop_the_datagram():
    wire = Wire()
    first, second, *_ = fragments_of(3000)
    overlapping = bytearray(bytes(second))
    offset_field = int.from_bytes(overlapping[42:44]) - 8  # 8 bytes earlier: overlaps
    overlapping[42:44] = offset_field.to_bytes(2)
    assert wire.send(first, bytes(overlapping)) == []
    assert wire.drops() == [("ip6", "frag-overlap")]
    assert wire.ip.fragments.datagrams == {}


def test_incomplete_datagram_times_out_after_60_s_with_time_exceeded_code_1():
    wire = Wire()
    first = fragments_of(3000)[0]
    wire.send(first)
    assert wire.at(59.9) == []
    error = only(wire.at(60.0))
    assert error[ICMPv6TimeExceeded].code == 1
    assert_valid_checksum(error, ICMPv6TimeExceeded)
    assert len(wire.sent[-1]) == 1280  # RFC 4443 2.4(c): as much as fits
    assert wire.sent[-1][48:] == bytes(first)[: 1280 - 48]
    assert wire.counters["ip6.reasm.timeout"] == 1
    assert wire.counters["icmp6.out.reassembly-time-exceeded"] == 1


def test_timeout_without_the_first_fragment_sends_nothing():
    wire = Wire()
    wire.send(fragments_of(3000)[1])
    assert wire.at(61.0) == []
    assert wire.drops() == [("ip6", "frag-timeout")]


def test_atomic_fragment_is_processed_at_once():
    wire = Wire()
    reply = only(wire.send(from_peer() / IPv6ExtHdrFragment(id=9, m=0, offset=0) / echo(10)))
    assert reply[ICMPv6EchoReply].data == bytes(range(10))
    assert wire.counters["ip6.frag.atomic"] == 1 and wire.ip.fragments.datagrams == {}


def test_fragment_with_m_and_a_length_not_a_multiple_of_8():
    wire = Wire()
    bad = from_peer() / IPv6ExtHdrFragment(id=3, m=1) / echo(5)
    error = only(wire.send(bad))
    assert parameter_problem(error)[:2] == (0, 4)
    assert wire.drops() == [("ip6", "frag-bad-length")]


def test_first_fragment_without_the_upper_layer_header():
    wire = Wire()
    first = from_peer() / IPv6ExtHdrFragment(id=4, m=1, nh=60) / IPv6ExtHdrDestOpt(nh=6)
    error = only(wire.send(first))
    assert parameter_problem(error)[:2] == (3, 0)
    assert wire.drops() == [("ip6", "frag-header-chain")]


def test_reassembly_memory_cap_evicts_the_oldest():
    piece = 1232  # the data of one 1280-byte fragment
    cap = 2 * (DATAGRAM_OVERHEAD + FRAGMENT_OVERHEAD + piece)
    wire = Wire(limits=FragmentLimits(high_thresh=cap, timeout=60.0))
    for ident in (1, 2, 3):
        wire.send(fragments_of(3000, ident=ident)[0])
    assert wire.drops() == [("ip6", "frag-memory")]
    assert [key[3] for key in wire.ip.fragments.datagrams] == [2, 3]


def test_fragment_ids_are_32_bit_and_differ_between_datagrams():
    wire = Wire()
    ids = []
    for seq in range(3):
        sent = wire.send(*fragments_of(3000, ident=seq + 1))
        ids.append(sent[0][IPv6ExtHdrFragment].id)
    assert len(set(ids)) == 3 and all(0 <= i < 2**32 for i in ids)
    assert wire.ip.fragment_ids._mask == 0xFFFFFFFF


def test_a_datagram_over_65535_bytes_is_not_fragmented_out():
    # RFC 8200 4.5: the reassembled payload length leaves out the fragment
    # header, so 65,535 bytes go (a UDP datagram of 65,527, as Linux sends).
    wire = Wire()
    wire.ip.send(PEER, 17, bytes(65536))
    assert wire.sent == [] and wire.drops() == [("ip6", "out-too-big")]
    wire.ip.send(PEER, 17, bytes(65535))
    assert len(wire.sent) == 46 and wire.drops() == [("ip6", "out-too-big")]  # 1,432 bytes each


@pytest.mark.parametrize(
    ("type_", "code", "limited"),
    [(1, 4, True), (3, 1, True), (4, 0, True), (2, 0, False), (129, 0, False), (128, 0, False)],
)
def test_icmpv6_rate_mask_is_linuxs_default(type_, code, limited):
    # icmpv6_ratemask "0-1,3-127": every error but Packet Too Big (RFC 4443 2.4(f)).
    assert Wire().ip.icmp_limiter.limited(type_, code) is limited


def test_a_host_takes_any_hop_limit():
    wire = Wire()
    assert ICMPv6EchoReply in only(wire.send(from_peer(hlim=0) / echo()))


def test_reassembled_tcp_goes_up_whole():
    wire = Wire()
    whole = from_peer() / IPv6ExtHdrFragment(id=11) / TCP(sport=1, dport=80) / (b"d" * 2000)
    pieces = fragment6(whole, 1280)
    assert wire.send(*pieces) == []
    ((src, dst, segment, _),) = wire.tcp
    assert (src, dst, len(segment)) == (PEER, US, 2020) and segment[20:] == b"d" * 2000


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([0, 6, 17, 43, 44, 58, 59, 60, 253]),
    st.binary(max_size=300),
    st.booleans(),
)
def test_any_payload_behind_a_valid_header_is_handled_never_raised(next_header, payload, group):
    """Whatever follows the fixed header, the layer counts, answers or drops:
    no exception escapes (the walk's bounds checks)."""
    wire = Wire()
    dst = "ff02::1" if group else US_TEXT
    wire.send(IPv6(src=PEER_TEXT, dst=dst, nh=next_header) / payload)
    wire.at(120.0)


@st.composite
def header_chains(draw: st.DrawFn) -> bytes:
    """Extension headers of plausible lengths, chained by random next headers."""
    chain = b""
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from([0, 6, 17, 43, 44, 58, 59, 60, 1, 0xC2]))
        units = draw(st.integers(0, 2))
        body = draw(st.binary(min_size=6 + 8 * units, max_size=6 + 8 * units))
        chain += bytes([kind, units]) + body
    return chain + draw(st.binary(max_size=40))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([0, 43, 44, 60]), header_chains(), st.booleans())
def test_any_extension_header_chain_is_handled_never_raised(next_header, chain, group):
    wire = Wire()
    dst = "ff02::1" if group else US_TEXT
    wire.send(IPv6(src=PEER_TEXT, dst=dst, nh=next_header) / chain)
    wire.at(120.0)
