"""`ustack serve`: the stack on a TUN device, its services and its control socket."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ustack.api import open_connection, start_server
from ustack.control import ControlServer, encode, error_reply
from ustack.link import LinkConfig, TunLink
from ustack.services import SERVICES
from ustack.stack import DEFAULT_ADDRESS, Stack, StackRunner
from ustack.tcp.connection import TcpConfig
from ustack.trace import TraceFilter, TraceSinks, TraceSpec, dotted

log = logging.getLogger("ustack")

# Packets read per wake-up of the loop before other callbacks get a turn.
READ_BATCH = 256
PIPE_CHUNK = 64 * 1024


def default_services() -> dict[str, int]:
    return {name: port for name, (port, _) in SERVICES.items()}


@dataclass(frozen=True)
class ServeConfig:
    link: LinkConfig = field(default_factory=LinkConfig)
    address: ipaddress.IPv4Address = DEFAULT_ADDRESS
    tcp: TcpConfig = field(default_factory=TcpConfig)  # its MSS is set from the MTU
    services: dict[str, int] = field(default_factory=lambda: default_services())
    control_path: Path | None = None
    ready_fd: int | None = None
    traces: list[TraceSpec] = field(default_factory=list)
    trace_filter: TraceFilter = field(default_factory=TraceFilter)


class Daemon:
    """Runs a Stack on a TUN device until SIGINT/SIGTERM or a link failure."""

    def __init__(self, config: ServeConfig, link: TunLink) -> None:
        self.config = config
        self.link = link
        self._stopped = asyncio.Event()
        self._exit_code = 0
        self._traces = TraceSinks(config.traces, config.trace_filter)
        tcp = dataclasses.replace(config.tcp, mss=link.mtu - 40)  # IPv4 + TCP headers
        self.stack = Stack(
            int(config.address),
            link.write,
            link.mtu,
            tcp,
            self._traces.tracer,
            tap=self._traces.tap,
        )
        self.runner: StackRunner | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        runner = self.runner = StackRunner(self.stack, loop)
        link = self.link
        control: ControlServer | None = None
        try:
            for name, port in self.config.services.items():
                await start_server(runner, SERVICES[name][1], port)
                log.info("%s on port %d", name, port)
            if self.config.control_path is not None:
                control = await ControlServer.start(
                    self.config.control_path,
                    {"stats": self._stats, "connections": self._connections},
                    {"connect": self._connect},
                )
            loop.add_reader(link.fd, self._on_readable)
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, self._stop, signal.Signals(signum).name)
            log.info("stack at %s on %s, ready", self.config.address, link.name)
            _notify_ready(self.config.ready_fd)
            await self._stopped.wait()
            self._reset_all()
        finally:
            loop.remove_reader(link.fd)
            if control is not None:
                await control.close()
            link.close()
            self._traces.close()
            log.info("counters: %s", _format_counters(self.stack.counters))
        return self._exit_code

    def _on_readable(self) -> None:
        assert self.runner is not None
        read, size = self.link.read, self.link.mtu
        receive, now = self.stack.receive, self.runner.now()
        try:
            for _ in range(READ_BATCH):
                packet = read(size)
                if packet is None:
                    break
                receive(packet, now)
        except OSError as exc:
            # The device went away under us (deleted, or the netns is gone).
            log.error("reading %s failed: %s", self.link.name, exc.strerror or exc)
            self._exit_code = 1
            self._stopped.set()
        self.runner.done()

    def _stop(self, why: str) -> None:
        log.info("%s: shutting down", why)
        self._stopped.set()

    def _reset_all(self) -> None:
        """Going away: RST every connection so no peer waits for us."""
        assert self.runner is not None
        now = self.runner.now()
        for conn in list(self.stack.tcp.connections.values()):
            conn.abort(now)
            self.stack.tcp.flush(conn)

    # ---- control commands ----------------------------------------------------------------

    def _stats(self, _request: dict[str, Any]) -> dict[str, Any]:
        return {
            "counters": dict(sorted(self.stack.counters.items())),
            "connections": self.stack.tcp.queued(),
        }

    def _connections(self, _request: dict[str, Any]) -> dict[str, Any]:
        rows = []
        tcp = self.stack.tcp
        for (remote, remote_port, local_port), conn in tcp.connections.items():
            rows.append(
                {
                    "id": conn.conn_id,
                    "state": str(conn.state),
                    "local": f"{dotted(tcp.address)}:{local_port}",
                    "remote": f"{dotted(remote)}:{remote_port}",
                    "send_queue": conn.unsent_bytes,
                    "recv_queue": conn.readable_bytes,
                }
            )
        listening = [f"{dotted(tcp.address)}:{port}" for port in sorted(tcp.listeners)]
        return {"connections": rows, "listening": listening}

    async def _connect(
        self, request: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """ "connect": the stack opens a connection and the control connection
        becomes a byte pipe to it, half-closes included (like nc)."""
        assert self.runner is not None
        try:
            host = str(ipaddress.IPv4Address(request.get("host")))
            port = int(request["port"])
            if not 0 < port < 65536:
                raise ValueError(port)
        except (ValueError, KeyError, TypeError):
            writer.write(encode(error_reply('connect needs "host" (IPv4) and "port" (1-65535)')))
            await writer.drain()
            writer.close()
            return
        try:
            tcp_reader, tcp_writer = await open_connection(self.runner, host, port)
        except OSError as exc:
            writer.write(encode(error_reply(f"connect to {host}:{port}: {exc}")))
            await writer.drain()
            writer.close()
            return
        local = tcp_writer.get_extra_info("sockname")
        writer.write(encode({"ok": True, "version": 1, "local": f"{local[0]}:{local[1]}"}))
        await writer.drain()
        await asyncio.gather(_pipe(reader, tcp_writer), _pipe(tcp_reader, writer))
        with contextlib.suppress(ConnectionError):
            tcp_writer.close()
        writer.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the EOF on as a half-close."""
    try:
        while data := await source.read(PIPE_CHUNK):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
    except (ConnectionError, RuntimeError):
        pass


def _notify_ready(ready_fd: int | None) -> None:
    """Tell whoever started us that the device is up and packets flow:
    a line on --ready-fd, and sd_notify(READY=1) under systemd Type=notify."""
    if ready_fd is not None:
        try:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
        except OSError as exc:
            log.warning("cannot write to --ready-fd %d: %s", ready_fd, exc.strerror)
    notify_socket = os.environ.get("NOTIFY_SOCKET")
    if notify_socket:
        address = "\0" + notify_socket[1:] if notify_socket.startswith("@") else notify_socket
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(b"READY=1", address)
            except OSError as exc:
                log.warning("sd_notify failed: %s", exc.strerror)


def _format_counters(counters: dict[str, int]) -> str:
    return ", ".join(f"{name}={value}" for name, value in sorted(counters.items())) or "none"


def serve(config: ServeConfig) -> int:
    """Run the daemon in the foreground; the exit code."""
    # Netlink set-up is synchronous (pyroute2 runs its own loop): before ours starts.
    # A LinkError goes to the caller, which reports it on one line.
    link = TunLink.open(config.link)
    try:
        daemon = Daemon(config, link)
    except BaseException:
        link.close()
        raise
    return asyncio.run(daemon.run())
