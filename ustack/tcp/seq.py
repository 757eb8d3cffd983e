"""32-bit sequence number arithmetic (RFC 9293 3.4, RFC 1982 style).

Sequence numbers live on a circle of 2**32; `a < b` means b lies less than
half the circle ahead of a. Every comparison in the core goes through these.
"""

MOD = 1 << 32
MASK = MOD - 1
HALF = 1 << 31


def add(a: int, n: int) -> int:
    return (a + n) & MASK


def diff(a: int, b: int) -> int:
    """a - b as a signed distance in (-2**31, 2**31]."""
    d = (a - b) & MASK
    return d - MOD if d > HALF else d


def lt(a: int, b: int) -> bool:
    return 0 < ((b - a) & MASK) < HALF


def le(a: int, b: int) -> bool:
    return ((b - a) & MASK) < HALF


def gt(a: int, b: int) -> bool:
    return lt(b, a)


def ge(a: int, b: int) -> bool:
    return le(b, a)


def in_window(x: int, start: int, size: int) -> bool:
    """start <= x < start + size, on the circle."""
    return ((x - start) & MASK) < size
