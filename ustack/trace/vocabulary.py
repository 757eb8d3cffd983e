"""The trace's vocabulary, defined once: timer kinds, segment notes, the
decisions the core explains, drop reasons and the rules they cite.

The core writes these members; the study tools (ladder, explain) read them
back from the JSON trace. Every member is a `StrEnum`, so a record's field
compares equal to its JSON text and the trace on disk is plain strings, while
in the code a misspelt name is an AttributeError (and a mypy error), not a
silent mismatch. `docs/trace-format.md` lists them for readers of the files.

This module is sans-I/O and imports nothing from the stack: the core (tcp,
net) and the study tools may both import it.
"""

from __future__ import annotations

import enum


class Rule(enum.StrEnum):
    """The source of a behaviour, as cited in the trace: RFC and section."""

    RFC9293_OPEN = "RFC 9293 3.10.1"
    RFC9293_CLOSED = "RFC 9293 3.10.7.1"
    RFC9293_LISTEN = "RFC 9293 3.10.7.2"
    RFC9293_SYN_SENT = "RFC 9293 3.10.7.3"
    RFC9293_OTHERWISE = "RFC 9293 3.10.7.4"
    RFC1337 = "RFC 1337"
    RFC5961_RST = "RFC 5961 3.2"
    RFC5961_SYN = "RFC 5961 4.2"
    RFC5961_ACK = "RFC 5961 5.2"
    RFC5961_THROTTLING = "RFC 5961 7"
    RFC5681_FAST_RETRANSMIT = "RFC 5681 3.2"
    RFC6582_RECOVERY_OVER = "RFC 6582 3.2"
    RFC6298_TIMEOUT = "RFC 6298 5.4-5.6"
    RFC7323_PAWS = "RFC 7323 5.3"
    RFC8985_RACK = "RFC 8985 6.2"
    RFC8985_PROBE = "RFC 8985 7.3"
    RFC8985_PROBE_RECOVERY = "RFC 8985 7.4"
    RFC3708_UNDO = "RFC 3708, RFC 4015"
    RFC2883_DSACK = "RFC 2883 4"
    RFC9293_PERSIST = "RFC 9293 3.8.6.1"
    RFC791_FRAGMENTS = "RFC 791 3.2"
    RFC1122_REASSEMBLY = "RFC 1122 3.3.2"
    RFC1122_ICMP_ERRORS = "RFC 1122 3.2.2, RFC 1812 4.3.2.7"  # when no ICMP error may go
    RFC1812_ICMP_RATE = "RFC 1812 4.3.2.8"  # ICMP errors rate-limited
    RFC5722_OVERLAP = "RFC 5722 4"
    RFC1122_ICMP = "RFC 1122 4.2.3.9"
    RFC5461_NO_ABORT = "RFC 5461 4.1"
    RFC1191_PMTU = "RFC 1191 6.1"
    RFC1191_EXPIRY = "RFC 1191 6.3"
    RFC4821_BLACK_HOLE = "RFC 4821 (Linux tcp_mtu_probing)"
    RFC3168_SETUP = "RFC 3168 6.1.1"
    RFC3168_SENDER = "RFC 3168 6.1.2"
    RFC3168_RECEIVER = "RFC 3168 6.1.3"
    RFC8200_EXTENSION_HEADERS = "RFC 8200 4"
    RFC8200_OPTIONS = "RFC 8200 4.2"
    RFC5095_ROUTING = "RFC 8200 4.4, RFC 5095"
    RFC8200_FRAGMENTS = "RFC 8200 4.5"
    RFC7112_HEADER_CHAIN = "RFC 7112 5"
    RFC4291_ADDRESSES = "RFC 4291 2.5.5, 2.7"
    RFC4443_ICMP_ERRORS = "RFC 4443 2.4(e)"  # when no ICMPv6 error may go
    RFC4443_ICMP_RATE = "RFC 4443 2.4(f)"  # ICMPv6 errors rate-limited
    # When a delayed ACK goes (RFC 1122 4.2.3.2 leaves it open within 0.5 s),
    # as Linux decides it: tcp_cleanup_rbuf, pingpong mode.
    RFC1122_DELAYED_ACK = "RFC 1122 4.2.3.2 (Linux's delayed ACK)"


