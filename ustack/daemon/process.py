"""The daemon as a process: telling whoever started it that it is ready,
reopening its log files on SIGHUP, a quiet end of its tasks at shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger("ustack")


def notify_ready(ready_fd: int | None) -> None:
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


def reopen_log_files() -> int:
    """Open every log file again at its path (--log-file); how many were."""
    reopened = 0
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.FileHandler):
            continue
        try:
            stream = open(handler.baseFilename, "a", encoding=handler.encoding)  # noqa: SIM115 (the handler's from now on)
        except OSError as exc:
            log.error("cannot reopen the log file %s: %s", handler.baseFilename, exc.strerror)
            continue
        old = handler.setStream(stream)
        if old is not None:
            old.close()
        reopened += 1
    return reopened


async def finish_tasks() -> None:
    """Let the services see their connections reset and return, then cancel
    what is left, so shutdown logs no tracebacks of cancelled handlers."""
    for _ in range(3):
        await asyncio.sleep(0)  # connection_lost runs, readers raise, handlers end
    current = asyncio.current_task()
    pending = [task for task in asyncio.all_tasks() if task is not current]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
