#!/usr/bin/env python3
"""Bulk transfers through a lossy, reordering, duplicating link, both ways.

    sudo python -m tools.losstest [--size 50M] [--loss 0.05] [--reorder 0.10]
                                  [--duplicate 0.01] [--delay 0.005] [--seed N]

This kernel has no netem, so the impairment is ustack's own fault injector at
the TUN boundary (ustack/faults.py), acting on every packet in both
directions: each packet is lost with probability LOSS, held back DELAY seconds
(so later packets overtake it) with probability REORDER, or sent twice with
probability DUPLICATE. The rules are chained (the first that fires decides),
so their probabilities are set to give exactly these per-packet rates.

What it does, all inside a network namespace of its own (ustack-t<pid>-loss,
removed at the end, also on failure or Ctrl-C; a namespace left by a killed
run is removed by the interop tests' stale-namespace sweep):

  1. starts `ustack serve` with the fault rules (http only, MSL 0.5 s);
  2. download: curl GET /bytes/SIZE (ustack -> Linux), sha256 against the
     pattern (byte i is i % 256);
  3. upload: curl POST /upload of SIZE random bytes (Linux -> ustack), the
     reply's length and sha256 against what was sent;
  4. after each: time, MiB/s, the daemon's counters for that transfer
     (retransmissions, faults applied, drops), and whether its connection
     table empties;
  5. at the end: the daemon still alive, no Traceback in its log.

Exit code: 0 all good; 1 corruption (wrong length or sha256); 2 a transfer
failed or timed out (curl's --max-time, --timeout; also Ctrl-C, SIGTERM, SIGHUP); 3 the daemon
misbehaved (died, a Traceback in its log, connections left 30 s after a
transfer). With several, the lowest code wins. On any failure the work
directory (daemon log, trace if asked) is kept and its path printed.

Counters printed: tcp.out/tcp.in (segments ustack sent/took), tcp.out.retransmit
(ustack's retransmissions), fault.* (the injector's actions, both directions),
any *.drop.* of the stack, and linux.retransmit (the namespace's Tcp
RetransSegs: Linux's own retransmissions, i.e. the upload's).
--offload keeps the TUN's GSO/TSO: a fault then hits a whole 64 KB
super-segment, not one wire segment. --trace FILE records the daemon's trace
(slower). --direction down|up runs one transfer only.

--seed makes the injector's random choices reproducible (the same sequence of
decisions; which packet meets which decision still depends on timing). The
daemon gets `--fault-seed`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tools.common import add_run_arguments
from tools.common import check_can_run
from tools.common import tool_parser
from ustack.cli.args import folder_to_write
from ustack.linux.lab import NS_PREFIX
from ustack.linux.lab import STACK_ADDRESS
from ustack.linux.lab import Netns
from ustack.linux.lab import Stopper
from ustack.linux.lab import UstackDaemon
from ustack.linux.lab import netns
from ustack.study.faults import FaultError
from ustack.study.faults import parse_rule

MiB = 1 << 20
CHUNK = 1 << 20


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG]?)i?B?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: want e.g. 50M, 512K, 1048576")
    return int(match[1]) << {"": 0, "K": 10, "M": 20, "G": 30}[match[2].upper()]


def probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text}: want 0..1")
    return value


def fault_rules(loss: float, reorder: float, duplicate: float, delay: float) -> list[str]:
    """Chained rules whose per-packet rates are exactly loss, reorder, duplicate:
    a later rule only sees the packets every earlier rule let pass."""
    rules = []
    remaining = 1.0
    for action, rate, extra in (
        ("drop", loss, ""),
        ("delay", reorder, f",delay={delay:g}"),
        ("duplicate", duplicate, ""),
    ):
        if rate <= 0:
            continue
        conditional = min(1.0, rate / remaining)
        rules.append(f"{action}:dir=both,prob={conditional:.6f}{extra}")
        remaining -= rate
    return rules


def add_fault_arguments(
    parser: argparse.ArgumentParser, loss: float, reorder: float, duplicate: float
) -> None:
    """--loss, --reorder, --duplicate (per-packet rates, both directions; these
    defaults) and --delay: what fault_arguments_rules turns into rules."""
    parser.add_argument(
        "--loss",
        type=probability,
        default=loss,
        help=f"per-packet loss, each direction (default {loss:g})",
    )
    parser.add_argument(
        "--reorder",
        type=probability,
        default=reorder,
        help=f"share of packets delayed by --delay (default {reorder:g})",
    )
    parser.add_argument(
        "--duplicate",
        type=probability,
        default=duplicate,
        help=f"share of packets sent twice (default {duplicate:g})",
    )
    parser.add_argument(
        "--delay",
        type=float,
        default=0.005,
        help="seconds a reordered packet is held (default 0.005)",
    )


def fault_arguments_rules(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The rules of add_fault_arguments' options (a usage error if the rates
    add up to more than 1)."""
    if args.loss + args.reorder + args.duplicate > 1:
        parser.error("--loss + --reorder + --duplicate must be at most 1")
    rules = fault_rules(args.loss, args.reorder, args.duplicate, args.delay)
    for rule in rules:  # as the daemon will read them (a bad --delay: here, not in the namespace)
        try:
            parse_rule(rule)
        except FaultError as exc:
            parser.error(f"--delay {args.delay:g}: {exc}")
    return rules


