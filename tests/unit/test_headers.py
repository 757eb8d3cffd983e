"""ustack.wire's ipv4, tcp, udp and icmp headers: struct formats against their
construct schemas, round trips, fast parse == construct parse, scapy as an oracle,
and malformed input mapped to the right MalformedPacket reason."""

from __future__ import annotations

import ipaddress
import logging
import re
import struct
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from construct import Container
from construct import Struct
from construct import Switch
from construct import Transformed
from construct.core import bytes2bits
from hypothesis import HealthCheck
from hypothesis import assume
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from ustack.wire.checksum import internet_checksum
from ustack.wire.checksum import transport_checksum
from ustack.wire.codec import construct_build
from ustack.wire.codec import construct_parse
from ustack.wire.errors import MalformedPacket
from ustack.wire.icmp import DEST_UNREACH
from ustack.wire.icmp import ECHO_REPLY
from ustack.wire.icmp import ECHO_REQUEST
from ustack.wire.icmp import FRAG_NEEDED
from ustack.wire.icmp import ICMP_CHECKSUM_OFFSET
from ustack.wire.icmp import ICMP_FIXED
from ustack.wire.icmp import ICMP_FIXED_FIELDS
from ustack.wire.icmp import ICMP_HEADER
from ustack.wire.icmp import ICMP_HEADER_LENGTH
from ustack.wire.icmp import PORT_UNREACH
from ustack.wire.icmp import TIME_EXCEEDED
from ustack.wire.icmp import IcmpHeader
from ustack.wire.icmp import build_icmp
from ustack.wire.icmp import parse_icmp
from ustack.wire.ipv4 import IPV4_CHECKSUM_OFFSET
from ustack.wire.ipv4 import IPV4_FIXED
from ustack.wire.ipv4 import IPV4_FIXED_FIELDS
from ustack.wire.ipv4 import IPV4_HEADER
from ustack.wire.ipv4 import IPV4_MIN_HEADER_LENGTH
from ustack.wire.ipv4 import IPV4_PLAIN_FIRST_BYTE
from ustack.wire.ipv4 import PROTO_ICMP
from ustack.wire.ipv4 import PROTO_TCP
from ustack.wire.ipv4 import PROTO_UDP
from ustack.wire.ipv4 import IPv4Header
from ustack.wire.ipv4 import build_ipv4
from ustack.wire.ipv4 import build_ipv4_in_place
from ustack.wire.ipv4 import ipv4_plain_fields
from ustack.wire.ipv4 import parse_ipv4
from ustack.wire.tcp import ACK
from ustack.wire.tcp import CWR
from ustack.wire.tcp import ECE
from ustack.wire.tcp import FIN
from ustack.wire.tcp import MSS_LENGTH
from ustack.wire.tcp import MSS_OPTION
from ustack.wire.tcp import OPT_EOL
from ustack.wire.tcp import OPT_MSS
from ustack.wire.tcp import OPT_NOP
from ustack.wire.tcp import OPT_SACK
from ustack.wire.tcp import OPT_SACK_PERMITTED
from ustack.wire.tcp import OPT_TIMESTAMPS
from ustack.wire.tcp import OPT_WINDOW_SCALE
from ustack.wire.tcp import PSH
from ustack.wire.tcp import RST
from ustack.wire.tcp import SACK_BLOCK
from ustack.wire.tcp import SACK_PERMITTED_LENGTH
from ustack.wire.tcp import SACK_PERMITTED_OPTION
from ustack.wire.tcp import SYN
from ustack.wire.tcp import TCP_CHECKSUM_OFFSET
from ustack.wire.tcp import TCP_DATA_OFFSET_BYTE
from ustack.wire.tcp import TCP_FIXED
from ustack.wire.tcp import TCP_FIXED_FIELDS
from ustack.wire.tcp import TCP_HEADER
from ustack.wire.tcp import TCP_MIN_HEADER_LENGTH
from ustack.wire.tcp import TCP_OPTION
from ustack.wire.tcp import TCP_OPTION_MSS
from ustack.wire.tcp import TCP_OPTION_SACK_PERMITTED
from ustack.wire.tcp import TCP_OPTION_TIMESTAMPS
from ustack.wire.tcp import TCP_OPTION_WINDOW_SCALE
from ustack.wire.tcp import TCP_SACK_BLOCK
from ustack.wire.tcp import TIMESTAMPS_LENGTH
from ustack.wire.tcp import TIMESTAMPS_OPTION
from ustack.wire.tcp import URG
from ustack.wire.tcp import WINDOW_SCALE_LENGTH
from ustack.wire.tcp import WINDOW_SCALE_OPTION
from ustack.wire.tcp import TcpHeader
from ustack.wire.tcp import TcpOptions
from ustack.wire.tcp import build_tcp
from ustack.wire.tcp import parse_tcp
from ustack.wire.udp import UDP_FIXED
from ustack.wire.udp import UDP_FIXED_FIELDS
from ustack.wire.udp import UDP_HEADER
from ustack.wire.udp import UDP_HEADER_LENGTH
from ustack.wire.udp import UdpHeader
from ustack.wire.udp import parse_udp

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    logging.getLogger("scapy").setLevel(logging.ERROR)
    from scapy.layers.inet import ICMP
    from scapy.layers.inet import IP
    from scapy.layers.inet import TCP
    from scapy.layers.inet import UDP
    from scapy.layers.inet import TCPOptions
    from scapy.packet import Raw

settings.register_profile(
    "headers", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("headers")

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)

SCAPY_KNOWN_OPTION_KINDS = set(TCPOptions[0])
# Kinds neither we nor scapy interpret, so both keep them as raw (kind, data).
UNKNOWN_KINDS = st.integers(9, 254).filter(lambda kind: kind not in SCAPY_KNOWN_OPTION_KINDS)

LINUX_SYN_OPTIONS = TcpOptions(mss=1460, sack_permitted=True, timestamps=(1, 2), window_scale=7)


# --- Helpers: the construct parse, turned into the fast API's shapes ---------------------


