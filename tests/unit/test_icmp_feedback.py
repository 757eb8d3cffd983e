"""ICMP errors acted on (RFC 1122 4.2.3.9, RFC 5461, RFC 5927), path MTU
discovery (RFC 1191) and black-hole detection (RFC 4821 style, Linux
tcp_mtu_probing=1), on the sans-I/O stack and a virtual clock.

The ICMP errors go in as real bytes through IP input, quoting the segment
the stack sent as a router would (IP header + first 8 bytes of TCP). The
tests that take `family` run over IPv4 and IPv6 (ICMPv6, RFC 4443, Packet
Too Big for the path MTU, RFC 8201), with the same expectations."""

from __future__ import annotations

import errno

import pytest
from tcpscript import IPV6
from tcpscript import OUR_ISS
from tcpscript import PEER
from tcpscript import PEER_ISS
from tcpscript import PEER_PORT
from tcpscript import US
from tcpscript import Family
from tcpscript import TcpScript

from ustack.net.pmtu import PmtuCache
from ustack.net.pmtu import plateau_below
from ustack.tcp.events import Closed
from ustack.tcp.states import Event
from ustack.tcp.states import State
from ustack.trace.records import Drop
from ustack.wire.icmp import DEST_UNREACH
from ustack.wire.icmp import FRAG_NEEDED
from ustack.wire.icmp import SOURCE_QUENCH
from ustack.wire.icmp import build_icmp
from ustack.wire.icmpv6 import DEST_UNREACH as ICMPV6_DEST_UNREACH
from ustack.wire.ipv4 import PROTO_ICMP
from ustack.wire.ipv4 import build_ipv4

ROUTER = 0xC6120101  # 198.18.1.1, a hop on the way


def sending(t: TcpScript, size: int) -> list[int]:
    """Write `size` bytes; the payload sizes of the segments that went out."""
    t.write(bytes(size))
    return [len(out.payload) for out in t.sent()]


def drops(t: TcpScript) -> list[str]:
    return [str(e.reason) for e in t.trace if isinstance(e, Drop)]


# ---- fragmentation needed (RFC 1191) ---------------------------------------------------------


@pytest.mark.parametrize("sack", [True, False])
def test_fragmentation_needed_lowers_the_mss_and_resends_at_once(
    sack: bool, family: Family
) -> None:
    t = TcpScript(family=family)
    big, small = t.mss, 1280 - family.tcp_headers  # 1460 then 1240; over IPv6 1440, 1220
    conn = t.establish(mss=1460, sack_permitted=sack)
    assert conn.mss == big and conn.path_mtu == 1500
    assert sending(t, 4 * big) == [big] * 4
    cwnd = conn.recovery.cc.cwnd
    t.icmp_error("too-big", OUR_ISS + 1, mtu=1280)
    assert (conn.path_mtu, conn.mss) == (1280, small)
    out = t.sent()
    # Everything in flight again, at once (no timeout), cut to the new MSS:
    # with SACK segment by segment (as Linux's retransmission queue: 1240 + 220
    # each), without it from SND.UNA on.
    sizes = [len(o.payload) for o in out]
    if sack:
        assert sizes == [small, big - small] * 4
    else:
        assert sizes == [small] * 4 + [4 * big - 4 * small]
    assert out[0].seq == OUR_ISS + 1
    assert all(o.seq < OUR_ISS + 1 + 4 * big for o in out)
    assert conn.recovery.cc.cwnd == cwnd  # no congestion response (RFC 1191, Linux)
    assert t.ip.pmtu.lookup(t.peer, t.now) == 1280
    assert t.stack.counters["tcp.pmtu.lowered"] == 1
    assert "path_mtu_lowered" in t.decision_kinds()
    # Once that is acknowledged, new data goes at the new size too.
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1 + 4 * big)
    t.sent()
    assert sending(t, 2000) == [small, 2000 - small]


def test_a_new_connection_to_that_destination_starts_at_the_cached_path_mtu(
    family: Family,
) -> None:
    t = TcpScript(family=family)
    t.establish(mss=1460)
    sending(t, t.mss)
    t.icmp_error("too-big", OUR_ISS + 1, mtu=1400)
    t.sent()
    conn2 = t.tcp.connect(t.peer, 8080, t.now, local_port=50001)
    assert conn2.path_mtu == 1400
    t.sent()


