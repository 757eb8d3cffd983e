"""ustack against the Linux kernel's TCP, side by side, in one run.

Run (as root, from the repository, with the venv's Python):
    /tmp/venv/bin/python bench/run.py                  # the full run, about 2-3 minutes
    /tmp/venv/bin/python bench/run.py --quick          # a CI smoke, about 20-30 s
    /tmp/venv/bin/python bench/run.py --json out.json  # also write the table as JSON

Two setups, both in private network namespaces made here and removed at the
end (also on failure, SIGINT, SIGTERM; children get SIGTERM if this process dies):

  ustack   one namespace: `ustack serve` on its TUN (Linux 198.18.0.1 and
           2001:2::1, stack 198.18.0.2 and 2001:2::2); the clients run in the
           same namespace.
  kernel   two namespaces joined by a veth pair: the server (bench/kernel_server.py,
           ustack's own service handlers on kernel sockets through asyncio) at
           198.19.0.2 and 2001:2:1::2, the clients at 198.19.0.1 and 2001:2:1::1.

The bulk rows at MTU 1500 run over IPv4 and again over IPv6, in the same run.

The same client programs drive both: curl (download, upload), ab (HTTP rate),
bench/client.py (connect+close rate, 1-byte echo ping-pong, idle connections).
Rates are the best of --reps repetitions, latencies the median of the reps'
percentiles, the memory rows one measurement each; the two setups take turns
rep by rep, so that background load hits both alike. Retransmissions and drops
seen during each row are reported under the table. bench/README.md describes
every row.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import hashlib
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from ustack.linux.lab import (
    STACK_ADDRESS6,
    LabError,
    Netns,
    UstackDaemon,
    die_with_parent,
    netns,
    remove_stale_namespaces,
    start_until_ready,
    stop_process,
    veth_pair,
)

BENCH = Path(__file__).resolve().parent
NS_PREFIX = "ustack-b"
USTACK_LINUX, USTACK_STACK = "198.18.0.1", "198.18.0.2"
KERNEL_CLIENT, KERNEL_SERVER = "198.19.0.1", "198.19.0.2"
KERNEL_CLIENT6, KERNEL_SERVER6 = "2001:2:1::1", "2001:2:1::2"  # RFC 5180's range, as the lab's
LINUX_CC = "cubic"  # ustack's default congestion control; Linux's everywhere here
ECHO, DISCARD = 7, 9
BIG_MTU = 65535
MB = 1_000_000  # MB/s here are 10^6 bytes per second, as curl reports them
TOOLS = ("ip", "curl", "ab", "ss")


class BenchError(Exception):
    """A failure worth one clear line (and the run's cleanup), not a traceback."""


class Interrupted(BenchError):
    pass


# ---- processes and namespaces, and their cleanup ------------------------------------------


@dataclass
class Resources:
    """Everything this run created (namespaces and servers, from ustack.linux.lab),
    removed exactly once, servers before their namespaces."""

    lab: ExitStack = field(default_factory=ExitStack)
    namespaces: dict[str, Netns] = field(default_factory=dict)
    cleaned: bool = False

    def netns(self, tag: str) -> str:
        ns = self.lab.enter_context(netns(NS_PREFIX, tag))
        self.namespaces[ns.name] = ns
        # Room for many short connections from the clients (a per-namespace setting).
        run(nsexec(ns.name, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"), timeout=10)
        return ns.name

    def server(self, process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.lab.callback(stop_process, process)
        return process

    def remove_namespace(self, name: str) -> None:
        """Ends what still runs in it, too."""
        self.namespaces.pop(name).remove()

    def cleanup(self) -> None:
        if self.cleaned:
            return
        self.cleaned = True
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        try:
            self.lab.close()
        except (OSError, subprocess.TimeoutExpired, LabError) as exc:
            print(f"bench: cleanup: {exc}", file=sys.stderr)


def nsexec(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def run(
    argv: Sequence[str], timeout: float, check: bool = True, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """subprocess.run with a timeout always, and failures as BenchError."""
    try:
        result = subprocess.run(
            list(argv),
            capture_output=True,
            timeout=timeout,
            input=input,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"timed out after {timeout:.0f} s: {' '.join(argv)}") from None
    if check and result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()
        raise BenchError(f"exit {result.returncode}: {' '.join(argv)}: {stderr[-500:]}")
    return result


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def slab_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Slab:"):
            return int(line.split()[1])
    raise BenchError("no Slab in /proc/meminfo")


# ---- the two setups --------------------------------------------------------------------


@dataclass
class Target:
    """One side of the comparison: where the clients run and whom they talk to."""

    label: str
    client_ns: str
    server_ns: str
    address: str
    server: subprocess.Popen[bytes]
    log: Path
    control: Path | None = None  # ustack's control socket

    @property
    def pid(self) -> int:
        return self.server.pid

    def client(self, *argv: str) -> list[str]:
        return nsexec(self.client_ns, *argv)

    def alive(self) -> None:
        if self.server.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise BenchError(
                f"the {self.label} server died (exit {self.server.returncode}):\n{tail}"
            )


def start_ustack(res: Resources, workdir: Path, mtu: int, extra: Sequence[str] = ()) -> Target:
    ns = res.netns(f"u{mtu}")
    private = workdir / f"ustack-{mtu}"  # its own control socket and log
    private.mkdir(exist_ok=True)
    daemon = UstackDaemon.start(
        Netns(ns), private, "--mtu", str(mtu), "--linux-address", f"{USTACK_LINUX}/24",
        "--address", USTACK_STACK, "--services", "echo,discard,http", *extra,
        log_level="info", msl=None, trace=False,
    )  # fmt: skip
    res.server(daemon.process)
    check_pid_is(daemon.process.pid, "ustack")
    linux_cc(ns, USTACK_STACK, "tun0")
    linux_cc(ns, STACK_ADDRESS6, "tun0")
    return Target("ustack", ns, ns, USTACK_STACK, daemon.process, daemon.log, daemon.control)


def linux_cc(ns: str, peer: str, dev: str) -> None:
    """Linux's TCP towards `peer` runs CUBIC, like ustack, whatever the
    machine's default (often BBR): a host route's congctl, since a namespace's
    sysctl may not be writable."""
    host = f"{peer}/128" if ":" in peer else f"{peer}/32"
    route = ["ip", "-n", ns, "route", "replace", host, "dev", dev]
    run([*route, "congctl", "lock", LINUX_CC], timeout=10)


def start_kernel(res: Resources, workdir: Path) -> Target:
    client_ns, server_ns = res.netns("kc"), res.netns("ks")
    veth_pair(Netns(client_ns), Netns(server_ns), ("bk0", "bk1"),
              (f"{KERNEL_CLIENT}/24", f"{KERNEL_SERVER}/24"))  # fmt: skip
    for ns, dev, address in (
        (client_ns, "bk0", KERNEL_CLIENT6),
        (server_ns, "bk1", KERNEL_SERVER6),
    ):
        run(["ip", "-n", ns, "addr", "add", f"{address}/64", "dev", dev, "nodad"], timeout=10)
    for ns, dev, peer in (
        (client_ns, "bk0", KERNEL_SERVER),
        (server_ns, "bk1", KERNEL_CLIENT),
        (client_ns, "bk0", KERNEL_SERVER6),
        (server_ns, "bk1", KERNEL_CLIENT6),
    ):
        linux_cc(ns, peer, dev)
    log = workdir / "kernel-server.log"
    server = BENCH / "kernel_server.py"
    process = start_until_ready(
        lambda fd: nsexec(server_ns, sys.executable, str(server), "--address", KERNEL_SERVER,
                          "--address", KERNEL_SERVER6, "--ready-fd", str(fd)),
        log,
    )  # fmt: skip
    res.server(process)
    check_pid_is(process.pid, "kernel_server")
    return Target("kernel", client_ns, server_ns, KERNEL_SERVER, process, log)


def over_ipv6(target: Target, address: str) -> Target:
    """The same server and clients, reached at its IPv6 address (as a URL
    writes it: [2001:2::2])."""
    return dataclasses.replace(target, address=f"[{address}]")


def set_kernel_mtu(target: Target, mtu: int) -> None:
    for ns, dev in ((target.client_ns, "bk0"), (target.server_ns, "bk1")):
        run(["ip", "-n", ns, "link", "set", dev, "mtu", str(mtu)], timeout=10)


def check_pid_is(pid: int, word: str) -> None:
    """`ip netns exec` execs its command, so the PID we hold is the server's own
    (whose VmRSS we read): make sure."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    if word not in cmdline:
        raise BenchError(f"pid {pid} is {cmdline!r}, not the {word} server")


# ---- the measurements ---------------------------------------------------------------------


def curl(t: Target, max_time: float, *argv: str) -> tuple[str, list[str]]:
    """Run curl in the client namespace; (body, the -w fields). A transfer cut
    at --max-time (exit 28) still reports what it moved, in what time."""
    result = run(
        t.client("curl", "-sS", "-g", "--max-time", f"{max_time:.0f}", *argv),
        timeout=max_time + 15,
        check=False,
    )
    out = result.stdout.decode(errors="replace")
    if result.returncode not in (0, 28) or "\n@@" not in out:
        stderr = result.stderr.decode(errors="replace").strip()
        raise BenchError(f"{t.label}: curl {argv[-1]} exit {result.returncode}: {stderr}")
    body, fields = out.rsplit("\n@@", 1)
    return body, fields.split()


def curl_download(t: Target, size: int, max_time: float, slow: list[str]) -> float:
    url = f"http://{t.address}/bytes/{size}"
    w = "\n@@%{http_code} %{size_download} %{time_total}"
    _, (code, got, seconds) = curl(t, max_time, "-o", "/dev/null", "-w", w, url)
    if int(got) < size and float(seconds) >= max_time - 1:
        slow.append(f"{t.label}: GET {url} cut at {max_time:.0f} s after {got} bytes")
    elif code != "200" or int(got) != size:
        raise BenchError(f"{t.label}: download of {size} bytes got HTTP {code}, {got} bytes")
    return int(got) / float(seconds) / MB


def curl_upload(
    t: Target, path: Path, size: int, digest: str, max_time: float, slow: list[str]
) -> float:
    url = f"http://{t.address}/upload"
    w = "\n@@%{http_code} %{size_upload} %{time_total}"
    # -T streams the file (POST by -X); no "Expect: 100-continue" and its 1 s wait.
    # fmt: off
    body, (code, sent, seconds) = curl(
        t, max_time, "-X", "POST", "-T", str(path), "-H", "Expect:",
        "-H", "Content-Type: application/octet-stream", "-w", w, url,
    )
    # fmt: on
    if int(sent) < size and float(seconds) >= max_time - 1:
        slow.append(f"{t.label}: POST {size} bytes cut at {max_time:.0f} s after {sent} bytes")
    elif code != "200" or int(sent) != size or body.strip() != f"{size} {digest}":
        raise BenchError(
            f"{t.label}: upload of {size} bytes: HTTP {code}, sent {sent}, got {body!r}"
        )
    return int(sent) / float(seconds) / MB


@dataclass
class AbResult:
    rate: float
    failed: int
    problems: list[str]


def apache_bench(t: Target, requests: int, concurrency: int) -> AbResult:
    timeout = 30 + requests / 50  # at least 50 requests/s
    result = run(
        t.client(
            "ab",
            "-q",
            "-r",
            "-s",
            "10",
            "-n",
            str(requests),
            "-c",
            str(concurrency),
            f"http://{t.address}/",
        ),
        timeout=timeout,
        check=False,
    )
    text = result.stdout.decode(errors="replace")

    def number(pattern: str) -> float | None:
        match = re.search(pattern, text)
        return float(match.group(1)) if match else None

    rate = number(r"Requests per second:\s+([\d.]+)")
    complete = number(r"Complete requests:\s+(\d+)") or 0
    failed = int(number(r"Failed requests:\s+(\d+)") or 0)
    non2xx = int(number(r"Non-2xx responses:\s+(\d+)") or 0)
    problems = []
    if result.returncode != 0 or rate is None:
        stderr = result.stderr.decode(errors="replace").strip().splitlines()
        problems.append(f"ab exit {result.returncode}: {stderr[-1] if stderr else text[-200:]}")
    if complete < requests:
        problems.append(f"only {complete:.0f} of {requests} requests completed")
    if failed:
        detail = re.search(r"\(Connect: .*\)", text)
        problems.append(f"{failed} failed {detail.group(0) if detail else ''}".strip())
    if non2xx:
        problems.append(f"{non2xx} non-2xx responses")
    return AbResult(rate or 0.0, failed + non2xx + max(0, requests - int(complete)), problems)


def client_py(
    t: Target, mode: str, port: int, count: int, timeout: float, *extra: str
) -> dict[str, Any]:
    argv = t.client(
        sys.executable,
        str(BENCH / "client.py"),
        mode,
        t.address,
        str(port),
        str(count),
        "--deadline",
        f"{timeout:.0f}",
        *extra,
    )
    return json.loads(run(argv, timeout=timeout + 10).stdout)


def connect_rate(t: Target, count: int) -> tuple[float, dict[str, int]]:
    out = client_py(t, "connect", DISCARD, count, 30 + count / 50)
    return out["rate"], out["errors"]


def send_rate(t: Target, size: int, timeout: float, slow: list[str]) -> float:
    """Bulk to the discard port (no SHA-256 in the way): MB/s until its FIN."""
    out = client_py(t, "send", DISCARD, size, timeout)
    if out["bytes"] < size:
        slow.append(f"{t.label}: send to discard moved {out['bytes']} of {size} bytes")
    return out["rate_mb_s"]


def echo_latency(t: Target, count: int) -> tuple[float, float]:
    out = client_py(t, "pingpong", ECHO, count, 30 + count / 500, "--warmup", "200")
    return out["p50_us"], out["p99_us"]


@dataclass
class Memory:
    rss_kib_per_conn: float
    slab_kib_per_conn: float
    established: int | None


def idle_memory(t: Target, count: int) -> Memory:
    """RSS of the server process and the kernel's Slab, before and while the
    client holds `count` idle connections to the echo port."""
    client_py(t, "pingpong", ECHO, 20, 30, "--warmup", "0")  # warm the code path first
    time.sleep(0.5)
    rss0, slab0 = vm_rss_kib(t.pid), slab_kib()
    timeout = 30 + count / 100
    argv = t.client(
        sys.executable,
        str(BENCH / "client.py"),
        "hold",
        t.address,
        str(ECHO),
        str(count),
        "--deadline",
        f"{timeout:.0f}",
    )
    holder = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        readable, _, _ = select.select([holder.stdout], [], [], timeout)
        line = holder.stdout.readline() if readable else b""
        if not line.startswith(b'{"held"'):
            err = holder.stderr.read().decode(errors="replace") if holder.poll() is not None else ""
            raise BenchError(
                f"{t.label}: could not hold {count} connections: {line!r} {err[-500:]}"
            )
        time.sleep(1.0)  # let the server settle
        rss1, slab1 = vm_rss_kib(t.pid), slab_kib()
        established = None
        if t.control is not None:
            from ustack.linux.control import request

            established = request(t.control, "stats")["connections"].get("ESTABLISHED", 0)
        holder.stdin.write(b"go\n")
        holder.stdin.flush()
        holder.wait(30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(5)
    return Memory((rss1 - rss0) / count, (slab1 - slab0) / count, established)


# ---- after each phase: did anything go wrong? ---------------------------------------------

LOG_PROBLEM = re.compile(r"Traceback|ERROR|WARNING|Exception|error:", re.IGNORECASE)


def health(t: Target, settle: float = 5.0) -> dict[str, Any]:
    """Connections left behind (other than TIME_WAIT and listeners), nonzero drop
    counters, and suspicious lines in the server's log."""
    report: dict[str, Any] = {}
    deadline = time.monotonic() + settle
    while True:
        states = connection_states(t)
        lingering = {s: n for s, n in states.items() if s not in ("TIME_WAIT", "LISTEN")}
        if not lingering or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    report["states"] = states
    if lingering:
        report["lingering"] = lingering
        if t.control is not None:
            from ustack.linux.control import request

            conns = request(t.control, "connections")["connections"]
            report["lingering_detail"] = [c for c in conns if c["state"] in lingering][:10]
    if t.control is not None:
        from ustack.linux.control import request

        counters = request(t.control, "stats")["counters"]
        report["drops"] = {k: v for k, v in counters.items() if ".drop." in k and v}
        report["counters"] = counters
    lines = t.log.read_text(errors="replace").splitlines()
    report["log_problems"] = [line for line in lines if LOG_PROBLEM.search(line)][:20]
    return report


def connection_states(t: Target) -> dict[str, int]:
    if t.control is not None:
        from ustack.linux.control import request

        return dict(request(t.control, "stats")["connections"])
    out = run(nsexec(t.server_ns, "ss", "-Htan"), timeout=10).stdout.decode()
    names = {
        "ESTAB": "ESTABLISHED",
        "TIME-WAIT": "TIME_WAIT",
        "CLOSE-WAIT": "CLOSE_WAIT",
        "LAST-ACK": "LAST_ACK",
        "FIN-WAIT-1": "FIN_WAIT_1",
        "FIN-WAIT-2": "FIN_WAIT_2",
        "SYN-RECV": "SYN_RECEIVED",
        "CLOSING": "CLOSING",
    }
    states: dict[str, int] = {}
    for line in out.splitlines():
        state = names.get(line.split()[0], line.split()[0])
        states[state] = states.get(state, 0) + 1
    return states


# ---- the table ----------------------------------------------------------------------------


@dataclass
class Row:
    metric: str
    unit: str
    better: str  # "higher", "lower" or "" (a count, a memory figure)
    ustack: list[float] = field(default_factory=list)
    kernel: list[float] = field(default_factory=list)
    how: str = "best"  # best of the reps, their "median" or "sum", or "one" measurement

    def value(self, side: str) -> float | None:
        values = self.ustack if side == "ustack" else self.kernel
        if not values:
            return None
        if self.how == "sum":
            return sum(values)
        if self.how == "one":
            return values[0]
        if self.how == "median":
            return statistics.median(values)
        return max(values) if self.better == "higher" else min(values)

    def of(self, t: Target) -> list[float]:
        """The list of `t`'s measurements."""
        return self.ustack if t.label == "ustack" else self.kernel

    def ratio(self) -> float | None:
        u, k = self.value("ustack"), self.value("kernel")
        if u is None or k is None or k == 0 or self.how == "sum":
            return None
        return u / k


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3f}"


def format_table(rows: Sequence[Row]) -> str:
    header = ("metric", "ustack", "kernel", "ustack/kernel")
    body = [
        (
            f"{r.metric} ({r.unit})",
            fmt(r.value("ustack")),
            fmt(r.value("kernel")),
            "-" if r.ratio() is None else f"{r.ratio():.3f}",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(4)]
    lines = []
    for n, line in enumerate([header, *body]):
        cells = [line[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---- the run ------------------------------------------------------------------------------


@dataclass
class Settings:
    bulk_mb: int
    connects: int
    requests: int
    pings: int
    idle_conns: int
    reps: int
    concurrency: int
    transfer_timeout: int  # seconds one curl may take (a slower one reports what it moved)
    row_budget: int  # seconds one side may spend on one row before its reps are cut


# fmt: off
DEFAULTS = Settings(bulk_mb=200, connects=5000, requests=5000, pings=5000, idle_conns=2000,
                    reps=5, concurrency=50, transfer_timeout=30, row_budget=40)
QUICK = Settings(bulk_mb=20, connects=500, requests=500, pings=1000, idle_conns=300,
                 reps=2, concurrency=50, transfer_timeout=8, row_budget=8)
# fmt: on
SETTINGS_HELP = {  # the options, in --help's order
    "bulk_mb": "MB per download/upload",
    "connects": "connect+close count",
    "requests": "ab -n",
    "concurrency": "ab -c for the concurrent row",
    "pings": "echo ping-pongs",
    "idle_conns": "idle connections held",
    "reps": "repetitions, best reported",
    "transfer_timeout": "seconds one download/upload may take; a slower one reports the rate"
    " of what it moved",
    "row_budget": "seconds one side may spend on one row before its remaining reps are skipped",
}


def log_step(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def kernel_losses(ns: str, device: str) -> tuple[int, int]:
    """(RetransSegs of the kernel's TCP, packets the device dropped) in one
    namespace: /proc/net and, under `ip netns exec`, /sys are the namespace's own."""
    stats = f"/sys/class/net/{device}/statistics"
    argv = nsexec(ns, "cat", "/proc/net/snmp", f"{stats}/tx_dropped", f"{stats}/rx_dropped")
    lines = run(argv, timeout=10).stdout.decode().splitlines()
    tcp = [line.split() for line in lines if line.startswith("Tcp:")]
    return int(tcp[1][tcp[0].index("RetransSegs")]), int(lines[-2]) + int(lines[-1])


def loss_snapshot(t: Target) -> dict[str, int]:
    """Counters that should not move on a lossless virtual link: retransmissions
    by the server and by the clients' kernel, packets dropped by the TUN or veth
    devices (a full queue), and (ustack) every drop counter of the stack."""
    if t.control is None:
        client, client_dev = kernel_losses(t.client_ns, "bk0")
        server, server_dev = kernel_losses(t.server_ns, "bk1")
        return {
            "client retransmits": client,
            "server retransmits": server,
            "veth drops": client_dev + server_dev,
        }
    from ustack.linux.control import request

    client, tun = kernel_losses(t.client_ns, "tun0")
    counters = request(t.control, "stats")["counters"]
    snapshot = {
        "client retransmits": client,
        "server retransmits": sum(v for k, v in counters.items() if "retransmit" in k),
        "tun drops": tun,
    }
    snapshot.update({k: v for k, v in counters.items() if ".drop." in k})
    return snapshot


@dataclass
class Rotation:
    """Runs each row's reps, the targets taking turns rep by rep, so that
    background load hits both alike. Records the loss counters that moved
    during each row, and cuts a target's reps once it has spent the row budget."""

    reps: int
    budget: float
    losses: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    slow: list[str] = field(default_factory=list)

    def tally(
        self, what: str, t: Target, before: dict[str, int], after: dict[str, int]
    ) -> dict[str, int]:
        """Add up the loss counters that moved between two snapshots."""
        moved = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
        for k, v in moved.items():
            tally = self.losses.setdefault(what, {}).setdefault(t.label, {})
            tally[k] = tally.get(k, 0) + v
        return moved

    def row(
        self,
        targets: Sequence[Target],
        row: Row,
        measure: Callable[[Target], float],
        what: str,
    ) -> None:
        self.rows([(targets, row, measure, what)])

    def rows(
        self, plan: Sequence[tuple[Sequence[Target], Row, Callable[[Target], float], str]]
    ) -> None:
        """Several rows whose reps interleave (IPv4's rep, then IPv6's, ...),
        so that they compare under the same background load."""
        spent = {(what, t.label): 0.0 for targets, _, _, what in plan for t in targets}
        before_row = {(what, t.label): len(row.of(t)) for targets, row, _, what in plan
                      for t in targets}  # fmt: skip
        for rep in range(self.reps):
            for targets, row, measure, what in plan:
                for t in targets:
                    self._rep(t, row, measure, what, rep, spent, before_row)
        for targets, _, _, _ in plan:
            for t in targets:
                t.alive()

    def _rep(
        self,
        t: Target,
        row: Row,
        measure: Callable[[Target], float],
        what: str,
        rep: int,
        spent: dict[tuple[str, str], float],
        before_row: dict[tuple[str, str], int],
    ) -> None:
        t.alive()
        key = (what, t.label)
        done = len(row.of(t)) - before_row[key]
        if done and spent[key] * (done + 1) / done > self.budget:  # one more: over
            if rep + 1 == self.reps:
                self.slow.append(
                    f"{what}: {t.label} stopped after {done} of {self.reps} reps "
                    f"({spent[key]:.0f} s; one more would pass the row budget, "
                    f"{self.budget:.0f} s)"
                )
            return
        start = time.monotonic()
        before = loss_snapshot(t)
        value = measure(t)
        after = loss_snapshot(t)
        spent[key] += time.monotonic() - start
        moved = self.tally(what, t, before, after)
        row.of(t).append(value)
        extra = f"  ({', '.join(f'{k} +{v}' for k, v in moved.items())})" if moved else ""
        log_step(f"  {what} rep {rep + 1}/{self.reps} {t.label}: {fmt(value)}{extra}")


def benchmark(
    s: Settings, res: Resources, workdir: Path, ustack_args: Sequence[str] = ()
) -> tuple[list[Row], dict[str, Any]]:
    bulk = s.bulk_mb * MB
    rows = {
        "down1500": Row("download server->client, MTU 1500", "MB/s", "higher"),
        "up1500": Row("upload client->server, MTU 1500", "MB/s", "higher"),
        "down1500v6": Row("download server->client, MTU 1500, IPv6", "MB/s", "higher"),
        "up1500v6": Row("upload client->server, MTU 1500, IPv6", "MB/s", "higher"),
        "down64k": Row(f"download server->client, MTU {BIG_MTU}", "MB/s", "higher"),
        "up64k": Row(f"upload client->server, MTU {BIG_MTU}", "MB/s", "higher"),
        "send1500": Row("send client->server discard, MTU 1500", "MB/s", "higher"),
        "send64k": Row(f"send client->server discard, MTU {BIG_MTU}", "MB/s", "higher"),
        "connect": Row("connect+close, discard port", "conn/s", "higher"),
        "ab1": Row("HTTP GET / ab -c 1", "req/s", "higher"),
        "ab1fail": Row("HTTP ab -c 1 failed, all reps", "count", "", how="sum"),
        "abN": Row(f"HTTP GET / ab -c {s.concurrency}", "req/s", "higher"),
        "abNfail": Row(f"HTTP ab -c {s.concurrency} failed, all reps", "count", "", how="sum"),
        "p50": Row("echo 1-byte ping-pong p50, median", "us", "lower", how="median"),
        "p99": Row("echo 1-byte ping-pong p99, median", "us", "lower", how="median"),
        "rss": Row("idle conn: server process RSS", "KiB/conn", "", how="one"),
        "slab": Row("idle conn: kernel Slab", "KiB/conn", "", how="one"),
    }
    rotation = Rotation(s.reps, s.row_budget)
    notes: dict[str, Any] = {"ab_problems": [], "connect_errors": [], "memory": [], "health": {}}

    upload = workdir / "upload.bin"
    digest = hashlib.sha256()
    with open(upload, "wb") as stream:
        for offset in range(0, bulk, MB):
            chunk = os.urandom(min(MB, bulk - offset))
            digest.update(chunk)
            stream.write(chunk)
    hexdigest = digest.hexdigest()

    log_step("starting ustack (MTU 1500) and the kernel reference")
    ustack = start_ustack(res, workdir, 1500, ustack_args)
    kernel = start_kernel(res, workdir)
    targets = (ustack, kernel)

    # Memory first, on fresh servers: later phases leave freed memory that would be reused.
    for t in targets:
        before = loss_snapshot(t)
        mem = idle_memory(t, s.idle_conns)
        time.sleep(1)  # the closes' stragglers
        rotation.tally(f"idle memory ({s.idle_conns} conns)", t, before, loss_snapshot(t))
        rows["rss"].of(t).append(mem.rss_kib_per_conn)
        rows["slab"].of(t).append(mem.slab_kib_per_conn)
        if mem.established is not None and mem.established < s.idle_conns:
            notes["memory"].append(f"ustack had {mem.established} ESTABLISHED of {s.idle_conns}")
        log_step(
            f"  idle memory {t.label}: {fmt(mem.rss_kib_per_conn)} KiB RSS, "
            f"{fmt(mem.slab_kib_per_conn)} KiB slab per connection"
        )

    def ping(t: Target) -> float:
        p50, p99 = echo_latency(t, s.pings)
        rows["p99"].of(t).append(p99)
        return p50

    rotation.row(targets, rows["p50"], ping, "echo p50 (us)")

    def connects(t: Target) -> float:
        rate, errors = connect_rate(t, s.connects)
        if errors:
            notes["connect_errors"].append({t.label: errors})
        return rate

    rotation.row(targets, rows["connect"], connects, "connect+close (conn/s)")

    for key, conc in (("ab1", 1), ("abN", s.concurrency)):

        def ab(t: Target, conc: int = conc, key: str = key) -> float:
            result = apache_bench(t, s.requests, conc)
            rows[key + "fail"].of(t).append(result.failed)
            if result.problems:
                notes["ab_problems"].append(
                    {"target": t.label, "c": conc, "problems": result.problems}
                )
            return result.rate

        rotation.row(targets, rows[key], ab, f"ab -c {conc} (req/s)")

    def download(t: Target) -> float:
        return curl_download(t, bulk, s.transfer_timeout, rotation.slow)

    def upload_(t: Target) -> float:
        return curl_upload(t, upload, bulk, hexdigest, s.transfer_timeout, rotation.slow)

    def send(t: Target) -> float:
        return send_rate(t, bulk, s.transfer_timeout, rotation.slow)

    # The bulk rows over IPv6 too (issue 15: within 10 % of IPv4), same
    # servers, each IPv6 rep right after its IPv4 one: the same background load.
    targets6 = (over_ipv6(ustack, STACK_ADDRESS6), over_ipv6(kernel, KERNEL_SERVER6))
    rotation.rows([
        (targets, rows["down1500"], download, "download MTU 1500 (MB/s)"),
        (targets6, rows["down1500v6"], download, "download MTU 1500 IPv6 (MB/s)"),
    ])  # fmt: skip
    rotation.rows([
        (targets, rows["up1500"], upload_, "upload MTU 1500 (MB/s)"),
        (targets6, rows["up1500v6"], upload_, "upload MTU 1500 IPv6 (MB/s)"),
    ])  # fmt: skip
    rotation.row(targets, rows["send1500"], send, "send to discard MTU 1500 (MB/s)")
    for t in targets:
        notes["health"][f"{t.label} (MTU 1500 phase)"] = health(t)

    log_step(f"restarting ustack with --mtu {BIG_MTU}; kernel veth mtu {BIG_MTU}")
    stop_process(ustack.server)
    res.remove_namespace(ustack.client_ns)
    ustack = start_ustack(res, workdir, BIG_MTU, ustack_args)
    set_kernel_mtu(kernel, BIG_MTU)
    targets = (ustack, kernel)
    rotation.row(targets, rows["down64k"], download, f"download MTU {BIG_MTU} (MB/s)")
    rotation.row(targets, rows["up64k"], upload_, f"upload MTU {BIG_MTU} (MB/s)")
    rotation.row(targets, rows["send64k"], send, f"send to discard MTU {BIG_MTU} (MB/s)")
    notes["health"][f"ustack (MTU {BIG_MTU} phase)"] = health(ustack)
    upload.unlink()

    notes["losses"], notes["slow"] = rotation.losses, rotation.slow
    order = ["down1500", "down1500v6", "up1500", "up1500v6", "send1500", "down64k", "up64k",
             "send64k", "connect", "ab1", "ab1fail", "abN", "abNfail", "p50", "p99", "rss",
             "slab"]  # fmt: skip
    return [rows[k] for k in order], notes


def revision() -> str:
    """The commit benchmarked, and whether the working tree differs from it."""
    try:
        out = run(["git", "-C", str(BENCH.parent), "describe", "--always", "--dirty"], timeout=10)
    except (BenchError, OSError):
        return "unknown"
    return out.stdout.decode().strip()


def preflight() -> None:
    if sys.platform != "linux":
        raise BenchError("Linux only")
    if os.geteuid() != 0:
        raise BenchError(
            "run as root: the benchmark makes network namespaces, a TUN and a veth pair"
        )
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        hint = {"curl": "curl", "ab": "apache2-utils", "ip": "iproute2", "ss": "iproute2"}
        packages = sorted({hint[m] for m in missing})
        raise BenchError(
            f"missing tool(s): {', '.join(missing)} (apt-get install {' '.join(packages)})"
        )
    try:
        import ustack.services  # noqa: F401
    except ImportError:
        raise BenchError(
            f"{sys.executable} cannot import ustack: use the venv where it is installed"
        ) from None


def print_health(notes: dict[str, Any]) -> None:
    for phase, report in notes["health"].items():
        states = ", ".join(f"{k} {v}" for k, v in sorted(report["states"].items())) or "none"
        print(f"{phase}: connections left: {states}")
        if report.get("lingering"):
            print(f"  LINGERING (not TIME_WAIT) after 5 s: {report['lingering']}")
            for conn in report.get("lingering_detail", []):
                print(f"    {conn}")
        if report.get("drops"):
            print(f"  drop counters: {report['drops']}")
        for line in report["log_problems"]:
            print(f"  log: {line}")
    for problem in notes["ab_problems"]:
        what = "; ".join(problem["problems"])
        print(f"ab problems ({problem['target']}, -c {problem['c']}): {what}")
    for errors in notes["connect_errors"]:
        print(f"connect+close errors: {errors}")
    for line in notes["slow"]:
        print(f"slow: {line}")
    for line in notes["memory"]:
        print(f"memory: {line}")
    for what, sides in notes["losses"].items():
        for label, moved in sides.items():
            tally = ", ".join(f"{k} {v}" for k, v in moved.items())
            print(f"during {what}, {label}: {tally}")


def problem_count(notes: dict[str, Any]) -> int:
    """What --strict fails on (retransmissions and drops are reported, not failed:
    a loaded 2-CPU machine may cause a few)."""
    count = len(notes["ab_problems"]) + len(notes["connect_errors"]) + len(notes["slow"])
    for report in notes["health"].values():
        count += bool(report.get("lingering")) + len(report["log_problems"])
    return count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="ustack vs the kernel's TCP, side by side (as root; see bench/README.md)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes for a ~30 s CI smoke")
    for name, about in SETTINGS_HELP.items():  # each Settings field is an option
        default, quick = getattr(DEFAULTS, name), getattr(QUICK, name)
        given = f"{default}" if default == quick else f"{default}; quick {quick}"
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"{about} ({given})")
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write the table and details as JSON"
    )
    parser.add_argument(
        "--ustack-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="pass ARG to `ustack serve` too (repeat for several, e.g. --ustack-arg=--msl)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 3 if anything looked wrong: failed requests, connect errors, transfers cut"
        " short, connections left behind, problems in a server's log (for CI)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep the server logs here (default: a temporary dir)"
    )
    args = parser.parse_args(argv)

    base = QUICK if args.quick else DEFAULTS
    s = Settings(
        **{
            k: getattr(args, k) if getattr(args, k) is not None else v
            for k, v in vars(base).items()
        }
    )
    for name, value in vars(s).items():
        low = 10 if name in ("connects", "requests", "pings", "idle_conns") else 1
        if not low <= value <= 10**6:
            parser.error(f"--{name.replace('_', '-')} {value}: want {low}..{10**6}")
    if s.idle_conns > 20000:
        parser.error("--idle-conns: at most 20000")
    if s.concurrency > s.requests:
        parser.error("--concurrency: at most --requests")

    res = Resources()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(f"stopped by {signal.Signals(signum).name}")

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    atexit.register(res.cleanup)
    started = time.monotonic()
    keep = args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ustack-bench-"))
    try:
        preflight()
        workdir.mkdir(parents=True, exist_ok=True)
        remove_stale_namespaces()
        rows, notes = benchmark(s, res, workdir, args.ustack_arg)
    except (BenchError, LabError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 130 if isinstance(exc, Interrupted) else 1
    finally:
        res.cleanup()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    rev = revision()

    extra = f", ustack serve {' '.join(args.ustack_arg)}" if args.ustack_arg else ""
    print(
        f"ustack {rev} vs Linux kernel TCP -- {platform.node()}, {os.cpu_count()} CPUs, "
        f"Linux {platform.release()}, Python {platform.python_version()}{extra}"
    )
    print(
        f"bulk {s.bulk_mb} MB, {s.connects} connects, ab -n {s.requests} -c 1 and -c "
        f"{s.concurrency}, {s.pings} pings, {s.idle_conns} idle conns; best of {s.reps} reps "
        "(latency: median of the reps' percentiles; memory: one measurement)"
    )
    print()
    print(format_table(rows))
    print()
    print_health(notes)
    print(f"elapsed {elapsed:.0f} s")
    problems = problem_count(notes)
    if args.json:
        document = {
            "settings": vars(s),
            "revision": rev,
            "ustack_args": args.ustack_arg,
            "elapsed_s": round(elapsed, 1),
            "machine": {
                "host": platform.node(),
                "cpus": os.cpu_count(),
                "kernel": platform.release(),
                "python": platform.python_version(),
            },
            "rows": [
                {
                    "metric": r.metric,
                    "unit": r.unit,
                    "how": r.how,
                    "ustack": r.value("ustack"),
                    "kernel": r.value("kernel"),
                    "ratio": r.ratio(),
                    "ustack_reps": r.ustack,
                    "kernel_reps": r.kernel,
                }
                for r in rows
            ],
            "notes": notes,
            "problems": problems,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    if args.strict and problems:
        print(f"bench: --strict: {problems} problem(s), see above", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
