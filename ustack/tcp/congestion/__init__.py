"""Congestion control behind one small interface: NewReno (RFC 5681) and
CUBIC (RFC 9438, the default, as in Linux).

The connection tells the algorithm what happened (new data acknowledged,
a loss found by duplicate ACKs, a retransmission timeout); the algorithm
keeps cwnd and ssthresh. Fast recovery's window inflation (RFC 6582) is the
connection's business: it is the same for both.
"""

from __future__ import annotations

from typing import Protocol

INITIAL_SSTHRESH = 1 << 30  # "arbitrarily high" (RFC 5681 3.1)


class CongestionControl(Protocol):
    name: str
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


class NewReno:
    """RFC 5681 slow start and congestion avoidance, with appropriate byte
    counting (RFC 3465, L = 2*SMSS) in slow start."""

    name = "newreno"

    def __init__(self, mss: int, initial_window: int) -> None:
        self.mss = mss
        self.cwnd = initial_window
        self.ssthresh = INITIAL_SSTHRESH
        self._acked_in_ca = 0  # bytes acknowledged since cwnd last grew in CA

    def on_ack(self, acked: int, now: float, srtt: float | None) -> None:
        if self.cwnd < self.ssthresh:
            self.cwnd += min(acked, 2 * self.mss)
            return
        # Congestion avoidance: one segment per window of acknowledged data.
        self._acked_in_ca += acked
        if self._acked_in_ca >= self.cwnd:
            self._acked_in_ca -= self.cwnd
            self.cwnd += self.mss

    def on_loss(self, now: float, flight: int) -> None:
        self.ssthresh = max(flight // 2, 2 * self.mss)  # RFC 5681 (4)
        self.cwnd = self.ssthresh
        self._acked_in_ca = 0

    def on_recovery_end(self, now: float) -> None:
        self.cwnd = self.ssthresh

    def on_timeout(self, now: float, flight: int) -> None:
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss  # the loss window (RFC 5681 3.1)
        self._acked_in_ca = 0


class Cubic:
    """RFC 9438: after a loss, the window follows W(t) = C (t - K)^3 + W_max,
    concave up to the old maximum, then convex beyond; never slower than
    Reno would be (the Reno-friendly region). Windows in segments inside,
    bytes outside."""

    name = "cubic"
    C = 0.4  # RFC 9438 4.1
    BETA = 0.7  # multiplicative decrease

    def __init__(self, mss: int, initial_window: int) -> None:
        self.mss = mss
        self.cwnd = initial_window
        self.ssthresh = INITIAL_SSTHRESH
        self.w_max = 0.0  # segments, before the last reduction
        self._k = 0.0
        self._epoch: float | None = None  # when the current congestion avoidance began
        self._w_est = 0.0  # the Reno-friendly estimate, segments

    def on_ack(self, acked: int, now: float, srtt: float | None) -> None:
        if self.cwnd < self.ssthresh:
            self.cwnd += min(acked, 2 * self.mss)  # slow start, as Reno
            return
        segments = self.cwnd / self.mss
        rtt = srtt if srtt else 0.1
        if self._epoch is None:  # congestion avoidance starts (RFC 9438 4.2)
            self._epoch = now
            if segments < self.w_max:
                self._k = ((self.w_max - segments) / self.C) ** (1 / 3)
            else:
                self._k = 0.0
                self.w_max = segments
            self._w_est = segments
        t = now - self._epoch
        target = self.C * (t + rtt - self._k) ** 3 + self.w_max  # W_cubic(t + RTT)
        target = min(max(target, segments), 1.5 * segments)  # RFC 9438 4.4
        # Reno-friendly estimate (4.3): alpha = 3 (1 - beta) / (1 + beta).
        alpha = 3 * (1 - self.BETA) / (1 + self.BETA)
        self._w_est += alpha * (acked / self.mss) / segments
        if self._w_est > target:
            new_segments = segments + (self._w_est - segments) * (acked / self.mss) / segments
        else:
            new_segments = segments + (target - segments) * (acked / self.mss) / segments
        self.cwnd = max(int(new_segments * self.mss), self.cwnd)

    def on_loss(self, now: float, flight: int) -> None:
        segments = self.cwnd / self.mss
        # Fast convergence (4.7): give room to newer flows when shrinking.
        if segments < self.w_max:
            self.w_max = segments * (1 + self.BETA) / 2
        else:
            self.w_max = segments
        self.ssthresh = max(self.cwnd * 7 // 10, 2 * self.mss)  # BETA, in integers
        self.cwnd = self.ssthresh
        self._epoch = None

    def on_recovery_end(self, now: float) -> None:
        self.cwnd = self.ssthresh

    def on_timeout(self, now: float, flight: int) -> None:
        self.on_loss(now, flight)
        self.cwnd = self.mss
        self._epoch = None


ALGORITHMS: dict[str, type[NewReno] | type[Cubic]] = {"newreno": NewReno, "cubic": Cubic}


def make(name: str, mss: int, initial_window: int) -> CongestionControl:
    try:
        return ALGORITHMS[name](mss, initial_window)
    except KeyError:
        known = ", ".join(ALGORITHMS)
        raise ValueError(f"unknown congestion control {name!r} (known: {known})") from None
