"""The layer rules of docs/architecture.md, checked on the real import graph
by import-linter (contracts in pyproject.toml, [tool.importlinter]):

- every layer imports only those below it, so the packages form no cycle;
- the TCP and IP cores (and the sans-I/O Stack and the trace records) import
  no event loop, OS module, socket, C binding or study tool;
(ruff keeps the compiled C module behind its wrapper: banned-api in pyproject.toml.)

A broken rule fails with import-linter's report: the chain of imports that
breaks it, module by module.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ("layers", "sans-io-core")


@pytest.mark.parametrize("contract", CONTRACTS)
def test_layer_contract_holds(contract: str) -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-cache", "--contract", contract],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert "1 kept, 0 broken" in report, report


def test_a_forbidden_import_is_caught(tmp_path: Path) -> None:
    """The check can fail: a copy of the tree whose TCP core imports asyncio
    breaks the sans-I/O contract."""
    import shutil

    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "ustack", tree / "ustack", ignore=shutil.ignore_patterns("*.so"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    seq = tree / "ustack" / "tcp" / "seq.py"
    seq.write_text("import asyncio  # noqa: F401\n" + seq.read_text())
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-cache", "--contract", "sans-io-core"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
    )
    report = result.stdout + result.stderr
    assert result.returncode != 0, report
    assert "ustack.tcp.seq -> asyncio" in report, report
