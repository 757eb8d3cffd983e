"""A tests-only harness: the dual Stack on a real TUN, inside the namespace
it is started in, driven by asyncio (StackRunner) with the echo service on
port 7 (ustack.api), without the daemon: the library's IPv6 path alone
(the daemon's is tested by test_ipv6_link.py and the `family` tests). It
configures tun0 with the Linux side's 2001:2::1/64 and 198.18.0.1/24,
prints "ready", answers what comes until SIGTERM, then prints its counters
as JSON.

With `--connect HOST PORT`, the stack also opens a connection to HOST:PORT
(ustack.api.open_connection) once it is ready, sends "from ustack\\n",
half-closes, and prints what came back as one line `reply: ...`.

Usage (inside a namespace only): python ipv6_harness.py [--connect HOST PORT]
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import subprocess
import sys

import pytun

from ustack import services
from ustack.api import open_connection
from ustack.api import start_server
from ustack.runner import StackRunner
from ustack.stack import Stack

LINUX_SIDE = ("2001:2::1/64", "198.18.0.1/24")
STACK = int(ipaddress.IPv6Address("2001:2::2"))
STACK_V4 = int(ipaddress.IPv4Address("198.18.0.2"))


async def serve(connect: tuple[str, int] | None) -> dict[str, int]:
    tun = pytun.TunTapDevice(name="tun0", flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
    # nodad: the address is usable at once, no 1 s of tentative state.
    subprocess.run(["ip", "-6", "addr", "add", LINUX_SIDE[0], "dev", "tun0", "nodad"], check=True)
    subprocess.run(["ip", "addr", "add", LINUX_SIDE[1], "dev", "tun0"], check=True)
    subprocess.run(["ip", "link", "set", "tun0", "mtu", "1500", "up"], check=True)
    fd = tun.fileno()
    os.set_blocking(fd, False)

    def transmit(packet: bytes | bytearray, gso_size: int = 0) -> bool:
        os.write(fd, packet)
        return True

    loop = asyncio.get_running_loop()
    stack = Stack(STACK_V4, transmit, address6=STACK)
    runner = StackRunner(stack, loop)

    def readable() -> None:
        for _ in range(64):
            try:
                packet = os.read(fd, 65535)
            except BlockingIOError:
                break
            runner.receive(packet)
        runner.done()

    loop.add_reader(fd, readable)
    await start_server(runner, services.echo, 7)
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    print("ready", flush=True)
    if connect is not None:
        reader, writer = await open_connection(runner, *connect)
        writer.write(b"from ustack\n")
        writer.write_eof()
        reply = await asyncio.wait_for(reader.read(), 10)
        text = " ".join(reply.decode().split())  # one line
        print(f"reply: {text} peer {writer.get_extra_info('peername')}", flush=True)
        writer.close()
    await stopping.wait()
    return dict(stack.counters)


def main() -> None:
    connect = None
    if sys.argv[1:2] == ["--connect"]:
        connect = (sys.argv[2], int(sys.argv[3]))
    counters = asyncio.run(serve(connect))
    print(json.dumps(counters), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
