"""Loss probes and D-SACKs against the Linux kernel (issue 14 items 8, 9).

- A Linux client that reads its echo slowly (it sleeps before recv) holds
  the ACK of what ustack sent for its delayed-ACK timer (~40 ms; for a
  flight of several segments too, since its window would not grow). A tail
  loss probe at 2*SRTT is then needless, and Linux says so: the duplicate
  comes back D-SACKed (tcp.in.dsack, tcp.loss-probes.spurious). Measured on
  the same pattern, 40 rounds of 2,000 bytes: 4 spurious probes before the
  PTO's delayed-ACK allowance (RFC 8985 7.2), 0 after.
- Duplicates, both ways, through the fault injector at the TUN: ustack
  reports each duplicate it gets in a D-SACK block (RFC 2883) and Linux
  counts exactly those (TCPDSACKRecv); Linux's D-SACKs for the duplicates
  ustack sends are counted by ustack exactly as Linux counts sending them
  (TCPDSACKOldSent).
- SACK block order side by side: the same three holes, Linux receiving and
  ustack receiving; both name the blocks most recently received first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ustack.linux.lab import STACK_ADDRESS
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon
from ustack.tcp import seq

ECHO = 7
SLOW_READER = r"""
import socket, sys, time
size, rounds, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection((sys.argv[4], 7))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for i in range(rounds):
    s.sendall(bytes([65 + i % 26]) * size)
    time.sleep(pause)  # the echo waits unread: Linux delays its ACK
    got = b""
    while len(got) < size:
        chunk = s.recv(65536)
        assert chunk, "connection closed early"
        got += chunk
    assert got == bytes([65 + i % 26]) * size
s.close()
"""
UPLOAD = r"""
import socket, sys
size = int(sys.argv[1])
s = socket.create_connection((sys.argv[2], 7))
data = bytes(range(256)) * (size // 256)
s.sendall(data)
s.shutdown(socket.SHUT_WR)
got = b""
while chunk := s.recv(65536):
    got += chunk
assert got == data, (len(got), len(data))
s.close()
"""


def linux_tcpext(ns: Netns) -> dict[str, int]:
    """The namespace's TcpExt counters (/proc/net/netstat)."""
    lines = [
        line.split() for line in ns.run("cat", "/proc/net/netstat").stdout.decode().splitlines()
    ]
    names, values = (line[1:] for line in lines if line[0] == "TcpExt:")
    return {name: int(value) for name, value in zip(names, values, strict=True)}


def dsacks_arrived(events: list[dict[str, Any]]) -> int:
    """Incoming segments whose first SACK block reports a duplicate (RFC 2883
    4: below the ACK, or inside the second block), from the daemon's trace."""
    count = 0
    for event in events:
        blocks = event.get("options", {}).get("sack") if event["type"] == "segment" else None
        if not blocks or event["direction"] != "in":
            continue
        (left, right), ack = blocks[0], event["ack"]
        inside = len(blocks) > 1 and seq.le(blocks[1][0], left) and seq.le(right, blocks[1][1])
        count += seq.le(right, ack) or inside
    return count


def slow_reader(ns: Netns, tmp_path: Path, size: int, rounds: int) -> dict[str, int]:
    with UstackDaemon.start(ns, tmp_path, "--no-offload", "--services", "echo") as daemon:
        ns.python(SLOW_READER, str(size), str(rounds), "0.05", STACK_ADDRESS, timeout=120)
        return daemon.stats()


def test_no_loss_probe_for_one_full_segment_to_a_slow_reading_peer(
    ns: Netns, tmp_path: Path
) -> None:
    """1,448 + 552 bytes in flight: Linux need not ACK before its delayed-ACK
    timer, and the PTO waits for it (RFC 8985 7.2 WCDelAckT)."""
    stats = slow_reader(ns, tmp_path, 2000, 40)
    assert stats.get("tcp.loss-probes", 0) == 0, stats
    assert stats.get("tcp.in.dsack", 0) == 0 and stats.get("tcp.out.retransmit", 0) == 0


def test_a_slow_reader_costs_at_most_one_spurious_probe_for_larger_flights(
    ns: Netns, tmp_path: Path
) -> None:
    """Three segments in flight: Linux holds their ACK too (its window would
    not grow). The first probe may be needless; its D-SACK teaches the PTO
    to wait for the delayed ACK, so there is no second."""
    stats = slow_reader(ns, tmp_path, 4000, 40)
    assert stats.get("tcp.loss-probes.spurious", 0) <= 1, stats
    assert stats.get("tcp.loss-probes", 0) <= 1 and stats.get("tcp.in.dsack", 0) <= 1


def test_each_duplicate_from_linux_is_dsacked_and_linux_counts_it(
    ns: Netns, tmp_path: Path
) -> None:
    """Three of Linux's data segments arrive twice: each second copy lies
    below RCV.NXT and ustack's ACK reports it in a D-SACK block (RFC 2883
    4.1.1). Linux parses every one as a D-SACK (TCPDSACKRecv; it files them
    as "dubious", rightly: it never retransmitted those segments)."""
    before = linux_tcpext(ns)
    rule = "duplicate:dir=in,flags=PSH,port=7,count=3"
    with UstackDaemon.start(
        ns, tmp_path, "--no-offload", "--services", "echo", "--fault", rule
    ) as daemon:
        ns.python(UPLOAD, "200000", STACK_ADDRESS, timeout=60)
        stats = daemon.stats()
    moved = {name: value - before.get(name, 0) for name, value in linux_tcpext(ns).items()}
    assert stats["fault.duplicate"] == 3, stats
    assert stats["tcp.out.dsack-old"] == 3 and stats.get("tcp.out.dsack-ofo", 0) == 0, stats
    assert moved["TCPDSACKRecv"] == 3, moved


def test_linux_dsacks_for_duplicates_from_ustack_are_counted_not_undone(
    ns: Netns, tmp_path: Path
) -> None:
    """Three of ustack's data segments go out twice: Linux D-SACKs each
    (TCPDSACKOldSent) and ustack counts each (tcp.in.dsack), as duplicates
    it never resent: no spurious retransmission, nothing to undo."""
    rules = [f"duplicate:dir=out,flags=ACK,port=80,nth={n}" for n in (20, 40, 60)]
    before = linux_tcpext(ns)
    got = tmp_path / "download.bin"
    faults = [arg for rule in rules for arg in ("--fault", rule)]
    with UstackDaemon.start(ns, tmp_path, "--no-offload", "--services", "http", *faults) as daemon:
        result = ns.run(
            "curl", "-sS", "--max-time", "30", "-o", str(got),
            f"http://{STACK_ADDRESS}/bytes/{1 << 20}", timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        stats = daemon.stats()
        arrived = dsacks_arrived(daemon.trace_events())
    assert got.stat().st_size == 1 << 20
    moved = {name: value - before.get(name, 0) for name, value in linux_tcpext(ns).items()}
    assert stats["fault.duplicate"] == 3, stats
    assert moved["TCPDSACKOldSent"] == 3, moved
    # Linux counts each duplicate when it notes its D-SACK (tcp_dsack_set); if
    # it notes a second before the ACK goes, as in a batch read under load, one
    # ACK carries only the newest. So: every D-SACK that arrived is counted.
    assert 1 <= arrived <= 3 and stats["tcp.in.dsack"] == arrived, (arrived, stats)
    assert stats.get("tcp.spurious-retransmits", 0) == 0 and stats.get("tcp.undo", 0) == 0


# ---- SACK block order, side by side with Linux -------------------------------------------

# Data segments 3, 5 and 7 of a flight are lost (the first packet matching
# is the handshake's ACK or the SYN,ACK; rules are chained, so each later
# rule counts only what the earlier ones let pass).
HOLES = [4, 5, 6]
MSS = 1448  # 1460 less the timestamps, both ways
SEND = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 9))
s.sendall(bytes(200_000))
s.close()
"""
RECEIVE = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 19))
got = 0
while got < 200_000:
    got += len(s.recv(65536))
s.close()
"""


