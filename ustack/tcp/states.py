"""The TCP states and every transition between them, as data (RFC 9293).

`TRANSITIONS[(state, event)]` names the next state and the rule behind the
arrow, so the trace can say why each transition happened and the tests can
check that every arrow is exercised. A transition not in this table is a bug.
"""

from __future__ import annotations

import enum
from typing import NamedTuple


class State(enum.Enum):
    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN_SENT"
    SYN_RECEIVED = "SYN_RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN_WAIT_1"
    FIN_WAIT_2 = "FIN_WAIT_2"
    CLOSE_WAIT = "CLOSE_WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST_ACK"
    TIME_WAIT = "TIME_WAIT"

    # Members are singletons compared by identity: the identity hash is
    # consistent with that, and C-fast, where Enum's hashes the name in Python
    # (every transition looks up TRANSITIONS[(state, event)]).
    __hash__ = object.__hash__

    def __str__(self) -> str:
        return self.value


class Event(enum.Enum):
    """What makes a connection change state."""

    APP_LISTEN = "passive OPEN"
    APP_CONNECT = "active OPEN"
    APP_CLOSE = "CLOSE"
    APP_ABORT = "ABORT"
    APP_CLOSE_UNREAD = "CLOSE with unread data"
    RCV_SYN = "SYN received"
    RCV_SYN_ACK = "SYN,ACK received"
    RCV_ACK_OF_SYN = "ACK of SYN received"
    RCV_VALID_COOKIE = "ACK carrying a valid SYN cookie received"
    RCV_FIN = "FIN received"
    RCV_ACK_OF_FIN = "ACK of FIN received"
    RCV_FIN_ACK_OF_FIN = "FIN with ACK of our FIN received"
    RCV_RST = "RST received"
    RCV_RST_AFTER_SIMULTANEOUS_OPEN = "RST received in SYN_RECEIVED after an active OPEN"
    RCV_DATA_ORPHANED = "data received after CLOSE"
    RCV_SYN_NEW_INCARNATION = "new SYN in TIME_WAIT"
    TIMEOUT_2MSL = "2MSL timeout"
    TIME_WAIT_RECLAIMED = "connection table full"
    TIMEOUT_FIN_WAIT_2 = "FIN_WAIT_2 timeout"
    TIMEOUT_RETRANSMIT = "retransmission limit"
    TIMEOUT_KEEPALIVE = "keep-alive probes unanswered"
    ICMP_HARD_ERROR = "ICMP port or protocol unreachable"

    __hash__ = object.__hash__  # as State's

    def __str__(self) -> str:
        return self.value


# States in which data (and our FIN) goes out.
SENDS_DATA = (
    State.ESTABLISHED,
    State.CLOSE_WAIT,
    State.FIN_WAIT_1,
    State.CLOSING,
    State.LAST_ACK,
)

# States in which the application may still queue data.
CAN_SEND = (State.SYN_SENT, State.SYN_RECEIVED, State.ESTABLISHED, State.CLOSE_WAIT)
# States in which the peer may still send us data.
RECEIVES_TEXT = (State.SYN_RECEIVED, State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2)
# States in which a read-side window update means something.
CAN_ACK = (State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2)
# States in which closing with unread data resets (RFC 9293 3.6 SHLD-3).
CLOSE_UNREAD_RESETS = (
    State.ESTABLISHED,
    State.CLOSE_WAIT,
    State.FIN_WAIT_1,
    State.FIN_WAIT_2,
    State.CLOSING,
    State.LAST_ACK,
)
# States in which a RST is an error the application must hear about.
PEER_MAY_RESET = (State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2, State.CLOSE_WAIT)


class Transition(NamedTuple):
    new_state: State
    rule: str  # RFC and section
    why: str  # a short phrase, for the trace and `ustack explain`


S = State
E = Event
_SYNCHRONIZED = (
    S.SYN_RECEIVED, S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSE_WAIT,
    S.CLOSING, S.LAST_ACK,
)  # fmt: skip

