"""IPv4 fragment reassembly and output fragmentation (RFC 791 3.2, RFC 815,
RFC 1122 3.3.2), packets in -> packets out on a virtual clock.

scapy is the independent oracle: its `fragment` cuts what we receive, its
`defragment` puts together what we send.
"""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import ICMP
from scapy.layers.inet import IP
from scapy.layers.inet import TCP
from scapy.layers.inet import UDP
from scapy.layers.inet import IPerror
from scapy.layers.inet import defragment
from scapy.layers.inet import fragment
from scapy.packet import Raw
from tcpscript import OUR_ISS
from tcpscript import PEER
from tcpscript import PEER_ISS
from tcpscript import US
from tcpscript import TcpScript
from virtual_wire import VirtualWire

from ustack.net.fragments import DATAGRAM_OVERHEAD
from ustack.net.fragments import FRAGMENT_OVERHEAD
from ustack.net.fragments import FragmentLimits
from ustack.stack import Stack
from ustack.trace.records import Drop

US_TEXT = "198.18.0.2"
PEER_TEXT = "198.18.0.1"


class Wire(VirtualWire[IP]):
    """A Stack on a virtual clock whose transmit appends to a list."""

    def __init__(self, mtu: int = 1500, limits: FragmentLimits | None = None) -> None:
        super().__init__(IP)
        self.stack = Stack(US, self.transmit, mtu=mtu, trace=self.trace.append,
                           fragment_limits=limits)  # fmt: skip
        self.layer = self.stack

    @property
    def counters(self) -> dict[str, int]:
        return dict(self.stack.counters)

    def drops(self) -> list[Drop]:
        return [event for event in self.trace if isinstance(event, Drop)]


def echo(size: int, ident: int = 0x4242, seq: int = 1, ip_id: int = 7) -> IP:
    data = bytes(i & 0xFF for i in range(size))
    return IP(src=PEER_TEXT, dst=US_TEXT, id=ip_id) / ICMP(id=ident, seq=seq) / data


def frag(ip_id: int, offset: int, data: bytes, more: bool, proto: int = 17) -> IP:
    """A raw fragment: `offset` in bytes (a multiple of 8)."""
    return IP(src=PEER_TEXT, dst=US_TEXT, id=ip_id, proto=proto, frag=offset // 8,
              flags="MF" if more else 0) / Raw(data)  # fmt: skip


def only_reply(replies: list[IP]) -> IP:
    """The one datagram the stack sent (its fragments put together)."""
    whole = defragment(replies)
    assert len(whole) == 1, replies
    return IP(bytes(whole[0]))


# ---- reassembly -----------------------------------------------------------------------


def test_a_fragmented_echo_request_in_order_gets_its_reply() -> None:
    wire = Wire()
    request = echo(4000)
    pieces = fragment(request, fragsize=1480)
    assert len(pieces) == 3
    replies = wire.send(*pieces)
    reply = only_reply(replies)
    assert reply[ICMP].type == 0
    assert bytes(reply[ICMP].payload) == bytes(request[ICMP].payload)
    counters = wire.counters
    assert counters["ip.reasm.reqds"] == 3
    assert counters["ip.reasm.oks"] == 1
    assert counters["icmp.echo"] == 1
    assert wire.stack.ip.fragments.memory == 0 and not wire.stack.ip.fragments.datagrams


@pytest.mark.parametrize("seed", range(5))
def test_fragments_in_any_order_make_the_same_datagram(seed: int) -> None:
    wire = Wire()
    request = echo(3000, seq=seed)
    pieces = fragment(request, fragsize=8 * (seed + 10))
    random.Random(seed).shuffle(pieces)
    reply = only_reply(wire.send(*pieces))
    assert bytes(reply[ICMP].payload) == bytes(request[ICMP].payload)
    assert wire.counters["ip.reasm.oks"] == 1


def test_an_identical_duplicate_is_dropped_alone_and_the_datagram_completes() -> None:
    wire = Wire()
    first, second, last = fragment(echo(2000), fragsize=800)
    assert wire.send(first, first, second) == []
    assert wire.counters["ip.drop.frag-duplicate"] == 1
    reply = only_reply(wire.send(second, last))  # the middle one again, then the end
    assert reply[ICMP].type == 0
    assert wire.counters["ip.drop.frag-duplicate"] == 2
    assert wire.counters["ip.reasm.oks"] == 1