class TimerKind(enum.StrEnum):
    """A connection's timers (TimerEvent.timer)."""

    RETRANSMIT = "retransmit"  # RFC 6298
    PROBE = "probe"  # RFC 8985 7: tail loss probe
    REORDER = "reorder"  # RFC 8985 6.2: RACK's reordering window
    PERSIST = "persist"  # RFC 9293 3.8.6.1: zero-window probe
    DELAYED_ACK = "delayed_ack"  # RFC 1122 4.2.3.2
    KEEPALIVE = "keepalive"  # RFC 1122 4.2.3.6
    TIME_WAIT = "time_wait"  # RFC 9293 3.6.1: 2*MSL
    FIN_WAIT_2 = "fin_wait_2"  # Linux tcp_fin_timeout for orphans


class TimerAction(enum.StrEnum):
    SET = "set"
    FIRED = "fired"
    CANCELLED = "cancelled"


class SegmentNote(enum.StrEnum):
    """Why a segment went out, when that is not plain (SegmentEvent.note)."""

    NONE = ""
    RETRANSMISSION = "retransmission"
    ZERO_WINDOW_PROBE = "zero-window probe"
    KEEPALIVE_PROBE = "keep-alive probe"
    CHALLENGE_ACK = "challenge ACK"
    RST_UNACCEPTABLE_ACK = "RST for an unacceptable ACK"
    RST_NO_CONNECTION = "RST: no connection"
    SYN_COOKIE = "SYN cookie"


# The rules most decisions cite, short enough for one decision a line.
_SYN_SENT = Rule.RFC9293_SYN_SENT
_OTHERWISE = Rule.RFC9293_OTHERWISE


class _TextAndRule:
    """Members that are a sentence and the rule behind it."""

    text: str
    rule: Rule

    def __init__(self, text: str, rule: Rule) -> None:
        self.text = text
        self.rule = rule


