"""The IPv4 Identification field, per destination (RFC 6864, RFC 7739).

One global counter lets anyone who can make us answer watch it advance and
learn how much we send to others (the idle scan; RFC 7739 5). As Linux's
__ip_select_ident / ip_idents_reserve do, the counter is one of BUCKETS,
chosen by a keyed hash of (destination, source, protocol) with a key drawn
per stack: a destination's IDs still differ from one datagram to the next
(what reassembly needs, RFC 6864 4.1), and what we send elsewhere lands in
another counter. When a counter is used in a later clock tick than before, it
also jumps by a random amount below the ticks that passed (Linux: below the
jiffies elapsed), so two destinations that share a bucket cannot measure each
other's traffic exactly either.

The keyed hash of a destination is remembered in a bounded table, so the
per-packet cost is one dict lookup and a few integer operations.

IPv6's fragment header has a 32-bit Identification (RFC 8200 4.5), drawn the
same way (RFC 7739 5: not predictable): `bits=32`, addresses of 16 bytes.
"""

from __future__ import annotations

import hashlib
import random
import secrets
from collections.abc import Callable

from ustack.wire.address import is_ipv6

BUCKETS = 2048  # Linux's minimum for ip_idents (it scales with memory up to 256K)
TICKS_PER_SECOND = 1000  # the clock's grain for the random jump, as HZ=1000 jiffies
TICK = 1 / TICKS_PER_SECOND
_MAX_REMEMBERED = 4096  # hashed (dst, protocol) pairs kept; beyond, the table starts over


class IpIdentifiers:
    """next(dst, protocol, now, count) -> the first of `count` consecutive IDs
    (a GSO super-segment is cut into `count` datagrams, each its own ID)."""

    __slots__ = (
        "_address_bytes",
        "_buckets",
        "_key",
        "_mask",
        "_random_below",
        "_source",
        "_stamps",
        "_where",
    )

    def __init__(
        self,
        source: int,
        key: bytes | None = None,
        random_below: Callable[[int], int] | None = None,
        bits: int = 16,
    ) -> None:
        self._address_bytes = 16 if is_ipv6(source) else 4
        self._source = source.to_bytes(self._address_bytes, "big")
        self._mask = (1 << bits) - 1
        self._key = key or secrets.token_bytes(16)
        self._random_below = random_below or random.SystemRandom().randrange
        self._buckets = [0] * BUCKETS
        self._stamps = [-1e9] * BUCKETS  # when each counter last jumped (s); long ago
        self._where: dict[int, int] = {}  # dst << 8 | protocol -> bucket

    def bucket(self, dst: int, protocol: int) -> int:
        """Which counter (dst, our address, protocol) uses: a keyed hash
        (Linux: siphash_3u32 with net->ipv4.ip_id_key), remembered."""
        index = self._where.get(dst << 8 | protocol)
        return self._hash(dst, protocol) if index is None else index

    def _hash(self, dst: int, protocol: int) -> int:
        digest = hashlib.blake2b(
            dst.to_bytes(self._address_bytes, "big") + self._source + bytes((protocol,)),
            key=self._key,
            digest_size=4,
        ).digest()
        index = int.from_bytes(digest, "big") % BUCKETS
        where = self._where
        if len(where) >= _MAX_REMEMBERED:
            where.clear()
        where[dst << 8 | protocol] = index
        return index

    def next(self, dst: int, protocol: int, now: float, count: int = 1) -> int:
        # The per-segment path: one dict lookup, a float compare, two list
        # reads and one write.
        index = self._where.get(dst << 8 | protocol)
        if index is None:
            index = self._hash(dst, protocol)
        if now - self._stamps[index] >= TICK:
            self._jump(index, now)
        buckets = self._buckets
        first = buckets[index]
        buckets[index] = (first + count) & self._mask
        return first

    def _jump(self, index: int, now: float) -> None:
        """The first use of a counter a tick or more after its last: it moves
        on by a random amount below the ticks that passed (ip_idents_reserve)."""
        ticks = max(int((now - self._stamps[index]) * TICKS_PER_SECOND), 1)  # float rounding
        self._stamps[index] = now
        self._buckets[index] = (self._buckets[index] + self._random_below(ticks)) & self._mask
