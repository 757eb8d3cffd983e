"""TcpConnection: one TCB and the RFC 9293 event processing, sans I/O.

The connection never reads a clock, a socket or the TUN. It is driven by
`receive(segment, now)`, `handle_timer(now)` and the application calls
(`send`, `read`, `shutdown`, `close`, `abort`); it answers with segments
(`segments_to_send()`), application events (the `events` queue, oldest
first, which its driver pops), trace events (through `trace`) and one
deadline (`get_timer()`).

Names follow RFC 9293 3.3.1: snd_una is SND.UNA, rcv_nxt is RCV.NXT, and so
on. The comments name the step of 3.10.7.4 each block implements.
"""

from __future__ import annotations

import copy
from collections import Counter, deque
from dataclasses import dataclass

from ustack.study.records import Decision, StateChange, TimerEvent, Tracer
from ustack.tcp import congestion, seq
from ustack.tcp.buffers import ReassemblyQueue, ReceiveBuffer
from ustack.tcp.events import (
    AppEvent,
    Closed,
    Connected,
    DataReceived,
    EndOfStream,
    SendSpace,
)
from ustack.tcp.rack import Rack
from ustack.tcp.rtt import RttEstimator
from ustack.tcp.segment import NO_OPTIONS, Segment
from ustack.tcp.states import TRANSITIONS, Event, State
from ustack.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpOptions

DEFAULT_PEER_MSS = 536  # RFC 9293 3.7.1: assumed when the SYN carries no MSS option
MIN_PEER_MSS = 48  # Linux's tcp_min_snd_mss: what we use for a smaller MSS option
MAX_WINDOW_SHIFT = 14  # RFC 7323 2.3
MAX_GSO_PAYLOAD = 65535 - 60 - 60  # an IP datagram less the largest IP and TCP headers


@dataclass(frozen=True)
class TcpConfig:
    mss: int = 1460  # announced in our SYN: the MTU less 40
    receive_buffer: int = 256 * 1024
    send_buffer: int = 256 * 1024
    window_scaling: bool = True
    msl: float = 30.0  # TIME_WAIT lasts 2*MSL
    initial_rto: float = 1.0  # RFC 6298 2.1
    min_rto: float = 0.2  # Linux's; RFC 6298 says 1 s
    max_rto: float = 60.0
    syn_retries: int = 6  # SYN retransmissions before ETIMEDOUT (Linux tcp_syn_retries)
    synack_retries: int = 5  # SYN,ACK retransmissions before the half-open entry goes
    retries: int = 15  # data/FIN retransmissions before ETIMEDOUT (Linux tcp_retries2)
    fin_wait_2_timeout: float = 60.0  # orphaned FIN_WAIT_2 (Linux tcp_fin_timeout)
    rfc1337: bool = True  # ignore RST in TIME_WAIT (RFC 1337); False: honour it
    challenge_ack_limit: int = 10  # challenge ACKs per second (RFC 5961 7)
    initial_window_segments: int = 10  # RFC 6928
    nagle: bool = True  # hold small segments while a small one is unacknowledged
    congestion_control: str = "cubic"  # or "newreno"
    delayed_ack: float = 0.04  # at most this long before an ACK (Linux's 40 ms; RFC: < 0.5 s)
    sack: bool = True  # offer SACK-permitted and send SACK blocks (RFC 2018)
    timestamps: bool = True  # RFC 7323: RTT measurement on every ACK, and PAWS
    tail_loss_probe: bool = True  # RFC 8985 7 (with SACK): a probe at 2*SRTT, not the RTO
    gso_segments: int = 1  # >1: hand the link super-segments of this many MSS (GSO)
    # Keep-alive (RFC 1122 4.2.3.6), off by default: probe after this many idle seconds.
    keepalive_idle: float | None = None
    keepalive_interval: float = 75.0
    keepalive_probes: int = 9

    @property
    def window_shift(self) -> int:
        """The smallest shift that lets the 16-bit field carry our whole buffer."""
        shift = 0
        while (self.receive_buffer >> shift) > 0xFFFF and shift < MAX_WINDOW_SHIFT:
            shift += 1
        return shift


class ConnectionClosedError(ConnectionError):
    """send() or read() on a connection that can no longer do it."""


