"""RACK (RFC 8985 6): loss detection by time, from a log of what was sent when.

A segment is lost when one sent *after* it has been delivered (ACKed or
SACKed) and a reordering window has passed since: RACK.rtt after its own
send. Time, not sequence order, is what counts, so a lost retransmission is
found like any other loss, without waiting for the retransmission timeout.

The connection logs every data segment (and the FIN) it sends, with SACK
agreed; the log covers exactly SND.UNA..SND.MAX, one entry per transmission
(entries split where a later retransmission or a SACK block cuts them).
"""

from __future__ import annotations

from collections import deque

from ustack.tcp import seq
from ustack.tcp.seq import HALF
from ustack.tcp.seq import MASK
from ustack.tcp.seq import MOD

INFINITY = float("inf")


class Sent:
    """One stretch of sequence space and its latest transmission."""

    __slots__ = ("end", "lost", "retransmitted", "sacked", "sent_at", "start")

    def __init__(self, start: int, end: int, sent_at: float) -> None:
        self.start = start
        self.end = end
        self.sent_at = sent_at
        self.retransmitted = False
        self.sacked = False
        self.lost = False  # deemed lost and not sent again since

    def split(self, at: int) -> Sent:
        """Cut at `at`: this keeps start..at, the returned copy at..end."""
        tail = Sent(at, self.end, self.sent_at)
        tail.retransmitted, tail.sacked, tail.lost = self.retransmitted, self.sacked, self.lost
        self.end = at
        return tail

    def __repr__(self) -> str:
        marks = zip("RSL", (self.retransmitted, self.sacked, self.lost), strict=True)
        flags = "".join(c for c, on in marks if on)
        return f"<Sent {self.start}..{self.end} @{self.sent_at:.6f} {flags}>"


def sent_after(t1: float, end1: int, t2: float, end2: int) -> bool:
    """RFC 8985 6.2 RACK_sent_after: later in time; at the same instant, higher in sequence."""
    return t1 > t2 or (t1 == t2 and seq.gt(end1, end2))


# The log of a connection with nothing in flight: one shared, never written
# (on_send gives a connection its own). An empty deque costs 760 bytes, and
# most connections are idle most of the time.
_NO_LOG: deque[Sent] = deque(maxlen=0)


