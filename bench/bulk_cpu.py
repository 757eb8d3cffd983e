"""Bulk rates and the daemon's CPU per MB: the bulk rows of bench/run.py, alone.

Run as root from the repository, with the venv's Python:
    python bench/bulk_cpu.py --mtu 65535 --mb 1000           # this checkout and the kernel
    python bench/bulk_cpu.py --tree /tmp/old --mtu 1500       # also another checkout's ustack/

Each build given (this checkout as "new", `--tree DIR` as "old") runs its own
`ustack serve --mtu M --services discard,http` in a namespace of
ustack.linux.lab; the kernel reference is bench/run.py's (bench/kernel_server.py
on a veth pair at the same MTU). The rows are bench/run.py's: download
(`curl /bytes/N`), upload (`curl -T`, SHA-256 checked by the server) and send
to discard (`bench/client.py send`). The targets take turns rep by rep, so
background load hits all alike. For ustack, beside MB/s, the daemon's CPU per
MB moved, from /proc/PID/schedstat (the scheduler's nanoseconds: much steadier
than the rate on a shared machine).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from measure import curl_download  # bench/*.py: run as python bench/NAME.py
from measure import curl_upload  # bench/*.py: run as python bench/NAME.py
from measure import send_rate  # bench/*.py: run as python bench/NAME.py
from setups import MB
from setups import USTACK_LINUX
from setups import USTACK_STACK
from setups import BenchError
from setups import Resources
from setups import Target
from setups import check_pid_is
from setups import failed
from setups import linux_cc
from setups import parse_as_root
from setups import rows_parser
from setups import set_kernel_mtu
from setups import start_kernel

from ustack.linux.lab import LabError
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon
from ustack.linux.lab import process_costs


def start_build(res: Resources, workdir: Path, tag: str, mtu: int, tree: Path | None) -> Target:
    ns = res.netns(f"{tag}{mtu}")
    private = workdir / tag
    private.mkdir(exist_ok=True)
    env, cwd = dict(os.environ), None
    if tree is not None:  # -m runs ustack from the working directory: the tree's
        cwd = tree.resolve()
        env["PYTHONPATH"] = str(cwd)
    daemon = UstackDaemon.start(
        Netns(ns), private, "--mtu", str(mtu), "--linux-address", f"{USTACK_LINUX}/24",
        "--address", USTACK_STACK, "--services", "discard,http",
        log_level="warning", msl=None, trace=False, control=False, env=env, cwd=cwd,
    )  # fmt: skip
    res.server(daemon.process)
    check_pid_is(daemon.process.pid, "ustack")
    linux_cc(ns, USTACK_STACK, "tun0")
    return Target(tag, ns, ns, USTACK_STACK, daemon.process, daemon.log)


def main() -> int:
    parser = rows_parser(__doc__, "down,up,send", "also run another checkout's ustack/ ('old')")
    parser.add_argument("--mtu", type=int, default=65535)
    parser.add_argument("--mb", type=int, default=200, help="MB per transfer")
    parser.add_argument("--no-kernel", action="store_true")
    parser.add_argument("--timeout", type=float, default=60, help="per transfer (s)")
    args = parse_as_root(parser)
    size = args.mb * MB
    res = Resources()

    def measure() -> None:
        workdir = res.workdir("bulk-cpu-")
        targets = [start_build(res, workdir, "new", args.mtu, None)]
        if args.tree is not None:
            targets.append(start_build(res, workdir, "old", args.mtu, args.tree))
        if not args.no_kernel:
            kernel = start_kernel(res, workdir)
            set_kernel_mtu(kernel, args.mtu)
            targets.append(kernel)
        upload = workdir / "upload.bin"
        digest = hashlib.sha256()
        with open(upload, "wb") as stream:
            for _ in range(0, size, MB):
                chunk = os.urandom(MB)
                digest.update(chunk)
                stream.write(chunk)
        slow: list[str] = []
        rows: dict[str, Callable[[Target], float]] = {
            "down": lambda t: curl_download(t, size, args.timeout, slow),
            "up": lambda t: curl_upload(t, upload, size, digest.hexdigest(), args.timeout, slow),
            "send": lambda t: send_rate(t, size, args.timeout, slow),
        }
        results: dict[str, list[float]] = {}
        for _ in range(args.reps):
            for row in args.rows.split(","):
                for t in targets:
                    ours = t.label != "kernel"
                    before = process_costs(t.pid) if ours else None
                    rate = rows[row](t)
                    results.setdefault(f"{row} {t.label} MB/s", []).append(round(rate))
                    if ours:
                        assert before is not None
                        after = process_costs(t.pid)
                        us_per_mb = (after.cpu_ns - before.cpu_ns) / 1e3 / args.mb
                        # Hundreds per MB: the allocator refaults the
                        # buffers (docs/performance.md, "Two speeds").
                        faults = (after.minor_faults - before.minor_faults) / args.mb
                        results.setdefault(f"{row} {t.label} us/MB", []).append(round(us_per_mb))
                        results.setdefault(f"{row} {t.label} faults/MB", []).append(round(faults))
                    t.alive()
        print(f"MTU {args.mtu}, {args.mb} MB per transfer")
        for name, values in results.items():
            print(f"{name:20} {' '.join(f'{v:7}' for v in values)}")
        for line in slow:
            print("slow:", line)
        print(json.dumps(results))

    try:
        res.run_stoppable(measure)
    except (BenchError, LabError) as exc:
        return failed(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
