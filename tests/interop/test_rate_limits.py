"""Rate limits against the Linux kernel, in the same run (issue 14 item 5).

Two targets get the same probes from the same kind of prober:
- the daemon, on its TUN (prober: the Linux side of the TUN, 198.18.0.1);
- plain Linux, in a namespace of its own behind a veth pair (prober
  198.18.1.1, target 198.18.1.2), with its default sysctls (icmp_ratelimit
  1000 ms, icmp_msgs_per_sec 1000, icmp_msgs_burst 50, tcp_invalid_ratelimit
  500 ms).

Both floods are counted where they arrive, on the prober's side (a raw ICMP
socket for the port unreachables, an AF_PACKET socket for the ACKs), and the
daemon's counters say what it held back. The assertions are on counts of
packets, with the slack one tick of a 1 s or 500 ms bucket can give, not on
wall-clock speed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ustack.linux.lab import LINUX_ADDRESS
from ustack.linux.lab import STACK_ADDRESS
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon
from ustack.linux.lab import netns
from ustack.linux.lab import start_until_ready
from ustack.linux.lab import stop_process
from ustack.linux.lab import veth_pair

pytestmark = pytest.mark.netns

LINUX_PROBER = "198.18.1.1"
LINUX_TARGET = "198.18.1.2"

# UDP datagrams to closed ports 1.., `rate` a second for `seconds`, from one
# source; every ICMP port unreachable that comes back from the target is
# counted, until `quiet` seconds after the last datagram. Prints JSON.
UDP_STORM = r"""
import json, socket, sys, time
target, rate, seconds, quiet = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
icmp.setblocking(False)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.setblocking(False)
unreachable = sent = 0
def drain():
    global unreachable
    while True:
        try:
            packet, (source, _) = icmp.recvfrom(2048)
        except BlockingIOError:
            return
        header = (packet[0] & 15) * 4
        if source == target and packet[header] == 3 and packet[header + 1] == 3:
            unreachable += 1
start = time.monotonic()
while (now := time.monotonic()) < start + seconds:
    while sent < (now - start) * rate:
        try:
            udp.sendto(b"probe", (target, 1 + sent % 60000))
        except OSError:
            pass  # an ICMP error reported on the socket: no matter
        sent += 1
    drain()
    time.sleep(0.001)  # pacing the storm, not synchronising with anything
end = time.monotonic() + quiet
while time.monotonic() < end:
    drain()
    time.sleep(0.01)
print(json.dumps({"sent": sent, "unreachable": unreachable}))
"""

# An established connection to target:port; then pure ACKs far outside its
# receive window (SEQ = its RCV.NXT + 1,000,000), `rate` a second for
# `seconds`, through a raw socket; every pure ACK the target sends on that
# connection after the handshake is counted. Prints JSON.
OOW_FLOOD = r"""
import json, socket, struct, sys, time
from ustack.wire.ipv4 import PROTO_TCP, build_ipv4
from ustack.wire.tcp import ACK, SYN, build_tcp, parse_tcp
source, target, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
rate, seconds, quiet = int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
sniff = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0003))
sniff.setblocking(False)
conn = socket.create_connection((target, port), timeout=5)
local_port = conn.getsockname()[1]
src, dst = (int.from_bytes(socket.inet_aton(a), "big") for a in (source, target))
isn = {}
acks = 0
def drain(counting):
    global acks
    while True:
        try:
            packet, address = sniff.recvfrom(4096)
        except BlockingIOError:
            return
        if packet[0] >> 4 != 4 or packet[9] != 6:
            continue
        header = (packet[0] & 15) * 4
        tcp = parse_tcp(packet[header:])
        outgoing = address[2] == socket.PACKET_OUTGOING
        from_target = packet[12:16] == socket.inet_aton(target)
        if not outgoing and from_target and tcp.dst_port == local_port:
            if tcp.flags & SYN:
                isn["server"] = tcp.seq
            elif counting and tcp.flags == ACK:
                acks += 1
        elif outgoing and packet[16:20] == socket.inet_aton(target) and tcp.src_port == local_port:
            if tcp.flags & SYN:
                isn["client"] = tcp.seq
deadline = time.monotonic() + 5
while len(isn) < 2 and time.monotonic() < deadline:
    drain(False)
    time.sleep(0.01)
assert len(isn) == 2, isn
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
segment = build_tcp(src=src, dst=dst, src_port=local_port, dst_port=port,
                    seq=(isn["client"] + 1 + 1_000_000) & 0xFFFFFFFF,
                    ack=(isn["server"] + 1) & 0xFFFFFFFF, flags=ACK, window=65535)
packet = build_ipv4(src=src, dst=dst, protocol=PROTO_TCP, payload_length=len(segment)) + segment
sent = 0
start = time.monotonic()
while (now := time.monotonic()) < start + seconds:
    while sent < (now - start) * rate:
        raw.sendto(packet, (target, 0))
        sent += 1
    drain(True)
    time.sleep(0.001)  # pacing the flood
