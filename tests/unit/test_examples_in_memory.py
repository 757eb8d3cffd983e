"""The examples and README blocks that run in memory (no root, no TUN), and
the check that every example and README python block has a way to run
recorded in tests/examples_harness.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from examples_harness import EXAMPLE_RUNS
from examples_harness import README_RUNS
from examples_harness import TEST_FILES
from examples_harness import example
from examples_harness import example_files
from examples_harness import python_env
from examples_harness import readme_block
from examples_harness import readme_python_blocks

RUN_TIMEOUT = 60.0


def run_python(*argv: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, check=True,
        timeout=RUN_TIMEOUT, env=python_env(), cwd=cwd,
    ).stdout  # fmt: skip


def test_every_example_and_readme_block_has_a_runner() -> None:
    found = {path.name for path in example_files()}
    assert found == set(EXAMPLE_RUNS), "an example without a recorded way to run (or a stale entry)"
    for block in readme_python_blocks():
        markers = [marker for marker in README_RUNS if marker in block]
        assert len(markers) == 1, f"README block without exactly one runner entry:\n{block[:300]}"
    for marker in README_RUNS:
        readme_block(marker)  # each entry matches exactly one block
    for run in [*EXAMPLE_RUNS.values(), *README_RUNS.values()]:
        source = TEST_FILES[run.place].read_text()
        assert f"def {run.test}(" in source, f"{run.test} is not in {TEST_FILES[run.place].name}"


def test_every_example_is_a_documented_program_with_a_main() -> None:
    for path in example_files():
        text = path.read_text()
        assert text.startswith('"""') and "python examples/" in text.split('"""')[1], path.name
        assert re.search(r"^(async )?def main\(", text, re.M) or "def fetch(" in text, path.name
        assert 'if __name__ == "__main__":' in text, path.name


def test_memory_ladder_prints_the_handshake_and_four_way_close() -> None:
    out = run_python(str(example("memory_ladder.py")))
    lines = out.splitlines()
    assert lines[0] == "client got b'hello, ladder'"
    assert lines[1] == "t=0.000 s, the client is ['TIME_WAIT']"
    assert lines[2] == "t=60.000 s, the client is []"  # 2MSL on the virtual clock
    # The client's states in the ladder's right-hand column, in order.
    states = [line.split()[-1] for line in lines if re.search(r"\|  [A-Z_0-9]+$", line)]
    assert states == [
        "CLOSED", "SYN_SENT", "ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT", "CLOSED",
    ]  # fmt: skip
    assert sum(" F. " in line for line in lines) == 2  # both FINs
    assert "(2MSL timer expired)" in out
    again = run_python(str(example("memory_ladder.py")))
    # The same session every run, but for the random ephemeral port (RFC 6056).
    assert re.sub(r":\d+ ", " ", again) == re.sub(r":\d+ ", " ", out)


def test_the_readme_memory_pair_example_runs_as_is() -> None:
    out = run_python("-c", readme_block("print(render_ascii(a.events))"))
    assert out.startswith("b'ping'\n")
    assert "SYN_SENT" in out and "TIME_WAIT" in out and "2MSL timer expired" in out


def test_the_readme_udp_example_runs_as_is() -> None:
    out = run_python("-c", readme_block("create_datagram_endpoint("))
    assert sorted(out.splitlines()) == [
        "ConnectionRefusedError",
        "b'HELLO' from ('198.18.0.2', 9000)",
    ]
