"""The compiled build's guard for the command line: in an editable compiled
install (USTACK_MYPYC=1), a source edited after the build does not run, the
compiled module beside it does; every `ustack` command then says so."""

from __future__ import annotations

import sys
from pathlib import Path

from ustack.compiled import build


def stale(package: Path | None = None) -> list[Path]:
    """The sources under `package` (default: ustack/tcp) newer than the
    compiled module beside them."""
    if package is None:
        from ustack import tcp

        package = Path(tcp.__path__[0])
    found = []
    for compiled in sorted(package.rglob("*.cpython-*.so")):
        source = compiled.with_name(compiled.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > compiled.stat().st_mtime:
            found.append(source)
    return found


def warn_if_stale() -> None:
    if build() == "pure Python" or not (edited := stale()):
        return
    names = ", ".join(path.name for path in edited[:3]) + (", ..." if len(edited) > 3 else "")
    print(
        f"ustack: warning: the compiled (mypyc) core is older than its sources ({names}): "
        "those edits do not run; build again (USTACK_MYPYC=1 pip install "
        "--no-build-isolation -e .) or go back to pure Python (pip install -e .)",
        file=sys.stderr,
    )
