"""The optional compiled build (mypyc, `USTACK_MYPYC=1 pip install .`): the
names its classes need, which cost nothing in the pure build.

`mypyc_attr` is mypy_extensions' class decorator as mypy and mypyc read it,
and a no-op at run time, so the pure build needs no mypy_extensions; mypyc
applies it while compiling. `build()` says which build runs; `stale()`
finds compiled modules older than their sources (an editable compiled
install edited since: the edits do not run until it is built again).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_extensions import mypyc_attr as mypyc_attr
else:

    def mypyc_attr(*_flags: str, **_attrs: Any) -> Any:
        return lambda cls: cls


def build() -> str:
    """ "compiled (mypyc)" when the TCP core runs compiled, else "pure Python"."""
    from ustack.tcp import connection

    return "compiled (mypyc)" if not connection.__file__.endswith(".py") else "pure Python"


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
