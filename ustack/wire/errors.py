"""Exceptions the stack raises to its callers."""

from __future__ import annotations


class MalformedPacket(ValueError):
    """Bytes that do not form a valid header.

    `reason` is a short stable code (e.g. "ipv4-truncated") used as the key of
    the drop counters; the message says what exactly was wrong.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
