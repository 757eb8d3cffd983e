"""What a header costs: construct (interpreted, compiled) vs ustack's struct
codecs (ustack.wire.ipv4, .tcp) vs minimal hand-written struct code, on a
typical Linux SYN (IPv4 + TCP with options); then the calls the stack makes on
every packet, and the builders.

    python bench/headers.py [--repeats N] [--no-construct]

Every variant is checked to read the same fields before it is timed. Times are
the best of several repeats, each long enough (~0.1 s) to swamp timer noise.
"""

from __future__ import annotations

import argparse
import platform
import struct
import sys
import timeit
from collections.abc import Callable
from typing import Any

import construct

from ustack.wire.ipv4 import IPV4_HEADER
from ustack.wire.ipv4 import PROTO_TCP
from ustack.wire.ipv4 import build_ipv4
from ustack.wire.ipv4 import build_ipv4_in_place
from ustack.wire.ipv4 import ipv4_plain_fields
from ustack.wire.ipv4 import parse_ipv4
from ustack.wire.tcp import ACK
from ustack.wire.tcp import SYN
from ustack.wire.tcp import TCP_HEADER
from ustack.wire.tcp import TcpOptions
from ustack.wire.tcp import build_tcp
from ustack.wire.tcp import parse_tcp

REPEATS = 5
MIN_REPEAT_SECONDS = 0.1

SRC, DST = 0x0A000001, 0x0A000002
SYN_OPTIONS = TcpOptions(mss=1460, sack_permitted=True, timestamps=(123456, 0), window_scale=7)
TCP_SYN = build_tcp(
    src=SRC, dst=DST, src_port=40000, dst_port=80, seq=1, ack=0, flags=SYN, window=64240,
    options=SYN_OPTIONS,
)  # fmt: skip
IP_HEADER = build_ipv4(src=SRC, dst=DST, protocol=PROTO_TCP, payload_length=len(TCP_SYN))
PACKET = memoryview(IP_HEADER + TCP_SYN)
IP_BYTES = bytes(PACKET[: len(IP_HEADER)])
TCP_BYTES = bytes(PACKET[len(IP_HEADER) :])

COMPILED_IPV4 = IPV4_HEADER.compile()
COMPILED_TCP = TCP_HEADER.compile()

# --- Hand-written baselines: the layout typed in by hand, no derivation ----------------

_IPV4_BY_HAND = struct.Struct("!BBHHHBBHII")
_TCP_BY_HAND = struct.Struct("!HHIIBBHHH")
_MSS_BY_HAND = struct.Struct("!H")
_TS_BY_HAND = struct.Struct("!II")


def ipv4_by_hand(packet: memoryview) -> tuple[Any, ...]:
    vihl, tos, total, ident, frag, ttl, proto, checksum, src, dst = _IPV4_BY_HAND.unpack_from(
        packet
    )
    ihl = vihl & 0x0F
    return (
        vihl >> 4, ihl, tos >> 2, tos & 3, total, ident, (frag & 0x4000) != 0,
        (frag & 0x2000) != 0, frag & 0x1FFF, ttl, proto, checksum, src, dst,
        bytes(packet[20 : ihl * 4]),
    )  # fmt: skip


def tcp_by_hand(segment: memoryview) -> tuple[Any, ...]:
    sport, dport, seq, ack, offset, flags, window, checksum, urgent = _TCP_BY_HAND.unpack_from(
        segment
    )
    end = (offset >> 4) * 4
    mss = window_scale = timestamps = None
    sack_permitted = False
    position = 20
    while position < end:
        kind = segment[position]
        if kind == 1:
            position += 1
            continue
        if kind == 0:
            break
        length = segment[position + 1]
        if kind == 2:
            (mss,) = _MSS_BY_HAND.unpack_from(segment, position + 2)
        elif kind == 3:
            window_scale = segment[position + 2]
        elif kind == 4:
            sack_permitted = True
        elif kind == 8:
            timestamps = _TS_BY_HAND.unpack_from(segment, position + 2)
        position += length
    options = (mss, window_scale, sack_permitted, timestamps)
    return (sport, dport, seq, ack, offset >> 4, flags, window, checksum, urgent, options)


