"""Opening a connection: passive, active, simultaneous; closed ports and listeners.

Each test is named by the behaviour it shows; docs/behaviours.md lists the
behaviours of the handshake and the tests that show each.
"""

from __future__ import annotations

import errno

import pytest
from tcpscript import OUR_ISS
from tcpscript import PEER_ISS
from tcpscript import PEER_PORT
from tcpscript import Family
from tcpscript import TcpScript

from ustack.tcp.events import Closed
from ustack.tcp.isn import IsnGenerator
from ustack.tcp.states import State


def test_syn_to_a_closed_port_gets_rst_ack_and_leaves_no_state(family: Family) -> None:
    t = TcpScript(family=family, listen=None)
    t.send("S", seq=PEER_ISS, dport=81)
    t.expect("R.", seq=0, ack=PEER_ISS + 1)
    assert t.table == {}


def test_ack_to_a_closed_port_gets_a_bare_rst_with_seq_from_its_ack(family: Family) -> None:
    t = TcpScript(family=family, listen=None)
    t.send(".", seq=7, ack=123456, dport=81)
    t.expect("R", seq=123456)


def test_rst_to_a_closed_port_or_a_listener_is_never_answered(family: Family) -> None:
    t = TcpScript(family=family, listen=80)
    t.send("R", seq=1, dport=81)
    t.send("R.", seq=1, ack=5, dport=81)
    t.send("R", seq=1)  # to the listener
    t.expect_none()


def test_passive_open_answers_syn_with_synack_and_establishes_on_the_ack(family: Family) -> None:
    t = TcpScript(family=family, listen=80)
    t.send("S", seq=PEER_ISS, mss=1400, ws=7)
    out = t.expect("S.", seq=OUR_ISS, ack=PEER_ISS + 1, mss=t.mss)
    assert out.options.window_scale is not None and out.options.window_scale <= 14
    assert not out.options.sack_permitted and out.options.timestamps is None  # not offered
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1)
    t.expect_none()
    assert t.states() == ["LISTEN", "SYN_RECEIVED", "ESTABLISHED"]
    assert t.app_events() == ["Connected"]
    assert t.conn is not None and t.conn.peer_mss == 1400


def test_synack_offers_no_window_scale_unless_the_syn_did(family: Family) -> None:
    t = TcpScript(family=family, listen=80)
    t.send("S", seq=PEER_ISS, mss=1460, sack_permitted=True, ts=(1, 0))
    out = t.expect("S.", ack=PEER_ISS + 1)
    assert out.options.window_scale is None
    # SACK-permitted and timestamps are echoed because they were offered; our
    # TSval, and their TSval 1 as TSecr (RFC 7323 3.2).
    assert out.options.sack_permitted and out.options.timestamps == (OUR_ISS, 1)


def test_synack_offers_no_sack_permitted_unless_the_syn_did(family: Family) -> None:
    t = TcpScript(family=family, listen=80)
    t.send("S", seq=PEER_ISS, mss=1460, ws=7)
    assert not t.expect("S.", ack=PEER_ISS + 1).options.sack_permitted


def test_retransmitted_syn_in_syn_received_gets_the_same_synack(family: Family) -> None:
    t = TcpScript(family=family, listen=80)
    t.send("S", seq=PEER_ISS)
    t.expect("S.", seq=OUR_ISS, ack=PEER_ISS + 1)
    t.send("S", seq=PEER_ISS)
    t.expect("S.", seq=OUR_ISS, ack=PEER_ISS + 1)
    assert t.table == {"SYN_RECEIVED": 1}


def test_bad_ack_in_syn_received_gets_rst_and_does_not_establish(family: Family) -> None:
    t = TcpScript(family=family, listen=80)
    t.send("S", seq=PEER_ISS)
    t.expect("S.")
    for bad_ack in (OUR_ISS, OUR_ISS + 2, OUR_ISS + 1000):
        t.send(".", seq=PEER_ISS + 1, ack=bad_ack)
        t.expect("R", seq=bad_ack)
    assert t.table == {"SYN_RECEIVED": 1}
    assert t.accepted == []


def test_rst_in_syn_received_drops_the_embryo_and_a_late_ack_gets_rst(family: Family) -> None:
    t = TcpScript(family=family, listen=80)
    t.send("S", seq=PEER_ISS)
    t.expect("S.")
    t.send("R", seq=PEER_ISS + 1)
    t.expect_none()
    assert t.table == {}
    embryo = next(e for e in t.trace if getattr(e, "new", None) is State.SYN_RECEIVED)
    assert str(embryo.old) == "LISTEN"
    # A late ACK for it now meets the listener, which answers RST.
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1)
    t.expect("R", seq=OUR_ISS + 1)