def flatten(container: Container) -> dict[str, Any]:
    """Merge the BitStruct groups into one level, as the fast NamedTuples have it."""
    flat: dict[str, Any] = {}
    for key, value in container.items():
        if key.startswith("_"):
            continue
        if isinstance(value, Container) and key != "rest":  # ICMP's rest stays nested
            flat.update(flatten(value))
        else:
            flat[key] = value
    return flat


def options_from_construct(options: list[Container]) -> TcpOptions:
    """Independent reading of the construct option list; a repeated option: last wins."""
    result = TcpOptions()
    unknown = []
    for option in options:
        kind, body = option.kind, option.body
        if kind == OPT_MSS:
            result.mss = body.mss
        elif kind == OPT_WINDOW_SCALE:
            result.window_scale = body.shift
        elif kind == OPT_SACK_PERMITTED:
            result.sack_permitted = True
        elif kind == OPT_SACK:
            result.sack_blocks = tuple((block.left, block.right) for block in body.blocks)
        elif kind == OPT_TIMESTAMPS:
            result.timestamps = (body.tsval, body.tsecr)
        elif kind not in (OPT_EOL, OPT_NOP):
            unknown.append((kind, body.data))
    result.unknown = tuple(unknown)
    return result


def ipv4_via_construct(data: bytes) -> IPv4Header:
    flat = flatten(construct_parse(IPV4_HEADER, data))
    return IPv4Header(**{name: flat[name] for name in IPv4Header._fields})


def tcp_via_construct(data: bytes) -> TcpHeader:
    flat = flatten(construct_parse(TCP_HEADER, data))
    flat["options"] = options_from_construct(flat["options"])
    return TcpHeader(**{name: flat[name] for name in TcpHeader._fields})


def udp_via_construct(data: bytes) -> UdpHeader:
    return UdpHeader(**flatten(construct_parse(UDP_HEADER, data)))


def icmp_via_construct(data: bytes) -> IcmpHeader:
    parsed = construct_parse(ICMP_HEADER, data)
    if parsed.type in (ECHO_REQUEST, ECHO_REPLY):
        rest = parsed.rest.identifier << 16 | parsed.rest.sequence
    elif parsed.type == DEST_UNREACH:
        rest = parsed.rest.unused << 16 | parsed.rest.next_hop_mtu
    else:
        rest = int.from_bytes(parsed.rest, "big")
    return IcmpHeader(parsed.type, parsed.code, parsed.checksum, rest)


def outcome(parse: Callable[[bytes], Any], data: bytes) -> tuple[str, Any]:
    """("ok", fields) or ("error", reason); anything but MalformedPacket propagates."""
    try:
        return "ok", parse(data)
    except MalformedPacket as error:
        return "error", error.reason


def encoded_options_length(options: TcpOptions) -> int:
    """The option bytes Linux would write, counted independently of the builder."""
    length = 4 if options.mss is not None else 0
    if options.timestamps is not None:
        length += 12  # SACK-permitted (or NOP NOP) + timestamps
    elif options.sack_permitted:
        length += 4
    length += 4 if options.window_scale is not None else 0
    length += 4 + 8 * len(options.sack_blocks) if options.sack_blocks else 0
    length += sum(2 + len(data) for _, data in options.unknown)
    return length + -length % 4


def small_tcp(**fields: Any) -> bytearray:
    """build_tcp from 1:1 to 2:2, seq 0, ack 0, ACK, window 1, but for `fields`."""
    defaults = {"src_port": 1, "dst_port": 2, "seq": 0, "ack": 0, "flags": ACK, "window": 1}
    return build_tcp(src=1, dst=2, **(defaults | fields))


def tcp_with_option_area(area: bytes) -> bytes:
    """A SYN whose option area is `area` (zero-padded to a word), its data offset to match."""
    area += bytes(-len(area) % 4)
    data_offset = 5 + len(area) // 4
    return struct.pack("!HHIIBBHHH", 1, 2, 3, 4, data_offset << 4, SYN, 5, 0, 0) + area


def ip_int(address: str) -> int:
    return int(ipaddress.IPv4Address(address))


def ip_str(address: int) -> str:
    return str(ipaddress.IPv4Address(address))


# --- Strategies ----------------------------------------------------------------------


@st.composite
def tcp_options(draw: st.DrawFn, unknown_kinds: st.SearchStrategy[int] = UNKNOWN_KINDS):
    options = TcpOptions(
        mss=draw(st.none() | u16),
        window_scale=draw(st.none() | u8),
        sack_permitted=draw(st.booleans()),
        sack_blocks=tuple(draw(st.lists(st.tuples(u32, u32), max_size=4))),
        timestamps=draw(st.none() | st.tuples(u32, u32)),
        unknown=tuple(draw(st.lists(st.tuples(unknown_kinds, st.binary(max_size=8)), max_size=3))),
    )
    assume(encoded_options_length(options) <= 40)
    return options


ipv4_fields = st.fixed_dictionaries(
    {
        "src": u32,
        "dst": u32,
        "protocol": u8,
        "payload_length": st.integers(0, 0xFFFF - 60),
        "ttl": u8,
        "identification": u16,
        "dont_fragment": st.booleans(),
        "dscp": st.integers(0, 63),
        "ecn": st.integers(0, 3),
        "options": st.binary(max_size=40),
    }
)

tcp_fields = st.fixed_dictionaries(
    {
        "src": u32,
        "dst": u32,
        "src_port": u16,
        "dst_port": u16,
        "seq": u32,
        "ack": u32,
        "flags": u8,
        "window": u16,
        "urgent": u16,
        "options": st.none() | tcp_options(),
        "payload": st.binary(max_size=64),
    }
)

icmp_fields = st.fixed_dictionaries(
    {"type": u8, "code": u8, "rest": u32, "payload": st.binary(max_size=64)}
)


