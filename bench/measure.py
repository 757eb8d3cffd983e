"""The measurements of bench/run.py, each on one Target: curl's downloads and
uploads, ab's request rate, bench/client.py's connect+close rate, ping-pong
latency and idle connections; after each phase, what was left behind and what
was lost (retransmissions, drops) on the way."""

from __future__ import annotations

import json
import re
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from setups import BENCH  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import DISCARD  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import ECHO  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import MB  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import BenchError  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import Target  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import nsexec  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import run  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import slab_kib  # bench/setups.py: scripts here run as python bench/NAME.py
from setups import vm_rss_kib  # bench/setups.py: scripts here run as python bench/NAME.py

from ustack.linux.lab import DIE_WITH_PARENT


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
        t.address.strip("[]"),  # a socket address, not a URL's [2001:2::2]
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
        t.address.strip("[]"),
        str(ECHO),
        str(count),
        "--deadline",
        f"{timeout:.0f}",
    )
    holder = subprocess.Popen(
        [*DIE_WITH_PARENT, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
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
