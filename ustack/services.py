"""The services the daemon runs on the stack: echo, discard, daytime, chargen, HTTP.

Each is an ordinary asyncio stream handler, written exactly as against the
kernel's sockets: they run on the stack through ustack.api.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("ustack.services")

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
CHUNK = 64 * 1024


async def _finish(writer: asyncio.StreamWriter) -> None:
    """Orderly close: FIN after everything written, then wait until the
    connection is gone (peer's FIN and our TIME_WAIT or LAST_ACK handled)."""
    try:  # (not contextlib.suppress: an object and two calls per connection)
        writer.close()
        await writer.wait_closed()
    except ConnectionError:
        pass


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """RFC 862: every byte back; after the peer's FIN, finish echoing, then close."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        return
    await _finish(writer)


async def discard(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """RFC 863: read and forget until the peer's FIN."""
    try:
        while await reader.read(CHUNK):
            pass
    except ConnectionError:
        return
    await _finish(writer)


def daytime_line(now: float | None = None) -> bytes:
    """RFC 867 leaves the format free; this is the common one."""
    return time.strftime("%A, %B %d, %Y %H:%M:%S-UTC\r\n", time.gmtime(now)).encode()


async def daytime(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """RFC 867: one line, then we close first (the stack does the active close)."""
    writer.write(daytime_line())
    await _finish(writer)


def chargen_pattern() -> bytes:
    """RFC 864: 72-character lines of the 95 printable ASCII characters, each
    line starting one character later; 95 lines make the full cycle."""
    printable = bytes(range(32, 127))
    lines = []
    for start in range(95):
        rotated = printable[start:] + printable[:start]
        lines.append(rotated[:72] + b"\r\n")
    return b"".join(lines)


async def chargen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """RFC 864: send until the peer closes (its FIN, or a reset)."""
    pattern = chargen_pattern()
    peer_done = asyncio.ensure_future(reader.read())  # EOF or reset ends the stream
    try:
        while not peer_done.done():
            writer.write(pattern)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        peer_done.cancel()
    await _finish(writer)


# ---- HTTP/1.1 ------------------------------------------------------------------------------

PATTERN = bytes(range(256)) * (CHUNK // 256)  # byte i of any /bytes/N body is i % 256
MAX_BODY = 1 << 40
INDEX = (
    b"<!doctype html>\n<html><head><title>ustack</title></head>\n"
    b"<body><h1>Hello from ustack</h1>\n"
    b"<p>This page came over a TCP/IP stack written in Python.</p>\n"
    b"<p>GET /bytes/N for N bytes (byte i is i % 256); "
    b"POST /upload to get the SHA-256 of what you send.</p>\n</body></html>\n"
)
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           413: "Content Too Large", 431: "Request Header Fields Too Large"}  # fmt: skip


class BadRequest(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A small HTTP/1.1 server: keep-alive, Connection: close, HEAD, GET, POST."""
    try:
        while await _serve_one_request(reader, writer):
            pass
    except ConnectionError:
        pass  # a reset, or a body cut short: either way this connection is done
    await _finish(writer)


async def _serve_one_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Answer one request; False when the connection should close."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            await _respond(writer, 400, b"incomplete request\n", keep_alive=False)
        return False
    except asyncio.LimitOverrunError:
        await _respond(writer, 431, b"request head too large\n", keep_alive=False)
        return False
    try:
        method, target, version, headers = _parse_head(head)
        body_length = _content_length(headers)
    except BadRequest as exc:
        await _respond(writer, exc.status, f"{exc}\n".encode(), keep_alive=False)
        return False
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    if method == "POST" and target == "/upload":
        digest, size = await _consume(reader, body_length)
        body = f"{size} {digest}\n".encode()
        await _respond(writer, 200, body, keep_alive, "text/plain")
        return keep_alive
    if body_length:
        await _consume(reader, body_length)
    if method not in ("GET", "HEAD"):
        await _respond(writer, 405, b"method not allowed\n", keep_alive, extra="Allow: GET, HEAD")
        return keep_alive
    head_only = method == "HEAD"
    if target == "/":
        await _respond(writer, 200, INDEX, keep_alive, "text/html", head_only=head_only)
    elif target.startswith("/bytes/") and target[7:].isdigit() and int(target[7:]) <= MAX_BODY:
        await _respond_pattern(writer, int(target[7:]), keep_alive, head_only)
    else:
        await _respond(writer, 404, b"not found\n", keep_alive, head_only=head_only)
    return keep_alive


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest(400, "request head is not ASCII") from None
    request_line, *header_lines = text[:-4].split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1") or not parts[1].startswith("/"):
        raise BadRequest(400, f"bad request line {request_line[:80]!r}")
    headers = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, f"bad header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    return parts[0], parts[1], parts[2], headers


def _content_length(headers: dict[str, str]) -> int:
    if "transfer-encoding" in headers:
        raise BadRequest(400, "chunked bodies are not supported; send Content-Length")
    value = headers.get("content-length", "0")
    if not value.isdigit():
        raise BadRequest(400, "bad Content-Length")
    return int(value)


async def _consume(reader: asyncio.StreamReader, length: int) -> tuple[str, int]:
    digest = hashlib.sha256()
    remaining = length
    while remaining:
        chunk = await reader.read(min(remaining, CHUNK))
        if not chunk:
            raise ConnectionError("body cut short")
        digest.update(chunk)
        remaining -= len(chunk)
    return digest.hexdigest(), length


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    keep_alive: bool,
    content_type: str = "text/plain",
    head_only: bool = False,
    extra: str = "",
) -> None:
    writer.write(_head(status, len(body), keep_alive, content_type, extra))
    if not head_only:
        writer.write(body)
    await writer.drain()


def _head(status: int, length: int, keep_alive: bool, content_type: str, extra: str = "") -> bytes:
    lines = [
        f"HTTP/1.1 {status} {REASONS[status]}",
        "Server: ustack",
        f"Content-Type: {content_type}",
        f"Content-Length: {length}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _respond_pattern(
    writer: asyncio.StreamWriter, length: int, keep_alive: bool, head_only: bool
) -> None:
    writer.write(_head(200, length, keep_alive, "application/octet-stream"))
    if head_only:
        await writer.drain()
        return
    view = memoryview(PATTERN)
    remaining = length
    while remaining:
        n = min(remaining, CHUNK)
        writer.write(view[:n])  # every chunk starts at a multiple of 256: the pattern holds
        remaining -= n
        await writer.drain()


SERVICES: dict[str, tuple[int, Handler]] = {
    "echo": (7, echo),
    "discard": (9, discard),
    "daytime": (13, daytime),
    "chargen": (19, chargen),
    "http": (80, http),
}
