"""What every header module shares: construct's parse and build with our errors,
and the few struct helpers of the per-packet codecs.

Each header is described once, as a construct Struct in its own module
(ipv4, tcp, udp, icmp), written to be read next to the RFC diagram. Construct's
parser costs 100+ us per header, far too slow per packet, so each module also
writes out the `struct` format of its fixed fields next to the schema; the
unit tests (tests/unit/test_headers.py) check every such format against its
schema: field order, widths, bit fields, defaults, and that both parse alike.

`construct_parse` and `construct_build` are the slow, schema-driven path that
the tests, the fuzzer and study tools use; they raise the same MalformedPacket
reasons as the fast parsers, which each module registers here with
`register_error_reasons`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from construct import Construct
from construct import ConstructError
from construct import Container

from ustack.wire.checksum import Buffer
from ustack.wire.errors import MalformedPacket

# Parsers take any Buffer and index and measure a memoryview by item: pass
# bytes-format views (memoryview(bytes or bytearray) and their slices), not
# casts to wider items.

# A 4-bit header length in 32-bit words leaves 60 - 20 bytes of options,
# IPv4 (RFC 791) and TCP (RFC 9293 3.1) alike.
MAX_OPTIONS_LENGTH = 40

# Writes a 16-bit checksum (a number as it stands on the wire) at an offset.
pack_checksum = struct.Struct("!H").pack_into

# NamedTuple._make is a Python-level wrapper of tuple.__new__: the parsers
# call this directly, `tuple_new(Header, fields)`, one call less per header.
tuple_new = tuple.__new__


@dataclass(frozen=True)
class ErrorReasons:
    """How a construct error in one schema maps to a MalformedPacket reason."""

    protocol: str
    truncated: str
    by_path: dict[tuple[str, ...], str]  # field path -> reason; longest prefix wins


_ERROR_REASONS: dict[Construct, ErrorReasons] = {}
_GENERIC_ERRORS = ErrorReasons("header", "malformed", {})


def register_error_reasons(schema: Construct, reasons: ErrorReasons) -> None:
    """Called by each header module for its schemas, at import."""
    _ERROR_REASONS[schema] = reasons


def _reason_for(schema: Construct, path: tuple[str, ...], building: bool) -> str:
    reasons = _ERROR_REASONS.get(schema, _GENERIC_ERRORS)
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
        built: bytes = schema.build(obj)
        return built
    except (ConstructError, KeyError, TypeError, ValueError, AttributeError) as error:
        failure = error
    path, message = _describe(failure)
    raise MalformedPacket(_reason_for(schema, path, building=True), message)
