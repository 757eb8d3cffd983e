"""Rate limits, ICMP address rules and the IP ID, on the sans-I/O core with a
virtual clock (issue 14 items 5 and 6).

- ICMP errors: Linux's two limits (icmp_msgs_per_sec/icmp_msgs_burst global,
  icmp_ratelimit per destination with a burst of 6), only for the types of
  icmp_ratemask, with a bounded table of destinations;
- ACKs for invalid segments: Linux's tcp_invalid_ratelimit (500 ms per
  connection) for out-of-window segments, PAWS and challenge ACKs;
- RFC 1122 3.2.2: no ICMP error about an ICMP error, a broadcast, a
  non-initial fragment, or to a source that is no single host;
- RFC 6864 / RFC 7739: IP IDs per destination, so an idle scan sees nothing.

Packets go in as bytes through Stack.receive; what goes out is what the
transmit callable got, parsed back.
"""

from __future__ import annotations

import ipaddress
import itertools
import struct

import pytest
from peers import PEER4 as PEER
from peers import US4 as US
from tcpscript import OUR_ISS
from tcpscript import PEER_ISS
from tcpscript import TcpScript

from ustack.net.address_rules import icmp_error_forbidden
from ustack.net.address_rules import is_unicast_host
from ustack.net.ip_id import BUCKETS
from ustack.net.ip_id import IpIdentifiers
from ustack.net.ratelimit import IcmpLimits
from ustack.net.ratelimit import IcmpRateLimiter
from ustack.stack import Stack
from ustack.trace.records import Decision
from ustack.trace.records import Drop
from ustack.trace.records import TraceEvent
from ustack.trace.vocabulary import DropReason
from ustack.trace.vocabulary import Layer
from ustack.wire.icmp import DEST_UNREACH
from ustack.wire.icmp import ECHO_REPLY
from ustack.wire.icmp import ECHO_REQUEST
from ustack.wire.icmp import FRAG_NEEDED
from ustack.wire.icmp import PORT_UNREACH
from ustack.wire.icmp import TIME_EXCEEDED
from ustack.wire.icmp import build_icmp
from ustack.wire.icmp import parse_icmp
from ustack.wire.ipv4 import PROTO_ICMP
from ustack.wire.ipv4 import PROTO_TCP
from ustack.wire.ipv4 import PROTO_UDP
from ustack.wire.ipv4 import build_ipv4
from ustack.wire.ipv4 import parse_ipv4

NETWORK = ipaddress.IPv4Network("198.18.0.0/24")


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def one_credit(_: int) -> int:
    """Each ICMP message costs exactly one global credit (Linux: 0..2 at random)."""
    return 1


class Wire:
    """A Stack on the 198.18.0.0/24 link; transmit records, trace kept."""

    def __init__(self, limits: IcmpLimits | None = None) -> None:
        self.sent: list[bytes] = []
        self.trace: list[TraceEvent] = []
        self.stack = Stack(
            US, self._transmit, network=NETWORK, icmp_limits=limits, trace=self.trace.append
        )
        # Deterministic global credits: one per message.
        self.stack.ip.icmp_limiter = IcmpRateLimiter(limits, take=one_credit)

    def _transmit(self, packet: bytes) -> bool:
        self.sent.append(bytes(packet))
        return True

    def udp(self, src: int, now: float, dport: int = 33434, dst: int = US) -> list[bytes]:
        datagram = struct.pack("!HHHH", 40000, dport, 8 + 4, 0) + b"ping"  # checksum 0: none
        header = build_ipv4(src=src, dst=dst, protocol=PROTO_UDP, payload_length=len(datagram))
        return self._in(header + datagram, now)

    def echo(self, src: int, now: float, sequence: int = 1, dst: int = US) -> list[bytes]:
        message = build_icmp(type=ECHO_REQUEST, code=0, rest=0x1234_0000 | sequence, payload=b"x")
        header = build_ipv4(src=src, dst=dst, protocol=PROTO_ICMP, payload_length=len(message))
        return self._in(header + message, now)

    def _in(self, packet: bytes, now: float) -> list[bytes]:
        before = len(self.sent)
        self.stack.receive(packet, now)
        return self.sent[before:]

    def drops(self) -> list[str]:
        return [f"{e.layer}.{e.reason}" for e in self.trace if isinstance(e, Drop)]


