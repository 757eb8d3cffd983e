"""UDP echo, ustack beside the kernel: round trips of one datagram at a time
(p50/p99 latency, 1-byte and 4,000-byte datagrams, the latter in fragments
both ways) from the same Python client, against ustack's UDP echo (port 7,
on its TUN) and against a kernel UDP echo server (a Python loop on a plain
socket, in a second namespace over a veth pair). As root:

    python bench/udp_echo.py [--count 3000]

Everything runs in namespaces it makes and removes (ustack.linux.lab).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon
from ustack.linux.lab import netns
from ustack.linux.lab import stoppable
from ustack.linux.lab import veth_pair

LINUX_CLIENT, LINUX_SERVER = "198.18.2.1", "198.18.2.2"

CLIENT = r"""
import json, socket, sys, time
host, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
out = {}
for size in (1, 4000):
    data = bytes(size)
    times = []
    lost = 0
    for _ in range(count):
        start = time.perf_counter()
        s.sendto(data, (host, 7))
        try:
            back = s.recv(65536)
        except TimeoutError:
            lost += 1
            continue
        times.append(time.perf_counter() - start)
        assert back == data
    times.sort()
    p50, p99 = times[len(times) // 2], times[int(len(times) * 0.99)]
    out[size] = {"p50_us": round(p50 * 1e6), "p99_us": round(p99 * 1e6), "lost": lost}
print(json.dumps(out))
"""

KERNEL_ECHO = r"""
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7))
os.write(int(sys.argv[1]), b"ready\n")
while True:
    data, addr = s.recvfrom(65536)
    s.sendto(data, addr)
"""


def kernel_side(count: int) -> dict[str, dict[str, int]]:
    with netns(tag="client") as client, netns(tag="server") as server:
        veth_pair(
            client, server, ("veth-c", "veth-s"), (f"{LINUX_CLIENT}/24", f"{LINUX_SERVER}/24")
        )
        read, write = os.pipe()
        echo = subprocess.Popen(
            server.command(sys.executable, "-c", KERNEL_ECHO, str(write)), pass_fds=(write,)
        )
        os.close(write)
        try:
            assert os.read(read, 16) == b"ready\n"
            return _client(client, LINUX_SERVER, count)
        finally:
            os.close(read)
            echo.terminate()
            echo.wait(10)


def ustack_side(count: int) -> dict[str, dict[str, int]]:
    with (
        netns() as ns,
        tempfile.TemporaryDirectory() as workdir,
        UstackDaemon.start(ns, Path(workdir), trace=False, log_level="warning"),
    ):
        return _client(ns, "198.18.0.2", count)


def _client(ns: Netns, host: str, count: int) -> dict[str, dict[str, int]]:
    result: dict[str, dict[str, int]] = json.loads(
        ns.python(CLIENT, host, str(count), timeout=600).stdout
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000, help="round trips per size")
    args = parser.parse_args()
    ours = ustack_side(args.count)
    kernel = kernel_side(args.count)
    print(f"{'UDP echo round trip':<28} {'ustack':>16} {'kernel':>16}")
    for size in ("1", "4000"):
        for name in ("p50_us", "p99_us"):
            label = f"{size} B {name.replace('_us', '')} (us)"
            print(f"{label:<28} {ours[size][name]:>16} {kernel[size][name]:>16}")
    print(f"lost: ustack {ours['1']['lost'] + ours['4000']['lost']}, kernel "
          f"{kernel['1']['lost'] + kernel['4000']['lost']}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(stoppable(main, "udp_echo"))
