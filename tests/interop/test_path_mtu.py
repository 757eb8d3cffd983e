"""Path MTU discovery on a real Linux routed path (RFC 1191), and black-hole
detection where the path drops big packets without a word (RFC 4821 style).

    client C --(veth, MTU 1500)-- router R --(veth, MTU 1280)-- A (tun0, forwarding) -- ustack

The client's own MSS (1460: its link is 1500) does not reveal the narrow
link: only the ICMP "fragmentation needed" that A's kernel sends when it
cannot forward our 1500-byte datagrams (DF set) does. Every namespace is the
test's own and goes away with it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from ustack import services
from ustack.linux.lab import STACK_ADDRESS
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon
from ustack.linux.lab import netns
from ustack.linux.lab import veth_pair

pytestmark = pytest.mark.netns

CLIENT = "198.18.2.2"
URL = f"http://{STACK_ADDRESS}"
BIG = 50 * 1024 * 1024


@dataclass
class RoutedPath:
    a: Netns  # the daemon's, with tun0
    router: Netns
    client: Netns


@dataclass(frozen=True)
class PathPlan:
    """One family's addresses on the routed path, its forwarding sysctl."""

    a_router: tuple[str, str]  # A's end and R's of the narrow link, with /prefix
    router_client: tuple[str, str]  # R's end and C's
    stack_network: str  # routed to A by R
    client_network: str  # routed to R by A
    forwarding: str


IPV4_PLAN = PathPlan(("198.18.1.1/24", "198.18.1.2/24"), ("198.18.2.1/24", f"{CLIENT}/24"),
                     "198.18.0.0/24", "198.18.2.0/24", "net.ipv4.ip_forward=1")  # fmt: skip
IPV6_PLAN = PathPlan(("2001:2:1::1/64", "2001:2:1::2/64"), ("2001:2:2::1/64", "2001:2:2::2/64"),
                     "2001:2::/64", "2001:2:2::/64", "net.ipv6.conf.all.forwarding=1")  # fmt: skip


@contextmanager
def routed_path(
    narrow_mtu: int = 1280, black_hole: bool = False, plan: PathPlan = IPV4_PLAN
) -> Iterator[RoutedPath]:
    """A -- R at `narrow_mtu`, R -- C at 1500. black_hole: R's end of the
    narrow link takes `narrow_mtu`, A's end 1500: A sends 1500-byte frames
    that R's veth drops silently (too big for its MTU), and no ICMP comes.
    (A cuts GSO packets into frames itself, gso_max_size 1600: a veth lets a
    GSO packet through whatever the MTU of its other end.) `plan`: IPV6_PLAN
    for the same path over IPv6, where A's kernel answers with ICMPv6 Packet
    Too Big (routers never fragment IPv6, RFC 8200 5)."""
    with ExitStack() as stack:
        a = stack.enter_context(netns(tag="pmtu-a"))
        router = stack.enter_context(netns(tag="pmtu-r"))
        client = stack.enter_context(netns(tag="pmtu-c"))
        veth_pair(a, router, ("ar0", "ra0"), plan.a_router)
        veth_pair(router, client, ("rc0", "cr0"), plan.router_client)
        a.run("ip", "link", "set", "ar0", "mtu", "1500" if black_hole else str(narrow_mtu),
              check=True)  # fmt: skip
        router.run("ip", "link", "set", "ra0", "mtu", str(narrow_mtu), check=True)
        if black_hole:
            a.run("ip", "link", "set", "ar0", "gso_max_size", "1600", check=True)
        for ns in (a, router):
            ns.run("sysctl", "-qw", plan.forwarding, check=True)
        via = [end.split("/")[0] for end in (*plan.a_router, plan.router_client[0])]
        a.run("ip", "route", "add", plan.client_network, "via", via[1], check=True)
        router.run("ip", "route", "add", plan.stack_network, "via", via[0], check=True)
        client.run("ip", "route", "add", "default", "via", via[2], check=True)
        yield RoutedPath(a, router, client)


