"""The C allocator's thresholds, pinned for the daemon's process (mallopt(3)).

glibc's malloc moves two thresholds as a process runs: blocks from
M_MMAP_THRESHOLD up (128 KiB at start) get a mapping of their own, and free
memory at the top of the heap beyond M_TRIM_THRESHOLD goes back to the
kernel; freeing a mapped block raises both. A connection's send buffer and
its transport's pending writes are bytearrays of up to 256 KiB that an ACK
halves and a write refills, and CPython reallocates a bytearray that falls
under half its room. Where those blocks land depends on what the process
allocated before: in one state each refill faults its pages in afresh. On
the 2-core VM, a 1 GB download at MTU 65535 from a daemon in that state took
537 minor faults per MB, 1.4-1.7 ms of kernel time per MB against 0.2-0.3,
and ran at 360-420 MB/s against 860-1,030 (at MTU 1500: 857 faults per MB,
2.2 ms, 289 against 946 MB/s); which state a daemon got was settled at
its start, by the layout of the code it imported (measured in issue 18's
search for the daemon's "CPU per MB that doubles"). Pinned, both thresholds
stop moving and the buffers stay in the heap: every start is the fast one.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
# Far above any buffer a connection holds (the buffers' limits are 256 KiB
# by default), and the most mallopt(3) documents for it on 64 bits.
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 64 * 1024 * 1024  # the free heap top kept before giving it back


def pin_malloc_thresholds() -> bool:
    """Pin both thresholds; False where the C library cannot (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mmap_pinned = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    trim_pinned = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(mmap_pinned and trim_pinned)
