"""IPv4 fragments with the real daemon and real Linux (RFC 791 3.2, RFC 1122 3.3.2).

- `ping -s 4000` and `ping -s 65000` from the Linux side, over IPv4 and IPv6
  (RFC 8200 4.5): the kernel sends the requests in fragments, the stack
  reassembles them and answers in fragments, which the kernel reassembles in
  turn (its own ReasmOKs count them), as Linux itself answers such a ping;
- a 5 MB upload whose TCP segments are fragmented on the way in: client netns
  --veth (MTU 1500)-- router netns (ip_forward, tun0's MTU lowered to 1000
  after the daemon came up with 1500, so the stack still offers MSS 1460) --
  ustack. The client sets ip_no_pmtu_disc=1: its segments carry no DF, and the
  router cuts each in two. The SHA-256 the http service computes must be the
  client's;
- a lone fragment expires on the daemon's own timer (`--ipfrag-time 1`), with
  ICMP Time Exceeded code 1 back to Linux.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from scapy.layers.inet import IP
from scapy.layers.inet import UDP

from ustack.linux.lab import IPV4
from ustack.linux.lab import LINUX_ADDRESS
from ustack.linux.lab import STACK_ADDRESS
from ustack.linux.lab import Family
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon
from ustack.linux.lab import netns
from ustack.linux.lab import ping
from ustack.linux.lab import veth_pair

CLIENT = "198.18.1.2"
ROUTER = "198.18.1.1"


def _linux_snmp(ns: Netns, group: str, name: str) -> int:
    """One of the namespace's own counters (/proc/net/snmp is per network namespace)."""
    lines = [line.split() for line in ns.run("cat", "/proc/net/snmp", check=True).stdout.decode()
             .splitlines() if line.startswith(group + ":")]  # fmt: skip
    names, values = lines
    return int(values[names.index(name)])


def _linux_reasm_oks(ns: Netns, family: Family = IPV4) -> int:
    if family is IPV4:
        return _linux_snmp(ns, "Ip", "ReasmOKs")
    # /proc/net/snmp6: one "Name value" a line.
    snmp6 = ns.run("cat", "/proc/net/snmp6", check=True).stdout.decode().split()
    return int(snmp6[snmp6.index("Ip6ReasmOKs") + 1])


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `condition()` (the daemon's or the kernel's counters) until true."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not true after {timeout} s")
        time.sleep(0.02)


def test_ping_4000_and_65000_are_answered_in_fragments(
    ns: Netns, daemon: UstackDaemon, family: Family
) -> None:
    before = _linux_reasm_oks(ns, family)
    for size, count in ((4000, 3), (65000, 2)):
        result = ping(ns, count, "-s", str(size), address=family.stack)
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
        assert f"{count} received" in result.stdout.decode()
    stats = daemon.stats()
    # Requests: 4008 bytes of ICMP in 3 fragments, 65008 in 44 (1480 a
    # fragment) or 45 (IPv6: 1448, after the fixed and fragment headers).
    fragments = 3 * 3 + 2 * -(-65008 // family.fragment_data)
    ip = family.ip
    assert stats[f"{ip}.reasm.oks"] == 5
    assert stats[f"{ip}.reasm.reqds"] == fragments
    assert stats[f"{family.icmp}.echo"] == 5
    # The replies: as many datagrams fragmented, each one put together by Linux.
    assert stats[f"{ip}.frag.oks"] == 5
    assert stats[f"{ip}.frag.creates"] == fragments
    assert _linux_reasm_oks(ns, family) - before == 5
    assert not any(name.startswith(f"{ip}.drop.frag") for name in stats), stats


def test_an_upload_fragmented_by_a_router_arrives_intact(ns: Netns, tmp_path: Path) -> None:
    router = ns
    with UstackDaemon.start(router, tmp_path, "--services", "http", trace=False) as daemon, \
            netns(tag="frag-client") as client:  # fmt: skip
        veth_pair(client, router, ("c0", "r0"), (f"{CLIENT}/24", f"{ROUTER}/24"))
        client.run("ip", "route", "add", "default", "via", ROUTER, check=True)
        router.run("sysctl", "-qw", "net.ipv4.ip_forward=1", check=True)
        client.run("sysctl", "-qw", "net.ipv4.ip_no_pmtu_disc=1", check=True)
        router.run("ip", "link", "set", "tun0", "mtu", "1000", check=True)
        body = tmp_path / "upload.bin"
        data = os.urandom(5 * 1024 * 1024)
        body.write_bytes(data)
        result = client.run(
            "curl", "-sS", "--max-time", "120", "-H", "Expect:", "--data-binary", f"@{body}",
            f"http://{STACK_ADDRESS}/upload", timeout=150,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout.decode().split() == [str(len(data)), hashlib.sha256(data).hexdigest()]
        stats = daemon.stats()
        print(f"5 MB upload through a 1000-byte hop: {stats['ip.reasm.reqds']} fragments, "
              f"{stats['ip.reasm.oks']} datagrams reassembled")  # fmt: skip
        # Every full segment came in two fragments: at least 5 MB / 1460 datagrams.
        assert stats["ip.reasm.oks"] >= len(data) // 1460, stats
        assert stats["ip.reasm.reqds"] >= 2 * stats["ip.reasm.oks"]
        assert not any(name.startswith("ip.drop.frag") for name in stats), stats


def test_a_lone_fragment_expires_on_the_daemons_timer(ns: Netns, tmp_path: Path) -> None:
    """No packet comes after it: the runner's timer alone drops it after
    --ipfrag-time and sends Time Exceeded code 1, which Linux counts."""
    with UstackDaemon.start(ns, tmp_path, "--ipfrag-time", "1", trace=False) as daemon:
        before = _linux_snmp(ns, "Icmp", "InTimeExcds")
        first = IP(src=LINUX_ADDRESS, dst=STACK_ADDRESS, id=77, flags="MF") / UDP(
            sport=5000, dport=9
        ) / bytes(32)  # fmt: skip
        sent = time.monotonic()  # before the packet: it lives at least 1 s from here
        ns.inject(bytes(first))
        _wait_for(lambda: daemon.stats().get("ip.drop.frag-timeout") == 1)
        took = time.monotonic() - sent
        assert 1.0 <= took < 10.0, took
        _wait_for(lambda: _linux_snmp(ns, "Icmp", "InTimeExcds") == before + 1)
        stats = daemon.stats()
        assert stats["icmp.out.reassembly-time-exceeded"] == 1
        assert stats["ip.reasm.reqds"] == 1 and "ip.reasm.oks" not in stats