def fixed_fields_only(packet: memoryview) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The floor: two unpack_from calls, no bit splits, no options."""
    return _IPV4_BY_HAND.unpack_from(packet), _TCP_BY_HAND.unpack_from(packet, 20)


# --- The variants ----------------------------------------------------------------------

ParseVariant = tuple[str, Callable[[], Any], Callable[[], Any], Callable[[], Any]]


def both(parse_ipv4: Callable[[Any], Any], parse_tcp: Callable[[Any], Any]) -> Callable[[], Any]:
    def parse_packet() -> Any:
        ip = parse_ipv4(PACKET)
        return ip, parse_tcp(PACKET[20:])

    return parse_packet


PARSE_VARIANTS: list[ParseVariant] = [
    (
        "construct, interpreted",
        lambda: IPV4_HEADER.parse(IP_BYTES),
        lambda: TCP_HEADER.parse(TCP_BYTES),
        both(IPV4_HEADER.parse, TCP_HEADER.parse),
    ),
    (
        "construct, .compile()d",
        lambda: COMPILED_IPV4.parse(IP_BYTES),
        lambda: COMPILED_TCP.parse(TCP_BYTES),
        both(COMPILED_IPV4.parse, COMPILED_TCP.parse),
    ),
    (
        "ustack struct codec",
        lambda: parse_ipv4(IP_BYTES),
        lambda: parse_tcp(TCP_BYTES),
        both(parse_ipv4, parse_tcp),
    ),
    (
        "hand-written struct + options",
        lambda: ipv4_by_hand(PACKET),
        lambda: tcp_by_hand(PACKET[20:]),
        both(ipv4_by_hand, tcp_by_hand),
    ),
    (
        "struct.unpack_from, fixed only",
        lambda: _IPV4_BY_HAND.unpack_from(PACKET),
        lambda: _TCP_BY_HAND.unpack_from(PACKET, 20),
        lambda: fixed_fields_only(PACKET),
    ),
]

DATA_PAYLOAD = bytes(1448)
SYN_CONTAINER = TCP_HEADER.parse(TCP_BYTES)

BUILD_VARIANTS: list[tuple[str, Callable[[], Any]]] = [
    (
        "build_tcp: SYN, 5 options, no payload",
        lambda: build_tcp(
            src=SRC, dst=DST, src_port=40000, dst_port=80, seq=1, ack=0, flags=SYN,
            window=64240, options=SYN_OPTIONS,
        ),
    ),
    (
        "build_tcp: ACK, timestamps, 1448 B",
        lambda: build_tcp(
            src=SRC, dst=DST, src_port=40000, dst_port=80, seq=1, ack=1, flags=ACK,
            window=502, options=TcpOptions(timestamps=(1, 2)), payload=DATA_PAYLOAD,
        ),
    ),
    (
        "build_ipv4: 20-byte header",
        lambda: build_ipv4(src=SRC, dst=DST, protocol=PROTO_TCP, payload_length=40),
    ),
    (
        "construct build (interpreted), TCP SYN header",
        lambda: TCP_HEADER.build(SYN_CONTAINER),
    ),
]  # fmt: skip


# The calls the stack makes on every packet of a bulk transfer: IP input's
# shortcut for a plain header, TCP's parse of an ACK with NOP NOP timestamps,
# and the in-place IPv4 header of every segment sent.
ACK_SEGMENT = build_tcp(
    src=SRC, dst=DST, src_port=80, dst_port=40000, seq=1, ack=1, flags=ACK, window=502,
    options=TcpOptions(timestamps=(1, 2)),
)  # fmt: skip
ACK_PACKET = memoryview(
    build_ipv4(src=DST, dst=SRC, protocol=PROTO_TCP, payload_length=len(ACK_SEGMENT)) + ACK_SEGMENT
)
ACK_TCP = ACK_PACKET[20:]
OUTGOING = bytearray(20 + 1448 + 32)

HOT_PATH_VARIANTS: list[tuple[str, Callable[[], Any]]] = [
    ("ipv4_plain_fields: receive shortcut", lambda: ipv4_plain_fields(ACK_PACKET)),
    ("parse_ipv4: 20-byte header", lambda: parse_ipv4(ACK_PACKET)),
    ("parse_tcp: ACK, NOP NOP timestamps", lambda: parse_tcp(ACK_TCP)),
    (
        "build_ipv4_in_place: 1500 B packet",
        lambda: build_ipv4_in_place(
            OUTGOING, src=SRC, dst=DST, protocol=PROTO_TCP, ttl=64, identification=1
        ),
    ),
]


def check_variants_agree() -> None:
    """Don't time code that reads something else: compare every variant's fields."""
    fast_ip, fast_tcp = parse_ipv4(PACKET), parse_tcp(PACKET[20:])
    options = fast_tcp.options
    assert options == SYN_OPTIONS, options
    fast_tuple = (
        *fast_ip,
        *fast_tcp[:-1],
        (options.mss, options.window_scale, options.sack_permitted, options.timestamps),
    )
    assert (*ipv4_by_hand(PACKET), *tcp_by_hand(PACKET[20:])) == fast_tuple
    for schema in (IPV4_HEADER, COMPILED_IPV4):
        parsed = schema.parse(IP_BYTES)
        assert (parsed.src, parsed.dst, parsed.version_ihl.ihl) == (SRC, DST, 5)
    for schema in (TCP_HEADER, COMPILED_TCP):
        parsed = schema.parse(TCP_BYTES)
        assert parsed.offset_reserved.data_offset == fast_tcp.data_offset == 10
        assert [option.kind for option in parsed.options] == [2, 4, 8, 1, 3]
        assert parsed.options[2].body.tsval == 123456
    assert TCP_HEADER.build(SYN_CONTAINER) == TCP_BYTES
    assert BUILD_VARIANTS[0][1]() == TCP_SYN
    ack = parse_tcp(ACK_TCP)
    assert (ack.flags, ack.options) == (ACK, TcpOptions(timestamps=(1, 2)))
    assert ipv4_plain_fields(ACK_PACKET)[-3:] == (PROTO_TCP, DST, SRC)
    HOT_PATH_VARIANTS[-1][1]()
    assert parse_ipv4(OUTGOING).total_length == len(OUTGOING)


def seconds_per_call(function: Callable[[], Any], repeats: int) -> float:
    timer = timeit.Timer(function)
    number = 1
    while (elapsed := timer.timeit(number)) < MIN_REPEAT_SECONDS:
        number *= max(2, int(MIN_REPEAT_SECONDS / max(elapsed, 1e-9) * 1.2))
    best = min([elapsed, *timer.repeat(repeat=repeats - 1, number=number)])
    return best / number


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeats", type=int, default=REPEATS, help=f"best of how many (default {REPEATS})"
    )
    parser.add_argument(
        "--no-construct", action="store_true", help="skip construct's own (slow) parse and build"
    )
    args = parser.parse_args()
    repeats = max(1, args.repeats)
    check_variants_agree()
    print(
        f"ustack header benchmark: Python {platform.python_version()}, "
        f"construct {construct.__version__}, best of {repeats}"
    )
    print(
        f"packet: IPv4 header ({len(IP_HEADER)} B) + TCP SYN header ({len(TCP_SYN)} B: "
        "MSS, SACK-permitted, timestamps, NOP, window scale)"
    )
    print()
    header = (
        f"{'parse':<32} {'IPv4 us':>9} {'TCP us':>9} {'IPv4+TCP us':>12} {'IPv4+TCP calls/s':>17}"
    )
    print(header)
    print("-" * len(header))
    for name, ipv4_only, tcp_only, packet in PARSE_VARIANTS:
        if args.no_construct and name.startswith("construct"):
            continue
        ipv4_cost = seconds_per_call(ipv4_only, repeats)
        tcp_cost = seconds_per_call(tcp_only, repeats)
        packet_cost = seconds_per_call(packet, repeats)
        print(
            f"{name:<32} {ipv4_cost * 1e6:>9.2f} {tcp_cost * 1e6:>9.2f} "
            f"{packet_cost * 1e6:>12.2f} {1 / packet_cost:>17,.0f}"
        )
    print()
    for title, variants in (("per packet", HOT_PATH_VARIANTS), ("build", BUILD_VARIANTS)):
        header = f"{title:<46} {'us/call':>9} {'calls/s':>12}"
        print(header)
        print("-" * len(header))
        for name, call in variants:
            if args.no_construct and name.startswith("construct"):
                continue
            cost = seconds_per_call(call, repeats)
            print(f"{name:<46} {cost * 1e6:>9.2f} {1 / cost:>12,.0f}")
        print()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
