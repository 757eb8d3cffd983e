"""cffi out-of-line API builder: compiles csrc/checksum.c into ustack.wire._checksum."""

from __future__ import annotations

from pathlib import Path

from cffi import FFI  # type: ignore[import-untyped]

CSRC = Path(__file__).resolve().parents[2] / "csrc"

ffibuilder = FFI()
ffibuilder.cdef(
    """
    uint16_t us_ones_sum(const uint8_t *buf, size_t len, uint16_t initial);
    uint16_t us_checksum(const uint8_t *buf, size_t len);
    uint16_t us_pseudo_sum_v4(uint32_t src, uint32_t dst, uint8_t proto, uint16_t l4_len);
    uint16_t us_l4_checksum_v4(uint32_t src, uint32_t dst, uint8_t proto,
                               const uint8_t *seg, size_t len);
    uint16_t us_update16(uint16_t checksum, uint16_t old_word, uint16_t new_word);
    uint16_t us_update32(uint16_t checksum, uint32_t old_value, uint32_t new_value);
    """
)
ffibuilder.set_source(
    "ustack.wire._checksum",
    '#include "checksum.h"',
    # Relative paths: setuptools runs the build from the project root.
    sources=["csrc/checksum.c"],
    include_dirs=["csrc"],
    extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(CSRC.parent), verbose=True)