@st.composite
def option_area(draw: st.DrawFn) -> bytes:
    """Option bytes that are mostly well formed, with the odd bad length or EOL."""
    chunks = draw(
        st.lists(
            st.one_of(
                st.just(b"\x01"),
                st.just(b"\x00"),
                st.builds(lambda mss: struct.pack("!BBH", 2, 4, mss), u16),
                st.builds(lambda shift: bytes([3, 3, shift]), u8),
                st.just(b"\x04\x02"),
                st.builds(lambda a, b: struct.pack("!BBII", 8, 10, a, b), u32, u32),
                st.builds(
                    lambda blocks: (
                        bytes([5, 2 + 8 * len(blocks)])
                        + b"".join(struct.pack("!II", *block) for block in blocks)
                    ),
                    st.lists(st.tuples(u32, u32), min_size=1, max_size=4),
                ),
                st.builds(
                    lambda kind, data: bytes([kind, 2 + len(data)]) + data,
                    st.integers(9, 255),
                    st.binary(max_size=6),
                ),
                # malformed: any kind with any length byte, then a few bytes
                st.builds(
                    lambda kind, length, tail: bytes([kind, length]) + tail,
                    st.integers(0, 12),
                    u8,
                    st.binary(max_size=4),
                ),
                st.binary(min_size=1, max_size=3),
            ),
            max_size=8,
        )
    )
    area = b"".join(chunks)[:40]
    return area + bytes(-len(area) % 4)


