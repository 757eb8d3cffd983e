"""setuptools' build backend, plus mypy (for mypyc) among the build
requirements when USTACK_MYPYC=1 asks for the compiled build (setup.py).
The default build needs nothing more than pyproject.toml lists."""

from __future__ import annotations

import os
from collections.abc import Callable

from setuptools import build_meta
from setuptools.build_meta import *  # noqa: F403 (the whole backend interface)


def _requires(hook: Callable[[dict[str, str] | None], list[str]]) -> Callable[..., list[str]]:
    def requires(config_settings: dict[str, str] | None = None) -> list[str]:
        wanted = os.environ.pop("USTACK_MYPYC", None)
        try:  # (setup.py runs here too, before mypy is there to import)
            found = hook(config_settings)
        finally:
            if wanted is not None:
                os.environ["USTACK_MYPYC"] = wanted
        return found + (["mypy>=1.10"] if wanted == "1" else [])

    return requires


get_requires_for_build_wheel = _requires(build_meta.get_requires_for_build_wheel)
get_requires_for_build_editable = _requires(build_meta.get_requires_for_build_editable)
