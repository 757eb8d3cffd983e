"""RACK's send log and loss detection (RFC 8985 6) on their own: what is
marked lost, when, and what the pipe holds. The connection-level stories
(fast retransmit, lost retransmissions, undo) are in test_tcp_recovery.py."""

from __future__ import annotations

from ustack.tcp.rack import Rack
from ustack.tcp.rack import sent_after

MSS = 1000


def log_of(rack: Rack) -> list[tuple[int, int, str]]:
    flags = [
        ("R" if e.retransmitted else "") + ("S" if e.sacked else "") + ("L" if e.lost else "")
        for e in rack.log
    ]
    return [(e.start, e.end, f) for e, f in zip(rack.log, flags, strict=True)]


def four_segments(at: float = 0.0) -> Rack:
    rack = Rack()
    for i in range(4):
        rack.on_send(i * MSS, (i + 1) * MSS, at)
    return rack


def test_sent_after_breaks_ties_by_sequence() -> None:
    assert sent_after(2.0, 100, 1.0, 500)
    assert sent_after(1.0, 500, 1.0, 100)  # same instant: the higher end is later
    assert not sent_after(1.0, 100, 1.0, 100)
    assert sent_after(1.0, 5, 1.0, 0xFFFFFFF0)  # on the sequence circle


def test_a_retransmission_splits_the_entries_it_covers() -> None:
    rack = four_segments()
    rack.on_send(500, 1500, 1.0)  # half of two segments, sent again
    assert log_of(rack) == [
        (0, 500, ""), (500, 1000, "R"), (1000, 1500, "R"), (1500, 2000, ""),
        (2000, 3000, ""), (3000, 4000, ""),
    ]  # fmt: skip
    assert rack.retransmitted_out == 2


def test_a_sack_above_a_hole_marks_it_lost_after_rtt_plus_window() -> None:
    rack = four_segments(at=1.0)
    rack.note_rtt(0.04)
    assert rack.on_sack(((2000, 3000),), now=1.04)  # the third arrived; RACK.rtt 40 ms
    window = rack.reordering_window(in_recovery=False, sacked_segments=1, srtt=0.04)
    assert window == 0.01  # min_RTT / 4
    lost, wait = rack.detect_loss(now=1.04, reo_wnd=window)
    assert lost == [] and abs(wait - 0.01) < 1e-9  # sent at the same instant: wait
    lost, wait = rack.detect_loss(now=1.05, reo_wnd=window)
    assert [(e.start, e.end) for e in lost] == [(0, 1000), (1000, 2000)] and wait == 0
    assert rack.lost_out == 2 and rack.first_lost() is rack.log[0]
    # The fourth went after the third: it is not lost, only not acknowledged yet.
    assert rack.pipe() == MSS


def test_three_sacked_segments_or_recovery_leave_no_reordering_window() -> None:
    rack = four_segments()
    rack.note_rtt(0.04)
    assert rack.reordering_window(in_recovery=True, sacked_segments=0, srtt=0.04) == 0
    assert rack.reordering_window(in_recovery=False, sacked_segments=3, srtt=0.04) == 0
    rack.on_ack(1000, now=0.04)
    rack.on_sack(((3000, 4000),), now=0.04)
    rack.on_ack(3000, now=0.041)  # 1000..3000 arrived after 3000..4000: reordering
    assert rack.reordering_seen
    assert rack.reordering_window(in_recovery=True, sacked_segments=3, srtt=0.04) == 0.01


def test_dsacks_widen_the_window_once_a_round_trip_up_to_srtt() -> None:
    rack = Rack()
    rack.note_rtt(0.04)
    rack.on_dsack(now=1.0, srtt=0.04)
    rack.on_dsack(now=1.01, srtt=0.04)  # the same round trip: no more
    assert rack.reo_wnd_mult == 2
    rack.on_dsack(now=1.05, srtt=0.04)
    assert rack.reordering_window(False, 0, srtt=0.04) == 0.03
    for _ in range(20):
        rack.on_dsack(now=rack._mult_raised_at + 1, srtt=0.04)
    assert rack.reordering_window(False, 0, srtt=0.04) == 0.04  # bounded by SRTT
    for _ in range(16):  # sixteen recoveries without a D-SACK: back to min_RTT/4
        rack.recovery_over()
    assert rack.reo_wnd_mult == 1


def test_a_retransmission_acknowledged_faster_than_min_rtt_times_nothing() -> None:
    """RFC 8985 6.2 step 2: such an ACK was for the original (a spurious
    retransmission); it must not move RACK.xmit_ts to the retransmission."""
    rack = four_segments(at=1.0)
    rack.note_rtt(0.04)
    rack.on_send(0, 1000, 1.05)
    rack.on_ack(1000, now=1.051)  # 1 ms after the retransmission
    assert rack.xmit_ts == float("-inf")
    rack.on_ack(2000, now=1.06)  # the second segment, sent at 1.0
    assert (rack.xmit_ts, rack.end_seq) == (1.0, 2000) and abs(rack.rtt - 0.06) < 1e-9


def test_a_timeout_marks_all_but_the_sacked_lost() -> None:
    rack = four_segments()
    rack.on_sack(((1000, 2000),), now=0.01)
    assert rack.mark_all_lost() == 3
    assert [f for _, _, f in log_of(rack)] == ["L", "S", "L", "L"] and rack.pipe() == 0
    rack.on_send(0, 1000, now=0.5)  # resent: in the pipe again, not lost
    assert rack.pipe() == MSS and rack.lost_out == 2
    rack.forget_sacks()
    assert rack.mark_all_lost() == 2  # the resent one, and what was SACKed (it may renege)
