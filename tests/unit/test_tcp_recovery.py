"""Loss recovery and ACK policy: delayed ACK, fast retransmit and NewReno fast
recovery, SACK blocks for held data (RFC 5681, 6582, 2018, 9293 3.8.6.3)."""

from __future__ import annotations

import pytest
from tcpscript import OUR_ISS
from tcpscript import PEER_ISS
from tcpscript import TcpScript
from tcpscript import bulk_sender

from ustack.tcp.connection import TcpConnection

P = PEER_ISS + 1
U = OUR_ISS + 1
MSS = 1000


def sender(**config: object) -> TcpScript:
    """We send: peer MSS 1000, a large window; NewReno for exact numbers."""
    return bulk_sender(MSS, **config)


def fast_retransmit_of_the_second_segment(t: TcpScript, size: int) -> None:
    """Send `size` bytes; the peer gets the first segment, not the second:
    its ACK and three duplicates bring the second again."""
    t.write(bytes(size))
    t.sent()
    t.send(".", seq=P, ack=U + 1000)
    for _ in range(3):
        t.send(".", seq=P, ack=U + 1000)
    t.expect(".", seq=U + 1000)


def test_delayed_ack_acks_every_second_full_segment_at_once() -> None:
    t = TcpScript(listen=80, delayed_ack=0.04)
    t.establish(mss=1460)
    t.send(".", seq=P, ack=U, payload=b"a" * 1460)
    t.expect_none()  # one segment: the ACK may wait
    t.send(".", seq=P + 1460, ack=U, payload=b"b" * 1460)
    t.expect(".", ack=P + 2920)  # the second full segment: at once


def test_delayed_ack_fires_within_its_timeout() -> None:
    t = TcpScript(listen=80, delayed_ack=0.04)
    t.establish(mss=1460)
    t.send("P.", seq=P, ack=U, payload=b"GET /")
    t.expect_none()
    t.at(0.039)
    t.expect_none()
    t.at(0.04)
    t.expect(".", ack=P + 5)


def test_delayed_ack_rides_on_data_we_send() -> None:
    t = TcpScript(listen=80, delayed_ack=0.04)
    t.establish(mss=1460)
    t.send("P.", seq=P, ack=U, payload=b"ping")
    t.write(b"pong")
    t.expect("P.", ack=P + 4, payload=b"pong")
    t.send(".", seq=P + 4, ack=U + 4)
    t.at(0.5)
    t.expect_none()  # the data carried the ACK: no delayed ACK later


def test_out_of_order_data_is_acked_at_once_with_sack_blocks() -> None:
    t = TcpScript(listen=80, delayed_ack=0.04)
    t.establish(mss=1460, sack_permitted=True)
    t.send(".", seq=P + 1000, ack=U, payload=b"x" * 500)
    first = t.expect(".", ack=P)
    assert first.options.sack_blocks == ((P + 1000, P + 1500),)
    t.send(".", seq=P + 3000, ack=U, payload=b"y" * 500)
    second = t.expect(".", ack=P)
    # The block of the newest segment comes first (RFC 2018 4).
    assert second.options.sack_blocks == ((P + 3000, P + 3500), (P + 1000, P + 1500))
    t.send(".", seq=P + 1500, ack=U, payload=b"z" * 1500)
    merged = t.expect(".", ack=P)
    assert merged.options.sack_blocks == ((P + 1000, P + 3500),)
    t.send(".", seq=P, ack=U, payload=b"w" * 1000)
    final = t.expect(".", ack=P + 3500)  # the hole filled: at once, no blocks left
    assert final.options.sack_blocks == ()


def test_no_sack_blocks_without_sack_permitted() -> None:
    t = TcpScript(listen=80)
    t.establish(mss=1460)
    t.send(".", seq=P + 1000, ack=U, payload=b"x" * 500)
    assert t.expect(".", ack=P).options.sack_blocks == ()


def test_fast_retransmit_on_the_third_duplicate_ack() -> None:
    t = sender()
    t.write(bytes(8000))
    assert len(t.sent()) == 8  # initial window 10 segments
    t.send(".", seq=P, ack=U + 1000)  # the first segment arrived
    t.send(".", seq=P, ack=U + 1000)  # duplicates: the second was lost
    t.send(".", seq=P, ack=U + 1000)
    t.expect_none()
    t.send(".", seq=P, ack=U + 1000)
    t.expect(".", seq=U + 1000, payload=bytes(1000))  # the third duplicate
    assert any("fast retransmit" in d for d in t.decisions())
    conn = t.conn
    assert conn is not None and conn.ssthresh == 3500  # flight 7000 / 2
    assert conn.cwnd == 3500 + 3 * MSS  # RFC 5681 3.2 (4): ssthresh plus 3 segments
    t.send(".", seq=P, ack=U + 1000)
    assert conn.cwnd == 3500 + 4 * MSS  # each further duplicate inflates it


