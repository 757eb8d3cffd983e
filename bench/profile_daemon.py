"""Where the daemon's time goes, as a file to keep: py-spy samples `ustack
serve` while curl downloads from it and while ab hammers it with new
connections (issue 18 item 8: the profile as an artefact).

Run as root, from the repository, with the venv's Python (py-spy comes with
`pip install -e '.[bench]'`):
    python bench/profile_daemon.py                    # 20 s each: download, ab -c 50
    python bench/profile_daemon.py --seconds 10 --out /tmp/prof

(Not bench/profile.py: that name would hide the standard library's `profile`,
which cProfile imports, from every script run from bench/.)

For each workload it writes, under bench/results/ (or --out):
    profile-DATE-REV-WORKLOAD.speedscope.json  open in https://www.speedscope.app
    profile-DATE-REV-WORKLOAD.txt              the top 20 functions, by own and total samples
    profile-DATE-REV-WORKLOAD.collapsed        py-spy's raw stacks (flamegraph.pl, speedscope)
The daemon runs in a namespace of bench/setups.py, removed at the end; the
clients beside it, as in bench/run.py. py-spy reads the process from outside
(--nonblocking: the daemon is never stopped to be sampled), so the figures are
the daemon's own, a little noisy where a sample catches a frame mid-change.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import results  # bench/*.py: scripts here run as python bench/NAME.py
from setups import MB
from setups import BenchError
from setups import Resources
from setups import Target
from setups import failed
from setups import log_step
from setups import start_ustack

from ustack.cli.args import folder_to_write
from ustack.linux.lab import DIE_WITH_PARENT
from ustack.linux.lab import LabError
from ustack.linux.lab import remove_stale_namespaces

RATE = 200  # samples a second: py-spy's default is 100; 200 costs the daemon little
TOP = 20


def py_spy() -> str:
    """py-spy beside this Python (the venv's bin), else on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    found = str(here) if here.exists() else shutil.which("py-spy")
    if found is None:
        raise BenchError("py-spy not found: pip install -e '.[bench]' (or pip install py-spy)")
    return found


def workload_argv(t: Target, name: str) -> list[str]:
    if name == "download":
        return t.client("curl", "-sS", "-o", "/dev/null", f"http://{t.address}/bytes/{100 * MB}")
    return t.client("ab", "-q", "-r", "-s", "10", "-n", "2000", "-c", "50", f"http://{t.address}/")


def record(t: Target, name: str, seconds: int, raw: Path) -> int:
    """py-spy on the daemon for `seconds`, the workload repeated meanwhile; runs done."""
    spy = subprocess.Popen(
        [*DIE_WITH_PARENT, py_spy(), "record", "--pid", str(t.pid), "--rate", str(RATE),
         "--duration", str(seconds), "--nonblocking", "--format", "raw", "--output", str(raw)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    runs = 0
    deadline = time.monotonic() + seconds + 30
    while spy.poll() is None and time.monotonic() < deadline:
        subprocess.run(workload_argv(t, name), capture_output=True, timeout=120, check=False)
        runs += 1
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait(5)
    if spy.returncode != 0 or not raw.exists():
        err = spy.stderr.read().decode(errors="replace") if spy.stderr else ""
        raise BenchError(f"py-spy exit {spy.returncode}: {err[-500:]}")
    t.alive()
    return runs


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    """py-spy's raw format: one stack a line, root first, frames `;`-joined,
    then the sample count."""
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def function_of(frame: str) -> str:
    """`handle (ustack/tcp/demux.py:120)` -> `handle (ustack/tcp/demux.py)`:
    a function's samples together, whatever line each caught."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0].rstrip(')')})" if where else name


def top(stacks: list[tuple[list[str], int]], n: int = TOP) -> str:
    """The functions with the most samples of their own (the leaf), and by
    total (anywhere on the stack, once per stack)."""
    total = sum(count for _, count in stacks) or 1
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        functions = [function_of(f) for f in frames]
        own[functions[-1]] += count
        for function in set(functions):
            inclusive[function] += count
    lines = [f"{total} samples at {RATE}/s", "", f"top {n} by own samples:"]
    lines += [f"  {c / total:6.1%}  {f}" for f, c in own.most_common(n)]
    lines += ["", f"top {n} by total samples (self and callees):"]
    lines += [f"  {c / total:6.1%}  {f}" for f, c in inclusive.most_common(n)]
    return "\n".join(lines) + "\n"


def speedscope(stacks: list[tuple[list[str], int]], name: str) -> dict[str, object]:
    """The collapsed stacks as speedscope's "sampled" profile (its file format
    schema: shared frames, each sample a list of frame indexes, root first)."""
    index: dict[str, int] = {}
    frames: list[dict[str, object]] = []
    samples, weights = [], []
    for stack, count in stacks:
        sample = []
        for frame in stack:
            if frame not in index:
                index[frame] = len(frames)
                fn, _, where = frame.partition(" (")
                file, _, line = where.rstrip(")").rpartition(":")
                entry: dict[str, object] = {"name": fn, "file": file or where.rstrip(")")}
                if line.isdigit():
                    entry["line"] = int(line)
                frames.append(entry)
            sample.append(index[frame])
        samples.append(sample)
        weights.append(count)
    return {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "shared": {"frames": frames},
        "profiles": [{"type": "sampled", "name": name, "unit": "none", "startValue": 0,
                      "endValue": sum(weights), "samples": samples, "weights": weights}],
        "name": name,
        "activeProfileIndex": 0,
        "exporter": "ustack bench/profile_daemon.py (py-spy raw)",
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20, help="sampled per workload (20)")
    parser.add_argument("--workloads", default="download,ab", help="download, ab or both")
    parser.add_argument(
        "--out", type=folder_to_write, default=results.RESULTS, help="bench/results/"
    )
    args = parser.parse_args(argv)
    names = args.workloads.split(",")
    if not set(names) <= {"download", "ab"} or not 1 <= args.seconds <= 600:
        parser.error("--workloads: download and/or ab; --seconds 1..600")
    res = Resources()
    stem = f"profile-{time.strftime('%Y-%m-%d')}-{results.revision()}"

    def measure() -> None:
        py_spy()
        remove_stale_namespaces()
        ustack = start_ustack(res, res.workdir("ustack-profile-"), 1500)
        args.out.mkdir(parents=True, exist_ok=True)
        for name in names:
            log_step(f"profiling the daemon for {args.seconds} s during {name}")
            raw = args.out / f"{stem}-{name}.collapsed"
            runs = record(ustack, name, args.seconds, raw)
            stacks = parse_collapsed(raw.read_text())
            title = f"ustack serve during {name} ({runs} runs), {results.revision()}"
            document = speedscope(stacks, title)
            (args.out / f"{stem}-{name}.speedscope.json").write_text(json.dumps(document))
            (args.out / f"{stem}-{name}.txt").write_text(f"{title}\n{top(stacks)}")
            print(f"{name}: {raw.with_suffix('.speedscope.json')}, {raw.with_suffix('.txt')}")
            print(top(stacks))

    try:
        res.run_stoppable(measure)
    except subprocess.TimeoutExpired as exc:
        return failed(BenchError(str(exc)))
    except (BenchError, LabError) as exc:
        return failed(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
