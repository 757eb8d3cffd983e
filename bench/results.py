"""The table of bench/run.py and its results as JSON: a Row per metric (every
rep of both sides), the printed table, the document --json and --save write
(bench/results/), and the comparison of two such documents (bench/compare.py)."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import Protocol

from ustack.cli.args import file_to_write


class Labelled(Protocol):
    label: str  # "ustack" or "kernel"


@dataclass
class Row:
    metric: str
    unit: str
    better: str  # "higher", "lower" or "" (a count, a memory figure)
    ustack: list[float] = field(default_factory=list)
    kernel: list[float] = field(default_factory=list)
    how: str = "best"  # best of the reps, their "median" or "sum", or "one" measurement

    def value(self, side: str) -> float | None:
        values = self.ustack if side == "ustack" else self.kernel
        if not values:
            return None
        if self.how == "sum":
            return sum(values)
        if self.how == "one":
            return values[0]
        if self.how == "median":
            return statistics.median(values)
        return max(values) if self.better == "higher" else min(values)

    def of(self, t: Labelled) -> list[float]:
        """The list of `t`'s measurements."""
        return self.ustack if t.label == "ustack" else self.kernel

    def ratio(self) -> float | None:
        u, k = self.value("ustack"), self.value("kernel")
        if u is None or k is None or k == 0 or self.how == "sum":
            return None
        return u / k


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3f}"


