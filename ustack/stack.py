"""The stack: IP + TCP + UDP wired together, with no I/O of its own (sans-I/O).

Its asyncio driver is `ustack.runner.StackRunner`."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from collections.abc import Iterable

from ustack.counters import Counters
from ustack.net.fragments import FragmentLimits
from ustack.net.ip_common import Unreachable
from ustack.net.ipv4 import IPv4Layer
from ustack.net.ipv6 import IPv6Layer
from ustack.net.pmtu import DEFAULT_MIN_PMTU
from ustack.net.ratelimit import IcmpLimits
from ustack.net.udp import UdpLayer
from ustack.net.udp import UdpLimits
from ustack.tcp.connection import TcpConfig
from ustack.tcp.connection import TcpConnection
from ustack.tcp.demux import TcpDemux
from ustack.tcp.feedback import meaning
from ustack.tcp.syncookies import SynCookies
from ustack.trace.records import PacketTap
from ustack.trace.records import Tracer
from ustack.wire.address import IPV4_MAX
from ustack.wire.checksum import Buffer
from ustack.wire.ipv4 import IPV4_MIN_HEADER_LENGTH
from ustack.wire.ipv4 import PROTO_UDP
from ustack.wire.ipv6 import IPV6_MIN_MTU
from ustack.wire.ipv6 import IPV6_VERSION

DEFAULT_ADDRESS = ipaddress.IPv4Address("198.18.0.2")


def _udp_error(type_: int, code: int, ipv6: bool) -> str | None:
    """The errno name an ICMP error stands for, as for TCP (Linux's
    icmp_err_convert, icmpv6_err_convert: UDP reads the same tables)."""
    found = meaning(type_, code, ipv6)
    return None if found is None else found.error


class Stack:
    """IPv4 + ICMP + TCP + UDP for one address, and IPv6 + ICMPv6 for another
    when `address6` is given (a dual stack: TCP's listeners and UDP's wildcard
    endpoints hear both; `udp` holds the UDP endpoints). Packets
    go in through `receive` and out through the `transmit` callable; the
    caller owns all I/O."""

    def __init__(
        self,
        address: int,
        transmit: Callable[[bytes], bool],
        mtu: int = 1500,
        tcp_config: TcpConfig | None = None,
        trace: Tracer | None = None,
        isn: Callable[[int, int, int, int, float], int] | None = None,
        tap: PacketTap | None = None,
        syncookies: bool | SynCookies = True,
        network: ipaddress.IPv4Network | None = None,
        fragment_limits: FragmentLimits | None = None,
        icmp_limits: IcmpLimits | None = None,
        min_pmtu: int = DEFAULT_MIN_PMTU,
        address6: int | None = None,
        udp_limits: UdpLimits | None = None,
    ) -> None:
        """`network`: the link's subnet, whose broadcast addresses are then
        neither accepted as a source nor connected to. `fragment_limits`:
        reassembly's memory cap and timeout; `icmp_limits`: the ICMP output
        rate limits (Linux's defaults when None); `min_pmtu`: the least path
        MTU an ICMP "fragmentation needed" may teach (Linux's min_pmtu).
        `address6`: the stack's IPv6 address (None: IPv4 only); IPv6 shares
        the MTU, the fragment and ICMP limits (its path MTU never goes below
        1280, RFC 8200 5). `udp_limits`: the UDP endpoints' (UdpLimits).
        `isn`, `syncookies`: a given ISN generator or SynCookies (their
        secrets shared by the stacks that serve one address, one per queue)."""
        self.counters = Counters()
        self.counters.tracer = trace
        self.ip = IPv4Layer(
            address, transmit, self.counters, mtu, network, fragment_limits, icmp_limits, min_pmtu
        )
        self.ip.tap = tap
        self.ip6: IPv6Layer | None = None
        if address6 is not None:
            if mtu < IPV6_MIN_MTU:
                # RFC 8200 5: IPv6 needs links of 1280 bytes (Linux turns it off below).
                raise ValueError(f"IPv6 needs an MTU of {IPV6_MIN_MTU} or more, not {mtu}")
            self.ip6 = IPv6Layer(
                address6, transmit, self.counters, mtu, None, fragment_limits, icmp_limits, min_pmtu
            )
            self.ip6.tap = tap
        config = tcp_config or TcpConfig(mss=mtu - 40)
        self.tcp = TcpDemux(
            address,
            self.ip.send_in_place,
            self.counters,
            config,
            trace,
            isn,
            syncookies
            if isinstance(syncookies, SynCookies)
            else SynCookies()
            if syncookies
            else None,
            headroom=IPV4_MIN_HEADER_LENGTH,  # IP writes its header there: no copy
            address6=address6,
            send6=None if self.ip6 is None else self.ip6.send_in_place,
        )
        # ICMP errors about TCP segments, and the path MTUs they teach (RFC
        # 1191, RFC 8201), each family's from its own cache.
        self._ip_layers: tuple[IPv4Layer | IPv6Layer, ...] = (
            (self.ip,) if self.ip6 is None else (self.ip, self.ip6)
        )
        for ip in self._ip_layers:
            ip.tcp_input = self.tcp.receive
            ip.tcp_error = self.tcp.receive_icmp_error
        ip6 = self.ip6
        self.udp = UdpLayer(
            self.counters,
            address,
            lambda dst, datagram, now: self.ip.send(dst, PROTO_UDP, datagram, now=now),
            address6,
            None
            if ip6 is None
            else lambda dst, datagram, now: ip6.send(dst, PROTO_UDP, datagram, now=now),
            _udp_error,
            None if ip6 is None else ip6.pmtu.lower,
            udp_limits or UdpLimits(),
            trace,
            lambda dst: self._ip_for(dst).check_destination(dst),
        )
        for ip in self._ip_layers:
            ip.udp_input = self.udp.deliver
            ip.udp_error = self.udp.receive_icmp_error
        if self.ip6 is None:
            self.tcp.path_mtu = self.ip.pmtu.lookup_until
            self.tcp.lower_path_mtu = self.ip.pmtu.lower
        else:
            self.tcp.path_mtu = self._path_mtu
            self.tcp.lower_path_mtu = self._lower_path_mtu

    def _ip_for(self, address: int) -> IPv4Layer | IPv6Layer:
        """The layer of `address`'s family; Unreachable if the stack has none."""
        if address > IPV4_MAX:
            if self.ip6 is None:
                raise Unreachable(address, "an IPv6 address, and this stack has no IPv6")
            return self.ip6
        return self.ip

    def _path_mtu(self, dst: int, now: float) -> tuple[int, float | None]:
        return self._ip_for(dst).pmtu.lookup_until(dst, now)

    def _lower_path_mtu(self, dst: int, mtu: int, now: float) -> int | None:
        return self._ip_for(dst).pmtu.lower(dst, mtu, now)

    def receive(self, packet: Buffer, now: float = 0.0, checksum_ok: bool = False) -> None:
        """One packet of either family, by its version nibble; IPv4 input
        counts every other version (and IPv6 on an IPv4-only stack) as a drop."""
        ip6 = self.ip6
        if ip6 is not None and packet and packet[0] >> 4 == IPV6_VERSION:
            ip6.receive(packet, now, checksum_ok)
            return
        self.ip.receive(packet, now, checksum_ok)

    def receive_batch(
        self, packets: Iterable[Buffer], now: float = 0.0, checksum_ok: bool = False
    ) -> None:
        """Packets read in one wake-up: as `receive` each, but a connection
        sends one ACK for the in-order data among them, after the last (RFC
        9293 3.10.7.4, RFC 1122 4.2.3.2; Linux's GRO). A driver that reads
        packet by packet can call tcp.begin_batch() and tcp.end_batch() around
        its reads instead."""
        tcp = self.tcp
        tcp.begin_batch()
        try:
            for packet in packets:
                self.receive(packet, now, checksum_ok)
        finally:
            tcp.end_batch()

    def next_deadline(self) -> float | None:
        """The earliest timer of all: the connections' and reassembly's."""
        deadline = self.tcp.next_deadline()
        for ip in self._ip_layers:
            ip_deadline = ip.next_deadline()
            if ip_deadline is not None and (deadline is None or ip_deadline < deadline):
                deadline = ip_deadline
        return deadline

    def handle_timers(self, now: float) -> None:
        """Fire every timer due by `now`."""
        self.tcp.handle_timers(now)
        for ip in self._ip_layers:
            ip.handle_timers(now)

    def connect(
        self, remote: int, remote_port: int, now: float, config: TcpConfig | None = None
    ) -> TcpConnection:
        """Active OPEN over the family of `remote`, refused at once (OSError
        ENETUNREACH, Unreachable) for an address no connection may be made
        with (check_destination) or of a family the stack does not have."""
        self._ip_for(remote).check_destination(remote)
        return self.tcp.connect(remote, remote_port, now, config=config)
