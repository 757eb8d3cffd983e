"""`ustack serve --queues N`: one worker process per queue of a multi-queue TUN.

The kernel puts each packet it sends to the device on one queue: the one the
flow table learnt from our own writes of that flow in the last 3 s, else the
symmetric hash of its addresses and ports scaled to the number of queues
(drivers/net/tun.c tun_automq_select_queue). Both give a passive TCP flow
the queue of its first SYN for its whole life, so each worker is a whole
Daemon (a Stack on its own event loop, its services, listeners on the same
ports) that owns its connections from SYN to the end of TIME_WAIT.

Shared, fixed at the start: the keys of the ISN (RFC 6528) and SYN-cookie
(RFC 4987) hashes, made here and given to every worker, so a flow that
changed queue would still find its cookie good and a reopened 4-tuple a
larger ISN; the configuration. Each worker has its own control socket in a
private directory; the parent serves the daemon's one and merges: `stats`
sums the counters (and lists each worker's), `connections` joins the
tables (each row with its worker), `config` goes to every worker. Not with
--queues > 1 (refused): traces, peer states and fault rules (each worker
would see only its own flows, and trace ids would collide), and `connect`
(an active open's replies follow the flow table only while it sends: after
3 s idle, the hash may give them to another worker). docs/performance.md,
"Beyond one core", says how each would be done.

An ICMP error about one worker's flow may reach another (the kernel
hashes it by its own addresses): icmp_relay.py passes it on.

The parent watches: SIGINT or SIGTERM, or any worker's end, stops every
worker (SIGTERM, SIGKILL after 10 s) and waits for each; a worker ends with
its parent too (PR_SET_PDEATHSIG). The device goes with the last queue's fd.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import json
import logging
import multiprocessing
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from dataclasses import field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from ustack.daemon import GC_YOUNG_THRESHOLD
from ustack.daemon import Daemon
from ustack.daemon import icmp_relay
from ustack.daemon.process import notify_ready
from ustack.daemon.process import reopen_log_files
from ustack.daemon.running import ServeConfig
from ustack.daemon.running import SharedSecrets
from ustack.linux.control import CHUNK_ROWS
from ustack.linux.control import ControlRequestError
from ustack.linux.control import ControlServer
from ustack.linux.control import encode
from ustack.linux.control import error_reply
from ustack.linux.control import merge_part
from ustack.linux.tun import TunLink

log = logging.getLogger("ustack")

READY_TIMEOUT = 30.0  # seconds for every worker to have its queue up and its services open
STOP_TIMEOUT = 10.0  # seconds a worker has to end after SIGTERM, then SIGKILL
ASK_TIMEOUT = 10.0  # seconds a worker has to answer a control request
MAX_REPLY_LINE = 16 * 1024 * 1024  # one part of a worker's reply (200 rows)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
REFUSED = "not with --queues > 1 (each worker holds only its own flows): run with --queues 1"


@dataclass
class Worker:
    index: int
    process: BaseProcess
    control: Path | None
    ready_fd: int  # the read end of its --ready-fd pipe until it is ready, then -1
    ended: asyncio.Event = field(default_factory=asyncio.Event)


def serve_queues(config: ServeConfig) -> int:
    """Open the device's queues, start a worker on each, serve the control
    socket until SIGINT/SIGTERM or a worker ends; the exit code."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop's handler is in place
    links = TunLink.open_queues(config.link, config.queues)
    private = Path(tempfile.mkdtemp(prefix="ustack-queues-"))  # 0700: the workers' sockets
    workers: list[Worker] = []
    relay_pairs = icmp_relay.socket_pairs(config.queues)
    try:
        secrets = SharedSecrets.new()
        context = multiprocessing.get_context("fork")
        for link in links:
            workers.append(
                _start_worker(context, config, link.queue, links, secrets, private, relay_pairs)
            )
        for link in links:
            link.forget()  # each queue is its worker's now: the device ends with the last
        links = []
        icmp_relay.close_pairs(relay_pairs)  # the workers' now
        relay_pairs = []
        if not _wait_ready(workers):
            return 1
        return asyncio.run(QueueDaemon(config, workers).run())
    finally:
        for link in links:
            link.close()
        icmp_relay.close_pairs(relay_pairs)
        _stop_now(workers)
        shutil.rmtree(private, ignore_errors=True)