def test_a_partial_overlap_drops_the_whole_datagram() -> None:
    """RFC 5722 4 (Linux since FragmentSmack): no reply, nothing held."""
    wire = Wire()
    assert wire.send(frag(9, 0, b"A" * 16, True), frag(9, 8, b"B" * 16, True)) == []
    assert wire.counters["ip.drop.frag-overlap"] == 1
    assert wire.counters["ip.reasm.fails"] == 1
    assert not wire.stack.ip.fragments.datagrams and wire.stack.ip.fragments.memory == 0
    (drop,) = wire.drops()
    assert drop.reason == "frag-overlap" and "RFC 5722 4" in drop.summary
    # The fragments that follow start a new datagram that never completes.
    assert wire.send(frag(9, 16, b"C" * 8, False)) == []
    assert "ip.reasm.oks" not in wire.counters


@pytest.mark.parametrize(
    "pieces, why",
    [
        # A second last fragment that ends elsewhere.
        ([(0, 8, True), (16, 8, False), (16, 16, False)], "second last"),
        # (Offset 0 without MF is no fragment: the pieces start elsewhere.)
        # Held data past where the last fragment says the datagram ends.
        ([(24, 8, True), (8, 8, False)], "past the last"),
        # Data past the end the last fragment set.
        ([(8, 8, False), (16, 8, True)], "past the end"),
        # A fragment without data (MF, fewer than 8 bytes: nothing after the trim).
        ([(0, 8, True), (8, 4, True)], "without data"),
    ],
)
def test_an_inconsistent_fragment_drops_the_whole_datagram(
    pieces: list[tuple[int, int, bool]], why: str
) -> None:
    wire = Wire()
    for offset, size, more in pieces:
        assert wire.send(frag(3, offset, b"x" * size, more)) == []
    assert wire.counters["ip.drop.frag-inconsistent"] == 1
    assert why in wire.drops()[-1].summary
    assert wire.counters.get("ip.reasm.oks", 0) == 0


def test_a_datagram_past_65535_bytes_is_dropped() -> None:
    """The ping of death: offset 8189 * 8 plus 100 bytes ends past 65,535."""
    wire = Wire()
    wire.send(frag(5, 0, b"a" * 1000, True))
    assert wire.send(frag(5, 8189 * 8, b"z" * 100, False)) == []
    assert wire.counters["ip.drop.frag-too-big"] == 1
    assert not wire.stack.ip.fragments.datagrams  # the held first fragment went too


def test_the_largest_datagram_65535_bytes_is_reassembled_and_answered() -> None:
    wire = Wire()
    request = echo(65535 - 28)
    pieces = fragment(request, fragsize=1480)
    reply = only_reply(wire.send(*pieces))
    assert reply.len == 65535
    assert bytes(reply[ICMP].payload) == bytes(request[ICMP].payload)


def test_too_many_fragments_drop_the_datagram() -> None:
    wire = Wire(limits=FragmentLimits(max_fragments=4))
    for index in range(4):
        wire.send(frag(6, index * 8, b"q" * 8, True))
    assert wire.send(frag(6, 32, b"q" * 8, False)) == []
    assert wire.counters["ip.drop.frag-too-many"] == 1
    assert not wire.stack.ip.fragments.datagrams


# ---- the timeout ----------------------------------------------------------------------


