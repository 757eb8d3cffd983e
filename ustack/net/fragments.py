"""Fragment reassembly for IPv4 (RFC 791 3.2, RFC 815, RFC 1122 3.3.2) and
IPv6 (RFC 8200 4.5), sans-I/O: one engine, a FragmentFamily for what differs
(the counters' prefix, the largest datagram, how the whole one's header is made).

A datagram's fragments are held under (src, dst, protocol, ID) until they make
the whole datagram, which then goes on to its protocol like any unfragmented
one (IPv6: (src, dst, ID) per RFC 8200 4.5, the protocol slot always
NH_FRAGMENT). The policy is Linux's (net/ipv4/ip_fragment.c, inet_fragment.c,
net/ipv6/reassembly.c):

- a fragment that overlaps one already held, a second last fragment, a last
  fragment that ends elsewhere than the first one said, or data past the end
  drop the whole datagram (since FragmentSmack; RFC 5722 4 asks the same for
  IPv6). A fragment lying wholly inside bytes already held is a duplicate: it
  alone is dropped, the datagram kept (Linux: IPFRAG_DUP);
- a datagram that would exceed 65,535 bytes is dropped ("ping of death");
- 30 s (IPv4, Linux ipfrag_time; IPv6 60 s, ip6frag_time, the IPv6 layer's
  FragmentLimits) after its first fragment came, an incomplete
  datagram is dropped, with ICMP Time Exceeded code 1 quoting its first
  fragment if that one had come (RFC 792, RFC 1122 3.3.2; RFC 8200 4.5);
- all held fragments together cost at most `high_thresh` bytes (Linux's
  ipfrag_high_thresh, 4 MB), each charged its data plus FRAGMENT_OVERHEAD and
  each datagram DATAGRAM_OVERHEAD, as Linux charges an skb's truesize: a new
  fragment that does not fit evicts the oldest incomplete datagrams;
- a datagram may have at most `max_fragments` fragments (see FragmentLimits).

Bookkeeping: since overlaps are refused, the held fragments are disjoint, so a
datagram is complete exactly when its last fragment has come and the bytes
held add up to its length (RFC 815's holes are what is missing of that sum).
The fragments are kept sorted by offset, for the overlap check and the join.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

from ustack.counters import Counters
from ustack.trace.vocabulary import DropReason
from ustack.trace.vocabulary import Layer
from ustack.trace.vocabulary import Rule
from ustack.wire.checksum import Buffer
from ustack.wire.checksum import prefix_checksum
from ustack.wire.ipv6 import FRAGMENT_HEADER_LENGTH
from ustack.wire.ipv6 import IPV6_HEADER_LENGTH
from ustack.wire.ipv6 import PAYLOAD_LENGTH_OFFSET
from ustack.wire.ipv6 import remove_fragment_header

IPV4_MAX_LENGTH = 0xFFFF  # RFC 791: the total length field
# What is charged against the cap besides the data, as Linux charges an skb's
# truesize: a fragment's Python objects (the bytes object, its list slots and
# offsets), and a datagram's own (its key, its record, three lists, the first
# header). Measured with sys.getsizeof by bench/fragment_flood.py.
FRAGMENT_OVERHEAD = 128
DATAGRAM_OVERHEAD = 640
_FLAGS_FRAGMENT_OFFSET = 6  # in the IPv4 header
_TOTAL_LENGTH_OFFSET = 2
_CHECKSUM_OFFSET = 10
_ID = struct.Struct("!H")

# What _Datagram.place answers for a fragment that does not go in.
DUPLICATE = -1
OVERLAP = -2

Key = tuple[int, int, int, int]  # (src, dst, protocol, identification)


def _whole_ipv4(first_header: bytes, datagram_length: int) -> bytearray:
    """The whole datagram's header: the first fragment's (and its options)
    with its length, no MF, offset 0 (RFC 791 3.2); the checksum after."""
    whole = bytearray(first_header)
    struct.pack_into("!H", whole, _TOTAL_LENGTH_OFFSET, len(whole) + datagram_length)
    flags = struct.unpack_from("!H", whole, _FLAGS_FRAGMENT_OFFSET)[0]
    struct.pack_into("!H", whole, _FLAGS_FRAGMENT_OFFSET, flags & 0x4000)  # DF kept
    struct.pack_into("!H", whole, _CHECKSUM_OFFSET, 0)
    struct.pack_into("!H", whole, _CHECKSUM_OFFSET, prefix_checksum(whole, len(whole)))
    return whole


def _whole_ipv6(first_header: bytes, datagram_length: int) -> bytearray:
    """RFC 8200 4.5: the first fragment's unfragmentable part, its fragment
    header gone (the header before it names the fragment's next header),
    the payload length that of the whole."""
    whole = remove_fragment_header(first_header)
    payload_length = len(whole) - IPV6_HEADER_LENGTH + datagram_length
    struct.pack_into("!H", whole, PAYLOAD_LENGTH_OFFSET, payload_length)
    return whole


@dataclass(frozen=True)
class FragmentFamily:
    """What reassembly does differently for IPv4 and IPv6."""

    layer: Layer  # where drops are counted
    prefix: str  # of the counters: ip.reasm.oks, ip6.reasm.oks
    # Header bytes a fragment carries that the 16-bit length field does not
    # count: IPv6's payload length leaves out the fixed header and, once
    # whole, the fragment header is gone too.
    uncounted: int
    whole_header: Callable[[bytes, int], bytearray]  # (first header, data length)


IPV4_FAMILY = FragmentFamily(Layer.IP, "ip", 0, _whole_ipv4)
IPV6_FAMILY = FragmentFamily(
    Layer.IP6, "ip6", IPV6_HEADER_LENGTH + FRAGMENT_HEADER_LENGTH, _whole_ipv6
)


@dataclass(frozen=True)
class FragmentLimits:
    """Reassembly limits, Linux's defaults.

    `max_fragments` bounds the work and the memory overhead one datagram can
    cost. 128 lets any datagram up to 65,535 bytes through from a path whose
    MTU is at least 576 (the size every host must take, RFC 791 / RFC 1122
    3.3.2: 552 bytes a fragment, 119 fragments), and refuses floods of tiny
    fragments (8 bytes each would be 8,192 for one datagram). Linux bounds the
    same thing with its memory charge per skb and ipfrag_max_dist."""

    high_thresh: int = 4 * 1024 * 1024  # ipfrag_high_thresh
    timeout: float = 30.0  # ipfrag_time (IPv6: IPV6_FRAGMENT_LIMITS)
    max_fragments: int = 128


IPV6_FRAGMENT_LIMITS = FragmentLimits(timeout=60.0)  # ip6frag_time, RFC 8200 4.5


class _Datagram:
    """One datagram being reassembled: its fragments sorted by offset."""

    __slots__ = ("cost", "created", "ends", "first_header",
                 "length", "pieces", "received", "starts")  # fmt: skip

    def __init__(self, now: float) -> None:
        self.created = now
        self.starts: list[int] = []  # each fragment's first byte offset, sorted
        self.ends: list[int] = []  # and its end (exclusive)
        self.pieces: list[bytes] = []  # and its data
        self.received = 0  # data bytes held (the fragments are disjoint)
        self.length: int | None = None  # the payload's length, once the last fragment came
        self.first_header: bytes | None = None  # the offset-0 fragment's IP header
        self.cost = DATAGRAM_OVERHEAD  # bytes charged against the memory cap

    def place(self, start: int, end: int) -> int:
        """Where a fragment [start, end) goes in the sorted list; DUPLICATE: it
        lies wholly inside bytes already held; OVERLAP: it overlaps them."""
        starts, ends = self.starts, self.ends
        index = bisect_right(starts, start)
        before_clear = index == 0 or ends[index - 1] <= start
        after_clear = index == len(starts) or end <= starts[index]
        if before_clear and after_clear:
            return index
        # Some overlap: a duplicate if held fragments cover [start, end) without a gap.
        at = index - 1 if not before_clear else index
        cursor = start
        while cursor < end:
            if at >= len(starts) or starts[at] > cursor:
                return OVERLAP
            cursor = ends[at]
            at += 1
        return DUPLICATE


class Reassembly:
    """The datagrams being reassembled, oldest first.

    `time_exceeded(first_fragment)` sends ICMP Time Exceeded code 1 about a
    datagram that timed out, quoting its first fragment (header and data)."""

    def __init__(
        self,
        counters: Counters,
        time_exceeded: Callable[[bytes], None],
        limits: FragmentLimits | None = None,
        family: FragmentFamily = IPV4_FAMILY,
    ) -> None:
        self.limits = limits or FragmentLimits()
        self.family = family
        self._counters = counters
        self._time_exceeded = time_exceeded
        # Insertion order is creation order, and every datagram lives for the
        # same timeout: the first one is both the next to expire and the oldest.
        self.datagrams: dict[Key, _Datagram] = {}
        self.memory = 0  # bytes charged, all datagrams together

    def add(
        self,
        packet: Buffer,
        header_length: int,
        total_length: int,
        more_fragments: bool,
        offset_units: int,
        protocol: int,
        src: int,
        dst: int,
        now: float,
        identification: int | None = None,
    ) -> bytearray | None:
        """One fragment that passed IP input's checks; the whole datagram (a
        header without MF or offset, then the payload) when it completes it.
        `header_length`: where the fragment's data starts (IPv6: past its
        fragment header); `identification`: IPv6's, from the fragment header
        (IPv4's is read from the header)."""
        counters = self._counters
        family = self.family
        counters[f"{family.prefix}.reasm.reqds"] += 1
        self.expire(now)  # a datagram past its time takes no more fragments
        if identification is None:
            identification = _ID.unpack_from(packet, 4)[0]
        key = (src, dst, protocol, identification)
        start = offset_units * 8
        end = start + total_length - header_length
        if more_fragments:
            # RFC 791: every fragment but the last carries a multiple of 8
            # bytes; what is past that belongs to the next one (Linux trims;
            # the IPv6 layer refuses such a fragment before, RFC 8200 4.5).
            end &= ~7
        if end + header_length - family.uncounted > IPV4_MAX_LENGTH:
            why = f"a fragment ending at {end}: the datagram would pass 65,535 bytes"
            self._refuse(key, DropReason.FRAG_TOO_BIG, Rule.RFC791_FRAGMENTS, why, now)
            return None
        datagram = self.datagrams.get(key)
        if datagram is None:
            datagram = self.datagrams[key] = _Datagram(now)
            self.memory += datagram.cost
        index = datagram.place(start, end)
        if index == DUPLICATE and (more_fragments or end == datagram.length):
            # Linux: IPFRAG_DUP, the fragment alone is dropped.
            why = f"bytes {start}-{end} already held ({Rule.RFC5722_OVERLAP})"
            counters.drop(family.layer, DropReason.FRAG_DUPLICATE, now, why)
            return None
        refusal = self._inconsistency(datagram, start, end, more_fragments, index)
        if refusal is not None:
            self._refuse(key, *refusal, now)
            return None
        cost = end - start + FRAGMENT_OVERHEAD
        if not self._make_room(cost, key, now):
            why = "a fragment larger than the memory cap"
            self._refuse(key, DropReason.FRAG_MEMORY, Rule.RFC1122_REASSEMBLY, why, now)
            return None
        data_start = header_length
        datagram.starts.insert(index, start)
        datagram.ends.insert(index, end)
        datagram.pieces.insert(index, bytes(packet[data_start : data_start + end - start]))
        datagram.received += end - start
        datagram.cost += cost
        self.memory += cost
        if not more_fragments:
            datagram.length = end
        if start == 0:
            datagram.first_header = bytes(packet[:header_length])
        if datagram.length is None or datagram.received != datagram.length:
            return None
        return self._join(key, datagram)

    def _inconsistency(
        self, datagram: _Datagram, start: int, end: int, more_fragments: bool, index: int
    ) -> tuple[DropReason, Rule, str] | None:
        """Why a fragment (placed at `index`) cannot belong to `datagram`, if it cannot."""
        length = datagram.length
        if end <= start:
            return DropReason.FRAG_INCONSISTENT, Rule.RFC791_FRAGMENTS, "a fragment without data"
        if not more_fragments:
            # The last fragment says the datagram's length: another last
            # fragment ending elsewhere, or data held past it, contradicts it.
            if length is not None and end != length:
                why = f"a second last fragment, ending at {end}, not {length}"
                return DropReason.FRAG_INCONSISTENT, Rule.RFC5722_OVERLAP, why
            if datagram.ends and datagram.ends[-1] > end:
                why = f"data held past the last fragment's end {end}"
                return DropReason.FRAG_INCONSISTENT, Rule.RFC5722_OVERLAP, why
        elif length is not None and end > length:
            why = f"data past the end ({end} > {length})"
            return DropReason.FRAG_INCONSISTENT, Rule.RFC5722_OVERLAP, why
        if index < 0:
            return DropReason.FRAG_OVERLAP, Rule.RFC5722_OVERLAP, f"bytes {start}-{end} overlap"
        if len(datagram.starts) >= self.limits.max_fragments:
            why = f"more than {self.limits.max_fragments} fragments"
            return DropReason.FRAG_TOO_MANY, Rule.RFC1122_REASSEMBLY, why
        return None

    def _join(self, key: Key, datagram: _Datagram) -> bytearray:
        """The complete datagram, with the first fragment's header made
        whole by the family (IPv4: RFC 791 3.2; IPv6: RFC 8200 4.5)."""
        del self.datagrams[key]
        self.memory -= datagram.cost
        header = datagram.first_header
        assert header is not None  # complete: the fragment at offset 0 is held
        assert datagram.length is not None
        whole = self.family.whole_header(header, datagram.length)
        whole += b"".join(datagram.pieces)
        self._counters[f"{self.family.prefix}.reasm.oks"] += 1
        return whole

    def _refuse(self, key: Key, reason: DropReason, rule: Rule, why: str, now: float) -> None:
        """The fragment in hand and the datagram it belongs to are dropped."""
        datagram = self.datagrams.pop(key, None)
        held = 0
        if datagram is not None:
            self.memory -= datagram.cost
            held = len(datagram.starts)
        self._counters[f"{self.family.prefix}.reasm.fails"] += 1
        self._counters.drop(
            self.family.layer,
            reason,
            now,
            f"{why}: datagram dropped with {held} held fragment(s) ({rule})",
        )

    def _make_room(self, cost: int, key: Key, now: float) -> bool:
        """Evict the oldest other datagrams until `cost` more bytes fit."""
        high_thresh = self.limits.high_thresh
        datagrams = self.datagrams
        while self.memory + cost > high_thresh:
            oldest = next((k for k in datagrams if k != key), None)
            if oldest is None:
                return False
            why = f"reassembly memory over {high_thresh} bytes: the oldest evicted"
            self._refuse(oldest, DropReason.FRAG_MEMORY, Rule.RFC1122_REASSEMBLY, why, now)
        return True

    # ---- the timer -----------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        for datagram in self.datagrams.values():
            return datagram.created + self.limits.timeout
        return None

    def expire(self, now: float) -> None:
        """Drop the datagrams whose time is up (RFC 1122 3.3.2), with ICMP Time
        Exceeded code 1 when their first fragment had come (RFC 792; Linux's
        ip_expire sends it only then)."""
        timeout = self.limits.timeout
        datagrams = self.datagrams
        while datagrams:
            key, datagram = next(iter(datagrams.items()))
            if datagram.created + timeout > now:
                return
            header = datagram.first_header
            self._counters[f"{self.family.prefix}.reasm.timeout"] += 1
            why = f"incomplete after {timeout:g} s"
            self._refuse(key, DropReason.FRAG_TIMEOUT, Rule.RFC1122_REASSEMBLY, why, now)
            if header is not None:
                # (The IP layer sends it unless RFC 1122 3.2.2 forbids: never
                # an ICMP error about an ICMP error.)
                self._time_exceeded(header + datagram.pieces[0])
