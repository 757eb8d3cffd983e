"""The kernel's tracefs as the peer-state watcher (peer_states.py) uses it:
the lines of the two tracepoints it reads, sock:inet_sock_set_state and
tcp:tcp_destroy_sock, parsed (either family); a private instance's files,
tracefs mounted when it is not, and instances of dead watchers removed."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from ustack.linux.sock_diag import canonical_address

log = logging.getLogger("ustack.peer_states")

TRACING_ROOT = Path("/sys/kernel/tracing")
INSTANCE_PREFIX = "ustack-"

# The kernel's names (include/net/tcp_states.h) in ours (ustack.tcp.states.State).
# TCP_NEW_SYN_RECV is a request socket: it is SYN_RECEIVED too.
KERNEL_STATES = {
    "TCP_ESTABLISHED": "ESTABLISHED",
    "TCP_SYN_SENT": "SYN_SENT",
    "TCP_SYN_RECV": "SYN_RECEIVED",
    "TCP_FIN_WAIT1": "FIN_WAIT_1",
    "TCP_FIN_WAIT2": "FIN_WAIT_2",
    "TCP_TIME_WAIT": "TIME_WAIT",
    "TCP_CLOSE": "CLOSED",
    "TCP_CLOSE_WAIT": "CLOSE_WAIT",
    "TCP_LAST_ACK": "LAST_ACK",
    "TCP_LISTEN": "LISTEN",
    "TCP_CLOSING": "CLOSING",
    "TCP_NEW_SYN_RECV": "SYN_RECEIVED",
}

# "<task>-<pid> [cpu] flags  <seconds>: inet_sock_set_state: key=value ..."
_TRACE_LINE = re.compile(r"\s(\d+\.\d+): inet_sock_set_state: (.*)$")
_DESTROY_LINE = re.compile(r"\s(\d+\.\d+): tcp_destroy_sock: (.*)$")
_INSTANCE_NAME = re.compile(rf"^{re.escape(INSTANCE_PREFIX)}(\d+)(?:-\d+)?$")


class PeerStatesError(Exception):
    """Peer states cannot be watched; the message says why, on one line."""


@dataclass(frozen=True, slots=True)
class KernelStateChange:
    """One tracepoint line about a Linux socket connected to the stack."""

    linux: str
    linux_port: int
    stack: str
    stack_port: int
    old: str  # our state names
    new: str
    at: float | None = None  # the kernel's timestamp (CLOCK_MONOTONIC, like loop.time())


def state_name(kernel_name: str) -> str:
    """TCP_FIN_WAIT1 -> FIN_WAIT_1 and so on; an unknown name loses its TCP_ only."""
    return KERNEL_STATES.get(kernel_name, kernel_name.removeprefix("TCP_"))


def trace_fields(pattern: re.Pattern[str], line: str) -> tuple[float, dict[str, str]] | None:
    """A trace_pipe line's timestamp and its `name=value` fields, if it is
    an event `pattern` matches."""
    match = pattern.search(line.rstrip())
    if match is None:
        return None
    fields = dict(part.split("=", 1) for part in match.group(2).split() if "=" in part)
    return float(match.group(1)), fields


def ends_of(fields: dict[str, str]) -> tuple[str, str] | None:
    """(Linux's address, the remote one) of an event's socket, of either
    family: the tracepoints fill saddr/daddr for AF_INET, saddrv6/daddrv6 for
    AF_INET6 (include/trace/events/sock.h, tcp.h). KeyError if one is missing."""
    family = fields["family"]
    if family == "AF_INET":
        return fields["saddr"], fields["daddr"]
    if family == "AF_INET6":
        return canonical_address(fields["saddrv6"]), canonical_address(fields["daddrv6"])
    return None


def addresses_of(stack_address: str | Collection[str]) -> set[str]:
    return {stack_address} if isinstance(stack_address, str) else set(stack_address)


def parse_line(line: str, stack_address: str | Collection[str]) -> KernelStateChange | None:
    """The state change a trace_pipe line reports, if it is a TCP socket of
    Linux, IPv4 or IPv6, whose remote end is the stack (`stack_address`: one
    address in canonical text, or several: IPv4 and IPv6); None otherwise.
    An AF_INET6 socket talking to an IPv4 peer has v4-mapped v6 addresses
    and is reported as IPv4."""
    event = trace_fields(_TRACE_LINE, line)
    if event is None:
        return None
    at, fields = event
    stacks = addresses_of(stack_address)
    try:
        ends = ends_of(fields) if fields["protocol"] == "IPPROTO_TCP" else None
        if ends is None:
            return None
        # The socket is Linux's: its own end is saddr, the stack is daddr.
        linux, stack = ends
        if stack not in stacks or linux in stacks or linux in ("0.0.0.0", "::"):
            return None
        return KernelStateChange(
            linux=linux,
            linux_port=int(fields["sport"]),
            stack=stack,
            stack_port=int(fields["dport"]),
            old=state_name(fields["oldstate"]),
            new=state_name(fields["newstate"]),
            at=at,
        )
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class SocketDestroyed:
    """A tcp:tcp_destroy_sock line: a Linux TCP socket freed, and its cookie.
    A socket that disconnected (a refused connect) has lost its remote end:
    `stack_port` is then 0; its own port is kept."""

    linux_port: int
    stack_port: int
    cookie: int


def parse_destroy_line(line: str, stack_address: str | Collection[str]) -> SocketDestroyed | None:
    """The socket a tcp_destroy_sock line names, IPv4 or IPv6, if its remote
    end is the stack or was cleared (a disconnected socket); None otherwise."""
    event = trace_fields(_DESTROY_LINE, line)
    if event is None:
        return None
    _, fields = event
    try:
        ends = ends_of(fields)
        if ends is None:
            return None
        stack = ends[1]
        if stack not in addresses_of(stack_address) and stack not in ("0.0.0.0", "::"):
            return None
        return SocketDestroyed(
            linux_port=int(fields["sport"]),
            stack_port=int(fields["dport"]),
            cookie=int(fields["sock_cookie"], 16),
        )
    except (KeyError, ValueError):
        return None


# ---- tracefs ------------------------------------------------------------------------------


def disable_event(instance: Path, event: tuple[str, ...]) -> None:
    """Turn one tracepoint off in our tracefs instance (a warning if it cannot be)."""
    try:
        write_file(instance.joinpath("events", *event, "enable"), "0")
    except OSError as exc:
        log.warning("peer states: cannot disable %s: %s", "/".join(event), exc.strerror)


_MS_NONE = 0


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def mount_tracefs(root: Path) -> None:
    if _libc().mount(b"nodev", os.fsencode(root), b"tracefs", _MS_NONE, None) != 0:
        code = ctypes.get_errno()
        hint = " (needs root)" if code in (errno.EPERM, errno.EACCES) else ""
        raise PeerStatesError(f"cannot mount tracefs on {root}: {os.strerror(code)}{hint}")


def unmount(root: Path) -> None:
    if _libc().umount2(os.fsencode(root), 0) != 0:
        code = ctypes.get_errno()
        log.warning("peer states: leaving tracefs mounted on %s: %s", root, os.strerror(code))


def write_file(path: Path, text: str) -> None:
    with open(path, "w", encoding="ascii") as stream:
        stream.write(text)


def remove_stale_instances(root: Path = TRACING_ROOT) -> list[str]:
    """Remove the instances of watchers whose process is gone (killed before
    their stop); an instance in use cannot be removed. The names removed."""
    removed: list[str] = []
    try:
        names = os.listdir(root / "instances")
    except OSError:
        return removed
    for name in names:
        match = _INSTANCE_NAME.match(name)
        if match is None or int(match.group(1)) == os.getpid() or alive(int(match.group(1))):
            continue
        try:
            os.rmdir(root / "instances" / name)
            removed.append(name)
        except OSError:
            pass
    return removed


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
