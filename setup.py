"""setuptools needs setup() for cffi_modules; everything else is in pyproject.toml.

USTACK_MYPYC=1 (`USTACK_MYPYC=1 pip install .`) also compiles the sans-I/O
TCP core (ustack/tcp) with mypyc: the same code, some 1.4x faster per
segment. Opt-in, never the default: `ustack --version` says which build runs.
"""

import os
from pathlib import Path

from setuptools import setup

# Left interpreted: invariants.py (the fuzzer's checks; its error derives
# AssertionError, which a compiled class cannot).
COMPILED = sorted(
    str(path)
    for path in [*Path("ustack/tcp").glob("*.py"), *Path("ustack/tcp/congestion").glob("*.py")]
    if path.name != "invariants.py"
)

ext_modules = []
if os.environ.get("USTACK_MYPYC") == "1":
    from mypyc.build import mypycify

    # The isolated build environment has none of the dependencies (construct,
    # ...): mypyc takes their types as Any, as mypy does for these untyped ones.
    flags = ["--ignore-missing-imports", "--no-warn-unused-ignores"]
    ext_modules = mypycify([*flags, *COMPILED], opt_level="3", group_name="ustack_tcp")
else:
    # An editable install builds in place: a compiled build's modules left in
    # the tree would shadow the sources (and need a shared library the pure
    # install no longer maps). The pure build removes them.
    for source in COMPILED:
        for stale in Path(source).parent.glob(Path(source).stem + ".cpython-*.so"):
            stale.unlink()
    for stale in Path().glob("ustack_tcp__mypyc.*.so"):
        stale.unlink()

setup(cffi_modules=["ustack/wire/_build_checksum.py:ffibuilder"], ext_modules=ext_modules)