def icmp_of(packet: bytes) -> tuple[int, int, int]:
    """(destination, type, code) of an ICMP message we sent."""
    header = parse_ipv4(packet)
    assert header.protocol == PROTO_ICMP
    icmp = parse_icmp(memoryview(packet)[header.header_length : header.total_length])
    return header.dst, icmp.type, icmp.code


# ---- ICMP errors: per destination (icmp_ratelimit) -----------------------------------


def test_port_unreachables_to_one_source_burst_six_then_one_a_second() -> None:
    wire = Wire()
    answered = [bool(wire.udp(PEER, now=0.0, dport=port)) for port in range(1, 21)]
    # inet_peer_xrlim_allow: a new peer's bucket is full, XRLIM_BURST_FACTOR (6) messages.
    assert answered == [True] * 6 + [False] * 14
    counters = wire.stack.counters
    assert counters["icmp.drop.rate-limited-host"] == 14
    assert counters["udp.out.port-unreachable"] == 20  # every closed port was seen
    # Then one a second, not more.
    assert wire.udp(PEER, now=0.5) == []
    (reply,) = wire.udp(PEER, now=1.0)
    assert icmp_of(reply) == (PEER, DEST_UNREACH, PORT_UNREACH)
    assert wire.udp(PEER, now=1.9) == []
    assert len(wire.udp(PEER, now=2.0)) == 1
    # A quiet spell refills the burst, never beyond six.
    sent = sum(len(wire.udp(PEER, now=100.0, dport=p)) for p in range(1, 21))
    assert sent == 6
    assert "icmp.rate-limited-host" in wire.drops()  # traced too


def test_each_destination_has_its_own_bucket() -> None:
    wire = Wire()
    for _ in range(10):
        wire.udp(PEER, now=0.0)
    # Another host is not punished for the first one's storm.
    other = ip("198.18.0.7")
    assert len(wire.udp(other, now=0.0)) == 1


def test_the_per_destination_limit_can_be_changed_or_turned_off() -> None:
    wire = Wire(IcmpLimits(ratelimit=0.1))
    assert sum(len(wire.udp(PEER, now=0.0)) for _ in range(10)) == 6
    assert len(wire.udp(PEER, now=0.1)) == 1
    wire = Wire(IcmpLimits(ratelimit=0.0))
    assert sum(len(wire.udp(PEER, now=0.0)) for _ in range(40)) == 40


# ---- ICMP errors: global (icmp_msgs_per_sec, icmp_msgs_burst) -------------------------


def test_a_spoofed_source_storm_gets_the_global_burst_then_the_refill() -> None:
    wire = Wire()
    sources = [ip("10.0.0.0") + n for n in range(1, 201)]
    sent = sum(len(wire.udp(src, now=0.0)) for src in sources)
    assert sent == 50  # icmp_msgs_burst
    counters = wire.stack.counters
    assert counters["icmp.drop.rate-limited-global"] == 150
    # Less than 20 ms later: no refill (icmp_global_allow's HZ/50).
    assert wire.udp(ip("10.1.0.1"), now=0.01) == []
    # 30 ms: 1000/s * 0.03 s = 30 credits.
    later = sum(len(wire.udp(ip("10.2.0.0") + n, now=0.03)) for n in range(1, 101))
    assert later == 30
    # Never more than the burst banked, however long the quiet.
    later = sum(len(wire.udp(ip("10.3.0.0") + n, now=60.0)) for n in range(1, 101))
    assert later == 50