TRANSITIONS: dict[tuple[State, Event], Transition] = {
    # Opening (RFC 9293 3.5 and the diagram of 3.3.2)
    (S.CLOSED, E.APP_LISTEN): Transition(
        S.LISTEN, "RFC 9293 3.10.1", "passive OPEN: wait for a SYN"
    ),
    (S.CLOSED, E.APP_CONNECT): Transition(S.SYN_SENT, "RFC 9293 3.10.1", "active OPEN: SYN sent"),
    (S.LISTEN, E.RCV_SYN): Transition(
        S.SYN_RECEIVED, "RFC 9293 3.10.7.2", "SYN received in LISTEN: SYN,ACK sent"
    ),
    (S.LISTEN, E.RCV_VALID_COOKIE): Transition(
        S.ESTABLISHED, "RFC 4987 3.6", "the ACK returns our SYN cookie: established without state"
    ),
    (S.SYN_SENT, E.RCV_SYN_ACK): Transition(
        S.ESTABLISHED, "RFC 9293 3.10.7.3", "SYN,ACK acknowledges our SYN: ACK sent"
    ),
    (S.SYN_SENT, E.RCV_SYN): Transition(
        S.SYN_RECEIVED, "RFC 9293 3.10.7.3", "simultaneous open: SYN without ACK, SYN,ACK sent"
    ),
    (S.SYN_RECEIVED, E.RCV_ACK_OF_SYN): Transition(
        S.ESTABLISHED, "RFC 9293 3.10.7.4", "ACK of our SYN received in SYN_RECEIVED"
    ),
    (S.SYN_RECEIVED, E.RCV_RST): Transition(
        S.LISTEN, "RFC 9293 3.10.7.4", "RST in SYN_RECEIVED: the embryonic connection is dropped"
    ),
    (S.SYN_RECEIVED, E.RCV_RST_AFTER_SIMULTANEOUS_OPEN): Transition(
        S.CLOSED, "RFC 9293 3.10.7.4", "RST in SYN_RECEIVED after an active OPEN: refused"
    ),
    (S.SYN_SENT, E.RCV_RST): Transition(
        S.CLOSED, "RFC 9293 3.10.7.3", "RST acknowledging our SYN: connection refused"
    ),
    (S.SYN_SENT, E.APP_CLOSE): Transition(
        S.CLOSED, "RFC 9293 3.10.4", "CLOSE in SYN_SENT: the TCB is deleted, nothing sent"
    ),
    (S.LISTEN, E.APP_CLOSE): Transition(S.CLOSED, "RFC 9293 3.10.4", "CLOSE of a listener"),
    # Active close
    (S.SYN_RECEIVED, E.APP_CLOSE): Transition(
        S.FIN_WAIT_1, "RFC 9293 3.10.4", "CLOSE in SYN_RECEIVED: FIN queued"
    ),
    (S.ESTABLISHED, E.APP_CLOSE): Transition(
        S.FIN_WAIT_1, "RFC 9293 3.10.4", "CLOSE: FIN queued after any data"
    ),
    (S.FIN_WAIT_1, E.RCV_ACK_OF_FIN): Transition(
        S.FIN_WAIT_2, "RFC 9293 3.10.7.4", "our FIN is acknowledged"
    ),
    (S.FIN_WAIT_1, E.RCV_FIN): Transition(
        S.CLOSING, "RFC 9293 3.10.7.4", "simultaneous close: FIN before the ACK of ours"
    ),
    (S.FIN_WAIT_1, E.RCV_FIN_ACK_OF_FIN): Transition(
        S.TIME_WAIT, "RFC 9293 3.10.7.4", "FIN that also acknowledges our FIN"
    ),
    (S.FIN_WAIT_2, E.RCV_FIN): Transition(
        S.TIME_WAIT, "RFC 9293 3.10.7.4", "FIN received in FIN_WAIT_2: ACK sent, 2MSL timer on"
    ),
    (S.CLOSING, E.RCV_ACK_OF_FIN): Transition(
        S.TIME_WAIT, "RFC 9293 3.10.7.4", "our FIN is acknowledged in CLOSING"
    ),
    (S.TIME_WAIT, E.TIMEOUT_2MSL): Transition(
        S.CLOSED, "RFC 9293 3.6.1", "2MSL expired: the TCB is deleted"
    ),
    (S.FIN_WAIT_2, E.TIMEOUT_FIN_WAIT_2): Transition(
        S.CLOSED, "Linux tcp_fin_timeout", "orphaned FIN_WAIT_2 timed out"
    ),
    # Passive close
    (S.ESTABLISHED, E.RCV_FIN): Transition(
        S.CLOSE_WAIT, "RFC 9293 3.10.7.4", "FIN received: the peer has no more to send"
    ),
    (S.CLOSE_WAIT, E.APP_CLOSE): Transition(
        S.LAST_ACK, "RFC 9293 3.10.4", "CLOSE in CLOSE_WAIT: FIN queued"
    ),
    (S.LAST_ACK, E.RCV_ACK_OF_FIN): Transition(
        S.CLOSED, "RFC 9293 3.10.7.4", "our FIN is acknowledged in LAST_ACK: the TCB is deleted"
    ),
    # Abortive close
    (S.ESTABLISHED, E.APP_CLOSE_UNREAD): Transition(
        S.CLOSED, "RFC 9293 3.6 (SHLD-3)", "CLOSE with unread data: RST sent"
    ),
    (S.CLOSE_WAIT, E.APP_CLOSE_UNREAD): Transition(
        S.CLOSED, "RFC 9293 3.6 (SHLD-3)", "CLOSE with unread data: RST sent"
    ),
    (S.FIN_WAIT_1, E.APP_CLOSE_UNREAD): Transition(
        S.CLOSED, "RFC 9293 3.6 (SHLD-3)", "CLOSE with unread data after shutdown: RST sent"
    ),
    (S.FIN_WAIT_2, E.APP_CLOSE_UNREAD): Transition(
        S.CLOSED, "RFC 9293 3.6 (SHLD-3)", "CLOSE with unread data after shutdown: RST sent"
    ),
    (S.CLOSING, E.APP_CLOSE_UNREAD): Transition(
        S.CLOSED, "RFC 9293 3.6 (SHLD-3)", "CLOSE with unread data after shutdown: RST sent"
    ),
    (S.LAST_ACK, E.APP_CLOSE_UNREAD): Transition(
        S.CLOSED, "RFC 9293 3.6 (SHLD-3)", "CLOSE with unread data after shutdown: RST sent"
    ),
    (S.FIN_WAIT_1, E.RCV_DATA_ORPHANED): Transition(
        S.CLOSED, "RFC 9293 3.6 (SHLD-3)", "data for a closed application: RST sent"
    ),
    (S.FIN_WAIT_2, E.RCV_DATA_ORPHANED): Transition(
        S.CLOSED, "RFC 9293 3.6 (SHLD-3)", "data for a closed application: RST sent"
    ),
    (S.TIME_WAIT, E.RCV_SYN_NEW_INCARNATION): Transition(
        S.CLOSED, "RFC 9293 3.10.7.4 / RFC 6191", "new SYN above RCV.NXT reopens the 4-tuple"
    ),
    (S.TIME_WAIT, E.TIME_WAIT_RECLAIMED): Transition(
        S.CLOSED, "TcpConfig.max_connections", "the oldest TIME_WAIT gives way to a new connection"
    ),
    (S.TIME_WAIT, E.RCV_RST): Transition(
        S.CLOSED, "RFC 9293 3.10.7.4", "RST in TIME_WAIT honoured (RFC 1337 check off)"
    ),
}

