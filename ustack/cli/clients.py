"""The commands that talk to a running daemon over its control socket:
stats, ss, fault, config and connect."""

from __future__ import annotations

import argparse
import functools
import json
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from ustack.cli.args import control_path
from ustack.cli.args import fault_rule
from ustack.cli.args import parse_seconds
from ustack.linux.control import ControlError
from ustack.linux.control import encode
from ustack.linux.control import request
from ustack.study.faults import __doc__ as faults_module_doc
from ustack.wire.address import format_endpoint
from ustack.wire.address import parse_address


def faults_doc() -> str:
    return (faults_module_doc or "").split("\n\n", 1)[-1]


def reading_replies(command: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """A client command whose reply has another shape than a ustack daemon's
    (something else listens at the path) ends in a ControlError, one line,
    not a traceback from deep in the printing."""

    @functools.wraps(command)
    def checked(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            what = f"{type(exc).__name__}: {exc}"
            raise ControlError(f"not a ustack daemon's reply ({what})") from None

    return checked


@reading_replies
def stats_command(args: argparse.Namespace) -> int:
    fields = {"gc_reset": True} if getattr(args, "gc_reset", False) else {}
    reply = request(control_path(args), "stats", **fields)
    if args.json:
        print(json.dumps(reply, indent=2))
    elif not reply.get("ok"):
        raise ControlError(str(reply.get("error")))
    else:
        for line in stats_lines(reply["counters"]):
            print(line)
        if "gc" in reply:  # ustack serve --gc-stats
            print(gc_line(reply["gc"]))
    return 0


def gc_line(gc: dict[str, Any]) -> str:
    """The collector's pauses on one line (ustack serve --gc-stats)."""
    slow = ", ".join(f"{k[5:]} {v}" for k, v in gc.items() if k.startswith("over_"))
    return (
        f"gc: collections {'/'.join(map(str, gc['collections']))} (gen 0/1/2), "
        f"longest pause {gc['max_ms']:.1f} ms (gen {gc['max_generation']}), "
        f"total {gc['total_ms']:.1f} ms; pauses at least {slow}"
    )


# `ustack stats` shows the counters by family: IPv4's layers (ip, icmp), then
# IPv6's (ip6, icmp6 as Linux's Ip6/Icmp6 MIBs, and udp6: its port
# unreachables), then those of both (tcp, udp, the application, the trace).
_FAMILY_LAYERS = (("ip", "icmp"), ("ip6", "icmp6", "udp6"))


def _family_rank(name: str) -> int:
    layer = name.split(".", 1)[0]
    for rank, layers in enumerate(_FAMILY_LAYERS):
        if layer in layers:
            return rank
    return len(_FAMILY_LAYERS)


def stats_lines(counters: dict[str, int]) -> list[str]:
    """ "name  value" lines, IPv4's counters first, then IPv6's, then the
    rest; by name within each group."""
    width = max((len(name) for name in counters), default=0)
    ordered = sorted(counters, key=lambda name: (_family_rank(name), name))
    return [f"{name:<{width}}  {counters[name]}" for name in ordered]


@reading_replies
def ss_command(args: argparse.Namespace) -> int:
    reply = request(control_path(args), "connections")
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error")))
    for line in ss_lines(reply):
        print(line)
    return 0


def ss_lines(reply: dict[str, Any]) -> list[str]:
    """The table of `ustack ss`: listeners, then connections, their ends as
    ss(8) writes them (`198.18.0.2:80`, `[2001:2::2]:80`; a listener's peer
    `0.0.0.0:*` or `[::]:*`)."""
    ends = [*reply["listening"]]
    ends += [end for row in reply["connections"] for end in (row["local"], row["remote"])]
    width = max((len(end) for end in ends), default=0)
    width = max(width, 22)  # wider for long IPv6 ends, so the columns stay lined up
    lines = [
        f"{'State':<13} {'Recv-Q':>7} {'Send-Q':>7}  {'Local':<{width}} {'Peer':<{width}} Details"
    ]
    for local in reply["listening"]:
        anyone = "[::]:*" if local.startswith("[") else "0.0.0.0:*"
        lines.append(f"{'LISTEN':<13} {0:>7} {0:>7}  {local:<{width}} {anyone}")
    for row in reply["connections"]:
        timers = ",".join(f"{name}:{left:.3f}s" for name, left in row["timers"].items())
        # A TIME_WAIT keeps no send window, RTO or path (tcp/time_wait.py).
        path = "" if row["pmtu"] is None else (
            f" wnd {row['snd_wnd']} rto {row['rto']:.3f}s pmtu {row['pmtu']} mss {row['mss']}"
        )  # fmt: skip
        lines.append(
            f"{row['state']:<13} {row['recv_queue']:>7} {row['send_queue']:>7}  "
            f"{row['local']:<{width}} {row['remote']:<{width}} #{_conn_id(row)} "
            f"una {row['snd_una']} nxt {row['snd_nxt']} rcv {row['rcv_nxt']}"
            + path
            + (" ecn" if row.get("ecn") else "")
            + (f" timers {timers}" if timers else "")
        )
    return lines


def _conn_id(row: dict[str, Any]) -> str:
    """A connection's number; with --queues > 1, its worker's queue first
    (`q1.5`): each worker counts its own."""
    return f"q{row['worker']}.{row['id']}" if "worker" in row else str(row["id"])


@reading_replies
def fault_command(args: argparse.Namespace) -> int:
    path = control_path(args)
    if args.do in ("list", "clear"):
        fields: dict[str, Any] = {"do": args.do}  # JSON values
        if args.do == "clear" and args.id is not None:
            fields["id"] = args.id
    else:
        options = {
            "dir": args.dir,
            "flags": args.flags,
            "port": args.port,
            "host": args.host,
            "family": args.family,
            "nth": args.nth,
            "count": args.count,
            "prob": args.prob,
            "delay": args.delay,
            "only": 1 if args.only else None,
        }
        text = ",".join(f"{k}={v}" for k, v in options.items() if v is not None)
        rule = f"{args.do}:{text}" if text else args.do
        fault_rule(rule)  # a bad rule is reported here, before the daemon is asked
        fields = {"do": "add", "rule": rule}
    reply = request(path, "fault", **fields)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error")))
    if "rule" in reply:
        print(f"rule {reply['rule']['id']} added")
    elif "removed" in reply:
        print(f"{reply['removed']} rule(s) removed")
    else:
        for rule in reply["rules"]:
            shown = {k: v for k, v in rule.items() if v not in (None, False)}
            print(" ".join(f"{k}={v}" for k, v in shown.items()))
    return 0


@reading_replies
def config_command(args: argparse.Namespace) -> int:
    path = control_path(args)
    fields = {
        "msl": None if args.msl is None else parse_seconds(args.msl, "--msl"),
        "fin_timeout": None
        if args.fin_timeout is None
        else parse_seconds(args.fin_timeout, "--fin-timeout"),
        "time_wait_rst": args.time_wait_rst,
    }
    reply = request(path, "config", **{k: v for k, v in fields.items() if v is not None})
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error")))
    for key in ("msl", "fin_timeout", "time_wait_rst"):
        print(f"{key:<14} {reply[key]}")
    return 0


@reading_replies
def connect_command(args: argparse.Namespace) -> int:
    """Splice stdin/stdout with a connection the daemon opens (half-close aware)."""
    path = control_path(args)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as exc:
        raise ControlError(f"cannot reach the daemon at {path}: {exc.strerror or exc}") from None
    with sock:
        try:
            sock.sendall(encode({"command": "connect", "host": args.host, "port": args.port}))
            stream = sock.makefile("rb", buffering=0)
            reply = json.loads(stream.readline() or b"{}")
        except (OSError, ValueError) as exc:
            raise ControlError(f"the daemon at {path} failed the request: {exc}") from None
        if not reply.get("ok"):
            raise ControlError(str(reply.get("error", "the daemon closed the connection")))

        def upload() -> None:
            with open(sys.stdin.fileno(), "rb", buffering=0, closefd=False) as stdin:
                try:
                    while data := stdin.read(65536):
                        sock.sendall(data)
                    sock.shutdown(socket.SHUT_WR)  # our EOF becomes the stack's FIN
                except OSError:
                    pass  # the connection is gone: the download side sees it and ends

        threading.Thread(target=upload, daemon=True).start()
        out = sys.stdout.buffer
        try:
            while data := sock.recv(65536):
                out.write(data)
                out.flush()
        except ConnectionError as exc:
            where = format_endpoint(parse_address(args.host), args.port)
            raise ControlError(f"the connection to {where} broke: {exc}") from None
    return 0
