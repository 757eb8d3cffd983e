"""`ustack lab` as a user runs it: a command in a throwaway namespace beside a
daemon, its output and exit status passed through, nothing left afterwards."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from tests.stopped_midway import USTACK
from tests.stopped_midway import Finished
from tests.stopped_midway import run_clean
from tests.stopped_midway import stop_midway
from ustack.linux.lab import Family
from ustack.linux.lab import our_namespaces


def _ustack_lab(*argv: str) -> Finished:
    """`ustack lab *argv` (run_clean), checked to leave none of its namespaces."""
    lab = run_clean([*USTACK, "lab", *argv])
    assert our_namespaces("ustack-lab", lab.pid) == []
    return lab


def test_curl_in_a_lab_gets_the_page_and_leaves_no_namespace(family: Family) -> None:
    """`ustack lab -- curl -s http://198.18.0.2/`, and over IPv6
    `ustack lab -- curl -s -g 'http://[2001:2::2]/'` (the daemon is ready to
    answer over IPv6 as soon as over IPv4: the Linux address needs no DAD)."""
    result = _ustack_lab("--", "curl", "-s", "-g", family.url())
    assert result.returncode == 0, result.stderr
    assert "Hello from ustack" in result.stdout


def test_the_commands_exit_status_and_the_daemons_control_socket() -> None:
    result = _ustack_lab("--", "sh", "-c", "ustack ss && exit 3")
    assert result.returncode == 3, result.stderr
    assert "198.18.0.2:80" in result.stdout  # `ustack ss` found the lab's daemon


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_set_up_stops_the_lab_before_the_command(
    signum: signal.Signals, tmp_path: Path
) -> None:
    """Ctrl-C (or SIGTERM) while the namespace and the daemon are being made:
    exit 128 + N, the command never runs, nothing left. The signal may land
    in the fork of the daemon (a fork hook, where Python only prints an
    exception): the lab must stop all the same."""
    marker = tmp_path / "ran"
    lab = ["lab", "--", "sh", "-c", f"touch {marker}; sleep 30"]
    assert stop_midway([*USTACK, *lab], "ustack-lab", signum) == 128 + signum
    assert not marker.exists()


SIGNALLED_WITHIN = Path(__file__).resolve().parents[1] / "signalled_within.py"


@pytest.mark.parametrize(
    ("where", "signum"),
    [("finalizer", signal.SIGINT), ("finalizer", signal.SIGTERM), ("lock", signal.SIGTERM)],
    ids=["finalizer-SIGINT", "finalizer-SIGTERM", "lock-SIGTERM"],
)
def test_a_stop_signal_at_any_moment_of_the_set_up_stops_the_lab(
    tmp_path: Path, where: str, signum: signal.Signals
) -> None:
    """A stop signal during the set-up at the worst moments for a handler that
    raises (tests/signalled_within.py): in a finalizer (Python can only print
    the exception there, and the set-up went on to run the command), just
    after subprocess took a waitpid lock (never released: the clean-up hung).
    The lab exits 128 + N, silently, the command never run, nothing left."""
    argv = [sys.executable, str(SIGNALLED_WITHIN), "lab", where, str(int(signum)), str(tmp_path)]
    lab = run_clean(argv)
    assert lab.returncode == 128 + signum
    assert not (tmp_path / "ran").exists()
    assert our_namespaces("ustack-lab", lab.pid) == []
