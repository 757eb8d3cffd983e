"""Faults of the daemon itself: its device removed, signals (SIGTERM, SIGINT
with connections open; SIGHUP in test_trace_outputs), a malformed packet
where a fault rule and the trace look at it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ustack.linux.lab import STACK_ADDRESS
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon

# A Python client in the namespace: N connections to the echo service, each
# proven open by an echo, then "open" on stdout; then it waits on every one
# and prints how many the stack reset.
HOLD_CONNECTIONS = """
import socket, sys
count = int(sys.argv[1])
socks = []
for _ in range(count):
    s = socket.create_connection(("198.18.0.2", 7), timeout=10)
    s.sendall(b"x")
    assert s.recv(1) == b"x"
    socks.append(s)
print("open", flush=True)
resets = 0
for s in socks:
    s.settimeout(10)
    try:
        data = s.recv(1)
    except ConnectionResetError:
        resets += 1
print("reset", resets, flush=True)
"""


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_device_removed_under_a_connection_is_one_clear_line(ns: Netns, tmp_path: Path) -> None:
    daemon = UstackDaemon.start(ns, tmp_path)
    client = subprocess.Popen(
        ns.command("nc", STACK_ADDRESS, "7"), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert client.stdin is not None and client.stdout is not None
    try:
        client.stdin.write(b"open\n")
        client.stdin.flush()
        assert client.stdout.readline() == b"open\n"
        ns.run("ip", "link", "del", "tun0", check=True)
        # The read fails at once (EBADFD); the shutdown's RST cannot go out.
        code = daemon.process.wait(timeout=10)
    finally:
        client.kill()
        client.wait()
        daemon.stop()
    log = daemon.log_text()
    assert code == 1, log
    errors = [line for line in log.splitlines() if "error:" in line]
    assert len(errors) == 1, log
    assert errors[0].endswith("ustack: error: tun0 went away (File descriptor in bad state)")
    assert "Traceback" not in log, log


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_with_connections_open_resets_them_cleans_up_and_exits_0_at_once(
    ns: Netns, tmp_path: Path, signum: signal.Signals
) -> None:
    count = 50
    daemon = UstackDaemon.start(ns, tmp_path)
    client = subprocess.Popen(
        ns.command(sys.executable, "-c", HOLD_CONNECTIONS, str(count)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert client.stdout is not None
    try:
        assert client.stdout.readline() == b"open\n", client.stderr
        assert len(daemon.connections()) == count
        started = time.monotonic()
        daemon.process.send_signal(signum)
        code = daemon.process.wait(timeout=10)
        stopped_in = time.monotonic() - started
        out, err = client.communicate(timeout=20)
    finally:
        client.kill()
        daemon.stop()
    print(f"{signum.name}: exit {code} in {stopped_in * 1000:.0f} ms with {count} connections open")
    log = daemon.log_text()
    assert code == 0, log
    assert stopped_in < 2.0  # the bound is 0.5 s: the figure is printed (pytest -s)
    assert out == f"reset {count}\n".encode(), err  # every peer saw its RST
    assert ns.run("ip", "link", "show", "tun0").returncode != 0  # the device we made is gone
    assert not daemon.control.exists()
    assert f"{signum.name}: shutting down" in log and "Traceback" not in log, log


def test_a_malformed_packet_under_a_delay_fault_and_the_trace_is_counted(
    ns: Netns, tmp_path: Path
) -> None:
    # IHL says 60 bytes of IP header, the packet has 40: TCP by its protocol.
    packet = bytearray(40)
    packet[0], packet[8], packet[9] = 0x4F, 64, 6
    packet[2:4] = len(packet).to_bytes(2, "big")
    packet[12:20] = bytes([198, 18, 0, 1, 198, 18, 0, 2])
    with UstackDaemon.start(ns, tmp_path, "--fault", "delay:dir=in,delay=0.01") as daemon:
        ns.inject(bytes(packet))
        wait_for(lambda: daemon.stats().get("ip.drop.ipv4-truncated") == 1, what="the drop")
        result = ns.run("curl", "-sS", "--max-time", "10", f"http://{STACK_ADDRESS}/")
        assert b"Hello from ustack" in result.stdout  # and the stack serves on
        stats = daemon.stats()
    assert daemon.process.returncode == 0
    assert stats["fault.delay"] >= 1 + stats["tcp.in"]  # the malformed packet was delayed too
    # (the kernel's own IPv6 chatter on the TUN, ND and MLD, was delayed too)
    ipv4 = [e for e in daemon.trace_events() if e["type"] == "fault" and ":" not in e["remote"]]
    (fault,) = [e for e in ipv4 if e["flags"] == ""]
    assert (fault["conn"], fault["remote"], fault["length"]) == (None, "198.18.0.1", 0)
    assert "Traceback" not in daemon.log_text(), daemon.log_text()


def test_sigterm_during_a_transfer_resets_the_client_and_exits_quickly(
    ns: Netns, tmp_path: Path
) -> None:
    daemon = UstackDaemon.start(ns, tmp_path)
    client = subprocess.Popen(
        ns.command("curl", "-sS", "-o", "/dev/null", "--limit-rate", "1M",
                   f"http://{STACK_ADDRESS}/bytes/100000000"),
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not daemon.connections() and time.monotonic() < deadline:
            time.sleep(0.05)  # the daemon's table is the only witness of the transfer
        assert daemon.connections(), "the transfer never started"
        started = time.monotonic()
        assert daemon.stop() == 0
        stopped_in = time.monotonic() - started
        _, err = client.communicate(timeout=10)
    finally:
        client.kill()
    assert stopped_in < 1.0  # the bound, as a property of shutdown, not a benchmark
    assert client.returncode != 0  # curl saw the connection reset, it did not hang
    assert b"reset" in err.lower() or b"recv failure" in err.lower(), err
    assert "Traceback" not in daemon.log_text()
