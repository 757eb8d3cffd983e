"""The table of bench/run.py and its results as JSON: a Row per metric (every
rep of both sides), the printed table, and the document --json and --save write."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


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