class Note(_TextAndRule, enum.Enum):
    """A branch the core took that is worth explaining (Decision.kind is the
    member's name in lower case). Each has its sentence (a format string over
    the keyword arguments the core passes) and the rule behind it."""

    @property
    def kind(self) -> str:
        return self.name.lower()

    def sentence(self, **values: object) -> str:
        return self.text.format(**values) if values else self.text

    # SYN_SENT (RFC 9293 3.10.7.3)
    UNACCEPTABLE_ACK_IN_SYN_SENT = ("unacceptable ACK in SYN_SENT: RST <SEQ=SEG.ACK>", _SYN_SENT)
    RST_WITHOUT_ACK_IN_SYN_SENT = ("RST without ACK in SYN_SENT ignored", _SYN_SENT)
    NEITHER_SYN_NOR_RST_IN_SYN_SENT = ("neither SYN nor RST in SYN_SENT: dropped", _SYN_SENT)
    # Every later state (RFC 9293 3.10.7.4)
    FIN_AGAIN_IN_TIME_WAIT = (
        "FIN retransmitted in TIME_WAIT: ACK again, 2MSL restarts",
        _OTHERWISE,
    )
    SYN_AGAIN_IN_SYN_RECEIVED = ("retransmitted SYN in SYN_RECEIVED: SYN,ACK again", _OTHERWISE)
    OUTSIDE_WINDOW = ("segment outside the receive window: dropped, ACK sent", _OTHERWISE)
    NO_ACK_FLAG = ("segment without ACK in a synchronized state: dropped", _OTHERWISE)
    UNACCEPTABLE_ACK_IN_SYN_RECEIVED = (
        "unacceptable ACK in SYN_RECEIVED: RST <SEQ=SEG.ACK>",
        _OTHERWISE,
    )
    DATA_AFTER_FIN = ("data after the peer's FIN ignored in {state}", _OTHERWISE)
    FIN_AFTER_FIN = ("FIN after the peer's FIN ignored", _OTHERWISE)
    FIN_BEYOND_HOLE = ("FIN beyond a hole: held until the hole fills", _OTHERWISE)
    OUT_OF_ORDER_HELD = ("out-of-order segment held, duplicate ACK sent", _OTHERWISE)
    DSACK_SENT = (
        "duplicate {left}..{right} received ({where}): reported in a D-SACK block",
        Rule.RFC2883_DSACK,
    )
    DATA_PAST_HELD_FIN = ("data past a held FIN: the FIN is dropped", _OTHERWISE)
    PAWS = ("PAWS: TSval older than TS.Recent, dropped, ACK sent", Rule.RFC7323_PAWS)
    RST_IN_TIME_WAIT_IGNORED = (
        "RST in TIME_WAIT ignored (RFC 1337 TIME-WAIT assassination fix)",
        Rule.RFC1337,
    )
    # RFC 5961 challenge ACKs: "{what}" is one of the CHALLENGE_* reasons below.
    CHALLENGE_ACK = ("{what}: challenge ACK", Rule.RFC5961_RST)
    CHALLENGE_ACK_SUPPRESSED = (
        "{what}: challenge ACK suppressed by the rate limit",
        Rule.RFC5961_RST,
    )
    # Linux's tcp_invalid_ratelimit: "{what}" is one of the OutOfWindow texts
    # below, or for a challenge ACK the Challenge's.
    INVALID_ACK_SUPPRESSED = (
        "{what}: ACK suppressed by the invalid-segment rate limit",
        Rule.RFC5961_THROTTLING,
    )
    # Loss recovery
    FAST_RETRANSMIT = (
        "fast retransmit: {why}; {cc} ssthresh {ssthresh}, cwnd {cwnd}",
        Rule.RFC5681_FAST_RETRANSMIT,
    )
    RACK_LOST = (
        "RACK: {count} segment(s) from {start} lost (a segment sent later was delivered, "
        "{after_ms:.1f} ms after)",
        Rule.RFC8985_RACK,
    )
    SPURIOUS_RETRANSMISSION = (
        "spurious retransmission: all resent since {marker} came back D-SACKed; "
        "{cc} cwnd back to {cwnd}, ssthresh {ssthresh}",
        Rule.RFC3708_UNDO,
    )
    DSACK_RECEIVED = ("D-SACK {left}..{right} received: {what}", Rule.RFC2883_DSACK)
    RECOVERY_OVER = ("fast recovery over, cwnd {cwnd}", Rule.RFC6582_RECOVERY_OVER)
    RETRANSMISSION_TIMEOUT = (
        "retransmission timeout #{count}: resend from SND.UNA, RTO now {rto:.3f}s",
        Rule.RFC6298_TIMEOUT,
    )
    TAIL_LOSS_PROBE = ("tail loss probe: the last segment again", Rule.RFC8985_PROBE)
    ZERO_WINDOW_PROBE = (
        "zero-window probe #{count}: the peer's window is closed; next in {rto:.3f}s",
        Rule.RFC9293_PERSIST,
    )
    # ICMP errors about a connection (RFC 1122 4.2.3.9, RFC 5461, RFC 1191)
    PATH_MTU_LOWERED = (
        "ICMP fragmentation needed: path MTU {old} -> {pmtu}, MSS {mss}; "
        "{resent} bytes in too big segments sent again at once",
        Rule.RFC1191_PMTU,
    )
    PATH_MTU_EXPIRED = (
        "path MTU {old} learnt from ICMP expired: back to {pmtu}, MSS {mss}",
        Rule.RFC1191_EXPIRY,
    )
    PATH_MTU_NOT_LOWER = (
        "ICMP fragmentation needed for MTU {mtu}: not below the path MTU {pmtu}, ignored",
        Rule.RFC1191_PMTU,
    )
    ICMP_SOFT_ERROR = (
        "ICMP {what} ({error}): a soft error, remembered; the connection goes on",
        Rule.RFC1122_ICMP,
    )
    ICMP_HARD_ERROR_KEPT = (
        "ICMP {what} ({error}) in {state}: no abort on an ICMP alone, remembered",
        Rule.RFC5461_NO_ABORT,
    )
    SOFT_ERROR_REPORTED = (
        "timed out after an ICMP error: {error} reported instead of ETIMEDOUT",
        Rule.RFC1122_ICMP,
    )
    BLACK_HOLE_FALLBACK = (
        "{count} timeouts and no ICMP: path MTU black hole assumed, MSS {old} -> {mss}",
        Rule.RFC4821_BLACK_HOLE,
    )
    # ECN (RFC 3168)
    ECN_AGREED = (
        "ECN agreed ({how}): new data goes ECT(0), CE marks are echoed with ECE",
        Rule.RFC3168_SETUP,
    )
    ECN_NOT_AGREED = ("ECN not agreed: {why}", Rule.RFC3168_SETUP)
    CE_RECEIVED = (
        "CE mark on data: ECE on every ACK until the peer's CWR",
        Rule.RFC3168_RECEIVER,
    )
    CWR_RECEIVED = ("CWR from the peer: it reduced its window, ECE stops", Rule.RFC3168_RECEIVER)
    ECN_WINDOW_REDUCED = (
        "ECE: congestion on the path, once this window; {cc} ssthresh {ssthresh}, "
        "cwnd {cwnd}, CWR on the next new data",
        Rule.RFC3168_SENDER,
    )
    # Delayed ACK in interactive use, as Linux (RFC 1122 4.2.3.2)
    ACK_ON_READ = (
        "the application read {what}: the ACK goes now or on its answer, not at the "
        "delayed-ACK timer (Linux tcp_cleanup_rbuf)",
        Rule.RFC1122_DELAYED_ACK,
    )
    INTERACTIVE = (
        "data sent within the delayed-ACK time of data received: interactive, a read "
        "no longer ACKs short segments at once, the answers carry the ACKs (Linux pingpong mode)",
        Rule.RFC1122_DELAYED_ACK,
    )
    NOT_INTERACTIVE = (
        "the delayed-ACK timer fired, no answer carried the ACK: not interactive any more "
        "(Linux tcp_delack_timer_handler)",
        Rule.RFC1122_DELAYED_ACK,
    )


