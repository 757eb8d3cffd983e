"""TIME-WAIT as a compact record, not a whole connection (issue 18 item 4).

Once both FINs are through, a connection has nothing left to send, receive or
measure: RFC 9293 3.10.7.4 leaves TIME-WAIT three things to do, for 2 MSL
(3.6.1): acknowledge the peer's FIN again if it comes again (and restart the
2 MSL), answer an unacceptable segment with an ACK, and let a new SYN start a
new incarnation (RFC 6191, which the demux decides). Like Linux's timewait
socket (inet_timewait_sock: a few fields in place of the full socket), the
demux replaces the TcpConnection by a `TimeWait` that keeps only what those
answers need: the 4-tuple, SND.NXT and RCV.NXT, the window and the options of
its ACKs, TS.Recent for PAWS (RFC 7323 5.3), the limits on invalid-segment
and challenge ACKs (RFC 5961 7), the 2 MSL deadline, and the connection's
number for the trace, which reads as it read with the full connection.

What the full connection still did in TIME-WAIT and a record does not (as
Linux's tcp_timewait_state_process does not either): a late in-window ACK no
longer updates the send window nor acts on ECE or D-SACK blocks (it is a
drop, "time-wait-late", as before); the path MTU learnt from ICMP does not
expire with a decision in the trace; and the window of its ACKs is the one
of the hand-over (data the application reads afterwards does not open it).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import NamedTuple

from ustack.counters import Counters
from ustack.tcp import seq
from ustack.tcp.segment import NO_OPTIONS
from ustack.tcp.segment import Numbered
from ustack.tcp.segment import Segment
from ustack.tcp.segment import segment_event
from ustack.tcp.segment import tcb_snapshot
from ustack.tcp.seq import HALF
from ustack.tcp.seq import MASK
from ustack.tcp.states import TRANSITIONS
from ustack.tcp.states import Event
from ustack.tcp.states import State
from ustack.trace.records import Decision
from ustack.trace.records import StateChange
from ustack.trace.records import TimerEvent
from ustack.trace.records import TraceEvent
from ustack.trace.vocabulary import Challenge
from ustack.trace.vocabulary import DropReason
from ustack.trace.vocabulary import Layer
from ustack.trace.vocabulary import Note
from ustack.trace.vocabulary import OutOfWindow
from ustack.trace.vocabulary import Rule
from ustack.trace.vocabulary import SegmentNote
from ustack.trace.vocabulary import TimerAction
from ustack.trace.vocabulary import TimerKind
from ustack.wire.tcp import ACK
from ustack.wire.tcp import ECE
from ustack.wire.tcp import FIN
from ustack.wire.tcp import RST
from ustack.wire.tcp import SYN
from ustack.wire.tcp import TcpOptions

if TYPE_CHECKING:
    from ustack.tcp.connection import TcpConnection
    from ustack.tcp.demux import TcpDemux

Key = tuple[int, int, int]
Trace = Callable[[TraceEvent], None] | None

_TIME_WAIT = TimerKind.TIME_WAIT
_NO_NOTE = SegmentNote.NONE


class Numbers(NamedTuple):
    """The numbers that never change in TIME-WAIT. A record keeps them
    packed in one bytes object (_NUMBERS: some 60 bytes, where eight ints
    cost some 250) and reads them back as this."""

    iss: int
    irs: int
    snd_max: int  # = SND.NXT = SND.UNA: our FIN is acknowledged
    rcv_nxt: int
    too_old: int  # RFC 5961 5.2: an ACK below SND.UNA - MAX.SND.WND is too old
    window: int  # the window field of our ACKs
    shift: int  # our window scale (RFC 7323 2.3)
    conn_id: int  # the connection's number in the trace


_NUMBERS = struct.Struct("=IIIIIHBQ")  # Numbers' fields, in their order
# `flags` bits.
_SACK_OK = 1  # SACK agreed (RFC 2018): D-SACK blocks on our ACKs
_ECE = 2  # RFC 3168 6.1.3: ECE on every ACK until the peer's CWR
_HOLD_ACKS = 4  # in a batch: a plain ACK waits for its end
_ACK_NOW = 8  # an ACK is due (held in a batch)
_NO_LIMITS = (None, 0.0, 0)  # no invalid-segment ACK sent yet, no challenge ACK


class TimeWait:
    """One 4-tuple in TIME-WAIT. The demux hands it each segment for its
    4-tuple (`receive`) and its 2 MSL expiry (`close`), and sends the ACK
    it answers with."""

    __slots__ = ("config", "deadline", "flags", "held", "key", "limits", "numbers", "tcb",
                 "ts_recent")  # fmt: skip

    def __init__(self, conn: TcpConnection, key: Key, traced: bool) -> None:
        """The record of `conn`, just in TIME-WAIT with nothing left to send
        (the demux has flushed it). `traced`: keep the TCB figures the trace
        of each segment carries."""
        snd, rcv = conn.sender, conn.receiver
        self.key = key
        self.config = conn.config
        # The window field of every ACK from now on: what the connection's next
        # ACK would say (window_field keeps the right edge where it was; with
        # the buffer unchanged it gives the same field again and again).
        window = rcv.window_field()
        # Our ACKs carry SND.MAX (connection._output).
        numbers = Numbers(
            iss=snd.iss,
            irs=rcv.irs,
            snd_max=snd.snd_max,
            rcv_nxt=rcv.rcv_nxt,
            too_old=(snd.snd_una - snd.max_snd_wnd) & MASK,
            window=window,
            shift=rcv.rcv_shift,
            conn_id=conn.conn_id,
        )
        self.numbers = _NUMBERS.pack(*numbers)
        self.ts_recent: int | None = rcv.ts_recent if conn.ts_ok else None  # PAWS, RFC 7323 5.3
        self.flags = (
            (_SACK_OK if conn.sack_ok else 0)
            | (_ECE if rcv.ece_pending else 0)
            | (_ACK_NOW if rcv.ack_now else 0)
        )
        # Data held beyond a hole (a peer that sent past its own FIN): reported
        # in SACK blocks as the connection reported it.
        self.held: tuple[tuple[int, int], ...] = (
            tuple(rcv.out_of_order.blocks()) if rcv.out_of_order.held_bytes else ()
        )
        # RFC 5961 7's limits: (the last ACK for an invalid segment, the second
        # of the challenge ACKs, how many in it).
        limits = (rcv.last_oow_ack, *rcv.challenges)
        self.limits: tuple[float | None, float, int] = (
            _NO_LIMITS if limits == _NO_LIMITS else limits
        )
        self.deadline = conn.deadlines[_TIME_WAIT]
        self.tcb = tcb_snapshot(conn) if traced else None

    def unpacked(self) -> Numbers:
        """The numbers, as the trace (segment_event), the listings and the demux read them."""
        return Numbers._make(_NUMBERS.unpack(self.numbers))

    # Where the 4-tuple's two sequence spaces stand, read as of a connection
    # (RFC 6191: a new incarnation's ISS starts above SND.MAX; the fuzzer).
    @property
    def snd_max(self) -> int:
        return self.unpacked().snd_max

    @property
    def rcv_nxt(self) -> int:
        return self.unpacked().rcv_nxt

    # ---- what comes in ----------------------------------------------------------------

    def receive(self, seg: Segment, now: float, trace: Trace, counters: Counters) -> Segment | bool:
        """RFC 9293 3.10.7.4 in TIME-WAIT, the connection's steps in its
        order. Returns the ACK to send, True (nothing to send), or False: the
        record is closed (a RST honoured, RFC 1337 off)."""
        numbers = self.unpacked()
        rcv_nxt = numbers.rcv_nxt
        answer = _Answer(self, now, trace, numbers)
        flags = seg.flags
        if flags & FIN and not flags & RST and seq.add(seg.seq, len(seg.payload) + 1) == rcv_nxt:
            # The peer lost our last ACK and resent its FIN: ACK again, and
            # the 2 MSL start again.
            answer.ack = True
            deadline = now + 2 * self.config.msl
            if deadline != self.deadline:  # (set again at the same instant: no event)
                self.deadline = deadline
                if trace is not None:
                    trace(TimerEvent(now, numbers.conn_id, _TIME_WAIT, TimerAction.SET, deadline))
            answer.decide(Note.FIN_AGAIN_IN_TIME_WAIT)
            return answer.output()
        stamps = seg.options.timestamps
        ts_recent = self.ts_recent
        if ts_recent is not None and stamps is not None:
            # RFC 7323 5.3 PAWS: an older TSval is an old duplicate (not a RST).
            tsval = stamps[0]
            if 0 < ((ts_recent - tsval) & MASK) < HALF and not flags & RST:
                if answer.invalid_ack_allowed(seg, OutOfWindow.PAWS, counters):
                    answer.ack = True
                answer.decide(Note.PAWS)
                answer.report_old_duplicate(seg, rcv_nxt, counters)
                return answer.drop(DropReason.TIME_WAIT_PAWS, counters)
            if ((rcv_nxt - seg.seq) & MASK) < HALF and ((tsval - ts_recent) & MASK) < HALF:
                self.ts_recent = tsval  # RFC 7323 4.3: at the window's left edge
        if not _acceptable(seg, rcv_nxt, numbers.window << numbers.shift):
            if flags & RST:
                answer.decide(Note.OUTSIDE_WINDOW)
                reason = DropReason.TIME_WAIT_RST
            else:
                acked = answer.invalid_ack_allowed(seg, OutOfWindow.SEQUENCE, counters)
                answer.decide(Note.OUTSIDE_WINDOW)
                if acked:
                    answer.ack = True
                    answer.report_old_duplicate(seg, rcv_nxt, counters)
                reason = DropReason.TIME_WAIT_OUT_OF_WINDOW
        elif flags & RST:
            # RFC 5961 3.2: only a RST at RCV.NXT counts; RFC 1337: ignored.
            if seg.seq != rcv_nxt:
                answer.challenge(Challenge.RST_NOT_AT_RCV_NXT, counters)
            elif self.config.rfc1337:
                answer.decide(Note.RST_IN_TIME_WAIT_IGNORED)
            else:
                self.close(Event.RCV_RST, now, trace)
                return False
            reason = DropReason.TIME_WAIT_RST
        elif flags & SYN:
            # RFC 5961 4.2 (a SYN that starts no new incarnation: RFC 6191 said no).
            answer.challenge(Challenge.SYN_SYNCHRONIZED, counters)
            reason = DropReason.TIME_WAIT_SYN
        elif not flags & ACK:
            answer.decide(Note.NO_ACK_FLAG)
            reason = DropReason.TIME_WAIT_NO_ACK
        elif 0 < ((seg.ack - numbers.snd_max) & MASK) < HALF:
            answer.challenge(Challenge.ACK_OF_UNSENT, counters)
            reason = DropReason.TIME_WAIT_BAD_ACK
        elif 0 < ((numbers.too_old - seg.ack) & MASK) < HALF:
            answer.challenge(Challenge.ACK_TOO_OLD, counters)
            reason = DropReason.TIME_WAIT_BAD_ACK
        else:
            # Both FINs are through: an ACK or data now is late, nothing to take
            # (Linux's tcp_timewait_state_process discards it too).
            reason = DropReason.TIME_WAIT_LATE
        return answer.drop(reason, counters)

    def end_batch(self, now: float) -> Segment | None:
        """The batch is over: the plain ACK it held, if any."""
        flags = self.flags
        self.flags = flags & ~(_HOLD_ACKS | _ACK_NOW)
        if not flags & _ACK_NOW:
            return None
        return self._ack(now, self.unpacked(), _NO_NOTE, None)

    def hold_acks(self) -> None:
        """A batch begins for this record (TcpDemux.begin_batch)."""
        self.flags |= _HOLD_ACKS

    def _ack(
        self, now: float, numbers: Numbers, note: SegmentNote, dsack: tuple[int, int] | None
    ) -> Segment:
        """The ACK, as the connection built it (connection._output, _emit,
        Receiver.ack_options)."""
        ts_recent = self.ts_recent
        flags = self.flags
        held = self.held if flags & _SACK_OK else ()
        options = NO_OPTIONS
        stamps = None if ts_recent is None else ((int(now * 1000) + numbers.iss) & MASK, ts_recent)
        if held or dsack is not None:
            blocks = list(held)
            if dsack is not None:
                blocks.insert(0, dsack)  # RFC 2883 4: the duplicate first
            blocks = blocks[: 3 if stamps is not None else 4]
            options = TcpOptions(sack_blocks=tuple(blocks), timestamps=stamps)
        elif stamps is not None:
            options = TcpOptions(None, None, False, (), stamps)
        bits = ACK | ECE if flags & _ECE else ACK
        return Segment(numbers.snd_max, numbers.rcv_nxt, bits, numbers.window, b"", options, note)

    # ---- the end ------------------------------------------------------------------------

    def close(self, event: Event, now: float, trace: Trace) -> None:
        """TIME-WAIT ends: the 2 MSL are over (TIMEOUT_2MSL), a RST honoured,
        a new incarnation (RFC 6191) or the table full. Traced as the
        connection traced it: the timer fired or cancelled, the state change."""
        if trace is None:
            return
        conn_id = self.unpacked().conn_id
        fired = event is Event.TIMEOUT_2MSL
        action = TimerAction.FIRED if fired else TimerAction.CANCELLED
        change = TRANSITIONS[(State.TIME_WAIT, event)]
        if fired:
            trace(TimerEvent(now, conn_id, _TIME_WAIT, action))
        trace(StateChange(now, conn_id, State.TIME_WAIT, change.new_state, event,
                          change.rule, change.why))  # fmt: skip
        if not fired:
            trace(TimerEvent(now, conn_id, _TIME_WAIT, action))

    # ---- as the connection read from outside (`ustack ss`, the checks) --------------------

    @property
    def state(self) -> State:
        return State.TIME_WAIT

    def timers(self) -> dict[str, float]:
        return {_TIME_WAIT: self.deadline}

    def __repr__(self) -> str:
        numbers = self.unpacked()
        return f"<TimeWait {numbers.conn_id} snd_nxt={numbers.snd_max} rcv_nxt={numbers.rcv_nxt}>"


def _acceptable(seg: Segment, rcv_nxt: int, window: int) -> bool:
    """RFC 9293 3.10.7.4's four cases, in the window of our ACKs."""
    start = seg.seq
    if window <= 0:
        return start == rcv_nxt
    if ((start - rcv_nxt) & MASK) < window:
        return True
    flags = seg.flags
    length = len(seg.payload) + (flags & SYN != 0) + (flags & FIN != 0)
    return length != 0 and ((start + length - 1 - rcv_nxt) & MASK) < window


