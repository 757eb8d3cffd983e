"""What the long-run tools (scale, soak, losstest) share: their parser, a
daemon in a namespace of its own for the run, a work directory kept only
after a failure, and the closing PROBLEM/RESULT lines."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ustack.linux.lab import Netns, UstackDaemon, netns

R = TypeVar("R")


def tool_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose --help shows the tool's docstring as written."""
    return argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


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
