"""Loss recovery for one connection: what the ACKs say about what was lost,
and when it goes again.

- the round-trip time (RFC 6298, rtt.py; timestamps, RFC 7323 4; Karn);
- the congestion window (congestion/), cut once per loss episode;
- the SACK scoreboard and RACK-TLP (RFC 8985, rack.py): losses found by
  time, and a tail loss probe where a lost tail gets no ACK;
- fast retransmit and fast recovery: NewReno without SACK (RFC 5681, RFC
  6582), the pipe with it (RFC 6675);
- the retransmission timeout and its back-off (RFC 6298 5);
- undoing a needless cut when D-SACKs show every retransmission was
  spurious (RFC 2883, RFC 3708, RFC 4015): dsack.py, Recovery's base.

The connection hands it each acceptable ACK (`on_ack`, `ack_advanced`) and
the timers it owns (retransmit, probe, reorder); the sender builds the
segments it resends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ustack.tcp import congestion
from ustack.tcp import seq
from ustack.tcp.dsack import DsackUndo
from ustack.tcp.dsack import dsack_block
from ustack.tcp.rack import Rack
from ustack.tcp.rtt import RttEstimator
from ustack.tcp.segment import Segment
from ustack.tcp.seq import HALF
from ustack.tcp.seq import MASK
from ustack.tcp.seq import MOD
from ustack.tcp.states import SENDS_DATA
from ustack.tcp.states import State
from ustack.tcp.timers import PROBE
from ustack.tcp.timers import REORDER
from ustack.tcp.timers import RETRANSMIT
from ustack.tcp.timers import Timers
from ustack.trace.vocabulary import Note
from ustack.trace.vocabulary import Rule
from ustack.wire.tcp import ECE
from ustack.wire.tcp import FIN
from ustack.wire.tcp import SYN

if TYPE_CHECKING:
    from ustack.tcp.connection import TcpConnection
    from ustack.tcp.receiver import Receiver
    from ustack.tcp.sender import Sender


class Recovery(DsackUndo):
    __slots__ = (
        "_rcv",
        "_timers",
        "cwr_pending",
        "dupacks",
        "ecn_high",
        "probe_high",
        "recovery_high",
        "retries",
        "syn_retransmitted",
        "timed",
        "ts_at_timeout",
    )
    # The links back that TcpConnection.release() drops (mypyc: deletable).
    __deletable__ = ("_rcv", "_timers")

    def __init__(
        self, conn: TcpConnection, timers: Timers, sender: Sender, receiver: Receiver
    ) -> None:
        self._conn = conn
        self._timers = timers
        self._snd = sender
        self._rcv = receiver
        config = conn.config
        iss = sender.iss
        # One timer, RFC 6298 RTO, Karn's rule.
        self.rtt = RttEstimator(config.initial_rto, config.min_rto, config.max_rto)
        self.timed: tuple[int, float] | None = None  # (SEQ being timed, when sent)
        self.retries = 0
        self.syn_retransmitted = False
        # Our TSval at the last retransmission timeout; None before the first
        # (a 0 would be "after" half of all TSvals on the circle, and their
        # echoes would be refused as samples).
        self.ts_at_timeout: int | None = None
        self.cc = congestion.make(
            config.congestion_control, config.mss, config.initial_window_segments * config.mss
        )
        self.dupacks = 0
        self.probe_high: int | None = None  # SND.MAX when a tail loss probe went out
        self.probe_range: tuple[int, int] | None = None  # what the latest probe resent
        # A probe came back D-SACKed: the peer holds its ACKs longer than a
        # PTO even for flights of several segments (a Linux receiver whose
        # application reads slowly does: its window would not grow).
        self.peer_delays_acks = False
        self.recover: int | None = None  # NewReno: SND.MAX when fast recovery began
        self.recovery_high = iss  # RFC 6582 "recover", for the next entry check
        # With SACK, the RACK log (RFC 8985) knows when each segment went out,
        # which the peer holds (the SACK scoreboard) and which are lost.
        self.rack = Rack()
        # Undo (RFC 3708 detection, RFC 4015 response): the congestion state
        # from before the last loss episode's cut, SND.UNA then, and the bytes
        # resent since that no D-SACK has shown to be needless yet.
        self.undo_cc: congestion.CongestionControl | None = None
        self.undo_marker = iss
        self.undo_bytes = 0
        # The latest stretches sent again (a few): a D-SACK of one of them
        # shows that retransmission was needless (RFC 3708 2).
        self.resent: list[tuple[int, int]] = []
        # ECN (RFC 3168 6.1.2): SND.MAX when the window was last cut for an
        # ECE (no other cut, nor growth, until SND.UNA passes it), and CWR
        # due on the next new data segment.
        self.ecn_high: int | None = None
        self.cwr_pending = False

    def start(self, mss: int, initial_window: int) -> None:
        """The segment size is known: the congestion window counts in it."""
        self.cc.mss = mss
        self.cc.cwnd = initial_window

    # ---- ACKs ---------------------------------------------------------------------

    def on_ack(self, seg: Segment) -> None:
        """The fifth step (RFC 9293 3.10.7.4) for an ACK within the window:
        the SACK blocks, an RTT sample, SND.UNA, duplicate ACKs, RACK's loss
        detection and D-SACK."""
        conn = self._conn
        ack = seg.ack
        if seg.flags & ECE and conn.ecn_ok:
            self._ecn_echo(ack)
        rack = self.rack
        blocks = seg.options.sack_blocks if conn.sack_ok else ()
        new_sack = bool(blocks) and rack.on_sack(blocks, conn.now)
        # Per ACK, so RFC 9293 3.4's comparisons are inlined (seq.lt):
        # SND.UNA < SEG.ACK, and TSecr not before the last timeout's TSval.
        if 0 < ((ack - self._snd.snd_una) & MASK) < HALF:
            stamps = seg.options.timestamps
            if (
                conn.ts_ok
                and stamps is not None
                and stamps[1]
                and (
                    self.ts_at_timeout is None
                    or not 0 < ((self.ts_at_timeout - stamps[1]) & MASK) < HALF
                )
            ):
                # RFC 7323 4: the echo times this ACK. But the peer echoes the
                # TSval of the last *acceptable* segment (4.3): after a timeout,
                # an echo older than it may time an old segment, not this ACK.
                rtt = ((conn.ts_now() - stamps[1]) & seq.MASK) / 1000
                if rtt < 60:
                    self._rtt_sample(rtt)
                    self.timed = None
            self.ack_advanced(ack)
        elif self._is_duplicate_ack(seg, new_sack):
            self._duplicate_ack()
        if rack.sacked_bytes or rack.retransmitted_out:
            self.detect_losses()  # (only then can a later segment be delivered before an earlier)
        if blocks:
            dsack = dsack_block(blocks, ack)
            if dsack is not None:
                self.duplicate_reported(dsack)

    def ack_advanced(self, ack: int) -> None:
        """SND.UNA moves to `ack`: free the acknowledged bytes, measure, re-arm."""
        conn = self._conn
        now = conn.now
        snd = self._snd
        timers = self._timers
        data_acked = snd.acked(ack)
        rack = self.rack
        if rack.log:
            rack.on_ack(ack, now)
        timed = self.timed
        if timed is not None and 0 < ((ack - timed[0]) & MASK) < HALF:  # seq.gt inlined: per ACK
            self._rtt_sample(now - timed[1])
            self.timed = None
        self.retries = 0
        self.dupacks = 0
        conn.path.soft_error = None  # something got through (Linux clears sk_err_soft)
        ecn_high = self.ecn_high
        if ecn_high is not None and seq.gt(ack, ecn_high):
            ecn_high = self.ecn_high = None  # past the reduced window (and our CWR)
        if self.recover is not None:
            if seq.ge(ack, self.recover):  # a full ACK: recovery is over (RFC 6582 3.2 (3))
                self.recover = None
                rack.recovery_over()
                self.cc.on_recovery_end(now)
                conn.decide(Note.RECOVERY_OVER, cwnd=self.cc.cwnd)
            elif not conn.sack_ok:  # a partial ACK: the next hole is lost too (RFC 6582 3.2 (5))
                mss = conn.mss
                self.cc.cwnd = max(self.cc.cwnd - data_acked + mss, mss)
                self._retransmit_first()
                return
        elif data_acked and ecn_high is None:
            # Only acknowledged data opens the congestion window (not a SYN or
            # FIN), and not in the window an ECE cut (RFC 3168 6.1.2; Linux
            # holds it in its CWR state).
            self.cc.on_ack(data_acked, now, self.rtt.srtt)
        if self.probe_high is not None and seq.ge(ack, self.probe_high):
            self.probe_high = None  # the probe's episode is over (RFC 8985 7.4)
        if snd.snd_una == snd.snd_max:
            deadlines = timers.deadlines
            if RETRANSMIT in deadlines:  # (a test before each cancel: no call when not armed)
                timers.cancel(RETRANSMIT)
            if PROBE in deadlines:
                timers.cancel(PROBE)
            if REORDER in deadlines:
                timers.cancel(REORDER)
        else:
            timers.arm(RETRANSMIT, self.rtt.rto)  # RFC 6298 5.3
            self.arm_probe()

    def _rtt_sample(self, rtt: float) -> None:
        self.rtt.sample(rtt)
        rack = self.rack
        # RACK.min_RTT, from every sample (the handshake's too): note_rtt inlined.
        if rtt < rack.min_rtt:
            rack.min_rtt = rtt

    def after_handshake(self) -> None:
        """RFC 6298 5.7: after a SYN (or SYN,ACK) was retransmitted, data
        starts with an RTO of 3 s (Karn left us without a measurement)."""
        rtt = self.rtt
        if self.syn_retransmitted and rtt.srtt is None:
            rtt.rto = min(max(rtt.rto, 3.0), self._conn.config.max_rto)

    # ---- fast retransmit and recovery ---------------------------------------------

    def _is_duplicate_ack(self, seg: Segment, new_sack: bool) -> bool:
        """RFC 5681 2: same ACK, no data, no SYN/FIN, same window, data in
        flight; or, with SACK, an ACK that reports bytes not SACKed before
        (RFC 6675 2: the window may change, as Linux's does while it grows).
        Not while the peer's window is closed: its ACKs then answer our
        zero-window probes (RFC 9293 3.8.6.1) and say nothing of a loss."""
        snd = self._snd
        return (
            seg.ack == snd.snd_una
            and snd.snd_wnd != 0
            and not seg.payload
            and not seg.flags & (SYN | FIN)
            and ((seg.window << snd.snd_shift) == snd.snd_wnd or new_sack)
            and snd.snd_una != snd.snd_max
            and self._conn.state in SENDS_DATA
        )

    def _duplicate_ack(self) -> None:
        """Fast retransmit on the third duplicate ACK, and NewReno fast
        recovery (RFC 5681 3.2, RFC 6582). With SACK, RACK finds the losses
        (`detect_losses`); three duplicates without SACK blocks still count."""
        conn = self._conn
        self.dupacks += 1
        if self.recover is not None:
            if not conn.sack_ok:
                self.cc.cwnd += conn.mss  # each duplicate: one more segment has left the network
            return
        if self.dupacks < 3 or seq.lt(self._snd.snd_una, self.recovery_high):
            # RFC 6582 3.2 (1): no new recovery for losses of an old one, until
            # the ACK "covers more than recover", the highest byte sent then
            # (SND.MAX - 1 then; here we keep SND.MAX, hence >=).
            return
        if conn.sack_ok:
            if self.rack.sacked_bytes or not self.rack.log:
                return  # RACK decides from the blocks
            self.rack.mark_lost(self.rack.log[0])
        self._enter_recovery("3 duplicate ACKs", Rule.RFC5681_FAST_RETRANSMIT)
        if not conn.sack_ok:
            self._retransmit_first()

    def _enter_recovery(self, why: str, rule: Rule) -> None:
        """Fast recovery begins: the congestion window is cut once for all the
        losses of this window (RFC 6582, RFC 6675 5)."""
        conn = self._conn
        snd = self._snd
        flight = seq.diff(snd.snd_max, snd.snd_una)
        self.recover = self.recovery_high = snd.snd_max
        self._begin_undo()
        cc = self.cc
        if self.ecn_high is None:
            cc.on_loss(conn.now, flight)
        # else an ECE cut this window already: one response per window
        # (RFC 3168 6.1.2; Linux's tcp_enter_recovery in its CWR state).
        self.cwr_pending = conn.ecn_ok  # the peer learns of any cut (Linux tcp_ecn_queue_cwr)
        if not conn.sack_ok:
            cc.cwnd += 3 * conn.mss  # NewReno's inflation; with SACK, pipe counts instead
        self.probe_high = None
        self._timers.cancel(PROBE)
        conn.decide(
            Note.FAST_RETRANSMIT, rule, why=why, cc=cc.name, ssthresh=cc.ssthresh, cwnd=cc.cwnd
        )
        first = self.rack.first_lost() if conn.sack_ok else None
        if first is not None:
            # RFC 6675 5 (4.3): the first loss goes at once, whatever the pipe.
            self._retransmit_at(first.start, seq.diff(first.end, first.start))

    def detect_losses(self) -> None:
        """RFC 8985 6.2: mark lost what was sent before a delivered segment,
        RACK.rtt plus the reordering window ago; wait for the rest (the
        reorder timer)."""
        conn = self._conn
        rack = self.rack
        in_recovery = self.recover is not None
        reo_wnd = rack.reordering_window(
            in_recovery, rack.sacked_segments(conn.mss), self.rtt.srtt or 0.0
        )
        lost, wait = rack.detect_loss(conn.now, reo_wnd)
        if wait > 0:
            self._timers.arm(REORDER, wait)
        else:
            self._timers.cancel(REORDER)
        if not lost:
            return
        if conn.counters is not None:
            conn.counters["tcp.rack.lost"] += len(lost)
        conn.decide(
            Note.RACK_LOST,
            count=len(lost),
            start=lost[0].start,
            after_ms=1000 * (rack.rtt + reo_wnd),
        )
        if not in_recovery and not seq.lt(self._snd.snd_una, self.recovery_high):
            probed = self.probe_high is not None
            why = "SACK after a tail loss probe" if probed else "RACK"
            self._enter_recovery(why, Rule.RFC8985_PROBE_RECOVERY if probed else Rule.RFC8985_RACK)

    # ---- ECN -------------------------------------------------------------------------

    def _ecn_echo(self, ack: int) -> None:
        """An ACK with ECE (RFC 3168 6.1.2): a CE mark on the way to the
        peer, congestion without a loss. The window is cut as a fast
        retransmit cuts it, but nothing is resent; once per window of data:
        not again before this ACK passes SND.MAX of the last cut (ACKs of
        data sent before our CWR still carry the old echo), and not in fast
        recovery, whose cut covers the window. CWR goes on the next new data."""
        conn = self._conn
        if conn.counters is not None:
            conn.counters["tcp.ecn.ece-received"] += 1
        snd = self._snd
        if self.recover is not None or seq.lt(ack, snd.snd_una):
            return  # (an old ACK, reordered, says nothing new: Linux ignores it too)
        ecn_high = self.ecn_high
        if ecn_high is not None and not seq.gt(ack, ecn_high):
            return
        flight = seq.diff(snd.snd_max, snd.snd_una)
        self.ecn_high = snd.snd_max
        self.undo_cc = None  # a D-SACK cannot show this cut needless (Linux tcp_enter_cwr)
        cc = self.cc
        cc.on_loss(conn.now, flight)
        self.cwr_pending = True
        if conn.counters is not None:
            conn.counters["tcp.ecn.window-reduced"] += 1
        conn.decide(Note.ECN_WINDOW_REDUCED, cc=cc.name, ssthresh=cc.ssthresh, cwnd=cc.cwnd)

    # ---- retransmission --------------------------------------------------------------

    def retransmit_lost(self) -> None:
        """Send again what RACK (or a timeout) marked lost, first in sequence
        first, while the congestion window has room beyond the pipe (RFC 6675
        5: pipe, not flight, since the SACKed and the lost have left it)."""
        rack = self.rack
        mss = self._conn.mss
        budget = self.cc.cwnd - rack.pipe()
        while budget >= mss:
            entry = rack.first_lost()
            if entry is None:
                break
            sent = self._retransmit_at(entry.start, seq.diff(entry.end, entry.start))
            if not sent:
                break  # beyond a window that shrank: it waits for the window to open
            budget -= sent

    def _retransmit_first(self) -> None:
        """Send the first unacknowledged segment again (fast retransmit, or a
        partial ACK's next hole), without going back with SND.NXT."""
        self._retransmit_at(self._snd.snd_una, self._conn.mss)

    def _retransmit_at(self, start: int, max_size: int) -> int:
        """One segment from `start` again; the sequence space it covered."""
        resent = self._snd.resend(start, max_size)
        if resent is None:
            return 0
        size, fin = resent
        conn = self._conn
        if conn.sack_ok:
            self.rack.on_send(start, seq.add(start, size + fin), conn.now)
            self.note_resent(start, seq.add(start, size + fin))
        self.undo_bytes += size
        self.timed = None  # Karn
        self._rcv.ack_now = False
        self._timers.arm(RETRANSMIT, self.rtt.rto)
        return size + fin

    def on_retransmit_timeout(self) -> bool:
        """RFC 6298 5.4-5.7: back off and go back to SND.UNA (the caller
        resends). False when the retries are exhausted: the connection gives up."""
        conn = self._conn
        config = conn.config
        snd = self._snd
        timers = self._timers
        self.retries += 1
        if conn.state is State.SYN_SENT:
            limit = config.syn_retries
        elif conn.state is State.SYN_RECEIVED and conn.passive:
            limit = config.synack_retries
        else:
            limit = config.retries
        if self.retries > limit:
            return False
        conn.path.black_hole_check()  # (before the resend: it goes at the smaller MSS)
        self.rtt.back_off()
        self.timed = None  # Karn: never time a retransmission
        self.ts_at_timeout = conn.ts_now()
        flight = seq.diff(snd.snd_max, snd.snd_una)
        if snd.snd_una != snd.iss:  # a lost SYN says nothing about the path's capacity
            if self.recover is None and self.retries == 1:
                self._begin_undo()  # (a timeout within an episode belongs to it)
            self.cc.on_timeout(conn.now, flight)
            self.cwr_pending = conn.ecn_ok  # (Linux's tcp_enter_loss queues CWR too)
        self.recover = None
        self.probe_high = None
        timers.cancel(PROBE)
        self.recovery_high = snd.snd_max  # no fast retransmit for what we resend now
        if self.retries > 1:
            # A second timeout in a row: the peer may have reneged (dropped
            # what it SACKed, RFC 2018 8): forget the scoreboard, resend all.
            self.rack.forget_sacks()
        self.dupacks = 0
        timers.cancel(REORDER)
        if self.rack.log and snd.snd_wnd:
            # RFC 8985 6.3: all not SACKed is lost; it goes again as the
            # window opens, the SACKed stays where it is (RFC 6675 5.1).
            self.rack.mark_all_lost()
        else:
            snd.snd_nxt = snd.snd_una  # go back: without SACK, everything is resent
        conn.decide(Note.RETRANSMISSION_TIMEOUT, count=self.retries, rto=self.rtt.rto)
        return True

    def resend_too_big(self) -> int:
        """The path MTU went down (RFC 1191): what is in flight in segments
        larger than the MSS now is lost; it goes again at once, cut to the new
        size (Linux's tcp_simple_retransmit: the congestion window is not cut,
        this was no congestion). Returns the bytes marked for resending."""
        conn = self._conn
        snd = self._snd
        mss = conn.mss
        if snd.snd_una == snd.snd_max:
            return 0
        rack = self.rack
        if conn.sack_ok and rack.log:
            marked = 0
            for entry in rack.log:
                size = seq.diff(entry.end, entry.start)
                if size > mss and not entry.sacked and not entry.lost:
                    rack.mark_lost(entry)
                    marked += size
            if marked:
                self.timed = None  # Karn
                self.probe_high = None
                self._timers.cancel(PROBE)
                self.retransmit_lost()
            return marked
        # Without SACK there is no log of what went in which segment: go back
        # to SND.UNA, and send_data cuts everything again at the new MSS.
        flight = seq.diff(snd.snd_max, snd.snd_una)
        if flight <= mss:
            return 0
        snd.snd_nxt = snd.snd_una
        self.timed = None
        return flight

    # ---- the tail loss probe -----------------------------------------------------------

    def arm_probe(self) -> None:
        """RFC 8985 7.2: with data in flight and no recovery going on, a tail
        loss probe after PTO = 2*SRTT (at least 10 ms), plus WCDelAckT when
        the peer may hold its ACK for its delayed-ACK timer, if that is
        sooner than the RTO (PTO <= RTO). The probe stands in for the ACKs a
        lost tail never gets: without it, a loss at the end of a flight
        waits for the RTO."""
        conn = self._conn
        srtt = self.rtt.srtt
        if (
            not conn.config.tail_loss_probe
            or not conn.sack_ok
            or srtt is None
            or self.recover is not None
            or self.rack.lost_out  # (after a timeout: what is lost goes first)
            or self.probe_high is not None
            or conn.state not in SENDS_DATA
        ):
            return
        pto = 2 * srtt
        if pto < 0.01:
            pto = 0.01  # (max() inlined: per ACK)
        snd = self._snd
        flight = (snd.snd_max - snd.snd_una) & MASK  # seq.diff inlined: per ACK
        if flight > HALF:
            flight -= MOD
        if self.peer_delays_acks or flight < 2 * conn.mss:
            # RFC 8985 7.2 adds WCDelAckT for a flight of one segment, as a
            # receiver need not ACK before a second full-sized one (RFC 5681
            # 4.2): so for any flight short of two full segments (1448 + 552
            # bytes is one full segment, not two). And for every flight once
            # a probe came back D-SACKed: that peer delays more than that.
            pto += WORST_CASE_DELAYED_ACK
        if pto < self.rtt.rto:
            self._timers.arm(PROBE, pto)

    def probe_timeout(self) -> None:
        """RFC 8985 7.3: send the last segment again (we keep no new data for
        it: the simpler choice the RFC allows), then wait for the RTO."""
        snd = self._snd
        if snd.snd_una == snd.snd_max or self.recover is not None:
            return
        conn = self._conn
        self.probe_high = snd.snd_max
        last = seq.add(snd.snd_una, max(seq.diff(snd.snd_max, snd.snd_una) - conn.mss, 0))
        conn.decide(Note.TAIL_LOSS_PROBE)
        if conn.counters is not None:
            conn.counters["tcp.loss-probes"] += 1  # Linux's TCPLossProbes
        sent = self._retransmit_at(last, conn.mss)
        self.probe_range = (last, seq.add(last, sent)) if sent else None


# RFC 8985 7.2 WCDelAckT: the longest a peer may hold its ACK (its
# recommended 200 ms; Linux's TCP_DELACK_MAX and tcp_rto_min alike).
WORST_CASE_DELAYED_ACK = 0.2
