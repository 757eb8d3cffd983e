"""What every subcommand shares: the usage error and the parser that raises
it, argparse types for numbers and addresses, and where the control socket is."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from ustack.linux.control import ControlError
from ustack.study.faults import FaultError
from ustack.study.faults import FaultRule
from ustack.study.faults import parse_rule
from ustack.wire.address import format_address
from ustack.wire.address import parse_address

ROOT_CONTROL_DIR = Path("/run/ustack")


def default_control_path(device: str) -> Path:
    """$USTACK_CONTROL, else DIR/net-INODE/DEVICE.sock.

    `ustack lab` puts its daemon's socket in the environment of the command it
    runs. DIR is /run/ustack for root and $XDG_RUNTIME_DIR/ustack for anyone
    else (a directory of their own; /run/ustack is root's). INODE is this
    network namespace's (/proc/self/ns/net): daemons on defaults in two
    namespaces never share a socket, and `ustack ss` run in a namespace finds
    the daemon of that namespace. (An abstract socket is per namespace too, but
    has no file mode: anyone in the namespace could connect, where a path keeps
    the socket 0600 in a 0700 directory.)"""
    if lab_control := os.environ.get("USTACK_CONTROL"):
        return Path(lab_control)
    if os.geteuid() == 0:
        base = ROOT_CONTROL_DIR
    elif runtime_dir := os.environ.get("XDG_RUNTIME_DIR"):
        base = Path(runtime_dir) / "ustack"
    else:
        raise ControlError(
            "no default control socket: not root and XDG_RUNTIME_DIR is not set "
            "(give --control PATH)"
        )
    return base / f"net-{os.stat('/proc/self/ns/net').st_ino}" / f"{device}.sock"


def control_path(args: argparse.Namespace) -> Path:
    """The control socket a client command talks to: --control, else the default."""
    if args.control:
        return Path(args.control)
    check_device(args.device)
    return default_control_path(args.device)


class UsageError(Exception):
    """A bad argument: reported on one line, exit code 2 (USAGE_EXIT)."""


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number low..high (argparse names the flag)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:  # also a number of over 4300 digits
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}")
        return value

    return parse


PORT = bounded_int(1, 65535)


def ip_address(text: str) -> str:
    """An argparse type: an IPv4 or IPv6 address, in its usual text form
    (2001:2:0::1 -> 2001:2::1; not ::/96 or ::ffff:0:0/96)."""
    try:
        return format_address(parse_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an IPv4 or IPv6 address") from None


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def add_control_option(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--control",
        type=Path,
        help="control socket path (default: $USTACK_CONTROL, else /run/ustack/net-NETNS/"
        "DEVICE.sock for root, $XDG_RUNTIME_DIR/ustack/net-NETNS/DEVICE.sock for others)",
    )


def check_device(name: str) -> None:
    if not name or len(name) > 15 or "/" in name or name in (".", ".."):
        raise UsageError(f"bad --device {name!r}: a Linux interface name, 1-15 chars")


def fault_rule(text: str) -> FaultRule:
    try:
        return parse_rule(text)
    except FaultError as exc:
        raise UsageError(f"bad --fault {text!r}: {exc}") from None


def parse_count(text: str | None, flag: str, low: int, high: int | None, default: int) -> int:
    """A whole number low..high (no upper bound: None), or `default` when the
    flag is not given."""
    if text is None:
        return default
    top = high if high is not None else 2**63 - 1
    # ASCII digits only (str.isdigit takes '²'), no longer than the bound (int()
    # of 5000 digits raises).
    if text.isascii() and text.isdigit() and len(text) <= len(str(top)) and low <= int(text) <= top:
        return int(text)
    shown = "" if high is None else high
    raise UsageError(f"bad {flag} {text!r}: want a whole number {low}..{shown}")


def parse_seconds(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"bad {flag} {text!r}: want seconds") from None
    if not 0 <= value <= 86400:
        raise UsageError(f"bad {flag} {text}: want 0..86400 seconds")
    return value


def writable_folder(path: Path, flag: str) -> Path:
    """`path` as a folder to write in (the run makes it if missing), or a
    UsageError that says why not."""
    if (why := _why_no_folder(path)) is not None:
        raise UsageError(f"{flag} {path}: {why}")
    return path


def folder_to_write(text: str) -> Path:
    """argparse type: a folder to write in (the run makes it if missing),
    checked as the command line is read, not after a long run."""
    if (why := _why_no_folder(Path(text))) is not None:
        raise argparse.ArgumentTypeError(f"{text}: {why}")
    return Path(text)


def file_to_write(text: str) -> Path:
    """argparse type: a file to write: one that exists and takes writes
    (/dev/stdout, /dev/fd/N too), or a new one in a folder that takes files;
    checked as the command line is read."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: a folder, not a file")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise argparse.ArgumentTypeError(f"{text}: not writable")
        return path
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no folder {path.parent}")
    if (why := _why_no_folder(path.parent)) is not None:
        raise argparse.ArgumentTypeError(f"{text}: {why}")
    return path


def _why_no_folder(path: Path) -> str | None:
    """Why `path` cannot be a folder to write in, or None. Nothing is made:
    a file there, or the nearest folder that exists takes no file (one is
    made and removed there to know: /proc and read-only mounts let root pass
    access(2) and then refuse)."""
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    if not existing.is_dir():
        return "not a folder" if existing == path else f"{existing} is not a folder"
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as exc:
        return str(exc.strerror or exc)
    return None