def pattern_sha256(length: int) -> str:
    """The SHA-256 of /bytes/N: byte i is i % 256."""
    block = bytes(range(256)) * 4096  # 1 MiB, a multiple of 256
    digest = hashlib.sha256()
    for start in range(0, length, len(block)):
        digest.update(block[: min(len(block), length - start)])
    return digest.hexdigest()


class Run:
    """The namespace, the daemon (ustack.linux.lab) and the child processes,
    all removed in close()."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log = workdir / "ustack.log"
        self.children: list[subprocess.Popen[bytes]] = []
        self.lab = ExitStack()
        self.ns: Netns | None = None
        self.daemon: UstackDaemon | None = None

    def exec(self, *argv: str) -> list[str]:
        assert self.ns is not None
        return self.ns.command(*argv)

    def make_namespace(self) -> None:
        # The tests' prefix: a namespace a killed run leaves is swept by the next run.
        self.ns = self.lab.enter_context(netns(NS_PREFIX, tag="loss"))

    def set_linux_cc(self, name: str) -> None:
        """The Linux side's congestion control towards the stack, by a host
        route's congctl (the namespace's sysctl may not be writable here)."""
        assert self.ns is not None
        route = ["ip", "-n", self.ns.name, "route", "replace", f"{STACK_ADDRESS}/32"]
        subprocess.run([*route, "dev", "tun0", "congctl", "lock", name], check=True)

    def start_daemon(
        self, rules: list[str], seed: int | None, trace: str | None, offload: bool
    ) -> None:
        assert self.ns is not None
        serve = ["--services", "http"]
        for rule in rules:
            serve += ["--fault", rule]
        if trace:
            serve += ["--trace", trace]
        if not offload:
            serve += ["--no-offload"]
        if seed is not None:
            serve += ["--fault-seed", str(seed)]
        self.daemon = UstackDaemon.start(
            self.ns, self.workdir, *serve, log_level="info", trace=False
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def request(self, command: str) -> dict[str, Any]:
        assert self.daemon is not None
        reply = self.daemon.request(command)
        if not reply.get("ok"):
            raise RuntimeError(f"control {command}: {reply}")
        return reply

    def counters(self) -> dict[str, int]:
        """The daemon's counters, plus the namespace's own Linux TCP retransmissions
        (Tcp RetransSegs: Linux as the sender) as linux.retransmit."""
        counters = dict(self.request("stats")["counters"])
        snmp = subprocess.run(self.exec("cat", "/proc/net/snmp"), capture_output=True, timeout=10)
        tcp = [
            line.split() for line in snmp.stdout.decode().splitlines() if line.startswith("Tcp:")
        ]
        if len(tcp) == 2 and "RetransSegs" in tcp[0]:
            counters["linux.retransmit"] = int(tcp[1][tcp[0].index("RetransSegs")])
        return counters

    def connections(self) -> list[dict[str, Any]]:
        return self.request("connections")["connections"]

    def wait_until_no_connections(self, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while (left := self.connections()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return left

    def spawn(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(self.exec(*argv), **kwargs)
        self.children.append(child)
        return child

    def close(self) -> tuple[int | None, bool]:
        """Stop what we started (by PID), then remove the namespace. Returns the
        daemon's exit code and whether it was still running when we stopped it."""
        for child in self.children:
            if child.poll() is None:
                child.kill()
                child.wait()
        code, running = None, False
        if self.daemon is not None:
            running = self.daemon.process.poll() is None
            code = self.daemon.stop()
        self.lab.close()
        return code, running