end = time.monotonic() + quiet
while time.monotonic() < end:
    drain(True)
    time.sleep(0.01)
conn.close()
print(json.dumps({"sent": sent, "acks": acks}))
"""

DISCARD_SERVER = r"""
import os, socket, sys
server = socket.create_server(("0.0.0.0", 9))
os.write(int(sys.argv[1]), b"ready\n")
conn, _ = server.accept()
while conn.recv(65536):
    pass
"""


@pytest.fixture
def linux_pair() -> Iterator[tuple[Netns, Netns]]:
    """(prober, target): plain Linux on both ends of a veth pair, a TCP
    listener on the target (the discard port) for the ACK flood."""
    with netns(tag="prober") as prober, netns(tag="target") as target:
        veth_pair(
            prober, target, ("veth-p", "veth-t"), (f"{LINUX_PROBER}/24", f"{LINUX_TARGET}/24")
        )
        yield prober, target


def _json(ns: Netns, code: str, *args: str, timeout: float = 120) -> dict[str, int]:
    result: dict[str, int] = json.loads(ns.python(code, *args, timeout=timeout).stdout)
    return result


def test_a_udp_storm_gets_port_unreachables_at_linux_s_rate(
    tmp_path: Path, linux_pair: tuple[Netns, Netns]
) -> None:
    """1,000 probes a second for 3 s at one target, from one source: a burst
    of 6, then one a second (icmp_ratelimit), from both."""
    prober, _target = linux_pair
    storm = ("1000", "3", "1.0")
    linux = _json(prober, UDP_STORM, LINUX_TARGET, *storm)
    with netns() as ns, UstackDaemon.start(ns, tmp_path, trace=False) as daemon:
        ours = _json(ns, UDP_STORM, STACK_ADDRESS, *storm)
        counters = daemon.stats()
    assert linux["sent"] >= 2000 and ours["sent"] >= 2000  # a storm on both sides
    # Linux: 6 at once, then 1 a second: 8 or 9 in 3 s (and the quiet second).
    assert 7 <= linux["unreachable"] <= 11, linux
    assert abs(ours["unreachable"] - linux["unreachable"]) <= 2, (ours, linux)
    # Every probe reached the stack; the ones not answered are counted.
    answered = counters["udp.out.port-unreachable"] - counters["icmp.drop.rate-limited-host"]
    assert answered == ours["unreachable"]
    assert counters["icmp.drop.rate-limited-host"] >= ours["sent"] - 20


def test_the_icmp_limits_are_the_daemon_s_flags(tmp_path: Path) -> None:
    """--icmp-ratelimit 0: no limit per destination; the global bucket (50,
    then 1,000 a second) still holds back a fast enough storm."""
    with (
        netns() as ns,
        UstackDaemon.start(
            ns, tmp_path, "--icmp-ratelimit", "0", "--icmp-msgs-per-sec", "20", trace=False
        ) as daemon,
    ):
        ours = _json(ns, UDP_STORM, STACK_ADDRESS, "500", "2", "0.5")
        counters = daemon.stats()
    assert counters.get("icmp.drop.rate-limited-host", 0) == 0
    # 50 at once, then ~20 a second (each costs 0..2 credits, 1 on average).
    assert 50 <= ours["unreachable"] <= 150, ours
    assert counters["icmp.drop.rate-limited-global"] >= ours["sent"] - 150


def test_an_out_of_window_ack_flood_gets_two_acks_a_second_like_linux(
    tmp_path: Path, linux_pair: tuple[Netns, Netns]
) -> None:
    """500 out-of-window pure ACKs a second for 2 s in an established
    connection: tcp_invalid_ratelimit (500 ms) lets ~4 answers out."""
    prober, target = linux_pair
    flood = ("500", "2", "0.5")
    # The Linux target's listener on the discard port; it says "ready" on the fd.
    server = start_until_ready(
        lambda fd: target.command(sys.executable, "-c", DISCARD_SERVER, str(fd)),
        tmp_path / "server.log",
    )
    try:
        linux = _json(prober, OOW_FLOOD, LINUX_PROBER, LINUX_TARGET, "9", *flood)
    finally:
        stop_process(server)
    with netns() as ns, UstackDaemon.start(ns, tmp_path, trace=False) as daemon:
        ours = _json(ns, OOW_FLOOD, LINUX_ADDRESS, STACK_ADDRESS, "9", *flood)
        counters = daemon.stats()
    assert linux["sent"] >= 800 and ours["sent"] >= 800
    assert 3 <= linux["acks"] <= 6, linux
    assert abs(ours["acks"] - linux["acks"]) <= 2, (ours, linux)
    assert counters["tcp.out.ack-skipped-sequence"] >= ours["sent"] - 10
