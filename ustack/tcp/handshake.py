"""The opening of a connection: the SYN a listener accepts (RFC 9293
3.10.7.2), the SYN cookie's final ACK (RFC 4987), SEGMENT ARRIVES in SYN-SENT
(3.10.7.3); and what the two SYNs agree, decided from the peer's SYN or
SYN,ACK and our configuration: the peer's MSS (RFC 9293 3.7.1), window
scaling and timestamps (RFC 7323 2.2, 3.2), SACK (RFC 2018 2) and ECN
(RFC 3168 6.1.1). Every later state is connection.py's
(`_receive_synchronized`, RFC 9293 3.10.7.4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import NamedTuple

from ustack.tcp import seq
from ustack.tcp.config import DEFAULT_PEER_MSS
from ustack.tcp.config import MAX_WINDOW_SHIFT
from ustack.tcp.config import MIN_PEER_MSS
from ustack.tcp.config import TcpConfig
from ustack.tcp.events import Connected
from ustack.tcp.segment import Segment
from ustack.tcp.states import Event
from ustack.tcp.states import State
from ustack.trace.vocabulary import Note
from ustack.trace.vocabulary import SegmentNote
from ustack.wire.ipv4 import ECN_NOT_ECT
from ustack.wire.tcp import ACK
from ustack.wire.tcp import CWR
from ustack.wire.tcp import ECE
from ustack.wire.tcp import FIN
from ustack.wire.tcp import RST
from ustack.wire.tcp import SYN
from ustack.wire.tcp import TcpOptions

if TYPE_CHECKING:
    from ustack.tcp.connection import TcpConnection


class Agreed(NamedTuple):
    """The options of the peer's SYN, as both sides will use them."""

    peer_mss: int
    snd_shift: int  # the peer's window scale, applied to the windows it sends
    rcv_shift: int  # ours, applied to the windows we send
    sack_ok: bool
    ts_ok: bool


def agree_options(
    options: TcpOptions, config: TcpConfig, default_peer_mss: int = DEFAULT_PEER_MSS
) -> Agreed:
    """The options of the peer's SYN (or SYN,ACK) against ours; without an
    MSS option the peer takes `default_peer_mss` (536 over IPv4, 1220 over
    IPv6: RFC 9293 3.7.1)."""
    # A tiny MSS would leave no room for data next to our options (Linux
    # floors it the same way, tcp_min_snd_mss).
    peer_mss = max(options.mss or default_peer_mss, MIN_PEER_MSS)
    if options.window_scale is not None and config.window_scaling:
        snd_shift, rcv_shift = min(options.window_scale, MAX_WINDOW_SHIFT), config.window_shift
    else:  # both sides must offer it, else neither scales (RFC 7323 2.2)
        snd_shift = rcv_shift = 0
    return Agreed(
        peer_mss,
        snd_shift,
        rcv_shift,
        options.sack_permitted and config.sack,
        options.timestamps is not None and config.timestamps,
    )


class EcnAnswer(NamedTuple):
    agreed: bool
    why: str  # for the trace


def ecn_on_syn(syn: Segment, config: TcpConfig) -> EcnAnswer | None:
    """RFC 3168 6.1.1: a SYN with ECE and CWR asks for ECN; our SYN,ACK
    agrees with ECE alone. As Linux (tcp_ecn_create_request), not for a
    SYN that is itself ECT: a SYN must not be (6.1.1), so something on
    the path rewrites the field and marks cannot be trusted. None: the
    SYN did not ask."""
    if syn.flags & (ECE | CWR) != ECE | CWR:
        return None
    if config.ecn == "off":
        return EcnAnswer(False, "the peer asked, ECN is off here")
    if syn.ecn != ECN_NOT_ECT:
        return EcnAnswer(False, "the peer's SYN was ECN-capable (ECT or CE)")
    return EcnAnswer(True, "the peer asked in its SYN")


def ecn_on_synack(synack: Segment, config: TcpConfig) -> EcnAnswer | None:
    """RFC 3168 6.1.1: we asked (ECE and CWR in our SYN); a SYN,ACK with
    ECE and without CWR agrees (Linux tcp_ecn_rcv_synack). None: we did
    not ask."""
    if config.ecn != "on":
        return None
    if synack.flags & (ECE | CWR) == ECE:
        return EcnAnswer(True, "the peer's SYN,ACK agreed with ECE")
    return EcnAnswer(False, "the peer's SYN,ACK did not set ECE alone")


# ---- applied to a connection ------------------------------------------------


