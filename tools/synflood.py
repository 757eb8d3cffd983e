#!/usr/bin/env python3
"""A SYN flood from spoofed sources against ustack, with legitimate clients.

    sudo python -m tools.synflood [--count 100000] [--rate 0] [--curl-every 0.1]
                                  [--max-time 20] [--trace]

All inside a network namespace of its own (ustack-t<pid>-<n>, removed at
the end, also on failure or Ctrl-C):

  1. starts `ustack serve` (http only; no trace unless --trace, which traces
     only the legitimate client 198.18.0.1; --keep DIR keeps the log and trace);
  2. an injector in the namespace (tests/attacks.py synflood) sends COUNT
     SYNs to port 80 from random addresses of 198.19.0.0/16 (not local to the
     namespace: the SYN,ACKs go nowhere, the kernel drops them) through an
     AF_PACKET socket on tun0, flat out (--rate 0) or at RATE a second. What
     the TUN's queue drops (ustack is slower than the injector) is sent again
     until COUNT SYNs reached ustack;
  3. meanwhile a curl of http://198.18.0.2/ starts every CURL_EVERY seconds
     (each with --max-time; curl retransmits its own SYN), the daemon's RSS
     (VmRSS) is sampled every 50 ms and its counters every 250 ms, until
     ustack has handled the last SYN.

Printed: the injector's rate and the TUN queue's drops; SYNs ustack handled
and its peak rate; SYN cookies sent and validated (the legitimate clients'
final ACKs); backlog drops (0 while cookies are on) and the half-open peak
(the listener's backlog, 128); the daemon's RSS before, peak during and
after; the curls' success rate.

Exit code 0: every curl succeeded and the RSS peak stayed within
--rss-bound-mib of the RSS before; 1 otherwise. tests/interop/test_attacks.py
runs the short form (20,000 SYNs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tests.attacks import flood_with_curls
from ustack.cli.args import folder_to_write
from ustack.linux.lab import UstackDaemon
from ustack.linux.lab import netns
from ustack.linux.lab import remove_stale_namespaces
from ustack.linux.lab import stoppable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="SYNs that reach ustack")
    parser.add_argument("--rate", type=float, default=0, help="SYNs a second; 0: flat out")
    parser.add_argument("--curl-every", type=float, default=0.1, help="seconds between curls")
    parser.add_argument("--max-time", type=float, default=20, help="each curl's --max-time")
    parser.add_argument("--rss-bound-mib", type=float, default=32, help="allowed RSS growth")
    parser.add_argument("--trace", action="store_true", help="trace the legitimate client")
    parser.add_argument(
        "--keep", type=folder_to_write, help="keep the daemon's log and trace in this directory"
    )
    args = parser.parse_args(argv)
    limits = {"count": (1, 10**8), "rate": (0, 10**7), "curl_every": (0.001, 3600),
              "max_time": (0.1, 3600), "rss_bound_mib": (0, 10**6)}  # fmt: skip
    for name, (low, high) in limits.items():
        if not low <= getattr(args, name) <= high:  # (NaN fails too)
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: want {low}..{high}")
    remove_stale_namespaces()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="synflood-") as scratch, netns() as ns:
        workdir = args.keep or scratch
        extra = ["--services", "http", "--log-level", "info"]
        if args.trace:
            extra += ["--trace-host", "198.18.0.1"]
        daemon = UstackDaemon.start(ns, Path(workdir), *extra, trace=args.trace)
        try:
            warm = ns.run("curl", "-sS", "-o", "/dev/null", "http://198.18.0.2/")
            if warm.returncode != 0:
                print(f"curl before the flood failed: {warm.stderr.decode()}", file=sys.stderr)
                return 1
            report = flood_with_curls(
                ns, daemon, args.count, args.rate, args.curl_every, args.max_time
            )
            alive = daemon.process.poll() is None
        finally:
            code = daemon.stop()
    print("\n".join(report.lines()))
    failures = [(c, e) for c, _, e in report.curls if c != 0]
    for exit_code, error in failures[:5]:
        print(f"  curl exit {exit_code}: {error}")
    bounded = report.rss_peak - report.rss_before <= args.rss_bound_mib * 1024
    print(f"daemon alive through the flood: {alive} (exit {code} on SIGTERM)")
    print(f"RSS bounded (growth <= {args.rss_bound_mib:g} MiB): {bounded}")
    return 0 if alive and bounded and not failures else 1


if __name__ == "__main__":
    sys.exit(stoppable(main, "synflood"))
