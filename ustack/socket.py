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
import inspect
import socket as _socket
import threading
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Coroutine
from socket import AF_INET
from socket import AF_INET6
from socket import AF_UNSPEC
from socket import AI_PASSIVE
from socket import IPPROTO_IP
from socket import IPPROTO_IPV6
from socket import IPPROTO_TCP
from socket import IPPROTO_UDP
from socket import IPV6_V6ONLY
from socket import SHUT_RD
from socket import SHUT_RDWR
from socket import SHUT_WR
from socket import SO_ERROR
from socket import SO_KEEPALIVE
from socket import SO_LINGER
from socket import SO_RCVBUF
from socket import SO_REUSEADDR
from socket import SO_REUSEPORT
from socket import SO_SNDBUF
from socket import SO_TYPE
from socket import SOCK_DGRAM
from socket import SOCK_STREAM
from socket import SOL_SOCKET
from socket import SOMAXCONN
from socket import TCP_KEEPCNT
from socket import TCP_KEEPIDLE
from socket import TCP_KEEPINTVL
from socket import TCP_NODELAY
from socket import error
from socket import gaierror
from socket import getaddrinfo
from socket import getdefaulttimeout
from socket import gethostname
from socket import herror
from socket import htons
from socket import inet_aton
from socket import inet_ntoa
from socket import inet_ntop
from socket import inet_pton
from socket import ntohs
from socket import setdefaulttimeout
from socket import timeout
from typing import Any
from typing import Concatenate
from typing import ParamSpec
from typing import TypeVar

from ustack.daemon.running import RunningStack
from ustack.sockets import socket_object
from ustack.sockets.loop_side import oserror
from ustack.sockets.socket_object import UstackSocket
from ustack.wire.address import is_ipv6
from ustack.wire.address import parse_address

T = TypeVar("T")
P = ParamSpec("P")
_GLOBAL_DEFAULT_TIMEOUT: Any = _socket._GLOBAL_DEFAULT_TIMEOUT  # type: ignore[attr-defined]

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
            raise oserror(errno.ENETDOWN, "the stack has stopped")
        return runner

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the stack's loop and wait for its result (no busy wait)."""
        if _on_loop_thread(self.loop):
            coro.close()
            raise RuntimeError("a blocking ustack.socket call from the stack's own loop")
        if self.loop.is_closed():
            coro.close()
            raise oserror(errno.ENETDOWN, "the stack has stopped")
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.loop).result()
        except concurrent.futures.CancelledError:
            raise oserror(errno.ENETDOWN, "the stack has stopped") from None

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


socket_object.default_stack = default_stack  # for a UstackSocket made without a stack


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


def _on_module_stack(method: Callable[Concatenate[SocketStack, P], T]) -> Callable[P, T]:
    """A SocketStack method as the module's function of that name, on the
    module's stack: its signature written once, in SocketStack."""

    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        return method(default_stack(), *args, **kwargs)

    call.__name__ = call.__qualname__ = method.__name__
    call.__doc__ = f"socket.{method.__name__} on the module's stack."
    signature = inspect.signature(method)  # for help() and inspect: without `self`
    call.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=list(signature.parameters.values())[1:]
    )
    return call


socket = _on_module_stack(SocketStack.socket)
create_connection = _on_module_stack(SocketStack.create_connection)
create_server = _on_module_stack(SocketStack.create_server)


_SAVED: dict[str, Any] = {}


def install(stack: SocketStack | None = None) -> None:
    """The one line: socket.create_connection and socket.create_server make
    ustack sockets from now on (on `stack`, or the module's). uninstall() undoes it."""
    if not _SAVED:
        _SAVED.update(
            create_connection=_socket.create_connection, create_server=_socket.create_server
        )
    # The module's own functions start its stack at the first call, not now.
    _socket.create_connection = stack.create_connection if stack is not None else create_connection  # type: ignore[assignment]
    _socket.create_server = stack.create_server if stack is not None else create_server  # type: ignore[assignment]


def uninstall() -> None:
    """The socket module's own create_connection and create_server back."""
    for name, value in _SAVED.items():
        setattr(_socket, name, value)
    _SAVED.clear()


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