def test_unanswered_synack_backs_off_then_the_half_open_entry_goes_silently(family: Family) -> None:
    t = TcpScript(family=family, listen=80, synack_retries=3)
    t.send("S", seq=PEER_ISS)
    t.expect("S.", seq=OUR_ISS)
    for at in (1.0, 3.0, 7.0):  # 1 s, then 2 s, 4 s later
        t.at(at - 0.01)
        t.expect_none()
        t.at(at)
        t.expect("S.", seq=OUR_ISS, ack=PEER_ISS + 1)
    t.at(15.0)  # the 4th timeout exceeds synack_retries: gone, nothing sent
    t.expect_none()
    assert t.table == {}


def test_final_ack_without_the_negotiated_timestamps_still_establishes(family: Family) -> None:
    t = TcpScript(family=family, listen=80)
    t.send("S", seq=PEER_ISS, ts=(100, 0))
    t.expect("S.")
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1)
    assert t.conn is not None and t.conn.state is State.ESTABLISHED


def test_syn_with_ecn_setup_flags_is_answered_never_reset(family: Family) -> None:
    t = TcpScript(family=family, listen=80)
    t.send("SEW", seq=PEER_ISS)
    t.expect("S.E", ack=PEER_ISS + 1)  # ECN agreed (RFC 3168 6.1.1, tests/unit/test_ecn.py)
    off = TcpScript(family=family, listen=80, ecn="off")
    off.send("SEW", seq=PEER_ISS)
    off.expect("S.", ack=PEER_ISS + 1)  # ECN off: just a SYN


def test_closing_a_listener_resets_its_half_open_connections(family: Family) -> None:
    t = TcpScript(family=family, listen=80)
    t.send("S", seq=PEER_ISS)
    t.expect("S.")
    assert t.listener is not None
    t.tcp.close_listener(t.listener, t.now)
    t.expect("R.", seq=OUR_ISS + 1, ack=PEER_ISS + 1)
    assert t.table == {}
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1)  # the late handshake ACK
    t.expect("R", seq=OUR_ISS + 1)


def test_backlog_bounds_half_open_connections(family: Family) -> None:
    t = TcpScript(family=family, listen=80, backlog=2, syncookies=False)
    for port in (1, 2, 3):
        t.send("S", seq=PEER_ISS, sport=port)
    assert len(t.sent()) == 2
    assert t.stack.counters["tcp.drop.backlog-full"] == 1


def test_full_backlog_answers_with_a_syn_cookie_and_keeps_no_state(family: Family) -> None:
    t = TcpScript(family=family, listen=80, backlog=1)
    t.send("S", seq=PEER_ISS, sport=1)
    t.expect("S.")
    t.send("S", seq=PEER_ISS, sport=2, mss=1400, ws=7, sack_permitted=True)
    cookie = t.expect("S.", ack=PEER_ISS + 1, mss=t.mss)
    # Only the MSS: what a cookie cannot carry is not offered (RFC 4987 3.6).
    assert cookie.options.window_scale is None and not cookie.options.sack_permitted
    assert t.table == {"SYN_RECEIVED": 1}
    assert t.stack.counters["tcp.syncookies.sent"] == 1
    # The final ACK returns the cookie: established, with the MSS it encoded.
    t.send(".", seq=PEER_ISS + 1, ack=cookie.seq + 1, sport=2, payload=b"hi")
    t.expect(".", seq=cookie.seq + 1, ack=PEER_ISS + 3)
    conn = t.accepted[-1]
    assert str(conn.state) == "ESTABLISHED" and conn.peer_mss == 1220
    assert t.read() == b"hi"
    assert t.states(conn) == ["LISTEN", "ESTABLISHED"]


def test_forged_or_stale_cookies_get_rst(family: Family) -> None:
    t = TcpScript(family=family, listen=80, backlog=1)
    t.send("S", seq=PEER_ISS, sport=1)
    t.expect("S.")
    t.send("S", seq=PEER_ISS, sport=2)
    cookie = t.expect("S.")
    forged = cookie.seq ^ (0x10 << 27)  # not a counter value of ours
    t.send(".", seq=PEER_ISS + 1, ack=forged + 1, sport=2)
    t.expect("R", seq=forged + 1)
    t.at(200.0)  # two periods later the cookie is stale
    t.sent()
    t.send(".", seq=PEER_ISS + 1, ack=cookie.seq + 1, sport=2)
    t.expect("R")
    assert t.stack.counters["tcp.syncookies.accepted"] == 0


