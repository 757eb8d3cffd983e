"""The HTTP service and the api's close path, in process: two Stacks back to
back (test_api's Pair), everything through open_connection / start_server."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import time
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import pytest
from test_api import B_HOST
from test_api import Pair
from test_api import http_request
from test_api import http_response
from test_api import make_pair
from test_api import pair
from test_api import pattern_bytes
from test_api import step
from test_api import until

from ustack import services
from ustack.api import StackServer
from ustack.api import TcpTransport
from ustack.api import open_connection
from ustack.api import start_server
from ustack.cli import build_parser
from ustack.cli import serve_config
from ustack.services import HttpLimits
from ustack.services import HttpService
from ustack.services import byte_range
from ustack.tcp.connection import TcpConnection

__all__ = ["make_pair", "pair"]  # the fixtures, used by name


class _AnyHeaders(dict[str, str]):
    def __eq__(self, other: Any) -> bool:
        return isinstance(other, dict)


ANY_HEADERS = _AnyHeaders()
Client = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Reference counting only, as between the daemon's rare full collections."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def alive(kind: type) -> int:
    return sum(1 for obj in gc.get_objects() if type(obj) is kind)


async def server_closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await http_request(writer, "GET", "/bytes/3000", {"Connection": "close"})
    await http_response(reader)
    assert await step(reader.read()) == b""
    writer.close()


async def client_half_closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await http_request(writer, "GET", "/missing")
    await http_response(reader)
    writer.write_eof()
    assert await step(reader.read()) == b""
    writer.close()


async def client_resets(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await http_request(writer, "GET", "/")
    await http_response(reader)
    writer.transport.abort()


async def oversized_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n")
    head = await step(reader.readuntil(b"\r\n\r\n"))  # (a reset may follow: unread head)
    assert head.startswith(b"HTTP/1.1 431 ")
    writer.transport.abort()


async def upload_cut_short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await http_request(writer, "POST", "/upload", {"Content-Length": "100000"})
    writer.write(b"x" * 1000)
    writer.write_eof()
    assert await step(reader.read()) == b""
    writer.close()


@pytest.mark.parametrize(
    "client", [server_closes, client_half_closes, client_resets, oversized_head, upload_cut_short]
)
def test_closed_connections_are_freed_without_the_garbage_collector(
    pair: Pair, no_gc: None, client: Client
) -> None:
    """Transport, protocol, StreamReader/Writer, the handler's task and the
    TcpConnection refer to each other while the connection lives; at close
    they must let go, so that reference counting frees them at once."""

    async def one_connection() -> None:
        reader, writer = await step(open_connection(pair.ra, B_HOST, 80))
        await client(reader, writer)

    async def main() -> None:
        server = await start_server(pair.rb, services.http, 80)
        for _ in range(10):
            await one_connection()
        await pair.settle()
        await until(lambda: not getattr(server, "handlers", ()))
        server.close()

    pair.run(main())
    assert (alive(TcpConnection), alive(TcpTransport)) == (0, 0)


# ---- the HTTP service on its own ----------------------------------------------------------


async def http_server(pair: Pair, limits: HttpLimits | None = None) -> StackServer:
    return await start_server(pair.rb, HttpService(limits), 80)


async def exchange(pair: Pair, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """One connection, `raw` sent, the one response read, then our FIN: the
    server closes in turn, with nothing more said, never a reset, even when
    it refused the request before reading all of it (it lingers, RFC 9112
    9.6: a reset could erase the response before the client reads it)."""
    reader, writer = await step(open_connection(pair.ra, B_HOST, 80))
    writer.write(raw)
    response = await http_response(reader)
    writer.write_eof()
    assert await step(reader.read()) == b""
    writer.close()
    return response


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /bytes/" + b"9" * 5000 + b" HTTP/1.1\r\n\r\n", 404),
        (b"POST /upload HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 413),
        (b"POST /upload HTTP/1.1\r\nContent-Length: 1099511627777\r\n\r\n", 413),
        (b"PUT /other HTTP/1.1\r\nContent-Length: 10\r\n\r\n", 405),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 3000 + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", 431),
        (b"POST /upload HTTP/1.1\r\nContent-Length: 5\r\nExpect: magic\r\n\r\n", 417),
    ],
    ids=[
        "bytes-5000-digits",
        "length-5000-digits",
        "length-over-max",
        "405-with-body",
        "414",
        "431-many-lines",
        "431-one-line",
        "417",
    ],
)
def test_bad_requests_get_a_4xx_and_the_handler_ends_cleanly(
    pair: Pair, raw: bytes, status: int
) -> None:
    async def main() -> None:
        server = await http_server(pair)
        got, _headers, body = await exchange(pair, raw)
        assert got == status, body
        assert body.endswith(b"\n") and len(body) < 100  # a one-line reason
        await until(lambda: not server.handlers)
        assert server.failures == 0
        assert pair.b.counters["app.handler-errors"] == 0

    pair.run(main())


def test_a_head_not_complete_in_head_timeout_gets_408_and_close(pair: Pair) -> None:
    async def main() -> None:
        await http_server(pair, HttpLimits(head_timeout=0.3))
        reader, writer = await step(open_connection(pair.ra, B_HOST, 80))
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        started = time.monotonic()
        status, headers, _ = await http_response(reader)
        assert (status, headers["connection"]) == (408, "close")
        assert await step(reader.read()) == b""
        assert 0.25 < time.monotonic() - started < 1.0
        writer.close()

    pair.run(main())


def test_an_idle_keep_alive_connection_is_closed_after_idle_timeout(pair: Pair) -> None:
    async def main() -> None:
        await http_server(pair, HttpLimits(idle_timeout=0.3))
        reader, writer = await step(open_connection(pair.ra, B_HOST, 80))
        await http_request(writer, "GET", "/bytes/10")
        assert (await http_response(reader))[0] == 200
        started = time.monotonic()
        assert await step(reader.read()) == b""  # closed quietly: no 408 between requests
        assert 0.25 < time.monotonic() - started < 1.0
        writer.close()

    pair.run(main())


def test_a_stalled_upload_is_closed_after_body_timeout(pair: Pair) -> None:
    async def main() -> None:
        server = await http_server(pair, HttpLimits(body_timeout=0.3))
        reader, writer = await step(open_connection(pair.ra, B_HOST, 80))
        await http_request(writer, "POST", "/upload", {"Content-Length": "1000"})
        writer.write(b"x" * 10)
        started = time.monotonic()
        assert await step(reader.read()) == b""
        assert 0.25 < time.monotonic() - started < 1.0
        writer.close()
        await until(lambda: not server.handlers)
        assert server.failures == 0

    pair.run(main())


def test_the_request_limit_closes_the_connection_after_the_last_answer(pair: Pair) -> None:
    async def main() -> None:
        await http_server(pair, HttpLimits(max_requests=3))
        reader, writer = await step(open_connection(pair.ra, B_HOST, 80))
        seen = []
        for _ in range(3):
            await http_request(writer, "GET", "/bytes/5")
            status, headers, _ = await http_response(reader)
            seen.append((status, headers["connection"]))
        assert seen == [(200, "keep-alive"), (200, "keep-alive"), (200, "close")]
        assert await step(reader.read()) == b""
        writer.close()

    pair.run(main())


def test_expect_100_continue_is_answered_before_the_body(pair: Pair) -> None:
    body = bytes(range(256)) * 1000

    async def main() -> None:
        await http_server(pair)
        reader, writer = await step(open_connection(pair.ra, B_HOST, 80))
        headers = {"Content-Length": str(len(body)), "Expect": "100-continue"}
        await http_request(writer, "PUT", "/upload", headers)
        assert await step(reader.readuntil(b"\r\n\r\n")) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        status, _, answer = await http_response(reader)
        assert (status, answer) == (
            200,
            f"{len(body)} {hashlib.sha256(body).hexdigest()}\n".encode(),
        )
        writer.close()

    pair.run(main())


def test_expect_100_continue_refused_gets_the_final_status_without_100(pair: Pair) -> None:
    async def main() -> None:
        await http_server(pair)
        raw = b"PUT /elsewhere HTTP/1.1\r\nContent-Length: 5000000\r\nExpect: 100-continue\r\n\r\n"
        status, headers, _ = await exchange(pair, raw)  # (reads the first response: no 100)
        assert (status, headers["allow"]) == (405, "GET, HEAD")

    pair.run(main())


@pytest.mark.parametrize(
    ("header", "length", "expected"),
    [
        (None, 100, None),
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=10-", 100, (10, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-1000", 100, (0, 99)),
        ("bytes=90-1000", 100, (90, 99)),
        ("bytes=99-99", 100, (99, 99)),
        ("bytes=" + "9" * 5000 + "-", 100, ValueError),
        ("bytes=100-", 100, ValueError),
        ("bytes=-0", 100, ValueError),
        ("bytes=0-", 0, ValueError),
        ("bytes=0-1,5-6", 100, None),  # several: the whole body (RFC 9110 14.2 allows it)
        ("bytes=5-1", 100, None),  # invalid: ignored
        ("bytes=x-", 100, None),
        ("items=0-1", 100, None),
    ],
)
def test_byte_range(header: str | None, length: int, expected: object) -> None:
    if expected is ValueError:
        with pytest.raises(ValueError):
            byte_range(header, length)
    else:
        assert byte_range(header, length) == expected


def test_range_gets_206_with_content_range_and_416_past_the_end(pair: Pair) -> None:
    async def main() -> None:
        await http_server(pair)
        reader, writer = await step(open_connection(pair.ra, B_HOST, 80))
        await http_request(writer, "GET", "/bytes/300000", {"Range": "bytes=70000-200000"})
        status, headers, body = await http_response(reader)
        assert status == 206
        assert headers["content-range"] == "bytes 70000-200000/300000"
        assert body == pattern_bytes(300_000)[70_000:200_001]
        await http_request(writer, "HEAD", "/bytes/300000", {"Range": "bytes=-5"})
        status, head_headers, body = await http_response(reader, head_only=True)
        assert (status, head_headers["content-range"], body) == (
            206,
            "bytes 299995-299999/300000",
            b"",
        )
        assert head_headers["content-length"] == "5"
        await http_request(writer, "GET", "/bytes/300000", {"Range": "bytes=300000-"})
        status, headers, _ = await http_response(reader)
        assert (status, headers["content-range"]) == (416, "bytes */300000")
        await http_request(writer, "GET", "/", {"Range": "bytes=0-14"})
        assert await http_response(reader) == (206, ANY_HEADERS, services.INDEX[:15])
        writer.close()

    pair.run(main())


def test_head_has_the_headers_of_get(pair: Pair) -> None:
    async def main() -> None:
        await http_server(pair)
        reader, writer = await step(open_connection(pair.ra, B_HOST, 80))
        for target in ("/", "/bytes/1000", "/nowhere"):
            await http_request(writer, "GET", target)
            _, get_headers, _ = await http_response(reader)
            await http_request(writer, "HEAD", target)
            _, head_headers, body = await http_response(reader, head_only=True)
            assert (head_headers, body) == (get_headers, b"")
        writer.close()

    pair.run(main())


def test_the_default_limits_close_a_slowloris_within_30_seconds() -> None:
    limits = HttpLimits()
    assert limits.head_timeout <= 30
    assert 0 < limits.max_request_line <= limits.max_head <= 64 * 1024
    assert limits.max_requests > 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--http-head-timeout", "0"], "bad --http-head-timeout 0"),
        (["--http-idle-timeout", "soon"], "bad --http-idle-timeout 'soon'"),
        (["--http-max-requests", "-1"], "bad --http-max-requests '-1'"),
        (["--http-max-head", "70000"], "bad --http-max-head 70000: at most 65536"),
    ],
)
def test_bad_http_flags_are_usage_errors(
    cli_error: Callable[[list[str]], str], argv: list[str], message: str
) -> None:
    assert message in cli_error(["serve", *argv])


def test_http_flags_reach_the_limits() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--http-head-timeout",
            "2.5",
            "--http-max-requests",
            "7",
            "--http-max-head",
            "4096",
        ]
    )
    assert serve_config(args).http == HttpLimits(head_timeout=2.5, max_requests=7, max_head=4096)


def test_a_handler_that_raises_is_one_log_line_a_counter_and_a_reset(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(3)
        raise ValueError("Exceeds the limit (4300 digits) for integer string conversion")

    async def main() -> None:
        server = await start_server(pair.rb, broken, 80)
        reader, writer = await step(open_connection(pair.ra, B_HOST, 80))
        writer.write(b"abc")
        with pytest.raises(ConnectionResetError):
            await step(reader.read())
        await until(lambda: not server.handlers)
        assert server.failures == 1
        assert pair.b.counters["app.handler-errors"] == 1
        writer.close()

    pair.run(main())  # (fails if the loop reported anything: no "Unhandled exception")
    lines = [r.getMessage() for r in caplog.records if r.name == "ustack.api"]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "handler failed: ValueError('Exceeds the limit" in lines[0]
