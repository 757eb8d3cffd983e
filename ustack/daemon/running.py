"""A running stack: one Stack on one link, driven from the current asyncio loop.

This is the set-up `ustack serve` and `ustack.open_stack` share: the Stack
built for its link (MSS from the MTU, GSO and checksum offloads), the trace
outputs, the fault injector at the link's boundary, the StackRunner (the
clock, one timer) and the one read loop. The daemon adds its services, its
control socket and the signals on top; a library user gets the streams
(`open_connection`, `start_server`), the counters and the connection table.

The link is a TUN device (ustack.linux.tun.TunLink) or anything with the
same few members (ustack.app.MemoryLink: two stacks in one process).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import Protocol
from typing import TypeVar

from ustack.api import ClientCallback
from ustack.api import StackServer
from ustack.api import open_connection
from ustack.api import start_server
from ustack.daemon.reports import fault_event
from ustack.daemon.reports import table_rows
from ustack.datagram import create_datagram_endpoint
from ustack.linux.tun import LinkConfig
from ustack.linux.tun import LinkGone
from ustack.net.fragments import FragmentLimits
from ustack.net.pmtu import DEFAULT_MIN_PMTU
from ustack.net.ratelimit import IcmpLimits
from ustack.runner import StackRunner
from ustack.services import SERVICES
from ustack.services import HttpLimits
from ustack.stack import DEFAULT_ADDRESS
from ustack.stack import Stack
from ustack.study.faults import FaultInjector
from ustack.study.faults import FaultRule
from ustack.study.faults import Verdict
from ustack.study.faults import mark_ce
from ustack.study.sinks import FanOut
from ustack.study.sinks import TraceFilter
from ustack.study.sinks import TraceRotation
from ustack.study.sinks import TraceSinks
from ustack.study.sinks import TraceSpec
from ustack.tcp.connection import TcpConfig
from ustack.tcp.isn import IsnGenerator
from ustack.tcp.syncookies import SynCookies
from ustack.trace.records import TraceEvent
from ustack.trace.records import Tracer
from ustack.wire.checksum import Buffer
from ustack.wire.ipv6 import IPV6_VERSION

log = logging.getLogger("ustack")
_Protocol = TypeVar("_Protocol", bound=asyncio.BaseProtocol)

DEFAULT_ADDRESS6 = ipaddress.IPv6Address("2001:2::2")
# Packets read per wake-up of the loop before other callbacks get a turn.
READ_BATCH = 256
# --queues: a worker is a Python process of some 30 MB; the kernel allows 256 queues.
MAX_QUEUES = 64
GSO_SEGMENTS = 44  # 44 * 1460 bytes: one 64 KB super-segment per write


def default_services() -> dict[str, int]:
    return {name: port for name, (port, _) in SERVICES.items()}


@dataclass(frozen=True)
class ServeConfig:
    link: LinkConfig = field(default_factory=LinkConfig)
    address: ipaddress.IPv4Address = DEFAULT_ADDRESS
    address6: ipaddress.IPv6Address | None = DEFAULT_ADDRESS6  # None: IPv4 only (--no-ipv6)
    tcp: TcpConfig = field(default_factory=TcpConfig)  # its MSS is set from the MTU
    services: dict[str, int] = field(default_factory=lambda: default_services())
    control_path: Path | None = None
    ready_fd: int | None = None
    traces: list[TraceSpec] = field(default_factory=list)
    peer_states: bool = False  # add the Linux peer's states (kernel tracepoint) to the trace
    faults: list[FaultRule] = field(default_factory=list)
    fault_seed: int | None = None
    trace_filter: TraceFilter = field(default_factory=TraceFilter)
    http: HttpLimits = field(default_factory=HttpLimits)
    trace_rotation: TraceRotation = field(default_factory=TraceRotation)
    fragments: FragmentLimits = field(default_factory=FragmentLimits)  # IPv4 reassembly
    icmp: IcmpLimits = field(default_factory=IcmpLimits)  # the ICMP output rate limits
    min_pmtu: int = DEFAULT_MIN_PMTU  # the least path MTU an ICMP may teach (Linux min_pmtu)
    queues: int = 1  # TUN queues, one worker process each (daemon/queues.py)
    gc_stats: bool = False  # time the garbage collector's pauses (daemon/gc_pauses.py)
    # The keys of the ISN (RFC 6528) and SYN-cookie (RFC 4987) hashes; None:
    # random ones of its own. The workers of one device share them.
    shared_secrets: SharedSecrets | None = None


@dataclass(frozen=True)
class SharedSecrets:
    isn: bytes
    syncookies: bytes

    @classmethod
    def new(cls) -> SharedSecrets:
        return cls(secrets.token_bytes(16), secrets.token_bytes(16))


class Link(Protocol):
    """What a running stack needs of its link (TunLink has it all)."""

    name: str
    mtu: int
    offload: bool
    ipv6: bool
    finish_checksums: bool
    partial_tcp_checksums: bool

    def read(self, size: int) -> tuple[Buffer, bool] | None: ...
    def write(self, packet: bytes | bytearray | memoryview, gso_size: int = 0) -> bool: ...
    def close(self) -> None: ...


class RunningStack:
    """A Stack on a link, run from an asyncio loop between `start()` and
    `stop()`. `open_connection` and `start_server` are asyncio's, on this
    stack; `counters` its counters; `connections()` its connection table.
    `events`: every trace event, kept in memory when asked for (record=True)."""

    def __init__(self, config: ServeConfig, link: Link, *, record: bool = False) -> None:
        self.config = config
        self.link = link
        self.link_gone: LinkGone | None = None
        self.on_link_gone: Callable[[LinkGone], None] | None = None  # the daemon's exit
        self._traces = TraceSinks(config.traces, config.trace_filter, config.trace_rotation)
        self.events: list[TraceEvent] = []
        tracer: Tracer | None = self._traces.tracer
        if record:
            tracer = self.events.append if tracer is None else FanOut([tracer, self.events.append])
        self.tracer = tracer
        # A pcap shows the packets as on a wire: with the checksums filled in,
        # those we take and those we send. Without one, with offloads, the
        # kernel finishes our TCP checksums (or, delivering locally, needs none).
        link.finish_checksums = self._traces.tap is not None
        partial_checksums = link.offload and self._traces.tap is None
        link.partial_tcp_checksums = partial_checksums
        tcp = dataclasses.replace(
            config.tcp,
            mss=link.mtu - 40,  # IPv4 + TCP headers (TCP takes 20 more off for IPv6)
            gso_segments=GSO_SEGMENTS if link.offload else 1,
        )
        self.faults = FaultInjector()
        if config.fault_seed is not None:
            self.faults.rng.seed(config.fault_seed)
        for rule in config.faults:
            self.faults.add(rule)
        # IPv6 where the link has it (not with --no-ipv6, nor an MTU below 1280).
        self.address6 = config.address6 if link.ipv6 else None
        shared = config.shared_secrets
        self.stack = Stack(
            int(config.address),
            self._transmit,
            link.mtu,
            tcp,
            tracer,
            tap=self._traces.tap,
            network=config.link.linux_side.network,
            fragment_limits=config.fragments,
            icmp_limits=config.icmp,
            min_pmtu=config.min_pmtu,
            address6=None if self.address6 is None else int(self.address6),
            isn=None if shared is None else IsnGenerator(shared.isn),
            syncookies=True if shared is None else SynCookies(shared.syncookies),
        )
        self.stack.tcp.partial_checksums = partial_checksums
        self._traces.count_into(self.stack.counters)  # trace.write_errors, for `ustack stats`
        self.runner: StackRunner | None = None
        self._held: set[asyncio.TimerHandle] = set()  # delayed by the fault injector
        self._reader_fd: int | None = None
        self._stopped = False
        self.servers: list[StackServer] = []  # started through start_server: closed by stop
        # UDP endpoints made through create_datagram_endpoint: closed by stop.
        self.endpoints: list[asyncio.DatagramTransport] = []

    # ---- start and stop ---------------------------------------------------------------------

    def start(self, runner: StackRunner | None = None) -> StackRunner:
        """Run on the current loop: the runner (a virtual-clock one may be
        given), and the read loop on the link's fd if it has one."""
        loop = asyncio.get_running_loop()
        self.runner = runner or StackRunner(self.stack, loop)
        fd = getattr(self.link, "fd", None)
        if isinstance(fd, int):
            loop.add_reader(fd, self.on_readable)
            self._reader_fd = fd
        return self.runner

    def reset_all(self) -> None:
        """Going away: RST every connection so no peer waits for us (unless the
        device is gone: then no RST can go out, and no peer is left to wait)."""
        if self.runner is None or self.link_gone is not None:
            return
        now = self.runner.now()
        for conn in list(self.stack.tcp.connections.values()):
            conn.abort(now)
            self.stack.tcp.flush(conn)
        self._traces.settle()

    def stop(self) -> None:
        """Reader removed, delayed packets dropped, link closed (a TUN we
        created disappears), traces flushed and closed. Safe to call twice."""
        for endpoint in self.endpoints:
            endpoint.close()
        if self._reader_fd is not None:
            asyncio.get_running_loop().remove_reader(self._reader_fd)
            self._reader_fd = None
        for handle in self._held:  # packets a delay fault still holds: dropped
            handle.cancel()
        self._held.clear()
        if self.runner is not None:
            self.runner.cancel_timer()
        self.link.close()
        self._traces.close()

    # ---- the application's side -------------------------------------------------------------

    def _running(self) -> StackRunner:
        if self.runner is None:
            raise RuntimeError("the stack is not running (start() it, or use open_stack)")
        return self.runner

    @property
    def counters(self) -> dict[str, int]:
        """The stack's counters (a copy, sorted by name)."""
        return dict(sorted(self.stack.counters.items()))

    async def open_connection(
        self, host: str, port: int, **options: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """asyncio.open_connection on this stack (options: see ustack.api)."""
        return await open_connection(self._running(), host, port, **options)

    async def start_server(
        self, client_connected_cb: ClientCallback, host: str | None = None, port: int = 0,
        **options: Any,
    ) -> StackServer:  # fmt: skip
        """asyncio.start_server on this stack: `host` None hears both families."""
        if not 0 < port < 65536:
            raise ValueError(f"a server needs a port 1..65535, not {port}")
        server = await start_server(
            self._running(), client_connected_cb, port, host=host, **options
        )
        self.servers.append(server)
        return server

    async def create_datagram_endpoint(
        self,
        protocol_factory: Callable[[], _Protocol],
        local_addr: tuple[str, int] | tuple[str, int, int, int] | None = None,
        remote_addr: tuple[str, int] | tuple[str, int, int, int] | None = None,
        *,
        family: int = 0,
    ) -> tuple[asyncio.DatagramTransport, _Protocol]:
        """asyncio's create_datagram_endpoint on this stack (UDP, RFC 768):
        see ustack.datagram."""
        transport, protocol = await create_datagram_endpoint(
            self._running(), protocol_factory, local_addr, remote_addr, family=family
        )
        self.endpoints.append(transport)
        return transport, protocol

    def connections(self) -> list[dict[str, Any]]:
        """The connection table, as `ustack ss` shows it: one dict a connection
        (local, remote, state, srtt, cwnd, queues...)."""
        now = self.runner.now() if self.runner is not None else 0.0
        return table_rows(self.stack, now)

    # ---- the read loop: the one place packets come in ---------------------------------------

    def on_readable(self) -> None:
        runner = self._running()
        link = self.link
        read, size = link.read, link.mtu
        # Each family's ip.receive, as Stack.receive dispatches, one call less
        # per packet (IPv6 to IPv4's, which counts it, on an IPv4-only stack).
        receive4 = self.stack.ip.receive
        receive6 = receive4 if self.stack.ip6 is None else self.stack.ip6.receive
        clock = runner.now
        faults = self.faults
        try:
            for _ in range(READ_BATCH):
                got = read(size)
                if got is None:
                    break
                packet, checksum_ok = got
                if faults.rules:
                    self._receive_with_faults(packet, checksum_ok)
                elif packet and packet[0] >> 4 == IPV6_VERSION:
                    receive6(packet, clock(), checksum_ok)  # each its own time: exact traces
                else:
                    receive4(packet, clock(), checksum_ok)
        except LinkGone as exc:
            self._lost_link(exc)
        runner.done()
        self._traces.settle()  # a pcapng writes the last packet read, with its reasons

    def _lost_link(self, exc: LinkGone) -> bool:
        """The device went away under us (deleted, or its namespace removed).
        False: the packet is not sent."""
        if self.link_gone is None:
            self.link_gone = exc
            if self.on_link_gone is not None:
                self.on_link_gone(exc)
        return False

    # ---- the fault injector, at the link's boundary -----------------------------------------

    def _transmit(self, packet: bytes, gso_size: int = 0) -> bool:
        if not self.faults.rules:
            try:
                return self.link.write(packet, gso_size)
            except LinkGone as exc:
                return self._lost_link(exc)
        return self._through_faults("out", packet, self._write, self._write, gso_size)

    def _write(self, packet: bytes, gso_size: int) -> bool:
        try:
            return self.link.write(packet, gso_size)
        except LinkGone as exc:
            return self._lost_link(exc)

    def _receive_with_faults(self, packet: Buffer, checksum_ok: bool) -> None:
        self._through_faults("in", packet, self._receive_now, self._receive_late, checksum_ok)

    def _through_faults(
        self,
        direction: str,
        packet: Buffer,
        now: Callable[..., object],
        late: Callable[..., object],
        *args: object,
    ) -> bool:
        """Each copy the fault rules leave of `packet` goes to `now` at once or
        to `late` after the rule's delay; False once `now` says the link failed."""
        verdict = self.faults.judge(direction, packet)
        if verdict.rule is not None:
            self._trace_fault(direction, packet, verdict)
        if verdict.mark:
            packet = bytes(mark_ce(packet))
        for _ in range(verdict.copies):
            if verdict.delay:
                self._hold(verdict.delay, late, packet, *args)
            elif now(packet, *args) is False:
                return False
        return True

    def _hold(self, delay: float, callback: Callable[..., object], *args: object) -> None:
        """Run `callback` later; stop() cancels what has not run yet."""
        loop = asyncio.get_running_loop()
        if len(self._held) > 1000:  # forget the handles that have run
            now = loop.time()
            self._held = {handle for handle in self._held if handle.when() > now}
        self._held.add(loop.call_later(delay, callback, *args))

    def _receive_now(self, packet: Buffer, checksum_ok: bool) -> None:
        self.stack.receive(packet, self._running().now(), checksum_ok)

    def _receive_late(self, packet: Buffer, checksum_ok: bool) -> None:
        """A delayed copy arrives alone: flush what it caused (the read loop
        does that for the packets it reads)."""
        self._receive_now(packet, checksum_ok)
        self._running().done()
        self._traces.settle()

    def _trace_fault(self, direction: str, packet: Buffer, verdict: Verdict) -> None:
        self.stack.counters[f"fault.{verdict.rule.action if verdict.rule else ''}"] += 1
        if self.tracer is None or verdict.rule is None or self.runner is None:
            return
        self.tracer(fault_event(self.stack, direction, packet, verdict, self.runner.now()))

    def reopen_traces(self) -> int:
        return self._traces.reopen()


__all__ = ["Link", "RunningStack", "ServeConfig", "SharedSecrets", "default_services"]
