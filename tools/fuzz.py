#!/usr/bin/env python3
"""Fuzz the whole input path: raw IPv4 bytes -> IP -> TCP -> connections.

    python -m tools.fuzz --inputs 1000000        # coverage-guided (atheris), the long run
    python -m tools.fuzz --engine random --inputs 20000 --seed 7
    python -m tools.fuzz --replay                # replay tests/fuzz_corpus/*.json
    python -m tools.fuzz --replay FILE.json ...  # some cases; failures printed in full
    python -m tools.fuzz --run-input FILE        # one raw fuzz input (bytes) from the work dir

Each input is a program for the fuzz target in tests/fuzzworld.py: it
brings connections up with valid segments, then sends structure-aware
mutations (fields around RCV.NXT, the window edge, SND.UNA/NXT/MAX, 2^31
away; every flag combination; broken options, data offsets, IHL and total
lengths; mostly correct checksums), lets virtual time run so timers fire,
and calls the application API (read, write, shutdown, close, abort). After
every step the invariants of ustack/tcp/invariants.py are checked; at the
end every connection is closed and nothing may be left six virtual hours on.

Engines: `atheris` (libFuzzer, coverage-guided over the instrumented ustack
code; the default when installed) runs in a child process whose libFuzzer
lines are summarised here; its working corpus stays in --work
(/tmp/ustack-fuzz). `random` feeds random bytes to the same decoder, in
this process, deterministically for a --seed.

Every new failure (one per signature: an exception's type and place, or the
broken rule) is minimised (delta debugging over its actions) and written to
--corpus (tests/fuzz_corpus/) as a JSON case that replays without the
generator; tests/unit/test_fuzz_corpus.py replays them all. The raw input
goes to --work/failures/. The report: inputs run, wall time, rate, packets
injected, libFuzzer's coverage (cov: edges, ft: features), the states and
counters reached, and the failures by signature.

Exit code: 0 nothing failed, 1 failures found (or a corpus case failed on --replay).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_CORPUS = ROOT / "tests" / "fuzz_corpus"
DEFAULT_WORK = Path("/tmp/ustack-fuzz")
PROGRESS_EVERY = 30.0  # seconds between progress lines
SEED_INPUTS = 200  # random programs to start libFuzzer's corpus with


class Recorder:
    """Counts inputs and failures; minimises and saves each new failure once."""

    def __init__(self, fw: Any, corpus: Path, work: Path, minimize: bool) -> None:
        self.fw = fw
        self.corpus = corpus
        self.work = work
        self.minimize = minimize
        self.coverage = fw.Coverage()
        self.inputs = 0
        self.failures: dict[str, int] = {}
        self.saved: dict[str, str] = {}
        self.started = time.monotonic()
        self._last_progress = self.started

    def run(self, data: bytes, timeout: float) -> None:
        self.inputs += 1
        _arm_alarm(timeout)
        try:
            self.fw.run_program(data, self.coverage)
        except self.fw.FuzzFailure as failure:
            _arm_alarm(0)
            self._failed(data, failure)
        finally:
            _arm_alarm(0)
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY:
            self._last_progress = now
            print(f"[fuzz] {self.progress()}", flush=True)

    def _failed(self, data: bytes, failure: Any) -> None:
        signature = failure.signature
        self.failures[signature] = self.failures.get(signature, 0) + 1
        if signature in self.saved:
            return
        digest = hashlib.sha1(data).hexdigest()[:12]
        raw = self.work / "failures" / f"{_slug(signature)}-{digest}.bin"
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_bytes(data)
        case = failure.case
        if self.minimize and signature != "hang":
            case = self.fw.minimize(case, signature)
        text = self.fw.case_to_json(case, f"found by tools/fuzz.py (input {raw.name})")
        name = f"{_slug(signature)}-{hashlib.sha1(text.encode()).hexdigest()[:8]}.json"
        self.corpus.mkdir(parents=True, exist_ok=True)
        (self.corpus / name).write_text(text)
        self.saved[signature] = name
        print(
            f"[fuzz] NEW FAILURE {signature}: {len(case['actions'])} actions after "
            f"minimising, saved {self.corpus / name}\n"
            + "\n".join("    " + line for line in failure.message.splitlines()[-6:]),
            flush=True,
        )

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def progress(self) -> str:
        elapsed = self.elapsed()
        rate = self.inputs / elapsed if elapsed else 0.0
        failed = sum(self.failures.values())
        return (
            f"{self.inputs} inputs in {elapsed:.0f} s ({rate:.0f}/s), "
            f"{self.coverage.packets} packets, {failed} failures "
            f"({len(self.failures)} distinct); {self.coverage.summary()}"
        )

    def stats(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "seconds": round(self.elapsed(), 1),
            "packets": self.coverage.packets,
            "actions": self.coverage.actions,
            "coverage": self.coverage.summary(),
            "failures": self.failures,
            "saved": self.saved,
        }


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    from tests import fuzzworld

    raise fuzzworld.Hang("the input ran past --timeout")


def _arm_alarm(seconds: float) -> None:
    signal.setitimer(signal.ITIMER_REAL, seconds)


def _slug(signature: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", signature.lower()).strip("-")[:60]


def _load_target() -> Any:
    from tests import fuzzworld

    return fuzzworld


def _report(stats: dict[str, Any], engine: str, libfuzzer: str = "") -> int:
    seconds = stats["seconds"] or 1e-9
    print(f"\n== fuzz report ({engine}) ==")
    print(f"inputs:   {stats['inputs']}")
    print(f"time:     {seconds:.1f} s wall")
    print(f"rate:     {stats['inputs'] / seconds:.0f} inputs/s")
    print(f"packets:  {stats['packets']} injected ({stats['actions']} actions in all)")
    if libfuzzer:
        print(f"libFuzzer: {libfuzzer}")
    print(f"reached:  {stats['coverage']}")
    failures = stats["failures"]
    if not failures:
        print("failures: none")
        return 0
    print(f"failures: {sum(failures.values())} ({len(failures)} distinct)")
    for signature, count in sorted(failures.items(), key=lambda item: -item[1]):
        print(f"  {count:8d}  {signature}  -> {stats['saved'].get(signature, '?')}")
    return 1


# ---- engines ---------------------------------------------------------------------------------


def run_random(args: argparse.Namespace) -> int:
    fw = _load_target()
    signal.signal(signal.SIGALRM, _on_alarm)
    recorder = Recorder(fw, args.corpus, args.work, not args.no_minimize)
    next_input = fw.random_programs(args.seed, args.max_len)
    for _ in range(args.inputs):
        recorder.run(next_input(), args.timeout)
    return _report(recorder.stats(), f"random, seed {args.seed}")


def run_atheris_worker(args: argparse.Namespace) -> None:
    """The child: libFuzzer drives `one_input`; stats go to a file the parent reads."""
    import atheris

    with atheris.instrument_imports(include=["ustack"]):  # coverage of the stack only
        fw = _load_target()
    signal.signal(signal.SIGALRM, _on_alarm)
    recorder = Recorder(fw, args.corpus, args.work, not args.no_minimize)
    stats_file = args.work / "stats.json"

    def write_stats() -> None:
        stats_file.write_text(json.dumps(recorder.stats()))

    def one_input(data: bytes) -> None:
        recorder.run(data, args.timeout)
        if recorder.inputs % 10000 == 0:
            write_stats()
        if recorder.inputs >= args.inputs:
            write_stats()
            sys.stdout.flush()
            os._exit(0)  # libFuzzer would exit without Python's clean-up anyway

    libfuzzer_corpus = args.work / "corpus"
    libfuzzer_corpus.mkdir(parents=True, exist_ok=True)
    if not any(libfuzzer_corpus.iterdir()):
        # A head start: programs long enough to reach the later states, which
        # libFuzzer's slowly growing length limit would reach only late.
        next_input = fw.random_programs(args.seed, args.max_len)
        for number in range(SEED_INPUTS):
            (libfuzzer_corpus / f"seed-{number}").write_bytes(next_input())
    flags = [
        f"-runs={2 * args.inputs + 1000}",
        f"-max_len={args.max_len}",
        f"-seed={args.seed}",
        "-timeout=0",  # ours is SIGALRM-based, per input (--timeout)
        "-print_final_stats=1",
        "-reload=0",
        str(libfuzzer_corpus),
    ]
    atheris.Setup([sys.argv[0], *flags], one_input)
    atheris.Fuzz()


def run_atheris(args: argparse.Namespace) -> int:
    """The parent: runs the worker, shows its progress, reports at the end."""
    args.work.mkdir(parents=True, exist_ok=True)
    stats_file = args.work / "stats.json"
    stats_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "tools.fuzz", "--worker", *sys.argv[1:]]
    started = time.monotonic()
    child = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        cwd=ROOT,  # the worker runs as `-m tools.fuzz`, from the repository root
    )
    assert child.stdout is not None
    last_cov = ""
    new_lines = 0
    try:
        for line in child.stdout:
            found = re.search(r"cov: \d+ ft: \d+ corp: \S+", line)
            if found:
                last_cov = found.group(0)
            if line.startswith("INFO: Instrumenting"):
                continue
            if re.match(r"#\d+\s+(NEW|REDUCE|INITED)", line):
                new_lines += 1
                continue
            print(line, end="", flush=True)
    except KeyboardInterrupt:
        child.send_signal(signal.SIGINT)
    code = child.wait()
    if not stats_file.exists():
        print(f"fuzz: the atheris worker exited with {code} before finishing", file=sys.stderr)
        return 2
    stats = json.loads(stats_file.read_text())
    stats["seconds"] = round(time.monotonic() - started, 1)
    libfuzzer = f"{last_cov} ({new_lines} inputs added to its corpus)" if last_cov else ""
    return _report(stats, "atheris, coverage-guided", libfuzzer)


def replay_cases(paths: list[Path]) -> int:
    """Replay each case file (every *.json of a folder named); a file that is
    not a case counts as a failure, told in one line."""
    fw = _load_target()
    paths = [
        case
        for path in paths
        for case in (sorted(path.glob("*.json")) if path.is_dir() else [path])
    ]
    if not paths:
        print("no case to replay (an empty folder?)")
        return 1
    failed = 0
    for path in paths:
        try:
            case = fw.load_case(path)
            if not isinstance(case, dict) or not {"setup", "actions"} <= case.keys():
                raise ValueError("no setup and actions")
        except (OSError, ValueError) as exc:  # (json's errors are ValueErrors)
            failed += 1
            print(f"FAIL {path}: not a case: {exc}")
            continue
        try:
            world = fw.replay(case)
        except fw.FuzzFailure as failure:
            failed += 1
            print(f"FAIL {path.name}: {failure.signature}\n{failure.message}")
            continue
        except (KeyError, TypeError, ValueError) as exc:  # its setup (actions fail as FuzzFailure)
            failed += 1
            print(f"FAIL {path}: not a case: its setup: {type(exc).__name__}: {exc}")
            continue
        packets = sum(1 for action in case["actions"] if action[0] == "packet")
        print(f"ok   {path.name}: {packets} packets, {dict(world.stack.counters)['ip.in']} in")
    print(f"{len(paths) - failed}/{len(paths)} cases pass")
    return 1 if failed else 0


def run_input(path: Path) -> int:
    fw = _load_target()
    try:
        fw.run_program(path.read_bytes())
    except fw.FuzzFailure as failure:
        print(f"FAIL {failure.signature}\n{failure.message}")
        print(fw.case_to_json(failure.case))
        return 1
    print("ok")
    return 0


def _at_least(low: int) -> Callable[[str], int]:
    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"want a whole number >= {low}, not {text!r}")
        return value

    return whole


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 3600:  # (NaN fails too) setitimer takes no more
        raise argparse.ArgumentTypeError(f"want seconds in (0, 3600], not {text!r}")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=_at_least(1), default=100_000, help="inputs to run")
    parser.add_argument("--engine", choices=("atheris", "random"), default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-len", type=_at_least(1), default=512, help="bytes per input")
    parser.add_argument("--timeout", type=_seconds, default=20.0, help="seconds per input")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--no-minimize", action="store_true")
    parser.add_argument("--replay", nargs="*", type=Path, default=None, metavar="CASE")
    parser.add_argument("--run-input", type=Path, metavar="FILE")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replay is not None:
        return replay_cases(args.replay or sorted(args.corpus.glob("*.json")))
    if args.run_input is not None:
        try:
            return run_input(args.run_input)
        except OSError as exc:
            parser.error(f"--run-input {args.run_input}: {exc.strerror or exc}")
    if args.worker:
        run_atheris_worker(args)
        return 0
    engine = args.engine
    if engine is None:
        try:
            import atheris  # noqa: F401
        except ImportError:
            engine = "random"
            print("fuzz: atheris is not installed; using the random engine", file=sys.stderr)
        else:
            engine = "atheris"
    elif engine == "atheris" and importlib.util.find_spec("atheris") is None:
        parser.error("--engine atheris: atheris is not installed (pip install atheris)")
    try:
        args.work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"--work {args.work}: {exc.strerror or exc}")
    return run_atheris(args) if engine == "atheris" else run_random(args)


if __name__ == "__main__":
    sys.exit(main())
