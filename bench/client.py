"""The small Python clients of bench/run.py, the same for ustack and the kernel.

    python bench/client.py connect  HOST PORT N      # connect+close loop, connections/s
    python bench/client.py pingpong HOST PORT N      # 1-byte echo ping-pong, latency
    python bench/client.py hold     HOST PORT K      # hold K idle connections open
    python bench/client.py send     HOST PORT BYTES  # bulk to a discard port, MB/s
    python bench/client.py fill     HOST PORT N      # N connections the server closes first

Each prints one JSON object on stdout. `hold` prints it once all K
connections are established and have echoed one byte each, then keeps them
until a line (or EOF) arrives on stdin, closes them all and prints
{"closed": K}. Every socket operation has a timeout, and `--deadline` bounds
the whole run; errors are counted, not fatal, up to a limit.
"""

from __future__ import annotations

import argparse
import json
import resource
import select
import socket
import statistics
import sys
import time
from collections.abc import Callable

SOCKET_TIMEOUT = 5.0


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def one_after_another(
    count: int, deadline: float, connection: Callable[[int], None]
) -> dict[str, object]:
    """`connection(i)` for i in 0..count-1, one after the other, until the
    deadline. A connection that raises OSError is counted in "errors" by the
    exception's name; more than a tenth of `count` (at least 10) ends the loop."""
    errors: dict[str, int] = {}
    done = 0
    start = time.perf_counter()
    for i in range(count):
        if time.monotonic() > deadline:
            errors["deadline"] = errors.get("deadline", 0) + 1
            break
        try:
            connection(i)
            done += 1
        except OSError as exc:
            name = type(exc).__name__
            errors[name] = errors.get(name, 0) + 1
            if sum(errors.values()) > max(10, count // 10):
                break
    seconds = time.perf_counter() - start
    return {"count": done, "seconds": seconds, "rate": done / seconds, "errors": errors}


def connect_loop(host: str, port: int, count: int, deadline: float) -> dict[str, object]:
    """Open and close `count` connections one after the other. Each is a full
    life: connect, our FIN (shutdown), wait for the server's FIN, close. So
    the server has taken every connection down before the next one starts."""
    lives: list[float] = []  # each connection's whole life, ms: a server's pause shows here

    def connection(_i: int) -> None:
        born = time.perf_counter()
        with socket.create_connection((host, port), timeout=SOCKET_TIMEOUT) as sock:
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass
        lives.append((time.perf_counter() - born) * 1000)

    result = one_after_another(count, deadline, connection)
    lives.sort()
    return {
        **result,
        "p99_ms": percentile(lives, 0.99) if lives else None,
        "max_ms": lives[-1] if lives else None,
    }


def fill(
    host: str, port: int, count: int, first_port: int, source_host: str, deadline: float
) -> dict[str, object]:
    """`count` connections to a port whose server closes first (daytime):
    read to its FIN, then close. The server keeps each in TIME_WAIT (RFC 793:
    the side that closes first does); our end, closing second, is gone at
    once. Each from its own source port, first_port, first_port + 1, ...
    (wrapping within 1024..65535), so that no new connection meets one of the
    server's TIME_WAITs; from `source_host` if given, an address of its own,
    so that the ports are not taken by the other clients' TIME_WAITs."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    def connection(i: int) -> None:
        source = 1024 + (first_port - 1024 + i) % (65536 - 1024)
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.settimeout(SOCKET_TIMEOUT)
            sock.bind((source_host, source))
            sock.connect((host, port))
            while sock.recv(4096):
                pass

    return one_after_another(count, deadline, connection)


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted samples."""
    rank = max(0, min(len(samples) - 1, round(fraction * len(samples)) - 1))
    return samples[rank]


def ping_pong(host: str, port: int, count: int, warmup: int, deadline: float) -> dict[str, object]:
    """One connection to an echo server; send 1 byte, wait for it back, `count` times."""
    samples: list[float] = []
    with socket.create_connection((host, port), timeout=SOCKET_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        byte = b"x"
        for i in range(warmup + count):
            if time.monotonic() > deadline:
                break
            t0 = time.perf_counter_ns()
            sock.sendall(byte)
            reply = sock.recv(1)
            t1 = time.perf_counter_ns()
            if reply != byte:
                raise SystemExit(f"pingpong: echo returned {reply!r}")
            if i >= warmup:
                samples.append((t1 - t0) / 1000)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass
    if not samples:
        raise SystemExit("pingpong: no samples before the deadline")
    samples.sort()
    return {
        "count": len(samples),
        "p50_us": percentile(samples, 0.50),
        "p99_us": percentile(samples, 0.99),
        "mean_us": statistics.fmean(samples),
        "max_us": samples[-1],
    }


def send_bulk(host: str, port: int, size: int, deadline: float) -> dict[str, object]:
    """Send `size` zero bytes to a discard server, half-close and wait for its
    FIN: the time from connect to the server's FIN, so every byte was taken."""
    chunk = memoryview(bytes(1 << 20))
    start = time.perf_counter()
    sent = 0
    with socket.create_connection((host, port), timeout=SOCKET_TIMEOUT) as sock:
        while sent < size and time.monotonic() < deadline:
            sent += sock.send(chunk[: min(len(chunk), size - sent)])
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass
    seconds = time.perf_counter() - start
    return {"bytes": sent, "seconds": seconds, "rate_mb_s": sent / seconds / 1e6}


def hold(host: str, port: int, count: int, deadline: float) -> None:
    """Open `count` connections to an echo port, echo one byte on each, report,
    wait for a word on stdin, then close them all."""
    raise_fd_limit()
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            if time.monotonic() > deadline:
                raise SystemExit(f"hold: deadline after {len(socks)} connections")
            socks.append(socket.create_connection((host, port), timeout=SOCKET_TIMEOUT))
        for sock in socks:
            sock.sendall(b"x")
        for sock in socks:
            if sock.recv(1) != b"x":
                raise SystemExit("hold: echo did not answer")
        print(json.dumps({"held": len(socks)}), flush=True)
        remaining = max(0.0, deadline - time.monotonic())
        select.select([sys.stdin], [], [], remaining)  # run.py measures, then says go
    finally:
        for sock in socks:
            sock.close()
    print(json.dumps({"closed": len(socks)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="bench/run.py's clients")
    parser.add_argument("mode", choices=("connect", "pingpong", "hold", "send", "fill"))
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("--warmup", type=int, default=100, help="pingpong: unmeasured rounds")
    parser.add_argument("--first-port", type=int, default=1024, help="fill: the first source port")
    parser.add_argument("--source", default="", help="fill: the source address")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds for the whole run")
    args = parser.parse_args()
    deadline = time.monotonic() + args.deadline
    if args.mode == "connect":
        print(json.dumps(connect_loop(args.host, args.port, args.count, deadline)))
    elif args.mode == "pingpong":
        print(json.dumps(ping_pong(args.host, args.port, args.count, args.warmup, deadline)))
    elif args.mode == "fill":
        print(
            json.dumps(
                fill(args.host, args.port, args.count, args.first_port, args.source, deadline)
            )
        )
    elif args.mode == "send":
        print(json.dumps(send_bulk(args.host, args.port, args.count, deadline)))
    else:
        hold(args.host, args.port, args.count, deadline)


if __name__ == "__main__":
    main()
