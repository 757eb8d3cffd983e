"""Sockets for ordinary code: the standard `socket` API on a ustack stack.

Synchronous code (http.client, urllib, a blocking accept loop) runs on the
stack unchanged after ONE line:

    ustack.socket.install()     # socket.create_connection / create_server now use ustack

or, for code of your own, `from ustack import socket` in place of `import
socket`: this module has socket's names (socket, create_connection,
create_server, the AF_/SOCK_/SO_ constants, timeout, error...).

The stack runs on a background thread with its own asyncio loop: started
by `start(**open_stack options)` or, lazily, by the first socket (as
`ustack serve` makes it: tun0, 198.18.0.2 and 2001:2::2), stopped by
`stop()` and at interpreter exit. Each blocking call waits on that loop
(asyncio.run_coroutine_threadsafe); its timeout runs in the loop, so a
call that times out has taken nothing. `memory_pair()` gives two stacks
talking in memory, for tests.

Named `socket` inside the package: absolute imports (`import socket`, also
in this module) still find the standard module; only `ustack.socket` is ours.

What differs from a kernel socket:
- fileno() is -1: there is no kernel file descriptor, so select, selectors
  and asyncio's loop cannot wait on these sockets (use timeouts or threads).
- install() swaps socket.create_connection and socket.create_server only
  (what http.client, urllib, smtplib... call); socket.socket stays the
  kernel's, as the stack's own thread and asyncio need it. socketserver
  makes its socket with socket.socket: use `from ustack import socket`.
- Host names are resolved by the system's resolver (socket.getaddrinfo);
  the traffic then goes through ustack.
- An AF_INET6 server without IPV6_V6ONLY also hears IPv4; its accepted
  IPv4 connections are AF_INET sockets (no v4-mapped addresses).
- bind() before connect() on a stream socket does not choose its port.
- SO_RCVBUF / SO_SNDBUF read back twice what was set, as on Linux; they do
  not change the stack's buffers.
- A non-blocking connect() raises BlockingIOError EINPROGRESS; until the
  handshake ends, recv/send raise ENOTCONN (the kernel: EAGAIN).
- Each call crosses to the stack's thread and back: a round trip of a few
  bytes costs about a millisecond, bulk runs at about 60% of asyncio streams.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import errno
import io
import os
import random
import socket as _socket
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from socket import (
    AF_INET,
    AF_INET6,
    AF_UNSPEC,
    AI_PASSIVE,
    IPPROTO_IP,
    IPPROTO_IPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV6_V6ONLY,
    SHUT_RD,
    SHUT_RDWR,
    SHUT_WR,
    SO_ERROR,
    SO_KEEPALIVE,
    SO_LINGER,
    SO_RCVBUF,
    SO_REUSEADDR,
    SO_REUSEPORT,
    SO_SNDBUF,
    SO_TYPE,
    SOCK_DGRAM,
    SOCK_STREAM,
    SOL_SOCKET,
    SOMAXCONN,
    TCP_KEEPCNT,
    TCP_KEEPIDLE,
    TCP_KEEPINTVL,
    TCP_NODELAY,
    error,
    gaierror,
    getaddrinfo,
    getdefaulttimeout,
    gethostname,
    herror,
    htons,
    inet_aton,
    inet_ntoa,
    inet_ntop,
    inet_pton,
    ntohs,
    setdefaulttimeout,
    timeout,
)
from typing import Any, TypeVar

from ustack.api import LINGER, StreamOptions, TcpTransport
from ustack.daemon.running import RunningStack
from ustack.datagram import UdpTransport, create_datagram_endpoint
from ustack.net.udp import UdpEndpoint
from ustack.wire.address import is_ipv6, parse_address

T = TypeVar("T")
Address = tuple[str, int] | tuple[str, int, int, int]

_GLOBAL_DEFAULT_TIMEOUT: Any = _socket._GLOBAL_DEFAULT_TIMEOUT  # type: ignore[attr-defined]
RECEIVE_BUFFER = 256 * 1024  # bytes held for recv() before the window closes (pause_reading)
EPHEMERAL = (49152, 65535)  # where a listen() on port 0 picks (RFC 6335 6)


def _oserror(code: int, text: str | None = None) -> OSError:
    return OSError(code, text or os.strerror(code))


_ERRNO_OF: tuple[tuple[type[OSError], int], ...] = (
    (ConnectionRefusedError, errno.ECONNREFUSED),
    (ConnectionResetError, errno.ECONNRESET),
    (BrokenPipeError, errno.EPIPE),
    (TimeoutError, errno.ETIMEDOUT),
)


def _with_errno(exc: OSError) -> OSError:
    """The stack's errors with their errno, as a kernel socket's
    (ConnectionRefusedError("ECONNREFUSED") has none: it gets 111)."""
    if exc.errno is not None:
        return exc
    for kind, code in _ERRNO_OF:
        if isinstance(exc, kind):
            return OSError(code, os.strerror(code))  # (OSError picks the subclass)
    return exc


# ---- the stack on its thread -------------------------------------------------------------


class SocketStack:
    """A running stack and the sockets made on it: `socket()`,
    `create_connection()`, `create_server()` as the socket module's."""

    def __init__(self, loop: asyncio.AbstractEventLoop, running: RunningStack) -> None:
        self.loop = loop
        self.running = running

    @property
    def runner(self) -> Any:
        runner = self.running.runner
        if runner is None:
            raise _oserror(errno.ENETDOWN, "the stack has stopped")
        return runner

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the stack's loop and wait for its result (no busy wait)."""
        if _on_loop_thread(self.loop):
            coro.close()
            raise RuntimeError("a blocking ustack.socket call from the stack's own loop")
        if self.loop.is_closed():
            coro.close()
            raise _oserror(errno.ENETDOWN, "the stack has stopped")
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.loop).result()
        except concurrent.futures.CancelledError:
            raise _oserror(errno.ENETDOWN, "the stack has stopped") from None

    def socket(
        self, family: int = AF_INET, type: int = SOCK_STREAM, proto: int = 0
    ) -> UstackSocket:
        return UstackSocket(family, type, proto, stack=self)

    def create_connection(
        self,
        address: tuple[str, int],
        timeout: float | None = _GLOBAL_DEFAULT_TIMEOUT,
        source_address: Any = None,
        *,
        all_errors: bool = False,
    ) -> UstackSocket:
        """As socket.create_connection: each address of `host` in turn."""
        host, port = address[0], int(address[1])
        errors: list[OSError] = []
        for family, _, _, _, sockaddr in _resolve(host, port, SOCK_STREAM):
            sock = self.socket(family, SOCK_STREAM)
            try:
                if timeout is not _GLOBAL_DEFAULT_TIMEOUT:
                    sock.settimeout(timeout)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                errors.append(exc)
        if not errors:
            raise OSError("getaddrinfo returns an empty list")
        if all_errors:
            raise ExceptionGroup("create_connection failed", errors)
        raise errors[-1]

    def create_server(
        self,
        address: tuple[str, int],
        *,
        family: int = AF_INET,
        backlog: int | None = None,
        reuse_port: bool = False,
        dualstack_ipv6: bool = False,
    ) -> UstackSocket:
        """As socket.create_server."""
        if dualstack_ipv6 and family != AF_INET6:
            raise ValueError("dualstack_ipv6 requires AF_INET6 family")
        sock = self.socket(family, SOCK_STREAM)
        try:
            sock.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)
            if family == AF_INET6:
                sock.setsockopt(IPPROTO_IPV6, IPV6_V6ONLY, int(not dualstack_ipv6))
            sock.bind(address)
            if backlog is None:
                sock.listen()
            else:
                sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return sock


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _resolve(host: str, port: int, type: int) -> list[Any]:
    """getaddrinfo's answers, a literal without asking the resolver."""
    try:
        address = parse_address(host)
    except ValueError:
        return list(getaddrinfo(host, port, AF_UNSPEC, type))
    if is_ipv6(address):
        return [(AF_INET6, type, 0, "", (host, port, 0, 0))]
    return [(AF_INET, type, 0, "", (host, port))]


