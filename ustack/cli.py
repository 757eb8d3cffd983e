"""Command line: `ustack serve` runs the daemon, `ustack stats` asks a running one."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from ustack import __version__
from ustack.control import ControlError, request
from ustack.link import LinkConfig, LinkError
from ustack.stack import ServeConfig, serve

MIN_MTU = 68  # RFC 791: every IPv4 host must take 68-byte datagrams
MAX_MTU = 65535


def default_control_path(device: str) -> Path:
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
    _add_control_option(serve_cmd)
    serve_cmd.add_argument("--no-control", action="store_true", help="run without control socket")
    serve_cmd.add_argument(
        "--ready-fd", type=int, help="write 'ready' to this fd once packets flow, then close it"
    )
    serve_cmd.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )

    stats_cmd = commands.add_parser("stats", help="counters of a running daemon")
    stats_cmd.add_argument("-d", "--device", default="tun0", help="the daemon's device")
    _add_control_option(stats_cmd)
    stats_cmd.add_argument("--json", action="store_true", help="print the raw JSON reply")
    return parser


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
    return ServeConfig(
        link=LinkConfig(device=args.device, linux_side=linux_side, mtu=mtu),
        address=address,
        control_path=control,
        ready_fd=args.ready_fd,
    )


def _setup_logging(level: str) -> None:
    # Under systemd the journal stamps each line; elsewhere we do.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format=stamp + "%(name)s: %(message)s"
    )


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "serve":
            config = serve_config(args)
            _setup_logging(args.log_level)
            return serve(config)
        return _stats(args)
    except (UsageError, ControlError, LinkError) as exc:
        print(f"ustack: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
