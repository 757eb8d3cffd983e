"""A tests-only harness: IPv6Layer alone on a real TUN, inside the namespace
it is started in (the daemon does not carry IPv6 yet; issue 15 part 2 wires
it). It configures tun0 with the Linux side's 2001:2::1/64, prints "ready",
answers what comes until SIGTERM, then prints its counters as JSON.

Usage (inside a namespace only): python ipv6_harness.py
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import signal
import subprocess
import sys

import pytun

from ustack.counters import Counters
from ustack.net.ipv6 import IPv6Layer

LINUX_SIDE = "2001:2::1/64"
STACK = int(ipaddress.IPv6Address("2001:2::2"))


def main() -> None:
    tun = pytun.TunTapDevice(name="tun0", flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
    # nodad: the address is usable at once, no 1 s of tentative state.
    for argv in (
        ["ip", "-6", "addr", "add", LINUX_SIDE, "dev", "tun0", "nodad"],
        ["ip", "link", "set", "tun0", "mtu", "1500", "up"],
    ):
        subprocess.run(argv, check=True)
    counters = Counters()

    def transmit(packet: bytes | bytearray, gso_size: int = 0) -> bool:
        os.write(tun.fileno(), packet)
        return True

    layer = IPv6Layer(STACK, transmit, counters)
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    clock = 0.0
    while not stopping:
        try:
            readable, _, _ = select.select([tun.fileno()], [], [], 0.1)
        except InterruptedError:
            continue
        clock += 0.1
        if readable:
            packet = os.read(tun.fileno(), 65535)
            if packet and packet[0] >> 4 == 6:
                layer.receive(packet, clock)
        layer.handle_timers(clock)
    print(json.dumps(dict(counters)), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
