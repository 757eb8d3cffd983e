"""`ustack serve` with one more service, "hold" (port 5001): an application
that accepts and does not read, so its receive window closes, until the
daemon process gets SIGUSR1; then it reads everything up to the peer's FIN
and answers "LENGTH SHA256\\n", as POST /upload does.

    python tests/slow_reader_app.py serve [ustack serve's options] --services hold

It is the daemon itself (the same options, control socket and trace), so
the tests start it through the harness (`UstackDaemon.start(..., program=...)`).
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sys

from ustack import services
from ustack.cli import main

HOLD_PORT = 5001


async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    release = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, release.set)
    await release.wait()  # not a byte read until then: the stack's window closes
    digest, length = hashlib.sha256(), 0
    while chunk := await reader.read(services.CHUNK):
        digest.update(chunk)
        length += len(chunk)
    writer.write(f"{length} {digest.hexdigest()}\n".encode())
    await writer.drain()
    writer.close()
    await writer.wait_closed()


if __name__ == "__main__":
    services.SERVICES["hold"] = (HOLD_PORT, hold)
    sys.exit(main(sys.argv[1:]))