def test_the_path_mtu_never_grows_from_an_icmp(family: Family) -> None:
    t = TcpScript(family=family)
    conn = t.establish(mss=1460)
    sending(t, t.mss)
    t.icmp_error("too-big", OUR_ISS + 1, mtu=1280)
    t.sent()
    t.icmp_error("too-big", OUR_ISS + 1, mtu=1400)
    assert conn.path_mtu == 1280
    t.expect_none()
    assert t.stack.counters["tcp.pmtu.not-lower"] == 1
    assert "path_mtu_not_lower" in t.decision_kinds()


def test_an_old_style_message_without_mtu_uses_the_plateau_below() -> None:
    t = TcpScript()
    conn = t.establish(mss=1460)
    sending(t, 1460)
    t.icmp_error("too-big", OUR_ISS + 1, mtu=0, quoted_length=1500)
    assert conn.path_mtu == 1492  # RFC 1191 7: the plateau below 1500
    assert plateau_below(1492) == 1006 and plateau_below(68) == 68


@pytest.mark.parametrize(("min_pmtu", "expected"), [(552, 552), (300, 300)])
def test_min_pmtu_floors_a_tiny_mtu_and_keeps_emsgsize(min_pmtu: int, expected: int) -> None:
    t = TcpScript()
    t.stack.ip.pmtu.min_pmtu = min_pmtu
    conn = t.establish(mss=1460)
    sending(t, 1460)
    t.icmp_error("too-big", OUR_ISS + 1, mtu=100)
    assert conn.path_mtu == expected
    assert conn.mss == expected - 40
    # As Linux: the path is narrower than we go; a timeout would say so.
    assert conn.soft_error == "EMSGSIZE"


def test_packet_too_big_never_takes_an_ipv6_path_below_1280() -> None:
    """RFC 8201 4 (and RFC 8200 5): every IPv6 link carries 1280 bytes; a
    smaller MTU in a Packet Too Big is taken as 1280."""
    t = TcpScript(family=IPV6)
    conn = t.establish(mss=1460)
    sending(t, t.mss)
    t.icmp_error("too-big", OUR_ISS + 1, mtu=600)
    assert (conn.path_mtu, conn.mss) == (1280, 1220)
    assert t.ip.pmtu.lookup(t.peer, t.now) == 1280
    assert t.stack.counters["icmp6.in.error-for-connection"] == 1


def test_the_cache_entry_expires_after_ten_minutes() -> None:
    cache = PmtuCache(1500)
    assert cache.lower(PEER, 1280, now=5.0) == 1280
    assert cache.lookup(PEER, 5.0 + 599.0) == 1280
    assert cache.lookup(PEER, 5.0 + 600.0) == 1500  # RFC 1191 6.3, Linux mtu_expires
    assert len(cache) == 0
    # And a connection made after it starts at the link's MTU again.
    t = TcpScript()
    t.establish(mss=1460)
    sending(t, 1460)
    t.icmp_error("too-big", OUR_ISS + 1, mtu=1280)
    t.sent()
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1 + 1460)
    t.at(t.now + 601.0)
    conn2 = t.tcp.connect(PEER, 8080, t.now, local_port=50001)
    assert conn2.path_mtu == 1500


def test_a_connection_grows_back_when_what_it_learnt_expires() -> None:
    t = TcpScript()
    conn = t.establish(mss=1460)
    sending(t, 1460)
    t.at(100.0)
    t.icmp_error("too-big", OUR_ISS + 1, mtu=1280)
    t.sent()
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1 + 1460)
    assert (conn.path_mtu, conn.mss) == (1280, 1240)
    t.at(699.0)
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1 + 1460)
    assert conn.path_mtu == 1280
    t.at(700.0)  # RFC 1191 6.3: 10 minutes after, try the full size again
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1 + 1460)
    assert (conn.path_mtu, conn.mss) == (1500, 1460)
    assert "path_mtu_expired" in t.decision_kinds()
    assert sending(t, 1460) == [1460]


def test_the_cache_is_bounded() -> None:
    cache = PmtuCache(1500, max_entries=2)
    for dst in range(3):
        cache.lower(dst, 1280, now=float(dst))
    assert len(cache) == 2 and cache.lookup(0, 3.0) == 1500


