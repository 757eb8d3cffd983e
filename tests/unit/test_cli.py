"""Argument validation: bad input is one clear line and exit code 1, before
anything touches the system."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ustack.cli import build_parser, serve_config


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
        (["serve", "--syn-retries", "-1"], "bad --syn-retries '-1': want a whole number 0..127"),
        (["serve", "--syn-retries", "200"], "bad --syn-retries '200'"),
        (["serve", "--max-connections", "0"], "bad --max-connections '0': want a whole number"),
        (["serve", "--max-connections", "many"], "bad --max-connections 'many'"),
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


def test_syn_retries_and_max_connections_reach_the_tcp_config() -> None:
    args = build_parser().parse_args(["serve", "--syn-retries", "1", "--max-connections", "8"])
    tcp = serve_config(args).tcp
    assert (tcp.syn_retries, tcp.max_connections) == (1, 8)
    assert tcp.connect_timeout == 3.0  # RTO 1 s, then 2 s
    defaults = serve_config(build_parser().parse_args(["serve"])).tcp
    assert (defaults.syn_retries, defaults.max_connections) == (6, 65_536)
    assert defaults.connect_timeout == 123.0  # 1+2+4+8+16+32, then 60 (max_rto)
