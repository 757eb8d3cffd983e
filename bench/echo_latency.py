"""Echo round trips, ustack beside the kernel, with what each costs the server.

Run as root from the repository, with the venv's Python:
    python bench/echo_latency.py                              # this checkout and the kernel
    python bench/echo_latency.py --tree /tmp/old --tree .     # two versions, alternated

The client is bench/client.py pingpong (1 byte, TCP_NODELAY, send then wait
for the byte back), as bench/run.py's echo rows. Each --tree runs `ustack
serve` (services echo) from that checkout on a TUN in a namespace of its own;
the kernel side is bench/kernel_server.py (the same echo handler on kernel
sockets) over a veth pair. The targets take turns round by round, so that
background load hits them alike. Per round and target it prints p50 and p99
(us), and per exchange the server's CPU (us, /proc/PID/schedstat; of which
in the kernel: sys_us, from /proc/PID/stat's ticks, coarse), its
voluntary context switches (times it slept in epoll_wait and was woken), and
its event loop's iterations, sleeping selects and callbacks run (counted by
bench/loop_counts.py, through which both servers run). The counts are exact
but for the connection's set-up and close, spread over the exchanges.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from setups import BENCH  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import ECHO  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import KERNEL_SERVER  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import USTACK_STACK  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import checkout  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import kernel_over_veth  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import ustack_from_tree  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import versions_and_kernel  # bench/setups.py: scripts here run as python bench/NAME.py

from ustack.linux.lab import Netns
from ustack.linux.lab import process_costs
from ustack.linux.lab import stoppable

NS_PREFIX = "ustack-e"


@dataclass
class Target:
    label: str
    client_ns: str
    address: str
    process: subprocess.Popen[bytes]
    counts_file: Path
    rows: dict[str, list[float]] = field(default_factory=dict)

    def server_state(self) -> dict[str, float]:
        pid = self.process.pid
        costs = process_costs(pid)
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        switches = next(int(line.split()[1]) for line in status if line.startswith("voluntary"))
        lines = self.counts_file.read_text().splitlines() if self.counts_file.exists() else []
        self.process.send_signal(signal.SIGUSR1)
        for _ in range(200):  # the server writes a line when it takes the signal
            time.sleep(0.01)
            now = self.counts_file.read_text().splitlines() if self.counts_file.exists() else []
            if len(now) > len(lines):
                counts = json.loads(now[-1])
                return {
                    "cpu_us": costs.cpu_ns / 1e3, "sys_us": costs.system_s * 1e6,
                    "switches": switches, **counts,
                }  # fmt: skip
        raise RuntimeError(f"{self.label}: no loop counts from pid {pid}")


def start_ustack(lab: ExitStack, workdir: Path, tree: Path, index: int) -> Target:
    counts = workdir / f"ustack-{index}-loop-counts.jsonl"
    ns, process = ustack_from_tree(
        lab, workdir, NS_PREFIX, tree, index, "echo", program=(str(BENCH / "loop_counts.py"),),
        env={"USTACK_LOOP_COUNTS": str(counts)},
    )  # fmt: skip
    return Target(f"ustack {tree.resolve().name}", ns.name, USTACK_STACK, process, counts)


def start_kernel(lab: ExitStack, workdir: Path) -> Target:
    counts = workdir / "kernel-loop-counts.jsonl"
    program = (sys.executable, str(BENCH / "loop_counts.py"), str(BENCH / "kernel_server.py"))
    env = {"USTACK_LOOP_COUNTS": str(counts)}
    client, _, process = kernel_over_veth(lab, workdir, NS_PREFIX, ("ek0", "ek1"), program, env)
    return Target("kernel", client.name, KERNEL_SERVER, process, counts)


def measure(target: Target, pings: int, warmup: int) -> None:
    before = target.server_state()
    argv = Netns(target.client_ns).command(
        sys.executable, str(BENCH / "client.py"), "pingpong", target.address, str(ECHO), str(pings),
        "--warmup", str(warmup), "--deadline", "120",
    )  # fmt: skip
    out = json.loads(subprocess.run(argv, capture_output=True, check=True, timeout=180).stdout)
    after = target.server_state()
    exchanges = out["count"] + warmup
    row = {"p50": out["p50_us"], "p99": out["p99_us"]}
    for name in ("cpu_us", "sys_us", "switches", "iterations", "sleeps", "callbacks"):
        row[name] = (after[name] - before[name]) / exchanges
    for name, value in row.items():
        target.rows.setdefault(name, []).append(value)
    cells = " ".join(f"{name} {value:7.2f}" for name, value in row.items())
    print(f"{target.label:28} {cells}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=checkout, action="append", help="a checkout (repeatable)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pings", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--no-kernel", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces)")
    with versions_and_kernel(
        "echo-latency", args.tree or [], not args.no_kernel, start_ustack, start_kernel
    ) as targets:
        for _ in range(args.rounds):
            for target in targets:
                measure(target, args.pings, args.warmup)
        print("\nmedian [min-max] of the rounds")
        for target in targets:
            cells = " ".join(
                f"{name} {statistics.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]"
                for name, v in target.rows.items()
            )
            print(f"{target.label:28} {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(stoppable(main, "echo_latency"))
