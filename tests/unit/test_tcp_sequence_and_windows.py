"""Sequence numbers and windows at their edges, clause by clause of the RFCs.

Most tests pin one rule of RFC 9293, RFC 5961 or RFC 6298 (the name begins
with the clause) where a sequence number or a window sits at its limit: the
four cases of the acceptability test and the wrap at 2**32; the receive window
before RCV.NXT is known, at zero, and with a right edge that never moves left;
SND.WL1/SND.WL2 window updates; the ACK bounds of RFC 5961; the sequence
numbers we send after an RTO; the out-of-order data held within the window.
Beside them: two RTO rules of RFC 6298 (Karn, 3 s after a lost SYN), a few
open and close corner cases, and a property test that throws hostile segments
at a connection and checks the same invariants from the other side.

A test that shows a bug or an RFC deviation before it is fixed is marked
`xfail(strict=True, reason="BUG: ...")`: strict xfail reports the fix's XPASS
as a failure, so the mark goes with the fix.

Sequence numbers: the peer's data starts at P = PEER_ISS + 1, ours at U = OUR_ISS + 1.
A few assertions read private TCB fields (`_out_of_order`, `_rtt`, `_recv_buf`) where the
wire cannot show the fault; they say so.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from tcpscript import OUR_ISS
from tcpscript import PEER_ISS
from tcpscript import TcpScript

from ustack.tcp import seq
from ustack.tcp.connection import TcpConfig
from ustack.tcp.states import State

P = PEER_ISS + 1
U = OUR_ISS + 1
MASK = 0xFFFFFFFF


def established(**config: object) -> TcpScript:
    t = TcpScript(listen=80, **config)
    t.establish()
    return t


# ---- sequence numbers: wrap and the four cases of the acceptability test ---------------


@pytest.mark.parametrize("peer_iss", [PEER_ISS, 0xFFFFFE00, 0xFFFFFFFF - 999])
def test_rfc9293_3_4_acceptability_four_cases_at_the_window_edges(peer_iss: int) -> None:
    """RFC 9293 3.4 / 3.10.7.4 (first step): SEG.LEN = 0 is acceptable iff
    RCV.NXT =< SEG.SEQ < RCV.NXT+RCV.WND; SEG.LEN > 0 iff its first or last
    octet lies in the window; what lies outside is trimmed. Also across 2**32."""
    t = TcpScript(listen=80, receive_buffer=1000, window_scaling=False)
    t.send("S", seq=peer_iss, win=65535)
    t.expect("S.", ack=peer_iss + 1, win=1000)
    p = (peer_iss + 1) & MASK
    t.send(".", seq=p, ack=U)
    conn = t.conn
    assert conn is not None and conn.state is State.ESTABLISHED
    t.write(b"0123456789")
    t.expect("P.", seq=U)
    # Zero length at RCV.NXT+RCV.WND-1: acceptable, its ACK is processed.
    t.send(".", seq=p + 999, ack=U + 4)
    t.expect_none()
    assert conn.snd_una == U + 4
    # Zero length at RCV.NXT+RCV.WND and at RCV.NXT-1: not acceptable, ACK sent, ACK field unused.
    for bad in (p + 1000, p - 1):
        t.send(".", seq=bad, ack=U + 8)
        t.expect(".", seq=U + 10, ack=p)
    assert conn.snd_una == U + 4
    # Data whose first octet is the last one in the window: one octet kept (held
    # beyond the hole), the other trimmed.
    t.send(".", seq=p + 999, ack=U + 10, payload=b"yz")
    t.expect(".", ack=p)
    # Data starting before RCV.NXT whose last octets are in the window: trimmed at the front.
    t.send(".", seq=p - 5, ack=U + 10, payload=b"-----abc")
    t.expect(".", ack=p + 3)
    t.send(".", seq=p + 3, ack=U + 10, payload=b"d" * 996)
    t.expect(".", ack=p + 1000, win=0)  # the held "y" joined; "z" was beyond the window
    assert t.read() == b"abc" + b"d" * 996 + b"y"


def test_rfc9293_3_4_fin_on_the_last_sequence_number_wraps_rcv_nxt_to_zero() -> None:
    """RFC 9293 3.4: sequence arithmetic is modulo 2**32; a FIN on 0xFFFFFFFF
    is acknowledged with ACK = 0."""
    t = TcpScript(listen=80)
    t.send("S", seq=0xFFFFFFF0)
    t.expect("S.", ack=0xFFFFFFF1)
    t.send(".", seq=0xFFFFFFF1, ack=U)
    t.send("FP.", seq=0xFFFFFFF1, ack=U, payload=b"x" * 14)
    t.expect(".", ack=0)
    assert t.conn is not None and t.conn.state is State.CLOSE_WAIT
    assert t.read() == b"x" * 14 and t.conn.at_eof


# ---- SYN_SENT: the receive window before RCV.NXT is known --------------------------------


def test_rfc9293_3_10_7_3_first_ack_after_active_open_advertises_our_buffer() -> None:
    """RFC 9293 3.10.7.3 / 3.8.6.2: after SYN,ACK in SYN_SENT, RCV.WND is what
    the receive buffer holds; here the ACK offers 65535 for an 8000-byte buffer,
    and the data the peer then sends beyond 8000 is accepted into the buffer."""
    t = TcpScript(listen=None, receive_buffer=8000, window_scaling=False)
    t.connect()
    t.expect("S", win=8000)
    t.send("S.", seq=0xFFFF0000, ack=U, sport=8080, mss=1000)
    t.expect(".", ack=0xFFFF0001, win=8000)


def test_rfc9293_3_10_7_3_data_on_syn_ack_is_accepted() -> None:
    """RFC 9293 3.10.7.3: after the SYN,ACK moves us to ESTABLISHED, other text
    in the segment continues at the sixth step (it is queued and ACKed)."""
    t = TcpScript(listen=None)
    t.connect()
    t.expect("S")
    t.send("S.", seq=100000, ack=U, sport=8080, mss=1460, payload=b"hello")
    t.expect(".", seq=U, ack=100006)
    assert t.read() == b"hello"


# ---- zero receive window -------------------------------------------------------------------


def test_rfc9293_3_10_7_4_zero_window_still_processes_the_ack_field() -> None:
    """RFC 9293 3.10.7.4: "If the RCV.WND is zero, no segments will be acceptable,
    but special allowance should be made to accept valid ACKs, URGs, and RSTs."
    A peer's zero-window probe (1 byte at RCV.NXT) that acknowledges our data must
    advance SND.UNA, else our data is retransmitted and our sending stalls."""
    t = TcpScript(listen=80, receive_buffer=4000, window_scaling=False)
    t.establish()
    t.write(b"o" * 100)
    t.expect("P.", seq=U)
    t.send("P.", seq=P, ack=U, payload=b"z" * 4000)
    t.expect(".", ack=P + 4000, win=0)
    t.send("P.", seq=P + 4000, ack=U + 100, payload=b"z")  # probe carrying a new ACK
    t.expect(".", seq=U + 100, ack=P + 4000, win=0)
    assert t.conn is not None and t.conn.snd_una == U + 100
    assert t.app_events()[-1] == "SendSpace"


def test_rfc9293_3_8_6_1_zero_window_from_the_handshake_is_probed() -> None:
    """RFC 9293 3.8.6.1: a peer that opened with a zero window is probed after
    an RTO, and the data flows once the window opens."""
    t = TcpScript(listen=80)
    t.establish(win=0)
    t.write(b"q" * 300)
    t.expect_none()
    t.at(1.0)
    probe = t.expect(".", seq=U)
    assert len(probe.payload) == 1
    t.send(".", seq=P, ack=U, win=0)  # probe refused
    t.send(".", seq=P, ack=U, win=1000)  # window opens
    t.expect("P.", seq=U, payload=b"q" * 300)


# ---- FIN handling ----------------------------------------------------------------------------


def test_rfc9293_3_10_7_4_fin_beyond_the_peers_fin_is_ignored_in_close_wait() -> None:
    """RFC 9293 3.10.7.4 seventh/eighth step, behaviour 32: after the peer's FIN
    nothing beyond it exists; a bare (e.g. spoofed in-window) FIN at RCV.NXT in
    CLOSE_WAIT must not move RCV.NXT, and our FIN must still ACK the real FIN."""
    t = established()
    t.send("F.", seq=P, ack=U)
    t.expect(".", ack=P + 1)
    t.send("F.", seq=P + 1, ack=U)
    assert all(out.ack == P + 1 for out in t.sent())
    t.close()
    t.expect("F.", seq=U, ack=P + 1)


def test_rfc9293_fin_beyond_a_hole_in_fin_wait_2_is_held_then_time_wait() -> None:
    """RFC 9293 3.10.7.4 eighth step with out-of-order data (behaviour 28) in FIN_WAIT_2."""
    t = established()
    t.shutdown()
    t.expect("F.", seq=U)
    t.send(".", seq=P, ack=U + 1)
    t.send("F.", seq=P + 4, ack=U + 1, payload=b"tail")
    t.expect(".", ack=P)
    assert t.conn is not None and t.conn.state is State.FIN_WAIT_2
    t.send(".", seq=P, ack=U + 1, payload=b"head")
    t.expect(".", seq=U + 1, ack=P + 9)
    assert t.table == {"TIME_WAIT": 1}
    assert t.read() == b"headtail"


# ---- retransmission: go-back, SND.MAX, RTO ------------------------------------------------------


def test_rfc6298_5_4_go_back_then_cumulative_ack_of_everything_including_fin() -> None:
    """RFC 6298 5.4: an RTO resends from SND.UNA; a cumulative ACK of all that
    was sent before (data and FIN) ends the recovery without more resends."""
    t = TcpScript(listen=80)
    t.establish(mss=1000, win=3000)
    t.write(b"a" * 3000)
    t.expect_many(".", ".", "P.")
    t.close()
    t.expect("F.", seq=U + 3000)
    t.at(1.0)
    t.expect(".", seq=U, payload=b"a" * 1000)  # cwnd is one segment after the RTO
    conn = t.conn
    assert conn is not None
    assert seq.le(conn.snd_una, conn.snd_nxt) and seq.le(conn.snd_nxt, conn.snd_max)
    t.send(".", seq=P, ack=U + 3001)  # everything had arrived; only the ACKs were lost
    t.expect_none()
    assert conn.state is State.FIN_WAIT_2
    assert conn.snd_una == conn.snd_nxt == conn.snd_max == U + 3001
    t.at(10.0)
    t.expect_none()


def _after_rto_with_three_segments_out() -> TcpScript:
    t = TcpScript(listen=80)
    t.establish(mss=1000, win=3000)
    t.write(b"a" * 3000)
    t.expect_many(".", ".", "P.")
    t.at(1.0)
    t.expect(".", seq=U, payload=b"a" * 1000)
    return t


def test_rfc9293_3_10_5_rst_after_rto_carries_the_highest_sequence_sent() -> None:
    """RFC 9293 3.10.5: ABORT sends <SEQ=SND.NXT><CTL=RST>, SND.NXT being the
    next new octet (ustack's SND.MAX); a RST below the peer's RCV.NXT is ignored."""
    t = _after_rto_with_three_segments_out()
    t.abort()
    t.expect("R.", seq=U + 3000, ack=P)


def test_rfc9293_3_10_7_4_pure_ack_after_rto_carries_the_highest_sequence_sent() -> None:
    """RFC 9293 3.10.7.4: a zero-length segment is acceptable only with
    RCV.NXT =< SEG.SEQ; our ACKs must use the highest sequence sent (Linux does)."""
    t = _after_rto_with_three_segments_out()
    t.send("P.", seq=P, ack=U, payload=b"req")
    t.expect(".", seq=U + 3000, ack=P + 3)


def test_rfc6298_5_7_rto_is_three_seconds_after_a_retransmitted_syn() -> None:
    """RFC 6298 5.7: if the timer expired awaiting the ACK of a SYN and the RTO
    is below 3 s, it MUST be re-initialised to 3 s when data transmission begins."""
    t = TcpScript(listen=None)
    t.connect()
    t.expect("S", seq=OUR_ISS)
    t.at(1.0)
    t.expect("S", seq=OUR_ISS)
    t.at(1.5)
    t.send("S.", seq=PEER_ISS, ack=U, sport=8080, mss=1460)
    t.expect(".")
    t.write(b"data")
    t.expect("P.", seq=U)
    t.at(4.49)
    t.expect_none()
    t.at(4.5)
    t.expect("P.", seq=U, payload=b"data")


def test_rfc6298_3_karn_no_rtt_sample_from_data_resent_after_a_window_reopen() -> None:
    """RFC 6298 section 3 (Karn): RTT samples MUST NOT be made from retransmitted
    segments. Reads `_rtt.srtt`: the wire does not show it."""
    t = TcpScript(listen=80)
    t.establish(mss=1000, win=5000)
    conn = t.conn
    assert conn is not None
    srtt_before = conn.recovery.rtt.srtt
    t.write(b"a" * 1000)
    t.expect("P.", seq=U)
    t.at(0.1)
    t.send(".", seq=P, ack=U, win=0)  # the peer dropped it: window full
    t.at(0.5)
    t.send(".", seq=P, ack=U, win=5000)
    t.expect("P.", seq=U)  # resent after the window reopened
    t.at(0.6)
    t.send(".", seq=P, ack=U + 1000, win=5000)
    assert conn.recovery.rtt.srtt == srtt_before  # 0.6 s would mix two transmissions


# ---- SND.WL1/SND.WL2 window updates --------------------------------------------------------------


def test_rfc9293_3_10_7_4_window_update_from_an_older_segment_is_ignored() -> None:
    """RFC 9293 3.10.7.4 fifth step: SND.WND changes only if SND.WL1 < SEG.SEQ or
    (SND.WL1 = SEG.SEQ and SND.WL2 =< SEG.ACK): a segment that was sent before
    the last window update (here overtaken by out-of-order data) cannot close it."""
    t = TcpScript(listen=80)
    t.establish(mss=1000, win=5000)
    t.send(".", seq=P + 100, ack=U, payload=b"later", win=5000)  # SND.WL1 = P + 100
    t.expect(".", ack=P)
    t.send(".", seq=P, ack=U, payload=b"x" * 100, win=0)  # sent earlier, overtaken
    t.expect(".", ack=P + 105)
    t.write(b"w" * 100)
    t.expect("P.", seq=U, payload=b"w" * 100)


def test_rfc9293_3_10_7_4_window_update_needs_an_ack_not_older_than_snd_una() -> None:
    """RFC 9293 3.10.7.4 fifth step: "If SND.UNA =< SEG.ACK =< SND.NXT, the send
    window should be updated" -- only then."""
    t = TcpScript(listen=80)
    t.establish(mss=1000, win=5000)
    t.write(b"a" * 2000)
    t.expect_many(".", "P.")
    t.send("P.", seq=P, ack=U + 2000, win=5000, payload=b"ab")  # SND.WL1 = P
    t.expect(".", ack=P + 2)
    t.send("P.", seq=P + 2, ack=U + 1000, win=0, payload=b"cd")  # newer SEQ, old ACK
    t.expect(".", ack=P + 4)
    t.write(b"w" * 100)
    t.expect("P.", seq=U + 2000, payload=b"w" * 100)


# ---- RFC 5961 ACK checks -----------------------------------------------------------------


def test_rfc5961_5_2_ack_at_snd_una_minus_max_snd_wnd_is_acceptable() -> None:
    """RFC 5961 5.2: (SND.UNA - MAX.SND.WND) =< SEG.ACK =< SND.NXT is acceptable;
    at the lower bound it is a plain old duplicate: no reply."""
    t = TcpScript(listen=80)
    t.establish(win=1000)
    t.send(".", seq=P, ack=U - 1000)
    t.expect_none()


def test_rfc5961_5_2_ack_one_below_snd_una_minus_max_snd_wnd_is_challenged() -> None:
    """RFC 5961 5.2: an ACK below SND.UNA - MAX.SND.WND MUST be discarded and an ACK sent."""
    t = TcpScript(listen=80)
    t.establish(win=1000)
    t.send(".", seq=P, ack=U - 1001)
    t.expect(".", seq=U, ack=P)


@pytest.mark.parametrize("ack_offset", [5000, -100000])
def test_rfc5961_7_acks_for_unacceptable_ack_values_are_rate_limited(ack_offset: int) -> None:
    """RFC 5961 7: challenge ACKs (sections 3, 4 and 5) are throttled; a flood of
    segments with SEG.ACK > SND.NXT or < SND.UNA - MAX.SND.WND must not get one
    ACK each."""
    t = established(challenge_ack_limit=3)
    for i in range(10):
        t.send(".", seq=P, ack=U + ack_offset + i)
    assert len(t.sent()) <= 3


# ---- receive buffer and out-of-order memory ----------------------------------------------------


def test_out_of_order_data_held_is_bounded_by_the_receive_window() -> None:
    """RFC 9293 3.10.7.4 seventh step (and RFC 9293 3.9 robustness): segments
    beyond a hole are held only within RCV.WND; overlapping copies must be
    merged, not kept side by side. Reads `_out_of_order`: memory is not on the wire."""
    t = TcpScript(listen=80, receive_buffer=20000, window_scaling=False)
    t.establish()
    for i in range(1, 200):
        t.send(".", seq=P + i, ack=U, payload=b"x" * (19000 - i))
    t.sent()
    assert t.conn is not None
    held = t.conn.receiver.out_of_order.held_bytes
    assert held <= 20000


def test_filling_a_hole_is_not_quadratic_in_the_segments_held() -> None:
    """RFC 9293 3.10.7.4 seventh step, robustness against hostile input: the
    cost of reassembly must stay about linear. Compared with the time the same
    segments took to arrive, so the speed of the machine cancels out."""
    n = 8000
    t = TcpScript(listen=80, receive_buffer=65535, window_scaling=False)
    t.establish()
    started = time.perf_counter()
    for i in range(n, 0, -1):  # reverse order: the worst case for a rescan
        t.send(".", seq=P + i, ack=U, payload=b"x")
    t.sent()
    arrival = time.perf_counter() - started
    started = time.perf_counter()
    t.send(".", seq=P, ack=U, payload=b"x")
    reassembly = time.perf_counter() - started
    t.expect(".", ack=P + n + 1)
    assert reassembly < arrival, (reassembly, arrival)


# ---- the receive window never shrinks ----------------------------------------------------------


def test_rfc9293_3_8_6_2_2_right_edge_never_moves_left_in_syn_received() -> None:
    """RFC 9293 3.8.6.2.2 / RFC 7323 2.4: the right edge of the advertised
    window must not move left, here across SYN,ACK retransmissions."""
    config = TcpConfig(receive_buffer=70000)
    t = TcpScript(listen=80, receive_buffer=70000)
    t.send("S", seq=PEER_ISS, ws=2)
    t.expect("S.", ack=P, win=65535)
    t.send(".", seq=P + 1_000_000, ack=U)  # out of window: we answer with an ACK
    ack = t.expect(".", ack=P)
    edge = ack.ack + (ack.window << config.window_shift)
    t.at(1.0)
    synack = t.expect("S.", ack=P)
    assert synack.ack + synack.window >= edge


# ---- opening and closing corner cases ----------------------------------------------------------


def test_rfc9293_3_5_simultaneous_open_synack_establishes() -> None:
    """RFC 9293 3.5 Figure 8, line 6: in SYN-RECEIVED, the peer's
    <SEQ=IRS><ACK=ISS+1><CTL=SYN,ACK> moves us to ESTABLISHED (Linux does too)."""
    t = TcpScript(listen=None)
    conn = t.simultaneous_open()
    t.send("S.", seq=PEER_ISS, ack=U, sport=8080)
    assert conn.state is State.ESTABLISHED


def test_rfc9293_3_6_close_with_unread_data_in_fin_wait_2_sends_rst() -> None:
    """RFC 9293 3.6 SHLD-3 (RFC 1122 4.2.2.13): a CLOSE while received data is
    still pending SHOULD send a RST, whatever the state (Linux tcp_close)."""
    t = established()
    t.shutdown()
    t.expect("F.", seq=U)
    t.send(".", seq=P, ack=U + 1)
    t.send("P.", seq=P, ack=U + 1, payload=b"unread")
    t.expect(".", ack=P + 6)
    t.close()
    t.expect("R.", seq=U + 1, ack=P + 6)
    assert t.table == {}


@pytest.mark.parametrize("state", ["CLOSING", "LAST_ACK"])
def test_rfc9293_3_10_5_abort_in_closing_or_last_ack_sends_no_rst(state: str) -> None:
    """RFC 9293 3.10.5: "CLOSING STATE, LAST-ACK STATE, TIME-WAIT STATE: Respond
    with 'ok' and delete the TCB, enter CLOSED state, and return." """
    t = established()
    if state == "CLOSING":
        t.close()
        t.send("F.", seq=P, ack=U)
    else:
        t.send("F.", seq=P, ack=U)
        t.close()
    t.sent()
    assert t.conn is not None and str(t.conn.state) == state
    t.abort()
    t.expect_none()
    assert t.table == {}


def test_rfc5961_4_2_in_window_syn_in_time_wait_without_listener_gets_challenge_ack() -> None:
    """RFC 5961 4.2 / RFC 9293 3.10.7.4: with no listener to take a new
    incarnation, a SYN at RCV.NXT in TIME_WAIT gets a challenge ACK; TIME_WAIT stays."""
    t = TcpScript(listen=None)
    t.connect_established()
    t.close()
    t.expect("F.", seq=U)
    t.send("F.", seq=P, ack=U + 1, sport=8080)
    t.expect(".", ack=P + 1)
    assert t.table == {"TIME_WAIT": 1}
    t.send("S", seq=P + 1, sport=8080)
    t.expect(".", seq=U + 1, ack=P + 1)
    assert t.table == {"TIME_WAIT": 1}


# ---- hostile input: no exception, the TCB never corrupt ----------------------------------------

_FLAGS = ["S", "S.", "F", "F.", "F.", "FP.", ".", ".", "P.", "P.", "R", "R.", "SF", "SR", "FR.",
          "", "P", "U.", "SFRP.U"]  # fmt: skip
# Weighted towards the edges that matter: RCV.NXT itself, SND.UNA and SND.MAX ("max").
_SEQ_OFFSETS = [0, 0, 0, 0, 1, -1, 5, 100, -100, 999, 1000, 3000, 70000, 1 << 31, -(1 << 31) + 1]
_ACK_OFFSETS: list[int | str] = [0, 0, "max", "max", "max", 1, 100, 1000, -1, -70000, 1 << 31]

_segment = st.tuples(
    st.just("seg"),
    st.sampled_from(_FLAGS),
    st.sampled_from(_SEQ_OFFSETS),
    st.sampled_from(_ACK_OFFSETS),
    st.sampled_from([0, 0, 0, 1, 10, 1000, 3000]),
    st.sampled_from([0, 1, 100, 65535]),
)
_app = st.tuples(st.sampled_from(["write", "read", "close", "shutdown", "abort", "wait"]))


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(
    buffer=st.sampled_from([3000, 70000]),
    scaling=st.booleans(),
    peer_iss=st.sampled_from([PEER_ISS, 0xFFFFFFF0, 0x90000000]),
    our_iss=st.sampled_from([OUR_ISS, 0xFFFFFF00, 0x7FFFFFF0]),
    steps=st.lists(st.one_of(_segment, _segment, _app), max_size=40),
)
def test_hostile_segments_never_raise_and_keep_the_tcb_consistent(
    buffer: int, scaling: bool, peer_iss: int, our_iss: int, steps: list[tuple]
) -> None:
    """RFC 9293 3.10.7 / RFC 1122 1.2.2 (robustness): any sequence of segments
    and application calls on an established passive connection leaves
    SND.UNA =< SND.NXT =< SND.MAX, a bounded receive buffer, a right window
    edge that never moves left, and RCV.NXT that never goes back."""
    t = TcpScript(listen=80, our_iss=our_iss, receive_buffer=buffer, window_scaling=scaling,
                  retries=3)  # fmt: skip
    t.send("S", seq=peer_iss, mss=1000, ws=2)
    t.send(".", seq=peer_iss + 1, ack=our_iss + 1)
    conn = t.conn
    assert conn is not None and conn.state is State.ESTABLISHED
    edge, rcv_nxt = conn.rcv_adv, conn.rcv_nxt
    for step in steps:
        if step[0] == "seg":
            _, flags, seq_offset, ack_offset, length, window = step
            ack = conn.snd_max if ack_offset == "max" else conn.snd_una + ack_offset
            t.send(flags, seq=conn.rcv_nxt + seq_offset, ack=ack, payload=b"x" * length,
                   win=window)  # fmt: skip
        elif step[0] == "write":
            try:
                t.write(b"w" * 1500)
            except ConnectionError:  # BrokenPipeError and ConnectionClosedError
                pass
        elif step[0] == "read":
            t.read()
        elif step[0] == "wait":
            t.wait(1.5)
        else:
            getattr(t, step[0])()
        t.sent()
        assert seq.le(conn.snd_una, conn.snd_nxt) and seq.le(conn.snd_nxt, conn.snd_max), conn
        assert len(conn.receiver.buffer) <= buffer + (1 << conn.rcv_shift)
        assert seq.ge(conn.rcv_nxt, rcv_nxt)
        rcv_nxt = conn.rcv_nxt
        if conn.state in (State.CLOSED, State.TIME_WAIT):
            continue
        assert seq.ge(conn.rcv_adv, edge), (edge, conn.rcv_adv)
        edge = conn.rcv_adv
