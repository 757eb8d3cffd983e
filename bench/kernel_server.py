"""The reference server for bench/run.py: ustack's own services on the kernel's TCP.

Run (bench/run.py does it, inside its server namespace):
    python bench/kernel_server.py --address 198.19.0.2 --address 2001:2:1::2 --ready-fd FD

The handlers are the very ones `ustack serve` runs (ustack.services: echo 7,
discard 9, daytime 13, http 80 with GET /bytes/N and POST /upload), served here by asyncio
on ordinary kernel sockets. So the application code, the event loop and the
interpreter are the same on both sides of the comparison; only the TCP/IP stack
under them differs. Stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal

from ustack.services import SERVICES

PORTS = {"echo": 7, "discard": 9, "daytime": 13, "http": 80}
BACKLOG = 128  # the same bound as ustack's listeners


async def serve(addresses: list[str], ready_fd: int | None) -> None:
    servers = []
    for name, port in PORTS.items():
        handler = SERVICES[name][1]
        servers.append(
            await asyncio.start_server(
                handler, addresses, port, backlog=BACKLOG, reuse_address=True
            )
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    await stop.wait()
    for server in servers:
        server.close()
    for task in asyncio.all_tasks() - {asyncio.current_task()}:
        task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--address",
        action="append",
        help="an address to listen on, IPv4 or IPv6; several allowed (default 0.0.0.0)",
    )
    parser.add_argument("--ready-fd", type=int, help="write 'ready' to this fd once listening")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.address or ["0.0.0.0"], args.ready_fd))


if __name__ == "__main__":
    main()
