"""Initial sequence numbers (RFC 6528, the ISN algorithm of RFC 9293 3.4.1)."""

from __future__ import annotations

import hashlib
import secrets
import struct

from ustack.tcp import seq
from ustack.wire.address import is_ipv6

_IPV4_TUPLE = struct.Struct("!IHIH")
_IPV6_TUPLE = struct.Struct("!16sH16sH")


def four_tuple_bytes(local: int, local_port: int, remote: int, remote_port: int) -> bytes:
    """The 4-tuple as the keyed hashes take it: 4-byte addresses for IPv4,
    16-byte ones for IPv6 (RFC 6528 3 hashes the whole connection-id)."""
    if is_ipv6(remote):
        return _IPV6_TUPLE.pack(
            local.to_bytes(16, "big"), local_port, remote.to_bytes(16, "big"), remote_port
        )
    return _IPV4_TUPLE.pack(local, local_port, remote, remote_port)


class IsnGenerator:
    """RFC 6528: ISN = M + F(4-tuple, secret), M a 4-microsecond clock and F
    a keyed hash, so a reopened 4-tuple gets a larger ISN than before and an
    off-path attacker cannot guess one."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(16)

    def __call__(
        self, local: int, local_port: int, remote: int, remote_port: int, now: float
    ) -> int:
        tuple_bytes = four_tuple_bytes(local, local_port, remote, remote_port)
        digest = hashlib.blake2b(tuple_bytes, key=self._secret, digest_size=4).digest()
        return (int(now * 250_000) + int.from_bytes(digest, "big")) & seq.MASK