def test_newreno_partial_ack_retransmits_the_next_hole_and_full_ack_ends_recovery() -> None:
    t = sender()
    fast_retransmit_of_the_second_segment(t, 8000)  # segments 2 and 4 were lost
    t.send(".", seq=P, ack=U + 3000)  # partial: up to the next hole
    t.expect(".", seq=U + 3000, payload=bytes(1000))  # retransmitted at once (RFC 6582)
    t.send(".", seq=P, ack=U + 8000)  # full ACK
    conn = t.conn
    assert conn is not None and conn.cwnd == conn.ssthresh
    assert any("fast recovery over" in d for d in t.decisions())


def test_rto_collapses_the_window_and_blocks_fast_retransmit_of_old_data() -> None:
    t = sender()
    t.write(bytes(5000))
    t.sent()
    t.at(1.0)
    t.expect(".", seq=U, payload=bytes(1000))  # cwnd = 1 segment after the timeout
    conn = t.conn
    assert conn is not None and conn.cwnd == MSS
    for _ in range(3):  # duplicates for what was sent before the timeout
        t.send(".", seq=P, ack=U)
    t.expect_none()
    assert not any("fast retransmit" in d for d in t.decisions())


def test_cubic_is_the_default_and_recovers_too() -> None:
    t = TcpScript(listen=80)
    t.establish(mss=MSS)
    assert t.conn is not None and t.conn.cc.name == "cubic"
    t.write(bytes(8000))
    t.sent()
    t.send(".", seq=P, ack=U + 1000)
    cwnd = t.conn.cwnd
    for _ in range(3):
        t.send(".", seq=P, ack=U + 1000)
    t.expect(".", seq=U + 1000)
    assert t.conn.ssthresh == cwnd * 7 // 10  # beta 0.7 of cwnd (RFC 9438 4.6)


def test_no_keepalive_by_default() -> None:
    t = TcpScript(listen=80)
    t.establish()
    t.at(10_000.0)
    t.expect_none()


def test_keepalive_probes_an_idle_peer_and_gives_up() -> None:
    t = TcpScript(listen=80, keepalive_idle=60.0, keepalive_interval=10.0, keepalive_probes=3)
    t.establish()
    t.at(59.0)
    t.expect_none()
    t.at(60.0)
    t.expect(".", seq=U - 1, ack=P)  # SEG.SEQ = SND.UNA - 1: the peer must answer
    t.send(".", seq=P, ack=U)  # it does: the peer is alive
    t.at(119.0)
    t.expect_none()  # idle counts again from what we last heard
    for at in (120.0, 130.0, 140.0):
        t.at(at)
        t.expect(".", seq=U - 1)
    t.at(150.0)
    t.expect_none()
    assert t.table == {}
    assert t.conn is not None and t.conn.error == "ETIMEDOUT"
    assert t.events()[-1].name == "TIMEOUT_KEEPALIVE"


def test_keepalive_gives_up_in_close_wait_too() -> None:
    t = TcpScript(listen=80, keepalive_idle=5.0, keepalive_interval=1.0, keepalive_probes=1)
    t.establish()
    t.send("F.", seq=P, ack=U)
    t.sent()
    t.at(6.0)
    t.expect(".", seq=U - 1, ack=P + 1)
    t.at(7.0)
    assert t.table == {}
    assert t.states()[-2:] == ["CLOSE_WAIT", "CLOSED"]


def with_timestamps(**config: object) -> TcpScript:
    t = TcpScript(listen=80, **config)
    t.send("S", seq=PEER_ISS, mss=1460, ts=(100, 0))
    synack = t.expect("S.", ack=P)
    assert synack.options.timestamps == (OUR_ISS, 100)  # TSval, and TSecr echoes theirs
    t.send(".", seq=P, ack=U, ts=(101, OUR_ISS))
    assert t.conn is not None and t.conn.ts_ok
    return t


def test_timestamps_on_every_segment_and_the_mss_leaves_room_for_them() -> None:
    t = with_timestamps()
    t.at(0.5)
    t.write(bytes(3000))
    out = t.expect_many(".", ".", "P.")
    assert [len(o.payload) for o in out] == [1448, 1448, 104]  # 1460 - 12 bytes of option
    assert all(o.options.timestamps == (OUR_ISS + 500, 101) for o in out)


