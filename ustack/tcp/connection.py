"""TcpConnection: one TCB and the RFC 9293 event processing, sans I/O.

The connection never reads a clock, a socket or the TUN. It is driven by
`receive(segment, now)`, `handle_timer(now)` and the application calls
(`send`, `read`, `shutdown`, `close`, `abort`); it answers with segments
(`segments_to_send()`), application events (the `events` queue, oldest
first, which its driver pops), trace events (through `trace`) and one
deadline (`get_timer()`).

This module keeps the event processing of RFC 9293 3.10 (SEGMENT ARRIVES
step by step from SYN-RECEIVED on, the timeouts) and the state table; the
user calls (OPEN, SEND, RECEIVE, CLOSE, ABORT) are user_calls.py's
(`UserCalls`, this class's base); the opening (LISTEN, SYN-SENT) is
handshake.py's; the rest is delegated, one concern per object, as gVisor's
netstack splits its endpoint:

- `sender` (sender.py): SND.*, the send buffer, segmentation, Nagle/SWS,
  the zero-window probe;
- `receiver` (receiver.py): RCV.*, the receive buffer and reassembly, the
  window and options we advertise, delayed ACKs;
- `recovery` (recovery.py): RTT, congestion control, SACK/RACK-TLP, fast
  recovery, the retransmission timeout, D-SACK undo;
- `path` (feedback.py): ICMP soft errors, the path MTU (RFC 1191) and
  black-hole fallback (RFC 4821), and so the MSS we send at;
- `_timers` (timers.py): the named deadlines.

Names follow RFC 9293 3.3.1: snd_una is SND.UNA, rcv_nxt is RCV.NXT, and so
on (the connection forwards them to the object that keeps them). The
comments name the step of 3.10.7.4 each block implements.
"""

from __future__ import annotations

from ustack.compiled import mypyc_attr
from ustack.counters import Counters
from ustack.tcp import handshake
from ustack.tcp import seq
from ustack.tcp.config import DEFAULT_PEER_MSS
from ustack.tcp.config import TcpConfig
from ustack.tcp.events import AppEvent
from ustack.tcp.events import Closed
from ustack.tcp.events import Connected
from ustack.tcp.events import EndOfStream
from ustack.tcp.feedback import PathFeedback
from ustack.tcp.keepalive import Keepalive
from ustack.tcp.receiver import Receiver
from ustack.tcp.recovery import Recovery
from ustack.tcp.segment import Segment
from ustack.tcp.sender import Sender
from ustack.tcp.seq import HALF
from ustack.tcp.seq import MASK
from ustack.tcp.seq import MOD
from ustack.tcp.states import PEER_MAY_RESET
from ustack.tcp.states import RECEIVES_TEXT
from ustack.tcp.states import SENDS_DATA
from ustack.tcp.states import TRANSITIONS
from ustack.tcp.states import Event
from ustack.tcp.states import State
from ustack.tcp.timers import DELAYED_ACK
from ustack.tcp.timers import PERSIST
from ustack.tcp.timers import PROBE
from ustack.tcp.timers import REORDER
from ustack.tcp.timers import RETRANSMIT
from ustack.tcp.timers import Timers
from ustack.tcp.user_calls import ConnectionClosedError
from ustack.tcp.user_calls import UserCalls
from ustack.trace.records import Decision
from ustack.trace.records import StateChange
from ustack.trace.records import Tracer
from ustack.trace.vocabulary import Challenge
from ustack.trace.vocabulary import DropReason
from ustack.trace.vocabulary import Layer
from ustack.trace.vocabulary import Note
from ustack.trace.vocabulary import OutOfWindow
from ustack.trace.vocabulary import Rule
from ustack.trace.vocabulary import SegmentNote
from ustack.trace.vocabulary import TimerKind
from ustack.wire.tcp import ACK
from ustack.wire.tcp import ECE
from ustack.wire.tcp import FIN
from ustack.wire.tcp import RST
from ustack.wire.tcp import SYN

