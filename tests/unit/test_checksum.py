"""Property tests of the C checksum core (ustack.wire.checksum) against the
pure-Python RFC 1071 reference (ustack.wire.checksum_ref), plus RFC worked examples."""

from __future__ import annotations

import random
import struct
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from ustack.wire import checksum as cs
from ustack.wire import checksum_ref as ref
from ustack.wire.checksum import ffi  # the cffi FFI of ustack.wire._checksum

Buffer = bytes | bytearray | memoryview

# The reference needs ~3 ms for 64 KiB, so no per-example deadline.
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

MAX_LEN = 70_000
TCP, UDP = 6, 17

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)

# Lengths: the tiny ones (0, 1, the C tail paths), around the 8- and 64-byte
# block edges, MTU-sized, and up to past 64 KiB.
lengths = st.one_of(
    st.integers(0, 3),
    st.integers(0, 200),
    st.integers(1000, 2000),
    st.integers(60_000, MAX_LEN),
)


def fill(kind: str, length: int, seed: int) -> bytes:
    """A buffer of `length` bytes: random, all 0x00, all 0xFF, or 0xFF with a
    few random bytes (long carry chains in every accumulator)."""
    rng = random.Random(seed)
    if kind == "zeros":
        return bytes(length)
    if kind == "ones":
        return b"\xff" * length
    if kind == "mostly_ones":
        data = bytearray(b"\xff" * length)
        for _ in range(min(length, 8)):
            data[rng.randrange(length)] = rng.randrange(256)
        return bytes(data)
    return rng.randbytes(length)


@st.composite
def buffers(draw: st.DrawFn, length: st.SearchStrategy[int] = lengths) -> bytes:
    kind = draw(st.sampled_from(["random", "random", "zeros", "ones", "mostly_ones"]))
    return fill(kind, draw(length), draw(st.integers(0, 2**32)))


# Hypothesis-controlled bytes for small sizes (shrinks to a minimal example),
# generated buffers for everything else.
any_buffer = st.one_of(st.binary(max_size=300), buffers())
odd_buffer = buffers(lengths.filter(lambda n: n % 2 == 1))
even_buffer = st.one_of(
    st.binary(max_size=300).filter(lambda b: len(b) % 2 == 0),
    buffers(lengths.map(lambda n: n & ~1)),
)


def views(data: bytes, pad: int = 8) -> list[Buffer]:
    """`data` as every kind of buffer the wrapper takes, the memoryviews being
    slices of a larger bytearray at every alignment offset 0..7."""
    out: list[Buffer] = [data, bytearray(data), memoryview(data)]
    for offset in range(8):
        big = bytearray(random.Random(offset).randbytes(offset)) + data + b"\xa5" * pad
        view = memoryview(big)[offset : offset + len(data)]
        assert view.tobytes() == data
        out += [view, view.toreadonly(), bytes(view), bytearray(view)]
    return out


def words(*values: int) -> bytes:
    return struct.pack(f"!{len(values)}H", *values)


def get16(data: Buffer, offset: int) -> int:
    return struct.unpack_from("!H", data, offset)[0]


# --- RFC worked examples and fixed values -------------------------------------------


def test_rfc1071_section3_example() -> None:
    # RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sum to ddf2 (one's complement).
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ref.ones_sum(data) == 0xDDF2
    for buf in views(data):
        assert cs.ones_sum(buf) == 0xDDF2
        assert cs.internet_checksum(buf) == 0x220D
    # With the checksum appended, the whole sums to 0xFFFF and checks to 0.
    assert cs.ones_sum(data + words(0x220D)) == 0xFFFF
    assert cs.internet_checksum(data + words(0x220D)) == 0


def test_known_ipv4_header() -> None:
    # A classic IPv4 header (Wikipedia "IPv4 header checksum"): checksum b861.
    header = bytearray.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert cs.internet_checksum(header) == 0xB861 == ref.internet_checksum(header)
    struct.pack_into("!H", header, 10, 0xB861)
    assert cs.internet_checksum(header) == 0


def test_empty_buffer() -> None:
    for buf in views(b""):
        assert cs.ones_sum(buf) == 0
        assert cs.internet_checksum(buf) == 0xFFFF
        assert cs.ones_sum(buf, 0x1234) == 0x1234
    assert ref.internet_checksum(b"") == 0xFFFF


