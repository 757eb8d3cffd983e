"""Data transfer enough for real clients, and robustness of a live connection
(RFC 5961, acceptability). docs/behaviours.md lists which of these tests show
which behaviour of the checklist."""

from __future__ import annotations

from tcpscript import OUR_ISS
from tcpscript import PEER_ISS
from tcpscript import Family
from tcpscript import TcpScript

from ustack.tcp.states import State
from ustack.trace.records import SegmentEvent

P = PEER_ISS + 1
U = OUR_ISS + 1


def established(family: Family, **config: object) -> TcpScript:
    t = TcpScript(family=family, listen=80, **config)
    t.establish(mss=1460)
    return t


def test_in_order_data_is_delivered_and_acked(family: Family) -> None:
    t = established(family)
    t.send("P.", seq=P, ack=U, payload=b"GET / HTTP/1.0\r\n\r\n")
    t.expect(".", seq=U, ack=P + 18)
    assert t.read() == b"GET / HTTP/1.0\r\n\r\n"
    assert t.app_events() == ["Connected", "DataReceived"]


def test_out_of_order_segments_are_reassembled(family: Family) -> None:
    t = established(family)
    t.send(".", seq=P + 10, ack=U, payload=b"KLMNOPQRST")
    t.expect(".", ack=P)  # duplicate ACK: a hole at P
    t.send(".", seq=P + 5, ack=U, payload=b"FGHIJKL")  # overlaps the held one
    t.expect(".", ack=P)
    assert t.read() == b""
    t.send(".", seq=P, ack=U, payload=b"ABCDE")
    t.expect(".", ack=P + 20)
    assert t.read() == b"ABCDEFGHIJKLMNOPQRST"


def test_duplicate_and_overlapping_data_is_delivered_once(family: Family) -> None:
    t = established(family)
    t.send(".", seq=P, ack=U, payload=b"abcdef")
    t.expect(".", ack=P + 6)
    t.send(".", seq=P + 3, ack=U, payload=b"defghi")
    t.expect(".", ack=P + 9)
    t.send(".", seq=P, ack=U, payload=b"abc")  # all old: ACK again
    t.expect(".", ack=P + 9)
    assert t.read() == b"abcdefghi"


def test_receive_window_shrinks_then_reopens_after_read(family: Family) -> None:
    t = established(family, receive_buffer=8000, window_scaling=False)
    t.send(".", seq=P, ack=U, payload=b"a" * 1460)
    t.expect(".", ack=P + 1460, win=8000 - 1460)
    t.send(".", seq=P + 1460, ack=U, payload=b"b" * 1460)
    t.send(".", seq=P + 2920, ack=U, payload=b"c" * 1460)
    t.send(".", seq=P + 4380, ack=U, payload=b"d" * 1460)
    t.send(".", seq=P + 5840, ack=U, payload=b"e" * 1460)
    last = t.sent()[-1]
    assert last.window == 8000 - 5 * 1460
    t.send(".", seq=P + 7300, ack=U, payload=b"f" * 1460)  # 700 fit, the rest is trimmed
    t.expect(".", ack=P + 8000, win=0)
    t.send(".", seq=P + 8000, ack=U, payload=b"g")  # zero window: dropped, ACK
    t.expect(".", ack=P + 8000, win=0)
    assert len(t.read(5000)) == 5000
    t.expect(".", ack=P + 8000, win=5000)  # the window update


def test_data_is_sent_within_the_peers_window_and_retransmitted_on_rto(family: Family) -> None:
    t = TcpScript(family=family, listen=80)
    t.establish(mss=1000, win=3000)
    t.write(b"".join(bytes([i]) * 1000 for i in range(5)))
    out = t.expect_many(".", ".", ".")
    assert [o.seq for o in out] == [U, U + 1000, U + 2000]
    t.send(".", seq=P, ack=U + 1000, win=3000)
    t.expect(".", seq=U + 3000, payload=bytes([3]) * 1000)
    t.at(1.0)  # RTO: back to SND.UNA, one segment (cwnd = 1 MSS)
    t.expect(".", seq=U + 1000, payload=bytes([1]) * 1000)
    t.send(".", seq=P, ack=U + 2000, win=3000)
    t.expect_many(".", ".")  # cwnd 2 MSS: the next two go
    t.send(".", seq=P, ack=U + 4000, win=3000)
    t.expect("P.", seq=U + 4000, payload=bytes([4]) * 1000)
    t.send(".", seq=P, ack=U + 5000, win=3000)
    t.expect_none()
    assert t.conn is not None and t.conn.unsent_bytes == 0


def test_zero_window_probe_keeps_the_connection_alive(family: Family) -> None:
    t = TcpScript(family=family, listen=80, retries=3)
    t.establish(mss=1000, win=1000)
    t.write(b"x" * 1500)
    t.expect(".", seq=U, payload=b"x" * 1000)
    t.send(".", seq=P, ack=U + 1000, win=0)
    t.expect_none()
    for _ in range(6):  # more probes than `retries`: a peer that answers is alive
        t.wait(t.conn.recovery.rtt.rto if t.conn else 1)
        probe = t.expect(".", seq=U + 1000)
        assert len(probe.payload) == 1
        t.send(".", seq=P, ack=U + 1000, win=0)
    t.send(".", seq=P, ack=U + 1000, win=1000)
    t.expect("P.", seq=U + 1000, payload=b"x" * 500)
    assert t.conn is not None and t.conn.state is State.ESTABLISHED
    # Each probe, resent or not, is a probe in the trace, not a retransmission.
    notes = [
        e.note
        for e in t.trace
        if isinstance(e, SegmentEvent) and e.direction == "out" and e.length == 1
    ]
    assert notes == ["zero-window probe"] * 6


