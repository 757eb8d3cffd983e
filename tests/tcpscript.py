"""A packetdrill-like DSL for the sans-I/O TCP core, on a virtual clock.

    t = TcpScript(listen=80)
    t.send("S", seq=PEER_ISS, mss=1460)              # the peer sends us a SYN
    t.expect("S.", seq=OUR_ISS, ack=PEER_ISS + 1)    # we must answer exactly this
    t.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1)
    t.expect_none()
    assert t.states() == ["LISTEN", "SYN_RECEIVED", "ESTABLISHED"]
    t.at(61.0)                                       # the clock moves, timers fire

After every segment, timer and application call the TCB invariants of
ustack/tcp/invariants.py are checked (SND.UNA <= SND.NXT, the window's
right edge, buffers, timers per state, the demux tables): a script that
breaks one fails there, with the rule's name.

Segments go in as real bytes through IP and TCP input (checksums, parsing,
demultiplexing); what comes out is parsed back from the bytes we would put on
the TUN. Flags are tcpdump's: S F R P and "." for ACK.

A script runs over IPv4 or IPv6 (`TcpScript(family=IPV6)`): the stack is a
dual stack either way, the peer talks to it in the script's family, and
`t.peer`, `t.us` and `t.mss` (the MSS our SYN offers) are that family's. The
tests that run over both take the `family` fixture (tests/unit/conftest.py).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from ustack.stack import Stack
from ustack.tcp.connection import TcpConfig
from ustack.tcp.connection import TcpConnection
from ustack.tcp.events import AppEvent
from ustack.tcp.invariants import InvariantChecker
from ustack.tcp.segment import flag_string
from ustack.tcp.states import Event
from ustack.tcp.states import State
from ustack.trace.records import Decision
from ustack.trace.records import StateChange
from ustack.trace.records import TraceEvent
from ustack.wire import icmp
from ustack.wire import icmpv6
from ustack.wire.ipv4 import PROTO_ICMP
from ustack.wire.ipv4 import PROTO_TCP
from ustack.wire.ipv4 import build_ipv4
from ustack.wire.ipv4 import parse_ipv4
from ustack.wire.ipv6 import IPV6_HEADER_LENGTH
from ustack.wire.ipv6 import NH_ICMPV6
from ustack.wire.ipv6 import build_ipv6
from ustack.wire.ipv6 import parse_ipv6
from ustack.wire.tcp import TcpOptions
from ustack.wire.tcp import build_tcp
from ustack.wire.tcp import parse_tcp

US = 0xC6120002  # 198.18.0.2, the stack
PEER = 0xC6120001  # 198.18.0.1, the Linux side
ROUTER = 0xC6120101  # 198.18.1.1, a hop on the way
US6 = 0x2001_0002_0000_0000_0000_0000_0000_0002  # 2001:2::2
PEER6 = 0x2001_0002_0000_0000_0000_0000_0000_0001  # 2001:2::1
ROUTER6 = 0x2001_0002_0001_0000_0000_0000_0000_0001  # 2001:2:1::1
OUR_ISS = 5000
PEER_ISS = 1000
PEER_PORT = 40000
WINDOW = 65535

# Set by the coverage test: every transition any script makes is reported here.
transition_recorder: Callable[[StateChange], None] | None = None
# Set by the explain words test: every script made is reported here, to read its trace.
script_recorder: Callable[[TcpScript], None] | None = None

_FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, ".": 0x10, "U": 0x20, "E": 0x40,
              "W": 0x80}  # fmt: skip


def flags_of(text: str) -> int:
    bits = 0
    for char in text:
        bits |= _FLAG_BITS[char]
    return bits


def canonical_flags(text: str) -> str:
    return flag_string(flags_of(text))


@dataclass(frozen=True)
class Family:
    """One IP version as a script uses it: the addresses, the headers around
    a TCP segment, and how its ICMP names each error."""

    name: str  # "ipv4" or "ipv6": the pytest id
    icmp: str  # the ICMP layer's counter prefix: "icmp" or "icmp6"
    us: int
    peer: int
    router: int
    tcp_headers: int  # IP + TCP without options: 40 or 60 (RFC 8200 8.3)
    # (type, code) of: port unreachable, host unreachable, time exceeded, too big
    errors: dict[str, tuple[int, int]]

    def __repr__(self) -> str:
        return self.name

    @property
    def ipv6(self) -> bool:
        return self.name == "ipv6"

    def packet(self, src: int, dst: int, protocol: int, payload: bytes, ecn: int = 0) -> bytes:
        if self.ipv6:
            return build_ipv6(src=src, dst=dst, next_header=protocol, payload=payload,
                              traffic_class=ecn)  # fmt: skip
        header = build_ipv4(
            src=src, dst=dst, protocol=protocol, payload_length=len(payload), ecn=ecn
        )
        return header + payload

    def unpack(self, packet: bytes) -> tuple[int, int, int, int, bytes]:
        """(src, dst, protocol, ECN, payload) of a packet the stack sent."""
        if self.ipv6:
            ip6 = parse_ipv6(packet)
            end = IPV6_HEADER_LENGTH + ip6.payload_length
            return ip6.src, ip6.dst, ip6.next_header, ip6.ecn, packet[IPV6_HEADER_LENGTH:end]
        ip = parse_ipv4(packet)
        return ip.src, ip.dst, ip.protocol, ip.ecn, packet[ip.header_length : ip.total_length]

    def icmp_error(self, kind: str | tuple[int, int], quote: bytes, mtu: int = 0) -> bytes:
        """The router's ICMP (ICMPv6) error `kind` (a name, or the family's
        (type, code)) quoting `quote`, to us."""
        type_, code = self.errors[kind] if isinstance(kind, str) else kind
        if self.ipv6:
            message = icmpv6.build_icmpv6(
                src=self.router, dst=self.us, type=type_, code=code, rest=mtu, payload=quote
            )
            return self.packet(self.router, self.us, NH_ICMPV6, message)
        message = icmp.build_icmp(type=type_, code=code, rest=mtu, payload=quote)
        return self.packet(self.router, self.us, PROTO_ICMP, message)


IPV4 = Family("ipv4", "icmp", US, PEER, ROUTER, 40, {
    "port-unreachable": (icmp.DEST_UNREACH, icmp.PORT_UNREACH),
    "host-unreachable": (icmp.DEST_UNREACH, icmp.HOST_UNREACH),
    "time-exceeded": (icmp.TIME_EXCEEDED, 0),
    "too-big": (icmp.DEST_UNREACH, icmp.FRAG_NEEDED),
})  # fmt: skip
IPV6 = Family("ipv6", "icmp6", US6, PEER6, ROUTER6, 60, {
    "port-unreachable": (icmpv6.DEST_UNREACH, icmpv6.PORT_UNREACH),
    "host-unreachable": (icmpv6.DEST_UNREACH, icmpv6.ADDRESS_UNREACH),
    "time-exceeded": (icmpv6.TIME_EXCEEDED, icmpv6.HOP_LIMIT_EXCEEDED),
    "too-big": (icmpv6.PACKET_TOO_BIG, 0),
})  # fmt: skip
FAMILIES = (IPV4, IPV6)


@dataclass
class Out:
    """A segment the stack sent, parsed back from its bytes."""

    flags: str
    seq: int
    ack: int
    window: int
    payload: bytes
    options: TcpOptions
    src_port: int
    dst_port: int
    ecn: int = 0  # the IP ECN field it went with

    def __repr__(self) -> str:
        return (
            f"<{self.flags} seq={self.seq} ack={self.ack} win={self.window}"
            f" len={len(self.payload)} {self.src_port}->{self.dst_port}>"
        )


@dataclass
class AppLog:
    events: list[AppEvent] = field(default_factory=list)

    def __call__(self, event: AppEvent) -> None:
        self.events.append(event)

    def names(self) -> list[str]:
        return [type(event).__name__ for event in self.events]


class TcpScript:
    def __init__(
        self,
        listen: int | None = 80,
        our_iss: int = OUR_ISS,
        backlog: int = 128,
        syncookies: bool = True,
        family: Family = IPV4,
        **config: Any,
    ) -> None:
        # Short TIME_WAIT; RFC 6298's 1 s minimum RTO keeps timer arithmetic readable.
        config.setdefault("msl", 1.0)
        config.setdefault("min_rto", 1.0)
        # Every segment ACKed at once, so a script's expectations stay exact;
        # the delayed-ACK scripts turn it on.
        config.setdefault("delayed_ack", 0.0)
        # Every invalid segment answered (no 500 ms per-connection limit on
        # those ACKs), for the same reason; test_rate_limits_core.py turns it on.
        config.setdefault("invalid_ack_ratelimit", 0.0)
        self.config = TcpConfig(**config)
        self.speak(family)
        self.now = 0.0
        self.trace: list[TraceEvent] = []
        self._wire: list[bytes] = []
        self._iss = our_iss
        self.stack = Stack(
            US, self._transmit, tcp_config=self.config, trace=self._on_trace, isn=self._isn,
            syncookies=syncookies, address6=US6,
        )  # fmt: skip
        self.tcp = self.stack.tcp
        self.accepted: list[TcpConnection] = []
        self.apps: dict[TcpConnection, AppLog] = {}
        self.conn: TcpConnection | None = None
        self.listener = None
        if listen is not None:
            self.listener = self.tcp.listen(listen, self._accept, backlog=backlog, now=self.now)
        self.local_port = listen or 0
        self.checker = InvariantChecker(self.tcp)
        if script_recorder is not None:
            script_recorder(self)

    def speak(self, family: Family) -> None:
        """From now on the peer talks to the stack over `family` (a dual
        stack's other family: another peer, the same listeners)."""
        self.family = family
        self.us, self.peer = family.us, family.peer
        # The MSS our SYNs offer: the link's MTU less the family's headers.
        self.mss = self.config.mss + 40 - family.tcp_headers

    # ---- plumbing ---------------------------------------------------------------

    def _isn(self, *_: Any) -> int:
        return self._iss

    def _transmit(self, packet: bytes, gso_size: int = 0) -> bool:
        self._wire.append(packet)
        return True

    def _on_trace(self, event: TraceEvent) -> None:
        self.trace.append(event)
        if isinstance(event, StateChange) and transition_recorder is not None:
            transition_recorder(event)

    def _accept(self, conn: TcpConnection) -> None:
        self.accepted.append(conn)
        self.conn = conn
        log = self.apps.setdefault(conn, AppLog())
        self.tcp.attach(conn, log)

    @property
    def ip(self) -> Any:
        """The stack's IP layer of the script's family."""
        return self.stack.ip6 if self.family.ipv6 else self.stack.ip

    # ---- time ---------------------------------------------------------------------

    def at(self, t: float) -> TcpScript:
        """Move the virtual clock to t, firing every timer due on the way."""
        assert t >= self.now, f"time goes forward only ({t} < {self.now})"
        while (deadline := self.stack.next_deadline()) is not None and deadline <= t:
            self.now = max(self.now, deadline)
            self.stack.handle_timers(self.now)
            self.checker.check(self.now)
        self.now = t
        return self

    def wait(self, seconds: float) -> TcpScript:
        return self.at(self.now + seconds)

    # ---- the peer's side ------------------------------------------------------------

    def send(
        self,
        flags: str,
        seq: int = 0,
        ack: int = 0,
        payload: bytes = b"",
        win: int = WINDOW,
        mss: int | None = None,
        ws: int | None = None,
        sack_permitted: bool = False,
        ts: tuple[int, int] | None = None,
        sack: tuple[tuple[int, int], ...] = (),
        sport: int = PEER_PORT,
        dport: int | None = None,
        ecn: int = 0,
    ) -> TcpScript:
        """The peer sends us one segment (in a datagram with the ECN field `ecn`)."""
        options = None
        if mss is not None or ws is not None or sack_permitted or ts is not None or sack:
            options = TcpOptions(mss=mss, window_scale=ws, sack_permitted=sack_permitted,
                                 timestamps=ts, sack_blocks=tuple(sack))  # fmt: skip
        segment = build_tcp(
            src=self.peer, dst=self.us, src_port=sport, dst_port=dport or self.local_port,
            seq=seq & 0xFFFFFFFF, ack=ack & 0xFFFFFFFF, flags=flags_of(flags), window=win,
            options=options, payload=payload,
        )  # fmt: skip
        self.stack.receive(
            self.family.packet(self.peer, self.us, PROTO_TCP, segment, ecn), self.now
        )
        self.checker.check(self.now)
        return self

    def icmp_error(
        self,
        kind: str | tuple[int, int],
        seq: int,
        mtu: int = 0,
        quoted_length: int = 1500,
        quoted_src: int | None = None,
        sport: int | None = None,
        dport: int = PEER_PORT,
    ) -> TcpScript:
        """A router's ICMP error of `kind` ("port-unreachable", "host-unreachable",
        "time-exceeded", "too-big" with the `mtu`, or a (type, code)) in the script's family,
        about a TCP segment from us of `quoted_length` bytes, `seq` its SEQ:
        the quote is its IP header and the first 8 bytes of TCP."""
        family = self.family
        tcp8 = struct.pack("!HHI", sport or self.local_port, dport, seq & 0xFFFFFFFF)
        src = family.us if quoted_src is None else quoted_src
        headers = family.tcp_headers - 20
        segment = tcp8 + bytes(quoted_length - headers - len(tcp8))
        quote = family.packet(src, family.peer, PROTO_TCP, segment)
        self.stack.receive(family.icmp_error(kind, quote[: headers + 8], mtu), self.now)
        self.checker.check(self.now)
        return self

    def sent(self) -> list[Out]:
        """Everything the stack sent since the last look."""
        out = []
        for packet in self._wire:
            src, dst, protocol, ecn, raw = self.family.unpack(packet)
            assert (src, dst, protocol) == (self.us, self.peer, PROTO_TCP), packet[:40].hex()
            tcp = parse_tcp(raw)
            out.append(
                Out(flag_string(tcp.flags), tcp.seq, tcp.ack, tcp.window,
                    bytes(raw[tcp.header_length :]), tcp.options, tcp.src_port, tcp.dst_port,
                    ecn)
            )  # fmt: skip
        self._wire.clear()
        return out

    def expect(
        self,
        flags: str,
        seq: int | None = None,
        ack: int | None = None,
        payload: bytes | None = None,
        win: int | None = None,
        **options: Any,
    ) -> Out:
        """Exactly one segment must have gone out, with these fields."""
        out = self.sent()
        assert len(out) == 1, f"expected one {flags} segment, the stack sent {out}"
        return self._check(out[0], flags, seq, ack, payload, win, options)

    def expect_many(self, *flags: str) -> list[Out]:
        out = self.sent()
        assert [o.flags for o in out] == [canonical_flags(f) for f in flags], out
        return out

    def expect_none(self) -> None:
        out = self.sent()
        assert out == [], f"expected silence, the stack sent {out}"

    @staticmethod
    def _check(
        out: Out, flags: str, seq: int | None, ack: int | None, payload: bytes | None,
        win: int | None, options: dict[str, Any],
    ) -> Out:  # fmt: skip
        assert out.flags == canonical_flags(flags), f"flags: {out}"
        if seq is not None:
            assert out.seq == seq & 0xFFFFFFFF, f"seq: {out} (want {seq})"
        if ack is not None:
            assert out.ack == ack & 0xFFFFFFFF, f"ack: {out} (want {ack})"
        if payload is not None:
            assert out.payload == payload, f"payload: {out.payload[:40]!r}..."
        if win is not None:
            assert out.window == win, f"window: {out} (want {win})"
        for name, value in options.items():
            assert getattr(out.options, name) == value, f"{name}: {out.options}"
        return out

    # ---- handshakes, for scripts that start later in life -------------------------------

    def establish(self, win: int = WINDOW, **syn_options: Any) -> TcpConnection:
        """Passive open completed: the peer connected to our listener."""
        self.send("S", seq=PEER_ISS, win=win, **syn_options)
        self.expect("S.", seq=OUR_ISS, ack=PEER_ISS + 1)
        self.send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1, win=win)
        self.expect_none()
        assert self.conn is not None and self.conn.state is State.ESTABLISHED
        return self.conn

    def connect(self, port: int = 8080, local_port: int = 50000) -> TcpConnection:
        """Active OPEN: we send a SYN to the peer."""
        self.local_port = local_port
        conn = self.tcp.connect(self.peer, port, self.now, local_port=local_port)
        self.conn = conn
        self.tcp.attach(conn, self.apps.setdefault(conn, AppLog()))
        self.tcp.flush(conn)
        return conn

    def connect_established(self, port: int = 8080, local_port: int = 50000) -> TcpConnection:
        conn = self.connect(port, local_port)
        self.expect("S", seq=OUR_ISS)
        self.send("S.", seq=PEER_ISS, ack=OUR_ISS + 1, sport=port, mss=1460)
        self.expect(".", seq=OUR_ISS + 1, ack=PEER_ISS + 1)
        assert conn.state is State.ESTABLISHED
        return conn

    def simultaneous_open(self, port: int = 8080, **syn_options: Any) -> TcpConnection:
        """Active OPEN crossed by the peer's own SYN (RFC 9293 3.5 Figure 8): we
        answer SYN,ACK with our first ISS and wait in SYN_RECEIVED."""
        conn = self.connect(port)
        self.expect("S", seq=OUR_ISS)
        self.send("S", seq=PEER_ISS, sport=port, **syn_options)
        self.expect("S.", seq=OUR_ISS, ack=PEER_ISS + 1)
        assert conn.state is State.SYN_RECEIVED
        return conn

    # ---- the application's side ----------------------------------------------------------

    def _flush(self) -> None:
        assert self.conn is not None
        self.tcp.flush(self.conn)
        self.checker.check(self.now)

    def write(self, data: bytes) -> int:
        assert self.conn is not None
        n = self.conn.send(data, self.now)
        self._flush()
        return n

    def read(self, max_bytes: int = 1 << 30) -> bytes:
        assert self.conn is not None
        data = self.conn.read(max_bytes, self.now)
        self._flush()
        return data

    def shutdown(self) -> None:
        assert self.conn is not None
        self.conn.shutdown(self.now)
        self._flush()

    def close(self) -> None:
        assert self.conn is not None
        self.conn.close(self.now)
        self._flush()

    def abort(self) -> None:
        assert self.conn is not None
        self.conn.abort(self.now)
        self._flush()

    # ---- what happened ----------------------------------------------------------------------

    def states(self, conn: TcpConnection | None = None) -> list[str]:
        """The states `conn` (default: the current one) went through, in order."""
        conn = conn or self.conn
        assert conn is not None
        changes = [e for e in self.trace if isinstance(e, StateChange) and e.conn == conn.conn_id]
        if not changes:
            return [str(conn.state)]
        return [str(changes[0].old)] + [str(e.new) for e in changes]

    def events(self, conn: TcpConnection | None = None) -> list[Event]:
        conn = conn or self.conn
        assert conn is not None
        return [
            e.event for e in self.trace if isinstance(e, StateChange) and e.conn == conn.conn_id
        ]

    def decisions(self) -> list[str]:
        return [e.what for e in self.trace if isinstance(e, Decision)]

    def decision_kinds(self) -> list[str]:
        """The kinds of the decisions traced (Note members' kind), in order."""
        return [e.kind for e in self.trace if isinstance(e, Decision)]

    def app_events(self, conn: TcpConnection | None = None) -> list[str]:
        conn = conn or self.conn
        assert conn is not None
        return self.apps[conn].names()

    @property
    def table(self) -> dict[str, int]:
        """Connections by state: empty once everything is over."""
        return self.tcp.queued()


def bulk_sender(mss: int = 1000, **config: Any) -> TcpScript:
    """An established connection on which we send: the peer's MSS `mss`, a
    large window; NewReno, for exact congestion-window figures."""
    config.setdefault("congestion_control", "newreno")
    t = TcpScript(listen=80, **config)
    t.establish(mss=mss, win=65535)
    return t
