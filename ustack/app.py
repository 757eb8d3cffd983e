"""The stack as a library, in one call.

    async with ustack.open_stack() as stack:          # a TUN, as `ustack serve` makes it
        reader, writer = await stack.open_connection("198.18.0.1", 8080)

    async with ustack.open_memory_pair() as (a, b):   # two stacks, no TUN, one process
        server = await b.start_server(handle, port=7)
        reader, writer = await a.open_connection("198.18.0.2", 7)

Both yield ustack.daemon.running.RunningStack objects: the same set-up and
read loop the daemon runs on. On leaving the block, also on an error or a
cancellation, every connection is reset, the servers' handlers end, the read
loop and the timer go, the link is closed (a TUN we created disappears) and
the traces are flushed.

A memory pair runs on the loop's real clock, or (clock="virtual") on a
virtual one that `MemoryPair.run` / `run_until_idle` advance from deadline to
deadline, delivering each packet in the order it was sent: the same session
each time, in no real time, for teaching and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
from collections import deque
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Coroutine
from collections.abc import Iterable
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from typing import TypeVar

from ustack.daemon.running import RunningStack
from ustack.daemon.running import ServeConfig
from ustack.linux.tun import LinkConfig
from ustack.linux.tun import TunLink
from ustack.runner import StackRunner
from ustack.stack import Stack
from ustack.study.faults import FaultRule
from ustack.study.faults import parse_rule
from ustack.study.sinks import TraceSpec
from ustack.study.sinks import format_for
from ustack.tcp.connection import TcpConfig
from ustack.tcp.connection import TcpConnection
from ustack.wire.checksum import Buffer

T = TypeVar("T")

TraceLike = str | Path | TraceSpec
FaultLike = str | FaultRule
MEMORY_MTU = 1500
# Loop turns a virtual-clock driver lets the application's tasks take before
# it decides nothing more is coming: a write reaches the stack in one turn,
# a received byte reaches an awaiting reader in two or three.
SETTLE_TURNS = 20
DEFAULT_LIMIT = 3600.0  # virtual seconds run_until_idle goes at most


def trace_specs(traces: Iterable[TraceLike]) -> list[TraceSpec]:
    """--trace's paths (format from the name: .jsonl, .pcap, .pcapng, text) or TraceSpecs."""
    specs = []
    for trace in traces:
        if isinstance(trace, TraceSpec):
            specs.append(trace)
        else:
            path = Path(trace)
            specs.append(TraceSpec(path, format_for(path)))
    return specs


def fault_rules(faults: Iterable[FaultLike]) -> list[FaultRule]:
    """--fault's rules ("drop:dir=out,flags=FIN,count=1") or FaultRules."""
    return [rule if isinstance(rule, FaultRule) else parse_rule(rule) for rule in faults]


def _config(
    config: ServeConfig | None,
    trace: Iterable[TraceLike],
    faults: Iterable[FaultLike],
    fault_seed: int | None,
    tcp: TcpConfig | None,
    **link: Any,
) -> ServeConfig:
    """ServeConfig's defaults (those of `ustack serve`), with no services: the
    application brings its own servers."""
    base = config or ServeConfig(services={})
    changes: dict[str, Any] = {}
    link_changes = {key: value for key, value in link.items() if value is not None}
    if link_changes:
        changes["link"] = dataclasses.replace(base.link, **link_changes)
    if trace:
        changes["traces"] = [*base.traces, *trace_specs(trace)]
    if faults:
        changes["faults"] = [*base.faults, *fault_rules(faults)]
    if fault_seed is not None:
        changes["fault_seed"] = fault_seed
    if tcp is not None:
        changes["tcp"] = tcp
    return dataclasses.replace(base, **changes)


@contextlib.asynccontextmanager
async def open_stack(
    device: str | None = None,
    *,
    address: str | None = None,
    address6: str | None = "",
    linux_side: str | None = None,
    linux_side6: str | None = None,
    mtu: int | None = None,
    offload: bool | None = None,
    trace: Iterable[TraceLike] = (),
    faults: Iterable[FaultLike] = (),
    fault_seed: int | None = None,
    tcp: TcpConfig | None = None,
    record: bool = False,
    config: ServeConfig | None = None,
) -> AsyncIterator[RunningStack]:
    """A stack on a TUN device, running on the current loop, as `ustack
    serve` runs it (its defaults: tun0, 198.18.0.2 and 2001:2::2, Linux at
    198.18.0.1 and 2001:2::1, MTU 1500 on a new device, offloads on) without
    its services. `device` is created, or attached to if it exists (and then
    left in place). `address6=None`: IPv4 only. `linux_side`, `linux_side6`:
    the kernel's address and prefix on the device ("198.18.1.1/24", as
    --linux-address), for a stack beside another one. `trace`: --trace paths;
    `faults`: --fault rules; `tcp`: the connections' TcpConfig; `record`:
    keep every trace event in `stack.events`; `config`: a whole ServeConfig."""
    serve_config = _config(
        config, trace, faults, fault_seed, tcp, device=device, mtu=mtu, offload=offload,
        linux_side=None if linux_side is None else ipaddress.IPv4Interface(linux_side),
        linux_side6=None if linux_side6 is None else ipaddress.IPv6Interface(linux_side6),
    )  # fmt: skip
    changes: dict[str, Any] = {}
    if address is not None:
        changes["address"] = ipaddress.IPv4Address(address)
    if address6 is None:
        changes["address6"] = None
        changes["link"] = dataclasses.replace(serve_config.link, linux_side6=None)
    elif address6:
        changes["address6"] = ipaddress.IPv6Address(address6)
    serve_config = dataclasses.replace(serve_config, **changes)
    link = await _open_tun(serve_config.link)
    try:
        running = RunningStack(serve_config, link, record=record)
    except BaseException:
        link.close()
        raise
    async with _running(running):
        yield running


