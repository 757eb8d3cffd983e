"""The stack's counters: `layer.in`, `layer.out.<what>`, `layer.drop.<reason>`."""

from __future__ import annotations

from collections import Counter

from ustack.study.records import Drop, Tracer


class Counters(Counter[str]):
    """A Counter that also traces every drop, with its reason."""

    tracer: Tracer | None = None

    def drop(self, layer: str, reason: str, now: float, summary: str = "") -> None:
        self[f"{layer}.drop.{reason}"] += 1
        if self.tracer is not None:
            self.tracer(Drop(now, layer, reason, summary))