class Challenge(_TextAndRule, enum.Enum):
    """Why a challenge ACK (RFC 5961) was due, with the section that asks for it."""

    SYN_SYNCHRONIZED = ("SYN in a synchronized state", Rule.RFC5961_SYN)
    RST_NOT_AT_RCV_NXT = ("RST in the window but not at RCV.NXT", Rule.RFC5961_RST)
    ACK_OF_UNSENT = ("ACK of data never sent: dropped", Rule.RFC5961_ACK)
    ACK_TOO_OLD = ("ACK older than the send window: dropped", Rule.RFC5961_ACK)


class OutOfWindow(_TextAndRule, enum.Enum):
    """An invalid segment whose ACK the per-connection limit may hold back;
    the counter is tcp.out.ack-skipped-VALUE (Linux's TCPACKSkipped*)."""

    SEQUENCE = ("segment outside the receive window", Rule.RFC9293_OTHERWISE)
    PAWS = ("PAWS: TSval older than TS.Recent", Rule.RFC7323_PAWS)
    CHALLENGE = ("challenge ACK", Rule.RFC5961_THROTTLING)

    def __str__(self) -> str:
        return self.name.lower()


# Decisions after which explain says the next retransmissions were sent by
# loss recovery, and which rule sent them.
LOSS_RULES = frozenset(
    {
        Rule.RFC6298_TIMEOUT,
        Rule.RFC5681_FAST_RETRANSMIT,
        Rule.RFC8985_RACK,
        Rule.RFC8985_PROBE_RECOVERY,
    }
)


