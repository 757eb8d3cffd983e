"""The HTTP service and the api's close path, in process: two Stacks back to
back (test_api's Pair), everything through open_connection / start_server."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Iterator

import pytest
from test_api import (
    B_HOST,
    Pair,
    http_request,
    http_response,
    make_pair,
    pair,
    step,
    until,
)

from ustack import services
from ustack.api import TcpTransport, open_connection, start_server
from ustack.tcp.connection import TcpConnection

__all__ = ["make_pair", "pair"]  # the fixtures, used by name

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