@st.composite
def tcp_like_bytes(draw: st.DrawFn) -> bytes:
    """A TCP header whose data offset may or may not match the bytes that follow."""
    fixed = bytearray(draw(st.binary(min_size=20, max_size=20)))
    area = draw(option_area())
    data_offset = draw(st.sampled_from([5 + len(area) // 4, *range(16)]))
    fixed[12] = data_offset << 4 | fixed[12] & 0x0F
    segment = bytes(fixed) + area + draw(st.binary(max_size=8))
    return segment[: draw(st.integers(0, len(segment)))] if draw(st.booleans()) else segment


@st.composite
def ipv4_like_bytes(draw: st.DrawFn) -> bytes:
    first = draw(st.sampled_from([0x45, 0x46, 0x4F, 0x44, 0x40, 0x65, 0x05]) | u8)
    rest = draw(st.binary(max_size=70))
    packet = bytes([first]) + rest
    return packet[: draw(st.integers(0, len(packet)))]


# --- Known answers ---------------------------------------------------------------------


def test_ipv4_known_header():
    # The classic example header (192.168.0.1 -> 192.168.0.199, UDP, checksum 0xb861).
    expected = bytes.fromhex("450000730000400040 11b861c0a80001c0a800c7".replace(" ", ""))
    built = build_ipv4(
        src=ip_int("192.168.0.1"),
        dst=ip_int("192.168.0.199"),
        protocol=PROTO_UDP,
        payload_length=0x73 - 20,
    )
    assert built == expected
    header = parse_ipv4(expected)
    assert header.checksum == 0xB861
    assert header.total_length == 0x73
    assert header.dont_fragment is True and header.more_fragments is False
    assert header.header_length == 20


def test_tcp_syn_options_in_linux_order():
    segment = small_tcp(
        src_port=40000,
        dst_port=80,
        seq=7,
        flags=SYN,
        window=64240,
        options=TcpOptions(
            mss=1460, sack_permitted=True, timestamps=(0x11223344, 0), window_scale=7
        ),
    )
    assert segment[20:] == bytes.fromhex(
        "020405b4 0402080a 11223344 00000000 01030307".replace(" ", "")
    )
    assert segment[12] >> 4 == 10
    assert transport_checksum(1, 2, PROTO_TCP, segment) == 0


def test_tcp_options_alignment_without_sack_permitted():
    segment = small_tcp(options=TcpOptions(timestamps=(5, 6), sack_blocks=((10, 20),)))
    assert segment[20:] == bytes.fromhex(
        "0101080a 00000005 00000006 0101050a 0000000a 00000014".replace(" ", "")
    )


def test_flag_and_protocol_constants():
    assert (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR) == (
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        128,
    )
    assert (PROTO_ICMP, PROTO_TCP, PROTO_UDP) == (1, 6, 17)
    assert (ECHO_REPLY, DEST_UNREACH, ECHO_REQUEST, TIME_EXCEEDED) == (0, 3, 8, 11)
    assert (PORT_UNREACH, FRAG_NEEDED) == (3, 4)


def test_fixed_layouts_have_the_rfc_sizes():
    assert IPV4_MIN_HEADER_LENGTH == 20
    assert TCP_MIN_HEADER_LENGTH == 20
    assert UDP_HEADER_LENGTH == 8
    assert ICMP_HEADER_LENGTH == 8
    assert IPV4_CHECKSUM_OFFSET == schema_offsets(IPV4_HEADER)["checksum"] == 10
    assert TCP_CHECKSUM_OFFSET == schema_offsets(TCP_HEADER)["checksum"] == 16
    assert ICMP_CHECKSUM_OFFSET == schema_offsets(ICMP_HEADER)["checksum"] == 2
    assert TCP_DATA_OFFSET_BYTE == schema_offsets(TCP_HEADER)["offset_reserved"] == 12


# --- The struct formats against their construct schemas --------------------------------
# Each header module writes out the struct format of its fixed fields next to its
# construct schema; these tests hold the two together.

FIXED_LAYOUTS = [
    pytest.param(IPV4_HEADER, IPV4_FIXED, IPV4_FIXED_FIELDS, id="ipv4"),
    pytest.param(TCP_HEADER, TCP_FIXED, TCP_FIXED_FIELDS, id="tcp"),
    pytest.param(UDP_HEADER, UDP_FIXED, UDP_FIXED_FIELDS, id="udp"),
    pytest.param(ICMP_HEADER, ICMP_FIXED, ICMP_FIXED_FIELDS, id="icmp"),
]


def schema_fields(schema: Struct) -> list[tuple[str, int]]:
    """(name, width in bytes) of each field of a schema, up to its variable-size options."""
    fields = []
    for renamed in schema.subcons:
        if renamed.name == "options":
            break
        if isinstance(renamed.subcon, Switch):  # a tagged union: every case the same width
            cases = [*renamed.subcon.cases.values(), renamed.subcon.default]
            widths = {case.sizeof() for case in cases}
            assert len(widths) == 1, (renamed.name, widths)
            fields.append((renamed.name, widths.pop()))
        else:
            fields.append((renamed.name, renamed.sizeof()))
    return fields


def schema_offsets(schema: Struct) -> dict[str, int]:
    offsets, offset = {}, 0
    for name, width in schema_fields(schema):
        offsets[name] = offset
        offset += width
    return offsets


def struct_widths(layout: struct.Struct) -> list[int]:
    """The width of each item of a struct format, in order."""
    assert layout.format[0] == "!", "network byte order"
    codes = re.findall(r"\d*\D", layout.format[1:])
    assert all(code[-1] in "BHIsx" for code in codes), "unsigned, as every header field is"
    return [struct.calcsize("!" + code) for code in codes]


@pytest.mark.parametrize(("schema", "layout", "names"), FIXED_LAYOUTS)
def test_struct_format_follows_the_schema(schema, layout, names):
    fields = schema_fields(schema)
    assert list(names) == [name for name, _ in fields]
    assert struct_widths(layout) == [width for _, width in fields]
    assert layout.size == sum(width for _, width in fields)


def bit_fields(schema: Struct) -> list[tuple[str, int]]:
    """(name, width in bits) of every field inside the schema's BitStructs."""
    found = []
    for renamed in schema.subcons:
        if isinstance(renamed.subcon, Transformed) and renamed.subcon.decodefunc is bytes2bits:
            found.extend((field.name, field.sizeof()) for field in renamed.subcon.subcon.subcons)
    return found


IPV4_BITS = bit_fields(IPV4_HEADER)
TCP_BITS = bit_fields(TCP_HEADER)


def ipv4_container(**overrides: Any) -> Container:
    fields = dict.fromkeys(IPV4_FIXED_FIELDS, 0)
    bits = {"version": 4, "ihl": 5, "dscp": 0, "ecn": 0}
    bits |= {"reserved": 0, "dont_fragment": 0, "more_fragments": 0, "fragment_offset": 0}
    bits |= overrides
    fields["version_ihl"] = Container(version=bits["version"], ihl=bits["ihl"])
    fields["dscp_ecn"] = Container(dscp=bits["dscp"], ecn=bits["ecn"])
    fields["flags_fragment"] = Container(
        {name: bits[name] for name in ("reserved", "dont_fragment", "more_fragments")},
        fragment_offset=bits["fragment_offset"],
    )
    return Container(fields, options=bytes(bits["ihl"] * 4 - 20))


def tcp_container(**overrides: Any) -> Container:
    bits = {"data_offset": 5, "reserved": 0} | overrides
    nops = [Container(kind=OPT_NOP, body=None)] * (bits["data_offset"] * 4 - 20)
    fields = dict.fromkeys(TCP_FIXED_FIELDS, 0)
    fields["offset_reserved"] = Container(bits)
    return Container(fields, options=nops)


def changed_fields(parsed: tuple[Any, ...], base: tuple[Any, ...]) -> set[str]:
    return {name for name, value in parsed._asdict().items() if value != getattr(base, name)}


# Each bit field at its maximum, all others at their base values: construct builds
# it, and the fast parse reads that field, and only that field, changed.


def check_bit_field_reads_back_alone(
    schema: Struct,
    container: Callable[..., Container],
    parse: Callable[[bytes], Any],
    via_construct: Callable[[bytes], Any],
    field: str,
    width: int,
    also_changed: frozenset[str] = frozenset(),
) -> None:
    base = parse(construct_build(schema, container()))
    built = construct_build(schema, container(**{field: (1 << width) - 1}))
    parsed = parse(built)
    assert parsed == via_construct(built)
    if field == "reserved":  # not reported: the parse looks past it
        assert parsed == base
        return
    assert getattr(parsed, field) == (1 << width) - 1
    assert changed_fields(parsed, base) == {field} | also_changed


@pytest.mark.parametrize(
    ("field", "width"), [pytest.param(field, width, id=field) for field, width in IPV4_BITS]
)
def test_each_ipv4_bit_field_reads_back_alone(field, width):
    if field == "version":  # a Const: no other value builds
        assert parse_ipv4(construct_build(IPV4_HEADER, ipv4_container())).version == 4
        return
    also_changed = frozenset({"options"} if field == "ihl" else ())
    check_bit_field_reads_back_alone(
        IPV4_HEADER, ipv4_container, parse_ipv4, ipv4_via_construct, field, width, also_changed
    )


@pytest.mark.parametrize(
    ("field", "width"), [pytest.param(field, width, id=field) for field, width in TCP_BITS]
)
def test_each_tcp_bit_field_reads_back_alone(field, width):
    check_bit_field_reads_back_alone(
        TCP_HEADER, tcp_container, parse_tcp, tcp_via_construct, field, width
    )


def test_builders_write_the_schema_defaults():
    """What build_ipv4 and build_tcp write in the fields they do not take."""
    ipv4 = construct_parse(IPV4_HEADER, build_ipv4(src=1, dst=2, protocol=6, payload_length=0))
    assert ipv4.version_ihl.version == IPV4_HEADER.version_ihl.subcon.subcon.version.value == 4
    assert ipv4.flags_fragment.reserved is False
    assert ipv4.flags_fragment.more_fragments is False
    assert ipv4.flags_fragment.fragment_offset == 0
    assert (ipv4.dscp_ecn.dscp, ipv4.dscp_ecn.ecn, ipv4.ttl, ipv4.identification) == (0, 0, 64, 0)
    assert ipv4.flags_fragment.dont_fragment is True
    in_place = bytearray(40)
    build_ipv4_in_place(in_place, src=1, dst=2, protocol=6, ttl=64, identification=0)
    assert in_place[:20] == build_ipv4(src=1, dst=2, protocol=6, payload_length=20)
    assert ipv4_plain_fields(in_place) == (40, False, 0, 64, 6, 1, 2)
    assert in_place[0] == IPV4_PLAIN_FIRST_BYTE
    segment = small_tcp(src_port=3, dst_port=4, seq=5, ack=6, window=7)
    tcp = construct_parse(TCP_HEADER, segment)
    assert (tcp.offset_reserved.reserved, tcp.urgent, tcp.options) == (0, 0, [])
    icmp = construct_parse(ICMP_HEADER, build_icmp(type=TIME_EXCEEDED, code=0))
    assert icmp.rest == bytes(4)


@given(st.binary(min_size=20, max_size=20))
def test_ipv4_plain_fields_agree_with_parse_ipv4(data):
    # ipv4_plain_fields has its own struct format: IPV4_FIXED with pad bytes
    packet = bytes([IPV4_PLAIN_FIRST_BYTE]) + data[1:]
    header = parse_ipv4(packet)
    assert ipv4_plain_fields(packet) == (
        header.total_length, header.more_fragments, header.fragment_offset,
        header.ttl, header.protocol, header.src, header.dst,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "case", "option", "length"),
    [
        pytest.param(OPT_MSS, TCP_OPTION_MSS, MSS_OPTION, MSS_LENGTH, id="mss"),
        pytest.param(
            OPT_WINDOW_SCALE,
            TCP_OPTION_WINDOW_SCALE,
            WINDOW_SCALE_OPTION,
            WINDOW_SCALE_LENGTH,
            id="window-scale",
        ),
        pytest.param(
            OPT_SACK_PERMITTED,
            TCP_OPTION_SACK_PERMITTED,
            SACK_PERMITTED_OPTION,
            SACK_PERMITTED_LENGTH,
            id="sack-permitted",
        ),
        pytest.param(
            OPT_TIMESTAMPS, TCP_OPTION_TIMESTAMPS, TIMESTAMPS_OPTION, TIMESTAMPS_LENGTH, id="ts"
        ),
    ],
)
def test_option_struct_follows_its_schema(kind, case, option, length):
    assert TCP_OPTION.body.cases[kind] is case
    # kind byte, then the case: its Const length byte and its fields, in order
    assert struct_widths(option) == [1, *(subcon.sizeof() for subcon in case.subcons)]
    assert option.size == 1 + case.sizeof() == length == case.length.value
    values = [kind, length, *range(1, len(case.subcons))]
    parsed = construct_parse(TCP_OPTION, option.pack(*values))
    assert [parsed.kind, *(parsed.body[s.name] for s in case.subcons)] == values


def test_sack_block_struct_follows_its_schema():
    assert struct_widths(SACK_BLOCK) == [subcon.sizeof() for subcon in TCP_SACK_BLOCK.subcons]
    assert construct_parse(TCP_SACK_BLOCK, SACK_BLOCK.pack(1, 2)) == Container(left=1, right=2)


# --- Round trips ---------------------------------------------------------------------


@given(ipv4_fields)
def test_ipv4_round_trip(fields):
    header_bytes = build_ipv4(**fields)
    padded_options = fields["options"] + bytes(-len(fields["options"]) % 4)
    assert len(header_bytes) == 20 + len(padded_options)
    assert internet_checksum(header_bytes) == 0
    header = parse_ipv4(header_bytes + bytes(fields["payload_length"] % 50))
    assert header.version == 4
    assert header.header_length == len(header_bytes)
    assert header.total_length == len(header_bytes) + fields["payload_length"]
    assert (header.src, header.dst, header.protocol) == (
        fields["src"],
        fields["dst"],
        fields["protocol"],
    )
    assert (header.ttl, header.identification, header.dont_fragment) == (
        fields["ttl"],
        fields["identification"],
        fields["dont_fragment"],
    )
    assert (header.dscp, header.ecn) == (fields["dscp"], fields["ecn"])
    assert header.more_fragments is False and header.fragment_offset == 0
    assert header.options == padded_options
    assert header == ipv4_via_construct(header_bytes)
    # construct builds back exactly the bytes it parsed
    parsed = construct_parse(IPV4_HEADER, header_bytes)
    assert construct_build(IPV4_HEADER, parsed) == header_bytes


@given(tcp_fields)
def test_tcp_round_trip(fields):
    segment = build_tcp(**fields)
    assert transport_checksum(fields["src"], fields["dst"], PROTO_TCP, segment) == 0
    header = parse_tcp(segment)
    options = fields["options"] or TcpOptions()
    assert header.header_length == 20 + encoded_options_length(options)
    assert segment[header.header_length :] == fields["payload"]
    for name in ("src_port", "dst_port", "seq", "ack", "flags", "window", "urgent"):
        assert getattr(header, name) == fields[name], name
    assert header.options == options
    assert header == tcp_via_construct(segment)
    parsed = construct_parse(TCP_HEADER, segment)
    assert construct_build(TCP_HEADER, parsed) == segment[: header.header_length]


@given(st.tuples(u16, u16, u16, u16), st.binary(max_size=16))
def test_udp_round_trip(values, payload):
    src_port, dst_port, length, checksum = values
    fields = {"src_port": src_port, "dst_port": dst_port, "length": length, "checksum": checksum}
    datagram = construct_build(UDP_HEADER, fields) + payload
    assert datagram[:8] == struct.pack("!HHHH", src_port, dst_port, length, checksum)
    assert parse_udp(datagram) == UdpHeader(src_port, dst_port, length, checksum)
    assert parse_udp(datagram) == udp_via_construct(datagram)


@given(icmp_fields)
def test_icmp_round_trip(fields):
    message = build_icmp(**fields)
    assert internet_checksum(message) == 0
    header = parse_icmp(message)
    assert (header.type, header.code, header.rest) == (
        fields["type"],
        fields["code"],
        fields["rest"],
    )
    assert message[8:] == fields["payload"]
    assert header == icmp_via_construct(message)
    parsed = construct_parse(ICMP_HEADER, message)
    assert construct_build(ICMP_HEADER, parsed) == message[:8]


def test_icmp_construct_names_the_echo_and_unreachable_fields():
    echo = construct_parse(ICMP_HEADER, build_icmp(type=ECHO_REQUEST, code=0, rest=0x00070009))
    assert (echo.rest.identifier, echo.rest.sequence) == (7, 9)
    unreachable = construct_parse(
        ICMP_HEADER, build_icmp(type=DEST_UNREACH, code=FRAG_NEEDED, rest=1400)
    )
    assert (unreachable.rest.unused, unreachable.rest.next_hop_mtu) == (0, 1400)
    other = construct_parse(ICMP_HEADER, build_icmp(type=TIME_EXCEEDED, code=0, rest=1))
    assert other.rest == b"\x00\x00\x00\x01"


def test_parsers_accept_memoryview_slices():
    ip = build_ipv4(src=1, dst=2, protocol=PROTO_TCP, payload_length=0, options=b"\x01" * 4)
    tcp = small_tcp(seq=3, ack=4, flags=SYN, window=5, options=LINUX_SYN_OPTIONS, payload=b"data")
    view = memoryview(b"junk" + ip + tcp)
    header = parse_ipv4(view[4:])
    assert header == parse_ipv4(ip)
    assert isinstance(header.options, bytes)
    assert parse_tcp(view[4 + header.header_length :]) == parse_tcp(tcp)
    assert parse_udp(view[4:12]) == parse_udp(ip[:8])
    assert parse_icmp(bytearray(ip[:8])) == parse_icmp(ip[:8])


def test_build_rejects_options_that_do_not_fit():
    with pytest.raises(ValueError, match="at most 40"):
        build_ipv4(src=1, dst=2, protocol=6, payload_length=0, options=bytes(41))
    with pytest.raises(ValueError, match="at most 40"):
        small_tcp(flags=0, window=0, options=TcpOptions(unknown=((99, bytes(40)),)))
    with pytest.raises(ValueError, match="not unknown"):
        small_tcp(flags=0, window=0, options=TcpOptions(unknown=((OPT_MSS, b"\x05\xb4"),)))


# --- Fast parse == construct parse on any bytes ----------------------------------------


@given(tcp_like_bytes())
@settings(max_examples=400)
def test_fast_tcp_parse_agrees_with_construct(segment):
    assert outcome(parse_tcp, segment) == outcome(tcp_via_construct, segment)


@given(ipv4_like_bytes())
@settings(max_examples=300)
def test_fast_ipv4_parse_agrees_with_construct(packet):
    assert outcome(parse_ipv4, packet) == outcome(ipv4_via_construct, packet)


@given(st.binary(max_size=12))
def test_fast_udp_and_icmp_parse_agree_with_construct(data):
    assert outcome(parse_udp, data) == outcome(udp_via_construct, data)
    assert outcome(parse_icmp, data) == outcome(icmp_via_construct, data)


def test_options_after_eol_are_padding():
    area = struct.pack("!BBH", 2, 4, 1460) + b"\x00" + b"\x08\x0a" + bytes(1)
    segment = tcp_with_option_area(area)
    assert parse_tcp(segment).options == TcpOptions(mss=1460)
    assert tcp_via_construct(segment).options == TcpOptions(mss=1460)


def test_unknown_option_kept_raw_and_repeated_option_last_wins():
    area = bytes([2, 4, 0, 1, 200, 5, 1, 2, 3, 2, 4, 0, 2, 1, 1, 1])
    segment = tcp_with_option_area(area)
    expected = TcpOptions(mss=2, unknown=((200, b"\x01\x02\x03"),))
    assert parse_tcp(segment).options == expected
    assert tcp_via_construct(segment).options == expected


# --- scapy as an independent oracle ----------------------------------------------------


def scapy_tcp_options(options: TcpOptions) -> list[tuple[Any, Any]]:
    scapy_options: list[tuple[Any, Any]] = []
    if options.mss is not None:
        scapy_options.append(("MSS", options.mss))
    if options.sack_permitted:
        scapy_options.append(("SAckOK", b""))
    if options.timestamps is not None:
        scapy_options.append(("Timestamp", options.timestamps))
    if options.window_scale is not None:
        scapy_options.append(("WScale", options.window_scale))
    if options.sack_blocks:
        scapy_options.append(("SAck", tuple(v for block in options.sack_blocks for v in block)))
    scapy_options.extend(options.unknown)
    return scapy_options


def options_from_scapy(scapy_options: list[tuple[Any, Any]]) -> TcpOptions:
    result = TcpOptions()
    unknown = []
    for name, value in scapy_options:
        if name == "EOL":
            break
        if name == "MSS":
            result.mss = value
        elif name == "WScale":
            result.window_scale = value
        elif name == "SAckOK":
            result.sack_permitted = True
        elif name == "Timestamp":
            result.timestamps = tuple(value)
        elif name == "SAck":
            result.sack_blocks = tuple(zip(value[::2], value[1::2], strict=True))
        elif name != "NOP":
            unknown.append((name, value))
    result.unknown = tuple(unknown)
    return result


ip_options_strategy = (
    st.lists(st.sampled_from([b"\x01", b"\x94\x04\x00\x00"]), max_size=10)
    .map(b"".join)
    .filter(lambda options: len(options) <= 40)
)


@given(ipv4_fields, ip_options_strategy)
def test_ipv4_against_scapy(fields, ip_options):
    fields["options"] = ip_options
    ours = build_ipv4(**fields)
    theirs = IP(ours)
    header = parse_ipv4(ours)
    assert theirs.version == header.version == 4
    assert theirs.ihl == header.ihl
    assert theirs.tos == header.dscp << 2 | header.ecn
    assert theirs.len == header.total_length
    assert theirs.id == header.identification
    assert int(theirs.flags) == header.dont_fragment << 1 | header.more_fragments
    assert theirs.frag == header.fragment_offset
    assert (theirs.ttl, theirs.proto) == (header.ttl, header.protocol)
    assert (theirs.src, theirs.dst) == (ip_str(header.src), ip_str(header.dst))
    assert b"".join(bytes(option) for option in theirs.options) == header.options
    # scapy recomputes the checksum from scratch and gets ours
    del theirs.chksum
    assert IP(bytes(theirs)).chksum == header.checksum


@given(ipv4_fields)
def test_scapy_built_ipv4_parses(fields):
    flags = "DF" if fields["dont_fragment"] else 0
    packet = bytes(
        IP(
            src=ip_str(fields["src"]),
            dst=ip_str(fields["dst"]),
            proto=fields["protocol"],
            ttl=fields["ttl"],
            id=fields["identification"],
            flags=flags,
            tos=fields["dscp"] << 2 | fields["ecn"],
        )
        / Raw(b"x" * 8)
    )
    header = parse_ipv4(packet)
    theirs = IP(packet)
    assert header == IPv4Header(
        version=4,
        ihl=5,
        dscp=fields["dscp"],
        ecn=fields["ecn"],
        total_length=28,
        identification=fields["identification"],
        dont_fragment=fields["dont_fragment"],
        more_fragments=False,
        fragment_offset=0,
        ttl=fields["ttl"],
        protocol=fields["protocol"],
        checksum=theirs.chksum,
        src=fields["src"],
        dst=fields["dst"],
        options=b"",
    )
    assert internet_checksum(packet[:20]) == 0


@given(tcp_fields)
def test_tcp_against_scapy(fields):
    segment = build_tcp(**fields)
    header = parse_tcp(segment)
    packet = IP(
        build_ipv4(
            src=fields["src"], dst=fields["dst"], protocol=PROTO_TCP, payload_length=len(segment)
        )
        + segment
    )
    theirs = packet[TCP]
    assert (theirs.sport, theirs.dport) == (header.src_port, header.dst_port)
    assert (theirs.seq, theirs.ack) == (header.seq, header.ack)
    assert theirs.dataofs == header.data_offset
    assert theirs.reserved == 0
    assert int(theirs.flags) == header.flags
    assert (theirs.window, theirs.urgptr) == (header.window, header.urgent)
    assert options_from_scapy(theirs.options) == header.options
    assert bytes(theirs.payload) == fields["payload"]
    # scapy recomputes the checksum over its own pseudo-header and gets ours
    del packet[TCP].chksum
    assert IP(bytes(packet))[TCP].chksum == header.checksum


@given(tcp_fields)
def test_scapy_built_tcp_parses(fields):
    options = fields["options"] or TcpOptions()
    packet = bytes(
        IP(src=ip_str(fields["src"]), dst=ip_str(fields["dst"]))
        / TCP(
            sport=fields["src_port"],
            dport=fields["dst_port"],
            seq=fields["seq"],
            ack=fields["ack"],
            flags=fields["flags"],
            window=fields["window"],
            urgptr=fields["urgent"],
            options=scapy_tcp_options(options),
        )
        / Raw(fields["payload"])
    )
    segment = packet[20:]
    header = parse_tcp(segment)
    assert (header.src_port, header.dst_port) == (fields["src_port"], fields["dst_port"])
    assert (header.seq, header.ack) == (fields["seq"], fields["ack"])
    assert (header.flags, header.window, header.urgent) == (
        fields["flags"],
        fields["window"],
        fields["urgent"],
    )
    assert header.options == options
    assert header.checksum == IP(packet)[TCP].chksum
    assert transport_checksum(fields["src"], fields["dst"], PROTO_TCP, segment) == 0
    assert header == tcp_via_construct(segment)


@given(u16, u16, st.binary(max_size=32), u32, u32)
def test_udp_against_scapy(src_port, dst_port, payload, src, dst):
    packet = bytes(
        IP(src=ip_str(src), dst=ip_str(dst)) / UDP(sport=src_port, dport=dst_port) / Raw(payload)
    )
    header = parse_udp(packet[20:])
    theirs = IP(packet)[UDP]
    assert header == UdpHeader(src_port, dst_port, 8 + len(payload), theirs.chksum)
    assert transport_checksum(src, dst, PROTO_UDP, packet[20:]) == 0


@given(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from([0, 3, 8, 11]),
            "code": u8,
            "rest": u32,
            "payload": st.binary(max_size=64),
        }
    )
)
def test_icmp_against_scapy(fields):
    message = build_icmp(**fields)
    theirs = ICMP(message)
    header = parse_icmp(message)
    assert (theirs.type, theirs.code) == (header.type, header.code)
    if header.type in (ECHO_REQUEST, ECHO_REPLY):
        assert theirs.id << 16 | theirs.seq == header.rest
    elif header.type == DEST_UNREACH:  # reserved(8) length(8) next-hop MTU(16)
        assert theirs.reserved << 24 | theirs.length << 16 | theirs.nexthopmtu == header.rest
    else:  # time exceeded: reserved(8) length(8) unused(16)
        assert theirs.reserved << 24 | theirs.length << 16 | theirs.unused == header.rest
    del theirs.chksum
    assert ICMP(bytes(theirs)).chksum == header.checksum


