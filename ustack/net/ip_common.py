"""What the IPv4 and IPv6 layers share (issue 15: the code once for both
families): output (send, send_in_place and the tail every datagram leaves
by, around the family's header), the parse-or-drop helper, the ICMP rate
limit and address rules at the moment an error is to go, UDP's closed ports,
TCP's view of an ICMP error's quote, the destinations no connection may be
opened to, and the timers.

Each layer sets the class attributes that name its counters and layers, and
writes its own header (`_write_header`, `_send_fragments`).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from ipaddress import IPv4Network
from ipaddress import IPv6Network
from typing import TypeVar

from ustack.counters import Counters
from ustack.net.fragments import FragmentFamily
from ustack.net.fragments import FragmentLimits
from ustack.net.fragments import Reassembly
from ustack.net.pmtu import DEFAULT_MIN_PMTU
from ustack.net.pmtu import PmtuCache
from ustack.net.ratelimit import IcmpLimits
from ustack.net.ratelimit import IcmpRateLimiter
from ustack.trace.records import PacketTap
from ustack.trace.vocabulary import DropReason
from ustack.trace.vocabulary import Layer
from ustack.trace.vocabulary import Rule
from ustack.wire.address import format_address
from ustack.wire.checksum import Buffer
from ustack.wire.checksum import transport_checksum
from ustack.wire.errors import MalformedPacket
from ustack.wire.icmp import REASSEMBLY_TIME_EXCEEDED
from ustack.wire.icmp import Quote
from ustack.wire.ipv4 import ECN_NOT_ECT
from ustack.wire.ipv4 import PROTO_TCP
from ustack.wire.ipv4 import PROTO_UDP
from ustack.wire.udp import parse_udp

_Header = TypeVar("_Header")

# Receives an ICMP error about a TCP segment we sent: (type, code, the path
# MTU it stands for (fragmentation needed, packet too big) else 0, the quote, now).
TcpErrorInput = Callable[[int, int, int, Quote, float], None]
# The same for a quoted UDP datagram (UdpLayer.receive_icmp_error).
UdpErrorInput = TcpErrorInput

# Delivers one UDP datagram that passed IP and UDP input checks: (src, dst,
# src_port, dst_port, payload, now) -> True if an endpoint took it (else
# the port is closed: IP answers port unreachable). UdpLayer.deliver is one.
UdpInput = Callable[[int, int, int, int, memoryview, float], bool]


# Receives one TCP segment that passed IP input: (src, dst, the segment's
# bytes, now, checksum_ok: its checksum is known good, the datagram's ECN
# field, RFC 3168 5). Both layers pass all six; TcpDemux.receive is one.
TcpInput = Callable[[int, int, memoryview, float, bool, int], None]


class Unreachable(OSError):
    """An active open to an address no connection can be made with: ENETUNREACH,
    what Linux's connect() says for a broadcast or multicast address."""

    def __init__(self, address: int, why: str) -> None:
        super().__init__(errno.ENETUNREACH, f"{format_address(address)} is {why}")


