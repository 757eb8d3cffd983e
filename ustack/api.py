"""asyncio streams on the stack: `open_connection` and `start_server`.

A connection of the stack is wrapped in an `asyncio.Transport`, so an
application gets the standard `asyncio.StreamReader` / `StreamWriter` and
flow control (drain, pause_reading) exactly as with the kernel's sockets:

    reader, writer = await open_connection(runner, "198.18.0.1", 8080)
    server = await start_server(runner, handle_client, 7)
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any

from ustack.runner import StackRunner
from ustack.stack import Stack
from ustack.stream_options import StreamOptions
from ustack.stream_options import TcpSocketInfo
from ustack.tcp.connection import TcpConnection
from ustack.tcp.events import AppEvent
from ustack.tcp.events import Closed
from ustack.tcp.events import Connected
from ustack.tcp.events import DataReceived
from ustack.tcp.events import EndOfStream
from ustack.tcp.events import SendSpace
from ustack.tcp.listen import Listener
from ustack.tcp.states import State
from ustack.wire.address import format_address
from ustack.wire.address import format_endpoint
from ustack.wire.address import is_ipv6
from ustack.wire.address import parse_address

log = logging.getLogger("ustack.api")

STREAM_LIMIT = 64 * 1024
WRITE_HIGH_WATER = 256 * 1024  # bytes waiting beyond the send buffer before pause_writing

ClientCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]

_ERRORS: dict[str, type[OSError]] = {
    "ECONNRESET": ConnectionResetError,
    "ECONNREFUSED": ConnectionRefusedError,
    "ETIMEDOUT": TimeoutError,
}


def error_for(errno_name: str | None) -> OSError | None:
    """The exception for a Closed event's errno name. An ICMP soft error a
    timeout reports (EHOSTUNREACH, ENETUNREACH, EMSGSIZE...) or a hard one
    that refused a connect (ENOPROTOOPT...) is an OSError with that errno,
    as a kernel socket raises it."""
    if errno_name is None:
        return None
    known = _ERRORS.get(errno_name)
    if known is not None:
        return known(errno_name)
    code = getattr(errno, errno_name, None)
    if isinstance(code, int):
        return OSError(code, f"{errno_name}: {os.strerror(code)}")
    return ConnectionError(errno_name)


def _socket_address(address: int, port: int) -> tuple[str, int] | tuple[str, int, int, int]:
    """As asyncio's transports give peername and sockname: (host, port) for
    IPv4, (host, port, flowinfo, scope_id) for IPv6 (AF_INET6's 4-tuple)."""
    if is_ipv6(address):
        return (format_address(address), port, 0, 0)
    return (format_address(address), port)


def _listen_family(stack: Stack, host: str | None) -> int | None:
    """Which family a server on `host` hears: both for None, "" or "::" (as
    a Linux AF_INET6 socket bound to :: without IPV6_V6ONLY), IPv4 for
    "0.0.0.0" or the stack's IPv4 address, IPv6 for its IPv6 address.
    OSError EADDRNOTAVAIL for an address the stack does not have."""
    if host is None or host in ("", "::"):
        return None
    address = parse_address(host)
    tcp = stack.tcp
    if host == "0.0.0.0" or address == tcp.address:
        return 4
    if tcp.address6 is not None and address == tcp.address6:
        return 6
    raise OSError(errno.EADDRNOTAVAIL, f"{host} is not an address of this stack")


# ---- per-connection options -----------------------------------------------------------------

_GONE = asyncio.Protocol()  # a lost transport's protocol: it is told nothing more


class TcpTransport(asyncio.Transport):
    """One stack connection as an asyncio transport; made, it takes the
    connection's events."""

    def __init__(
        self,
        runner: StackRunner,
        conn: TcpConnection,
        protocol: asyncio.Protocol,
        active: bool = True,
        linger: int | None = None,
    ) -> None:
        super().__init__()
        self._runner = runner
        self.linger = linger  # SO_LINGER's seconds; 0: close() is abort() (an RST)
        self._socket_info: TcpSocketInfo | None = None
        self._conn = conn
        self._protocol = protocol
        self._pending = bytearray()  # written by the app, not yet in the send buffer
        self._push_scheduled = False
        self._eof_requested = False
        self._closing = False
        self._paused_reading = False
        self._writing_paused = False
        self._eof_delivered = False
        self._conn_closed = False  # the connection reported Closed; data may still wait
        self._close_error: OSError | None = None
        self._lost = False
        self._established = False  # Connected has arrived
        # What open_connection awaits; an accepted connection is established
        # already, and nobody awaits it: no future for it.
        self.connected: asyncio.Future[None] | None = (
            runner.loop.create_future() if active else None
        )
        key = runner.stack.tcp.endpoints(conn)
        assert key is not None
        self._key = key  # the names are made when asked for (rarely)
        runner.stack.tcp.attach(conn, self.on_event)  # the connection's events come here

    # ---- events from the connection -----------------------------------------------

    # The connection's events come from inside the demux's flush, which
    # sends what they cause and whose caller then sets the stack's timer:
    # what handles them passes settle=False, and does not ask for that again.

    def on_event(self, event: AppEvent) -> None:
        kind = type(event)  # (the event classes are final: no isinstance chain)
        if kind is DataReceived or kind is EndOfStream:
            self._deliver(settle=False)
        elif kind is Connected:
            connected = self.connected
            if not self._established and not (connected is not None and connected.done()):
                # (a done future here was cancelled: nobody wants the connection)
                self._established = True
                if connected is not None:
                    connected.set_result(None)
                self._protocol.connection_made(self)
        elif kind is SendSpace:
            self._push(settle=False)
        elif kind is Closed:
            assert isinstance(event, Closed)
            self._on_closed(error_for(event.error))

    def _deliver(self, settle: bool = True) -> None:
        """Move received bytes to the protocol, unless it asked for a pause
        (then they wait in the connection and its window closes)."""
        conn = self._conn
        if self._lost or not self._established:
            return
        delivered = False
        while not self._paused_reading and conn.readable_bytes:
            # defer_ack: an ACK the read makes due (a short request, Linux's
            # tcp_cleanup_rbuf) waits for the push below, behind the
            # application's step: its answer, if any, carries it.
            data = conn.read(conn.readable_bytes, self._runner.now(), True)
            self._protocol.data_received(data)
            delivered = True
        if delivered and not self._push_scheduled:
            # The application answers in its next step, which data_received
            # has just scheduled (a StreamReader wakes its reader with
            # call_soon): the push queued behind it sends the answer in that
            # same loop turn, not one turn later (issue 18: one wake-up per
            # request and response; the answer carries the ACK).
            self._push_scheduled = True
            self._runner.loop.call_soon(self._push)
        if conn.at_eof and not self._eof_delivered and not self._paused_reading:
            self._eof_delivered = True
            keep_open = self._protocol.eof_received()
            if not keep_open:
                self.close()
        if self._conn_closed and not conn.readable_bytes:
            self._lose(self._close_error)  # everything received has been handed over
        if settle:
            self._runner.done(conn)

    def _on_closed(self, exc: OSError | None) -> None:
        if self._lost:
            return
        if not self._established:
            if self.connected is not None and not self.connected.done():
                self.connected.set_exception(exc or ConnectionError("closed before established"))
            self._lost = True
            return
        if exc is not None or self._closing:
            # A reset: what was not read is lost, as with the kernel. Or the
            # application closed: it reads nothing more (asyncio's close()).
            self._lose(exc)
            return
        # An orderly close: bytes a paused reader has not taken yet still count.
        self._conn_closed = True
        self._close_error = exc
        self._deliver(settle=False)  # (only ever called from on_event)

    def _lose(self, exc: OSError | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._runner.loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: OSError | None) -> None:
        # The protocol, its StreamReader and StreamWriter refer back to us:
        # letting go of them lets reference counting free the whole connection
        # now, not at the next full collection (rare in the daemon).
        protocol, self._protocol = self._protocol, _GONE
        protocol.connection_lost(exc)

    # ---- asyncio.Transport ---------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        remote, remote_port, local_port = self._key
        if name == "peername":
            return _socket_address(remote, remote_port)
        if name == "sockname":
            tcp = self._runner.stack.tcp
            local = tcp.address6 if is_ipv6(remote) and tcp.address6 is not None else tcp.address
            return _socket_address(local, local_port)
        if name == "connection":
            return self._conn
        if name == "socket":
            if self._socket_info is None:
                self._socket_info = TcpSocketInfo(self)
            return self._socket_info
        return default

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_requested or self._closing:
            raise RuntimeError("write after write_eof() or close()")
        if self._lost or not data:
            return
        self._pending += data
        # Writes of one loop turn go out together (a response's head and body
        # in one segment, not two): the push waits for the turn to end.
        if not self._push_scheduled:
            self._push_scheduled = True
            self._runner.loop.call_soon(self._push)
        self._update_write_pause()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def write_eof(self) -> None:
        if self._eof_requested:
            return
        self._eof_requested = True
        self._push()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return len(self._pending)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, WRITE_HIGH_WATER)

    def pause_reading(self) -> None:
        self._paused_reading = True

    def resume_reading(self) -> None:
        if self._paused_reading:
            self._paused_reading = False
            self._runner.loop.call_soon(self._deliver)

    def is_reading(self) -> bool:
        return not self._paused_reading

    def close(self) -> None:
        """Orderly close: the FIN goes once everything written has been queued
        (with SO_LINGER 0: an RST at once, RFC 9293 3.10.5 ABORT)."""
        if self._closing or self._lost:
            return
        if self.linger == 0:
            self.abort()
            self._lose(None)
            return
        self._closing = True
        self._push()

    def abort(self) -> None:
        """Like SO_LINGER 0: RST now."""
        if self._lost:
            return
        self._closing = True
        self._pending.clear()
        self._conn.abort(self._runner.now())
        self._runner.done(self._conn)

    # ---- moving written data into the connection -------------------------------------------

    def _push(self, settle: bool = True) -> None:
        self._push_scheduled = False
        # An ACK a read left for the application's answer (TcpConnection.read's
        # defer_ack) is settled by a push after the application's step, not by
        # one a SendSpace made (settle False, inside the stack's own flush).
        if not (self._pending or self._closing or self._eof_requested or self._writing_paused):
            # Nothing written (an ACK's SendSpace, a read answered by nothing):
            # an ACK the read left for the answer goes alone.
            if settle and self._conn.send_deferred_ack(self._runner.now()):
                self._runner.done(self._conn)
            return
        conn, now = self._conn, self._runner.now()
        if self._lost or conn.state is State.CLOSED:
            return
        if self._pending and conn.state is not State.SYN_SENT:
            try:
                # Through a view: the connection copies what fits straight
                # into its send buffer (a bytearray slice would copy it first).
                with memoryview(self._pending) as pending:
                    taken = conn.send(pending, now)
            except (BrokenPipeError, ConnectionError):
                self._pending.clear()
                taken = 0
            del self._pending[:taken]
        if not self._pending:
            if self._closing:
                conn.close(now)
                # As a kernel socket's: once its FIN is queued, the transport
                # is done (wait_closed returns); the connection lives on,
                # orphaned, until its close completes (RFC 9293 3.10.4).
                self._lose(None)
            elif self._eof_requested:
                conn.shutdown(now)
        if settle:
            conn.send_deferred_ack(now)  # (the answer carried it, unless Nagle holds the answer)
        self._update_write_pause()
        if settle:
            self._runner.done(conn)

    def _update_write_pause(self) -> None:
        size = len(self._pending)
        if not self._writing_paused and size > WRITE_HIGH_WATER:
            self._writing_paused = True
            self._protocol.pause_writing()
        elif self._writing_paused and size == 0:
            self._writing_paused = False
            self._protocol.resume_writing()


