"""The daemon on a real TUN, in a private namespace, against real Linux tools."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP
from scapy.layers.inet import IP
from scapy.layers.inet import TCP
from scapy.layers.inet import UDP
from scapy.layers.inet6 import ICMPv6EchoRequest
from scapy.layers.inet6 import IPv6

from ustack.linux.lab import LINUX_ADDRESS
from ustack.linux.lab import LINUX_ADDRESS6
from ustack.linux.lab import STACK_ADDRESS
from ustack.linux.lab import STACK_ADDRESS6
from ustack.linux.lab import Family
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon
from ustack.linux.lab import ping


def test_ping_gets_three_replies(ns: Netns, daemon: UstackDaemon, family: Family) -> None:
    result = ping(ns, 3, address=family.stack)
    out = result.stdout.decode()
    assert result.returncode == 0, out
    assert "3 packets transmitted, 3 received" in out
    assert daemon.stats()[f"{family.icmp}.echo"] == 3


def test_ping_payload_sizes_come_back_intact(
    ns: Netns, daemon: UstackDaemon, family: Family
) -> None:
    # Odd and even sizes exercise the checksum's odd-byte path; 1472 (IPv4)
    # and 1452 (IPv6) fill the MTU.
    for size in (0, 1, 57, 1000, family.mss + 12):
        result = ping(ns, 1, "-s", str(size), "-p", "a5", address=family.stack)
        assert result.returncode == 0, (size, result.stdout.decode())


def test_curl_to_closed_port_is_refused(ns: Netns, daemon: UstackDaemon, family: Family) -> None:
    # Port 80 has the HTTP service; 81 has nothing.
    # -v makes curl print the errno text of the failed connect().
    result = ns.run("curl", "-v", "-g", "--connect-timeout", "5", family.url(port=81))
    # 7 is "failed to connect" (RST), 28 would be a time-out (no answer).
    assert result.returncode == 7, result.stderr.decode()
    assert "Connection refused" in result.stderr.decode()
    assert daemon.stats()["tcp.out.rst"] == 1


def test_python_connect_is_refused(ns: Netns, daemon: UstackDaemon, family: Family) -> None:
    code = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('{family.stack}', 5555), timeout=5)\n"
        "except ConnectionRefusedError:\n"
        "    print('refused')\n"
    )
    assert ns.python(code).stdout == b"refused\n"


def test_nc_udp_to_closed_port_gets_port_unreachable(
    ns: Netns, daemon: UstackDaemon, family: Family
) -> None:
    # nc -z probes UDP by writing until a write fails with ECONNREFUSED (our
    # ICMP or ICMPv6 port unreachable): exit 1. With no ICMP it says "succeeded", exit 0.
    result = ns.run("nc", "-v", "-u", "-z", "-w", "2", family.stack, "9999")
    assert result.returncode == 1, result.stderr.decode()
    assert b"succeeded" not in result.stderr
    assert daemon.stats()[f"{family.udp}.out.port-unreachable"] >= 1


def test_python_udp_sees_port_unreachable(ns: Netns, daemon: UstackDaemon, family: Family) -> None:
    code = family.udp_client(
        f"s.connect(('{family.stack}', 9999))",
        "s.send(b'x')",
        "try:",
        "    s.recv(10)",
        "except ConnectionRefusedError:",
        "    print('refused')",
    )
    assert ns.python(code).stdout == b"refused\n"
    assert daemon.stats()[f"{family.udp}.out.port-unreachable"] == 1


def _after_barrier(ns: Netns, daemon: UstackDaemon) -> dict[str, int]:
    """The TUN delivers packets in order, so once a ping is answered, every
    packet injected before it has been processed."""
    assert ping(ns).returncode == 0
    return daemon.stats()


def _good() -> IP:
    return IP(src=LINUX_ADDRESS, dst=STACK_ADDRESS, ttl=64)


MALFORMED: dict[str, bytes] = {
    "ip.drop.ipv4-bad-checksum": bytes(_good() / ICMP()),  # patched below
    "ip.drop.ipv4-truncated": bytes(_good() / ICMP())[:15],
    "ip.drop.ipv4-bad-ihl": bytes(IP(src=LINUX_ADDRESS, dst=STACK_ADDRESS, ihl=4) / ICMP()),
    "ip.drop.ipv4-bad-total-length": bytes(
        IP(src=LINUX_ADDRESS, dst=STACK_ADDRESS, len=200) / ICMP()
    ),
    "ip.drop.ipv4-ttl-zero": bytes(IP(src=LINUX_ADDRESS, dst=STACK_ADDRESS, ttl=0) / ICMP()),
    # A fragment whose data would end past 65,535 bytes (the ping of death).
    "ip.drop.frag-too-big": bytes(
        IP(src=LINUX_ADDRESS, dst=STACK_ADDRESS, flags="MF", frag=8190) / ICMP() / bytes(8)
    ),
    # IPv6 (RFC 8200 3): a payload length past the packet's end.
    "ip6.drop.ipv6-bad-payload-length": bytes(
        IPv6(src=LINUX_ADDRESS6, dst=STACK_ADDRESS6, plen=200) / ICMPv6EchoRequest()
    ),
    "tcp.drop.bad-checksum": bytes(_good() / TCP(dport=80, flags="S", chksum=0xBEEF)),
    "udp.drop.bad-checksum": bytes(_good() / UDP(dport=53, chksum=0xBEEF) / b"q"),
    "icmp.drop.bad-checksum": bytes(_good() / ICMP(chksum=0xBEEF)),
}
_bad = bytearray(MALFORMED["ip.drop.ipv4-bad-checksum"])
_bad[10] ^= 0xFF
MALFORMED["ip.drop.ipv4-bad-checksum"] = bytes(_bad)


def test_bad_ip_checksum_is_counted_and_dropped(ns: Netns, daemon: UstackDaemon) -> None:
    ns.inject(MALFORMED["ip.drop.ipv4-bad-checksum"])
    stats = _after_barrier(ns, daemon)
    assert stats["ip.drop.ipv4-bad-checksum"] == 1
    assert stats["icmp.echo"] == 1  # the barrier ping only: the bad packet got no reply


@pytest.mark.parametrize("reason", sorted(MALFORMED))
def test_malformed_packet_is_dropped_by_reason(
    ns: Netns, daemon: UstackDaemon, reason: str
) -> None:
    ns.inject(MALFORMED[reason])
    stats = _after_barrier(ns, daemon)
    assert stats.get(reason) == 1, stats
    assert "tcp.out.rst" not in stats and "udp.out.port-unreachable" not in stats


def test_ustack_stats_command(ns: Netns, daemon: UstackDaemon) -> None:
    assert ping(ns, 2).returncode == 0
    result = subprocess.run(
        [sys.executable, "-m", "ustack", "stats", "--control", str(daemon.control)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    rows = dict(line.split() for line in result.stdout.splitlines())
    assert rows["icmp.echo"] == "2"


def test_control_socket_survives_garbage(ns: Netns, daemon: UstackDaemon) -> None:
    assert (daemon.control.stat().st_mode & 0o777) == 0o600
    replies = []
    for garbage in (
        b"not json\n",
        b"[1,2]\n",
        b'{"command": "nope"}\n',
        b"\xff\xfe\n",
        b"x" * 70000,
    ):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(daemon.control))
            sock.sendall(garbage)
            sock.shutdown(socket.SHUT_WR)
            replies.append(sock.makefile("rb").readline())
    for reply in replies:
        assert b'"ok": false' in reply, reply
    assert ping(ns).returncode == 0  # the daemon carries on
    assert daemon.stats()["icmp.echo"] == 1


def test_sigterm_removes_the_device_it_created(ns: Netns, tmp_path: Path) -> None:
    d = UstackDaemon.start(ns, tmp_path)
    assert ns.run("ip", "link", "show", "tun0").returncode == 0
    assert d.stop() == 0
    assert ns.run("ip", "link", "show", "tun0").returncode != 0
    assert not d.control.exists()
    assert "shutting down" in d.log_text()


def test_attaches_to_a_persistent_device_and_leaves_it(ns: Netns, tmp_path: Path) -> None:
    ns.run("ip", "tuntap", "add", "dev", "tun0", "mode", "tun", check=True)
    ns.run("ip", "addr", "add", "198.18.0.1/24", "dev", "tun0", check=True)
    ns.run("ip", "link", "set", "tun0", "up", "mtu", "1400", check=True)
    d = UstackDaemon.start(ns, tmp_path)
    try:
        assert ping(ns, 2).returncode == 0
        assert "attached to existing tun0" in d.log_text()
        assert "mtu 1400" in d.log_text()
    finally:
        assert d.stop() == 0
    shown = ns.run("ip", "addr", "show", "tun0", check=True).stdout.decode()
    assert "198.18.0.1/24" in shown and "mtu 1400" in shown


def test_persistent_device_owned_by_user_needs_no_root(ns: Netns, tmp_path: Path) -> None:
    """The design-card promise: set the device up once as root, then run the
    daemon without CAP_NET_ADMIN."""
    ns.run("ip", "tuntap", "add", "dev", "tun0", "mode", "tun", check=True)
    ns.run("ip", "addr", "add", "198.18.0.1/24", "dev", "tun0", check=True)
    ns.run("ip", "link", "set", "tun0", "up", check=True)
    d = UstackDaemon.start(ns, tmp_path, wrapper=_WITHOUT_NET_ADMIN)
    try:
        assert ping(ns, 1).returncode == 0
    finally:
        assert d.stop() == 0


_WITHOUT_NET_ADMIN = ("setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin")


def _serve(
    ns: Netns, *args: str, wrapper: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    argv = ns.command(*wrapper, sys.executable, "-m", "ustack", "serve", "--no-control", *args)
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )


def _one_line_error(result: subprocess.CompletedProcess[str], expected: str, code: int = 1) -> None:
    """One line on stderr; exit code 1 (a failure at run time) or 2 (a usage error)."""
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0], lines[0]


def test_error_without_cap_net_admin(ns: Netns) -> None:
    _one_line_error(_serve(ns, wrapper=_WITHOUT_NET_ADMIN), "run as root or with CAP_NET_ADMIN")


def test_error_when_device_is_busy(ns: Netns, daemon: UstackDaemon) -> None:
    _one_line_error(_serve(ns), "tun0 is busy")
    assert ping(ns).returncode == 0  # the first daemon is unharmed


def test_error_when_device_is_not_tun(ns: Netns) -> None:
    ns.run("ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", check=True)
    _one_line_error(_serve(ns, "--device", "veth0"), "not a TUN device")


def test_error_without_dev_net_tun(ns: Netns) -> None:
    # A private mount namespace where /dev/net is empty.
    wrapper = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount -t tmpfs none /dev/net && exec "$@"', "sh")  # fmt: skip
    _one_line_error(_serve(ns, wrapper=wrapper), "/dev/net/tun does not exist")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--address", "300.1.2.3"), "bad --address"),
        (("--address", "198.18.1.2"), "not a host address"),
        (("--address", "198.18.0.1"), "Linux side's own address"),
        (("--linux-address", "198.18.0.1/33"), "bad --linux-address"),
        (("--mtu", "67"), "bad --mtu 67"),
        (("--mtu", "70000"), "bad --mtu 70000"),
        (("--mtu", "big"), "bad --mtu"),
        (("--bogus",), "unrecognized arguments"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(
    ns: Netns, args: tuple[str, ...], expected: str
) -> None:
    result = _serve(ns, *args)
    _one_line_error(result, expected, code=2)
    assert ns.run("ip", "link", "show", "tun0").returncode != 0  # nothing was created
