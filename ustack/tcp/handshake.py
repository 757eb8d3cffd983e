"""What the two SYNs of a handshake agree, decided from the peer's SYN or
SYN,ACK and our configuration, with no connection state: the peer's MSS
(RFC 9293 3.7.1), window scaling and timestamps (RFC 7323 2.2, 3.2), SACK
(RFC 2018 2) and ECN (RFC 3168 6.1.1). The connection applies the answers
(connection.py: `listen_accept`, `_receive_in_syn_sent`).
"""

from __future__ import annotations

from typing import NamedTuple

from ustack.tcp.config import DEFAULT_PEER_MSS, MAX_WINDOW_SHIFT, MIN_PEER_MSS, TcpConfig
from ustack.tcp.segment import Segment
from ustack.wire.ipv4 import ECN_NOT_ECT
from ustack.wire.tcp import CWR, ECE, TcpOptions


class Agreed(NamedTuple):
    """The options of the peer's SYN, as both sides will use them."""

    peer_mss: int
    snd_shift: int  # the peer's window scale, applied to the windows it sends
    rcv_shift: int  # ours, applied to the windows we send
    sack_ok: bool
    ts_ok: bool


def agree_options(options: TcpOptions, config: TcpConfig) -> Agreed:
    """The options of the peer's SYN (or SYN,ACK) against ours."""
    # A tiny MSS would leave no room for data next to our options (Linux
    # floors it the same way, tcp_min_snd_mss).
    peer_mss = max(options.mss or DEFAULT_PEER_MSS, MIN_PEER_MSS)
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
