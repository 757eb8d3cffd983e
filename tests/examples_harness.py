"""What the tests run of the docs: every program in examples/ and every
```python block of the README, and the table saying where each one runs.

Each entry names the test that runs it: "unit" (tests/unit/
test_examples_in_memory.py, in memory, no root) or "interop"
(tests/interop/test_examples_with_linux.py, on a TUN in a lab namespace
with the Linux peer beside it). tests/unit/test_examples_in_memory.py fails
when an example or a README block has no entry (a new one must say how it
runs), or an entry names a test that does not exist or matches nothing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"
_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


@dataclass(frozen=True)
class Run:
    place: str  # "unit" or "interop"
    test: str  # the test function that runs it


# examples/NAME.py -> how it runs
EXAMPLE_RUNS = {
    "memory_ladder.py": Run("unit", "test_memory_ladder_prints_the_handshake_and_four_way_close"),
    "echo_server.py": Run("interop", "test_echo_server_echoes_nc_in_both_families"),
    "http_client.py": Run("interop", "test_http_client_fetches_from_python_http_server"),
    "udp_exchange.py": Run("interop", "test_udp_exchange_with_linux_peers_in_both_families"),
}

# a README python block, known by a line only it has -> how it runs
README_RUNS = {
    'trace=["library.jsonl"]': Run(
        "interop", "test_the_readme_tun_example_runs_as_is_beside_a_daemon"
    ),
    "print(render_ascii(a.events))": Run("unit", "test_the_readme_memory_pair_example_runs_as_is"),
    "create_datagram_endpoint(": Run("unit", "test_the_readme_udp_example_runs_as_is"),
}

TEST_FILES = {
    "unit": ROOT / "tests" / "unit" / "test_examples_in_memory.py",
    "interop": ROOT / "tests" / "interop" / "test_examples_with_linux.py",
}


def example_files() -> list[Path]:
    return sorted(path for path in EXAMPLES.glob("*.py") if not path.name.startswith("_"))


def readme_python_blocks() -> list[str]:
    return _PYTHON_BLOCK.findall(README.read_text())


def readme_block(marker: str) -> str:
    """The one README python block holding `marker` (a README_RUNS key)."""
    (block,) = [block for block in readme_python_blocks() if marker in block]
    return block


def example(name: str) -> Path:
    return EXAMPLES / name


def python_env() -> dict[str, str]:
    """The environment a user's `python examples/NAME.py` has: this checkout's
    ustack first on the path (a script's own directory is examples/)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
    return env
