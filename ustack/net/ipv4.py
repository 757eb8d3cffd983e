"""IPv4 input and output, ICMP echo and ICMP errors (RFC 791, 792, 1122).

Every packet that is not accepted is counted under `ip.drop.<reason>` (or the
upper layer's prefix), so a user can see exactly why it was dropped.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Network
from ipaddress import IPv6Network

from ustack.net.address_rules import icmp_error_forbidden
from ustack.net.fragments import IPV4_FAMILY
from ustack.net.fragments import FragmentLimits
from ustack.net.ip_common import IpLayerBase
from ustack.net.ip_common import Unreachable
from ustack.net.ip_id import IpIdentifiers
from ustack.net.pmtu import MIN_IPV4_MTU
from ustack.trace.vocabulary import DropReason
from ustack.trace.vocabulary import Layer
from ustack.trace.vocabulary import Rule
from ustack.wire.checksum import Buffer
from ustack.wire.checksum import internet_checksum
from ustack.wire.checksum import prefix_checksum
from ustack.wire.errors import MalformedPacket
from ustack.wire.icmp import DEST_UNREACH
from ustack.wire.icmp import ECHO_REPLY
from ustack.wire.icmp import ECHO_REQUEST
from ustack.wire.icmp import FRAG_NEEDED
from ustack.wire.icmp import PARAMETER_PROBLEM
from ustack.wire.icmp import PORT_UNREACH
from ustack.wire.icmp import PRECEDENCE_CUTOFF
from ustack.wire.icmp import SOURCE_QUENCH
from ustack.wire.icmp import TIME_EXCEEDED
from ustack.wire.icmp import Quote
from ustack.wire.icmp import build_icmp
from ustack.wire.icmp import parse_icmp
from ustack.wire.icmp import parse_quote
from ustack.wire.ipv4 import DONT_FRAGMENT
from ustack.wire.ipv4 import ECN_MASK
from ustack.wire.ipv4 import IPV4_DONT_FRAGMENT
from ustack.wire.ipv4 import IPV4_FIXED
from ustack.wire.ipv4 import IPV4_FRAGMENT_OFFSET
from ustack.wire.ipv4 import IPV4_MIN_HEADER_LENGTH
from ustack.wire.ipv4 import IPV4_MORE_FRAGMENTS
from ustack.wire.ipv4 import IPV4_PLAIN_FIRST_BYTE
from ustack.wire.ipv4 import PROTO_ICMP
from ustack.wire.ipv4 import PROTO_TCP
from ustack.wire.ipv4 import PROTO_UDP
from ustack.wire.ipv4 import build_ipv4_in_place
from ustack.wire.ipv4 import fragment_field
from ustack.wire.ipv4 import parse_ipv4

# RFC 1122 3.2.2: an ICMP error quotes the offending datagram, as much as fits
# in a 576-byte datagram (RFC 1812 4.3.2.3).
ICMP_ERROR_MAX = 576
DEFAULT_TTL = 64
# The first 16-bit word of every header we write (version, IHL 5), and the
# TTL's half of the TTL/protocol word: constants of the header checksum.
_FIRST_WORD = IPV4_PLAIN_FIRST_BYTE << 8
_TTL_WORD = DEFAULT_TTL << 8


def subnet_broadcasts(network: IPv4Network | None) -> frozenset[int]:
    """The directed broadcast of the link's subnet and its 0-host form, which
    RFC 1122 3.3.6 asks hosts to take as a broadcast too; a /31 or /32 has
    neither (RFC 3021)."""
    if network is None or network.prefixlen >= 31:
        return frozenset()
    return frozenset({int(network.network_address), int(network.broadcast_address)})


class IPv4Layer(IpLayerBase):
    IP_LAYER = Layer.IP
    ICMP_LAYER = Layer.ICMP
    ERRORS_RULE = Rule.RFC1122_ICMP_ERRORS
    RATE_RULE = Rule.RFC1812_ICMP_RATE
    UDP_ZERO_CHECKSUM_OK = True  # RFC 768: zero, the sender computed none
    HEADER_LENGTH = IPV4_MIN_HEADER_LENGTH  # what we send carries no options
    TIME_EXCEEDED = TIME_EXCEEDED
    DEST_UNREACH = DEST_UNREACH
    LAST_UNREACH_CODE = PRECEDENCE_CUTOFF

    FRAGMENTS = IPV4_FAMILY
    FRAGMENT_LIMITS = FragmentLimits()
    MIN_PMTU = MIN_IPV4_MTU
    ICMPV6 = False

    def _init_family(self, network: IPv4Network | IPv6Network | None) -> None:
        assert not isinstance(network, IPv6Network)
        # The link's subnet (the Linux side's), for its broadcast addresses.
        self.broadcasts = subnet_broadcasts(network)
        self.ip_ids = IpIdentifiers(self.address)  # per destination (RFC 6864, RFC 7739)
        self._next_ip_id = self.ip_ids.next  # bound once: the per-segment path

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
            # The common header, no options: parse_ipv4 would accept it. Per
            # packet, so one unpack, and the header checksum summed from the
            # fields (RFC 1071: the ten 16-bit words, end-around carry; valid
            # when they sum to 0xFFFF), with no call into C for 20 bytes.
            (_, tos, total_length, identification, flags_fragment, ttl, protocol, checksum,
             src, dst) = IPV4_FIXED.unpack_from(packet)  # fmt: skip
            more_fragments = (flags_fragment & IPV4_MORE_FRAGMENTS) != 0
            fragment_offset = flags_fragment & IPV4_FRAGMENT_OFFSET
            header_length = IPV4_MIN_HEADER_LENGTH
            total = (
                _FIRST_WORD + tos + total_length + identification + flags_fragment
                + (ttl << 8 | protocol) + checksum
                + (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)
            )  # fmt: skip
            total = (total & 0xFFFF) + (total >> 16)
            header_checksum_ok: bool | None = (total & 0xFFFF) + (total >> 16) == 0xFFFF
        else:
            header_checksum_ok = None  # summed below, once the lengths are checked
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
        if header_checksum_ok is None:
            header_checksum_ok = prefix_checksum(packet, header_length) == 0
        if not header_checksum_ok:
            counters.drop(Layer.IP, DropReason.IPV4_BAD_CHECKSUM, now)
            return
        if ttl == 0:
            counters.drop(Layer.IP, DropReason.IPV4_TTL_ZERO, now)
            return
        if dst != self.address:
            counters.drop(Layer.IP, DropReason.NOT_FOR_US, now)
            return
        # address_rules.is_unicast_host inlined (per packet): RFC 1122 3.2.1.3
        # rules out 0/8, 127/8, 224/4 and 240/4 (the limited broadcast too).
        first_octet = src >> 24
        if first_octet == 0 or first_octet == 127 or first_octet >= 224 or src in self.broadcasts:
            counters.drop(Layer.IP, DropReason.BAD_SOURCE, now)
            return
        if src == self.address:
            # Ours only comes back through a loop or a spoofer (Linux:
            # fib_validate_source, SKB_DROP_REASON_IP_LOCAL_SOURCE).
            counters.drop(Layer.IP, DropReason.LOCAL_SOURCE, now)
            return
        if more_fragments or fragment_offset:
            # RFC 1122 3.3.2: reassembly is a MUST; the whole datagram, once
            # complete, goes on below as if it had come in one piece.
            whole = self.fragments.add(
                packet, header_length, total_length, more_fragments, fragment_offset,
                protocol, src, dst, now,
            )  # fmt: skip
            if whole is None:
                return
            packet, total_length, checksum_ok = whole, len(whole), False
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
            if icmp.type in (DEST_UNREACH, TIME_EXCEEDED, PARAMETER_PROBLEM, SOURCE_QUENCH):
                self._receive_icmp_error(icmp.type, icmp.code, icmp.rest, message[8:])
            return
        counters["icmp.echo"] += 1
        if self._icmp_rate_limited(ECHO_REPLY, 0, src):
            return
        reply = build_icmp(type=ECHO_REPLY, code=0, rest=icmp.rest, payload=message[8:])
        # As Linux: a reply larger than the MTU (to a fragmented request) is
        # fragmented itself.
        self.send(src, PROTO_ICMP, reply)

    _parse_quote = staticmethod(parse_quote)

    def _error_ignored(self, type_: int, code: int) -> bool:
        if type_ == SOURCE_QUENCH:
            self._counters.drop(Layer.ICMP, DropReason.SOURCE_QUENCH, self._now)  # RFC 6633
            return True
        return super()._error_ignored(type_, code)

    def _error_path_mtu(self, type_: int, code: int, rest: int, quote: Quote) -> int:
        if type_ == DEST_UNREACH and code == FRAG_NEEDED:
            # RFC 1191 4: the next-hop MTU is the low 16 bits of the second word.
            return self.pmtu.candidate(rest & 0xFFFF, quote.total_length)
        return 0

    def _send_port_unreachable(self, packet: Buffer) -> None:
        self.send_icmp_error(DEST_UNREACH, PORT_UNREACH, packet)

    # ---- output ---------------------------------------------------------

    def _check_family_destination(self, dst: int) -> None:
        """A broadcast or multicast address (RFC 1122 4.2.3.10: an active
        open MUST NOT be made to one), "this host" 0/8, loopback 127/8 (RFC
        1122 3.2.1.3), a reserved 240/4 address, or the subnet's broadcasts.
        Linux answers ENETUNREACH for the broadcast, multicast, 0/8 and 240/4
        ones; for its own addresses, it has a loopback."""
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

    def _path_mtu(self, dst: int) -> int:
        # The link's MTU, as Linux fragments a reply its MTU cannot hold.
        return self.mtu

    def _send_fragments(self, dst: int, protocol: int, payload: Buffer, path_mtu: int) -> None:
        """RFC 791 3.2: the datagram cut on 8-byte boundaries, each fragment
        with the same ID, its offset, MF on all but the last, DF clear (as
        Linux sends a reply its MTU cannot hold: ip_fragment)."""
        if IPV4_MIN_HEADER_LENGTH + len(payload) > 0xFFFF:
            self._counters.drop(Layer.IP, DropReason.OUT_TOO_BIG, self._now)
            return
        identification = self._next_ip_id(dst, protocol, self._now, 1)  # one for all its fragments

        def fragment_at(offset: int, piece: memoryview, more: bool) -> bytearray:
            fragment = bytearray(IPV4_MIN_HEADER_LENGTH)
            fragment += piece
            build_ipv4_in_place(
                fragment,
                src=self.address,
                dst=dst,
                protocol=protocol,
                ttl=DEFAULT_TTL,
                identification=identification,
                flags_fragment=fragment_field(offset, more),
            )
            return fragment

        self._put_fragments(payload, (path_mtu - IPV4_MIN_HEADER_LENGTH) & ~7, fragment_at)

    def _write_header(
        self, dst: int, packet: bytearray, gso_size: int, protocol: int, ecn: int
    ) -> None:
        if not gso_size:
            # Every segment we send: the header written in one call, its
            # checksum summed from the fields in integer arithmetic (RFC
            # 1071, the ten 16-bit words folded with end-around carry), the
            # bytes build_ipv4_in_place writes (tests/unit/test_ip_output_fast.py).
            total_length = len(packet)
            if total_length > 0xFFFF:
                raise ValueError(f"IPv4 total length {total_length} exceeds 65535")
            identification = self._next_ip_id(dst, protocol, self._now, 1)
            tos = ecn & ECN_MASK  # DSCP 0
            src = self.address
            # UDP goes with DF clear, so that a narrower hop may fragment it
            # (Linux's UDP default, IP_PMTUDISC_WANT, sets DF only once path
            # MTU discovery is on the socket; ours has no PMTU feedback).
            flags = 0 if protocol == PROTO_UDP else IPV4_DONT_FRAGMENT
            total = (
                _FIRST_WORD + tos + total_length + identification + flags
                + _TTL_WORD + protocol
                + (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)
            )  # fmt: skip
            total = (total & 0xFFFF) + (total >> 16)
            total = (total & 0xFFFF) + (total >> 16)
            IPV4_FIXED.pack_into(
                packet, 0, IPV4_PLAIN_FIRST_BYTE, tos, total_length, identification,
                flags, DEFAULT_TTL, protocol, ~total & 0xFFFF, src, dst,
            )  # fmt: skip
            return
        # A GSO super-segment becomes several datagrams, one ID each.
        datagrams = 1
        if gso_size:
            tcp_header_length = (packet[IPV4_MIN_HEADER_LENGTH + 12] >> 4) * 4
            text = len(packet) - IPV4_MIN_HEADER_LENGTH - tcp_header_length
            datagrams = -(-text // gso_size)
        build_ipv4_in_place(
            packet,
            src=self.address,
            dst=dst,
            protocol=protocol,
            ttl=DEFAULT_TTL,
            identification=self._next_ip_id(dst, protocol, self._now, datagrams),
            flags_fragment=DONT_FRAGMENT,  # a GSO super-segment is TCP
            ecn=ecn,
        )

    def send_icmp_error(self, type_: int, code: int, offending: Buffer, rest: int = 0) -> bool:
        """An ICMP error about `offending` (a whole IPv4 packet we received),
        unless RFC 1122 3.2.2 forbids it or a rate limit holds it back
        (False, counted)."""
        forbidden = icmp_error_forbidden(offending, self.broadcasts)
        src = struct.unpack_from("!I", offending, 12)[0] if len(offending) >= 16 else 0
        if not self._error_may_go(forbidden, type_, code, src):
            return False
        quote = offending[: ICMP_ERROR_MAX - 20 - 8]
        self.send(src, PROTO_ICMP, build_icmp(type=type_, code=code, rest=rest, payload=quote))
        return True
