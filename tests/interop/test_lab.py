"""`ustack lab` as a user runs it: a command in a throwaway namespace beside a
daemon, its output and exit status passed through, nothing left afterwards."""

from __future__ import annotations

import subprocess
import sys

from ustack.linux.lab import Family


def _lab_namespaces() -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listing.splitlines() if line.startswith("ustack-lab")]


def _ustack_lab(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ustack", "lab", *argv], capture_output=True, text=True, timeout=60
    )


def test_curl_in_a_lab_gets_the_page_and_leaves_no_namespace(family: Family) -> None:
    """`ustack lab -- curl -s http://198.18.0.2/`, and over IPv6
    `ustack lab -- curl -s -g 'http://[2001:2::2]/'` (the daemon is ready to
    answer over IPv6 as soon as over IPv4: the Linux address needs no DAD)."""
    before = _lab_namespaces()
    result = _ustack_lab("--", "curl", "-s", "-g", family.url())
    assert result.returncode == 0, result.stderr
    assert "Hello from ustack" in result.stdout
    assert [name for name in _lab_namespaces() if name not in before] == []


def test_the_commands_exit_status_and_the_daemons_control_socket() -> None:
    result = _ustack_lab("--", "sh", "-c", "ustack ss && exit 3")
    assert result.returncode == 3, result.stderr
    assert "198.18.0.2:80" in result.stdout  # `ustack ss` found the lab's daemon