def sack_order(acks: list[tuple[int, list[tuple[int, int]]]], index: object) -> list[list[int]]:
    """Each SACK option of a receiver's ACKs, up to the ACK past the first
    hole, as the segment numbers where its blocks start, repeats merged."""
    assert callable(index)
    orders: list[list[int]] = []
    first_hole = None
    for ack, blocks in acks:
        if blocks and first_hole is None:
            first_hole = ack
        if first_hole is not None and ack != first_hole:
            break
        order = [index(left) for left, _ in blocks]
        if order and (not orders or orders[-1] != order):
            orders.append(order)
    return orders


def test_sack_blocks_come_in_linux_s_order(ns: Netns, tmp_path: Path) -> None:
    """RFC 2018 4, against the kernel: the same three holes in a flight,
    once with Linux sending to ustack, once ustack to Linux. The receivers'
    SACK options name the same blocks in the same order (most recently
    received first, as tcp_sack_new_ofo_skb keeps them)."""
    drops = [f"drop:dir=in,flags=ACK,port=9,nth={n}" for n in HOLES]
    drops += [f"drop:dir=out,flags=ACK,port=19,nth={n}" for n in HOLES]
    faults = [arg for rule in drops for arg in ("--fault", rule)]
    with UstackDaemon.start(
        ns, tmp_path, "--no-offload", "--services", "discard,chargen", *faults
    ) as daemon:
        ns.python(SEND, STACK_ADDRESS, timeout=60)
        ns.python(RECEIVE, STACK_ADDRESS, timeout=60)
        daemon.wait_until_no_connections()
        events = [e for e in daemon.trace_events() if e["type"] == "segment"]
    # ustack receives (port 9): its ACKs; Linux's segments are all full-sized.
    to_ustack = [e for e in events if e["local_port"] == 9]
    data_start = next(e["rel_seq"] for e in to_ustack if e["direction"] == "in" and e["length"])
    ustack_acks = [
        (e["rel_ack"], [(left, right) for left, right in e["options"].get("sack", [])])
        for e in to_ustack
        if e["direction"] == "out" and not e["length"]
    ]
    ustack_irs = to_ustack[0]["seq"]  # the SYN's

    def linux_segment(edge: int) -> int:
        return ((edge - ustack_irs) % (1 << 32) - data_start) // MSS + 1

    # Linux receives (port 19): its ACKs; ustack's segments from its own trace.
    from_ustack = [e for e in events if e["local_port"] == 19]
    starts: list[int] = []
    for e in from_ustack:
        if e["direction"] == "out" and e["length"] and e["seq"] not in starts:
            starts.append(e["seq"])
    linux_acks = [
        (e["rel_ack"], [(left, right) for left, right in e["options"].get("sack", [])])
        for e in from_ustack
        if e["direction"] == "in" and not e["length"]
    ]

    def ustack_segment(edge: int) -> int:
        return starts.index(edge) + 1

    ustack_order = sack_order(ustack_acks, linux_segment)
    linux_order = sack_order(linux_acks, ustack_segment)
    assert ustack_order[:3] == [[4], [6, 4], [8, 6, 4]], ustack_order
    assert ustack_order == linux_order