async def _open_tun(config: LinkConfig) -> TunLink:
    """TunLink.open in a thread: its netlink set-up is synchronous and runs a
    loop of its own. Cancelled meanwhile, the device is closed when it comes."""
    loop = asyncio.get_running_loop()
    opening = loop.run_in_executor(None, TunLink.open, config)
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:

        def close(done: asyncio.Future[TunLink]) -> None:
            if not done.cancelled() and done.exception() is None:
                done.result().close()

        opening.add_done_callback(close)
        raise


@contextlib.asynccontextmanager
async def _running(
    running: RunningStack, runner: StackRunner | None = None
) -> AsyncIterator[RunningStack]:
    running.start(runner)
    try:
        yield running
    finally:
        await shut_down(running)


async def shut_down(running: RunningStack) -> None:
    """Servers closed, every connection reset, the servers' handlers ended
    (cancelled if they do not end on their own), then the link and traces."""
    try:
        for server in running.servers:
            server.close()
        running.reset_all()
        handlers = [task for server in running.servers for task in server.handlers]
        for _ in range(3):  # connection_lost runs, readers raise, handlers end
            if not any(not task.done() for task in handlers):
                break
            await asyncio.sleep(0)
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.gather(*handlers, return_exceptions=True)
    finally:
        running.stop()


# ---- two stacks in memory ----------------------------------------------------------------


class MemoryLink:
    """One end of an in-memory wire: what is written at one end is read at
    the other, whole packets in order. `on_arrival` (real clock) is called
    once a loop turn when packets wait."""

    offload = False
    fd = None  # no file descriptor: the peer's writes wake the reader

    def __init__(self, name: str, mtu: int = MEMORY_MTU) -> None:
        self.name = name
        self.mtu = mtu
        self.ipv6 = mtu >= 1280  # RFC 8200 5
        self.finish_checksums = False
        self.partial_tcp_checksums = False
        self.inbox: deque[bytes] = deque()
        self.peer: MemoryLink | None = None
        self.on_arrival: Callable[[], None] | None = None
        self.closed = False
        self._wake_scheduled = False
        self.packets_written = 0

    @classmethod
    def pair(cls, mtu: int = MEMORY_MTU) -> tuple[MemoryLink, MemoryLink]:
        a, b = cls("mem0", mtu), cls("mem1", mtu)
        a.peer, b.peer = b, a
        return a, b

    def read(self, size: int = MEMORY_MTU) -> tuple[Buffer, bool] | None:
        if not self.inbox:
            return None
        return self.inbox.popleft(), False  # (checksums verified: as from a wire)

    def write(self, packet: bytes | bytearray | memoryview, gso_size: int = 0) -> bool:
        peer = self.peer
        if self.closed or peer is None or peer.closed:
            return False  # a wire cut: the packet is lost
        peer.inbox.append(bytes(packet))  # (the stack reuses its buffers)
        self.packets_written += 1
        peer._arrived()
        return True

    def _arrived(self) -> None:
        if self.on_arrival is not None and not self._wake_scheduled:
            self._wake_scheduled = True
            asyncio.get_running_loop().call_soon(self._wake)

    def _wake(self) -> None:
        self._wake_scheduled = False
        if self.on_arrival is not None and not self.closed:
            self.on_arrival()

    def close(self) -> None:
        self.closed = True
        self.inbox.clear()


class VirtualRunner(StackRunner):
    """A StackRunner on a virtual clock: it sets no loop timer; the pair's
    driver fires the stacks' timers when it moves the clock to them."""

    def __init__(self, stack: Stack, loop: asyncio.AbstractEventLoop, clock: VirtualClock) -> None:
        super().__init__(stack, loop)
        self.now = clock.now

    def done(self, conn: TcpConnection | None = None) -> None:
        if conn is not None:
            self.stack.tcp.flush(conn)


class VirtualClock:
    def __init__(self, start: float = 0.0) -> None:
        self.time = start

    def now(self) -> float:
        return self.time


class Stuck(RuntimeError):
    """run() found nothing left to do (no packet, no timer) before its coroutine ended."""