def test_random_credit_cost_averages_one_message_per_credit() -> None:
    limiter = IcmpRateLimiter()  # the real random cost, 0..2 credits a message
    allowed = sum(
        limiter.allow(DEST_UNREACH, PORT_UNREACH, ip("10.0.0.0") + n, now=0.0) is None
        for n in range(1, 1001)
    )
    # 50 credits at 1 on average: about 50 messages; never all 1000.
    assert 25 <= allowed <= 120


def test_the_table_of_destinations_is_bounded() -> None:
    limiter = IcmpRateLimiter(IcmpLimits(max_peers=100, msgs_burst=10**9), take=one_credit)
    for n in range(100_000):
        limiter.allow(DEST_UNREACH, PORT_UNREACH, ip("10.0.0.0") + n, now=n * 1e-6)
    assert len(limiter) == 100
    # The least recently used went: the newest are still there, and limited.
    newest = ip("10.0.0.0") + 99_999
    for _ in range(5):
        limiter.allow(DEST_UNREACH, PORT_UNREACH, newest, now=0.1)
    assert limiter.allow(DEST_UNREACH, PORT_UNREACH, newest, now=0.1) is not None


@pytest.mark.parametrize(
    ("type_", "code", "limited"),
    [
        (DEST_UNREACH, PORT_UNREACH, True),
        (DEST_UNREACH, FRAG_NEEDED, False),  # "Don't limit PMTU discovery"
        (4, 0, True),  # source quench
        (TIME_EXCEEDED, 1, True),
        (12, 0, True),  # parameter problem
        (ECHO_REPLY, 0, False),  # not in icmp_ratemask 6168
        (5, 0, False),  # redirect: not in the mask either
        (40, 0, False),  # above NR_ICMP_TYPES
    ],
)
def test_which_types_the_default_ratemask_limits(type_: int, code: int, limited: bool) -> None:
    assert IcmpRateLimiter().limited(type_, code) is limited


def test_echo_replies_are_not_limited_unless_the_mask_says_so() -> None:
    wire = Wire()
    assert sum(len(wire.echo(PEER, now=0.0, sequence=n)) for n in range(200)) == 200
    wire = Wire(IcmpLimits(ratemask=6168 | 1 << ECHO_REPLY))
    assert sum(len(wire.echo(PEER, now=0.0, sequence=n)) for n in range(200)) == 6


# ---- RFC 1122 3.2.2: when no ICMP error may be sent -----------------------------------


def _datagram(
    src: int = PEER, dst: int = US, protocol: int = PROTO_UDP, payload: bytes = b"\0" * 8
) -> bytearray:
    header = build_ipv4(src=src, dst=dst, protocol=protocol, payload_length=len(payload))
    return bytearray(header + payload)


def _fragment(offset_units: int) -> bytearray:
    packet = _datagram()
    struct.pack_into("!H", packet, 6, offset_units)  # no DF, fragment offset
    return packet