class StackThread:
    """A thread running an asyncio loop that holds a stack (or two) open,
    from an async context manager, until stop()."""

    def __init__(self, opener: Callable[[], contextlib.AbstractAsyncContextManager[Any]]) -> None:
        self._opener = opener
        self.loop = asyncio.new_event_loop()
        self._ready: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="ustack-socket", daemon=True)
        self._thread.start()
        self.value = self._ready.result()  # (raises what opening raised)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._hold())
        finally:
            # Calls still waiting (a thread blocked in recv) end: ENETDOWN.
            left = asyncio.all_tasks(self.loop)
            for task in left:
                task.cancel()
            if left:
                self.loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            self.loop.close()

    async def _hold(self) -> None:
        self._stopping = asyncio.Event()
        try:
            async with self._opener() as value:
                self._ready.set_result(value)
                await self._stopping.wait()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            else:
                raise

    def stop(self) -> None:
        """Everything reset and closed (the TUN goes), the thread ended."""
        if not self._thread.is_alive():
            return
        stopping = self._stopping
        if stopping is not None:
            with contextlib.suppress(RuntimeError):  # (the loop already closed)
                self.loop.call_soon_threadsafe(stopping.set)
        if threading.current_thread() is not self._thread:
            self._thread.join()


_default: tuple[StackThread, SocketStack] | None = None
_default_lock = threading.Lock()


