"""The listener side (RFC 9293 3.10.7.2, RFC 4987): a passive OPEN on a port
with its bounded backlog, what it does with each segment that finds no
connection (`receive_in_listen`, which the demux calls), and what answers a
SYN when that backlog is full: a stateless SYN,ACK whose ISS is a SYN cookie
(syncookies.py). The connections it opens live in connection.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING

from ustack.tcp import seq
from ustack.tcp.config import DEFAULT_PEER_MSS
from ustack.tcp.config import DEFAULT_PEER_MSS_IPV6
from ustack.tcp.config import IPV4_TCP_HEADERS
from ustack.tcp.config import IPV6_TCP_HEADERS
from ustack.tcp.config import TcpConfig
from ustack.tcp.segment import Segment
from ustack.tcp.states import TRANSITIONS
from ustack.tcp.states import Event
from ustack.tcp.states import State
from ustack.tcp.syncookies import PERIOD as COOKIE_PERIOD
from ustack.tcp.syncookies import SynCookies
from ustack.trace.records import StateChange
from ustack.trace.records import Tracer
from ustack.trace.vocabulary import DropReason
from ustack.trace.vocabulary import Layer
from ustack.trace.vocabulary import SegmentNote
from ustack.wire.address import IPV4_MAX
from ustack.wire.address import is_ipv6
from ustack.wire.tcp import ACK
from ustack.wire.tcp import FIN
from ustack.wire.tcp import RST
from ustack.wire.tcp import SYN
from ustack.wire.tcp import TcpOptions

if TYPE_CHECKING:
    from ustack.tcp.connection import TcpConnection
    from ustack.tcp.demux import Key
    from ustack.tcp.demux import TcpDemux
    from ustack.tcp.time_wait import TimeWait

# (local address, local port, remote address, remote port): what a cookie hashes.
Ends = tuple[int, int, int, int]


@dataclass(eq=False, repr=False)  # each one is itself (the demux's sets and dicts)
class Listener:
    """A passive OPEN on one port, with a bounded backlog (half-open plus
    not yet accepted connections). It hears both families unless `family`
    says 4 or 6 (a socket bound to one family's address, or IPV6_V6ONLY)."""

    port: int
    backlog: int
    on_accept: Callable[[TcpConnection], None]
    family: int | None = None
    # Its connections' configuration (socket options set on a listening
    # socket are inherited by the accepted ones); None: the demux's.
    config: TcpConfig | None = None
    state: State = State.CLOSED
    embryonic: set[TcpConnection] = field(default_factory=set)
    cookies_until: float = 0.0  # the last SYN cookie it sent is good until then

    def __repr__(self) -> str:
        family = "" if self.family is None else f" IPv{self.family}"
        return f"<Listener :{self.port}{family} {self.state} backlog={self.backlog}>"

    def transition(self, event: Event, now: float, trace: Tracer | None) -> None:
        """APP_LISTEN or APP_CLOSE, through the state table (states.py)."""
        transition = TRANSITIONS[(self.state, event)]
        old, self.state = self.state, transition.new_state
        if trace is not None:
            trace(StateChange(now, 0, old, self.state, event, transition.rule, transition.why))

    def hears(self, remote: int) -> bool:
        """Whether a segment from `remote` is for this listener: a listener of
        one family leaves the other's segments to the CLOSED port's RST."""
        family = self.family
        return family is None or (family == 6) == is_ipv6(remote)

    def has_room(self) -> bool:
        return len(self.embryonic) < self.backlog

    def cookie_synack(
        self,
        cookies: SynCookies,
        ends: Ends,
        syn: Segment,
        config: TcpConfig,
        now: float,
        ipv6: bool = False,
    ) -> Segment:
        """Backlog full: the stateless SYN,ACK whose ISS is a SYN cookie
        (RFC 4987 3.6); it offers our MSS (20 bytes less over IPv6, RFC 8200
        8.3) and nothing a cookie cannot carry."""
        default_mss = DEFAULT_PEER_MSS_IPV6 if ipv6 else DEFAULT_PEER_MSS
        cookie = cookies.make(ends, syn.seq, syn.options.mss or default_mss, now)
        mss = config.mss - (IPV6_TCP_HEADERS - IPV4_TCP_HEADERS) if ipv6 else config.mss
        return Segment(
            cookie,
            seq.add(syn.seq, 1),
            SYN | ACK,
            min(config.receive_buffer, 0xFFFF),
            b"",
            TcpOptions(mss=mss),
            note=SegmentNote.SYN_COOKIE,
        )

    def unverifiable_cookie(self, cookies: SynCookies | None, seg: Segment, now: float) -> bool:
        """An ACK that carries one of our current cookies but fails the check
        may be a later segment of a real handshake whose final ACK and first
        data were lost (a busy queue drops them): its SEQ is past ISN + 1, so
        the ISN the hash needs is unknown. A RST would kill that connection;
        dropped, the peer resends from ISN + 1 and the cookie checks. Only
        while the listener hands out cookies, and only for ACKs whose counter
        bits are current; anything else gets the RST of RFC 9293 3.10.7.2."""
        return cookies is not None and now < self.cookies_until and cookies.current(seg.ack, now)


# ---- SEGMENT ARRIVES in LISTEN (RFC 9293 3.10.7.2) ----------------------------


def receive_in_listen(
    demux: TcpDemux,
    listener: Listener,
    key: Key,
    seg: Segment,
    now: float,
    previous: TcpConnection | TimeWait | None,
) -> None:
    """RFC 9293 3.10.7.2."""
    counters = demux._counters
    opens = seg.flags & (SYN | RST | ACK | FIN) == SYN and listener.has_room()
    if demux.trace is not None and not opens:
        # A connection's first segment is traced with it; every other one here.
        demux.trace(demux._segment_event(now, None, key, "in", seg, "LISTEN", "LISTEN"))
    if seg.flags & RST:
        counters.drop(Layer.TCP, DropReason.RST_TO_LISTENER, now)
        return
    if seg.flags & ACK:
        if not seg.flags & (SYN | RST):
            if _accept_cookie(demux, listener, key, seg, now):
                return
            if listener.unverifiable_cookie(demux.syncookies, seg, now):
                counters.drop(
                    Layer.TCP, DropReason.SYNCOOKIE_UNVERIFIED, now, f"port {listener.port}"
                )
                return
        demux._reply_closed(key, seg, now)
        return
    if not seg.flags & SYN:
        counters.drop(Layer.TCP, DropReason.LISTEN_NO_SYN, now)
        return
    if seg.flags & FIN:
        # No connection starts with SYN+FIN (a scanner's probe): Linux's
        # tcp_rcv_state_process discards it in LISTEN, and so do we.
        counters.drop(Layer.TCP, DropReason.SYN_FIN, now)
        return
    if not listener.has_room():
        if demux.syncookies is None:
            counters.drop(Layer.TCP, DropReason.BACKLOG_FULL, now, f"port {listener.port}")
        else:
            _send_cookie(demux, listener, key, seg, now)
            listener.cookies_until = now + 2 * COOKIE_PERIOD
        return
    if not demux._make_room(now):
        # As Linux with a full accept queue (ListenOverflows, ListenDrops):
        # silence, so the peer retries its SYN. No SYN cookie: its ACK
        # would need a TCB as much as this SYN does.
        if demux.trace is not None:
            demux.trace(demux._segment_event(now, None, key, "in", seg, "LISTEN", "LISTEN"))
        counters.drop(Layer.TCP, DropReason.CONNECTION_LIMIT, now, f"port {listener.port}")
        return
    iss = None
    if previous is not None and not seq.gt(demux._isn_for(key, now), previous.snd_max):
        iss = seq.add(previous.snd_max, 1 << 17)  # above anything the old one sent
    conn = demux._new_connection(key, now, iss, passive=True, config=listener.config)
    listener.embryonic.add(conn)
    demux._listener_of[conn] = listener
    demux._traced(conn, key, seg, now, conn.listen_accept)
    counters["tcp.passive-opens"] += 1
    demux.flush(conn)


def _send_cookie(demux: TcpDemux, listener: Listener, key: Key, syn: Segment, now: float) -> None:
    """Backlog full: a stateless SYN,ACK whose ISS is a SYN cookie."""
    assert demux.syncookies is not None
    remote, remote_port, local_port = key
    ends = (demux._local(remote), local_port, remote, remote_port)
    ipv6 = remote > IPV4_MAX
    synack = listener.cookie_synack(demux.syncookies, ends, syn, demux.config, now, ipv6)
    demux._counters["tcp.syncookies.sent"] += 1
    if demux.trace is not None:
        demux.trace(demux._segment_event(now, None, key, "out", synack, "LISTEN", "LISTEN"))
    demux._transmit(key, synack)


def _accept_cookie(demux: TcpDemux, listener: Listener, key: Key, ack: Segment, now: float) -> bool:
    """An ACK to a listener may complete a handshake we answered with a cookie."""
    if demux.syncookies is None:
        return False
    remote, remote_port, local_port = key
    ends = (demux._local(remote), local_port, remote, remote_port)
    peer_mss = demux.syncookies.check(ends, ack.ack, ack.seq, now)
    if peer_mss is None:
        return False
    if not demux._make_room(now):
        # The peer thinks it is connected; its data, resent, may find room.
        demux._counters.drop(Layer.TCP, DropReason.CONNECTION_LIMIT, now, f"port {listener.port}")
        return True
    demux._counters["tcp.syncookies.accepted"] += 1
    conn = demux._new_connection(
        key, now, seq.add(ack.ack, -1), passive=True, config=listener.config
    )
    irs = seq.add(ack.seq, -1)
    demux._traced(conn, key, ack, now, lambda seg, t: conn.accept_cookie(seg, irs, peer_mss, t))
    if listener.state is State.LISTEN:
        listener.on_accept(conn)
    demux.flush(conn)
    return True
