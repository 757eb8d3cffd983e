"""The HTTP service against real clients (curl, wget, ab, Python's sockets and
http.client) on the real daemon, each test in its own namespace."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ustack.linux.lab import STACK_ADDRESS, Netns, UstackDaemon

pytestmark = pytest.mark.netns

URL = f"http://{STACK_ADDRESS}"


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def assert_clean_log(daemon: UstackDaemon) -> None:
    log = daemon.log_text()
    assert "Traceback" not in log, log[log.find("Traceback") - 300 :][:3000]
    assert "Task was destroyed" not in log


OVERSIZED_CLIENT = """
import socket, sys
from collections import Counter
head = b"GET / HTTP/1.1\\r\\nHost: x\\r\\nX-Big: " + b"a" * 300_000 + b"\\r\\n\\r\\n"
seen = Counter()
for _ in range(int(sys.argv[1])):
    with socket.create_connection((sys.argv[2], 80), timeout=10) as s:
        try:
            s.sendall(head)
        except OSError:
            pass  # the 431 came and the server reset: it does not read an unread head
        seen[s.recv(64).split(b"\\r\\n")[0].decode()] += 1
print(dict(seen))
"""


def test_oversized_heads_get_431_and_every_handler_ends(ns: Netns, tmp_path: Path) -> None:
    """2,000 requests with a 300 KB header: each gets 431, each handler ends
    (none destroyed pending by the GC), and memory stays flat. On the old
    code RSS grew 41 -> 123 MB and the log had 1,811 'Task was destroyed'."""
    with UstackDaemon.start(ns, tmp_path, trace=False) as daemon:
        before = daemon.rss_kib()
        result = ns.python(OVERSIZED_CLIENT, "2000", STACK_ADDRESS, timeout=300)
        assert result.stdout.decode().strip() == (
            "{'HTTP/1.1 431 Request Header Fields Too Large': 2000}"
        )
        wait_for(lambda: daemon.request("stats")["handlers"] == 0, 10, "all handlers ended")
        daemon.wait_until_no_connections()
        grown = daemon.rss_kib() - before
        assert grown < 8 * 1024, f"RSS grew {grown} KiB"
    assert_clean_log(daemon)
