"""ustack.open_stack on a real TUN inside a lab namespace, with Linux's own
sockets on the other side. Each test runs one Python program inside the
namespace (the TUN and the kernel's sockets must be there): it opens the
stack, talks to the kernel through it in the same event loop, and prints
what it saw as JSON for the test to check."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from ustack.linux.lab import IPV4 as IPV4_FAMILY
from ustack.linux.lab import Family
from ustack.linux.lab import Netns

RUN_TIMEOUT = 60.0

PRELUDE = """
import asyncio, errno, json, os, sys
import ustack

STACK, LINUX = sys.argv[1], sys.argv[2]
STEP = 10.0
seen = {}

async def step(awaitable):
    return await asyncio.wait_for(awaitable, STEP)
"""


def run_in(ns: Netns, family: Family, body: str) -> dict[str, Any]:
    code = PRELUDE + body + "\nasyncio.run(main())\nprint(json.dumps(seen))\n"
    result = ns.python(code, family.stack, family.linux, timeout=RUN_TIMEOUT)
    seen: dict[str, Any] = json.loads(result.stdout.decode().strip().splitlines()[-1])
    return seen


def test_servers_and_clients_both_ways_with_half_close(ns: Netns, family: Family) -> None:
    body = """
async def upper_echo(reader, writer):
    data = await reader.read()           # to the Linux client's half-close
    writer.write(data.upper())            # and still answers on its own half
    await writer.drain()
    writer.close()
    await writer.wait_closed()

async def linux_server(reader, writer):
    data = await reader.read()
    writer.write(b"linux got %d bytes" % len(data))
    writer.close()

async def main():
    async with ustack.open_stack() as stack:
        await stack.start_server(upper_echo, port=7000)
        # Linux's client (a kernel socket) to ustack's server.
        reader, writer = await step(asyncio.open_connection(STACK, 7000))
        writer.write(b"hello from linux")
        writer.write_eof()
        seen["answer"] = (await step(reader.read())).decode()
        writer.close()
        # ustack's client to Linux's server.
        server = await asyncio.start_server(linux_server, LINUX, 8000)
        reader, writer = await step(stack.open_connection(LINUX, 8000))
        seen["peername"] = list(writer.get_extra_info("peername"))
        seen["sockname"] = list(writer.get_extra_info("sockname"))
        seen["state"] = writer.get_extra_info("connection").state.name
        writer.write(b"x" * 100_000)
        await step(writer.drain())
        writer.write_eof()
        seen["reply"] = (await step(reader.read())).decode()
        writer.close()
        await step(writer.wait_closed())
        server.close()
        seen["table"] = [row["state"] for row in stack.connections()]
        seen["passive"] = stack.counters["tcp.passive-opens"]
"""
    seen = run_in(ns, family, body)
    assert seen["answer"] == "HELLO FROM LINUX"
    assert seen["reply"] == "linux got 100000 bytes"
    assert seen["peername"][:2] == [family.linux, 8000]
    assert seen["sockname"][0] == family.stack
    assert seen["state"] == "ESTABLISHED"
    assert "TIME_WAIT" in seen["table"]  # ustack closed its client first
    assert seen["passive"] == 1


def test_abort_is_a_reset_and_a_closed_port_refuses(ns: Netns, family: Family) -> None:
    body = """
async def abort_after_read(reader, writer):
    await reader.readexactly(4)
    writer.transport.abort()              # linger 0: an RST, not a FIN

async def main():
    async with ustack.open_stack() as stack:
        await stack.start_server(abort_after_read, port=7001)
        reader, writer = await step(asyncio.open_connection(STACK, 7001))
        writer.write(b"ping")
        try:
            seen["read"] = (await step(reader.read())).decode()
        except ConnectionResetError as exc:
            seen["linux_error"] = errno.errorcode[exc.errno]
        writer.close()
        try:
            await step(stack.open_connection(LINUX, 9))   # nothing listens there
        except ConnectionRefusedError as exc:
            seen["refused"] = type(exc).__name__
"""
    seen = run_in(ns, family, body)
    assert seen.get("linux_error") == "ECONNRESET", seen
    assert seen["refused"] == "ConnectionRefusedError"


def test_cancelled_it_leaves_no_tun_no_task_and_resets_the_peer(
    ns: Netns, family: Family, tmp_path: Path
) -> None:
    body = """