# ---- what is not acted on (RFC 5927 4.1) --------------------------------------------------------


def test_a_sequence_number_outside_snd_una_snd_nxt_is_dropped_and_counted(
    family: Family,
) -> None:
    t = TcpScript(family=family)
    conn = t.establish(mss=1460)
    sending(t, t.mss)
    t.icmp_error("too-big", OUR_ISS + 1 + t.mss + 1, mtu=1280)  # beyond SND.NXT
    t.icmp_error("too-big", OUR_ISS, mtu=1280)  # below SND.UNA
    assert conn.path_mtu == 1500
    t.expect_none()
    assert t.stack.counters[f"{family.icmp}.drop.bad-seq"] == 2
    assert drops(t) == ["bad-seq", "bad-seq"]


def test_no_connection_for_the_quoted_ports_is_dropped_and_counted(family: Family) -> None:
    t = TcpScript(family=family)
    t.establish(mss=1460)
    sending(t, t.mss)
    t.icmp_error("too-big", OUR_ISS + 1, mtu=1280, dport=PEER_PORT + 1)
    assert t.stack.counters[f"{family.icmp}.drop.no-connection"] == 1
    assert t.ip.pmtu.lookup(t.peer, t.now) == 1500  # the cache learnt nothing either


def test_a_quote_of_a_datagram_not_ours_is_dropped_and_counted(family: Family) -> None:
    t = TcpScript(family=family)
    conn = t.establish(mss=1460)
    sending(t, t.mss)
    t.icmp_error("too-big", OUR_ISS + 1, mtu=1280, quoted_src=family.router)
    assert conn.path_mtu == 1500
    assert t.stack.counters[f"{family.icmp}.drop.quote-not-ours"] == 1


def test_a_truncated_quote_is_dropped() -> None:
    t = TcpScript()
    t.establish(mss=1460)
    message = build_icmp(type=DEST_UNREACH, code=FRAG_NEEDED, rest=1280, payload=bytes(24))
    packet = build_ipv4(src=ROUTER, dst=US, protocol=PROTO_ICMP, payload_length=len(message))
    t.stack.receive(packet + message, t.now)
    assert t.stack.counters["icmp.drop.icmp-quote-not-ipv4"] == 1


def test_source_quench_is_ignored_and_counted() -> None:
    t = TcpScript()
    conn = t.establish(mss=1460)
    sending(t, 1460)
    t.icmp_error((SOURCE_QUENCH, 0), OUR_ISS + 1)
    t.expect_none()
    assert conn.soft_error is None
    assert t.stack.counters["icmp.drop.source-quench"] == 1  # RFC 6633


def test_an_unknown_destination_unreachable_code_is_dropped_and_counted(family: Family) -> None:
    """Codes past the last the family defines (ICMP 15, RFC 1812 5.2.7.1;
    ICMPv6 6, RFC 4443 3.1): counted by the IP layer before anything else is
    looked at (here a quote not of ours, which would count otherwise)."""
    t = TcpScript(family=family)
    conn = t.establish(mss=1460)
    sending(t, 1460)
    kind = (ICMPV6_DEST_UNREACH, 7) if family is IPV6 else (DEST_UNREACH, 16)
    t.icmp_error(kind, OUR_ISS + 1, quoted_src=t.peer)
    t.expect_none()
    assert conn.soft_error is None
    assert t.stack.counters[f"{family.icmp}.drop.unhandled-error"] == 1
    assert t.stack.counters[f"{family.icmp}.drop.quote-not-ours"] == 0


# ---- soft and hard errors (RFC 1122 4.2.3.9, RFC 5461) --------------------------------------


def test_a_soft_error_is_reported_when_the_connect_times_out(family: Family) -> None:
    t = TcpScript(listen=None, syn_retries=2, family=family)
    conn = t.connect()
    t.expect("S", seq=OUR_ISS)
    t.icmp_error("host-unreachable", OUR_ISS, dport=8080, sport=50000)
    assert conn.state is State.SYN_SENT  # soft: RFC 1122 says MUST NOT abort
    assert "icmp_soft_error" in t.decision_kinds()
    t.at(20.0)
    assert conn.state is State.CLOSED
    assert t.apps[conn].events[-1] == Closed("EHOSTUNREACH")
    assert "soft_error_reported" in t.decision_kinds()