def test_cookie_handshake_survives_losing_its_final_ack_and_first_data(family: Family) -> None:
    """Under a SYN flood the peer's final ACK and its request may be lost; its
    next segment (SEQ past ISN + 1, e.g. the answer to a second SYN,ACK)
    cannot be checked. A RST would kill the connection (curl: "connection
    reset by peer"): it is dropped, and the peer's retransmission from
    ISN + 1 completes the handshake."""
    t = TcpScript(family=family, listen=80, backlog=1)
    t.send("S", seq=PEER_ISS, sport=1)
    t.expect("S.")
    t.send("S", seq=PEER_ISS, sport=2)
    cookie = t.expect("S.")
    t.send(".", seq=PEER_ISS + 75, ack=cookie.seq + 1, sport=2)  # after 74 lost bytes
    t.expect_none()
    assert t.stack.counters["tcp.drop.syncookie-unverified"] == 1
    request = b"x" * 74
    t.send("P.", seq=PEER_ISS + 1, ack=cookie.seq + 1, sport=2, payload=request)  # resent
    t.expect(".", seq=cookie.seq + 1, ack=PEER_ISS + 75)
    assert t.read() == request
    assert t.stack.counters["tcp.syncookies.accepted"] == 1


def test_connect_sends_syn_with_options_and_times_out_with_backoff(family: Family) -> None:
    t = TcpScript(family=family, listen=None, syn_retries=3)
    conn = t.connect()
    out = t.expect("S", seq=OUR_ISS, ack=0, mss=t.mss)
    assert out.options.window_scale is not None
    for at in (1.0, 3.0, 7.0):
        t.at(at)
        t.expect("S", seq=OUR_ISS)
    t.at(15.0)
    t.expect_none()
    assert conn.state is State.CLOSED and conn.error == "ETIMEDOUT"
    assert t.apps[conn].events[-1] == Closed("ETIMEDOUT")
    assert t.states() == ["CLOSED", "SYN_SENT", "CLOSED"]


def test_synack_acking_our_syn_establishes_an_active_open(family: Family) -> None:
    t = TcpScript(family=family, listen=None)
    conn = t.connect(port=8080)
    t.expect("S", seq=OUR_ISS)
    t.send("S.", seq=PEER_ISS, ack=OUR_ISS + 1, sport=8080, mss=1000, ws=2)
    t.expect(".", seq=OUR_ISS + 1, ack=PEER_ISS + 1)
    assert conn.state is State.ESTABLISHED
    assert conn.peer_mss == 1000 and conn.snd_shift == 2
    assert t.app_events() == ["Connected"]


def test_bad_ack_in_syn_sent_gets_rst_and_the_connect_goes_on(family: Family) -> None:
    t = TcpScript(family=family, listen=None)
    conn = t.connect(port=8080)
    t.expect("S")
    for bad in (OUR_ISS, OUR_ISS + 5):
        t.send("S.", seq=PEER_ISS, ack=bad, sport=8080)
        t.expect("R", seq=bad)
    t.send(".", seq=PEER_ISS, ack=OUR_ISS + 9, sport=8080)
    t.expect("R", seq=OUR_ISS + 9)
    assert conn.state is State.SYN_SENT


def test_rst_ack_of_our_syn_refuses_the_connect_and_other_rsts_are_ignored(family: Family) -> None:
    t = TcpScript(family=family, listen=None)
    conn = t.connect(port=8080)
    t.expect("S")
    t.send("R", seq=0, sport=8080)  # no ACK: ignored
    t.send("R.", seq=0, ack=OUR_ISS + 7, sport=8080)  # wrong ACK: RST is not answered
    assert conn.state is State.SYN_SENT
    t.send("R.", seq=0, ack=OUR_ISS + 1, sport=8080)
    t.expect_none()
    assert conn.state is State.CLOSED and conn.error == "ECONNREFUSED"
    assert t.table == {}


def test_simultaneous_open_goes_through_syn_received_with_the_same_iss(family: Family) -> None:
    t = TcpScript(family=family, listen=None)
    conn = t.simultaneous_open(mss=1460)  # our SYN,ACK has our ISS again
    assert conn.state is State.SYN_RECEIVED
    t.send("S.", seq=PEER_ISS, ack=OUR_ISS + 1, sport=8080)  # the peer's SYN,ACK
    t.expect(".", seq=OUR_ISS + 1, ack=PEER_ISS + 1)
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1, sport=8080)
    assert conn.state is State.ESTABLISHED
    assert t.states() == ["CLOSED", "SYN_SENT", "SYN_RECEIVED", "ESTABLISHED"]


