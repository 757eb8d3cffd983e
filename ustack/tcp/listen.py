"""The listener side (RFC 9293 3.10.7.2, RFC 4987): a passive OPEN on a port
with its bounded backlog, and what answers a SYN when that backlog is full:
a stateless SYN,ACK whose ISS is a SYN cookie (syncookies.py).

The demux (`TcpDemux._receive_in_listen`) decides, segment by segment, what
a listener does; the connections it opens live in connection.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ustack.tcp import seq
from ustack.tcp.config import (
    DEFAULT_PEER_MSS,
    DEFAULT_PEER_MSS_IPV6,
    IPV4_TCP_HEADERS,
    IPV6_TCP_HEADERS,
    TcpConfig,
)
from ustack.tcp.segment import Segment
from ustack.tcp.states import TRANSITIONS, Event, State
from ustack.tcp.syncookies import SynCookies
from ustack.trace.records import StateChange, Tracer
from ustack.trace.vocabulary import SegmentNote
from ustack.wire.address import is_ipv6
from ustack.wire.tcp import ACK, SYN, TcpOptions

if TYPE_CHECKING:
    from ustack.tcp.connection import TcpConnection

# (local address, local port, remote address, remote port): what a cookie hashes.
Ends = tuple[int, int, int, int]


class Listener:
    """A passive OPEN on one port, with a bounded backlog (half-open plus
    not yet accepted connections). It hears both families unless `family`
    says 4 or 6 (a socket bound to one family's address, or IPV6_V6ONLY)."""

    def __init__(
        self,
        port: int,
        backlog: int,
        on_accept: Callable[[TcpConnection], None],
        family: int | None = None,
        config: TcpConfig | None = None,
    ):
        self.port = port
        self.family = family
        # Its connections' configuration (socket options set on a listening
        # socket are inherited by the accepted ones); None: the demux's.
        self.config = config
        self.backlog = backlog
        self.on_accept = on_accept
        self.state = State.CLOSED
        self.embryonic: set[TcpConnection] = set()
        self.cookies_until = 0.0  # the last SYN cookie it sent is good until then

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
