"""Faults of the daemon itself: its device removed, SIGTERM mid-transfer."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from ustack.linux.lab import STACK_ADDRESS, Netns, UstackDaemon


def test_device_removed_under_the_daemon_is_a_clear_error(ns: Netns, tmp_path: Path) -> None:
    daemon = UstackDaemon.start(ns, tmp_path)
    try:
        ns.run("ip", "link", "del", "tun0", check=True)
        # Something must arrive for the read to notice: the device is gone, so
        # the next read fails; the daemon exits on its own.
        code = daemon.process.wait(timeout=10)
    finally:
        daemon.stop()
    assert code == 1, daemon.log_text()
    assert "reading tun0 failed" in daemon.log_text()
    assert "Traceback" not in daemon.log_text()


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
