"""The stack (IP + TCP wired together, no I/O of its own) and its asyncio driver."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable

from ustack.checksum import Buffer
from ustack.counters import Counters
from ustack.headers import IPV4_MIN_HEADER_LENGTH
from ustack.ip import IPv4Layer
from ustack.tcp.connection import TcpConfig, TcpConnection
from ustack.tcp.demux import TcpDemux
from ustack.tcp.syncookies import SynCookies
from ustack.trace import PacketTap, Tracer

DEFAULT_ADDRESS = ipaddress.IPv4Address("198.18.0.2")


class Stack:
    """IPv4 + ICMP + TCP for one address. Packets go in through `receive`
    and out through the `transmit` callable; the caller owns all I/O."""

    def __init__(
        self,
        address: int,
        transmit: Callable[[bytes], bool],
        mtu: int = 1500,
        tcp_config: TcpConfig | None = None,
        trace: Tracer | None = None,
        isn: Callable[[int, int, int, int, float], int] | None = None,
        tap: PacketTap | None = None,
        syncookies: bool = True,
    ) -> None:
        self.counters = Counters()
        self.counters.tracer = trace
        self.ip = IPv4Layer(address, transmit, self.counters, mtu)
        self.ip.tap = tap
        config = tcp_config or TcpConfig(mss=mtu - 40)
        self.tcp = TcpDemux(
            address,
            self.ip.send_in_place,
            self.counters,
            config,
            trace,
            isn,
            SynCookies() if syncookies else None,
            headroom=IPV4_MIN_HEADER_LENGTH,  # IP writes its header there: no copy
        )
        self.ip.tcp_input = self.tcp.receive

    def receive(self, packet: Buffer, now: float = 0.0, checksum_ok: bool = False) -> None:
        self.ip.receive(packet, now, checksum_ok)


class StackRunner:
    """Drives a Stack from an asyncio loop: `now` is the loop's clock, and one
    loop timer stands for the earliest deadline of all connections."""

    def __init__(self, stack: Stack, loop: asyncio.AbstractEventLoop) -> None:
        self.stack = stack
        self.loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0  # its deadline (TimerHandle.when() is a Python call)
        # The loop's clock. asyncio's own loops read time.monotonic: that is
        # called directly, not through a method (it is read for every packet
        # and every call of the application into a connection).
        self.now: Callable[[], float] = (
            time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time
        )

    def receive(self, packet: bytes) -> None:
        self.stack.receive(packet, self.now())

    def done(self, conn: TcpConnection | None = None) -> None:
        """Call after feeding packets or calling into a connection: sends what
        it queued, hands out its events and keeps the timer right."""
        if conn is not None:
            self.stack.tcp.flush(conn)
        deadline = self.stack.tcp.next_deadline()
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer_when <= deadline:
                return
            self._timer.cancel()
        self._timer = self.loop.call_at(deadline, self._on_timer)
        self._timer_when = deadline

    def _on_timer(self) -> None:
        self._timer = None
        self.stack.tcp.handle_timers(self.now())
        self.done()