async def main():
    ready, server_side = asyncio.Event(), []

    async def hold(reader, writer):
        server_side.append(writer)
        await reader.read()

    async def application():
        async with ustack.open_stack(trace=[os.environ["TRACE"]]) as stack:
            await stack.start_server(hold, port=7002)
            ready.set()
            await asyncio.Event().wait()     # until cancelled

    task = asyncio.create_task(application())
    await step(ready.wait())
    seen["tun_while_running"] = os.path.exists("/sys/class/net/tun0")
    reader, writer = await step(asyncio.open_connection(STACK, 7002))
    writer.write(b"held")
    await step(writer.drain())
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        seen["cancelled"] = True
    try:
        seen["read"] = (await step(reader.read())).decode()
    except ConnectionResetError as exc:
        seen["linux_error"] = errno.errorcode[exc.errno]
    writer.close()
    seen["tun_after"] = os.path.exists("/sys/class/net/tun0")
    seen["tasks"] = len(asyncio.all_tasks()) - 1
    with open(os.environ["TRACE"]) as trace:
        seen["trace_lines"] = sum(1 for _ in trace)
"""
    code = PRELUDE + body + "\nasyncio.run(main())\nprint(json.dumps(seen))\n"
    trace = tmp_path / "trace.txt"
    result = ns.run(
        "env", f"TRACE={trace}", sys.executable, "-c", code, family.stack, family.linux,
        timeout=RUN_TIMEOUT, check=True,
    )  # fmt: skip
    seen = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert seen["tun_while_running"] is True
    assert seen["cancelled"] is True
    assert seen.get("linux_error") == "ECONNRESET", seen
    assert seen["tun_after"] is False
    assert seen["tasks"] == 0
    assert seen["trace_lines"] > 5  # flushed: the handshake and the RST are in it


@pytest.mark.parametrize(
    ("host", "expected"), [("198.19.5.5", "ENETUNREACH"), ("198.19.7.7", "EHOSTUNREACH")]
)
def test_an_icmp_unreachable_fails_the_connect_with_its_errno(
    ns: Netns, host: str, expected: str
) -> None:
    """Linux, forwarding in the namespace, answers a SYN it cannot route with
    ICMP net unreachable (no route) or host unreachable (an unreachable
    route); the connect fails with that errno (RFC 1122 4.2.3.9: a soft
    error, reported when the SYNs give up: 2 retransmissions here). One
    namespace each: Linux rate-limits these ICMPs per source (ip_error)."""
    ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1", check=True)
    ns.run("ip", "route", "add", "unreachable", "198.19.7.0/24", check=True)
    body = f"""
from ustack.tcp.connection import TcpConfig

async def main():
    quick = TcpConfig(initial_rto=0.2, syn_retries=2)
    async with ustack.open_stack(tcp=quick) as stack:
        try:
            await step(stack.open_connection("{host}", 80))
        except OSError as exc:
            seen["error"] = [type(exc).__name__, errno.errorcode.get(exc.errno, "")]
"""
    seen = run_in(ns, IPV4_FAMILY, body)
    assert seen["error"] == ["OSError", expected], seen


def test_a_slow_linux_reader_pauses_the_stack_writer(ns: Netns, family: Family) -> None:
    """Flow control against the kernel: a Linux server that does not read
    closes its window; ustack's writer buffers past the high-water mark
    and drain() blocks, until Linux reads; then every byte arrives in order."""
    body = """
import hashlib

async def main():
    async with ustack.open_stack() as stack:
        go, got = asyncio.Event(), []

        async def slow_linux(reader, writer):
            await go.wait()
            got.append(await reader.read())
            writer.close()

        server = await asyncio.start_server(slow_linux, LINUX, 8001)
        reader, writer = await step(stack.open_connection(LINUX, 8001))
        payload = os.urandom(16 * 1024 * 1024)  # beyond Linux's largest receive buffer
        writer.write(payload)
        draining = asyncio.ensure_future(writer.drain())
        conn = writer.get_extra_info("connection")
        for _ in range(1000):  # until the kernel's window is closed (bounded: 10 s)
            if conn.snd_wnd == 0:
                break
            await asyncio.sleep(0.01)
        seen["window_closed"] = conn.snd_wnd == 0
        seen["paused"] = not draining.done() and writer.transport.get_write_buffer_size() > 0
        go.set()
        await step(draining)
        writer.write_eof()
        await step(reader.read())
        seen["same"] = hashlib.sha256(got[0]).digest() == hashlib.sha256(payload).digest()
        writer.close()
        server.close()
"""
    seen = run_in(ns, family, body)
    assert seen == {"window_closed": True, "paused": True, "same": True}
