"""The fuzz target: raw IPv4 and IPv6 packets into the stack's real input
path (a dual stack), on a virtual clock, with invariants checked after every
step. The IPv6 and ICMPv6 builders are in tests/fuzz_ipv6.py.

A fuzz input is a byte string read as a *program* (`run_program`): the first
byte picks a setup (TCP configuration, listeners, ISNs), every following op
is one step chosen from the bytes. The steps are structure-aware: a
well-formed handshake, a segment whose fields are picked around the live
TCB's values (RCV.NXT, RCV.NXT+RCV.WND, SND.UNA, SND.NXT, SND.MAX, 2^31 away,
wrap-around), every flag combination, valid and broken options, wrong data
offsets, IHL and total lengths, mostly correct checksums so that packets get
past them; garbage; time moving on so timers fire; and the application's
calls (read, write, shutdown, close, abort) as the services make them.

Each step is recorded as a concrete *action* (the packet's bytes, the time
step, the call), so a failing program becomes a `case` that replays without
the generator: the regression corpus (tests/fuzz_corpus/*.json) is cases.

After every action: no exception escaped the stack, the packet was counted
(accepted or a counted drop), every packet sent parses with valid checksums,
and `InvariantChecker` (ustack/tcp/invariants.py) holds over every TCB and
the tables. At the end every connection is closed, the clock runs six hours
and nothing may be left. A break raises `FuzzFailure`, which holds the case.
"""

from __future__ import annotations

import json
import struct
import traceback
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests import fuzz_ipv6 as v6
from tests.fuzz_ipv6 import PEER6
from tests.fuzz_ipv6 import PEER6_2
from tests.fuzz_ipv6 import US6
from tests.fuzz_ipv6 import is_ipv6
from ustack.linux.tun import _finish_checksum
from ustack.net.address_rules import is_unicast_host as _is_unicast_source
from ustack.net.fragments import FragmentLimits
from ustack.stack import Stack
from ustack.study.sinks import FanOut
from ustack.study.sinks import JsonlWriter
from ustack.study.sinks import PcapWriter
from ustack.study.sinks import TextWriter
from ustack.tcp import seq
from ustack.tcp.connection import ConnectionClosedError
from ustack.tcp.connection import TcpConfig
from ustack.tcp.connection import TcpConnection
from ustack.tcp.events import AppEvent
from ustack.tcp.events import Closed
from ustack.tcp.events import DataReceived
from ustack.tcp.events import EndOfStream
from ustack.tcp.invariants import InvariantChecker
from ustack.tcp.invariants import InvariantError
from ustack.tcp.isn import IsnGenerator
from ustack.tcp.segment import Segment
from ustack.tcp.states import State
from ustack.tcp.syncookies import SynCookies
from ustack.wire.checksum import internet_checksum
from ustack.wire.checksum import transport_checksum
from ustack.wire.errors import MalformedPacket
from ustack.wire.ipv4 import PROTO_ICMP
from ustack.wire.ipv4 import PROTO_TCP
from ustack.wire.ipv4 import PROTO_UDP
from ustack.wire.ipv4 import parse_ipv4
from ustack.wire.ipv6 import IPV6_MIN_MTU
from ustack.wire.ipv6 import parse_ipv6
from ustack.wire.tcp import ACK
from ustack.wire.tcp import CWR
from ustack.wire.tcp import ECE
from ustack.wire.tcp import FIN
from ustack.wire.tcp import PSH
from ustack.wire.tcp import RST
from ustack.wire.tcp import SYN
from ustack.wire.tcp import URG
from ustack.wire.tcp import parse_tcp

US = 0xC6120002  # 198.18.0.2
PEER = 0xC6120001  # 198.18.0.1
PEER2 = 0xC6120003
BAD_SOURCES = (0, 0xFFFFFFFF, 0x7F000001, 0xE0000001)
LISTEN_PORTS = (80, 7)
CLOSED_PORT = 81
PEER_PORTS = (40000, 40001, 40002, 40003)
CONNECT_PORTS = (8080, 8081)
LOCAL_PORTS = (50000, 50001)
HALF = 1 << 31
MASK = 0xFFFFFFFF

MAX_OPS = 80  # steps per program
FINISH_TIME = 6 * 3600.0  # after the program: every timer of every state has fired
MAX_TIMER_FIRINGS = 5000  # in one time step: more is a timer storm
MAX_PACKETS_OUT = 2000  # in one action: more is a packet storm
_PATTERN = bytes(range(256)) * 1100  # payloads are slices of it (>= 256 KB + 65 KB)

Action = list[Any]
Case = dict[str, Any]

# The setups a program starts from: each reaches different corners (window
# scaling or none, tiny buffers, timers short enough to run out, cookies...).
_BASE = {"msl": 1.0, "min_rto": 0.2, "delayed_ack": 0.04}
_FEWER_RETRIES = {"retries": 6}  # the finish's timeouts cost time; setup 0 keeps Linux's 15
SETUPS: list[dict[str, Any]] = [
    {"config": {**_BASE}, "backlog": 128, "syncookies": True, "isn_base": 0,
     "isn_hash": True, "mtu": 1500, "trace": False},
    {"config": {**_BASE, **_FEWER_RETRIES, "receive_buffer": 2048, "send_buffer": 4096, "mss": 536,
                "delayed_ack": 0.0},
     "backlog": 1, "syncookies": True, "isn_base": 0xFFFFF000, "isn_hash": False, "mtu": 576,
     "trace": True,
     # A cap a few datagrams fill, a short timeout: eviction and expiry happen.
     "fragments": {"high_thresh": 20000, "timeout": 5.0, "max_fragments": 16}},
    {"config": {**_BASE, **_FEWER_RETRIES, "congestion_control": "newreno", "nagle": False,
                "sack": False, "timestamps": False, "rfc1337": False, "receive_buffer": 70000,
                "send_buffer": 16384, "mtu_probing": True},
     "backlog": 2, "syncookies": False, "isn_base": HALF - 100, "isn_hash": False,
     "mtu": 1500, "trace": False},
    {"config": {**_BASE, **_FEWER_RETRIES, "keepalive_idle": 5.0, "keepalive_interval": 1.0,
                "keepalive_probes": 3, "gso_segments": 4, "window_scaling": False,
                "receive_buffer": 8192, "send_buffer": 65536, "mtu_probing": True},
     "backlog": 128, "syncookies": True, "isn_base": 0, "isn_hash": True, "mtu": 9000,
     "trace": True},
    {"config": {**_BASE, "retries": 3, "syn_retries": 2, "synack_retries": 1, "max_rto": 4.0,
                "fin_wait_2_timeout": 5.0, "receive_buffer": 300000, "send_buffer": 8192,
                "initial_window_segments": 2, "challenge_ack_limit": 2},
     "backlog": 3, "syncookies": True, "isn_base": 0xFFFFFFFF, "isn_hash": False,
     "mtu": 1500, "trace": False},
]  # fmt: skip


class FuzzFailure(Exception):
    """A crash, a broken invariant, an uncounted packet, a leak or a storm.

    `signature` groups failures of one cause (an exception's type and place,
    or the rule); `case` replays it."""

    def __init__(self, signature: str, message: str) -> None:
        super().__init__(f"{signature}\n{message}")
        self.signature = signature
        self.message = message
        self.case: Case = {}


class Coverage:
    """What the programs reached, for the fuzzer's report: states, pairs of
    states a connection went through from one action to the next, counters."""

    def __init__(self) -> None:
        self.states: set[str] = set()
        self.moves: set[tuple[str, str]] = set()
        self.counters: set[str] = set()
        self.actions = 0
        self.packets = 0

    def summary(self) -> str:
        drops = sum(1 for name in self.counters if ".drop." in name)
        return (
            f"{len(self.states)}/9 connection states, {len(self.moves)} moves between them, "
            f"{len(self.counters)} counters ({drops} drop reasons)"
        )