class MemoryPair:
    """Two running stacks on the two ends of an in-memory wire: `a`
    (198.18.0.1, 2001:2::1) and `b` (198.18.0.2, 2001:2::2); `(a, b) = pair`.
    On a virtual clock, `run()` and `run_until_idle()` move time on."""

    def __init__(
        self,
        a: RunningStack,
        b: RunningStack,
        links: tuple[MemoryLink, MemoryLink],
        clock: VirtualClock | None,
    ) -> None:
        self.a, self.b = a, b
        self.links = links
        self.clock = clock

    def __iter__(self) -> Iterator[RunningStack]:
        return iter((self.a, self.b))

    @property
    def now(self) -> float:
        """The pair's clock: virtual seconds, or the loop's."""
        if self.clock is not None:
            return self.clock.time
        return asyncio.get_running_loop().time()

    async def run(self, coro: Coroutine[Any, Any, T], limit: float = DEFAULT_LIMIT) -> T:
        """Run `coro` (an application: clients, servers) to its end, moving the
        virtual clock on whenever it waits for the network; its result. Stuck
        if it waits for something that never comes; TimeoutError past `limit`."""
        task = asyncio.ensure_future(coro)
        try:
            await self._drive(task, limit)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return task.result()

    async def run_until_idle(self, limit: float = DEFAULT_LIMIT) -> float:
        """Deliver every packet and fire every timer (TIME_WAIT's included)
        until nothing is left to do, or `limit` virtual seconds have passed;
        the virtual time then."""
        await self._drive(None, limit)
        return self.now

    async def _drive(self, task: asyncio.Future[Any] | None, limit: float) -> None:
        clock = self._virtual()
        end = clock.time + limit
        stacks = (self.a, self.b)
        ends = tuple(zip(stacks, self.links, strict=True))
        while True:
            for _ in range(SETTLE_TURNS):  # the application's turn
                if task is not None and task.done():
                    return
                await asyncio.sleep(0)
            delivered = False
            for running, link in ends:  # each packet in the order it was sent
                if link.inbox:
                    running.on_readable()
                    delivered = True
            if delivered:
                continue
            deadlines = [d for d in (s.stack.next_deadline() for s in stacks) if d is not None]
            if not deadlines:
                if task is None:
                    return
                raise Stuck("the application waits, and no packet or timer is left to wake it")
            deadline = min(deadlines)
            if deadline > end:
                if task is None:
                    return
                raise TimeoutError(f"still running after {limit} virtual seconds")
            clock.time = max(clock.time, deadline)
            for running in stacks:
                running.stack.handle_timers(clock.time)

    def _virtual(self) -> VirtualClock:
        if self.clock is None:
            raise RuntimeError("run() and run_until_idle() drive a virtual clock (clock='virtual')")
        return self.clock


@contextlib.asynccontextmanager
async def open_memory_pair(
    *,
    clock: str = "real",
    mtu: int = MEMORY_MTU,
    tcp: TcpConfig | None = None,
    trace_a: Iterable[TraceLike] = (),
    trace_b: Iterable[TraceLike] = (),
    faults_a: Iterable[FaultLike] = (),
    faults_b: Iterable[FaultLike] = (),
    record: bool = True,
) -> AsyncIterator[MemoryPair]:
    """Two stacks wired back to back in memory, on the current loop: `a` at
    198.18.0.1 / 2001:2::1, `b` at 198.18.0.2 / 2001:2::2. `clock`: "real"
    (the loop's) or "virtual" (driven by the pair's run / run_until_idle).
    `record`: each keeps its trace events in `.events` (for a ladder);
    `trace_a`/`trace_b`: trace files, as --trace."""
    if clock not in ("real", "virtual"):
        raise ValueError(f'clock is "real" or "virtual", not {clock!r}')
    link_a, link_b = MemoryLink.pair(mtu)
    base = ServeConfig(services={}, link=LinkConfig(device="mem", mtu=mtu, offload=False))
    if tcp is not None:
        base = dataclasses.replace(base, tcp=tcp)
    config_a = dataclasses.replace(
        _config(base, trace_a, faults_a, None, None),
        address=ipaddress.IPv4Address("198.18.0.1"),
        address6=ipaddress.IPv6Address("2001:2::1"),
    )
    config_b = _config(base, trace_b, faults_b, None, None)
    virtual = VirtualClock() if clock == "virtual" else None
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        ends = []
        for config, link in ((config_a, link_a), (config_b, link_b)):
            running = RunningStack(config, link, record=record)
            stack.callback(running.stop)  # (closes the link even if the next fails)
            runner = None if virtual is None else VirtualRunner(running.stack, loop, virtual)
            ends.append(await stack.enter_async_context(_running(running, runner)))
            if virtual is None:
                link.on_arrival = running.on_readable
        yield MemoryPair(ends[0], ends[1], (link_a, link_b), virtual)


__all__ = [
    "MemoryLink",
    "MemoryPair",
    "Stuck",
    "VirtualClock",
    "fault_rules",
    "open_memory_pair",
    "open_stack",
    "trace_specs",
]