def accept_syn(conn: TcpConnection, syn: Segment) -> None:
    """A listener's SYN becomes this connection's (RFC 9293 3.10.7.2): take
    its options, answer with SYN,ACK."""
    conn.passive = True
    conn.state = State.LISTEN
    take_syn(conn, syn)
    agree_ecn(conn, ecn_on_syn(syn, conn.config))
    snd = conn.sender
    snd.snd_wnd = syn.window  # never scaled in a SYN (RFC 7323 2.2)
    snd.max_snd_wnd = snd.snd_wnd
    snd.snd_wl1 = syn.seq
    conn._transition(Event.RCV_SYN)
    conn._output()


def accept_cookie(conn: TcpConnection, ack: Segment, irs: int, peer_mss: int) -> None:
    """The final ACK of a handshake answered with a SYN cookie (RFC 4987):
    the connection starts ESTABLISHED, with what the cookie carried."""
    conn.passive = True
    conn.state = State.LISTEN
    conn.receiver.take_syn(irs)
    conn.peer_mss = peer_mss
    snd = conn.sender
    snd.snd_una = snd.snd_nxt = snd.snd_max = seq.add(snd.iss, 1)
    snd.snd_wnd = snd.max_snd_wnd = ack.window  # no window scaling without the SYN
    snd.snd_wl1, snd.snd_wl2 = ack.seq, ack.ack
    negotiated(conn)
    conn._transition(Event.RCV_VALID_COOKIE)
    conn.events.append(Connected())


def take_syn(conn: TcpConnection, syn: Segment) -> None:
    """IRS, RCV.NXT and the options of the peer's SYN."""
    rcv = conn.receiver
    rcv.take_syn(syn.seq)
    agreed = agree_options(syn.options, conn.config, conn.path.default_peer_mss)
    conn.peer_mss, conn.sack_ok, conn.ts_ok = agreed.peer_mss, agreed.sack_ok, agreed.ts_ok
    conn.sender.snd_shift, rcv.rcv_shift = agreed.snd_shift, agreed.rcv_shift
    if syn.options.timestamps is not None:
        rcv.ts_recent = syn.options.timestamps[0]
    negotiated(conn)


def agree_ecn(conn: TcpConnection, answer: EcnAnswer | None) -> None:
    """Apply the ECN answer to the peer's SYN or SYN,ACK (RFC 3168 6.1.1)."""
    if answer is None:
        return
    if not answer.agreed:
        conn.decide(Note.ECN_NOT_AGREED, why=answer.why)
        return
    conn.ecn_ok = True
    if conn.counters is not None:
        conn.counters["tcp.ecn.agreed"] += 1
    conn.decide(Note.ECN_AGREED, how=answer.why)


def negotiated(conn: TcpConnection) -> None:
    """Now the segment size is known: the congestion window counts in it."""
    conn.mss = conn.path.effective_mss()
    conn.recovery.start(conn.mss, conn.config.initial_window_segments * conn.mss)


def receive_in_syn_sent(conn: TcpConnection, seg: Segment) -> None:
    """RFC 9293 3.10.7.3."""
    flags = seg.flags
    snd = conn.sender
    # First: the ACK must acknowledge our SYN, nothing less, nothing more.
    if flags & ACK and (seq.le(seg.ack, snd.iss) or seq.gt(seg.ack, snd.snd_max)):
        if not flags & RST:
            conn._emit(Segment(seg.ack, 0, RST, 0, note=SegmentNote.RST_UNACCEPTABLE_ACK))
        conn.decide(Note.UNACCEPTABLE_ACK_IN_SYN_SENT)
        return
    # Second: a RST counts only if it acknowledges our SYN.
    if flags & RST:
        if flags & ACK:
            conn._transition(Event.RCV_RST, error="ECONNREFUSED")
        else:
            conn.decide(Note.RST_WITHOUT_ACK_IN_SYN_SENT)
        return
    # Fourth: the SYN.
    if not flags & SYN:
        conn.decide(Note.NEITHER_SYN_NOR_RST_IN_SYN_SENT)
        return
    take_syn(conn, seg)
    snd.snd_wnd = seg.window  # a SYN's window is never scaled
    snd.max_snd_wnd = snd.snd_wnd
    snd.snd_wl1, snd.snd_wl2 = seg.seq, seg.ack
    if flags & ACK:
        agree_ecn(conn, ecn_on_synack(seg, conn.config))
        conn.recovery.ack_advanced(seg.ack)
        conn._transition(Event.RCV_SYN_ACK)
        conn._after_handshake()
        conn.events.append(Connected())
        conn.receiver.ack_now = True
        if seg.payload or flags & FIN:  # rare: data on the SYN,ACK
            conn._receive_text_and_fin(seq.add(seg.seq, 1), seg.payload, flags & FIN)
    else:
        # Simultaneous open: answer with SYN,ACK from the same ISS.
        conn._transition(Event.RCV_SYN)
        snd.snd_nxt = snd.iss
        conn.recovery.retries = 0