def test_paws_drops_an_old_tsval_and_acks() -> None:
    t = with_timestamps()
    t.send("P.", seq=P, ack=U, payload=b"new", ts=(200, OUR_ISS))
    t.expect(".", ack=P + 3)
    t.send("P.", seq=P + 3, ack=U, payload=b"old", ts=(150, OUR_ISS))  # TSval went back
    t.expect(".", ack=P + 3)  # dropped, ACKed
    assert t.read() == b"new"
    assert any("PAWS" in d for d in t.decisions())
    t.send("R", seq=P + 3, ts=(150, OUR_ISS))  # a RST is exempt from PAWS
    assert t.table == {}


def test_our_rst_carries_a_current_tsval() -> None:
    t = with_timestamps()
    t.at(2.0)
    t.abort()
    rst = t.expect("R.")
    assert rst.options.timestamps == (OUR_ISS + 2000, 101)


def test_rtt_is_measured_from_the_echoed_timestamp() -> None:
    t = with_timestamps()
    t.at(1.0)
    t.write(b"x" * 100)
    t.expect("P.")
    t.at(1.25)
    t.send(".", seq=P, ack=U + 100, ts=(102, OUR_ISS + 1000))
    # SRTT was 0 (the handshake); a 250 ms sample moves it by 1/8 (RFC 6298 2.3).
    assert t.conn is not None and t.conn.srtt == 0.25 / 8


@pytest.mark.parametrize("iss", [OUR_ISS, 0xF000_0000], ids=["low-iss", "high-iss"])
def test_the_echo_times_the_newest_segment_whatever_half_of_the_circle_our_tsvals_are_on(
    iss: int,
) -> None:
    # Our TSvals are offset by the ISS (RFC 7323 5.4 allows any start), so half
    # the ISS values put them past 2**31; the echo must time those ACKs too.
    t = TcpScript(listen=80, our_iss=iss, nagle=False)
    t.send("S", seq=PEER_ISS, mss=1460, ts=(100, 0))
    t.expect("S.", ack=P)
    t.send(".", seq=P, ack=iss + 1, ts=(101, iss))
    t.at(1.0)
    t.write(b"x" * 100)  # timed by its sequence number too (Karn's one timer)
    t.at(1.1)
    t.write(b"y" * 100)
    t.expect_many("P.", "P.")
    t.at(1.35)
    # One ACK for both, echoing the newer segment's TSval (RFC 7323 4.3): it
    # was sent 250 ms ago, where the sequence-number timer would say 350.
    t.send(".", seq=P, ack=iss + 201, ts=(102, (iss + 1100) & 0xFFFFFFFF))
    assert t.conn is not None and t.conn.srtt == pytest.approx(0.25 / 8)


def sack_sender() -> TcpScript:
    t = TcpScript(listen=80, congestion_control="newreno")
    t.establish(mss=MSS, win=65535, sack_permitted=True)
    assert t.conn is not None and t.conn.sack_ok
    return t


def test_rack_resends_every_hole_the_peer_reports() -> None:
    """Segments 2, 4 and 6 of 8 are lost. RACK (RFC 8985 6.2) calls a segment
    lost once one sent after it is SACKed; the first hole goes at once (RFC
    6675 4.3), the others as the pipe leaves room in the halved window, not
    one per round trip as NewReno alone would."""
    t = sack_sender()
    t.write(bytes(8000))
    t.sent()
    t.at(t.now + 0.005)  # (before the loss probe's 10 ms)
    held = [(U + 2000, U + 3000), (U + 4000, U + 5000), (U + 6000, U + 8000)]
    t.send(".", seq=P, ack=U + 1000)
    t.send(".", seq=P, ack=U + 1000, sack=tuple(held[:1]))
    t.expect(".", seq=U + 1000, payload=bytes(1000))  # fast retransmit: the first hole
    t.send(".", seq=P, ack=U + 1000, sack=tuple(held[:2]))
    t.expect_none()  # segment 4 is lost too, but 4,000 bytes are in the pipe (cwnd 3,500)
    t.send(".", seq=P, ack=U + 1000, sack=tuple(held))
    assert [(s.seq, len(s.payload)) for s in t.sent()] == [(U + 3000, 1000), (U + 5000, 1000)]
    t.send(".", seq=P, ack=U + 8000)
    assert t.conn is not None and t.conn.snd_una == U + 8000
    assert any("fast recovery over" in d for d in t.decisions())
    assert any(d.startswith("RACK: 1 segment(s)") for d in t.decisions())


