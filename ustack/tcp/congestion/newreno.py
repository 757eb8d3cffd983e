"""NewReno's window (RFC 5681): slow start and congestion avoidance."""

from __future__ import annotations

INITIAL_SSTHRESH = 1 << 30  # "arbitrarily high" (RFC 5681 3.1)


class NewReno:
    """RFC 5681 slow start and congestion avoidance, with appropriate byte
    counting (RFC 3465, L = 2*SMSS) in slow start."""

    __slots__ = ("_acked_in_ca", "cwnd", "mss", "ssthresh")
    name = "newreno"

    def __init__(self, mss: int, initial_window: int) -> None:
        self.mss = mss
        self.cwnd = initial_window
        self.ssthresh = INITIAL_SSTHRESH
        self._acked_in_ca = 0  # bytes acknowledged since cwnd last grew in CA

    def on_ack(self, acked: int, now: float, srtt: float | None) -> None:
        if self.cwnd < self.ssthresh:
            # RFC 3465's L = 2 SMSS; per ACK: no min() call.
            limit = 2 * self.mss
            self.cwnd += acked if acked < limit else limit
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

    def copy(self) -> NewReno:
        other = NewReno(self.mss, self.cwnd)
        other.ssthresh = self.ssthresh
        other._acked_in_ca = self._acked_in_ca
        return other

    def on_timeout(self, now: float, flight: int) -> None:
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss  # the loss window (RFC 5681 3.1)
        self._acked_in_ca = 0
