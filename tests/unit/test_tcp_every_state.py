"""RST, ABORT and retransmission exhaustion in every state they apply to,
plus the rarer arrows of the state diagram."""

from __future__ import annotations

import pytest
from tcpscript import OUR_ISS
from tcpscript import PEER_ISS
from tcpscript import Family
from tcpscript import TcpScript

from ustack.tcp.events import Closed
from ustack.tcp.states import State

P = PEER_ISS + 1
U = OUR_ISS + 1


def into(family: Family, state: str, **config: object) -> TcpScript:
    """A script whose connection is in `state`, with our data or FIN unacked
    where the state allows it (so a retransmission timer runs)."""
    config.setdefault("retries", 2)
    config.setdefault("synack_retries", 2)
    config.setdefault("syn_retries", 2)
    if state == "SYN_SENT":
        t = TcpScript(family=family, listen=None, **config)
        t.connect()
        t.expect("S")
        return t
    t = TcpScript(family=family, listen=80, **config)
    if state == "SYN_RECEIVED":
        t.send("S", seq=PEER_ISS)
        t.expect("S.")
        t.conn = next(iter(t.tcp.connections.values()))
        return t
    t.establish()
    if state == "ESTABLISHED":
        t.write(b"unacked")
    elif state == "FIN_WAIT_1":
        t.close()
    elif state == "FIN_WAIT_2":
        t.shutdown()
        t.sent()
        t.send(".", seq=P, ack=U + 1)
    elif state == "CLOSE_WAIT":
        t.send("F.", seq=P, ack=U)
        t.write(b"unacked")
    elif state == "CLOSING":
        t.close()
        t.send("F.", seq=P, ack=U)
    elif state == "LAST_ACK":
        t.send("F.", seq=P, ack=U)
        t.close()
    t.sent()
    assert t.conn is not None and str(t.conn.state) == state, t.conn
    return t


def rcv_nxt(t: TcpScript) -> int:
    assert t.conn is not None
    return t.conn.rcv_nxt


@pytest.mark.parametrize(
    ("state", "error"),
    [("ESTABLISHED", "ECONNRESET"), ("FIN_WAIT_1", "ECONNRESET"), ("FIN_WAIT_2", "ECONNRESET"),
     ("CLOSE_WAIT", "ECONNRESET"), ("CLOSING", None), ("LAST_ACK", None)],
)  # fmt: skip
def test_exact_rst_closes_every_synchronized_state(
    state: str, error: str | None, family: Family
) -> None:
    t = into(family, state)
    t.send("R", seq=rcv_nxt(t))
    t.expect_none()
    assert t.table == {}
    assert t.conn is not None and t.conn.error == error


@pytest.mark.parametrize(
    "state",
    ["SYN_SENT", "ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "CLOSE_WAIT", "CLOSING", "LAST_ACK"],
)
def test_abort_in_every_state(state: str, family: Family) -> None:
    t = into(family, state)
    t.abort()
    if state in ("SYN_SENT", "CLOSING", "LAST_ACK"):
        # SYN_SENT: nothing to reset yet; CLOSING, LAST_ACK: both FINs are out,
        # RFC 9293 3.10.5 only deletes the TCB (Linux agrees).
        t.expect_none()
    else:
        t.expect("R.", ack=rcv_nxt(t))
    assert t.table == {}


@pytest.mark.parametrize(
    "state", ["SYN_SENT", "SYN_RECEIVED", "ESTABLISHED", "FIN_WAIT_1", "CLOSE_WAIT", "CLOSING",
              "LAST_ACK"],
)  # fmt: skip
def test_retransmissions_exhausted_in_every_state(state: str, family: Family) -> None:
    t = into(family, state)
    t.wait(100.0)
    assert len(t.sent()) == 2  # retries = 2 (synack_retries, syn_retries alike)
    assert t.table == {}
    assert t.conn is not None and t.conn.state is State.CLOSED
    expected = None if state == "SYN_RECEIVED" else "ETIMEDOUT"
    if state != "SYN_RECEIVED":
        assert t.apps[t.conn].events[-1] == Closed(expected)


def test_close_in_syn_received_after_simultaneous_open(family: Family) -> None:
    t = TcpScript(family=family, listen=None)
    conn = t.simultaneous_open()
    t.close()
    assert conn.state is State.FIN_WAIT_1
    t.expect_none()  # the FIN waits until our SYN is acknowledged
    t.send(".", seq=P, ack=U, sport=8080)
    t.expect("F.", seq=U, ack=P)
    t.send("F.", seq=P, ack=U + 1, sport=8080)
    t.expect(".", ack=P + 1)
    assert t.states() == ["CLOSED", "SYN_SENT", "SYN_RECEIVED", "FIN_WAIT_1", "TIME_WAIT"]


def test_data_for_orphaned_fin_wait_2_gets_rst(family: Family) -> None:
    t = into(family, "FIN_WAIT_2")
    t.close()
    t.send("P.", seq=P, ack=U + 1, payload=b"late")
    t.expect("R.", seq=U + 1)
    assert t.table == {}


@pytest.mark.parametrize("state", ["FIN_WAIT_1", "FIN_WAIT_2", "CLOSING", "LAST_ACK"])
def test_close_with_unread_data_after_shutdown_resets(state: str, family: Family) -> None:
    """RFC 9293 3.6 (SHLD-3): unread data at CLOSE means RST, whatever the
    state shutdown() left us in (behaviour 39 beyond ESTABLISHED/CLOSE_WAIT)."""
    t = TcpScript(family=family, listen=80)
    t.establish()
    if state == "LAST_ACK":
        t.send("FP.", seq=P, ack=U, payload=b"unread")
        t.shutdown()
    else:
        t.shutdown()
        fin_flags = "FP." if state == "CLOSING" else "P."
        ack = U + 1 if state == "FIN_WAIT_2" else U
        t.send(fin_flags, seq=P, ack=ack, payload=b"unread")
    t.sent()
    assert t.conn is not None and str(t.conn.state) == state
    t.close()
    rst = t.expect("R.", ack=t.conn.rcv_nxt)
    assert rst.seq == U + 1  # after our FIN
    assert t.table == {}
