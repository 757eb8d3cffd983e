"""The dual stack (issue 15): one Stack with an IPv4 and an IPv6 address, one
TCP table for both families, listeners that hear both; and what differs per
family (the pseudo-header, the MSS, the 4-tuple the ISN and cookies hash).

scapy is the independent oracle for the IPv6 bytes, as in test_stack_input.py.
"""

from __future__ import annotations

import errno

import pytest
from scapy.layers.inet import IP
from scapy.layers.inet import TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.inet6 import IPv6ExtHdrFragment
from tcpscript import IPV4
from tcpscript import IPV6
from tcpscript import OUR_ISS
from tcpscript import PEER
from tcpscript import PEER6
from tcpscript import PEER_ISS
from tcpscript import PEER_PORT
from tcpscript import US
from tcpscript import US6
from tcpscript import Family
from tcpscript import TcpScript

from ustack.net.ip_common import Unreachable
from ustack.stack import Stack
from ustack.tcp.isn import IsnGenerator
from ustack.tcp.syncookies import SynCookies
from ustack.trace.records import NewConnection
from ustack.trace.records import SegmentEvent
from ustack.wire.address import format_address


class Wire:
    def __init__(self, address6: int | None = US6) -> None:
        self.sent: list[bytes] = []
        self.stack = Stack(US, self._transmit, address6=address6)

    def _transmit(self, packet: bytes, gso_size: int = 0) -> bool:
        self.sent.append(bytes(packet))
        return True


def test_an_ipv6_syn_built_by_scapy_is_answered_with_a_valid_synack_offering_mtu_less_60() -> None:
    wire = Wire()
    wire.stack.tcp.listen(80, lambda conn: None)
    syn = IPv6(src=format_address(PEER6), dst=format_address(US6)) / TCP(
        sport=PEER_PORT, dport=80, flags="S", seq=PEER_ISS, options=[("MSS", 1440)]
    )
    wire.stack.receive(bytes(syn))
    (raw,) = wire.sent
    synack = IPv6(raw)
    assert (synack.src, synack.dst, synack.nh) == ("2001:2::2", "2001:2::1", 6)
    assert synack[TCP].flags == "SA" and synack[TCP].ack == PEER_ISS + 1
    # RFC 8200 8.3: the MSS is the MTU less 60 (1500 - 40 - 20).
    assert dict(synack[TCP].options)["MSS"] == 1440
    # The TCP checksum over the IPv6 pseudo-header (RFC 8200 8.1): scapy's own.
    clean = IPv6(raw)
    del clean[TCP].chksum
    assert bytes(IPv6(bytes(clean))) == raw
    assert wire.stack.counters["ip6.in"] == 1 and wire.stack.counters["ip.in"] == 0


def test_a_segment_summed_over_the_ipv4_pseudo_header_is_a_bad_checksum_over_ipv6() -> None:
    wire = Wire()
    wire.stack.tcp.listen(80, lambda conn: None)
    segment = TCP(sport=PEER_PORT, dport=80, flags="S", seq=PEER_ISS)
    over_ipv4 = IP(bytes(IP(src="198.18.0.1", dst="198.18.0.2") / segment))[TCP]
    # The same segment with the checksum RFC 793's pseudo-header gives, in IPv6.
    wire.stack.receive(bytes(IPv6(src="2001:2::1", dst="2001:2::2") / over_ipv4))
    assert wire.sent == []
    assert wire.stack.counters["tcp.drop.bad-checksum"] == 1


def test_one_listener_hears_both_families_and_each_answer_goes_in_its_own() -> None:
    t = TcpScript(listen=80, family=IPV4)
    t.send("S", seq=PEER_ISS, mss=1460)
    t.expect("S.", seq=OUR_ISS, ack=PEER_ISS + 1, mss=1460)
    t.speak(IPV6)  # another peer, same port numbers, over IPv6
    t.send("S", seq=PEER_ISS, mss=1460)
    t.expect("S.", seq=OUR_ISS, ack=PEER_ISS + 1, mss=1440)
    tcp = t.stack.tcp
    assert set(tcp.connections) == {(PEER, PEER_PORT, 80), (PEER6, PEER_PORT, 80)}
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1)
    t.speak(IPV4)
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1)
    assert tcp.queued() == {"ESTABLISHED": 2}
    new = [e for e in t.trace if isinstance(e, NewConnection)]
    assert [(e.local, e.remote) for e in new] == [
        ("198.18.0.2", "198.18.0.1"),
        ("2001:2::2", "2001:2::1"),
    ]
    # The trace names each segment's ends in its family (RFC 5952 text).
    ends = {(e.direction, e.local, e.remote) for e in t.trace if isinstance(e, SegmentEvent)}
    assert ends == {
        (direction, local, remote)
        for direction in ("in", "out")
        for local, remote in (("198.18.0.2", "198.18.0.1"), ("2001:2::2", "2001:2::1"))
    }


