"""`ustack lab`: its arguments are checked before anything touches the system,
and without root it is one line and exit code 1 (a bad argument: exit code 2)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from ustack.cli import build_parser
from ustack.cli import lab_plan


def plan(*argv: str) -> tuple[list[str], list[str]]:
    return lab_plan(build_parser().parse_args(["lab", *argv]))


def test_the_command_after_the_double_dash_and_the_serve_arguments() -> None:
    command, serve_args = plan(
        "--trace", "/tmp/t.jsonl", "--serve-arg=--msl=1", "--", "curl", "-s", "http://x/"
    )
    assert command == ["curl", "-s", "http://x/"]
    assert serve_args == ["--trace", "/tmp/t.jsonl", "--msl=1"]


def test_shell_is_the_users_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELL", "/bin/zsh")
    assert plan("shell")[0] == ["/bin/zsh"]
    monkeypatch.delenv("SHELL")
    assert plan("shell")[0] == ["/bin/sh"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["lab"], "want a command"),
        (["lab", "--"], "want a command"),
        (["lab", "--serve-arg=--mtu=5", "--", "true"], "bad --mtu 5"),
        (["lab", "--serve-arg=--loud", "--", "true"], "unrecognized arguments: --loud"),
        (["lab", "--serve-arg=--control=/tmp/x.sock", "--", "true"], "the lab's own"),
        (["lab", "--serve-arg=--ready-fd=3", "--", "true"], "the lab's own"),
    ],
)
def test_bad_arguments(argv: list[str], expected: str, cli_error: Callable[..., str]) -> None:
    assert expected in cli_error(argv)


def test_without_root_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, cli_error: Callable[..., str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert (
        cli_error(["lab", "--", "true"], code=1)
        == "ustack: error: ustack lab needs root (it makes a network namespace): "
        "run it with sudo\n"
    )