def rack_sender(rtt: float, **config: object) -> TcpScript:
    """A SACK sender whose handshake took `rtt`: RACK's minimum RTT."""
    t = TcpScript(listen=80, congestion_control="newreno", **config)
    t.send("S", seq=PEER_ISS, win=65535, mss=MSS, sack_permitted=True)
    t.expect("S.", seq=OUR_ISS, ack=PEER_ISS + 1)
    t.at(t.now + rtt)
    t.send(".", seq=P, ack=U, win=65535)
    assert t.conn is not None and t.conn.sack_ok and t.conn.srtt == rtt
    return t


def test_rack_waits_a_quarter_rtt_before_calling_a_hole_lost() -> None:
    """One SACK above a hole: before three segments are SACKed, RACK waits
    min_RTT/4 past a round trip (RFC 8985 6.2 step 4), as the hole may be
    only reordered. If the segment arrives meanwhile, nothing is resent."""
    for reordered in (True, False):
        t = rack_sender(0.04)
        start = t.now
        t.write(bytes(4000))
        t.sent()
        t.at(start + 0.04)
        t.send(".", seq=P, ack=U, sack=((U + 2000, U + 3000),))
        assert t.conn is not None and "reorder" in t.conn.timers()
        t.at(start + 0.0499)
        if reordered:
            t.send(".", seq=P, ack=U + 3000)  # the first two were late, not lost
            t.at(start + 0.06)
            t.expect_none()
            assert t.conn.recovery.rack.reordering_seen and "reorder" not in t.conn.timers()
        else:
            t.expect_none()
            t.at(start + 0.05)  # 40 ms + 10 ms after the first two went
            assert [s.seq for s in t.sent()] == [U]  # the head; the pipe holds the rest
            assert any("RACK: 2 segment(s)" in d for d in t.decisions())


def test_a_lost_retransmission_is_found_without_a_timeout() -> None:
    """The fast retransmission is lost too. New data sent after it is SACKed
    a round trip later: RACK calls the retransmission lost (it went before
    that data) and sends it again, long before the RTO."""
    t = rack_sender(0.01)
    start = t.now
    t.write(bytes(4000))
    t.sent()
    t.at(start + 0.01)
    t.send(".", seq=P, ack=U, sack=((U + 1000, U + 4000),))  # three SACKed: no waiting
    t.expect(".", seq=U, payload=bytes(1000))  # the fast retransmission (lost)
    t.write(bytes(1000))
    t.expect("P.", seq=U + 4000)  # new data, as the pipe allows
    t.at(start + 0.02)
    t.send(".", seq=P, ack=U, sack=((U + 1000, U + 5000),))
    t.expect(".", seq=U, payload=bytes(1000))  # again, 10 ms later; the RTO is 200+ ms
    assert t.conn is not None and t.conn.rto >= 0.2
    assert any("RACK: 1 segment(s) from" in d for d in t.decisions())
    t.send(".", seq=P, ack=U + 5000)
    assert t.conn.snd_una == U + 5000


def test_sack_blocks_outside_the_window_are_ignored() -> None:
    t = sack_sender()
    t.write(bytes(3000))
    t.sent()
    t.send(".", seq=P, ack=U, sack=((U + 50000, U + 60000), (U - 500, U)))
    assert t.conn is not None and t.conn.recovery.rack.sacked_ranges() == []


def test_tail_loss_probe_at_two_srtt_and_its_sack_starts_recovery() -> None:
    """RFC 8985 7: the first of three segments is lost and so are the ACKs of
    the others: instead of the RTO, a probe (the last segment again) goes
    after PTO = 2*SRTT; its SACK shows the head missing: fast retransmit."""
    t = sack_sender()
    conn = t.conn
    assert conn is not None and conn.recovery.rtt.srtt is not None
    pto = max(2 * conn.recovery.rtt.srtt, 0.01)
    assert pto < conn.recovery.rtt.rto
    start = t.now
    t.write(bytes(3000))
    assert len(t.sent()) == 3
    t.at(start + pto - 0.001)
    t.expect_none()
    t.at(start + pto)
    t.expect("P.", seq=U + 2000, payload=bytes(1000))  # the probe: the last segment
    assert any("tail loss probe" in d for d in t.decisions())
    t.send(".", seq=P, ack=U, sack=((U + 2000, U + 3000),))
    # RACK: both sent before the probe are lost; at once, no RTO waited for.
    assert [(s.seq, len(s.payload)) for s in t.sent()] == [(U, 1000), (U + 1000, 1000)]
    assert any("SACK after a tail loss probe" in d for d in t.decisions())
    t.send(".", seq=P, ack=U + 3000)
    assert conn.snd_una == U + 3000


