"""A TCP echo server whose TCP is ustack, for `nc` (IPv4 and IPv6).

Run it inside `ustack lab` (as root): `ustack lab shell`, then
`python examples/echo_server.py` and, in the same namespace,
`nc 198.18.1.2 7` or `nc 2001:2:0:1::2 7`. It opens its own TUN (tun1,
198.18.1.2 / 2001:2:0:1::2) beside the lab's daemon on tun0, and serves
until Ctrl-C, or `--count N` connections.
"""

from __future__ import annotations

import argparse
import asyncio

from _second_device import STACK
from _second_device import STACK6
from _second_device import open_second_device


async def main(count: int | None, port: int) -> None:
    served = 0
    done = asyncio.Event()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        peer = writer.get_extra_info("peername")
        echoed = 0
        while data := await reader.read(65536):  # until the client's FIN
            writer.write(data)
            await writer.drain()  # flow control: wait while the peer's window is full
            echoed += len(data)
        writer.close()  # our FIN: the four-way close
        print(f"echoed {echoed} bytes to {peer[0]} port {peer[1]}", flush=True)
        served += 1
        if count is not None and served >= count:
            done.set()

    async with open_second_device() as stack:
        await stack.start_server(echo, port=port)  # no host: hears both families
        print(f"echo on {STACK} and {STACK6} port {port}", flush=True)
        await done.wait()  # forever without --count (Ctrl-C ends asyncio.run)
        await asyncio.sleep(0)  # the last handler's close goes out before the stack stops


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, help="stop after this many connections")
    parser.add_argument("--port", type=int, default=7)
    args = parser.parse_args()
    try:
        asyncio.run(main(args.count, args.port))
    except KeyboardInterrupt:
        pass
