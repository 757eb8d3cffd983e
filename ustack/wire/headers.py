"""IPv4, TCP (with options), UDP and ICMP headers.

The construct definitions below are the single description of every header,
written to be read next to the RFC diagrams. Construct's own parser costs
100+ us per header, far too slow per packet, so the fast API at the bottom
(`parse_ipv4`, `build_tcp`, ...) runs on `struct.Struct` layouts *derived*
from those definitions at import time: changing a definition changes the
fast form, and a definition the deriver cannot flatten fails at import.

All parsers raise `ustack.wire.errors.MalformedPacket` with a stable reason code;
the fast and the construct parse give the same fields and the same reasons
on any input (tests/unit/test_headers.py checks this with hypothesis).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, NamedTuple

from construct import (
    Adapter,
    Array,
    BitsInteger,
    BitStruct,
    Bytes,
    Const,
    Construct,
    ConstructError,
    Container,
    Default,
    ExprValidator,
    FixedSized,
    Flag,
    FormatField,
    Int8ub,
    Int16ub,
    Int32ub,
    ListContainer,
    Nibble,
    Pass,
    Rebuild,
    Renamed,
    SizeofError,
    Struct,
    Subconstruct,
    Switch,
    Transformed,
    obj_,
    this,
)
from construct.core import bytes2bits, stream_read_entire

from ustack.wire.checksum import (
    Buffer,
    internet_checksum,
    prefix_checksum,
    pseudo_header_sum,
    transport_checksum,
)
from ustack.wire.errors import MalformedPacket

# Parsers take any Buffer and index and measure a memoryview by item: pass
# bytes-format views (memoryview(bytes or bytearray) and their slices), not
# casts to wider items.

# --- Protocol numbers and flags -------------------------------------------------------

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

# TCP control bits, as they sit in the 8-bit flags field (RFC 9293, RFC 3168).
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

# TCP option kinds.
OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WINDOW_SCALE = 3
OPT_SACK_PERMITTED = 4
OPT_SACK = 5
OPT_TIMESTAMPS = 8

# ICMP types (RFC 792) and the codes we send or interpret.
ECHO_REPLY = 0
DEST_UNREACH = 3
ECHO_REQUEST = 8
TIME_EXCEEDED = 11
PARAMETER_PROBLEM = 12
# DEST_UNREACH codes
NET_UNREACH = 0
HOST_UNREACH = 1
PROTO_UNREACH = 2
PORT_UNREACH = 3
FRAG_NEEDED = 4
# TIME_EXCEEDED codes
TTL_EXCEEDED = 0
REASSEMBLY_TIME_EXCEEDED = 1

# --- The construct definitions ---------------------------------------------------------
# Laid out like the RFC diagrams, which the formatter would undo.
# fmt: off

IPV4_HEADER = Struct(
    "version_ihl" / BitStruct(
        "version" / Const(4, Nibble),
        "ihl" / ExprValidator(Nibble, obj_ >= 5),  # header length in 32-bit words
    ),
    "dscp_ecn" / BitStruct(
        "dscp" / BitsInteger(6),
        "ecn" / BitsInteger(2),
    ),
    "total_length" / Int16ub,
    "identification" / Int16ub,
    "flags_fragment" / BitStruct(
        "reserved" / Flag,
        "dont_fragment" / Flag,
        "more_fragments" / Flag,
        "fragment_offset" / BitsInteger(13),  # in 8-byte units
    ),
    "ttl" / Int8ub,
    "protocol" / Int8ub,
    "checksum" / Int16ub,
    "src" / Int32ub,
    "dst" / Int32ub,
    "options" / Bytes(this.version_ihl.ihl * 4 - 20),
)

TCP_OPTION_MSS = Struct("length" / Const(4, Int8ub), "mss" / Int16ub)
TCP_OPTION_WINDOW_SCALE = Struct("length" / Const(3, Int8ub), "shift" / Int8ub)
TCP_OPTION_SACK_PERMITTED = Struct("length" / Const(2, Int8ub))
TCP_SACK_BLOCK = Struct("left" / Int32ub, "right" / Int32ub)
TCP_OPTION_TIMESTAMPS = Struct("length" / Const(10, Int8ub), "tsval" / Int32ub, "tsecr" / Int32ub)

_SACK_BLOCK_SIZE = TCP_SACK_BLOCK.sizeof()


def _valid_sack_length(length: int) -> bool:
    """Kind and length bytes plus one or more (left, right) blocks."""
    return length >= 2 + _SACK_BLOCK_SIZE and (length - 2) % _SACK_BLOCK_SIZE == 0


TCP_OPTION_SACK = Struct(
    "length" / ExprValidator(Int8ub, lambda length, _context: _valid_sack_length(length)),
    "blocks" / Array((this.length - 2) // _SACK_BLOCK_SIZE, TCP_SACK_BLOCK),
)
# Any other kind: skipped by its length byte, which counts the kind and itself.
TCP_OPTION_UNKNOWN = Struct(
    "length" / ExprValidator(Int8ub, obj_ >= 2),
    "data" / Bytes(this.length - 2),
)

TCP_OPTION = Struct(
    "kind" / Int8ub,
    "body" / Switch(
        this.kind,
        {
            OPT_EOL: Pass,
            OPT_NOP: Pass,
            OPT_MSS: TCP_OPTION_MSS,
            OPT_WINDOW_SCALE: TCP_OPTION_WINDOW_SCALE,
            OPT_SACK_PERMITTED: TCP_OPTION_SACK_PERMITTED,
            OPT_SACK: TCP_OPTION_SACK,
            OPT_TIMESTAMPS: TCP_OPTION_TIMESTAMPS,
        },
        default=TCP_OPTION_UNKNOWN,
    ),
)


class _TcpOptionList(Subconstruct):
    """Options up to the end of the enclosing (FixedSized) options area.

    Construct's GreedyRange would stop silently at a malformed option; TCP
    needs it reported. An EOL option ends the list: what follows is padding.
    """

    def _parse(self, stream: BinaryIO, context: Container, path: str) -> ListContainer:
        area = stream_read_entire(stream, path)
        area_stream = io.BytesIO(area)
        options = ListContainer()
        while area_stream.tell() < len(area):
            option = self.subcon._parsereport(area_stream, context, path)
            options.append(option)
            if option.kind == OPT_EOL:
                break
        return options

    def _build(self, obj: list[Any], stream: BinaryIO, context: Container, path: str) -> list[Any]:
        for option in obj:
            self.subcon._build(option, stream, context, path)
        return obj

    def _sizeof(self, context: Container, path: str) -> int:
        raise SizeofError("TCP options have a variable size", path=path)

    def _emitparse(self, code: Any) -> str:
        # Lets TCP_HEADER.compile() compile the options too (the benchmark compares it).
        function = f"parse_tcp_option_list_{code.allocateId()}"
        code.append(f"""
            def {function}(io, this):
                area = io.read()
                io = BytesIO(area)
                options = ListContainer()
                while io.tell() < len(area):
                    option = {self.subcon._compileparse(code)}
                    options.append(option)
                    if option.kind == {OPT_EOL}:
                        break
                return options
        """)
        return f"{function}(io, this)"


TCP_HEADER = Struct(
    "src_port" / Int16ub,
    "dst_port" / Int16ub,
    "seq" / Int32ub,
    "ack" / Int32ub,
    "offset_reserved" / BitStruct(
        "data_offset" / ExprValidator(Nibble, obj_ >= 5),  # header length in 32-bit words
        "reserved" / Nibble,
    ),
    "flags" / Int8ub,  # CWR ECE URG ACK PSH RST SYN FIN, FIN in the low bit
    "window" / Int16ub,
    "checksum" / Int16ub,
    "urgent" / Int16ub,
    "options" / FixedSized(this.offset_reserved.data_offset * 4 - 20, _TcpOptionList(TCP_OPTION)),
)

UDP_HEADER = Struct(
    "src_port" / Int16ub,
    "dst_port" / Int16ub,
    "length" / Int16ub,
    "checksum" / Int16ub,
)

ICMP_ECHO = Struct("identifier" / Int16ub, "sequence" / Int16ub)
ICMP_DEST_UNREACH = Struct("unused" / Int16ub, "next_hop_mtu" / Int16ub)  # MTU: RFC 1191

ICMP_HEADER = Struct(
    "type" / Int8ub,
    "code" / Int8ub,
    "checksum" / Int16ub,
    "rest" / Switch(
        this.type,
        {ECHO_REQUEST: ICMP_ECHO, ECHO_REPLY: ICMP_ECHO, DEST_UNREACH: ICMP_DEST_UNREACH},
        default=Bytes(4),
    ),
)

# fmt: on

# --- Construct parse/build with our errors ---------------------------------------------


@dataclass(frozen=True)
class _ErrorReasons:
    """How a construct error in one schema maps to a MalformedPacket reason."""

    protocol: str
    truncated: str
    by_path: dict[tuple[str, ...], str]  # field path -> reason; longest prefix wins


_SCHEMA_ERRORS: dict[Construct, _ErrorReasons] = {
    IPV4_HEADER: _ErrorReasons(
        "ipv4",
        "ipv4-truncated",
        {
            ("version_ihl", "version"): "ipv4-bad-version",
            ("version_ihl", "ihl"): "ipv4-bad-ihl",
        },
    ),
    TCP_HEADER: _ErrorReasons(
        "tcp",
        "tcp-truncated",
        {
            ("offset_reserved", "data_offset"): "tcp-bad-offset",
            ("options",): "tcp-bad-offset",  # the options area runs past the segment
            ("options", "kind"): "tcp-bad-option",
            ("options", "body"): "tcp-bad-option",
        },
    ),
    TCP_OPTION: _ErrorReasons("tcp", "tcp-bad-option", {}),
    UDP_HEADER: _ErrorReasons("udp", "udp-truncated", {}),
    ICMP_HEADER: _ErrorReasons("icmp", "icmp-truncated", {}),
}
_GENERIC_ERRORS = _ErrorReasons("header", "malformed", {})


def _reason_for(schema: Construct, path: tuple[str, ...], building: bool) -> str:
    reasons = _SCHEMA_ERRORS.get(schema, _GENERIC_ERRORS)
    for end in range(len(path), 0, -1):
        reason = reasons.by_path.get(path[:end])
        if reason is not None:
            return reason
    # A build error on a field without its own reason is a bad value, not truncation.
    return f"{reasons.protocol}-bad-field" if building else reasons.truncated


def _describe(error: Exception) -> tuple[tuple[str, ...], str]:
    """The field path and the message of a construct error, without its framing."""
    raw_path = getattr(error, "path", None) or ""
    path = tuple(part for part in raw_path.split(" -> ")[1:] if part)
    message = str(error).split("\n", 1)[-1] if raw_path else str(error)
    if isinstance(error, KeyError):
        message = f"missing field {error.args[0]!r}"
    return path, f"{'.'.join(path) or 'header'}: {type(error).__name__}: {message}"


def construct_parse(schema: Construct, data: Buffer) -> Container:
    """`schema.parse(data)`, with every construct error turned into MalformedPacket."""
    try:
        return schema.parse(data)
    except ConstructError as error:
        failure = error
    # Raised outside the except block so no construct exception rides along as context.
    path, message = _describe(failure)
    raise MalformedPacket(_reason_for(schema, path, building=False), message)


def construct_build(schema: Construct, obj: dict[str, Any]) -> bytes:
    """`schema.build(obj)`, with every construct error turned into MalformedPacket.

    Checksums are not computed: the caller puts them in `obj`.
    """
    try:
        return schema.build(obj)
    except (ConstructError, KeyError, TypeError, ValueError, AttributeError) as error:
        failure = error
    path, message = _describe(failure)
    raise MalformedPacket(_reason_for(schema, path, building=True), message)


# --- Deriving the fast form from the construct definitions ---------------------------


@dataclass(frozen=True)
class _BitField:
    name: str
    shift: int
    mask: int  # before shifting
    is_flag: bool  # construct Flag: parsed as bool


@dataclass(frozen=True)
class _Slot:
    """One item of the derived struct.Struct: a field, or a group of bit fields."""

    name: str
    offset: int
    bits: tuple[_BitField, ...]  # empty for a plain field


@dataclass(frozen=True)
class _FlatLayout:
    struct: struct.Struct
    slots: tuple[_Slot, ...]
    constants: dict[str, Any]  # values fixed by Const, by field name

    @property
    def field_names(self) -> list[str]:
        names = []
        for slot in self.slots:
            names.extend([bit.name for bit in slot.bits] if slot.bits else [slot.name])
        return names

    def offset_of(self, name: str) -> int:
        for slot in self.slots:
            if slot.name == name:
                return slot.offset
        raise KeyError(name)


_UNSIGNED_FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}
_SAME_SIZE_WRAPPERS = (Renamed, Const, Adapter, Rebuild, Default)  # Adapter covers Enum


def _unwrap(subcon: Construct, constants: dict[str, Any], name: str) -> Construct:
    """Look through wrappers that keep the wire format, recording Const values."""
    while isinstance(subcon, _SAME_SIZE_WRAPPERS):
        if isinstance(subcon, Const):
            constants[name] = subcon.value
        subcon = subcon.subcon
    return subcon


def _bit_group(group: Struct, constants: dict[str, Any]) -> tuple[int, list[_BitField]]:
    """(width in bits, splits) of the Struct inside a BitStruct."""
    widths: list[tuple[str, int, bool]] = []
    for renamed in group.subcons:
        field = _unwrap(renamed, constants, renamed.name)
        if isinstance(field, BitsInteger) and isinstance(field.length, int) and not field.signed:
            widths.append((renamed.name, field.length, False))
        elif field is Flag:
            widths.append((renamed.name, 1, True))
        else:
            raise TypeError(f"cannot derive a bit field from {renamed.name}: {field!r}")
    total = sum(width for _, width, _ in widths)
    splits, used = [], 0
    for name, width, is_flag in widths:
        used += width
        splits.append(_BitField(name, total - used, (1 << width) - 1, is_flag))
    return total, splits


def _flat_struct(schema: Struct, upto: str | None = None) -> _FlatLayout:
    """Derive a big-endian struct.Struct (and its bit splits) from a byte-aligned
    construct Struct, field by field, stopping before the field named `upto`."""
    formats: list[str] = []
    slots: list[_Slot] = []
    constants: dict[str, Any] = {}
    offset = 0
    for renamed in schema.subcons:
        name = renamed.name
        if name == upto:
            break
        field = _unwrap(renamed, constants, name)
        bits: tuple[_BitField, ...] = ()
        if isinstance(field, FormatField):
            order, code = field.fmtstr[0], field.fmtstr[1:]
            if order not in ">!" and code not in ("b", "B"):
                raise TypeError(f"{name}: only big-endian fields can be flattened")
            size = struct.calcsize("!" + code)
        elif isinstance(field, Bytes) and isinstance(field.length, int):
            code, size = f"{field.length}s", field.length
        elif isinstance(field, Transformed) and field.decodefunc is bytes2bits:
            width, splits = _bit_group(field.subcon, constants)
            size = width // 8
            code, bits = _UNSIGNED_FORMATS[size], tuple(splits)
        elif isinstance(field, Switch):
            # A tagged union of equal-size cases: one opaque unsigned integer.
            sizes = {case.sizeof() for case in [*field.cases.values(), field.default]}
            if len(sizes) != 1 or (size := sizes.pop()) not in _UNSIGNED_FORMATS:
                raise TypeError(f"{name}: the Switch cases differ in size")
            code = _UNSIGNED_FORMATS[size]
        else:
            raise TypeError(f"cannot derive a flat layout from {name}: {field!r}")
        formats.append(code)
        slots.append(_Slot(name, offset, bits))
        offset += size
    return _FlatLayout(struct.Struct("!" + "".join(formats)), tuple(slots), constants)


def _generate(source: str, function: str, namespace: dict[str, Any]) -> Callable[..., Any]:
    exec(compile(source, f"<ustack.wire.headers {function}>", "exec"), namespace)
    generated = namespace[function]
    generated.source = source  # kept for study and debugging
    return generated


def _compile_unpacker(layout: _FlatLayout, names: Sequence[str]) -> Callable[..., tuple[Any, ...]]:
    """Generate `unpack(buffer, offset=0)` returning the fields `names`, in order.

    One unpack_from and a few shifts: the generated code is what one would
    write by hand, without hand-copying the layout.
    """
    expressions: dict[str, str] = {}
    variables = []
    for index, slot in enumerate(layout.slots):
        variable = f"v{index}"
        variables.append(variable)
        if not slot.bits:
            expressions[slot.name] = variable
        for bit in slot.bits:
            if bit.is_flag:
                expressions[bit.name] = f"({variable} & {bit.mask << bit.shift:#x}) != 0"
            elif bit.shift == 0:
                expressions[bit.name] = f"{variable} & {bit.mask:#x}"
            else:
                expressions[bit.name] = f"{variable} >> {bit.shift} & {bit.mask:#x}"
    missing = [name for name in names if name not in expressions]
    if missing:
        raise TypeError(f"the construct definition has no field(s) {missing}")
    source = (
        "def unpack(buffer, offset=0):\n"
        f"    {', '.join(variables)}, = unpack_from(buffer, offset)\n"
        f"    return ({', '.join(expressions[name] for name in names)},)\n"
    )
    return _generate(source, "unpack", {"unpack_from": layout.struct.unpack_from})


def _compile_packer(layout: _FlatLayout) -> Callable[..., None]:
    """Generate `pack_into(buffer, offset, *, field=...)` for every field.

    Fields default to their Const value, else 0 (reserved bits, checksums).
    Bit fields are masked to their width so one cannot spill into the next.
    """
    parameters = [f"{name}={layout.constants.get(name, 0)!r}" for name in layout.field_names]
    arguments = []
    for slot in layout.slots:
        if not slot.bits:
            arguments.append(slot.name)
            continue
        parts = []
        for bit in slot.bits:
            value = f"bool({bit.name})" if bit.is_flag else f"({bit.name} & {bit.mask:#x})"
            parts.append(f"{value} << {bit.shift}" if bit.shift else value)
        arguments.append(" | ".join(parts))
    source = (
        f"def pack_into(buffer, offset, *, {', '.join(parameters)}):\n"
        f"    pack_into_struct(buffer, offset, {', '.join(arguments)})\n"
    )
    return _generate(source, "pack_into", {"pack_into_struct": layout.struct.pack_into})


def _subcon_named(schema: Struct, name: str) -> Switch:
    for renamed in schema.subcons:
        if renamed.name == name:
            return renamed.subcon
    raise KeyError(name)


@dataclass(frozen=True)
class _OptionCodec:
    """A fixed-size TCP option, derived from its TCP_OPTION case."""

    kind: int
    length: int  # the length byte its Const demands
    body: struct.Struct  # from the length byte on
    whole: struct.Struct  # from the kind byte on, for building


def _option_codec(kind: int) -> _OptionCodec:
    layout = _flat_struct(_subcon_named(TCP_OPTION, "body").cases[kind])
    length = layout.constants["length"]
    if length != 1 + layout.struct.size:
        raise TypeError(f"TCP option {kind}: its Const length disagrees with its fields")
    body_format = layout.struct.format[1:]
    return _OptionCodec(kind, length, layout.struct, struct.Struct("!B" + body_format))


_IPV4_LAYOUT = _flat_struct(IPV4_HEADER, upto="options")
_TCP_LAYOUT = _flat_struct(TCP_HEADER, upto="options")
_UDP_LAYOUT = _flat_struct(UDP_HEADER)
_ICMP_LAYOUT = _flat_struct(ICMP_HEADER)

_MSS = _option_codec(OPT_MSS)
_WINDOW_SCALE = _option_codec(OPT_WINDOW_SCALE)
_SACK_PERMITTED = _option_codec(OPT_SACK_PERMITTED)
_TIMESTAMPS = _option_codec(OPT_TIMESTAMPS)
_SACK_BLOCK = _flat_struct(TCP_SACK_BLOCK).struct

IPV4_MIN_HEADER_LENGTH = _IPV4_LAYOUT.struct.size
TCP_MIN_HEADER_LENGTH = _TCP_LAYOUT.struct.size
UDP_HEADER_LENGTH = _UDP_LAYOUT.struct.size
ICMP_HEADER_LENGTH = _ICMP_LAYOUT.struct.size
MAX_OPTIONS_LENGTH = 40  # a 4-bit length in words leaves 60 - 20 bytes, IPv4 and TCP alike

_pack_checksum = struct.Struct("!H").pack_into

# --- The fast API -----------------------------------------------------------------------


class IPv4Header(NamedTuple):
    version: int
    ihl: int
    dscp: int
    ecn: int
    total_length: int
    identification: int
    dont_fragment: bool
    more_fragments: bool
    fragment_offset: int
    ttl: int
    protocol: int
    checksum: int
    src: int
    dst: int
    options: bytes

    @property
    def header_length(self) -> int:
        return self.ihl * 4


_unpack_ipv4 = _compile_unpacker(_IPV4_LAYOUT, IPv4Header._fields[:-1])
_pack_ipv4_into = _compile_packer(_IPV4_LAYOUT)
_tuple_new = tuple.__new__  # NamedTuple._make is a Python-level wrapper of it
_IPV4_CHECKSUM_OFFSET = _IPV4_LAYOUT.offset_of("checksum")
# For error reports on short packets: just the first byte.
_unpack_version_ihl = _compile_unpacker(
    _flat_struct(IPV4_HEADER, upto="dscp_ecn"), ("version", "ihl")
)


def _ipv4_error(packet: Buffer) -> MalformedPacket:
    """Why `packet` is malformed, checked in the order the construct parse meets it."""
    if not packet:
        return MalformedPacket("ipv4-truncated", "0 bytes, the header needs 20")
    version, ihl = _unpack_version_ihl(packet)
    if version != 4:
        return MalformedPacket("ipv4-bad-version", f"version {version}, expected 4")
    if ihl < 5:
        return MalformedPacket("ipv4-bad-ihl", f"ihl {ihl} is below the minimum 5")
    return MalformedPacket("ipv4-truncated", f"{len(packet)} bytes, the header needs {ihl * 4}")


# The receive path's shortcut for the common header (version 4, IHL 5: no
# options), which parse_ipv4 would accept: the fields IP input checks, without
# building an IPv4Header. A packet whose first byte differs takes parse_ipv4.
IPV4_PLAIN_FIRST_BYTE = 4 << 4 | IPV4_MIN_HEADER_LENGTH >> 2
ipv4_plain_fields = _compile_unpacker(
    _IPV4_LAYOUT,
    ("total_length", "more_fragments", "fragment_offset", "ttl", "protocol", "src", "dst"),
)


def parse_ipv4(packet: Buffer) -> IPv4Header:
    """Parse the IPv4 header at the start of `packet`.

    Checksum, total_length and ttl are left to the caller, which counts them.
    """
    if len(packet) < IPV4_MIN_HEADER_LENGTH:
        raise _ipv4_error(packet)
    fields = _unpack_ipv4(packet)
    version, ihl = fields[0], fields[1]
    if version != 4 or ihl != 5:
        header_length = ihl * 4
        if version != 4 or ihl < 5 or header_length > len(packet):
            raise _ipv4_error(packet)
        return _tuple_new(
            IPv4Header, (*fields, bytes(packet[IPV4_MIN_HEADER_LENGTH:header_length]))
        )
    return _tuple_new(IPv4Header, (*fields, b""))


def build_ipv4(
    *,
    src: int,
    dst: int,
    protocol: int,
    payload_length: int,
    ttl: int = 64,
    identification: int = 0,
    dont_fragment: bool = True,
    dscp: int = 0,
    ecn: int = 0,
    options: bytes = b"",
) -> bytes:
    """The IPv4 header (options zero-padded to 4 bytes), checksum filled in."""
    padded_options = options + bytes(-len(options) % 4)
    if len(padded_options) > MAX_OPTIONS_LENGTH:
        raise ValueError(f"{len(options)} bytes of IPv4 options, at most 40 fit")
    header_length = IPV4_MIN_HEADER_LENGTH + len(padded_options)
    total_length = header_length + payload_length
    if total_length > 0xFFFF:
        raise ValueError(f"IPv4 total length {total_length} exceeds 65535")
    header = bytearray(header_length)
    _pack_ipv4_into(
        header,
        0,
        ihl=header_length >> 2,
        dscp=dscp,
        ecn=ecn,
        total_length=total_length,
        identification=identification,
        dont_fragment=dont_fragment,
        ttl=ttl,
        protocol=protocol,
        src=src,
        dst=dst,
    )
    header[IPV4_MIN_HEADER_LENGTH:] = padded_options
    _pack_checksum(header, _IPV4_CHECKSUM_OFFSET, internet_checksum(header))
    return bytes(header)


def build_ipv4_in_place(
    packet: bytearray, *, src: int, dst: int, protocol: int, ttl: int, identification: int
) -> None:
    """build_ipv4's header with no options, DF set, written over the first 20
    bytes of `packet` (the payload follows them): no header object, no copy."""
    total_length = len(packet)
    if total_length > 0xFFFF:
        raise ValueError(f"IPv4 total length {total_length} exceeds 65535")
    _pack_ipv4_into(
        packet,
        0,
        ihl=IPV4_MIN_HEADER_LENGTH >> 2,
        total_length=total_length,
        identification=identification,
        dont_fragment=True,
        ttl=ttl,
        protocol=protocol,
        src=src,
        dst=dst,
    )  # (the checksum field is written as 0, then summed)
    _pack_checksum(packet, _IPV4_CHECKSUM_OFFSET, prefix_checksum(packet, IPV4_MIN_HEADER_LENGTH))


@dataclass(slots=True)
class TcpOptions:
    """The TCP options we understand; for a repeated option the last one wins."""

    mss: int | None = None
    window_scale: int | None = None
    sack_permitted: bool = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    timestamps: tuple[int, int] | None = None  # (tsval, tsecr)
    unknown: tuple[tuple[int, bytes], ...] = ()  # (kind, data after the length byte)


class TcpHeader(NamedTuple):
    src_port: int
    dst_port: int
    seq: int
    ack: int
    data_offset: int
    flags: int
    window: int
    checksum: int
    urgent: int
    options: TcpOptions

    @property
    def header_length(self) -> int:
        return self.data_offset * 4


_unpack_tcp = _compile_unpacker(_TCP_LAYOUT, TcpHeader._fields[:-1])
_pack_tcp_into = _compile_packer(_TCP_LAYOUT)
_TCP_CHECKSUM_OFFSET = _TCP_LAYOUT.offset_of("checksum")
# For error reports on short segments: the fields up to the data offset.
_TCP_UP_TO_OFFSET = _flat_struct(TCP_HEADER, upto="flags")
_unpack_data_offset = _compile_unpacker(_TCP_UP_TO_OFFSET, ("data_offset",))


def _tcp_error(segment: Buffer) -> MalformedPacket:
    """The reason a segment failed, checked in the order the construct parse meets them."""
    if len(segment) >= _TCP_UP_TO_OFFSET.struct.size:
        (data_offset,) = _unpack_data_offset(segment)
        if data_offset < 5:
            return MalformedPacket("tcp-bad-offset", f"data offset {data_offset} is below 5")
        if len(segment) >= TCP_MIN_HEADER_LENGTH:
            return MalformedPacket(
                "tcp-bad-offset",
                f"data offset {data_offset} ({data_offset * 4} bytes) runs past "
                f"the {len(segment)}-byte segment",
            )
    return MalformedPacket("tcp-truncated", f"{len(segment)} bytes, the header needs 20")


def _bad_option(kind: int, position: int, problem: str) -> MalformedPacket:
    return MalformedPacket("tcp-bad-option", f"option kind {kind} at byte {position}: {problem}")


# NOP, NOP, Timestamps: all the options of nearly every segment after the
# handshake (Linux writes them so), read in one go; then two 32-bit values.
_NOP_NOP_TIMESTAMPS = OPT_NOP << 24 | OPT_NOP << 16 | OPT_TIMESTAMPS << 8 | _TIMESTAMPS.length
_NOP_NOP_TIMESTAMPS_STRUCT = struct.Struct("!III")


def _parse_tcp_options(segment: Buffer, position: int, end: int) -> TcpOptions:
    """Walk the kind/length bytes; agrees with construct_parse(TCP_OPTION...) exactly."""
    if end - position == _NOP_NOP_TIMESTAMPS_STRUCT.size:
        kinds, tsval, tsecr = _NOP_NOP_TIMESTAMPS_STRUCT.unpack_from(segment, position)
        if kinds == _NOP_NOP_TIMESTAMPS:
            return TcpOptions(None, None, False, (), (tsval, tsecr))
    options = TcpOptions()
    unknown = []
    while position < end:
        kind = segment[position]
        if kind == OPT_NOP:
            position += 1
            continue
        if kind == OPT_EOL:
            break  # the rest is padding
        if position + 1 == end:
            raise _bad_option(kind, position, "no room for its length byte")
        length = segment[position + 1]
        if length < 2 or position + length > end:
            raise _bad_option(kind, position, f"length {length} with {end - position} left")
        # Most frequent first: timestamps ride on every segment of a Linux peer.
        if kind == OPT_TIMESTAMPS:
            if length != _TIMESTAMPS.length:
                raise _bad_option(kind, position, f"length {length}, expected 10")
            _, tsval, tsecr = _TIMESTAMPS.body.unpack_from(segment, position + 1)
            options.timestamps = (tsval, tsecr)
        elif kind == OPT_SACK:
            if not _valid_sack_length(length):
                raise _bad_option(kind, position, f"length {length} is not 2 + 8n, n >= 1")
            options.sack_blocks = tuple(
                _SACK_BLOCK.iter_unpack(segment[position + 2 : position + length])
            )
        elif kind == OPT_MSS:
            if length != _MSS.length:
                raise _bad_option(kind, position, f"length {length}, expected 4")
            options.mss = _MSS.body.unpack_from(segment, position + 1)[1]
        elif kind == OPT_WINDOW_SCALE:
            if length != _WINDOW_SCALE.length:
                raise _bad_option(kind, position, f"length {length}, expected 3")
            options.window_scale = segment[position + 2]
        elif kind == OPT_SACK_PERMITTED:
            if length != _SACK_PERMITTED.length:
                raise _bad_option(kind, position, f"length {length}, expected 2")
            options.sack_permitted = True
        else:
            unknown.append((kind, bytes(segment[position + 2 : position + length])))
        position += length
    if unknown:
        options.unknown = tuple(unknown)
    return options


def parse_tcp(segment: Buffer) -> TcpHeader:
    """Parse the TCP header (and options) at the start of `segment`.

    The checksum is not verified here: it needs the IP pseudo-header.
    """
    if len(segment) < TCP_MIN_HEADER_LENGTH:
        raise _tcp_error(segment)
    fields = _unpack_tcp(segment)
    data_offset = fields[4]
    if data_offset == 5:
        return _tuple_new(TcpHeader, (*fields, TcpOptions()))
    if data_offset < 5 or data_offset * 4 > len(segment):
        raise _tcp_error(segment)
    options = _parse_tcp_options(segment, TCP_MIN_HEADER_LENGTH, data_offset * 4)
    return _tuple_new(TcpHeader, (*fields, options))


_NOP = bytes([OPT_NOP])
_NOP_NOP = _NOP * 2
_KNOWN_OPTION_KINDS = {
    OPT_EOL,
    OPT_NOP,
    OPT_MSS,
    OPT_WINDOW_SCALE,
    OPT_SACK_PERMITTED,
    OPT_SACK,
    OPT_TIMESTAMPS,
}


def _encode_tcp_options(options: TcpOptions) -> bytes:
    """Options in the order and alignment Linux writes them (tcp_options_write)."""
    stamps = options.timestamps
    if (
        stamps is not None
        and options.mss is None
        and options.window_scale is None
        and not options.sack_permitted
        and not options.sack_blocks
        and not options.unknown
    ):
        # Timestamps alone, as on every segment after the handshake: the
        # same NOP, NOP, Timestamps the general walk below writes, in one go.
        return _NOP_NOP_TIMESTAMPS_STRUCT.pack(_NOP_NOP_TIMESTAMPS, *stamps)
    parts = []
    if options.mss is not None:
        parts.append(_MSS.whole.pack(OPT_MSS, _MSS.length, options.mss))
    if options.timestamps is not None:
        if options.sack_permitted:
            parts.append(_SACK_PERMITTED.whole.pack(OPT_SACK_PERMITTED, _SACK_PERMITTED.length))
        else:
            parts.append(_NOP_NOP)
        parts.append(
            _TIMESTAMPS.whole.pack(OPT_TIMESTAMPS, _TIMESTAMPS.length, *options.timestamps)
        )
    elif options.sack_permitted:
        parts.append(_NOP_NOP)
        parts.append(_SACK_PERMITTED.whole.pack(OPT_SACK_PERMITTED, _SACK_PERMITTED.length))
    if options.window_scale is not None:
        parts.append(_NOP)
        parts.append(
            _WINDOW_SCALE.whole.pack(OPT_WINDOW_SCALE, _WINDOW_SCALE.length, options.window_scale)
        )
    if options.sack_blocks:
        parts.append(_NOP_NOP)
        parts.append(bytes([OPT_SACK, 2 + _SACK_BLOCK_SIZE * len(options.sack_blocks)]))
        parts.extend(_SACK_BLOCK.pack(left, right) for left, right in options.sack_blocks)
    for kind, data in options.unknown:
        if kind in _KNOWN_OPTION_KINDS:
            raise ValueError(f"option kind {kind} is not unknown: use its TcpOptions field")
        parts.append(bytes([kind, 2 + len(data)]))
        parts.append(data)
    encoded = b"".join(parts)
    encoded += _NOP * (-len(encoded) % 4)
    if len(encoded) > MAX_OPTIONS_LENGTH:
        raise ValueError(f"{len(encoded)} bytes of TCP options, at most 40 fit")
    return encoded


def build_tcp(
    *,
    src: int,
    dst: int,
    src_port: int,
    dst_port: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    options: TcpOptions | None = None,
    payload: Buffer = b"",
    urgent: int = 0,
    headroom: int = 0,
    partial_checksum: bool = False,
) -> bytearray:
    """Header, options (NOP-padded) and payload, with the checksum over the
    pseudo-header of `src` and `dst` (IPv4 addresses as integers) filled in.
    `headroom` bytes stay free in front, for the IP header to be written in
    place (the payload is copied once, here, and never again).
    `partial_checksum`: only the pseudo-header's sum goes in the field, the
    CHECKSUM_PARTIAL form a device with checksum offload completes (or, for
    the kernel's own delivery, has no need to)."""
    encoded_options = _encode_tcp_options(options) if options is not None else b""
    header_length = TCP_MIN_HEADER_LENGTH + len(encoded_options)
    segment = bytearray(headroom + TCP_MIN_HEADER_LENGTH)
    _pack_tcp_into(
        segment,
        headroom,
        src_port=src_port,
        dst_port=dst_port,
        seq=seq,
        ack=ack,
        data_offset=header_length >> 2,
        flags=flags,
        window=window,
        urgent=urgent,
    )
    segment += encoded_options
    segment += payload  # += takes any buffer by its bytes, whatever a memoryview's format
    length = len(segment) - headroom
    if partial_checksum:
        checksum = pseudo_header_sum(src, dst, PROTO_TCP, length)
    else:
        checksum = transport_checksum(src, dst, PROTO_TCP, memoryview(segment)[headroom:])
    _pack_checksum(segment, headroom + _TCP_CHECKSUM_OFFSET, checksum)
    return segment


class UdpHeader(NamedTuple):
    src_port: int
    dst_port: int
    length: int
    checksum: int


_unpack_udp = _compile_unpacker(_UDP_LAYOUT, UdpHeader._fields)
_new_udp = UdpHeader._make


def parse_udp(datagram: Buffer) -> UdpHeader:
    """Parse the UDP header; length and checksum are the caller's to check."""
    if len(datagram) < UDP_HEADER_LENGTH:
        raise MalformedPacket("udp-truncated", f"{len(datagram)} bytes, the header needs 8")
    return _new_udp(_unpack_udp(datagram))


class IcmpHeader(NamedTuple):
    type: int
    code: int
    checksum: int
    rest: int  # the 4 bytes after the checksum; echo: identifier << 16 | sequence


_unpack_icmp = _compile_unpacker(_ICMP_LAYOUT, IcmpHeader._fields)
_pack_icmp_into = _compile_packer(_ICMP_LAYOUT)
_new_icmp = IcmpHeader._make
_ICMP_CHECKSUM_OFFSET = _ICMP_LAYOUT.offset_of("checksum")


def parse_icmp(message: Buffer) -> IcmpHeader:
    """Parse the ICMP header; the checksum is the caller's to check."""
    if len(message) < ICMP_HEADER_LENGTH:
        raise MalformedPacket("icmp-truncated", f"{len(message)} bytes, the header needs 8")
    return _new_icmp(_unpack_icmp(message))


def build_icmp(*, type: int, code: int, rest: int = 0, payload: Buffer = b"") -> bytes:
    """Header and payload, checksum filled in."""
    message = bytearray(ICMP_HEADER_LENGTH)
    _pack_icmp_into(message, 0, type=type, code=code, rest=rest)
    message += payload
    _pack_checksum(message, _ICMP_CHECKSUM_OFFSET, internet_checksum(message))
    return bytes(message)
