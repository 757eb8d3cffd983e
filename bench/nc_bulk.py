"""Bulk at MTU 1500 with nc, each way, ustack beside the kernel in the same run.

Run as root from the repository, with the venv's Python:
    python bench/nc_bulk.py                 # 1 GB each way, 3 rounds
    python bench/nc_bulk.py --mb 200 --rounds 1
    python bench/nc_bulk.py --tree /tmp/old --tree .   # two versions beside the kernel

Issue 18's MTU 1500 target is the kernel's own nc figure each way. Two
ways, each timed from the Linux client's start to its exit:

- Linux -> server: `head -c N /dev/zero | nc -N SERVER 9` into ustack's
  discard service, and into an `nc -l` that writes to /dev/null in a kernel
  namespace across a veth pair;
- server -> Linux: `printf 'GET /bytes/N HTTP/1.0...' | nc -N SERVER 80 >
  /dev/null` taking ustack's HTTP /bytes/N (the head's ~100 bytes counted
  as nothing), and `nc -d SERVER PORT > /dev/null` taking what a kernel
  `nc -l -N` fed by `head -c N /dev/zero` sends.

ustack runs on its defaults (MTU 1500, offloads on) in a namespace of its
own; the kernel's two namespaces are joined by a veth pair at MTU 1500. The
targets take turns, round by round. MB/s here are 10^6 bytes per second.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from setups import BENCH  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import DISCARD  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import KERNEL_SERVER  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import MB  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import USTACK_STACK  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import checkout  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import kernel_pair  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import parse_as_root  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import ustack_from_tree  # bench/setups.py: scripts here run as python bench/NAME.py

from ustack.linux.lab import Netns
from ustack.linux.lab import stop_process
from ustack.linux.lab import stoppable

NS_PREFIX = "ustack-n"
KERNEL_PORT = 9000


def timed(ns: Netns, shell: str, timeout: float) -> float:
    """Seconds `shell` took in `ns`; it must exit 0."""
    start = time.perf_counter()
    subprocess.run(ns.command("sh", "-c", shell), check=True, timeout=timeout)
    return time.perf_counter() - start


def ustack_rounds(ns: Netns, size: int, timeout: float) -> tuple[float, float]:
    to_server = timed(ns, f"head -c {size} /dev/zero | nc -N {USTACK_STACK} {DISCARD}", timeout)
    get = f"printf 'GET /bytes/{size} HTTP/1.0\\r\\n\\r\\n'"
    from_server = timed(ns, f"{get} | nc -N {USTACK_STACK} 80 > /dev/null", timeout)
    return to_server, from_server


def kernel_rounds(client: Netns, server: Netns, size: int, timeout: float) -> tuple[float, float]:
    def with_listener(listener: str, client_side: str) -> float:
        process = subprocess.Popen(server.command("sh", "-c", listener))
        try:
            deadline = time.monotonic() + 5
            while not subprocess.run(
                server.command("ss", "-Htln", f"sport = :{KERNEL_PORT}"),
                capture_output=True, text=True, check=True,
            ).stdout.strip():  # fmt: skip
                if time.monotonic() > deadline:
                    raise SystemExit(f"nc -l is not listening on {KERNEL_PORT} after 5 s")
                time.sleep(0.01)
            seconds = timed(client, client_side, timeout)
            process.wait(timeout=timeout)  # (it ends with the transfer)
            return seconds
        finally:
            stop_process(process)

    to_server = with_listener(
        f"nc -l {KERNEL_SERVER} {KERNEL_PORT} > /dev/null",
        f"head -c {size} /dev/zero | nc -N {KERNEL_SERVER} {KERNEL_PORT}",
    )
    from_server = with_listener(
        f"head -c {size} /dev/zero | nc -N -l {KERNEL_SERVER} {KERNEL_PORT}",
        f"nc -d {KERNEL_SERVER} {KERNEL_PORT} > /dev/null",
    )
    return to_server, from_server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=1000, help="MB per transfer")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120, help="per transfer (s)")
    parser.add_argument(
        "--tree", type=checkout, action="append", help="run ustack from this checkout (repeatable)"
    )
    args = parse_as_root(parser)
    size = args.mb * MB
    rates: dict[str, list[float]] = {}
    with ExitStack() as lab:
        workdir = Path(lab.enter_context(tempfile.TemporaryDirectory(prefix="nc-bulk-")))
        trees = args.tree or [BENCH.parent]
        ours = {
            f"ustack {tree.resolve().name}": ustack_from_tree(
                lab, workdir, NS_PREFIX, tree, i, "discard,http"
            )[0]
            for i, tree in enumerate(trees)
        }
        client, server = kernel_pair(lab, NS_PREFIX, ("en0", "en1"))
        for _ in range(args.rounds):
            times = {label: ustack_rounds(ns, size, args.timeout) for label, ns in ours.items()}
            times["kernel"] = kernel_rounds(client, server, size, args.timeout)
            for label, (to_server, from_server) in times.items():
                rates.setdefault(f"Linux -> {label}", []).append(args.mb / to_server)
                rates.setdefault(f"{label} -> Linux", []).append(args.mb / from_server)
    print(f"nc, MTU 1500, {args.mb} MB per transfer, {args.rounds} rounds (MB/s)")
    for name, values in rates.items():
        cells = " ".join(f"{v:7.0f}" for v in values)
        print(f"{name:24} {cells}   median {statistics.median(values):.0f}")
    for label in ours:
        for way, mine, kernel in (
            ("Linux -> server", f"Linux -> {label}", "Linux -> kernel"),
            ("server -> Linux", f"{label} -> Linux", "kernel -> Linux"),
        ):
            ratio = statistics.median(rates[mine]) / statistics.median(rates[kernel])
            print(f"{way}: {label}/kernel {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(stoppable(main, "nc_bulk"))
