"""`UstackSocket`: socket.socket's interface on a ustack stack, each call
crossing to the stack's loop and waiting there (see ustack/socket.py)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import socket as _socket
from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Any

from ustack.api import TcpTransport
from ustack.datagram import UdpTransport
from ustack.datagram import create_datagram_endpoint
from ustack.net.udp import UdpEndpoint

# ---- the socket --------------------------------------------------------------------------
from ustack.sockets.loop_side import Address
from ustack.sockets.loop_side import DatagramState
from ustack.sockets.loop_side import ListenState
from ustack.sockets.loop_side import StreamState
from ustack.sockets.loop_side import on_loop
from ustack.sockets.loop_side import oserror
from ustack.sockets.loop_side import with_errno
from ustack.sockets.options import SocketOptions
from ustack.stream_options import LINGER_OPTION
from ustack.stream_options import V6ONLY
from ustack.wire.address import is_ipv6
from ustack.wire.address import parse_address

if TYPE_CHECKING:
    from ustack.socket import SocketStack

EPHEMERAL = (49152, 65535)  # where a listen() on port 0 picks (RFC 6335 6)

# The stack of a socket made without one: ustack.socket sets it to its
# default_stack when imported (it imports this module, not the reverse).
default_stack: Callable[[], SocketStack] | None = None


class UstackSocket(SocketOptions):
    """socket.socket's interface on a ustack stack (SOCK_STREAM: TCP,
    SOCK_DGRAM: UDP; AF_INET or AF_INET6)."""

    def __init__(
        self,
        family: int = _socket.AF_INET,
        type: int = _socket.SOCK_STREAM,
        proto: int = 0,
        *,
        stack: SocketStack | None = None,
    ) -> None:
        if family not in (_socket.AF_INET, _socket.AF_INET6):
            raise oserror(errno.EAFNOSUPPORT)
        kind = type & ~(_socket.SOCK_NONBLOCK | _socket.SOCK_CLOEXEC)
        if kind not in (_socket.SOCK_STREAM, _socket.SOCK_DGRAM):
            raise oserror(errno.ESOCKTNOSUPPORT)
        if stack is None:
            if default_stack is None:
                raise RuntimeError("import ustack.socket to have a default stack")
            stack = default_stack()
        self._stack = stack
        self.family = family
        self.type = kind
        self.proto = proto or (
            _socket.IPPROTO_TCP if kind == _socket.SOCK_STREAM else _socket.IPPROTO_UDP
        )
        self._timeout: float | None = (
            0.0 if type & _socket.SOCK_NONBLOCK else _socket.getdefaulttimeout()
        )
        self._closed = False  # close() was called (makefile() objects may keep it open)
        self._gone = False  # really closed: every call raises EBADF
        self._io_refs = 0
        self._options: dict[tuple[int, int], Any] = {}
        self._bound: tuple[str, int] | None = None
        self._stream: StreamState | None = None
        self._connecting: TcpTransport | None = None  # a non-blocking connect in progress
        self._listen: ListenState | None = None
        self._udp: DatagramState | None = None
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
        raise oserror(errno.EOPNOTSUPP, "a ustack socket has no file descriptor")

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
            linger = self._options.get(LINGER_OPTION)
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
            raise oserror(errno.EBADF)

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
            (2,) if self.family == _socket.AF_INET else (2, 3, 4)
        ):
            family = "AF_INET" if self.family == _socket.AF_INET else "AF_INET6"
            raise TypeError(f"{family} address must be a tuple (host, port)")
        host, port = address[0], int(address[1])
        try:
            remote = parse_address(host)
        except ValueError:
            resolved = _socket.getaddrinfo(host, port, self.family, self.type)
            remote = parse_address(str(resolved[0][4][0]))
        if is_ipv6(remote) != (self.family == _socket.AF_INET6):
            raise oserror(errno.EAFNOSUPPORT)
        return remote, port

    def bind(self, address: Any) -> None:
        self._check_open()
        if self._bound is not None or self._stream is not None:
            raise oserror(errno.EINVAL)
        host, port = str(address[0]), int(address[1])
        if host not in ("", "0.0.0.0", "::"):
            self._parse(address)  # (the family's check)
        if self.type == _socket.SOCK_DGRAM:
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
        if self.family == _socket.AF_INET6:
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
        raise oserror(errno.ENOTCONN)

    # ---- stream: connecting -----------------------------------------------------------

    def connect(self, address: Any) -> None:
        self._check_open()
        if self.type == _socket.SOCK_DGRAM:
            remote, port = self._parse(address)
            self._stack.call(self._connect_udp(address[0], port))
            return
        if self._stream is not None or self._listen is not None:
            raise oserror(errno.EISCONN)
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

    async def _connect(self, remote: int, port: int, wait_for: float | None) -> None:
        runner = self._stack.runner
        options, linger = self._stream_options()
        config = options.config(runner.stack.tcp.config)
        state = StreamState(runner.loop)
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
            raise with_errno(exc) from None
        except TimeoutError:
            transport.abort()
            self._stream = None
            raise TimeoutError("timed out") from None
        except BaseException:
            transport.abort()
            self._stream = None
            raise

    # ---- stream: listening ------------------------------------------------------------

    def listen(self, backlog: int = _socket.SOMAXCONN) -> None:
        self._check_open()
        if self.type != _socket.SOCK_STREAM:
            raise oserror(errno.EOPNOTSUPP)
        if self._stream is not None:
            raise oserror(errno.EINVAL)
        if self._listen is not None:
            return
        self._stack.call(self._start_listening(max(backlog, 1)))

    def _listen_family(self, host: str) -> int | None:
        if self.family == _socket.AF_INET:
            return 4
        if host in ("", "::"):
            return 6 if self._options.get(V6ONLY) else None
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
        state = ListenState(runner.loop)

        def on_accept(conn: Any) -> None:
            stream = StreamState(runner.loop, state.on_connected)
            TcpTransport(runner, conn, stream, active=False, linger=linger)

        state.listener = tcp.listen(
            port, on_accept, backlog=backlog, now=runner.now(),
            family=self._listen_family(host), config=config,
        )  # fmt: skip
        self._listen = state

    def accept(self) -> tuple[UstackSocket, Address]:
        self._check_open()
        if self._listen is None:
            raise oserror(errno.EINVAL)
        state = self._stack.call(self._accept(self._listen, self._timeout))
        assert state.transport is not None
        peer = state.transport.get_extra_info("peername")
        family = _socket.AF_INET6 if len(peer) == 4 else _socket.AF_INET
        sock = UstackSocket(family, _socket.SOCK_STREAM, stack=self._stack)
        sock._stream = state
        sock._options = {
            key: value for key, value in self._options.items() if key[0] != _socket.IPPROTO_IPV6
        }
        return sock, peer

    async def _accept(self, listen: ListenState, wait_for: float | None) -> StreamState:
        await listen.wait(lambda: bool(listen.accepted), wait_for)
        return listen.accepted.popleft()

    # ---- stream: data -----------------------------------------------------------------

    def _connected(self) -> StreamState:
        self._check_open()
        if self._stream is None or self._stream.transport is None:
            raise oserror(errno.ENOTCONN)
        return self._stream

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        if self.type == _socket.SOCK_DGRAM:
            return self.recvfrom(bufsize, flags)[0]
        state = self._connected()
        return self._stack.call(self._recv(state, bufsize, self._timeout))

    async def _recv(self, state: StreamState, size: int, wait_for: float | None) -> bytes:
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
        if self.type == _socket.SOCK_STREAM:
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
        if self.type == _socket.SOCK_DGRAM:
            self._check_open()
            if (
                self._udp_transport is None
                or self._udp_transport.get_extra_info("peername") is None
            ):
                raise oserror(errno.EDESTADDRREQ)
            return self._stack.call(self._sendto(bytes(data), None))
        state = self._connected()
        return self._stack.call(self._send(state, bytes(data), self._timeout))

    async def _send(self, state: StreamState, data: bytes, wait_for: float | None) -> int:
        transport = state.transport
        assert transport is not None
        if state.error is not None:
            exc, state.error = state.error, None
            raise exc
        if state.reset or state.lost or transport.is_closing():
            raise oserror(errno.EPIPE)
        # Flow control: wait while more than the high-water mark waits to go.
        await state.wait(lambda: not state.write_paused or state.lost, wait_for)
        if state.lost:
            raise oserror(errno.EPIPE) if state.error is None else state.error
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
        if self.type == _socket.SOCK_STREAM:
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
        if self.type == _socket.SOCK_DGRAM:
            raise oserror(errno.ENOTCONN)
        state = self._connected()

        def in_loop() -> None:
            transport = state.transport
            assert transport is not None
            if how in (_socket.SHUT_RD, _socket.SHUT_RDWR):
                state.read_shut = True
                state.notify()
            if how in (_socket.SHUT_WR, _socket.SHUT_RDWR) and not transport.is_closing():
                transport.write_eof()

        if how not in (_socket.SHUT_RD, _socket.SHUT_WR, _socket.SHUT_RDWR):
            raise oserror(errno.EINVAL)
        self._stack.call(on_loop(in_loop))

    # ---- datagrams ----------------------------------------------------------------------

    async def _open_udp(self, local: tuple[str, int], remote: tuple[str, int] | None) -> None:
        if self._udp is not None:
            raise oserror(errno.EINVAL)
        runner = self._stack.runner
        host = local[0]
        if host in ("", "::") and self.family == _socket.AF_INET:
            host = "0.0.0.0"
        if host == "" and self.family == _socket.AF_INET6:
            host = "::"
        family = self.family
        if host == "::" and not self._options.get(V6ONLY):
            family = 0  # dual stack, as Linux's AF_INET6 without IPV6_V6ONLY
            host = ""
        state = DatagramState(runner.loop)
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
        self, state: DatagramState, size: int, wait_for: float | None
    ) -> tuple[bytes, Address]:
        await state.wait(lambda: bool(state.queue), wait_for)
        item = state.queue.popleft()
        if isinstance(item, OSError):
            raise item
        data, address = item
        return data[:size], address  # the rest of a longer datagram is lost, as the kernel's