@dataclass(slots=True)
class _Answer:
    """What one segment makes a record answer: whether an ACK is due, its
    note (a challenge) and D-SACK, the decisions traced, the limits of RFC
    5961 7 updated. Lives for one call."""

    record: TimeWait
    now: float
    trace: Trace
    numbers: Numbers
    ack: bool = False
    note: SegmentNote = _NO_NOTE
    dsack: tuple[int, int] | None = None

    def decide(self, note: Note, rule: Rule | None = None, **values: object) -> None:
        if self.trace is not None:
            what = note.sentence(**values)
            self.trace(Decision(self.now, self.numbers.conn_id, what, rule or note.rule, note.kind))

    def invalid_ack_allowed(
        self, seg: Segment | None, why: OutOfWindow, counters: Counters, what: str | None = None
    ) -> bool:
        """Linux's tcp_oow_rate_limited, as Receiver.invalid_ack_allowed."""
        record = self.record
        interval = record.config.invalid_ack_ratelimit
        if interval <= 0 or (seg is not None and seg.payload and not seg.flags & SYN):
            return True
        now = self.now
        last, started, count = record.limits
        if last is not None and 0 <= now - last < interval:
            counters[f"tcp.out.ack-skipped-{why}"] += 1
            self.decide(Note.INVALID_ACK_SUPPRESSED, why.rule, what=what or why.text)
            return False
        record.limits = (now, started, count)
        return True

    def challenge(self, challenge: Challenge, counters: Counters) -> None:
        """RFC 5961 7's challenge ACK and its limits, as Receiver.challenge_ack."""
        what = challenge.text
        if not self.invalid_ack_allowed(None, OutOfWindow.CHALLENGE, counters, what):
            return
        record = self.record
        now = self.now
        last, started, count = record.limits
        if now - started >= 1.0:
            started, count = now, 0
        if count < record.config.challenge_ack_limit:
            counters["tcp.out.challenge-ack"] += 1
            record.limits = (last, started, count + 1)
            self.ack = True
            self.note = SegmentNote.CHALLENGE_ACK
            self.decide(Note.CHALLENGE_ACK, challenge.rule, what=what)
        else:
            counters["tcp.out.challenge-ack-limited"] += 1
            self.decide(Note.CHALLENGE_ACK_SUPPRESSED, challenge.rule, what=what)

    def report_old_duplicate(self, seg: Segment, rcv_nxt: int, counters: Counters) -> None:
        """RFC 2883 4.1.1: text below RCV.NXT is reported in a D-SACK."""
        if not (self.record.flags & _SACK_OK and seg.payload and seq.lt(seg.seq, rcv_nxt)):
            return
        left = seg.seq
        end = seq.add(left, len(seg.payload))
        right = end if seq.lt(end, rcv_nxt) else rcv_nxt
        if not seq.lt(left, right):
            return
        self.dsack = (left, right)
        self.ack = True
        counters["tcp.out.dsack-old"] += 1  # (always below RCV.NXT here)
        self.decide(Note.DSACK_SENT, left=left, right=right, where="below RCV.NXT")

    def drop(self, reason: DropReason, counters: Counters) -> Segment | bool:
        """The segment is counted as a drop of TIME-WAIT; the ACK it earned, if any."""
        counters.drop(Layer.TCP, reason, self.now)
        return self.output()

    def output(self) -> Segment | bool:
        """The ACK due, at once, or at the batch's end for a plain one (as
        the connection holds it in a batch, TcpDemux.begin_batch)."""
        record = self.record
        flags = record.flags
        if not (self.ack or flags & _ACK_NOW):
            return True
        if flags & _HOLD_ACKS and self.note is _NO_NOTE and self.dsack is None and not record.held:
            record.flags = flags | _ACK_NOW
            return True
        record.flags = flags & ~_ACK_NOW
        return record._ack(self.now, self.numbers, self.note, self.dsack)