def format_table(rows: Sequence[Row]) -> str:
    header = ("metric", "ustack", "kernel", "ustack/kernel")
    body = [
        (
            f"{r.metric} ({r.unit})",
            fmt(r.value("ustack")),
            fmt(r.value("kernel")),
            "-" if r.ratio() is None else f"{r.ratio():.3f}",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(4)]
    lines = []
    for n, line in enumerate([header, *body]):
        cells = [line[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---- the results file (--json, --save) and comparing two --------------------------------

FORMAT = "ustack-bench/1"  # the document's shape; compare.py refuses others
RESULTS = Path(__file__).resolve().parent / "results"


def revision() -> str:
    """The commit benchmarked, and whether the working tree differs from it."""
    try:
        out = subprocess.run(
            ["git", "-C", str(RESULTS.parent.parent), "describe", "--always", "--dirty"],
            capture_output=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.decode().strip()


def document(
    rows: Sequence[tuple[str, Row]],
    *,
    options: dict[str, Any],
    machine: dict[str, Any],
    notes: dict[str, Any],
    elapsed: float,
    problems: int,
    revision: str,
    date: str | None = None,
) -> dict[str, Any]:
    """Everything a run measured, every rep of both sides, with what it ran
    on and how (the JSON of --json and --save; `rows` are (key, Row))."""
    return {
        "format": FORMAT,
        "date": date or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "revision": revision,
        "options": options,
        "machine": machine,
        "elapsed_s": round(elapsed, 1),
        "rows": [
            {
                "key": key,
                "metric": r.metric,
                "unit": r.unit,
                "better": r.better,
                "how": r.how,
                "ustack": r.value("ustack"),
                "kernel": r.value("kernel"),
                "ratio": r.ratio(),
                "ustack_reps": r.ustack,
                "kernel_reps": r.kernel,
            }
            for key, r in rows
        ],
        "notes": notes,
        "problems": problems,
    }


def save_path(doc: dict[str, Any], kind: str = "", folder: Path = RESULTS) -> Path:
    """bench/results/<date>-<rev>[-kind].json (a second one the same day gets -2, -3...)."""
    stem = f"{doc['date'][:10]}-{doc['revision']}" + (f"-{kind}" if kind else "")
    path, n = folder / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.json"
    return path


def add_output_options(parser: argparse.ArgumentParser, kind: str = "") -> None:
    """--json, --save and --note: where a run's results document goes (write_outputs)."""
    saved = f"bench/results/DATE-REV{f'-{kind}' if kind else ''}.json"
    parser.add_argument(
        "--json", type=file_to_write, metavar="FILE", help="also write the results here"
    )
    parser.add_argument(
        "--save",
        action="store_true",
        help=f"also write them (every rep, the machine, the revision, the options) to {saved},"
        " for bench/compare.py",
    )
    parser.add_argument(
        "--note", default="", help="a remark kept in the results (e.g. 'machine loaded')"
    )


def write_outputs(
    doc: dict[str, Any], args: argparse.Namespace, kind: str = "", folder: Path = RESULTS
) -> None:
    """The results document to --json and, with --save, to bench/results/."""
    text = json.dumps(doc, indent=2) + "\n"
    if args.json:
        args.json.write_text(text)
    if args.save:
        path = save_path(doc, kind, folder)
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        print(f"saved {path}")


def load(path: Path) -> dict[str, Any]:
    """A results file, checked for the shape compare() reads."""
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a bench results file ({FORMAT})")
    shapes = {"rows": list, "machine": dict, "options": dict, "revision": str, "date": str}
    if wrong := sorted(key for key, kind in shapes.items() if not isinstance(doc.get(key), kind)):
        raise ValueError(f"{path}: no {', '.join(wrong)} of the right kind")
    for row in doc["rows"]:
        if not isinstance(row, dict):
            raise ValueError(f"{path}: a row that is not an object: {row!r:.40}")
        missing = {"key", "metric", "better", "how", "ustack_reps", "kernel_reps"} - set(row)
        if missing:
            raise ValueError(f"{path}: row {row.get('key')!r} lacks {sorted(missing)}")
    return doc


def lower_is_better(row: dict[str, Any]) -> bool:
    """Rates are better higher; latencies, memory and failure counts lower."""
    return bool(row["better"] != "higher")


def spread(reps: Sequence[float]) -> float:
    """How far the reps of one side lie apart, relative to their middle: the
    noise a change must pass to count. 0 for one rep (the tolerance decides)."""
    if len(reps) < 2:
        return 0.0
    middle = statistics.median(reps)
    return (max(reps) - min(reps)) / abs(middle) if middle else 0.0


@dataclass
class Change:
    key: str
    metric: str
    what: str  # "ustack", "kernel" or "ratio"
    old: float | None
    new: float | None
    change: float | None  # relative, new/old - 1
    noise: float  # the relative change that is still noise
    verdict: str  # "regression", "better", "" (within noise) or "new"/"gone"


def _judge(change: float | None, noise: float, lower: bool) -> str:
    if change is None:
        return ""
    worse = change > noise if lower else change < -noise
    better = change < -noise if lower else change > noise
    return "regression" if worse else "better" if better else ""


def compare(old: dict[str, Any], new: dict[str, Any], tolerance: float = 0.10) -> list[Change]:
    """Row by row, the ustack figure, the kernel's and their ratio, old to new.
    A change counts when it passes the larger of the two runs' spreads of that
    side's reps, and never less than `tolerance` (rows of one measurement, and
    the wall clock of a shared machine). Counts (failed requests) count any rise
    from zero. The ratio's noise is the two sides' noises added: ustack's own
    regression shows in it even when the whole machine got slower."""
    changes: list[Change] = []
    old_rows = {row["key"]: row for row in old["rows"]}
    for row in new["rows"]:
        key, previous = row["key"], old_rows.pop(row["key"], None)
        if previous is None:
            changes.append(
                Change(key, row["metric"], "ustack", None, row["ustack"], None, 0, "new")
            )
            continue
        lower = lower_is_better(row)
        noises = {}
        for side in ("ustack", "kernel"):
            noise = max(spread(previous[f"{side}_reps"]), spread(row[f"{side}_reps"]), tolerance)
            noises[side] = noise
            a, b = previous[side], row[side]
            if a is None or b is None:
                change, verdict = None, ""
            elif row["how"] == "sum":  # a count: any rise from zero is news
                change = (b / a - 1) if a else (float("inf") if b else 0.0)
                verdict = "regression" if b > a else "better" if b < a else ""
            else:
                change = b / a - 1 if a else None
                verdict = _judge(change, noise, lower)
            changes.append(Change(key, row["metric"], side, a, b, change, noise, verdict))
        a, b = previous.get("ratio"), row.get("ratio")
        if a and b is not None:
            noise = noises["ustack"] + noises["kernel"]
            change = b / a - 1
            changes.append(
                Change(
                    key, row["metric"], "ratio", a, b, change, noise, _judge(change, noise, lower)
                )
            )
    for key, row in old_rows.items():
        changes.append(Change(key, row["metric"], "ustack", row["ustack"], None, None, 0, "gone"))
    return changes


def format_changes(changes: Sequence[Change], everything: bool = False) -> str:
    """The comparison as a table; without `everything`, only the ustack and
    ratio lines and any line with a verdict."""
    header = ("metric", "", "old", "new", "change", "noise", "")
    body = []
    for c in changes:
        if not everything and c.what == "kernel" and not c.verdict:
            continue
        change = "-" if c.change is None else f"{c.change:+.1%}"
        flag = {"regression": "REGRESSION", "better": "better"}.get(c.verdict, c.verdict)
        old = f"{c.old:.3f}" if c.what == "ratio" and c.old is not None else fmt(c.old)
        new = f"{c.new:.3f}" if c.what == "ratio" and c.new is not None else fmt(c.new)
        body.append((c.metric, c.what, old, new, change, f"{c.noise:.0%}", flag))
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = []
    for line in [header, *body]:
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1])]
        cells += [cell.rjust(w) for cell, w in zip(line[2:6], widths[2:6], strict=True)]
        lines.append("  ".join([*cells, line[6]]).rstrip())
    return "\n".join(lines)
