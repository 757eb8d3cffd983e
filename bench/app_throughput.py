"""Application-level throughput: an asyncio stream application on ustack,
beside the same application on the kernel's TCP (issue 18 item 3).

Run as root from the repository, with the venv's Python:
    python bench/app_throughput.py [--mb 100] [--write-size 1024] [--reps 3]

It re-runs itself inside a network namespace of ustack.linux.lab (removed
at the end). There, for each direction:

  in    a Linux client (a thread on a kernel socket, sendall of 1 MB pieces)
        sends --mb MB to an asyncio server that reads with read(65536);
  out   an asyncio client writes --mb MB in --write-size pieces (each
        write() then drain(), as applications do) to a Linux reader thread;

once with the application on ustack (open_stack: a TUN, offloads on) and
once on the kernel's sockets (loopback), and the same application between
two stacks in memory (open_memory_pair, real clock). It prints MB/s and, for
`in`, how many bytes each data_received handed the application (the mean:
whole coalesced buffers, or a segment each time).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable
from collections.abc import Callable
from functools import partial
from typing import Any

from ustack.linux.lab import stoppable

MB = 1_000_000
PORT = 5001
LINUX, STACK = "198.18.0.1", "198.18.0.2"
PIECE = 1 << 20


class Counting(asyncio.StreamReaderProtocol):
    calls = 0
    received = 0

    def data_received(self, data: bytes) -> None:
        Counting.calls += 1
        Counting.received += len(data)
        super().data_received(data)


async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.read(65536):
        pass
    writer.close()


def kernel_sender(host: str, total: int) -> None:
    piece = bytes(PIECE)
    with socket.create_connection((host, PORT)) as sock:
        sent = 0
        while sent < total:
            sock.sendall(piece[: min(PIECE, total - sent)])
            sent += min(PIECE, total - sent)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)


def kernel_reader(server: socket.socket, done: list[int]) -> None:
    conn, _ = server.accept()
    with conn:
        got = 0
        while data := conn.recv(1 << 20):
            got += len(data)
    done.append(got)


async def app_writer(
    connect: Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]],
    total: int,
    size: int,
) -> None:
    reader, writer = await connect()
    piece = bytes(size)
    for _ in range(total // size):
        writer.write(piece)
        await writer.drain()
    writer.write_eof()
    await reader.read()
    writer.close()


async def direction_in(start: Callable[..., Awaitable[Any]], host: str, total: int) -> float:
    """MB/s of a Linux sender into the application's server made by `start`."""
    server = await start(sink)
    Counting.calls = Counting.received = 0
    began = time.perf_counter()
    await asyncio.to_thread(kernel_sender, host, total)
    seconds = time.perf_counter() - began
    server.close()
    return total / seconds / MB


async def direction_out(connect: Any, total: int, size: int) -> float:
    listener = socket.create_server((LINUX, PORT), reuse_port=False)
    done: list[int] = []
    thread = threading.Thread(target=kernel_reader, args=(listener, done))
    thread.start()
    began = time.perf_counter()
    await app_writer(connect, total, size)
    await asyncio.to_thread(thread.join)
    seconds = time.perf_counter() - began
    listener.close()
    if done != [total // size * size]:
        raise RuntimeError(f"the reader got {done}, not {total // size * size} bytes")
    return total / seconds / MB


async def in_namespace(args: argparse.Namespace) -> None:
    import ustack
    from ustack import api

    total = args.mb * MB
    results: dict[str, list[float]] = {}
    sizes: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)
        if name.endswith(" in") and Counting.calls:
            sizes.setdefault(name, []).append(Counting.received / Counting.calls)

    original = api.asyncio.StreamReaderProtocol
    api.asyncio.StreamReaderProtocol = Counting  # type: ignore[misc]  # (the stack's servers)
    try:
        async with ustack.open_stack(address6=None) as stack:
            runner = stack._running()
            for _ in range(args.reps):

                async def start_ustack(cb: Any) -> Any:
                    return await api.start_server(runner, cb, PORT)

                note("ustack in", await direction_in(start_ustack, STACK, total))

                def connect_ustack() -> Any:
                    return api.open_connection(runner, LINUX, PORT)

                note("ustack out", await direction_out(connect_ustack, total, args.write_size))

                async def start_kernel(cb: Any) -> Any:
                    loop = asyncio.get_running_loop()
                    return await loop.create_server(
                        lambda: Counting(asyncio.StreamReader(limit=65536), cb), "127.0.0.1", PORT
                    )

                note("kernel in", await direction_in(start_kernel, "127.0.0.1", total))
                note(
                    "kernel out",
                    await direction_out(
                        lambda: asyncio.open_connection(LINUX, PORT), total, args.write_size
                    ),
                )
                async with ustack.open_memory_pair(record=False) as pair:
                    a, b = pair
                    server = await b.start_server(sink, port=PORT)
                    Counting.calls = Counting.received = 0
                    began = time.perf_counter()
                    await app_writer(partial(a.open_connection, STACK, PORT), total, 65536)
                    note("memory pair in", total / (time.perf_counter() - began) / MB)
                    server.close()
    finally:
        api.asyncio.StreamReaderProtocol = original  # type: ignore[misc]
    print(f"{args.mb} MB, writes of {args.write_size} B (memory pair: 65536), {args.reps} reps")
    for name, values in results.items():
        line = f"{name:16} MB/s median {statistics.median(values):8.1f}"
        line += f" [{min(values):.1f}-{max(values):.1f}]"
        if name in sizes:
            line += f"  bytes per data_received {statistics.median(sizes[name]):9.0f}"
        print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--write-size", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        asyncio.run(in_namespace(args))
        return 0
    if os.geteuid() != 0:
        parser.error("needs root (a network namespace)")
    from ustack.linux.lab import netns
    from ustack.linux.lab import remove_stale_namespaces

    remove_stale_namespaces()
    with netns("ustack-t") as ns:
        argv = [sys.executable, __file__, "--inside", *sys.argv[1:]]
        return subprocess.run(ns.command(*argv), check=False).returncode


if __name__ == "__main__":
    inside = "--inside" in sys.argv  # (the run itself, in the namespace)
    sys.exit(main() if inside else stoppable(main, "app_throughput"))
