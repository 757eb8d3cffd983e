"""The examples and README blocks that need a TUN: each runs as a user runs
it inside `ustack lab` (its own TUN, tun1, in a lab namespace), with the
Linux peer started beside it: `nc` for the echo server, `python -m
http.server` for the HTTP client, `nc -u -l` for the UDP exchange."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from examples_harness import example
from examples_harness import python_env
from examples_harness import readme_block

from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon

RUN_TIMEOUT = 60.0
STACK, STACK6 = "198.18.1.2", "2001:2:0:1::2"  # the examples' tun1
LINUX, LINUX6 = "198.18.1.1", "2001:2:0:1::1"


@contextmanager
def started(
    ns: Netns, *argv: str, ready: str, stderr: bool = False, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A program in the namespace, once it printed a line holding `ready`
    (on stderr if `stderr`); stopped (by its PID) on the way out."""
    process = subprocess.Popen(
        ns.command(*argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=python_env(), cwd=cwd,
    )  # fmt: skip
    try:
        stream = process.stderr if stderr else process.stdout
        assert stream is not None
        line = stream.readline().decode()  # blocks until the program says it is up
        assert ready in line, f"{argv} said {line!r}, not {ready!r}"
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_example(ns: Netns, cwd: Path, name: str, *args: str) -> list[str]:
    result = subprocess.run(
        ns.command(sys.executable, str(example(name)), *args), capture_output=True,
        timeout=RUN_TIMEOUT, env=python_env(), cwd=cwd,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().splitlines()


def test_echo_server_echoes_nc_in_both_families(ns: Netns, tmp_path: Path) -> None:
    payload = b"echo me, ustack\n" * 500  # 8,000 bytes: several segments
    argv = (sys.executable, str(example("echo_server.py")), "--count", "2")
    with started(ns, *argv, ready="echo on", cwd=tmp_path) as server:
        for host in (STACK, STACK6):
            # -N: shut the socket down at stdin's EOF (the half-close the server echoes to)
            got = ns.run("nc", "-N", host, "7", input=payload, timeout=RUN_TIMEOUT, check=True)
            assert got.stdout == payload
        out, _ = server.communicate(timeout=RUN_TIMEOUT)  # --count 2: it ends by itself
        assert server.returncode == 0
    lines = out.decode().splitlines()
    assert lines[0].startswith(f"echoed {len(payload)} bytes to {LINUX} port ")
    assert lines[1].startswith(f"echoed {len(payload)} bytes to {LINUX6} port ")


def test_http_client_fetches_from_python_http_server(ns: Netns, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "page.bin").write_bytes(bytes(range(256)) * 400)  # 102,400 bytes
    argv = (sys.executable, "-u", "-m", "http.server", "8000", "--bind", "::", "-d", str(site))
    with started(ns, *argv, ready="Serving HTTP"):
        for url in (f"http://{LINUX}:8000/page.bin", f"http://[{LINUX6}]:8000/page.bin"):
            lines = run_example(ns, tmp_path, "http_client.py", url)
            assert lines[0] == "HTTP/1.0 200 OK"  # http.server answers in HTTP/1.0
            assert "Content-Length: 102400" in lines
            assert "body: 102400 bytes" in lines
            srtt, cwnd = lines[-1].split(" ms, cwnd ")
            assert float(srtt.removeprefix("srtt ")) > 0 and int(cwnd.split()[0]) > 0


def test_udp_exchange_with_linux_peers_in_both_families(ns: Netns, tmp_path: Path) -> None:
    """`nc -u -l` on each family hears ustack's datagram and answers with
    the line on its stdin."""
    with (
        started(ns, "nc", "-nv4ul", "9999", ready="Bound on", stderr=True) as nc4,
        started(ns, "nc", "-nv6ul", "9999", ready="Bound on", stderr=True) as nc6,
    ):
        for nc, answer in ((nc4, b"pong over IPv4\n"), (nc6, b"pong over IPv6\n")):
            assert nc.stdin is not None
            nc.stdin.write(answer)  # sent once nc has its peer (the first datagram)
            nc.stdin.flush()
        lines = run_example(ns, tmp_path, "udp_exchange.py")
        heard = []
        for nc in (nc4, nc6):
            nc.terminate()
            heard.append(nc.communicate(timeout=10)[0])
    assert heard == [b"hello over IPv4 from ustack\n", b"hello over IPv6 from ustack\n"]
    assert lines[0].startswith(f"sent to {LINUX} port 9999 from ('{STACK}', ")
    assert lines[1] == "answer: b'pong over IPv4\\n'"
    assert lines[2].startswith(f"sent to {LINUX6} port 9999 from ('{STACK6}', ")
    assert lines[3] == "answer: b'pong over IPv6\\n'"


def test_the_readme_tun_example_runs_as_is_beside_a_daemon(
    ns: Netns, daemon: UstackDaemon, tmp_path: Path
) -> None:
    """As inside `ustack lab`: the daemon holds tun0; the example opens tun1
    beside it (its trace, a relative path, lands in the working directory)."""
    code = readme_block('trace=["library.jsonl"]')
    result = ns.run(
        "sh", "-c", 'cd "$1" && exec "$2" -c "$3"', "sh", str(tmp_path), sys.executable, code,
        timeout=RUN_TIMEOUT, check=True,
    )  # fmt: skip
    lines = result.stdout.decode().splitlines()
    assert lines[:3] == ["b'HELLO, USTACK'", "ESTABLISHED", "b'AND BACK'"]
    # Both FINs exchanged, ustack's first: the connection is CLOSED and its
    # 4-tuple waits in TIME_WAIT as a record (Linux's timewait socket).
    assert lines[3].startswith("CLOSED srtt ") and int(lines[3].split("cwnd ")[1]) > 0
    assert lines[4:] == ["['TIME_WAIT']", "1"]
    assert (tmp_path / "library.jsonl").stat().st_size > 0
    assert ns.run("ip", "link", "show", "tun1").returncode != 0  # removed on the way out