def test_without_an_mss_option_the_peer_is_assumed_to_take_536_or_1220(family: Family) -> None:
    """RFC 9293 3.7.1 (MUST-15): 536 over IPv4, 1220 (1280 - 60) over IPv6."""
    t = TcpScript(family=family)
    t.send("S", seq=PEER_ISS)
    t.expect("S.", mss=t.mss)
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1)
    assert t.conn is not None
    assert t.conn.peer_mss == (1220 if family.ipv6 else 536)
    t.write(bytes(3000))
    assert {len(o.payload) for o in t.sent()} >= {t.conn.peer_mss}


def test_isns_and_syn_cookies_hash_the_whole_16_byte_addresses() -> None:
    """RFC 6528 3: F() over the connection-id; an IPv6 peer that differs from
    another only in its upper 96 bits gets another ISN and another cookie."""
    isn = IsnGenerator(b"k" * 16)
    other = PEER6 ^ (1 << 100)
    assert isn(US6, 80, PEER6, PEER_PORT, 0.0) != isn(US6, 80, other, PEER_PORT, 0.0)
    a = isn(US6, 80, PEER6, PEER_PORT, 0.0)
    assert isn(US6, 80, PEER6, PEER_PORT, 1.0) == (a + 250_000) & 0xFFFFFFFF
    cookies = SynCookies(b"s" * 16)
    cookie = cookies.make((US6, 80, PEER6, PEER_PORT), PEER_ISS, 1440, 0.0)
    assert cookies.check((US6, 80, PEER6, PEER_PORT), cookie + 1, PEER_ISS + 1, 1.0) == 1440
    assert cookies.check((US6, 80, other, PEER_PORT), cookie + 1, PEER_ISS + 1, 1.0) is None


def test_an_ipv4_only_stack_counts_ipv6_as_unsupported_and_refuses_to_connect_there() -> None:
    wire = Wire(address6=None)
    assert wire.stack.ip6 is None
    wire.stack.receive(bytes(IPv6(src="2001:2::1", dst="2001:2::2") / TCP(dport=80)))
    assert wire.stack.counters["ip.drop.ipv6-unsupported"] == 1
    with pytest.raises(Unreachable) as refused:
        wire.stack.connect(PEER6, 80, 0.0)
    assert refused.value.errno == errno.ENETUNREACH
    assert wire.sent == []


def test_connect_picks_the_family_from_the_address_and_refuses_ipv6_multicast() -> None:
    wire = Wire()
    wire.stack.connect(PEER6, 8080, 0.0)
    wire.stack.connect(PEER, 8080, 0.0)
    assert [p[0] >> 4 for p in wire.sent] == [6, 4]
    with pytest.raises(Unreachable):
        wire.stack.connect(0xFF02 << 112 | 1, 8080, 0.0)  # ff02::1
    assert wire.stack.counters["ip6.out"] == 1 and wire.stack.counters["ip.out"] == 1


def test_the_timers_of_both_families_reassembly_join_the_stacks_deadline() -> None:
    wire = Wire()
    # The first of two IPv6 fragments: reassembly waits 60 s (RFC 8200 4.5).
    first = bytes(
        IPv6(src="2001:2::1", dst="2001:2::2")
        / IPv6ExtHdrFragment(nh=6, m=1, id=7, offset=0)
        / bytes(24)  # (the whole TCP header in the first fragment, RFC 7112)
    )
    wire.stack.receive(first, now=1.0)
    assert wire.stack.next_deadline() == pytest.approx(61.0)
    wire.stack.handle_timers(61.0)
    assert wire.stack.next_deadline() is None
