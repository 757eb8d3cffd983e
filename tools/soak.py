#!/usr/bin/env python3
"""A long mixed run through a lossy, reordering, duplicating link.

    sudo python -m tools.soak [--minutes 30 | --seconds S] [--loss 0.02]
                              [--reorder 0.05] [--duplicate 0.01] [--delay 0.005]
                              [--parallel 2] [--max-size 1M] [--seed N] [--json FILE]

This kernel has no netem (CONFIG_NET_SCH_NETEM is not set), so the impairment
is ustack's own fault injector at the TUN boundary (ustack/faults.py, the
same rules as tools/losstest.py), acting on every packet in both directions:
lost with probability LOSS, held back DELAY seconds (so later packets
overtake it) with probability REORDER, or sent twice with probability
DUPLICATE. TUN offloads are off, so a fault hits one wire segment.

Inside a namespace of its own (ustack-t<pid>-<n>, removed at the end, also on
failure), against `ustack serve --msl 0.5` without a trace, these run in
parallel, over and over, until the time is up:

  ab        `ab -r -n 100 -c 4` on GET / (HTTP/1.0, a new connection per request);
  download  curl GET /bytes/N, N log-uniform in 1 KiB..MAX_SIZE, sha256 checked
            against the pattern (byte i is i % 256);
  upload    curl POST /upload of N random bytes: the reply's length and sha256
            must be those sent;
  nc        `nc -N` to the echo service (port 7): N random bytes (up to
            MAX_SIZE / 4) sent, then a half-close; all of them must come back
            before the stack's FIN;

PARALLEL workers of each of download, upload and nc, one ab worker. Every
SAMPLE seconds the daemon's RSS, fd count and connection table are read.

At the end: transfers and bytes of each kind, checksum mismatches, failed
transfers (non-zero exit, timeout), ab's failed requests, connections left
(the table must be empty once TIME_WAIT, LAST_ACK and FIN_WAIT_2 have run
out), the daemon's fds (the same as at the start), and RSS after the warm-up
(the first quarter of the run, at most a minute) against RSS at the end, with
the table empty: it must not have grown more than --rss-slack MiB.

Exit code: 0 all good; 1 corruption (a checksum or length mismatch); 2 a
failed transfer or ab request; 3 a leak (connections left, fds, RSS) or the
daemon misbehaved (died, a Traceback in its log). With several, the lowest
code wins. On failure the work directory (daemon log) is kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from tools.common import add_run_arguments
from tools.common import check_can_run
from tools.common import in_workdir
from tools.common import print_result
from tools.common import run_with_daemon
from tools.common import tool_parser
from tools.losstest import add_fault_arguments
from tools.losstest import fault_arguments_rules
from tools.losstest import parse_size
from tools.losstest import pattern_sha256
from tools.scale import fd_count
from tools.scale import rss_kib
from tools.scale import stable_fd_count
from ustack.linux.lab import stoppable

HERE = Path(__file__).resolve()
STACK = "198.18.0.2"
KINDS = ("ab", "download", "upload", "nc")
AB_REQUESTS, AB_CONCURRENCY = 100, 4


@dataclass
class Tally:
    transfers: int = 0
    bytes: int = 0
    failed: int = 0
    corrupt: int = 0
    ab_failed_requests: int = 0
    longest_s: float = 0.0
    problems: list[str] = field(default_factory=list)  # the first few, for the report
    durations: list[float] = field(default_factory=list)  # seconds, each completed transfer

    def percentile(self, share: float) -> float:
        ordered = sorted(self.durations)
        return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else 0.0


@dataclass
class Sample:
    t: float
    rss_kib: int
    fds: int
    connections: int
    states: dict[str, int]


@dataclass
class SoakReport:
    seconds: float
    rules: list[str]
    seed: int
    tallies: dict[str, Tally] = field(default_factory=lambda: {k: Tally() for k in KINDS})
    samples: list[Sample] = field(default_factory=list)
    rss_first: int = 0  # after the warm-up
    rss_last: int = 0  # at the end, the table empty
    rss_max: int = 0
    fds_start: int = 0
    fds_end: int = 0
    empty_after_s: float | None = None  # from the last transfer's end
    left: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    problems: list[tuple[int, str]] = field(default_factory=list)  # (exit code, what)

    def status(self) -> int:
        return min((code for code, _ in self.problems), default=0)


def log_uniform(rng: random.Random, low: int, high: int) -> int:
    return int(math.exp(rng.uniform(math.log(low), math.log(max(low, high)))))


@dataclass(eq=False)
class Soak:
    ns: Any
    daemon: Any
    report: SoakReport
    max_size: int
    timeout: float
    lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    stop: threading.Event = field(default_factory=threading.Event, init=False)

    def run(self, argv: list[str], data: bytes | None = None) -> tuple[int, bytes]:
        """One client in the namespace; (exit code, stdout); -1 on timeout (the
        child is killed: subprocess.run kills the process it started)."""
        try:
            done = subprocess.run(
                self.ns.command(*argv), input=data, capture_output=True, timeout=self.timeout
            )
        except subprocess.TimeoutExpired:
            return -1, b""
        return done.returncode, done.stdout

    def curl(self, *args: str, data: bytes | None = None) -> tuple[int, bytes]:
        """curl in the namespace, given up 5 s before `run` would kill it."""
        return self.run(["curl", "-sS", "--max-time", str(self.timeout - 5), *args], data)

    def record(
        self, kind: str, size: int, seconds: float, code: int, problem: str, corrupt: bool
    ) -> None:
        with self.lock:
            tally = self.report.tallies[kind]
            tally.transfers += 1
            tally.longest_s = max(tally.longest_s, seconds)
            tally.durations.append(seconds)
            if code != 0:
                tally.failed += 1
                problem = problem or ("timed out" if code == -1 else f"exit {code}")
            elif corrupt:
                tally.corrupt += 1
            else:
                tally.bytes += size
            if (code != 0 or corrupt) and len(tally.problems) < 5:
                tally.problems.append(f"{kind} of {size} bytes: {problem}")

    # ---- the four kinds of work ------------------------------------------------------

    def ab(self, rng: random.Random) -> None:
        start = time.monotonic()
        code, out = self.run(
            [
                "ab",
                "-r",
                "-s",
                "30",
                "-n",
                str(AB_REQUESTS),
                "-c",
                str(AB_CONCURRENCY),
                f"http://{STACK}/",
            ]
        )
        text = out.decode(errors="replace")

        def field_of(name: str) -> int:
            match = re.search(rf"^{name}:\s+(\d+)", text, re.MULTILINE)
            return int(match[1]) if match else 0

        complete, failed = field_of("Complete requests"), field_of("Failed requests")
        failed += field_of("Non-2xx responses")
        with self.lock:
            tally = self.report.tallies["ab"]
            tally.transfers += complete - failed
            tally.bytes += field_of("Total transferred")
            tally.ab_failed_requests += failed + (AB_REQUESTS - complete)
            tally.longest_s = max(tally.longest_s, time.monotonic() - start)
            tally.durations.append(time.monotonic() - start)  # the whole ab run
            if code != 0 or complete != AB_REQUESTS:
                tally.failed += 1
                if len(tally.problems) < 5:
                    tally.problems.append(f"ab exit {code}: {complete} complete, {failed} failed")

    def download(self, rng: random.Random) -> None:
        size = log_uniform(rng, 1024, self.max_size)
        start = time.monotonic()
        code, body = self.curl("-o", "-", f"http://{STACK}/bytes/{size}")
        problem = ""
        if len(body) != size:
            problem = f"{len(body)} bytes"
        elif hashlib.sha256(body).hexdigest() != pattern_sha256(size):
            problem = "sha256 differs"
        self.record("download", size, time.monotonic() - start, code, problem, bool(problem))

    def upload(self, rng: random.Random) -> None:
        size = log_uniform(rng, 1024, self.max_size)
        body = rng.randbytes(size)
        start = time.monotonic()
        code, reply = self.curl(
            "-H",
            "Expect:",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            "@-",
            f"http://{STACK}/upload",
            data=body,
        )
        expected = f"{size} {hashlib.sha256(body).hexdigest()}"
        got = reply.decode(errors="replace").strip()
        problem = "" if got == expected else f"reply {got[:80]!r}"
        self.record("upload", size, time.monotonic() - start, code, problem, bool(problem))

    def nc(self, rng: random.Random) -> None:
        size = log_uniform(rng, 1, max(1, self.max_size // 4))
        data = rng.randbytes(size)
        start = time.monotonic()
        code, echoed = self.run(["nc", "-N", STACK, "7"], data)
        problem = ""
        if len(echoed) != size:
            problem = f"{len(echoed)} bytes back"
        elif echoed != data:
            problem = "echo differs"
        self.record("nc", size, time.monotonic() - start, code, problem, bool(problem))

    def worker(self, work: Callable[[random.Random], None], seed: int, until: float) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set() and time.monotonic() < until:
            work(rng)

    def sample(self, pid: int, started: float) -> Sample:
        states = self.daemon.request("stats")["connections"]
        return Sample(
            round(time.monotonic() - started, 1),
            rss_kib(pid),
            fd_count(pid),
            sum(states.values()),
            states,
        )


def run_soak(
    ns: Any,
    daemon: Any,
    seconds: float,
    rules: list[str],
    seed: int,
    parallel: int = 2,
    max_size: int = 1 << 20,
    sample_every: float = 5.0,
    timeout: float = 300,
    rss_slack_mib: float = 16,
    log: Callable[[str], None] | None = None,
) -> SoakReport:
    """Run the mixed load on a daemon started by tests/harness.py (with the
    fault rules already in place); the report with its problems."""
    log = log or (lambda line: print(line, flush=True))  # flushed: the run is long
    report = SoakReport(seconds, rules, seed)
    soak = Soak(ns, daemon, report, max_size, timeout)
    pid = daemon.process.pid
    report.fds_start = stable_fd_count(pid)
    started = time.monotonic()
    until = started + seconds
    warmup = min(60.0, seconds / 4)
    work = {"ab": soak.ab, "download": soak.download, "upload": soak.upload, "nc": soak.nc}
    threads = []
    for kind in KINDS:
        for i in range(1 if kind == "ab" else parallel):
            seed_i = seed * 100 + KINDS.index(kind) * 10 + i
            thread = threading.Thread(
                target=soak.worker,
                args=(work[kind], seed_i, until),
                name=f"{kind}-{i}",
                daemon=True,
            )
            thread.start()
            threads.append(thread)
    try:
        next_log = started + 60
        while any(t.is_alive() for t in threads):
            s = soak.sample(pid, started)
            report.samples.append(s)
            if not report.rss_first and s.t >= warmup:
                report.rss_first = s.rss_kib
            if time.monotonic() >= next_log:
                next_log += 60
                with soak.lock:
                    done = ", ".join(f"{k} {v.transfers}" for k, v in report.tallies.items())
                log(
                    f"  {s.t / 60:5.1f} min: RSS {s.rss_kib:,} KiB, {s.connections} connections; "
                    f"done: {done}"
                )
            for thread in threads:
                thread.join(timeout=max(0.0, sample_every / len(threads)))
    finally:
        soak.stop.set()
        for thread in threads:
            thread.join()
    ended = time.monotonic()
    report.elapsed_s = ended - started
    # TIME_WAIT is 1 s here; a lost FIN takes retransmissions; an orphaned
    # FIN_WAIT_2 up to --fin-timeout (60 s). Give all that time to run out.
    left: dict[str, int] = {}
    while (left := daemon.request("stats")["connections"]) and time.monotonic() < ended + 120:
        time.sleep(0.2)
    report.left = left
    if not left:
        report.empty_after_s = time.monotonic() - ended
    final = soak.sample(pid, started)
    deadline = time.monotonic() + 2
    while final.fds != report.fds_start and time.monotonic() < deadline:
        time.sleep(0.05)  # our own control connection may still be closing in the daemon
        final.fds = fd_count(pid)
    report.samples.append(final)
    report.rss_last, report.fds_end = final.rss_kib, final.fds
    report.rss_max = max(s.rss_kib for s in report.samples)
    report.rss_first = report.rss_first or report.samples[0].rss_kib
    report.counters = daemon.stats()
    report.problems = problems(report, rss_slack_mib)
    return report


def problems(report: SoakReport, rss_slack_mib: float) -> list[tuple[int, str]]:
    found = []
    for kind, tally in report.tallies.items():
        if tally.corrupt:
            found.append((1, f"{kind}: {tally.corrupt} corrupt: {'; '.join(tally.problems)}"))
        if tally.failed or tally.ab_failed_requests:
            found.append(
                (
                    2,
                    f"{kind}: {tally.failed} failed, {tally.ab_failed_requests} ab "
                    f"requests failed: {'; '.join(tally.problems)}",
                )
            )
        if tally.transfers == 0:
            found.append((2, f"{kind}: not one transfer completed"))
    if report.left:
        found.append((3, f"connections left 120 s after the end: {report.left}"))
    if report.fds_end != report.fds_start:
        found.append(
            (3, f"daemon fds {report.fds_start} at the start, {report.fds_end} at the end")
        )
    growth = report.rss_last - report.rss_first
    if growth > rss_slack_mib * 1024:
        found.append(
            (3, f"RSS grew {growth:,} KiB after the warm-up (allowed {rss_slack_mib} MiB)")
        )
    return found


def print_report(report: SoakReport) -> None:
    print(
        f"\nsoak: {report.elapsed_s / 60:.1f} min ({report.elapsed_s:.0f} s); "
        f"faults: {' '.join(report.rules) or 'none'}; seed {report.seed}"
    )
    print(
        f"{'kind':9s} {'transfers':>9s} {'MiB':>9s} {'failed':>6s} {'corrupt':>7s} "
        f"{'p50 s':>6s} {'p99 s':>6s} {'max s':>6s}"
    )
    total = Tally()
    for kind, t in report.tallies.items():
        failed = t.failed if kind != "ab" else t.ab_failed_requests
        print(
            f"{kind:9s} {t.transfers:9,} {t.bytes / (1 << 20):9.1f} {failed:6} {t.corrupt:7} "
            f"{t.percentile(0.5):6.2f} {t.percentile(0.99):6.2f} {t.longest_s:6.1f}"
        )
        total.transfers += t.transfers
        total.bytes += t.bytes
        total.failed += failed
        total.corrupt += t.corrupt
    print(
        f"{'total':9s} {total.transfers:9,} {total.bytes / (1 << 20):9.1f} {total.failed:6} "
        f"{total.corrupt:7}"
    )
    print(
        "  (ab: requests that succeeded, bytes as ab counts them, failed requests; its times "
        f"are those of a whole `ab -n {AB_REQUESTS} -c {AB_CONCURRENCY}`)"
    )
    c = report.counters
    print(
        f"faults applied: drop {c.get('fault.drop', 0):,}, delay {c.get('fault.delay', 0):,}, "
        f"duplicate {c.get('fault.duplicate', 0):,}; ustack sent {c.get('tcp.out', 0):,} "
        f"segments, {c.get('tcp.out.retransmit', 0):,} retransmitted; "
        f"{c.get('tcp.passive-opens', 0):,} connections"
    )
    peak = max(report.samples, key=lambda s: s.connections)
    empty = "never" if report.empty_after_s is None else f"{report.empty_after_s:.1f} s"
    print(
        f"connections: at most {peak.connections} at once; table empty {empty} after the "
        f"last transfer; left {report.left or 0}"
    )
    print(f"daemon fds: {report.fds_start} at the start, {report.fds_end} at the end")
    print(
        f"daemon RSS: {report.rss_first:,} KiB after the warm-up, {report.rss_last:,} at the "
        f"end ({report.rss_last - report.rss_first:+,}), at most {report.rss_max:,}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser(__doc__)
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=30, help="duration (default 30)")
    length.add_argument("--seconds", type=float, help="duration in seconds instead")
    add_fault_arguments(parser, loss=0.02, reorder=0.05, duplicate=0.01)
    parser.add_argument(
        "--parallel",
        type=int,
        default=2,
        help="workers of each of download, upload, nc (default 2)",
    )
    parser.add_argument(
        "--max-size",
        type=parse_size,
        default=parse_size("1M"),
        help="largest download/upload (default 1M; nc up to a quarter)",
    )
    parser.add_argument("--sample", type=float, default=5, help="seconds between samples")
    add_run_arguments(
        parser,
        timeout=300,
        timeout_help="seconds one transfer may take before it counts as failed",
        seed_help="the injector's and the sizes' seed",
        json_help="also write the report and samples here",
    )
    parser.add_argument(
        "--rss-slack",
        type=float,
        default=16,
        help="MiB RSS may grow from the warm-up to the end (default 16)",
    )
    args = parser.parse_args(argv)
    rules = fault_arguments_rules(parser, args)
    check_can_run(parser, "soak", ["ab", "curl", "nc"])
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    faults = [a for rule in rules for a in ("--fault", rule)]

    def soak(workdir: Path) -> int:
        print(f"ustack soak: {seconds:g} s; {' '.join(rules)}; seed {seed}; workdir {workdir}")
        report, troubles = run_with_daemon(
            workdir,
            ["--log-level", "info", "--no-offload", *faults, "--fault-seed", str(seed)],
            lambda ns, daemon: run_soak(
                ns,
                daemon,
                seconds,
                rules,
                seed,
                args.parallel,
                args.max_size,
                args.sample,
                args.timeout,
                args.rss_slack,
            ),
            trace=False,
        )
        report.problems.extend((3, trouble) for trouble in troubles)
        print_report(report)
        if args.json:
            out = dataclasses.asdict(report)
            for kind, tally in report.tallies.items():
                del out["tallies"][kind]["durations"]
                out["tallies"][kind].update(
                    p50_s=tally.percentile(0.5), p99_s=tally.percentile(0.99)
                )
            args.json.write_text(json.dumps(out, indent=1))
        return print_result((what for _, what in report.problems), report.status())

    return in_workdir("soak-", soak)


if __name__ == "__main__":
    sys.exit(stoppable(main, "soak"))
