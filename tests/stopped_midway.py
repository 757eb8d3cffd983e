"""A `ustack` command stopped by a signal while it runs in its namespace, and
what every such command owes: the exit status, no traceback, no namespace
left."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def stop_midway(argv: list[str], namespace_prefix: str, signum: signal.Signals) -> int:
    """Run `python -m ustack *argv` in its own session, send it `signum` once
    its first namespace (`{namespace_prefix}{pid}-0`) exists, and return its
    exit status, having checked that it printed no traceback, that the
    namespace is gone and that it left nothing in its temporary directory
    (a TMPDIR of its own: other commands on the machine may be using theirs)."""
    scratch = Path(tempfile.mkdtemp(prefix="ustack-stop-"))  # short: socket paths go in it
    try:
        status = _stop(argv, namespace_prefix, signum, scratch)
        assert not list(scratch.iterdir()), "left behind in its TMPDIR"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return status


def _stop(argv: list[str], namespace_prefix: str, signum: signal.Signals, scratch: Path) -> int:
    command = subprocess.Popen(
        [sys.executable, "-m", "ustack", *argv],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        env={**os.environ, "TMPDIR": str(scratch)},
    )  # fmt: skip
    namespace = Path(f"/run/netns/{namespace_prefix}{command.pid}-0")
    try:
        deadline = time.monotonic() + 30
        while not namespace.exists():  # the command is under way
            assert command.poll() is None and time.monotonic() < deadline, "no namespace made"
            time.sleep(0.005)
        command.send_signal(signum)
        status = command.wait(timeout=30)
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()
    assert command.stderr is not None
    stderr = command.stderr.read()
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")
    assert not namespace.exists()
    return status
