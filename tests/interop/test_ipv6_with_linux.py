"""The dual Stack against the real Linux IPv6 stack on a real TUN (tests-only
harness, tests/interop/ipv6_harness.py: the library without the daemon):
ping -6 (small and fragmented), UDP to a closed port, and what the kernel
sends down the TUN by itself (MLD, ND) counted, never answered; TCP over
IPv6 both ways: nc -6 and Python AF_INET6 clients against the echo service,
curl -6 refused at once on a closed port, the stack connecting out to a
Linux AF_INET6 server."""

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


def start_harness(ns: Netns, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    process = subprocess.Popen(
        ns.command(sys.executable, str(HARNESS), *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != b"ready":
        process.kill()
        raise AssertionError(process.communicate(timeout=10)[1].decode())
    return process


@pytest.fixture
def harness(ns: Netns):
    process = start_harness(ns)
    try:
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


def test_tcp_over_ipv6_echo_half_close_and_a_closed_port_refused(ns: Netns, harness) -> None:
    echo = ns.run("nc", "-6", "-N", "-w", "5", STACK, "7", input=b"hello over IPv6\n")
    assert echo.stdout == b"hello over IPv6\n", echo.stderr.decode()
    # A Python AF_INET6 client: 1 MB there and back, its FIN after the data.
    client = ns.python(
        "import socket, hashlib\n"
        "s = socket.create_connection(('2001:2::2', 7), timeout=10)\n"
        "assert s.family == socket.AF_INET6\n"
        "peer = s.getpeername()[:2]\n"
        "data = bytes(range(256)) * 4096\n"
        "s.sendall(data)\n"
        "s.shutdown(socket.SHUT_WR)\n"
        "got = b''\n"
        "while chunk := s.recv(65536):\n"
        "    got += chunk\n"
        "print(len(got), got == data, peer)\n"
    )
    assert client.stdout.strip() == b"1048576 True ('2001:2::2', 7)"
    refused = ns.run("curl", "-6", "-g", "-s", "-m", "5", "http://[2001:2::2]:81/")
    assert refused.returncode == 7  # "Couldn't connect": an RST, at once
    counters = counters_of(harness, ns)
    assert counters["tcp.passive-opens"] == 2
    assert counters["tcp.out.rst"] == 1
    assert counters["ip6.in"] > 100 and counters.get("ip.in", 0) == 0
    drops = {name: n for name, n in counters.items() if ".drop." in name}
    assert drops == {}, drops


def test_the_stack_connects_out_to_a_linux_ipv6_server(ns: Netns) -> None:
    server = subprocess.Popen(
        ns.command(
            sys.executable, "-c",
            "import socket\n"
            "s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.bind(('::', 9000)); s.listen(1); print('listening', flush=True)\n"
            "c, peer = s.accept(); data = b''\n"
            "while chunk := c.recv(4096):\n"
            "    data += chunk\n"
            "c.sendall(b'linux got ' + data + b' from ' + peer[0].encode()); c.close()\n",
        ),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert server.stdout is not None and server.stdout.readline() == b"listening\n"
        process = start_harness(ns, "--connect", "2001:2::1", "9000")
        try:
            assert process.stdout is not None
            reply = process.stdout.readline().decode()
            assert reply.startswith("reply: linux got from ustack from 2001:2::2"), reply
            assert "('2001:2::1', 9000, 0, 0)" in reply
            counters = counters_of(process, ns)
            assert counters["ip6.out"] >= 3
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    finally:
        server.kill()
        server.wait(timeout=10)