@given(u16, u16, st.binary(max_size=32))
def test_scapy_built_icmp_echo_parses(identifier, sequence, payload):
    message = bytes(ICMP(type="echo-request", id=identifier, seq=sequence) / Raw(payload))
    header = parse_icmp(message)
    assert header == IcmpHeader(ECHO_REQUEST, 0, ICMP(message).chksum, identifier << 16 | sequence)
    assert internet_checksum(message) == 0


# --- Malformed input ---------------------------------------------------------------------

IPV4_WITH_OPTIONS = build_ipv4(src=1, dst=2, protocol=6, payload_length=0, options=bytes(8))
TCP_SYN = small_tcp(flags=SYN, options=LINUX_SYN_OPTIONS)
UDP_DATAGRAM = struct.pack("!HHHH", 1, 2, 8, 0)
ICMP_ECHO = build_icmp(type=ECHO_REQUEST, code=0, rest=1)


def both_parsers_reject(
    fast: Callable[[bytes], Any], slow: Callable[[bytes], Any], data: bytes, reason: str
) -> None:
    for parse in (fast, slow):
        with pytest.raises(MalformedPacket) as caught:
            parse(data)
        assert caught.value.reason == reason, (parse, data.hex())
        assert str(caught.value).startswith(reason + ": ")
        # nothing of construct (or struct) rides along
        assert caught.value.__context__ is None and caught.value.__cause__ is None


