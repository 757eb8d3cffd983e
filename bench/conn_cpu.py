"""Daemon CPU per connection: the connection-rate rows of bench/run.py, alone.

Run as root from the repository, with the venv's Python:
    python bench/conn_cpu.py                          # this checkout, 3 reps
    python bench/conn_cpu.py --tree /tmp/old --reps 4 # another checkout's ustack/

The daemon (`ustack serve`, services discard and http) runs in a network
namespace of ustack.linux.lab, removed at the end; the clients run beside it, as in
bench/run.py: `bench/client.py connect` (connect, our FIN, wait for the
server's FIN, close), then `ab -n N -c 1` and `ab -n N -c 50` (HTTP/1.0, a new
connection per request). For each row it prints the rate and the daemon's CPU
per connection, from /proc/PID/schedstat (the nanoseconds the scheduler ran
it: exact, where the ticks of /proc/PID/stat move in 10 ms steps) before and
after; the kernel's share (sys) from /proc/PID/stat. CPU per connection is the
steadier figure on a busy machine: rates follow what else runs, CPU much less.
Rows run in order on one daemon, so connections in TIME_WAIT pile up as in
bench/run.py. `--tree DIR` runs the daemon from DIR (put first on PYTHONPATH),
to compare two versions in the same conditions: alternate them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from setups import BENCH  # bench/*.py: run as python bench/NAME.py
from setups import check_serve_args  # bench/setups.py
from setups import parse_as_root  # bench/*.py: run as python bench/NAME.py
from setups import rows_parser  # bench/*.py: run as python bench/NAME.py

from ustack.linux.lab import UstackDaemon
from ustack.linux.lab import netns
from ustack.linux.lab import process_costs
from ustack.linux.lab import stoppable

STACK, LINUX = "198.18.0.2", "198.18.0.1"


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(all CPU, of which sys) of the process's main thread, in seconds."""
    costs = process_costs(pid)
    return costs.cpu_ns / 1e9, costs.system_s


def in_ns(ns: str, *argv: str, timeout: float = 600) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, timeout=timeout, check=True
    )
    return done.stdout.decode()


def main() -> int:
    parser = rows_parser(__doc__, "connect,ab1,ab50", "run the daemon's ustack from this directory")
    parser.add_argument("--connects", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=5000, help="ab -n")
    parser.add_argument("--ustack-arg", action="append", default=[], help="passed to serve")
    args = parse_as_root(parser)
    check_serve_args(parser, args.ustack_arg)
    with tempfile.TemporaryDirectory(prefix="conn-cpu-") as workdir, netns("ustack-c") as lab:
        ns = lab.name
        in_ns(ns, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535")
        env, cwd = dict(os.environ), None
        if args.tree is not None:
            # -m runs ustack from the working directory: the tree's
            cwd = args.tree.resolve()
            env["PYTHONPATH"] = str(cwd)
        daemon = UstackDaemon.start(
            lab, Path(workdir), "--services", "discard,http", *args.ustack_arg,
            log_level="warning", msl=None, trace=False, control=False, env=env, cwd=cwd,
        )  # fmt: skip
        try:
            measure(args, ns, daemon.process.pid)
        finally:
            daemon.stop(30)
    return 0


def measure(args: argparse.Namespace, ns: str, pid: int) -> None:
    client = [sys.executable, str(BENCH / "client.py")]
    in_ns(ns, *client, "connect", STACK, "9", "300")  # warm-up
    results: dict[str, list[float]] = {}
    for _ in range(args.reps):
        for row in args.rows.split(","):
            before = cpu_seconds(pid)
            if row == "connect":
                out = json.loads(in_ns(ns, *client, "connect", STACK, "9", str(args.connects)))
                count, rate = out["count"], out["rate"]
            else:
                concurrency = row.removeprefix("ab")
                text = in_ns(ns, "ab", "-q", "-r", "-s", "10", "-n", str(args.requests),
                             "-c", concurrency, f"http://{STACK}/")  # fmt: skip
                found = re.search(r"Requests per second:\s+([\d.]+)", text)
                count, rate = args.requests, float(found.group(1)) if found else 0.0
            after = cpu_seconds(pid)
            results.setdefault(f"{row} /s", []).append(round(rate))
            results.setdefault(f"{row} us", []).append(
                round((after[0] - before[0]) / count * 1e6, 1)
            )
            results.setdefault(f"{row} sys us", []).append(
                round((after[1] - before[1]) / count * 1e6, 1)
            )
    for name, values in results.items():
        print(f"{name:16} {' '.join(f'{v:8}' for v in values)}")
    print(json.dumps(results))


if __name__ == "__main__":
    sys.exit(stoppable(main, "conn_cpu"))
