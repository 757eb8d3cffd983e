"""Peer states come from a machine-wide tracepoint: only the watcher's own
network namespace's sockets may reach the trace (issue 17 item 5).

Two namespaces hold the very same two addresses on their lo and run the same
burst of short Linux connections at the same time; the watcher runs in ours.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest
from test_peer_states import ENDS
from test_peer_states import LINUX
from test_peer_states import LINUX6
from test_peer_states import NS_PREFIX
from test_peer_states import STACK
from test_peer_states import STACK6
from test_peer_states import Recorder
from test_peer_states import in_netns
from test_peer_states import run_python

from ustack.linux.lab import LINUX_ADDRESS
from ustack.linux.lab import STACK_ADDRESS
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon
from ustack.linux.lab import netns
from ustack.linux.peer_states import FOREIGN_COUNTER
from ustack.linux.peer_states import HOLD_FOREIGN
from ustack.linux.peer_states import PeerStateWatcher
from ustack.linux.tracefs import SocketDestroyed
from ustack.linux.tracefs import parse_destroy_line

CONNECTIONS = 102  # per namespace, a third of each kind below
OUR_PORTS = 20000  # the Linux clients' ports, outside the ephemeral range
THEIR_PORTS = 21000

# Connection i binds port base+i (one 4-tuple each) and ends by kind i % 3:
# 0 closes first (FIN_WAIT .. TIME_WAIT), 1 aborts with RST at once (gone in
# microseconds: no timewait socket holds it), 2 is refused (no listener: the
# socket disconnects and loses its remote end before it is freed).
BURST = """
import socket, struct, sys
linux, stack, base, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
family = socket.AF_INET6 if ":" in linux else socket.AF_INET
srv = socket.create_server((stack, 0), family=family)
closed = socket.socket(family)
closed.bind((stack, 0))  # a port without a listener
for i in range(count):
    c = socket.socket(family)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.bind((linux, base + i))
    if i % 3 == 2:
        try:
            c.connect(closed.getsockname())
        except ConnectionRefusedError:
            pass
        else:
            raise AssertionError("connected to a port without a listener")
        c.close()
        continue
    c.connect(srv.getsockname())
    a, _ = srv.accept()
    if i % 3 == 1:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    a.close()
