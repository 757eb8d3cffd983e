"""cffi out-of-line API builder: compiles csrc/checksum.c into ustack.wire._checksum."""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

CSRC = Path(__file__).resolve().parents[2] / "csrc"

ffibuilder = FFI()
# The header is the one description of the C functions: cffi reads their
# declarations from it (cffi's parser takes no preprocessor lines).
_DECLARATIONS = "\n".join(
    line for line in (CSRC / "checksum.h").read_text().splitlines() if not line.startswith("#")
)
ffibuilder.cdef(_DECLARATIONS)
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
