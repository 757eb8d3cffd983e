"""The send side of a connection: the send sequence variables, the send
buffer and our FIN after it, and what may go out now: segmentation (and
GSO super-segments), Nagle and sender-side silly window avoidance, the
zero-window probe (RFC 9293 3.3.1, 3.8.6; RFC 1122 4.2.3.4).

Loss recovery decides *what* is lost and when it goes again; the sender
builds those segments from its buffer too (`resend`). The receiver gives
each segment its ACK number, window and options.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ustack.tcp import seq
from ustack.tcp.events import SendSpace
from ustack.tcp.segment import Segment
from ustack.tcp.seq import HALF
from ustack.tcp.seq import MASK
from ustack.tcp.states import State
from ustack.tcp.timers import PERSIST
from ustack.tcp.timers import RETRANSMIT
from ustack.tcp.timers import Timers
from ustack.trace.vocabulary import Note
from ustack.trace.vocabulary import SegmentNote
from ustack.wire.ipv4 import ECN_ECT0
from ustack.wire.ipv4 import ECN_NOT_ECT
from ustack.wire.tcp import ACK
from ustack.wire.tcp import CWR
from ustack.wire.tcp import ECE
from ustack.wire.tcp import FIN
from ustack.wire.tcp import PSH
from ustack.wire.tcp import SYN
from ustack.wire.tcp import TcpOptions

if TYPE_CHECKING:
    from ustack.tcp.connection import TcpConnection
    from ustack.tcp.receiver import Receiver
    from ustack.tcp.recovery import Recovery

MAX_GSO_PAYLOAD = 65535 - 60 - 60  # an IP datagram less the largest IP and TCP headers

_NONE = SegmentNote.NONE
# SendSpace has no fields (frozen): one instance serves every ACK.
_SEND_SPACE = SendSpace()
_RETRANSMISSION = SegmentNote.RETRANSMISSION
_ZERO_WINDOW_PROBE = SegmentNote.ZERO_WINDOW_PROBE


class Sender:
    __slots__ = (
        "_conn",
        "_rcv",
        "_recovery",
        "_timers",
        "buffer",
        "buffer_seq",
        "fin_queued",
        "iss",
        "max_snd_wnd",
        "nodelay",
        "small_sent_end",
        "snd_max",
        "snd_nxt",
        "snd_shift",
        "snd_una",
        "snd_wl1",
        "snd_wl2",
        "snd_wnd",
        "window_probes",
    )
    # The links back that TcpConnection.release() drops (mypyc: deletable).
    __deletable__ = ("_conn", "_rcv", "_recovery", "_timers")

    def __init__(
        self, conn: TcpConnection, timers: Timers, receiver: Receiver, iss: int, nodelay: bool
    ) -> None:
        self._conn = conn
        self._timers = timers
        self._rcv = receiver
        self._recovery: Recovery  # (set by attach: the two refer to each other)
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
        # Unacknowledged and unsent data from sequence number buffer_seq.
        self.buffer = bytearray()
        self.buffer_seq = seq.add(iss, 1)
        self.fin_queued = False  # our FIN follows the last byte of the buffer
        self.nodelay = nodelay  # TCP_NODELAY: send small segments at once
        self.small_sent_end = iss  # SEQ just after the last sub-MSS segment sent
        self.window_probes = 0  # zero-window probes since the window closed

    def attach(self, recovery: Recovery) -> None:
        self._recovery = recovery

    # ---- the buffer -------------------------------------------------------------

    def queue(self, data: bytes | bytearray | memoryview) -> int:
        """Queue data; how many bytes fit in the send buffer."""
        room = self._conn.config.send_buffer - len(self.buffer)
        taken = data[: max(room, 0)]
        self.buffer += taken
        return len(taken)

    @property
    def space(self) -> int:
        """Free room in the send buffer."""
        return max(self._conn.config.send_buffer - len(self.buffer), 0)

    @property
    def unsent(self) -> int:
        """Bytes in the send buffer (unacknowledged or not sent yet)."""
        return len(self.buffer)

    @property
    def fin_seq(self) -> int:
        """The SEQ of our FIN: just after the last byte queued."""
        return seq.add(self.buffer_seq, len(self.buffer))

    def fin_acked(self) -> bool:
        return self.fin_queued and self.snd_una == seq.add(self.fin_seq, 1)

    def acked(self, ack: int) -> int:
        """SND.UNA moves to `ack`: the acknowledged bytes leave the buffer.
        Returns how many data bytes that was (not the SYN or the FIN)."""
        # Per ACK, so RFC 9293 3.4's arithmetic is inlined (seq.diff, add, lt)
        # and min()/max() are comparisons. The bytearray's front is cut in
        # place: CPython moves its start, no copy (O(1) amortised).
        buffer = self.buffer
        data_acked = (ack - self.buffer_seq) & MASK
        if data_acked > HALF:
            data_acked = 0  # an ACK below the buffer's start (of the SYN): no data
        elif data_acked > (held := len(buffer)):
            data_acked = held  # (the FIN's sequence number is not data)
        if data_acked:
            del buffer[:data_acked]
            self.buffer_seq = (self.buffer_seq + data_acked) & MASK
            self._conn.events.append(_SEND_SPACE)
        self.snd_una = ack
        if 0 < ((ack - self.snd_nxt) & MASK) < HALF:
            self.snd_nxt = ack
        return data_acked

    # ---- the peer's window -------------------------------------------------------

    def update_window(self, seg: Segment) -> None:
        """The window from the newest segment only (SND.WL1, SND.WL2)."""
        ack = seg.ack
        wl1 = self.snd_wl1
        start = seg.seq
        # Per segment, so RFC 9293 3.4's comparisons are inlined (3.10.7.4's
        # SND.WL1 < SEG.SEQ, SND.WL2 =< SEG.ACK, SND.UNA =< SEG.ACK).
        newer = 0 < ((start - wl1) & MASK) < HALF or (
            wl1 == start and ((ack - self.snd_wl2) & MASK) < HALF
        )
        if newer and ((ack - self.snd_una) & MASK) < HALF:
            reopened = self.snd_wnd == 0 and seg.window > 0
            snd_wnd = self.snd_wnd = seg.window << self.snd_shift
            if snd_wnd > self.max_snd_wnd:
                self.max_snd_wnd = snd_wnd
            self.snd_wl1, self.snd_wl2 = start, ack
            if snd_wnd:
                if PERSIST in self._timers.deadlines:  # (no call when not armed: most ACKs)
                    self._timers.cancel(PERSIST)
                self.window_probes = 0
                if reopened:
                    self.snd_nxt = self.snd_una  # resend a probe byte the peer dropped
                    self._recovery.timed = None  # Karn: no sample from what is sent again
                    self._recovery.retries = 0  # (the probes' count: the peer answered)
                    if self.snd_una != self.snd_max and RETRANSMIT not in self._timers.deadlines:
                        # The probe byte is outstanding data with the persist
                        # timer gone: the RTO guards it (RFC 6298 5.1), even if
                        # a SACK means it is not sent again now.
                        self._timers.arm(RETRANSMIT, self._recovery.rtt.rto)
            else:
                self._recovery.retries = 0  # the peer is alive, just full

    def take_window(self, seg: Segment) -> None:
        """The window of a segment that acknowledges our SYN (scaled now)."""
        self.snd_wnd = seg.window << self.snd_shift
        self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
        self.snd_wl1, self.snd_wl2 = seg.seq, seg.ack

    # ---- output --------------------------------------------------------------------

    def send_syn(self) -> None:
        """Our SYN, or SYN,ACK (from the same ISS, again after a loss)."""
        conn = self._conn
        rcv = self._rcv
        recovery = self._recovery
        config = conn.config
        ack = conn.state is not State.SYN_SENT
        shift = rcv.rcv_shift if ack else config.window_shift
        offer_scaling = config.window_scaling and (not ack or self.snd_shift or rcv.rcv_shift)
        offer_sack = config.sack and (not ack or conn.sack_ok)
        offer_ts = config.timestamps and (not ack or conn.ts_ok)
        options = TcpOptions(
            mss=conn.path.advertised_mss(),
            window_scale=shift if offer_scaling else None,
            sack_permitted=offer_sack,
            timestamps=(conn.ts_now(), rcv.ts_recent if ack else 0) if offer_ts else None,
        )
        window = rcv.syn_window(advance=not ack)
        flags = SYN | ACK if ack else SYN
        iss = self.iss
        note = _RETRANSMISSION if self.snd_max != iss else _NONE
        if ack and conn.ecn_ok:
            flags |= ECE  # RFC 3168 6.1.1: agreed, on every SYN,ACK we send
        elif not ack and config.ecn == "on" and note is _NONE:
            # RFC 3168 6.1.1: ask with ECE and CWR. Only on the first SYN: a
            # retransmission goes without, in case a middlebox drops ECN
            # setup SYNs (6.1.1.1; Linux's tcp_ecn_fallback).
            flags |= ECE | CWR
        recovery.syn_retransmitted = recovery.syn_retransmitted or bool(note)
        ack_number = rcv.rcv_nxt if ack else 0
        conn._emit(Segment(iss, ack_number, flags, window, b"", options, note=note))
        self.snd_nxt = seq.add(iss, 1)
        if self.snd_max == iss:
            self.snd_max = self.snd_nxt
            recovery.timed = (iss, conn.now)
        rcv.ack_now = False
        if RETRANSMIT not in self._timers.deadlines:
            self._timers.arm(RETRANSMIT, recovery.rtt.rto)

    def send_data(self, limit: int | None, probe: bool = False) -> None:
        """Segments from SND.NXT while window and data allow; the FIN on the last."""
        conn = self._conn
        rcv = self._rcv
        recovery = self._recovery
        timers = self._timers
        buf = self.buffer
        dsack = rcv.dsack is not None
        options = rcv.ack_options()
        if options.sack_blocks:
            # The blocks ride on every segment: its payload shrinks to fit the
            # MSS (RFC 2018 3; else an MTU-sized segment would be too big).
            mss = max_segment = conn.mss - sack_length(options)
        else:
            mss = conn.mss
            # With GSO, many MSS in one super-segment, within an IP datagram's 64 KB.
            max_segment = min(mss * conn.config.gso_segments, MAX_GSO_PAYLOAD) or mss
        full = min(mss, max_segment)  # a "full-sized" segment, even at MTU 65535
        sent_new = False
        scoreboard = recovery.rack
        rack = scoreboard if conn.sack_ok else None
        # In recovery, or with losses not yet sent again, new data is limited
        # by the pipe (RFC 6675 5), not by what is in flight since SND.UNA.
        ecn_ok = conn.ecn_ok
        budget = None
        if rack is not None and (recovery.recover is not None or rack.lost_out):
            budget = recovery.cc.cwnd - rack.pipe()
        while True:
            # (A zero-window probe stays at SND.UNA, whatever the peer claims to hold.)
            hole = self._skip_sacked() if scoreboard.sacked_bytes and not probe else None
            offset = seq.diff(self.snd_nxt, self.buffer_seq)
            if offset > len(buf):
                break  # the FIN is out already
            unsent = len(buf) - offset
            if probe:
                size = min(unsent, 1)
            else:
                if budget is None:
                    window = min(self.snd_wnd, recovery.cc.cwnd)
                    usable = seq.diff(seq.add(self.snd_una, window), self.snd_nxt)
                else:
                    edge = seq.add(self.snd_una, self.snd_wnd)
                    usable = min(seq.diff(edge, self.snd_nxt), budget)
                size = max(min(unsent, usable, max_segment), 0)
            if limit is not None:
                size = min(size, limit)
            if hole is not None:
                size = min(size, hole)
            fin = self.fin_queued and offset + size == len(buf)
            if size == 0 and not fin:
                break
            if 0 < size < full and not probe and self._hold_small(size, unsent):
                break
            snd_nxt = self.snd_nxt
            ecn = ECN_NOT_ECT
            cwr = 0
            if ecn_ok and size and not probe and not seq.lt(snd_nxt, self.snd_max):
                # RFC 3168 6.1.2: new data is ECN-capable, never a retransmission
                # (6.1.5), a window probe (6.1.6), a pure ACK or a SYN (6.1.4);
                # Linux's tcp_ecn_send.
                ecn = ECN_ECT0
                if recovery.cwr_pending:
                    # The first new data after a reduction says so (6.1.2), in
                    # one segment: as part of a GSO super-segment the link
                    # would copy CWR onto every piece.
                    recovery.cwr_pending = False
                    cwr = CWR
                    size = min(size, mss)
                    fin = self.fin_queued and offset + size == len(buf)
                    if conn.counters is not None:
                        conn.counters["tcp.ecn.cwr-sent"] += 1
            flags = ACK | (FIN if fin else 0) | (PSH if size and offset + size == len(buf) else 0)
            flags |= cwr
            payload = copy_out(buf, offset, size)
            note = _ZERO_WINDOW_PROBE if probe else _NONE
            if seq.lt(snd_nxt, self.snd_max) and not probe:
                # (A probe resent after its timeout is still a probe, not a loss.)
                note = _RETRANSMISSION
                recovery.undo_bytes += size
                if rack is not None:
                    recovery.note_resent(snd_nxt, seq.add(snd_nxt, size + fin))
            window = rcv.window_field()
            gso = mss if size > mss else 0
            conn._emit(
                Segment(snd_nxt, rcv.rcv_nxt, flags, window, payload, options, note, gso, ecn)
            )
            if dsack:  # the D-SACK goes on the first segment only (RFC 2883 4)
                dsack = False
                options = rcv.ack_options()
            if recovery.timed is None and snd_nxt == self.snd_max and size:
                recovery.timed = (snd_nxt, conn.now)
            if rack is not None:
                rack.on_send(snd_nxt, seq.add(snd_nxt, size + fin), conn.now)
                if budget is not None:
                    budget -= size + fin
            self.snd_nxt = snd_nxt = seq.add(snd_nxt, size + fin)
            if 0 < size < full:
                self.small_sent_end = snd_nxt
            if seq.gt(snd_nxt, self.snd_max):
                self.snd_max = snd_nxt
                sent_new = not probe
            rcv.ack_now = False
            if probe:
                break  # (its own timer, the persist timer, sends it again)
            if RETRANSMIT not in timers.deadlines:
                timers.arm(RETRANSMIT, recovery.rtt.rto)
            if fin:
                break
        if sent_new:
            recovery.arm_probe()  # (RFC 8985 7.2: restarted by each new transmission)
            if not rcv.interactive and conn.now - rcv.data_at < conn.config.delayed_ack:
                # An answer, sent within the delayed-ACK time of the data it
                # answers: the connection is interactive (Linux's pingpong
                # mode, tcp_event_data_sent). A read no longer ACKs a short
                # segment at once: the next answer will carry the ACK.
                rcv.interactive = True
                if conn.trace is not None:
                    conn.decide(Note.INTERACTIVE)
        stalled = self.snd_wnd == 0 and seq.diff(self.fin_seq, self.snd_nxt) > 0
        if stalled and self.snd_una == self.snd_max and PERSIST not in timers.deadlines:
            timers.arm(PERSIST, recovery.rtt.rto)

    def _skip_sacked(self) -> int | None:
        """Going back after a timeout (SND.NXT below SND.MAX): step over what
        the peer has SACKed, and return how much may go before the next
        SACKed block (RFC 6675 5.1: the scoreboard spares what it holds)."""
        nxt = self.snd_nxt
        if not seq.lt(nxt, self.snd_max):
            return None
        for left, right in self._recovery.rack.sacked_ranges():  # (merged: each steps once)
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
            return not self.nodelay and seq.gt(self.small_sent_end, self.snd_una)
        return size < self.max_snd_wnd // 2  # window-limited: wait for a useful opening

    def resend(self, start: int, max_size: int) -> tuple[int, int] | None:
        """One segment from `start` again (FIN included if it is the end):
        its payload size and FIN (0 or 1), or None if nothing could go."""
        conn = self._conn
        rcv = self._rcv
        buf = self.buffer
        mss = conn.mss
        offset = seq.diff(start, self.buffer_seq)
        options = rcv.ack_options()
        room = mss - sack_length(options)
        # Only what went out before: never past SND.MAX (nor into the window
        # beyond it, when the probe's "last segment" is shorter than an MSS).
        sent = seq.diff(self.snd_max, start)
        fin_seq = self.fin_seq
        if self.fin_queued and seq.gt(self.snd_max, fin_seq):
            sent -= 1  # SND.MAX counts the FIN
        # Within the peer's window, if it shrank since (RFC 1122 4.2.2.16); at
        # SND.UNA one segment regardless, as Linux resends its head.
        window = seq.diff(seq.add(self.snd_una, self.snd_wnd), start)
        if window <= 0:
            if start != self.snd_una:
                return None
            window = mss
        size = min(max_size, room, len(buf) - offset, sent, window)
        if size <= 0 and not self.fin_queued:
            return None
        size = max(size, 0)
        fin = self.fin_queued and offset + size == len(buf)
        fin = fin and seq.gt(self.snd_max, fin_seq)  # only a FIN that went out before
        if size == 0 and not fin:
            return None
        last = size and offset + size == len(buf)  # PSH as when it first went
        flags = ACK | (FIN if fin else 0) | (PSH if last else 0)
        payload = copy_out(buf, offset, size)
        window = rcv.window_field()
        conn._emit(
            Segment(start, rcv.rcv_nxt, flags, window, payload, options, note=_RETRANSMISSION)
        )
        return size, int(fin)

    def persist_timeout(self) -> bool:
        """Zero-window probe (RFC 9293 3.8.6.1): push one byte past the closed
        window, the same byte again each time the persist timer fires while
        the window stays shut, the interval backing off (RFC 1122 4.2.2.17).
        It is a probe, not a loss: no congestion response, no RTO. False
        when `retries` probes in a row went unanswered: the peer is gone."""
        if self.snd_wnd or seq.diff(self.fin_seq, self.snd_una) <= 0:
            return True
        conn = self._conn
        recovery = self._recovery
        recovery.retries += 1  # (any ACK from the peer, even of a zero window, resets it)
        if recovery.retries > conn.config.retries:
            return False
        self.snd_nxt = self.snd_una  # (the byte a refused probe carried goes again)
        self.send_data(1, probe=True)
        rtt = recovery.rtt
        rtt.back_off()
        self._timers.arm(PERSIST, rtt.rto)
        self.window_probes += 1
        if conn.counters is not None:
            conn.counters["tcp.persist-probes"] += 1  # Linux's TCPWinProbe
        conn.decide(Note.ZERO_WINDOW_PROBE, count=self.window_probes, rto=rtt.rto)
        return True

    def may_send(self) -> bool:
        """Bytes not yet sent, or the FIN right after the last byte: only then
        has send_data anything to do (the common case of a receiver answering
        data with a bare ACK skips it)."""
        unsent = len(self.buffer) - seq.diff(self.snd_nxt, self.buffer_seq)
        return unsent > 0 or (unsent == 0 and self.fin_queued)


def sack_length(options: TcpOptions) -> int:
    """Bytes the SACK option takes in a segment, with its two NOPs."""
    return 4 + 8 * len(options.sack_blocks) if options.sack_blocks else 0


def copy_out(buf: bytearray, offset: int, size: int) -> bytes:
    """Bytes of the send buffer in one copy (a slice of the bytearray and then
    bytes() would be two); no view outlives the call, so the buffer may shrink."""
    with memoryview(buf) as view:
        return bytes(view[offset : offset + size])
