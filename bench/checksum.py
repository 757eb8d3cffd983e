"""Benchmark the C checksum core against the pure-Python RFC 1071 reference.

Run: python bench/checksum.py

Every C timing goes through the public wrapper (ustack.wire.checksum), so it
includes the cffi call and the ffi.from_buffer cost, as the stack pays them.
Each cell is the best of REPEATS timeit runs of an auto-calibrated number of
calls (>= MIN_SECONDS per run); the best run is the least disturbed one.
"""

from __future__ import annotations

import argparse
import random
import timeit
from collections.abc import Callable

import machine  # bench/machine.py: scripts here run as python bench/NAME.py

from ustack.wire import checksum as c_impl
from ustack.wire import checksum_ref as py_impl

SIZES = (40, 1500, 65536)
TRANSPORT_SIZE = 1500
REPEATS = 5
MIN_SECONDS = 0.1
SRC, DST, TCP = 0xC6120001, 0xC6120002, 6


def best_ns_per_call(func: Callable[[], object]) -> float:
    """Best-of-REPEATS time of one call of func, in nanoseconds."""
    timer = timeit.Timer(func)
    number = 1
    while True:  # like Timer.autorange, but to MIN_SECONDS rather than 0.2 s
        if timer.timeit(number) >= MIN_SECONDS:
            break
        number *= 2
    return min(timer.repeat(repeat=REPEATS, number=number)) / number * 1e9


def row(name: str, size: int, c_func: Callable[[], object], py_func: Callable[[], object]) -> str:
    c_ns = best_ns_per_call(c_func)
    py_ns = best_ns_per_call(py_func)
    # bytes per nanosecond is GB/s (10^9 bytes per second).
    return (
        f"{name:<20} {size:>7} {c_ns:>12.1f} {size / c_ns:>8.2f}"
        f" {py_ns:>14.1f} {size / py_ns:>8.4f} {py_ns / c_ns:>9.0f}x"
    )


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # (--help)
    print(machine.describe())
    rng = random.Random(1071)
    header = (
        f"{'function':<20} {'bytes':>7} {'C ns/call':>12} {'C GB/s':>8}"
        f" {'Py ns/call':>14} {'Py GB/s':>8} {'speed-up':>10}"
    )
    print(header)
    print("-" * len(header))
    for size in SIZES:
        buf = rng.randbytes(size)
        print(
            row(
                "internet_checksum",
                size,
                lambda buf=buf: c_impl.internet_checksum(buf),
                lambda buf=buf: py_impl.internet_checksum(buf),
            ),
            flush=True,
        )
    seg = rng.randbytes(TRANSPORT_SIZE)
    print(
        row(
            "transport_checksum",
            TRANSPORT_SIZE,
            lambda: c_impl.transport_checksum(SRC, DST, TCP, seg),
            lambda: py_impl.transport_checksum(SRC, DST, TCP, seg),
        )
    )


if __name__ == "__main__":
    main()
