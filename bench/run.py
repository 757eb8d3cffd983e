"""ustack against the Linux kernel's TCP, side by side, in one run.

Run (as root, from the repository, with the venv's Python):
    /tmp/venv/bin/python bench/run.py                  # the full run, about 2-3 minutes
    /tmp/venv/bin/python bench/run.py --quick          # a CI smoke, about 20-30 s
    /tmp/venv/bin/python bench/run.py --json out.json  # also write the table as JSON

Two setups, both in private network namespaces made here and removed at the
end (also on failure, SIGINT, SIGTERM; children get SIGTERM if this process dies):

  ustack   one namespace: `ustack serve` on its TUN (Linux 198.18.0.1 and
           2001:2::1, stack 198.18.0.2 and 2001:2::2); the clients run in the
           same namespace.
  kernel   two namespaces joined by a veth pair: the server (bench/kernel_server.py,
           ustack's own service handlers on kernel sockets through asyncio) at
           198.19.0.2 and 2001:2:1::2, the clients at 198.19.0.1 and 2001:2:1::1.

The bulk rows at MTU 1500 run over IPv4 and again over IPv6, in the same run.

The same client programs drive both: curl (download, upload), ab (HTTP rate),
bench/client.py (connect+close rate, 1-byte echo ping-pong, idle connections).
Rates are the best of --reps repetitions, latencies the median of the reps'
percentiles, the memory rows one measurement each; the two setups take turns
rep by rep, so that background load hits both alike. Retransmissions and drops
seen during each row are reported under the table. bench/README.md describes
every row.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import machine
import results
from measure import apache_bench  # bench/measure.py: scripts here run as python bench/NAME.py
from measure import connect_rate  # bench/measure.py: scripts here run as python bench/NAME.py
from measure import curl_download  # bench/measure.py: scripts here run as python bench/NAME.py
from measure import curl_upload  # bench/measure.py: scripts here run as python bench/NAME.py
from measure import echo_latency  # bench/measure.py: scripts here run as python bench/NAME.py
from measure import health  # bench/measure.py: scripts here run as python bench/NAME.py
from measure import idle_memory  # bench/measure.py: scripts here run as python bench/NAME.py
from measure import loss_snapshot  # bench/measure.py: scripts here run as python bench/NAME.py
from measure import send_rate  # bench/measure.py: scripts here run as python bench/NAME.py
from results import Row
from results import fmt
from results import format_table
from setups import BIG_MTU
from setups import KERNEL_SERVER6
from setups import MB
from setups import TOOLS
from setups import BenchError
from setups import Resources
from setups import Target
from setups import check_serve_args
from setups import failed
from setups import log_step
from setups import over_ipv6
from setups import set_kernel_mtu
from setups import start_kernel
from setups import start_ustack

from ustack.cli.args import folder_to_write
from ustack.linux.lab import STACK_ADDRESS6
from ustack.linux.lab import LabError
from ustack.linux.lab import remove_stale_namespaces
from ustack.linux.lab import stop_process

# ---- the run ------------------------------------------------------------------------------


@dataclass
class Settings:
    bulk_mb: int
    connects: int
    requests: int
    pings: int
    idle_conns: int
    reps: int
    concurrency: int
    transfer_timeout: int  # seconds one curl may take (a slower one reports what it moved)
    row_budget: int  # seconds one side may spend on one row before its reps are cut


# fmt: off
DEFAULTS = Settings(bulk_mb=200, connects=5000, requests=5000, pings=5000, idle_conns=2000,
                    reps=5, concurrency=50, transfer_timeout=30, row_budget=40)
QUICK = Settings(bulk_mb=20, connects=500, requests=500, pings=1000, idle_conns=300,
                 reps=2, concurrency=50, transfer_timeout=8, row_budget=8)
# fmt: on
SETTINGS_HELP = {  # the options, in --help's order
    "bulk_mb": "MB per download/upload",
    "connects": "connect+close count",
    "requests": "ab -n",
    "concurrency": "ab -c for the concurrent row",
    "pings": "echo ping-pongs",
    "idle_conns": "idle connections held",
    "reps": "repetitions, best reported",
    "transfer_timeout": "seconds one download/upload may take; a slower one reports the rate"
    " of what it moved",
    "row_budget": "seconds one side may spend on one row before its remaining reps are skipped",
}


@dataclass
class Rotation:
    """Runs each row's reps, the targets taking turns rep by rep, so that
    background load hits both alike. Records the loss counters that moved
    during each row, and cuts a target's reps once it has spent the row budget."""

    reps: int
    budget: float
    losses: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    slow: list[str] = field(default_factory=list)

    def tally(
        self, what: str, t: Target, before: dict[str, int], after: dict[str, int]
    ) -> dict[str, int]:
        """Add up the loss counters that moved between two snapshots."""
        moved = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
        for k, v in moved.items():
            tally = self.losses.setdefault(what, {}).setdefault(t.label, {})
            tally[k] = tally.get(k, 0) + v
        return moved

    def row(
        self,
        targets: Sequence[Target],
        row: Row,
        measure: Callable[[Target], float],
        what: str,
    ) -> None:
        self.rows([(targets, row, measure, what)])

    def rows(
        self, plan: Sequence[tuple[Sequence[Target], Row, Callable[[Target], float], str]]
    ) -> None:
        """Several rows whose reps interleave (IPv4's rep, then IPv6's, ...),
        so that they compare under the same background load."""
        spent = {(what, t.label): 0.0 for targets, _, _, what in plan for t in targets}
        before_row = {(what, t.label): len(row.of(t)) for targets, row, _, what in plan
                      for t in targets}  # fmt: skip
        for rep in range(self.reps):
            for targets, row, measure, what in plan:
                for t in targets:
                    self._rep(t, row, measure, what, rep, spent, before_row)
        for targets, _, _, _ in plan:
            for t in targets:
                t.alive()

    def _rep(
        self,
        t: Target,
        row: Row,
        measure: Callable[[Target], float],
        what: str,
        rep: int,
        spent: dict[tuple[str, str], float],
        before_row: dict[tuple[str, str], int],
    ) -> None:
        t.alive()
        key = (what, t.label)
        done = len(row.of(t)) - before_row[key]
        if done and spent[key] * (done + 1) / done > self.budget:  # one more: over
            if rep + 1 == self.reps:
                self.slow.append(
                    f"{what}: {t.label} stopped after {done} of {self.reps} reps "
                    f"({spent[key]:.0f} s; one more would pass the row budget, "
                    f"{self.budget:.0f} s)"
                )
            return
        start = time.monotonic()
        before = loss_snapshot(t)
        value = measure(t)
        after = loss_snapshot(t)
        spent[key] += time.monotonic() - start
        moved = self.tally(what, t, before, after)
        row.of(t).append(value)
        extra = f"  ({', '.join(f'{k} +{v}' for k, v in moved.items())})" if moved else ""
        log_step(f"  {what} rep {rep + 1}/{self.reps} {t.label}: {fmt(value)}{extra}")


