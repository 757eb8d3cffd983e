"""IPv4's per-packet shortcuts write and check exactly what the general code
does: the header IP output writes in place (its checksum summed from the
fields) is build_ipv4_in_place's, byte for byte, and IP input's header
checksum check agrees with the C core's sum on every header."""

from __future__ import annotations

import random

from ustack.stack import Stack
from ustack.wire.address import parse_address
from ustack.wire.checksum import prefix_checksum
from ustack.wire.ipv4 import DONT_FRAGMENT
from ustack.wire.ipv4 import ECN_CE
from ustack.wire.ipv4 import ECN_ECT0
from ustack.wire.ipv4 import ECN_NOT_ECT
from ustack.wire.ipv4 import IPV4_FIXED
from ustack.wire.ipv4 import IPV4_MIN_HEADER_LENGTH
from ustack.wire.ipv4 import PROTO_TCP
from ustack.wire.ipv4 import PROTO_UDP
from ustack.wire.ipv4 import build_ipv4_in_place

OURS = parse_address("198.18.0.2")
PEER = parse_address("198.18.0.1")


def _stack() -> tuple[Stack, list[bytes]]:
    sent: list[bytes] = []

    def transmit(packet: bytes | bytearray, gso_size: int = 0) -> bool:
        sent.append(bytes(packet))
        return True

    return Stack(OURS, transmit), sent


def test_output_header_is_build_ipv4_in_place_byte_for_byte() -> None:
    stack, sent = _stack()
    rng = random.Random(18)
    for _ in range(500):
        dst = rng.choice((PEER, rng.randrange(1 << 24, 224 << 24), 0xFFFFFFFE))
        protocol = rng.choice((PROTO_TCP, PROTO_UDP, rng.randrange(256)))
        ecn = rng.choice((ECN_NOT_ECT, ECN_ECT0, ECN_CE))
        body = rng.randbytes(rng.randrange(0, 1481))
        stack.ip.send_in_place(dst, bytearray(IPV4_MIN_HEADER_LENGTH) + body, 0, protocol, ecn)
        packet = sent.pop()
        identification = IPV4_FIXED.unpack_from(packet)[3]
        expected = bytearray(IPV4_MIN_HEADER_LENGTH) + body
        build_ipv4_in_place(
            expected, src=OURS, dst=dst, protocol=protocol, ttl=64,
            identification=identification, ecn=ecn,
            flags_fragment=0 if protocol == PROTO_UDP else DONT_FRAGMENT,  # UDP: DF clear
        )  # fmt: skip
        assert packet == expected
        assert prefix_checksum(packet, IPV4_MIN_HEADER_LENGTH) == 0


def test_input_header_checksum_agrees_with_the_c_core() -> None:
    stack, _ = _stack()
    rng = random.Random(1624)
    expected_bad = 0
    for trial in range(2000):
        packet = bytearray(IPV4_MIN_HEADER_LENGTH + 8)  # a UDP header's worth
        build_ipv4_in_place(
            packet, src=PEER, dst=OURS, protocol=PROTO_UDP, ttl=rng.randrange(1, 256),
            identification=rng.randrange(1 << 16), ecn=rng.randrange(4),
        )  # fmt: skip
        if trial % 2:
            # A random checksum field (0 and 0xFFFF among them): bad unless the
            # C core's sum says it is good.
            packet[10:12] = rng.choice((0, 0xFFFF, rng.randrange(1 << 16))).to_bytes(2, "big")
        expected_bad += prefix_checksum(packet, IPV4_MIN_HEADER_LENGTH) != 0
        stack.receive(bytes(packet), 0.0)
    assert expected_bad > 900
    assert stack.counters["ip.drop.ipv4-bad-checksum"] == expected_bad