def test_send_buffer_is_bounded(family: Family) -> None:
    t = TcpScript(family=family, listen=80, send_buffer=4000)
    t.establish(mss=1000, win=1000)
    assert t.write(b"y" * 10000) == 4000
    t.expect(".")
    assert t.write(b"y") == 0
    t.send(".", seq=P, ack=U + 1000, win=1000)
    assert t.app_events()[-1] == "SendSpace"
    assert t.write(b"y" * 5000) == 1000


def test_sequence_numbers_wrap_around_2_to_the_32(family: Family) -> None:
    t = TcpScript(family=family, listen=80, our_iss=0xFFFFFF00)
    t.send("S", seq=0xFFFFFFF0, mss=1000)
    t.expect("S.", seq=0xFFFFFF00, ack=0xFFFFFFF1)
    t.send(".", seq=0xFFFFFFF1, ack=0xFFFFFF01)
    t.send(".", seq=0xFFFFFFF1, ack=0xFFFFFF01, payload=b"w" * 100)
    t.expect(".", ack=(0xFFFFFFF1 + 100) & 0xFFFFFFFF)
    t.write(b"v" * 1000)
    t.expect("P.", seq=0xFFFFFF01)
    t.send(".", seq=0x55, ack=(0xFFFFFF01 + 1000) & 0xFFFFFFFF)
    assert t.conn is not None and t.conn.unsent_bytes == 0
    assert t.read() == b"w" * 100


def test_segment_without_the_ack_flag_is_dropped_and_delivers_nothing(family: Family) -> None:
    t = established(family)
    t.send("P", seq=P, payload=b"no ack flag")
    t.expect_none()
    assert t.read() == b""


def test_in_window_rst_not_at_rcv_nxt_gets_a_challenge_ack(family: Family) -> None:
    t = established(family)
    t.send("R", seq=P + 100)
    t.expect(".", seq=U, ack=P)
    assert t.conn is not None and t.conn.state is State.ESTABLISHED


def test_rst_outside_the_window_is_dropped_silently(family: Family) -> None:
    t = established(family)
    t.send("R", seq=P + 10_000_000)
    t.send("R", seq=P - 1)
    t.expect_none()
    assert t.conn is not None and t.conn.state is State.ESTABLISHED


def test_syn_in_established_gets_a_challenge_ack_not_a_reset(family: Family) -> None:
    t = established(family)
    t.send("S", seq=P + 5)
    t.expect(".", seq=U, ack=P)
    t.send("S", seq=PEER_ISS)  # even the original SYN again
    t.expect(".", seq=U, ack=P)
    assert t.conn is not None and t.conn.state is State.ESTABLISHED


def test_ack_of_data_never_sent_is_dropped_with_an_ack(family: Family) -> None:
    t = established(family)
    t.send("P.", seq=P, ack=U + 5000, payload=b"bogus")
    t.expect(".", seq=U, ack=P)
    assert t.read() == b""  # the segment was dropped, data too


def test_challenge_acks_are_rate_limited_per_second(family: Family) -> None:
    t = established(family, challenge_ack_limit=3)
    for i in range(10):
        t.send("R", seq=P + 1 + i)
    assert len(t.sent()) == 3
    # Counted, sent and withheld, for `ustack stats` (Linux: TCPChallengeACK).
    assert t.stack.counters["tcp.out.challenge-ack"] == 3
    assert t.stack.counters["tcp.out.challenge-ack-limited"] == 7
    t.wait(1.0)
    t.send("R", seq=P + 50)
    t.expect(".")
    assert t.stack.counters["tcp.out.challenge-ack"] == 4


def test_out_of_window_data_gets_a_pure_ack_of_rcv_nxt(family: Family) -> None:
    t = established(family)
    t.send("P.", seq=P + 1_000_000, ack=U, payload=b"far away")
    t.expect(".", seq=U, ack=P)
    t.send("P.", seq=P - 100, ack=U, payload=b"old")
    t.expect(".", seq=U, ack=P)
    assert t.read() == b""


def test_unanswered_zero_window_probes_give_up_after_the_retries(family: Family) -> None:
    """A peer that closed its window and then vanished: the persist timer
    probes `retries` times, backing off, then the connection times out. The
    probes cut no congestion window (a probe is not a loss)."""
    t = TcpScript(family=family, listen=80, retries=3)
    t.establish(mss=1000, win=1000)
    t.write(b"x" * 1500)
    t.expect(".", seq=U, payload=b"x" * 1000)
    t.send(".", seq=P, ack=U + 1000, win=0)
    conn = t.conn
    assert conn is not None
    cwnd = conn.cwnd
    times = []
    for _ in range(3):
        t.wait(conn.recovery.rtt.rto)
        t.expect(".", seq=U + 1000, payload=b"x")
        times.append(t.now)
    assert times == [1.0, 3.0, 7.0]  # 1, 2, 4 s: backed off
    assert conn.cwnd == cwnd and t.stack.counters["tcp.persist-probes"] == 3
    t.wait(conn.recovery.rtt.rto)
    assert conn.state is State.CLOSED and conn.error == "ETIMEDOUT"
    assert not any("retransmission timeout" in d for d in t.decisions())
