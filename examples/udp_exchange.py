"""A UDP exchange (RFC 768) between ustack and a Linux peer, IPv4 and IPv6.

Run it inside `ustack lab` (as root): `ustack lab shell`, start a Linux
peer (`nc -u -l 9999`, or any UDP socket on port 9999), then
`python examples/udp_exchange.py`. It opens its own TUN (tun1, 198.18.1.2 /
2001:2:0:1::2) beside the lab's daemon and sends one datagram to Linux at
198.18.1.1 and one at 2001:2:0:1::1, then prints the answer each peer sends
back within `--wait` seconds (`nc -u -l` answers with the line you type).
"""

from __future__ import annotations

import argparse
import asyncio

from _second_device import LINUX
from _second_device import LINUX6
from _second_device import open_second_device


class Exchange(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        # A connected endpoint hears ICMP port unreachable: nobody on that port.
        if not self.answer.done():
            self.answer.set_exception(exc)


async def main(port: int, wait: float) -> None:
    async with open_second_device() as stack:
        for name, linux in (("IPv4", LINUX), ("IPv6", LINUX6)):
            transport, exchange = await stack.create_datagram_endpoint(
                Exchange, remote_addr=(linux, port)
            )
            transport.sendto(f"hello over {name} from ustack\n".encode())
            print(f"sent to {linux} port {port} from {transport.get_extra_info('sockname')}")
            try:
                print(f"answer: {await asyncio.wait_for(exchange.answer, wait)!r}", flush=True)
            except TimeoutError:
                print("no answer", flush=True)
            except ConnectionRefusedError:
                print("refused: nothing listens there (ICMP port unreachable)", flush=True)
            transport.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("--wait", type=float, default=5.0, help="seconds to wait for an answer")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.wait))
