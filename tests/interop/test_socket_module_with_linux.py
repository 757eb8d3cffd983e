"""ustack.socket on a real TUN in a lab namespace, against Linux's own tools:
http.client, unchanged but for `ustack.socket.install()`, fetching from
`python -m http.server`; a blocking echo server on ustack answering `nc`;
a UDP exchange with `nc -u`. One Python program runs inside the namespace
(the TUN and the Linux tools must be there) and prints what it saw as JSON."""

from __future__ import annotations

import json
from typing import Any

from ustack.linux.lab import Family
from ustack.linux.lab import Netns

RUN_TIMEOUT = 90.0

PROGRAM = r"""
import http.client, json, subprocess, sys, tempfile, threading
import ustack.socket

STACK, LINUX, FAMILY = sys.argv[1], sys.argv[2], sys.argv[3]
AF = getattr(ustack.socket, FAMILY)
STEP = 10.0
seen = {}

ustack.socket.start()  # tun0: the stack at 198.18.0.2 / 2001:2::2, Linux at .1 / ::1

# 1. http.client, unchanged, after the one line.
ustack.socket.install()
with tempfile.TemporaryDirectory() as root:
    with open(root + "/hello.txt", "wb") as file:
        file.write(b"hello from the kernel's http.server\n" * 1000)
    server = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "--bind", LINUX, "--directory", root, "8000"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    try:
        server.stdout.readline()  # "Serving HTTP on ...": it listens
        connection = http.client.HTTPConnection(LINUX, 8000, timeout=STEP)
        connection.request("GET", "/hello.txt")
        seen["http_socket"] = type(connection.sock).__name__
        seen["http_sockname"] = list(connection.sock.getsockname()[:2])
        response = connection.getresponse()
        body = response.read()
        seen["http"] = [response.status, len(body), body[:36].decode()]
        connection.close()
    finally:
        server.terminate()
        server.wait()

# 2. A blocking echo server on ustack (a plain accept loop), answering nc.
listener = ustack.socket.create_server(("", 7000), family=AF)
listener.settimeout(STEP)

def echo_one():
    conn, peer = listener.accept()
    seen["echo_peer"] = peer[0]
    with conn:
        conn.settimeout(STEP)
        while data := conn.recv(65536):
            conn.sendall(data)

echoing = threading.Thread(target=echo_one)
echoing.start()
text = b"".join(b"line %d of the echo test\n" % i for i in range(2000))
nc = subprocess.run(["nc", "-N", "-w", "5", STACK, "7000"], input=text, capture_output=True,
                    timeout=STEP * 3)
echoing.join(STEP)
seen["echo_same"] = nc.stdout == text
seen["echo_bytes"] = len(nc.stdout)
listener.close()

# 3. UDP with nc -u: ustack's socket answers nc's datagram.
udp = ustack.socket.socket(AF, ustack.socket.SOCK_DGRAM)
udp.bind(("", 9000))
udp.settimeout(STEP)

def answer_one():
    data, address = udp.recvfrom(2048)
    seen["udp_in"] = data.decode()
    udp.sendto(data.upper(), address)

answering = threading.Thread(target=answer_one)
answering.start()
nc = subprocess.run(["nc", "-u", "-w", "2", STACK, "9000"], input=b"hello over udp\n",
                    capture_output=True, timeout=STEP * 3)
answering.join(STEP)
seen["udp_out"] = nc.stdout.decode()
udp.close()

ustack.socket.stop()
print(json.dumps(seen))
"""


def run_in(ns: Netns, family: Family) -> dict[str, Any]:
    result = ns.python(
        PROGRAM, family.stack, family.linux, family.socket_family, timeout=RUN_TIMEOUT
    )
    seen: dict[str, Any] = json.loads(result.stdout.decode().strip().splitlines()[-1])
    return seen


def test_linux_tools_through_the_socket_module(ns: Netns, family: Family) -> None:
    seen = run_in(ns, family)
    assert seen["http"] == [200, 36_000, "hello from the kernel's http.server\n"]
    assert seen["http_socket"] == "UstackSocket"
    assert seen["http_sockname"][0] == family.stack  # the request left from ustack's address
    assert seen["echo_peer"] == family.linux
    assert seen["echo_same"] is True and seen["echo_bytes"] == len(
        b"".join(b"line %d of the echo test\n" % i for i in range(2000))
    )
    assert seen["udp_in"] == "hello over udp\n"
    assert seen["udp_out"] == "HELLO OVER UDP\n"