# The rows also measured over IPv6 (unless --no-ipv6), each IPv6 rep right after
# its IPv4 one, on the same servers: the same background load (issue 15's bar:
# IPv6 within 10 % of IPv4; issue 18 item 8).
IPV6_TWINS = ("down1500", "up1500", "send1500", "connect", "ab1", "ab1fail", "abN", "abNfail",
              "p50", "p99")  # fmt: skip
ORDER = ("down1500", "up1500", "send1500", "down64k", "up64k", "send64k", "connect", "ab1",
         "ab1fail", "abN", "abNfail", "p50", "p99", "rss", "slab")  # fmt: skip


def family(t: Target) -> str:
    """The suffix of `t`'s rows: "v6" when reached over IPv6 ([2001:...])."""
    return "v6" if t.address.startswith("[") else ""


def benchmark(
    s: Settings, res: Resources, workdir: Path, ustack_args: Sequence[str] = (), ipv6: bool = True
) -> tuple[list[tuple[str, Row]], dict[str, Any]]:
    bulk = s.bulk_mb * MB
    rows = {
        "down1500": Row("download server->client, MTU 1500", "MB/s", "higher"),
        "up1500": Row("upload client->server, MTU 1500", "MB/s", "higher"),
        "down64k": Row(f"download server->client, MTU {BIG_MTU}", "MB/s", "higher"),
        "up64k": Row(f"upload client->server, MTU {BIG_MTU}", "MB/s", "higher"),
        "send1500": Row("send client->server discard, MTU 1500", "MB/s", "higher"),
        "send64k": Row(f"send client->server discard, MTU {BIG_MTU}", "MB/s", "higher"),
        "connect": Row("connect+close, discard port", "conn/s", "higher"),
        "ab1": Row("HTTP GET / ab -c 1", "req/s", "higher"),
        "ab1fail": Row("HTTP ab -c 1 failed, all reps", "count", "", how="sum"),
        "abN": Row(f"HTTP GET / ab -c {s.concurrency}", "req/s", "higher"),
        "abNfail": Row(f"HTTP ab -c {s.concurrency} failed, all reps", "count", "", how="sum"),
        "p50": Row("echo 1-byte ping-pong p50, median", "us", "lower", how="median"),
        "p99": Row("echo 1-byte ping-pong p99, median", "us", "lower", how="median"),
        "rss": Row("idle conn: server process RSS", "KiB/conn", "", how="one"),
        "slab": Row("idle conn: kernel Slab", "KiB/conn", "", how="one"),
    }
    if ipv6:
        for key in IPV6_TWINS:
            row = rows[key]
            head, sep, tail = row.metric.partition(", median")  # "..., IPv6, median"
            if not sep:
                head, sep, tail = row.metric.partition(", all reps")
            metric = f"{head}, IPv6{sep}{tail}"
            rows[key + "v6"] = Row(metric, row.unit, row.better, how=row.how)
    rotation = Rotation(s.reps, s.row_budget)
    notes: dict[str, Any] = {"ab_problems": [], "connect_errors": [], "memory": [], "health": {}}

    upload = workdir / "upload.bin"
    digest = hashlib.sha256()
    with open(upload, "wb") as stream:
        for offset in range(0, bulk, MB):
            chunk = os.urandom(min(MB, bulk - offset))
            digest.update(chunk)
            stream.write(chunk)
    hexdigest = digest.hexdigest()

    log_step("starting ustack (MTU 1500) and the kernel reference")
    ustack = start_ustack(res, workdir, 1500, ustack_args)
    kernel = start_kernel(res, workdir)
    targets = (ustack, kernel)
    targets6 = (over_ipv6(ustack, STACK_ADDRESS6), over_ipv6(kernel, KERNEL_SERVER6))

    def both(key: str, measure: Callable[[Target], float], what: str) -> None:
        plan = [(targets, rows[key], measure, what)]
        if ipv6:
            plan.append((targets6, rows[key + "v6"], measure, what.replace(" (", " IPv6 (", 1)))
        rotation.rows(plan)

    # Memory first, on fresh servers: later phases leave freed memory that would be reused.
    for t in targets:
        before = loss_snapshot(t)
        mem = idle_memory(t, s.idle_conns)
        time.sleep(1)  # the closes' stragglers
        rotation.tally(f"idle memory ({s.idle_conns} conns)", t, before, loss_snapshot(t))
        rows["rss"].of(t).append(mem.rss_kib_per_conn)
        rows["slab"].of(t).append(mem.slab_kib_per_conn)
        if mem.established is not None and mem.established < s.idle_conns:
            notes["memory"].append(f"ustack had {mem.established} ESTABLISHED of {s.idle_conns}")
        log_step(
            f"  idle memory {t.label}: {fmt(mem.rss_kib_per_conn)} KiB RSS, "
            f"{fmt(mem.slab_kib_per_conn)} KiB slab per connection"
        )

    def ping(t: Target) -> float:
        p50, p99 = echo_latency(t, s.pings)
        rows["p99" + family(t)].of(t).append(p99)
        return p50

    both("p50", ping, "echo p50 (us)")

    def connects(t: Target) -> float:
        rate, errors = connect_rate(t, s.connects)
        if errors:
            notes["connect_errors"].append({t.label + family(t): errors})
        return rate

    both("connect", connects, "connect+close (conn/s)")

    for key, conc in (("ab1", 1), ("abN", s.concurrency)):

        def ab(t: Target, conc: int = conc, key: str = key) -> float:
            result = apache_bench(t, s.requests, conc)
            rows[key + "fail" + family(t)].of(t).append(result.failed)
            if result.problems:
                notes["ab_problems"].append(
                    {"target": t.label + family(t), "c": conc, "problems": result.problems}
                )
            return result.rate

        both(key, ab, f"ab -c {conc} (req/s)")

    def download(t: Target) -> float:
        return curl_download(t, bulk, s.transfer_timeout, rotation.slow)

    def upload_(t: Target) -> float:
        return curl_upload(t, upload, bulk, hexdigest, s.transfer_timeout, rotation.slow)

    def send(t: Target) -> float:
        return send_rate(t, bulk, s.transfer_timeout, rotation.slow)

    both("down1500", download, "download MTU 1500 (MB/s)")
    both("up1500", upload_, "upload MTU 1500 (MB/s)")
    both("send1500", send, "send to discard MTU 1500 (MB/s)")
    for t in targets:
        notes["health"][f"{t.label} (MTU 1500 phase)"] = health(t)

    log_step(f"restarting ustack with --mtu {BIG_MTU}; kernel veth mtu {BIG_MTU}")
    stop_process(ustack.server)
    res.remove_namespace(ustack.client_ns)
    ustack = start_ustack(res, workdir, BIG_MTU, ustack_args)
    set_kernel_mtu(kernel, BIG_MTU)
    targets = (ustack, kernel)
    rotation.row(targets, rows["down64k"], download, f"download MTU {BIG_MTU} (MB/s)")
    rotation.row(targets, rows["up64k"], upload_, f"upload MTU {BIG_MTU} (MB/s)")
    rotation.row(targets, rows["send64k"], send, f"send to discard MTU {BIG_MTU} (MB/s)")
    notes["health"][f"ustack (MTU {BIG_MTU} phase)"] = health(ustack)
    upload.unlink()

    notes["losses"], notes["slow"] = rotation.losses, rotation.slow
    keys = [k for key in ORDER for k in (key, key + "v6") if k in rows]
    return [(k, rows[k]) for k in keys], notes