__all__ = ["ConnectionClosedError", "TcpConfig", "TcpConnection"]


# Each part's slots that refer back to the connection or to another part:
# what release() drops, named once here (each class lists the same as its
# __deletable__, which the compiled build needs and does not keep on the
# class; tests/unit/test_connection_memory.py checks both against __slots__).
_LINKS: dict[type, tuple[str, ...]] = {
    Sender: ("_conn", "_rcv", "_recovery", "_timers"),
    Receiver: ("_conn", "_timers"),
    Recovery: ("_rcv", "_timers", "_conn", "_snd"),
    Keepalive: ("_conn", "_timers"),
    Timers: ("_owner",),
    PathFeedback: ("_conn",),
}


@mypyc_attr(allow_interpreted_subclasses=True)  # the fuzzer's window check
class TcpConnection(UserCalls):
    # No __dict__: some 200 bytes less per connection, and attribute reads
    # through slots. __weakref__: tests watch a connection being freed.
    __slots__ = (
        "__weakref__", "_outbox", "conn_id", "counters", "deadlines", "ecn_ok", "events",
        "flushing", "hold_acks", "mss", "passive", "path", "peer_mss", "recovery", "sack_ok",
        "trace", "ts_ok",
    )  # fmt: skip

    def __init__(
        self, *, conn_id: int, iss: int, config: TcpConfig, trace: Tracer | None = None
    ) -> None:
        self.conn_id = conn_id
        self.config = config
        self.trace = trace
        self.now = 0.0  # the time of the latest event the connection handled
        self.state = State.CLOSED
        self.passive = False  # opened by a listener (matters for RST in SYN_RECEIVED)
        self.orphaned = False  # the application closed: nobody will read
        self.error: str | None = None  # why it closed, as an errno name
        # Agreed in the handshake: the peer's MSS, SACK (RFC 2018), timestamps
        # (RFC 7323), and so our payload per segment (the MSS less 12 bytes
        # of timestamps).
        self.peer_mss = DEFAULT_PEER_MSS
        self.sack_ok = False
        self.ts_ok = False
        self.ecn_ok = False  # ECN agreed (RFC 3168 6.1.1)
        self.mss = min(self.peer_mss, config.mss)
        # The stack's counters, if it gives them (challenge ACKs sent and withheld).
        self.counters: Counters | None = None
        # ICMP soft errors, the path MTU, black holes (feedback.py).
        self.path = PathFeedback(self)
        self._timers = Timers(self)
        # The timers' own dict (TimerKind -> deadline), read by the demux on
        # every flush; and whether a flush of this connection is under way.
        self.deadlines = self._timers.deadlines
        self.flushing = False
        # In a batch of segments read in one wake-up (TcpDemux.begin_batch):
        # the ACK for in-order data waits for the batch's end (end_batch).
        self.hold_acks = False
        self.keepalive = Keepalive(self, self._timers)
        self.receiver = Receiver(self, self._timers)
        self.sender = Sender(self, self._timers, self.receiver, iss, not config.nagle)
        self.recovery = Recovery(self, self._timers, self.sender, self.receiver)
        self.sender.attach(self.recovery)
        self._outbox: list[Segment] = []
        # For the application, oldest first. A list: rarely more than two wait,
        # and an empty deque costs 760 bytes (a block of 64), an empty list 56.
        self.events: list[AppEvent] = []

    def timers(self) -> dict[str, float]:
        """Pending timers: name -> deadline."""
        return {kind: deadline for kind, deadline in self._timers.deadlines.items()}

    # ---- opening ----------------------------------------------------------

    def listen_accept(self, syn: Segment, now: float) -> None:
        """A listener hands us the SYN it received (RFC 9293 3.10.7.2)."""
        self.now = now
        handshake.accept_syn(self, syn)

    def accept_cookie(self, ack: Segment, irs: int, peer_mss: int, now: float) -> None:
        """The final ACK of a handshake answered with a SYN cookie (RFC 4987):
        the connection starts ESTABLISHED, with what the cookie carried."""
        self.now = now
        handshake.accept_cookie(self, ack, irs, peer_mss)
        self.receive(ack, now)  # its data, if any

    # ---- ICMP errors (RFC 1122 4.2.3.9, RFC 5461; the rest in feedback.py) ------

    def icmp_error(self, what: str, error: str, hard: bool, now: float) -> None:
        """An ICMP error the demux found to be about this connection. A hard
        one refuses a connection being opened; `path` keeps anything else."""
        self.now = now
        if hard and self.state is State.SYN_SENT:
            self._transition(Event.ICMP_HARD_ERROR, error=error)
        else:
            self.path.remember(what, error, hard)

    def reopen(self, now: float) -> None:
        """A new SYN above RCV.NXT takes over this TIME_WAIT 4-tuple (RFC 6191)."""
        self.now = now
        self._transition(Event.RCV_SYN_NEW_INCARNATION)

    # ---- segment arrival ---------------------------------------------------

    def receive(self, segment: Segment, now: float) -> None:
        self.now = now
        path = self.path
        if path.path_mtu_until is not None and now >= path.path_mtu_until:
            path.expire()
        keepalive = self.keepalive
        keepalive.last_heard = now
        keepalive.probes = 0
        state = self.state
        if state is State.SYN_SENT:
            handshake.receive_in_syn_sent(self, segment)
        elif state is not State.CLOSED:
            self._receive_synchronized(segment)
        self._output()

    def _receive_synchronized(self, seg: Segment) -> None:
        """RFC 9293 3.10.7.4, for SYN_RECEIVED and every later state."""
        flags = seg.flags
        state = self.state
        snd = self.sender
        rcv = self.receiver
        if (
            state is State.TIME_WAIT
            and flags & FIN
            and not flags & RST
            and seq.add(seg.seq, len(seg.payload) + 1) == rcv.rcv_nxt
        ):
            # The peer lost our last ACK and resent its FIN.
            rcv.ack_now = True
            self._timers.arm(TimerKind.TIME_WAIT, 2 * self.config.msl)
            self.decide(Note.FIN_AGAIN_IN_TIME_WAIT)
            return
        if (
            state is State.SYN_RECEIVED
            and not self.passive
            and flags & (SYN | ACK | RST) == SYN | ACK
            and seg.seq == rcv.irs
            and seg.ack == seq.add(snd.iss, 1)
        ):
            # Simultaneous open (RFC 9293 3.5, Figure 8): the peer's SYN,ACK
            # acknowledges our SYN; it is its SYN again, so no text follows.
            snd.snd_una = seg.ack
            snd.take_window(seg)
            self._timers.cancel(RETRANSMIT)
            self._transition(Event.RCV_ACK_OF_SYN)
            self._after_handshake()
            self.events.append(Connected())
            rcv.ack_now = True
            return
        if (
            state is State.SYN_RECEIVED
            and flags & SYN
            and not flags & (ACK | RST)
            and seg.seq == rcv.irs
        ):
            # The peer did not get our SYN,ACK: send it again, same ISS.
            snd.snd_nxt = snd.iss
            self.decide(Note.SYN_AGAIN_IN_SYN_RECEIVED)
            return
        if self.ts_ok and not rcv.timestamps_ok(seg):
            rcv.report_old_duplicate(seg)
            self._dropped_in_time_wait(DropReason.TIME_WAIT_PAWS)
            return
        # First: is the segment acceptable (in the receive window)?
        if not rcv.acceptable(seg):
            if flags & RST:
                self.decide(Note.OUTSIDE_WINDOW)
                self._dropped_in_time_wait(DropReason.TIME_WAIT_RST)
                return
            acked = rcv.invalid_ack_allowed(seg, OutOfWindow.SEQUENCE)
            self.decide(Note.OUTSIDE_WINDOW)
            if acked:
                rcv.ack_now = True
                rcv.report_old_duplicate(seg)
            self._dropped_in_time_wait(DropReason.TIME_WAIT_OUT_OF_WINDOW)
            return
        # Second: RST (RFC 5961 3.2: only an exact RCV.NXT match resets).
        if flags & RST:
            self._receive_rst(seg)
            return
        # Fourth: a SYN in a synchronized state gets a challenge ACK (RFC 5961 4.2).
        if flags & SYN:
            self.receiver.challenge_ack(Challenge.SYN_SYNCHRONIZED)
            self._dropped_in_time_wait(DropReason.TIME_WAIT_SYN)
            return
        # Fifth: the ACK field.
        if not flags & ACK:
            self.decide(Note.NO_ACK_FLAG)
            self._dropped_in_time_wait(DropReason.TIME_WAIT_NO_ACK)
            return
        if state is State.SYN_RECEIVED:
            if not (seq.lt(snd.snd_una, seg.ack) and seq.le(seg.ack, snd.snd_max)):
                self._emit(Segment(seg.ack, 0, RST, 0, note=SegmentNote.RST_UNACCEPTABLE_ACK))
                self.decide(Note.UNACCEPTABLE_ACK_IN_SYN_RECEIVED)
                return
            snd.take_window(seg)
            self._transition(Event.RCV_ACK_OF_SYN)
            self._after_handshake()
            self.events.append(Connected())
        was_time_wait = state is State.TIME_WAIT
        if not self._receive_ack(seg):
            if was_time_wait:
                self._dropped_in_time_wait(DropReason.TIME_WAIT_BAD_ACK)
            return
        if was_time_wait:
            # Both FINs are through: an ACK or data now is late, nothing to take
            # (Linux's tcp_timewait_state_process discards it too).
            self._dropped_in_time_wait(DropReason.TIME_WAIT_LATE)
            return
        # Sixth (URG) is not supported: urgent data is ordinary data here.
        # Seventh and eighth: the text, then the FIN.
        if self.state in (State.CLOSED, State.TIME_WAIT):
            return
        if self.ecn_ok and seg.payload:
            rcv.take_ecn(seg)
        self._receive_text_and_fin(seg.seq, seg.payload, seg.flags & FIN)
        if self.state is State.FIN_WAIT_1 and snd.fin_acked():  # (the state first: no call)
            # The segment acknowledged our FIN but its own FIN was not next in
            # sequence (old, beyond the window, or with data held past it):
            # step five's FIN-WAIT-2 after all.
            self._our_fin_acked()

    def _our_fin_acked(self) -> None:
        """RFC 9293 3.10.7.4, fifth step, FIN-WAIT-1: our FIN is acknowledged."""
        self._transition(Event.RCV_ACK_OF_FIN)
        if self.orphaned:
            self._timers.arm(TimerKind.FIN_WAIT_2, self.config.fin_wait_2_timeout)

    def _dropped_in_time_wait(self, reason: DropReason) -> None:
        """A segment that TIME_WAIT drops is counted with its reason (the
        connection itself stays; its ACK or challenge ACK may still go)."""
        if self.state is State.TIME_WAIT and self.counters is not None:
            self.counters.drop(Layer.TCP, reason, self.now)

    def _receive_rst(self, seg: Segment) -> None:
        if seg.seq != self.receiver.rcv_nxt:
            self.receiver.challenge_ack(Challenge.RST_NOT_AT_RCV_NXT)
            self._dropped_in_time_wait(DropReason.TIME_WAIT_RST)
            return
        state = self.state
        if state is State.SYN_RECEIVED:
            if self.passive:
                self._transition(Event.RCV_RST)  # back to LISTEN: the listener stays
            else:
                self._transition(Event.RCV_RST_AFTER_SIMULTANEOUS_OPEN, error="ECONNREFUSED")
        elif state is State.TIME_WAIT:
            if self.config.rfc1337:
                self.decide(Note.RST_IN_TIME_WAIT_IGNORED)
                self._dropped_in_time_wait(DropReason.TIME_WAIT_RST)
            else:
                self._transition(Event.RCV_RST)
        else:
            error = "ECONNRESET" if state in PEER_MAY_RESET else None
            self._transition(Event.RCV_RST, error=error)

    def _receive_ack(self, seg: Segment) -> bool:
        """The fifth step for ESTABLISHED and the closing states; False when
        the segment is finished with."""
        ack = seg.ack
        snd = self.sender
        # Per segment, so RFC 9293 3.4's comparisons are inlined (seq.gt,
        # seq.lt): SEG.ACK > SND.MAX, SEG.ACK < SND.UNA - MAX.SND.WND.
        if 0 < ((ack - snd.snd_max) & MASK) < HALF:
            self.receiver.challenge_ack(Challenge.ACK_OF_UNSENT)
            return False
        if 0 < ((snd.snd_una - snd.max_snd_wnd - ack) & MASK) < HALF:
            self.receiver.challenge_ack(Challenge.ACK_TOO_OLD)
            return False
        self.recovery.on_ack(seg)
        snd.update_window(seg)
        if not (snd.fin_queued and snd.fin_acked()):  # (fin_queued first: no call per segment)
            return True
        state = self.state
        if state is State.FIN_WAIT_1:
            if not seg.flags & FIN:
                self._our_fin_acked()
            # else its FIN, if next in sequence, takes us straight to TIME_WAIT;
            # _receive_synchronized goes to FIN_WAIT_2 after the text if not.
        elif state is State.CLOSING or state is State.LAST_ACK:
            self._transition(Event.RCV_ACK_OF_FIN)
            return False
        return True

    def _after_handshake(self) -> None:
        self.recovery.after_handshake()
        self.keepalive.start()

    def _receive_text_and_fin(self, start: int, payload: bytes | memoryview, fin: int) -> None:
        """The seventh and eighth steps: the segment's text, then its FIN."""
        state = self.state
        rcv = self.receiver
        trimmed = rcv.trim(start, payload, fin)
        if trimmed is None:
            return  # everything, FIN included, is old
        start, payload, fin = trimmed
        if payload:
            if state not in RECEIVES_TEXT:
                self.decide(Note.DATA_AFTER_FIN, state=state)
                return
            if self.orphaned:
                self._send_rst_ack()
                self._transition(Event.RCV_DATA_ORPHANED)
                return
            if rcv.text(start, bytes(payload)):
                self._receive_fin()  # the FIN held beyond the hole is next now
        if fin and rcv.fin_received:
            self.decide(Note.FIN_AFTER_FIN)
        elif fin:
            fin_seq = seq.add(start, len(payload))
            if fin_seq == rcv.rcv_nxt:
                self._receive_fin()
            elif seq.gt(fin_seq, rcv.rcv_nxt):
                rcv.hold_fin(fin_seq)

    def _receive_fin(self) -> None:
        """The eighth step: the FIN is next in sequence."""
        state = self.state
        rcv = self.receiver
        # The peer closes first: our own FIN is likely to follow as soon as
        # the application sees the end, and it can carry this ACK (one
        # segment, not two), as Linux's "pingpong" delayed ACK does. The
        # delayed-ACK timer bounds the wait.
        rcv.take_fin(delay=state is State.ESTABLISHED and not rcv.fin_received)
        if rcv.fin_received:
            return
        rcv.fin_received = True
        self.events.append(EndOfStream())
        if state in (State.ESTABLISHED, State.FIN_WAIT_2):
            self._transition(Event.RCV_FIN)
        elif state is State.FIN_WAIT_1:
            acked = self.sender.fin_acked()
            self._transition(Event.RCV_FIN_ACK_OF_FIN if acked else Event.RCV_FIN)

    # ---- timers ------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The earliest deadline at which handle_timer() has work, if any."""
        return self._timers.earliest()

    def handle_timer(self, now: float) -> None:
        self.now = now
        path = self.path
        if path.path_mtu_until is not None and now >= path.path_mtu_until:
            path.expire()
        for kind in self._timers.expired(now):
            if kind is RETRANSMIT:
                self._on_retransmit_timeout()
            elif kind is PERSIST:
                if not self.sender.persist_timeout():
                    self._transition(Event.TIMEOUT_RETRANSMIT, error="ETIMEDOUT")
            elif kind is PROBE:
                self.recovery.probe_timeout()
            elif kind is REORDER:
                self.recovery.detect_losses()
            elif kind is DELAYED_ACK:
                rcv = self.receiver
                rcv.ack_now = True
                if rcv.interactive:
                    # No answer came in time to carry the ACK: the exchange is
                    # not request and answer after all (Linux leaves pingpong
                    # mode here, tcp_delack_timer_handler).
                    rcv.interactive = False
                    self.decide(Note.NOT_INTERACTIVE)
            elif kind is TimerKind.TIME_WAIT:
                self._transition(Event.TIMEOUT_2MSL)
            elif kind is TimerKind.FIN_WAIT_2 and self.state is State.FIN_WAIT_2:
                self._transition(Event.TIMEOUT_FIN_WAIT_2)
            elif (
                kind is TimerKind.KEEPALIVE
                and self.state in (State.ESTABLISHED, State.CLOSE_WAIT)
                and not self.keepalive.timeout()
            ):
                self._transition(Event.TIMEOUT_KEEPALIVE, error=self.path.timeout_error())
        self._output()

    def _on_retransmit_timeout(self) -> None:
        """RFC 6298 5.4-5.7: back off, go back to SND.UNA, resend."""
        recovery = self.recovery
        if not recovery.on_retransmit_timeout():
            self._transition(Event.TIMEOUT_RETRANSMIT, error=self.path.timeout_error())
            return
        snd = self.sender
        if snd.snd_wnd == 0 and snd.snd_una != snd.iss and self.state in SENDS_DATA:
            snd.send_data(1, probe=True)  # the lost byte was a zero-window probe
        else:
            self._output()
        self._timers.arm(RETRANSMIT, recovery.rtt.rto)

    # ---- output --------------------------------------------------------------

    def segments_to_send(self) -> list[Segment]:
        out, self._outbox = self._outbox, []
        return out

    def _output(self) -> None:
        state = self.state
        if state is State.CLOSED or state is State.LISTEN:
            return
        snd = self.sender
        if state is not State.TIME_WAIT:
            if snd.snd_nxt == snd.iss:
                snd.send_syn()
            elif snd.snd_una != snd.iss and state in SENDS_DATA:
                if self.recovery.rack.lost_out:
                    self.recovery.retransmit_lost()
                # Bytes not yet sent, or the FIN right after the last byte:
                # only then has send_data anything to do (the common case of
                # a receiver answering data with a bare ACK skips it).
                sent = (snd.snd_nxt - snd.buffer_seq) & MASK  # seq.diff inlined: per segment
                if sent > HALF:
                    sent -= MOD
                unsent = len(snd.buffer) - sent
                if unsent > 0 or (unsent == 0 and snd.fin_queued):
                    snd.send_data(None)
        rcv = self.receiver
        if rcv.ack_now and not (
            # One ACK for the in-order data of a whole batch, as Linux's GRO
            # gives (RFC 9293 3.10.7.4 and RFC 1122 4.2.3.2 let one ACK cover
            # several segments). Not a duplicate ACK for data beyond a hole,
            # a D-SACK or a challenge: those go at once (RFC 5681 4.2).
            self.hold_acks
            and rcv.ack_note is SegmentNote.NONE
            and rcv.dsack is None
            and not rcv.out_of_order.held_bytes
        ):
            rcv.ack_now = False
            window = rcv.window_field()
            # SND.MAX, not SND.NXT: after a timeout SND.NXT went back, but the
            # peer may have everything up to SND.MAX already.
            options = rcv.ack_options()
            self._emit(Segment(snd.snd_max, rcv.rcv_nxt, ACK, window, b"", options, rcv.ack_note))
        rcv.ack_note = SegmentNote.NONE

    def end_batch(self) -> None:
        """The batch of segments is over: the ACK it held, if any, goes now."""
        self.hold_acks = False
        self._output()

    def _emit(self, segment: Segment) -> None:
        """Every segment goes out through here (a test may wrap it)."""
        rcv = self.receiver
        if rcv.ece_pending and segment.flags & (ACK | SYN | RST) == ACK:
            # RFC 3168 6.1.3: ECE on every ACK (data too) until the peer's CWR.
            segment.flags |= ECE
        self._outbox.append(segment)
        if segment.flags & ACK and segment.ack == rcv.rcv_nxt:
            rcv.unacked_bytes = 0  # whatever it carries, it acknowledges all we have
            rcv.pushed = 0
            rcv.ack_deferred = False
            if DELAYED_ACK in self._timers.deadlines:
                self._timers.cancel(DELAYED_ACK)

    def ts_now(self) -> int:
        """Our TSval: a 1 ms clock, offset per connection (by the ISS, a keyed hash)."""
        return (int(self.now * 1000) + self.sender.iss) & seq.MASK

    def _send_rst_ack(self) -> None:
        # With timestamps, a RST carries a current TSval (RFC 7323 5.4).
        rcv = self.receiver
        options = rcv.ack_options()
        self._emit(Segment(self.sender.snd_max, rcv.rcv_nxt, RST | ACK, 0, b"", options))

    # ---- state changes and trace ------------------------------------------------

    def _transition(self, event: Event, error: str | None = None) -> None:
        transition = TRANSITIONS[(self.state, event)]
        old, self.state = self.state, transition.new_state
        if self.trace is not None:
            self.trace(
                StateChange(
                    self.now, self.conn_id, old, self.state, event, transition.rule, transition.why
                )
            )
        if self.state in (State.CLOSED, State.LISTEN):
            self._timers.cancel_all()
            self.error = error
            if old is not State.TIME_WAIT:
                self.events.append(Closed(error))
        elif self.state is State.TIME_WAIT:
            # Both FINs are through: for the application the connection is
            # over; TIME_WAIT is the stack's business, as with kernel sockets.
            self._timers.cancel_all()
            self._timers.arm(TimerKind.TIME_WAIT, 2 * self.config.msl)
            self.events.append(Closed(None))

    def decide(self, note: Note, rule: Rule | None = None, **values: object) -> None:
        """Trace a decision: the note's sentence (with `values` filled in),
        under its own rule or `rule`."""
        if self.trace is not None:
            what = note.sentence(**values)
            self.trace(Decision(self.now, self.conn_id, what, rule or note.rule, note.kind))

    def release(self) -> None:
        """Once the demux forgets it: the parts drop their references back, so
        reference counting frees the TCB at once (no cycle waits for a full
        collection). A closed connection's calls still answer."""
        parts = (self.sender, self.receiver, self.recovery, self.keepalive, self._timers, self.path)
        for part in parts:
            for name in _LINKS[type(part)]:
                delattr(part, name)

    def __repr__(self) -> str:
        return (
            f"<TcpConnection {self.conn_id} {self.state} snd_una={self.sender.snd_una}"
            f" snd_nxt={self.sender.snd_nxt} rcv_nxt={self.receiver.rcv_nxt}>"
        )
