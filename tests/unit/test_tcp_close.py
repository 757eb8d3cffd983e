"""Closing: active, passive, simultaneous, half-close, abortive, TIME_WAIT.

Each test is named by the behaviour it shows; docs/behaviours.md lists the
behaviours of the teardown and the tests that show each.
Sequence numbers: the peer's data starts at P = PEER_ISS + 1, ours at U = OUR_ISS + 1.
"""

from __future__ import annotations

import sys

import pytest
from tcpscript import OUR_ISS
from tcpscript import PEER_ISS
from tcpscript import Family
from tcpscript import TcpScript

from ustack.tcp.events import Closed
from ustack.tcp.states import State

P = PEER_ISS + 1
U = OUR_ISS + 1


def established(family: Family, **config: object) -> TcpScript:
    t = TcpScript(family=family, listen=80, **config)
    t.establish()
    return t


# ---- active close -------------------------------------------------------------------


def test_active_close_full_path_and_time_wait_expiry(family: Family) -> None:
    t = established(family, msl=2.0)
    t.close()
    t.expect("F.", seq=U, ack=P)
    t.send(".", seq=P, ack=U + 1)
    t.expect_none()  # B20: the ACK of our FIN is not answered
    t.send("F.", seq=P, ack=U + 1)
    t.expect(".", seq=U + 1, ack=P + 1)  # B23
    assert t.table == {"TIME_WAIT": 1}
    t.at(3.99)
    assert t.table == {"TIME_WAIT": 1}  # B42: 2*MSL = 4 s
    t.at(4.0)
    t.expect_none()
    assert t.table == {}
    assert t.states() == ["LISTEN", "SYN_RECEIVED", "ESTABLISHED", "FIN_WAIT_1",
                          "FIN_WAIT_2", "TIME_WAIT", "CLOSED"]  # fmt: skip
    assert t.app_events()[-2:] == ["EndOfStream", "Closed"]


def test_fin_follows_queued_data(family: Family) -> None:
    t = TcpScript(family=family, listen=80)
    t.establish(mss=1460)
    t.write(b"x" * 3000)
    t.expect_many(".", ".", "P.")  # 1460 + 1460 + 80
    t.close()
    t.expect("F.", seq=U + 3000)


def test_fin_rides_on_the_last_data_segment_when_queued_together(family: Family) -> None:
    t = TcpScript(family=family, listen=80)
    t.send("S", seq=PEER_ISS, mss=1000, win=1000)
    t.expect("S.")
    t.send(".", seq=P, ack=U, win=1000)
    t.write(b"a" * 1500)  # 1000 go out, 500 wait for the window
    out = t.expect(".", seq=U, payload=b"a" * 1000)
    assert out is not None
    t.close()
    t.expect_none()
    t.send(".", seq=P, ack=U + 1000, win=1000)
    t.expect("FP.", seq=U + 1000, payload=b"a" * 500)


def test_partial_ack_keeps_fin_wait_1_and_the_fin_on_the_timer(family: Family) -> None:
    t = established(family)
    t.write(b"abc")
    t.expect("P.")
    t.close()
    t.expect("F.", seq=U + 3)
    t.send(".", seq=P, ack=U + 3)
    assert t.conn is not None and t.conn.state is State.FIN_WAIT_1
    t.at(1.0)  # RTO: only the FIN is outstanding, resent with its SEQ
    t.expect("F.", seq=U + 3)


def test_fin_is_resent_with_the_same_seq_and_backoff_then_given_up(family: Family) -> None:
    t = established(family, retries=3)
    t.close()
    t.expect("F.", seq=U, ack=P)
    for at in (1.0, 3.0, 7.0):
        t.at(at)
        t.expect("F.", seq=U, ack=P)
    t.at(15.0)
    t.expect_none()
    assert t.table == {}
    assert t.conn is not None and t.conn.error == "ETIMEDOUT"
    t.send(".", seq=P, ack=U + 1)  # a later segment meets no connection
    t.expect("R", seq=U + 1)


def test_data_after_shutdown_write_is_accepted_and_acked(family: Family) -> None:
    t = established(family)
    t.shutdown()
    t.expect("F.", seq=U)
    t.send("P.", seq=P, ack=U, payload=b"still talking")  # FIN_WAIT_1
    t.expect(".", ack=P + 13)
    t.send(".", seq=P + 13, ack=U + 1)
    t.send("P.", seq=P + 13, ack=U + 1, payload=b"more")  # FIN_WAIT_2
    t.expect(".", ack=P + 17)
    assert t.read() == b"still talkingmore"
    assert t.conn is not None and t.conn.state is State.FIN_WAIT_2