def preflight() -> None:
    if sys.platform != "linux":
        raise BenchError("Linux only")
    if os.geteuid() != 0:
        raise BenchError(
            "run as root: the benchmark makes network namespaces, a TUN and a veth pair"
        )
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        hint = {"curl": "curl", "ab": "apache2-utils", "ip": "iproute2", "ss": "iproute2"}
        packages = sorted({hint[m] for m in missing})
        raise BenchError(
            f"missing tool(s): {', '.join(missing)} (apt-get install {' '.join(packages)})"
        )
    try:
        import ustack.services  # noqa: F401
    except ImportError:
        raise BenchError(
            f"{sys.executable} cannot import ustack: use the venv where it is installed"
        ) from None


def print_health(notes: dict[str, Any]) -> None:
    for phase, report in notes["health"].items():
        states = ", ".join(f"{k} {v}" for k, v in sorted(report["states"].items())) or "none"
        print(f"{phase}: connections left: {states}")
        if report.get("lingering"):
            print(f"  LINGERING (not TIME_WAIT) after 5 s: {report['lingering']}")
            for conn in report.get("lingering_detail", []):
                print(f"    {conn}")
        if report.get("drops"):
            print(f"  drop counters: {report['drops']}")
        for line in report["log_problems"]:
            print(f"  log: {line}")
    for problem in notes["ab_problems"]:
        what = "; ".join(problem["problems"])
        print(f"ab problems ({problem['target']}, -c {problem['c']}): {what}")
    for errors in notes["connect_errors"]:
        print(f"connect+close errors: {errors}")
    for line in notes["slow"]:
        print(f"slow: {line}")
    for line in notes["memory"]:
        print(f"memory: {line}")
    for what, sides in notes["losses"].items():
        for label, moved in sides.items():
            tally = ", ".join(f"{k} {v}" for k, v in moved.items())
            print(f"during {what}, {label}: {tally}")


