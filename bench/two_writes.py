"""Two small writes and Nagle against delayed ACK: ustack beside the kernel.

Run as root from the repository, with the venv's Python:
    python bench/two_writes.py                               # this checkout and the kernel
    python bench/two_writes.py --tree /tmp/old --tree .      # two versions, side by side
    python bench/two_writes.py --pcap /tmp/pcaps             # and each run's packets

A Linux client with Nagle on (the default) that writes a small piece and then
another, with no answer in between, sends the second only once the first is
acknowledged (RFC 896, Linux's tcp_nagle_check). So each exchange waits for
the server's ACK of the first piece: a Linux server sends it when its
application reads the piece (tcp_cleanup_rbuf, a short "pushed" segment on a
connection that is not interactive), or at once while in quickack mode; a
server that only has its delayed-ACK timer makes the client wait for it
(40 ms). Issue 18 item 5.

Three patterns, N exchanges each, on the server's own services:

- discard: one connection to the discard port (9); write(20 bytes),
  write(20 bytes), then wait until the kernel says both are acknowledged
  (SIOCOUTQ at 0). Nothing ever answers.
- http: one keep-alive connection to the HTTP port (80); POST /upload with
  the head in one write and a 40-byte body in a second, as a client that
  writes a request's head and body apart sends them; then
  read the answer. The server answers once it has the body, so the
  connection is interactive (Linux's pingpong mode).
- http-new: the same request on a new connection each time.

Each ustack target (--tree, default this checkout) runs `ustack serve` on a
TUN in a namespace of its own; the kernel target is bench/kernel_server.py
(the same services on kernel sockets) over a veth pair. The targets take
turns pattern by pattern. Per target and pattern: the median, p90 and
maximum of the exchange times (ms) and the share of exchanges over 20 ms
(half the 40 ms delayed-ACK timer).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import termios
import time
from contextlib import ExitStack
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from setups import BENCH  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import DISCARD  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import KERNEL_SERVER  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import USTACK_STACK  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import checkout  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import kernel_over_veth  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import ustack_from_tree  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import versions_and_kernel  # bench/setups.py: scripts here run as python bench/NAME.py

from ustack.cli.args import folder_to_write
from ustack.linux.lab import Netns
from ustack.linux.lab import stop_process
from ustack.linux.lab import stoppable

NS_PREFIX = "ustack-w"
HTTP = 80
PATTERNS = ("discard", "http", "http-new")
SLOW_MS = 20.0  # half the delayed-ACK timer: an exchange over it waited for the timer
SOCKET_TIMEOUT = 5.0
PIECE = b"x" * 20
BODY = b"y" * 40


# ---- the client (runs in the client's namespace: python bench/two_writes.py client ...) --------


def unacknowledged(sock: socket.socket) -> int:
    """Bytes sent and not yet acknowledged (SIOCOUTQ; TIOCOUTQ's number)."""
    out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    value: int = struct.unpack("i", out)[0]
    return value


def discard_exchanges(host: str, count: int) -> list[float]:
    times = []
    with socket.create_connection((host, DISCARD), timeout=SOCKET_TIMEOUT) as sock:
        for _ in range(count):
            start = time.perf_counter()
            sock.sendall(PIECE)
            sock.sendall(PIECE)
            deadline = start + SOCKET_TIMEOUT
            while unacknowledged(sock):
                if time.perf_counter() > deadline:
                    raise SystemExit("discard: the pieces were not acknowledged")
                time.sleep(0.0001)
            times.append((time.perf_counter() - start) * 1000)
    return times


def read_answer(sock: socket.socket) -> None:
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("http: the server closed before answering")
        got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"http: {head[:40]!r}")
    fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:])
    length = int(fields[b"Content-Length"])
    while len(body) < length:
        body += sock.recv(4096)