@pytest.mark.parametrize("length", range(len(IPV4_WITH_OPTIONS)))
def test_truncated_ipv4(length):
    both_parsers_reject(
        parse_ipv4, ipv4_via_construct, IPV4_WITH_OPTIONS[:length], "ipv4-truncated"
    )


@pytest.mark.parametrize("length", range(len(TCP_SYN)))
def test_truncated_tcp(length):
    # Fewer than 20 bytes is truncation; a data offset past the end is a bad offset.
    reason = "tcp-truncated" if length < 20 else "tcp-bad-offset"
    both_parsers_reject(parse_tcp, tcp_via_construct, TCP_SYN[:length], reason)


@pytest.mark.parametrize("length", range(8))
def test_truncated_udp_and_icmp(length):
    both_parsers_reject(parse_udp, udp_via_construct, UDP_DATAGRAM[:length], "udp-truncated")
    both_parsers_reject(parse_icmp, icmp_via_construct, ICMP_ECHO[:length], "icmp-truncated")


@pytest.mark.parametrize("version", [0, 1, 5, 6, 15])
def test_ipv4_bad_version(version):
    packet = bytes([version << 4 | 5]) + IPV4_WITH_OPTIONS[1:]
    both_parsers_reject(parse_ipv4, ipv4_via_construct, packet, "ipv4-bad-version")
    both_parsers_reject(parse_ipv4, ipv4_via_construct, packet[:1], "ipv4-bad-version")


