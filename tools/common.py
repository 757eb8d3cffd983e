"""What the long-run tools (scale, soak, losstest) share: their parser and
its common options, the check that they can run (root, commands), a
daemon in a namespace of its own for the run, a work directory kept only
after a failure, and the closing PROBLEM/RESULT lines."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from typing import TypeVar

from ustack.cli.args import file_to_write
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon
from ustack.linux.lab import netns

R = TypeVar("R")


def tool_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose --help shows the tool's docstring as written."""
    return argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_run_arguments(
    parser: argparse.ArgumentParser,
    *,
    timeout: float,
    timeout_help: str,
    seed_help: str | None = None,
    json_help: str | None = None,
) -> None:
    """The options the long-run tools share, each tool's words in its help:
    --timeout SECONDS (with this default); --seed N and --json FILE for the
    tools that take them (a help given)."""
    parser.add_argument("--timeout", type=float, default=timeout, help=timeout_help)
    if seed_help is not None:
        parser.add_argument("--seed", type=int, default=None, help=seed_help)
    if json_help is not None:
        parser.add_argument("--json", type=file_to_write, help=json_help)


def check_can_run(parser: argparse.ArgumentParser, tool: str, commands: Sequence[str]) -> None:
    """A usage error unless we are root (the tool makes network namespaces)
    and each of `commands` is installed."""
    if os.geteuid() != 0:
        parser.error(f"needs root (network namespaces): sudo python -m tools.{tool} ...")
    for command in commands:
        if shutil.which(command) is None:
            parser.error(f"needs {command}")


def run_then_stop(daemon: Any, run: Callable[[], R]) -> tuple[R, list[str]]:
    """Call `run`, then stop the daemon (tests/harness.py's): what `run`
    returned, and what the daemon did wrong (died during the run, a Traceback
    in its log)."""
    try:
        result = run()
        alive = daemon.process.poll() is None
    finally:
        code = daemon.stop()
    log = daemon.log_text()
    troubles: list[str] = []
    if not alive:
        troubles.append(f"the daemon died (exit {code})")
    if "Traceback" in log:
        troubles.append("a Traceback in the daemon log")
    return result, troubles


def run_with_daemon(
    workdir: Path,
    serve_args: Sequence[str],
    run: Callable[[Netns, UstackDaemon], R],
    **start_options: Any,
) -> tuple[R, list[str]]:
    """`run` in a new namespace beside `ustack serve serve_args` (its files in
    `workdir`; UstackDaemon.start's options), then run_then_stop's answer."""
    with netns() as ns:
        daemon = UstackDaemon.start(ns, workdir, *serve_args, **start_options)
        return run_then_stop(daemon, lambda: run(ns, daemon))


def in_workdir(prefix: str, run: Callable[[Path], int]) -> int:
    """`run` with a new temporary directory; its exit status. The directory
    is removed after a success, kept (its path printed) after a failure."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    status = 1
    try:
        status = run(workdir)
    finally:
        if status:
            print(f"kept {workdir} (daemon log)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


def print_result(problems: Iterable[str], status: int) -> int:
    """A PROBLEM line for each problem, then the RESULT line; `status`."""
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("RESULT: " + ("PASS" if status == 0 else f"FAIL (exit {status})"))
    return status
