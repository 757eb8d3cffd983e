"""Path MTU per destination, learnt from ICMP "fragmentation needed" (RFC 1191).

Sans-I/O: every call carries `now` (the stack's clock); an entry expires on
its own, so a path that widened again is used at its full MTU after
`expires` seconds (RFC 1191 6.3 suggests 10 minutes; Linux's mtu_expires is
600 s). The cache is bounded: the entry that expires first gives way.
"""

from __future__ import annotations

# RFC 1191 7, Table 7-1: the plateaus to try when a router sends the old-style
# message without the next-hop MTU (RFC 1191 5): the largest below the
# datagram that did not fit.
PLATEAUS = (65535, 32000, 17914, 8166, 4352, 2002, 1492, 1006, 508, 296, 68)
MIN_IPV4_MTU = 68  # RFC 791: every IPv4 link carries 68 bytes unfragmented
DEFAULT_MIN_PMTU = 552  # Linux's min_pmtu: a smaller MTU from an ICMP is taken as this
DEFAULT_EXPIRES = 600.0  # Linux's mtu_expires (RFC 1191 6.3: "10 minutes")
DEFAULT_MAX_ENTRIES = 4096


def plateau_below(total_length: int) -> int:
    """RFC 1191 5: the next plateau below the quoted datagram's length."""
    for plateau in PLATEAUS:
        if plateau < total_length:
            return plateau
    return MIN_IPV4_MTU


class PmtuCache:
    """destination -> (path MTU, when it expires)."""

    def __init__(
        self,
        link_mtu: int,
        min_pmtu: int = DEFAULT_MIN_PMTU,
        expires: float = DEFAULT_EXPIRES,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        self.link_mtu = link_mtu
        self.min_pmtu = max(min_pmtu, MIN_IPV4_MTU)
        self.expires = expires
        self.max_entries = max_entries
        self._entries: dict[int, tuple[int, float]] = {}

    def lookup(self, dst: int, now: float) -> int:
        """The path MTU to `dst`: the learnt one until it expires, else the link's."""
        return self.lookup_until(dst, now)[0]

    def lookup_until(self, dst: int, now: float) -> tuple[int, float | None]:
        """The path MTU to `dst` and when what was learnt expires (None: the
        link's MTU, nothing learnt)."""
        entry = self._entries.get(dst)
        if entry is None:
            return self.link_mtu, None
        if now >= entry[1]:
            del self._entries[dst]
            return self.link_mtu, None
        return entry

    @staticmethod
    def candidate(next_hop_mtu: int, quoted_total_length: int) -> int:
        """The MTU an ICMP "fragmentation needed" stands for: its next-hop MTU,
        or (old-style routers send 0) the plateau below the datagram that did
        not fit (RFC 1191 5)."""
        if next_hop_mtu >= MIN_IPV4_MTU:
            return next_hop_mtu
        return plateau_below(quoted_total_length)

    def lower(self, dst: int, mtu: int, now: float) -> int | None:
        """Learn `mtu` for `dst` if it is lower than the path MTU in use (a
        path MTU never grows from an ICMP: RFC 1191 6.1), floored at min_pmtu
        (Linux: a smaller one is taken as min_pmtu, so a forged tiny MTU
        cannot shred the traffic); the new path MTU, or None if nothing
        changed."""
        mtu = max(mtu, self.min_pmtu)
        current = self.lookup(dst, now)
        if mtu >= current:
            return None
        entries = self._entries
        if dst not in entries and len(entries) >= self.max_entries:
            del entries[min(entries, key=lambda key: entries[key][1])]
        entries[dst] = (mtu, now + self.expires)
        return mtu

    def entries(self, now: float) -> dict[int, tuple[int, float]]:
        """Live entries: destination -> (path MTU, seconds left)."""
        return {
            dst: (mtu, until - now) for dst, (mtu, until) in self._entries.items() if until > now
        }

    def __len__(self) -> int:
        return len(self._entries)
