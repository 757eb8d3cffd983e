"""`ustack serve`: the stack on a TUN device, its services and its control socket
(its reports in reports.py, what it does as a process in process.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
from collections.abc import AsyncIterator
from collections.abc import Callable
from typing import Any

from ustack.api import StackServer
from ustack.api import open_connection
from ustack.api import start_server
from ustack.daemon.gc_pauses import GcPauses
from ustack.daemon.process import finish_tasks
from ustack.daemon.process import notify_ready
from ustack.daemon.process import reopen_log_files
from ustack.daemon.reports import connection_row
from ustack.daemon.reports import fault_event
from ustack.daemon.reports import format_counters
from ustack.daemon.reports import listening_endpoints
from ustack.daemon.reports import time_wait_row
from ustack.daemon.running import DEFAULT_ADDRESS6
from ustack.daemon.running import READ_BATCH
from ustack.daemon.running import RunningStack
from ustack.daemon.running import ServeConfig
from ustack.daemon.running import default_services
from ustack.linux.control import CHUNK_ROWS
from ustack.linux.control import PROTOCOL_VERSION
from ustack.linux.control import ControlRequestError
from ustack.linux.control import ControlServer
from ustack.linux.control import encode
from ustack.linux.control import error_reply
from ustack.linux.memory import pin_malloc_thresholds
from ustack.linux.peer_states import PeerStatesError
from ustack.linux.peer_states import PeerStateWatcher
from ustack.linux.tun import LinkGone
from ustack.linux.tun import TunLink
from ustack.runner import StackRunner
from ustack.services import SERVICES
from ustack.services import UDP_SERVICES
from ustack.services import HttpService
from ustack.study.faults import FaultError
from ustack.study.faults import parse_rule
from ustack.tcp.time_wait import numbered_at
from ustack.wire.address import format_address
from ustack.wire.address import format_endpoint
from ustack.wire.address import parse_address

# connection_row and fault_event are the reports module's, named here too (bench, tests).
__all__ = [
    "DEFAULT_ADDRESS6",
    "READ_BATCH",
    "Daemon",
    "ServeConfig",
    "connection_row",
    "default_services",
    "fault_event",
    "serve",
]

log = logging.getLogger("ustack")

PIPE_CHUNK = 64 * 1024
# CPython collects its youngest generation every 700 net allocations: with 50
# connections in flight, their objects are always alive then, get promoted, and
# push the heap into full collections (the 25% rule), which walk every TIME_WAIT
# connection. At 10,000 most of a request's objects are gone before a young
# collection, and a full one waits for 100 young ones (a million allocations).
# 26,000 connections (connect+close, ab -c 1, ab -c 50): GC time 626 -> 130 ms,
# no full collection (5 before, up to 168 ms each); RSS the same.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Once the daemon is up (issue 18 item 4): what start-up made (modules,
    the stack, its services) lives as long as the process, so it goes to the
    permanent generation (gc.freeze), after one last collection so no garbage
    is frozen with it; a full collection then walks only what came later:
    some 1.1 objects per TIME_WAIT record (time_wait.py), 14 per open
    connection. 50,000 TIME_WAITs: a full collection of about 5 ms, against
    about 50 ms unfrozen with full connections in TIME_WAIT (tools/time_wait_load.py).
    The young threshold: GC_YOUNG_THRESHOLD. What start-up made and later
    drops in a cycle is not freed: nothing does that once it serves."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


class Daemon:
    """Runs a Stack on a TUN device until SIGINT/SIGTERM or the device goes
    away; SIGHUP reopens the log file and the trace files."""

    def __init__(self, config: ServeConfig, link: TunLink) -> None:
        self.config = config
        self.link = link
        self._stopped = asyncio.Event()
        self._exit_code = 0
        # The stack on its link, its traces, faults and read loop (shared with open_stack).
        self.running = RunningStack(config, link)
        self.running.on_link_gone = self._lost_link
        self.stack = self.running.stack
        self.faults = self.running.faults
        self.address6 = self.running.address6
        self.runner: StackRunner | None = None
        self._peer_states: PeerStateWatcher | None = None
        self._servers: list[StackServer] = []
        self.gc_pauses = GcPauses() if config.gc_stats else None
        # Called with the runner once the stack runs on the loop (queues.py: the ICMP relay).
        self.on_start: list[Callable[[StackRunner], None]] = []

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        runner = self.runner = self.running.start()
        for hook in self.on_start:
            hook(runner)
        link = self.link
        control: ControlServer | None = None
        if self.gc_pauses is not None:
            self.gc_pauses.install()
        try:
            handlers = {name: handler for name, (_, handler) in SERVICES.items()}
            handlers["http"] = HttpService(self.config.http)
            for name, port in self.config.services.items():
                self._servers.append(await start_server(runner, handlers[name], port))
                log.info("%s on port %d", name, port)
                if name in UDP_SERVICES:
                    await self.running.create_datagram_endpoint(
                        UDP_SERVICES[name], local_addr=("", port)
                    )
                    log.info("%s on UDP port %d", name, port)
            if self.config.control_path is not None:
                control = await ControlServer.start(
                    self.config.control_path,
                    {
                        "stats": self._stats,
                        "fault": self._fault,
                        "config": self._config,
                    },
                    {"connect": self._connect},
                    {"connections": self._connections},
                )
            if self.config.peer_states:
                self._start_peer_states(loop)
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, self._stop, signal.Signals(signum).name)
            loop.add_signal_handler(signal.SIGHUP, self._reopen)
            addresses = ", ".join(map(str, filter(None, (self.config.address, self.address6))))
            log.info("stack at %s on %s, ready", addresses, link.name)
            tune_gc()
            notify_ready(self.config.ready_fd)
            await self._stopped.wait()
            self.running.reset_all()
            await finish_tasks()
        finally:
            if self.gc_pauses is not None:
                self.gc_pauses.remove()
            if self._peer_states is not None:
                self._peer_states.stop()
            if control is not None:
                await control.close()
            self.running.stop()  # reader, held packets, the link, the traces
            log.info("counters: %s", format_counters(self.stack.counters))
        return self._exit_code

    def _start_peer_states(self, loop: asyncio.AbstractEventLoop) -> None:
        tracer = self.running.tracer
        if tracer is None:
            raise PeerStatesError("--peer-states needs a text or jsonl --trace to write to")
        tcp = self.stack.tcp

        def conn_lookup(remote: str, remote_port: int, local_port: int) -> int | None:
            key = (parse_address(remote), remote_port, local_port)
            conn = numbered_at(tcp, key)
            return conn.conn_id if conn is not None else None

        address6 = None if self.address6 is None else str(self.address6)
        self._peer_states = PeerStateWatcher(
            str(self.config.address), tracer, conn_lookup, loop, stack_address6=address6,
            counters=self.stack.counters,  # peer_states.foreign: other namespaces' changes
        )  # fmt: skip
        self._peer_states.start()
        log.info("recording the Linux peers' states (sock:inet_sock_set_state)")

    def _lost_link(self, exc: LinkGone) -> None:
        """The device went away under us (deleted, or its namespace removed):
        one line, then shut down with status 1."""
        log.error("error: %s", exc)
        self._exit_code = 1
        self._stopped.set()

    def _stop(self, why: str) -> None:
        log.info("%s: shutting down", why)
        self._stopped.set()

    def _reopen(self) -> None:
        """SIGHUP, logrotate's convention: after `mv FILE FILE.1`, the log and
        the traces go on in a new FILE; the one moved aside is complete."""
        logs = reopen_log_files()
        traces = self.running.reopen_traces()
        log.info("SIGHUP: reopened %d log file(s) and %d trace file(s)", logs, traces)

    # ---- control commands ----------------------------------------------------------------

    def _stats(self, request: dict[str, Any]) -> dict[str, Any]:
        """stats: counters, connections by state, handlers running; with
        --gc-stats the collector's pauses too ("gc_reset": true zeroes them
        once read, so a benchmark sees one phase's)."""
        reply = {
            "counters": dict(sorted(self.stack.counters.items())),
            "connections": self.stack.tcp.queued(),
            "handlers": sum(len(server.handlers) for server in self._servers),  # running now
        }
        if self.gc_pauses is not None:
            reply["gc"] = self.gc_pauses.report()
            if request.get("gc_reset") is True:
                self.gc_pauses.reset()
        return reply

    async def _connections(self, _request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The connection table, CHUNK_ROWS rows a part (20,000 rows in one
        reply held the loop 275 ms). A connection gone between parts is left out."""
        tcp = self.stack.tcp
        table = list(tcp.connections.items())
        for start in range(0, len(table), CHUNK_ROWS):
            now = self.runner.now() if self.runner else 0.0
            rows = [
                connection_row(tcp.address, key, conn, now, tcp.address6)
                for key, conn in table[start : start + CHUNK_ROWS]
                if tcp.connections.get(key) is conn
            ]
            yield {"connections": rows}
        now = self.runner.now() if self.runner else 0.0
        rows = [
            time_wait_row(tcp.address, record, now, tcp.address6)
            for record in tcp.time_wait_records()
        ]
        for start in range(0, len(rows), CHUNK_ROWS):
            yield {"connections": rows[start : start + CHUNK_ROWS]}
        listening = listening_endpoints(tcp.listeners, tcp.address, tcp.address6)
        yield {"connections": [], "listening": listening}

    def _fault(self, request: dict[str, Any]) -> dict[str, Any]:
        """fault: {"do": "add", "rule": "drop:dir=out,flags=FIN,count=1"} | {"do": "list"}
        | {"do": "clear", "id": N (optional)}."""
        what = request.get("do", "list")
        if what == "add":
            try:
                rule = self.faults.add(parse_rule(str(request.get("rule", ""))))
            except FaultError as exc:
                raise ControlRequestError(f"bad fault rule: {exc}") from None
            log.info("fault rule %d added: %s", rule.id, request.get("rule"))
            return {"rule": rule.describe()}
        if what == "clear":
            rule_id = request.get("id")
            if rule_id is not None and not isinstance(rule_id, int):
                raise ControlRequestError('"id" is a rule number')
            return {"removed": self.faults.remove(rule_id)}
        if what != "list":
            raise ControlRequestError('"do" is add, list or clear')
        return {"rules": [rule.describe() for rule in self.faults.rules]}

    def _config(self, request: dict[str, Any]) -> dict[str, Any]:
        """config: show, or change for new connections, the knobs where stacks
        legitimately differ: msl, fin_timeout, time_wait_rst (ignore|close),
        syn_retries; and max_connections (the table's limit, from now on)."""
        tcp = self.stack.tcp
        changes: dict[str, Any] = {}
        try:
            if "msl" in request:
                changes["msl"] = _bounded_float(request["msl"], "msl")
            if "fin_timeout" in request:
                changes["fin_wait_2_timeout"] = _bounded_float(
                    request["fin_timeout"], "fin_timeout"
                )
        except ValueError as exc:
            raise ControlRequestError(str(exc)) from None
        if "time_wait_rst" in request:
            if request["time_wait_rst"] not in ("ignore", "close"):
                raise ControlRequestError('"time_wait_rst" is ignore or close')
            changes["rfc1337"] = request["time_wait_rst"] == "ignore"
        for key, low, high in (("syn_retries", 0, 127), ("max_connections", 1, 10_000_000)):
            if key in request:
                value = request[key]
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int)
                    or not low <= value <= high
                ):
                    raise ControlRequestError(f'"{key}" is a whole number {low}..{high}')
                changes[key] = value
        if changes:
            tcp.config = dataclasses.replace(tcp.config, **changes)
            log.info("configuration for new connections: %s", changes)
        config = tcp.config
        return {
            "msl": config.msl,
            "fin_timeout": config.fin_wait_2_timeout,
            "time_wait_rst": "ignore" if config.rfc1337 else "close",
            "syn_retries": config.syn_retries,
            "connect_timeout": config.connect_timeout,
            "max_connections": config.max_connections,
        }

    async def _connect(
        self, request: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """ "connect": the stack opens a connection and the control connection
        becomes a byte pipe to it, half-closes included (like nc)."""
        assert self.runner is not None
        target = _connect_target(request)
        if target is None:
            writer.write(
                encode(error_reply('connect needs "host" (IPv4 or IPv6) and "port" (1-65535)'))
            )
            await writer.drain()
            writer.close()
            return
        host, port = target
        try:
            tcp_reader, tcp_writer = await open_connection(self.runner, host, port)
        except OSError as exc:
            why = str(exc)
            if isinstance(exc, TimeoutError):
                retries = self.stack.tcp.config.syn_retries
                why += f" (no answer to the SYN and its {retries} retransmissions)"
            where = format_endpoint(parse_address(host), port)
            writer.write(encode(error_reply(f"connect to {where}: {why}")))
            await writer.drain()
            writer.close()
            return
        local = tcp_writer.get_extra_info("sockname")
        local_end = format_endpoint(parse_address(local[0]), local[1])
        writer.write(encode({"ok": True, "version": PROTOCOL_VERSION, "local": local_end}))
        await writer.drain()
        await asyncio.gather(_pipe(reader, tcp_writer), _pipe(tcp_reader, writer))
        with contextlib.suppress(ConnectionError):
            tcp_writer.close()
        writer.close()


def _connect_target(request: dict[str, Any]) -> tuple[str, int] | None:
    """(host, port) of a "connect" request, or None: the host an IPv4 or IPv6
    address ("198.18.0.1", "2001:2::1"), the port a whole JSON number 1..65535
    (not true, 80.5, 1e400, NaN)."""
    host, port = request.get("host"), request.get("port")
    if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
        return None
    try:
        host = format_address(parse_address(host))
    except ValueError:
        return None
    return (host, port) if 0 < port < 65536 else None


def _bounded_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 86400:
        raise ValueError(f'"{name}" is a number of seconds, 0..86400')
    return float(value)


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


def serve(config: ServeConfig) -> int:
    """Run the daemon in the foreground; the exit code."""
    # Netlink set-up is synchronous (pyroute2 runs its own loop): before ours starts.
    # A LinkError goes to the caller, which reports it on one line.
    # SIGHUP (reopen the files) before the handler is in place: nothing to reopen yet.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if not pin_malloc_thresholds():  # (before the workers fork: they inherit it)
        log.info("malloc's thresholds are not pinned (the C library refused mallopt)")
    if config.queues > 1:
        from ustack.daemon.queues import serve_queues  # (it builds on this module)

        return serve_queues(config)
    link = TunLink.open(config.link)
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)  # (and tune_gc once it is up)
    try:
        daemon = Daemon(config, link)
    except BaseException:
        link.close()
        raise
    return asyncio.run(daemon.run())
