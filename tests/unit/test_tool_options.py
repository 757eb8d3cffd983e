"""The long-run tools (losstest, scale, soak) take their shared options from
one helper (tools/common.add_run_arguments): same flags, types and defaults
as each had written out before."""

from __future__ import annotations

import subprocess
import sys

import pytest

# tool: (--timeout's default in its help, whether it takes --seed, --json)
TOOLS = {
    "losstest": ("(default 900)", True, False),
    "scale": ("for the table to empty", False, True),
    "soak": ("counts as failed", True, True),
}


def tool(name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"tools.{name}", *argv], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("name", TOOLS)
def test_each_tool_has_its_shared_options(name: str) -> None:
    timeout_words, seed, json = TOOLS[name]
    helped = tool(name, "--help")
    assert helped.returncode == 0
    text = " ".join(helped.stdout.split())
    assert "--timeout TIMEOUT" in text and timeout_words in text
    assert ("--seed SEED" in text) is seed
    assert ("--json JSON" in text) is json
    # A bad value is a usage error before anything runs (no root needed to see it).
    bad = tool(name, "--timeout", "soon")
    assert bad.returncode == 2 and "invalid float value: 'soon'" in bad.stderr
    if seed:
        assert "invalid int value: 'x'" in tool(name, "--seed", "x").stderr
