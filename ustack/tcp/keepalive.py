"""Keep-alive (RFC 1122 4.2.3.6): after `keepalive_idle` seconds of silence,
probe with <SEQ=SND.UNA-1> (an old byte: the peer must answer with an ACK);
after `keepalive_probes` unanswered probes the peer is gone. Off unless the
configuration sets keepalive_idle."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ustack.tcp import seq
from ustack.tcp.segment import Segment
from ustack.tcp.timers import Timers
from ustack.trace.vocabulary import SegmentNote
from ustack.trace.vocabulary import TimerKind
from ustack.wire.tcp import ACK

if TYPE_CHECKING:
    from ustack.tcp.connection import TcpConnection


class Keepalive:
    __slots__ = ("_conn", "_timers", "last_heard", "probes")
    # The links back that TcpConnection.release() drops (mypyc: deletable).
    __deletable__ = ("_conn", "_timers")

    def __init__(self, conn: TcpConnection, timers: Timers) -> None:
        self._conn = conn
        self._timers = timers
        self.last_heard = 0.0  # when the peer last sent anything (the connection sets it)
        self.probes = 0  # sent since then

    def start(self) -> None:
        """The handshake is over: the idle time starts."""
        idle = self._conn.config.keepalive_idle
        if idle is not None:
            self._timers.arm(TimerKind.KEEPALIVE, idle)

    def timeout(self) -> bool:
        """The keep-alive timer fired (in ESTABLISHED or CLOSE_WAIT): wait
        on, or probe. False when the probes are used up: the peer is gone."""
        conn = self._conn
        config = conn.config
        assert config.keepalive_idle is not None
        quiet_until = self.last_heard + config.keepalive_idle
        if self.probes == 0 and conn.now < quiet_until:
            self._timers.arm(TimerKind.KEEPALIVE, quiet_until - conn.now)  # heard from it
            return True
        if self.probes >= config.keepalive_probes:
            return False
        self.probes += 1
        rcv = conn.receiver
        probe = Segment(
            seq.add(conn.sender.snd_una, -1),
            rcv.rcv_nxt,
            ACK,
            rcv.window_field(),
            b"",
            rcv.ack_options(),
            note=SegmentNote.KEEPALIVE_PROBE,
        )
        conn._emit(probe)
        self._timers.arm(TimerKind.KEEPALIVE, config.keepalive_interval)
        return True