def test_fin_wait_2_timeout_drops_an_orphan_and_later_segments_get_rst(family: Family) -> None:
    t = established(family, fin_wait_2_timeout=5.0)
    t.close()
    t.expect("F.")
    t.send(".", seq=P, ack=U + 1)
    assert t.conn is not None and t.conn.state is State.FIN_WAIT_2
    t.at(4.9)
    assert t.table == {"FIN_WAIT_2": 1}
    t.at(5.0)
    assert t.table == {}
    assert t.events()[-1].name == "TIMEOUT_FIN_WAIT_2"
    t.send("F.", seq=P, ack=U + 1)
    t.expect("R", seq=U + 1)


def test_half_closed_fin_wait_2_waits_for_the_peer_without_timeout(family: Family) -> None:
    t = established(family, fin_wait_2_timeout=5.0)
    t.shutdown()  # not orphaned: the application still reads
    t.expect("F.")
    t.send(".", seq=P, ack=U + 1)
    t.at(100.0)
    assert t.table == {"FIN_WAIT_2": 1}


@pytest.mark.parametrize(("ack", "state"), [(U, "FIN_WAIT_1"), (U + 1, "FIN_WAIT_2")])
def test_new_data_for_an_orphaned_connection_gets_rst_and_aborts(
    ack: int, state: str, family: Family
) -> None:
    t = established(family)
    t.close()
    t.expect("F.")
    t.send("P.", seq=P, ack=ack, payload=b"too late")
    t.expect("R.", seq=U + 1, ack=P)
    assert t.table == {}
    assert t.states()[-2:] == [state, "CLOSED"]
    assert t.events()[-1].name == "RCV_DATA_ORPHANED"


# ---- passive close -----------------------------------------------------------------


def test_passive_close_full_path(family: Family) -> None:
    t = established(family)
    t.send("F.", seq=P, ack=U)
    t.expect(".", seq=U, ack=P + 1)
    assert t.conn is not None and t.conn.state is State.CLOSE_WAIT
    assert t.read() == b"" and t.conn.at_eof
    t.close()
    t.expect("F.", seq=U, ack=P + 1)
    t.send(".", seq=P + 1, ack=U + 1)
    t.expect_none()
    assert t.table == {}
    assert t.states()[2:] == ["ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"]
    assert t.apps[t.conn].events[-1] == Closed(None)


def test_fin_is_acked_even_when_our_receive_window_is_zero(family: Family) -> None:
    t = established(family, receive_buffer=4000, window_scaling=False)
    t.send("P.", seq=P, ack=U, payload=b"z" * 4000)
    t.expect(".", ack=P + 4000, win=0)
    t.send("F.", seq=P + 4000, ack=U)
    t.expect(".", ack=P + 4001, win=0)
    assert t.conn is not None and t.conn.state is State.CLOSE_WAIT
    assert len(t.read()) == 4000 and t.read() == b"" and t.conn.at_eof


def test_fin_beyond_a_hole_is_held_until_the_hole_fills(family: Family) -> None:
    t = established(family)
    t.send("F.", seq=P + 5, ack=U, payload=b"world")
    t.expect(".", ack=P)  # duplicate ACK for RCV.NXT, FIN not acknowledged
    assert t.conn is not None and t.conn.state is State.ESTABLISHED
    t.send("P.", seq=P, ack=U, payload=b"hello")
    t.expect(".", ack=P + 11)  # data and FIN together
    assert t.conn.state is State.CLOSE_WAIT
    assert t.read() == b"helloworld"


def test_fin_carrying_data(family: Family) -> None:
    t = established(family)
    t.send("FP.", seq=P, ack=U, payload=b"last words")
    t.expect(".", ack=P + 11)
    assert t.read() == b"last words"
    assert t.conn is not None and t.conn.at_eof and t.conn.state is State.CLOSE_WAIT


def test_send_still_works_in_close_wait(family: Family) -> None:
    t = established(family)
    t.send("F.", seq=P, ack=U)
    t.expect(".")
    t.write(b"reply")
    t.expect("P.", seq=U, ack=P + 1, payload=b"reply")


