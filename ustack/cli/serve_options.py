"""`ustack serve`'s options and their validation: the command line to a ServeConfig."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

from ustack.api import STREAM_LIMIT
from ustack.cli.args import PORT
from ustack.cli.args import UsageError
from ustack.cli.args import add_control_option
from ustack.cli.args import bounded_int
from ustack.cli.args import check_device
from ustack.cli.args import control_path
from ustack.cli.args import fault_rule
from ustack.cli.args import parse_count
from ustack.cli.args import parse_seconds
from ustack.cli.trace_options import MAX_TRACE_KEEP
from ustack.cli.trace_options import MIN_TRACE_BYTES
from ustack.cli.trace_options import trace_hosts
from ustack.cli.trace_options import trace_rotation
from ustack.cli.trace_options import trace_specs
from ustack.daemon import ServeConfig
from ustack.daemon.running import MAX_QUEUES
from ustack.linux.tun import LinkConfig
from ustack.net.fragments import FragmentLimits
from ustack.net.pmtu import DEFAULT_MIN_PMTU
from ustack.net.ratelimit import IcmpLimits
from ustack.services import SERVICES
from ustack.services import HttpLimits
from ustack.study.sinks import TRACE_FORMATS
from ustack.study.sinks import TraceFilter
from ustack.tcp import congestion
from ustack.tcp.config import ECN_MODES
from ustack.tcp.connection import TcpConfig
from ustack.wire.address import parse_address

MIN_MTU = 68  # RFC 791: every IPv4 host must take 68-byte datagrams
MAX_MTU = 65535
# TcpConfig's defaults, read from an instance: the compiled build's dataclass
# (USTACK_MYPYC=1) keeps none on the class.
_TCP_DEFAULTS = TcpConfig()


def add_serve_arguments(serve_cmd: argparse.ArgumentParser) -> None:
    """Every `ustack serve` option, in the order `ustack serve --help` lists them."""
    serve_cmd.add_argument(
        "-d", "--device", default="tun0", help="TUN device (default: %(default)s)"
    )
    serve_cmd.add_argument(
        "--linux-address",
        default="198.18.0.1/24",
        help="the kernel's address and prefix on the TUN (default: %(default)s)",
    )
    serve_cmd.add_argument(
        "-a", "--address", default="198.18.0.2", help="the stack's address (default: %(default)s)"
    )
    serve_cmd.add_argument(
        "--linux-address6",
        default="2001:2::1/64",
        help="the kernel's IPv6 address and prefix on the TUN (default: %(default)s)",
    )
    serve_cmd.add_argument(
        "--address6",
        default="2001:2::2",
        metavar="ADDRESS",
        help="the stack's IPv6 address (default: %(default)s)",
    )
    serve_cmd.add_argument(
        "--no-ipv6",
        action="store_true",
        help="IPv4 only: IPv6 stays disabled on the TUN and the stack has no IPv6 address",
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
        "--msl",
        default="30",
        help="maximum segment lifetime, s; TIME_WAIT is 2*MSL (default %(default)s)",
    )
    serve_cmd.add_argument(
        "--fin-timeout",
        default="60",
        help="an orphaned FIN_WAIT_2 is dropped after this many seconds (default %(default)s)",
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
        ".pcap pcap, .pcapng pcapng (packets with the reasons as comments), .jsonl jsonl, "
        "else text",
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
        "--gc-stats",
        action="store_true",
        help="time the garbage collector's pauses (longest, total, how many over 10, 20 and "
        "200 ms), shown by ustack stats",
    )
    serve_cmd.add_argument(
        "--trace-host", action="append", default=[], help="trace only this address (IPv4 or IPv6)"
    )
    serve_cmd.add_argument(
        "--congestion",
        choices=sorted(congestion.ALGORITHMS),
        default="cubic",
        help="congestion control (default: %(default)s, as Linux)",
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
        "--queues",
        metavar="N",
        help="open the TUN with N queues (IFF_MULTI_QUEUE), one worker process each; the "
        "kernel gives each flow to one queue by its hash (default 1; 1..64; no --trace, "
        "--fault, --peer-states nor `ustack connect` with more than 1)",
    )
    serve_cmd.add_argument(
        "--no-offload",
        action="store_true",
        help="no GSO/TSO/checksum offload on the TUN: every segment as it goes on the wire",
    )
    _add_http_options(serve_cmd)
    add_control_option(serve_cmd)
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
        help=f"rotated trace files kept: FILE.1..FILE.K (1..{MAX_TRACE_KEEP}, default %(default)s)",
    )


# ---- the HTTP service's limits: --http-NAME for each field of HttpLimits ----------------------

HTTP_OPTIONS = {  # field: (help, what a value is)
    "max_requests": ("requests per connection; the last answer closes it", "count"),
    "idle_timeout": ("seconds a kept-alive connection may wait for its next request", "seconds"),
    "head_timeout": ("seconds for a whole request head (slowloris)", "seconds"),
    "body_timeout": ("seconds a request body may stall", "seconds"),
    "max_head": (f"bytes of request head, at most {STREAM_LIMIT} (else 431)", "bytes"),
    "max_request_line": ("bytes of request line (else 414)", "bytes"),
    "linger_timeout": ("seconds the rest of a refused request is read before closing", "seconds"),
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


def _check_one_queue_options(args: argparse.Namespace, queues: int) -> None:
    """What --queues > 1 does not do: traces (each worker would write its own,
    with its own connection ids), peer states, fault rules."""
    for flag, given in (
        ("--trace", args.trace),
        ("--fault", args.fault),
        ("--peer-states", args.peer_states),
    ):
        if given:
            raise UsageError(
                f"{flag} needs --queues 1 (with --queues {queues} each worker holds only "
                "its own flows: see docs/performance.md, Beyond one core)"
            )


def _icmp_limits(args: argparse.Namespace) -> IcmpLimits:
    default = IcmpLimits()
    return IcmpLimits(
        ratelimit=parse_count(
            args.icmp_ratelimit, "--icmp-ratelimit", 0, 3_600_000, int(default.ratelimit * 1000)
        )
        / 1000,
        msgs_per_sec=parse_count(
            args.icmp_msgs_per_sec, "--icmp-msgs-per-sec", 0, 10_000_000, default.msgs_per_sec
        ),
        msgs_burst=parse_count(
            args.icmp_msgs_burst, "--icmp-msgs-burst", 0, 10_000_000, default.msgs_burst
        ),
        ratemask=parse_count(args.icmp_ratemask, "--icmp-ratemask", 0, 2**32 - 1, default.ratemask),
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
            values[name] = parse_seconds(text, flag)
            if values[name] == 0:
                raise UsageError(f"bad {flag} 0: want seconds > 0")
        else:
            values[name] = parse_count(text, flag, 1, None, 0)
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
    linux_side6, address6 = (None, None) if args.no_ipv6 else _ipv6_addresses(args)
    mtu = None
    if args.mtu is not None:
        try:
            mtu = int(args.mtu)
        except ValueError:
            raise UsageError(f"bad --mtu {args.mtu!r}: want a number") from None
        if not MIN_MTU <= mtu <= MAX_MTU:
            raise UsageError(f"bad --mtu {mtu}: want {MIN_MTU}..{MAX_MTU}")
    check_device(args.device)
    control = None if args.no_control else control_path(args)
    tcp = TcpConfig(
        msl=parse_seconds(args.msl, "--msl"),
        fin_wait_2_timeout=parse_seconds(args.fin_timeout, "--fin-timeout"),
        rfc1337=args.time_wait_rst == "ignore",
        congestion_control=args.congestion,
        ecn=args.ecn,
        nagle=not args.no_nagle,
        keepalive_idle=_keepalive(args.keepalive),
        syn_retries=parse_count(
            args.syn_retries, "--syn-retries", 0, 127, _TCP_DEFAULTS.syn_retries
        ),
        max_connections=parse_count(
            args.max_connections, "--max-connections", 1, 10_000_000, _TCP_DEFAULTS.max_connections
        ),
        invalid_ack_ratelimit=parse_count(
            args.tcp_invalid_ratelimit,
            "--tcp-invalid-ratelimit",
            0,
            3_600_000,
            int(_TCP_DEFAULTS.invalid_ack_ratelimit * 1000),
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
    queues = parse_count(args.queues, "--queues", 1, MAX_QUEUES, 1)
    if queues > 1:
        _check_one_queue_options(args, queues)
    return ServeConfig(
        queues=queues,
        link=LinkConfig(
            device=args.device,
            linux_side=linux_side,
            linux_side6=linux_side6,
            mtu=mtu,
            offload=not args.no_offload,
        ),
        address=address,
        address6=address6,
        tcp=tcp,
        services=_services(args.services),
        control_path=control,
        ready_fd=args.ready_fd,
        traces=trace_specs(args),
        trace_filter=TraceFilter(frozenset(args.trace_port), trace_hosts(args.trace_host)),
        trace_rotation=trace_rotation(args),
        peer_states=args.peer_states,
        faults=[fault_rule(text) for text in args.fault],
        fault_seed=args.fault_seed,
        http=_http_limits(args),
        fragments=_fragment_limits(args),
        icmp=_icmp_limits(args),
        min_pmtu=parse_count(args.min_pmtu, "--min-pmtu", MIN_MTU, MAX_MTU, DEFAULT_MIN_PMTU),
        gc_stats=args.gc_stats,
    )


def _ipv6_addresses(
    args: argparse.Namespace,
) -> tuple[ipaddress.IPv6Interface, ipaddress.IPv6Address]:
    """--linux-address6 and --address6: the Linux side's unicast address and
    prefix, and the stack's, a host address in it (RFC 4291 2.6.1: the prefix
    itself is the subnet-router anycast address)."""
    try:
        linux_side6 = ipaddress.IPv6Interface(args.linux_address6)
        parse_address(str(linux_side6.ip))
    except ValueError:
        raise UsageError(
            f"bad --linux-address6 {args.linux_address6[:60]!r}: want an IPv6 ADDRESS/LEN "
            "outside ::/96 and ::ffff:0:0/96"
        ) from None
    try:
        address6 = ipaddress.IPv6Address(args.address6)
        parse_address(str(address6))
    except ValueError:
        raise UsageError(
            f"bad --address6 {args.address6[:60]!r}: want an IPv6 address "
            "outside ::/96 and ::ffff:0:0/96"
        ) from None
    for flag, address in (("--linux-address6", linux_side6.ip), ("--address6", address6)):
        if address.is_multicast or address.is_link_local:
            raise UsageError(f"{flag} {address} is not a global unicast address")
    network = linux_side6.network
    if address6 == linux_side6.ip:
        raise UsageError(f"--address6 {address6} is the Linux side's own address")
    if address6 not in network or (network.prefixlen < 127 and address6 == network[0]):
        raise UsageError(f"--address6 {address6} is not a host address in {network}")
    return linux_side6, address6


def _fragment_limits(args: argparse.Namespace) -> FragmentLimits:
    defaults = FragmentLimits()
    timeout = defaults.timeout
    if args.ipfrag_time is not None:
        timeout = parse_seconds(args.ipfrag_time, "--ipfrag-time")
        if timeout == 0:
            raise UsageError("bad --ipfrag-time 0: want seconds > 0")
    high_thresh = parse_count(
        args.ipfrag_high_thresh, "--ipfrag-high-thresh", 0, 2**31 - 1, defaults.high_thresh
    )
    return FragmentLimits(high_thresh=high_thresh, timeout=timeout)


def _keepalive(text: str | None) -> float | None:
    if text is None:
        return None
    seconds = parse_seconds(text, "--keepalive")
    if seconds <= 0:
        raise UsageError(f"bad --keepalive {text}: want seconds > 0 (leave it out for none)")
    return seconds


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


class _SaysOnceWhenWritesFail:
    """Mixed into the log's handler: a line that cannot be written (a full
    disk, a closed stderr) is lost, and the first such loss is told in one
    line on stderr; not Python's "--- Logging error ---" and a traceback for
    every line."""

    told = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a bad format, say: Python's report
            super().handleError(record)  # type: ignore[misc]
            return
        if self.told:
            return
        self.told = True
        try:
            sys.stderr.write(
                f"ustack: cannot write the log ({sys.exc_info()[1]}): lines are lost\n"
            )
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr is what fails: nowhere to tell
            pass


class _LogStream(_SaysOnceWhenWritesFail, logging.StreamHandler):  # type: ignore[type-arg]
    pass


class _LogFile(_SaysOnceWhenWritesFail, logging.FileHandler):
    pass


def setup_logging(level: str, log_file: Path | None = None) -> None:
    # Under systemd the journal stamps each line; elsewhere we do.
    stamp = "" if os.environ.get("JOURNAL_STREAM") and log_file is None else "%(asctime)s "
    try:
        handler = _LogStream(sys.stderr) if log_file is None else _LogFile(log_file)
    except OSError as exc:
        raise UsageError(f"cannot open --log-file {log_file}: {exc.strerror}") from None
    logging.basicConfig(
        level=level.upper(), format=stamp + "%(name)s: %(message)s", handlers=[handler]
    )
