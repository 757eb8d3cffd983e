"""IPv4 input and output, ICMP echo and ICMP errors (RFC 791, 792, 1122).

Every packet that is not accepted is counted under `ip.drop.<reason>` (or the
upper layer's prefix), so a user can see exactly why it was dropped.
"""

from __future__ import annotations

import errno
import ipaddress
import struct
from collections.abc import Callable
from typing import Protocol, TypeVar

from ustack.counters import Counters
from ustack.trace.records import PacketTap
from ustack.trace.vocabulary import DropReason, Layer
from ustack.wire.checksum import Buffer, internet_checksum, prefix_checksum, transport_checksum
from ustack.wire.errors import MalformedPacket
from ustack.wire.icmp import (
    DEST_UNREACH,
    ECHO_REPLY,
    ECHO_REQUEST,
    PORT_UNREACH,
    build_icmp,
    parse_icmp,
)
from ustack.wire.ipv4 import (
    ECN_MASK,
    ECN_NOT_ECT,
    IPV4_MIN_HEADER_LENGTH,
    IPV4_PLAIN_FIRST_BYTE,
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    build_ipv4_in_place,
    ipv4_plain_fields,
    parse_ipv4,
)
from ustack.wire.udp import parse_udp

_Header = TypeVar("_Header")


class TcpInput(Protocol):
    """Receives one TCP segment that passed IP input: (src, dst, segment
    bytes, now, checksum_ok) and its datagram's ECN field (RFC 3168 5)."""

    def __call__(
        self,
        src: int,
        dst: int,
        segment: memoryview,
        now: float,
        checksum_ok: bool = False,
        ecn: int = ECN_NOT_ECT,
    ) -> None: ...


# RFC 1122 3.2.2: an ICMP error quotes the offending datagram, as much as fits
# in a 576-byte datagram (RFC 1812 4.3.2.3).
ICMP_ERROR_MAX = 576
DEFAULT_TTL = 64


def _is_unicast_source(address: int) -> bool:
    """RFC 1122 3.2.1.3 / 3.2.2: no replies or errors to these sources (Linux's
    martian sources, ip_route_input_slow)."""
    first_octet = address >> 24
    return not (
        first_octet == 0  # "this host" (0.0.0.0) and "this network" (0/8)
        or address == 0xFFFFFFFF  # limited broadcast
        or first_octet == 127  # loopback never arrives on a wire
        or first_octet >= 224  # multicast and reserved
    )


def subnet_broadcasts(network: ipaddress.IPv4Network | None) -> frozenset[int]:
    """The directed broadcast of the link's subnet and its 0-host form, which
    RFC 1122 3.3.6 asks hosts to take as a broadcast too; a /31 or /32 has
    neither (RFC 3021)."""
    if network is None or network.prefixlen >= 31:
        return frozenset()
    return frozenset({int(network.network_address), int(network.broadcast_address)})


class Unreachable(OSError):
    """An active open to an address no connection can be made with: ENETUNREACH,
    what Linux's connect() says for a broadcast or multicast address."""

    def __init__(self, address: int, why: str) -> None:
        super().__init__(errno.ENETUNREACH, f"{ipaddress.IPv4Address(address)} is {why}")