BROADCAST = "icmp.drop.error-about-broadcast"
ABOUT_ERROR = "icmp.drop.error-about-icmp-error"
NO_ERROR_ABOUT = [
    ("an ICMP error", _datagram(protocol=PROTO_ICMP, payload=bytes((DEST_UNREACH, 3)) + b"\0" * 6),
     ABOUT_ERROR),
    ("a time exceeded", _datagram(protocol=PROTO_ICMP, payload=bytes((TIME_EXCEEDED, 0)) * 4),
     ABOUT_ERROR),
    ("an unknown ICMP type", _datagram(protocol=PROTO_ICMP, payload=bytes((99, 0)) + b"\0" * 6),
     ABOUT_ERROR),
    ("a limited broadcast", _datagram(dst=ip("255.255.255.255")), BROADCAST),
    ("the subnet's broadcast", _datagram(dst=ip("198.18.0.255")), BROADCAST),
    ("a multicast", _datagram(dst=ip("224.0.0.251")), BROADCAST),
    ("a non-initial fragment", _fragment(185), "icmp.drop.error-about-fragment"),
    ("a last fragment", _fragment(0x2000 * 0 + 1), "icmp.drop.error-about-fragment"),
    ("a 0/8 source", _datagram(src=ip("0.0.0.0")), "icmp.drop.error-to-non-unicast"),
    ("a loopback source", _datagram(src=ip("127.0.0.1")), "icmp.drop.error-to-non-unicast"),
    ("a broadcast source", _datagram(src=ip("198.18.0.255")), "icmp.drop.error-to-non-unicast"),
    ("a multicast source", _datagram(src=ip("239.1.2.3")), "icmp.drop.error-to-non-unicast"),
    ("a class E source", _datagram(src=ip("240.0.0.1")), "icmp.drop.error-to-non-unicast"),
    ("a truncated datagram", bytearray(b"\x45" + b"\0" * 10), "icmp.drop.error-unquotable"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("offending", "counter"),
    [(packet, counter) for _, packet, counter in NO_ERROR_ABOUT],
    ids=[name for name, _, _ in NO_ERROR_ABOUT],
)
def test_no_icmp_error_is_sent_about(offending: bytearray, counter: str) -> None:
    wire = Wire()
    wire.stack.ip.send_icmp_error(DEST_UNREACH, PORT_UNREACH, offending)
    assert wire.sent == []
    assert dict(wire.stack.counters) == {counter: 1}


@pytest.mark.parametrize(
    "offending",
    [
        _datagram(),
        _datagram(protocol=PROTO_ICMP, payload=bytes((ECHO_REQUEST, 0)) + b"\0" * 6),
        _fragment(0x2000),  # a first fragment (MF, offset 0) may be quoted
    ],
    ids=["udp", "an echo request", "a first fragment"],
)
def test_an_icmp_error_may_be_sent_about(offending: bytearray) -> None:
    wire = Wire()
    wire.stack.ip.send_icmp_error(DEST_UNREACH, PORT_UNREACH, offending)
    (error,) = wire.sent
    assert icmp_of(error) == (PEER, DEST_UNREACH, PORT_UNREACH)


def test_unicast_hosts() -> None:
    assert is_unicast_host(ip("198.18.0.1"))
    assert is_unicast_host(ip("223.255.255.254"))
    for address in ("0.0.0.0", "0.9.9.9", "127.0.0.1", "224.0.0.1", "240.0.0.1", "255.255.255.255"):
        assert not is_unicast_host(ip(address)), address
    assert icmp_error_forbidden(_datagram(), frozenset()) is None


BAD_SOURCES = ["0.0.0.0", "0.1.2.3", "127.0.0.1", "198.18.0.255", "198.18.0.0",
               "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255"]  # fmt: skip


@pytest.mark.parametrize("source", BAD_SOURCES)
def test_udp_and_icmp_from_a_source_no_host_has_are_dropped_and_unanswered(source: str) -> None:
    """The source checks of IPv4Layer.receive hold for every protocol, as for TCP."""
    wire = Wire()
    assert wire.udp(ip(source), now=0.0) == []
    assert wire.echo(ip(source), now=0.0) == []
    assert wire.stack.counters["ip.drop.bad-source"] == 2
    assert wire.stack.counters["udp.out.port-unreachable"] == 0
    assert wire.stack.counters["icmp.echo"] == 0


def test_udp_and_icmp_with_our_own_source_are_dropped() -> None:
    wire = Wire()
    assert wire.udp(US, now=0.0) == []
    assert wire.echo(US, now=0.0) == []
    assert wire.stack.counters["ip.drop.local-source"] == 2


@pytest.mark.parametrize("destination", ["198.18.0.255", "255.255.255.255", "224.0.0.1"])
def test_echo_requests_and_udp_to_a_broadcast_are_not_answered(destination: str) -> None:
    """Linux's icmp_echo_ignore_broadcasts=1; and no port unreachable about a
    broadcast (RFC 1122 3.2.2): the stack takes no broadcast as its own."""
    wire = Wire()
    assert wire.echo(PEER, now=0.0, dst=ip(destination)) == []
    assert wire.udp(PEER, now=0.0, dst=ip(destination)) == []
    assert wire.stack.counters["ip.drop.not-for-us"] == 2


# ---- the IP ID, per destination (RFC 6864, RFC 7739) ----------------------------------


def _two_destinations_in_different_buckets(ids: IpIdentifiers) -> tuple[int, int]:
    first = ip("198.18.0.1")
    for n in range(3, 200):  # .2 is the stack itself
        other = ip("198.18.0.0") + n
        if ids.bucket(other, PROTO_ICMP) != ids.bucket(first, PROTO_ICMP):
            return first, other
    raise AssertionError("no two buckets apart")


def test_consecutive_datagrams_to_one_destination_get_different_ids() -> None:
    ids = IpIdentifiers(US, key=b"k" * 16, random_below=lambda _: 0)
    seen = [ids.next(PEER, PROTO_UDP, now=5.0) for _ in range(1000)]
    assert len(set(seen)) == 1000
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seen))
    # A GSO super-segment reserves one ID per datagram it becomes.
    first = ids.next(PEER, PROTO_UDP, now=5.0, count=10)
    assert ids.next(PEER, PROTO_UDP, now=5.0) == (first + 10) & 0xFFFF