def start(**options: Any) -> SocketStack:
    """Start the module's stack: ustack.open_stack(**options) on a background
    thread (already started: RuntimeError). Stopped by stop() or at exit."""
    global _default
    from ustack.app import open_stack

    with _default_lock:
        if _default is not None:
            raise RuntimeError("ustack.socket's stack is running already (stop() it first)")
        thread = StackThread(lambda: open_stack(**options))
        stack = SocketStack(thread.loop, thread.value)
        _default = (thread, stack)
        return stack


def stop() -> None:
    """Stop the module's stack: connections reset, the TUN closed."""
    global _default
    with _default_lock:
        current, _default = _default, None
    if current is not None:
        current[0].stop()


atexit.register(stop)


def default_stack() -> SocketStack:
    """The module's stack, started with open_stack's defaults if it is not running."""
    with _default_lock:
        current = _default
    if current is not None:
        return current[1]
    try:
        return start()
    except RuntimeError:  # another thread started it meanwhile
        assert _default is not None
        return _default[1]


class SocketPair:
    """Two stacks talking in memory on one background thread: `a`
    (198.18.0.1, 2001:2::1) and `b` (198.18.0.2, 2001:2::2)."""

    def __init__(self, thread: StackThread) -> None:
        self._thread = thread
        pair = thread.value
        self.a = SocketStack(thread.loop, pair.a)
        self.b = SocketStack(thread.loop, pair.b)

    def __iter__(self) -> Any:
        return iter((self.a, self.b))

    def close(self) -> None:
        self._thread.stop()

    def __enter__(self) -> SocketPair:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def memory_pair(**options: Any) -> SocketPair:
    """ustack.open_memory_pair(**options) (real clock) on a background thread."""
    from ustack.app import open_memory_pair

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[Any]:
        async with open_memory_pair(clock="real", **options) as pair:
            yield pair

    return SocketPair(StackThread(opened))


# ---- the socket module's functions -------------------------------------------------------


def socket(family: int = AF_INET, type: int = SOCK_STREAM, proto: int = 0) -> UstackSocket:
    """socket.socket on the module's stack."""
    return default_stack().socket(family, type, proto)


def create_connection(
    address: tuple[str, int],
    timeout: float | None = _GLOBAL_DEFAULT_TIMEOUT,
    source_address: Any = None,
    *,
    all_errors: bool = False,
) -> UstackSocket:
    """socket.create_connection on the module's stack."""
    return default_stack().create_connection(
        address, timeout, source_address, all_errors=all_errors
    )


def create_server(
    address: tuple[str, int],
    *,
    family: int = AF_INET,
    backlog: int | None = None,
    reuse_port: bool = False,
    dualstack_ipv6: bool = False,
) -> UstackSocket:
    """socket.create_server on the module's stack."""
    return default_stack().create_server(
        address, family=family, backlog=backlog, reuse_port=reuse_port,
        dualstack_ipv6=dualstack_ipv6,
    )  # fmt: skip


_SAVED: dict[str, Any] = {}


def install(stack: SocketStack | None = None) -> None:
    """The one line: socket.create_connection and socket.create_server make
    ustack sockets from now on (on `stack`, or the module's). uninstall() undoes it."""
    chosen = stack

    def connect(*args: Any, **kwargs: Any) -> UstackSocket:
        return (chosen or default_stack()).create_connection(*args, **kwargs)

    def serve(*args: Any, **kwargs: Any) -> UstackSocket:
        return (chosen or default_stack()).create_server(*args, **kwargs)

    if not _SAVED:
        _SAVED.update(
            create_connection=_socket.create_connection, create_server=_socket.create_server
        )
    _socket.create_connection = connect  # type: ignore[assignment]
    _socket.create_server = serve  # type: ignore[assignment]


def uninstall() -> None:
    """The socket module's own create_connection and create_server back."""
    for name, value in _SAVED.items():
        setattr(_socket, name, value)
    _SAVED.clear()


# ---- what lives on the loop --------------------------------------------------------------


class _Waitable:
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
            raise _oserror(errno.EBADF)


