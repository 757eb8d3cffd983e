"""Command line: `ustack serve` runs the daemon; `stats`, `ss` and `connect` talk to it."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import socket
import stat
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from ustack import __version__
from ustack.api import STREAM_LIMIT
from ustack.daemon import ServeConfig, serve
from ustack.linux.control import ControlError, encode, request
from ustack.linux.lab import LabError, run_in_lab
from ustack.linux.peer_states import PeerStatesError
from ustack.linux.tun import LinkConfig, LinkError
from ustack.net.fragments import FragmentLimits
from ustack.net.pmtu import DEFAULT_MIN_PMTU
from ustack.net.ratelimit import IcmpLimits
from ustack.services import SERVICES, HttpLimits
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
from ustack.tcp.config import ECN_MODES
from ustack.tcp.connection import TcpConfig
from ustack.trace.vocabulary import FaultAction

MIN_MTU = 68  # RFC 791: every IPv4 host must take 68-byte datagrams
MAX_MTU = 65535
USAGE_EXIT = 2  # argparse's convention: a bad command line; runtime failures exit 1
ROOT_CONTROL_DIR = Path("/run/ustack")
# Kernel filesystems whose files are knobs and reports, not places for a trace.
PSEUDO_FILESYSTEMS = frozenset(
    {"proc", "sysfs", "debugfs", "tracefs", "securityfs", "cgroup", "cgroup2", "configfs",
     "bpf", "efivarfs", "pstore", "devpts", "mqueue", "hugetlbfs", "fusectl"}
)  # fmt: skip
MIN_TRACE_BYTES = 4096  # a few records a file at least: smaller rotates nearly every event
MAX_TRACE_KEEP = 1000


def faults_doc() -> str:
    return (faults_module_doc or "").split("\n\n", 1)[-1]


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
    _check_device(args.device)
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


def ipv4_address(text: str) -> str:
    """An argparse type: a dotted IPv4 address."""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an IPv4 address") from None


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
        "--trace-port", type=PORT, action="append", default=[], help="trace only this port"
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
        type=bounded_int(0, 2**64 - 1),
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
        "--ecn",
        choices=ECN_MODES,
        default="passive",
        help="ECN (RFC 3168): off; passive, agree when a peer asks (default, Linux "
        "tcp_ecn=2); on, ask in our SYNs too (Linux tcp_ecn=1)",
    )
    serve_cmd.add_argument(
        "--no-nagle", action="store_true", help="TCP_NODELAY for every connection"
    )
    serve_cmd.add_argument(
        "--keepalive", metavar="SECONDS", help="probe connections idle this long (default: off)"
    )
    serve_cmd.add_argument(
        "--syn-retries",
        metavar="N",
        help="SYN retransmissions before a connect fails with ETIMEDOUT (default 6: after "
        "123 s; 1: after 3 s), as Linux's tcp_syn_retries",
    )
    serve_cmd.add_argument(
        "--max-connections",
        metavar="N",
        help="connections in every state the stack keeps at most (default 65536); beyond, "
        "new SYNs are dropped (the oldest TIME_WAIT gives way first)",
    )
    _add_rate_limit_options(serve_cmd)
    serve_cmd.add_argument(
        "--ipfrag-high-thresh",
        metavar="BYTES",
        help="memory for IPv4 fragments being reassembled (default 4194304, Linux's "
        "ipfrag_high_thresh); past it the oldest incomplete datagram is dropped; 0: none kept",
    )
    serve_cmd.add_argument(
        "--ipfrag-time",
        metavar="SECONDS",
        help="how long an incomplete datagram's fragments are kept (default 30, Linux's "
        "ipfrag_time); then ICMP Time Exceeded if the first fragment came",
    )
    serve_cmd.add_argument(
        "--min-pmtu",
        metavar="BYTES",
        help=f"the least path MTU an ICMP fragmentation needed may set (default "
        f"{DEFAULT_MIN_PMTU}, Linux's min_pmtu; 68..65535): a smaller one is taken as this",
    )
    serve_cmd.add_argument(
        "--mtu-probing",
        action="store_true",
        help="path MTU black-hole detection (RFC 4821, Linux tcp_mtu_probing=1): after "
        "repeated timeouts with no ICMP, a smaller MSS (1024, then halved)",
    )
    serve_cmd.add_argument(
        "--no-offload",
        action="store_true",
        help="no GSO/TSO/checksum offload on the TUN: every segment as it goes on the wire",
    )
    _add_http_options(serve_cmd)
    _add_control_option(serve_cmd)
    serve_cmd.add_argument("--no-control", action="store_true", help="run without control socket")
    serve_cmd.add_argument(
        "--ready-fd",
        type=bounded_int(0, 2**31 - 1),
        help="write 'ready' to this fd once packets flow, then close it",
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
    fault_cmd.add_argument("do", choices=[*FaultAction, "list", "clear"])
    fault_cmd.add_argument("--dir", choices=["in", "out", "both"])
    fault_cmd.add_argument("--flags", help="e.g. FIN, SYN+ACK")
    fault_cmd.add_argument("--only", action="store_true", help="exactly these flags")
    fault_cmd.add_argument("--port", type=int)
    fault_cmd.add_argument("--nth", type=int, help="only the Nth matching packet")
    fault_cmd.add_argument("--count", type=int, help="act this many times")
    fault_cmd.add_argument("--prob", type=float, help="probability 0..1")
    fault_cmd.add_argument("--delay", type=float, help="seconds (for delay)")
    fault_cmd.add_argument("--id", type=bounded_int(1, 2**31), help="with clear: only this rule")
    fault_cmd.add_argument("-d", "--device", default="tun0", help="the daemon's device")
    _add_control_option(fault_cmd)

    config_cmd = commands.add_parser(
        "config", help="show or change (for new connections) msl, fin timeout, RST in TIME_WAIT"
    )
    config_cmd.add_argument("--msl", help="seconds, 0..86400")
    config_cmd.add_argument("--fin-timeout", help="seconds, 0..86400")
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
    connect_cmd.add_argument("host", type=ipv4_address)
    connect_cmd.add_argument("port", type=PORT)
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
    serve.no_control = True  # the lab gives the daemon a control socket of its own
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
        help="control socket path (default: $USTACK_CONTROL, else /run/ustack/net-NETNS/"
        "DEVICE.sock for root, $XDG_RUNTIME_DIR/ustack/net-NETNS/DEVICE.sock for others)",
    )


# ---- the HTTP service's limits: --http-NAME for each field of HttpLimits ----------------------

HTTP_OPTIONS = {  # field: (help, what a value is)
    "max_requests": ("requests per connection; the last answer closes it", "count"),
    "idle_timeout": ("seconds a kept-alive connection may wait for its next request", "seconds"),
    "head_timeout": ("seconds for a whole request head (slowloris)", "seconds"),
    "body_timeout": ("seconds a request body may stall", "seconds"),
    "max_head": (f"bytes of request head, at most {STREAM_LIMIT} (else 431)", "bytes"),
    "max_request_line": ("bytes of request line (else 414)", "bytes"),
}


def _add_rate_limit_options(serve_cmd: argparse.ArgumentParser) -> None:
    """Linux's ICMP and invalid-ACK rate limits, under their sysctl names."""
    serve_cmd.add_argument(
        "--icmp-ratelimit",
        metavar="MS",
        help="ICMP errors to one destination: one per MS ms, bursts of 6 (default 1000, "
        "Linux icmp_ratelimit; 0: no limit per destination)",
    )
    serve_cmd.add_argument(
        "--icmp-msgs-per-sec",
        metavar="N",
        help="ICMP errors from the stack, all destinations: N a second (default 1000, "
        "Linux icmp_msgs_per_sec)",
    )
    serve_cmd.add_argument(
        "--icmp-msgs-burst",
        metavar="N",
        help="... and at most N at once (default 50, Linux icmp_msgs_burst)",
    )
    serve_cmd.add_argument(
        "--icmp-ratemask",
        metavar="MASK",
        help="the ICMP types limited, bit N for type N (default 6168: 3, 4, 11, 12, "
        "Linux icmp_ratemask; 0: none)",
    )
    serve_cmd.add_argument(
        "--tcp-invalid-ratelimit",
        metavar="MS",
        help="ACKs for out-of-window segments, PAWS rejects and challenges: one per MS ms "
        "per connection (default 500, Linux tcp_invalid_ratelimit; 0: every one)",
    )