def test_an_idle_scan_sees_nothing_of_the_traffic_to_others() -> None:
    """The observer pings us twice and compares the IDs of the replies; in
    between, we send 500 datagrams to someone else. With one global counter
    (the old stack) the gap is 501; per destination it is 1, as with no
    traffic at all."""
    key = b"k" * 16
    observer, victim = _two_destinations_in_different_buckets(IpIdentifiers(US, key=key))

    def probe_gap(traffic: int) -> int:
        ids = IpIdentifiers(US, key=key, random_below=lambda _: 0)
        before = ids.next(observer, PROTO_ICMP, now=1.0)
        for _ in range(traffic):
            ids.next(victim, PROTO_ICMP, now=1.0)
        after = ids.next(observer, PROTO_ICMP, now=1.0)
        return (after - before) & 0xFFFF

    assert probe_gap(0) == probe_gap(500) == 1


def test_the_replies_the_stack_sends_carry_independent_ids() -> None:
    """The same through the whole stack: echo replies to an observer, with a
    storm of echo replies to another host in between."""
    wire = Wire()
    ids = wire.stack.ip.ip_ids
    observer, victim = _two_destinations_in_different_buckets(ids)

    def reply_id(src: int, sequence: int) -> int:
        (reply,) = wire.echo(src, now=3.0, sequence=sequence)
        return parse_ipv4(reply).identification

    before = reply_id(observer, 1)
    for n in range(300):
        reply_id(victim, n)
    assert (reply_id(observer, 2) - before) & 0xFFFF == 1


def test_time_adds_a_random_jump_below_the_ticks_that_passed() -> None:
    asked: list[int] = []

    def random_below(n: int) -> int:
        asked.append(n)
        return n - 1

    ids = IpIdentifiers(US, key=b"k" * 16, random_below=random_below)
    first = ids.next(PEER, PROTO_TCP, now=1.000)
    assert ids.next(PEER, PROTO_TCP, now=1.000) == (first + 1) & 0xFFFF  # same tick: no jump
    third = ids.next(PEER, PROTO_TCP, now=1.250)  # 250 ticks (ms) later
    assert asked[-1] == 250
    assert third == (first + 2 + 249) & 0xFFFF


def test_the_hash_key_differs_per_stack() -> None:
    stacks = [IpIdentifiers(US) for _ in range(8)]
    buckets = {ids.bucket(PEER, PROTO_TCP) for ids in stacks}
    assert len(buckets) > 1 and all(0 <= b < BUCKETS for b in buckets)


# ---- ACKs for invalid segments (tcp_invalid_ratelimit) --------------------------------

P = PEER_ISS + 1
U = OUR_ISS + 1


def limited(**syn_options: object) -> TcpScript:
    t = TcpScript(listen=80, invalid_ack_ratelimit=0.5)
    t.establish(**syn_options)
    return t