# ---- the demux's records: functions of the demux, as listen.py's -----------------


def enter(demux: TcpDemux, conn: TcpConnection, key: Key) -> None:
    """Both FINs are through and the connection has nothing left to send:
    a compact record takes its place in the table (Linux's timewait
    socket). The application's handle reads CLOSED from now on (as a
    Linux socket does once tcp_time_wait has handed it over); the trace
    goes on under the connection's number."""
    record = TimeWait(conn, key, demux.trace is not None)
    demux._forget(conn, key)
    conn.state = State.CLOSED
    conn.deadlines.clear()
    demux._time_waits.setdefault(2 * conn.config.msl, {})[key] = record


def numbered_at(demux: TcpDemux, key: Key) -> Numbered | None:
    """What the trace reads (the number, ISS, IRS) of the connection of
    `key`, or of its TIME-WAIT record."""
    conn = demux.connections.get(key)
    if conn is not None:
        return conn
    record = demux.time_wait_at(key)
    return None if record is None else record.unpacked()


def next_to_end(demux: TcpDemux) -> TimeWait | None:
    """The record whose 2 MSL ends first: the head of its group."""
    first = None
    for group in demux._time_waits.values():
        head = next(iter(group.values()))
        if first is None or head.deadline < first.deadline:
            first = head
    return first