class TcpConnection:
    def __init__(
        self, *, conn_id: int, iss: int, config: TcpConfig, trace: Tracer | None = None
    ) -> None:
        self.conn_id = conn_id
        self.config = config
        self.trace = trace
        self.state = State.CLOSED
        self.passive = False  # opened by a listener (matters for RST in SYN_RECEIVED)
        self.orphaned = False  # the application closed: nobody will read
        self.error: str | None = None  # why it closed, as an errno name
        # Send sequence variables (RFC 9293 3.3.1). SND.MAX is the highest
        # SND.NXT ever sent: SND.NXT goes back to SND.UNA on a timeout.
        self.iss = iss
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_max = iss
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.max_snd_wnd = 0
        self.snd_shift = 0  # the peer's window scale, applied to its windows
        self.peer_mss = DEFAULT_PEER_MSS
        # Receive sequence variables. RCV.WND is what we last advertised:
        # rcv_adv (its right edge) minus RCV.NXT.
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_adv = 0
        self.rcv_shift = 0  # our window scale
        # Buffers: _send_buf holds unacknowledged and unsent data from
        # sequence number _send_buf_seq; _recv_buf holds in-order data not
        # yet read; _out_of_order holds data beyond a hole.
        self._send_buf = bytearray()
        self._send_buf_seq = seq.add(iss, 1)
        self._fin_queued = False  # our FIN follows the last byte of _send_buf
        self._recv_buf = ReceiveBuffer()
        self._out_of_order = ReassemblyQueue()
        self._held_fin: int | None = None  # SEQ of a FIN that arrived beyond a hole
        self.fin_received = False
        self._read_shut = False
        # Loss recovery: one timer, RFC 6298 RTO, Karn's rule; a minimal
        # slow start so a timeout does not resend a whole window at once.
        self._rtt = RttEstimator(config.initial_rto, config.min_rto, config.max_rto)
        self._timed: tuple[int, float] | None = None  # (SEQ being timed, when sent)
        self._retries = 0
        self._syn_retransmitted = False
        self._ts_at_timeout = 0  # our TSval at the last retransmission timeout
        self.nodelay = not config.nagle  # TCP_NODELAY: send small segments at once
        self._small_sent_end = iss  # SEQ just after the last sub-MSS segment sent
        self.cc = congestion.make(
            config.congestion_control, config.mss, config.initial_window_segments * config.mss
        )
        self._dupacks = 0
        self._probe_high: int | None = None  # SND.MAX when a tail loss probe went out
        self._recover: int | None = None  # NewReno: SND.MAX when fast recovery began
        self._recovery_high = iss  # RFC 6582 "recover", for the next entry check
        self.sack_ok = False  # both sides offered SACK
        # With SACK, the RACK log (RFC 8985) knows when each segment went out,
        # which the peer holds (the SACK scoreboard) and which are lost.
        self._rack = Rack()
        # Undo (RFC 3708 detection, RFC 4015 response): the congestion state
        # from before the last loss episode's cut, SND.UNA then, and the bytes
        # resent since that no D-SACK has shown to be needless yet.
        self._undo_cc: congestion.CongestionControl | None = None
        self._undo_marker = iss
        self._undo_bytes = 0
        self.ts_ok = False  # both sides sent timestamps (RFC 7323)
        self.ts_recent = 0  # TS.Recent: the peer's latest TSval worth echoing
        self._last_hold: tuple[int, int] | None = None  # the latest out-of-order segment
        # Deadlines by timer name: retransmit, persist, time_wait, fin_wait_2.
        self._timers: dict[str, float] = {}
        self._challenges: tuple[float, int] = (0.0, 0)  # (second started, count)
        # The stack's counters, if it gives them (challenge ACKs sent and withheld).
        self.counters: Counter[str] | None = None
        self._ack_now = False
        self._last_heard = 0.0  # when the peer last sent anything (keep-alive)
        self._keepalive_probes = 0
        self._unacked_bytes = 0  # received since our last ACK (delayed ACK)
        self._ack_note = ""  # why the next pure ACK goes out, when it is special
        self._now = 0.0
        self._outbox: list[Segment] = []
        self.events: deque[AppEvent] = deque()  # for the application, oldest first

    @property
    def cwnd(self) -> int:
        return self.cc.cwnd

    @property
    def ssthresh(self) -> int:
        return self.cc.ssthresh

    @property
    def _sacked(self) -> list[list[int]]:
        """The SACK scoreboard (RFC 6675): sorted, merged [left, right) ranges
        above SND.UNA that the peer reported holding; RACK's log has it."""
        return self._rack.sacked_ranges()

    @property
    def rto(self) -> float:
        return self._rtt.rto

    @property
    def srtt(self) -> float | None:
        return self._rtt.srtt

    def timers(self) -> dict[str, float]:
        """Pending timers: name -> deadline."""
        return dict(self._timers)

    @property
    def now(self) -> float:
        """The time of the latest event the connection handled."""
        return self._now

    # ---- opening ----------------------------------------------------------

    def connect(self, now: float) -> None:
        """Active OPEN: send a SYN (RFC 9293 3.10.1)."""
        self._now = now
        self._transition(Event.APP_CONNECT)
        self._output()

    def listen_accept(self, syn: Segment, now: float) -> None:
        """A listener hands us the SYN it received (RFC 9293 3.10.7.2)."""
        self._now = now
        self.passive = True
        self.state = State.LISTEN
        self._take_syn(syn)
        self.snd_wnd = syn.window  # never scaled in a SYN (RFC 7323 2.2)
        self.max_snd_wnd = self.snd_wnd
        self.snd_wl1 = syn.seq
        self._transition(Event.RCV_SYN)
        self._output()

    def accept_cookie(self, ack: Segment, irs: int, peer_mss: int, now: float) -> None:
        """The final ACK of a handshake answered with a SYN cookie (RFC 4987):
        the connection starts ESTABLISHED, with what the cookie carried."""
        self._now = now
        self.passive = True
        self.state = State.LISTEN
        self.irs = irs
        self.rcv_nxt = seq.add(irs, 1)
        self.rcv_adv = seq.add(self.rcv_nxt, min(self._free_receive_space(), 0xFFFF))
        self.peer_mss = peer_mss
        self.snd_una = self.snd_nxt = self.snd_max = seq.add(self.iss, 1)
        self.snd_wnd = self.max_snd_wnd = ack.window  # no window scaling without the SYN
        self.snd_wl1, self.snd_wl2 = ack.seq, ack.ack
        self.cc.mss = self._mss
        self.cc.cwnd = self.config.initial_window_segments * self._mss
        self._transition(Event.RCV_VALID_COOKIE)
        self.events.append(Connected())
        self.receive(ack, now)  # its data, if any

    def _take_syn(self, syn: Segment) -> None:
        """IRS, RCV.NXT and the options of the peer's SYN."""
        self.irs = syn.seq
        self.rcv_nxt = seq.add(syn.seq, 1)
        # Our SYN (if it went first) advertised the empty buffer from a RCV.NXT
        # we did not know yet: the same window, from the real RCV.NXT.
        self.rcv_adv = seq.add(self.rcv_nxt, min(self._free_receive_space(), 0xFFFF))
        options = syn.options
        # A tiny MSS would leave no room for data next to our options (Linux
        # floors it the same way, tcp_min_snd_mss).
        self.peer_mss = max(options.mss or DEFAULT_PEER_MSS, MIN_PEER_MSS)
        if options.window_scale is not None and self.config.window_scaling:
            self.snd_shift = min(options.window_scale, MAX_WINDOW_SHIFT)
            self.rcv_shift = self.config.window_shift
        else:  # both sides must offer it, else neither scales (RFC 7323 2.2)
            self.snd_shift = self.rcv_shift = 0
        self.sack_ok = options.sack_permitted and self.config.sack
        self.ts_ok = options.timestamps is not None and self.config.timestamps
        if options.timestamps is not None:
            self.ts_recent = options.timestamps[0]
        # Now the segment size is known: the congestion window counts in it.
        self.cc.mss = self._mss
        self.cc.cwnd = self.config.initial_window_segments * self._mss

    def reopen(self, now: float) -> None:
        """A new SYN above RCV.NXT takes over this TIME_WAIT 4-tuple (RFC 6191)."""
        self._now = now
        self._transition(Event.RCV_SYN_NEW_INCARNATION)

    # ---- the application's calls -------------------------------------------

    def send(self, data: bytes | bytearray | memoryview, now: float) -> int:
        """Queue data; returns how many bytes fit in the send buffer."""
        self._now = now
        if self.state is State.CLOSED:
            raise ConnectionClosedError(self.error or "ENOTCONN")
        if self._fin_queued or self.state not in _CAN_SEND:
            raise BrokenPipeError("EPIPE: the sending side is shut down")
        room = self.config.send_buffer - len(self._send_buf)
        taken = data[: max(room, 0)]
        self._send_buf += taken
        self._output()
        return len(taken)

    @property
    def send_space(self) -> int:
        return max(self.config.send_buffer - len(self._send_buf), 0)

    @property
    def unsent_bytes(self) -> int:
        return len(self._send_buf)

    def read(self, max_bytes: int, now: float) -> bytes:
        """Up to max_bytes of received data; b"" means none waits (check at_eof)."""
        self._now = now
        data = self._recv_buf.take(max_bytes)
        if data and self.state in _CAN_ACK:
            self._maybe_window_update()
            self._output()
        return data

    @property
    def readable_bytes(self) -> int:
        return len(self._recv_buf)

    @property
    def at_eof(self) -> bool:
        """The peer's FIN arrived and every byte before it has been read."""
        return self.fin_received and not self._recv_buf

    def shutdown(self, now: float) -> None:
        """shutdown(SHUT_WR): FIN after the queued data; we can still receive."""
        self._now = now
        if self._fin_queued or self.state in (State.CLOSED, State.LISTEN):
            return
        if self.state is State.SYN_SENT:
            self._transition(Event.APP_CLOSE)
            return
        self._fin_queued = True
        self._transition(Event.APP_CLOSE)
        self._output()

    def shutdown_read(self) -> None:
        """shutdown(SHUT_RD): nothing goes on the wire; later data is dropped."""
        self._read_shut = True
        self._recv_buf.clear()

    def close(self, now: float) -> None:
        """The application is done with the connection (RFC 9293 3.10.4).

        Unread data makes it an abortive close (RST, RFC 9293 3.6 SHLD-3);
        otherwise the FIN goes after any queued data, and the connection
        lives on, orphaned, until the close completes."""
        self._now = now
        self.orphaned = True
        if self._recv_buf and self.state in _CLOSE_UNREAD_RESETS:
            self._send_rst_ack()
            self._transition(Event.APP_CLOSE_UNREAD)
            return
        self.shutdown(now)
        if self.state is State.FIN_WAIT_2 and "fin_wait_2" not in self._timers:
            self._arm("fin_wait_2", self.config.fin_wait_2_timeout)

    def abort(self, now: float) -> None:
        """ABORT (RFC 9293 3.10.5), like SO_LINGER 0: RST and gone."""
        self._now = now
        self.orphaned = True
        if self.state in (State.CLOSED, State.LISTEN, State.TIME_WAIT):
            return
        # RFC 9293 3.10.5: in CLOSING and LAST_ACK both FINs are out; just delete.
        if self.state not in (State.SYN_SENT, State.CLOSING, State.LAST_ACK):
            self._send_rst_ack()
        self._transition(Event.APP_ABORT)

    # ---- segment arrival ---------------------------------------------------

    def receive(self, segment: Segment, now: float) -> None:
        self._now = now
        self._last_heard = now
        self._keepalive_probes = 0
        if self.state is State.SYN_SENT:
            self._receive_in_syn_sent(segment)
        elif self.state is not State.CLOSED:
            self._receive_synchronized(segment)
        self._output()

    def _receive_in_syn_sent(self, seg: Segment) -> None:
        """RFC 9293 3.10.7.3."""
        flags = seg.flags
        # First: the ACK must acknowledge our SYN, nothing less, nothing more.
        if flags & ACK and (seq.le(seg.ack, self.iss) or seq.gt(seg.ack, self.snd_max)):
            if not flags & RST:
                self._emit(Segment(seg.ack, 0, RST, 0, note="RST for an unacceptable ACK"))
            self._decide("unacceptable ACK in SYN_SENT: RST <SEQ=SEG.ACK>", "3.10.7.3")
            return
        # Second: a RST counts only if it acknowledges our SYN.
        if flags & RST:
            if flags & ACK:
                self._transition(Event.RCV_RST, error="ECONNREFUSED")
            else:
                self._decide("RST without ACK in SYN_SENT ignored", "3.10.7.3")
            return
        # Fourth: the SYN.
        if not flags & SYN:
            self._decide("neither SYN nor RST in SYN_SENT: dropped", "3.10.7.3")
            return
        self._take_syn(seg)
        self.snd_wnd = seg.window  # a SYN's window is never scaled
        self.max_snd_wnd = self.snd_wnd
        self.snd_wl1, self.snd_wl2 = seg.seq, seg.ack
        if flags & ACK:
            self._ack_advanced(seg.ack)
            self._transition(Event.RCV_SYN_ACK)
            self._after_handshake()
            self.events.append(Connected())
            self._ack_now = True
            if seg.payload or flags & FIN:  # rare: data on the SYN,ACK
                self._receive_text_and_fin(seg, seq.add(seg.seq, 1), seg.payload, flags & FIN)
        else:
            # Simultaneous open: answer with SYN,ACK from the same ISS.
            self._transition(Event.RCV_SYN)
            self.snd_nxt = self.iss
            self._retries = 0

    def _receive_synchronized(self, seg: Segment) -> None:
        """RFC 9293 3.10.7.4, for SYN_RECEIVED and every later state."""
        flags = seg.flags
        state = self.state
        if state is State.TIME_WAIT and flags & FIN and not flags & RST:
            if seq.add(seg.seq, len(seg.payload) + 1) == self.rcv_nxt:
                # The peer lost our last ACK and resent its FIN.
                self._ack_now = True
                self._arm("time_wait", 2 * self.config.msl)
                self._decide("FIN retransmitted in TIME_WAIT: ACK again, 2MSL restarts", "3.10.7.4")
                return
        if (
            state is State.SYN_RECEIVED
            and not self.passive
            and flags & (SYN | ACK | RST) == SYN | ACK
            and seg.seq == self.irs
            and seg.ack == seq.add(self.iss, 1)
        ):
            # Simultaneous open (RFC 9293 3.5, Figure 8): the peer's SYN,ACK
            # acknowledges our SYN; it is its SYN again, so no text follows.
            self.snd_una = seg.ack
            self.snd_wnd = seg.window << self.snd_shift
            self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
            self.snd_wl1, self.snd_wl2 = seg.seq, seg.ack
            self._cancel("retransmit")
            self._transition(Event.RCV_ACK_OF_SYN)
            self._after_handshake()
            self.events.append(Connected())
            self._ack_now = True
            return
        if state is State.SYN_RECEIVED and flags & SYN and not flags & (ACK | RST):
            if seg.seq == self.irs:
                # The peer did not get our SYN,ACK: send it again, same ISS.
                self.snd_nxt = self.iss
                self._decide("retransmitted SYN in SYN_RECEIVED: SYN,ACK again", "3.10.7.4")
                return
        if self.ts_ok and not self._timestamps_ok(seg):
            return
        # First: is the segment acceptable (in the receive window)?
        if not self._acceptable(seg):
            if not flags & RST:
                self._ack_now = True
            self._decide("segment outside the receive window: dropped, ACK sent", "3.10.7.4")
            return
        # Second: RST (RFC 5961 3.2: only an exact RCV.NXT match resets).
        if flags & RST:
            self._receive_rst(seg)
            return
        # Fourth: a SYN in a synchronized state gets a challenge ACK (RFC 5961 4.2).
        if flags & SYN:
            self._challenge_ack("SYN in a synchronized state", "RFC 5961 4.2")
            return
        # Fifth: the ACK field.
        if not flags & ACK:
            self._decide("segment without ACK in a synchronized state: dropped", "3.10.7.4")
            return
        if state is State.SYN_RECEIVED:
            if not (seq.lt(self.snd_una, seg.ack) and seq.le(seg.ack, self.snd_max)):
                self._emit(Segment(seg.ack, 0, RST, 0, note="RST for an unacceptable ACK"))
                self._decide("unacceptable ACK in SYN_RECEIVED: RST <SEQ=SEG.ACK>", "3.10.7.4")
                return
            self.snd_wnd = seg.window << self.snd_shift
            self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
            self.snd_wl1, self.snd_wl2 = seg.seq, seg.ack
            self._transition(Event.RCV_ACK_OF_SYN)
            self._after_handshake()
            self.events.append(Connected())
        if not self._receive_ack(seg):
            return
        # Sixth (URG) is not supported: urgent data is ordinary data here.
        # Seventh and eighth: the text, then the FIN.
        if self.state in (State.CLOSED, State.TIME_WAIT):
            return
        self._receive_text_and_fin(seg, seg.seq, seg.payload, seg.flags & FIN)

    def _timestamps_ok(self, seg: Segment) -> bool:
        """RFC 7323 5.3 PAWS: a segment whose TSval is older than TS.Recent is
        an old duplicate (a RST excepted): ACK and drop. Otherwise TS.Recent
        follows the segments at the left edge of the window (4.3)."""
        stamps = seg.options.timestamps
        if stamps is None:
            return True  # accepted, as Linux does (behaviour 9)
        tsval = stamps[0]
        if seq.lt(tsval, self.ts_recent) and not seg.flags & RST:
            self._ack_now = True
            self._decide("PAWS: TSval older than TS.Recent, dropped, ACK sent", "RFC 7323 5.3")
            return False
        if seq.le(seg.seq, self.rcv_nxt) and seq.ge(tsval, self.ts_recent):
            self.ts_recent = tsval
        return True

    def _acceptable(self, seg: Segment) -> bool:
        """The four cases of the acceptability test (RFC 9293 3.10.7.4)."""
        window = seq.diff(self.rcv_adv, self.rcv_nxt)
        length = seg.seg_len
        if window <= 0:
            # A zero window still takes the ACK, RST and FIN of a segment at
            # RCV.NXT (RFC 9293 3.10.7.4 "special allowance"; behaviour 27):
            # its text is trimmed away later.
            return seg.seq == self.rcv_nxt
        if length == 0:
            return seq.in_window(seg.seq, self.rcv_nxt, window)
        last = seq.add(seg.seq, length - 1)
        return seq.in_window(seg.seq, self.rcv_nxt, window) or seq.in_window(
            last, self.rcv_nxt, window
        )

    def _receive_rst(self, seg: Segment) -> None:
        if seg.seq != self.rcv_nxt:
            self._challenge_ack("RST in the window but not at RCV.NXT", "RFC 5961 3.2")
            return
        state = self.state
        if state is State.SYN_RECEIVED:
            if self.passive:
                self._transition(Event.RCV_RST)  # back to LISTEN: the listener stays
            else:
                self._transition(Event.RCV_RST_AFTER_SIMULTANEOUS_OPEN, error="ECONNREFUSED")
        elif state is State.TIME_WAIT:
            if self.config.rfc1337:
                self._decide(
                    "RST in TIME_WAIT ignored (RFC 1337 TIME-WAIT assassination fix)", "RFC 1337"
                )
            else:
                self._transition(Event.RCV_RST)
        else:
            error = "ECONNRESET" if state in _PEER_MAY_RESET else None
            self._transition(Event.RCV_RST, error=error)

    def _receive_ack(self, seg: Segment) -> bool:
        """The fifth step for ESTABLISHED and the closing states; False when
        the segment is finished with."""
        ack = seg.ack
        if seq.gt(ack, self.snd_max):
            self._challenge_ack("ACK of data never sent: dropped", "RFC 5961 5.2")
            return False
        if seq.lt(ack, seq.add(self.snd_una, -self.max_snd_wnd)):
            self._challenge_ack("ACK older than the send window: dropped", "RFC 5961 5.2")
            return False
        blocks = seg.options.sack_blocks if self.sack_ok else ()
        new_sack = bool(blocks) and self._rack.on_sack(blocks, self._now)
        if seq.lt(self.snd_una, ack):
            stamps = seg.options.timestamps
            if (
                self.ts_ok
                and stamps is not None
                and stamps[1]
                and not seq.lt(stamps[1], self._ts_at_timeout)
            ):
                # RFC 7323 4: the echo times this ACK. But the peer echoes the
                # TSval of the last *acceptable* segment (4.3): after a timeout,
                # an echo older than it may time an old segment, not this ACK.
                rtt = ((self._ts_now() - stamps[1]) & seq.MASK) / 1000
                if rtt < 60:
                    self._rtt_sample(rtt)
                    self._timed = None
            self._ack_advanced(ack)
        elif self._is_duplicate_ack(seg, new_sack):
            self._duplicate_ack()
        if self._rack.sacked_bytes or self._rack.retransmitted_out:
            self._rack_detect()  # (only then can a later segment be delivered before an earlier)
        if blocks:
            dsack = _dsack_block(blocks, ack)
            if dsack is not None:
                self._duplicate_reported(dsack)
        # Window update, from the newest segment only (SND.WL1, SND.WL2).
        newer = seq.lt(self.snd_wl1, seg.seq) or (
            self.snd_wl1 == seg.seq and seq.le(self.snd_wl2, ack)
        )
        if newer and seq.le(self.snd_una, ack):
            reopened = self.snd_wnd == 0 and seg.window > 0
            self.snd_wnd = seg.window << self.snd_shift
            self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
            self.snd_wl1, self.snd_wl2 = seg.seq, ack
            if self.snd_wnd:
                self._cancel("persist")
                if reopened:
                    self.snd_nxt = self.snd_una  # resend a probe byte the peer dropped
                    self._timed = None  # Karn: no sample from what is sent again
            else:
                self._retries = 0  # the peer is alive, just full
        if not self._fin_acked():
            return True
        state = self.state
        if state is State.FIN_WAIT_1:
            end = seq.add(seg.seq, len(seg.payload))
            if (
                seg.flags & FIN
                and seq.le(seg.seq, self.rcv_nxt)
                and seq.ge(end, self.rcv_nxt)
                and seq.le(end, self.rcv_adv)  # else the FIN is trimmed with the data
            ):
                return True  # its FIN, next in sequence, takes us straight to TIME_WAIT
            self._transition(Event.RCV_ACK_OF_FIN)
            if self.orphaned:
                self._arm("fin_wait_2", self.config.fin_wait_2_timeout)
        elif state is State.CLOSING:
            self._transition(Event.RCV_ACK_OF_FIN)
            return False
        elif state is State.LAST_ACK:
            self._transition(Event.RCV_ACK_OF_FIN)
            return False
        return True

    def _is_duplicate_ack(self, seg: Segment, new_sack: bool) -> bool:
        """RFC 5681 2: same ACK, no data, no SYN/FIN, same window, data in
        flight; or, with SACK, an ACK that reports bytes not SACKed before
        (RFC 6675 2: the window may change, as Linux's does while it grows)."""
        return (
            seg.ack == self.snd_una
            and not seg.payload
            and not seg.flags & (SYN | FIN)
            and ((seg.window << self.snd_shift) == self.snd_wnd or new_sack)
            and self.snd_una != self.snd_max
            and self.state in _SENDS_DATA
        )

    def _duplicate_ack(self) -> None:
        """Fast retransmit on the third duplicate ACK, and NewReno fast
        recovery (RFC 5681 3.2, RFC 6582). With SACK, RACK finds the losses
        (`_rack_detect`); three duplicates without SACK blocks still count."""
        self._dupacks += 1
        if self._recover is not None:
            if not self.sack_ok:
                self.cc.cwnd += self._mss  # each duplicate: one more segment has left the network
            return
        if self._dupacks < 3 or seq.lt(self.snd_una, self._recovery_high):
            # RFC 6582 3.2 (1): no new recovery for losses of an old one, until
            # the ACK "covers more than recover", the highest byte sent then
            # (SND.MAX - 1 then; here we keep SND.MAX, hence >=).
            return
        if self.sack_ok:
            if self._rack.sacked_bytes or not self._rack.log:
                return  # RACK decides from the blocks
            self._rack.mark_lost(self._rack.log[0])
        self._enter_recovery("3 duplicate ACKs", "RFC 5681 3.2")
        if not self.sack_ok:
            self._retransmit_first()

    def _enter_recovery(self, why: str, rule: str) -> None:
        """Fast recovery begins: the congestion window is cut once for all the
        losses of this window (RFC 6582, RFC 6675 5)."""
        flight = seq.diff(self.snd_max, self.snd_una)
        self._recover = self._recovery_high = self.snd_max
        self._begin_undo()
        self.cc.on_loss(self._now, flight)
        if not self.sack_ok:
            self.cc.cwnd += 3 * self._mss  # NewReno's inflation; with SACK, pipe counts instead
        self._probe_high = None
        self._cancel("probe")
        self._decide(
            f"fast retransmit: {why}; {self.cc.name} ssthresh {self.cc.ssthresh}, "
            f"cwnd {self.cc.cwnd}",
            rule,
        )
        first = self._rack.first_lost() if self.sack_ok else None
        if first is not None:
            # RFC 6675 5 (4.3): the first loss goes at once, whatever the pipe.
            self._retransmit_at(first.start, seq.diff(first.end, first.start))

    def _rack_detect(self) -> None:
        """RFC 8985 6.2: mark lost what was sent before a delivered segment,
        RACK.rtt plus the reordering window ago; wait for the rest."""
        rack = self._rack
        in_recovery = self._recover is not None
        reo_wnd = rack.reordering_window(
            in_recovery, rack.sacked_segments(self._mss), self._rtt.srtt or 0.0
        )
        lost, wait = rack.detect_loss(self._now, reo_wnd)
        if wait > 0:
            self._arm("reorder", wait)
        else:
            self._cancel("reorder")
        if not lost:
            return
        if self.counters is not None:
            self.counters["tcp.rack.lost"] += len(lost)
        first = lost[0]
        self._decide(
            f"RACK: {len(lost)} segment(s) from {first.start} lost (a segment sent later "
            f"was delivered, {1000 * (rack.rtt + reo_wnd):.1f} ms after)",
            "RFC 8985 6.2",
        )
        if not in_recovery and not seq.lt(self.snd_una, self._recovery_high):
            probed = self._probe_high is not None
            why = "SACK after a tail loss probe" if probed else "RACK"
            self._enter_recovery(why, "RFC 8985 7.4" if probed else "RFC 8985 6.2")

    def _begin_undo(self) -> None:
        """A loss episode begins: keep the congestion state before its cut."""
        self._undo_cc = copy.copy(self.cc)
        self._undo_marker = self.snd_una
        self._undo_bytes = 0

    def _duplicate_reported(self, block: tuple[int, int]) -> None:
        """A D-SACK (RFC 2883): the peer got these bytes twice. Reordering,
        not loss, if they were resent: RACK widens its window (RFC 8985 6.2
        step 4), and once every byte resent in the episode has come back
        duplicated, no loss happened: the window cut is undone (RFC 3708
        detection, RFC 4015 response; Linux's DSACK undo)."""
        left, right = block
        self._rack.on_dsack(self._now, self._rtt.srtt or 0.0)
        if self._undo_cc is None or self._undo_bytes <= 0 or seq.lt(left, self._undo_marker):
            return  # no episode, nothing resent in it, or a duplicate from before it
        self._undo_bytes -= seq.diff(right, left)
        if self._undo_bytes > 0 or self._rack.lost_out:
            return
        prior, cwnd = self._undo_cc, self.cc.cwnd
        self._undo_cc = None
        prior.cwnd = max(prior.cwnd, cwnd)
        self.cc = prior
        self._recover = None
        if self.counters is not None:
            self.counters["tcp.undo"] += 1
        self._decide(
            f"spurious retransmission: all resent since {self._undo_marker} came back "
            f"D-SACKed; {self.cc.name} cwnd back to {self.cc.cwnd}, ssthresh {self.cc.ssthresh}",
            "RFC 3708, RFC 4015",
        )

    def _retransmit_lost(self) -> None:
        """Send again what RACK (or a timeout) marked lost, first in sequence
        first, while the congestion window has room beyond the pipe (RFC 6675
        5: pipe, not flight, since the SACKed and the lost have left it)."""
        rack = self._rack
        budget = self.cc.cwnd - rack.pipe()
        while budget >= self._mss:
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
        self._retransmit_at(self.snd_una, self._mss)

    def _retransmit_at(self, start: int, max_size: int) -> int:
        """One segment from `start` again (FIN included if it is the end);
        the sequence space it covered."""
        offset = seq.diff(start, self._send_buf_seq)
        options = self._ack_options()
        room = self._mss - _sack_length(options)
        # Only what went out before: never past SND.MAX (nor into the window
        # beyond it, when the probe's "last segment" is shorter than an MSS).
        sent = seq.diff(self.snd_max, start)
        if self._fin_queued and seq.gt(self.snd_max, self._fin_seq):
            sent -= 1  # SND.MAX counts the FIN
        # Within the peer's window, if it shrank since (RFC 1122 4.2.2.16); at
        # SND.UNA one segment regardless, as Linux resends its head.
        window = seq.diff(seq.add(self.snd_una, self.snd_wnd), start)
        if window <= 0:
            if start != self.snd_una:
                return 0
            window = self._mss
        size = min(max_size, room, len(self._send_buf) - offset, sent, window)
        if size <= 0 and not self._fin_queued:
            return 0
        size = max(size, 0)
        fin = self._fin_queued and offset + size == len(self._send_buf)
        fin = fin and seq.gt(self.snd_max, self._fin_seq)  # only a FIN that went out before
        if size == 0 and not fin:
            return 0
        last = size and offset + size == len(self._send_buf)  # PSH as when it first went
        flags = ACK | (FIN if fin else 0) | (PSH if last else 0)
        payload = _copy_out(self._send_buf, offset, size)
        window = self._window_field()
        self._emit(
            Segment(
                start,
                self.rcv_nxt,
                flags,
                window,
                payload,
                options,
                note="retransmission",
            )
        )
        if self.sack_ok:
            self._rack.on_send(start, seq.add(start, size + fin), self._now)
        self._undo_bytes += size
        self._timed = None  # Karn
        self._ack_now = False
        self._arm("retransmit", self._rtt.rto)
        return size + fin

    def _ack_advanced(self, ack: int) -> None:
        """SND.UNA moves to `ack`: free the acknowledged bytes, measure, re-arm."""
        data_acked = min(max(seq.diff(ack, self._send_buf_seq), 0), len(self._send_buf))
        if data_acked:
            del self._send_buf[:data_acked]
            self._send_buf_seq = seq.add(self._send_buf_seq, data_acked)
            self.events.append(SendSpace())
        self.snd_una = ack
        if seq.lt(self.snd_nxt, ack):
            self.snd_nxt = ack
        if self._rack.log:
            self._rack.on_ack(ack, self._now)
        if self._timed is not None and seq.gt(ack, self._timed[0]):
            self._rtt_sample(self._now - self._timed[1])
            self._timed = None
        self._retries = 0
        self._dupacks = 0
        if self._recover is not None:
            if seq.ge(ack, self._recover):  # a full ACK: recovery is over (RFC 6582 3.2 (3))
                self._recover = None
                self._rack.recovery_over()
                self.cc.on_recovery_end(self._now)
                self._decide(f"fast recovery over, cwnd {self.cc.cwnd}", "RFC 6582 3.2")
            elif not self.sack_ok:  # a partial ACK: the next hole is lost too (RFC 6582 3.2 (5))
                self.cc.cwnd = max(self.cc.cwnd - data_acked + self._mss, self._mss)
                self._retransmit_first()
                return
        elif data_acked:
            # Only acknowledged data opens the congestion window (not a SYN or FIN).
            self.cc.on_ack(data_acked, self._now, self._rtt.srtt)
        if self._probe_high is not None and seq.ge(ack, self._probe_high):
            self._probe_high = None  # the probe's episode is over (RFC 8985 7.4)
        if self.snd_una == self.snd_max:
            self._cancel("retransmit")
            self._cancel("probe")
            self._cancel("reorder")
        else:
            self._arm("retransmit", self._rtt.rto)  # RFC 6298 5.3
            self._arm_probe()

    def _rtt_sample(self, rtt: float) -> None:
        self._rtt.sample(rtt)
        self._rack.note_rtt(rtt)  # RACK.min_RTT, from every sample (the handshake's too)

    def _after_handshake(self) -> None:
        """RFC 6298 5.7: after a SYN (or SYN,ACK) was retransmitted, data
        starts with an RTO of 3 s (Karn left us without a measurement)."""
        if self._syn_retransmitted and self._rtt.srtt is None:
            self._rtt.rto = min(max(self._rtt.rto, 3.0), self.config.max_rto)
        if self.config.keepalive_idle is not None:
            self._arm("keepalive", self.config.keepalive_idle)

    def _fin_acked(self) -> bool:
        return self._fin_queued and self.snd_una == seq.add(self._fin_seq, 1)

    @property
    def _fin_seq(self) -> int:
        return seq.add(self._send_buf_seq, len(self._send_buf))

    def _receive_text_and_fin(
        self, seg: Segment, start: int, payload: bytes | memoryview, fin: int
    ) -> None:
        state = self.state
        # Trim what lies before RCV.NXT (already received) or past the window.
        skip = seq.diff(self.rcv_nxt, start)
        if skip > 0:
            if skip > len(payload):
                return  # everything, FIN included, is old
            payload = payload[skip:]
            start = self.rcv_nxt
        over = seq.diff(seq.add(start, len(payload)), self.rcv_adv)
        if over > 0:
            payload = payload[: len(payload) - over]
            fin = 0  # the FIN lies beyond the window too
            self._ack_now = True  # tell the sender where the window ends
        if payload:
            if state not in _RECEIVES_TEXT:
                self._decide(f"data after the peer's FIN ignored in {state}", "3.10.7.4")
                return
            if self.orphaned:
                self._send_rst_ack()
                self._transition(Event.RCV_DATA_ORPHANED)
                return
            self._receive_text(start, bytes(payload))
        if fin and self.fin_received:
            self._decide("FIN after the peer's FIN ignored", "3.10.7.4")
        elif fin:
            fin_seq = seq.add(start, len(payload))
            if fin_seq == self.rcv_nxt:
                self._receive_fin()
            elif seq.gt(fin_seq, self.rcv_nxt):
                self._held_fin = fin_seq
                self._ack_now = True
                self._decide("FIN beyond a hole: held until the hole fills", "3.10.7.4")

    def _receive_text(self, start: int, data: bytes) -> None:
        if start != self.rcv_nxt:
            self._out_of_order.add(start, data, self.rcv_nxt)
            self._last_hold = (start, seq.add(start, len(data)))
            self._ack_now = True  # at once: the sender counts duplicate ACKs (RFC 5681 4.2)
            self._decide("out-of-order segment held, duplicate ACK sent", "3.10.7.4")
            return
        filled_hole = bool(self._out_of_order)
        self._deliver(data)
        # Data that waited beyond the hole may now follow.
        while (ready := self._out_of_order.pop_ready(self.rcv_nxt)) is not None:
            self._deliver(ready)
        if filled_hole or self._out_of_order:
            self._ack_now = True  # a hole (partly) filled: tell the sender at once
        else:
            self._delay_ack(len(data))
        if self._held_fin == self.rcv_nxt:
            self._receive_fin()
        elif self._held_fin is not None and seq.lt(self._held_fin, self.rcv_nxt):
            # Data ran past the held FIN: the peer contradicted itself; its
            # FIN counts where it comes next (Linux drops such a FIN too).
            self._held_fin = None
            self._decide("data past a held FIN: the FIN is dropped", "3.10.7.4")

    def _delay_ack(self, received: int) -> None:
        """Delayed ACK (RFC 9293 3.8.6.3, RFC 5681 4.2): ACK every second full
        segment at once, anything less within `delayed_ack` seconds."""
        self._unacked_bytes += received
        if self._unacked_bytes >= 2 * self._mss or self.config.delayed_ack <= 0:
            self._ack_now = True
        elif "delayed_ack" not in self._timers:
            self._arm("delayed_ack", self.config.delayed_ack)

    def _deliver(self, data: bytes) -> None:
        self.rcv_nxt = seq.add(self.rcv_nxt, len(data))
        if not self._read_shut:
            self._recv_buf.append(data)
            self.events.append(DataReceived())

    def _receive_fin(self) -> None:
        """The eighth step: the FIN is next in sequence."""
        self._held_fin = None
        self.rcv_nxt = seq.add(self.rcv_nxt, 1)
        state = self.state
        if state is State.ESTABLISHED and not self.fin_received:
            # The peer closes first: our own FIN is likely to follow as soon as
            # the application sees the end, and it can carry this ACK (one
            # segment, not two), as Linux's "pingpong" delayed ACK does. The
            # delayed-ACK timer bounds the wait.
            self._delay_ack(0)
        else:
            self._ack_now = True
        if self.fin_received:
            return
        self.fin_received = True
        self.events.append(EndOfStream())
        if state in (State.ESTABLISHED, State.FIN_WAIT_2):
            self._transition(Event.RCV_FIN)
        elif state is State.FIN_WAIT_1:
            self._transition(Event.RCV_FIN_ACK_OF_FIN if self._fin_acked() else Event.RCV_FIN)

    # ---- timers ------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The earliest deadline at which handle_timer() has work, if any."""
        return min(self._timers.values()) if self._timers else None

    def handle_timer(self, now: float) -> None:
        self._now = now
        for name, deadline in sorted(self._timers.items(), key=lambda item: item[1]):
            if deadline > now or self._timers.get(name) != deadline:
                continue
            del self._timers[name]
            if self.trace is not None:
                self.trace(TimerEvent(now, self.conn_id, name, "fired"))
            if name == "retransmit":
                self._on_retransmit_timeout()
            elif name == "persist":
                self._on_persist_timeout()
            elif name == "probe":
                self._on_probe_timeout()
            elif name == "reorder":
                self._rack_detect()
            elif name == "delayed_ack":
                self._ack_now = True
            elif name == "time_wait":
                self._transition(Event.TIMEOUT_2MSL)
            elif name == "fin_wait_2" and self.state is State.FIN_WAIT_2:
                self._transition(Event.TIMEOUT_FIN_WAIT_2)
            elif name == "keepalive":
                self._on_keepalive_timeout()
        self._output()

    def _on_keepalive_timeout(self) -> None:
        """RFC 1122 4.2.3.6: after `keepalive_idle` seconds of silence, probe
        with <SEQ=SND.UNA-1> (an old byte: the peer must answer with an ACK);
        after `keepalive_probes` unanswered probes the peer is gone."""
        config = self.config
        assert config.keepalive_idle is not None
        if self.state not in (State.ESTABLISHED, State.CLOSE_WAIT):
            return
        quiet_until = self._last_heard + config.keepalive_idle
        if self._keepalive_probes == 0 and self._now < quiet_until:
            self._arm("keepalive", quiet_until - self._now)  # heard from it meanwhile
            return
        if self._keepalive_probes >= config.keepalive_probes:
            self._transition(Event.TIMEOUT_KEEPALIVE, error="ETIMEDOUT")
            return
        self._keepalive_probes += 1
        probe = Segment(
            seq.add(self.snd_una, -1),
            self.rcv_nxt,
            ACK,
            self._window_field(),
            b"",
            self._ack_options(),
            note="keep-alive probe",
        )
        self._emit(probe)
        self._arm("keepalive", config.keepalive_interval)

    def _arm(self, name: str, delay: float) -> None:
        deadline = self._now + delay
        if self._timers.get(name) == deadline:
            return  # set again at the same instant (e.g. the probe: ACK, then new data)
        self._timers[name] = deadline
        if self.trace is not None:
            self.trace(TimerEvent(self._now, self.conn_id, name, "set", deadline))

    def _cancel(self, name: str) -> None:
        if self._timers.pop(name, None) is not None and self.trace is not None:
            self.trace(TimerEvent(self._now, self.conn_id, name, "cancelled"))

    def _cancel_all(self) -> None:
        for name in list(self._timers):
            self._cancel(name)

    def _on_retransmit_timeout(self) -> None:
        """RFC 6298 5.4-5.7: back off, go back to SND.UNA, resend."""
        self._retries += 1
        if self.state is State.SYN_SENT:
            limit = self.config.syn_retries
        elif self.state is State.SYN_RECEIVED and self.passive:
            limit = self.config.synack_retries
        else:
            limit = self.config.retries
        if self._retries > limit:
            self._transition(Event.TIMEOUT_RETRANSMIT, error="ETIMEDOUT")
            return
        self._rtt.back_off()
        self._timed = None  # Karn: never time a retransmission
        self._ts_at_timeout = self._ts_now()
        flight = seq.diff(self.snd_max, self.snd_una)
        if self.snd_una != self.iss:  # a lost SYN says nothing about the path's capacity
            if self._recover is None and self._retries == 1:
                self._begin_undo()  # (a timeout within an episode belongs to it)
            self.cc.on_timeout(self._now, flight)
        self._recover = None
        self._probe_high = None
        self._cancel("probe")
        self._recovery_high = self.snd_max  # no fast retransmit for what we resend now
        if self._retries > 1:
            # A second timeout in a row: the peer may have reneged (dropped
            # what it SACKed, RFC 2018 8): forget the scoreboard, resend all.
            self._rack.forget_sacks()
        self._dupacks = 0
        self._cancel("reorder")
        if self._rack.log and self.snd_wnd:
            # RFC 8985 6.3: all not SACKed is lost; it goes again as the
            # window opens, the SACKed stays where it is (RFC 6675 5.1).
            self._rack.mark_all_lost()
        else:
            self.snd_nxt = self.snd_una  # go back: without SACK, everything is resent
        self._decide(
            f"retransmission timeout #{self._retries}: resend from SND.UNA, RTO now "
            f"{self._rtt.rto:.3f}s",
            "RFC 6298 5.4-5.6",
        )
        if self.snd_wnd == 0 and self.snd_una != self.iss and self.state in _SENDS_DATA:
            self._send_data(1, probe=True)  # the lost byte was a zero-window probe
        else:
            self._output()
        self._arm("retransmit", self._rtt.rto)

    def _arm_probe(self) -> None:
        """RFC 8985 7.2: with data in flight and no recovery going on, a tail
        loss probe after PTO = 2*SRTT (at least 10 ms, as Linux; plus the
        peer's worst delayed ACK when one segment is out), if that is sooner
        than the RTO. The probe stands in for the ACKs a lost tail never
        gets: without it, a loss at the end of a flight waits for the RTO."""
        srtt = self._rtt.srtt
        if (
            not self.config.tail_loss_probe
            or not self.sack_ok
            or srtt is None
            or self._recover is not None
            or self._rack.lost_out  # (after a timeout: what is lost goes first)
            or self._probe_high is not None
            or self.state not in _SENDS_DATA
        ):
            return
        pto = max(2 * srtt, 0.01)
        if seq.diff(self.snd_max, self.snd_una) <= self._mss:
            pto += 0.2  # RFC 8985 7.2 WCDelAckT: the lone segment's ACK may be delayed
        if pto < self._rtt.rto:
            self._arm("probe", pto)

    def _on_probe_timeout(self) -> None:
        """RFC 8985 7.3: send the last segment again (we keep no new data for
        it: the simpler choice the RFC allows), then wait for the RTO."""
        if self.snd_una == self.snd_max or self._recover is not None:
            return
        self._probe_high = self.snd_max
        last = max(seq.diff(self.snd_max, self.snd_una) - self._mss, 0)
        self._decide("tail loss probe: the last segment again", "RFC 8985 7.3")
        self._retransmit_at(seq.add(self.snd_una, last), self._mss)

    def _on_persist_timeout(self) -> None:
        """Zero-window probe (RFC 9293 3.8.6.1): push one byte past the window."""
        if self.snd_wnd or seq.diff(self._fin_seq, self.snd_nxt) <= 0:
            return
        self._send_data(1, probe=True)
        self._rtt.back_off()

    # ---- output --------------------------------------------------------------

    @property
    def _mss(self) -> int:
        """Payload per segment: the MSS less the timestamps' 12 option bytes."""
        return min(self.peer_mss, self.config.mss) - (12 if self.ts_ok else 0)

    @property
    def _max_segment(self) -> int:
        """The most payload one segment we emit may carry: one MSS, or with GSO
        many, within an IP datagram's 64 KB (headers and options left room)."""
        return min(self._mss * self.config.gso_segments, MAX_GSO_PAYLOAD) or self._mss

    def segments_to_send(self) -> list[Segment]:
        out, self._outbox = self._outbox, []
        return out

    def _output(self) -> None:
        state = self.state
        if state in (State.CLOSED, State.LISTEN):
            return
        if state is not State.TIME_WAIT:
            if self.snd_nxt == self.iss:
                self._send_syn()
            elif self.snd_una != self.iss and state in _SENDS_DATA:
                # Bytes not yet sent, or the FIN right after the last byte:
                # only then has _send_data anything to do (the common case of
                # a receiver answering data with a bare ACK skips it).
                if self._rack.lost_out:
                    self._retransmit_lost()
                unsent = len(self._send_buf) - seq.diff(self.snd_nxt, self._send_buf_seq)
                if unsent > 0 or (unsent == 0 and self._fin_queued):
                    self._send_data(None)
        if self._ack_now:
            self._ack_now = False
            window = self._window_field()
            # SND.MAX, not SND.NXT: after a timeout SND.NXT went back, but the
            # peer may have everything up to SND.MAX already.
            options = self._ack_options()
            self._emit(
                Segment(self.snd_max, self.rcv_nxt, ACK, window, b"", options, self._ack_note)
            )
        self._ack_note = ""

    def _send_syn(self) -> None:
        config = self.config
        ack = self.state is not State.SYN_SENT
        shift = self.rcv_shift if ack else config.window_shift
        offer_scaling = config.window_scaling and (not ack or self.snd_shift or self.rcv_shift)
        offer_sack = config.sack and (not ack or self.sack_ok)
        offer_ts = config.timestamps and (not ack or self.ts_ok)
        options = TcpOptions(
            mss=config.mss,
            window_scale=shift if offer_scaling else None,
            sack_permitted=offer_sack,
            timestamps=(self._ts_now(), self.ts_recent if ack else 0) if offer_ts else None,
        )
        window = min(self._free_receive_space(), 0xFFFF)  # a SYN's window is not scaled
        edge = seq.add(self.rcv_nxt, window)
        if not ack or seq.gt(edge, self.rcv_adv):
            self.rcv_adv = edge  # (a retransmitted SYN,ACK never pulls the edge back)
        flags = SYN | ACK if ack else SYN
        note = "retransmission" if self.snd_max != self.iss else ""
        self._syn_retransmitted = self._syn_retransmitted or bool(note)
        ack_number = self.rcv_nxt if ack else 0
        self._emit(Segment(self.iss, ack_number, flags, window, b"", options, note=note))
        self.snd_nxt = seq.add(self.iss, 1)
        if self.snd_max == self.iss:
            self.snd_max = self.snd_nxt
            self._timed = (self.iss, self._now)
        self._ack_now = False
        if "retransmit" not in self._timers:
            self._arm("retransmit", self._rtt.rto)

    def _send_data(self, limit: int | None, probe: bool = False) -> None:
        """Segments from SND.NXT while window and data allow; the FIN on the last."""
        buf = self._send_buf
        options = self._ack_options()
        if options.sack_blocks:
            # The blocks ride on every segment: its payload shrinks to fit the
            # MSS (RFC 2018 3; else an MTU-sized segment would be too big).
            mss = max_segment = self._mss - _sack_length(options)
        else:
            mss, max_segment = self._mss, self._max_segment
        full = min(mss, max_segment)  # a "full-sized" segment, even at MTU 65535
        sent_new = False
        rack = self._rack if self.sack_ok else None
        # In recovery, or with losses not yet sent again, new data is limited
        # by the pipe (RFC 6675 5), not by what is in flight since SND.UNA.
        budget = None
        if rack is not None and (self._recover is not None or rack.lost_out):
            budget = self.cc.cwnd - rack.pipe()
        while True:
            # (A zero-window probe stays at SND.UNA, whatever the peer claims to hold.)
            hole = self._skip_sacked() if self._rack.sacked_bytes and not probe else None
            offset = seq.diff(self.snd_nxt, self._send_buf_seq)
            if offset > len(buf):
                break  # the FIN is out already
            unsent = len(buf) - offset
            if probe:
                size = min(unsent, 1)
            else:
                if budget is None:
                    window = min(self.snd_wnd, self.cwnd)
                    usable = seq.diff(seq.add(self.snd_una, window), self.snd_nxt)
                else:
                    edge = seq.add(self.snd_una, self.snd_wnd)
                    usable = min(seq.diff(edge, self.snd_nxt), budget)
                size = max(min(unsent, usable, max_segment), 0)
            if limit is not None:
                size = min(size, limit)
            if hole is not None:
                size = min(size, hole)
            fin = self._fin_queued and offset + size == len(buf)
            if size == 0 and not fin:
                break
            if 0 < size < full and not probe and self._hold_small(size, unsent):
                break
            flags = ACK | (FIN if fin else 0) | (PSH if size and offset + size == len(buf) else 0)
            payload = _copy_out(buf, offset, size)
            note = "zero-window probe" if probe else ""
            if seq.lt(self.snd_nxt, self.snd_max) and not probe:
                # (A probe resent after its timeout is still a probe, not a loss.)
                note = "retransmission"
                self._undo_bytes += size
            window = self._window_field()
            gso = mss if size > mss else 0
            self._emit(
                Segment(self.snd_nxt, self.rcv_nxt, flags, window, payload, options, note, gso)
            )
            if self._timed is None and self.snd_nxt == self.snd_max and size:
                self._timed = (self.snd_nxt, self._now)
            if rack is not None:
                rack.on_send(self.snd_nxt, seq.add(self.snd_nxt, size + fin), self._now)
                if budget is not None:
                    budget -= size + fin
            self.snd_nxt = seq.add(self.snd_nxt, size + fin)
            if 0 < size < full:
                self._small_sent_end = self.snd_nxt
            if seq.gt(self.snd_nxt, self.snd_max):
                self.snd_max = self.snd_nxt
                sent_new = not probe
            self._ack_now = False
            if "retransmit" not in self._timers:
                self._arm("retransmit", self._rtt.rto)
            if fin or probe:
                break
        if sent_new:
            self._arm_probe()  # (RFC 8985 7.2: restarted by each new transmission)
        stalled = self.snd_wnd == 0 and seq.diff(self._fin_seq, self.snd_nxt) > 0
        if stalled and self.snd_una == self.snd_max and "persist" not in self._timers:
            self._arm("persist", self._rtt.rto)

    def _skip_sacked(self) -> int | None:
        """Going back after a timeout (SND.NXT below SND.MAX): step over what
        the peer has SACKed, and return how much may go before the next
        SACKed block (RFC 6675 5.1: the scoreboard spares what it holds)."""
        nxt = self.snd_nxt
        if not seq.lt(nxt, self.snd_max):
            return None
        for left, right in self._sacked:  # (merged: each range steps at most once)
            if seq.le(left, nxt) and seq.lt(nxt, right):
                nxt = self.snd_nxt = right
            elif seq.gt(left, nxt):
                return seq.diff(left, nxt)
        return None

    def _hold_small(self, size: int, unsent: int) -> bool:
        """Sender-side silly window avoidance (RFC 9293 3.8.6.2.1) with Nagle's
        algorithm in Minshall's form (RFC 896, RFC 1122 4.2.3.4): a segment
        smaller than the MSS waits while more may come, unless it is all we
        have and no other small segment is unacknowledged."""
        if self.snd_nxt != self.snd_max or self.snd_una == self.snd_max:
            return False  # a retransmission, or nothing in flight: never hold
        if size == unsent:
            return not self.nodelay and seq.gt(self._small_sent_end, self.snd_una)
        return size < self.max_snd_wnd // 2  # window-limited: wait for a useful opening

    def _free_receive_space(self) -> int:
        return max(self.config.receive_buffer - len(self._recv_buf), 0)

    def _window_field(self) -> int:
        """The window to advertise, scaled; the right edge never moves left
        (RFC 9293 3.8.6.2.2) but by the scale's rounding, and it grows only
        by useful amounts (SWS)."""
        room = free = self._free_receive_space()
        promised = max(seq.diff(self.rcv_adv, self.rcv_nxt), 0)
        if free - promised < min(self.config.receive_buffer // 2, self._mss):
            free = promised  # a small opening is not worth announcing yet
        window = max(free, promised)
        if self.state is State.SYN_RECEIVED:
            # A SYN,ACK may yet be resent, and it cannot say more than 65535:
            # promise no more before the handshake is over.
            window = min(window, (0xFFFF >> self.rcv_shift) << self.rcv_shift)
        # Round up: rounding down would pull a promised right edge back. But
        # never past the free space: rounding a promise up again on every ACK
        # let the edge creep on with each small segment, and the window never
        # closed (RFC 7323 Appendix F); there the edge goes back by < 1 unit.
        granule = (1 << self.rcv_shift) - 1
        field = min(
            (window + granule) >> self.rcv_shift, (room + granule) >> self.rcv_shift, 0xFFFF
        )
        self.rcv_adv = seq.add(self.rcv_nxt, field << self.rcv_shift)
        return field

    def _maybe_window_update(self) -> None:
        """After a read: announce the window if it opened by enough to matter."""
        promised = max(seq.diff(self.rcv_adv, self.rcv_nxt), 0)
        if self._free_receive_space() - promised >= min(
            self.config.receive_buffer // 2, 2 * self._mss
        ):
            self._ack_now = True

    def _emit(self, segment: Segment) -> None:
        self._outbox.append(segment)
        if segment.flags & ACK and segment.ack == self.rcv_nxt:
            self._unacked_bytes = 0  # whatever it carries, it acknowledges all we have
            if "delayed_ack" in self._timers:
                self._cancel("delayed_ack")

    def _ack_options(self) -> TcpOptions:
        """Timestamps (RFC 7323) and SACK blocks for data held beyond a hole
        (RFC 2018), as agreed: 40 bytes hold TS and three blocks, or four."""
        held_fin = self._held_fin
        sack = self.sack_ok and (bool(self._out_of_order) or held_fin is not None)
        if not (sack or self.ts_ok):
            return NO_OPTIONS
        blocks = self._out_of_order.blocks(self._last_hold) if sack else []
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
        blocks = blocks[: 3 if self.ts_ok else 4]
        stamps = (self._ts_now(), self.ts_recent) if self.ts_ok else None
        return TcpOptions(sack_blocks=tuple(blocks), timestamps=stamps)

    def _ts_now(self) -> int:
        """Our TSval: a 1 ms clock, offset per connection (by the ISS, a keyed hash)."""
        return (int(self._now * 1000) + self.iss) & seq.MASK

    def _send_rst_ack(self) -> None:
        # With timestamps, a RST carries a current TSval (RFC 7323 5.4).
        self._emit(Segment(self.snd_max, self.rcv_nxt, RST | ACK, 0, b"", self._ack_options()))

    def _challenge_ack(self, what: str, rule: str) -> None:
        """RFC 5961 7: at most challenge_ack_limit challenge ACKs a second."""
        started, count = self._challenges
        if self._now - started >= 1.0:
            started, count = self._now, 0
        limited = count >= self.config.challenge_ack_limit
        if self.counters is not None:
            self.counters[
                "tcp.out.challenge-ack-limited" if limited else "tcp.out.challenge-ack"
            ] += 1
        if not limited:
            self._challenges = (started, count + 1)
            self._ack_now = True
            self._ack_note = "challenge ACK"
            self._decide(f"{what}: challenge ACK", rule)
        else:
            self._decide(f"{what}: challenge ACK suppressed by the rate limit", rule)

    # ---- state changes and trace ------------------------------------------------

    def _transition(self, event: Event, error: str | None = None) -> None:
        transition = TRANSITIONS[(self.state, event)]
        old, self.state = self.state, transition.new_state
        if self.trace is not None:
            self.trace(
                StateChange(
                    self._now, self.conn_id, old, self.state, event, transition.rule, transition.why
                )
            )
        if self.state in (State.CLOSED, State.LISTEN):
            self._cancel_all()
            self.error = error
            if old is not State.TIME_WAIT:
                self.events.append(Closed(error))
        elif self.state is State.TIME_WAIT:
            # Both FINs are through: for the application the connection is
            # over; TIME_WAIT is the stack's business, as with kernel sockets.
            self._cancel_all()
            self._arm("time_wait", 2 * self.config.msl)
            self.events.append(Closed(None))

    def _decide(self, what: str, rule: str) -> None:
        if self.trace is not None:
            if rule[0].isdigit():
                rule = f"RFC 9293 {rule}"
            self.trace(Decision(self._now, self.conn_id, what, rule))

    def __repr__(self) -> str:
        return (
            f"<TcpConnection {self.conn_id} {self.state} snd_una={self.snd_una}"
            f" snd_nxt={self.snd_nxt} rcv_nxt={self.rcv_nxt}>"
        )


# States in which the application may still queue data.
_CAN_SEND = (State.SYN_SENT, State.SYN_RECEIVED, State.ESTABLISHED, State.CLOSE_WAIT)
# States in which data (and our FIN) goes out.
_SENDS_DATA = (
    State.ESTABLISHED,
    State.CLOSE_WAIT,
    State.FIN_WAIT_1,
    State.CLOSING,
    State.LAST_ACK,
)
# States in which the peer may still send us data.
_RECEIVES_TEXT = (State.SYN_RECEIVED, State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2)
# States in which a read-side window update means something.
_CAN_ACK = (State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2)
# States in which closing with unread data resets (RFC 9293 3.6 SHLD-3).
_CLOSE_UNREAD_RESETS = (
    State.ESTABLISHED,
    State.CLOSE_WAIT,
    State.FIN_WAIT_1,
    State.FIN_WAIT_2,
    State.CLOSING,
    State.LAST_ACK,
)
# States in which a RST is an error the application must hear about.
_PEER_MAY_RESET = (State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2, State.CLOSE_WAIT)


def _dsack_block(blocks: tuple[tuple[int, int], ...], ack: int) -> tuple[int, int] | None:
    """The first block, if it reports a duplicate (RFC 2883 4): below the
    cumulative ACK, or inside the second block."""
    left, right = blocks[0]
    if seq.le(right, ack):
        return blocks[0]
    if len(blocks) > 1:
        outer_left, outer_right = blocks[1]
        if seq.ge(left, outer_left) and seq.le(right, outer_right):
            return blocks[0]
    return None


def _sack_length(options: TcpOptions) -> int:
    """Bytes the SACK option takes in a segment, with its two NOPs."""
    return 4 + 8 * len(options.sack_blocks) if options.sack_blocks else 0


def _copy_out(buf: bytearray, offset: int, size: int) -> bytes:
    """Bytes of the send buffer in one copy (a slice of the bytearray and then
    bytes() would be two); no view outlives the call, so the buffer may shrink."""
    with memoryview(buf) as view:
        return bytes(view[offset : offset + size])