class _Discard:
    """A stream for the trace writers that keeps nothing."""

    def write(self, data: str | bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class App:
    """The application side of one connection, as the services use it
    (ustack/api.py does these calls): `manual` reads only when told (a
    paused reader), `echo` reads everything and writes it back, shutting
    down after the peer's FIN, `sink` reads everything and closes at FIN."""

    def __init__(self, world: World, conn: TcpConnection) -> None:
        self.world = world
        self.conn = conn
        self.mode = "manual"
        self.done = False  # closed or aborted by us: no more calls
        self.closed = False  # the connection said Closed
        self.problem = ""  # an event out of order, for the checks

    def __call__(self, event: AppEvent) -> None:
        if self.closed and not self.problem:
            self.problem = f"{type(event).__name__} after Closed"
        if isinstance(event, Closed):
            self.done = self.closed = True
            return
        if self.mode == "manual" or self.done:
            return
        if isinstance(event, DataReceived | EndOfStream):
            conn, now = self.conn, self.world.now
            data = conn.read(1 << 30, now)
            if self.mode == "echo" and data:
                try:
                    conn.send(data, now)
                except (BrokenPipeError, ConnectionClosedError):
                    pass
            if conn.at_eof:
                if self.mode == "echo":
                    conn.shutdown(now)
                else:
                    conn.close(now)
                    self.done = True
            self.world.tcp.flush(conn)


class World:
    """One stack, its peers and applications; every action is recorded and checked."""

    def __init__(self, setup: dict[str, Any], coverage: Coverage | None = None) -> None:
        self.setup = setup
        self.coverage = coverage
        self.now = 0.0
        self.actions: list[Action] = []
        self._out: list[tuple[bytes, int]] = []
        # Our latest segment on each 4-tuple (remote, remote port, local port):
        # (seq, ack, flags, tsval), for SYN cookies and timestamp echoes.
        self.last_out: dict[tuple[int, int, int], tuple[int, int, int, int | None]] = {}
        self.apps: dict[TcpConnection, App] = {}
        self._states: dict[TcpConnection, str] = {}
        isn_hash = IsnGenerator(b"ustack-fuzz-isn!") if setup["isn_hash"] else None
        sink: Any = _Discard()
        base = setup["isn_base"]

        def isn(local: int, local_port: int, remote: int, remote_port: int, now: float) -> int:
            offset = isn_hash(local, local_port, remote, remote_port, now) if isn_hash else 0
            return (base + offset) & MASK

        self.stack = Stack(
            US,
            self._transmit,
            mtu=setup["mtu"],
            tcp_config=TcpConfig(**{"mss": setup["mtu"] - 40, **setup["config"]}),
            # The trace writers are on the input path too when --trace is given.
            trace=FanOut([TextWriter(sink), JsonlWriter(sink)]) if setup["trace"] else None,
            tap=PcapWriter(sink) if setup["trace"] else None,
            isn=isn,
            syncookies=setup["syncookies"],
            fragment_limits=FragmentLimits(**setup.get("fragments", {})),
            # A dual stack where the link carries IPv6 (RFC 8200 5: 1280 bytes).
            address6=US6 if setup["mtu"] >= IPV6_MIN_MTU else None,
        )
        self.tcp = self.stack.tcp
        self.tcp.connection_class = _WindowChecked
        if self.tcp.syncookies is not None:
            self.tcp.syncookies = SynCookies(b"ustack-fuzz-cook")  # reproducible cookies
        for port in LISTEN_PORTS:
            self.tcp.listen(port, self._accept, backlog=self._backlog(port), now=0.0)
        self.checker = InvariantChecker(self.tcp)

    def _backlog(self, port: int) -> int:
        return self.setup["backlog"] if port == LISTEN_PORTS[0] else 128

    def _accept(self, conn: TcpConnection) -> None:
        app = self.apps[conn] = App(self, conn)
        self.tcp.attach(conn, app)

    def _transmit(self, packet: bytes | bytearray, gso_size: int = 0) -> bool:
        self._out.append((bytes(packet), gso_size))
        return True

    # ---- actions ------------------------------------------------------------------

    def apply(self, action: Action) -> None:
        """Record and run one action, then check everything."""
        self.actions.append(action)
        self._out.clear()
        if self.coverage is not None:
            self.coverage.actions += 1
            self.coverage.packets += action[0] == "packet"
        try:
            kind = action[0]
            if kind == "packet":
                self._packet(action[1])
            elif kind == "advance":
                self._advance(float(action[1]))
            elif kind == "app":
                self._app(tuple(action[1]), action[2], action[3])
            elif kind == "connect":
                self._connect(action[1], action[2], *action[3:])
            elif kind == "listen":
                if action[1] not in self.tcp.listeners:
                    self.tcp.listen(action[1], self._accept, self._backlog(action[1]), self.now)
            elif kind == "unlisten":
                listener = self.tcp.listeners.get(action[1])
                if listener is not None:
                    self.tcp.close_listener(listener, self.now)
            else:
                raise ValueError(f"unknown action {kind!r}")
            self._after_step()
        except (FuzzFailure, InvariantError, Exception) as exc:
            raise as_failure(exc) from exc

    def finish(self) -> None:
        """The applications close every connection; the peers fall silent; the
        clock runs until every timer has fired: nothing may be left."""
        self.actions.append(["finish"])
        self._out.clear()
        try:
            for conn, app in list(self.apps.items()):
                if not app.done and conn.state is not State.CLOSED:
                    app.done = True
                    conn.close(self.now)
                    self.tcp.flush(conn)
            self._after_step()
            self._advance(FINISH_TIME)
            self._after_step()
            self.checker.check_quiescent()
            for reassembly in self._reassemblies():
                if reassembly.datagrams or reassembly.memory:
                    raise FuzzFailure(
                        "fragment-leak",
                        f"{len(reassembly.datagrams)} datagrams, {reassembly.memory} bytes held",
                    )
        except (FuzzFailure, InvariantError, Exception) as exc:
            raise as_failure(exc) from exc

    def _after_step(self) -> None:
        if len(self._out) > MAX_PACKETS_OUT:
            raise FuzzFailure("packet-storm", f"{len(self._out)} packets out in one step")
        for packet, gso_size in self._out:
            self._check_output(packet, gso_size)
        self._out.clear()
        self.checker.check(self.now)
        self._check_fragments()
        for conn, app in list(self.apps.items()):
            gone = self.tcp.endpoints(conn) is None
            if app.problem:
                raise FuzzFailure("app-events", f"{conn}: {app.problem}")
            if gone and not app.closed:
                raise FuzzFailure("app-events", f"{conn} left the table without Closed")
            if app.closed and not gone and conn.state is not State.TIME_WAIT:
                raise FuzzFailure("app-events", f"{conn}: Closed, but still in {conn.state}")
            if gone:
                del self.apps[conn]
        if self.coverage is not None:
            self._note_coverage()

    def _reassemblies(self) -> list[Any]:
        ip6 = self.stack.ip6
        return [self.stack.ip.fragments] + ([] if ip6 is None else [ip6.fragments])

    def _check_fragments(self) -> None:
        for reassembly in self._reassemblies():
            self._check_reassembly(reassembly)

    def _check_reassembly(self, reassembly: Any) -> None:
        """Reassembly's books: the memory charged is what its datagrams cost,
        within the cap; nothing is held past its timeout."""
        limits = reassembly.limits
        held = sum(datagram.cost for datagram in reassembly.datagrams.values())
        if held != reassembly.memory or held > limits.high_thresh:
            raise FuzzFailure(
                "fragment-memory",
                f"{reassembly.memory} bytes charged, {held} held, cap {limits.high_thresh}",
            )
        for datagram in reassembly.datagrams.values():
            if datagram.created + limits.timeout <= self.now:
                raise FuzzFailure("fragment-timeout", f"a datagram from {datagram.created} left")
            if len(datagram.starts) > limits.max_fragments:
                raise FuzzFailure("fragment-count", f"{len(datagram.starts)} fragments held")
            pairs = zip(datagram.starts[1:], datagram.ends[:-1], strict=True)
            if any(end > start for start, end in pairs):
                raise FuzzFailure("fragment-overlap", f"held fragments overlap: {datagram.starts}")

    def _note_coverage(self) -> None:
        coverage = self.coverage
        assert coverage is not None
        states = {conn: str(conn.state) for conn in self.tcp.connections.values()}
        for conn, old in self._states.items():
            new = states.get(conn, "gone")
            if new != old:
                coverage.moves.add((old, new))
        coverage.states.update(states.values())
        self._states = states
        coverage.counters.update(self.stack.counters)

    def _packet(self, packet: bytes) -> None:
        counters = self.stack.counters
        before = dict(counters)
        self.stack.receive(packet, self.now)
        changed = [name for name, value in counters.items() if before.get(name, 0) != value]
        received = counters["ip.in"] + counters["ip6.in"]
        if received != before.get("ip.in", 0) + before.get("ip6.in", 0) + 1:
            raise FuzzFailure("unaccounted", "neither ip.in nor ip6.in counted the packet")
        if not any(_accounts(name) for name in changed):
            raise FuzzFailure(
                "unaccounted", f"the packet left no trace in the counters: {sorted(changed)}"
            )

    def _advance(self, dt: float) -> None:
        target = self.now + max(dt, 0.0)
        fired = 0
        while (deadline := self.stack.next_deadline()) is not None and deadline <= target:
            self.now = max(self.now, deadline)
            self.stack.handle_timers(self.now)
            fired += 1
            if fired > MAX_TIMER_FIRINGS:
                raise FuzzFailure("timer-storm", f"{fired} timer rounds before {target}")
            self._after_step()
        self.now = target

    def _app(self, key: tuple[int, int, int], op: str, arg: Any) -> None:
        conn = self.tcp.connections.get(key)
        app = self.apps.get(conn) if conn is not None else None
        if conn is None or app is None or app.done:
            return
        now = self.now
        if op == "read":
            conn.read(int(arg), now)
        elif op == "write":
            try:
                conn.send(_PATTERN[: int(arg)], now)
            except (BrokenPipeError, ConnectionClosedError):
                pass  # the documented answers to a write the connection cannot take
        elif op == "shutdown":
            conn.shutdown(now)
        elif op == "close":
            app.done = True
            conn.close(now)
        elif op == "abort":
            app.done = True
            conn.abort(now)
        elif op == "mode":
            app.mode = str(arg)
        else:
            raise ValueError(f"unknown application call {op!r}")
        self.tcp.flush(conn)

    def _connect(self, port: int, local_port: int, remote: int = PEER) -> None:
        if is_ipv6(remote) and self.stack.ip6 is None:
            return  # (Stack.connect would refuse it: ENETUNREACH)
        try:
            conn = self.tcp.connect(remote, port, self.now, local_port=local_port)
        except OSError:
            return  # EADDRINUSE: that 4-tuple is taken
        app = self.apps[conn] = App(self, conn)
        self.tcp.attach(conn, app)
        self.tcp.flush(conn)

    def _check_output(self, packet: bytes, gso_size: int) -> None:
        """What we send must be a valid packet, to a unicast address."""
        if packet and packet[0] >> 4 == 6:
            problem = self._ipv6_output_problem(packet, gso_size)
            if problem:
                raise FuzzFailure("bad-output", f"{problem}: {packet[:80].hex()}")
            return
        try:
            ip = parse_ipv4(packet)
        except MalformedPacket as exc:
            raise FuzzFailure("bad-output", f"unparsable packet out: {exc}") from None
        problem = ""
        if internet_checksum(packet[: ip.header_length]) != 0:
            problem = "bad IPv4 checksum"
        elif ip.total_length != len(packet) or ip.src != US or not _is_unicast_source(ip.dst):
            problem = f"bad IPv4 header {ip}"
        elif len(packet) > self.setup["mtu"] and not gso_size:
            problem = f"{len(packet)} bytes over the MTU"
        elif ip.protocol == PROTO_TCP:
            problem = self._tcp_output_problem(packet, ip.header_length, ip.src, ip.dst, gso_size)
        elif ip.more_fragments or ip.fragment_offset:
            # RFC 791 3.2: 8-byte pieces, never of TCP (its segments carry DF).
            if ip.protocol == PROTO_TCP or ip.dont_fragment:
                problem = "a fragment of TCP, or with DF"
            elif ip.more_fragments and (ip.total_length - ip.header_length) % 8:
                problem = "a fragment whose data is not a multiple of 8 bytes"
        elif ip.protocol == PROTO_ICMP and internet_checksum(packet[ip.header_length :]) != 0:
            problem = "bad ICMP checksum"
        if problem:
            raise FuzzFailure("bad-output", f"{problem}: {packet[:60].hex()}")

    def _ipv6_output_problem(self, packet: bytes, gso_size: int) -> str:
        """What is wrong with an IPv6 packet we send, if anything: its header
        (from us, to a unicast address, the payload length right), its size,
        its TCP segment, fragments (RFC 8200 4.5: never of TCP, 8-byte
        pieces), ICMPv6 (checksum; an error within 1280 bytes, RFC 4443 2.4(c))."""
        try:
            ip = parse_ipv6(packet)
        except MalformedPacket as exc:
            return f"unparsable IPv6 packet out: {exc}"
        if ip.payload_length + 40 != len(packet) or ip.src != US6 or not is_ipv6(ip.dst):
            return f"bad IPv6 header {ip}"
        if ip.dst >> 120 == 0xFF:
            return "a packet to a multicast group"
        if len(packet) > self.setup["mtu"] and not gso_size:
            return f"{len(packet)} bytes over the MTU"
        if ip.next_header == PROTO_TCP:
            return self._tcp_output_problem(packet, 40, ip.src, ip.dst, gso_size)
        if ip.next_header == v6.NH_FRAGMENT:
            next_header, _, offset_flags = struct.unpack_from("!BBH", packet, 40)
            if next_header == PROTO_TCP:
                return "a fragment of TCP"
            if offset_flags & 1 and (len(packet) - 48) % 8:
                return "a fragment whose data is not a multiple of 8 bytes"
        elif ip.next_header == v6.NH_ICMPV6:
            if transport_checksum(ip.src, ip.dst, v6.NH_ICMPV6, packet[40:]) != 0:
                return "bad ICMPv6 checksum"
            if packet[40] < v6.ECHO_REQUEST and len(packet) > IPV6_MIN_MTU:
                return "an ICMPv6 error over 1280 bytes"
        return ""

    def _tcp_output_problem(
        self, packet: bytes, header_length: int, src: int, dst: int, gso_size: int
    ) -> str:
        """A TCP segment we send: its checksum over its family's pseudo-header,
        its size within the connection's path MTU; noted for later steps."""
        if gso_size:  # the partial form (CHECKSUM_PARTIAL): finish it as the kernel will
            packet = bytearray(packet)
            _finish_checksum(packet, header_length, 16)
        segment = packet[header_length:]
        if transport_checksum(src, dst, PROTO_TCP, segment) != 0:
            return "bad TCP checksum"
        try:
            tcp = parse_tcp(segment)
        except MalformedPacket as exc:
            return f"unparsable TCP segment: {exc}"
        key = (dst, tcp.dst_port, tcp.src_port)
        conn = self.tcp.connections.get(key)
        wire_size = gso_size + header_length + tcp.header_length if gso_size else len(packet)
        if conn is not None and wire_size > conn.path_mtu:
            return f"{wire_size} bytes on the wire, over the path MTU {conn.path_mtu}"
        stamps = tcp.options.timestamps
        self.last_out[key] = (tcp.seq, tcp.ack, tcp.flags, stamps[0] if stamps else None)
        return ""


class _WindowChecked(TcpConnection):
    """A connection whose _emit checks: no data beyond the peer's window (RFC
    9293 3.8.6), except one segment at SND.UNA (a retransmission or a
    zero-window probe, as Linux allows), with the TCB as it is at that moment.
    Every connection of the world is one (the demux's connection_class): a
    subclass, not an attribute of the instance (TcpConnection has __slots__),
    made so from the start, since the compiled build's instances cannot
    change class."""

    __slots__ = ()

    def _emit(self, segment: Segment) -> None:
        size = len(segment.payload)
        if size and not segment.flags & RST:
            end = seq.add(segment.seq, size)
            right = seq.add(self.snd_una, self.snd_wnd)
            at_left_edge = segment.seq == self.snd_una and size <= self.mss
            if seq.gt(end, right) and not at_left_edge:
                raise FuzzFailure(
                    "beyond-send-window",
                    f"{self}: {size} bytes at {segment.seq} end past SND.UNA+SND.WND {right}",
                )
        super()._emit(segment)


def _accounts(counter: str) -> bool:
    """Counters that say what became of an arriving packet."""
    return (
        (".drop." in counter and not counter.startswith(("ip.drop.out-", "ip6.drop.out-")))
        or counter in ("tcp.in", "icmp.echo", "udp.out.port-unreachable", "ip.reasm.reqds")
        or counter.startswith("icmp.in.type-")
        # IPv6 (net/ipv6.py): ND and MLD are recognised and counted, not answered.
        or counter in ("icmp6.echo", "udp6.out.port-unreachable", "ip6.reasm.reqds")
        or counter in ("icmp6.in.nd", "icmp6.in.mld", "ip6.in.no-next-header")
        or counter.startswith("icmp6.in.type-")
    )


class Hang(Exception):
    """Raised (by tools/fuzz.py's alarm) when one input runs too long."""


def as_failure(exc: BaseException) -> FuzzFailure:
    if isinstance(exc, FuzzFailure):
        return exc
    if isinstance(exc, Hang):
        return FuzzFailure("hang", "".join(traceback.format_exception(exc)))
    if isinstance(exc, InvariantError):
        return FuzzFailure(f"invariant {exc.rule}", str(exc))
    frames = traceback.extract_tb(exc.__traceback__)
    inner = [f for f in frames if "/ustack/" in f.filename] or frames
    where = f"{Path(inner[-1].filename).name}:{inner[-1].lineno}" if inner else "?"
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return FuzzFailure(f"{type(exc).__name__} at {where}", text)


# ---- the generator: bytes -> structure-aware actions --------------------------------------------


class Source:
    """Reads choices from the fuzz input; past its end every read is 0."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def more(self) -> bool:
        return self.pos < len(self.data)

    def byte(self) -> int:
        pos = self.pos
        self.pos = pos + 1
        return self.data[pos] if pos < len(self.data) else 0

    def u16(self) -> int:
        return self.byte() << 8 | self.byte()

    def u32(self) -> int:
        return self.u16() << 16 | self.u16()

    def below(self, n: int) -> int:
        return (self.byte() if n <= 256 else self.u32()) % n

    def pick(self, items: Sequence[Any]) -> Any:
        return items[self.below(len(items))]

    def chance(self, in_256: int) -> bool:
        return self.byte() < in_256


class Peer:
    """What a remote end sends on one 4-tuple: its ISN and its TSval clock."""

    def __init__(self, iss: int) -> None:
        self.iss = iss
        self.tsval = 1000


def _flags_common() -> list[int]:
    return [ACK, ACK, ACK | PSH, ACK | FIN, ACK | FIN | PSH, RST, RST | ACK, SYN, SYN | ACK,
            FIN, 0, SYN | FIN, SYN | RST, ACK | URG, SYN | ECE | CWR, ACK | ECE, RST | FIN,
            SYN | ACK | FIN, ACK | RST | SYN | FIN]  # fmt: skip


_FLAGS = _flags_common()
_MSS_VALUES = (0, 1, 12, 13, 36, 48, 64, 88, 536, 1220, 1460, 9000, 65535)
_SHIFTS = (0, 1, 2, 7, 8, 14, 15, 255)
_TIME_STEPS = (0.0, 0.001, 0.01, 0.04, 0.1, 0.2, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
               61.0, 120.0, 600.0)  # fmt: skip
_UNKNOWN_KINDS = (6, 7, 9, 19, 28, 29, 30, 34, 69, 253, 254, 255)


class Generator:
    def __init__(self, world: World, source: Source) -> None:
        self.w = world
        self.s = source
        self.peers: dict[tuple[int, int, int], Peer] = {}
        self.ident = 0

    # ---- the steps ----------------------------------------------------------------------

    def step(self) -> None:
        op = self.s.byte()
        live = sorted(self.w.tcp.connections)
        if op < 30 or (not live and op < 140):
            self.handshake()
        elif op < 110:
            self.segment(self.s.pick(live))
        elif op < 140:
            self.good_peer(self.s.pick(live))
        elif op < 155:
            self.stray_segment()
        elif op < 175:
            self.malformed(live)
        elif op < 179:
            self.icmp_udp(live)
        elif op < 192:
            self.fragments(live)
        elif op < 202:
            self.icmp_error(live)
        elif op < 215:
            self.advance()
        elif op < 240:
            self.app_call()
        elif op < 251:
            self.connect()
        else:
            port = self.s.pick(LISTEN_PORTS)
            self.w.apply(["unlisten" if port in self.w.tcp.listeners else "listen", port])

    def remote(self) -> int:
        """A peer: mostly PEER; another IPv4 one; over IPv6 when the stack has it."""
        b = self.s.byte()
        if self.w.stack.ip6 is not None and b >= 150:
            return PEER6_2 if b >= 240 else PEER6
        return PEER2 if b < 16 else PEER

    def connect(self) -> None:
        """Active OPEN to the peer, over IPv4 or IPv6."""
        s = self.s
        action: Action = ["connect", s.pick(CONNECT_PORTS), s.pick(LOCAL_PORTS)]
        if self.w.stack.ip6 is not None and s.chance(90):
            action.append(PEER6)
        self.w.apply(action)

    def handshake(self) -> None:
        s = self.s
        port = s.pick((80, 80, 80, 80, 7, 7, CLOSED_PORT))
        remote = self.remote()
        key = (remote, s.pick(PEER_PORTS), port)
        # (TIME_WAIT 4-tuples hold records, tcp/time_wait.py, not connections)
        waiting = sorted(record.key for record in self.w.tcp.time_wait_records())
        if waiting and s.chance(64):
            key = s.pick(waiting)  # a SYN for a 4-tuple in TIME_WAIT
        iss = s.pick((1000, 1000, 0, MASK, MASK - 15, HALF - 1, HALF, s.u32()))
        old = self.w.tcp.connections.get(key) or self.w.tcp.time_wait_at(key)
        if old is not None and s.chance(160):
            iss = (old.rcv_nxt + s.pick((1, 100_000, HALF - 1, -1))) & MASK  # a new incarnation?
        self.peers[key] = Peer(iss)
        flags = SYN if s.chance(230) else s.pick((SYN | ECE | CWR, SYN | PSH, SYN | URG))
        options = self.syn_options()
        payload = self.payload_bytes(None) if s.chance(20) else b""
        self.send(key, iss, 0, flags, self.window(), options, payload)
        conn = self.w.tcp.connections.get(key)
        if not s.chance(230):
            return
        if conn is not None and conn.state is State.SYN_RECEIVED:
            ack = conn.snd_nxt
        elif conn is None and key in self.w.last_out and self.w.last_out[key][2] == SYN | ACK:
            ack = seq.add(self.w.last_out[key][0], 1)  # the SYN cookie, acknowledged
        else:
            return
        more = b"" if s.chance(200) else self.payload_bytes(None)
        fin = FIN if s.chance(16) else 0
        self.send(key, seq.add(iss, 1), ack, ACK | fin, self.window(), self.ts_option(key), more)

    def segment(self, key: tuple[int, int, int]) -> None:
        """Fields picked around the TCB's values; options valid or not."""
        conn = self.w.tcp.connections[key]
        s = self.s
        flags = s.pick(_FLAGS) if s.chance(210) else s.byte()
        seg_seq = self.pick_seq(conn)
        seg_ack = self.pick_ack(conn)
        options = self.options(key, conn)
        payload = self.payload_bytes(conn)
        self.send(key, seg_seq, seg_ack, flags, self.window(), options, payload, mutate=True)

    def good_peer(self, key: tuple[int, int, int]) -> None:
        """What a well-behaved peer would send next (to move connections on)."""
        conn = self.w.tcp.connections[key]
        s = self.s
        peer = self.peers.setdefault(key, Peer(s.u32()))
        if conn.state is State.SYN_SENT:
            flags = SYN | ACK if s.chance(190) else SYN  # SYN: simultaneous open
            ack = conn.snd_nxt if flags & ACK else 0
            peer.iss = s.pick((1000, MASK, HALF, s.u32()))
            self.send(key, peer.iss, ack, flags, self.window(), self.syn_options())
            return
        if conn.state is State.SYN_RECEIVED and not conn.passive and s.chance(200):
            # Simultaneous open: the peer's SYN,ACK acknowledges our SYN.
            self.send(key, conn.irs, seq.add(conn.iss, 1), SYN | ACK, self.window())
            return
        if conn.snd_una != conn.snd_max and s.chance(60):
            # Duplicate ACKs (same window, no data), with SACK blocks if agreed:
            # fast retransmit, recovery, partial ACKs.
            window = conn.snd_wnd >> conn.snd_shift
            for _ in range(3 + s.below(3)):
                conn = self.w.tcp.connections.get(key)  # type: ignore[assignment]
                if conn is None:
                    return
                options = self.ts_option(key)
                if conn.sack_ok and s.chance(180):
                    options += self.sack_option(conn)
                self.send(key, conn.rcv_nxt, conn.snd_una, ACK, window, options)
            return
        if s.chance(40):
            self.reordered(key, conn)
            return
        ack = s.pick((conn.snd_max, conn.snd_max, conn.snd_max, conn.snd_nxt, conn.snd_una))
        if s.chance(40):
            ack = seq.add(conn.snd_una, conn.mss * s.below(8))  # a partial ACK
            if seq.gt(ack, conn.snd_max):
                ack = conn.snd_max
        flags = ACK
        payload = b""
        if s.chance(90):
            payload = self.payload_bytes(conn)
            flags |= PSH
        if s.chance(40):
            flags |= FIN
        options = self.ts_option(key)
        if conn.sack_ok and s.chance(60):
            options += self.sack_option(conn)
        window = 0xFFFF if s.chance(180) else self.window()
        for _ in range(s.pick((1, 1, 1, 1, 2, 3, 4))):  # several: duplicate ACKs
            self.send(key, conn.rcv_nxt, ack, flags, window, options, payload)
            if key not in self.w.tcp.connections:
                break

    def reordered(self, key: tuple[int, int, int], conn: TcpConnection) -> None:
        """The peer's next few segments, out of order, some overlapping or
        repeated, the FIN maybe on the last: holes, reassembly, held FINs."""
        s = self.s
        start, ack = conn.rcv_nxt, conn.snd_max
        pieces = []
        offset = 0
        for _ in range(2 + s.below(4)):
            size = s.pick((conn.mss, conn.mss // 2, 1 + s.byte(), 1))
            pieces.append((offset, size))
            offset += size - (s.below(size) if s.chance(40) else 0)  # overlap the next
        fin_at = len(pieces) - 1 if s.chance(60) else -1
        order = sorted(range(len(pieces)), key=lambda _: s.byte())
        for index in order + ([s.pick(order)] if s.chance(60) else []):
            if key not in self.w.tcp.connections:
                return
            offset, size = pieces[index]
            flags = ACK | (FIN if index == fin_at else 0)
            payload = _PATTERN[offset % 256 : offset % 256 + size]
            self.send(key, start + offset, ack, flags, 0xFFFF, self.ts_option(key), payload)

    def stray_segment(self) -> None:
        """A segment for no connection: to a listener, a closed port, an old tuple."""
        s = self.s
        port = s.pick((80, 7, CLOSED_PORT, 8080, 50000))
        remote = s.pick((PEER, PEER, PEER2, s.pick(BAD_SOURCES)))
        if self.w.stack.ip6 is not None and s.chance(90):
            remote = s.pick((PEER6, PEER6, PEER6_2, 0xFFFF_C612_0001, v6.ALL_NODES, US6))
        key = (remote, s.pick(PEER_PORTS), port)
        flags = s.pick(_FLAGS) if s.chance(200) else s.byte()
        options = self.options(key, None)
        self.send(key, s.u32(), s.u32(), flags, self.window(), options, self.payload_bytes(None),
                  mutate=True)  # fmt: skip

    def malformed(self, live: list[tuple[int, int, int]]) -> None:
        s = self.s
        kind = s.byte()
        if kind < 60 or not live:
            self.w.apply(["packet", bytes(s.byte() for _ in range(s.below(80)))])
            return
        key = s.pick(live)
        conn = self.w.tcp.connections[key]
        flags = s.pick(_FLAGS)
        packet = bytearray(
            self.build(key, self.pick_seq(conn), self.pick_ack(conn), flags, self.window(),
                       self.options(key, conn), self.payload_bytes(conn))
        )  # fmt: skip
        if kind < 170:
            # Overwrite a few bytes, then (mostly) fix both checksums so the
            # damage reaches the parsers and the TCB.
            for _ in range(1 + s.below(4)):
                packet[s.below(len(packet))] = s.byte()
            if s.chance(200):
                _fix_checksums(packet)
        else:
            packet = packet[: s.below(len(packet) + 1)]
            if s.chance(128) and len(packet) >= 20:
                if packet[0] >> 4 == 6:
                    struct.pack_into("!H", packet, 4, max(len(packet) - 40, 0))
                else:
                    struct.pack_into("!H", packet, 2, len(packet))
                _fix_checksums(packet)
        self.w.apply(["packet", bytes(packet)])

    def icmp_udp(self, live: list[tuple[int, int, int]]) -> None:
        s = self.s
        body = _PATTERN[s.byte() : s.byte() * 4]
        if self.w.stack.ip6 is not None and s.chance(100):
            if s.chance(160):
                self.w.apply(["packet", v6.icmpv6_other(s, PEER6, body)])
                return
            message = bytearray(struct.pack("!HHHH", s.u16(), s.u16(), 8 + len(body), 0) + body)
            if s.chance(230):  # (RFC 8200 8.1: a zero checksum is an error in IPv6)
                checksum = transport_checksum(PEER6, US6, PROTO_UDP, message) or 0xFFFF
                struct.pack_into("!H", message, 6, checksum)
            packet = v6.packet(s, PEER6, US6, PROTO_UDP, bytes(message), mutate=s.chance(40))
            self.w.apply(["packet", packet])
            return
        if s.chance(128):
            icmp_type = s.pick((8, 8, 0, 3, 11, 12, 5, s.byte()))
            message = bytearray(struct.pack("!BBHI", icmp_type, s.below(16), 0, s.u32()) + body)
            if s.chance(230):
                struct.pack_into("!H", message, 2, internet_checksum(message))
            proto = PROTO_ICMP
        else:
            length = 8 + len(body) if s.chance(220) else s.u16()
            message = bytearray(struct.pack("!HHHH", s.u16(), s.u16(), length, 0) + body)
            if s.chance(200):
                checksum = transport_checksum(PEER, US, PROTO_UDP, message) or 0xFFFF
                struct.pack_into("!H", message, 6, checksum)
            proto = PROTO_UDP
        self.w.apply(["packet", self.ip(PEER, US, proto, bytes(message), mutate=s.chance(40))])

    def fragments(self, live: list[tuple[int, int, int]]) -> None:
        """One datagram (an echo request, a UDP datagram, a TCP segment of a
        live connection) in fragments of random sizes, then now and then
        broken: overlapping, duplicated, lost, reordered, MF flipped, an odd
        length, an offset anywhere, past 65,535, another ID."""
        s = self.s
        if self.w.stack.ip6 is not None and s.chance(90):
            self.fragments6(live)
            return
        live = [key for key in live if not is_ipv6(key[0])]
        kind = s.byte()
        size = s.pick((s.byte(), s.u16() % 4000, s.u16() % 12000, 65535 - 28, s.u16()))
        start = s.byte()
        body = _PATTERN[start : start + min(size, 65535 - 28)]
        src = PEER if s.chance(230) else PEER2
        if kind < 100 or not live:
            message = bytearray(struct.pack("!BBHI", 8, 0, 0, s.u32()) + body)
            struct.pack_into("!H", message, 2, internet_checksum(message))
            protocol = PROTO_ICMP
        elif kind < 150:
            message = bytearray(struct.pack("!HHHH", s.u16(), s.u16(), 8 + len(body), 0) + body)
            struct.pack_into(
                "!H", message, 6, transport_checksum(src, US, PROTO_UDP, message) or 0xFFFF
            )
            protocol = PROTO_UDP
        else:
            key = s.pick(live)
            src = key[0]
            message = bytearray(self.live_segment(key)[20:])
            protocol = PROTO_TCP
        self.ident = (self.ident + 1) & 0xFFFF
        ident = self.ident if s.chance(220) else s.pick((1, 2, s.u16()))
        for offset, data, more in v6.damaged_pieces(s, bytes(message), s.pick((1, 8, 64, 185))):
            field = (0x2000 if more else 0) | (offset >> 3) & 0x1FFF
            header = bytearray(struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(data), ident, field,
                                           64, protocol, 0, src, US))  # fmt: skip
            struct.pack_into("!H", header, 10, internet_checksum(header))
            self.w.apply(["packet", bytes(header) + data])

    def fragments6(self, live: list[tuple[int, int, int]]) -> None:
        """As `fragments`, over IPv6 (RFC 8200 4.5): an echo request, a UDP
        datagram or a TCP segment of a live IPv6 connection, in fragments."""
        s = self.s
        kind = s.byte()
        size = s.pick((s.byte(), s.u16() % 4000, s.u16() % 12000, 65535 - 56, s.u16()))
        start = s.byte()
        body = _PATTERN[start : start + min(size, 65535 - 56)]
        src = PEER6 if s.chance(230) else PEER6_2
        live6 = [key for key in live if is_ipv6(key[0])]
        if kind < 100 or not live6:
            message = v6.icmpv6(src, US6, v6.ECHO_REQUEST, 0, s.u32(), body)
            protocol = v6.NH_ICMPV6
        elif kind < 150:
            udp = bytearray(struct.pack("!HHHH", s.u16(), s.u16(), 8 + len(body), 0) + body)
            struct.pack_into("!H", udp, 6, transport_checksum(src, US6, PROTO_UDP, udp) or 0xFFFF)
            message, protocol = bytes(udp), PROTO_UDP
        else:
            key = s.pick(live6)
            src = key[0]
            message, protocol = self.live_segment(key)[40:], PROTO_TCP
        self.ident = (self.ident + 1) & 0xFFFF
        ident = self.ident if s.chance(220) else s.pick((1, 2, s.u32()))
        for fragment in v6.fragments(s, src, US6, protocol, message, ident):
            self.w.apply(["packet", fragment])

    def live_segment(self, key: tuple[int, int, int]) -> bytes:
        """A packet with a segment for the live connection `key`, its fields
        picked around the TCB's values (for the fragments steps)."""
        s = self.s
        conn = self.w.tcp.connections[key]
        seg_seq, seg_ack, flags = self.pick_seq(conn), self.pick_ack(conn), s.pick(_FLAGS)
        options, payload = self.options(key, conn), self.payload_bytes(conn)
        return self.build(key, seg_seq, seg_ack, flags, self.window(), options, payload)

    def icmp_error(self, live: list[tuple[int, int, int]]) -> None:
        """An ICMP error quoting one of our segments, as a router on the path
        sends it: mostly about a live connection with a SEQ near SND.UNA,
        SND.NXT or SND.MAX (valid, or off by a bit), sometimes with the wrong
        ports, a quoted source not ours, a truncated quote; fragmentation
        needed with every kind of next-hop MTU (RFC 1191, RFC 5927)."""
        s = self.s
        if live and s.chance(230):
            remote, remote_port, local_port = s.pick(live)
            conn = self.w.tcp.connections[(remote, remote_port, local_port)]
            bases = (conn.snd_una, conn.snd_una, conn.snd_nxt, conn.snd_max, conn.snd_max,
                     conn.snd_una - 1, conn.snd_max + 1, conn.iss, s.u32())  # fmt: skip
            sequence = (s.pick(bases) + (s.below(5) - 2 if s.chance(60) else 0)) & MASK
        else:
            remote, remote_port, local_port = PEER, s.pick(PEER_PORTS), s.pick(LISTEN_PORTS)
            if self.w.stack.ip6 is not None and s.chance(60):
                remote = PEER6
            sequence = s.u32()
        if s.chance(20):
            remote_port ^= 1 << s.below(16)
        if is_ipv6(remote):
            self.w.apply(["packet", v6.icmpv6_error(s, remote, remote_port, local_port, sequence)])
            return
        icmp_type, code = s.pick(((3, 4), (3, 4), (3, 4), (3, 0), (3, 1), (3, 2), (3, 3), (3, 13),
                                  (3, s.byte()), (11, 0), (11, 1), (12, 0), (4, 0)))  # fmt: skip
        mtu = 0
        if icmp_type == 3 and code == 4:
            mtu = s.pick((0, 68, 100, 296, 552, 576, 1006, 1280, 1400, 1492, 1499, 1500, 1501,
                          8166, 9000, 65535, s.u16()))  # fmt: skip
        quoted_length = s.pick((1500, 1500, 9000, 576, 40, 0, s.u16()))
        quoted_src = US if s.chance(235) else s.pick((PEER, US + 1, s.u32()))
        quoted_protocol = PROTO_TCP if s.chance(240) else s.pick((PROTO_UDP, PROTO_ICMP, s.byte()))
        quote = struct.pack(
            "!BBHHHBBHII", 0x45, 0, quoted_length, 0, 0x4000, 64, quoted_protocol, 0,
            quoted_src, remote,
        ) + struct.pack("!HHI", local_port, remote_port, sequence)  # fmt: skip
        quote += bytes(s.pick((0, 0, 12, s.byte())))  # more of the TCP header, or none
        if s.chance(15):
            quote = quote[: s.below(len(quote))]
        message = bytearray(struct.pack("!BBHI", icmp_type, code, 0, mtu) + quote)
        struct.pack_into("!H", message, 2, internet_checksum(message))
        router = s.pick((PEER, 0xC6120101, 0xC6120201))
        self.w.apply(
            ["packet", self.ip(router, US, PROTO_ICMP, bytes(message), mutate=s.chance(20))]
        )

    def advance(self) -> None:
        s = self.s
        deadline = self.w.stack.next_deadline()
        choice = s.byte()
        if deadline is not None and choice < 80:
            dt = max(deadline - self.w.now, 0.0)  # exactly to the next timer
        else:
            dt = s.pick(_TIME_STEPS)
        self.w.apply(["advance", dt])

    def app_call(self) -> None:
        s = self.s
        owned = sorted(self.w.tcp.endpoints(conn) for conn in self.w.apps)
        if not owned:
            self.connect()
            return
        key = list(s.pick(owned))
        op = s.pick(("read", "read", "write", "write", "write", "shutdown", "close", "abort",
                     "mode", "mode"))  # fmt: skip
        arg: Any = None
        if op == "read":
            arg = s.pick((1, 100, 1 << 30, 1 << 30))
        elif op == "write":
            arg = s.pick((1, 10, 100, 536, 1448, 3000, 70000, 300000))
        elif op == "mode":
            arg = s.pick(("echo", "sink", "manual"))
        self.w.apply(["app", key, op, arg])

    # ---- fields ---------------------------------------------------------------------------------

    def pick_seq(self, conn: TcpConnection) -> int:
        s = self.s
        edge = conn.rcv_adv
        ahead = conn.rcv_nxt + conn.mss * (1 + s.below(4))  # beyond a hole
        bases = (conn.rcv_nxt, conn.rcv_nxt, conn.rcv_nxt, conn.rcv_nxt, ahead, ahead, edge,
                 edge - 1, conn.rcv_nxt - 1, conn.irs, conn.irs + 1, conn.rcv_nxt + HALF,
                 conn.rcv_nxt + HALF - 1, conn.rcv_nxt - HALF + 1, s.u32())  # fmt: skip
        return (s.pick(bases) + self.delta(conn)) & MASK

    def pick_ack(self, conn: TcpConnection) -> int:
        s = self.s
        bases = (conn.snd_nxt, conn.snd_max, conn.snd_max, conn.snd_una, conn.snd_una - 1,
                 conn.snd_max + 1, conn.snd_una - conn.max_snd_wnd,
                 conn.snd_una - conn.max_snd_wnd - 1, conn.iss, conn.iss + 1,
                 conn.snd_una + HALF, 0, s.u32())  # fmt: skip
        return (s.pick(bases) + self.delta(conn)) & MASK

    def delta(self, conn: TcpConnection) -> int:
        s = self.s
        b = s.byte()
        if b < 160:
            return 0
        if b < 210:
            return s.below(9) - 4
        if b < 230:
            step = s.pick((conn.mss, max(seq.diff(conn.rcv_adv, conn.rcv_nxt), 1), 65536))
            return step * (s.below(5) - 2)
        return s.u16() - 0x8000

    def window(self) -> int:
        s = self.s
        b = s.byte()
        if b < 150:
            return 0xFFFF
        if b < 185:
            return 0
        if b < 215:
            return s.byte()
        return s.u16()

    def payload_bytes(self, conn: TcpConnection | None) -> bytes:
        s = self.s
        b = s.byte()
        if b < 140:
            return b""
        if b < 190:
            n = 1 + s.byte() % 64
        elif b < 210:
            n = conn.mss if conn is not None else 536
        elif b < 225:
            window = seq.diff(conn.rcv_adv, conn.rcv_nxt) if conn is not None else 1000
            n = max(window + s.below(3) - 1, 0)
        elif b < 245:
            n = s.u16() % 3000
        else:
            n = s.u16() % (0xFFFF - 120)
        n = min(n, 0xFFFF - 120)
        start = s.byte()
        return _PATTERN[start : start + n]

    def syn_options(self) -> bytes:
        s = self.s
        b = s.byte()
        if b < 110:  # what Linux sends
            tsval = s.u32()
            return (struct.pack("!BBH", 2, 4, 1460) + b"\x04\x02"
                    + struct.pack("!BBII", 8, 10, tsval, 0) + b"\x01\x03\x03\x07")  # fmt: skip
        if b < 150:
            return b""
        if b < 190:
            parts = []
            if s.chance(200):
                parts.append(struct.pack("!BBH", 2, 4, s.pick(_MSS_VALUES)))
            if s.chance(128):
                parts.append(b"\x01\x01\x04\x02")
            if s.chance(128):
                parts.append(b"\x01\x01" + struct.pack("!BBII", 8, 10, s.u32(), s.u32()))
            if s.chance(128):
                parts.append(b"\x01" + bytes((3, 3, s.pick(_SHIFTS))))
            return b"".join(parts)
        return self.option_items(None, None)

    def options(self, key: tuple[int, int, int], conn: TcpConnection | None) -> bytes:
        s = self.s
        b = s.byte()
        if b < 110:
            return self.ts_option(key) if conn is not None and conn.ts_ok else b""
        if b < 130:
            return self.syn_options()
        if b < 150 and conn is not None:
            return self.ts_option(key) + self.sack_option(conn)
        return self.option_items(key, conn)

    def ts_option(self, key: tuple[int, int, int]) -> bytes:
        conn = self.w.tcp.connections.get(key)
        if conn is None or not conn.ts_ok:
            return b""
        s = self.s
        peer = self.peers.setdefault(key, Peer(0))
        peer.tsval = (peer.tsval + s.pick((1, 1, 1, 0, 1000))) & MASK
        tsval = peer.tsval
        if s.chance(40):
            tsval = (conn.ts_recent + s.pick((0, 1, -1, HALF, HALF + 1, s.u32()))) & MASK
        last = self.w.last_out.get(key)
        tsecr = last[3] if last is not None and last[3] is not None else 0
        if s.chance(30):
            tsecr = s.pick((0, tsecr - 1, tsecr + 1, s.u32())) & MASK
        return b"\x01\x01" + struct.pack("!BBII", 8, 10, tsval, tsecr)

    def sack_option(self, conn: TcpConnection) -> bytes:
        s = self.s
        blocks = []
        for _ in range(1 + s.below(4)):
            base = s.pick((conn.snd_una, conn.snd_nxt, conn.snd_max, conn.iss, s.u32()))
            left = (base + conn.mss * (s.below(12) - 2)) & MASK
            right = (left + conn.mss * (s.below(6) - 1) + s.below(3) - 1) & MASK
            blocks.append(struct.pack("!II", left, right))
        return b"\x01\x01" + bytes((5, 2 + 8 * len(blocks))) + b"".join(blocks)

    def option_items(self, key: tuple[int, int, int] | None, conn: TcpConnection | None) -> bytes:
        """A list of options, any of them truncated, too long or unknown."""
        s = self.s
        parts: list[bytes] = []
        for _ in range(1 + s.below(6)):
            item = s.byte() % 13
            if item == 0:
                parts.append(b"\x01")
            elif item == 1:
                parts.append(b"\x00" + bytes(s.byte() for _ in range(s.below(4))))
            elif item == 2:
                parts.append(struct.pack("!BBH", 2, 4, s.pick(_MSS_VALUES)))
            elif item == 3:
                parts.append(bytes((3, 3, s.pick(_SHIFTS))))
            elif item == 4:
                parts.append(b"\x04\x02")
            elif item == 5:
                ts = self.ts_option(key) if key is not None else b""
                parts.append(ts[2:] or struct.pack("!BBII", 8, 10, s.u32(), s.u32()))
            elif item == 6 and conn is not None:
                parts.append(self.sack_option(conn)[2:])
            elif item == 7:
                data = bytes(s.byte() for _ in range(s.below(6)))
                parts.append(bytes((s.pick(_UNKNOWN_KINDS), 2 + len(data))) + data)
            elif item == 8:  # a known kind with a wrong length
                kind = s.pick((2, 3, 4, 5, 8))
                length = s.pick((0, 1, 2, 3, 4, 5, 9, 10, 11, 18, 40, 255))
                parts.append(bytes((kind, length)) + bytes(s.byte() for _ in range(s.below(10))))
            elif item == 9:  # a length running past the end
                parts.append(bytes((s.pick((2, 8, 5, 30)), 40 + s.below(200))))
            elif item == 10:  # a lone kind byte: no room for its length
                parts.append(bytes((s.pick((2, 3, 8, 30)),)))
            else:
                parts.append(b"\x01\x01")
        options = b"".join(parts)
        if s.chance(220):
            options += b"\x01" * (-len(options) % 4)
        return options[:40] if s.chance(240) else options[:60]

    # ---- packets --------------------------------------------------------------------------------

    def send(self, *segment: Any, **fields: Any) -> None:
        """The packet build(*segment, **fields) makes, to the stack."""
        self.w.apply(["packet", self.build(*segment, **fields)])

    def build(
        self,
        key: tuple[int, int, int],
        seg_seq: int,
        seg_ack: int,
        flags: int,
        window: int,
        options: bytes = b"",
        payload: bytes = b"",
        mutate: bool = False,
    ) -> bytes:
        s = self.s
        remote, remote_port, local_port = key
        options = options[:60]
        options += b"\x00" * (-len(options) % 4)
        offset = (20 + len(options)) // 4
        reserved = 0
        urgent = 0
        bad_tcp_checksum = False
        mutation = s.byte() if mutate else 0
        if mutation > 215:
            what = mutation % 6
            if what == 0:
                offset = s.below(16)
            elif what == 1:
                reserved = 1 + s.below(15)
            elif what == 2:
                bad_tcp_checksum = True
            elif what == 3:
                urgent = s.u16()
            elif what == 4:
                offset = min(offset + 1 + s.below(4), 15)  # options run into the payload
        payload = payload[: 0xFFFF - 20 - 60 - len(options)]
        header = struct.pack(
            "!HHIIBBHHH", remote_port, local_port, seg_seq & MASK, seg_ack & MASK,
            (offset & 15) << 4 | reserved, flags & 0xFF, window & 0xFFFF, 0, urgent,
        )  # fmt: skip
        segment = bytearray(header + options + payload)
        local = US6 if is_ipv6(remote) else US
        checksum = transport_checksum(remote, local, PROTO_TCP, segment)
        if bad_tcp_checksum:
            checksum ^= 1 + s.below(0xFFFF)
        struct.pack_into("!H", segment, 16, checksum)
        ip_mutate = mutate and mutation > 200 and mutation % 6 == 5
        if is_ipv6(remote):
            return v6.packet(s, remote, US6, PROTO_TCP, bytes(segment), mutate=ip_mutate)
        return self.ip(remote, US, PROTO_TCP, bytes(segment), mutate=ip_mutate)

    def ip(self, src: int, dst: int, protocol: int, payload: bytes, mutate: bool = False) -> bytes:
        s = self.s
        self.ident = (self.ident + 1) & 0xFFFF
        ihl, version, ttl, frag, ip_options = 5, 4, 64, 0x4000, b""
        total = 20 + len(payload)
        fix_checksum = True
        tail = payload
        what = s.byte() % 12 if mutate else -1
        if what == 0:
            ihl = s.below(16)
        elif what == 1:
            ip_options = b"\x01" * (4 * s.below(4)) + b"\x00\x00\x00\x00"[: 4 * s.below(2)]
            ihl = 5 + len(ip_options) // 4
            total += len(ip_options)
        elif what == 2:
            total = s.pick((0, 19, 20, total - 1, total + 1, total - 20, 0xFFFF, s.u16()))
        elif what == 3:
            ttl = s.pick((0, 1))
        elif what == 4:
            frag = s.pick((0x2000, 0x0001, 0x2005, 0x1FFF, 0x8000))
        elif what == 5:
            version = s.pick((0, 6, 5, 15))
        elif what == 6:
            protocol = s.byte()
        elif what == 7:
            fix_checksum = False
        elif what == 8:
            src = s.pick(BAD_SOURCES)
        elif what == 9:
            dst = s.pick((PEER, US + 1, 0xFFFFFFFF, 0xC61200FF))
        elif what == 10:
            tail = payload + bytes(s.below(20))  # link padding
        header = bytearray(
            struct.pack("!BBHHHBBHII", (version & 15) << 4 | (ihl & 15), 0, total & 0xFFFF,
                        self.ident, frag, ttl, protocol & 0xFF, 0, src, dst)
        )  # fmt: skip
        header += ip_options
        if fix_checksum:
            struct.pack_into("!H", header, 10, internet_checksum(header))
        else:
            struct.pack_into("!H", header, 10, s.u16())
        packet = bytes(header) + tail
        if what == 11:
            packet = packet[: s.below(len(packet) + 1)]
        return packet


def _fix_checksums(packet: bytearray) -> None:
    """Recompute the IPv4 and TCP checksums of a (maybe damaged) packet, as
    far as its header fields allow; of an IPv6 one, the TCP checksum if TCP
    follows the fixed header."""
    if len(packet) >= 60 and packet[0] >> 4 == 6 and packet[6] == PROTO_TCP:
        segment = packet[40:]
        segment[16:18] = b"\x00\x00"
        src, dst = int.from_bytes(packet[8:24], "big"), int.from_bytes(packet[24:40], "big")
        struct.pack_into("!H", packet, 56, transport_checksum(src, dst, PROTO_TCP, segment))
        return
    if len(packet) < 20:
        return
    ihl = (packet[0] & 15) * 4
    if ihl < 20 or ihl > len(packet):
        return
    packet[10:12] = b"\x00\x00"
    struct.pack_into("!H", packet, 10, internet_checksum(packet[:ihl]))
    segment = packet[ihl:]
    if packet[9] == PROTO_TCP and len(segment) >= 20:
        segment[16:18] = b"\x00\x00"
        src, dst = struct.unpack_from("!II", packet, 12)
        struct.pack_into("!H", packet, ihl + 16, transport_checksum(src, dst, PROTO_TCP, segment))


# ---- programs, cases, replay, minimisation ---------------------------------------------


def run_program(data: bytes, coverage: Coverage | None = None) -> World:
    """Decode and run one fuzz input; raises FuzzFailure with its case."""
    source = Source(data)
    world = World(SETUPS[source.byte() % len(SETUPS)], coverage)
    generator = Generator(world, source)
    with failing_with_case(world):
        ops = 0
        while source.more() and ops < MAX_OPS:
            generator.step()
            ops += 1
        world.finish()
    return world


@contextmanager
def failing_with_case(world: World) -> Iterator[None]:
    """Whatever goes wrong in the block is a FuzzFailure that carries the
    case (the world's actions so far) which led to it."""
    try:
        yield
    except Exception as exc:
        failure = as_failure(exc)
        failure.case = make_case(world, failure)
        raise failure from exc


def make_case(world: World, failure: FuzzFailure | None = None) -> Case:
    actions = [a for a in world.actions if a[0] != "finish"]
    case: Case = {"setup": world.setup, "actions": actions}
    if failure is not None:
        case["failure"] = failure.signature
        case["detail"] = failure.message[-2000:]
    return case


def replay(case: Case, coverage: Coverage | None = None) -> World:
    """Run a case's actions, then the finish; raises FuzzFailure."""
    world = World(case["setup"], coverage)
    with failing_with_case(world):
        for action in case["actions"]:
            if action[0] == "packet" and isinstance(action[-1], str):
                action = ["packet", bytes.fromhex(action[-1])]  # [kind, summary, hex]
            world.apply(list(action))
        world.finish()
    return world


def failure_of(case: Case) -> FuzzFailure | None:
    try:
        replay(case)
    except FuzzFailure as failure:
        return failure
    return None


def minimize(case: Case, signature: str, budget: int = 2000) -> Case:
    """Delta debugging over the actions: the smallest list (by removal) whose
    replay still fails with the same signature."""
    actions = list(case["actions"])
    tries = 0

    def fails(candidate: list[Action]) -> bool:
        nonlocal tries
        tries += 1
        failure = failure_of({"setup": case["setup"], "actions": candidate})
        return failure is not None and failure.signature == signature

    chunk = max(len(actions) // 2, 1)
    while chunk >= 1 and tries < budget:
        start = 0
        removed = False
        while start < len(actions) and tries < budget:
            candidate = actions[:start] + actions[start + chunk :]
            if candidate != actions and fails(candidate):
                actions = candidate
                removed = True
            else:
                start += chunk
        if not removed:
            chunk //= 2
    final = failure_of({"setup": case["setup"], "actions": actions})
    result: Case = {"setup": case["setup"], "actions": actions}
    if final is not None:
        result["failure"] = final.signature
        result["detail"] = final.message[-2000:]
    return result


def _ip_fields(packet: bytes) -> tuple[int, int, int]:
    """(protocol, header length, total length) of an IPv4 or IPv6 packet (the
    fixed header only: IPv6's next header); MalformedPacket if it is none."""
    if packet and packet[0] >> 4 == 6:
        ip6 = parse_ipv6(packet)
        return ip6.next_header, 40, 40 + ip6.payload_length
    ip = parse_ipv4(packet)
    return ip.protocol, ip.header_length, ip.total_length


def describe_packet(packet: bytes) -> str:
    """One line for a reader of the corpus (replay ignores it)."""
    family = "IPv6" if packet and packet[0] >> 4 == 6 else "IPv4"
    try:
        protocol, header_length, total_length = _ip_fields(packet)
    except MalformedPacket as exc:
        return f"malformed {family}: {exc.reason}"
    if protocol != PROTO_TCP:
        return f"{family} proto {protocol}, {len(packet)} bytes"
    try:
        tcp = parse_tcp(packet[header_length:total_length])
    except MalformedPacket as exc:
        return f"malformed TCP: {exc.reason}"
    from ustack.tcp.segment import flag_string
    from ustack.tcp.segment import options_dict

    length = total_length - header_length - tcp.header_length
    return (
        f"{tcp.src_port}>{tcp.dst_port} {flag_string(tcp.flags)} seq={tcp.seq} ack={tcp.ack} "
        f"win={tcp.window} len={length} {options_dict(tcp.options) or ''}"
    ).rstrip()


def case_to_json(case: Case, about: str = "") -> str:
    """A case as the corpus stores it: packets as hex, each with a summary."""
    actions = []
    for action in case["actions"]:
        if action[0] == "packet":
            packet = action[1] if isinstance(action[1], bytes) else bytes.fromhex(action[-1])
            actions.append(["packet", describe_packet(packet), packet.hex()])
        else:
            actions.append(list(action))
    out: dict[str, Any] = {}
    if about:
        out["about"] = about
    for name in ("failure", "detail"):  # what it broke when found
        if name in case:
            out[f"found_{name}"] = case[name]
    out["setup"] = case["setup"]
    out["actions"] = actions
    lines = ",\n    ".join(json.dumps(a) for a in actions)
    head = json.dumps({k: v for k, v in out.items() if k != "actions"}, indent=2)[:-2]
    return f'{head},\n  "actions": [\n    {lines}\n  ]\n}}\n'


def load_case(path: Path) -> Case:
    return json.loads(path.read_text())


def random_programs(seed: int, max_len: int = 1024) -> Callable[[], bytes]:
    """A plain generator of inputs (no coverage feedback): random bytes of
    random length, for the short CI run and machines without atheris."""
    import random

    rng = random.Random(seed)

    def next_input() -> bytes:
        length = min(rng.choice((8, 16, 32, 64, 128, 256, 512, 1024)), max_len)
        return rng.randbytes(rng.randrange(1, length + 1))

    return next_input