def test_timeout_sends_time_exceeded_quoting_the_first_fragment() -> None:
    """RFC 1122 3.3.2, RFC 792: code 1 after 30 s (Linux ipfrag_time)."""
    wire = Wire()
    first = bytes(frag(11, 0, bytes(range(64)), True, proto=17))
    wire.now = 2.0
    wire.send(first)
    assert wire.stack.next_deadline() == 32.0
    assert wire.at(31.999) == []
    (error,) = wire.at(32.0)
    assert (error.src, error.dst) == (US_TEXT, PEER_TEXT)
    assert (error[ICMP].type, error[ICMP].code) == (11, 1)
    quoted = bytes(error[IPerror])
    assert quoted == first[: len(quoted)] and len(quoted) >= 28  # header + 64 bits at least
    counters = wire.counters
    assert counters["ip.drop.frag-timeout"] == 1
    assert counters["ip.reasm.fails"] == 1
    assert counters["ip.reasm.timeout"] == 1
    assert counters["icmp.out.reassembly-time-exceeded"] == 1
    (drop,) = wire.drops()
    assert (drop.time, drop.reason) == (32.0, "frag-timeout") and "RFC 1122 3.3.2" in drop.summary
    assert wire.stack.next_deadline() is None and wire.stack.ip.fragments.memory == 0


def test_timeout_without_the_first_fragment_sends_nothing() -> None:
    wire = Wire()
    wire.send(frag(12, 8, b"m" * 8, True))
    assert wire.at(100.0) == []
    assert wire.counters["ip.drop.frag-timeout"] == 1
    assert "icmp.out.reassembly-time-exceeded" not in wire.counters


def test_no_time_exceeded_about_an_icmp_error() -> None:
    """RFC 1122 3.2.2: never an ICMP error about an ICMP error."""
    wire = Wire()
    unreachable = bytes(ICMP(type=3, code=3) / (b"e" * 40))
    wire.send(frag(13, 0, unreachable[:24], True, proto=1))
    assert wire.at(31.0) == []
    assert wire.counters["ip.drop.frag-timeout"] == 1


def test_the_timer_runs_from_the_first_fragment_not_the_latest() -> None:
    wire = Wire()
    wire.send(frag(14, 0, b"a" * 8, True))
    wire.at(29.0)
    wire.send(frag(14, 16, b"c" * 8, True))
    wire.at(30.0)
    assert wire.counters["ip.drop.frag-timeout"] == 1
    # The middle piece now starts a datagram of its own (a new timer).
    assert wire.send(frag(14, 8, b"b" * 8, True)) == []
    assert wire.stack.next_deadline() == 60.0


def test_a_lone_fragment_expires_inside_a_tcp_script_too() -> None:
    """Stack.next_deadline/handle_timers carry reassembly's timer beside TCP's."""
    t = TcpScript()
    t.stack.receive(bytes(frag(15, 0, b"s" * 8, True, proto=6)), t.now)
    t.at(31.0)
    assert t.stack.counters["ip.drop.frag-timeout"] == 1


# ---- the memory cap -------------------------------------------------------------------


def test_the_memory_cap_evicts_the_oldest_incomplete_datagram() -> None:
    limit = 3 * (1000 + FRAGMENT_OVERHEAD + DATAGRAM_OVERHEAD)
    wire = Wire(limits=FragmentLimits(high_thresh=limit))
    for ip_id in (1, 2, 3):
        wire.now += 1.0
        wire.send(frag(ip_id, 0, b"d" * 1000, True))
    assert wire.stack.ip.fragments.memory == limit
    wire.send(frag(4, 0, b"d" * 1000, True))
    reasm = wire.stack.ip.fragments
    assert [key[3] for key in reasm.datagrams] == [2, 3, 4]
    assert reasm.memory == limit
    assert wire.counters["ip.drop.frag-memory"] == 1
    # The evicted datagram never times out, so never a Time Exceeded for it.
    assert [p[ICMP].code for p in wire.at(40.0)] == [1, 1, 1]


def test_a_flood_of_random_fragments_stays_under_the_cap() -> None:
    limit = 64 * 1024
    wire = Wire(limits=FragmentLimits(high_thresh=limit))
    rng = random.Random(1)
    peak = 0
    for _ in range(3000):
        size = 8 * rng.randint(1, 150)
        packet = frag(rng.randrange(40), 8 * rng.randrange(8000), b"f" * size, rng.random() < 0.9)
        wire.now += 0.01
        wire.send(packet)
        peak = max(peak, wire.stack.ip.fragments.memory)
    assert peak <= limit
    assert wire.counters["ip.reasm.reqds"] == 3000


# ---- protocols ------------------------------------------------------------------------


