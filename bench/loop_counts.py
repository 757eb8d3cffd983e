"""A server with its event loop counted: bench/echo_latency.py runs `ustack
serve` (`python bench/loop_counts.py serve ...`) and the kernel's reference
server (`python bench/loop_counts.py bench/kernel_server.py ...`) through it.

It counts, from start: loop iterations (`_run_once`), the selector's calls
that slept (a timeout other than 0: the loop had nothing ready), the file
descriptors they returned, and the callbacks the loop ran (each call_soon,
each timer, each task step is one). On SIGUSR1 it writes them as one JSON
line to the file named by $USTACK_LOOP_COUNTS. These are asyncio's private
methods: a measuring tool, never used by ustack itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import runpy
import selectors
import signal
import sys
from typing import Any

COUNTS = {"iterations": 0, "sleeps": 0, "events": 0, "callbacks": 0}


def _count_calls(owner: Any, method: str, key: str) -> None:
    """Each call of owner.method (one taking no argument) adds one to COUNTS[key]."""
    original = getattr(owner, method)

    def counted(self: Any) -> None:
        COUNTS[key] += 1
        original(self)

    setattr(owner, method, counted)


def _patch() -> None:
    _count_calls(asyncio.BaseEventLoop, "_run_once", "iterations")
    _count_calls(asyncio.Handle, "_run", "callbacks")
    select = selectors.EpollSelector.select

    def counted_select(self: Any, timeout: float | None = None) -> Any:
        if timeout != 0:
            COUNTS["sleeps"] += 1
        ready = select(self, timeout)
        COUNTS["events"] += len(ready)
        return ready

    selectors.EpollSelector.select = counted_select  # type: ignore[method-assign]

    def report(_signum: int, _frame: object) -> None:
        with open(os.environ["USTACK_LOOP_COUNTS"], "a", encoding="utf-8") as out:
            out.write(json.dumps(COUNTS) + "\n")

    signal.signal(signal.SIGUSR1, report)


def main() -> None:
    """`loop_counts.py serve ...` runs `ustack serve ...`; `loop_counts.py
    SCRIPT.py ...` runs that script (bench/kernel_server.py), both counted."""
    if len(sys.argv) < 2:
        sys.exit("usage: loop_counts.py serve [ARG ...] | SCRIPT.py [ARG ...]")
    _patch()
    if sys.argv[1].endswith(".py"):
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
        return
    from ustack.cli import main as ustack_main

    sys.exit(ustack_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
