"""Nagle against delayed ACK with a Linux client, on the real daemon (issue
18 item 5): a client that writes a small piece and then another sends the
second only once the first is acknowledged (RFC 896, Linux's
tcp_nagle_check). ustack acknowledges a short segment when its application
reads it, as Linux's tcp_cleanup_rbuf does, not when the 40 ms delayed-ACK
timer fires; and request-and-answer exchanges still get one segment each
way, the answer carrying the ACK (Linux's pingpong mode).
bench/two_writes.py measures the same beside the kernel."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from ustack.linux.lab import STACK_ADDRESS
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon
from ustack.tcp.config import TcpConfig

pytestmark = pytest.mark.netns

DELAYED_ACK = TcpConfig().delayed_ack  # the daemon's: 40 ms
EXCHANGES = 10

# write(20 bytes), write(20 bytes), then wait until Linux has both
# acknowledged (SIOCOUTQ 0): the seconds each exchange took.
TWO_WRITES_CLIENT = """
import fcntl, json, socket, struct, sys, termios, time
times = []
with socket.create_connection((sys.argv[1], 9), timeout=5) as s:
    for _ in range(int(sys.argv[2])):
        start = time.perf_counter()
        s.sendall(b"a" * 20)
        s.sendall(b"b" * 20)
        while struct.unpack("i", fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, b"    "))[0]:
            if time.perf_counter() - start > 5:
                raise SystemExit("not acknowledged in 5 s")
            time.sleep(0.0001)
        times.append(time.perf_counter() - start)
print(json.dumps(times))
"""

# GET requests on one keep-alive connection, each in one write, each answer
# read in full before the next request.
KEEP_ALIVE_CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], 80), timeout=5) as s:
    for _ in range(int(sys.argv[2])):
        s.sendall(b"GET /bytes/100 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
        got = b""
        while not (b"\\r\\n\\r\\n" in got and len(got.partition(b"\\r\\n\\r\\n")[2]) == 100):
            got += s.recv(4096)
"""


def segments(daemon: UstackDaemon, port: int) -> list[dict[str, Any]]:
    return [
        e
        for e in daemon.trace_events()
        if e["type"] == "segment" and e["conn"] is not None and e["local_port"] == port
    ]


def acked_after(trace: list[dict[str, Any]], data: dict[str, Any]) -> dict[str, Any]:
    """Our first segment after `data` that acknowledges all of it."""
    end = (data["seq"] + data["length"]) & 0xFFFFFFFF
    return next(
        e
        for e in trace
        if e["direction"] == "out"
        and e["time"] >= data["time"]
        and "." in e["flags"]
        and (e["ack"] - end) & 0xFFFFFFFF < 1 << 31
    )


def test_a_linux_client_writing_twice_gets_each_piece_acknowledged_on_read(
    ns: Netns, tmp_path: Path
) -> None:
    with UstackDaemon.start(ns, tmp_path) as daemon:
        result = ns.python(TWO_WRITES_CLIENT, STACK_ADDRESS, str(EXCHANGES), timeout=60)
        times = json.loads(result.stdout)
        trace = segments(daemon, 9)
        events = daemon.trace_events()
    # On the wire (the daemon's trace): every piece acknowledged long before
    # the delayed-ACK timer would have fired, and that timer never fired.
    pieces = [e for e in trace if e["direction"] == "in" and e["length"]]
    assert len(pieces) == 2 * EXCHANGES
    delays = [acked_after(trace, piece)["time"] - piece["time"] for piece in pieces]
    assert max(delays) < DELAYED_ACK / 2, delays
    fired = [
        e
        for e in events
        if e["type"] == "timer" and e["timer"] == "delayed_ack" and e["action"] == "fired"
    ]
    assert not fired
    reads = [e for e in events if e["type"] == "decision" and e["kind"] == "ack_on_read"]
    assert len(reads) >= 2 * EXCHANGES - 1  # (the first read's may count as a window update)
    # And so for the client: it never waited for the timer (before: 82 ms
    # an exchange, both pieces waiting 40 ms each).
    assert statistics.median(times) < DELAYED_ACK / 4, times
    assert max(times) < DELAYED_ACK, times


def test_requests_on_a_keep_alive_connection_get_their_acks_on_the_answers(
    ns: Netns, tmp_path: Path
) -> None:
    """The ACK on read does not cost a pure ACK per request: the answer,
    written in the application's turn after the read, carries it (after the
    first, the connection is interactive and the read does not even try)."""
    with UstackDaemon.start(ns, tmp_path) as daemon:
        ns.python(KEEP_ALIVE_CLIENT, STACK_ADDRESS, str(EXCHANGES), timeout=60)
        trace = segments(daemon, 80)
        kinds = [e["kind"] for e in daemon.trace_events() if e["type"] == "decision"]
    requests = [e for e in trace if e["direction"] == "in" and e["length"]]
    assert len(requests) == EXCHANGES
    for request in requests[1:]:  # (the first read's own ACK announces the window)
        answer = acked_after(trace, request)
        assert answer["length"], answer  # the answer carries the ACK: no pure ACK first
    assert "interactive" in kinds