def _start_worker(
    context: Any,
    config: ServeConfig,
    index: int,
    links: list[TunLink],
    secrets: SharedSecrets,
    private: Path,
    relay_pairs: list[tuple[socket.socket, socket.socket]],
) -> Worker:
    read_end, write_end = os.pipe()
    control = None if config.control_path is None else private / f"w{index}.sock"
    own = dataclasses.replace(
        config, queues=1, shared_secrets=secrets, control_path=control, ready_fd=write_end
    )
    process = context.Process(
        target=_worker_main,
        args=(own, links, index, config.ready_fd, os.getpid(), relay_pairs),
        name=f"ustack-queue{index}",
    )
    try:
        process.start()
    finally:
        os.close(write_end)
    return Worker(index, process, control, read_end)


def _worker_main(
    config: ServeConfig,
    links: list[TunLink],
    index: int,
    parent_ready: int | None,
    parent: int,
    relay_pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    """A worker: its queue, a whole Daemon on its own loop, until SIGTERM;
    ICMP errors about flows of other workers relayed to them (icmp_relay.py)."""
    _end_with_parent(parent)
    os.environ.pop("NOTIFY_SOCKET", None)  # the parent tells systemd, once
    if parent_ready is not None:
        with contextlib.suppress(OSError):
            os.close(parent_ready)
    for link in links:
        if link.queue != index:
            link.forget()
    _tag_log_lines(f"[q{index}]")
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
    link = links[index]
    relay = icmp_relay.IcmpRelay(relay_pairs, index)
    code = 1
    try:
        daemon = Daemon(config, link)
    except BaseException:
        link.close()
        relay.close()
        raise
    daemon.on_start.append(relay.start)
    try:
        code = asyncio.run(daemon.run())
    except Exception as exc:  # a control socket that cannot be made, ...: one line
        log.error("error: %s", exc)
    finally:
        relay.close()
    sys.exit(code)


def _end_with_parent(parent: int) -> None:
    """SIGTERM when the parent dies (even by SIGKILL): no orphan holds a queue."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the prctl
        os._exit(1)


def _tag_log_lines(tag: str) -> None:
    """Each worker's log lines say which queue: `ustack[q1]: ...`."""

    def tag_record(record: logging.LogRecord) -> bool:
        if not record.name.endswith(tag):
            record.name += tag
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(tag_record)


def _wait_ready(workers: list[Worker]) -> bool:
    """Every worker's "ready" line, or False (a worker ended first, or took
    longer than READY_TIMEOUT; it logged why)."""
    deadline = time.monotonic() + READY_TIMEOUT
    waiting = {worker.ready_fd: worker for worker in workers}
    while waiting:
        left = deadline - time.monotonic()
        readable, _, _ = select.select(list(waiting), [], [], max(left, 0))
        if not readable:
            log.error("error: %d worker(s) not ready after %g s", len(waiting), READY_TIMEOUT)
            return False
        for fd in readable:
            worker = waiting.pop(fd)
            got = os.read(fd, 64)
            os.close(fd)
            worker.ready_fd = -1
            if not got.startswith(b"ready"):
                worker.process.join(STOP_TIMEOUT)
                log.error(
                    "error: the worker of queue %d ended before it was ready (exit code %s)",
                    worker.index, worker.process.exitcode,
                )  # fmt: skip
                return False
    return True


def _stop_now(workers: list[Worker]) -> None:
    """Without a loop (start-up failed, or after it): SIGTERM each worker
    still running, SIGKILL after STOP_TIMEOUT, reap every one."""
    for worker in workers:
        if worker.process.exitcode is None and worker.process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for worker in workers:
        worker.process.join(max(deadline - time.monotonic(), 0))
        if worker.process.exitcode is None:
            log.error("the worker of queue %d did not stop: SIGKILL", worker.index)
            worker.process.kill()
            worker.process.join()
        if worker.ready_fd >= 0:
            os.close(worker.ready_fd)
            worker.ready_fd = -1


class QueueDaemon:
    """The parent while the workers run: the control socket, signals, and
    each worker's end."""

    def __init__(self, config: ServeConfig, workers: list[Worker]) -> None:
        self.config = config
        self.workers = workers
        self._stopped = asyncio.Event()
        self._stopping = False
        self._exit_code = 0

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for worker in self.workers:
            worker.ended = asyncio.Event()  # on this loop
            loop.add_reader(worker.process.sentinel, self._ended, worker)
        control: ControlServer | None = None
        try:
            if self.config.control_path is not None:
                control = await ControlServer.start(
                    self.config.control_path,
                    {"fault": self._refuse},
                    {"connect": self._refuse_connect},
                    {"stats": self._stats, "connections": self._connections,
                     "config": self._config},
                )  # fmt: skip
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, self._stop, signal.Signals(signum).name)
            loop.add_signal_handler(signal.SIGHUP, self._reopen)
            pids = ", ".join(str(worker.process.pid) for worker in self.workers)
            log.info("%d queues, one worker each (pids %s), ready", len(self.workers), pids)
            notify_ready(self.config.ready_fd)
            await self._stopped.wait()
        finally:
            self._stopping = True
            if control is not None:
                await control.close()
            await self._stop_workers()
        return self._exit_code

    def _ended(self, worker: Worker) -> None:
        asyncio.get_running_loop().remove_reader(worker.process.sentinel)
        worker.process.join()
        worker.ended.set()
        code = worker.process.exitcode
        if code:
            self._exit_code = 1
        if not self._stopping:
            # Its queue is gone: the kernel now spreads every flow over the
            # others (numqueues changed), which do not know them.
            log.error(
                "error: the worker of queue %d (pid %s) ended (exit code %s): stopping",
                worker.index, worker.process.pid, code,
            )  # fmt: skip
            self._exit_code = 1
            self._stop("a worker ended")

    def _stop(self, why: str) -> None:
        if not self._stopping:
            log.info("%s: shutting down %d workers", why, len(self.workers))
        self._stopping = True
        self._stopped.set()

    def _reopen(self) -> None:
        logs = reopen_log_files()
        for worker in self.workers:
            if not worker.ended.is_set() and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGHUP)
        log.info("SIGHUP: reopened %d log file(s), passed on to the workers", logs)

    async def _stop_workers(self) -> None:
        for worker in self.workers:
            if not worker.ended.is_set() and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(worker.ended.wait() for worker in self.workers)), STOP_TIMEOUT
            )
        _stop_now(self.workers)  # SIGKILL for any left; reaps them all

    # ---- control: each worker asked on its own socket, the answers merged ----------------

    async def _ask(self, worker: Worker, command: str, **fields: Any) -> dict[str, Any]:
        if worker.control is None or worker.ended.is_set():
            raise ControlRequestError(f"the worker of queue {worker.index} is not running")
        try:
            async with asyncio.timeout(ASK_TIMEOUT):
                reader, writer = await asyncio.open_unix_connection(
                    str(worker.control), limit=MAX_REPLY_LINE
                )
                try:
                    writer.write(encode({**fields, "command": command}))
                    reply: dict[str, Any] = {}
                    while merge_part(reply, json.loads(await reader.readuntil(b"\n"))):
                        pass
                finally:
                    writer.close()
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            why = str(exc) or type(exc).__name__
            raise ControlRequestError(f"the worker of queue {worker.index}: {why}") from None
        if not reply.get("ok"):
            raise ControlRequestError(f"the worker of queue {worker.index}: {reply.get('error')}")
        return reply

    async def _ask_all(self, command: str, **fields: Any) -> list[dict[str, Any]]:
        return list(
            await asyncio.gather(*(self._ask(worker, command, **fields) for worker in self.workers))
        )

    async def _stats(self, _request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        replies = await self._ask_all("stats")
        total: Counter[str] = Counter()
        states: Counter[str] = Counter()
        for reply in replies:
            total.update(reply["counters"])
            states.update(reply["connections"])
        yield {
            "counters": dict(sorted(total.items())),
            "connections": dict(states),
            "handlers": sum(reply["handlers"] for reply in replies),
            "workers": [
                {
                    "queue": worker.index,
                    "pid": worker.process.pid,
                    "counters": reply["counters"],
                    "connections": reply["connections"],
                }
                for worker, reply in zip(self.workers, replies, strict=True)
            ],
        }

    async def _connections(self, _request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        listening: dict[str, None] = {}
        for worker in self.workers:
            reply = await self._ask(worker, "connections")
            rows = [{**row, "worker": worker.index} for row in reply["connections"]]
            for start in range(0, len(rows), CHUNK_ROWS):
                yield {"connections": rows[start : start + CHUNK_ROWS]}
            listening.update(dict.fromkeys(reply["listening"]))
        yield {"connections": [], "listening": list(listening)}

    async def _config(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        fields = {key: value for key, value in request.items() if key != "command"}
        replies = await self._ask_all("config", **fields)
        yield {k: v for k, v in replies[0].items() if k not in ("ok", "version", "more")}

    def _refuse(self, _request: dict[str, Any]) -> dict[str, Any]:
        raise ControlRequestError(f"fault rules: {REFUSED}")

    async def _refuse_connect(
        self, _request: dict[str, Any], _reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(encode(error_reply(f"connect: {REFUSED}")))
        await writer.drain()
        writer.close()
