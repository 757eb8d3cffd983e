"""Congestion control behind one small interface: NewReno (RFC 5681) and
CUBIC (RFC 9438, the default, as in Linux).

The connection tells the algorithm what happened (new data acknowledged,
a loss found by duplicate ACKs, a retransmission timeout); the algorithm
keeps cwnd and ssthresh. Fast recovery's window inflation (RFC 6582) is the
connection's business: it is the same for both.
"""

from __future__ import annotations

from typing import Protocol

from ustack.tcp.congestion.cubic import Cubic
from ustack.tcp.congestion.newreno import INITIAL_SSTHRESH
from ustack.tcp.congestion.newreno import NewReno

__all__ = ["ALGORITHMS", "INITIAL_SSTHRESH", "CongestionControl", "Cubic", "NewReno", "make"]


class CongestionControl(Protocol):
    name: str
    mss: int
    cwnd: int
    ssthresh: int

    def on_ack(self, acked: int, now: float, srtt: float | None) -> None:
        """`acked` new bytes were acknowledged outside recovery."""

    def on_loss(self, now: float, flight: int) -> None:
        """A loss found by duplicate ACKs: fast retransmit and recovery begin.
        Sets ssthresh, and cwnd to what recovery starts from (before the
        connection inflates it by three segments)."""

    def on_recovery_end(self, now: float) -> None:
        """Fast recovery is over (a full ACK): cwnd deflates to ssthresh."""

    def on_timeout(self, now: float, flight: int) -> None:
        """A retransmission timeout: cwnd collapses to one segment."""

    def copy(self) -> CongestionControl:
        """The state as it is now, apart (what an undo restores: dsack.py).
        A method, not copy.copy: the compiled build's classes have no
        __reduce__ that copy can use."""
        ...


ALGORITHMS: dict[str, type[NewReno] | type[Cubic]] = {"newreno": NewReno, "cubic": Cubic}


def make(name: str, mss: int, initial_window: int) -> CongestionControl:
    try:
        return ALGORITHMS[name](mss, initial_window)
    except KeyError:
        known = ", ".join(ALGORITHMS)
        raise ValueError(f"unknown congestion control {name!r} (known: {known})") from None