def test_simultaneous_open_reset_is_refused(family: Family) -> None:
    t = TcpScript(family=family, listen=None)
    conn = t.simultaneous_open()
    t.send("R", seq=PEER_ISS + 1, sport=8080)
    assert conn.state is State.CLOSED and conn.error == "ECONNREFUSED"


def test_close_in_syn_sent_sends_nothing_and_a_late_synack_gets_rst(family: Family) -> None:
    t = TcpScript(family=family, listen=None)
    conn = t.connect(port=8080)
    t.expect("S")
    t.close()
    t.expect_none()
    assert conn.state is State.CLOSED and t.table == {}
    t.send("S.", seq=PEER_ISS, ack=OUR_ISS + 1, sport=8080)
    t.expect("R", seq=OUR_ISS + 1)


def test_isn_is_a_4us_clock_plus_a_keyed_hash_of_the_4_tuple() -> None:
    isn = IsnGenerator(b"k" * 16)
    a = isn(1, 80, 2, PEER_PORT, 0.0)
    assert isn(1, 80, 2, PEER_PORT, 1.0) == (a + 250_000) & 0xFFFFFFFF  # 4 us ticks
    assert isn(1, 80, 2, PEER_PORT + 1, 0.0) != a  # another tuple, another offset
    assert IsnGenerator(b"x" * 16)(1, 80, 2, PEER_PORT, 0.0) != a  # the secret matters


def test_window_in_a_syn_is_never_scaled(family: Family) -> None:
    t = TcpScript(family=family, listen=80, receive_buffer=1 << 20)
    t.send("S", seq=PEER_ISS, ws=7, win=1000)
    out = t.expect("S.")
    assert out.window == 0xFFFF and out.options.window_scale == 5
    assert t.conn is None  # still SYN_RECEIVED
    conn = t.tcp.connections[next(iter(t.tcp.connections))]
    assert conn.snd_wnd == 1000  # the SYN's window, unscaled
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1, win=1000)
    assert conn.snd_wnd == 1000 << 7


# ---- the connection limit (TcpConfig.max_connections) ------------------------------------


def test_a_syn_beyond_the_connection_limit_is_dropped_and_counted_until_one_closes(
    family: Family,
) -> None:
    t = TcpScript(family=family, listen=80, max_connections=2)
    t.establish()
    t.send("S", seq=PEER_ISS, sport=2)  # half-open: it counts too
    t.expect("S.", seq=OUR_ISS, ack=PEER_ISS + 1)
    t.send("S", seq=PEER_ISS, sport=3)
    t.expect_none()  # no SYN,ACK, no RST, no SYN cookie: the peer will try again
    assert t.stack.counters["tcp.drop.connection-limit"] == 1
    assert t.table == {"ESTABLISHED": 1, "SYN_RECEIVED": 1}
    with pytest.raises(OSError) as refused:
        t.tcp.connect(t.peer, 8080, t.now)
    assert refused.value.errno == errno.ENOBUFS
    t.abort()  # the established one goes: room again
    t.expect("R.")
    t.send("S", seq=PEER_ISS, sport=3)
    t.expect("S.", seq=OUR_ISS, ack=PEER_ISS + 1)
    assert t.table == {"SYN_RECEIVED": 2}


def test_a_full_table_ends_its_oldest_time_wait_for_a_new_syn(family: Family) -> None:
    t = TcpScript(family=family, listen=80, max_connections=1)
    old = t.establish()
    t.close()
    t.expect("F.", seq=OUR_ISS + 1, ack=PEER_ISS + 1)
    t.send("F.", seq=PEER_ISS + 1, ack=OUR_ISS + 2)
    t.expect(".", seq=OUR_ISS + 2, ack=PEER_ISS + 2)
    assert t.table == {"TIME_WAIT": 1}
    t.send("S", seq=PEER_ISS, sport=2)
    t.expect("S.", seq=OUR_ISS, ack=PEER_ISS + 1)
    assert t.states(old)[-2:] == ["TIME_WAIT", "CLOSED"]
    assert t.stack.counters["tcp.time-wait-reclaimed"] == 1
    assert t.table == {"SYN_RECEIVED": 1}


def test_a_syn_with_fin_to_a_listener_is_dropped_and_counted(family: Family) -> None:
    t = TcpScript(family=family, listen=80)
    t.send("SF", seq=PEER_ISS)
    t.expect_none()  # Linux discards it in LISTEN too (tcp_rcv_state_process)
    assert t.stack.counters["tcp.drop.syn-fin"] == 1
    assert t.table == {}
