"""Retransmission timeout from measured round trips (RFC 6298)."""

from __future__ import annotations

CLOCK_GRANULARITY = 0.001  # G: our clock is a float of seconds; 1 ms is honest


class RttEstimator:
    """SRTT, RTTVAR and RTO, as RFC 6298 section 2 computes them."""

    __slots__ = ("max_rto", "min_rto", "rto", "rttvar", "srtt")

    def __init__(self, initial_rto: float, min_rto: float, max_rto: float) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.rto = initial_rto  # (2.1) before any measurement

    def sample(self, rtt: float) -> None:
        if self.srtt is None:  # (2.2) the first measurement
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:  # (2.3) alpha = 1/8, beta = 1/4
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        # Once per ACK with timestamps: max() and min() written as
        # comparisons (no builtin calls), same results.
        variation = 4 * self.rttvar
        rto = self.srtt + (variation if variation > CLOCK_GRANULARITY else CLOCK_GRANULARITY)
        if rto < self.min_rto:  # (2.4)
            rto = self.min_rto
        self.rto = rto if rto < self.max_rto else self.max_rto  # (2.5)

    def back_off(self) -> None:
        """(5.5) double the RTO after a timeout."""
        self.rto = min(self.rto * 2, self.max_rto)