def test_a_soft_error_is_reported_when_data_times_out(family: Family) -> None:
    t = TcpScript(retries=2, family=family)
    conn = t.establish(mss=1460)
    sending(t, 100)
    t.icmp_error("time-exceeded", OUR_ISS + 1)
    assert conn.state is State.ESTABLISHED
    t.at(30.0)
    assert t.apps[conn].events[-1] == Closed("EHOSTUNREACH")


def test_an_ack_clears_the_soft_error(family: Family) -> None:
    t = TcpScript(retries=2, family=family)
    conn = t.establish(mss=1460)
    sending(t, 100)
    t.icmp_error("host-unreachable", OUR_ISS + 1)
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 101)
    sending(t, 100)
    t.at(30.0)
    assert t.apps[conn].events[-1] == Closed("ETIMEDOUT")


def test_port_unreachable_refuses_a_connect(family: Family) -> None:
    t = TcpScript(listen=None, family=family)
    conn = t.connect()
    t.expect("S", seq=OUR_ISS)
    t.icmp_error("port-unreachable", OUR_ISS, dport=8080, sport=50000)
    assert conn.state is State.CLOSED
    assert t.events(conn) == [Event.APP_CONNECT, Event.ICMP_HARD_ERROR]
    assert t.apps[conn].events[-1] == Closed("ECONNREFUSED")
    assert t.table == {}


def test_port_unreachable_in_established_does_not_abort(family: Family) -> None:
    t = TcpScript(family=family)
    conn = t.establish(mss=1460)
    sending(t, 100)
    t.icmp_error("port-unreachable", OUR_ISS + 1)
    assert conn.state is State.ESTABLISHED
    assert conn.soft_error == "ECONNREFUSED"
    assert "icmp_hard_error_kept" in t.decision_kinds()
    t.expect_none()
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 101)
    assert conn.state is State.ESTABLISHED


# ---- black holes (RFC 4821, Linux tcp_mtu_probing=1) ----------------------------------------


def _black_hole(t: TcpScript) -> tuple[list[int], float]:
    """Full-sized segments that never arrive, no ICMP: the sizes resent after
    each timeout, until one smaller than 1460 goes."""
    conn = t.establish(mss=1460)
    sending(t, 3 * 1460)
    sizes: list[int] = []
    while conn.state is State.ESTABLISHED and t.now < 60:
        deadline = t.tcp.next_deadline()
        assert deadline is not None
        t.at(deadline)
        resent = [len(o.payload) for o in t.sent()]
        sizes.append(resent[0] if resent else 0)
        if resent and resent[0] < 1460:
            break
    return sizes, t.now


def test_black_hole_detection_falls_back_to_a_smaller_mss() -> None:
    t = TcpScript(mtu_probing=True)
    sizes, _ = _black_hole(t)
    assert sizes == [1460, 1460, 1460, 1024]  # after 3 timeouts: tcp_base_mss
    assert t.conn is not None and t.conn.mss == 1024
    assert t.stack.counters["tcp.mtu-probing.fallback"] == 1
    assert "black_hole_fallback" in t.decision_kinds()
    # Still nothing: halve again at the next timeout.
    t.at(t.tcp.next_deadline() or 0.0)
    assert next(len(o.payload) for o in t.sent()) == 512


def test_no_black_hole_detection_without_the_switch() -> None:
    t = TcpScript(retries=8)
    conn = t.establish(mss=1460)
    sending(t, 3 * 1460)
    t.at(200.0)
    assert conn.mss == 1460
    assert "black_hole_fallback" not in t.decision_kinds()
    assert t.stack.counters["tcp.mtu-probing.fallback"] == 0


def test_the_api_raises_the_soft_error_with_its_errno() -> None:
    from ustack.api import error_for

    exc = error_for("EHOSTUNREACH")
    assert isinstance(exc, OSError) and exc.errno == errno.EHOSTUNREACH
    assert isinstance(error_for("ECONNREFUSED"), ConnectionRefusedError)
    assert isinstance(error_for("ETIMEDOUT"), TimeoutError)
