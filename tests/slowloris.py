"""Slowloris: N connections to the HTTP service, each sending a partial
request head one byte every DRIP seconds, never its end. Prints JSON: how
many the server closed (EOF or reset seen), when (seconds from the start), and
what they were answered (the status line, if any), within WATCH seconds.

    python tests/slowloris.py HOST N DRIP WATCH
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import time


def main() -> None:
    host, count, drip, watch = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    selector = selectors.DefaultSelector()
    start = time.monotonic()
    open_socks: dict[socket.socket, bytes] = {}
    for _ in range(count):
        sock = socket.create_connection((host, 80), timeout=5)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        open_socks[sock] = b""
    closed: list[float] = []
    answers: dict[str, int] = {}
    next_drip = time.monotonic() + drip
    while open_socks and time.monotonic() - start < watch:
        for key, _ in selector.select(timeout=max(0.0, min(next_drip - time.monotonic(), 0.2))):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(4096)
            except ConnectionResetError:
                data = b""
            if data:
                open_socks[sock] += data
                continue
            status = open_socks.pop(sock).split(b"\r\n")[0].decode() or "(nothing)"
            answers[status] = answers.get(status, 0) + 1
            closed.append(round(time.monotonic() - start, 2))
            selector.unregister(sock)
            sock.close()
        if time.monotonic() >= next_drip:
            next_drip += drip
            for sock in open_socks:
                try:
                    sock.send(b"a")
                except OSError:
                    pass  # closed: the read side will say so
    print(json.dumps({"opened": count, "closed": len(closed), "first": min(closed, default=None),
                      "last": max(closed, default=None), "answers": answers}))  # fmt: skip
    for sock in open_socks:
        sock.close()


if __name__ == "__main__":
    main()