def test_segment_after_last_ack_has_closed_gets_rst(family: Family) -> None:
    t = established(family)
    t.send("F.", seq=P, ack=U)
    t.expect(".")
    t.close()
    t.expect("F.")
    t.send(".", seq=P + 1, ack=U + 1)
    assert t.table == {}
    t.send(".", seq=P + 1, ack=U + 1)  # a duplicate ACK
    t.expect("R", seq=U + 1)


def test_old_ack_in_last_ack_keeps_the_fin_on_the_timer(family: Family) -> None:
    t = established(family)
    t.send("F.", seq=P, ack=U)
    t.expect(".")
    t.close()
    t.expect("F.", seq=U)
    t.send(".", seq=P + 1, ack=U)  # old: does not cover the FIN
    t.expect_none()
    assert t.conn is not None and t.conn.state is State.LAST_ACK
    t.at(1.0)
    t.expect("F.", seq=U)


def test_data_beyond_the_peers_fin_is_dropped(family: Family) -> None:
    t = established(family)
    t.send("F.", seq=P, ack=U)
    t.expect(".")
    t.send("P.", seq=P + 1, ack=U, payload=b"ghost")
    assert t.read() == b""
    assert t.conn is not None and t.conn.state is State.CLOSE_WAIT


# ---- simultaneous close ------------------------------------------------------------


def test_simultaneous_close_goes_through_closing_to_time_wait(family: Family) -> None:
    t = established(family)
    t.close()
    t.expect("F.", seq=U, ack=P)
    t.send("F.", seq=P, ack=U)  # their FIN crossed ours
    t.expect(".", seq=U + 1, ack=P + 1)
    assert t.conn is not None and t.conn.state is State.CLOSING
    t.send(".", seq=P + 1, ack=U + 1)
    assert t.table == {"TIME_WAIT": 1}
    assert t.states()[3:] == ["FIN_WAIT_1", "CLOSING", "TIME_WAIT"]


def test_peer_fin_that_acks_our_fin_goes_straight_to_time_wait(family: Family) -> None:
    t = established(family)
    t.close()
    t.expect("F.")
    t.send("F.", seq=P, ack=U + 1)
    t.expect(".", ack=P + 1)
    assert t.states()[3:] == ["FIN_WAIT_1", "TIME_WAIT"]


def test_our_fin_still_queued_when_the_peers_fin_arrives_is_sent_and_resent(family: Family) -> None:
    t = TcpScript(family=family, listen=80)
    t.send("S", seq=PEER_ISS, win=100)
    t.expect("S.")
    t.send(".", seq=P, ack=U, win=100)
    t.write(b"q" * 200)
    t.expect(".", payload=b"q" * 100)
    t.close()  # our FIN waits behind data the window holds back
    t.expect_none()
    t.send("F.", seq=P, ack=U + 100, win=100)
    t.expect("FP.", seq=U + 100, ack=P + 1, payload=b"q" * 100)
    assert t.conn is not None and t.conn.state is State.CLOSING
    t.at(1.0)
    t.expect("FP.", seq=U + 100)  # retransmitted in CLOSING until ACKed
    t.send(".", seq=P + 1, ack=U + 201)
    assert t.table == {"TIME_WAIT": 1}


def test_out_of_window_segment_in_closing_gets_an_ack(family: Family) -> None:
    t = established(family)
    t.close()
    t.expect("F.")
    t.send("F.", seq=P, ack=U)
    t.expect(".")
    for flags in ("S", "S.", ".", "F.", "P."):
        t.send(flags, seq=P + 100000, ack=U, payload=b"x" if flags == "P." else b"")
        t.expect(".", seq=U + 1, ack=P + 1)
    assert t.conn is not None and t.conn.state is State.CLOSING


# ---- half-close and abortive close -----------------------------------------------------


def test_shutdown_write_sends_fin_then_write_fails_and_read_goes_on(family: Family) -> None:
    t = established(family)
    t.shutdown()
    t.expect("F.")
    with pytest.raises(BrokenPipeError):
        t.write(b"nope")
    t.send("P.", seq=P, ack=U + 1, payload=b"data")
    t.expect(".")
    assert t.read() == b"data"


def test_shutdown_read_sends_nothing_and_a_later_close_sends_fin(family: Family) -> None:
    t = established(family)
    assert t.conn is not None
    t.conn.shutdown_read()
    t.expect_none()
    assert t.read() == b""
    t.close()
    t.expect("F.", seq=U)