def silent_flight(t: TcpScript, size: int, wait: float) -> TcpConnection:
    """`size` bytes written and all sent, then `wait` seconds with no ACK."""
    conn = t.conn
    assert conn is not None
    start = t.now
    t.write(bytes(size))
    t.sent()
    t.at(start + wait)
    return conn


def tail_probed(size: int) -> tuple[TcpScript, TcpConnection, int]:
    """A SACK sender whose `size` bytes got no ACK: its loss probe timer
    fired (the probe is the next segment to expect); and its cwnd before."""
    t = sack_sender()
    assert t.conn is not None
    cwnd = t.conn.cwnd
    return t, silent_flight(t, size, 0.5), cwnd


def test_a_probe_whose_ack_covers_everything_needs_no_recovery() -> None:
    """Only the ACKs were lost: the probe's ACK acknowledges it all."""
    t, conn, cwnd = tail_probed(2000)
    t.expect("P.", seq=U + 1000, payload=bytes(1000))
    t.send(".", seq=P, ack=U + 2000)
    assert conn.snd_una == U + 2000 and conn.cwnd >= cwnd
    assert not any("fast retransmit" in d for d in t.decisions())


def test_no_tail_loss_probe_without_sack_or_when_switched_off() -> None:
    for t in (sender(), sack_sender_with(tail_loss_probe=False)):
        t.write(bytes(3000))
        t.sent()
        t.at(t.now + 0.9)
        t.expect_none()  # only the RTO (1 s with the handshake's RTT) resends
        assert not any("tail loss probe" in d for d in t.decisions())


def sack_sender_with(**config: object) -> TcpScript:
    t = TcpScript(listen=80, congestion_control="newreno", **config)
    t.establish(mss=MSS, win=65535, sack_permitted=True)
    return t


def test_a_loss_right_after_a_recovery_starts_a_new_one() -> None:
    """RFC 6582 3.2 (1): a new recovery may start once the ACK covers more
    than "recover", the highest byte sent when the last one began. An ACK
    of exactly everything sent then does: the next loss is a new event."""
    t = sender()
    fast_retransmit_of_the_second_segment(t, 4000)  # recover = U + 4000
    t.write(bytes(4000))
    t.send(".", seq=P, ack=U + 4000)  # a full ACK: that recovery is over
    assert t.conn is not None and t.conn.snd_max - (U + 4000) >= 2000  # new data out
    t.sent()
    for _ in range(3):  # the first segment sent after it was lost
        t.send(".", seq=P, ack=U + 4000)
    resent = t.sent()[0]  # (new data may follow: the window inflates)
    assert (resent.seq, resent.payload) == (U + 4000, bytes(1000))
    assert sum("fast retransmit" in d for d in t.decisions()) == 2


def test_segments_carrying_sack_blocks_shrink_to_fit_the_mss() -> None:
    """While we hold data beyond a hole, every segment we send carries SACK
    blocks; its payload must leave room for them (RFC 2018 3), or a segment
    of a full MSS would not fit the MTU and never leave (seen when both
    directions carried data and one had a hole)."""
    t = sack_sender()
    t.send(".", seq=P + 1000, ack=U, payload=b"x" * 500)  # a hole before it
    assert t.expect(".", ack=P).options.sack_blocks == ((P + 1000, P + 1500),)
    t.write(bytes(3000))
    sent = t.sent()
    assert sent and all(s.options.sack_blocks for s in sent)
    assert all(len(s.payload) <= MSS - 12 for s in sent)  # NOP NOP kind len + one block
    assert sum(len(s.payload) for s in sent) == 3000


def test_a_fin_held_beyond_a_hole_is_sacked() -> None:
    """The last data segment before the FIN was lost: the FIN (alone, or on
    data) is reported in a SACK block, so the sender learns of the hole at
    once (Linux does the same)."""
    t = TcpScript(listen=80)
    t.establish(mss=1460, sack_permitted=True)
    t.send("F.", seq=P + 1000, ack=U)
    assert t.expect(".", ack=P).options.sack_blocks == ((P + 1000, P + 1001),)
    t = TcpScript(listen=80)
    t.establish(mss=1460, sack_permitted=True)
    t.send("F.", seq=P + 1000, ack=U, payload=b"z" * 500)
    assert t.expect(".", ack=P).options.sack_blocks == ((P + 1000, P + 1501),)
    t.send(".", seq=P, ack=U, payload=b"a" * 1000)
    final = t.expect(".", ack=P + 1501)  # the hole filled: data and FIN taken
    assert final.options.sack_blocks == ()


