from __future__ import annotations

from collections.abc import Callable

import pytest

from ustack.cli import main


@pytest.fixture
def cli_error(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], str]:
    """Runs `ustack ARGV`, which must fail as every usage error does: exit code 1
    and one line on stderr, "ustack: error: ...". Returns that line."""

    def run(argv: list[str]) -> str:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert err.startswith("ustack: error: "), err
        return err

    return run
