"""The Linux side of IPv6 (issue 15): the daemon enables IPv6 on the TUN it
creates, and only there, with 2001:2::1/64 usable at once (no DAD) and no
router solicitations (accept_ra=0); nothing the kernel sends is dropped;
--no-ipv6 and an MTU below 1280 keep it IPv4 only; and path MTU discovery
over a routed IPv6 path (RFC 8201), where a Linux router answers our
1500-byte packets with ICMPv6 Packet Too Big.

The tests that run the same over both families (curl, wget, nc, ab, Python
clients, ustack connect, ping fragments, refusals, ICMPv6 port unreachable,
GSO and TSO) take the `family` fixture in test_foundation, test_lifecycle and
test_fragments."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_path_mtu import BIG
from test_path_mtu import IPV6_PLAN
from test_path_mtu import expected_sha256
from test_path_mtu import finish
from test_path_mtu import routed_path

from ustack.linux.lab import LINUX_ADDRESS6
from ustack.linux.lab import STACK_ADDRESS6
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon
from ustack.linux.lab import ping

pytestmark = pytest.mark.netns

DISABLE_IPV6 = "/proc/sys/net/ipv6/conf/{}/disable_ipv6"


def _sysctl(ns: Netns, path: str) -> str:
    return ns.run("cat", path, check=True).stdout.decode().strip()


def test_ipv6_on_our_device_only_usable_at_once_and_nothing_dropped(
    ns: Netns, daemon: UstackDaemon
) -> None:
    daemon.wait_for_ipv6()  # one connect over IPv6, answered: no wait for DAD
    assert _sysctl(ns, DISABLE_IPV6.format("tun0")) == "0"
    assert _sysctl(ns, "/proc/sys/net/ipv6/conf/tun0/accept_ra") == "0"  # no RS down the TUN
    assert _sysctl(ns, DISABLE_IPV6.format("default")) == "0"  # the namespace's own: untouched
    shown = ns.run("ip", "-6", "addr", "show", "dev", "tun0", check=True).stdout.decode()
    assert f"inet6 {LINUX_ADDRESS6}/64 scope global nodad" in shown, shown
    assert "tentative" not in shown
    assert ping(ns, 2, address=STACK_ADDRESS6).returncode == 0
    stats = daemon.stats()
    assert stats["icmp6.echo"] == 2
    # Whatever else the kernel sends down the TUN is recognised (ND and MLD
    # are counted as icmp6.in.nd, icmp6.in.mld), never a drop.
    drops = {name: n for name, n in stats.items() if ".drop." in name}
    assert drops == {}, drops


def test_no_ipv6_keeps_ipv6_off_the_device(ns: Netns, tmp_path: Path) -> None:
    with UstackDaemon.start(ns, tmp_path, "--no-ipv6") as daemon:
        assert _sysctl(ns, DISABLE_IPV6.format("tun0")) == "1"
        shown = ns.run("ip", "-6", "addr", "show", "dev", "tun0").stdout.decode()
        assert "inet6" not in shown
        refused = ping(ns, 1, address=STACK_ADDRESS6)
        assert refused.returncode != 0
        # An IPv6 packet put on the TUN anyway: the IPv4-only stack counts it.
        ns.inject(bytes.fromhex("6000000000003b40") + bytes(15) + b"\x01" + bytes(15) + b"\x02")
        assert ping(ns, 1).returncode == 0  # the TUN keeps order: that packet came first
        assert daemon.stats()["ip.drop.ipv6-unsupported"] == 1
        assert "stack at 198.18.0.2 on tun0" in daemon.log_text()


def test_an_mtu_below_1280_is_ipv4_only_with_a_warning(ns: Netns, tmp_path: Path) -> None:
    with UstackDaemon.start(ns, tmp_path, "--mtu", "1000") as daemon:
        assert ping(ns, 1).returncode == 0
        assert "mtu 1000 is below IPv6's minimum 1280 (RFC 8200 5): IPv4 only" in (
            daemon.log_text()
        )
        # (Linux removes IPv6 from a device under 1280 altogether: no sysctl left.)
        shown = ns.run("ip", "-6", "addr", "show", "dev", "tun0").stdout.decode()
        assert "inet6" not in shown


def test_a_1280_link_mid_path_teaches_the_path_mtu_and_50_mb_arrive(tmp_path: Path) -> None:
    """client C --(1500)-- router R --(1280)-- A (tun0, forwarding) -- ustack,
    over IPv6: A's kernel cannot forward our 1500-byte packets onto the 1280
    link and, as every IPv6 router must (RFC 8200 5, routers never fragment),
    answers with ICMPv6 Packet Too Big, MTU 1280 (RFC 4443 3.2)."""
    with (
        routed_path(plan=IPV6_PLAN) as path,
        UstackDaemon.start(path.a, tmp_path, trace=False) as daemon,
    ):
        script = (
            f"curl -sS -g --max-time 240 'http://[{STACK_ADDRESS6}]/bytes/{BIG}' "
            "| tee >(wc -c >&2) | sha256sum"
        )
        curl = subprocess.Popen(
            path.client.command("bash", "-c", script),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert finish(curl) == (BIG, expected_sha256(BIG))
        finally:
            if curl.poll() is None:
                curl.kill()
        stats = daemon.stats()
        assert stats["tcp.pmtu.lowered"] == 1, stats  # once: the later PTBs change nothing
        assert stats["icmp6.in.error-for-connection"] >= 1, stats
        drops = {name: n for name, n in stats.items() if name.startswith("icmp6.drop")}
        assert drops == {}, drops
