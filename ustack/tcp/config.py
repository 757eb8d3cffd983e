"""What a connection is configured with (TcpConfig), and the limits of the
protocol that go with it."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PEER_MSS = 536  # RFC 9293 3.7.1: assumed when the SYN carries no MSS option
IPV4_TCP_HEADERS = 40  # 20 + 20: an IPv4 header and a TCP header, no options
IPV6_TCP_HEADERS = 60  # 40 + 20 (RFC 8200 8.3: "MTU - 60")
DEFAULT_PEER_MSS_IPV6 = 1220  # the same over IPv6: 1280 - 60 (RFC 9293 3.7.1, RFC 8200 8.3)
MIN_PEER_MSS = 48  # Linux's tcp_min_snd_mss: what we use for a smaller MSS option
MAX_WINDOW_SHIFT = 14  # RFC 7323 2.3
# ECN (RFC 3168) negotiation: "off" never; "passive" agrees when the peer's
# SYN asks (Linux tcp_ecn=2, its default); "on" asks in our SYNs too (tcp_ecn=1).
ECN_MODES = ("off", "passive", "on")


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
    # An ACK for an invalid segment (out of window, PAWS, challenge) at most
    # every this many seconds per connection (Linux tcp_invalid_ratelimit); 0: off.
    invalid_ack_ratelimit: float = 0.5
    initial_window_segments: int = 10  # RFC 6928
    nagle: bool = True  # hold small segments while a small one is unacknowledged
    congestion_control: str = "cubic"  # or "newreno"
    delayed_ack: float = 0.04  # at most this long before an ACK (Linux's 40 ms; RFC: < 0.5 s)
    sack: bool = True  # offer SACK-permitted and send SACK blocks (RFC 2018)
    timestamps: bool = True  # RFC 7323: RTT measurement on every ACK, and PAWS
    tail_loss_probe: bool = True  # RFC 8985 7 (with SACK): a probe at 2*SRTT, not the RTO
    # RFC 4821-style black-hole detection (Linux tcp_mtu_probing=1), off as in
    # Linux: after repeated timeouts with no ICMP, a smaller MSS.
    mtu_probing: bool = False
    ecn: str = "passive"  # one of ECN_MODES
    gso_segments: int = 1  # >1: hand the link super-segments of this many MSS (GSO)
    # Keep-alive (RFC 1122 4.2.3.6), off by default: probe after this many idle seconds.
    keepalive_idle: float | None = None
    keepalive_interval: float = 75.0
    keepalive_probes: int = 9
    # The demux's: TCBs in its table, in every state (SYN_SENT and SYN_RECEIVED,
    # TIME_WAIT too). Beyond it a new SYN is dropped and counted, as Linux drops
    # a SYN its full accept queue has no room for; an active open fails with
    # ENOBUFS. The oldest TIME_WAIT gives way first (FreeBSD's tcp_tw_2msl_scan
    # reuse; Linux skips TIME_WAIT beyond tcp_max_tw_buckets). At about 3 KB
    # of TCB each (the application's side comes on top), 65,536 cost ~200 MB.
    max_connections: int = 65_536

    def __post_init__(self) -> None:
        if self.ecn not in ECN_MODES:
            raise ValueError(f"unknown ECN mode {self.ecn!r} (known: {', '.join(ECN_MODES)})")

    @property
    def connect_timeout(self) -> float:
        """How long an active open tries before ETIMEDOUT: the first RTO and
        syn_retries doubled ones, each at most max_rto (6: 123 s; Linux's 127 s
        with its 120 s cap)."""
        return sum(
            min(self.initial_rto * (1 << attempt), self.max_rto)
            for attempt in range(self.syn_retries + 1)
        )

    @property
    def window_shift(self) -> int:
        """The smallest shift that lets the 16-bit field carry our whole buffer."""
        shift = 0
        while (self.receive_buffer >> shift) > 0xFFFF and shift < MAX_WINDOW_SHIFT:
            shift += 1
        return shift
