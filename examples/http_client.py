"""An HTTP/1.1 client whose TCP is ustack: asyncio streams over
stack.open_connection, fetching a URL from a Linux server.

Run it inside `ustack lab` (as root): `ustack lab shell`, start a server
(`python -m http.server 8000 --bind :: &`), then
`python examples/http_client.py http://198.18.1.1:8000/` (or
`http://[2001:2:0:1::1]:8000/`). It opens its own TUN (tun1, 198.18.1.2 /
2001:2:0:1::2; Linux at 198.18.1.1 / 2001:2:0:1::1) beside the lab's daemon.
Prints the status line, the headers, the body length and the connection's
smoothed RTT and congestion window.
"""

from __future__ import annotations

import argparse
import asyncio
from urllib.parse import urlsplit

from _second_device import open_second_device


async def fetch(url: str) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "198.18.1.1", parts.port or 80
    async with open_second_device() as stack:
        reader, writer = await stack.open_connection(host, port)
        conn = writer.get_extra_info("connection")  # the ustack TcpConnection
        authority = f"[{host}]" if ":" in host else host
        request = (
            f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {authority}:{port}\r\n"
            "Connection: close\r\n\r\n"  # the server closes: the body ends at its FIN
        )
        writer.write(request.encode("ascii"))
        status = (await reader.readline()).decode("latin-1").rstrip()
        print(status)
        while (line := await reader.readline()) not in (b"\r\n", b""):
            print(line.decode("latin-1").rstrip())
        body = await reader.read()  # to the server's FIN
        print(f"body: {len(body)} bytes")
        print(f"srtt {conn.srtt * 1000:.3f} ms, cwnd {conn.cwnd} bytes, state {conn.state.name}")
        writer.close()
        await writer.wait_closed()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="http://198.18.1.1:8000/")
    asyncio.run(fetch(parser.parse_args().url))
