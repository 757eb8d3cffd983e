"""IPv6 input and output, ICMPv6 echo and errors (RFC 8200, RFC 4443), sans-I/O.

The same interface as IPv4Layer, so the stack can hold one of each and TCP
sees no difference: addresses are ints (wire/address.py), `tcp_input` and
`tcp_error` are called as IPv4's. Every packet not accepted is counted under
`ip6.drop.<reason>` or `icmp6.drop.<reason>` (Linux's Ip6*/Icmp6* MIBs);
what IPv4 and IPv6 do alike lives once, in net/ip_common.py, net/fragments.py,
net/ratelimit.py and net/address_rules.py.

Neighbor Discovery and MLD messages the kernel sends down a TUN (router and
neighbor solicitations, MLD reports to ff02::16) are recognised and counted
(`icmp6.in.nd`, `icmp6.in.mld`), never answered: a TUN has no link layer to
resolve.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Network
from ipaddress import IPv6Network

from ustack.net.address_rules import icmpv6_error_forbidden
from ustack.net.address_rules import is_ipv6_multicast
from ustack.net.address_rules import is_ipv6_unicast_host
from ustack.net.flow_label import FlowLabels
from ustack.net.fragments import IPV6_FAMILY
from ustack.net.fragments import IPV6_FRAGMENT_LIMITS
from ustack.net.ip_common import IpLayerBase
from ustack.net.ip_common import Unreachable
from ustack.net.ip_id import IpIdentifiers
from ustack.trace.vocabulary import DropReason
from ustack.trace.vocabulary import Layer
from ustack.trace.vocabulary import Rule
from ustack.wire.checksum import Buffer
from ustack.wire.checksum import transport_checksum
from ustack.wire.errors import MalformedPacket
from ustack.wire.icmp import ICMP_HEADER_LENGTH
from ustack.wire.icmp import Quote
from ustack.wire.icmp import parse_icmp
from ustack.wire.icmpv6 import DEST_UNREACH
from ustack.wire.icmpv6 import ECHO_REPLY
from ustack.wire.icmpv6 import ECHO_REQUEST
from ustack.wire.icmpv6 import ERRONEOUS_HEADER_FIELD
from ustack.wire.icmpv6 import HEADER_CHAIN_INCOMPLETE
from ustack.wire.icmpv6 import MLD_TYPES
from ustack.wire.icmpv6 import NEIGHBOR_DISCOVERY_TYPES
from ustack.wire.icmpv6 import PACKET_TOO_BIG
from ustack.wire.icmpv6 import PARAMETER_PROBLEM
from ustack.wire.icmpv6 import PORT_UNREACH
from ustack.wire.icmpv6 import REJECT_ROUTE
from ustack.wire.icmpv6 import TIME_EXCEEDED
from ustack.wire.icmpv6 import UNRECOGNIZED_NEXT_HEADER
from ustack.wire.icmpv6 import UNRECOGNIZED_OPTION
from ustack.wire.icmpv6 import build_icmpv6
from ustack.wire.icmpv6 import is_error_type
from ustack.wire.icmpv6 import parse_quote_ipv6
from ustack.wire.ipv4 import ECN_MASK
from ustack.wire.ipv4 import PROTO_TCP
from ustack.wire.ipv4 import PROTO_UDP
from ustack.wire.ipv6 import EXTENSION_HEADERS
from ustack.wire.ipv6 import FRAGMENT_HEADER_LENGTH
from ustack.wire.ipv6 import IPV6_FIXED_HALVES
from ustack.wire.ipv6 import IPV6_HEADER_LENGTH
from ustack.wire.ipv6 import IPV6_MIN_MTU
from ustack.wire.ipv6 import IPV6_VERSION
from ustack.wire.ipv6 import NH_DESTINATION
from ustack.wire.ipv6 import NH_FRAGMENT
from ustack.wire.ipv6 import NH_HOP_BY_HOP
from ustack.wire.ipv6 import NH_ICMPV6
from ustack.wire.ipv6 import NH_NONE
from ustack.wire.ipv6 import NH_ROUTING
from ustack.wire.ipv6 import PAYLOAD_LENGTH_OFFSET
from ustack.wire.ipv6 import build_ipv6_in_place
from ustack.wire.ipv6 import fragment_header
from ustack.wire.ipv6 import parse_fragment_header
from ustack.wire.ipv6 import parse_ipv6

# RFC 4443 2.4(c): an error quotes as much of the offending packet as fits
# in the minimum MTU.
ICMPV6_ERROR_MAX = IPV6_MIN_MTU
# The options every node knows (RFC 8200 4.2): Pad1, PadN; Router Alert
# (RFC 2711), which MLD reports carry in their hop-by-hop header.
_PAD1, _PADN, _ROUTER_ALERT = 0, 1, 5
_KNOWN_OPTIONS = frozenset({_PADN, _ROUTER_ALERT})
# TCP's and UDP's source and destination ports, for the flow label (RFC 6437),
# compiled once: read for every segment sent.
_PORTS = struct.Struct("!I")
# RFC 7112 5: the smallest upper-layer header a first fragment must hold.
_UPPER_HEADER_MIN = {PROTO_TCP: 20, PROTO_UDP: 8, NH_ICMPV6: 4}


class _Refused(Exception):
    """A packet the extension-header walk refuses: its drop reason, the rule,
    and the ICMPv6 Parameter Problem to send back (code, pointer), if any."""

    def __init__(
        self, reason: DropReason, rule: Rule, why: str, problem: tuple[int, int] | None = None
    ) -> None:
        super().__init__(why)
        self.reason, self.rule, self.why, self.problem = reason, rule, why, problem


class IPv6Layer(IpLayerBase, counter_suffix="6"):
    IP_LAYER = Layer.IP6
    ICMP_LAYER = Layer.ICMP6
    ERRORS_RULE = Rule.RFC4443_ICMP_ERRORS
    RATE_RULE = Rule.RFC4443_ICMP_RATE
    UDP_ZERO_CHECKSUM_OK = False  # RFC 8200 8.1
    HEADER_LENGTH = IPV6_HEADER_LENGTH
    TIME_EXCEEDED = TIME_EXCEEDED
    DEST_UNREACH = DEST_UNREACH
    LAST_UNREACH_CODE = REJECT_ROUTE

    FRAGMENTS = IPV6_FAMILY
    FRAGMENT_LIMITS = IPV6_FRAGMENT_LIMITS
    MIN_PMTU = IPV6_MIN_MTU  # what Packet Too Big teaches, never below 1280 (RFC 8201 4)
    ICMPV6 = True

    def _init_family(self, network: IPv4Network | IPv6Network | None) -> None:
        if not is_ipv6_unicast_host(self.address):
            raise ValueError(f"{self.address:#x} is no IPv6 unicast address (RFC 4291 2.5.5)")
        # 32-bit fragment IDs, per destination and unpredictable (RFC 7739).
        self.fragment_ids = IpIdentifiers(self.address, bits=32)
        self.flow_labels = FlowLabels(self.address)  # RFC 6437
        # The solicited-node multicast address of ours (RFC 4291 2.7.1).
        self.solicited_node = 0xFF02_0000_0000_0000_0000_0001_FF00_0000 | self.address & 0xFFFFFF

    # ---- input ----------------------------------------------------------

    def receive(self, packet: Buffer, now: float = 0.0, checksum_ok: bool = False) -> None:
        """One IPv6 packet; `checksum_ok`: its transport checksum is known good."""
        self._now = now
        counters = self._counters
        counters["ip6.in"] += 1
        if self.tap is not None:
            self.tap("in", bytes(packet), now)
        if len(packet) < IPV6_HEADER_LENGTH or packet[0] >> 4 != IPV6_VERSION:
            try:
                parse_ipv6(packet)
            except MalformedPacket as exc:
                counters.drop(Layer.IP6, exc, now)
            return
        _, payload_length, next_header, _, src_high, src_low, dst_high, dst_low = (
            IPV6_FIXED_HALVES.unpack_from(packet)
        )
        total_length = IPV6_HEADER_LENGTH + payload_length
        if total_length > len(packet):
            why = f"payload length {payload_length}, {len(packet) - 40} bytes came"
            counters.drop(Layer.IP6, DropReason.IPV6_BAD_PAYLOAD_LENGTH, now, why)
            return
        src = src_high << 64 | src_low
        dst = dst_high << 64 | dst_low
        # (The hop limit is a forwarder's to decrement: a host takes any, as
        # Linux's ip6_rcv_core. ND's own 255, RFC 4861 7.1, would matter to a
        # node that acts on ND; this one only counts it.)
        # Per packet, so address_rules' tests are inlined: is_ipv6_multicast
        # (ff00::/8, RFC 4291 2.7) and is_ipv6_unicast_host's embedded IPv4
        # ranges (::/96, ::ffff:0:0/96, RFC 4291 2.5.5).
        multicast = dst >> 120 == 0xFF
        if dst != self.address and not multicast:
            counters.drop(Layer.IP6, DropReason.NOT_FOR_US, now)
            return
        if src >> 120 == 0xFF or (src >> 32 in (0, 0xFFFF) and not (src == 0 and multicast)):
            # The unspecified source is a node that has no address yet:
            # DAD's solicitations and MLD reports to a group (RFC 4861 7.2.2, RFC 3810 5.2.13).
            why = f"source {src:#x} ({Rule.RFC4291_ADDRESSES})"
            counters.drop(Layer.IP6, DropReason.BAD_SOURCE, now, why)
            return
        if src == self.address:
            counters.drop(Layer.IP6, DropReason.LOCAL_SOURCE, now)
            return
        if next_header == PROTO_TCP and not multicast and self.tcp_input is not None:
            # No extension header, TCP next (every segment of a connection):
            # what _walk does for it, without the walk (RFC 8200 4.1).
            ecn = (packet[1] >> 4) & ECN_MASK  # the traffic class's low bits (RFC 3168 5)
            payload = memoryview(packet)[IPV6_HEADER_LENGTH:total_length]
            self.tcp_input(src, dst, payload, now, checksum_ok, ecn)
            return
        try:
            self._walk(packet, total_length, src, dst, multicast, checksum_ok)
        except _Refused as refused:
            counters.drop(Layer.IP6, refused.reason, now, f"{refused.why} ({refused.rule})")
            if refused.problem is not None:
                code, pointer = refused.problem
                self.send_icmp_error(PARAMETER_PROBLEM, code, packet[:total_length], pointer)

    def _walk(
        self,
        packet: Buffer,
        total_length: int,
        src: int,
        dst: int,
        multicast: bool,
        checksum_ok: bool,
    ) -> None:
        """RFC 8200 4.1: the extension headers in order, then the upper layer
        they lead to (dispatched here, after the loop: the packet, its length
        and checksum_ok are those of the reassembled datagram if it was one)."""
        next_header, offset, pointer = packet[6], IPV6_HEADER_LENGTH, 6
        while True:
            if next_header == NH_HOP_BY_HOP and offset != IPV6_HEADER_LENGTH:
                raise _Refused(
                    DropReason.HOP_BY_HOP_NOT_FIRST, Rule.RFC8200_EXTENSION_HEADERS,
                    f"hop-by-hop header at byte {offset}",
                    (UNRECOGNIZED_NEXT_HEADER, pointer),
                )  # fmt: skip
            if next_header in (NH_HOP_BY_HOP, NH_DESTINATION):
                length = self._extension_length(packet, offset, total_length)
                self._options(packet, offset, offset + length, multicast)
            elif next_header == NH_ROUTING:
                length = self._extension_length(packet, offset, total_length)
                self._routing(packet, offset)
            elif next_header == NH_FRAGMENT:
                whole = self._fragment(packet, offset, total_length, src, dst)
                if whole is None:
                    return
                if whole is not packet:
                    # Reassembled: the whole datagram's chain, walked again
                    # from the start (its fragment header is gone).
                    packet, total_length, checksum_ok = whole, len(whole), False
                    next_header, offset, pointer = packet[6], IPV6_HEADER_LENGTH, 6
                    continue
                length = FRAGMENT_HEADER_LENGTH  # atomic: on at once (RFC 6946 4)
            else:
                break  # the upper layer
            pointer = offset  # every extension header's first byte is its next header
            next_header = packet[offset]
            offset += length
        payload = memoryview(packet)[offset:total_length]
        if next_header == NH_ICMPV6:
            self._receive_icmp(src, dst, payload, multicast)
        elif next_header == NH_NONE:
            self._counters["ip6.in.no-next-header"] += 1  # RFC 8200 4.7: nothing to do
        elif multicast:
            # We join no group but for ND and MLD (Linux: no socket for it).
            self._counters.drop(Layer.IP6, DropReason.NOT_FOR_US, self._now, "a multicast group")
        elif next_header == PROTO_TCP:
            if self.tcp_input is None:  # (a layer tested alone, as IPv4's)
                self._counters.drop(Layer.IP6, DropReason.UNKNOWN_PROTOCOL, self._now)
                return
            ecn = (packet[1] >> 4) & ECN_MASK  # the traffic class's low bits (RFC 3168 5)
            self.tcp_input(src, dst, payload, self._now, checksum_ok, ecn)
        elif next_header == PROTO_UDP:
            self._receive_udp(src, payload, packet[:total_length], checksum_ok)
        else:
            raise _Refused(
                DropReason.UNKNOWN_NEXT_HEADER, Rule.RFC8200_EXTENSION_HEADERS,
                f"next header {next_header} at byte {pointer}",
                (UNRECOGNIZED_NEXT_HEADER, pointer),
            )  # fmt: skip

    def _extension_length(self, packet: Buffer, offset: int, total_length: int) -> int:
        if offset + 8 > total_length:
            raise _Refused(
                DropReason.EXTENSION_HEADER_TRUNCATED, Rule.RFC8200_EXTENSION_HEADERS,
                f"an extension header at byte {offset} past the payload",
            )  # fmt: skip
        length = (packet[offset + 1] + 1) * 8
        if offset + length > total_length:
            raise _Refused(
                DropReason.EXTENSION_HEADER_TRUNCATED, Rule.RFC8200_EXTENSION_HEADERS,
                f"a {length}-byte extension header at byte {offset} past the payload",
            )  # fmt: skip
        return length

    def _options(self, packet: Buffer, start: int, end: int, multicast: bool) -> None:
        """RFC 8200 4.2: each option by its type; an unknown one by its two
        high-order bits: 00 skip, 01 discard, 10 discard and Parameter Problem
        code 2 at the option, 11 the same unless the destination is multicast."""
        position = start + 2
        while position < end:
            option = packet[position]
            if option == _PAD1:
                position += 1
                continue
            if position + 2 > end or position + 2 + packet[position + 1] > end:
                raise _Refused(
                    DropReason.EXTENSION_HEADER_TRUNCATED, Rule.RFC8200_OPTIONS,
                    f"option {option} at byte {position} past its header",
                )  # fmt: skip
            if option not in _KNOWN_OPTIONS:
                action = option >> 6
                if action:
                    why = f"unknown option {option:#04x} at byte {position}, action {action:02b}"
                    answer = action == 0b10 or (action == 0b11 and not multicast)
                    problem = (UNRECOGNIZED_OPTION, position) if answer else None
                    raise _Refused(DropReason.UNKNOWN_OPTION, Rule.RFC8200_OPTIONS, why, problem)
            position += 2 + packet[position + 1]

    def _routing(self, packet: Buffer, offset: int) -> None:
        """RFC 8200 4.4: with no segments left, the header is skipped whatever
        its type; with some, we route none (type 0 is deprecated, RFC 5095 3):
        Parameter Problem code 0 at the routing type."""
        routing_type, segments_left = packet[offset + 2], packet[offset + 3]
        if segments_left:
            raise _Refused(
                DropReason.ROUTING_HEADER, Rule.RFC5095_ROUTING,
                f"routing type {routing_type} with {segments_left} segment(s) left",
                (ERRONEOUS_HEADER_FIELD, offset + 2),
            )  # fmt: skip

    def _fragment(
        self, packet: Buffer, offset: int, total_length: int, src: int, dst: int
    ) -> Buffer | None:
        """RFC 8200 4.5: `packet` itself for an atomic fragment (RFC 6946),
        the whole datagram when this fragment completes it, else None."""
        try:
            header = parse_fragment_header(packet[:total_length], offset)
        except MalformedPacket:
            raise _Refused(
                DropReason.EXTENSION_HEADER_TRUNCATED, Rule.RFC8200_FRAGMENTS,
                f"a fragment header at byte {offset} past the payload",
            ) from None  # fmt: skip
        if not header.fragment_offset and not header.more_fragments:
            self._counters["ip6.frag.atomic"] += 1
            return packet
        data_start = offset + FRAGMENT_HEADER_LENGTH
        if header.more_fragments and (total_length - data_start) % 8:
            raise _Refused(
                DropReason.FRAG_BAD_LENGTH, Rule.RFC8200_FRAGMENTS,
                f"{total_length - data_start} bytes of fragment data, M set: not a multiple of 8",
                (ERRONEOUS_HEADER_FIELD, PAYLOAD_LENGTH_OFFSET),
            )  # fmt: skip
        if not header.fragment_offset:
            self._whole_chain(packet, header.next_header, data_start, total_length)
        return self.fragments.add(
            packet, data_start, total_length, header.more_fragments, header.fragment_offset,
            NH_FRAGMENT, src, dst, self._now, identification=header.identification,
        )  # fmt: skip

    def _whole_chain(
        self, packet: Buffer, next_header: int, offset: int, total_length: int
    ) -> None:
        """RFC 7112 5: a first fragment holds the header chain up to and
        including the upper-layer header; else Parameter Problem code 3."""
        while next_header in EXTENSION_HEADERS and next_header != NH_FRAGMENT:
            if offset + 8 > total_length:
                break
            next_header, offset = packet[offset], offset + (packet[offset + 1] + 1) * 8
        needed = _UPPER_HEADER_MIN.get(next_header, 0)
        if next_header in EXTENSION_HEADERS or offset + needed > total_length:
            raise _Refused(
                DropReason.FRAG_HEADER_CHAIN, Rule.RFC7112_HEADER_CHAIN,
                "a first fragment without the whole header chain",
                (HEADER_CHAIN_INCOMPLETE, 0),
            )  # fmt: skip

    def _receive_icmp(self, src: int, dst: int, message: memoryview, multicast: bool) -> None:
        counters = self._counters
        icmp = self._parse_or_drop(parse_icmp, message, Layer.ICMP6)
        if icmp is None:
            return
        if transport_checksum(src, dst, NH_ICMPV6, message) != 0:
            counters.drop(Layer.ICMP6, DropReason.BAD_CHECKSUM, self._now)
            return
        type_ = icmp.type
        if type_ in NEIGHBOR_DISCOVERY_TYPES:
            counters["icmp6.in.nd"] += 1
            return
        if type_ in MLD_TYPES:
            counters["icmp6.in.mld"] += 1
            return
        if multicast:
            counters.drop(Layer.ICMP6, DropReason.NOT_FOR_US, self._now, "a multicast group")
            return
        if type_ != ECHO_REQUEST:
            counters[f"icmp6.in.type-{type_}"] += 1
            if is_error_type(type_):
                self._receive_icmp_error(type_, icmp.code, icmp.rest, message[ICMP_HEADER_LENGTH:])
            return
        counters["icmp6.echo"] += 1
        if self._icmp_rate_limited(ECHO_REPLY, 0, src):
            return
        # RFC 4443 4.2: the identifier, sequence number and data, as they came.
        reply = build_icmpv6(
            src=self.address, dst=src, type=ECHO_REPLY, code=0, rest=icmp.rest,
            payload=message[ICMP_HEADER_LENGTH:],
        )  # fmt: skip
        self.send(src, NH_ICMPV6, reply)

    _parse_quote = staticmethod(parse_quote_ipv6)

    def _error_path_mtu(self, type_: int, code: int, rest: int, quote: Quote) -> int:
        if type_ == PACKET_TOO_BIG:
            # RFC 8201 4: the MTU is the whole second word, and a path MTU
            # never goes below 1280 whatever the message says.
            return max(rest, IPV6_MIN_MTU)
        return 0

    def _send_port_unreachable(self, packet: Buffer) -> None:
        self.send_icmp_error(DEST_UNREACH, PORT_UNREACH, packet)

    # ---- output ---------------------------------------------------------

    def _check_family_destination(self, dst: int) -> None:
        """Multicast (RFC 4291 2.7), ::/96 or ::ffff:0:0/96 (RFC 4291 2.5.5:
        never on the wire here)."""
        if is_ipv6_multicast(dst):
            raise Unreachable(dst, "a multicast address (RFC 4291 2.7)")
        if not is_ipv6_unicast_host(dst):
            raise Unreachable(dst, "in ::/96 or ::ffff:0:0/96 (RFC 4291 2.5.5)")

    def _path_mtu(self, dst: int) -> int:
        # RFC 8200 4.5: only the source fragments in IPv6, to the path MTU.
        return self.pmtu.lookup(dst, self._now)

    def _send_fragments(self, dst: int, protocol: int, payload: Buffer, path_mtu: int) -> None:
        """RFC 8200 4.5: the payload cut on 8-byte boundaries, each piece
        behind the fixed header and a fragment header with the same 32-bit
        ID, its offset, M on all but the last."""
        # The reassembled payload is all but the fragment header (RFC 8200
        # 4.5): up to 65,535 bytes, a UDP datagram of 65,527.
        if len(payload) > 0xFFFF:
            self._counters.drop(Layer.IP6, DropReason.OUT_TOO_BIG, self._now)
            return
        identification = self.fragment_ids.next(dst, protocol, self._now)
        label = self.flow_labels.label(dst, protocol)

        def fragment_at(offset: int, piece: memoryview, more: bool) -> bytearray:
            fragment = bytearray(IPV6_HEADER_LENGTH)
            fragment += fragment_header(protocol, offset, more, identification)
            fragment += piece
            build_ipv6_in_place(
                fragment, src=self.address, dst=dst, next_header=NH_FRAGMENT, flow_label=label
            )
            return fragment

        step = (path_mtu - IPV6_HEADER_LENGTH - FRAGMENT_HEADER_LENGTH) & ~7
        self._put_fragments(payload, step, fragment_at)

    def _write_header(
        self, dst: int, packet: bytearray, gso_size: int, protocol: int, ecn: int
    ) -> None:
        # The flow label is the flow's (RFC 6437: ports included for TCP and
        # UDP); the traffic class is DSCP 0 and `ecn` (RFC 3168 5).
        ports = 0
        if protocol in (PROTO_TCP, PROTO_UDP) and len(packet) >= IPV6_HEADER_LENGTH + 4:
            ports = _PORTS.unpack_from(packet, IPV6_HEADER_LENGTH)[0]
        label = self.flow_labels.label(dst, protocol, ports)
        build_ipv6_in_place(
            packet, src=self.address, dst=dst, next_header=protocol, flow_label=label, ecn=ecn
        )

    def send_icmp_error(self, type_: int, code: int, offending: Buffer, rest: int = 0) -> bool:
        """An ICMPv6 error about `offending` (a whole IPv6 packet we received),
        quoting as much as fits in 1280 bytes (RFC 4443 2.4(c)), unless RFC
        4443 2.4(e) forbids it or the rate limit holds it back (False, counted).
        `rest`: the second word (Parameter Problem's pointer, the MTU)."""
        forbidden = icmpv6_error_forbidden(offending, type_, code)
        src = int.from_bytes(offending[8:24], "big") if len(offending) >= 24 else 0
        if not self._error_may_go(forbidden, type_, code, src):
            return False
        quote = offending[: ICMPV6_ERROR_MAX - IPV6_HEADER_LENGTH - ICMP_HEADER_LENGTH]
        message = build_icmpv6(
            src=self.address, dst=src, type=type_, code=code, rest=rest, payload=quote
        )
        self._counters[f"icmp6.out.type-{type_}"] += 1
        self.send(src, NH_ICMPV6, message)
        return True
