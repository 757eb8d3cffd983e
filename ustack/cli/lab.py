"""`ustack lab`: a command (or a shell) in a throwaway namespace beside a daemon."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from collections.abc import Sequence
from pathlib import Path

from ustack.cli.args import UsageError
from ustack.cli.args import writable_folder
from ustack.cli.parser import build_parser
from ustack.cli.serve_options import serve_config
from ustack.linux.lab import LINUX_ADDRESS
from ustack.linux.lab import LINUX_ADDRESS6
from ustack.linux.lab import STACK_ADDRESS
from ustack.linux.lab import STACK_ADDRESS6
from ustack.linux.lab import LabError
from ustack.linux.lab import Stopper
from ustack.linux.lab import UstackDaemon
from ustack.linux.lab import netns
from ustack.linux.lab import remove_stale_namespaces


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
    if args.workdir is not None:
        writable_folder(args.workdir, "--workdir")
    return command, serve_args


def lab_command(args: argparse.Namespace) -> int:
    command, serve_args = lab_plan(args)
    shell = [word for word in args.cmd if word != "--"] == ["shell"]
    announce = (lambda line: print(line, file=sys.stderr)) if shell else None
    return run_in_lab(command, serve_args, args.workdir, announce)


def _path_with_our_scripts() -> str:
    """PATH with this install's scripts directory first, so `ustack ss` inside the
    lab talks with the same ustack as the daemon, also when the lab was started as
    `python -m ustack` or through sudo, which resets PATH."""
    scripts = sysconfig.get_path("scripts")
    rest = [p for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p != scripts]
    return os.pathsep.join([scripts, *rest])


def run_in_lab(
    command: Sequence[str],
    serve_args: Sequence[str] = (),
    workdir: Path | None = None,
    announce: Callable[[str], None] | None = None,
) -> int:
    """Run `command` in a new namespace beside `ustack serve serve_args` (defaults:
    Linux side 198.18.0.1/24 and 2001:2::1/64, stack 198.18.0.2 and 2001:2::2
    (with --no-ipv6: IPv4 only); its control socket in the
    environment as USTACK_CONTROL; the `ustack` command of this install first
    on PATH) and remove it all afterwards. The command's
    exit status (128 + N when signal N ended it). SIGINT, SIGTERM and SIGHUP
    sent to us are passed on to the command (a terminal's Ctrl-C reaches it
    twice: harmless to programs that end on the first, ignored by a shell);
    before the command runs they stop the set-up, which is undone."""
    if os.geteuid() != 0:
        raise LabError("ustack lab needs root (it makes a network namespace): run it with sudo")
    remove_stale_namespaces()
    stopper = Stopper("ustack-lab")
    code = stopper.run(lambda: _lab(command, serve_args, workdir, announce, stopper))
    return 128 + stopper.stopped if code is None else code


def _lab(
    command: Sequence[str],
    serve_args: Sequence[str],
    workdir: Path | None,
    announce: Callable[[str], None] | None,
    stopper: Stopper,
) -> int | None:
    """run_in_lab's run, in the stopper's thread; None if stopped before the command."""
    scratch = workdir is None
    where = Path(tempfile.mkdtemp(prefix="ustack-lab-")) if workdir is None else workdir
    where.mkdir(parents=True, exist_ok=True)
    daemon: UstackDaemon | None = None
    try:
        with netns("ustack-lab") as ns:
            daemon = UstackDaemon.start(
                ns, where, *serve_args, trace=False, log_level="info", msl=None
            )
            if announce is not None:
                announce(
                    f"ustack lab: namespace {ns.name}, Linux {LINUX_ADDRESS}/24 and "
                    f"{LINUX_ADDRESS6}/64, stack {STACK_ADDRESS} and {STACK_ADDRESS6}; "
                    f"daemon log {daemon.log}"
                )
            env = dict(
                os.environ,
                USTACK_CONTROL=str(daemon.control),
                USTACK_LAB=ns.name,
                PATH=_path_with_our_scripts(),
            )
            with stopper.lock:  # a signal from now on goes to the command
                if stopper.stopped:
                    return None
                child = stopper.child = subprocess.Popen(ns.command(*command), env=env)
            code = child.wait()
            if daemon.process.poll() is not None:
                sys.stderr.write(
                    f"ustack lab: the daemon died during the command "
                    f"(exit {daemon.process.returncode}):\n{daemon.log_text()[-2000:]}"
                )
            daemon.stop()
            return 128 - code if code < 0 else code
    finally:
        if daemon is not None:
            daemon.stop()
        if scratch:
            shutil.rmtree(where, ignore_errors=True)
