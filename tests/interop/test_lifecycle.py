"""Real Linux clients and servers against the real daemon: every way a
connection opens and closes, checked on the bytes and on the states the
stack went through (from its trace), and the table empty afterwards."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from tools.losstest import pattern_sha256
from ustack.linux.lab import IPV4
from ustack.linux.lab import LINUX_ADDRESS
from ustack.linux.lab import STACK_ADDRESS
from ustack.linux.lab import Family
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon

PASSIVE_CLOSE = ["LISTEN", "SYN_RECEIVED", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"]
ACTIVE_CLOSE = ["LISTEN", "SYN_RECEIVED", "ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2",
                "TIME_WAIT", "CLOSED"]  # fmt: skip
ACTIVE_CLOSE_COMBINED = ["LISTEN", "SYN_RECEIVED", "ESTABLISHED", "FIN_WAIT_1", "TIME_WAIT",
                         "CLOSED"]  # fmt: skip


def download_checked(ns: Netns, daemon: UstackDaemon, size: int, family: Family = IPV4) -> None:
    """curl /bytes/SIZE from the stack, check every byte against the pattern
    the stack serves, and wait until the connection is gone."""
    result = ns.run(
        "sh", "-c", f"curl -sS -g --max-time 120 '{family.url(f'/bytes/{size}')}' | sha256sum",
        timeout=150, check=True,
    )  # fmt: skip
    assert result.stdout.split()[0].decode() == pattern_sha256(size)
    daemon.wait_until_no_connections()


def test_curl_small_page(ns: Netns, daemon: UstackDaemon, family: Family) -> None:
    result = ns.run("curl", "-sS", "-g", "--max-time", "10", family.url(), check=True)
    assert b"Hello from ustack" in result.stdout
    daemon.wait_until_no_connections()
    # curl closes first: Linux holds TIME_WAIT, we go CLOSE_WAIT -> LAST_ACK.
    assert daemon.lives(local_port=80) == [PASSIVE_CLOSE]


def test_curl_50_megabytes_every_byte_checked(
    ns: Netns, daemon: UstackDaemon, family: Family
) -> None:
    download_checked(ns, daemon, 50 * 1024 * 1024, family)
    assert daemon.lives(local_port=80) == [PASSIVE_CLOSE]


def test_curl_upload_20_megabytes(
    ns: Netns, daemon: UstackDaemon, tmp_path: Path, family: Family
) -> None:
    body = tmp_path / "upload.bin"
    body.write_bytes(bytes((i * 7 + i // 251) % 256 for i in range(20 * 1024 * 1024)))
    result = ns.run(
        "curl", "-sS", "-g", "--max-time", "60", "--data-binary", f"@{body}",
        family.url("/upload"), check=True, timeout=90,
    )  # fmt: skip
    size, digest = result.stdout.split()
    assert int(size) == body.stat().st_size
    assert digest.decode() == hashlib.sha256(body.read_bytes()).hexdigest()
    # TSO (TSO4, TSO6) in: the kernel hands over segments longer than the MSS.
    lengths = [e["length"] for e in daemon.trace_events() if e["type"] == "segment"
               and e["direction"] == "in"]  # fmt: skip
    assert max(lengths) > family.mss


def test_http_keep_alive_head_404_and_400(ns: Netns, daemon: UstackDaemon) -> None:
    two = ns.run(
        "curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-o", "/dev/null",
        "-w", "%{http_code} %{num_connects}\\n",
        f"http://{STACK_ADDRESS}/", f"http://{STACK_ADDRESS}/bytes/10", check=True,
    ).stdout.split(b"\n")  # fmt: skip
    assert two[0] == b"200 1" and two[1] == b"200 0"  # the second reused the connection
    head = ns.run("curl", "-sS", "-I", "--max-time", "10", f"http://{STACK_ADDRESS}/bytes/99")
    assert b"Content-Length: 99" in head.stdout
    missing = ns.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                     f"http://{STACK_ADDRESS}/nope")  # fmt: skip
    assert missing.stdout == b"404"
    bad = ns.run("nc", "-N", "-w", "5", STACK_ADDRESS, "80", input=b"NONSENSE\r\n\r\n")
    assert bad.stdout.startswith(b"HTTP/1.1 400 Bad Request")
    daemon.wait_until_no_connections()


def test_wget(ns: Netns, daemon: UstackDaemon, family: Family) -> None:
    result = ns.run("wget", "-q", "-O", "-", family.url("/bytes/100000"), check=True)
    assert result.stdout == (bytes(range(256)) * 400)[:100000]


def test_nc_echo_with_half_close(ns: Netns, daemon: UstackDaemon, family: Family) -> None:
    data = b"".join(b"line %d\n" % i for i in range(20000))
    # -N: nc shuts down its write side at stdin EOF; it then reads our echo to our FIN.
    result = ns.run("nc", "-N", family.stack, "7", input=data, check=True)
    assert result.stdout == data
    daemon.wait_until_no_connections()
    assert daemon.lives(local_port=7) == [PASSIVE_CLOSE]


def test_nc_daytime_stack_closes_first(ns: Netns, daemon: UstackDaemon) -> None:
    result = ns.run("nc", "-w", "5", STACK_ADDRESS, "13", check=True)
    assert result.stdout.endswith(b"-UTC\r\n") and result.stdout.count(b"\n") == 1
    daemon.wait_until_no_connections()
    # We send our FIN first, so we hold TIME_WAIT (for 2 * 0.5 s here).
    assert daemon.lives(local_port=13)[0] in (ACTIVE_CLOSE, ACTIVE_CLOSE_COMBINED)


def test_chargen_until_the_client_closes(ns: Netns, daemon: UstackDaemon) -> None:
    code = (
        "import socket\n"
        f"s = socket.create_connection(('{STACK_ADDRESS}', 19), timeout=10)\n"
        "got = b''\n"
        "while len(got) < 100000:\n"
        "    got += s.recv(65536)\n"
        "s.shutdown(socket.SHUT_WR)\n"  # our FIN: chargen stops and closes
        "while s.recv(65536):\n"
        "    pass\n"
        "print(got[:74 * 95].hex())\n"
    )
    out = bytes.fromhex(ns.python(code).stdout.decode().strip())
    printable = bytes(range(32, 127))
    for line in range(95):
        expected = (printable[line:] + printable[:line])[:72] + b"\r\n"
        assert out[line * 74 : line * 74 + 74] == expected
    daemon.wait_until_no_connections()
    assert daemon.lives(local_port=19) == [PASSIVE_CLOSE]


def test_nc_chargen_then_close(ns: Netns, daemon: UstackDaemon) -> None:
    # head takes 10,000 bytes and exits; nc dies on the broken pipe and its
    # socket closes with data unread, so Linux resets: chargen must stop.
    result = ns.run("sh", "-c", f"nc {STACK_ADDRESS} 19 | head -c 10000", check=True)
    printable = bytes(range(32, 127))
    expected = b"".join((printable[i:] + printable[:i])[:72] + b"\r\n" for i in range(95))
    assert result.stdout == (expected * 2)[:10000]
    daemon.wait_until_no_connections()
    (life,) = daemon.lives(local_port=19)
    assert life[:3] == ["LISTEN", "SYN_RECEIVED", "ESTABLISHED"] and life[-1] == "CLOSED"


def test_download_without_offloads_segment_by_segment(ns: Netns, tmp_path: Path) -> None:
    """--no-offload: every segment as on the wire (MSS 1460 less 12 bytes of
    timestamps), the same bytes."""
    daemon = UstackDaemon.start(ns, tmp_path, "--no-offload")
    try:
        download_checked(ns, daemon, 3 * 1024 * 1024)
        lengths = [e["length"] for e in daemon.trace_events() if e["type"] == "segment"]
    finally:
        daemon.stop()
    assert max(lengths) == 1448


def test_download_with_offloads_uses_super_segments(
    ns: Netns, daemon: UstackDaemon, family: Family
) -> None:
    """GSO out (TCPV4 or TCPV6): super-segments the kernel cuts."""
    download_checked(ns, daemon, 3 * 1024 * 1024, family)
    out = [e["length"] for e in daemon.trace_events() if e["type"] == "segment"
           and e["direction"] == "out"]  # fmt: skip
    segment = family.mss - 12  # whole segments of the MSS less the timestamps
    assert max(out) > segment and max(out) % segment == 0


def test_python_client_so_linger_zero_resets(
    ns: Netns, daemon: UstackDaemon, family: Family
) -> None:
    code = (
        "import socket, struct\n"
        f"s = socket.create_connection(('{family.stack}', 7), timeout=10)\n"
        "s.sendall(b'ping')\n"
        "assert s.recv(4) == b'ping'\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n"
        "s.close()\n"
    )
    ns.python(code)
    daemon.wait_until_no_connections()
    (life,) = daemon.lives(local_port=7)
    assert life == ["LISTEN", "SYN_RECEIVED", "ESTABLISHED", "CLOSED"]
    reasons = [e for e in daemon.trace_events() if e["type"] == "state" and e["new"] == "CLOSED"]
    assert reasons[-1]["event"] == "RCV_RST"


def test_ab_2000_requests_20_concurrent(ns: Netns, daemon: UstackDaemon, family: Family) -> None:
    result = ns.run("ab", "-q", "-n", "2000", "-c", "20", family.url(), timeout=120, check=True)
    out = result.stdout.decode()
    assert "Complete requests:      2000" in out
    assert "Failed requests:        0" in out
    assert "Non-2xx" not in out
    daemon.wait_until_no_connections(timeout=30)
    lives = daemon.lives(local_port=80)
    assert len(lives) >= 2000  # ab may open one more than it counts
    assert all(life[-1] == "CLOSED" and "ESTABLISHED" in life for life in lives)


def ustack_connect(
    daemon: UstackDaemon, port: int, data: bytes, linux: str = LINUX_ADDRESS
) -> subprocess.CompletedProcess[bytes]:
    """`ustack connect` to Linux's `port` through the daemon, `data` on its stdin."""
    return subprocess.run(
        [sys.executable, "-m", "ustack", "connect", "--control", str(daemon.control),
         linux, str(port)],
        input=data, capture_output=True, timeout=30,
    )  # fmt: skip