@pytest.mark.parametrize("value", range(256))
def test_single_byte_is_high_order_byte_of_padded_word(value: int) -> None:
    data = bytes([value])
    assert cs.ones_sum(data) == value << 8 == ref.ones_sum(data)
    assert cs.internet_checksum(data) == ~(value << 8) & 0xFFFF
    for buf in views(data):
        assert cs.ones_sum(buf) == value << 8


@pytest.mark.parametrize(
    "length",
    [
        0,
        1,
        2,
        3,
        4,
        5,
        7,
        8,
        9,
        15,
        16,
        17,
        63,
        64,
        65,
        127,
        128,
        129,
        1499,
        1500,
        65535,
        65536,
        65537,
        MAX_LEN - 1,
        MAX_LEN,
    ],
)
def test_all_ones_and_all_zeros(length: int) -> None:
    ones = b"\xff" * length
    # Even: k words of 0xFFFF fold to 0xFFFF (-0), never to +0. Odd: plus 0xFF00.
    if length == 0:
        expected = 0
    elif length % 2:
        expected = 0xFF00
    else:
        expected = 0xFFFF
    assert ref.ones_sum(ones) == expected
    assert cs.ones_sum(ones) == expected
    assert cs.internet_checksum(ones) == ~expected & 0xFFFF
    assert cs.ones_sum(memoryview(bytearray(ones))[1:]) == ref.ones_sum(ones[1:])
    zeros = bytes(length)
    assert cs.ones_sum(zeros) == 0
    assert cs.internet_checksum(zeros) == 0xFFFF


def test_pseudo_header_known_value() -> None:
    # 198.18.0.1 -> 198.18.0.2, TCP, 20 bytes:
    # c612 + 0001 + c612 + 0002 + 0006 + 0014 = 0x18c41 -> 0x8c42.
    assert cs.pseudo_header_sum(0xC6120001, 0xC6120002, TCP, 20) == 0x8C42
    assert ref.pseudo_header_sum(0xC6120001, 0xC6120002, TCP, 20) == 0x8C42
    assert cs.pseudo_header_sum(0, 0, 0, 0) == 0
    assert cs.pseudo_header_sum(0xFFFFFFFF, 0xFFFFFFFF, 0xFF, 0xFFFF) == (
        ref.pseudo_header_sum(0xFFFFFFFF, 0xFFFFFFFF, 0xFF, 0xFFFF)
    )


# --- The core against the reference ---------------------------------------------------


@SETTINGS
@given(any_buffer)
@example(b"")
@example(b"\x01")
@example(b"\xff" * MAX_LEN)
def test_ones_sum_and_checksum_match_reference(data: bytes) -> None:
    expected = ref.ones_sum(data)
    assert cs.ones_sum(data) == expected
    assert cs.internet_checksum(data) == ref.internet_checksum(data) == ~expected & 0xFFFF


@SETTINGS
@given(odd_buffer)
def test_odd_lengths_match_reference(data: bytes) -> None:
    assert len(data) % 2 == 1
    assert cs.ones_sum(data) == ref.ones_sum(data)
    assert cs.internet_checksum(data) == ref.internet_checksum(data)


@settings(SETTINGS, max_examples=40)
@given(buffers(st.one_of(st.integers(0, 200), st.integers(60_000, 65_536))))
def test_every_alignment_and_buffer_type(data: bytes) -> None:
    expected = ref.ones_sum(data)
    for buf in views(data):
        assert cs.ones_sum(buf) == expected, (type(buf), len(buf))
        assert cs.internet_checksum(buf) == ~expected & 0xFFFF


@SETTINGS
@given(any_buffer, u16)
def test_initial_matches_reference(data: bytes, initial: int) -> None:
    assert cs.ones_sum(data, initial) == ref.ones_sum(data, initial)


@SETTINGS
@given(even_buffer, any_buffer)
def test_initial_chains_after_even_length_prefix(head: bytes, tail: bytes) -> None:
    assert len(head) % 2 == 0
    whole = cs.ones_sum(head + tail)
    assert whole == ref.ones_sum(head + tail)
    assert cs.ones_sum(tail, initial=cs.ones_sum(head)) == whole
    assert cs.ones_sum(memoryview(tail), cs.ones_sum(memoryview(head))) == whole


