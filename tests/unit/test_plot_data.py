"""What the graphs show, from scripted traces on a virtual clock: the
segments' TCB (schema 4), the time-sequence graph's bars, ACK and window
lines, SACK blocks and loss-recovery marks, the states of both ends, and
the decimation that bounds the report page."""

from __future__ import annotations

from typing import Any

import pytest
from tcpscript import OUR_ISS
from tcpscript import PEER_ISS
from tcpscript import TcpScript
from tcpscript import bulk_sender

from ustack.compiled import build
from ustack.study.load import as_records
from ustack.study.load import choose_connection
from ustack.study.plot_data import PlotData
from ustack.study.plot_data import decimate
from ustack.study.plot_data import plot_data
from ustack.study.report import select_rows
from ustack.trace.records import PeerStateChange
from ustack.trace.records import SegmentEvent

P = PEER_ISS + 1
U = OUR_ISS + 1
MSS = 1000


def sender(**config: Any) -> TcpScript:
    return bulk_sender(MSS, **config)


def graphs(t: TcpScript, *extra: Any) -> tuple[list[dict[str, Any]], PlotData]:
    events = choose_connection(as_records([*t.trace, *extra]), None).events
    events = as_records(events)
    return events, plot_data(events, 1, "test")


def fast_retransmit() -> TcpScript:
    """8 segments; the second is lost: an ACK and three duplicates bring it again."""
    t = sender()
    t.write(bytes(8000))
    t.sent()
    t.wait(0.01)
    for _ in range(4):
        t.send(".", seq=P, ack=U + 1000)
    t.expect(".", seq=U + 1000, payload=bytes(1000))
    t.wait(0.01)
    t.send(".", seq=P, ack=U + 8000)
    return t


def test_segments_carry_the_tcb_the_stack_had() -> None:
    t = fast_retransmit()
    outs = [e for e in t.trace if isinstance(e, SegmentEvent) and e.direction == "out"]
    resent = next(e for e in outs if e.note == "retransmission")
    assert resent.tcb is not None
    # RFC 5681 3.2: ssthresh = flight / 2 = 3500, cwnd = ssthresh + 3 segments
    assert resent.tcb["ssthresh"] == 3500
    assert resent.tcb["cwnd"] == 3500 + 3 * MSS
    assert resent.tcb["flight"] == 7000  # SND.MAX - SND.UNA after the first segment's ACK
    assert resent.tcb["snd_wnd"] == 65535
    first = outs[0]  # the SYN,ACK: no loss yet, no RTT sample yet
    assert first.tcb is not None and "ssthresh" not in first.tcb and "srtt" not in first.tcb
    assert first.tcb["rto"] == 1.0  # RFC 6298 2.1
    last_in = [e for e in t.trace if isinstance(e, SegmentEvent) and e.direction == "in"][-1]
    assert last_in.tcb is not None and last_in.tcb["flight"] == 0
    assert last_in.tcb["cwnd"] == 3500  # RFC 6582: the full ACK deflates to ssthresh


def test_time_sequence_bars_acks_window_and_the_fast_retransmit_mark() -> None:
    _events, data = graphs(fast_retransmit())
    assert data.sender == "ustack"
    assert [(s.start, s.end, s.kind) for s in data.sent] == [
        *((1 + n * MSS, 1 + (n + 1) * MSS, "new") for n in range(8)),
        (1001, 2001, "retransmission"),
    ]
    acks = [(a.ack, a.edge) for a in data.acked]
    assert (1001, 1001 + 65535) in acks and acks[-1] == (8001, 8001 + 65535)
    assert not data.window_scaled  # neither SYN carried a window scale
    assert [m.label for m in data.markers] == ["fast retransmit", "recovery over"]
    fast = data.markers[0]
    assert fast.seq == 1001 and fast.time == data.sent[-1].time
    # time runs from the connection's first event: the SYN at t = 0
    assert data.acked[0].time == 0.0
    cwnd_times, cwnds = data.series("cwnd")
    assert len(cwnd_times) == len(cwnds) > 10 and cwnds[-1] == 3500


def test_rto_is_marked_and_the_rto_backs_off() -> None:
    t = sender()
    t.write(bytes(3000))
    t.sent()
    t.at(1.0)  # no ACK: the RTO fires and resends the first segment
    t.expect(".", seq=U, payload=bytes(1000))
    _events, data = graphs(t)
    assert [m.label for m in data.markers] == ["RTO"]
    assert data.sent[-1].kind == "retransmission" and data.sent[-1].start == 1
    _times, rtos = data.series("rto")
    assert rtos[0] == 1.0 and rtos[-1] == 2.0  # RFC 6298 5.5: doubled


def test_sack_blocks_are_relative_to_our_isn() -> None:
    t = TcpScript(listen=80, congestion_control="newreno")
    t.establish(mss=MSS, win=65535, sack_permitted=True)
    t.write(bytes(4000))
    t.sent()
    t.send(".", seq=P, ack=U, sack=((U + 1000, U + 2000),))
    _events, data = graphs(t)
    assert [(s.start, s.end) for s in data.sacked] == [(1001, 2001)]


