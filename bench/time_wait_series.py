"""Connect+close rate and GC pauses against the number of ustack's TIME_WAITs.

Run inside `ustack lab` (as root: a throwaway namespace and daemon), with a
long 2MSL so that every connection is still in TIME_WAIT, `--gc-stats` for
the collector's pauses, and Linux's ephemeral range widened:

    ustack lab --serve-arg=--msl=900 --serve-arg=--gc-stats \\
        --serve-arg=--max-connections=100000 -- sh -c \\
        'sysctl -qw net.ipv4.ip_local_port_range="1024 65535" && python bench/time_wait_series.py'

Each connection is to the daytime service (13), which closes first, so the
TIME_WAIT is ustack's. At each mark (1k, 10k, 50k connections made) it prints
the longest GC pause while filling, then the rate of 1,000 more connect+close
and the longest pause during those, and the connections by state. Linux's
connect() takes about half the ephemeral range and a port whose 4-tuple is in
ustack's TIME_WAIT reopens it (RFC 6191), so one client address holds about
27,000 TIME_WAITs: the 50k mark shows what is held.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import time
from typing import Any

STACK = "198.18.0.2"
DAYTIME = 13


def connect_close(count: int) -> float:
    """`count` connections one after another; their rate per second."""
    start = time.perf_counter()
    for _ in range(count):
        with socket.create_connection((STACK, DAYTIME)) as conn:
            while conn.recv(128):
                pass
    return count / (time.perf_counter() - start)


def gc_and_states() -> tuple[dict[str, Any], dict[str, int]]:
    """The daemon's GC pauses since the last call (zeroed once read) and its
    connections by state."""
    out = subprocess.run(
        ["ustack", "stats", "--json", "--gc-reset"], capture_output=True, text=True, check=True
    ).stdout
    reply = json.loads(out)
    if "gc" not in reply:
        raise SystemExit("the daemon runs without --gc-stats")
    return reply["gc"], reply["connections"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--marks", default="1000,10000,50000", help="connections made, comma-separated"
    )
    parser.add_argument(
        "--measure", type=int, default=1000, help="connect+close timed at each mark"
    )
    args = parser.parse_args()
    gc_and_states()
    made = 0
    for mark in (int(m) for m in args.marks.split(",")):
        connect_close(mark - made)
        made = mark
        filling, _ = gc_and_states()
        rate = connect_close(args.measure)
        made += args.measure
        measuring, states = gc_and_states()
        print(
            f"{mark:>6} made: filling, longest GC pause {filling['max_ms']:.1f} ms "
            f"({filling['over_20ms']} over 20 ms); then {args.measure} connect+close at "
            f"{rate:,.0f}/s, longest pause {measuring['max_ms']:.1f} ms; held {states}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
