"""The connect+close rate against the count of connections in TIME_WAIT, and
what a connection costs idle and in TIME_WAIT: ustack beside the kernel, in
one run (issue 18 items 4 and 8).

Run as root, from the repository, with the venv's Python:
    python bench/connection_count.py                  # 1k, 10k, 50k TIME_WAITs; ~3 minutes
    python bench/connection_count.py --quick          # 1k and 5k, one rep
    python bench/connection_count.py --save           # also bench/results/DATE-REV-connections.json
    python bench/connection_count.py --traced-only    # the in-process figures alone (no root)

The setups are bench/run.py's (bench/setups.py): `ustack serve` on its TUN
(here with --msl 300, so no TIME_WAIT ends during the run, and --gc-stats),
and the kernel reference server over a veth pair, its namespace's
tcp_max_tw_buckets raised above the largest count. For each count N, both
servers are filled to N connections in TIME_WAIT (bench/client.py fill: the
daytime service answers and closes first, so the server keeps the TIME_WAIT;
each from its own source port), then bench/client.py connect measures the
connect+close rate to the discard port, the two sides taking turns rep by
rep. The kernel's TIME_WAIT lasts 60 s, fixed: its count is topped up before
each level and read again after the reps.

Memory: per TIME_WAIT, the daemon's RSS growth over the TIME_WAITs added
(ustack), and the kernel's Slab growth (machine-wide); per idle ESTABLISHED
connection, bench/run.py's idle measure (RSS of the server process, kernel
Slab). And in-process, no network: the Python allocations (tracemalloc) of
one idle ESTABLISHED connection and of one in TIME_WAIT, through a Stack as
tests/unit/test_connection_memory.py drives it.

GC: the daemon's longest collector pause while filling to N and while the
connect+close reps ran at N (ustack serve --gc-stats), and the slowest
connection life the client saw (a pause stops every connection).
"""

from __future__ import annotations

import argparse
import gc
import struct
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import machine  # bench/*.py: scripts here run as python bench/NAME.py
import results
from hand_peer import Server
from measure import client_py
from measure import idle_memory
from results import Row
from results import fmt
from results import format_table
from setups import DAYTIME
from setups import DISCARD
from setups import BenchError
from setups import Resources
from setups import Target
from setups import failed
from setups import log_step
from setups import nsexec
from setups import run
from setups import slab_kib
from setups import start_kernel
from setups import start_ustack
from setups import vm_rss_kib

from ustack.linux.control import request
from ustack.linux.lab import LabError
from ustack.linux.lab import remove_stale_namespaces

USTACK_ARGS = ("--services", "echo,discard,daytime", "--msl", "300", "--gc-stats",
               "--max-connections", "200000")  # fmt: skip
TW_BUCKETS = 262144  # the kernel server's netns: room for the largest count
# The filling clients' own address beside the other clients' (198.18.0.1,
# 198.19.0.1): the connect+close reps leave TIME_WAITs on the client side (it
# closes first), which would hold the source ports the filler binds.
FILL_SOURCE = {"ustack": ("198.18.0.3", "tun0"), "kernel": ("198.19.0.3", "bk0")}


# ---- in-process: Python allocations of one connection -----------------------------------


def traced_bytes(count: int = 1000) -> dict[str, float]:
    """tracemalloc's bytes per idle ESTABLISHED connection and per TIME_WAIT,
    over `count` connections of a Stack driven by hand (the stack closes
    first, the peer's FIN+ACK answers: TIME_WAIT, RFC 9293 3.6)."""
    from ustack.wire.tcp import ACK
    from ustack.wire.tcp import FIN

    server = Server()
    for port in range(1000, 1100):  # warm-up: tables and caches
        server.close(port, server.handshake(port))
    ports = range(2000, 2000 + count)
    # The harness's per-port entries made outside the measure (its SEQ of
    # ours, one 32-byte int per port, stays in); the figure also holds the
    # connection table's room left from `count` ESTABLISHED connections.
    for port in ports:
        server.ours[port], server.theirs[port] = 0, 1000
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        conns = {port: server.handshake(port) for port in ports}
        server.accepted.clear()
        gc.collect()
        idle = tracemalloc.get_traced_memory()[0]
        for port, conn in conns.items():
            conn.close(0.0)  # our FIN first
            server.stack.tcp.flush(conn)
            server.ours[port] = struct.unpack_from("!I", server.out[-1], 24)[0] + 1
            server.segment(port, FIN | ACK)  # acknowledges ours, brings theirs: TIME_WAIT
        del conns, conn
        gc.collect()
        waiting = tracemalloc.get_traced_memory()[0]
        states = server.stack.tcp.queued()
    finally:
        tracemalloc.stop()
    if states != {"TIME_WAIT": count}:
        raise BenchError(f"traced: expected {count} TIME_WAIT, the stack has {states}")
    return {"established_b": (idle - start) / count, "time_wait_b": (waiting - start) / count}


# ---- through the servers -----------------------------------------------------------------


