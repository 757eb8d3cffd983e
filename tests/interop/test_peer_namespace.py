"""Peer states come from a machine-wide tracepoint: only the watcher's own
network namespace's sockets may reach the trace (issue 17 item 5).

Two namespaces hold the very same two addresses on their lo and run the same
burst of short Linux connections at the same time; the watcher runs in ours.
"""

from __future__ import annotations

import asyncio
import subprocess
import time

from test_peer_states import LINUX, NS_PREFIX, STACK, Recorder, in_netns, run_python

from ustack.linux.lab import Netns, netns
from ustack.linux.peer_states import FOREIGN_COUNTER, PeerStateWatcher

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
srv = socket.create_server((stack, 0))
closed = socket.socket()
closed.bind((stack, 0))  # a port without a listener
for i in range(count):
    c = socket.socket()
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


def add_addresses(ns: Netns) -> None:
    for address in (LINUX, STACK):
        subprocess.run(["ip", "-n", ns.name, "addr", "add", f"{address}/32", "dev", "lo"],
                       check=True)  # fmt: skip


def test_only_our_namespace_is_reported_even_microsecond_sockets() -> None:
    """Every change of each of our 102 sockets is reported, those gone
    before their first change is read too; none of theirs is, each counted."""
    recorder = Recorder()
    with netns(NS_PREFIX) as pns, netns(NS_PREFIX, "other") as other:
        add_addresses(pns)
        add_addresses(other)

        async def main() -> int:
            loop = asyncio.get_running_loop()
            watcher = PeerStateWatcher(STACK, recorder, lambda *_: None, loop)
            watcher.start()
            try:
                ours, theirs = await asyncio.gather(
                    asyncio.to_thread(run_python, pns, BURST, LINUX, STACK,
                                      str(OUR_PORTS), str(CONNECTIONS)),
                    asyncio.to_thread(run_python, other, BURST, LINUX, STACK,
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