def test_the_ack_of_a_peers_fin_waits_for_our_own_fin_to_carry_it() -> None:
    """The peer closes first: the ACK of its FIN is delayed (Linux's pingpong
    mode), so an application that closes at once sends one FIN,ACK, not an
    ACK and then a FIN; one that does not gets the ACK within the delay."""
    t = TcpScript(listen=80, delayed_ack=0.04)
    t.establish(mss=1460)
    t.send("F.", seq=P, ack=U)
    t.expect_none()
    t.close()
    t.expect("F.", seq=U, ack=P + 1)  # one segment: our FIN acknowledges theirs
    t = TcpScript(listen=80, delayed_ack=0.04)
    t.establish(mss=1460)
    start = t.now
    t.send("F.", seq=P, ack=U)
    t.at(start + 0.039)
    t.expect_none()
    t.at(start + 0.04)
    t.expect(".", ack=P + 1)


def test_after_a_timeout_what_the_peer_sacked_is_not_sent_again() -> None:
    """RFC 6675 5.1, RFC 8985 6.3: after a timeout all that is not SACKed is
    lost and goes again as slow start allows; the blocks the peer holds do
    not. A second timeout in a row forgets them (the peer may have reneged,
    RFC 2018 8)."""
    t = sack_sender_with(tail_loss_probe=False)  # the timeout's story only
    t.write(bytes(4000))
    t.sent()
    t.send(".", seq=P, ack=U, sack=((U + 2000, U + 4000),))  # 1 and 2 lost, 3 and 4 held
    assert [s.seq for s in t.sent()] == [U, U + 1000]  # RACK resends both: lost again
    t.at(t.now + 1.0)
    t.expect(".", seq=U, payload=bytes(1000))  # the timeout: one segment (cwnd 1 MSS)
    t.send(".", seq=P, ack=U + 1000, sack=((U + 2000, U + 4000),))
    t.expect(".", seq=U + 1000, payload=bytes(1000))  # the second hole
    t.expect_none()  # and not the 2,000 bytes the peer holds
    t.send(".", seq=P, ack=U + 4000)
    assert t.conn is not None and t.conn.snd_una == t.conn.snd_max == U + 4000


def test_a_second_timeout_in_a_row_resends_even_what_was_sacked() -> None:
    t = sack_sender_with(tail_loss_probe=False)  # the timeout's story only
    t.write(bytes(3000))
    t.sent()
    start = t.now
    t.send(".", seq=P, ack=U, sack=((U + 1000, U + 3000),))
    t.expect(".", seq=U, payload=bytes(1000))  # RACK's fast retransmission
    t.at(start + 1.0)
    t.expect(".", seq=U, payload=bytes(1000))
    t.at(start + 3.0)  # RTO doubled: the peer answers nothing
    t.expect(".", seq=U, payload=bytes(1000))
    t.send(".", seq=P, ack=U + 1000)  # it reneged on what it SACKed
    assert [s.seq for s in t.sent()] == [U + 1000, U + 2000]  # so that goes again too


def test_a_dsack_of_every_resent_byte_undoes_the_window_cut() -> None:
    """The "lost" segment was only late: the peer reports the original as a
    duplicate (D-SACK, RFC 2883) after the retransmission filled the hole.
    Every byte resent in the episode came back duplicated, so the cut is
    undone (RFC 3708, RFC 4015); and RACK's reordering window widens."""
    t = rack_sender(0.01)
    conn = t.conn
    assert conn is not None
    before = (conn.cwnd, conn.ssthresh)
    start = t.now
    t.write(bytes(4000))
    t.sent()
    t.at(start + 0.01)
    t.send(".", seq=P, ack=U, sack=((U + 1000, U + 4000),))
    t.expect(".", seq=U)  # fast retransmit: the window is cut
    assert conn.cwnd < before[0]
    t.send(".", seq=P, ack=U + 4000)  # recovery over
    t.send(".", seq=P, ack=U + 4000, sack=((U, U + 1000),))  # the original, late: a D-SACK
    assert (conn.cwnd, conn.ssthresh) == before
    assert any("spurious retransmission" in d for d in t.decisions())
    assert conn.recovery.rack.reordering_seen and conn.recovery.rack.reo_wnd_mult == 2
    counters = t.stack.counters
    assert (counters["tcp.in.dsack"], counters["tcp.spurious-retransmits"]) == (1, 1)
    assert counters["tcp.undo"] == 1  # Linux's TCPDSACKUndo


