"""What the path tells a connection: ICMP errors (RFC 1122 4.2.3.9, RFC 5461),
the path MTU (RFC 1191) and PMTU black holes (RFC 4821, RFC 2923 2.1).

What an ICMP error means to TCP (RFC 1122 4.2.3.9, RFC 5461, Linux's
icmp_err_convert): the errno it stands for, and whether it is hard (a
connection being opened gives up at once) or soft (remembered, reported only
if the connection times out). In a synchronized state no ICMP error aborts a
connection (RFC 5461 4.1, as Linux: an off-path attacker could otherwise kill
it with a guessed sequence number).

The IP layer hands TCP the error with its quote; the demux finds the
connection by the quoted 4-tuple and checks the quoted sequence number
(RFC 5927 4.1) before any of this is acted on. Then the connection's
`PathFeedback` part acts: it keeps the soft error, the path MTU and the
black-hole fallback, and so the segment size the connection sends at.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import NamedTuple

from ustack.tcp import seq
from ustack.tcp.config import DEFAULT_PEER_MSS
from ustack.tcp.config import DEFAULT_PEER_MSS_IPV6
from ustack.tcp.config import IPV4_TCP_HEADERS
from ustack.tcp.config import IPV6_TCP_HEADERS
from ustack.tcp.config import MIN_PEER_MSS
from ustack.tcp.states import SENDS_DATA
from ustack.tcp.states import State
from ustack.trace.vocabulary import DropReason
from ustack.trace.vocabulary import Layer
from ustack.trace.vocabulary import Note
from ustack.wire.address import IPV4_MAX
from ustack.wire.address import format_endpoint
from ustack.wire.icmp import ADMIN_PROHIBITED
from ustack.wire.icmp import DEST_UNREACH
from ustack.wire.icmp import FRAG_NEEDED
from ustack.wire.icmp import HOST_ISOLATED
from ustack.wire.icmp import HOST_PROHIBITED
from ustack.wire.icmp import HOST_UNKNOWN
from ustack.wire.icmp import HOST_UNREACH
from ustack.wire.icmp import HOST_UNREACH_FOR_TOS
from ustack.wire.icmp import NET_PROHIBITED
from ustack.wire.icmp import NET_UNKNOWN
from ustack.wire.icmp import NET_UNREACH
from ustack.wire.icmp import NET_UNREACH_FOR_TOS
from ustack.wire.icmp import PARAMETER_PROBLEM
from ustack.wire.icmp import PORT_UNREACH
from ustack.wire.icmp import PRECEDENCE_CUTOFF
from ustack.wire.icmp import PRECEDENCE_VIOLATION
from ustack.wire.icmp import PROTO_UNREACH
from ustack.wire.icmp import SOURCE_ROUTE_FAILED
from ustack.wire.icmp import TIME_EXCEEDED
from ustack.wire.icmpv6 import ADDRESS_UNREACH as V6_ADDRESS_UNREACH
from ustack.wire.icmpv6 import ADMIN_PROHIBITED as V6_ADMIN_PROHIBITED
from ustack.wire.icmpv6 import BEYOND_SCOPE as V6_BEYOND_SCOPE
from ustack.wire.icmpv6 import DEST_UNREACH as V6_DEST_UNREACH
from ustack.wire.icmpv6 import NO_ROUTE as V6_NO_ROUTE
from ustack.wire.icmpv6 import PACKET_TOO_BIG as V6_PACKET_TOO_BIG
from ustack.wire.icmpv6 import PARAMETER_PROBLEM as V6_PARAMETER_PROBLEM
from ustack.wire.icmpv6 import PORT_UNREACH as V6_PORT_UNREACH
from ustack.wire.icmpv6 import REJECT_ROUTE as V6_REJECT_ROUTE
from ustack.wire.icmpv6 import SOURCE_POLICY_FAILED as V6_POLICY_FAILED
from ustack.wire.icmpv6 import TIME_EXCEEDED as V6_TIME_EXCEEDED

if TYPE_CHECKING:
    from ustack.counters import Counters
    from ustack.tcp.connection import TcpConnection
    from ustack.tcp.demux import TcpDemux
    from ustack.wire.icmp import Quote

# Linux's tcp_base_mss: the MSS black-hole detection falls back to first
# (RFC 4821 7.2 suggests starting around 1024 bytes too).
BASE_MSS = 1024
# Linux's tcp_retries1: once this many retransmissions timed out, suspect the path.
BLACK_HOLE_TIMEOUTS = 3


class IcmpMeaning(NamedTuple):
    what: str  # for the trace
    error: str  # errno name
    hard: bool  # refuses a connection being opened (SYN_SENT)


# Destination Unreachable codes, as Linux's icmp_err_convert: 0, 1, 5 are soft
# (RFC 1122 4.2.3.9 MUST NOT abort), 2 and 3 hard (RFC 1122: "hard error
# conditions"); the later codes hard or soft as Linux has them.
_UNREACHABLE = {
    NET_UNREACH: IcmpMeaning("net unreachable", "ENETUNREACH", False),
    HOST_UNREACH: IcmpMeaning("host unreachable", "EHOSTUNREACH", False),
    PROTO_UNREACH: IcmpMeaning("protocol unreachable", "ENOPROTOOPT", True),
    PORT_UNREACH: IcmpMeaning("port unreachable", "ECONNREFUSED", True),
    FRAG_NEEDED: IcmpMeaning("fragmentation needed", "EMSGSIZE", False),
    SOURCE_ROUTE_FAILED: IcmpMeaning("source route failed", "EOPNOTSUPP", False),
    NET_UNKNOWN: IcmpMeaning("net unknown", "ENETUNREACH", True),
    HOST_UNKNOWN: IcmpMeaning("host unknown", "EHOSTDOWN", True),
    HOST_ISOLATED: IcmpMeaning("host isolated", "ENONET", True),
    NET_PROHIBITED: IcmpMeaning("net prohibited", "ENETUNREACH", True),
    HOST_PROHIBITED: IcmpMeaning("host prohibited", "EHOSTUNREACH", True),
    NET_UNREACH_FOR_TOS: IcmpMeaning("net unreachable for TOS", "ENETUNREACH", False),
    HOST_UNREACH_FOR_TOS: IcmpMeaning("host unreachable for TOS", "EHOSTUNREACH", False),
    ADMIN_PROHIBITED: IcmpMeaning("administratively prohibited", "EHOSTUNREACH", True),
    PRECEDENCE_VIOLATION: IcmpMeaning("precedence violation", "EHOSTUNREACH", True),
    PRECEDENCE_CUTOFF: IcmpMeaning("precedence cutoff", "EHOSTUNREACH", True),
}
_TIME_EXCEEDED = IcmpMeaning("time exceeded", "EHOSTUNREACH", False)
_PARAMETER_PROBLEM = IcmpMeaning("parameter problem", "EPROTO", False)


# ICMPv6 (RFC 4443 3), as Linux's icmpv6_err_convert: its types are numbered
# otherwise than ICMP's (type 3 is Time Exceeded, 4 Parameter Problem).
_UNREACHABLE_V6 = {
    V6_NO_ROUTE: IcmpMeaning("no route", "ENETUNREACH", False),
    V6_ADMIN_PROHIBITED: IcmpMeaning("administratively prohibited", "EACCES", True),
    V6_BEYOND_SCOPE: IcmpMeaning("beyond scope of source address", "EHOSTUNREACH", False),
    V6_ADDRESS_UNREACH: IcmpMeaning("address unreachable", "EHOSTUNREACH", False),
    V6_PORT_UNREACH: IcmpMeaning("port unreachable", "ECONNREFUSED", True),
    V6_POLICY_FAILED: IcmpMeaning("source address failed policy", "EACCES", True),
    V6_REJECT_ROUTE: IcmpMeaning("reject route", "EACCES", True),
}
_PACKET_TOO_BIG = IcmpMeaning("packet too big", "EMSGSIZE", False)
_PARAMETER_PROBLEM_V6 = IcmpMeaning("parameter problem", "EPROTO", True)


def meaning(type_: int, code: int, ipv6: bool = False) -> IcmpMeaning | None:
    """What an ICMP (or, `ipv6`, ICMPv6) error (type, code) means to a
    connection, if anything."""
    if ipv6:
        if type_ == V6_DEST_UNREACH:
            return _UNREACHABLE_V6.get(code)
        if type_ == V6_PACKET_TOO_BIG:
            return _PACKET_TOO_BIG
        if type_ == V6_TIME_EXCEEDED:
            return _TIME_EXCEEDED
        if type_ == V6_PARAMETER_PROBLEM:
            return _PARAMETER_PROBLEM_V6
        return None
    if type_ == DEST_UNREACH:
        return _UNREACHABLE.get(code)
    if type_ == TIME_EXCEEDED:
        return _TIME_EXCEEDED
    if type_ == PARAMETER_PROBLEM:
        return _PARAMETER_PROBLEM
    return None


# The path MTU to a destination now, and when what ICMP taught about it expires
# (None: nothing learnt): (dst, now) -> (MTU, expiry) (the IP layer's cache).
PathMtu = Callable[[int, float], tuple[int, float | None]]
# Learn a lower path MTU for a destination: (dst, mtu, now).
LowerPathMtu = Callable[[int, int, float], object]


_QUOTED_TCP = struct.Struct("!HHI")  # source port, destination port, sequence number


def quoted_ports_and_seq(transport: bytes) -> tuple[int, int, int]:
    """The first 8 bytes of the quoted TCP header: (our port, the peer's port, SEQ)."""
    src_port, dst_port, sequence = _QUOTED_TCP.unpack_from(transport)
    return src_port, dst_port, sequence


class PathFeedback:
    """A connection's part that keeps what the path taught it: the last ICMP
    soft error, the path MTU (the demux sets what the IP layer's cache knows;
    an ICMP "fragmentation needed" lowers it) and until when it holds, and
    the MSS black-hole detection fell back to, if it did. From them comes
    the segment size the connection sends at."""

    __slots__ = ("_conn", "black_hole_mss", "default_peer_mss", "headers",
                 "path_mtu", "path_mtu_until", "soft_error")  # fmt: skip
    # The links back that TcpConnection.release() drops (mypyc: deletable).
    __deletable__ = ("_conn",)

    def __init__(self, conn: TcpConnection) -> None:
        self._conn = conn
        # The IP and TCP headers without options around each segment: 20 + 20
        # over IPv4; over IPv6 (use_ipv6) 40 + 20, so MSS = MTU - 60 (RFC 8200 8.3).
        self.headers = IPV4_TCP_HEADERS
        # RFC 9293 3.7.1 (MUST-15): the send MSS assumed without an MSS option.
        self.default_peer_mss = DEFAULT_PEER_MSS
        # The link's MTU: TcpConfig.mss is what IPv4 carries in it.
        self.path_mtu = conn.config.mss + IPV4_TCP_HEADERS
        # When a path MTU learnt from ICMP expires: the MSS grows back then,
        # and a path still narrow says so again (RFC 1191 6.3; Linux's
        # mtu_expires reaches sockets through their route's MTU).
        self.path_mtu_until: float | None = None
        self.black_hole_mss: int | None = None
        # The last ICMP soft error (an errno name), reported if the connection
        # times out (RFC 1122 4.2.3.9); an ACK that moves SND.UNA clears it.
        self.soft_error: str | None = None

    def use_ipv6(self) -> None:
        """The connection runs over IPv6: 20 more bytes of IP header, 1220 the
        default peer MSS (RFC 9293 3.7.1, RFC 8200 8.3)."""
        self.headers = IPV6_TCP_HEADERS
        self.default_peer_mss = DEFAULT_PEER_MSS_IPV6
        conn = self._conn
        if conn.peer_mss == DEFAULT_PEER_MSS:
            conn.peer_mss = DEFAULT_PEER_MSS_IPV6

    def advertised_mss(self) -> int:
        """The MSS option of our SYN: the link's MTU less the headers (RFC
        9293 3.7.1; 1440 over IPv6 on a 1500-byte link)."""
        return self._conn.config.mss + IPV4_TCP_HEADERS - self.headers

    def mss_limit(self) -> int:
        """The largest segment (without options) the peer takes and the path
        carries: its MSS, ours, the path MTU less the headers (RFC 1191 6.1,
        RFC 8201 5, RFC 9293 3.7.1), and black-hole detection's fallback."""
        conn = self._conn
        headers = self.headers
        limit = min(conn.peer_mss, self.advertised_mss(), self.path_mtu - headers)
        if self.black_hole_mss is not None:
            limit = min(limit, self.black_hole_mss)
        return max(limit, MIN_PEER_MSS)

    def effective_mss(self) -> int:
        """Payload per segment: the MSS limit less the timestamps option."""
        return self.mss_limit() - (12 if self._conn.ts_ok else 0)

    def icmp_error(
        self,
        type_: int,
        code: int,
        mtu: int,
        dst: int,
        sequence: int,
        now: float,
        counters: Counters,
        path_mtu: PathMtu | None,
        lower_path_mtu: LowerPathMtu | None,
    ) -> DropReason | None:
        """An ICMP error quoting `sequence`, which the demux found to be about
        this connection; `mtu`: the path MTU a "fragmentation needed" stands
        for (RFC 1191), else 0. Acted on only if the sequence number lies in
        SND.UNA..SND.MAX (RFC 5927 4.1: else anyone could forge it); else the
        reason to drop it."""
        conn = self._conn
        snd = conn.sender
        # SND.MAX is Linux's snd_nxt (ours goes back after a timeout); both ends
        # included, as Linux's between().
        if not (seq.le(snd.snd_una, sequence) and seq.le(sequence, snd.snd_max)):
            return DropReason.BAD_SEQ
        ipv6 = self.headers == IPV6_TCP_HEADERS
        what = meaning(type_, code, ipv6)
        if what is None:  # (the IP layer passes only errors it knows)
            return DropReason.UNHANDLED_ERROR
        counters["icmp6.in.error-for-connection" if ipv6 else "icmp.in.error-for-connection"] += 1
        if not mtu:
            conn.icmp_error(what.what, what.error, what.hard, now)
            return None
        # Fragmentation needed (RFC 1191): the destination's cached path MTU
        # may go down (never below the floor: then, as Linux, EMSGSIZE is kept
        # as a soft error), and the connection follows it.
        learnt = mtu
        until = None
        if lower_path_mtu is not None and path_mtu is not None:
            lower_path_mtu(dst, mtu, now)
            learnt, until = path_mtu(dst, now)
        if learnt > mtu:
            self.soft_error = "EMSGSIZE"  # the path is narrower than we will go
        if self.lower_path_mtu(learnt, mtu, now, until):
            counters["tcp.pmtu.lowered"] += 1
        else:
            counters["tcp.pmtu.not-lower"] += 1
        return None

    def remember(self, what: str, error: str, hard: bool) -> None:
        """An ICMP error that does not end the connection: kept for a timeout
        to report (no abort on an ICMP alone, RFC 5461 4.1)."""
        self.soft_error = error
        if hard:
            self._conn.decide(
                Note.ICMP_HARD_ERROR_KEPT, what=what, error=error, state=self._conn.state
            )
        else:
            self._conn.decide(Note.ICMP_SOFT_ERROR, what=what, error=error)

    def lower_path_mtu(
        self, pmtu: int, reported: int, now: float, until: float | None = None
    ) -> bool:
        """Fragmentation needed (RFC 1191 6.1): the path MTU to the peer is
        now `pmtu`. The MSS follows, and what is in flight in segments larger
        than it goes again at once, cut to the new size (as Linux's
        tcp_simple_retransmit: no congestion response, the loss was not
        congestion). False if `pmtu` is not below the path MTU in use."""
        conn = self._conn
        conn.now = now
        old = self.path_mtu
        if pmtu >= old:
            conn.decide(Note.PATH_MTU_NOT_LOWER, mtu=reported, pmtu=old)
            return False
        self.path_mtu = pmtu
        self.path_mtu_until = until
        self._resize(self.effective_mss())
        resent = 0
        if conn.state in SENDS_DATA:
            resent = conn.recovery.resend_too_big()
        conn.decide(Note.PATH_MTU_LOWERED, old=old, pmtu=pmtu, mss=conn.mss, resent=resent)
        conn._output()
        return True

    def expire(self) -> None:
        """What ICMP taught about the path is stale: back to the link's MTU."""
        conn = self._conn
        self.path_mtu_until = None
        old = self.path_mtu
        self.path_mtu = conn.config.mss + IPV4_TCP_HEADERS
        if conn.state is not State.SYN_SENT:
            self._resize(self.effective_mss())
        conn.decide(Note.PATH_MTU_EXPIRED, old=old, pmtu=self.path_mtu, mss=conn.mss)

    def _resize(self, mss: int) -> None:
        """A new segment size for what is sent from now on."""
        conn = self._conn
        if mss == conn.mss:
            return
        conn.mss = mss
        conn.recovery.cc.mss = mss

    def black_hole_check(self) -> None:
        """Called at each retransmission timeout. With mtu_probing on, after
        BLACK_HOLE_TIMEOUTS timeouts of segments larger than a smaller MSS and
        no ICMP, the path may drop big packets silently (a PMTU black hole,
        RFC 2923 2.1): fall back to BASE_MSS, then halve at each further
        timeout (Linux tcp_mtu_probing=1 with tcp_base_mss)."""
        conn = self._conn
        recovery = conn.recovery
        if (
            not conn.config.mtu_probing
            or recovery.retries <= BLACK_HOLE_TIMEOUTS
            or conn.state not in SENDS_DATA
        ):
            return
        limit = self.mss_limit()
        fallback = BASE_MSS if self.black_hole_mss is None else limit // 2
        fallback = max(min(fallback, limit), MIN_PEER_MSS)
        snd = conn.sender
        if fallback >= limit or seq.diff(snd.snd_max, snd.snd_una) <= fallback:
            return  # nothing smaller to try, or what is lost was small already
        old = conn.mss
        self.black_hole_mss = fallback
        self._resize(self.effective_mss())
        if conn.counters is not None:
            conn.counters["tcp.mtu-probing.fallback"] += 1
        conn.decide(Note.BLACK_HOLE_FALLBACK, count=recovery.retries, old=old, mss=conn.mss)

    def timeout_error(self) -> str:
        """ETIMEDOUT, or the soft error an ICMP left (RFC 1122 4.2.3.9: "SHOULD
        make available to the application"; Linux: sk_err_soft ?: ETIMEDOUT)."""
        if self.soft_error is None:
            return "ETIMEDOUT"
        self._conn.decide(Note.SOFT_ERROR_REPORTED, error=self.soft_error)
        return self.soft_error


def receive_icmp_error(
    demux: TcpDemux, type_: int, code: int, mtu: int, quote: Quote, now: float, relayed: bool
) -> None:
    """An ICMP error quoting a segment we sent (RFC 1122 4.2.3.9). Acted on
    only if it names a connection and a sequence number in SND.UNA..SND.NXT
    (RFC 5927 4.1: else anyone could forge it); `mtu`: the path MTU a
    "fragmentation needed" stands for (RFC 1191), else 0. With no connection
    for it, it goes to the other workers if there are (foreign_icmp_error:
    `serve --queues`); `relayed`: it comes from one, which had none."""
    counters = demux._counters
    local_port, remote_port, sequence = quoted_ports_and_seq(quote.transport)
    key = (quote.dst, remote_port, local_port)
    summary = f"about {format_endpoint(quote.dst, remote_port)} from port {local_port}"
    layer = Layer.ICMP6 if quote.dst > IPV4_MAX else Layer.ICMP
    conn = demux.connections.get(key)
    # In TIME_WAIT (a record, or a connection not yet handed to one) nothing
    # of ours is in flight: nothing to act on, and nothing for other workers.
    if conn is None or conn.state is State.TIME_WAIT:
        prefix = "icmp6" if layer is Layer.ICMP6 else "icmp"
        ours = conn is not None or demux.time_wait_at(key) is not None
        if relayed:
            counters[f"{prefix}.in.relayed-not-here"] += 1  # another worker's, or nobody's
        elif demux.foreign_icmp_error is not None and not ours:
            counters[f"{prefix}.in.relayed-to-workers"] += 1
            demux.foreign_icmp_error(type_, code, mtu, quote)
        else:
            counters.drop(layer, DropReason.NO_CONNECTION, now, summary)
        return
    reason = conn.path.icmp_error(
        type_, code, mtu, quote.dst, sequence, now, counters, demux.path_mtu, demux.lower_path_mtu
    )
    if reason is None:
        demux.flush(conn)
    else:
        detail = f"{summary}, seq {sequence}" if reason is DropReason.BAD_SEQ else summary
        counters.drop(layer, reason, now, detail)
