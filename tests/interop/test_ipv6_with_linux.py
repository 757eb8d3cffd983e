"""IPv6Layer against the real Linux IPv6 stack on a real TUN (tests-only
harness, tests/interop/ipv6_harness.py; the daemon does not carry IPv6 yet):
ping -6 (small and fragmented), UDP to a closed port, and what the kernel
sends down the TUN by itself (MLD, ND) counted, never answered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ustack.linux.lab import Netns

pytestmark = pytest.mark.netns

HARNESS = Path(__file__).with_name("ipv6_harness.py")
STACK = "2001:2::2"


@pytest.fixture
def harness(ns: Netns):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    process = subprocess.Popen(
        ns.command(sys.executable, str(HARNESS)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"ready", process.stderr
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def counters_of(process: subprocess.Popen[bytes], ns: Netns) -> dict[str, int]:
    """SIGTERM to the harness (the namespace's python, by PID), its counters."""
    process.terminate()
    out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err.decode()
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


def test_ping6_small_and_fragmented_udp_unreachable_nd_counted(ns: Netns, harness) -> None:
    small = ns.run("ping", "-6", "-n", "-c", "3", "-i", "0.2", "-W", "2", STACK)
    assert small.returncode == 0, small.stdout.decode() + small.stderr.decode()
    big = ns.run("ping", "-6", "-n", "-c", "1", "-W", "2", "-s", "4000", STACK)
    assert big.returncode == 0, big.stdout.decode() + big.stderr.decode()
    assert b"4008 bytes from 2001:2::2" in big.stdout
    probe = ns.python(
        "import socket\n"
        "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
        "s.settimeout(2)\n"
        "s.connect(('2001:2::2', 9999))\n"
        "s.send(b'hello')\n"
        "try:\n"
        "    s.recv(100)\n"
        "except ConnectionRefusedError:\n"
        "    print('refused')\n"
    )
    assert probe.stdout.strip() == b"refused"
    counters = counters_of(harness, ns)
    assert counters["icmp6.echo"] == 4
    assert counters["ip6.reasm.oks"] == 1 and counters["ip6.frag.oks"] == 1
    assert counters["udp6.out.port-unreachable"] == 1
    drops = {name: n for name, n in counters.items() if ".drop." in name}
    # What the kernel sent by itself (a router solicitation, MLD reports, as
    # its timers go) is counted, never a drop.
    assert drops == {}, drops