class _StreamState(asyncio.Protocol, _Waitable):
    """One connection's receive buffer and state, in the loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_made: Callable[[_StreamState], None] | None = None
    ) -> None:
        _Waitable.__init__(self, loop)
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
            self.error = _with_errno(exc)
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


class _ListenState(_Waitable):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.accepted: deque[_StreamState] = deque()
        self.listener: Any = None

    def on_connected(self, state: _StreamState) -> None:
        self.accepted.append(state)
        self.notify()


class _DatagramState(asyncio.DatagramProtocol, _Waitable):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        _Waitable.__init__(self, loop)
        self.queue: deque[tuple[bytes, Address] | OSError] = deque()

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.queue.append((data, addr))
        self.notify()

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, OSError):
            self.queue.append(exc)
            self.notify()


# ---- the socket --------------------------------------------------------------------------


class UstackSocket:
    """socket.socket's interface on a ustack stack (SOCK_STREAM: TCP,
    SOCK_DGRAM: UDP; AF_INET or AF_INET6)."""

    def __init__(
        self,
        family: int = AF_INET,
        type: int = SOCK_STREAM,
        proto: int = 0,
        *,
        stack: SocketStack | None = None,
    ) -> None:
        if family not in (AF_INET, AF_INET6):
            raise _oserror(errno.EAFNOSUPPORT)
        kind = type & ~(_socket.SOCK_NONBLOCK | _socket.SOCK_CLOEXEC)
        if kind not in (SOCK_STREAM, SOCK_DGRAM):
            raise _oserror(errno.ESOCKTNOSUPPORT)
        self._stack = stack or default_stack()
        self.family = family
        self.type = kind
        self.proto = proto or (IPPROTO_TCP if kind == SOCK_STREAM else IPPROTO_UDP)
        self._timeout: float | None = 0.0 if type & _socket.SOCK_NONBLOCK else getdefaulttimeout()
        self._closed = False  # close() was called (makefile() objects may keep it open)
        self._gone = False  # really closed: every call raises EBADF
        self._io_refs = 0
        self._options: dict[tuple[int, int], Any] = {}
        self._bound: tuple[str, int] | None = None
        self._stream: _StreamState | None = None
        self._connecting: TcpTransport | None = None  # a non-blocking connect in progress
        self._listen: _ListenState | None = None
        self._udp: _DatagramState | None = None
        self._udp_transport: UdpTransport | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("listening" if self._listen else "")
        return f"<ustack.socket.UstackSocket family={self.family} type={self.type} {state}>"

    # ---- life -------------------------------------------------------------------------

    def __enter__(self) -> UstackSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def fileno(self) -> int:
        """-1: no kernel file descriptor (select and selectors cannot wait on it)."""
        return -1

    def detach(self) -> int:
        raise _oserror(errno.EOPNOTSUPP, "a ustack socket has no file descriptor")

    def close(self) -> None:
        """As socket.close: the connection closes once no makefile() object
        refers to it. From another thread, a blocked accept/recv raises EBADF."""
        self._closed = True
        if self._io_refs <= 0:
            self._real_close()

    def _decref_socketios(self) -> None:
        self._io_refs -= 1
        if self._closed and self._io_refs <= 0:
            self._real_close()

    def _real_close(self) -> None:
        if self._gone:
            return
        self._gone = True
        loop = self._stack.loop
        if loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._close_in_loop)

    def _close_in_loop(self) -> None:
        for state in (self._stream, self._listen, self._udp):
            if state is not None:
                state.closed_locally = True
                state.notify()
        if self._stream is not None and self._stream.transport is not None:
            linger = self._options.get((SOL_SOCKET, SO_LINGER))
            transport = self._stream.transport
            if linger is not None and linger == (1, 0):
                transport.abort()
            else:
                transport.close()
        elif self._connecting is not None:
            self._connecting.abort()  # no SYNs left behind
        if self._listen is not None and self._listen.listener is not None:
            runner = self._stack.runner
            runner.stack.tcp.close_listener(self._listen.listener, runner.now())
            runner.done()
            for state in self._listen.accepted:  # never accepted: reset (as Linux)
                if state.transport is not None:
                    state.transport.abort()
            self._listen.accepted.clear()
        if self._udp_transport is not None:
            self._udp_transport.close()

    def _check_open(self) -> None:
        if self._gone:
            raise _oserror(errno.EBADF)

    # ---- timeouts -----------------------------------------------------------------------

    def settimeout(self, value: float | None) -> None:
        if value is not None:
            value = float(value)
            if value < 0:
                raise ValueError("Timeout value out of range")
        self._timeout = value

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        return self._timeout != 0.0

    # ---- addresses ----------------------------------------------------------------------

    def _parse(self, address: Any) -> tuple[int, int]:
        if not isinstance(address, tuple) or len(address) not in (
            (2,) if self.family == AF_INET else (2, 3, 4)
        ):
            family = "AF_INET" if self.family == AF_INET else "AF_INET6"
            raise TypeError(f"{family} address must be a tuple (host, port)")
        host, port = address[0], int(address[1])
        try:
            remote = parse_address(host)
        except ValueError:
            resolved = getaddrinfo(host, port, self.family, self.type)
            remote = parse_address(str(resolved[0][4][0]))
        if is_ipv6(remote) != (self.family == AF_INET6):
            raise _oserror(errno.EAFNOSUPPORT)
        return remote, port

    def bind(self, address: Any) -> None:
        self._check_open()
        if self._bound is not None or self._stream is not None:
            raise _oserror(errno.EINVAL)
        host, port = str(address[0]), int(address[1])
        if host not in ("", "0.0.0.0", "::"):
            self._parse(address)  # (the family's check)
        if self.type == SOCK_DGRAM:
            self._stack.call(self._open_udp((host, port), None))
        self._bound = (host, port)

    def getsockname(self) -> Address:
        self._check_open()
        if self._stream is not None and self._stream.transport is not None:
            return self._stream.transport.get_extra_info("sockname")  # type: ignore[no-any-return]
        if self._udp_transport is not None:
            return self._udp_transport.get_extra_info("sockname")  # type: ignore[no-any-return]
        host, port = self._bound or ("", 0)
        if self._listen is not None:
            port = self._listen.listener.port
        if self.family == AF_INET6:
            return (host or "::", port, 0, 0)
        return (host or "0.0.0.0", port)

    def getpeername(self) -> Address:
        self._check_open()
        if self._stream is not None and self._stream.transport is not None:
            return self._stream.transport.get_extra_info("peername")  # type: ignore[no-any-return]
        if self._udp_transport is not None:
            peer = self._udp_transport.get_extra_info("peername")
            if peer is not None:
                return peer  # type: ignore[no-any-return]
        raise _oserror(errno.ENOTCONN)

    # ---- stream: connecting -----------------------------------------------------------

    def connect(self, address: Any) -> None:
        self._check_open()
        if self.type == SOCK_DGRAM:
            remote, port = self._parse(address)
            self._stack.call(self._connect_udp(address[0], port))
            return
        if self._stream is not None or self._listen is not None:
            raise _oserror(errno.EISCONN)
        remote, port = self._parse(address)
        self._stack.call(self._connect(remote, port, self._timeout))

    def connect_ex(self, address: Any) -> int:
        try:
            self.connect(address)
        except TimeoutError:
            return errno.EAGAIN if self._timeout == 0.0 else errno.ETIMEDOUT
        except OSError as exc:
            return exc.errno or errno.EIO
        return 0

    def _stream_options(self) -> tuple[StreamOptions, int | None]:
        opts = self._options
        linger = opts.get((SOL_SOCKET, SO_LINGER))
        seconds = None if linger is None or not linger[0] else linger[1]
        options = StreamOptions(
            nodelay=bool(opts[IPPROTO_TCP, TCP_NODELAY])
            if (IPPROTO_TCP, TCP_NODELAY) in opts
            else None,
            keepalive=bool(opts[SOL_SOCKET, SO_KEEPALIVE])
            if (SOL_SOCKET, SO_KEEPALIVE) in opts
            else None,
            keepalive_idle=opts.get((IPPROTO_TCP, TCP_KEEPIDLE)),
            keepalive_interval=opts.get((IPPROTO_TCP, TCP_KEEPINTVL)),
            keepalive_count=opts.get((IPPROTO_TCP, TCP_KEEPCNT)),
            linger=seconds,
        )
        return options, seconds

    async def _connect(self, remote: int, port: int, wait_for: float | None) -> None:
        runner = self._stack.runner
        options, linger = self._stream_options()
        config = options.config(runner.stack.tcp.config)
        state = _StreamState(runner.loop)
        conn = runner.stack.connect(remote, port, runner.now(), config)
        transport = TcpTransport(runner, conn, state, linger=linger)
        runner.done(conn)
        self._stream = state
        self._connecting = transport
        assert transport.connected is not None
        if wait_for == 0.0:
            # Non-blocking: the SYN is out; as the kernel's EINPROGRESS.
            raise BlockingIOError(errno.EINPROGRESS, os.strerror(errno.EINPROGRESS))
        try:
            async with asyncio.timeout(wait_for):
                await asyncio.shield(transport.connected)
        except OSError as exc:
            transport.abort()
            self._stream = None
            raise _with_errno(exc) from None
        except TimeoutError:
            transport.abort()
            self._stream = None
            raise TimeoutError("timed out") from None
        except BaseException:
            transport.abort()
            self._stream = None
            raise

    # ---- stream: listening ------------------------------------------------------------

    def listen(self, backlog: int = SOMAXCONN) -> None:
        self._check_open()
        if self.type != SOCK_STREAM:
            raise _oserror(errno.EOPNOTSUPP)
        if self._stream is not None:
            raise _oserror(errno.EINVAL)
        if self._listen is not None:
            return
        self._stack.call(self._start_listening(max(backlog, 1)))

    def _listen_family(self, host: str) -> int | None:
        if self.family == AF_INET:
            return 4
        if host in ("", "::"):
            return 6 if self._options.get((IPPROTO_IPV6, IPV6_V6ONLY)) else None
        return 6

    async def _start_listening(self, backlog: int) -> None:
        runner = self._stack.runner
        tcp = runner.stack.tcp
        host, port = self._bound or ("", 0)
        if port == 0:
            free = [p for p in range(*EPHEMERAL) if p not in tcp.listeners]
            port = random.choice(free)
        options, linger = self._stream_options()
        config = options.config(tcp.config)
        state = _ListenState(runner.loop)

        def on_accept(conn: Any) -> None:
            stream = _StreamState(runner.loop, state.on_connected)
            TcpTransport(runner, conn, stream, active=False, linger=linger)

        state.listener = tcp.listen(
            port, on_accept, backlog=backlog, now=runner.now(),
            family=self._listen_family(host), config=config,
        )  # fmt: skip
        self._listen = state

    def accept(self) -> tuple[UstackSocket, Address]:
        self._check_open()
        if self._listen is None:
            raise _oserror(errno.EINVAL)
        state = self._stack.call(self._accept(self._listen, self._timeout))
        assert state.transport is not None
        peer = state.transport.get_extra_info("peername")
        family = AF_INET6 if len(peer) == 4 else AF_INET
        sock = UstackSocket(family, SOCK_STREAM, stack=self._stack)
        sock._stream = state
        sock._options = {
            key: value for key, value in self._options.items() if key[0] != IPPROTO_IPV6
        }
        return sock, peer

    async def _accept(self, listen: _ListenState, wait_for: float | None) -> _StreamState:
        await listen.wait(lambda: bool(listen.accepted), wait_for)
        return listen.accepted.popleft()

    # ---- stream: data -----------------------------------------------------------------

    def _connected(self) -> _StreamState:
        self._check_open()
        if self._stream is None or self._stream.transport is None:
            raise _oserror(errno.ENOTCONN)
        return self._stream

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        if self.type == SOCK_DGRAM:
            return self.recvfrom(bufsize, flags)[0]
        state = self._connected()
        return self._stack.call(self._recv(state, bufsize, self._timeout))

    async def _recv(self, state: _StreamState, size: int, wait_for: float | None) -> bytes:
        await state.wait(state.readable, wait_for)
        if state.read_shut:
            return b""
        return state.take(size)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        data = self.recv(nbytes or len(view), flags)
        view[: len(data)] = data
        return len(data)

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, Any]:
        if self.type == SOCK_STREAM:
            return self.recv(bufsize, flags), None
        self._check_open()
        if self._udp is None:
            self._stack.call(self._open_udp(("", 0), None))
        assert self._udp is not None
        return self._stack.call(self._recvfrom(self._udp, bufsize, self._timeout))

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> tuple[int, Any]:
        view = memoryview(buffer).cast("B")
        data, address = self.recvfrom(nbytes or len(view), flags)
        view[: len(data)] = data
        return len(data), address

    def send(self, data: Any, flags: int = 0) -> int:
        if self.type == SOCK_DGRAM:
            self._check_open()
            if (
                self._udp_transport is None
                or self._udp_transport.get_extra_info("peername") is None
            ):
                raise _oserror(errno.EDESTADDRREQ)
            return self._stack.call(self._sendto(bytes(data), None))
        state = self._connected()
        return self._stack.call(self._send(state, bytes(data), self._timeout))

    async def _send(self, state: _StreamState, data: bytes, wait_for: float | None) -> int:
        transport = state.transport
        assert transport is not None
        if state.error is not None:
            exc, state.error = state.error, None
            raise exc
        if state.reset or state.lost or transport.is_closing():
            raise _oserror(errno.EPIPE)
        # Flow control: wait while more than the high-water mark waits to go.
        await state.wait(lambda: not state.write_paused or state.lost, wait_for)
        if state.lost:
            raise _oserror(errno.EPIPE) if state.error is None else state.error
        transport.write(data)
        return len(data)

    def sendall(self, data: Any, flags: int = 0) -> None:
        view = memoryview(data).cast("B")
        chunk = 64 * 1024
        for start in range(0, len(view), chunk):
            self.send(view[start : start + chunk], flags)

    def sendto(self, data: Any, flags_or_address: Any, address: Any = None) -> int:
        if address is None:
            address = flags_or_address
        self._check_open()
        if self.type == SOCK_STREAM:
            return self.send(data)
        remote = self._parse(address)
        if self._udp is None:
            host, port = self._bound or ("", 0)
            self._stack.call(self._open_udp((host, port), None))
        return self._stack.call(self._sendto(bytes(data), remote))

    async def _sendto(self, data: bytes, remote: tuple[int, int] | None) -> int:
        transport = self._udp_transport
        assert transport is not None
        endpoint: UdpEndpoint = transport.get_extra_info("ustack_endpoint")
        runner = self._stack.runner
        if remote is None:
            endpoint.sendto(data, runner.now())
        else:
            endpoint.sendto(data, runner.now(), remote[0], remote[1])
        runner.done()
        return len(data)

    def shutdown(self, how: int) -> None:
        self._check_open()
        if self.type == SOCK_DGRAM:
            raise _oserror(errno.ENOTCONN)
        state = self._connected()

        def in_loop() -> None:
            transport = state.transport
            assert transport is not None
            if how in (SHUT_RD, SHUT_RDWR):
                state.read_shut = True
                state.notify()
            if how in (SHUT_WR, SHUT_RDWR) and not transport.is_closing():
                transport.write_eof()

        if how not in (SHUT_RD, SHUT_WR, SHUT_RDWR):
            raise _oserror(errno.EINVAL)
        self._stack.call(_run(in_loop))

    # ---- datagrams ----------------------------------------------------------------------

    async def _open_udp(self, local: tuple[str, int], remote: tuple[str, int] | None) -> None:
        if self._udp is not None:
            raise _oserror(errno.EINVAL)
        runner = self._stack.runner
        host = local[0]
        if host in ("", "::") and self.family == AF_INET:
            host = "0.0.0.0"
        if host == "" and self.family == AF_INET6:
            host = "::"
        family = self.family
        if host == "::" and not self._options.get((IPPROTO_IPV6, IPV6_V6ONLY)):
            family = 0  # dual stack, as Linux's AF_INET6 without IPV6_V6ONLY
            host = ""
        state = _DatagramState(runner.loop)
        transport, _ = await create_datagram_endpoint(
            runner, lambda: state, (host, local[1]), remote, family=family
        )
        assert isinstance(transport, UdpTransport)
        self._udp, self._udp_transport = state, transport

    async def _connect_udp(self, host: str, port: int) -> None:
        if self._udp is None:
            bound_host, bound_port = self._bound or ("", 0)
            await self._open_udp((bound_host, bound_port), None)
        assert self._udp_transport is not None
        endpoint: UdpEndpoint = self._udp_transport.get_extra_info("ustack_endpoint")
        endpoint.connect(parse_address(host), port)

    async def _recvfrom(
        self, state: _DatagramState, size: int, wait_for: float | None
    ) -> tuple[bytes, Address]:
        await state.wait(lambda: bool(state.queue), wait_for)
        item = state.queue.popleft()
        if isinstance(item, OSError):
            raise item
        data, address = item
        return data[:size], address  # the rest of a longer datagram is lost, as the kernel's

    # ---- options --------------------------------------------------------------------------

    def setsockopt(self, level: int, optname: int, value: Any, optlen: int | None = None) -> None:
        self._check_open()
        if (level, optname) == (SOL_SOCKET, SO_LINGER):
            if isinstance(value, int):
                onoff, seconds = int(bool(value)), 0
            else:
                onoff, seconds = LINGER.unpack(bytes(value)[: LINGER.size])
            stored: Any = (int(bool(onoff)), seconds)
        elif isinstance(value, bytes | bytearray):
            stored = int.from_bytes(bytes(value)[:4], "little")
        else:
            stored = int(value)
        known = {
            (SOL_SOCKET, SO_REUSEADDR), (SOL_SOCKET, SO_REUSEPORT), (SOL_SOCKET, SO_KEEPALIVE),
            (SOL_SOCKET, SO_LINGER), (SOL_SOCKET, SO_RCVBUF), (SOL_SOCKET, SO_SNDBUF),
            (IPPROTO_TCP, TCP_NODELAY), (IPPROTO_TCP, TCP_KEEPIDLE),
            (IPPROTO_TCP, TCP_KEEPINTVL), (IPPROTO_TCP, TCP_KEEPCNT),
            (IPPROTO_IPV6, IPV6_V6ONLY), (_socket.SOL_SOCKET, _socket.SO_BROADCAST),
        }  # fmt: skip
        if (level, optname) not in known:
            raise _oserror(errno.ENOPROTOOPT)
        if level == IPPROTO_TCP and self.type != SOCK_STREAM:
            raise _oserror(errno.EOPNOTSUPP)
        if (level, optname) == (IPPROTO_IPV6, IPV6_V6ONLY) and self.family != AF_INET6:
            raise _oserror(errno.ENOPROTOOPT)
        self._options[level, optname] = stored
        stream = self._stream
        live = {
            (SOL_SOCKET, SO_KEEPALIVE), (IPPROTO_TCP, TCP_NODELAY), (IPPROTO_TCP, TCP_KEEPIDLE),
            (IPPROTO_TCP, TCP_KEEPINTVL), (IPPROTO_TCP, TCP_KEEPCNT), (SOL_SOCKET, SO_LINGER),
        }  # fmt: skip
        if stream is not None and stream.transport is not None and (level, optname) in live:
            transport = stream.transport
            wire = LINGER.pack(*stored) if optname == SO_LINGER and level == SOL_SOCKET else stored
            self._stack.call(
                _run(lambda: transport.get_extra_info("socket").setsockopt(level, optname, wire))
            )

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> Any:
        self._check_open()
        value: Any
        if (level, optname) == (SOL_SOCKET, SO_TYPE):
            value = self.type
        elif (level, optname) == (SOL_SOCKET, SO_ERROR):
            stream = self._stream
            value = 0
            if stream is not None and stream.error is not None:
                value, stream.error = stream.error.errno or errno.EIO, None
        elif (level, optname) in ((SOL_SOCKET, SO_RCVBUF), (SOL_SOCKET, SO_SNDBUF)):
            if (level, optname) in self._options:
                value = 2 * self._options[level, optname]  # as Linux: doubled for its bookkeeping
            else:
                config = self._stack.running.stack.tcp.config
                value = config.receive_buffer if optname == SO_RCVBUF else config.send_buffer
        elif (level, optname) == (SOL_SOCKET, SO_LINGER):
            onoff, seconds = self._options.get((level, optname), (0, 0))
            packed = LINGER.pack(onoff, seconds)
            return packed if buflen else onoff
        elif (level, optname) == (IPPROTO_IPV6, IPV6_V6ONLY):
            if self.family != AF_INET6:
                raise _oserror(errno.ENOPROTOOPT)
            value = self._options.get((level, optname), 0)
        elif (level, optname) in (
            (SOL_SOCKET, SO_REUSEADDR), (SOL_SOCKET, SO_REUSEPORT), (SOL_SOCKET, SO_KEEPALIVE),
            (IPPROTO_TCP, TCP_NODELAY), (_socket.SOL_SOCKET, _socket.SO_BROADCAST),
        ):  # fmt: skip
            value = int(bool(self._options.get((level, optname), 0)))
        elif (level, optname) in ((IPPROTO_TCP, TCP_KEEPIDLE), (IPPROTO_TCP, TCP_KEEPINTVL),
                                  (IPPROTO_TCP, TCP_KEEPCNT)):  # fmt: skip
            stream = self._stream
            if stream is not None and stream.transport is not None:
                info = stream.transport.get_extra_info("socket")
                value = self._stack.call(_run(lambda: info.getsockopt(level, optname)))
            else:
                value = self._options.get((level, optname), 0)
        else:
            raise _oserror(errno.ENOPROTOOPT)
        return int(value).to_bytes(4, "little") if buflen else value

    # ---- files ------------------------------------------------------------------------------

    def makefile(
        self,
        mode: str = "r",
        buffering: int | None = None,
        *,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> Any:
        """As socket.makefile: io's layers over a SocketIO on this socket."""
        if not set(mode) <= {"r", "w", "b"}:
            raise ValueError(f"invalid mode {mode!r} (only r, w, b allowed)")
        writing = "w" in mode
        reading = "r" in mode or not writing
        rawmode = ("r" if reading else "") + ("w" if writing else "")
        raw = _socket.SocketIO(self, rawmode)  # type: ignore[arg-type]
        self._io_refs += 1
        if buffering is None:
            buffering = -1
        if buffering < 0:
            buffering = io.DEFAULT_BUFFER_SIZE
        if buffering == 0:
            if "b" not in mode:
                raise ValueError("unbuffered streams must be binary")
            return raw
        buffer: io.BufferedIOBase
        if reading and writing:
            buffer = io.BufferedRWPair(raw, raw, buffering)
        elif reading:
            buffer = io.BufferedReader(raw, buffering)
        else:
            buffer = io.BufferedWriter(raw, buffering)
        if "b" in mode:
            return buffer
        text = io.TextIOWrapper(buffer, encoding, errors, newline)  # type: ignore[type-var]
        text.mode = mode  # type: ignore[misc]
        return text


