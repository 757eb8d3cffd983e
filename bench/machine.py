"""What machine a benchmark ran on, for the first line of its table."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, or what platform knows elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe() -> str:
    python = f"{platform.python_version()} ({platform.python_implementation()}, {sys.platform})"
    return f"CPU: {cpu_name()} | Python {python}"


def info() -> dict[str, object]:
    """The machine as a results file records it (bench/results/*.json): a
    figure means little without the CPU, the kernel, the Python and how
    loaded the machine was while it ran."""
    try:
        memory = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        memory_kib: int | None = int(memory)
    except (OSError, IndexError, ValueError):
        memory_kib = None
    return {
        "host": platform.node(),
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "memory_kib": memory_kib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "load_average": [round(x, 2) for x in os.getloadavg()],  # 1, 5, 15 min
    }