class IPv4Layer:
    def __init__(
        self,
        address: int,
        transmit: Callable[..., bool],  # (packet) or (packet, gso_size) -> sent?
        counters: Counters,
        mtu: int = 1500,
        network: ipaddress.IPv4Network | None = None,
    ) -> None:
        self.address = address
        self.mtu = mtu
        # The link's subnet (the Linux side's), for its broadcast addresses.
        self.broadcasts = subnet_broadcasts(network)
        self._transmit = transmit
        self._counters = counters
        self._identification = 0
        self._now = 0.0  # of the packet being handled, for the trace
        self.tcp_input: TcpInput | None = None
        self.tap: PacketTap | None = None  # sees every packet in and out (pcap)

    # ---- input ----------------------------------------------------------

    def receive(self, packet: Buffer, now: float = 0.0, checksum_ok: bool = False) -> None:
        """One IPv4 packet; `checksum_ok`: its transport checksum is known
        good (the kernel's own packet, see TunLink.read), not to be checked."""
        self._now = now
        counters = self._counters
        counters["ip.in"] += 1
        if self.tap is not None:
            self.tap("in", bytes(packet), now)
        if len(packet) >= IPV4_MIN_HEADER_LENGTH and packet[0] == IPV4_PLAIN_FIRST_BYTE:
            # The common header, no options: parse_ipv4 would accept it.
            total_length, more_fragments, fragment_offset, ttl, protocol, src, dst = (
                ipv4_plain_fields(packet)
            )
            header_length = IPV4_MIN_HEADER_LENGTH
        else:
            if packet and packet[0] >> 4 == 6:
                counters.drop(Layer.IP, DropReason.IPV6_UNSUPPORTED, now)
                return
            try:
                header = parse_ipv4(packet)
            except MalformedPacket as exc:
                counters.drop(Layer.IP, exc, now)
                return
            total_length, more_fragments, fragment_offset = (
                header.total_length,
                header.more_fragments,
                header.fragment_offset,
            )
            ttl, protocol, src, dst = header.ttl, header.protocol, header.src, header.dst
            header_length = header.header_length
        if not header_length <= total_length <= len(packet):
            counters.drop(Layer.IP, DropReason.IPV4_BAD_TOTAL_LENGTH, now)
            return
        if prefix_checksum(packet, header_length) != 0:
            counters.drop(Layer.IP, DropReason.IPV4_BAD_CHECKSUM, now)
            return
        if ttl == 0:
            counters.drop(Layer.IP, DropReason.IPV4_TTL_ZERO, now)
            return
        if dst != self.address:
            counters.drop(Layer.IP, DropReason.NOT_FOR_US, now)
            return
        if not _is_unicast_source(src) or src in self.broadcasts:
            counters.drop(Layer.IP, DropReason.BAD_SOURCE, now)
            return
        if src == self.address:
            # Ours only comes back through a loop or a spoofer (Linux:
            # fib_validate_source, SKB_DROP_REASON_IP_LOCAL_SOURCE).
            counters.drop(Layer.IP, DropReason.LOCAL_SOURCE, now)
            return
        if more_fragments or fragment_offset:
            # No reassembly yet: every fragment is dropped, and counted.
            counters.drop(Layer.IP, DropReason.FRAGMENT, now)
            return
        # Bytes past total_length are link padding, not payload.
        payload = memoryview(packet)[header_length:total_length]
        if protocol == PROTO_TCP and self.tcp_input is not None:
            # The ECN field goes up with the segment: TCP echoes CE (RFC 3168 6.1.3).
            self.tcp_input(src, dst, payload, now, checksum_ok, packet[1] & ECN_MASK)
        elif protocol == PROTO_ICMP:
            self._receive_icmp(src, payload)
        elif protocol == PROTO_UDP:
            self._receive_udp(src, payload, packet[:total_length], checksum_ok)
        else:
            counters.drop(Layer.IP, DropReason.UNKNOWN_PROTOCOL, now)

    def _parse_or_drop(
        self, parse: Callable[[memoryview], _Header], data: memoryview, layer: Layer
    ) -> _Header | None:
        """parse(data), or None with the malformed packet counted as a drop at `layer`."""
        try:
            return parse(data)
        except MalformedPacket as exc:
            self._counters.drop(layer, exc, self._now)
            return None

    def _receive_icmp(self, src: int, message: memoryview) -> None:
        counters = self._counters
        icmp = self._parse_or_drop(parse_icmp, message, Layer.ICMP)
        if icmp is None:
            return
        if internet_checksum(message) != 0:
            counters.drop(Layer.ICMP, DropReason.BAD_CHECKSUM, self._now)
            return
        if icmp.type != ECHO_REQUEST:
            counters[f"icmp.in.type-{icmp.type}"] += 1
            return
        counters["icmp.echo"] += 1
        reply = build_icmp(type=ECHO_REPLY, code=0, rest=icmp.rest, payload=message[8:])
        self.send(src, PROTO_ICMP, reply)

    def _receive_udp(
        self, src: int, datagram: memoryview, packet: Buffer, checksum_ok: bool
    ) -> None:
        """No UDP sockets exist yet: every port is closed (RFC 1122 4.1.3.1)."""
        counters = self._counters
        udp = self._parse_or_drop(parse_udp, datagram, Layer.UDP)
        if udp is None:
            return
        if not 8 <= udp.length <= len(datagram):
            counters.drop(Layer.UDP, DropReason.BAD_LENGTH, self._now)
            return
        # A zero checksum means the sender computed none (RFC 768).
        if (
            not checksum_ok
            and udp.checksum
            and transport_checksum(src, self.address, PROTO_UDP, datagram) != 0
        ):
            counters.drop(Layer.UDP, DropReason.BAD_CHECKSUM, self._now)
            return
        counters["udp.out.port-unreachable"] += 1
        self.send_icmp_error(DEST_UNREACH, PORT_UNREACH, packet)

    # ---- output ---------------------------------------------------------

    def check_destination(self, dst: int) -> None:
        """Raise Unreachable for an address no connection may be opened to:
        a broadcast or multicast address (RFC 1122 4.2.3.10: an active open
        MUST NOT be made to one), "this host" 0/8, loopback 127/8 or the
        stack's own address (RFC 1122 3.2.1.3; this stack has no loopback to
        reach itself through), a reserved 240/4 address, or the subnet's
        broadcasts. Linux answers ENETUNREACH for the broadcast, multicast,
        0/8 and 240/4 ones; for its own addresses, it has a loopback."""
        first_octet = dst >> 24
        if dst == 0xFFFFFFFF or dst in self.broadcasts:
            raise Unreachable(dst, "a broadcast address (RFC 1122 4.2.3.10)")
        if 224 <= first_octet < 240:
            raise Unreachable(dst, "a multicast address (RFC 1122 4.2.3.10)")
        if first_octet >= 240:
            raise Unreachable(dst, "a reserved address (RFC 1122 3.2.1.3)")
        if first_octet == 0:
            raise Unreachable(dst, '"this host" on this network (RFC 1122 3.2.1.3)')
        if first_octet == 127:
            raise Unreachable(dst, "a loopback address (RFC 1122 3.2.1.3): this stack has none")
        if dst == self.address:
            raise Unreachable(dst, "the stack's own address: it has no loopback to reach itself")

    def send(self, dst: int, protocol: int, payload: Buffer, gso_size: int = 0) -> None:
        """One datagram to `dst`. A TCP segment larger than the MTU is allowed
        with `gso_size`: the link has it cut into segments of that size."""
        packet = bytearray(IPV4_MIN_HEADER_LENGTH)
        packet += payload
        self.send_in_place(dst, packet, gso_size, protocol)

    def send_in_place(
        self,
        dst: int,
        packet: bytearray,
        gso_size: int = 0,
        protocol: int = PROTO_TCP,
        ecn: int = ECN_NOT_ECT,
    ) -> None:
        """Like send(), for a payload that already sits behind 20 free bytes:
        the header goes there, and the payload is not copied again. (TCP's
        SendSegment as it is: the TCP layer calls it for every segment; `ecn`
        is ECT(0) on its data segments when ECN was agreed, RFC 3168 6.1.2.)"""
        if len(packet) > self.mtu and not gso_size:
            # We never fragment; TCP keeps its segments under the MSS.
            self._counters.drop(Layer.IP, DropReason.OUT_TOO_BIG, self._now)
            return
        self._identification = (self._identification + 1) & 0xFFFF
        build_ipv4_in_place(
            packet,
            src=self.address,
            dst=dst,
            protocol=protocol,
            ttl=DEFAULT_TTL,
            identification=self._identification,
            ecn=ecn,
        )
        sent = self._transmit(packet, gso_size) if gso_size else self._transmit(packet)
        if self.tap is not None:
            self.tap("out", bytes(packet), self._now)
        if sent:
            self._counters["ip.out"] += 1
        else:
            self._counters.drop(Layer.IP, DropReason.OUT_QUEUE_FULL, self._now)

    def send_icmp_error(self, type_: int, code: int, offending: Buffer, rest: int = 0) -> None:
        """An ICMP error about `offending` (a whole IPv4 packet we received)."""
        src = struct.unpack_from("!I", offending, 12)[0]
        quote = offending[: ICMP_ERROR_MAX - 20 - 8]
        self.send(src, PROTO_ICMP, build_icmp(type=type_, code=code, rest=rest, payload=quote))
