"""The daemon pins glibc malloc's thresholds (ustack/linux/memory.py), so
that a bulk transfer's buffers stay in the heap instead of being faulted in
afresh at every refill: seen by the page faults of the daemon's process
during a download from it, the way `ps -o min_flt` shows them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon
from ustack.linux.lab import process_costs

MB = 1_000_000


def test_a_download_does_not_fault_the_buffers_in_again(ns: Netns, tmp_path: Path) -> None:
    """Started in the allocator state that faults (the mmap threshold at its
    initial 128 KiB, which MALLOC_MMAP_THRESHOLD_ fixes and keeps there),
    the daemon without the pin took 483 minor faults per MB of this
    download (857 in a 1 GB one at a third of the speed); with it, none."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    with UstackDaemon.start(ns, tmp_path, trace=False, env=env) as daemon:
        url = "http://198.18.0.2/bytes/"
        subprocess.run(
            ns.command("curl", "-sf", "-o", "/dev/null", f"{url}{MB}"), check=True, timeout=60
        )
        before = process_costs(daemon.process.pid).minor_faults
        subprocess.run(
            ns.command("curl", "-sf", "-o", "/dev/null", f"{url}{50 * MB}"), check=True, timeout=60
        )
        per_mb = (process_costs(daemon.process.pid).minor_faults - before) / 50
    assert per_mb < 20, f"{per_mb:.0f} minor faults per MB downloaded"