async def open_connection(
    runner: StackRunner,
    host: str,
    port: int,
    *,
    limit: int = STREAM_LIMIT,
    **options: Any,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Active OPEN from the stack to `host`, an IPv4 or IPv6 literal
    ("198.18.0.1", "2001:2::1"; ValueError for anything else); raises
    ConnectionRefusedError, TimeoutError, OSError ENETUNREACH (a broadcast,
    multicast, loopback or own address, or a family the stack does not have:
    at once) or ENOBUFS (the connection table is full). `options`: the
    connection's socket options (StreamOptions: nodelay, keepalive, linger...)."""
    loop = runner.loop
    chosen = StreamOptions(**options)
    config = chosen.config(runner.stack.tcp.config)
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    conn = runner.stack.connect(parse_address(host), port, runner.now(), config)
    transport = TcpTransport(runner, conn, protocol, linger=chosen.linger)
    runner.done(conn)
    assert transport.connected is not None
    try:
        await transport.connected
    except asyncio.CancelledError:
        transport.abort()  # nobody wants it any more: no SYNs left behind
        raise
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


class StackServer:
    """What start_server returns: close() stops listening (and resets the
    connections not yet handed over, RFC 9293 style). `handlers` are the
    handler tasks running now; `failures` counts those that raised."""

    def __init__(self, runner: StackRunner, listener: Listener) -> None:
        self._runner = runner
        self.listener = listener
        self.port = listener.port
        self.handlers: set[asyncio.Task[Any]] = set()  # (also keeps them from the GC)
        self.failures = 0

    def close(self) -> None:
        self._runner.stack.tcp.close_listener(self.listener, self._runner.now())
        self._runner.done()

    async def wait_closed(self) -> None:
        return None

    async def __aenter__(self) -> StackServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    async def run_handler(
        self,
        callback: ClientCallback,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """One connection's handler, accounted for: an exception it lets out is
        one line in the log, a counter (app.handler-errors) and a reset of its
        connection, never a traceback; cancelled (shutdown), it just ends."""
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            result = callback(reader, writer)
            if result is not None:
                await result
        except asyncio.CancelledError:
            writer.transport.abort()
        except Exception as exc:
            self.failures += 1
            self._runner.stack.counters["app.handler-errors"] += 1
            host, peer_port = writer.get_extra_info("peername")[:2]
            peer = format_endpoint(parse_address(host), peer_port)  # [2001:2::1]:80 for IPv6
            log.error("port %d, peer %s: handler failed: %r", self.port, peer, exc)
            writer.transport.abort()
        finally:
            self.handlers.discard(task)
            # A reset leaves its exception in the reader; raised into the
            # handler, it took a traceback of the handler's frames, which hold
            # the reader: a cycle only a full collection would free.
            error = reader.exception()
            if error is not None:
                error.__traceback__ = None


async def start_server(
    runner: StackRunner,
    client_connected_cb: ClientCallback,
    port: int,
    *,
    backlog: int = 128,
    limit: int = STREAM_LIMIT,
    host: str | None = None,
    **options: Any,
) -> StackServer:
    """Passive OPEN on `port`; each connection gets (reader, writer) like
    asyncio's. `host`: None, "" or "::" hear both families; "0.0.0.0" or
    the stack's IPv4 address IPv4 only; its IPv6 address IPv6 only.
    `options`: socket options every connection it accepts has (StreamOptions)."""
    loop = runner.loop
    chosen = StreamOptions(**options)
    config = chosen.config(runner.stack.tcp.config)

    def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Awaitable[None]:
        return server.run_handler(client_connected_cb, reader, writer)

    def on_accept(conn: TcpConnection) -> None:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, handler, loop=loop)
        # (its Connected event follows in this flush)
        TcpTransport(runner, conn, protocol, active=False, linger=chosen.linger)

    family = _listen_family(runner.stack, host)
    listener = runner.stack.tcp.listen(
        port, on_accept, backlog=backlog, now=runner.now(), family=family, config=config
    )
    server = StackServer(runner, listener)  # (`handler` finds it when a connection comes)
    return server
