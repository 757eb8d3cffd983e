"""Argument validation: bad input is one clear line and exit code 1, before
anything touches the system."""

from __future__ import annotations

from collections.abc import Callable

import pytest


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["serve", "--address", "1.2.3"], "bad --address '1.2.3'"),
        (["serve", "--address", "10.0.0.1"], "not a host address in 198.18.0.0/24"),
        (["serve", "--address", "198.18.0.255"], "not a host address"),
        (["serve", "--linux-address", "nonsense"], "bad --linux-address"),
        (["serve", "--mtu", "0"], "bad --mtu 0: want 68..65535"),
        (["serve", "--device", "a-name-longer-than-15"], "bad --device"),
        (["serve", "--log-level", "loud"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_arguments(
    argv: list[str], expected: str, cli_error: Callable[[list[str]], str]
) -> None:
    assert expected in cli_error(argv)


def test_stats_without_daemon_is_a_clear_error(
    tmp_path, cli_error: Callable[[list[str]], str]
) -> None:
    assert "cannot reach the daemon" in cli_error(
        ["stats", "--control", str(tmp_path / "none.sock")]
    )