def time_waits(t: Target) -> int:
    if t.control is not None:
        return int(request(t.control, "stats")["connections"].get("TIME_WAIT", 0))
    out = run(nsexec(t.server_ns, "ss", "-Htan", "state", "time-wait"), timeout=30).stdout
    return len(out.splitlines())


def gc_report(t: Target, reset: bool = True) -> dict[str, Any]:
    assert t.control is not None
    reply = request(t.control, "stats", gc_reset=reset)
    if "gc" not in reply:
        raise BenchError("the daemon does not report GC pauses: is --gc-stats in this ustack?")
    return dict(reply["gc"])


class Filler:
    """Tops a server up to N connections in TIME_WAIT, each from a new source port."""

    def __init__(self) -> None:
        self.next_port: dict[str, int] = {}

    def top_up(self, t: Target, count: int) -> dict[str, Any]:
        have = time_waits(t)
        need = count - have
        if need <= 0:
            return {"added": 0, "rate": None, "errors": {}}
        first = self.next_port.get(t.label, 1024)
        self.next_port[t.label] = 1024 + (first - 1024 + need) % (65536 - 1024)
        source = FILL_SOURCE[t.label][0]
        argv = ("--first-port", str(first), "--source", source)
        out = client_py(t, "fill", DAYTIME, need, 60 + need / 200, *argv)
        return {"added": out["count"], "rate": out["rate"], "errors": out["errors"]}


def set_tw_buckets(kernel: Target) -> int:
    """Raise tcp_max_tw_buckets in the kernel server's namespace (past it the
    kernel stops keeping TIME_WAITs, and the comparison would be unfair); the
    value in force."""
    key = "net.ipv4.tcp_max_tw_buckets"
    run(nsexec(kernel.server_ns, "sysctl", "-qw", f"{key}={TW_BUCKETS}"), timeout=10, check=False)
    out = run(nsexec(kernel.server_ns, "sysctl", "-n", key), timeout=10).stdout
    return int(out.decode().strip())


def series(
    levels: list[int], connects: int, reps: int, idle: int, workdir: Path, res: Resources
) -> tuple[list[tuple[str, Row]], dict[str, Any]]:
    notes: dict[str, Any] = {"levels": {}, "fill": [], "connect_errors": []}
    rows: dict[str, Row] = {}
    log_step("starting ustack (--msl 300 --gc-stats) and the kernel reference")
    ustack = start_ustack(res, workdir, 1500, USTACK_ARGS)
    kernel = start_kernel(res, workdir)
    targets = (ustack, kernel)
    notes["tcp_max_tw_buckets"] = set_tw_buckets(kernel)
    for t in targets:
        address, device = FILL_SOURCE[t.label]
        run(["ip", "-n", t.client_ns, "addr", "add", f"{address}/24", "dev", device], timeout=10)
    if notes["tcp_max_tw_buckets"] < max(levels):
        raise BenchError(f"kernel tcp_max_tw_buckets {notes['tcp_max_tw_buckets']} < {max(levels)}")

    rows["idle_rss"] = Row("idle ESTABLISHED: server process RSS", "KiB/conn", "", how="one")
    rows["idle_slab"] = Row("idle ESTABLISHED: kernel Slab", "KiB/conn", "", how="one")
    for t in targets:
        mem = idle_memory(t, idle)
        rows["idle_rss"].of(t).append(mem.rss_kib_per_conn)
        rows["idle_slab"].of(t).append(mem.slab_kib_per_conn)
        log_step(f"  idle {idle} {t.label}: {fmt(mem.rss_kib_per_conn)} KiB RSS/conn")
    gc_report(ustack)  # from here on
    time.sleep(2)
    base = {t.label: (vm_rss_kib(t.pid), slab_kib(), time_waits(t)) for t in targets}
    filler = Filler()
    for n in levels:
        k = f"{n // 1000}k" if n % 1000 == 0 else str(n)
        rate = rows[f"rate_{k}"] = Row(f"connect+close at {k} TIME_WAIT", "conn/s", "higher")
        worst = rows[f"life_{k}"] = Row(
            f"slowest connect+close at {k}", "ms", "lower", how="median"
        )
        per_tw = rows[f"tw_{k}"] = Row(f"per TIME_WAIT at {k}: RSS (ustack) / Slab (kernel)",
                                    "B", "", how="one")  # fmt: skip
        level: dict[str, Any] = {}
        for t in targets:
            log_step(f"filling {t.label} to {n} TIME_WAIT")
            filled = filler.top_up(t, n)
            rss, slab, tw = vm_rss_kib(t.pid), slab_kib(), time_waits(t)
            rss0, slab0, tw0 = base[t.label]
            grown = (rss - rss0) if t.control is not None else (slab - slab0)
            per = grown * 1024 / (tw - tw0) if tw > tw0 else None
            if per is not None:
                per_tw.of(t).append(per)
            level[t.label] = {"fill": filled, "time_wait": tw, "rss_kib": rss, "slab_kib": slab,
                              "rss_kib_start": rss0, "bytes_per_time_wait": per}  # fmt: skip
            if t.control is not None:
                level[t.label]["gc_fill"] = gc_report(t)
            log_step(f"  {t.label}: {tw} TIME_WAIT, {fmt(per)} B each ({filled})")
        for rep in range(reps):
            for t in targets:
                out = client_py(t, "connect", DISCARD, connects, 30 + connects / 50)
                rate.of(t).append(out["rate"])
                worst.of(t).append(out["max_ms"])
                if out["errors"]:
                    notes["connect_errors"].append({t.label: out["errors"], "level": n})
                log_step(
                    f"  at {n}, rep {rep + 1}/{reps} {t.label}: {fmt(out['rate'])} conn/s, "
                    f"slowest {fmt(out['max_ms'])} ms, p99 {fmt(out['p99_ms'])} ms"
                )
        for t in targets:
            level[t.label]["time_wait_after"] = time_waits(t)
        level["ustack"]["gc_connect"] = gc_report(ustack)
        for phase in ("fill", "connect"):
            key = f"gc_{phase}_{k}"
            rows[key] = Row(f"ustack's longest GC pause, {phase} at {k}", "ms", "lower", how="one")
            rows[key].ustack.append(level["ustack"][f"gc_{phase}"]["max_ms"])
        notes["levels"][n] = level
        for t in targets:
            t.alive()
    return list(rows.items()), notes


