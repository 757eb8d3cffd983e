"""ICMP output rate limits, with Linux's defaults (net/ipv4/icmp.c as of 6.12+).

RFC 1812 4.3.2.8 and RFC 1122 3.2.2 let a host limit the ICMP errors it
sends; Linux does it in two stages, and so does this module:

1. a global token bucket (icmp_global_allow): `msgs_per_sec` credits a second,
   at most `msgs_burst` banked; each message sent takes 0, 1 or 2 credits at
   random (1 on average), so the bucket is no clean counter an off-path
   attacker can read (SAD DNS, CVE-2020-25705);
2. a bucket per destination (inet_peer_xrlim_allow): one message per
   `ratelimit` seconds, up to XRLIM_BURST_FACTOR (6) at once after a quiet
   period.

Only the types in `ratemask` are limited (Linux's icmp_ratemask 6168:
destination unreachable, source quench, time exceeded, parameter problem),
never "fragmentation needed" (path MTU discovery must work) and never an
echo reply under the default mask. For ICMPv6 (`ipv6=True`, RFC 4443 2.4(f)
makes the limit a MUST) the types are Linux's icmpv6_ratemask default
"0-1,3-127": every error but Packet Too Big, no informational message.

The destinations are kept in a table of at most `max_peers` entries, the
least recently used giving way: a storm from spoofed sources cannot grow it,
and a forgotten destination starts again with a full burst, which the global
bucket still bounds. The clock comes in as `now` (seconds); nothing here does
I/O.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ustack.trace.vocabulary import DropReason
from ustack.wire.icmp import DEST_UNREACH
from ustack.wire.icmp import FRAG_NEEDED
from ustack.wire.icmp import NR_ICMP_TYPES
from ustack.wire.icmpv6 import PACKET_TOO_BIG
from ustack.wire.icmpv6 import is_error_type

XRLIM_BURST_FACTOR = 6  # include/net/inetpeer.h: a burst of 6 messages per destination
# inet_getpeer: a new peer's rate_last is 60 s back, so its first message
# finds the bucket full.
NEW_PEER_AGE = 60.0
# icmp_global_allow refills no more often than every HZ/50 (20 ms), and
# counts at most one second of refill.
GLOBAL_REFILL_MIN = 0.02


@dataclass(frozen=True)
class IcmpLimits:
    """The sysctls of Linux's ICMP output limits, with their defaults."""

    ratelimit: float = 1.0  # s per message to one destination (icmp_ratelimit 1000 ms); 0: off
    msgs_per_sec: int = 1000  # global refill a second (icmp_msgs_per_sec)
    msgs_burst: int = 50  # global credits banked at most (icmp_msgs_burst)
    ratemask: int = 6168  # bit N: type N limited (icmp_ratemask: types 3, 4, 11, 12)
    max_peers: int = 4096  # destinations remembered; the least recently used go first


class IcmpRateLimiter:
    """allow(type, code, dst, now) -> None when the message may go, else
    the limit that refused it (a DropReason: the ICMP drop counter's)."""

    __slots__ = ("_credit", "_peers", "_stamp", "_take", "ipv6", "limits")

    def __init__(
        self,
        limits: IcmpLimits | None = None,
        take: Callable[[int], int] | None = None,
        ipv6: bool = False,
    ) -> None:
        """`take(3)`: the credits a message costs, 0..2 (random by default;
        a test passes a fixed one); `ipv6`: the types are ICMPv6's."""
        self.limits = limits or IcmpLimits()
        self.ipv6 = ipv6
        self._take = take or random.SystemRandom().randrange
        self._credit = 0
        self._stamp: float | None = None  # the last global refill; None: a full second ago
        # dst -> (tokens, last): tokens in seconds of credit, as Linux's jiffies.
        self._peers: OrderedDict[int, tuple[float, float]] = OrderedDict()

    def limited(self, type_: int, code: int) -> bool:
        """icmpv4_mask_allow's (icmpv6_mask_allow's) negation: is this type
        subject to the limits?"""
        if self.ipv6:
            return is_error_type(type_) and type_ != PACKET_TOO_BIG
        if type_ > NR_ICMP_TYPES:
            return False
        if type_ == DEST_UNREACH and code == FRAG_NEEDED:
            return False  # "Don't limit PMTU discovery"
        return bool(self.limits.ratemask & (1 << type_))

    def allow(self, type_: int, code: int, dst: int, now: float) -> DropReason | None:
        if not self.limited(type_, code):
            return None
        if not self._global_allow(now):
            return DropReason.RATE_LIMITED_GLOBAL
        if not self._peer_allow(dst, now):
            return DropReason.RATE_LIMITED_HOST
        # icmp_global_consume: only a message that is sent costs credit.
        self._credit -= self._take(3)
        return None

    def _global_allow(self, now: float) -> bool:
        if self._credit > 0:
            return True
        limits = self.limits
        elapsed = 1.0 if self._stamp is None else min(now - self._stamp, 1.0)
        if elapsed < GLOBAL_REFILL_MIN:
            return False
        refill = int(limits.msgs_per_sec * elapsed)
        if not refill:
            return False
        self._stamp = now
        self._credit = min(self._credit + refill, limits.msgs_burst)
        return True

    def _peer_allow(self, dst: int, now: float) -> bool:
        interval = self.limits.ratelimit
        peers = self._peers
        entry = peers.get(dst)
        if entry is None:
            tokens, last = 0.0, now - NEW_PEER_AGE
            if len(peers) >= self.limits.max_peers:
                peers.popitem(last=False)
        else:
            tokens, last = entry
            peers.move_to_end(dst)
        tokens = min(tokens + max(now - last, 0.0), XRLIM_BURST_FACTOR * interval)
        allowed = tokens >= interval
        if allowed:
            tokens -= interval
        peers[dst] = (tokens, now)
        return allowed

    def __len__(self) -> int:
        """Destinations remembered."""
        return len(self._peers)
