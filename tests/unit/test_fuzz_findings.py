"""Bugs the fuzzer (tools/fuzz.py) found, each as a readable script.

The minimised inputs themselves are in tests/fuzz_corpus/ and replayed by
test_fuzz_corpus.py; these scripts say what was wrong and what is right.
"""

from __future__ import annotations

import pytest
from tcpscript import OUR_ISS
from tcpscript import PEER_ISS
from tcpscript import TcpScript

from ustack.tcp.states import State


@pytest.mark.parametrize("mss", [1, 12, 40])
def test_a_tiny_peer_mss_still_lets_data_flow(mss: int) -> None:
    """An MSS option of 12 with timestamps (12 option bytes) left a segment
    size of 0: no data could ever go out, and nothing timed the stall."""
    t = TcpScript(listen=80)
    t.send("S", seq=PEER_ISS, mss=mss, ts=(100, 0))
    t.expect("S.", seq=OUR_ISS, ack=PEER_ISS + 1)
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1, ts=(101, OUR_ISS))
    assert t.write(b"x" * 100) == 100
    sent = t.sent()
    assert sent and all(0 < len(out.payload) <= 36 for out in sent)  # 48 - 12: Linux's floor
    t.send(".", seq=PEER_ISS + 1, ack=sent[-1].seq + len(sent[-1].payload), ts=(102, OUR_ISS))
    assert t.conn is not None and t.conn.snd_una == sent[-1].seq + len(sent[-1].payload)


def test_small_segments_close_a_scaled_window() -> None:
    """With window scaling, each ACK rounded the promised window up to the
    scale's unit again, so the right edge crept on with every small segment
    and the window never closed: the receive buffer grew without bound while
    the application did not read (RFC 7323 Appendix F; Linux had the same,
    fixed by tcp_shrink_window). Now the edge stops at the free space."""
    t = TcpScript(listen=80, receive_buffer=70000)  # window scale 1
    conn = t.establish(ws=7)
    seq = PEER_ISS + 1
    for _ in range(69):
        t.send(".", seq=seq, ack=OUR_ISS + 1, payload=b"x" * 1000)
        seq += 1000
    t.sent()
    windows = []
    for _ in range(1100):  # more than the free space, one byte at a time
        t.send(".", seq=seq, ack=OUR_ISS + 1, payload=b"y")
        (ack,) = t.sent()
        seq = ack.ack  # the peer sends only what was acknowledged
        windows.append(ack.window)
    assert conn.readable_bytes <= 70000 + 1
    assert windows[-1] == 0


def test_simultaneous_open_synack_updates_the_largest_window_seen() -> None:
    """The SYN,ACK that completes a simultaneous open set SND.WND (scaled)
    but not max_snd_wnd, which bounds old ACKs and Nagle's wait."""
    t = TcpScript(listen=None)
    conn = t.simultaneous_open(ws=7, mss=1460)
    t.send("S.", seq=PEER_ISS, ack=OUR_ISS + 1, sport=8080, win=1000)
    assert conn.snd_wnd == 1000 << 7
    assert conn.max_snd_wnd >= conn.snd_wnd


def test_data_past_a_held_fin_drops_it() -> None:
    """A FIN beyond a hole is held until the hole fills; if the data that
    fills it runs past the FIN's place, the peer contradicted itself and the
    held FIN must go (as Linux drops it), not linger for a later RCV.NXT.
    (TcpScript checks the invariants, "held-fin" among them, at every step.)"""
    t = TcpScript(listen=80)
    conn = t.establish()
    t.send("F.", seq=PEER_ISS + 1 + 1000, ack=OUR_ISS + 1)
    t.sent()
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1, payload=b"z" * 2000)
    assert conn.receiver.held_fin is None
    assert conn.state is State.ESTABLISHED
    t.sent()
    t.send("F.", seq=PEER_ISS + 1 + 2000, ack=OUR_ISS + 1)
    t.expect(".", ack=PEER_ISS + 1 + 2001)
    assert conn.state is State.CLOSE_WAIT


def test_fin_and_ack_of_our_fin_beyond_a_full_window_still_end_fin_wait_1() -> None:
    """In FIN_WAIT_1 a segment acknowledging our FIN and carrying the peer's
    FIN went "straight to TIME_WAIT" - but its data ran past our window, so
    its FIN was trimmed away and the connection stayed in FIN_WAIT_1, our
    FIN acknowledged, no timer left: once the application read and closed,
    a silent peer left it there for ever."""
    t = TcpScript(listen=80, receive_buffer=1000)
    conn = t.establish()
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1, payload=b"a" * 990)  # not read yet
    t.sent()
    t.shutdown()
    t.expect("F.", seq=OUR_ISS + 1)
    t.send("F.", seq=PEER_ISS + 991, ack=OUR_ISS + 2, payload=b"b" * 100)
    t.expect(".", ack=PEER_ISS + 1001, win=0)  # 10 bytes fitted; the FIN did not
    assert conn.state is State.FIN_WAIT_2
    assert len(t.read()) == 1000
    t.close()
    t.wait(3600)  # the peer is gone: the FIN_WAIT_2 timeout ends it
    assert t.table == {}
