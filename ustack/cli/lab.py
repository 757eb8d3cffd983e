"""`ustack lab`: a command (or a shell) in a throwaway namespace beside a daemon."""

from __future__ import annotations

import argparse
import os
import sys

from ustack.cli.args import UsageError
from ustack.cli.parser import build_parser
from ustack.cli.serve_options import serve_config
from ustack.linux.lab import run_in_lab


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


def lab_command(args: argparse.Namespace) -> int:
    command, serve_args = lab_plan(args)
    shell = [word for word in args.cmd if word != "--"] == ["shell"]
    announce = (lambda line: print(line, file=sys.stderr)) if shell else None
    return run_in_lab(command, serve_args, args.workdir, announce)