def close_with_unread_data(family: Family, flags: str, rcv_nxt: int) -> TcpScript:
    """The peer sends b"unread" with `flags`; we ACK it, the application
    closes without reading, and we answer RST,ACK at `rcv_nxt`: nothing stays."""
    t = established(family)
    t.send(flags, seq=P, ack=U, payload=b"unread")
    t.expect(".")
    t.close()
    t.expect("R.", seq=U, ack=rcv_nxt)
    assert t.table == {}
    return t


def test_close_with_unread_data_sends_rst_instead_of_fin(family: Family) -> None:
    t = close_with_unread_data(family, "P.", rcv_nxt=P + 6)
    assert t.events()[-1].name == "APP_CLOSE_UNREAD"


def test_close_in_close_wait_with_unread_data_sends_rst(family: Family) -> None:
    close_with_unread_data(family, "FP.", rcv_nxt=P + 7)  # the FIN takes a sequence number too


def test_abort_sends_rst_ack_and_frees_the_connection(family: Family) -> None:
    t = established(family)
    t.write(b"pending")
    t.expect("P.")
    t.abort()
    t.expect("R.", seq=U + 7, ack=P)
    assert t.table == {}


def test_exact_rst_aborts_with_econnreset_and_later_segments_get_rst(family: Family) -> None:
    t = established(family)
    t.send("R", seq=P)
    t.expect_none()
    assert t.conn is not None and t.conn.state is State.CLOSED
    assert t.conn.error == "ECONNRESET"
    with pytest.raises(ConnectionError):
        t.write(b"x")
    t.send(".", seq=P, ack=U)
    t.expect("R", seq=U)


# ---- TIME_WAIT ---------------------------------------------------------------------------


def in_time_wait(family: Family, **config: object) -> TcpScript:
    t = established(family, **config)
    t.close()
    t.expect("F.")
    t.send("F.", seq=P, ack=U + 1)
    t.expect(".")
    assert t.table == {"TIME_WAIT": 1}
    return t


def test_retransmitted_fin_in_time_wait_is_acked_and_restarts_2msl(family: Family) -> None:
    t = in_time_wait(family, msl=1.0)
    t.at(1.5)
    t.send("F.", seq=P, ack=U + 1)
    t.expect(".", seq=U + 1, ack=P + 1)
    t.at(3.4)  # 2 s after 1.5: still there
    assert t.table == {"TIME_WAIT": 1}
    t.at(3.5)
    assert t.table == {}


def test_old_ack_or_data_in_time_wait_gets_an_ack(family: Family) -> None:
    t = in_time_wait(family)
    t.send(".", seq=P - 500, ack=U)
    t.expect(".", seq=U + 1, ack=P + 1)
    t.send("P.", seq=P - 3, ack=U + 1, payload=b"old")
    t.expect(".", seq=U + 1, ack=P + 1)
    assert t.table == {"TIME_WAIT": 1}


def test_rst_in_time_wait_is_ignored_by_default_per_rfc_1337(family: Family) -> None:
    t = in_time_wait(family)
    t.send("R", seq=P + 1)
    assert t.table == {"TIME_WAIT": 1}
    assert any("RFC 1337" in d for d in t.decisions())


def test_rst_in_time_wait_closes_it_when_configured(family: Family) -> None:
    t = in_time_wait(family, rfc1337=False)
    t.send("R", seq=P + 1)
    assert t.table == {}


def test_new_syn_above_rcv_nxt_reopens_a_tuple_in_time_wait(family: Family) -> None:
    t = in_time_wait(family)
    old = t.conn
    t.send("S", seq=P + 100000)
    out = t.expect("S.", ack=P + 100001)
    assert old is not None and old.state is State.CLOSED
    assert out.seq != OUR_ISS + 0 or out.seq > U + 1  # a fresh ISS above the old SND.NXT
    assert t.table == {"SYN_RECEIVED": 1}


def test_old_syn_in_time_wait_gets_an_ack(family: Family) -> None:
    t = in_time_wait(family)
    t.send("S", seq=PEER_ISS)  # below RCV.NXT: an old duplicate
    t.expect(".", seq=U + 1, ack=P + 1)
    assert t.table == {"TIME_WAIT": 1}


