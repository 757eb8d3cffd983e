"""`ustack serve` with one more UDP service, "udpprobe" (port 5555): an
application on ustack that, for each datagram "PORT" (or "HOST PORT") it
gets, opens a UDP endpoint of its own connected to the sender's address (or
HOST) and PORT, sends
"from ustack" from it, and answers the first datagram with what that
endpoint heard: "reply DATA" (a datagram back from Linux) or "error NAME"
(error_received: "error ConnectionRefusedError ECONNREFUSED" from Linux's
port unreachable).

    python tests/udp_app.py serve [ustack serve's options]

It is the daemon itself, started through the harness
(`UstackDaemon.start(..., program=...)`), as tests/slow_reader_app.py.
"""

from __future__ import annotations

import asyncio
import errno
import sys
from typing import Any

from ustack import services
from ustack.cli import main
from ustack.datagram import create_datagram_endpoint

PROBE_PORT = 5555
ANSWER_TIMEOUT = 5.0


class Probe(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.answer.done():
            self.answer.set_result(b"reply " + data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            name = errno.errorcode.get(getattr(exc, "errno", 0) or 0, "?")
            self.answer.set_result(f"error {type(exc).__name__} {name}".encode())


class ProbeService(services.UdpService):
    def __init__(self) -> None:
        super().__init__()
        self._tasks: set[asyncio.Task[None]] = set()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        words = data.split()
        host = words[0].decode() if len(words) == 2 else addr[0]
        task = asyncio.get_running_loop().create_task(self._probe(host, int(words[-1]), addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _probe(self, host: str, port: int, addr: Any) -> None:
        assert self.transport is not None
        runner = self.transport.get_extra_info("ustack_runner")
        transport, probe = await create_datagram_endpoint(runner, Probe, remote_addr=(host, port))
        transport.sendto(b"from ustack")
        try:
            answer = await asyncio.wait_for(probe.answer, ANSWER_TIMEOUT)
        except TimeoutError:
            answer = b"timeout"
        transport.close()
        self.reply(answer, addr)


async def _no_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


if __name__ == "__main__":
    services.SERVICES["udpprobe"] = (PROBE_PORT, _no_tcp)
    services.UDP_SERVICES["udpprobe"] = ProbeService
    sys.exit(main(sys.argv[1:]))