def run_curl(run: Run, argv: list[str], max_time: float) -> tuple[int, bytes, str, float, Any]:
    """curl with a hard bound: --max-time, and a kill by PID a little after it.
    Returns exit code, stdout (or the sha256 and byte count for a download),
    stderr, seconds."""
    start = time.monotonic()
    child = run.spawn(
        ["curl", "-sS", "--max-time", f"{max_time:g}", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    watchdog = threading.Timer(max_time + 30, child.kill)  # by PID: the curl we started
    watchdog.start()
    err_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: err_chunks.append(child.stderr.read()), daemon=True)
    reader.start()
    digest = hashlib.sha256()
    received = 0
    head = b""
    try:
        while chunk := child.stdout.read(CHUNK):
            digest.update(chunk)
            received += len(chunk)
            if len(head) < 4096:
                head += chunk[:4096]
        code = child.wait()
    finally:
        watchdog.cancel()
    reader.join(5)
    elapsed = time.monotonic() - start
    stderr = b"".join(err_chunks).decode(errors="replace").strip()
    return code, head, stderr, elapsed, (digest.hexdigest(), received)


INTERESTING = (
    "tcp.out",
    "tcp.in",
    "tcp.out.retransmit",
    "fault.drop",
    "fault.delay",
    "fault.duplicate",
    "linux.retransmit",
)
ALSO = ("tcp.out.rst", "tcp.in.rst")  # shown when they moved


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    names = set(INTERESTING) | set(ALSO)
    names |= {n for n in after if ".drop." in n or n.startswith("fault.")}
    delta = {n: after.get(n, 0) - before.get(n, 0) for n in names}
    return {n: v for n, v in sorted(delta.items()) if v or n in INTERESTING}


def transfer(
    run: Run, name: str, argv: list[str], size: int, max_time: float, check: Any
) -> dict[str, Any]:
    before = run.counters()
    code, head, stderr, elapsed, (digest, received) = run_curl(run, argv, max_time)
    ok, detail = check(code, head, digest, received)
    left = run.wait_until_no_connections(30)
    delta = counter_delta(before, run.counters())
    rate = f"{size / MiB / elapsed:7.2f}" if ok and elapsed else "      -"
    verdict = "OK" if ok else ("FAIL" if code == 0 else "TIMEOUT" if code == 28 else "ERROR")
    print(
        f"{name:9s} {size / MiB:8.2f} MiB  {elapsed:8.2f} s  {rate} MiB/s  "
        f"sha256 {verdict}  (curl exit {code})"
    )
    if detail:
        print(f"          {detail}")
    if stderr:
        print(f"          curl: {stderr}")
    print("          counters: " + ", ".join(f"{k}={v}" for k, v in delta.items()))
    if delta.get("tcp.out"):
        print(
            f"          retransmitted {delta['tcp.out.retransmit'] / delta['tcp.out']:.1%} "
            f"of ustack's {delta['tcp.out']} segments"
        )
    if left:
        print(f"          connections left after 30 s: {json.dumps(left)}")
    return {"name": name, "code": code, "ok": ok, "elapsed": elapsed, "left": left}


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser(__doc__)
    parser.add_argument(
        "--size",
        type=parse_size,
        default=parse_size("50M"),
        help="bytes each way; K, M, G are powers of 1024 (default 50M)",
    )
    add_fault_arguments(parser, loss=0.05, reorder=0.10, duplicate=0.01)
    add_run_arguments(
        parser,
        timeout=900,
        timeout_help="curl --max-time for each transfer, seconds (default 900)",
        seed_help="seed of the injector's random choices (default: a random one, printed)",
    )
    parser.add_argument(
        "--direction",
        choices=["both", "down", "up"],
        default="both",
        help="down: GET (ustack -> Linux), up: POST (Linux -> ustack)",
    )
    parser.add_argument(
        "--offload",
        action="store_true",
        help="keep the TUN offloads (GSO/TSO): a fault then hits a whole "
        "super-segment of up to 44 segments (default: --no-offload, so the "
        "rates are per wire segment)",
    )
    parser.add_argument(
        "--linux-cc",
        metavar="NAME",
        help="the Linux side's congestion control towards the stack (default: "
        "the kernel's, often bbr, which does not back off on random loss; "
        "cubic, ustack's default, makes the two directions comparable)",
    )
    parser.add_argument(
        "--trace",
        metavar="FILE",
        help="also write the daemon's trace (e.g. t.jsonl, t.pcap; it slows it)",
    )
    parser.add_argument(
        "--workdir",
        type=folder_to_write,
        help="keep the daemon log etc. here (default: a temporary directory, "
        "removed unless something failed)",
    )
    args = parser.parse_args(argv)
    rules = fault_arguments_rules(parser, args)
    check_can_run(parser, "losstest", ["curl"])
    probe = subprocess.run([sys.executable, "-c", "import ustack.cli"], capture_output=True)
    if probe.returncode != 0:
        parser.error(
            f"{sys.executable} cannot import ustack: run it with the Python "
            "that has ustack installed (e.g. sudo .venv/bin/python -m tools.losstest)"
        )
    sysctl = Path("/proc/sys/net/ipv4")
    available = (sysctl / "tcp_available_congestion_control").read_text().split()
    if args.linux_cc is not None and args.linux_cc not in available:
        parser.error(f"--linux-cc {args.linux_cc}: this kernel has {' '.join(available)}")
    linux_cc = args.linux_cc or (sysctl / "tcp_congestion_control").read_text().strip()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="losstest-"))
    workdir.mkdir(parents=True, exist_ok=True)
    run = Run(workdir)
    results: list[dict[str, Any]] = []
    problems: list[tuple[int, str]] = []  # (exit code, what); the lowest code wins
    # Ctrl-C, SIGTERM, SIGHUP: the run goes on in a thread while its
    # namespace's processes are ended (the lab's Stopper, as `ustack lab`
    # stops), so that it fails at its next wait and unwinds through close().
    stopper = Stopper(NS_PREFIX)
    closed: list[tuple[int, int | None, bool]] = []  # (Tracebacks before the stop, exit, running)

    def exercise() -> None:
        during = 0  # Tracebacks in the daemon log before we stopped it
        try:
            run.make_namespace()
            run.start_daemon(rules, seed, args.trace, args.offload)
            if args.linux_cc is not None:
                run.set_linux_cc(args.linux_cc)
            print(
                f"ustack losstest: {args.size} bytes ({args.size / MiB:g} MiB) each way; "
                f"loss {args.loss:g}, reorder {args.reorder:g} (delay {args.delay * 1000:g} ms), "
                f"duplicate {args.duplicate:g}, both directions; seed {seed}"
            )
            offloads = "on" if args.offload else "off"
            print(
                f"  namespace {run.ns and run.ns.name}, workdir {workdir}, "
                f"TUN offloads {offloads}, Linux congestion control {linux_cc}"
            )
            print(f"  rules: {' '.join(rules) or 'none'}")
            url = f"http://{STACK_ADDRESS}"
            if args.direction in ("both", "down"):
                expected = pattern_sha256(args.size)

                def check_download(code: int, _head: bytes, digest: str, received: int) -> Any:
                    if code != 0:
                        return False, f"received {received} of {args.size} bytes"
                    if received != args.size:
                        return False, f"length {received}, expected {args.size}"
                    if digest != expected:
                        return False, f"sha256 {digest}, expected {expected}"
                    return True, ""

                results.append(
                    transfer(
                        run,
                        "download",
                        ["-o", "-", f"{url}/bytes/{args.size}"],
                        args.size,
                        args.timeout,
                        check_download,
                    )
                )
            if args.direction in ("both", "up"):
                body = workdir / "upload.bin"
                body.write_bytes(random.Random(seed).randbytes(args.size))
                sent = hashlib.sha256(body.read_bytes()).hexdigest()

                def check_upload(code: int, head: bytes, _digest: str, _received: int) -> Any:
                    if code != 0:
                        return False, ""
                    reply = head.decode(errors="replace").split()
                    if reply != [str(args.size), sent]:
                        return False, f"reply {' '.join(reply)!r}, expected '{args.size} {sent}'"
                    return True, ""

                try:
                    results.append(
                        transfer(
                            run,
                            "upload",
                            [
                                "-H",
                                "Expect:",
                                "-H",
                                "Content-Type: application/octet-stream",
                                "--data-binary",
                                f"@{body}",
                                "-o",
                                "-",
                                f"{url}/upload",
                            ],
                            args.size,
                            args.timeout,
                            check_upload,
                        )
                    )
                finally:
                    body.unlink(missing_ok=True)
            for result in results:
                if not result["ok"]:
                    code = 1 if result["code"] == 0 else 2  # wrong bytes / no (complete) transfer
                    problems.append((code, f"{result['name']} failed (curl exit {result['code']})"))
                if result["left"]:
                    problems.append((3, f"connections left after the {result['name']}"))
            if run.daemon is not None and run.daemon.process.poll() is not None:
                problems.append((3, f"the daemon died (exit {run.daemon.process.returncode})"))
            else:
                total = run.counters()
                print(
                    "  daemon totals: "
                    + ", ".join(
                        f"{k}={v}"
                        for k, v in total.items()
                        if k.startswith(("fault.", "tcp.out", "tcp.in")) or ".drop." in k
                    )
                )
                # Let the last delayed packets (held --delay seconds) go out before the
                # SIGTERM: one still held then is a separate, known shutdown race.
                time.sleep(min(1.0, 2 * args.delay + 0.1))
            during = run.log_text().count("Traceback")
        except Exception as exc:  # a setup failure: report it, clean up anyway
            if not stopper.stopped:  # (after a stop, what failed failed by it)
                problems.append((2, f"{type(exc).__name__}: {exc}"))
        finally:
            during = during or run.log_text().count("Traceback")  # also after a setup failure
            closed.append((during, *run.close()))

    stopper.run(exercise)
    if stopper.stopped:
        problems.append((2, f"interrupted ({signal.Signals(stopper.stopped).name})"))
    # (nothing closed: close() itself failed after a stop, which swallowed it)
    during, exit_code, was_running = closed[0] if closed else (0, None, False)
    log = run.log_text()
    tracebacks = log.count("Traceback")
    if during:
        problems.append((3, f"{during} Traceback(s) in the daemon log during the transfers"))
    if tracebacks > during:
        problems.append((3, f"{tracebacks - during} Traceback(s) in the daemon log at shutdown"))
    if exit_code not in (0, None) and not stopper.stopped:
        when = "on SIGTERM" if was_running else "by itself, before we stopped it"
        problems.append((3, f"the daemon exited {exit_code} {when}"))
    status = min((code for code, _ in problems), default=0)
    if problems:
        print("PROBLEMS: " + "; ".join(what for _, what in problems))
        if tracebacks:
            first = log.index("Traceback")
            print(log[max(0, log.rfind("\n", 0, max(0, first - 200))) : first + 3000])
        print(f"kept {workdir} (daemon log: {run.log})")
    elif args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    print("RESULT: " + ("PASS" if status == 0 else f"FAIL (exit {status})"))
    return status


if __name__ == "__main__":
    sys.exit(main())
