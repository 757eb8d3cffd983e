"""The stack: IP + TCP wired together, with no I/O of its own (sans-I/O).

Its asyncio driver is `ustack.runner.StackRunner`."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from ustack.counters import Counters
from ustack.net.fragments import FragmentLimits
from ustack.net.ipv4 import IPv4Layer
from ustack.net.pmtu import DEFAULT_MIN_PMTU
from ustack.net.ratelimit import IcmpLimits
from ustack.tcp.connection import TcpConfig, TcpConnection
from ustack.tcp.demux import TcpDemux
from ustack.tcp.syncookies import SynCookies
from ustack.trace.records import PacketTap, Tracer
from ustack.wire.checksum import Buffer
from ustack.wire.ipv4 import IPV4_MIN_HEADER_LENGTH

DEFAULT_ADDRESS = ipaddress.IPv4Address("198.18.0.2")


class Stack:
    """IPv4 + ICMP + TCP for one address. Packets go in through `receive`
    and out through the `transmit` callable; the caller owns all I/O."""

    def __init__(
        self,
        address: int,
        transmit: Callable[[bytes], bool],
        mtu: int = 1500,
        tcp_config: TcpConfig | None = None,
        trace: Tracer | None = None,
        isn: Callable[[int, int, int, int, float], int] | None = None,
        tap: PacketTap | None = None,
        syncookies: bool = True,
        network: ipaddress.IPv4Network | None = None,
        fragment_limits: FragmentLimits | None = None,
        icmp_limits: IcmpLimits | None = None,
        min_pmtu: int = DEFAULT_MIN_PMTU,
    ) -> None:
        """`network`: the link's subnet, whose broadcast addresses are then
        neither accepted as a source nor connected to. `fragment_limits`:
        reassembly's memory cap and timeout; `icmp_limits`: the ICMP output
        rate limits (Linux's defaults when None); `min_pmtu`: the least path
        MTU an ICMP "fragmentation needed" may teach (Linux's min_pmtu)."""
        self.counters = Counters()
        self.counters.tracer = trace
        self.ip = IPv4Layer(
            address, transmit, self.counters, mtu, network, fragment_limits, icmp_limits, min_pmtu
        )
        self.ip.tap = tap
        config = tcp_config or TcpConfig(mss=mtu - 40)
        self.tcp = TcpDemux(
            address,
            self.ip.send_in_place,
            self.counters,
            config,
            trace,
            isn,
            SynCookies() if syncookies else None,
            headroom=IPV4_MIN_HEADER_LENGTH,  # IP writes its header there: no copy
        )
        self.ip.tcp_input = self.tcp.receive
        # ICMP errors about TCP segments, and the path MTUs they teach (RFC 1191).
        self.ip.tcp_error = self.tcp.receive_icmp_error
        self.tcp.path_mtu = self.ip.pmtu.lookup_until
        self.tcp.lower_path_mtu = self.ip.pmtu.lower

    def receive(self, packet: Buffer, now: float = 0.0, checksum_ok: bool = False) -> None:
        self.ip.receive(packet, now, checksum_ok)

    def next_deadline(self) -> float | None:
        """The earliest timer of all: the connections' and reassembly's."""
        tcp = self.tcp.next_deadline()
        ip = self.ip.next_deadline()
        if ip is None:
            return tcp
        return ip if tcp is None or ip < tcp else tcp

    def handle_timers(self, now: float) -> None:
        """Fire every timer due by `now`."""
        self.tcp.handle_timers(now)
        self.ip.handle_timers(now)

    def connect(self, remote: int, remote_port: int, now: float) -> TcpConnection:
        """Active OPEN, refused at once (OSError ENETUNREACH) for an address no
        connection may be made with (IPv4Layer.check_destination)."""
        self.ip.check_destination(remote)
        return self.tcp.connect(remote, remote_port, now)