@pytest.mark.parametrize("ihl", range(5))
def test_ipv4_ihl_below_five(ihl):
    packet = bytes([0x40 | ihl]) + IPV4_WITH_OPTIONS[1:]
    both_parsers_reject(parse_ipv4, ipv4_via_construct, packet, "ipv4-bad-ihl")


@pytest.mark.parametrize("data_offset", [0, 1, 4, 11, 15])
def test_tcp_bad_data_offset(data_offset):
    segment = TCP_SYN[:12] + bytes([data_offset << 4]) + TCP_SYN[13:]  # 40 bytes long
    both_parsers_reject(parse_tcp, tcp_via_construct, segment, "tcp-bad-offset")


@pytest.mark.parametrize(
    "area",
    [
        pytest.param(b"\x02\x00\x05\xb4", id="length-0"),
        pytest.param(b"\x1e\x01\x00\x00", id="length-1-unknown"),
        pytest.param(b"\x08\x01\x00\x00", id="length-1-known"),
        pytest.param(b"\x01\x01\x01\x1e", id="no-length-byte"),
        pytest.param(b"\x1e\x08\x00\x00", id="unknown-past-end"),
        pytest.param(b"\x01\x01\x1e\x03", id="unknown-one-byte-past-end"),
        pytest.param(b"\x01\x02\x04\x05", id="mss-one-byte-past-end"),
        pytest.param(b"\x08\x0a" + bytes(6), id="timestamps-past-end"),
        pytest.param(b"\x02\x03\x05\x01", id="mss-length-3"),
        pytest.param(b"\x02\x05\x05\xb4" + bytes(4), id="mss-length-5"),
        pytest.param(b"\x03\x04\x07\x00", id="window-scale-length-4"),
        pytest.param(b"\x04\x03\x00\x00", id="sack-permitted-length-3"),
        pytest.param(b"\x08\x08" + bytes(6), id="timestamps-length-8"),
        pytest.param(b"\x05\x02\x00\x00", id="sack-no-blocks"),
        pytest.param(b"\x05\x0b" + bytes(10), id="sack-length-11"),
    ],
)
def test_tcp_bad_option(area):
    both_parsers_reject(parse_tcp, tcp_via_construct, tcp_with_option_area(area), "tcp-bad-option")