class Rack:
    __slots__ = (
        "_mult_raised_at", "_reo_wnd_persist", "end_seq", "fack", "log", "lost_out", "min_rtt",
        "reo_wnd_mult", "reordering_seen", "retransmitted_out", "rtt", "sacked_bytes", "xmit_ts",
    )  # fmt: skip

    def __init__(self) -> None:
        self.log: deque[Sent] = _NO_LOG
        # RACK.xmit_ts, RACK.end_seq: the most recently sent delivered segment;
        # RACK.rtt: its round trip; RACK.fack: the highest end delivered.
        self.xmit_ts = -INFINITY
        self.end_seq = 0
        self.rtt = 0.0
        self.min_rtt = INFINITY
        self.fack: int | None = None
        self.reordering_seen = False  # RACK.reord: a segment arrived below RACK.fack
        # RFC 8985 6.2 step 4: the window grows by min_RTT/4 for each round
        # trip with a D-SACK, and shrinks back after 16 recoveries without.
        self.reo_wnd_mult = 1
        self._reo_wnd_persist = 0
        self._mult_raised_at = -INFINITY
        self.retransmitted_out = 0  # log entries sent more than once (loss may hide there)
        self.sacked_bytes = 0  # what the peer holds above SND.UNA: the SACK scoreboard
        self.lost_out = 0  # log entries marked lost, not sent again yet

    # ---- what was sent -----------------------------------------------------

    def on_send(self, start: int, end: int, now: float) -> None:
        """A data segment (or FIN) covering start..end went out at `now`."""
        log = self.log
        if log is _NO_LOG:
            log = self.log = deque()
        if not log or seq.ge(start, log[-1].end):
            log.append(Sent(start, end, now))
            return
        # A retransmission (maybe running on into new data).
        top = log[-1].end
        if seq.gt(end, top):
            log.append(Sent(top, end, now))
            end = top
        self._split_at(start)
        self._split_at(end)
        for entry in self._between(start, end):
            if not entry.retransmitted:
                entry.retransmitted = True
                self.retransmitted_out += 1
            if entry.lost:
                entry.lost = False
                self.lost_out -= 1
            entry.sent_at = now

    # ---- what was delivered -----------------------------------------------

    def on_ack(self, ack: int, now: float) -> None:
        """SND.UNA moved to `ack`: entries below it are delivered and go."""
        log = self.log
        # Every ACK drops the entries it covers: one deque pop each, the rest
        # inlined (seq.le, the counts the entry leaves, and _delivered's
        # common case, a first transmission: RFC 8985 6.2 steps 2 and 3).
        while log:
            entry = log[0]
            end = entry.end
            if ((ack - end) & MASK) >= HALF:
                break  # not END =< SEG.ACK (RFC 9293 3.4's comparison)
            log.popleft()
            if entry.sacked:
                length = (end - entry.start) & MASK
                self.sacked_bytes -= length - MOD if length > HALF else length
            elif not entry.retransmitted:
                sent_at = entry.sent_at
                rtt = now - sent_at
                if rtt < self.min_rtt:
                    self.min_rtt = rtt
                xmit_ts = self.xmit_ts
                if sent_at > xmit_ts or (
                    sent_at == xmit_ts and 0 < ((end - self.end_seq) & MASK) < HALF
                ):  # RACK_sent_after
                    self.xmit_ts, self.end_seq, self.rtt = sent_at, end, rtt
                fack = self.fack
                if fack is None or 0 < ((end - fack) & MASK) < HALF:
                    self.fack = end
                else:
                    self.reordering_seen = True  # delivered below one delivered before
            else:
                self._delivered(entry, now)
            if entry.retransmitted:
                self.retransmitted_out -= 1
            if entry.lost:
                self.lost_out -= 1
        if not log:
            self.log = _NO_LOG  # all delivered: the connection's own log goes
            return
        head = log[0]
        if 0 < ((ack - head.start) & MASK) < HALF:  # seq.lt inlined: an ACK inside the head entry
            if head.sacked:
                self.sacked_bytes -= seq.diff(ack, head.start)
            else:
                self._delivered(head, now)
            head.start = ack

    def on_sack(self, blocks: tuple[tuple[int, int], ...], now: float) -> bool:
        """The peer holds these blocks; True if it reported bytes not SACKed
        before. Blocks that do not end within SND.UNA..SND.MAX are ignored
        (D-SACKs below SND.UNA, or a liar); one reaching below SND.UNA is cut."""
        log = self.log
        if not log:
            return False
        low, high = log[0].start, log[-1].end
        newly = False
        for left, right in blocks:
            if seq.le(right, low) or seq.gt(right, high) or not seq.lt(left, right):
                continue
            left = left if seq.gt(left, low) else low
            self._split_at(left)
            self._split_at(right)
            for entry in self._between(left, right):
                if not entry.sacked:
                    entry.sacked = newly = True
                    self.sacked_bytes += seq.diff(entry.end, entry.start)
                    if entry.lost:
                        entry.lost = False
                        self.lost_out -= 1
                    self._delivered(entry, now)
        return newly

    def forget_sacks(self) -> None:
        """The peer may have reneged (RFC 2018 8): nothing counts as held."""
        for entry in self.log:
            entry.sacked = False
        self.sacked_bytes = 0

    def sacked_ranges(self) -> list[list[int]]:
        """The scoreboard as sorted, merged [left, right) ranges."""
        ranges: list[list[int]] = []
        for entry in self.log:
            if not entry.sacked:
                continue
            if ranges and ranges[-1][1] == entry.start:
                ranges[-1][1] = entry.end
            else:
                ranges.append([entry.start, entry.end])
        return ranges

    def _delivered(self, entry: Sent, now: float) -> None:
        """RFC 8985 6.2 steps 2 and 3, for one newly delivered entry."""
        rtt = now - entry.sent_at
        if entry.retransmitted and rtt < self.min_rtt != INFINITY:
            return  # faster than the path can be: the ACK is for the original (spurious)
        if not entry.retransmitted:
            self.note_rtt(rtt)
        if sent_after(entry.sent_at, entry.end, self.xmit_ts, self.end_seq):
            self.xmit_ts, self.end_seq, self.rtt = entry.sent_at, entry.end, rtt
        if self.fack is None or seq.gt(entry.end, self.fack):
            self.fack = entry.end
        elif not entry.retransmitted:
            self.reordering_seen = True  # delivered below one delivered before

    def note_rtt(self, rtt: float) -> None:
        if rtt < self.min_rtt:
            self.min_rtt = rtt

    # ---- losses --------------------------------------------------------------

    def on_dsack(self, now: float, srtt: float) -> None:
        self.reordering_seen = True
        if now - self._mult_raised_at >= srtt:  # once a round trip
            self.reo_wnd_mult += 1
            self._mult_raised_at = now
            self._reo_wnd_persist = 16

    def recovery_over(self) -> None:
        if self._reo_wnd_persist:
            self._reo_wnd_persist -= 1
            if not self._reo_wnd_persist:
                self.reo_wnd_mult = 1

    def reordering_window(self, in_recovery: bool, sacked_segments: int, srtt: float) -> float:
        """RFC 8985 6.2 step 4: none while no reordering was seen and we are in
        recovery or three segments are SACKed (the DupThresh rule); else a
        quarter of the minimum RTT, at most SRTT."""
        if not self.reordering_seen and (in_recovery or sacked_segments >= 3):
            return 0.0
        quarter = self.min_rtt / 4 if self.min_rtt != INFINITY else 0.0
        return min(self.reo_wnd_mult * quarter, srtt)

    def detect_loss(self, now: float, reo_wnd: float) -> tuple[list[Sent], float]:
        """RFC 8985 6.2 step 5: mark lost every entry sent before the latest
        delivered one, once RACK.rtt + reo_wnd has passed since it went out.
        Returns the entries newly marked, and how long until the next one
        may be (0: none pending)."""
        lost: list[Sent] = []
        wait = 0.0
        xmit_ts, end_seq, deadline_base = self.xmit_ts, self.end_seq, self.rtt + reo_wnd
        for entry in self.log:
            if entry.sacked or entry.lost:
                continue
            if not sent_after(xmit_ts, end_seq, entry.sent_at, entry.end):
                continue
            remaining = entry.sent_at + deadline_base - now
            if remaining <= 0:
                entry.lost = True
                self.lost_out += 1
                lost.append(entry)
            elif remaining > wait:
                wait = remaining
        return lost, wait

    def mark_all_lost(self) -> int:
        """A retransmission timeout (RFC 8985 6.3): all not SACKed is lost."""
        count = 0
        for entry in self.log:
            if not entry.sacked and not entry.lost:
                entry.lost = True
                count += 1
        self.lost_out += count
        return count

    def mark_lost(self, entry: Sent) -> None:
        if not entry.lost and not entry.sacked:
            entry.lost = True
            self.lost_out += 1

    def first_lost(self) -> Sent | None:
        if self.lost_out:
            for entry in self.log:
                if entry.lost:
                    return entry
        return None

    def pipe(self) -> int:
        """RFC 6675 pipe: bytes thought to be in the network (sent, neither
        SACKed nor lost since; a lost one sent again counts once more)."""
        return sum(
            seq.diff(entry.end, entry.start)
            for entry in self.log
            if not entry.sacked and not entry.lost
        )

    def sacked_segments(self, mss: int) -> int:
        return self.sacked_bytes // max(mss, 1)

    # ---- the log itself -----------------------------------------------------

    def _split_at(self, at: int) -> None:
        """Make `at` an entry boundary (if it falls inside one)."""
        log = self.log
        for index, entry in enumerate(log):
            if seq.lt(entry.start, at) and seq.lt(at, entry.end):
                tail = entry.split(at)
                log.insert(index + 1, tail)
                if tail.retransmitted:
                    self.retransmitted_out += 1
                if tail.lost:
                    self.lost_out += 1
                return
            if seq.ge(entry.start, at):
                return

    def _between(self, start: int, end: int) -> list[Sent]:
        return [e for e in self.log if seq.ge(e.start, start) and seq.le(e.end, end)]