def test_state_timeline_of_both_ends() -> None:
    t = sender()
    t.close()
    t.expect("F.", seq=U, ack=P)
    t.send("F.", seq=P, ack=U + 1)
    peer = [
        PeerStateChange(-0.001, None, "198.18.0.2", 80, "198.18.0.1", 40000, "CLOSED", "SYN_SENT"),
        PeerStateChange(0.0, 1, "198.18.0.2", 80, "198.18.0.1", 40000, "SYN_SENT", "ESTABLISHED"),
    ]
    _events, data = graphs(t, *peer)
    ours = [s.state for s in data.states if s.side == "ustack"]
    assert ours[:3] == ["LISTEN", "SYN_RECEIVED", "ESTABLISHED"]
    assert ours[-1] in ("TIME_WAIT", "CLOSING", "CLOSED")
    linux = [s.state for s in data.states if s.side == "Linux"]
    assert linux == ["SYN_SENT", "ESTABLISHED"]
    assert all(s.end >= s.start for s in data.states)


def long_transfer(segments: int) -> TcpScript:
    """ustack sends `segments` segments, each ACKed, one lost and resent by RTO."""
    t = sender(initial_window_segments=1)
    for n in range(segments):
        t.write(bytes(MSS))
        t.sent()
        t.wait(0.001)
        if n == segments // 2:
            t.wait(2.0)  # this one is never ACKed: the RTO resends it
            t.sent()
        t.send(".", seq=P, ack=U + (n + 1) * MSS)
    return t


def test_decimation_bounds_the_points_and_keeps_every_retransmission() -> None:
    _events, data = graphs(long_transfer(400))
    assert len(data.sent) == 401
    small = decimate(data, 50)
    assert len([s for s in small.sent if s.kind == "new"]) <= 50
    assert [s for s in small.sent if s.kind != "new"] == [s for s in data.sent if s.kind != "new"]
    assert len(small.acked) <= 50 and len(small.tcb) <= 100
    assert small.markers == data.markers and small.states == data.states
    # The bars still cover every byte sent, from the first to the last.
    assert min(s.start for s in small.sent) == 1 and max(s.end for s in small.sent) == 400_001
    assert decimate(data, 10_000) is data  # small enough already


def test_select_rows_keeps_notable_events_and_summarises_the_rest() -> None:
    events, _data = graphs(long_transfer(400))
    rows = select_rows(events, max_rows=200)
    kept = [r for r in rows if isinstance(r, int)]
    summaries = [r for r in rows if isinstance(r, str)]
    assert len(kept) <= 200 + 2 * 40 and summaries
    assert all("plain segments left out" in s for s in summaries)
    resent = [i for i, e in enumerate(events) if e["type"] == "segment" and e.get("note")]
    assert set(resent) <= set(kept)  # every retransmission is in the table
    assert kept == sorted(kept)
    assert select_rows(events[:50]) == list(range(50))  # a short one: everything


@pytest.mark.skipif(
    build() != "pure Python",
    reason="compiled (mypyc), the demux calls tcb_snapshot directly: no patch reaches it",
)
def test_the_tcb_is_worked_out_only_with_tracing_on(monkeypatch) -> None:
    from ustack.tcp import demux

    def forbidden(_conn: object) -> dict[str, float]:
        raise AssertionError("tcb_snapshot called")

    monkeypatch.setattr(demux, "tcb_snapshot", forbidden)
    t = TcpScript(listen=80)
    t.tcp.trace = None  # tracing off: the snapshot must never be taken
    t.establish(mss=MSS, win=65535)
    t.write(bytes(3000))
    assert len(t.sent()) == 3
    t.send(".", seq=P, ack=U + 3000)
    traced = TcpScript(listen=80)  # and the patch does hit the traced path
    with pytest.raises(AssertionError, match="tcb_snapshot called"):
        traced.establish(mss=MSS, win=65535)


def test_when_the_peer_sends_the_graph_is_its_data_and_our_acks() -> None:
    t = TcpScript(listen=80)
    t.establish(mss=MSS, win=65535, sack_permitted=True)
    t.send(".", seq=P, ack=U, payload=bytes(MSS))
    t.send(".", seq=P + 2 * MSS, ack=U, payload=bytes(MSS))  # the second is missing
    t.send(".", seq=P + MSS, ack=U, payload=bytes(MSS))  # and comes late
    t.sent()
    _events, data = graphs(t)
    assert data.sender == "Linux peer"
    # Below the highest byte seen: drawn as tcptrace does, as sent again.
    assert [(s.start, s.end, s.kind) for s in data.sent] == [
        (1, 1001, "new"),
        (2001, 3001, "new"),
        (1001, 2001, "retransmission"),
    ]
    assert [a.ack for a in data.acked][-3:] == [1001, 1001, 3001]
    assert [(s.start, s.end) for s in data.sacked] == [(2001, 3001)]  # our SACK, from the IRS
