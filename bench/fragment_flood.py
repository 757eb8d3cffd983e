"""A flood of random IPv4 fragments into a Stack: the memory reassembly holds.

Run: python bench/fragment_flood.py [--fragments 1000000] [--high-thresh BYTES]

Random sources (1,000), IDs, offsets (0..65,528), sizes (8..1,480 bytes) and
MF bits, at a virtual 100,000 fragments a second, so that the memory cap, not
the 30 s timeout, is what bounds the held fragments. Reported: the peak of the
bytes charged against the cap, the bytes the held Python objects really take
at the end (sys.getsizeof, to check FRAGMENT_OVERHEAD), the process's RSS
before and after and its peak (VmHWM), and the fragments handled a second.
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import time
from pathlib import Path

from ustack.net.fragments import FragmentLimits
from ustack.stack import Stack
from ustack.wire.checksum import internet_checksum

US = 0xC6120002
SOURCES = 1000
RATE = 100_000.0  # fragments a second, on the virtual clock
_PATTERN = bytes(range(256)) * 8


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def held_bytes(stack: Stack) -> int:
    """What the held datagrams' Python objects take (not counting shared ints)."""
    total = sys.getsizeof(stack.ip.fragments.datagrams)
    for key, datagram in stack.ip.fragments.datagrams.items():
        total += sys.getsizeof(key) + sys.getsizeof(datagram)
        for table in (datagram.starts, datagram.ends, datagram.pieces):
            total += sys.getsizeof(table)
        total += sum(sys.getsizeof(piece) for piece in datagram.pieces)
        if datagram.first_header is not None:
            total += sys.getsizeof(datagram.first_header)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fragments", type=int, default=1_000_000)
    parser.add_argument("--high-thresh", type=int, default=FragmentLimits.high_thresh)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    sent = [0]

    def transmit(packet: bytes | bytearray) -> bool:
        sent[0] += 1
        return True

    stack = Stack(US, transmit, fragment_limits=FragmentLimits(high_thresh=args.high_thresh))
    reassembly = stack.ip.fragments
    header = struct.Struct("!BBHHHBBHII")
    rss_before = rss_kib()
    peak = 0
    started = time.perf_counter()
    for index in range(args.fragments):
        size = 8 * rng.randint(1, 185)
        field = (0x2000 if rng.random() < 0.9 else 0) | rng.randrange(8192 - 185)
        src = 0xC6130000 + rng.randrange(SOURCES)  # 198.19.x.y
        packet = bytearray(
            header.pack(0x45, 0, 20 + size, rng.randrange(65536), field, 64, 17, 0, src, US)
        )
        struct.pack_into("!H", packet, 10, internet_checksum(packet))
        packet += _PATTERN[:size]
        stack.receive(packet, index / RATE)
        if reassembly.memory > peak:
            peak = reassembly.memory
    elapsed = time.perf_counter() - started
    counters = stack.counters
    print(f"fragments:        {args.fragments:,} in {elapsed:.1f} s "
          f"({args.fragments / elapsed:,.0f}/s, packet building included)")  # fmt: skip
    print(f"cap:              {args.high_thresh:,} bytes")
    print(f"peak charged:     {peak:,} bytes ({len(reassembly.datagrams):,} datagrams held now)")
    print(f"held objects now: {held_bytes(stack):,} bytes (sys.getsizeof), "
          f"charged {reassembly.memory:,}")  # fmt: skip
    print(f"RSS:              {rss_before:,} KiB before, {rss_kib():,} KiB after, "
          f"peak {rss_kib('VmHWM'):,} KiB")  # fmt: skip
    for name in sorted(counters):
        if name.startswith(("ip.reasm", "ip.drop.frag", "icmp.out", "udp.out")):
            print(f"  {name:36} {counters[name]:>10,}")
    print(f"  packets sent                         {sent[0]:>10,}")


if __name__ == "__main__":
    main()
