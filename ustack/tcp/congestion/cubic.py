"""CUBIC (RFC 9438), the default, as in Linux."""

from __future__ import annotations

from ustack.tcp.congestion.newreno import INITIAL_SSTHRESH


class Cubic:
    """RFC 9438: after a loss, the window follows W(t) = C (t - K)^3 + W_max,
    concave up to the old maximum, then convex beyond; never slower than
    Reno would be (the Reno-friendly region). Windows in segments inside,
    bytes outside."""

    __slots__ = ("_epoch", "_k", "_w_est", "cwnd", "mss", "ssthresh", "w_max")
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
            # Slow start, as Reno (RFC 3465's L = 2 SMSS); per ACK: no min() call.
            limit = 2 * self.mss
            self.cwnd += acked if acked < limit else limit
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

    def copy(self) -> Cubic:
        other = Cubic(self.mss, self.cwnd)
        other.ssthresh = self.ssthresh
        other.w_max = self.w_max
        other._k = self._k
        other._epoch = self._epoch
        other._w_est = self._w_est
        return other
