"""The TCP header (RFC 9293 3.1) and its options: MSS (RFC 9293 3.2), window
scale and timestamps (RFC 7323), SACK (RFC 2018).

TCP_HEADER and the TCP_OPTION cases are the single description of the header;
TCP_FIXED and the option structs are struct's view of their fixed fields,
written out next to them for the per-packet codec and checked against them by
tests/unit/test_headers.py (see ustack.wire.codec).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any
from typing import BinaryIO
from typing import NamedTuple

from construct import Array
from construct import BitStruct
from construct import Bytes
from construct import Const
from construct import Container
from construct import ExprValidator
from construct import FixedSized
from construct import Int8ub
from construct import Int16ub
from construct import Int32ub
from construct import ListContainer
from construct import Nibble
from construct import Pass
from construct import SizeofError
from construct import Struct
from construct import Subconstruct
from construct import Switch
from construct import obj_
from construct import this
from construct.core import stream_read_entire

from ustack.wire.checksum import Buffer
from ustack.wire.checksum import pseudo_header_sum
from ustack.wire.checksum import transport_checksum
from ustack.wire.codec import MAX_OPTIONS_LENGTH
from ustack.wire.codec import ErrorReasons
from ustack.wire.codec import pack_checksum
from ustack.wire.codec import register_error_reasons
from ustack.wire.codec import tuple_new
from ustack.wire.errors import MalformedPacket
from ustack.wire.ipv4 import PROTO_TCP

# Control bits, as they sit in the 8-bit flags field (RFC 9293, RFC 3168).
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

# Option kinds.
OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WINDOW_SCALE = 3
OPT_SACK_PERMITTED = 4
OPT_SACK = 5
OPT_TIMESTAMPS = 8

# The length byte of each fixed-size option: it counts the kind and itself.
MSS_LENGTH = 4
WINDOW_SCALE_LENGTH = 3
SACK_PERMITTED_LENGTH = 2
TIMESTAMPS_LENGTH = 10

# --- The construct definitions ---------------------------------------------------------
# Laid out like the RFC diagrams, which the formatter would undo.
# fmt: off

TCP_OPTION_MSS = Struct("length" / Const(MSS_LENGTH, Int8ub), "mss" / Int16ub)
TCP_OPTION_WINDOW_SCALE = Struct("length" / Const(WINDOW_SCALE_LENGTH, Int8ub), "shift" / Int8ub)
TCP_OPTION_SACK_PERMITTED = Struct("length" / Const(SACK_PERMITTED_LENGTH, Int8ub))
TCP_SACK_BLOCK = Struct("left" / Int32ub, "right" / Int32ub)
TCP_OPTION_TIMESTAMPS = Struct(
    "length" / Const(TIMESTAMPS_LENGTH, Int8ub), "tsval" / Int32ub, "tsecr" / Int32ub
)

# struct's view of each fixed-size option, from its kind byte on: kind, length, fields.
MSS_OPTION = struct.Struct("!BBH")
WINDOW_SCALE_OPTION = struct.Struct("!BBB")
SACK_PERMITTED_OPTION = struct.Struct("!BB")
TIMESTAMPS_OPTION = struct.Struct("!BBII")
SACK_BLOCK = struct.Struct("!II")  # left, right

_SACK_BLOCK_SIZE: int = TCP_SACK_BLOCK.sizeof()


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

# fmt: on


class _TcpOptionList(Subconstruct):  # type: ignore[misc]
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
        # Construct's own hook for Struct.compile(), so that TCP_HEADER.compile()
        # compiles the options too (bench/headers.py compares it).
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


# fmt: off
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

# struct's view of TCP_HEADER up to its options: one code per field, in order.
TCP_FIXED_FIELDS = (
    "src_port", "dst_port", "seq", "ack", "offset_reserved", "flags",
    "window", "checksum", "urgent",
)
TCP_FIXED = struct.Struct("!HHIIBBHHH")
# fmt: on

TCP_MIN_HEADER_LENGTH = TCP_FIXED.size
TCP_CHECKSUM_OFFSET = 16  # after src_port .. window
TCP_DATA_OFFSET_BYTE = 12  # offset_reserved: the data offset is its high nibble

register_error_reasons(
    TCP_HEADER,
    ErrorReasons(
        "tcp",
        "tcp-truncated",
        {
            ("offset_reserved", "data_offset"): "tcp-bad-offset",
            ("options",): "tcp-bad-offset",  # the options area runs past the segment
            ("options", "kind"): "tcp-bad-option",
            ("options", "body"): "tcp-bad-option",
        },
    ),
)
register_error_reasons(TCP_OPTION, ErrorReasons("tcp", "tcp-bad-option", {}))

# --- The per-packet codec -----------------------------------------------------------------


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


def _tcp_error(segment: Buffer) -> MalformedPacket:
    """The reason a segment failed, checked in the order the construct parse meets them."""
    if len(segment) > TCP_DATA_OFFSET_BYTE:
        data_offset = segment[TCP_DATA_OFFSET_BYTE] >> 4
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
_NOP_NOP_TIMESTAMPS = OPT_NOP << 24 | OPT_NOP << 16 | OPT_TIMESTAMPS << 8 | TIMESTAMPS_LENGTH
_NOP_NOP_TIMESTAMPS_STRUCT = struct.Struct("!III")
# The fixed header and NOP, NOP, Timestamps in one struct: a segment after
# the handshake is read (parse_tcp) and written (build_tcp) in one call.
_TCP_WITH_TIMESTAMPS = struct.Struct("!HHIIBBHHHIII")
_TIMESTAMPS_DATA_OFFSET = _TCP_WITH_TIMESTAMPS.size // 4  # 8 words
_TIMESTAMPS_OFFSET_BYTE = _TIMESTAMPS_DATA_OFFSET << 4


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
            if length != TIMESTAMPS_LENGTH:
                raise _bad_option(kind, position, f"length {length}, expected 10")
            _, _, tsval, tsecr = TIMESTAMPS_OPTION.unpack_from(segment, position)
            options.timestamps = (tsval, tsecr)
        elif kind == OPT_SACK:
            if not _valid_sack_length(length):
                raise _bad_option(kind, position, f"length {length} is not 2 + 8n, n >= 1")
            options.sack_blocks = tuple(
                SACK_BLOCK.iter_unpack(segment[position + 2 : position + length])
            )
        elif kind == OPT_MSS:
            if length != MSS_LENGTH:
                raise _bad_option(kind, position, f"length {length}, expected 4")
            options.mss = MSS_OPTION.unpack_from(segment, position)[2]
        elif kind == OPT_WINDOW_SCALE:
            if length != WINDOW_SCALE_LENGTH:
                raise _bad_option(kind, position, f"length {length}, expected 3")
            options.window_scale = segment[position + 2]
        elif kind == OPT_SACK_PERMITTED:
            if length != SACK_PERMITTED_LENGTH:
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
    length = len(segment)
    if (
        length >= _TCP_WITH_TIMESTAMPS.size
        and segment[TCP_DATA_OFFSET_BYTE] >> 4 == _TIMESTAMPS_DATA_OFFSET
    ):
        # Nearly every segment after a handshake with timestamps: the header
        # and NOP, NOP, Timestamps in one unpack (what the general path reads).
        (src_port, dst_port, seq, ack, _, flags, window, checksum, urgent, kinds, tsval, tsecr) = (
            _TCP_WITH_TIMESTAMPS.unpack_from(segment)
        )
        if kinds == _NOP_NOP_TIMESTAMPS:
            options = TcpOptions(None, None, False, (), (tsval, tsecr))
            fields = (src_port, dst_port, seq, ack, _TIMESTAMPS_DATA_OFFSET, flags, window,
                      checksum, urgent, options)  # fmt: skip
            return tuple_new(TcpHeader, fields)
    if length < TCP_MIN_HEADER_LENGTH:
        raise _tcp_error(segment)
    src_port, dst_port, seq, ack, offset_reserved, flags, window, checksum, urgent = (
        TCP_FIXED.unpack_from(segment)
    )
    data_offset = offset_reserved >> 4  # the reserved nibble is not reported
    if data_offset == 5:
        options = TcpOptions()
    elif data_offset < 5 or data_offset * 4 > length:
        raise _tcp_error(segment)
    else:
        options = _parse_tcp_options(segment, TCP_MIN_HEADER_LENGTH, data_offset * 4)
    return tuple_new(
        TcpHeader,
        (src_port, dst_port, seq, ack, data_offset, flags, window, checksum, urgent, options),
    )


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
        parts.append(MSS_OPTION.pack(OPT_MSS, MSS_LENGTH, options.mss))
    if stamps is not None:
        if options.sack_permitted:
            parts.append(SACK_PERMITTED_OPTION.pack(OPT_SACK_PERMITTED, SACK_PERMITTED_LENGTH))
        else:
            parts.append(_NOP_NOP)
        parts.append(TIMESTAMPS_OPTION.pack(OPT_TIMESTAMPS, TIMESTAMPS_LENGTH, *stamps))
    elif options.sack_permitted:
        parts.append(_NOP_NOP)
        parts.append(SACK_PERMITTED_OPTION.pack(OPT_SACK_PERMITTED, SACK_PERMITTED_LENGTH))
    if options.window_scale is not None:
        parts.append(_NOP)
        parts.append(
            WINDOW_SCALE_OPTION.pack(OPT_WINDOW_SCALE, WINDOW_SCALE_LENGTH, options.window_scale)
        )
    if options.sack_blocks:
        parts.append(_NOP_NOP)
        parts.append(bytes([OPT_SACK, 2 + _SACK_BLOCK_SIZE * len(options.sack_blocks)]))
        parts.extend(SACK_BLOCK.pack(left, right) for left, right in options.sack_blocks)
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
    pseudo-header of `src` and `dst` (addresses as integers) filled in.
    `headroom` bytes stay free in front, for the IP header to be written in
    place (the payload is copied once, here, and never again).
    `partial_checksum`: only the pseudo-header's sum goes in the field, the
    CHECKSUM_PARTIAL form a device with checksum offload completes (or, for
    the kernel's own delivery, has no need to). The TCP layer passes every
    argument in place, once per segment (keywords cost a matching per call);
    tests and tools name them."""
    if (
        options is not None
        and (stamps := options.timestamps) is not None
        and options.mss is None
        and options.window_scale is None
        and not options.sack_permitted
        and not options.sack_blocks
        and not options.unknown
    ):
        # Timestamps alone, as on every segment after the handshake: header
        # and NOP, NOP, Timestamps written in one call (the bytes
        # _encode_tcp_options gives), no options object encoded apart.
        segment = bytearray(headroom + _TCP_WITH_TIMESTAMPS.size)
        _TCP_WITH_TIMESTAMPS.pack_into(
            segment, headroom, src_port, dst_port, seq, ack, _TIMESTAMPS_OFFSET_BYTE, flags,
            window, 0, urgent, _NOP_NOP_TIMESTAMPS, stamps[0], stamps[1],
        )  # fmt: skip
    else:
        encoded_options = _encode_tcp_options(options) if options is not None else b""
        header_length = TCP_MIN_HEADER_LENGTH + len(encoded_options)
        segment = bytearray(headroom + TCP_MIN_HEADER_LENGTH)
        TCP_FIXED.pack_into(
            segment,
            headroom,
            src_port,
            dst_port,
            seq,
            ack,
            header_length >> 2 << 4,  # data offset in words; reserved bits 0
            flags,
            window,
            0,  # checksum: summed below, with the field 0
            urgent,
        )
        segment += encoded_options
    segment += payload  # += takes any buffer by its bytes, whatever a memoryview's format
    length = len(segment) - headroom
    if partial_checksum:
        checksum = pseudo_header_sum(src, dst, PROTO_TCP, length)
    else:
        checksum = transport_checksum(src, dst, PROTO_TCP, memoryview(segment)[headroom:])
    pack_checksum(segment, headroom + TCP_CHECKSUM_OFFSET, checksum)
    return segment