def test_construct_build_errors_are_malformed_packet():
    fields = flatten(construct_parse(IPV4_HEADER, IPV4_WITH_OPTIONS))
    bad_version = construct_parse(IPV4_HEADER, IPV4_WITH_OPTIONS)
    bad_version.version_ihl.version = 6
    with pytest.raises(MalformedPacket) as caught:
        construct_build(IPV4_HEADER, bad_version)
    assert caught.value.reason == "ipv4-bad-version"
    with pytest.raises(MalformedPacket) as caught:
        construct_build(UDP_HEADER, {"src_port": 70000, "dst_port": 1, "length": 8, "checksum": 0})
    assert caught.value.reason == "udp-bad-field"
    assert "src_port" in str(caught.value)
    with pytest.raises(MalformedPacket) as caught:
        construct_build(IPV4_HEADER, fields)  # flat: the bit groups are missing
    assert caught.value.reason == "ipv4-bad-field"
    assert caught.value.__context__ is None


@given(st.binary(max_size=80))
def test_random_bytes_only_ever_raise_malformed_packet(data):
    for parse in (
        parse_ipv4,
        parse_tcp,
        parse_udp,
        parse_icmp,
        ipv4_via_construct,
        tcp_via_construct,
        udp_via_construct,
        icmp_via_construct,
    ):
        outcome(parse, data)


def test_build_takes_the_bytes_of_any_payload_buffer():
    wide_view = memoryview(b"abcdef").cast("H")  # 3 items, 6 bytes
    segment = small_tcp(payload=wide_view)
    assert segment[20:] == b"abcdef"
    assert transport_checksum(1, 2, PROTO_TCP, segment) == 0
    message = build_icmp(type=ECHO_REPLY, code=0, payload=wide_view)
    assert message[8:] == b"abcdef"
    assert internet_checksum(message) == 0


@pytest.mark.parametrize("length", range(13, 20))
@pytest.mark.parametrize("data_offset", [0, 4])
def test_short_tcp_with_bad_data_offset_reports_the_offset_first(length, data_offset):
    # construct validates the data offset (byte 12) before it misses the rest of the header
    segment = (TCP_SYN[:12] + bytes([data_offset << 4]) + TCP_SYN[13:])[:length]
    both_parsers_reject(parse_tcp, tcp_via_construct, segment, "tcp-bad-offset")


def test_tcp_options_are_padded_with_nops():
    segment = small_tcp(flags=SYN, options=TcpOptions(mss=1460, unknown=((99, b"x"),)))
    assert segment[20:] == bytes.fromhex("020405b4 63037801".replace(" ", ""))
    assert parse_tcp(segment).options == TcpOptions(mss=1460, unknown=((99, b"x"),))
