"""SYN cookies (RFC 4987 3.6): when a listener's backlog is full, answer a SYN
without keeping any state; the ISS of the SYN,ACK carries what is needed to
rebuild the connection from the final ACK of the handshake.

The 32 bits of the cookie: 5 bits of a 64-second counter, 2 bits naming the
peer's MSS (from a table), 25 bits of a keyed hash of the 4-tuple, the
counter and the peer's ISN, so it cannot be forged off-path. What a cookie
cannot carry (window scale, SACK, timestamps) is not used on such a
connection, as in RFC 4987.
"""

from __future__ import annotations

import hashlib
import secrets
import struct

from ustack.tcp import seq
from ustack.tcp.isn import four_tuple_bytes

MSS_TABLE = (536, 1220, 1440, 1460)  # the largest entry not above the peer's MSS is sent
PERIOD = 64.0  # seconds per counter tick; a cookie is good for one or two ticks
_HASH_BITS = (1 << 25) - 1
_TICK_AND_ISN = struct.Struct("!II")


class SynCookies:
    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(16)

    def _hash(self, key: tuple[int, int, int, int], tick: int, peer_isn: int) -> int:
        data = four_tuple_bytes(*key) + _TICK_AND_ISN.pack(tick & 0xFFFFFFFF, peer_isn)
        digest = hashlib.blake2b(data, key=self._secret, digest_size=4).digest()
        return int.from_bytes(digest, "big") & _HASH_BITS

    def make(self, key: tuple[int, int, int, int], peer_isn: int, peer_mss: int, now: float) -> int:
        """The ISS for a stateless SYN,ACK. `key` is (local address, local
        port, remote address, remote port), of either family."""
        tick = int(now / PERIOD)
        index = max(i for i, mss in enumerate(MSS_TABLE) if mss <= peer_mss or i == 0)
        return ((tick & 0x1F) << 27) | (index << 25) | self._hash(key, tick, peer_isn)

    def current(self, ack: int, now: float) -> bool:
        """Whether SEG.ACK - 1 carries the counter of a cookie made now or one
        tick ago: it may be one of ours, for a SEG.SEQ we cannot check."""
        tick = int(now / PERIOD)
        return seq.add(ack, -1) >> 27 in (tick & 0x1F, (tick - 1) & 0x1F)

    def check(
        self, key: tuple[int, int, int, int], ack: int, seg_seq: int, now: float
    ) -> int | None:
        """For the ACK of a cookie SYN,ACK: the peer's MSS if the cookie
        (SEG.ACK - 1) is ours and fresh, else None."""
        cookie = seq.add(ack, -1)
        peer_isn = seq.add(seg_seq, -1)
        tick = int(now / PERIOD)
        for candidate in (tick, tick - 1):
            if (candidate & 0x1F) == cookie >> 27 and (
                self._hash(key, candidate, peer_isn) == cookie & _HASH_BITS
            ):
                return MSS_TABLE[(cookie >> 25) & 0x3]
        return None