def test_a_dsack_of_part_of_what_was_resent_undoes_nothing() -> None:
    t = rack_sender(0.01)
    conn = silent_flight(t, 5000, 0.01)
    t.send(".", seq=P, ack=U, sack=((U + 2000, U + 5000),))  # two holes: both resent
    assert [s.seq for s in t.sent()] == [U, U + 1000]
    cut = (conn.cwnd, conn.ssthresh)
    t.send(".", seq=P, ack=U + 5000)
    t.send(".", seq=P, ack=U + 5000, sack=((U, U + 1000),))  # only one was late
    assert (conn.cwnd, conn.ssthresh) == cut
    assert not any("spurious" in d for d in t.decisions())
    t.send(".", seq=P, ack=U + 5000, sack=((U + 1000, U + 2000),))
    assert any("spurious" in d for d in t.decisions())  # and now the other


def test_sack_blocks_go_most_recently_received_first() -> None:
    """RFC 2018 4: the first block holds the newest segment, the others
    follow most recent first (not in sequence order), as Linux's
    tcp_sack_new_ofo_skb orders them; three fit beside timestamps."""
    t = TcpScript(listen=80)
    t.establish(mss=1460, sack_permitted=True)
    for start in (1000, 3000, 5000, 7000):
        t.send(".", seq=P + start, ack=U, payload=b"x" * 500)
        t.sent()
    t.send(".", seq=P + 3000, ack=U, payload=b"x" * 500)  # a duplicate of the second
    t.sent()
    t.send(".", seq=P + 9000, ack=U, payload=b"x" * 500)
    blocks = t.expect(".", ack=P).options.sack_blocks
    assert blocks == (
        (P + 9000, P + 9500),
        (P + 3000, P + 3500),  # received again just before
        (P + 7000, P + 7500),
        (P + 5000, P + 5500),
    )
    t.send(".", seq=P + 5500, ack=U, payload=b"x" * 500)  # grows the block at 5000
    newest, then = t.expect(".", ack=P).options.sack_blocks[:2]
    assert (newest, then) == ((P + 5000, P + 6000), (P + 9000, P + 9500))
    t.send(".", seq=P + 1500, ack=U, payload=b"x" * 1500)  # merges 1000..3500
    assert t.expect(".", ack=P).options.sack_blocks[0] == (P + 1000, P + 3500)


def test_a_duplicate_below_rcv_nxt_is_reported_in_a_dsack_block_once() -> None:
    """RFC 2883 4.1.1: a segment received twice is reported as the first
    SACK block of the ACK it causes (at once), and only in that one."""
    t = TcpScript(listen=80, delayed_ack=0.04)
    t.establish(mss=1460, sack_permitted=True)
    t.send(".", seq=P, ack=U, payload=b"a" * 1000)
    t.send(".", seq=P + 1000, ack=U, payload=b"b" * 1000)
    t.sent()
    t.send(".", seq=P, ack=U, payload=b"a" * 1000)  # the first again
    t.expect(".", ack=P + 2000, sack_blocks=((P, P + 1000),))
    assert t.stack.counters["tcp.out.dsack-old"] == 1
    assert any("D-SACK" in d for d in t.decisions())
    t.write(b"reply")
    t.expect("P.", ack=P + 2000, payload=b"reply", sack_blocks=())  # not repeated
    # Part old, part new: the old part is the D-SACK; the ACK goes at once.
    t.send(".", seq=P + 1500, ack=U, payload=b"c" * 1000)
    t.expect(".", ack=P + 2500, sack_blocks=((P + 1500, P + 2000),))
    assert t.stack.counters["tcp.out.dsack-old"] == 2


def test_a_duplicate_inside_a_sacked_block_comes_first_then_its_block() -> None:
    """RFC 2883 4.1.2: a duplicate of held out-of-order data: the D-SACK
    block, then the SACK block holding it, then the others."""
    t = TcpScript(listen=80)
    t.establish(mss=1460, sack_permitted=True)
    t.send(".", seq=P + 1000, ack=U, payload=b"x" * 1000)
    t.send(".", seq=P + 4000, ack=U, payload=b"y" * 500)
    t.sent()
    t.send(".", seq=P + 1500, ack=U, payload=b"x" * 500)  # inside 1000..2000
    blocks = t.expect(".", ack=P).options.sack_blocks
    assert blocks == ((P + 1500, P + 2000), (P + 1000, P + 2000), (P + 4000, P + 4500))
    assert t.stack.counters["tcp.out.dsack-ofo"] == 1
    t.send(".", seq=P + 6000, ack=U, payload=b"z" * 500)
    assert t.expect(".", ack=P).options.sack_blocks[0] == (P + 6000, P + 6500)


