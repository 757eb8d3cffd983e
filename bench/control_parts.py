"""How long one part of the control socket's `connections` reply holds the
event loop: N established connections in an in-process Stack (built by the
memory test's hand-made peer), each part of CHUNK_ROWS rows made and
JSON-encoded as the daemon does, plus the table snapshot and `stats`' walk.
No network, no root:  python -m bench.control_parts [--connections 10000]"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.hand_peer import Server
from ustack.cli.args import bounded_int
from ustack.daemon import connection_row
from ustack.linux.control import CHUNK_ROWS
from ustack.linux.control import PROTOCOL_VERSION
from ustack.linux.control import encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=bounded_int(1, 200_000), default=10_000)
    args = parser.parse_args()
    server = Server()
    for port in range(10_000, 10_000 + args.connections):
        server.handshake(port & 0xFFFF or 1)
    tcp = server.stack.tcp
    start = time.perf_counter()
    table = list(tcp.connections.items())
    snapshot = time.perf_counter() - start
    parts = []
    for first in range(0, len(table), CHUNK_ROWS):
        start = time.perf_counter()
        rows = [connection_row(tcp.address, key, conn, 0.0)
                for key, conn in table[first : first + CHUNK_ROWS]]  # fmt: skip
        encode({"ok": True, "version": PROTOCOL_VERSION, "more": True, "connections": rows})
        parts.append(time.perf_counter() - start)
    start = time.perf_counter()
    tcp.queued()
    walk = time.perf_counter() - start
    print(f"{len(table)} connections, {len(parts)} parts of {CHUNK_ROWS} rows")
    median, longest = statistics.median(parts) * 1e3, max(parts) * 1e3
    print(f"one part: median {median:.2f} ms, max {longest:.2f} ms")
    print(f"table snapshot (first part): {snapshot * 1e3:.2f} ms; stats' walk: {walk * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
