"""A `ustack` command run as a user runs it, in a TMPDIR of its own, and what
every such command owes: no traceback, nothing left in its TMPDIR (other
commands on the machine may be using theirs); stopped by a signal while it
runs in its namespace, the exit status 128 + N and no namespace left."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ustack.linux.lab import our_namespaces

USTACK = (sys.executable, "-m", "ustack")


@dataclass
class Finished:
    pid: int
    returncode: int
    stdout: str
    stderr: str


def run_clean(
    argv: list[str],
    during: Callable[[subprocess.Popen[str]], None] | None = None,
    timeout: float = 60,
) -> Finished:
    """Run `argv` (USTACK + its arguments for the command) in its own session
    and TMPDIR, `during(process)` while it runs, and wait for its end, having
    checked that it printed no traceback and left its TMPDIR empty."""
    scratch = Path(tempfile.mkdtemp(prefix="ustack-stop-"))  # short: socket paths go in it
    try:
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            env={**os.environ, "TMPDIR": str(scratch)}, text=True, errors="replace",
        )  # fmt: skip
        try:
            if during is not None:
                during(process)
            stdout, stderr = process.communicate(timeout=timeout)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert "Traceback" not in stderr, stderr
        # (A tool keeps the folder of a run that failed or was stopped, for its
        # log, and says so: "kept PATH".)
        left = [path for path in scratch.iterdir() if f"kept {path}" not in stdout]
        assert not left, f"left behind in its TMPDIR: {left}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Finished(process.pid, process.returncode, stdout, stderr)


def stop_midway(argv: list[str], namespace_prefix: str | None, signum: signal.Signals) -> int:
    """`argv` (run_clean), sent `signum` once it has made a namespace
    (ustack.linux.lab.netns: `namespace_prefix`<pid>-<tag>; None: of any
    kind): its exit status, its namespaces checked gone."""

    def stop(process: subprocess.Popen[str]) -> None:
        deadline = time.monotonic() + 30
        while not our_namespaces(namespace_prefix, process.pid):  # the command is under way
            assert process.poll() is None and time.monotonic() < deadline, "no namespace made"
            time.sleep(0.01)
        process.send_signal(signum)

    finished = run_clean(argv, stop)
    assert our_namespaces(namespace_prefix, finished.pid) == []
    return finished.returncode
