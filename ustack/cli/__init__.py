"""Command line: `ustack serve` runs the daemon; `stats`, `ss` and `connect` talk to it.

The package: parser (every subcommand and its arguments), args (what they
share), serve_options (serve's options into a ServeConfig), clients (the
control-socket commands), lab; here, main() runs one command."""

from __future__ import annotations

import os
import signal
import sys

from ustack.cli.args import UsageError
from ustack.cli.clients import config_command
from ustack.cli.clients import connect_command
from ustack.cli.clients import fault_command
from ustack.cli.clients import ss_command
from ustack.cli.clients import stats_command
from ustack.cli.compiled_check import warn_if_stale
from ustack.cli.lab import lab_command
from ustack.cli.lab import lab_plan
from ustack.cli.lesson import lesson_command
from ustack.cli.parser import build_parser
from ustack.cli.serve_options import serve_config
from ustack.cli.serve_options import setup_logging
from ustack.daemon import serve
from ustack.linux.control import ControlError
from ustack.linux.lab import LabError
from ustack.linux.peer_states import PeerStatesError
from ustack.linux.tun import LinkError
from ustack.study.explain import explain_command
from ustack.study.export import export_command
from ustack.study.ladder import ladder_command
from ustack.study.plot import plot_command
from ustack.study.report import report_command
from ustack.study.sinks import TraceOutputError

__all__ = ["UsageError", "build_parser", "lab_plan", "main", "serve", "serve_config"]

USAGE_EXIT = 2  # argparse's convention: a bad command line; runtime failures exit 1


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
        _stdout_to_devnull()
        return 128 + signal.SIGPIPE
    except OSError as exc:
        # Output to a full disk (`ustack explain T >/dev/full`), or another
        # system call that failed where no command looked for it: one line.
        print(f"ustack: error: {exc}", file=sys.stderr)
        try:
            sys.stdout.flush()
        except OSError:  # what stdout still holds cannot go anywhere either
            _stdout_to_devnull()
        return 1


def _stdout_to_devnull() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _run(argv: list[str] | None) -> int:
    warn_if_stale()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "serve":
            config = serve_config(args)
            setup_logging(args.log_level, args.log_file)
            return serve(config)
        commands = {
            "stats": stats_command,
            "ss": ss_command,
            "connect": connect_command,
            "fault": fault_command,
            "config": config_command,
            "ladder": ladder_command,
            "explain": explain_command,
            "plot": plot_command,
            "report": report_command,
            "export": export_command,
            "lab": lab_command,
            "lesson": lesson_command,
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