def flatness(rows: list[tuple[str, Row]], levels: list[int]) -> list[str]:
    """The rate at the largest count over the rate at the smallest (issue 18
    item 4: flat within 15 %)."""
    table = dict(rows)

    def k(n: int) -> str:
        return f"{n // 1000}k" if n % 1000 == 0 else str(n)

    low, high = table[f"rate_{k(levels[0])}"], table[f"rate_{k(levels[-1])}"]
    lines = []
    for side in ("ustack", "kernel"):
        a, b = low.value(side), high.value(side)
        if a and b:
            lines.append(f"{side}: rate at {k(levels[-1])} / at {k(levels[0])} = {b / a:.3f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1000,10000,50000", help="TIME_WAIT counts")
    parser.add_argument("--connects", type=int, default=2000, help="connect+close per rep")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--idle-conns", type=int, default=2000, help="idle ESTABLISHED held")
    parser.add_argument(
        "--quick", action="store_true", help="levels 1000,5000; 500 connects; 1 rep"
    )
    results.add_output_options(parser, "connections")
    parser.add_argument("--traced-only", action="store_true", help="the in-process figures alone")
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.connects, args.reps, args.idle_conns = "1000,5000", 500, 1, 300
    try:
        levels = sorted(int(x) for x in args.levels.split(","))
    except ValueError:
        parser.error(f"--levels {args.levels!r}: want counts like 1000,10000")
    if not levels or not 1 <= levels[0] <= levels[-1] <= 60000:
        parser.error("--levels: 1..60000 (the source ports of one client address)")

    traced = traced_bytes()
    print(f"in-process (tracemalloc): idle ESTABLISHED {traced['established_b']:.0f} B, "
          f"TIME_WAIT {traced['time_wait_b']:.0f} B per connection")  # fmt: skip
    if args.traced_only:
        return 0

    res = Resources()
    started, before = time.monotonic(), machine.info()

    def measure() -> tuple[list[tuple[str, Row]], dict[str, Any]]:
        remove_stale_namespaces()
        workdir = res.workdir("ustack-cc-")
        return series(levels, args.connects, args.reps, args.idle_conns, workdir, res)

    try:
        rows, notes = res.run_stoppable(measure)
    except (BenchError, LabError) as exc:
        return failed(exc)
    rows.append(
        (
            "traced_est",
            Row("in-process idle ESTABLISHED", "B", "", [traced["established_b"]], how="one"),
        )
    )
    rows.append(
        ("traced_tw", Row("in-process TIME_WAIT", "B", "", [traced["time_wait_b"]], how="one"))
    )
    rev = results.revision()
    print(f"ustack {rev} vs Linux kernel TCP, TIME_WAIT counts {levels}: best of {args.reps} reps "
          f"of {args.connects} connect+close; memory one measurement")  # fmt: skip
    print()
    print(format_table([row for _, row in rows]))
    print()
    for line in flatness(rows, levels):
        print(line)
    for error in notes["connect_errors"]:
        print(f"connect+close errors: {error}")
    elapsed = time.monotonic() - started
    print(f"elapsed {elapsed:.0f} s")
    info = machine.info()
    info["load_average_before"] = before["load_average"]
    options = {
        "levels": levels,
        "connects": args.connects,
        "reps": args.reps,
        "idle_conns": args.idle_conns,
        "ustack_args": list(USTACK_ARGS),
        "note": args.note,
    }
    doc = results.document(rows, options=options, machine=info, notes=notes, elapsed=elapsed,
                           problems=len(notes["connect_errors"]), revision=rev)  # fmt: skip
    results.write_outputs(doc, args, "connections")
    return 0


if __name__ == "__main__":
    sys.exit(main())