def _icmp_limits(args: argparse.Namespace) -> IcmpLimits:
    default = IcmpLimits()
    return IcmpLimits(
        ratelimit=_count(
            args.icmp_ratelimit, "--icmp-ratelimit", 0, 3_600_000, int(default.ratelimit * 1000)
        )
        / 1000,
        msgs_per_sec=_count(
            args.icmp_msgs_per_sec, "--icmp-msgs-per-sec", 0, 10_000_000, default.msgs_per_sec
        ),
        msgs_burst=_count(
            args.icmp_msgs_burst, "--icmp-msgs-burst", 0, 10_000_000, default.msgs_burst
        ),
        ratemask=_count(args.icmp_ratemask, "--icmp-ratemask", 0, 2**32 - 1, default.ratemask),
    )


def _add_http_options(serve_cmd: argparse.ArgumentParser) -> None:
    defaults = HttpLimits()
    for name, (meaning, kind) in HTTP_OPTIONS.items():
        serve_cmd.add_argument(
            "--http-" + name.replace("_", "-"),
            metavar={"seconds": "S", "count": "N", "bytes": "BYTES"}[kind],
            help=f"{meaning} (default {getattr(defaults, name):g})",
        )


def _http_limits(args: argparse.Namespace) -> HttpLimits:
    values: dict[str, float] = {}
    for name, (_, kind) in HTTP_OPTIONS.items():
        text, flag = getattr(args, "http_" + name), "--http-" + name.replace("_", "-")
        if text is None:
            continue
        if kind == "seconds":
            values[name] = _seconds(text, flag)
            if values[name] == 0:
                raise UsageError(f"bad {flag} 0: want seconds > 0")
        else:
            values[name] = _count(text, flag, 1, None, 0)
    limits = HttpLimits(**values)  # type: ignore[arg-type]
    if limits.max_head > STREAM_LIMIT:
        raise UsageError(f"bad --http-max-head {limits.max_head}: at most {STREAM_LIMIT}")
    return limits


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
    _check_device(args.device)
    control = None if args.no_control else control_path(args)
    tcp = TcpConfig(
        msl=_seconds(args.msl, "--msl"),
        fin_wait_2_timeout=_seconds(args.fin_timeout, "--fin-timeout"),
        rfc1337=args.time_wait_rst == "ignore",
        congestion_control=args.congestion,
        ecn=args.ecn,
        nagle=not args.no_nagle,
        keepalive_idle=_keepalive(args.keepalive),
        syn_retries=_count(args.syn_retries, "--syn-retries", 0, 127, TcpConfig.syn_retries),
        max_connections=_count(
            args.max_connections, "--max-connections", 1, 10_000_000, TcpConfig.max_connections
        ),
        invalid_ack_ratelimit=_count(
            args.tcp_invalid_ratelimit,
            "--tcp-invalid-ratelimit",
            0,
            3_600_000,
            int(TcpConfig.invalid_ack_ratelimit * 1000),
        )
        / 1000,
        mtu_probing=args.mtu_probing,
    )
    if args.ready_fd is not None:
        try:
            os.fstat(args.ready_fd)
        except OSError:
            raise UsageError(
                f"bad --ready-fd {args.ready_fd}: not an open file descriptor"
            ) from None
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
        http=_http_limits(args),
        fragments=_fragment_limits(args),
        icmp=_icmp_limits(args),
        min_pmtu=_count(args.min_pmtu, "--min-pmtu", MIN_MTU, MAX_MTU, DEFAULT_MIN_PMTU),
    )