def ustack_connect_to_nc(
    ns: Netns, daemon: UstackDaemon, data: bytes, linux: str = LINUX_ADDRESS
) -> tuple[subprocess.CompletedProcess[bytes], bytes]:
    """`ustack connect` sends `data` to nc listening on Linux's port 9000 (in
    `ns`); our stdin ends first, so our FIN goes first and nc answers with its
    own. What `ustack connect` returned, and what nc received."""
    server = subprocess.Popen(
        ns.command("nc", "-l", "-N", linux, "9000"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        ns.run("sh", "-c", "until ss -ltn | grep -q :9000; do sleep 0.02; done", timeout=10)
        result = ustack_connect(daemon, 9000, data, linux)
        got, _ = server.communicate(b"", timeout=10)
    finally:
        server.kill()
    return result, got


def test_stack_connects_to_linux_nc_and_closes_first(
    ns: Netns, daemon: UstackDaemon, family: Family
) -> None:
    result, got = ustack_connect_to_nc(ns, daemon, b"hello from the stack\n", family.linux)
    assert result.returncode == 0, result.stderr
    assert got == b"hello from the stack\n"
    daemon.wait_until_no_connections()
    (life,) = daemon.lives(remote_port=9000)
    assert life[:3] == ["CLOSED", "SYN_SENT", "ESTABLISHED"]
    assert "TIME_WAIT" in life and "FIN_WAIT_1" in life and life[-1] == "CLOSED"


def test_stack_connects_to_python_server_which_closes_first(
    ns: Netns, daemon: UstackDaemon
) -> None:
    server_code = (
        "import socket\n"
        f"srv = socket.create_server(('{LINUX_ADDRESS}', 9001))\n"
        "print('listening', flush=True)\n"
        "c, _ = srv.accept()\n"
        "c.sendall(b'x' * 1000000)\n"
        "c.close()\n"  # the Linux side closes first: we go CLOSE_WAIT, LAST_ACK
    )
    server = subprocess.Popen(ns.command(sys.executable, "-c", server_code),
                              stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert server.stdout is not None and server.stdout.readline() == b"listening\n"
        # Our stdin stays open until the server has closed: `sleep` holds it.
        proc = subprocess.Popen(
            [sys.executable, "-m", "ustack", "connect", "--control", str(daemon.control),
             LINUX_ADDRESS, "9001"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        received = proc.stdout.read(1000000)
        assert received == b"x" * 1000000
        server.wait(timeout=10)
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
    finally:
        server.kill()
    daemon.wait_until_no_connections()
    (life,) = daemon.lives(remote_port=9001)
    assert life == ["CLOSED", "SYN_SENT", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"]


def test_stack_connect_refused(ns: Netns, daemon: UstackDaemon, family: Family) -> None:
    result = ustack_connect(daemon, 9999, b"", family.linux)
    assert result.returncode == 1
    assert b"ECONNREFUSED" in result.stderr