async def _run(function: Callable[[], T]) -> T:
    """A plain call made on the loop's thread (the stack is not thread-safe)."""
    return function()


SocketType = UstackSocket

__all__ = [
    "AF_INET",
    "AF_INET6",
    "AF_UNSPEC",
    "AI_PASSIVE",
    "IPPROTO_IP",
    "IPPROTO_IPV6",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "IPV6_V6ONLY",
    "SHUT_RD",
    "SHUT_RDWR",
    "SHUT_WR",
    "SOCK_DGRAM",
    "SOCK_STREAM",
    "SOL_SOCKET",
    "SOMAXCONN",
    "SO_ERROR",
    "SO_KEEPALIVE",
    "SO_LINGER",
    "SO_RCVBUF",
    "SO_REUSEADDR",
    "SO_REUSEPORT",
    "SO_SNDBUF",
    "SO_TYPE",
    "TCP_KEEPCNT",
    "TCP_KEEPIDLE",
    "TCP_KEEPINTVL",
    "TCP_NODELAY",
    "SocketPair",
    "SocketStack",
    "SocketType",
    "UstackSocket",
    "create_connection",
    "create_server",
    "default_stack",
    "error",
    "gaierror",
    "getaddrinfo",
    "getdefaulttimeout",
    "gethostname",
    "herror",
    "htons",
    "inet_aton",
    "inet_ntoa",
    "inet_ntop",
    "inet_pton",
    "install",
    "memory_pair",
    "ntohs",
    "setdefaulttimeout",
    "socket",
    "start",
    "stop",
    "timeout",
    "uninstall",
]