def _fragment_limits(args: argparse.Namespace) -> FragmentLimits:
    defaults = FragmentLimits()
    timeout = defaults.timeout
    if args.ipfrag_time is not None:
        timeout = _seconds(args.ipfrag_time, "--ipfrag-time")
        if timeout == 0:
            raise UsageError("bad --ipfrag-time 0: want seconds > 0")
    high_thresh = _count(
        args.ipfrag_high_thresh, "--ipfrag-high-thresh", 0, 2**31 - 1, defaults.high_thresh
    )
    return FragmentLimits(high_thresh=high_thresh, timeout=timeout)


def _check_device(name: str) -> None:
    if not name or len(name) > 15 or "/" in name or name in (".", ".."):
        raise UsageError(f"bad --device {name!r}: a Linux interface name, 1-15 chars")


def _keepalive(text: str | None) -> float | None:
    if text is None:
        return None
    seconds = _seconds(text, "--keepalive")
    if seconds <= 0:
        raise UsageError(f"bad --keepalive {text}: want seconds > 0 (leave it out for none)")
    return seconds


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
        _check_trace_path(path)
        specs.append(TraceSpec(path, fmt))
    for host in args.trace_host:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise UsageError(f"bad --trace-host {host!r}") from None
    return specs


def _count(text: str | None, flag: str, low: int, high: int | None, default: int) -> int:
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