def test_a_fragmented_tcp_syn_and_data_reach_tcp() -> None:
    t = TcpScript()
    syn = IP(src=PEER_TEXT, dst=US_TEXT, id=100) / TCP(
        sport=40000, dport=80, seq=PEER_ISS, flags="S", window=65535,
        options=[("MSS", 1460)],
    )  # fmt: skip
    for piece in fragment(syn, fragsize=16):
        t.stack.receive(bytes(piece), t.now)
    t.expect("S.", seq=OUR_ISS, ack=PEER_ISS + 1)
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1)
    data = bytes(range(256)) * 12
    segment = IP(src=PEER_TEXT, dst=US_TEXT, id=101) / TCP(
        sport=40000, dport=80, seq=PEER_ISS + 1, ack=OUR_ISS + 1, flags="PA", window=65535,
    ) / data  # fmt: skip
    pieces = fragment(segment, fragsize=1000)
    for piece in reversed(pieces):
        t.stack.receive(bytes(piece), t.now)
    t.expect(".", ack=PEER_ISS + 1 + len(data))
    assert t.read() == data
    assert t.stack.counters["ip.reasm.oks"] == 2


def test_a_fragmented_udp_datagram_gets_port_unreachable_quoting_the_whole() -> None:
    wire = Wire()
    datagram = IP(src=PEER_TEXT, dst=US_TEXT, id=55) / UDP(sport=5000, dport=9) / (b"u" * 3000)
    (error,) = wire.send(*fragment(datagram, fragsize=1480))
    assert (error[ICMP].type, error[ICMP].code) == (3, 3)
    quoted = error[IPerror]
    assert quoted.flags == 0 and quoted.frag == 0 and quoted.len == 3028  # the whole datagram


# ---- output fragmentation -------------------------------------------------------------


@pytest.mark.parametrize("mtu", [576, 1000, 1500])
def test_an_echo_reply_larger_than_the_mtu_goes_in_fragments(mtu: int) -> None:
    wire = Wire(mtu=mtu)
    request = echo(4000, ip_id=77)
    replies = wire.send(*fragment(request, fragsize=(mtu - 20) & ~7))
    assert len(replies) == -(-4008 // ((mtu - 20) & ~7))
    assert all(len(bytes(p)) <= mtu for p in replies)
    assert len({p.id for p in replies}) == 1  # one ID for them all
    assert all(p.flags.MF for p in replies[:-1]) and not replies[-1].flags.MF
    assert all(not p.flags.DF for p in replies)
    assert all(len(bytes(p.payload)) % 8 == 0 for p in replies[:-1])
    assert [p.frag * 8 for p in replies] == [
        sum(len(bytes(q.payload)) for q in replies[:i]) for i in range(len(replies))
    ]
    # scapy's defragment (the oracle) and our own reassembly agree on the reply.
    reply = only_reply(replies)
    assert reply[ICMP].type == 0 and bytes(reply[ICMP].payload) == bytes(request[ICMP].payload)
    echo_back = Wire()
    echo_back.stack.ip.address = 0xC6120001  # the peer's view: our fragments in
    whole: list[bytes] = []
    echo_back.stack.ip._receive_icmp = lambda src, message: whole.append(bytes(message))  # type: ignore[method-assign]
    for piece in replies:
        echo_back.stack.receive(bytes(piece))
    assert whole == [bytes(reply[ICMP])]
    counters = wire.counters
    assert counters["ip.frag.oks"] == 1
    assert counters["ip.frag.creates"] == len(replies)


def test_a_reply_that_fits_keeps_df_and_is_not_fragmented() -> None:
    """The wire as before for every datagram under the MTU."""
    (reply,) = Wire().send(echo(1000))
    assert reply.flags == "DF" and reply.frag == 0


def test_tcp_segments_keep_df_and_an_oversized_one_is_dropped() -> None:
    wire = Wire(mtu=576)
    wire.stack.ip.send_in_place(PEER, bytearray(600), protocol=6)
    assert wire.sent == []
    assert wire.counters["ip.drop.out-too-big"] == 1
    t = TcpScript()
    t.establish()
    t.write(b"hello")
    (packet,) = [IP(p) for p in t._wire]
    assert packet.flags == "DF" and packet.frag == 0
