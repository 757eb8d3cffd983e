"""The `ustack` command line: every subcommand and its arguments (serve's
many options live in serve_options, the readers' with ladder and explain)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ustack import __version__
from ustack.cli.args import PORT
from ustack.cli.args import Parser
from ustack.cli.args import add_control_option
from ustack.cli.args import bounded_int
from ustack.cli.args import ip_address
from ustack.cli.clients import faults_doc
from ustack.cli.serve_options import add_serve_arguments
from ustack.compiled import build
from ustack.study.explain import add_explain_arguments
from ustack.study.export import add_export_arguments
from ustack.study.ladder import add_ladder_arguments
from ustack.study.plot import add_plot_arguments
from ustack.study.report import add_report_arguments
from ustack.trace.vocabulary import FaultAction

DESCRIPTION = (
    "Command line: `ustack serve` runs the daemon; `stats`, `ss` and `connect` talk to it."
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ustack", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"ustack {__version__}, {build()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    serve_cmd = commands.add_parser("serve", help="run the stack on a TUN device (foreground)")
    add_serve_arguments(serve_cmd)

    stats_cmd = commands.add_parser("stats", help="counters of a running daemon")
    stats_cmd.add_argument("-d", "--device", default="tun0", help="the daemon's device")
    add_control_option(stats_cmd)
    stats_cmd.add_argument("--json", action="store_true", help="print the raw JSON reply")
    stats_cmd.add_argument(
        "--gc-reset", action="store_true", help="zero the GC pause figures once shown (--gc-stats)"
    )

    ss_cmd = commands.add_parser("ss", help="connections of a running daemon, like ss -tan")
    ss_cmd.add_argument("-d", "--device", default="tun0", help="the daemon's device")
    add_control_option(ss_cmd)

    fault_cmd = commands.add_parser(
        "fault",
        help="drop, delay or duplicate matching packets of a running daemon",
        description=faults_doc(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fault_cmd.add_argument(
        "do", choices=[*(action.value for action in FaultAction), "list", "clear"]
    )
    fault_cmd.add_argument("--dir", choices=["in", "out", "both"])
    fault_cmd.add_argument("--flags", help="e.g. FIN, SYN+ACK")
    fault_cmd.add_argument("--only", action="store_true", help="exactly these flags")
    fault_cmd.add_argument("--port", type=int)
    fault_cmd.add_argument("--host", type=ip_address, help="either address, IPv4 or IPv6")
    fault_cmd.add_argument("--family", choices=["4", "6"], help="only IPv4 or only IPv6 packets")
    fault_cmd.add_argument("--nth", type=int, help="only the Nth matching packet")
    fault_cmd.add_argument("--count", type=int, help="act this many times")
    fault_cmd.add_argument("--prob", type=float, help="probability 0..1")
    fault_cmd.add_argument("--delay", type=float, help="seconds (for delay)")
    fault_cmd.add_argument("--id", type=bounded_int(1, 2**31), help="with clear: only this rule")
    fault_cmd.add_argument("-d", "--device", default="tun0", help="the daemon's device")
    add_control_option(fault_cmd)

    config_cmd = commands.add_parser(
        "config", help="show or change (for new connections) msl, fin timeout, RST in TIME_WAIT"
    )
    config_cmd.add_argument("--msl", help="seconds, 0..86400")
    config_cmd.add_argument("--fin-timeout", help="seconds, 0..86400")
    config_cmd.add_argument("--time-wait-rst", choices=["ignore", "close"])
    config_cmd.add_argument("-d", "--device", default="tun0", help="the daemon's device")
    add_control_option(config_cmd)

    ladder_cmd = commands.add_parser(
        "ladder", help="draw one connection of a JSONL trace as a sequence (ladder) diagram"
    )
    add_ladder_arguments(ladder_cmd)
    explain_cmd = commands.add_parser(
        "explain", help="tell one connection of a JSONL trace in plain words, step by step"
    )
    add_explain_arguments(explain_cmd)
    plot_cmd = commands.add_parser(
        "plot",
        help="graphs of one connection of a JSONL trace: time-sequence, cwnd, rtt, window, "
        "states (SVG or PNG; needs the plot extra)",
    )
    add_plot_arguments(plot_cmd)
    report_cmd = commands.add_parser(
        "report",
        help="one self-contained HTML page of a JSONL trace: connections, ladder, graphs, "
        "events (needs the plot extra)",
    )
    add_report_arguments(report_cmd)
    export_cmd = commands.add_parser(
        "export",
        help="a JSONL trace for other tools: --qlog, qlog's JSON-SEQ (qvis loads it)",
        description="ustack export TRACE --qlog -o FILE.sqlog: the trace in qlog's JSON-SEQ "
        "shape (RFC 7464 records; qlog 0.3 main schema framing, TCP events named as QUIC's "
        "nearest or ustack:*). A pcapng cannot be made from a trace (it holds no packet "
        "bytes): serve with --trace FILE.pcapng.",
    )
    add_export_arguments(export_cmd)

    lesson_cmd = commands.add_parser(
        "lesson",
        help="the textbook figures (handshake, closes, lost FIN, ...): list them, or run one "
        "against real Linux tools in a throwaway namespace (root)",
        description="ustack lesson [list]: the lessons, one line each. ustack lesson run NAME "
        "[-o DIR]: play it in a new network namespace (the daemon with --trace and "
        "--peer-states, Linux's nc, curl or Python sockets), write trace.jsonl, trace.pcapng, "
        "ladder.txt, ladder.svg and report.html into DIR (default ./lesson-NAME), print what to "
        "look for and the ladder with both ends' states; exit 1 if the run did not show it.",
    )
    lesson_actions = lesson_cmd.add_subparsers(dest="lesson_action", parser_class=Parser)
    lesson_actions.add_parser("list", help="the lessons, one line each")
    lesson_run = lesson_actions.add_parser("run", help="play one lesson")
    lesson_run.add_argument("name", help="the lesson (see `ustack lesson list`)")
    lesson_run.add_argument(
        "-o", "--output", type=Path, metavar="DIR", help="where to write (default ./lesson-NAME)"
    )

    connect_cmd = commands.add_parser(
        "connect", help="make the stack connect to HOST PORT; stdin/stdout like nc"
    )
    connect_cmd.add_argument("host", type=ip_address)
    connect_cmd.add_argument("port", type=PORT)
    connect_cmd.add_argument("-d", "--device", default="tun0", help="the daemon's device")
    add_control_option(connect_cmd)

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