def test_out_of_window_pure_acks_are_answered_at_most_every_500_ms() -> None:
    t = limited()
    for n in range(100):
        t.send(".", seq=P + 1_000_000 + n, ack=U)
    t.expect(".", seq=U, ack=P)  # one ACK for a hundred
    assert t.stack.counters["tcp.out.ack-skipped-sequence"] == 99
    t.wait(0.499)
    t.send(".", seq=P + 2_000_000, ack=U)
    t.expect_none()
    t.wait(0.001)
    t.send(".", seq=P + 2_000_000, ack=U)
    t.expect(".", seq=U, ack=P)
    assert any("ACK suppressed by the invalid-segment rate limit" in d for d in t.decisions())


def test_out_of_window_data_is_always_answered() -> None:
    """tcp_oow_rate_limited: a segment with text is no ACK loop."""
    t = limited()
    for _ in range(5):
        t.send("P.", seq=P + 1_000_000, ack=U, payload=b"far")
        t.expect(".", seq=U, ack=P)
    assert t.stack.counters["tcp.out.ack-skipped-sequence"] == 0


def test_paws_rejects_share_the_limit() -> None:
    t = limited(ts=(100, 0))
    t.send("P.", seq=P, ack=U, payload=b"a", ts=(1000, 0))
    t.expect(".")
    for _ in range(5):
        t.send(".", seq=P + 1, ack=U, ts=(999, 0))  # older than TS.Recent
    t.expect(".", ack=P + 1)
    assert t.stack.counters["tcp.out.ack-skipped-paws"] == 4


def test_challenge_acks_pass_the_per_connection_limit_first() -> None:
    t = limited()
    for n in range(10):
        t.send("R", seq=P + 1 + n)
    t.expect(".", seq=U, ack=P)
    counters = t.stack.counters
    assert counters["tcp.out.challenge-ack"] == 1
    assert counters["tcp.out.ack-skipped-challenge"] == 9
    assert (
        "RST in the window but not at RCV.NXT: ACK suppressed by the invalid-segment rate limit"
        in t.decisions()
    )
    t.wait(0.5)
    t.send("S", seq=P + 5)
    t.expect(".", seq=U, ack=P)


def test_the_invalid_ack_limit_off() -> None:
    t = TcpScript(listen=80, invalid_ack_ratelimit=0.0)
    t.establish()
    for n in range(5):
        t.send(".", seq=P + 1_000_000 + n, ack=U)
    assert len(t.sent()) == 5


def test_the_suppression_is_traced_with_its_rule() -> None:
    t = limited()
    t.send(".", seq=P + 1_000_000, ack=U)
    t.send(".", seq=P + 1_000_000, ack=U)
    suppressed = [
        e for e in t.trace if isinstance(e, Decision) and e.kind == "invalid_ack_suppressed"
    ]
    assert [(e.what, e.rule) for e in suppressed] == [
        (
            "segment outside the receive window: ACK suppressed by the invalid-segment rate limit",
            "RFC 9293 3.10.7.4",
        )
    ]


def test_an_icmp_drop_layer_exists_for_the_counters() -> None:
    assert Layer.ICMP == "icmp" and DropReason.RATE_LIMITED_HOST == "rate-limited-host"


def test_a_gso_super_segment_takes_one_id_per_datagram_it_becomes() -> None:
    """The kernel cuts it into MSS-sized segments, the first with our ID and
    each next one with the ID plus one (inet_gso_segment): those IDs are
    taken, so the next datagram to that destination does not reuse them."""
    sent: list[bytes] = []
    stack = Stack(US, lambda packet, *_: sent.append(bytes(packet)) or True)
    segment = bytearray(20 + 20 + 10 * 1448)
    segment[20 + 12] = 5 << 4  # a 20-byte TCP header
    stack.ip.send_in_place(PEER, segment, gso_size=1448)
    stack.ip.send_in_place(PEER, bytearray(20 + 20 + 100))
    first, after = (parse_ipv4(packet).identification for packet in sent)
    assert (after - first) & 0xFFFF == 10
