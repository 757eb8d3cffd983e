"""Every `ustack` command the README shows is one the CLI takes.

The README's shell and console blocks are read as a user would copy them:
a console block's commands are its lines after a `#` or `$` prompt (the
rest is output), a shell block's are all its lines, joined at a trailing
backslash. Each `ustack` command among them (after `sudo`, between `&&`,
`;` and `|`) must parse with the real parser; `serve` and `lab` commands
also build their daemon's configuration, so a renamed option or a value out
of range fails here instead of in the reader's terminal.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from ustack.cli import UsageError
from ustack.cli import build_parser
from ustack.cli import lab_plan
from ustack.cli import serve_config

README = Path(__file__).resolve().parents[2] / "README.md"
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
_SEPARATORS = {"&&", "||", ";", "|", "&"}


def _command_lines(lang: str, body: str) -> list[str]:
    lines = body.replace("\\\n", " ").splitlines()
    if lang == "console":
        return [line[2:] for line in lines if line.startswith(("# ", "$ "))]
    return lines


def _ustack_commands(line: str) -> list[list[str]]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = []
    current: list[str] = []
    for word in [*lexer, ";"]:
        if word not in _SEPARATORS:
            current.append(word)
            continue
        if current[:1] == ["sudo"]:
            current = current[1:]
        if current[:1] == ["ustack"]:
            commands.append(current[1:])
        current = []
    return commands


def readme_commands() -> list[list[str]]:
    return [
        command
        for lang, body in _BLOCK.findall(README.read_text())
        if lang in ("sh", "console")
        for line in _command_lines(lang, body)
        for command in _ustack_commands(line)
    ]


def test_the_readme_shows_ustack_commands() -> None:
    commands = readme_commands()
    # The walk-through, the tour, the plots and the faults at least.
    assert {command[0] for command in commands} >= {"lab", "serve", "plot", "report", "fault"}


@pytest.mark.parametrize("argv", readme_commands(), ids=" ".join)
def test_readme_command_parses(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    try:
        if argv[0] == "serve":
            serve_config(args)
        elif argv[0] == "lab":
            lab_plan(args)
    except UsageError as error:
        pytest.fail(f"ustack {' '.join(argv)}: {error}")