def receive(demux: TcpDemux, record: TimeWait, seg: Segment, now: float) -> None:
    batch = demux._batch
    if batch is not None:
        record.hold_acks()
        batch[record] = now
    deadline = record.deadline
    trace = demux.trace
    if trace is None:
        still = record.receive(seg, now, None, demux._counters)
    else:
        # As _traced: what the record decides follows the segment's own event.
        held: list[TraceEvent] = []
        still = record.receive(seg, now, held.append, demux._counters)
        after = "CLOSED" if still is False else "TIME_WAIT"
        tcb = None if record.tcb is None else dict(record.tcb)
        local = demux._local(record.key[0])
        numbers = record.unpacked()
        trace(segment_event(now, numbers, local, record.key, "in", seg, "TIME_WAIT", after, tcb))
        for event in held:
            trace(event)
    if still is False:
        remove(demux, record)
        return
    if record.deadline != deadline:
        # 2 MSL again (a FIN again): the latest deadline of its group.
        group = demux._time_waits[2 * record.config.msl]
        del group[record.key]
        group[record.key] = record
    if type(still) is Segment:
        send_ack(demux, record, still, now)


def send_ack(demux: TcpDemux, record: TimeWait, ack: Segment, now: float) -> None:
    key = record.key
    if demux.trace is not None:
        tcb = None if record.tcb is None else dict(record.tcb)
        local = demux._local(key[0])
        numbers = record.unpacked()
        demux.trace(segment_event(now, numbers, local, key, "out", ack, "TIME_WAIT",
                                  "TIME_WAIT", tcb))  # fmt: skip
    demux._counters["tcp.out"] += 1
    demux._transmit(key, ack)


def end(demux: TcpDemux, record: TimeWait, event: Event, now: float) -> None:
    """2 MSL over, a new incarnation (RFC 6191) or the table full."""
    record.close(event, now, demux.trace)
    remove(demux, record)


def remove(demux: TcpDemux, record: TimeWait) -> None:
    duration = 2 * record.config.msl
    group = demux._time_waits[duration]
    del group[record.key]
    if not group:
        del demux._time_waits[duration]
