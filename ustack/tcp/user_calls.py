"""The user calls of a connection (RFC 9293 3.9.1, processed as 3.10.1-3.10.5
say): OPEN (active), SEND, RECEIVE, CLOSE (shutdown and close), ABORT, and
the socket options that act on an open connection (keep-alive, SHUT_RD).

`UserCalls` is TcpConnection's base: the calls are the connection's own
methods (`conn.send(...)`), kept here apart from SEGMENT ARRIVES and the
timers (connection.py). Each sets the connection's clock, acts through the
state table (`_transition`) and the parts (sender, receiver, keepalive),
and lets `_output` send what the call allows.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ustack.compiled import mypyc_attr
from ustack.tcp.forward import TcbView
from ustack.tcp.states import CAN_ACK
from ustack.tcp.states import CAN_SEND
from ustack.tcp.states import CLOSE_UNREAD_RESETS
from ustack.tcp.states import Event
from ustack.tcp.states import State
from ustack.trace.vocabulary import TimerKind

if TYPE_CHECKING:
    from ustack.tcp.config import TcpConfig
    from ustack.tcp.keepalive import Keepalive
    from ustack.tcp.receiver import Receiver
    from ustack.tcp.sender import Sender
    from ustack.tcp.timers import Timers


@mypyc_attr(native_class=False)  # (mypyc: a native class cannot derive ConnectionError)
class ConnectionClosedError(ConnectionError):
    """send() or read() on a connection that can no longer do it."""


@mypyc_attr(allow_interpreted_subclasses=True)
class UserCalls(TcbView):
    """The calls an application makes on a TcpConnection."""

    # The state the calls use is kept here (TcpConnection's __slots__ add
    # the rest): one class body that mypy checks and mypyc compiles.
    __slots__ = (
        "_timers", "config", "error", "keepalive", "now", "orphaned", "receiver", "sender",
        "state",
    )  # fmt: skip

    now: float
    state: State
    error: str | None
    orphaned: bool
    config: TcpConfig
    sender: Sender
    receiver: Receiver
    keepalive: Keepalive
    _timers: Timers

    # TcpConnection's (connection.py), which the calls use.
    def _transition(self, event: Event, error: str | None = None) -> None:
        raise NotImplementedError

    def _output(self) -> None:
        raise NotImplementedError

    def _send_rst_ack(self) -> None:
        raise NotImplementedError

    def connect(self, now: float) -> None:
        """Active OPEN: send a SYN (RFC 9293 3.10.1)."""
        self.now = now
        self._transition(Event.APP_CONNECT)
        self._output()

    def send(self, data: bytes | bytearray | memoryview, now: float) -> int:
        """Queue data; returns how many bytes fit in the send buffer."""
        self.now = now
        if self.state is State.CLOSED:
            raise ConnectionClosedError(self.error or "ENOTCONN")
        if self.sender.fin_queued or self.state not in CAN_SEND:
            raise BrokenPipeError("EPIPE: the sending side is shut down")
        taken = self.sender.queue(data)
        self._output()
        return taken

    def read(self, max_bytes: int, now: float, defer_ack: bool = False) -> bytes:
        """Up to max_bytes of received data; b"" means none waits (check at_eof).

        The read may make an ACK due (Receiver.after_read: Linux's
        tcp_cleanup_rbuf). `defer_ack`: the caller hands the data to an
        application whose turn comes next (the asyncio transport), and
        calls send_deferred_ack once that turn is over: an answer written
        in it carries the ACK, one segment instead of two."""
        self.now = now
        rcv = self.receiver
        data = rcv.buffer.take(max_bytes)
        if data and self.state in CAN_ACK:
            rcv.after_read(defer_ack)
            self._output()
        return data

    def send_deferred_ack(self, now: float) -> bool:
        """The application's turn after a read(defer_ack=True) is over: the
        ACK that read made due goes now, unless a segment sent since (the
        answer) carried it. Whether it went."""
        rcv = self.receiver
        if not rcv.ack_deferred:
            return False
        self.now = now
        rcv.ack_deferred = False
        if self.state not in CAN_ACK:
            return False
        rcv.ack_now = True
        self._output()
        return True

    def shutdown(self, now: float) -> None:
        """shutdown(SHUT_WR): FIN after the queued data; we can still receive."""
        self.now = now
        if self.sender.fin_queued or self.state in (State.CLOSED, State.LISTEN):
            return
        if self.state is State.SYN_SENT:
            self._transition(Event.APP_CLOSE)
            return
        self.sender.fin_queued = True
        self._transition(Event.APP_CLOSE)
        self._output()

    def set_nodelay(self, on: bool, now: float) -> None:
        """TCP_NODELAY on an open connection: Nagle (RFC 9293 3.7.4) off or
        on. Turned off, what it holds goes now, as Linux's
        tcp_sock_set_nodelay pushes the pending frames."""
        self.now = now
        self.sender.nodelay = on
        if on:
            self._output()

    def set_keepalive(self, idle: float | None, interval: float, probes: int, now: float) -> None:
        """SO_KEEPALIVE with TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT on an
        open connection (RFC 1122 4.2.3.6): `idle` None turns it off; on, the
        idle time starts again now (Linux re-arms it the same way)."""
        self.now = now
        self.config = dataclasses.replace(
            self.config, keepalive_idle=idle, keepalive_interval=interval,
            keepalive_probes=probes,
        )  # fmt: skip
        if idle is None:
            self._timers.cancel(TimerKind.KEEPALIVE)
        elif self.state in (State.ESTABLISHED, State.CLOSE_WAIT):
            self.keepalive.probes = 0
            self.keepalive.start()

    def shutdown_read(self) -> None:
        """shutdown(SHUT_RD): nothing goes on the wire; later data is dropped."""
        self.receiver.shut()

    def close(self, now: float) -> None:
        """The application is done with the connection (RFC 9293 3.10.4).

        Unread data makes it an abortive close (RST, RFC 9293 3.6 SHLD-3);
        otherwise the FIN goes after any queued data, and the connection
        lives on, orphaned, until the close completes."""
        self.now = now
        self.orphaned = True
        if self.receiver.buffer and self.state in CLOSE_UNREAD_RESETS:
            self._send_rst_ack()
            self._transition(Event.APP_CLOSE_UNREAD)
            return
        self.shutdown(now)
        if self.state is State.FIN_WAIT_2 and TimerKind.FIN_WAIT_2 not in self._timers.deadlines:
            self._timers.arm(TimerKind.FIN_WAIT_2, self.config.fin_wait_2_timeout)

    def abort(self, now: float) -> None:
        """ABORT (RFC 9293 3.10.5), like SO_LINGER 0: RST and gone."""
        self.now = now
        self.orphaned = True
        if self.state in (State.CLOSED, State.LISTEN, State.TIME_WAIT):
            return
        # RFC 9293 3.10.5: in CLOSING and LAST_ACK both FINs are out; just delete.
        if self.state not in (State.SYN_SENT, State.CLOSING, State.LAST_ACK):
            self._send_rst_ack()
        self._transition(Event.APP_ABORT)
