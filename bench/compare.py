"""Two benchmark results side by side, row by row: what got better, what regressed.

    python bench/compare.py OLD.json NEW.json          # two results files (bench/results/)
    python bench/compare.py OLD.json --run -- --quick  # OLD against a fresh bench/run.py (root)
    python bench/compare.py OLD.json NEW.json --all    # the kernel's lines too

The files are those `bench/run.py --save` (or --json) and
`bench/connection_count.py --save` write. For each row it prints ustack's
figure, and the ratio ustack/kernel, old and new, and flags a REGRESSION when
the change in the worse direction passes the noise: the larger spread of the
two runs' reps of that side (max - min over the median), never less than
--tolerance (10 %). The ratio's noise is the two sides' added; the ratio is
the figure to trust on a shared machine, where the kernel's column moves too.
Exit status 4 when anything regressed (for CI), 0 otherwise.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import results  # bench/results.py: scripts here run as python bench/NAME.py

BENCH = Path(__file__).resolve().parent


def fresh_run(run_args: list[str]) -> dict[str, Any]:
    """bench/run.py with `run_args`, its results read back from --json."""
    with tempfile.TemporaryDirectory(prefix="ustack-compare-") as folder:
        out = Path(folder) / "new.json"
        argv = [sys.executable, str(BENCH / "run.py"), *run_args, "--json", str(out)]
        done = subprocess.run(argv, check=False)
        if not out.exists():
            raise SystemExit(f"compare: bench/run.py exit {done.returncode}, no results")
        return results.load(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="the earlier results file")
    parser.add_argument("new", type=Path, nargs="?", help="the later one (or --run)")
    parser.add_argument(
        "--run", nargs=argparse.REMAINDER, help="run bench/run.py with these arguments as NEW"
    )
    parser.add_argument(
        "--tolerance", type=float, default=0.10, help="the least change that counts (0.10)"
    )
    parser.add_argument("--all", action="store_true", help="the kernel's lines too")
    args = parser.parse_args(argv)
    if (args.new is None) == (args.run is None):
        parser.error("give NEW.json or --run [run.py arguments], one of them")
    try:
        old = results.load(args.old)
        new = results.load(args.new) if args.new is not None else fresh_run(args.run)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    for label, doc in (("old", old), ("new", new)):
        machine = doc["machine"]
        note = doc["options"].get("note") or ""
        print(
            f"{label}: {doc['revision']} on {doc['date'][:16]}, {machine.get('cpus')} CPUs, "
            f"load {machine.get('load_average')}" + (f" -- {note}" if note else "")
        )
    print()
    changes = results.compare(old, new, args.tolerance)
    print(results.format_changes(changes, everything=args.all))
    regressions = [c for c in changes if c.verdict == "regression"]
    print()
    print(f"{len(regressions)} regression(s) beyond the noise" + (":" if regressions else ""))
    for c in regressions:
        print(f"  {c.metric} ({c.what}): {results.fmt(c.old)} -> {results.fmt(c.new)}")
    return 4 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
