"""setuptools needs setup() for cffi_modules; everything else is in pyproject.toml.

USTACK_MYPYC=1 also compiles the sans-I/O TCP core (ustack/tcp) with mypyc:
the same code, some 1.4x faster per segment. Opt-in, never the default;
mypy must be in the build environment, so without build isolation:

    pip install 'mypy>=1.10' 'setuptools>=77' cffi
    USTACK_MYPYC=1 pip install --no-build-isolation -e .

`ustack --version` says which build runs.
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
    try:
        from mypyc.build import mypycify
    except ImportError:
        raise SystemExit(
            "USTACK_MYPYC=1 needs mypy where the build runs: pip install 'mypy>=1.10' "
            "'setuptools>=77' cffi, then USTACK_MYPYC=1 pip install --no-build-isolation ..."
        ) from None

    # construct and pytun carry no types: mypyc takes them as Any, as mypy does.
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
