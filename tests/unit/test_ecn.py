"""ECN (RFC 3168) on the sans-I/O stack, on a virtual clock: the handshake's
negotiation (6.1.1), the receiver's echo of CE until CWR (6.1.3), the
sender's one reduction per window and its CWR (6.1.2), and which segments
are ECN-capable (6.1.4-6.1.6). When ECN is not agreed, the wire is the same
byte for byte as with ECN off."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tcpscript import OUR_ISS
from tcpscript import PEER_ISS
from tcpscript import PEER_PORT
from tcpscript import Family
from tcpscript import TcpScript

from ustack.daemon import connection_row
from ustack.study.faults import FaultInjector
from ustack.study.faults import mark_ce
from ustack.study.faults import parse_rule
from ustack.tcp.states import State
from ustack.trace.records import Decision
from ustack.trace.records import SegmentEvent
from ustack.trace.vocabulary import Note
from ustack.trace.vocabulary import Rule
from ustack.wire.checksum import internet_checksum
from ustack.wire.ipv4 import ECN_CE
from ustack.wire.ipv4 import ECN_ECT0
from ustack.wire.ipv4 import ECN_NOT_ECT
from ustack.wire.ipv4 import build_ipv4
from ustack.wire.ipv4 import parse_ipv4

P = PEER_ISS + 1
U = OUR_ISS + 1
MSS = 1000


def ecn_sender(family: Family, **config: object) -> TcpScript:
    """We send, ECN agreed passively: peer MSS 1000, a large window; NewReno
    for exact numbers."""
    config.setdefault("congestion_control", "newreno")
    t = TcpScript(family=family, listen=80, **config)
    t.send("SEW", seq=PEER_ISS, mss=MSS)
    t.expect("S.E", seq=OUR_ISS, ack=P)
    t.send(".", seq=P, ack=U)
    t.expect_none()
    assert t.conn is not None and t.conn.ecn_ok
    return t


# ---- negotiation (RFC 3168 6.1.1) -------------------------------------------------------


def test_passive_ecn_agreed_when_the_syn_asks(family: Family) -> None:
    t = TcpScript(family=family, listen=80)
    t.send("SEW", seq=PEER_ISS, mss=MSS)
    synack = t.expect("S.E", seq=OUR_ISS, ack=P)  # ECE alone: agreed
    assert synack.ecn == ECN_NOT_ECT  # a SYN,ACK is never ECT (6.1.1)
    t.send(".", seq=P, ack=U)
    conn = t.conn
    assert conn is not None and conn.ecn_ok and conn.state is State.ESTABLISHED
    assert t.stack.counters["tcp.ecn.agreed"] == 1
    assert "ecn_agreed" in t.decision_kinds()
    t.write(b"hello")
    data = t.expect("P.", seq=U, payload=b"hello")
    assert data.ecn == ECN_ECT0  # new data is ECN-capable (6.1.2)
    t.send("P.", seq=P, ack=U + 5, payload=b"ok")
    ack = t.expect(".", ack=P + 2)
    assert ack.ecn == ECN_NOT_ECT  # a pure ACK is not (6.1.4)


def test_a_retransmitted_synack_agrees_again(family: Family) -> None:
    t = TcpScript(family=family, listen=80)
    t.send("SEW", seq=PEER_ISS)
    t.expect("S.E")
    t.at(1.0)
    resent = t.expect("S.E", seq=OUR_ISS)
    assert resent.ecn == ECN_NOT_ECT


@pytest.mark.parametrize("flags", ["S", "SE", "SW"])
def test_no_ecn_for_a_syn_that_does_not_ask_with_both_flags(flags: str, family: Family) -> None:
    t = TcpScript(family=family, listen=80)
    t.send(flags, seq=PEER_ISS)
    t.expect("S.", ack=P)
    t.send(".", seq=P, ack=U)
    assert t.conn is not None and not t.conn.ecn_ok
    t.write(b"x")
    assert t.expect("P.").ecn == ECN_NOT_ECT


def test_no_ecn_when_off_or_when_the_syn_itself_is_ect(family: Family) -> None:
    off = TcpScript(family=family, listen=80, ecn="off")
    off.send("SEW", seq=PEER_ISS)
    off.expect("S.", ack=P)
    assert "ecn_not_agreed" in off.decision_kinds()
    marked = TcpScript(family=family, listen=80)
    marked.send("SEW", seq=PEER_ISS, ecn=ECN_ECT0)  # a SYN must not be ECT: the path rewrites
    marked.expect("S.", ack=P)
    assert "ecn_not_agreed" in marked.decision_kinds()


def test_active_ecn_asks_with_ece_and_cwr_and_agrees_on_ece_alone(family: Family) -> None:
    t = TcpScript(family=family, listen=None, ecn="on")
    conn = t.connect()
    syn = t.expect("SEW", seq=OUR_ISS)
    assert syn.ecn == ECN_NOT_ECT
    t.send("S.E", seq=PEER_ISS, ack=U, sport=8080, mss=MSS)
    t.expect(".", ack=P)
    assert conn.ecn_ok and conn.state is State.ESTABLISHED
    t.write(b"data")
    assert t.expect("P.", payload=b"data").ecn == ECN_ECT0


@pytest.mark.parametrize("synack", ["S.", "S.EW", "S.W"])
def test_active_ecn_not_agreed_without_ece_alone_on_the_synack(synack: str, family: Family) -> None:
    t = TcpScript(family=family, listen=None, ecn="on")
    conn = t.connect()
    t.expect("SEW")
    t.send(synack, seq=PEER_ISS, ack=U, sport=8080, mss=MSS)
    t.expect(".", ack=P)
    assert not conn.ecn_ok
    t.write(b"data")
    assert t.expect("P.").ecn == ECN_NOT_ECT


def test_passive_mode_does_not_ask_and_a_resent_syn_drops_the_request(family: Family) -> None:
    passive = TcpScript(family=family, listen=None)
    passive.connect()
    passive.expect("S")  # passive (the default) never asks
    active = TcpScript(family=family, listen=None, ecn="on")
    active.connect()
    active.expect("SEW")
    active.at(1.0)
    active.expect("S", seq=OUR_ISS)  # 6.1.1.1: the retransmission goes without ECN setup


def test_ecn_mode_is_checked(family: Family) -> None:
    with pytest.raises(ValueError, match="unknown ECN mode"):
        TcpScript(family=family, listen=80, ecn="maybe")


# ---- not agreed: the wire as with ECN off ---------------------------------------------------


def _plain_exchange(family: Family, ecn: str, ece_from_peer: bool) -> list[bytes]:
    """A connection with a peer that does not ask for ECN: handshake, data
    both ways, a CE-marked segment and (if told) ECE on the peer's ACKs,
    a loss and its retransmission, close. Every byte we sent."""
    wire: list[bytes] = []
    t = TcpScript(family=family, listen=80, ecn=ecn, congestion_control="newreno")

    def take() -> None:
        # The IP ID (and so the header checksum) comes from a per-stack
        # random key (RFC 7739), as IPv6's flow label (RFC 6437): everything
        # else must be equal.
        if family.ipv6:
            wire.extend(p[:1] + bytes([p[1] & 0xF0]) + bytes(2) + p[4:] for p in t._wire)
        else:
            wire.extend(p[:4] + bytes(2) + p[6:10] + bytes(2) + p[12:] for p in t._wire)
        t.sent()

    peer_ack = ".E" if ece_from_peer else "."
    t.send("S", seq=PEER_ISS, mss=MSS)
    take()
    t.send(".", seq=P, ack=U)
    t.send("P.", seq=P, ack=U, payload=b"a" * 500, ecn=ECN_CE)
    take()
    t.write(bytes(3000))
    take()
    t.send(peer_ack, seq=P + 500, ack=U + 1000)
    take()
    t.at(5.0)  # the rest is resent after its RTO
    take()
    t.send(peer_ack, seq=P + 500, ack=U + 3000)
    t.close()
    take()
    assert t.conn is not None and not t.conn.ecn_ok
    return wire


@pytest.mark.parametrize("ece_from_peer", [False, True])
def test_not_agreed_the_wire_is_byte_for_byte_as_with_ecn_off(
    ece_from_peer: bool, family: Family
) -> None:
    passive = _plain_exchange(family, "passive", ece_from_peer)
    active = _plain_exchange(family, "on", ece_from_peer)
    off = _plain_exchange(family, "off", ece_from_peer)
    assert len(off) >= 6
    assert passive == off
    assert active == off


def test_ece_is_ignored_when_not_agreed(family: Family) -> None:
    t = TcpScript(family=family, listen=80, congestion_control="newreno")
    t.establish(mss=MSS)
    t.write(bytes(4000))
    t.sent()
    conn = t.conn
    assert conn is not None
    cwnd = conn.cwnd
    t.send(".E", seq=P, ack=U + 1000)
    assert conn.cwnd >= cwnd
    assert "ecn_window_reduced" not in t.decision_kinds()
    assert t.stack.counters["tcp.ecn.ece-received"] == 0


# ---- the receiver: CE echoed until CWR (RFC 3168 6.1.3) ---------------------------------------


def test_ce_is_echoed_on_every_ack_until_cwr_and_acked_at_once(family: Family) -> None:
    t = ecn_sender(family, delayed_ack=0.04)
    t.send(".", seq=P, ack=U, payload=b"a" * 100, ecn=ECN_ECT0)
    t.expect_none()  # a plain segment: its ACK is delayed
    t.send(".", seq=P + 100, ack=U, payload=b"b" * 100, ecn=ECN_CE)
    ack = t.expect(".E", ack=P + 200)  # CE: ECE, and at once
    assert ack.ecn == ECN_NOT_ECT
    t.send(".", seq=P + 200, ack=U, payload=b"c" * 100, ecn=ECN_ECT0)
    t.at(0.04)
    t.expect(".E", ack=P + 300)  # still echoed: no CWR yet
    t.write(b"reply")
    data = t.expect("P.E", payload=b"reply")  # on data too
    assert data.ecn == ECN_ECT0
    t.send(".W", seq=P + 300, ack=U + 5, payload=b"d" * 100, ecn=ECN_ECT0)
    t.expect(".", ack=P + 400)  # CWR: the echo stops (and this ACK goes at once)
    t.send(".", seq=P + 400, ack=U + 5, payload=b"e" * 100, ecn=ECN_ECT0)
    t.at(0.2)
    t.expect(".", ack=P + 500)
    counters = t.stack.counters
    assert counters["tcp.ecn.ce-received"] == 1
    assert counters["tcp.ecn.cwr-received"] == 1
    kinds = t.decision_kinds()
    assert kinds.index("ce_received") < kinds.index("cwr_received")
    rules = {e.kind: e.rule for e in t.trace if isinstance(e, Decision)}
    assert rules["ce_received"] == rules["cwr_received"] == Rule.RFC3168_RECEIVER


def test_a_segment_with_cwr_and_ce_starts_a_new_echo(family: Family) -> None:
    t = ecn_sender(family)
    t.send(".", seq=P, ack=U, payload=b"a" * 100, ecn=ECN_CE)
    t.expect(".E", ack=P + 100)
    t.send(".W", seq=P + 100, ack=U, payload=b"b" * 100, ecn=ECN_CE)
    t.expect(".E", ack=P + 200)  # CWR ends the old echo, CE begins the next


def test_ce_in_the_trace_and_ect_on_our_data(family: Family) -> None:
    t = ecn_sender(family)
    t.send(".", seq=P, ack=U, payload=b"a" * 10, ecn=ECN_CE)
    t.write(b"b" * 10)
    segments = [e for e in t.trace if isinstance(e, SegmentEvent) and e.length]
    assert [(e.direction, e.flags, e.ecn) for e in segments] == [
        ("in", ".", "CE"),
        ("out", "P.E", "ECT(0)"),
    ]


# ---- the sender: one reduction per window, CWR (RFC 3168 6.1.2) ---------------------------------


def test_ece_cuts_the_window_once_per_window_and_cwr_goes_on_new_data(family: Family) -> None:
    t = ecn_sender(family)
    conn = t.conn
    assert conn is not None
    t.write(bytes(8000))
    sent = t.sent()
    assert len(sent) == 8 and all(s.ecn == ECN_ECT0 and "W" not in s.flags for s in sent)
    t.send(".E", seq=P, ack=U + 1000)  # CE on the way to the peer
    assert (conn.ssthresh, conn.cwnd) == (4000, 4000)  # NewReno: flight 8000 / 2
    assert t.sent() == []  # nothing is resent: no loss
    for ack in (2000, 4000, 8000):  # the rest of the window still carries the echo
        t.send(".E", seq=P, ack=U + ack)
    assert (conn.ssthresh, conn.cwnd) == (4000, 4000)  # once per window: no growth either
    assert t.stack.counters["tcp.ecn.window-reduced"] == 1
    assert t.stack.counters["tcp.ecn.ece-received"] == 4
    t.write(bytes(2000))
    first, *rest = t.sent()
    assert first.flags == ".W" and first.seq == U + 8000 and first.ecn == ECN_ECT0
    assert all("W" not in s.flags for s in rest)  # only the first new segment
    assert t.stack.counters["tcp.ecn.cwr-sent"] == 1
    (decision,) = [e for e in t.trace if isinstance(e, Decision) and e.kind == "ecn_window_reduced"]
    assert decision.rule == Rule.RFC3168_SENDER and "cwnd 4000" in decision.what
    # An echo past the reduced window (the peer saw our CWR) is new congestion.
    t.send(".E", seq=P, ack=U + 9000)
    assert t.stack.counters["tcp.ecn.window-reduced"] == 2
    t.write(bytes(1000))
    assert any(s.flags.endswith("W") for s in t.sent())


def test_cwr_rides_alone_not_on_a_gso_super_segment(family: Family) -> None:
    t = ecn_sender(family, gso_segments=4)

    def link(packet: bytearray, gso_size: int = 0) -> bool:  # (one packet per super-segment)
        t._wire.append(bytes(packet))
        return True

    t.ip._transmit = link
    t.write(bytes(8000))
    assert len(t.sent()) == 2  # two super-segments of 4 MSS
    t.send(".E", seq=P, ack=U + 8000)  # cwnd 4000 now
    t.write(bytes(4000))
    first, second = t.sent()
    assert "W" in first.flags and len(first.payload) == MSS
    assert "W" not in second.flags and len(second.payload) == 3 * MSS


def test_retransmissions_are_not_ect_and_carry_no_cwr(family: Family) -> None:
    t = ecn_sender(family)
    t.write(bytes(3000))
    t.sent()
    t.send(".E", seq=P, ack=U + 1000)  # cut; CWR pending
    t.at(5.0)  # the RTO resends what is outstanding
    resent = t.sent()
    assert resent and all(s.ecn == ECN_NOT_ECT and "W" not in s.flags for s in resent)
    assert resent[0].seq == U + 1000


def test_zero_window_probes_are_not_ect(family: Family) -> None:
    t = ecn_sender(family)
    t.send(".", seq=P, ack=U, win=0)
    t.write(b"x" * 100)
    t.expect_none()
    t.at(2.0)
    probe = t.sent()[0]
    assert len(probe.payload) == 1 and probe.ecn == ECN_NOT_ECT


def test_a_loss_in_the_reduced_window_is_resent_without_a_second_cut(family: Family) -> None:
    t = ecn_sender(family)
    conn = t.conn
    assert conn is not None
    t.write(bytes(8000))
    t.sent()
    t.send(".E", seq=P, ack=U + 1000)
    assert conn.ssthresh == 4000
    for _ in range(3):  # the second segment was lost
        t.send(".E", seq=P, ack=U + 1000)
    assert t.sent()[0].seq == U + 1000  # fast retransmit, not ECT
    assert conn.ssthresh == 4000  # one response per window (6.1.2)


@pytest.mark.parametrize("algorithm", ["newreno", "cubic"])
def test_the_reduction_goes_through_the_congestion_module(algorithm: str, family: Family) -> None:
    t = ecn_sender(family, congestion_control=algorithm)
    conn = t.conn
    assert conn is not None
    t.write(bytes(8000))
    t.sent()
    t.send(".E", seq=P, ack=U + 1000)
    want: dict[str, Callable[[int], int]] = {
        "newreno": lambda cwnd: 8000 // 2,
        "cubic": lambda cwnd: cwnd * 7 // 10,
    }
    assert conn.ssthresh == want[algorithm](10 * MSS) == conn.cwnd
    assert Note.ECN_WINDOW_REDUCED.kind in t.decision_kinds()


# ---- the fault injector's mark: the interop tests' congested router -----------------------


def test_a_mark_rule_sets_ce_on_ect_packets_only_with_a_good_header_checksum() -> None:
    injector = FaultInjector()
    injector.add(parse_rule("mark:dir=in"))
    ect = build_ipv4(src=1, dst=2, protocol=6, payload_length=0, ecn=ECN_ECT0)
    plain = build_ipv4(src=1, dst=2, protocol=6, payload_length=0)
    assert injector.judge("in", plain).rule is None  # Not-ECT: never marked
    assert injector.judge("out", ect).rule is None  # the other direction
    verdict = injector.judge("in", ect)
    assert verdict.mark and verdict.copies == 1
    marked = mark_ce(ect)
    header = parse_ipv4(marked)
    assert header.ecn == ECN_CE and header.dscp == 0
    assert internet_checksum(marked) == 0
    assert marked[:1] + marked[2:10] + marked[12:] == ect[:1] + ect[2:10] + ect[12:]


def test_the_connections_listing_says_ecn(family: Family) -> None:
    agreed = ecn_sender(family)
    plain = TcpScript(family=family, listen=80)
    plain.establish()
    rows = [
        connection_row(t.us, (t.peer, PEER_PORT, 80), t.conn, t.now)
        for t in (agreed, plain)
        if t.conn is not None
    ]
    assert [row["ecn"] for row in rows] == [True, False]