class IpLayerBase:
    # Per family (IPv4Layer, IPv6Layer).
    IP_LAYER: Layer
    ICMP_LAYER: Layer
    # The counters' names, as Linux's MIBs: Ip/Ip6, Udp/Udp6, Icmp/Icmp6
    # ("ip.out" for IpOutRequests, "ip6.out"), from the family's suffix.
    COUNTER_PREFIX: str
    OUT_COUNTER: str
    PORT_UNREACHABLE_COUNTER: str
    REASSEMBLY_TIME_EXCEEDED_COUNTER: str
    ERRORS_RULE: Rule  # cited when the address rules forbid an error
    RATE_RULE: Rule  # cited when the rate limit holds one back
    # RFC 768: a zero UDP checksum means none was computed; RFC 8200 8.1:
    # IPv6 makes it mandatory, a zero one is wrong.
    UDP_ZERO_CHECKSUM_OK: bool
    HEADER_LENGTH: int  # the fixed header send() leaves room for: 20, 40
    TIME_EXCEEDED: int  # the family's ICMP type (RFC 792: 11; RFC 4443: 3)
    DEST_UNREACH: int  # the family's Destination Unreachable type (RFC 792: 3; RFC 4443: 1)
    LAST_UNREACH_CODE: int  # the last of its codes we know (RFC 1812 5.2.7.1: 15; RFC 4443 3.1: 6)

    def __init_subclass__(cls, counter_suffix: str = "", **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.COUNTER_PREFIX = f"ip{counter_suffix}"
        cls.OUT_COUNTER = f"ip{counter_suffix}.out"
        cls.PORT_UNREACHABLE_COUNTER = f"udp{counter_suffix}.out.port-unreachable"
        cls.REASSEMBLY_TIME_EXCEEDED_COUNTER = f"icmp{counter_suffix}.out.reassembly-time-exceeded"

    FRAGMENTS: FragmentFamily  # how the family's fragments are keyed and checked
    FRAGMENT_LIMITS: FragmentLimits  # the reassembly limits when none are given
    MIN_PMTU: int  # no ICMP teaches a path MTU below this (RFC 791: 68; RFC 8200 5: 1280)
    ICMPV6: bool  # the rate limit's ICMP types are ICMPv6's

    def __init__(
        self,
        address: int,
        transmit: Callable[..., bool],  # (packet) or (packet, gso_size) -> sent?
        counters: Counters,
        mtu: int = 1500,
        network: IPv4Network | IPv6Network | None = None,
        fragment_limits: FragmentLimits | None = None,
        icmp_limits: IcmpLimits | None = None,
        min_pmtu: int = DEFAULT_MIN_PMTU,
    ) -> None:
        """`network`: the link's subnet (the Linux side's); `min_pmtu`: the
        least path MTU an ICMP error may teach (Linux's min_pmtu), never
        below the family's MIN_PMTU. Each layer adds its own (IP IDs, flow
        labels, broadcasts) in _init_family."""
        self.address = address
        self.mtu = mtu
        # What ICMP taught us, per destination (RFC 1191, RFC 8201).
        self.pmtu = PmtuCache(mtu, max(min_pmtu, self.MIN_PMTU))
        self._transmit = transmit
        self._counters = counters
        self.icmp_limiter = IcmpRateLimiter(icmp_limits, ipv6=self.ICMPV6)
        self._now = 0.0  # of the packet being handled, for the trace
        self.tcp_input: TcpInput | None = None
        self.tcp_error: TcpErrorInput | None = None
        self.udp_input: UdpInput | None = None
        self.udp_error: UdpErrorInput | None = None
        self.tap: PacketTap | None = None  # sees every packet in and out (pcap)
        self.fragments = Reassembly(
            counters,
            self._send_time_exceeded,
            fragment_limits or self.FRAGMENT_LIMITS,
            self.FRAGMENTS,
        )
        self._init_family(network)

    def _init_family(self, network: IPv4Network | IPv6Network | None) -> None:
        raise NotImplementedError

    # ---- output ---------------------------------------------------------

    def send(self, dst: int, protocol: int, payload: Buffer, now: float | None = None) -> None:
        """One datagram to `dst` (ICMP, UDP), at `now` if given (an
        application's send, between packets in: the ID's clock, the tap's and
        the trace's time). Larger than the path MTU, it goes in fragments
        (RFC 791 3.2, RFC 8200 4.5). TCP sends by send_in_place, its segments
        kept under the MSS, never fragmented."""
        if now is not None:
            self._now = now
        path_mtu = self._path_mtu(dst)
        if self.HEADER_LENGTH + len(payload) > path_mtu:
            self._send_fragments(dst, protocol, payload, path_mtu)
            return
        packet = bytearray(self.HEADER_LENGTH)
        packet += payload
        self.send_in_place(dst, packet, 0, protocol)

    def send_in_place(
        self,
        dst: int,
        packet: bytearray,
        gso_size: int = 0,
        protocol: int = PROTO_TCP,
        ecn: int = ECN_NOT_ECT,
    ) -> None:
        """Like send(), for a payload that already sits behind HEADER_LENGTH
        free bytes: the header goes there, and the payload is not copied
        again. (TCP's SendSegment as it is: the TCP layer calls it for every
        segment; `ecn` is ECT(0) on its data segments when ECN was agreed,
        RFC 3168 6.1.2.)"""
        if len(packet) > self.mtu and not gso_size:
            # TCP sets DF and keeps its segments under the MSS: never fragmented.
            self._counters.drop(self.IP_LAYER, DropReason.OUT_TOO_BIG, self._now)
            return
        self._write_header(dst, packet, gso_size, protocol, ecn)
        self._put(packet, gso_size)

    def _path_mtu(self, dst: int) -> int:
        """The largest datagram to `dst` that goes whole."""
        raise NotImplementedError

    def _send_fragments(self, dst: int, protocol: int, payload: Buffer, path_mtu: int) -> None:
        raise NotImplementedError

    def _write_header(
        self, dst: int, packet: bytearray, gso_size: int, protocol: int, ecn: int
    ) -> None:
        """The family's header over the first HEADER_LENGTH bytes of `packet`."""
        raise NotImplementedError

    def _put(self, packet: bytearray, gso_size: int = 0) -> bool:
        """A datagram, header and all, to the link: seen by the tap, counted
        as sent or as dropped at a full queue."""
        sent = self._transmit(packet, gso_size) if gso_size else self._transmit(packet)
        if self.tap is not None:
            self.tap("out", bytes(packet), self._now)
        if sent:
            self._counters[self.OUT_COUNTER] += 1
        else:
            self._counters.drop(self.IP_LAYER, DropReason.OUT_QUEUE_FULL, self._now)
        return sent

    def _put_fragments(
        self,
        payload: Buffer,
        step: int,
        fragment_at: Callable[[int, memoryview, bool], bytearray],
    ) -> None:
        """The payload cut on 8-byte boundaries (`step`, a multiple of 8), each
        piece made a whole fragment by fragment_at(offset, piece, more) and
        put on the link in order; counted as Linux's FragCreates, FragOKs."""
        counters = self._counters
        prefix = self.COUNTER_PREFIX
        data = memoryview(payload)
        for offset in range(0, len(data), step):
            more = offset + step < len(data)
            if not self._put(fragment_at(offset, data[offset : offset + step], more)):
                return  # the rest is useless without this one
            counters[f"{prefix}.frag.creates"] += 1
        counters[f"{prefix}.frag.oks"] += 1

    def _parse_or_drop(
        self, parse: Callable[[memoryview], _Header], data: memoryview, layer: Layer
    ) -> _Header | None:
        """parse(data), or None with the malformed packet counted as a drop at `layer`."""
        try:
            return parse(data)
        except MalformedPacket as exc:
            self._counters.drop(layer, exc, self._now)
            return None

    def _error_may_go(self, forbidden: DropReason | None, type_: int, code: int, dst: int) -> bool:
        """An ICMP error to `dst`: False, counted, when an address rule
        (`forbidden`) or the rate limit holds it back."""
        if forbidden is not None:
            self._counters.drop(self.ICMP_LAYER, forbidden, self._now, self.ERRORS_RULE)
            return False
        return not self._icmp_rate_limited(type_, code, dst)

    def _icmp_rate_limited(self, type_: int, code: int, dst: int) -> bool:
        """Linux's icmp_ratelimit and icmp_msgs_per_sec (RFC 1812 4.3.2.8,
        RFC 4443 2.4(f)): True, and counted, when this message must not go now."""
        refused = self.icmp_limiter.allow(type_, code, dst, self._now)
        if refused is None:
            return False
        self._counters.drop(self.ICMP_LAYER, refused, self._now, self.RATE_RULE)
        return True

    def _receive_icmp_error(self, type_: int, code: int, rest: int, data: memoryview) -> None:
        """An ICMP error (RFC 1122 3.2.2.1, RFC 4443 3): to TCP or UDP if it
        quotes one of our datagrams, with the path MTU it stands for."""
        if self._error_ignored(type_, code):
            return
        quote = self._parse_or_drop(self._parse_quote, data, self.ICMP_LAYER)
        handler = None if quote is None else self._quote_handler(quote)
        if quote is None or handler is None:
            return
        handler(type_, code, self._error_path_mtu(type_, code, rest, quote), quote, self._now)

    @staticmethod
    def _parse_quote(data: Buffer) -> Quote:
        """The quoted datagram in an error's data (the family's parse_quote)."""
        raise NotImplementedError

    def _error_ignored(self, type_: int, code: int) -> bool:
        """True, counted, for an error the family does not act on: here a
        Destination Unreachable code it does not know."""
        if type_ == self.DEST_UNREACH and code > self.LAST_UNREACH_CODE:
            self._counters.drop(
                self.ICMP_LAYER, DropReason.UNHANDLED_ERROR, self._now, f"code {code}"
            )
            return True
        return False

    def _error_path_mtu(self, type_: int, code: int, rest: int, quote: Quote) -> int:
        """The path MTU a "fragmentation needed" or "packet too big" error
        teaches (`rest`: its second word); 0 for the other errors."""
        raise NotImplementedError

    def _quote_handler(self, quote: Quote) -> TcpErrorInput | None:
        """Who hears an ICMP error: TCP or UDP, if it quotes a datagram we
        sent (our address as its source) of theirs (the transport then finds
        the connection or endpoint; TCP checks the sequence number, RFC 5927
        4.1); None, counted, otherwise."""
        if quote.src != self.address:
            # Not about a datagram of ours: forged, or misrouted.
            self._counters.drop(
                self.ICMP_LAYER, DropReason.QUOTE_NOT_OURS, self._now, f"quotes {quote.src:#x}"
            )
            return None
        if quote.protocol == PROTO_TCP and self.tcp_error is not None:
            return self.tcp_error
        if quote.protocol == PROTO_UDP and self.udp_error is not None:
            return self.udp_error
        self._counters.drop(self.ICMP_LAYER, DropReason.QUOTE_UNHANDLED_PROTOCOL, self._now)
        return None

    def _receive_udp(
        self, src: int, datagram: memoryview, packet: Buffer, checksum_ok: bool
    ) -> None:
        """UDP input checks (RFC 768 length and checksum), then the datagram
        to its endpoint; a port no endpoint has is closed: ICMP port
        unreachable (RFC 1122 4.1.3.1, RFC 4443 3.1 code 4)."""
        counters = self._counters
        udp = self._parse_or_drop(parse_udp, datagram, Layer.UDP)
        if udp is None:
            return
        if not 8 <= udp.length <= len(datagram):
            counters.drop(Layer.UDP, DropReason.BAD_LENGTH, self._now)
            return
        if checksum_ok:
            bad = False
        elif udp.checksum == 0:
            bad = not self.UDP_ZERO_CHECKSUM_OK
        else:
            # Over the UDP length: IP may carry padding past it (Linux trims to it).
            bad = transport_checksum(src, self.address, PROTO_UDP, datagram[: udp.length]) != 0
        if bad:
            counters.drop(Layer.UDP, DropReason.BAD_CHECKSUM, self._now)
            return
        deliver = self.udp_input
        if deliver is not None and deliver(
            src, self.address, udp.src_port, udp.dst_port, datagram[8 : udp.length], self._now
        ):
            return
        counters[self.PORT_UNREACHABLE_COUNTER] += 1
        self._send_port_unreachable(packet)

    def _send_port_unreachable(self, packet: Buffer) -> None:
        raise NotImplementedError

    def send_icmp_error(self, type_: int, code: int, offending: Buffer, rest: int = 0) -> bool:
        raise NotImplementedError

    def _send_time_exceeded(self, first_fragment: bytes) -> None:
        """RFC 1122 3.3.2, RFC 8200 4.5: a datagram not reassembled in time
        whose first fragment came: Time Exceeded code 1 (in both families,
        RFC 792 and RFC 4443 3.3), quoting that fragment."""
        if self.send_icmp_error(self.TIME_EXCEEDED, REASSEMBLY_TIME_EXCEEDED, first_fragment):
            self._counters[self.REASSEMBLY_TIME_EXCEEDED_COUNTER] += 1

    def check_destination(self, dst: int) -> None:
        """Raise Unreachable for an address no connection may be opened to:
        the family's (_check_family_destination), or the stack's own (RFC 1122
        3.2.1.3: this stack has no loopback to reach itself through)."""
        self._check_family_destination(dst)
        if dst == self.address:
            raise Unreachable(dst, "the stack's own address: it has no loopback to reach itself")

    def _check_family_destination(self, dst: int) -> None:
        raise NotImplementedError

    def handle_timers(self, now: float) -> None:
        """The reassembly timeouts due by `now`."""
        self._now = now
        self.fragments.expire(now)

    def next_deadline(self) -> float | None:
        return self.fragments.next_deadline()
