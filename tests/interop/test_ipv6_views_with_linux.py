"""What shows addresses speaks IPv6, against Linux over a real TUN (issue 15
item 6): one dual-stack daemon with every trace format, the Linux peers'
states and a fault rule on an IPv6 host; curl -6, nc -6 (and curl over IPv4,
for both families in one view) talk to it. Then
`ustack ss` and `ustack stats`, the JSON and text traces, the pcap read by
tshark, the fault event and the ladder must all name 2001:2::1 and 2001:2::2
as ss(8) does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from test_trace_outputs import serving

from ustack.linux.lab import LINUX_ADDRESS6
from ustack.linux.lab import STACK_ADDRESS
from ustack.linux.lab import STACK_ADDRESS6
from ustack.linux.lab import Netns

US = f"[{STACK_ADDRESS6}]"
PEER = f"[{LINUX_ADDRESS6}]"
# Our FIN to the IPv6 peer's daytime connection is lost once: the RTO resends it.
FAULT = f"drop:host={LINUX_ADDRESS6},port=13,dir=out,flags=FIN,count=1"


def ustack(daemon_control: Path, *argv: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "ustack", *argv, "--control", str(daemon_control)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return result.stdout


def tshark_ipv6_tcp(pcap: Path) -> list[tuple[str, str, int, int, str]]:
    """(source, destination, ports, tshark's flag letters) of each IPv6 TCP packet."""
    fields = ["ipv6.src", "ipv6.dst", "tcp.srcport", "tcp.dstport", "tcp.flags.str"]
    result = subprocess.run(
        ["tshark", "-n", "-r", str(pcap), "-Y", "ipv6 && tcp", "-T", "fields",
         "-E", "separator=\t", *(arg for name in fields for arg in ("-e", name))],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    return [(src, dst, int(sport), int(dport), flags) for src, dst, sport, dport, flags in rows]


def test_one_ipv6_session_in_every_view(ns: Netns, tmp_path: Path) -> None:
    jsonl, text, pcap = tmp_path / "t.jsonl", tmp_path / "t.txt", tmp_path / "t.pcap"
    traces = [arg for path in (jsonl, text, pcap) for arg in ("--trace", str(path))]
    with serving(ns, tmp_path, *traces, "--peer-states", "--fault", FAULT, "--msl", "5") as d:
        d.wait_for_ipv6()
        page = ns.run("curl", "-sS", "--max-time", "10", "-6", "-g", f"http://{US}/", check=True)
        assert b"Hello from ustack" in page.stdout
        ns.run("curl", "-sS", "--max-time", "10", f"http://{STACK_ADDRESS}/", check=True)
        ns.run("ping", "-6", "-c", "1", "-W", "5", STACK_ADDRESS6, check=True)
        day = ns.run("nc", "-6", "-w", "10", STACK_ADDRESS6, "13", check=True)
        assert day.stdout.strip()  # the date, after our FIN came again
        ss = ustack(d.control, "ss")
        stats = ustack(d.control, "stats")
        rules = d.request("fault", do="list")["rules"]

    # ss: listeners on both families, the daytime connection in TIME_WAIT (2MSL = 10 s).
    rows = [line.split() for line in ss.splitlines()[1:]]
    assert ["LISTEN", "0", "0", f"{US}:80", "[::]:*"] in rows
    assert ["LISTEN", "0", "0", f"{STACK_ADDRESS}:80", "0.0.0.0:*"] in rows
    [time_wait] = [row for row in rows if row[0] == "TIME_WAIT"]
    assert time_wait[3] == f"{US}:13" and time_wait[4].startswith(f"{PEER}:")
    # stats: IPv4's counters, then IPv6's, then the rest.
    names = [line.split()[0] for line in stats.splitlines()]
    assert {"ip.in", "ip6.in", "icmp6.echo"} <= set(names)
    family = {"ip": 4, "icmp": 4, "ip6": 6, "icmp6": 6, "udp6": 6}
    groups = [family.get(name.split(".")[0], 99) for name in names]
    assert groups == sorted(groups) and 99 in groups  # tcp.*, fault.* ... come last
    assert rules[0]["host"] == LINUX_ADDRESS6 and rules[0]["applied"] == 1

    # The JSON trace: text addresses, bracketed tuples, the fault, the peer's states.
    records: list[dict[str, Any]] = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert records[0] == {"type": "header", "schema": 5}
    opened = [r for r in records if r["type"] == "connection"]
    http = next(r for r in opened if r["local_port"] == 80)
    assert (http["local"], http["remote"]) == (STACK_ADDRESS6, LINUX_ADDRESS6)
    assert http["tuple"] == f"{US}:80 {PEER}:{http['remote_port']}"
    [fault] = [r for r in records if r["type"] == "fault"]
    assert (fault["local"], fault["local_port"], fault["remote"], fault["flags"]) == (
        STACK_ADDRESS6, 13, LINUX_ADDRESS6, "F.",
    )  # fmt: skip
    assert fault["conn"] is not None and fault["tuple"].startswith(f"{US}:13 {PEER}:")
    peers = [r for r in records if r["type"] == "peer_state" and r["conn"] == http["conn"]]
    assert all((r["local"], r["remote"]) == (STACK_ADDRESS6, LINUX_ADDRESS6) for r in peers)
    assert ("SYN_SENT", "ESTABLISHED") in {(r["old"], r["new"]) for r in peers}
    ipv4 = [r for r in records if r["type"] == "peer_state" and r["remote"] == "198.18.0.1"]
    assert ipv4 and all(r["local"] == STACK_ADDRESS for r in ipv4)  # the IPv4 curl's

    # The text trace says the same, ss(8)'s way.
    lines = text.read_text().splitlines()
    assert any(f"new   {US}:80 <-> {PEER}:{http['remote_port']}" in line for line in lines)
    assert any(f"peer  {PEER}:{http['remote_port']} (Linux)" in line for line in lines)

    # tshark reads the HTTP connection's IPv6 segments from the pcap, one for each
    # segment event (LINKTYPE_RAW: IPv4 and IPv6 in one file).
    port = http["remote_port"]
    captured = [row for row in tshark_ipv6_tcp(pcap) if port in row[2:4]]
    segments = [r for r in records if r["type"] == "segment" and r["remote_port"] == port]
    assert len(captured) == len(segments) >= 5
    for (src, dst, sport, _, _), event in zip(captured, segments, strict=True):
        inbound = event["direction"] == "in"
        assert (src, dst) == (
            (LINUX_ADDRESS6, STACK_ADDRESS6) if inbound else (STACK_ADDRESS6, LINUX_ADDRESS6)
        )
        assert sport == (port if inbound else 80)

    # The ladder of the daytime connection: its ends in brackets, the FIN lost and resent.
    daytime = next(r for r in opened if r["local_port"] == 13 and r["remote"] == LINUX_ADDRESS6)
    ladder = subprocess.run(
        [sys.executable, "-m", "ustack", "ladder", "--conn", str(daytime["conn"]), str(jsonl)],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert ladder.splitlines()[0].startswith(f"connection {daytime['conn']}: Linux peer {PEER}:")
    assert f"ustack {US}:13 (passive open)" in ladder.splitlines()[0]
    assert "(lost)" in ladder and "(retransmission)" in ladder