@SETTINGS
@given(u32, u32, u8, u16)
def test_pseudo_header_sum_matches_reference(src: int, dst: int, proto: int, length: int) -> None:
    assert cs.pseudo_header_sum(src, dst, proto, length) == (
        ref.pseudo_header_sum(src, dst, proto, length)
    )


segments = buffers(
    st.one_of(st.integers(0, 200), st.integers(1000, 1600), st.integers(60_000, 65_535))
)


@SETTINGS
@given(u32, u32, u8, segments)
def test_transport_checksum_matches_reference(
    src: int, dst: int, proto: int, segment: bytes
) -> None:
    expected = ref.transport_checksum(src, dst, proto, segment)
    assert cs.transport_checksum(src, dst, proto, segment) == expected
    pseudo = ref.pseudo_header_sum(src, dst, proto, len(segment))
    assert cs.ones_sum(segment, pseudo) == ~expected & 0xFFFF


@SETTINGS
@given(u32, u32, st.sampled_from([(TCP, 16, 20), (UDP, 6, 8)]), segments, st.booleans())
def test_transport_checksum_filled_in_verifies_to_zero(
    src: int, dst: int, kind: tuple[int, int, int], body: bytes, as_view: bool
) -> None:
    proto, field, header_len = kind
    segment = bytearray(body.ljust(header_len, b"\x5a"))
    segment[field : field + 2] = b"\x00\x00"
    value = cs.transport_checksum(src, dst, proto, segment)
    assert value == ref.transport_checksum(src, dst, proto, segment)
    struct.pack_into("!H", segment, field, value)
    filled: Buffer = memoryview(segment) if as_view else bytes(segment)
    assert cs.transport_checksum(src, dst, proto, filled) == 0
    assert ref.transport_checksum(src, dst, proto, filled) == 0
    # And a corrupted one does not verify (a single flipped bit always shows).
    segment[len(segment) // 2] ^= 0x10
    assert cs.transport_checksum(src, dst, proto, segment) != 0


# --- RFC 1624 incremental update ------------------------------------------------------
#
# What the C code yields (eqn. 3, HC' = ~(~HC + ~m + m'), with end-around-carry
# folding of a sum that is only 0 when all its terms are): starting from a
# checksum computed from scratch, the result is 0x0000, never 0xFFFF, whenever
# the new header sums to 0 mod 0xFFFF; from-scratch computation gives 0x0000
# there too, so both agree (RFC 1624 section 3's example, and the case eqn. 2
# of RFC 1141 got wrong with 0xFFFF). The single difference: when every word
# of the new header (checksum field aside) is zero, from scratch gives 0xFFFF
# and eqn. 3 gives 0x0000. RFC 1624 notes that from-scratch computation only
# gives 0xFFFF for an all-zero header, which no IPv4 header (version 4) or
# TCP/UDP pseudo-header (nonzero protocol) can be, so there the two must agree
# and do. Unchanged fields (m == m') leave the checksum unchanged (pace RFC 1624
# erratum 4782, whose 0xFFFF comes from dropping the end-around carry).


@st.composite
def headers(draw: st.DrawFn, field_size: int) -> tuple[bytearray, int, int]:
    """A header of even length with a valid checksum filled in, the checksum
    offset, and the offset of a `field_size`-byte field not overlapping it."""
    n_words = draw(st.integers(max(2, field_size // 2 + 1), 30))
    header = bytearray(
        draw(
            st.one_of(
                st.binary(min_size=2 * n_words, max_size=2 * n_words),
                buffers(st.just(2 * n_words)),
            )
        )
    )
    field_words = field_size // 2
    first = draw(st.integers(0, n_words - field_words))
    field = 2 * first
    ck = 2 * draw(
        st.sampled_from([i for i in range(n_words) if not first <= i < first + field_words])
    )
    header[ck : ck + 2] = b"\x00\x00"
    struct.pack_into("!H", header, ck, ref.internet_checksum(header))
    assert cs.internet_checksum(header) == 0
    return header, ck, field


def recompute(header: bytearray, ck: int) -> int:
    zeroed = bytearray(header)
    zeroed[ck : ck + 2] = b"\x00\x00"
    return ref.internet_checksum(zeroed)


def check_update(header: bytearray, ck: int, updated: int) -> None:
    """The incremental result equals from-scratch computation, except in the
    all-zero case described above, where it is 0x0000 against 0xFFFF."""
    full = recompute(header, ck)
    if not any(header[:ck] + header[ck + 2 :]):
        assert (updated, full) == (0x0000, 0xFFFF)
    else:
        assert updated == full
        struct.pack_into("!H", header, ck, updated)
        assert cs.internet_checksum(header) == 0


def update_field_and_check(
    case: tuple[bytearray, int, int], new: int, update: Callable[[int, int, int], int], fmt: str
) -> None:
    """Set the field (struct format `fmt`) to `new`, its checksum by `update`:
    the incremental checksum must be the recomputed one (check_update)."""
    header, ck, field = case
    (old,) = struct.unpack_from(fmt, header, field)
    updated = update(get16(header, ck), old, new)
    struct.pack_into(fmt, header, field, new)
    check_update(header, ck, updated)


@SETTINGS
@given(headers(2), u16)
def test_update16_matches_recompute(case: tuple[bytearray, int, int], new: int) -> None:
    update_field_and_check(case, new, cs.update16, "!H")


@SETTINGS
@given(headers(4), u32)
def test_update32_matches_recompute(case: tuple[bytearray, int, int], new: int) -> None:
    update_field_and_check(case, new, cs.update32, "!I")


@SETTINGS
@given(headers(2))
def test_update16_to_a_zero_checksum(case: tuple[bytearray, int, int]) -> None:
    # Choose the new word so that the new header sums to 0xFFFF (-0): from
    # scratch the checksum is then 0x0000, and eqn. 3 must give 0x0000 too.
    header, ck, field = case
    rest = bytearray(header)
    rest[ck : ck + 2] = rest[field : field + 2] = b"\x00\x00"
    new = 0xFFFF - ref.ones_sum(rest) if ref.ones_sum(rest) else 0xFFFF
    updated = cs.update16(get16(header, ck), get16(header, field), new)
    struct.pack_into("!H", header, field, new)
    assert recompute(header, ck) == 0x0000
    assert updated == 0x0000


@SETTINGS
@given(headers(2))
def test_update16_unchanged_field_keeps_checksum(case: tuple[bytearray, int, int]) -> None:
    header, ck, field = case
    word = get16(header, field)
    checksum = get16(header, ck)
    if checksum == 0xFFFF:  # only from an all-zero header: see the note above
        assert cs.update16(checksum, word, word) == 0x0000
    else:
        assert cs.update16(checksum, word, word) == checksum


def test_update16_rfc1624_section3_example() -> None:
    # Other words sum to 0xCD7A; m = 0x5555 changes to m' = 0x3285.
    header = bytearray(words(0xCD7A, 0x5555, 0x0000))
    struct.pack_into("!H", header, 4, cs.internet_checksum(header))
    assert get16(header, 4) == 0xDD2F
    updated = cs.update16(0xDD2F, 0x5555, 0x3285)
    # From scratch: ~(0xCD7A + 0x3285) = ~0xFFFF = 0x0000; eqn. 2 would give 0xFFFF.
    assert updated == 0x0000
    assert cs.internet_checksum(words(0xCD7A, 0x3285, 0x0000)) == 0x0000
    assert cs.internet_checksum(words(0xCD7A, 0x3285, updated)) == 0


def test_update16_corner_cases() -> None:
    # Erratum 4782's example: HC = 0, m = m' = 0x5555. With the end-around carry
    # 0xFFFF + 0xAAAA + 0x5555 folds to 0xFFFF, so HC' stays 0x0000.
    assert cs.update16(0x0000, 0x5555, 0x5555) == 0x0000
    # The one disagreement: a header [0x1234, checksum] whose word becomes 0.
    # From scratch: all zero, checksum 0xFFFF. Eqn. 3 gives 0x0000.
    assert cs.internet_checksum(words(0x1234, 0)) == 0xEDCB
    assert cs.update16(0xEDCB, 0x1234, 0x0000) == 0x0000
    assert cs.internet_checksum(words(0, 0)) == 0xFFFF
    # ... and back again from the 0xFFFF of the all-zero header is exact.
    assert cs.update16(0xFFFF, 0x0000, 0x1234) == 0xEDCB
    # The TTL decrement of the IPv4 header above (ttl/proto word 0x4011 -> 0x3f11).
    assert cs.update16(0xB861, 0x4011, 0x3F11) == ref.internet_checksum(
        bytes.fromhex("45000073000040003f110000c0a80001c0a800c7")
    )


def test_update32_address_rewrite() -> None:
    header = bytearray.fromhex("450000730000400040110000c0a80001c0a800c7")
    struct.pack_into("!H", header, 10, ref.internet_checksum(header))
    # 192.168.0.1 -> 10.0.0.1: 0x479e + ~0xc0a8 + 0x0a00 = 0x90f5, so ~ is 0x6f0a.
    updated = cs.update32(get16(header, 10), 0xC0A80001, 0x0A000001)
    struct.pack_into("!I", header, 12, 0x0A000001)
    assert updated == recompute(header, 10) == 0x6F0A
    struct.pack_into("!H", header, 10, updated)
    assert cs.internet_checksum(header) == 0


@SETTINGS
@given(u32, u32, u32, segments)
def test_update32_pseudo_header_address_rewrite(
    src: int, dst: int, new_src: int, body: bytes
) -> None:
    # NAT: the source address is in the TCP pseudo-header, so the TCP checksum
    # follows an address rewrite through update32 alone.
    segment = bytearray(body.ljust(20, b"\x00"))
    segment[16:18] = b"\x00\x00"
    old_ck = cs.transport_checksum(src, dst, TCP, segment)
    assert cs.update32(old_ck, src, new_src) == ref.transport_checksum(new_src, dst, TCP, segment)


# --- No copies ---------------------------------------------------------------------------


def _calls(data: Buffer) -> list[Callable[[], int]]:
    return [
        lambda: cs.ones_sum(data),
        lambda: cs.internet_checksum(data),
        lambda: cs.transport_checksum(1, 2, TCP, data),
    ]


def _peak_bytes(func: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        func()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before


def test_no_copy_of_memoryview_slice_or_bytes() -> None:
    size = 1 << 20
    backing = bytearray(random.Random(0).randbytes(size + 16))
    view = memoryview(backing)[3 : 3 + size]  # writable, odd offset
    readonly = bytes(view)
    # The pointer handed to C is into the caller's memory, not a copy of it.
    address = int(ffi.cast("uintptr_t", ffi.from_buffer(backing)))
    assert int(ffi.cast("uintptr_t", ffi.from_buffer(view))) == address + 3
    assert len(ffi.from_buffer(view)) == size
    # The measurement does see a copy of the buffer ...
    assert _peak_bytes(lambda: bytes(view)) >= size
    # ... and the functions make none, for a slice or for read-only bytes.
    for data in (view, view.toreadonly(), readonly, memoryview(readonly)[1:]):
        for call in _calls(data):
            assert _peak_bytes(call) < size // 16
    expected = ref.ones_sum(readonly)
    assert cs.ones_sum(view) == cs.ones_sum(readonly) == expected
    # A change to the underlying bytearray is seen through the view.
    backing[3] ^= 0xFF
    assert cs.ones_sum(view) == ref.ones_sum(view) != expected


def test_multibyte_itemsize_views_count_bytes() -> None:
    # len() of a memoryview counts items; the checksum must cover every byte.
    data = random.Random(1).randbytes(1502)
    for fmt in ("H", "I", "Q"):
        cut = len(data) - len(data) % struct.calcsize(fmt)
        view = memoryview(data[:cut]).cast(fmt)
        assert cs.ones_sum(view) == ref.ones_sum(data[:cut])
        assert cs.internet_checksum(view) == ref.internet_checksum(data[:cut])
        assert cs.transport_checksum(1, 2, UDP, view) == (
            ref.transport_checksum(1, 2, UDP, data[:cut])
        )


def test_non_contiguous_view_is_refused() -> None:
    with pytest.raises(BufferError):
        cs.internet_checksum(memoryview(bytes(100))[::2])