for _state in _SYNCHRONIZED:
    if _state != S.SYN_RECEIVED:
        TRANSITIONS[(_state, E.RCV_RST)] = Transition(
            S.CLOSED, "RFC 9293 3.10.7.4 / RFC 5961 3.2", "RST at RCV.NXT: connection reset"
        )
    TRANSITIONS[(_state, E.APP_ABORT)] = Transition(
        S.CLOSED, "RFC 9293 3.10.5", "ABORT: RST sent, the TCB is deleted"
    )
    if _state != S.FIN_WAIT_2:  # nothing of ours is unacknowledged in FIN_WAIT_2
        TRANSITIONS[(_state, E.TIMEOUT_RETRANSMIT)] = Transition(
            S.CLOSED, "RFC 9293 3.8.3 (R2)", "retransmissions exhausted: connection timed out"
        )
for _state in (S.ESTABLISHED, S.CLOSE_WAIT):
    TRANSITIONS[(_state, E.TIMEOUT_KEEPALIVE)] = Transition(
        S.CLOSED, "RFC 1122 4.2.3.6", "keep-alive probes unanswered: the peer is gone"
    )
TRANSITIONS[(S.SYN_SENT, E.TIMEOUT_RETRANSMIT)] = Transition(
    S.CLOSED, "RFC 6298 5.5 / RFC 9293 3.8.3", "SYN retransmissions exhausted: timed out"
)
TRANSITIONS[(S.SYN_SENT, E.ICMP_HARD_ERROR)] = Transition(
    S.CLOSED, "RFC 1122 4.2.3.9 / RFC 5461 4.1", "ICMP hard error while connecting: refused"
)
TRANSITIONS[(S.SYN_SENT, E.APP_ABORT)] = Transition(
    S.CLOSED, "RFC 9293 3.10.5", "ABORT in SYN_SENT: the TCB is deleted"
)
