"""Two ustack stacks talking in memory, on the virtual clock: a handshake,
some data, the four-way close and TIME_WAIT, then the ladder of the session.

Runs anywhere, no root and no TUN: `python examples/memory_ladder.py`.
The virtual clock moves from deadline to deadline, so TIME_WAIT's 60 s take
no real time and every run prints the same session (but for the client's
random port).
"""

from __future__ import annotations

import asyncio

import ustack
from ustack.daemon.running import RunningStack
from ustack.study.ladder import render_ascii


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.read())  # everything, to the client's FIN
    writer.close()  # then our own FIN


async def client(a: RunningStack) -> None:
    reader, writer = await a.open_connection("198.18.0.2", 7)  # SYN, SYN-ACK, ACK
    writer.write(b"hello, ladder")
    writer.write_eof()  # the client's FIN: it closes first, so it ends in TIME_WAIT
    print("client got", await reader.read())
    writer.close()


async def main() -> None:
    async with ustack.open_memory_pair(clock="virtual") as pair:
        a, b = pair  # a at 198.18.0.1, b at 198.18.0.2
        await b.start_server(echo, port=7)
        await pair.run(client(a))
        print(f"t={pair.now:.3f} s, the client is", [row["state"] for row in a.connections()])
        await pair.run_until_idle()  # through TIME_WAIT (2MSL)
        print(f"t={pair.now:.3f} s, the client is", [row["state"] for row in a.connections()])
        # The client's view: every segment and state; the other end is ustack too.
        print(render_ascii(a.events, peer_name="ustack b"))


if __name__ == "__main__":
    asyncio.run(main())
