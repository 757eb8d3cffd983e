"""`ustack serve`'s trace outputs checked before the daemon starts: each --trace
a place a trace can go, its format, the rotation limits."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

from ustack.cli.args import UsageError
from ustack.cli.args import parse_count
from ustack.study.sinks import TraceRotation
from ustack.study.sinks import TraceSpec
from ustack.study.sinks import format_for
from ustack.wire.address import format_address
from ustack.wire.address import parse_address

# Kernel filesystems whose files are knobs and reports, not places for a trace.
PSEUDO_FILESYSTEMS = frozenset(
    {"proc", "sysfs", "debugfs", "tracefs", "securityfs", "cgroup", "cgroup2", "configfs",
     "bpf", "efivarfs", "pstore", "devpts", "mqueue", "hugetlbfs", "fusectl"}
)  # fmt: skip
MIN_TRACE_BYTES = 4096  # a few records a file at least: smaller rotates nearly every event
MAX_TRACE_KEEP = 1000


def trace_specs(args: argparse.Namespace) -> list[TraceSpec]:
    if len(args.trace_format) > len(args.trace):
        raise UsageError("more --trace-format than --trace")
    specs = []
    for i, path in enumerate(args.trace):
        fmt = args.trace_format[i] if i < len(args.trace_format) else format_for(path)
        if fmt in ("pcap", "pcapng") and str(path) == "-":
            raise UsageError(f"a {fmt} trace needs a file, not '-'")
        _check_trace_path(path)
        specs.append(TraceSpec(path, fmt))
    return specs


def trace_hosts(hosts: list[str]) -> frozenset[str]:
    """The --trace-host addresses, either family, in the form the trace
    writes them (2001:2:0::1 is 2001:2::1)."""
    chosen = set()
    for host in hosts:
        try:
            chosen.add(format_address(parse_address(host)))
        except ValueError as exc:
            raise UsageError(f"bad --trace-host {host[:60]!r}: {exc}") from None
    return frozenset(chosen)


def _check_trace_path(path: Path) -> None:
    """A trace goes to '-' (stderr), a FIFO, a character device, or a regular
    file we may create or write, not onto a kernel filesystem (/proc/version takes the open, then
    fails the first write): UsageError if not, before the daemon starts."""
    if str(path) == "-":
        return
    try:
        if path.exists():
            mode = path.stat().st_mode
            if stat.S_ISFIFO(mode):
                return
            # A character device is a sink too (/dev/null; /dev/full tries a full disk).
            if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
                raise UsageError(
                    f"bad --trace {path}: not a regular file, a FIFO or a character device"
                )
            where, access = path, os.W_OK
        elif path.parent.is_dir():
            where, access = path.parent, os.W_OK | os.X_OK  # to create the file in it
        else:
            raise UsageError(f"bad --trace {path}: no directory {path.parent}")
        if not os.access(where, access):
            raise UsageError(f"bad --trace {path}: {where} is not writable")
        filesystem = _filesystem_type(where.stat().st_dev)
    except OSError as exc:
        raise UsageError(f"bad --trace {path}: {exc.strerror or exc}") from None
    if filesystem in PSEUDO_FILESYSTEMS:
        raise UsageError(f"bad --trace {path}: a file of the kernel's {filesystem} filesystem")


def _filesystem_type(device: int) -> str:
    """The type of the mounted filesystem on `device` (st_dev), from mountinfo."""
    wanted = f"{os.major(device)}:{os.minor(device)}"
    with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[2] == wanted and "-" in fields:
                return fields[fields.index("-") + 1]
    return ""


def trace_rotation(args: argparse.Namespace) -> TraceRotation:
    max_bytes = None
    if args.trace_max_bytes is not None:
        max_bytes = parse_count(args.trace_max_bytes, "--trace-max-bytes", MIN_TRACE_BYTES, None, 0)
    keep = parse_count(args.trace_keep, "--trace-keep", 1, MAX_TRACE_KEEP, 1)
    return TraceRotation(max_bytes, keep)
