"""Initial sequence numbers (RFC 6528, the ISN algorithm of RFC 9293 3.4.1)."""

from __future__ import annotations

import hashlib
import secrets
import struct

from ustack.tcp import seq


class IsnGenerator:
    """RFC 6528: ISN = M + F(4-tuple, secret), M a 4-microsecond clock and F
    a keyed hash, so a reopened 4-tuple gets a larger ISN than before and an
    off-path attacker cannot guess one."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(16)

    def __call__(
        self, local: int, local_port: int, remote: int, remote_port: int, now: float
    ) -> int:
        tuple_bytes = struct.pack("!IHIH", local, local_port, remote, remote_port)
        digest = hashlib.blake2b(tuple_bytes, key=self._secret, digest_size=4).digest()
        return (int(now * 250_000) + int.from_bytes(digest, "big")) & seq.MASK
