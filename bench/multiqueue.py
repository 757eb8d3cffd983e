"""`ustack serve --queues 1` vs `--queues 2` vs the kernel, and a model of more cores.

Run as root from the repository, with the venv's Python:
    python bench/multiqueue.py                 # 3 reps of each setup, alternated
    python bench/multiqueue.py --reps 5 --json out.json
    python bench/multiqueue.py --model-only    # the model from the figures in --json FILE

Three setups, each started fresh in its own namespaces for every rep, in a
rotating order (q1 q2 kernel, q2 kernel q1, kernel q1 q2, ...) so that what
else the machine runs falls on all of them alike:
  q1, q2   `ustack serve --queues 1|2 --services discard,http` (bench/run.py's
           setup: clients in the daemon's namespace, over its TUN);
  kernel   bench/kernel_server.py (the same Python services on kernel sockets)
           behind a veth pair, clients in the other namespace.
Rows: `ab -c 50` (HTTP/1.0, a connection per request), connect+close from
--loops parallel bench/client.py loops, and a bulk download by --streams
parallel curl GETs of /bytes/N. For each: the rate, the server's CPU per
connection (or per MB) from /proc/PID/schedstat summed over its processes
(the parent and each worker), each worker's share, and how busy the whole
machine was (/proc/stat; 200% = both cores). CPU per connection is the
steady figure on a shared machine; rates follow whatever else runs.

The model (docs/performance.md, "Beyond one core") takes the medians: a
worker's CPU per connection at 1 and 2 queues gives the contention term, the
parent's CPU the serial one, and projects connections/s for 2..16 workers on
cores of their own (the clients elsewhere): Gunther's USL,
X(N) = N / c1 / (1 + sigma (N - 1) + kappa N (N - 1)).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import ExitStack
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ustack.linux import lab
from ustack.linux.control import request
from ustack.linux.lab import stoppable

BENCH = Path(__file__).resolve().parent
STACK = "198.18.0.2"
KERNEL_CLIENT, KERNEL_SERVER = "198.19.0.1", "198.19.0.2"
MB = 1_000_000
SETUPS = ("q1", "q2", "kernel")


@dataclass
class Server:
    label: str
    client_ns: lab.Netns
    address: str
    pids: Callable[[], list[int]]  # the server's processes: parent first, then workers


def schedstat(pid: int) -> float:
    """CPU seconds the scheduler ran the process's threads (exact, in ns)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def machine_busy() -> tuple[float, float]:
    """(busy, all) jiffies of every core, from /proc/stat's first line."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


@contextmanager
def ustack_server(queues: int, workdir: Path) -> Iterator[Server]:
    with lab.netns("ustack-mq") as ns:
        ns.run("sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535", check=True)
        private = workdir / f"q{queues}"
        private.mkdir(exist_ok=True)
        daemon = lab.UstackDaemon.start(
            ns, private, "--queues", str(queues), "--services", "discard,http",
            log_level="warning", msl=None, trace=False,
        )  # fmt: skip
        parent = daemon.process.pid
        workers: list[int] = []
        if queues > 1:
            workers = [w["pid"] for w in request(daemon.control, "stats")["workers"]]

        try:
            yield Server(f"q{queues}", ns, STACK, lambda: [parent, *workers])
        finally:
            daemon.stop(30)


@contextmanager
def kernel_server(workdir: Path) -> Iterator[Server]:
    with lab.netns("ustack-mqc") as client, lab.netns("ustack-mqs") as server:
        lab.veth_pair(
            client, server, ("mq0", "mq1"), (f"{KERNEL_CLIENT}/24", f"{KERNEL_SERVER}/24")
        )
        client.run("sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535", check=True)
        script = BENCH / "kernel_server.py"
        process = lab.start_until_ready(
            lambda fd: server.command(sys.executable, str(script), "--address", KERNEL_SERVER,
                                      "--ready-fd", str(fd)),
            workdir / "kernel.log",
        )  # fmt: skip
        try:
            yield Server("kernel", client, KERNEL_SERVER, lambda: [process.pid])
        finally:
            lab.stop_process(process, 10)


def measured(server: Server, work: Callable[[], tuple[float, float]]) -> dict[str, Any]:
    """Run `work` (-> (units done, seconds)) and what the server's processes
    and the machine spent on it."""
    pids = server.pids()
    before = [schedstat(pid) for pid in pids]
    busy0, all0 = machine_busy()
    units, seconds = work()
    busy1, all1 = machine_busy()
    spent = [schedstat(pid) - b for pid, b in zip(pids, before, strict=True)]
    cores = os.cpu_count() or 1
    return {
        "rate": units / seconds,
        "cpu_us": sum(spent) / units * 1e6,  # per unit: a connection, or an MB
        "parts_us": [s / units * 1e6 for s in spent],  # parent (or the one), then workers
        "machine_pct": 100 * cores * (busy1 - busy0) / max(all1 - all0, 1),
    }


def ab(server: Server, requests: int) -> tuple[float, float]:
    out = server.client_ns.run(
        "ab", "-q", "-r", "-s", "10", "-n", str(requests), "-c", "50",
        f"http://{server.address}/", timeout=300, check=True,
    ).stdout.decode()  # fmt: skip
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    rate = re.search(r"Requests per second:\s+([\d.]+)", out)
    if not rate or not failed or int(failed.group(1)) > requests // 100:
        raise RuntimeError(f"{server.label}: ab failed: {out[-400:]}")
    return requests, requests / float(rate.group(1))


def parallel(server: Server, argvs: list[list[str]]) -> tuple[list[str], float]:
    start = time.perf_counter()
    procs = [
        subprocess.Popen(server.client_ns.command(*argv), stdout=subprocess.PIPE) for argv in argvs
    ]
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    seconds = time.perf_counter() - start
    if any(p.returncode for p in procs):
        raise RuntimeError(f"{server.label}: {argvs[0][:3]} failed: {outs}")
    return outs, seconds


def connects(server: Server, total: int, loops: int) -> tuple[float, float]:
    client = [sys.executable, str(BENCH / "client.py"), "connect", server.address, "9"]
    outs, seconds = parallel(server, [[*client, str(total // loops)] for _ in range(loops)])
    return sum(json.loads(out)["count"] for out in outs), seconds


def bulk(server: Server, size: int, streams: int) -> tuple[float, float]:
    url = f"http://{server.address}/bytes/{size}"
    curl = ["curl", "-sS", "-m", "120", "-o", "/dev/null", "-w", "%{size_download}", url]
    outs, seconds = parallel(server, [curl] * streams)
    return sum(int(out) for out in outs) / MB, seconds


def run_setup(label: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with ExitStack() as stack:
        if label == "kernel":
            server = stack.enter_context(kernel_server(workdir))
        else:
            server = stack.enter_context(ustack_server(int(label[1:]), workdir))
        ab(server, 200)  # warm-up
        return {
            "ab50": measured(server, lambda: ab(server, args.requests)),
            "connect": measured(server, lambda: connects(server, args.connects, args.loops)),
            "bulk": measured(server, lambda: bulk(server, args.bulk_mb * MB, args.streams)),
        }


def span(values: list[float], digits: int = 0) -> str:
    low, high = min(values), max(values)
    return f"{low:.{digits}f}-{high:.{digits}f}" if len(values) > 1 else f"{low:.{digits}f}"


def report(results: dict[str, list[dict[str, Any]]]) -> None:
    units = {"ab50": "req/s", "connect": "conn/s", "bulk": "MB/s"}
    print(f"\n{'row':9} {'setup':7} {'rate':>15} {'server CPU us/unit':>20} {'machine %':>11}")
    for row, unit in units.items():
        for label in SETUPS:
            reps = [rep[row] for rep in results.get(label, [])]
            if not reps:
                continue
            rates = [r["rate"] for r in reps]
            cpu = [r["cpu_us"] for r in reps]
            busy = [r["machine_pct"] for r in reps]
            print(
                f"{row:9} {label:7} {span(rates):>9} {unit:5} {span(cpu, 1):>20} {span(busy):>11}"
            )
    for label in ("q1", "q2"):
        for row in units:
            parts = [[round(p, 1) for p in rep[row]["parts_us"]] for rep in results.get(label, [])]
            print(f"parts {label} {row}: {parts}")


# ---- the model -------------------------------------------------------------------------------


def model(results: dict[str, list[dict[str, Any]]], row: str = "ab50") -> dict[str, Any]:
    """USL from CPU per connection: c1, a worker's at 1 queue; at 2 queues
    the workers' cost per connection c2 = c1 (1 + kappa * 2) (each worker's
    cost grows with the number of its peers it contends with: kappa, from the
    kernel's shared device state, caches), and the parent's share p the
    serial part (sigma = p / c1). Connections/s for N workers, each on a core
    of its own: N / (c1 (1 + sigma (N - 1) + kappa N (N - 1)))."""
    med = statistics.median
    c1 = med([rep[row]["cpu_us"] for rep in results["q1"]]) / 1e6
    workers2 = med([sum(rep[row]["parts_us"][1:]) for rep in results["q2"]]) / 1e6
    parent2 = med([rep[row]["parts_us"][0] for rep in results["q2"]]) / 1e6
    kappa = max((workers2 / c1 - 1) / 2, 0.0)
    sigma = parent2 / c1
    rate1 = med([rep[row]["rate"] for rep in results["q1"]])
    rate2 = med([rep[row]["rate"] for rep in results["q2"]])
    projected = {
        n: round(n / (c1 * (1 + sigma * (n - 1) + kappa * n * (n - 1)))) for n in (1, 2, 4, 8, 16)
    }
    return {
        "row": row,
        "c1_us": round(c1 * 1e6, 1),
        "c2_workers_us": round(workers2 * 1e6, 1),
        "parent_us": round(parent2 * 1e6, 2),
        "sigma": round(sigma, 4),
        "kappa": round(kappa, 4),
        "measured_rate_q1": round(rate1),
        "measured_rate_q2": round(rate2),
        "measured_speedup": round(rate2 / rate1, 2),
        "cpu_bound_rate_q1": round(1 / c1),
        "projected": projected,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000, help="ab -n (-c 50)")
    parser.add_argument("--connects", type=int, default=2000, help="connect+close in all")
    parser.add_argument("--loops", type=int, default=4, help="parallel connect loops")
    parser.add_argument("--bulk-mb", type=int, default=50, help="MB per download stream")
    parser.add_argument("--streams", type=int, default=4, help="parallel curl downloads")
    parser.add_argument("--json", type=Path, help="write every rep here (or read: --model-only)")
    parser.add_argument("--model-only", action="store_true")
    args = parser.parse_args()
    if args.model_only:
        if args.json is None:
            parser.error("--model-only reads --json FILE")
        try:
            _report(json.loads(args.json.read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            parser.error(f"--json {args.json}: not a run's results ({type(exc).__name__}: {exc})")
        return 0
    else:
        if os.geteuid() != 0:
            parser.error("needs root (network namespaces)")
        lab.remove_stale_namespaces()
        results = {label: [] for label in SETUPS}
        with tempfile.TemporaryDirectory(prefix="mq-bench-") as workdir:
            for rep in range(args.reps):
                order = SETUPS[rep % 3 :] + SETUPS[: rep % 3]
                for label in order:
                    print(f"rep {rep + 1}/{args.reps}: {label}", file=sys.stderr, flush=True)
                    results[label].append(run_setup(label, args, Path(workdir)))
        if args.json is not None:
            args.json.write_text(json.dumps(results, indent=1))
    _report(results)
    return 0


def _report(results: dict[str, list[dict[str, Any]]]) -> None:
    report(results)
    for row in ("ab50", "connect"):
        print(json.dumps(model(results, row)))


if __name__ == "__main__":
    sys.exit(stoppable(main, "multiqueue"))
