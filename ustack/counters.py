"""The stack's counters: `layer.in`, `layer.out.<what>`, `layer.drop.<reason>`."""

from __future__ import annotations

from collections import Counter

from ustack.trace.records import Drop
from ustack.trace.records import Tracer
from ustack.trace.vocabulary import DropReason
from ustack.trace.vocabulary import Layer
from ustack.wire.errors import MalformedPacket


class Counters(Counter[str]):
    """A Counter that also traces every drop, with its reason."""

    tracer: Tracer | None = None

    def drop(
        self, layer: Layer, why: DropReason | MalformedPacket, now: float, summary: str = ""
    ) -> None:
        """A packet `layer` did not accept: for one of the vocabulary's reasons,
        or because its parser rejected it (the reason is then the wire layer's,
        MalformedPacket.reason)."""
        reason = why.reason if isinstance(why, MalformedPacket) else why
        self[f"{layer}.drop.{reason}"] += 1
        if self.tracer is not None:
            self.tracer(Drop(now, layer, reason, summary))
