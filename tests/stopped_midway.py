"""A `ustack` command stopped by a signal while it runs in its namespace, and
what every such command owes: the exit status, no traceback, no namespace
left."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path


def stop_midway(argv: list[str], namespace_prefix: str, signum: signal.Signals) -> int:
    """Run `python -m ustack *argv` in its own session, send it `signum` once
    its first namespace (`{namespace_prefix}{pid}-0`) exists, and return its
    exit status, having checked that it printed no traceback and that the
    namespace is gone."""
    command = subprocess.Popen(
        [sys.executable, "-m", "ustack", *argv],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
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
