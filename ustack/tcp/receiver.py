"""The receive side of a connection: RCV.NXT and the window we advertise,
the receive buffer, the reassembly queue and a FIN held beyond a hole,
TS.Recent, delayed ACKs (and when a read or an answer ends the delay, as
Linux) and the SACK blocks we send (RFC 9293 3.3.1, 3.8.6.2.2, 3.8.6.3;
RFC 1122 4.2.3.2; RFC 7323; RFC 2018).

The connection keeps the state machine: the receiver takes text that the
seventh step (RFC 9293 3.10.7.4) accepted, tells it when a held FIN has come
next in sequence, and answers what the window and the options of each
outgoing segment are. `ack_now` (and its note) is the flag every step sets
when an ACK is due at once; the connection's output sends it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ustack.tcp import seq
from ustack.tcp.buffers import ReassemblyQueue
from ustack.tcp.buffers import ReceiveBuffer
from ustack.tcp.events import DataReceived
from ustack.tcp.segment import NO_OPTIONS
from ustack.tcp.segment import Segment
from ustack.tcp.seq import HALF
from ustack.tcp.seq import MASK
from ustack.tcp.seq import MOD
from ustack.tcp.states import State
from ustack.tcp.timers import DELAYED_ACK
from ustack.tcp.timers import Timers
from ustack.trace.vocabulary import Challenge
from ustack.trace.vocabulary import Note
from ustack.trace.vocabulary import OutOfWindow
from ustack.trace.vocabulary import SegmentNote
from ustack.wire.ipv4 import ECN_CE
from ustack.wire.tcp import CWR
from ustack.wire.tcp import FIN
from ustack.wire.tcp import RST
from ustack.wire.tcp import SYN
from ustack.wire.tcp import TcpOptions

if TYPE_CHECKING:
    from ustack.tcp.connection import TcpConnection

_NO_NOTE = SegmentNote.NONE
# DataReceived has no fields (frozen): one instance serves every segment, so
# the per-segment path builds no event object.
_DATA_RECEIVED = DataReceived()


class Receiver:
    __slots__ = (
        "_conn",
        "_timers",
        "ack_deferred",
        "ack_note",
        "ack_now",
        "buffer",
        "challenges",
        "data_at",
        "dsack",
        "ece_pending",
        "fin_received",
        "held_fin",
        "interactive",
        "irs",
        "last_hold",
        "last_oow_ack",
        "out_of_order",
        "pushed",
        "rcv_adv",
        "rcv_nxt",
        "rcv_shift",
        "read_shut",
        "ts_recent",
        "unacked_bytes",
    )
    # The links back that TcpConnection.release() drops (mypyc: deletable).
    __deletable__ = ("_conn", "_timers")

    def __init__(self, conn: TcpConnection, timers: Timers) -> None:
        self._conn = conn
        self._timers = timers
        # Receive sequence variables. RCV.WND is what we last advertised:
        # rcv_adv (its right edge) minus RCV.NXT.
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_adv = 0
        self.rcv_shift = 0  # our window scale
        # In-order data not yet read, and data beyond a hole.
        self.buffer = ReceiveBuffer()
        self.out_of_order = ReassemblyQueue()
        # A duplicate to report in the first SACK block of the next segment (RFC 2883).
        self.dsack: tuple[int, int] | None = None
        self.held_fin: int | None = None  # SEQ of a FIN that arrived beyond a hole
        self.fin_received = False
        self.read_shut = False
        self.ts_recent = 0  # TS.Recent: the peer's latest TSval worth echoing
        self.unacked_bytes = 0  # received since our last ACK (delayed ACK)
        # Delayed ACK in interactive use, as Linux decides it (after_read,
        # sender.py's send_data, the timer in connection.py):
        # short segments since our last ACK (Linux's ICSK_ACK_PUSHED: 1, a
        # second one, ICSK_ACK_PUSHED2: 2); the time in-order data last came
        # (icsk_ack.lrcvtime); whether the connection is interactive, its
        # answers carrying the ACKs (pingpong mode); and whether a read made
        # an ACK due that waits for the application's turn to end.
        self.pushed = 0
        self.data_at = -math.inf
        self.interactive = False
        self.ack_deferred = False
        self.ack_now = False  # an ACK is due at once
        self.ack_note = _NO_NOTE  # why the next pure ACK goes out, when it is special
        self.challenges: tuple[float, int] = (0.0, 0)  # (second started, count)
        self.last_oow_ack: float | None = None  # the last ACK for an invalid segment
        self.ece_pending = False  # a CE mark arrived: ECE on our ACKs until CWR (RFC 3168)

    # ---- the handshake ---------------------------------------------------------

    def take_syn(self, irs: int) -> None:
        """IRS and RCV.NXT from the peer's SYN. Our SYN (if it went first)
        advertised the empty buffer from a RCV.NXT we did not know yet: the
        same window, from the real RCV.NXT."""
        self.irs = irs
        self.rcv_nxt = seq.add(irs, 1)
        self.rcv_adv = seq.add(self.rcv_nxt, min(self.free_space(), 0xFFFF))

    # ---- the sequence check --------------------------------------------------------

    def timestamps_ok(self, seg: Segment) -> bool:
        """RFC 7323 5.3 PAWS: a segment whose TSval is older than TS.Recent is
        an old duplicate (a RST excepted): ACK and drop. Otherwise TS.Recent
        follows the segments at the left edge of the window (4.3)."""
        stamps = seg.options.timestamps
        if stamps is None:
            return True  # accepted, as Linux does (behaviour 9)
        tsval = stamps[0]
        ts_recent = self.ts_recent
        # Per segment, so RFC 9293 3.4's comparisons are inlined (seq.py's
        # lt, le, ge): TSval < TS.Recent, SEG.SEQ =< RCV.NXT, TSval >= TS.Recent.
        if 0 < ((ts_recent - tsval) & MASK) < HALF and not seg.flags & RST:
            if self.invalid_ack_allowed(seg, OutOfWindow.PAWS):
                self.ack_now = True
            self._conn.decide(Note.PAWS)
            return False
        if ((self.rcv_nxt - seg.seq) & MASK) < HALF and ((tsval - ts_recent) & MASK) < HALF:
            self.ts_recent = tsval
        return True

    def acceptable(self, seg: Segment) -> bool:
        """The four cases of the acceptability test (RFC 9293 3.10.7.4)."""
        # Per segment, so RFC 9293 3.4's arithmetic is inlined (seq.diff,
        # seq.in_window: RCV.NXT =< x < RCV.NXT+RCV.WND on the circle).
        rcv_nxt = self.rcv_nxt
        window = (self.rcv_adv - rcv_nxt) & MASK
        if window > HALF:
            window -= MOD
        start = seg.seq
        if window <= 0:
            # A zero window still takes the ACK, RST and FIN of a segment at
            # RCV.NXT (RFC 9293 3.10.7.4 "special allowance"; behaviour 27):
            # its text is trimmed away later.
            return start == rcv_nxt
        if ((start - rcv_nxt) & MASK) < window:
            return True  # the first byte (or an empty segment) is in the window
        flags = seg.flags
        length = len(seg.payload) + (flags & SYN != 0) + (flags & FIN != 0)  # SEG.LEN
        return length != 0 and ((start + length - 1 - rcv_nxt) & MASK) < window

    def invalid_ack_allowed(
        self, seg: Segment | None, why: OutOfWindow, what: str | None = None
    ) -> bool:
        """May an ACK answer this invalid segment (out of window, PAWS, a
        challenge)? Linux's tcp_oow_rate_limited: at most one such ACK per
        invalid_ack_ratelimit (tcp_invalid_ratelimit, 500 ms) per connection,
        so two stacks that disagree cannot loop ACKs at line rate (RFC 5961
        7's throttling); the suppressed ones are counted. A segment with text
        (not a SYN) is always answered: the peer is sending data, not
        replaying ACKs. `seg` None: a challenge ACK, always limited; `what`:
        the trace's words for the segment, if not `why`'s."""
        conn = self._conn
        interval = conn.config.invalid_ack_ratelimit
        if interval <= 0 or (seg is not None and seg.payload and not seg.flags & SYN):
            return True
        now = conn.now
        last = self.last_oow_ack
        if last is not None and 0 <= now - last < interval:
            if conn.counters is not None:
                conn.counters[f"tcp.out.ack-skipped-{why}"] += 1
            conn.decide(Note.INVALID_ACK_SUPPRESSED, why.rule, what=what or why.text)
            return False
        self.last_oow_ack = now
        return True

    def challenge_ack(self, challenge: Challenge) -> None:
        """RFC 5961 7: at most challenge_ack_limit challenge ACKs a second,
        and (first, as Linux's tcp_send_challenge_ack) no more than the
        connection's invalid-ACK limit lets out."""
        conn = self._conn
        if not self.invalid_ack_allowed(None, OutOfWindow.CHALLENGE, challenge.text):
            return
        now = conn.now
        started, count = self.challenges
        if now - started >= 1.0:
            started, count = now, 0
        limited = count >= conn.config.challenge_ack_limit
        if conn.counters is not None:
            conn.counters[
                "tcp.out.challenge-ack-limited" if limited else "tcp.out.challenge-ack"
            ] += 1
        if not limited:
            self.challenges = (started, count + 1)
            self.ack_now = True
            self.ack_note = SegmentNote.CHALLENGE_ACK
            conn.decide(Note.CHALLENGE_ACK, challenge.rule, what=challenge.text)
        else:
            conn.decide(Note.CHALLENGE_ACK_SUPPRESSED, challenge.rule, what=challenge.text)

    # ---- ECN -------------------------------------------------------------------------

    def take_ecn(self, seg: Segment) -> None:
        """RFC 3168 6.1.3, for a data segment of a connection that agreed to
        ECN: its CWR ends our ECE (checked first, as Linux does: a segment
        with CWR and CE starts a new echo), and a CE mark starts it. Both
        are ACKed at once, as Linux does (tcp_ecn_accept_cwr,
        tcp_ecn_check_ce): after a reduction the sender's window may be
        one segment, and it should not wait for our delayed ACK."""
        conn = self._conn
        counters = conn.counters
        if seg.flags & CWR:
            if counters is not None:
                counters["tcp.ecn.cwr-received"] += 1
            self.ack_now = True
            if self.ece_pending:
                self.ece_pending = False
                conn.decide(Note.CWR_RECEIVED)
        if seg.ecn == ECN_CE:
            if counters is not None:
                counters["tcp.ecn.ce-received"] += 1
            if not self.ece_pending:
                self.ece_pending = True
                self.ack_now = True
                conn.decide(Note.CE_RECEIVED)

    # ---- the text and the FIN ------------------------------------------------------

    def trim(
        self, start: int, payload: bytes | memoryview, fin: int
    ) -> tuple[int, bytes | memoryview, int] | None:
        """The text of a segment at `start` cut to what is new and fits the
        window (RFC 9293 3.10.7.4, seventh step): what lies before RCV.NXT was
        received before (a D-SACK tells the sender, RFC 2883 4.1.1), what lies
        past the window goes with the FIN after it. None: all of it is old."""
        # Per segment: seq.diff inlined (RFC 9293 3.4), RCV.NXT - SEG.SEQ.
        skip = (self.rcv_nxt - start) & MASK
        if skip > HALF:
            skip -= MOD
        if skip > 0:
            if payload:
                self.report_duplicate(start, seq.add(start, min(skip, len(payload))))
            if skip > len(payload):
                return None
            payload = payload[skip:]
            start = self.rcv_nxt
        # (seq.diff inlined: the end of the text past the advertised edge)
        over = (start + len(payload) - self.rcv_adv) & MASK
        if over > HALF:
            over -= MOD
        if over > 0:
            payload = payload[: len(payload) - over]
            fin = 0  # the FIN lies beyond the window too
            self.ack_now = True  # tell the sender where the window ends
        return start, payload, fin

    def text(self, start: int, data: bytes) -> bool:
        """Take in-window text at `start`; True when a FIN held beyond a hole
        is now next in sequence (the connection processes it)."""
        if start != self.rcv_nxt:
            duplicate = self.out_of_order.add(start, data, self.rcv_nxt)
            self.ack_now = True  # at once: the sender counts duplicate ACKs (RFC 5681 4.2)
            self._conn.decide(Note.OUT_OF_ORDER_HELD)
            if duplicate is not None:
                self.report_duplicate(*duplicate)
            return False
        out_of_order = self.out_of_order
        # held_bytes, not bool(out_of_order): no call per segment (entries are never empty).
        filled_hole = out_of_order.held_bytes > 0
        # _deliver inlined for the segment itself (per segment): RCV.NXT
        # advances over it (seq.add) and it joins the receive buffer.
        length = len(data)
        self.rcv_nxt = (self.rcv_nxt + length) & MASK
        if not self.read_shut:
            self.buffer.append(data, length)
            self._conn.events.append(_DATA_RECEIVED)
        if filled_hole:
            # Data that waited beyond the hole may now follow.
            while (ready := out_of_order.pop_ready(self.rcv_nxt)) is not None:
                self._deliver(ready)
        conn = self._conn
        self.data_at = conn.now
        if filled_hole or out_of_order.held_bytes:
            self.ack_now = True  # a hole (partly) filled: tell the sender at once
        else:
            if length < conn.mss:
                # Shorter than a full segment: the end of a write, "pushed"
                # (Linux's tcp_measure_rcv_mss); the read that takes it may
                # ACK at once (after_read). A second one before our ACK
                # always may (ICSK_ACK_PUSHED2).
                self.pushed = 2 if self.pushed else 1
            self.delay_ack(length)
        held_fin = self.held_fin
        if held_fin == self.rcv_nxt:
            return True
        if held_fin is not None and seq.lt(held_fin, self.rcv_nxt):  # (rare: not inlined)
            # Data ran past the held FIN: the peer contradicted itself; its
            # FIN counts where it comes next (Linux drops such a FIN too).
            self.held_fin = None
            self._conn.decide(Note.DATA_PAST_HELD_FIN)
        return False

    def report_duplicate(self, left: int, right: int) -> None:
        """Data received twice: the next segment's first SACK block says so
        (RFC 2883 4, a D-SACK), below RCV.NXT or inside a block held beyond a
        hole (the block holding it follows, as the most recent). The ACK goes
        at once: the sender may undo a needless window cut sooner."""
        conn = self._conn
        if not conn.sack_ok or not seq.lt(left, right):
            return
        self.dsack = (left, right)
        self.ack_now = True
        old = seq.lt(left, self.rcv_nxt)
        if conn.counters is not None:
            # Linux's TCPDSACKOldSent and TCPDSACKOfoSent.
            conn.counters["tcp.out.dsack-old" if old else "tcp.out.dsack-ofo"] += 1
        where = "below RCV.NXT" if old else "inside a SACKed block"
        conn.decide(Note.DSACK_SENT, left=left, right=right, where=where)

    def report_old_duplicate(self, seg: Segment) -> None:
        """A segment whose text lies (partly) below RCV.NXT: its old part is a
        duplicate (RFC 2883 4.1.1, as Linux's tcp_send_dupack)."""
        if seg.payload and seq.lt(seg.seq, self.rcv_nxt):
            end = seq.add(seg.seq, len(seg.payload))
            self.report_duplicate(seg.seq, end if seq.lt(end, self.rcv_nxt) else self.rcv_nxt)

    def _deliver(self, data: bytes) -> None:
        self.rcv_nxt = (self.rcv_nxt + len(data)) & MASK  # seq.add inlined: per segment
        if not self.read_shut:
            self.buffer.append(data, len(data))
            self._conn.events.append(_DATA_RECEIVED)

    def hold_fin(self, fin_seq: int) -> None:
        """A FIN beyond a hole waits for the hole to fill."""
        self.held_fin = fin_seq
        self.ack_now = True
        self._conn.decide(Note.FIN_BEYOND_HOLE)

    def take_fin(self, delay: bool) -> None:
        """The FIN is next in sequence: it takes one sequence number. Its ACK
        goes at once, or (`delay`) as a delayed ACK."""
        self.held_fin = None
        self.rcv_nxt = seq.add(self.rcv_nxt, 1)
        if delay:
            self.delay_ack(0)
        else:
            self.ack_now = True

    def delay_ack(self, received: int) -> None:
        """Delayed ACK (RFC 9293 3.8.6.3, RFC 5681 4.2): ACK every second full
        segment at once, anything less within `delayed_ack` seconds."""
        self.unacked_bytes += received
        conn = self._conn
        delayed_ack = conn.config.delayed_ack
        if self.unacked_bytes >= 2 * conn.mss or delayed_ack <= 0:
            self.ack_now = True
        elif DELAYED_ACK not in self._timers.deadlines:
            self._timers.arm(DELAYED_ACK, delayed_ack)

    # ---- the application's side --------------------------------------------------

    def after_read(self, defer: bool) -> None:
        """After a read, as Linux's tcp_cleanup_rbuf (RFC 1122 4.2.3.2 and
        RFC 9293 3.8.6.3 only bound the delay: when it ends sooner is the
        stack's choice, and Linux clients count on Linux's): the ACK that
        waits for the delayed-ACK timer goes now when more than a full
        segment waits for it, or when the read emptied the buffer of a short
        segment and the connection is not interactive (or of a second short
        segment, in any case): the sender may be holding its next small
        segment for that ACK (Nagle, RFC 896), and the application, which
        has the data, may have nothing to answer. `defer`: the application's turn follows
        the read, and an answer written in it should carry the ACK
        (UserCalls.send_deferred_ack sends it if none did). Otherwise the
        window is announced once the one the peer knows has shrunk to half
        the buffer or less and the read at least doubles it (Linux's rule,
        tcp_cleanup_rbuf), by no less than receiver SWS avoidance allows
        (RFC 9293 3.8.6.2.2): a reader that keeps up adds no ACK of its own."""
        conn = self._conn
        pushed = self.pushed
        if self.ack_now:
            return  # an ACK goes now anyway
        if (pushed and self.buffer.size == 0 and (pushed == 2 or not self.interactive)) or (
            self.unacked_bytes > conn.mss
        ):
            if conn.trace is not None:
                what = (
                    "a second short segment"
                    if pushed == 2
                    else "a short segment"
                    if pushed
                    else "more than a full segment not yet acknowledged"
                )
                conn.decide(Note.ACK_ON_READ, what=what)
            if not defer:
                self.ack_now = True
                return
            self.ack_deferred = True
        # After every read, so inlined: RCV.WND promised (seq.diff, floored
        # at 0), the free space, min() of the two thresholds.
        promised = (self.rcv_adv - self.rcv_nxt) & MASK
        if promised > HALF:
            promised = 0  # the edge lies behind RCV.NXT (a negative diff)
        buffer_size = conn.config.receive_buffer
        free = buffer_size - self.buffer.size
        if free < 0:
            free = 0
        threshold = buffer_size // 2
        if 2 * conn.mss < threshold:
            threshold = 2 * conn.mss
        # free >= 2 * promised: the read at least doubles the window, which
        # (free being at most the buffer) the peer sees as half of it or less.
        if free >= 2 * promised and free - promised >= threshold:
            self.ack_now = True

    @property
    def readable(self) -> int:
        return len(self.buffer)

    @property
    def at_eof(self) -> bool:
        """The peer's FIN arrived and every byte before it has been read."""
        return self.fin_received and not self.buffer

    def shut(self) -> None:
        """shutdown(SHUT_RD): what waits and what comes later is dropped."""
        self.read_shut = True
        self.buffer.clear()

    # ---- what each outgoing segment says -------------------------------------------

    def free_space(self) -> int:
        free = self._conn.config.receive_buffer - self.buffer.size
        return free if free > 0 else 0

    def window_field(self) -> int:
        """The window to advertise, scaled; the right edge never moves left
        (RFC 9293 3.8.6.2.2) but by the scale's rounding, and it grows only
        by useful amounts (SWS)."""
        # On every segment we send, so the arithmetic is inlined: free_space(),
        # seq.diff floored at 0 (RFC 9293 3.4), and min()/max() as comparisons.
        conn = self._conn
        shift = self.rcv_shift
        buffer_size = conn.config.receive_buffer
        free = buffer_size - self.buffer.size
        if free < 0:
            free = 0
        room = free
        rcv_nxt = self.rcv_nxt
        promised = (self.rcv_adv - rcv_nxt) & MASK
        if promised > HALF:
            promised = 0  # the edge lies behind RCV.NXT (a negative diff)
        threshold = buffer_size // 2
        if conn.mss < threshold:
            threshold = conn.mss
        if free - promised < threshold:
            free = promised  # a small opening is not worth announcing yet
        window = free if free > promised else promised
        if conn.state is State.SYN_RECEIVED:
            # A SYN,ACK may yet be resent, and it cannot say more than 65535:
            # promise no more before the handshake is over.
            window = min(window, (0xFFFF >> shift) << shift)
        # Round up: rounding down would pull a promised right edge back. But
        # never past the free space: rounding a promise up again on every ACK
        # let the edge creep on with each small segment, and the window never
        # closed (RFC 7323 Appendix F); there the edge goes back by < 1 unit.
        granule = (1 << shift) - 1
        field = (window + granule) >> shift
        room_field = (room + granule) >> shift
        if room_field < field:
            field = room_field
        if field > 0xFFFF:
            field = 0xFFFF
        self.rcv_adv = (rcv_nxt + (field << shift)) & MASK
        return field

    def syn_window(self, advance: bool) -> int:
        """The window of our SYN or SYN,ACK: never scaled, at most 65535. A
        retransmitted SYN,ACK never pulls the edge back (`advance` False)."""
        window = min(self.free_space(), 0xFFFF)
        edge = seq.add(self.rcv_nxt, window)
        if advance or seq.gt(edge, self.rcv_adv):
            self.rcv_adv = edge
        return window

    def ack_options(self) -> TcpOptions:
        """Timestamps (RFC 7323) and SACK blocks for data held beyond a hole
        (RFC 2018), as agreed: 40 bytes hold TS and three blocks, or four."""
        conn = self._conn
        ts_ok = conn.ts_ok
        held_fin = self.held_fin
        dsack = self.dsack
        sack = conn.sack_ok and (self.out_of_order.held_bytes > 0 or held_fin is not None)
        if not sack and dsack is None:
            # Every ACK in order: timestamps alone, built positionally, no
            # list (RFC 7323 3.2: TSval is our clock, TSecr is TS.Recent).
            if not ts_ok:
                return NO_OPTIONS
            return TcpOptions(None, None, False, (), (conn.ts_now(), self.ts_recent))
        blocks = self.out_of_order.blocks() if sack else []
        if sack and held_fin is not None:
            # A FIN held beyond a hole is reported too (it occupies sequence
            # space, as Linux reports it): else a sender that lost only the
            # last data segment has no SACK to go on and waits for its RTO.
            end = seq.add(held_fin, 1)
            touching = [i for i, (_, right) in enumerate(blocks) if right == held_fin]
            if touching:
                left, _ = blocks[touching[0]]
                blocks[touching[0]] = (left, end)
            else:
                blocks.insert(0, (held_fin, end))
        if dsack is not None:
            # RFC 2883 4: the duplicate first, once (a segment that carries it
            # consumes it); the SACK blocks after it.
            self.dsack = None
            blocks.insert(0, dsack)
        blocks = blocks[: 3 if ts_ok else 4]
        stamps = (conn.ts_now(), self.ts_recent) if ts_ok else None
        return TcpOptions(sack_blocks=tuple(blocks), timestamps=stamps)