def http_exchanges(host: str, count: int, new_connections: bool) -> list[float]:
    head = (
        f"POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode()
    times = []
    sock: socket.socket | None = None
    try:
        for _ in range(count):
            if sock is None or new_connections:
                if sock is not None:
                    sock.close()
                sock = socket.create_connection((host, HTTP), timeout=SOCKET_TIMEOUT)
            start = time.perf_counter()
            sock.sendall(head)
            sock.sendall(BODY)
            read_answer(sock)
            times.append((time.perf_counter() - start) * 1000)
    finally:
        if sock is not None:
            sock.close()
    return times


def client(pattern: str, host: str, count: int) -> None:
    if pattern == "discard":
        times = discard_exchanges(host, count)
    else:
        times = http_exchanges(host, count, new_connections=pattern == "http-new")
    print(json.dumps(times))


# ---- the targets ---------------------------------------------------------------------------


@dataclass
class Target:
    label: str
    client_ns: str
    server_ns: str
    device: str  # the server side's interface, for --pcap
    address: str
    times: dict[str, list[float]] = field(default_factory=dict)


def start_ustack(lab: ExitStack, workdir: Path, tree: Path, index: int) -> Target:
    ns, _ = ustack_from_tree(lab, workdir, NS_PREFIX, tree, index, "discard,http")
    return Target(f"ustack {tree.resolve().name}", ns.name, ns.name, "tun0", USTACK_STACK)


def start_kernel(lab: ExitStack, workdir: Path) -> Target:
    program = (sys.executable, str(BENCH / "kernel_server.py"))
    client, server, _ = kernel_over_veth(lab, workdir, NS_PREFIX, ("ew0", "ew1"), program)
    return Target("kernel", client.name, server.name, "ew1", KERNEL_SERVER)


def measure(target: Target, pattern: str, count: int, pcap: Path | None, index: int) -> None:
    capture = None
    if pcap is not None:
        name = f"{index}-{target.label.replace(' ', '-')}-{pattern}.pcap"
        capture = subprocess.Popen(
            Netns(target.server_ns).command(
                "tshark", "-q", "-i", target.device, "-f", "tcp", "-w", str(pcap / name)
            ),
            stdout=subprocess.DEVNULL,
            stderr=open(pcap / f"{name}.log", "wb"),  # noqa: SIM115 (closed with the process)
        )
        time.sleep(1.5)  # (tshark starts capturing a while after it starts)
    try:
        argv = Netns(target.client_ns).command(
            sys.executable, str(Path(__file__).resolve()), "client", pattern, target.address,
            str(count),
        )  # fmt: skip
        out = subprocess.run(argv, capture_output=True, check=True, timeout=count * 2 + 60)
    finally:
        if capture is not None:
            time.sleep(0.3)
            stop_process(capture)
    times: list[float] = json.loads(out.stdout)
    target.times.setdefault(pattern, []).extend(times)
    print(f"{target.label:24} {pattern:9} {summary(times)}", flush=True)


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * len(ordered)) - 1)]
    slow = sum(1 for t in ordered if t > SLOW_MS)
    return (
        f"n {len(ordered):3}  median {statistics.median(ordered):7.2f} ms  p90 {p90:7.2f}"
        f"  max {ordered[-1]:7.2f}  over {SLOW_MS:.0f} ms {slow}/{len(ordered)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    run_client = sub.add_parser("client", help="(internal) one pattern's client, JSON out")
    run_client.add_argument("pattern", choices=PATTERNS)
    run_client.add_argument("host")
    run_client.add_argument("count", type=int)
    parser.add_argument("--tree", type=checkout, action="append", help="a checkout (repeatable)")
    parser.add_argument("--exchanges", type=int, default=20, help="per pattern and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pattern", choices=PATTERNS, action="append", help="default: all")
    parser.add_argument("--no-kernel", action="store_true")
    parser.add_argument(
        "--pcap", type=folder_to_write, help="a directory for each run's packets (tshark)"
    )
    args = parser.parse_args()
    if args.command == "client":
        client(args.pattern, args.host, args.count)
        return 0
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces)")
    if args.pcap is not None:
        args.pcap.mkdir(parents=True, exist_ok=True)
    patterns = args.pattern or list(PATTERNS)
    with versions_and_kernel(
        "two-writes", args.tree or [], not args.no_kernel, start_ustack, start_kernel
    ) as targets:
        for round_ in range(args.rounds):
            for pattern in patterns:
                for target in targets:
                    measure(target, pattern, args.exchanges, args.pcap, round_)
        print("\nall rounds")
        for pattern in patterns:
            for target in targets:
                print(f"{target.label:24} {pattern:9} {summary(target.times[pattern])}")
    return 0


if __name__ == "__main__":
    inside = sys.argv[1:2] == ["client"]  # (a pattern's client, in the namespace)
    sys.exit(main() if inside else stoppable(main, "two_writes"))
