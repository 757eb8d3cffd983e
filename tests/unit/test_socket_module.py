"""ustack.socket on two stacks talking in memory (ustack.socket.memory_pair,
one background thread with its own loop): the standard socket calls from
ordinary blocking code, in both families, stream and datagram. Each wait is
bounded by a socket timeout or a thread join: a hang fails, never blocks."""

from __future__ import annotations

import errno
import http.client
import http.server
import socket as kernel_socket
import struct
import threading
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import pytest

from ustack import socket as us

A4, B4 = "198.18.0.1", "198.18.0.2"
A6, B6 = "2001:2::1", "2001:2::2"
STEP = 5.0  # seconds any one blocking call may take here


@pytest.fixture
def pair() -> Iterator[us.SocketPair]:
    with us.memory_pair() as sockets:
        yield sockets


@pytest.fixture(params=[(us.AF_INET, B4), (us.AF_INET6, B6)], ids=["ipv4", "ipv6"])
def family(request: pytest.FixtureRequest) -> tuple[int, str]:
    family_and_host: tuple[int, str] = request.param
    return family_and_host


def in_thread(function: Callable[[], Any]) -> Callable[[], Any]:
    """Run `function` on a thread now; the returned call joins it and gives
    its result (or raises what it raised)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def result() -> Any:
        thread.join(STEP * 2)
        assert not thread.is_alive(), "the thread is still blocked"
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    return result


def server_on(stack: us.SocketStack, family: int, port: int) -> us.UstackSocket:
    server = stack.create_server(("", port), family=family)
    server.settimeout(STEP)
    return server


def test_stream_echo_with_makefile_readline_and_half_close(
    pair: us.SocketPair, family: tuple[int, str]
) -> None:
    kind, host = family
    server = server_on(pair.b, kind, 7000)

    def serve() -> tuple[bytes, bytes, Any]:
        conn, peer = server.accept()
        with conn:
            conn.settimeout(STEP)
            lines = conn.makefile("rb")
            first = lines.readline()
            conn.sendall(first.upper())
            rest = lines.read()  # to the client's half-close (SHUT_WR)
            conn.sendall(b"got %d" % len(rest))
            lines.close()
        return first, rest, peer

    served = in_thread(serve)
    client = pair.a.create_connection((host, 7000), timeout=STEP)
    with client:
        client.sendall(b"hello line\n")
        assert client.makefile("rb").readline() == b"HELLO LINE\n"
        client.sendall(b"x" * 300_000)
        client.shutdown(us.SHUT_WR)
        reply = b""
        while chunk := client.recv(4096):
            reply += chunk
        assert reply == b"got 300000"
        assert client.recv(10) == b""  # the server's FIN: end of stream, again
        first, rest, peer = served()
        assert (first, len(rest)) == (b"hello line\n", 300_000)
        assert client.getsockname()[:2] == peer[:2]
        assert client.getpeername()[:2] == (host, 7000)
        assert client.family == kind and client.type == us.SOCK_STREAM
    server.close()


def test_text_makefile_and_recv_into(pair: us.SocketPair) -> None:
    server = server_on(pair.b, us.AF_INET, 7001)
    served = in_thread(lambda: server.accept()[0])
    client = pair.a.create_connection((B4, 7001), timeout=STEP)
    conn = served()
    conn.settimeout(STEP)
    writer = client.makefile("w", encoding="utf-8")
    writer.write("línea uno\nline two\n")
    writer.flush()
    reader = conn.makefile("r", encoding="utf-8", newline="\n")
    assert reader.readline() == "línea uno\n"
    assert reader.readline() == "line two\n"
    client.sendall(b"abcdef")
    buffer = bytearray(4)
    assert conn.recv_into(buffer) == 4 and buffer == b"abcd"
    assert conn.recv_into(buffer, 2) == 2 and buffer[:2] == b"ef"
    for thing in (writer, reader, client, conn, server):
        thing.close()


def test_datagrams_both_families(pair: us.SocketPair, family: tuple[int, str]) -> None:
    kind, host = family
    receiver = pair.b.socket(kind, us.SOCK_DGRAM)
    receiver.bind(("", 9000))
    receiver.settimeout(STEP)
    sender = pair.a.socket(kind, us.SOCK_DGRAM)
    sender.settimeout(STEP)
    assert sender.sendto(b"ping", (host, 9000)) == 4
    data, address = receiver.recvfrom(100)
    assert data == b"ping"
    assert address[:2] == sender.getsockname()[:2] or address[1] == sender.getsockname()[1]
    receiver.sendto(b"PONG", address)
    buffer = bytearray(10)
    size, source = sender.recvfrom_into(buffer)
    assert (bytes(buffer[:size]), source[:2]) == (b"PONG", (host, 9000))
    # A connected socket: send/recv, and a datagram longer than recv's size is cut.
    sender.connect((host, 9000))
    sender.send(b"0123456789")
    assert receiver.recv(4) == b"0123"
    assert sender.getpeername()[:2] == (host, 9000)
    receiver.close()
    sender.close()


def test_connected_datagram_hears_port_unreachable(pair: us.SocketPair) -> None:
    sock = pair.a.socket(us.AF_INET, us.SOCK_DGRAM)
    sock.settimeout(STEP)
    sock.connect((B4, 9999))  # nobody there: ICMP port unreachable comes back
    sock.send(b"anyone?")
    with pytest.raises(ConnectionRefusedError):
        sock.recv(100)
    sock.close()


def test_timeouts_and_non_blocking(pair: us.SocketPair) -> None:
    server = pair.b.create_server(("", 7002))
    server.setblocking(False)
    assert server.getblocking() is False and server.gettimeout() == 0.0
    with pytest.raises(BlockingIOError) as blocked:
        server.accept()
    assert blocked.value.errno == errno.EAGAIN
    server.settimeout(0.2)
    with pytest.raises(us.timeout, match="timed out"):
        server.accept()
    server.settimeout(STEP)
    served = in_thread(lambda: server.accept()[0])
    client = pair.a.create_connection((B4, 7002), timeout=0.2)
    assert client.gettimeout() == 0.2
    with pytest.raises(kernel_socket.timeout):  # the same class: TimeoutError
        client.recv(10)
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(10)
    conn = served()
    conn.sendall(b"now")
    client.settimeout(STEP)
    assert client.recv(10) == b"now"
    for sock in (client, conn, server):
        sock.close()


def test_refused_reset_broken_pipe_and_address_in_use(pair: us.SocketPair) -> None:
    with pytest.raises(ConnectionRefusedError) as refused:
        pair.a.create_connection((B4, 7999), timeout=STEP)
    assert refused.value.errno == errno.ECONNREFUSED
    sock = pair.a.socket()
    assert sock.connect_ex((B4, 7999)) == errno.ECONNREFUSED
    sock.close()
    server = server_on(pair.b, us.AF_INET, 7003)
    with pytest.raises(OSError) as in_use:
        pair.b.create_server(("", 7003))
    assert in_use.value.errno == errno.EADDRINUSE
    udp = pair.b.socket(us.AF_INET, us.SOCK_DGRAM)
    udp.bind(("", 9001))
    other = pair.b.socket(us.AF_INET, us.SOCK_DGRAM)
    with pytest.raises(OSError) as udp_in_use:
        other.bind(("", 9001))
    assert udp_in_use.value.errno == errno.EADDRINUSE
    # SO_LINGER 0: close() sends an RST; the peer's recv raises ECONNRESET,
    # then its sends fail with EPIPE, as the kernel's.
    served = in_thread(lambda: server.accept()[0])
    client = pair.a.create_connection((B4, 7003), timeout=STEP)
    conn = served()
    conn.settimeout(STEP)
    client.setsockopt(us.SOL_SOCKET, us.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    with pytest.raises(ConnectionResetError) as reset:
        conn.recv(10)
    assert reset.value.errno == errno.ECONNRESET
    with pytest.raises(BrokenPipeError):
        conn.send(b"too late")
    assert conn.recv(10) == b""
    for thing in (conn, server, udp, other):
        thing.close()
    with pytest.raises(OSError) as closed:
        conn.recv(10)
    assert closed.value.errno == errno.EBADF
    with pytest.raises(OSError) as unconnected:
        pair.a.socket().getpeername()
    assert unconnected.value.errno == errno.ENOTCONN


def test_close_from_another_thread_wakes_accept_and_recv(pair: us.SocketPair) -> None:
    server = pair.b.create_server(("", 7004))  # blocking, no timeout
    accepting = in_thread(server.accept)
    server.close()
    with pytest.raises(OSError) as woken:
        accepting()
    assert woken.value.errno == errno.EBADF
    server = pair.b.create_server(("", 7005))
    served = in_thread(lambda: server.accept()[0])
    client = pair.a.create_connection((B4, 7005))
    conn = served()
    receiving = in_thread(lambda: client.recv(10))
    client.close()
    with pytest.raises(OSError) as woken_recv:
        receiving()
    assert woken_recv.value.errno == errno.EBADF
    # shutdown(SHUT_RD) from another thread: the blocked recv returns b"".
    receiving = in_thread(lambda: conn.recv(10))
    conn.shutdown(us.SHUT_RD)
    assert receiving() == b""
    conn.close()
    server.close()


def test_options_read_back(pair: us.SocketPair) -> None:
    sock = pair.a.socket(us.AF_INET6, us.SOCK_STREAM)
    assert sock.getsockopt(us.SOL_SOCKET, us.SO_TYPE) == us.SOCK_STREAM
    for level, name in (
        (us.SOL_SOCKET, us.SO_REUSEADDR),
        (us.IPPROTO_TCP, us.TCP_NODELAY),
        (us.SOL_SOCKET, us.SO_KEEPALIVE),
        (us.IPPROTO_IPV6, us.IPV6_V6ONLY),
    ):
        assert sock.getsockopt(level, name) == 0
        sock.setsockopt(level, name, 1)
        assert sock.getsockopt(level, name) == 1
    sock.setsockopt(us.SOL_SOCKET, us.SO_RCVBUF, 65536)
    assert sock.getsockopt(us.SOL_SOCKET, us.SO_RCVBUF) == 131072  # doubled, as Linux
    assert sock.getsockopt(us.SOL_SOCKET, us.SO_SNDBUF) > 0
    sock.setsockopt(us.SOL_SOCKET, us.SO_LINGER, struct.pack("ii", 1, 0))
    assert struct.unpack("ii", sock.getsockopt(us.SOL_SOCKET, us.SO_LINGER, 8)) == (1, 0)
    with pytest.raises(OSError) as unknown:
        sock.getsockopt(us.SOL_SOCKET, kernel_socket.SO_PRIORITY)
    assert unknown.value.errno == errno.ENOPROTOOPT
    sock.close()
    # On a connection: TCP_NODELAY reaches the stack's connection.
    server = server_on(pair.b, us.AF_INET, 7006)
    served = in_thread(lambda: server.accept()[0])
    client = pair.a.create_connection((B4, 7006), timeout=STEP)
    client.setsockopt(us.IPPROTO_TCP, us.TCP_NODELAY, 1)
    client.setsockopt(us.SOL_SOCKET, us.SO_KEEPALIVE, 1)
    assert client.getsockopt(us.IPPROTO_TCP, us.TCP_KEEPIDLE) == 7200
    conn = served()
    for thing in (client, conn, server):
        thing.close()


def test_ipv6_only_server_does_not_hear_ipv4(pair: us.SocketPair) -> None:
    only6 = pair.b.create_server(("", 7007), family=us.AF_INET6)  # V6ONLY as create_server sets
    with pytest.raises(ConnectionRefusedError):
        pair.a.create_connection((B4, 7007), timeout=STEP)
    only6.close()
    both = pair.b.create_server(("", 7008), family=us.AF_INET6, dualstack_ipv6=True)
    both.settimeout(STEP)
    for host, expected in ((B4, us.AF_INET), (B6, us.AF_INET6)):
        served = in_thread(both.accept)
        client = pair.a.create_connection((host, 7008), timeout=STEP)
        conn, peer = served()
        assert conn.family == expected and peer[0] == (A4 if host == B4 else A6)
        client.close()
        conn.close()
    both.close()


def test_http_client_unchanged_after_install(pair: us.SocketPair) -> None:
    """The one line: http.client (which calls socket.create_connection)
    then fetches over ustack from a blocking HTTP server on the other stack."""
    body = b"served over ustack\n"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = server_on(pair.b, us.AF_INET, 8080)

    def serve_one() -> None:
        conn, peer = server.accept()
        conn.settimeout(STEP)
        Handler(conn, peer, None)  # type: ignore[arg-type]  (socketserver's request)
        conn.close()

    served = in_thread(serve_one)
    us.install(pair.a)
    try:
        client = http.client.HTTPConnection(B4, 8080, timeout=STEP)
        client.request("GET", "/")
        response = client.getresponse()
        assert (response.status, response.read()) == (200, body)
        assert isinstance(client.sock, us.UstackSocket) or client.sock is None
        client.close()
    finally:
        us.uninstall()
    assert kernel_socket.create_connection.__module__ == "socket"
    served()
    server.close()


def test_the_one_line_needs_only_import_ustack() -> None:
    import ustack

    assert ustack.socket is us and callable(ustack.socket.install)


def test_non_blocking_connect_is_in_progress(pair: us.SocketPair) -> None:
    server = server_on(pair.b, us.AF_INET6, 7009)
    client = pair.a.socket(us.AF_INET6, us.SOCK_STREAM)
    client.setblocking(False)
    with pytest.raises(BlockingIOError) as in_progress:
        client.connect((B6, 7009))
    assert in_progress.value.errno == errno.EINPROGRESS
    conn, peer = server.accept()  # the handshake ended without the client waiting
    assert peer[0] == A6
    for sock in (client, conn, server):
        sock.close()