# ---- the fault injector's (study/faults.py), and what the trace readers make of it -------


class FaultAction(enum.StrEnum):
    """What the fault injector does to a matching packet (a rule's ACTION,
    FaultEvent.action)."""

    DROP = "drop"
    DELAY = "delay"
    DUPLICATE = "duplicate"
    MARK = "mark"  # CE on an ECN-capable packet, as a congested router (RFC 3168)


# The trace readers fold a FaultEvent that dropped a segment into the segment:
# its note gets this (after the core's own note, if any: "retransmission
# dropped by fault injector"), and the ladder shows it as "lost".
LOST_NOTE = "dropped by fault injector"


class Layer(enum.StrEnum):
    """Where a packet was dropped (Drop.layer, and the counter's prefix)."""

    IP = "ip"
    ICMP = "icmp"
    UDP = "udp"
    TCP = "tcp"
    IP6 = "ip6"
    ICMP6 = "icmp6"


class DropReason(enum.StrEnum):
    """Why a packet was dropped (Drop.reason; the counter is LAYER.drop.REASON).
    Parsers add their own reasons through `MalformedPacket.reason`, which the
    wire layer defines with its schemas."""

    # ip
    IPV6_UNSUPPORTED = "ipv6-unsupported"
    IPV4_BAD_TOTAL_LENGTH = "ipv4-bad-total-length"
    IPV4_BAD_CHECKSUM = "ipv4-bad-checksum"
    IPV4_TTL_ZERO = "ipv4-ttl-zero"
    NOT_FOR_US = "not-for-us"
    BAD_SOURCE = "bad-source"  # broadcast, multicast, 0/8, loopback: a martian
    LOCAL_SOURCE = "local-source"  # our own address as the source
    # Reassembly (net/fragments.py): the fragment and its whole datagram are
    # dropped, except for a duplicate, which is dropped alone.
    FRAG_OVERLAP = "frag-overlap"  # overlaps bytes held (RFC 5722 4, Linux since FragmentSmack)
    FRAG_INCONSISTENT = "frag-inconsistent"  # a second last fragment, data past the end
    FRAG_DUPLICATE = "frag-duplicate"  # wholly inside bytes held: dropped alone
    FRAG_TOO_BIG = "frag-too-big"  # the datagram would pass 65,535 bytes
    FRAG_TOO_MANY = "frag-too-many"  # more fragments than FragmentLimits.max_fragments
    FRAG_TIMEOUT = "frag-timeout"  # incomplete after ipfrag_time (RFC 1122 3.3.2)
    FRAG_MEMORY = "frag-memory"  # evicted: reassembly memory over ipfrag_high_thresh
    UNKNOWN_PROTOCOL = "unknown-protocol"
    OUT_TOO_BIG = "out-too-big"
    OUT_QUEUE_FULL = "out-queue-full"
    # icmp, udp, tcp
    BAD_CHECKSUM = "bad-checksum"
    BAD_LENGTH = "bad-length"
    # tcp
    RST_TO_LISTENER = "rst-to-listener"
    SYNCOOKIE_UNVERIFIED = "syncookie-unverified"
    LISTEN_NO_SYN = "listen-no-syn"
    SYN_FIN = "syn-fin"  # SYN and FIN together: no connection starts so (Linux discards)
    BACKLOG_FULL = "backlog-full"
    CONNECTION_LIMIT = "connection-limit"  # the table holds max_connections, none in TIME_WAIT
    RST_TO_CLOSED_PORT = "rst-to-closed-port"
    # tcp, in TIME_WAIT: every segment the state drops (RFC 9293 3.10.7.4, RFC 1337)
    TIME_WAIT_RST = "time-wait-rst"  # ignored (RFC 1337), or not at RCV.NXT (challenged)
    TIME_WAIT_PAWS = "time-wait-paws"  # an old TSval (RFC 7323 5.3): ACK sent
    TIME_WAIT_OUT_OF_WINDOW = "time-wait-out-of-window"  # not in the window: ACK sent
    TIME_WAIT_SYN = "time-wait-syn"  # a SYN that cannot start a new incarnation: challenged
    TIME_WAIT_NO_ACK = "time-wait-no-ack"  # neither SYN, RST nor ACK
    TIME_WAIT_BAD_ACK = "time-wait-bad-ack"  # an ACK of unsent data, or too old: challenged
    TIME_WAIT_LATE = "time-wait-late"  # an in-window ACK or data: nothing left to receive
    # icmp, an error or reply not sent (RFC 1122 3.2.2, RFC 1812 4.3.2.7; Linux's icmp_send)
    ICMP_ERROR_ABOUT_ICMP_ERROR = "error-about-icmp-error"
    ICMP_ERROR_ABOUT_BROADCAST = "error-about-broadcast"  # it went to a broadcast, multicast
    ICMP_ERROR_ABOUT_FRAGMENT = "error-about-fragment"  # a non-initial fragment
    ICMP_ERROR_TO_NON_UNICAST = "error-to-non-unicast"  # its source is no single host
    ICMP_ERROR_UNQUOTABLE = "error-unquotable"  # too short to tell what it is
    RATE_LIMITED_GLOBAL = "rate-limited-global"  # icmp_msgs_per_sec (IcmpOutRateLimitGlobal)
    RATE_LIMITED_HOST = "rate-limited-host"  # icmp_ratelimit (IcmpOutRateLimitHost)
    # icmp errors (RFC 1122 4.2.3.9, RFC 5927 4.1, RFC 6633)
    SOURCE_QUENCH = "source-quench"  # RFC 6633: ignored
    QUOTE_NOT_OURS = "quote-not-ours"  # the quoted datagram's source is not our address
    QUOTE_UNHANDLED_PROTOCOL = "quote-unhandled-protocol"  # about neither TCP nor our ICMP
    NO_CONNECTION = "no-connection"  # quotes a 4-tuple we have no connection on
    BAD_SEQ = "bad-seq"  # quotes a SEQ outside SND.UNA..SND.NXT
    UNHANDLED_ERROR = "unhandled-error"  # a Destination Unreachable code we do not know
    # udp (net/udp.py)
    RECEIVE_QUEUE_FULL = "receive-queue-full"  # the endpoint's queue is full (Linux's RcvbufErrors)
    ERROR_UNCONNECTED = "error-unconnected"  # an ICMP error for an unconnected endpoint (as Linux)
    # ip6 (IPv6 input; the reasons above serve it too where they fit)
    IPV6_BAD_PAYLOAD_LENGTH = "ipv6-bad-payload-length"  # past the packet's end
    EXTENSION_HEADER_TRUNCATED = "extension-header-truncated"  # past the payload's end
    HOP_BY_HOP_NOT_FIRST = "hop-by-hop-not-first"  # RFC 8200 4.1: Parameter Problem code 1
    UNKNOWN_OPTION = "unknown-option"  # RFC 8200 4.2: its two high bits say discard
    ROUTING_HEADER = "routing-header"  # segments left with a type we do not route (RFC 5095)
    UNKNOWN_NEXT_HEADER = "unknown-next-header"  # RFC 8200 4: Parameter Problem code 1
    FRAG_BAD_LENGTH = "frag-bad-length"  # M set and not a multiple of 8 (RFC 8200 4.5)
    FRAG_HEADER_CHAIN = "frag-header-chain"  # a first fragment without the upper header (RFC 7112)
