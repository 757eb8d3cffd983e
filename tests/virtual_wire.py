"""A layer under test on a virtual clock, its transmit recorded: what the
IPv4 (a whole Stack) and IPv6 (an IPv6Layer) packet tests share.

    wire = IPv4Wire()                      # a subclass sets `layer` and `decode`
    replies = wire.send(echo_request)      # packets in now, what went out, decoded
    expired = wire.at(61.0)                # the clock moves, timers fire as the runner fires them
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic
from typing import Protocol
from typing import SupportsBytes
from typing import TypeVar

from ustack.trace.records import TraceEvent

Decoded = TypeVar("Decoded")


class Receiver(Protocol):
    """A Stack, an IPv4Layer or an IPv6Layer: packets and `now` in, timers out."""

    def receive(self, packet: bytes, now: float = 0.0, checksum_ok: bool = False) -> None: ...

    def next_deadline(self) -> float | None: ...

    def handle_timers(self, now: float) -> None: ...


class VirtualWire(Generic[Decoded]):
    """`layer` receives what send() gives it; what it transmits is kept in
    `sent` and handed back read by `decode` (scapy's IP or IPv6)."""

    layer: Receiver

    def __init__(self, decode: Callable[[bytes], Decoded]) -> None:
        self.sent: list[bytes] = []
        self.trace: list[TraceEvent] = []
        self.now = 0.0
        self._decode = decode

    def transmit(self, packet: bytes | bytearray, gso_size: int = 0) -> bool:
        self.sent.append(bytes(packet))
        return True

    def send(self, *packets: SupportsBytes | bytes) -> list[Decoded]:
        """Each packet (scapy's or bytes) in at the current time; what went out."""
        before = len(self.sent)
        for packet in packets:
            self.layer.receive(bytes(packet), self.now)
        return [self._decode(p) for p in self.sent[before:]]

    def at(self, t: float) -> list[Decoded]:
        """The clock moves to t, timers fire as the runner would fire them."""
        before = len(self.sent)
        while (deadline := self.layer.next_deadline()) is not None and deadline <= t:
            self.now = max(self.now, deadline)
            self.layer.handle_timers(self.now)
        self.now = t
        return [self._decode(p) for p in self.sent[before:]]
