"""The optional compiled build (mypyc, `USTACK_MYPYC=1 pip install .`): the
names its classes need, which cost nothing in the pure build.

`mypyc_attr` is mypy_extensions' class decorator as mypy and mypyc read it,
and a no-op at run time, so the pure build needs no mypy_extensions; mypyc
applies it while compiling. `build()` says which build runs. (The core
imports this module: nothing here touches the file system.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
    from mypy_extensions import mypyc_attr as mypyc_attr
else:

    def mypyc_attr(*_flags: str, **_attrs: Any) -> Any:
        return lambda cls: cls


def build() -> str:
    """ "compiled (mypyc)" when the TCP core runs compiled, else "pure Python"."""
    from ustack.tcp import connection

    return "compiled (mypyc)" if not connection.__file__.endswith(".py") else "pure Python"
