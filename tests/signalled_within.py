"""`ustack lesson run lost-final-ack` (KIND "lesson") or `ustack lab -- sh -c
'touch OUTPUT_DIRECTORY/ran; sleep 30'` (KIND "lab"), stopped by signals it
sends itself at fixed points, as a signal arriving just then would (Python
runs its handler at once, inside os.kill, when os.kill runs in the main thread):

    python tests/signalled_within.py KIND WHERE SIGNUM OUTPUT_DIRECTORY

WHERE: "finalizer", in the first Popen.__del__ once the lesson's namespace
exists (that of `ip netns add`, as subprocess.run returns), where Python
cannot propagate an exception; "lock", as soon as a Popen's waitpid lock is
taken, before subprocess's try that releases it; "clean-up", a first signal
as the lesson's nc starts and a second as the namespace's processes are
ended.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ustack.cli import main
from ustack.linux.lab import Netns

kind, where, signum, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
namespace = Path(f"/run/netns/ustack-{kind}{os.getpid()}-0")
sent: list[str] = []


def signal_once(why: str) -> None:
    if not sent and namespace.exists():
        sent.append(why)
        os.kill(os.getpid(), signum)


def signal_first(cls: Any, name: str) -> None:
    """cls.name signals as it begins, the first time (once per name)."""
    original: Callable[..., Any] = getattr(cls, name)
    done: list[bool] = []

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not done:
            done.append(True)
            os.kill(os.getpid(), signum)
        return original(self, *args, **kwargs)

    setattr(cls, name, wrapper)


class SignallingLock:
    """A Popen's _waitpid_lock that signals once it is taken."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        taken = self._lock.acquire(blocking, timeout)
        if taken:
            signal_once("lock")
        return taken

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.release()


if where == "finalizer":
    finalize = subprocess.Popen.__del__

    def __del__(self: subprocess.Popen[bytes]) -> None:
        signal_once("finalizer")
        finalize(self)

    subprocess.Popen.__del__ = __del__  # type: ignore[method-assign, assignment]
elif where == "lock":
    start = subprocess.Popen.__init__

    def __init__(self: subprocess.Popen[bytes], *args: Any, **kwargs: Any) -> None:
        start(self, *args, **kwargs)
        self._waitpid_lock = SignallingLock()  # type: ignore[attr-defined]

    subprocess.Popen.__init__ = __init__  # type: ignore[method-assign, assignment]
else:
    signal_first(Netns, "run")
    signal_first(Netns, "end_processes")
if kind == "lesson":
    raise SystemExit(main(["lesson", "run", "lost-final-ack", "-o", out]))
raise SystemExit(main(["lab", "--", "sh", "-c", f"touch {out}/ran; sleep 30"]))