def test_no_dsack_without_sack_permitted() -> None:
    t = TcpScript(listen=80)
    t.establish(mss=1460)
    t.send(".", seq=P, ack=U, payload=b"a" * 1000)
    t.sent()
    t.send(".", seq=P, ack=U, payload=b"a" * 1000)
    t.expect(".", ack=P + 1000, sack_blocks=())
    assert t.stack.counters["tcp.out.dsack-old"] == 0


def test_a_dsack_of_a_loss_probe_counts_a_spurious_retransmission() -> None:
    """The probe went, but nothing was lost (the ACK was only late): the
    peer D-SACKs the probe (RFC 8985 7.4.2 with RFC 2883): one spurious
    retransmission counted, no window to undo since none was cut. A D-SACK
    of data never resent counts as received, not as spurious."""
    t, conn, cwnd = tail_probed(3000)
    t.expect("P.", seq=U + 2000, payload=bytes(1000))  # the probe
    t.send(".", seq=P, ack=U + 3000)
    t.send(".", seq=P, ack=U + 3000, sack=((U + 2000, U + 3000),))  # the probe's duplicate
    counters = t.stack.counters
    assert (counters["tcp.in.dsack"], counters["tcp.spurious-retransmits"]) == (1, 1)
    assert counters["tcp.undo"] == 0 and conn.cwnd >= cwnd
    assert any("D-SACK" in d and "needless" in d for d in t.decisions())
    t.send(".", seq=P, ack=U + 3000, sack=((U, U + 1000),))  # never resent
    assert (counters["tcp.in.dsack"], counters["tcp.spurious-retransmits"]) == (2, 1)


def probe_deadline(t: TcpScript) -> float | None:
    assert t.conn is not None
    return t.conn.timers().get("probe")


def test_pto_allows_for_a_delayed_ack_while_the_flight_is_short_of_two_full_segments() -> None:
    """RFC 8985 7.2: PTO = 2*SRTT, plus WCDelAckT (200 ms) when the peer may
    hold its ACK for its delayed-ACK timer: a flight of one segment, and
    (RFC 5681 4.2: an ACK is due only for a second full-sized segment) one
    full segment and a small one. Two full segments get no allowance."""
    t = rack_sender(0.01)
    conn = t.conn
    assert conn is not None and conn.recovery.rtt.rto == 1.0
    start = t.now
    t.write(bytes(1500))  # 1000 + 500: one full-sized segment
    assert len(t.sent()) == 2
    assert probe_deadline(t) == pytest.approx(start + 2 * 0.01 + 0.2)
    t.at(start + 0.1)  # the peer's delayed ACK, 100 ms later: no probe before it
    t.expect_none()
    t.send(".", seq=P, ack=U + 1500)
    start = t.now
    t.write(bytes(2000))  # two full segments: the peer ACKs at once
    t.sent()
    srtt = conn.recovery.rtt.srtt
    assert srtt is not None
    assert probe_deadline(t) == pytest.approx(start + max(2 * srtt, 0.01))
    t.send(".", seq=P, ack=U + 3500)
    t.write(bytes(400))  # one small segment
    t.sent()
    srtt = conn.recovery.rtt.srtt
    assert srtt is not None
    assert probe_deadline(t) == pytest.approx(t.now + max(2 * srtt, 0.01) + 0.2)


def test_a_dsacked_probe_teaches_the_pto_that_the_peer_delays_its_acks() -> None:
    """A Linux peer whose application reads slowly holds the ACK of several
    segments (its window would not grow): the probe at 2*SRTT was needless
    and comes back D-SACKed. From then on every PTO allows for the delayed
    ACK, so the next such flight goes without a spurious probe."""
    t = rack_sender(0.01)
    start = t.now
    conn = silent_flight(t, 3000, 0.02)
    t.expect("P.", seq=U + 2000, payload=bytes(1000))  # the probe
    t.at(start + 0.04)  # the delayed ACK, and the probe's duplicate D-SACKed
    t.send(".", seq=P, ack=U + 3000, sack=((U + 2000, U + 3000),))
    counters = t.stack.counters
    assert counters["tcp.loss-probes"] == 1 and counters["tcp.loss-probes.spurious"] == 1
    assert conn.recovery.peer_delays_acks
    start = t.now
    t.write(bytes(3000))
    t.sent()
    srtt = conn.recovery.rtt.srtt
    assert srtt is not None
    assert probe_deadline(t) == pytest.approx(start + max(2 * srtt, 0.01) + 0.2)
    t.at(start + 0.04)
    t.expect_none()  # no probe: the ACK may still come
    t.send(".", seq=P, ack=U + 6000)
    assert counters["tcp.loss-probes"] == 1
