"""`ustack serve --queues 2`: a multi-queue TUN, one worker per queue.

Real clients (curl, ab, Python sockets) against the daemon in a private
namespace: the kernel spreads the flows over both queues, each worker serves
its own, `stats` and `ss` merge the two, and every way of ending (SIGTERM,
a worker's death, the parent's SIGKILL) leaves no process and no device."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from ustack.linux.lab import STACK_ADDRESS
from ustack.linux.lab import STACK_ADDRESS6
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon

HELD = 40  # connections held open at once: all on one queue has odds 2^-39

# Opens HELD connections to the echo service, checks each one's echo, says
# "ready" with its local ports, and closes them all when stdin closes.
HOLDER = """
import socket, sys
count, host = int(sys.argv[1]), sys.argv[2]
conns = [socket.create_connection((host, 7), timeout=10) for _ in range(count)]
for n, conn in enumerate(conns):
    conn.sendall(b"line %d\\n" % n)
    got = b""
    while not got.endswith(b"\\n"):
        got += conn.recv(100)
    assert got == b"line %d\\n" % n, got
print("ready", *(conn.getsockname()[1] for conn in conns), flush=True)
sys.stdin.read()
for conn in conns:
    conn.close()
"""


@pytest.fixture
def queues2(ns: Netns, tmp_path: Path) -> Iterator[UstackDaemon]:
    with UstackDaemon.start(ns, tmp_path, "--queues", "2", trace=False, log_level="info") as d:
        yield d


def worker_pids(daemon: UstackDaemon) -> list[int]:
    reply = daemon.request("stats")
    assert reply["ok"], reply
    return [worker["pid"] for worker in reply["workers"]]


def wait_all_gone(pids: list[int], timeout: float = 10) -> None:
    """Return when every process has ended (a pidfd is readable then)."""
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except ProcessLookupError:
            continue  # gone already
    try:
        waiting = list(fds)
        while waiting:
            ready, _, _ = select.select(waiting, [], [], timeout)
            assert ready, f"processes still running: {pids}"
            waiting = [fd for fd in waiting if fd not in ready]
    finally:
        for fd in fds:
            os.close(fd)


def assert_no_device(ns: Netns) -> None:
    shown = ns.run("ip", "link", "show", "tun0")
    assert shown.returncode != 0, shown.stdout


def test_two_workers_share_the_flows(ns: Netns, queues2: UstackDaemon) -> None:
    shown = ns.run("ip", "-d", "link", "show", "tun0", check=True).stdout.decode()
    assert "multi_queue numqueues 2" in shown, shown

    page = ns.run("curl", "-sS", "-m", "10", f"http://{STACK_ADDRESS}/", check=True).stdout
    page6 = ns.run("curl", "-sS", "-m", "10", f"http://[{STACK_ADDRESS6}]/", check=True).stdout
    assert page and page == page6

    ab = ns.run("ab", "-q", "-r", "-s", "10", "-n", "600", "-c", "30", f"http://{STACK_ADDRESS}/")
    text = ab.stdout.decode()
    assert "Complete requests:      600" in text and "Failed requests:        0" in text, text

    holder = subprocess.Popen(
        ns.command(sys.executable, "-c", HOLDER, str(HELD), STACK_ADDRESS),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        line = holder.stdout.readline().decode().split()
        assert line[:1] == ["ready"], line
        ports = {int(port) for port in line[1:]}
        rows = [
            row
            for row in queues2.connections()
            if row["local"] == f"{STACK_ADDRESS}:7"
            and int(row["remote"].rsplit(":", 1)[1]) in ports
        ]
        assert len(rows) == HELD and {row["state"] for row in rows} == {"ESTABLISHED"}
        by_worker = Counter(row["worker"] for row in rows)
        assert set(by_worker) == {0, 1}, by_worker
        ss = subprocess.run(
            [sys.executable, "-m", "ustack", "ss", "--control", str(queues2.control)],
            capture_output=True,
            check=True,
        ).stdout.decode()
        assert len(re.findall(rf"ESTABLISHED .* {STACK_ADDRESS}:7 .* #q[01]\.\d+", ss)) == HELD

        reply = queues2.request("stats")
        workers = reply["workers"]
        opens = [worker["counters"]["tcp.passive-opens"] for worker in workers]
        assert all(count > 0 for count in opens), opens  # both served connections
        assert reply["counters"]["tcp.passive-opens"] == sum(opens) >= 2 + 600 + HELD
        assert reply["connections"]["ESTABLISHED"] >= HELD
        held = [worker["connections"].get("ESTABLISHED", 0) for worker in workers]
        assert held[0] >= by_worker[0] and held[1] >= by_worker[1], (held, by_worker)
    finally:
        holder.communicate(timeout=30)
    assert holder.returncode == 0

    pids = worker_pids(queues2)
    assert queues2.stop() == 0
    wait_all_gone(pids)
    assert_no_device(ns)
    log = queues2.log_text()
    assert "ustack[q0]: SIGTERM: shutting down" in log and "ustack[q1]" in log, log[-2000:]


def test_what_two_queues_refuse(queues2: UstackDaemon) -> None:
    reply = queues2.request("fault", do="list")
    assert not reply["ok"] and "--queues 1" in reply["error"]
    reply = queues2.request("connect", host="198.18.0.1", port=9)
    assert not reply["ok"] and "--queues 1" in reply["error"]
    reply = queues2.request("config", msl=1)  # goes to both workers
    assert reply["ok"] and reply["msl"] == 1.0


def test_a_dead_worker_stops_the_daemon(ns: Netns, queues2: UstackDaemon) -> None:
    pids = worker_pids(queues2)
    os.kill(pids[1], signal.SIGKILL)
    assert queues2.process.wait(timeout=20) == 1
    wait_all_gone(pids)
    assert_no_device(ns)
    assert "the worker of queue 1" in queues2.log_text()


def test_workers_end_with_their_parent(ns: Netns, queues2: UstackDaemon) -> None:
    pids = worker_pids(queues2)
    queues2.process.kill()  # no handler runs: PR_SET_PDEATHSIG ends the workers
    queues2.process.wait(timeout=10)
    wait_all_gone(pids)
    assert_no_device(ns)
    assert ns.pids() == []