def problem_count(notes: dict[str, Any]) -> int:
    """What --strict fails on (retransmissions and drops are reported, not failed:
    a loaded 2-CPU machine may cause a few)."""
    count = len(notes["ab_problems"]) + len(notes["connect_errors"]) + len(notes["slow"])
    for report in notes["health"].values():
        count += bool(report.get("lingering")) + len(report["log_problems"])
    return count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="ustack vs the kernel's TCP, side by side (as root; see bench/README.md)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes for a ~30 s CI smoke")
    for name, about in SETTINGS_HELP.items():  # each Settings field is an option
        default, quick = getattr(DEFAULTS, name), getattr(QUICK, name)
        given = f"{default}" if default == quick else f"{default}; quick {quick}"
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"{about} ({given})")
    results.add_output_options(parser)
    parser.add_argument(
        "--no-ipv6", action="store_true", help="skip the IPv6 twins of the MTU 1500 rows"
    )
    parser.add_argument(
        "--ustack-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="pass ARG to `ustack serve` too (repeat for several, e.g. --ustack-arg=--msl)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 3 if anything looked wrong: failed requests, connect errors, transfers cut"
        " short, connections left behind, problems in a server's log (for CI)",
    )
    parser.add_argument(
        "--workdir",
        type=folder_to_write,
        help="keep the server logs here (default: a temporary dir)",
    )
    args = parser.parse_args(argv)
    check_serve_args(parser, args.ustack_arg)

    base = QUICK if args.quick else DEFAULTS
    s = Settings(
        **{
            k: getattr(args, k) if getattr(args, k) is not None else v
            for k, v in vars(base).items()
        }
    )
    for name, value in vars(s).items():
        low = 10 if name in ("connects", "requests", "pings", "idle_conns") else 1
        if not low <= value <= 10**6:
            parser.error(f"--{name.replace('_', '-')} {value}: want {low}..{10**6}")
    if s.idle_conns > 20000:
        parser.error("--idle-conns: at most 20000")
    if s.concurrency > s.requests:
        parser.error("--concurrency: at most --requests")

    res = Resources()
    started = time.monotonic()
    machine_before = machine.info()

    def measure() -> tuple[list[tuple[str, Row]], dict[str, Any]]:
        preflight()
        workdir = res.workdir("ustack-bench-", keep=args.workdir)
        remove_stale_namespaces()
        return benchmark(s, res, workdir, args.ustack_arg, ipv6=not args.no_ipv6)

    try:
        rows, notes = res.run_stoppable(measure)
    except (BenchError, LabError) as exc:
        return failed(exc)
    elapsed = time.monotonic() - started
    rev = results.revision()

    extra = f", ustack serve {' '.join(args.ustack_arg)}" if args.ustack_arg else ""
    print(
        f"ustack {rev} vs Linux kernel TCP -- {platform.node()}, {os.cpu_count()} CPUs, "
        f"Linux {platform.release()}, Python {platform.python_version()}{extra}"
    )
    print(
        f"bulk {s.bulk_mb} MB, {s.connects} connects, ab -n {s.requests} -c 1 and -c "
        f"{s.concurrency}, {s.pings} pings, {s.idle_conns} idle conns; best of {s.reps} reps "
        "(latency: median of the reps' percentiles; memory: one measurement)"
    )
    print()
    print(format_table([row for _, row in rows]))
    print()
    print_health(notes)
    print(f"elapsed {elapsed:.0f} s")
    problems = problem_count(notes)
    info = machine.info()
    info["load_average_before"] = machine_before["load_average"]
    doc = results.document(
        rows,
        options={"settings": vars(s), "quick": args.quick, "ipv6": not args.no_ipv6,
                 "ustack_args": args.ustack_arg, "note": args.note},
        machine=info, notes=notes, elapsed=elapsed, problems=problems, revision=rev,
    )  # fmt: skip
    results.write_outputs(doc, args)
    if args.strict and problems:
        print(f"bench: --strict: {problems} problem(s), see above", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
