"""StackRunner: drives a sans-I/O `Stack` from an asyncio event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ustack.stack import Stack
from ustack.tcp.connection import TcpConnection


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
        deadline = self.stack.next_deadline()
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
        self.stack.handle_timers(self.now())
        self.done()

    def cancel_timer(self) -> None:
        """The stack stops: its timer must not fire on a loop that runs on."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
