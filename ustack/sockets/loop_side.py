"""What `ustack.socket`'s sockets keep on the stack's loop: the states a
blocking call waits on (`Waitable.wait`, run in the loop with its timeout),
and the stack's errors as a kernel socket gives them."""

from __future__ import annotations

import asyncio
import errno
import os
from collections import deque
from collections.abc import Callable
from typing import Any
from typing import TypeVar

from ustack.api import TcpTransport

T = TypeVar("T")
Address = tuple[str, int] | tuple[str, int, int, int]
RECEIVE_BUFFER = 256 * 1024  # bytes held for recv() before the window closes (pause_reading)


def oserror(code: int, text: str | None = None) -> OSError:
    return OSError(code, text or os.strerror(code))


_ERRNO_OF: tuple[tuple[type[OSError], int], ...] = (
    (ConnectionRefusedError, errno.ECONNREFUSED),
    (ConnectionResetError, errno.ECONNRESET),
    (BrokenPipeError, errno.EPIPE),
    (TimeoutError, errno.ETIMEDOUT),
)


def with_errno(exc: OSError) -> OSError:
    """The stack's errors with their errno, as a kernel socket's
    (ConnectionRefusedError("ECONNREFUSED") has none: it gets 111)."""
    if exc.errno is not None:
        return exc
    for kind, code in _ERRNO_OF:
        if isinstance(exc, kind):
            return OSError(code, os.strerror(code))  # (OSError picks the subclass)
    return exc


# ---- what lives on the loop --------------------------------------------------------------


class Waitable:
    """Something sync calls wait on: `wait(ready, timeout)` in the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._waiters: list[asyncio.Future[None]] = []
        self.closed_locally = False  # close() from any thread: waiters get EBADF

    def notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, ready: Callable[[], bool], wait_for: float | None) -> None:
        """Until ready() (or closed); BlockingIOError at once for wait_for 0,
        TimeoutError past wait_for seconds, OSError EBADF once closed."""
        if wait_for == 0.0 and not ready() and not self.closed_locally:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        try:
            async with asyncio.timeout(wait_for):
                while not ready() and not self.closed_locally:
                    waiter = self.loop.create_future()
                    self._waiters.append(waiter)
                    await waiter
        except TimeoutError:
            raise TimeoutError("timed out") from None  # (the kernel socket's words)
        if self.closed_locally:
            raise oserror(errno.EBADF)


class StreamState(asyncio.Protocol, Waitable):
    """One connection's receive buffer and state, in the loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_made: Callable[[StreamState], None] | None = None
    ) -> None:
        Waitable.__init__(self, loop)
        self.buffer = bytearray()
        self.transport: TcpTransport | None = None
        self.eof = False  # the peer's FIN
        self.read_shut = False  # shutdown(SHUT_RD)
        self.lost = False
        self.error: OSError | None = None  # reported once (as SO_ERROR)
        self.reset = False  # an RST came: sends fail with EPIPE
        self.write_paused = False
        self._on_made = on_made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, TcpTransport)
        self.transport = transport
        if self._on_made is not None:
            self._on_made(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= RECEIVE_BUFFER and self.transport is not None:
            self.transport.pause_reading()  # the window closes, as a full socket's
        self.notify()

    def eof_received(self) -> bool:
        self.eof = True
        self.notify()
        return True  # half-close: we may still send

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if isinstance(exc, OSError):
            self.error = with_errno(exc)
            self.reset = isinstance(exc, ConnectionResetError)
        self.eof = True
        self.write_paused = False
        self.notify()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.notify()

    def readable(self) -> bool:
        return bool(self.buffer) or self.eof or self.read_shut or self.error is not None

    def take(self, size: int) -> bytes:
        if self.error is not None and not self.buffer:
            exc, self.error = self.error, None
            raise exc
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        transport = self.transport
        if (
            transport is not None
            and not transport.is_reading()
            and len(self.buffer) < RECEIVE_BUFFER // 2
        ):
            transport.resume_reading()
        return data


class ListenState(Waitable):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.accepted: deque[StreamState] = deque()
        self.listener: Any = None

    def on_connected(self, state: StreamState) -> None:
        self.accepted.append(state)
        self.notify()


class DatagramState(asyncio.DatagramProtocol, Waitable):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        Waitable.__init__(self, loop)
        self.queue: deque[tuple[bytes, Address] | OSError] = deque()

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.queue.append((data, addr))
        self.notify()

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, OSError):
            self.queue.append(exc)
            self.notify()


async def on_loop(function: Callable[[], T]) -> T:
    """A plain call made on the loop's thread (the stack is not thread-safe)."""
    return function()
