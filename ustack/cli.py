"""Command line: `ustack serve` runs the daemon; `stats`, `ss` and `connect` talk to it."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

from ustack import __version__
from ustack.daemon import ServeConfig, serve
from ustack.linux.control import ControlError, encode, request
from ustack.linux.lab import LabError, run_in_lab
from ustack.linux.peer_states import PeerStatesError
from ustack.linux.tun import LinkConfig, LinkError
from ustack.services import SERVICES
from ustack.study.explain import add_explain_arguments, explain_command
from ustack.study.faults import FaultError, FaultRule, parse_rule
from ustack.study.faults import __doc__ as faults_module_doc
from ustack.study.ladder import add_ladder_arguments, ladder_command
from ustack.study.sinks import (
    TRACE_FORMATS,
    TraceFilter,
    TraceOutputError,
    TraceRotation,
    TraceSpec,
    format_for,
)
from ustack.tcp import congestion
from ustack.tcp.connection import TcpConfig

MIN_MTU = 68  # RFC 791: every IPv4 host must take 68-byte datagrams
MAX_MTU = 65535
MIN_TRACE_BYTES = 4096  # a few records a file at least: smaller rotates nearly every event
MAX_TRACE_KEEP = 1000


def faults_doc() -> str:
    return (faults_module_doc or "").split("\n\n", 1)[-1]


def default_control_path(device: str) -> Path:
    # `ustack lab` puts its daemon's socket in the environment of the command it runs.
    if lab_control := os.environ.get("USTACK_CONTROL"):
        return Path(lab_control)
    return Path("/run/ustack") / f"{device}.sock"


class UsageError(Exception):
    """A bad argument: reported on one line, exit code 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ustack", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ustack {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve_cmd = commands.add_parser("serve", help="run the stack on a TUN device (foreground)")
    serve_cmd.add_argument("-d", "--device", default="tun0", help="TUN device (default: tun0)")
    serve_cmd.add_argument(
        "--linux-address",
        default="198.18.0.1/24",
        help="the kernel's address and prefix on the TUN (default: 198.18.0.1/24)",
    )
    serve_cmd.add_argument(
        "-a", "--address", default="198.18.0.2", help="the stack's address (default: 198.18.0.2)"
    )
    serve_cmd.add_argument(
        "--mtu",
        help="MTU (default: 1500 on a new device, the device's own on an existing one)",
    )
    serve_cmd.add_argument(
        "--services",
        default=",".join(SERVICES),
        help="services to run, NAME or NAME:PORT, comma-separated; '' for none "
        f"(default: {','.join(f'{n}:{p}' for n, (p, _) in SERVICES.items())})",
    )
    serve_cmd.add_argument(
        "--msl", default="30", help="maximum segment lifetime, s; TIME_WAIT is 2*MSL (default 30)"
    )
    serve_cmd.add_argument(
        "--fin-timeout",
        default="60",
        help="an orphaned FIN_WAIT_2 is dropped after this many seconds (default 60)",
    )
    serve_cmd.add_argument(
        "--time-wait-rst",
        choices=["ignore", "close"],
        default="ignore",
        help="a RST in TIME_WAIT: ignore it (RFC 1337, default) or close",
    )
    serve_cmd.add_argument(
        "--trace",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="write the trace to FILE ('-': stderr); may be given several times",
    )
    serve_cmd.add_argument(
        "--trace-format",
        action="append",
        default=[],
        choices=TRACE_FORMATS,
        help="format of the matching --trace (in order); default from the file name: "
        ".pcap pcap, .jsonl jsonl, else text",
    )
    serve_cmd.add_argument(
        "--trace-port", type=int, action="append", default=[], help="trace only this port"
    )
    serve_cmd.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="RULE",
        help="a fault rule from the start, e.g. drop:dir=out,flags=FIN,count=1 (see ustack fault)",
    )
    serve_cmd.add_argument(
        "--fault-seed",
        type=int,
        help="seed the fault injector's random choices (reproducible runs)",
    )
    serve_cmd.add_argument(
        "--peer-states",
        action="store_true",
        help="also trace the Linux peers' own states (kernel tracepoint; needs root)",
    )
    serve_cmd.add_argument(
        "--trace-host", action="append", default=[], help="trace only this address"
    )
    serve_cmd.add_argument(
        "--congestion",
        choices=sorted(congestion.ALGORITHMS),
        default="cubic",
        help="congestion control (default: cubic, as Linux)",
    )
    serve_cmd.add_argument(
        "--no-nagle", action="store_true", help="TCP_NODELAY for every connection"
    )
    serve_cmd.add_argument(
        "--keepalive", metavar="SECONDS", help="probe connections idle this long (default: off)"
    )
    serve_cmd.add_argument(
        "--no-offload",
        action="store_true",
        help="no GSO/TSO/checksum offload on the TUN: every segment as it goes on the wire",
    )
    _add_control_option(serve_cmd)
    serve_cmd.add_argument("--no-control", action="store_true", help="run without control socket")
    serve_cmd.add_argument(
        "--ready-fd", type=int, help="write 'ready' to this fd once packets flow, then close it"
    )
    serve_cmd.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    # The daemon's files over a long life: a log file, traces rotated (issue 13).
    serve_cmd.add_argument(
        "--log-file", type=Path, help="log to FILE, not stderr (SIGHUP reopens it, as the traces)"
    )
    serve_cmd.add_argument(
        "--trace-max-bytes",
        metavar="N",
        help=f"rotate each trace file at N bytes ({MIN_TRACE_BYTES}..): FILE -> FILE.1, a new FILE",
    )
    serve_cmd.add_argument(
        "--trace-keep",
        default="1",
        metavar="K",
        help=f"rotated trace files kept: FILE.1..FILE.K (1..{MAX_TRACE_KEEP}, default 1)",
    )

    stats_cmd = commands.add_parser("stats", help="counters of a running daemon")
    stats_cmd.add_argument("-d", "--device", default="tun0", help="the daemon's device")
    _add_control_option(stats_cmd)
    stats_cmd.add_argument("--json", action="store_true", help="print the raw JSON reply")

    ss_cmd = commands.add_parser("ss", help="connections of a running daemon, like ss -tan")
    ss_cmd.add_argument("-d", "--device", default="tun0", help="the daemon's device")
    _add_control_option(ss_cmd)

    fault_cmd = commands.add_parser(
        "fault",
        help="drop, delay or duplicate matching packets of a running daemon",
        description=faults_doc(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fault_cmd.add_argument("do", choices=["drop", "delay", "duplicate", "list", "clear"])
    fault_cmd.add_argument("--dir", choices=["in", "out", "both"])
    fault_cmd.add_argument("--flags", help="e.g. FIN, SYN+ACK")
    fault_cmd.add_argument("--only", action="store_true", help="exactly these flags")
    fault_cmd.add_argument("--port", type=int)
    fault_cmd.add_argument("--nth", type=int, help="only the Nth matching packet")
    fault_cmd.add_argument("--count", type=int, help="act this many times")
    fault_cmd.add_argument("--prob", type=float, help="probability 0..1")
    fault_cmd.add_argument("--delay", type=float, help="seconds (for delay)")
    fault_cmd.add_argument("--id", type=int, help="with clear: only this rule")
    fault_cmd.add_argument("-d", "--device", default="tun0", help="the daemon's device")
    _add_control_option(fault_cmd)

    config_cmd = commands.add_parser(
        "config", help="show or change (for new connections) msl, fin timeout, RST in TIME_WAIT"
    )
    config_cmd.add_argument("--msl", type=float)
    config_cmd.add_argument("--fin-timeout", type=float)
    config_cmd.add_argument("--time-wait-rst", choices=["ignore", "close"])
    config_cmd.add_argument("-d", "--device", default="tun0", help="the daemon's device")
    _add_control_option(config_cmd)

    ladder_cmd = commands.add_parser(
        "ladder", help="draw one connection of a JSONL trace as a sequence (ladder) diagram"
    )
    add_ladder_arguments(ladder_cmd)
    explain_cmd = commands.add_parser(
        "explain", help="tell one connection of a JSONL trace in plain words, step by step"
    )
    add_explain_arguments(explain_cmd)

    connect_cmd = commands.add_parser(
        "connect", help="make the stack connect to HOST PORT; stdin/stdout like nc"
    )
    connect_cmd.add_argument("host")
    connect_cmd.add_argument("port", type=int)
    connect_cmd.add_argument("-d", "--device", default="tun0", help="the daemon's device")
    _add_control_option(connect_cmd)

    lab_cmd = commands.add_parser(
        "lab",
        help="run a command (or a shell) in a throwaway namespace beside a daemon (root)",
        description="ustack lab -- curl -s http://198.18.0.2/   or   ustack lab shell: a new "
        "network namespace, `ustack serve` in it on its defaults (Linux side 198.18.0.1/24, "
        "stack 198.18.0.2), the command run inside with USTACK_CONTROL set (so `ustack ss` "
        "finds the daemon); exit status the command's; all removed afterwards.",
    )
    lab_cmd.add_argument(
        "--trace", action="append", default=[], metavar="FILE", help="the daemon's --trace FILE"
    )
    lab_cmd.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="pass ARG to `ustack serve` (repeat; e.g. --serve-arg=--msl=1)",
    )
    lab_cmd.add_argument(
        "--workdir",
        type=Path,
        help="keep the daemon's log and control socket here (default: a temporary directory)",
    )
    lab_cmd.add_argument(
        "cmd", nargs=argparse.REMAINDER, help="'shell', or -- COMMAND [ARG...] to run inside"
    )
    return parser


def lab_plan(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The command to run and the extra `serve` arguments, checked by serve's own
    parser before anything touches the system (UsageError says what is wrong)."""
    command = list(args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd)
    if not command:
        raise UsageError("lab: want a command (ustack lab -- CMD ...) or 'shell'")
    if command == ["shell"]:
        command = [os.environ.get("SHELL") or "/bin/sh"]
    serve_args = [arg for path in args.trace for arg in ("--trace", path)] + args.serve_arg
    serve = build_parser().parse_args(["serve", *serve_args])
    if serve.control or serve.no_control or serve.ready_fd is not None:
        raise UsageError("lab: --control, --no-control and --ready-fd are the lab's own")
    serve_config(serve)
    return command, serve_args


def _lab(args: argparse.Namespace) -> int:
    command, serve_args = lab_plan(args)
    shell = [word for word in args.cmd if word != "--"] == ["shell"]
    announce = (lambda line: print(line, file=sys.stderr)) if shell else None
    return run_in_lab(command, serve_args, args.workdir, announce)


def _add_control_option(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--control",
        type=Path,
        help="control socket path (default: /run/ustack/DEVICE.sock)",
    )


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """Validate the serve arguments; UsageError says which one is wrong."""
    try:
        linux_side = ipaddress.IPv4Interface(args.linux_address)
    except ValueError:
        raise UsageError(f"bad --linux-address {args.linux_address!r}: want A.B.C.D/LEN") from None
    try:
        address = ipaddress.IPv4Address(args.address)
    except ValueError:
        raise UsageError(f"bad --address {args.address!r}: want A.B.C.D") from None
    network = linux_side.network
    if address == linux_side.ip:
        raise UsageError(f"--address {address} is the Linux side's own address")
    if address not in network or (
        network.prefixlen < 31 and address in (network.network_address, network.broadcast_address)
    ):
        raise UsageError(f"--address {address} is not a host address in {network}")
    mtu = None
    if args.mtu is not None:
        try:
            mtu = int(args.mtu)
        except ValueError:
            raise UsageError(f"bad --mtu {args.mtu!r}: want a number") from None
        if not MIN_MTU <= mtu <= MAX_MTU:
            raise UsageError(f"bad --mtu {mtu}: want {MIN_MTU}..{MAX_MTU}")
    if not args.device or len(args.device) > 15 or "/" in args.device:
        raise UsageError(f"bad --device {args.device!r}: a Linux interface name, 1-15 chars")
    control = None if args.no_control else args.control or default_control_path(args.device)
    tcp = TcpConfig(
        msl=_seconds(args.msl, "--msl"),
        fin_wait_2_timeout=_seconds(args.fin_timeout, "--fin-timeout"),
        rfc1337=args.time_wait_rst == "ignore",
        congestion_control=args.congestion,
        nagle=not args.no_nagle,
        keepalive_idle=_seconds(args.keepalive, "--keepalive") if args.keepalive else None,
    )
    return ServeConfig(
        link=LinkConfig(
            device=args.device, linux_side=linux_side, mtu=mtu, offload=not args.no_offload
        ),
        address=address,
        tcp=tcp,
        services=_services(args.services),
        control_path=control,
        ready_fd=args.ready_fd,
        traces=_trace_specs(args),
        trace_filter=TraceFilter(frozenset(args.trace_port), frozenset(args.trace_host)),
        trace_rotation=_trace_rotation(args),
        peer_states=args.peer_states,
        faults=[_fault_rule(text) for text in args.fault],
        fault_seed=args.fault_seed,
    )


def _fault_rule(text: str) -> FaultRule:
    try:
        return parse_rule(text)
    except FaultError as exc:
        raise UsageError(f"bad --fault {text!r}: {exc}") from None


def _trace_specs(args: argparse.Namespace) -> list[TraceSpec]:
    if len(args.trace_format) > len(args.trace):
        raise UsageError("more --trace-format than --trace")
    specs = []
    for i, path in enumerate(args.trace):
        fmt = args.trace_format[i] if i < len(args.trace_format) else format_for(path)
        if fmt == "pcap" and str(path) == "-":
            raise UsageError("a pcap trace needs a file, not '-'")
        specs.append(TraceSpec(path, fmt))
    for host in args.trace_host:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise UsageError(f"bad --trace-host {host!r}") from None
    return specs


def _trace_rotation(args: argparse.Namespace) -> TraceRotation:
    max_bytes = None
    if args.trace_max_bytes is not None:
        if not args.trace_max_bytes.isdigit() or int(args.trace_max_bytes) < MIN_TRACE_BYTES:
            raise UsageError(
                f"bad --trace-max-bytes {args.trace_max_bytes!r}: want bytes, {MIN_TRACE_BYTES}.."
            )
        max_bytes = int(args.trace_max_bytes)
    if not args.trace_keep.isdigit() or not 1 <= int(args.trace_keep) <= MAX_TRACE_KEEP:
        raise UsageError(f"bad --trace-keep {args.trace_keep!r}: want 1..{MAX_TRACE_KEEP}")
    return TraceRotation(max_bytes, int(args.trace_keep))


def _seconds(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"bad {flag} {text!r}: want seconds") from None
    if not 0 <= value <= 86400:
        raise UsageError(f"bad {flag} {text}: want 0..86400 seconds")
    return value


def _services(text: str) -> dict[str, int]:
    chosen: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, port_text = item.partition(":")
        if name not in SERVICES:
            raise UsageError(f"unknown service {name!r} (known: {', '.join(SERVICES)})")
        port = SERVICES[name][0]
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise UsageError(f"bad port in --services {item!r}")
            port = int(port_text)
        if port in chosen.values():
            raise UsageError(f"two services on port {port}")
        chosen[name] = port
    return chosen


def _setup_logging(level: str, log_file: Path | None = None) -> None:
    # Under systemd the journal stamps each line; elsewhere we do.
    stamp = "" if os.environ.get("JOURNAL_STREAM") and log_file is None else "%(asctime)s "
    where: dict[str, Any] = {"stream": sys.stderr} if log_file is None else {"filename": log_file}
    try:
        logging.basicConfig(level=level.upper(), format=stamp + "%(name)s: %(message)s", **where)
    except OSError as exc:
        raise UsageError(f"cannot open --log-file {log_file}: {exc.strerror}") from None


def _stats(args: argparse.Namespace) -> int:
    path = args.control or default_control_path(args.device)
    reply = request(path, "stats")
    if args.json:
        print(json.dumps(reply, indent=2))
    elif not reply.get("ok"):
        raise ControlError(str(reply.get("error")))
    else:
        counters = reply["counters"]
        width = max((len(name) for name in counters), default=0)
        for name, value in counters.items():
            print(f"{name:<{width}}  {value}")
    return 0


def _ss(args: argparse.Namespace) -> int:
    reply = request(args.control or default_control_path(args.device), "connections")
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error")))
    print(f"{'State':<13} {'Recv-Q':>7} {'Send-Q':>7}  {'Local':<22} {'Peer':<22} Details")
    for local in reply["listening"]:
        print(f"{'LISTEN':<13} {0:>7} {0:>7}  {local:<22} {'0.0.0.0:*':<22}")
    for row in reply["connections"]:
        timers = ",".join(f"{name}:{left:.3f}s" for name, left in row["timers"].items())
        print(
            f"{row['state']:<13} {row['recv_queue']:>7} {row['send_queue']:>7}  "
            f"{row['local']:<22} {row['remote']:<22} #{row['id']} "
            f"una {row['snd_una']} nxt {row['snd_nxt']} rcv {row['rcv_nxt']} "
            f"wnd {row['snd_wnd']} rto {row['rto']:.3f}s" + (f" timers {timers}" if timers else "")
        )
    return 0


def _fault(args: argparse.Namespace) -> int:
    path = args.control or default_control_path(args.device)
    if args.do in ("list", "clear"):
        fields: dict[str, Any] = {"do": args.do}  # JSON values
        if args.do == "clear" and args.id is not None:
            fields["id"] = args.id
    else:
        options = {
            "dir": args.dir,
            "flags": args.flags,
            "port": args.port,
            "nth": args.nth,
            "count": args.count,
            "prob": args.prob,
            "delay": args.delay,
            "only": 1 if args.only else None,
        }
        text = ",".join(f"{k}={v}" for k, v in options.items() if v is not None)
        rule = f"{args.do}:{text}" if text else args.do
        _fault_rule(rule)  # a bad rule is reported here, before the daemon is asked
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


def _config(args: argparse.Namespace) -> int:
    path = args.control or default_control_path(args.device)
    fields = {"msl": args.msl, "fin_timeout": args.fin_timeout, "time_wait_rst": args.time_wait_rst}
    reply = request(path, "config", **{k: v for k, v in fields.items() if v is not None})
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error")))
    for key in ("msl", "fin_timeout", "time_wait_rst"):
        print(f"{key:<14} {reply[key]}")
    return 0


def _connect(args: argparse.Namespace) -> int:
    """Splice stdin/stdout with a connection the daemon opens (half-close aware)."""
    path = args.control or default_control_path(args.device)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as exc:
        raise ControlError(f"cannot reach the daemon at {path}: {exc.strerror or exc}") from None
    with sock:
        sock.sendall(encode({"command": "connect", "host": args.host, "port": args.port}))
        stream = sock.makefile("rb", buffering=0)
        reply = json.loads(stream.readline() or b"{}")
        if not reply.get("ok"):
            raise ControlError(str(reply.get("error", "the daemon closed the connection")))

        def upload() -> None:
            with open(sys.stdin.fileno(), "rb", buffering=0, closefd=False) as stdin:
                while data := stdin.read(65536):
                    sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # our EOF becomes the stack's FIN

        threading.Thread(target=upload, daemon=True).start()
        out = sys.stdout.buffer
        while data := sock.recv(65536):
            out.write(data)
            out.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "serve":
            config = serve_config(args)
            _setup_logging(args.log_level, args.log_file)
            return serve(config)
        commands = {
            "stats": _stats,
            "ss": _ss,
            "connect": _connect,
            "fault": _fault,
            "config": _config,
            "ladder": ladder_command,
            "explain": explain_command,
            "lab": _lab,
        }
        return commands[args.command](args)
    except (
        UsageError,
        ControlError,
        LinkError,
        PeerStatesError,
        TraceOutputError,
        LabError,
    ) as exc:
        print(f"ustack: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
