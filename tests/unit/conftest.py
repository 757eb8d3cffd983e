from __future__ import annotations

from collections.abc import Callable

import pytest
from tcpscript import FAMILIES
from tcpscript import Family

from ustack.cli import main


@pytest.fixture(params=FAMILIES, ids=repr)
def family(request: pytest.FixtureRequest) -> Family:
    """The IP version a scripted test runs over: each such test runs twice,
    `test_name[ipv4]` and `test_name[ipv6]` (RFC 9293's behaviours are the
    same over both; the MSS and the ICMP messages are each family's)."""
    family: Family = request.param
    return family


@pytest.fixture
def cli_error(capsys: pytest.CaptureFixture[str]) -> Callable[..., str]:
    """Runs `ustack ARGV`, which must fail as every error does: one line on
    stderr, "ustack: error: ...", and exit code `code` (2, a usage error, unless
    told 1, a failure at run time). Returns that line."""

    def run(argv: list[str], code: int = 2) -> str:
        assert main(argv) == code
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert err.startswith("ustack: error: "), err
        assert "Traceback" not in err, err
        return err

    return run