def _trace_rotation(args: argparse.Namespace) -> TraceRotation:
    max_bytes = None
    if args.trace_max_bytes is not None:
        max_bytes = _count(args.trace_max_bytes, "--trace-max-bytes", MIN_TRACE_BYTES, None, 0)
    keep = _count(args.trace_keep, "--trace-keep", 1, MAX_TRACE_KEEP, 1)
    return TraceRotation(max_bytes, keep)


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
            try:
                port = PORT(port_text)
            except argparse.ArgumentTypeError as exc:
                raise UsageError(f"bad port in --services {item[:60]!r}: {exc}") from None
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
    reply = request(control_path(args), "stats")
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
    reply = request(control_path(args), "connections")
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
            f"wnd {row['snd_wnd']} rto {row['rto']:.3f}s pmtu {row['pmtu']} mss {row['mss']}"
            + (" ecn" if row.get("ecn") else "")
            + (f" timers {timers}" if timers else "")
        )
    return 0


def _fault(args: argparse.Namespace) -> int:
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
    path = control_path(args)
    fields = {
        "msl": None if args.msl is None else _seconds(args.msl, "--msl"),
        "fin_timeout": None
        if args.fin_timeout is None
        else _seconds(args.fin_timeout, "--fin-timeout"),
        "time_wait_rst": args.time_wait_rst,
    }
    reply = request(path, "config", **{k: v for k, v in fields.items() if v is not None})
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error")))
    for key in ("msl", "fin_timeout", "time_wait_rst"):
        print(f"{key:<14} {reply[key]}")
    return 0


def _connect(args: argparse.Namespace) -> int:
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
            raise ControlError(f"the connection to {args.host}:{args.port} broke: {exc}") from None
    return 0


def main(argv: list[str] | None = None) -> int:
    """`ustack ...`: the exit code. Every failure is one line on stderr, with
    exit code 2 for a bad command line and 1 for a failure at run time."""
    try:
        code = _run(argv)
        sys.stdout.flush()  # a reader gone shows here, not at exit as a traceback
        return code
    except UsageError as exc:
        print(f"ustack: error: {exc}", file=sys.stderr)
        return USAGE_EXIT
    except BrokenPipeError:
        # `ustack ss | head -1`: the reader has what it wanted. Stop quietly, as
        # `ls` does (killed by SIGPIPE: 128 + 13); stdout goes to /dev/null so
        # that the flush at exit does not fail again (the Python docs' recipe).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE


def _run(argv: list[str] | None) -> int:
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
