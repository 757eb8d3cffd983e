"""The compiled build's guard: an editable compiled install whose sources
were edited since runs the old compiled code; `stale()` finds those sources
and the command line warns (ustack/compiled.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ustack.cli.compiled_check import stale
from ustack.compiled import build


def make(path: Path, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    os.utime(path, (mtime, mtime))


def test_a_source_edited_after_its_compiled_module_is_stale(tmp_path: Path) -> None:
    make(tmp_path / "sender.py", 2000)  # edited after the build
    make(tmp_path / "sender.cpython-311-x86_64-linux-gnu.so", 1000)
    make(tmp_path / "receiver.py", 1000)
    make(tmp_path / "receiver.cpython-311-x86_64-linux-gnu.so", 2000)
    make(tmp_path / "congestion" / "cubic.py", 3000)
    make(tmp_path / "congestion" / "cubic.cpython-311-x86_64-linux-gnu.so", 1000)
    make(tmp_path / "invariants.py", 5000)  # never compiled: not stale
    assert stale(tmp_path) == [tmp_path / "congestion" / "cubic.py", tmp_path / "sender.py"]


@pytest.mark.skipif(build() == "pure Python", reason="no compiled modules to go stale")
def test_the_compiled_build_under_test_is_not_stale() -> None:
    """CI's compiled run: every source under ustack/tcp is older than its
    compiled module, so the tests run the code they read."""
    assert stale() == []