def expected_sha256(size: int) -> str:
    """/bytes/N: byte i is i % 256."""
    digest = hashlib.sha256()
    chunk = services.PATTERN[: 1 << 16]
    for _ in range(size // len(chunk)):
        digest.update(chunk)
    digest.update(chunk[: size % len(chunk)])
    return digest.hexdigest()


def download(client: Netns, size: int, max_time: int = 240) -> subprocess.Popen[bytes]:
    """curl in C: prints the body's size and sha256."""
    script = f"curl -sS --max-time {max_time} {URL}/bytes/{size} | tee >(wc -c >&2) | sha256sum"
    return subprocess.Popen(
        client.command("bash", "-c", script), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def finish(curl: subprocess.Popen[bytes], timeout: float = 300) -> tuple[int, str]:
    out, err = curl.communicate(timeout=timeout)
    size = int(err.decode().strip().splitlines()[-1])
    return size, out.decode().split()[0]


def test_a_narrow_link_lowers_the_path_mtu_once_and_50_mb_arrive(tmp_path: Path) -> None:
    with routed_path() as path, UstackDaemon.start(path.a, tmp_path, trace=False) as daemon:
        curl = download(path.client, BIG)
        try:
            # While it runs, the connections reply (`ustack ss`) shows the path
            # MTU (unless the download beat the poll: the slow reader below is sure).
            row = wait_for_row(daemon, curl)
            assert row is None or (row["pmtu"], row["mss"]) == (1280, 1280 - 40 - 12)
            size, sha = finish(curl)
        finally:
            if curl.poll() is None:
                curl.kill()
        assert (size, sha) == (BIG, expected_sha256(BIG))
        stats = daemon.stats()
        assert stats["tcp.pmtu.lowered"] == 1, stats  # once: the later ICMPs change nothing
        assert stats["icmp.in.error-for-connection"] >= 1
        assert stats.get("icmp.drop.bad-seq", 0) == 0
        # A slow reader's connection, made after: it starts at the cached path
        # MTU, and `ustack ss` prints it.
        slow = subprocess.Popen(
            path.client.command("curl", "-sS", "--limit-rate", "100k", "-o", "/dev/null",
                                f"{URL}/bytes/{BIG}"),
        )  # fmt: skip
        try:
            row = wait_for_row(daemon, slow)
            assert row is not None and (row["pmtu"], row["mss"]) == (1280, 1228)  # timestamps on
            ss = path.a.run(sys.executable, "-m", "ustack", "ss", "--control", str(daemon.control))
            assert b"pmtu 1280 mss 1228" in ss.stdout, ss
        finally:
            slow.kill()
            slow.wait()
        assert daemon.stats()["tcp.pmtu.lowered"] == 1


def wait_for_row(daemon: UstackDaemon, curl: subprocess.Popen[bytes]) -> dict[str, object] | None:
    """The client's connection in the connections reply, once its path MTU
    is 1280; None if curl ended first."""
    deadline = time.monotonic() + 60
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline and curl.poll() is None:
        rows = [r for r in daemon.connections() if str(r["remote"]).startswith(CLIENT)]
        if rows and rows[0]["pmtu"] == 1280:
            return rows[0]
        time.sleep(0.02)
    if curl.poll() is not None:
        return None
    raise AssertionError(f"no connection at path MTU 1280: {rows}")


def test_the_trace_shows_the_lowering_and_a_new_connection_uses_the_cache(
    tmp_path: Path,
) -> None:
    with routed_path() as path, UstackDaemon.start(path.a, tmp_path) as daemon:
        size = 2 * 1024 * 1024
        for _ in range(2):
            assert finish(download(path.client, size)) == (size, expected_sha256(size))
        lowered = [
            e
            for e in daemon.trace_events()
            if e["type"] == "decision" and e.get("kind") == "path_mtu_lowered"
        ]
        assert len(lowered) == 1, lowered  # the second connection started at 1280
        assert "path MTU 1500 -> 1280" in lowered[0]["what"]
        assert lowered[0]["rule"] == "RFC 1191 6.1"
        assert daemon.stats()["tcp.pmtu.lowered"] == 1


def test_a_black_hole_is_crossed_with_mtu_probing(tmp_path: Path) -> None:
    size = 5 * 1024 * 1024
    with (
        routed_path(black_hole=True) as path,
        UstackDaemon.start(path.a, tmp_path, "--mtu-probing", trace=False) as daemon,
    ):
        assert finish(download(path.client, size, max_time=120)) == (size, expected_sha256(size))
        stats = daemon.stats()
        assert stats.get("tcp.mtu-probing.fallback") == 1, sorted(stats.items())
        assert stats.get("tcp.pmtu.lowered", 0) == 0  # no ICMP came


def test_without_mtu_probing_the_black_hole_stalls(tmp_path: Path) -> None:
    with (
        routed_path(black_hole=True) as path,
        UstackDaemon.start(path.a, tmp_path, trace=False) as daemon,
    ):
        size, _ = finish(download(path.client, 1024 * 1024, max_time=8))
        assert size < 1024 * 1024  # curl gave up: the full-sized segments never pass
        assert daemon.stats().get("tcp.mtu-probing.fallback", 0) == 0


def test_with_two_workers_each_connection_hears_its_icmp(tmp_path: Path) -> None:
    """`serve --queues 2`: the kernel queues A's "fragmentation needed" by its
    own addresses (A's and ours), so it reaches one worker whichever owns the
    connection it quotes; that worker relays what it cannot place to the
    other (daemon/icmp_relay.py). Without it, the downloads of the other
    worker stall: full-sized segments never pass and no ICMP reaches them."""
    size, count = 2 * 1024 * 1024, 0
    with (
        routed_path() as path,
        UstackDaemon.start(path.a, tmp_path, "--queues", "2", trace=False) as daemon,
    ):
        # Rounds of 8 until both workers have served some (the kernel spreads
        # connections by their ports: all 8 on one worker has odds 2^-7).
        opened = [0, 0]
        while not all(opened) and count < 32:
            curls = [download(path.client, size, max_time=30) for _ in range(8)]
            got = [finish(curl, timeout=60) for curl in curls]
            assert got == [(size, expected_sha256(size))] * 8
            count += 8
            reply = daemon.request("stats")
            workers = [worker["counters"] for worker in reply["workers"]]
            opened = [counters.get("tcp.passive-opens", 0) for counters in workers]
        assert all(opened) and sum(opened) == count, opened  # both workers served some
        lowered = [counters.get("tcp.pmtu.lowered", 0) for counters in workers]
        assert all(lowered), lowered  # each worker's connections heard the narrow link
        relayed = [counters.get("icmp.in.relayed-to-workers", 0) for counters in workers]
        assert sum(relayed) >= 1, relayed
        assert reply["counters"].get("icmp.drop.no-connection", 0) == 0