print("done", flush=True)
"""


# As read from trace_pipe on Linux 6.18: a socket freed, then a refused
# connect's over IPv6 (disconnected: the remote port and its own address cleared).
DESTROYED = (
    "  python3-23154 [001] ..s2. 73041.854447: tcp_destroy_sock: family=AF_INET sport=52128 "
    "dport=41225 saddr=198.18.200.1 daddr=198.18.200.2 saddrv6=::ffff:198.18.200.1 "
    "daddrv6=::ffff:198.18.200.2 sock_cookie=5744b"
)
REFUSED = (
    "  python3-23154 [001] b..1. 73041.854578: tcp_destroy_sock: family=AF_INET6 sport=44834 "
    "dport=0 saddr=0.0.0.0 daddr=0.0.0.0 saddrv6=:: daddrv6=2001:2:200::2 sock_cookie=5744d"
)


def test_parse_destroy_line() -> None:
    assert parse_destroy_line(DESTROYED, STACK) == SocketDestroyed(52128, 41225, 0x5744B)
    assert parse_destroy_line(REFUSED, {STACK, STACK6}) == SocketDestroyed(44834, 0, 0x5744D)
    assert parse_destroy_line(DESTROYED, "198.18.0.2") is None  # another stack address
    assert parse_destroy_line(DESTROYED.replace("tcp_destroy_sock", "tcp_probe"), STACK) is None


def add_addresses(ns: Netns) -> None:
    for address in (LINUX, STACK, LINUX6, STACK6):  # lo does no duplicate address detection
        prefix = 128 if ":" in address else 32
        subprocess.run(["ip", "-n", ns.name, "addr", "add", f"{address}/{prefix}", "dev", "lo"],
                       check=True)  # fmt: skip


@pytest.mark.parametrize("family", [4, 6])
def test_only_our_namespace_is_reported_even_microsecond_sockets(family: int) -> None:
    """Every change of each of our 102 sockets is reported, those gone
    before their first change is read too; none of theirs is, each counted."""
    linux, stack = ENDS[family]
    recorder = Recorder()
    with netns(NS_PREFIX) as pns, netns(NS_PREFIX, "other") as other:
        add_addresses(pns)
        add_addresses(other)

        async def main() -> int:
            loop = asyncio.get_running_loop()
            watcher = PeerStateWatcher(STACK, recorder, lambda *_: None, loop,
                                       stack_address6=STACK6)  # fmt: skip
            watcher.start()
            try:
                ours, theirs = await asyncio.gather(
                    asyncio.to_thread(run_python, pns, BURST, linux, stack,
                                      str(OUR_PORTS), str(CONNECTIONS)),
                    asyncio.to_thread(run_python, other, BURST, linux, stack,
                                      str(THEIR_PORTS), str(CONNECTIONS)),
                )  # fmt: skip
                assert ours == theirs == "done"
                for i in range(CONNECTIONS):
                    await recorder.wait_for(OUR_PORTS + i, "TIME_WAIT" if i % 3 == 0 else "CLOSED")
                # Theirs are dropped once not found in time: each has >= 1 change.
                deadline = time.monotonic() + 15
                while watcher.counters[FOREIGN_COUNTER] < CONNECTIONS:
                    assert time.monotonic() < deadline, watcher.counters
                    await asyncio.sleep(0.1)
            finally:
                watcher.stop()
            return watcher.counters[FOREIGN_COUNTER]

        foreign = in_netns(pns, main)
    ports = {e.remote_port for e in recorder.events}
    assert ports == {OUR_PORTS + i for i in range(CONNECTIONS)}
    for i in range(CONNECTIONS):
        life = recorder.life(OUR_PORTS + i)
        if i % 3 == 0:
            assert life[:4] == ["CLOSED", "SYN_SENT", "ESTABLISHED", "FIN_WAIT_1"], life
            assert life[-1] == "TIME_WAIT" and life.count("SYN_SENT") == 1, life
        elif i % 3 == 1:
            assert life == ["CLOSED", "SYN_SENT", "ESTABLISHED", "CLOSED"], life
        else:
            assert life == ["CLOSED", "SYN_SENT", "CLOSED"], life
    assert foreign >= CONNECTIONS


def test_daemon_counts_other_namespaces_changes(tmp_path: Path) -> None:
    """`ustack serve --peer-states`: another namespace with the lab's two
    addresses runs a burst; curl to the daemon shows, theirs do not, and
    `stats` counts them under peer_states.foreign."""
    with netns(NS_PREFIX) as pns, netns(NS_PREFIX, "other") as other:
        for address in (LINUX_ADDRESS, STACK_ADDRESS):
            subprocess.run(["ip", "-n", other.name, "addr", "add", f"{address}/32", "dev", "lo"],
                           check=True)  # fmt: skip
        daemon = UstackDaemon.start(pns, tmp_path, "--peer-states")
        try:
            out = run_python(other, BURST, LINUX_ADDRESS, STACK_ADDRESS,
                             str(THEIR_PORTS), str(CONNECTIONS))  # fmt: skip
            assert out == "done"
            pns.run("curl", "-sS", "--max-time", "10", f"http://{STACK_ADDRESS}/", check=True)
            deadline = time.monotonic() + 15
            while daemon.stats().get(FOREIGN_COUNTER, 0) < CONNECTIONS:
                assert time.monotonic() < deadline, daemon.stats()
                time.sleep(0.1)
            events = [e for e in daemon.trace_events() if e["type"] == "peer_state"]
        finally:
            daemon.stop()
    ports = {e["remote_port"] for e in events}
    assert ports and all(not THEIR_PORTS <= p < THEIR_PORTS + CONNECTIONS for p in ports)
    # curl's socket: the stack's port 80, with our connection named.
    assert {e["local_port"] for e in events} == {80}
    assert any(e["conn"] is not None for e in events)


# A refused connect whose socket its application keeps a while: closed and
# unhashed, so no lookup finds it, and not freed (no cookie) until close().
REFUSED_KEPT = """
import socket, sys, time
c = socket.socket()
c.bind((sys.argv[1], int(sys.argv[3])))
closed = socket.socket()
closed.bind((sys.argv[2], 0))
try:
    c.connect(closed.getsockname())
except ConnectionRefusedError:
    pass
time.sleep(float(sys.argv[4]))  # the scenario: the application holds the socket
c.close()
"""


def test_refused_socket_kept_open_is_reported_once_freed() -> None:
    recorder = Recorder()
    with netns(NS_PREFIX) as pns:
        add_addresses(pns)

        async def main() -> None:
            loop = asyncio.get_running_loop()
            watcher = PeerStateWatcher(STACK, recorder, lambda *_: None, loop)
            watcher.start()
            try:
                hold = str(HOLD_FOREIGN + 1)
                await asyncio.to_thread(
                    run_python, pns, REFUSED_KEPT, LINUX, STACK, str(OUR_PORTS), hold
                )
                await recorder.wait_for(OUR_PORTS, "CLOSED")
            finally:
                watcher.stop()
            assert watcher.counters[FOREIGN_COUNTER] == 0

        in_netns(pns, main)
    assert recorder.life(OUR_PORTS) == ["CLOSED", "SYN_SENT", "CLOSED"]