def time_wait_drops(t: TcpScript) -> dict[str, int]:
    prefix = "tcp.drop.time-wait-"
    return {k[len(prefix) :]: v for k, v in t.stack.counters.items() if k.startswith(prefix) and v}


def test_every_segment_dropped_in_time_wait_is_counted_with_its_reason(family: Family) -> None:
    """TIME_WAIT answers some segments (an ACK, a challenge ACK) but takes
    none: each is a drop, counted as tcp.drop.time-wait-REASON and traced."""
    t = in_time_wait(family)
    assert time_wait_drops(t) == {}
    t.send("R", seq=P + 1)  # RFC 1337: ignored
    t.send("R", seq=P + 50)  # in the window, not at RCV.NXT: challenged
    t.expect(".", seq=U + 1, ack=P + 1)
    assert time_wait_drops(t) == {"rst": 2}
    t.send(".", seq=P - 500, ack=U + 1)  # outside the window
    t.expect(".", seq=U + 1, ack=P + 1)
    t.send("S", seq=PEER_ISS)  # an old SYN: below the window
    t.expect(".", seq=U + 1, ack=P + 1)
    t.send("S", seq=P + 1)  # at RCV.NXT, so no new incarnation: challenged
    t.expect(".", seq=U + 1, ack=P + 1)
    t.send("P", seq=P + 1, payload=b"x")  # no ACK flag
    t.send(".", seq=P + 1, ack=U + 5000)  # an ACK of data never sent: challenged
    t.expect(".", seq=U + 1, ack=P + 1)
    t.send(".", seq=P + 1, ack=U + 1)  # a late ACK in the window
    t.send("P.", seq=P + 1, ack=U + 1, payload=b"late")  # late data
    assert time_wait_drops(t) == {
        "rst": 2, "out-of-window": 2, "syn": 1, "no-ack": 1, "bad-ack": 1, "late": 2,
    }  # fmt: skip
    drops = [e for e in t.trace if type(e).__name__ == "Drop"]
    assert [d.reason for d in drops][-1] == "time-wait-late"
    t.send("F.", seq=P, ack=U + 1)  # the FIN again is answered, not dropped
    t.expect(".", seq=U + 1, ack=P + 1)
    assert sum(time_wait_drops(t).values()) == 9
    assert t.table == {"TIME_WAIT": 1}


def test_paws_in_time_wait_is_its_own_drop_reason(family: Family) -> None:
    t = TcpScript(family=family, listen=80)
    t.send("S", seq=PEER_ISS, ts=(1000, 0))
    t.expect("S.")
    t.send(".", seq=P, ack=U, ts=(1001, 0))
    t.close()
    t.expect("F.")
    t.send("F.", seq=P, ack=U + 1, ts=(1002, 0))
    t.expect(".")
    assert t.table == {"TIME_WAIT": 1}
    t.send(".", seq=P + 1, ack=U + 1, ts=(900, 0))  # older than TS.Recent
    t.expect(".", seq=U + 1, ack=P + 1)
    assert time_wait_drops(t) == {"paws": 1}


# ---- memory ---------------------------------------------------------------------------


def test_a_forgotten_connection_is_freed_at_once_without_the_garbage_collector(
    family: Family,
) -> None:
    """The connection and its parts (sender, receiver, recovery, timers) refer
    to each other while it lives; once the demux forgets it (TIME_WAIT over),
    they let go, so reference counting frees it at once: the daemon runs full
    collections rarely, and 10,000 closed connections must not wait for one."""
    import gc

    t = established(family, msl=1.0)
    t.close()
    t.expect("F.", seq=U, ack=P)
    t.send("F.", seq=P, ack=U + 1)
    t.expect(".", seq=U + 1, ack=P + 1)
    conn = t.conn
    gc.collect()
    gc.disable()
    try:
        t.at(2.0)
        assert t.table == {}
        # Drop the script's own references, as an application would.
        t.conn = None  # type: ignore[assignment]
        t.checker = None  # type: ignore[assignment]
        t.accepted.clear()
        t.apps.clear()
        # Nothing else holds it (its parts let go: no reference back), so it
        # goes at once when `conn` does. (Counted, not a weakref: the compiled
        # build's classes take none.)
        assert sys.getrefcount(conn) == 2  # `conn` and the call's argument
        del conn
        assert gc.collect() == 0  # and no cycle among its parts was left behind
    finally:
        gc.enable()
