"""The services the daemon runs on the stack: echo, discard, daytime, chargen, HTTP.

Each is an ordinary asyncio stream handler, written exactly as against the
kernel's sockets: they run on the stack through ustack.api. Echo, discard
and daytime are on UDP too, as inetd offers them (UDP_SERVICES): ordinary
asyncio datagram protocols, run on the stack through ustack.datagram.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger("ustack.services")

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
CHUNK = 64 * 1024


async def _finish(writer: asyncio.StreamWriter) -> None:
    """Orderly close: FIN after everything written, then wait until the
    connection is gone (peer's FIN and our TIME_WAIT or LAST_ACK handled)."""
    try:  # (not contextlib.suppress: an object and two calls per connection)
        writer.close()
        await writer.wait_closed()
    except OSError:  # reset, or timed out (ETIMEDOUT): gone either way
        pass


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """RFC 862: every byte back; after the peer's FIN, finish echoing, then close."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except OSError:
        return
    await _finish(writer)


async def discard(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """RFC 863: read and forget until the peer's FIN."""
    try:
        while await reader.read(CHUNK):
            pass
    except OSError:
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
    except OSError:
        pass
    finally:
        peer_done.cancel()
    await _finish(writer)


# ---- HTTP/1.1 ------------------------------------------------------------------------------

PATTERN = bytes(range(256)) * (CHUNK // 256 + 1)  # byte i of any /bytes/N body is i % 256
MAX_BODY = 1 << 40  # the largest /bytes/N, and the largest upload
MAX_DIGITS = len(str(MAX_BODY))  # a longer number is too large (and int() of 5,000 digits fails)
INDEX = (
    b"<!doctype html>\n<html><head><title>ustack</title></head>\n"
    b"<body><h1>Hello from ustack</h1>\n"
    b"<p>This page came over a TCP/IP stack written in Python.</p>\n"
    b"<p>GET /bytes/N for N bytes (byte i is i % 256); "
    b"POST or PUT /upload to get the SHA-256 of what you send.</p>\n</body></html>\n"
)
REASONS = {100: "Continue", 200: "OK", 206: "Partial Content", 400: "Bad Request",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           413: "Content Too Large", 414: "URI Too Long", 416: "Range Not Satisfiable",
           417: "Expectation Failed", 431: "Request Header Fields Too Large"}  # fmt: skip


@dataclass(frozen=True)
class HttpLimits:
    """What one HTTP connection may take (`ustack serve --http-...`)."""

    max_requests: int = 1000  # per connection; the last answer says Connection: close
    idle_timeout: float = 60.0  # s between two requests on a kept-alive connection
    head_timeout: float = 20.0  # s for a whole request head (slowloris), from its first byte
    body_timeout: float = 60.0  # s a request body may stall (no byte arriving)
    max_head: int = 16 * 1024  # bytes of request line and headers -> 431
    max_request_line: int = 8 * 1024  # -> 414
    linger_timeout: float = 2.0  # s a refused request's rest is read and dropped (RFC 9112 9.6)


# What a refused request may still send before we close: read and dropped.
LINGER_BYTES = 1024 * 1024


class BadRequest(Exception):
    """A request we refuse: its status and the reason (the response body)."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]

    def wants(self, name: str, token: str) -> bool:
        """Does header `name` list `token` (comma-separated, any case)?"""
        value = self.headers.get(name, "")
        return token in (item.strip().lower() for item in value.split(","))


class HttpService:
    """A small HTTP/1.1 server: keep-alive (with limits), HEAD, GET with Range,
    POST/PUT /upload with Expect: 100-continue. Every connection ends with a
    clear outcome: an answer, a 4xx with its reason, or a timeout's close."""

    def __init__(self, limits: HttpLimits | None = None) -> None:
        self.limits = limits or HttpLimits()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            number = 1
            while await self._serve_one(reader, writer, number):
                number += 1
        except OSError:
            pass  # reset, timed out, or a body cut short or stalled: this connection is done
        await _finish(writer)

    async def _serve_one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int
    ) -> bool:
        """Answer request `number` of the connection; False when it should close."""
        limits = self.limits
        # The first head is due from the connection's start (a slowloris that
        # never sends gets no more time than one that drips); later ones may
        # keep the connection idle first.
        try:
            async with asyncio.timeout(limits.head_timeout if number == 1 else limits.idle_timeout):
                start = await reader.read(1)
        except TimeoutError:
            start = b""
        if not start:
            return False  # the client closed, or stayed idle: close quietly
        try:
            async with asyncio.timeout(limits.head_timeout):
                request = await _read_head(reader, start, limits)
            body_length = _content_length(request.headers)
        except TimeoutError:
            return await self._refuse(reader, writer, 408, b"request head not received in time\n")
        except BadRequest as exc:
            return await self._refuse(reader, writer, exc.status, f"{exc}\n".encode())
        keep_alive = _keeps_alive(request) and number < limits.max_requests
        method = request.method
        if request.target == "/upload" and method in ("POST", "PUT"):
            if not await _continue(writer, request, body_length):
                return await self._linger(reader, writer)
            digest = await self._consume(reader, body_length)
            body = f"{body_length} {digest}\n".encode()
            await _respond(writer, 200, body, keep_alive, "text/plain")
            return keep_alive
        if method not in ("GET", "HEAD"):
            # Refused before its body is read (RFC 9110 10.1.1): then we close.
            refused, allow = b"method not allowed\n", "Allow: GET, HEAD"
            if body_length or not keep_alive:
                return await self._refuse(reader, writer, 405, refused, allow)
            await _respond(writer, 405, refused, keep_alive=True, extra=allow)
            return True
        if body_length:  # a GET with a body: read and forget it
            if not await _continue(writer, request, body_length):
                return await self._linger(reader, writer)
            await self._consume(reader, body_length)
        head_only = method == "HEAD"
        resource = _resource(request.target)
        if resource is None:
            await _respond(writer, 404, b"not found\n", keep_alive, head_only=head_only)
        else:
            await _send_resource(writer, request, resource, keep_alive, head_only)
        return keep_alive

    async def _refuse(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        status: int,
        reason: bytes,
        extra: str = "",
    ) -> bool:
        """A refusal that closes the connection: its answer, then _linger."""
        await _respond(writer, status, reason, keep_alive=False, extra=extra)
        return await self._linger(reader, writer)

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """After a refusal that closes the connection with the request maybe
        not all read (RFC 9112 9.6, "tear-down"): our FIN now, then read and
        drop what the client still sends, until its FIN, LINGER_BYTES or
        linger_timeout, and only then close. Closed at once with its data
        unread, the connection would answer with a RST, which may erase the
        response from the client's buffers before it reads it. False: the
        connection ends."""
        taken = 0
        try:
            writer.write_eof()
            async with asyncio.timeout(self.limits.linger_timeout):
                while taken < LINGER_BYTES and (data := await reader.read(CHUNK)):
                    taken += len(data)
        except (OSError, TimeoutError):
            pass  # reset, or the client kept on: close all the same
        return False

    async def _consume(self, reader: asyncio.StreamReader, length: int) -> str:
        """Read and hash a body; TimeoutError if it stalls body_timeout."""
        digest = hashlib.sha256()
        remaining = length
        while remaining:
            async with asyncio.timeout(self.limits.body_timeout):
                chunk = await reader.read(min(remaining, CHUNK))
            if not chunk:
                raise ConnectionError("body cut short")
            digest.update(chunk)
            remaining -= len(chunk)
        return digest.hexdigest()


http = HttpService()  # on the default limits


async def _read_head(reader: asyncio.StreamReader, start: bytes, limits: HttpLimits) -> Request:
    """The request line and headers (`start` is the head's first byte), within
    the limits: 414 for the request line, 431 for the whole head. (The
    StreamReader buffers at most its own limit, 64 KiB, looking for the end.)"""
    line_limit = f"request line over {limits.max_request_line} bytes"
    head_limit = f"request head over {limits.max_head} bytes"
    try:
        head = start + await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as exc:
        seen = start + await reader.read(exc.consumed)  # (buffered already)
        line_end = seen.find(b"\r\n")
        too_long = line_end < 0 or line_end + 2 > limits.max_request_line
        raise BadRequest(414, line_limit) if too_long else BadRequest(431, head_limit) from None
    except asyncio.IncompleteReadError:
        raise BadRequest(400, "incomplete request") from None
    request_line, *header_lines = _ascii(head)[:-4].split("\r\n")
    if len(request_line) + 2 > limits.max_request_line:
        raise BadRequest(414, line_limit)
    if len(head) > limits.max_head:
        raise BadRequest(431, head_limit)
    method, target, version = _parse_request_line(request_line)
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, f"bad header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    return Request(method, target, version, headers)


def _ascii(line: bytes) -> str:
    try:
        return line.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest(400, "request head is not ASCII") from None


def _parse_request_line(line: str) -> tuple[str, str, str]:
    parts = line.split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1") or not parts[1].startswith("/"):
        raise BadRequest(400, f"bad request line {line[:80]!r}")
    return parts[0], parts[1], parts[2]


def _decimal(text: str) -> int | None:
    """A non-negative decimal of at most MAX_DIGITS significant digits, or None."""
    if not (text.isascii() and text.isdigit()):
        return None
    significant = text.lstrip("0")
    if len(significant) > MAX_DIGITS:
        return MAX_BODY + 1  # (too large for anything we serve: no int() of it)
    return int(significant or "0")


def _content_length(headers: dict[str, str]) -> int:
    if "transfer-encoding" in headers:
        raise BadRequest(400, "chunked bodies are not supported; send Content-Length")
    length = _decimal(headers.get("content-length", "0"))
    if length is None:
        raise BadRequest(400, "bad Content-Length")
    if length > MAX_BODY:
        raise BadRequest(413, f"body over {MAX_BODY} bytes")
    return length


def _keeps_alive(request: Request) -> bool:
    if request.version == "HTTP/1.1":
        return not request.wants("connection", "close")
    return request.wants("connection", "keep-alive")


async def _continue(writer: asyncio.StreamWriter, request: Request, body_length: int) -> bool:
    """Before reading a body: answer Expect (RFC 9110 10.1.1). 100-continue gets
    its interim 100; any other expectation 417 (then False: we close)."""
    expect = request.headers.get("expect")
    if expect is None or request.version != "HTTP/1.1" or not body_length:
        return True
    if expect.lower() != "100-continue":
        await _respond(writer, 417, b"only 100-continue is expected\n", keep_alive=False)
        return False
    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    await writer.drain()
    return True


@dataclass(frozen=True)
class Resource:
    """A body we can send whole or in part: its length and its bytes from
    `start`, in chunks."""

    length: int
    content_type: str
    chunks: Callable[[int, int], Iterator[bytes | memoryview]]  # (start, count)


def _resource(target: str) -> Resource | None:
    if target == "/":
        return Resource(len(INDEX), "text/html", lambda start, n: iter((INDEX[start : start + n],)))
    if target.startswith("/bytes/"):
        length = _decimal(target[7:])
        if length is not None and length <= MAX_BODY:
            return Resource(length, "application/octet-stream", _pattern_chunks)
    return None


def _pattern_chunks(start: int, count: int) -> Iterator[memoryview]:
    view = memoryview(PATTERN)
    offset = start % 256  # every chunk is a multiple of 256 long: the offset holds
    while count:
        n = min(count, CHUNK)
        yield view[offset : offset + n]
        count -= n


def byte_range(header: str | None, length: int) -> tuple[int, int] | None:
    """The one range `header` asks of `length` bytes as (first, last), None to
    send it all (no header, one we ignore: not bytes, several ranges, bad
    syntax: RFC 9110 14.2 lets us); ValueError if no byte of it exists (416)."""
    if header is None or not header.startswith("bytes="):
        return None
    spec = header[6:].strip()
    first_text, dash, last_text = spec.partition("-")
    first, last = _decimal(first_text.strip()), _decimal(last_text.strip())
    if not dash or "," in spec:
        return None
    if not first_text.strip():  # -n: the last n bytes
        if last is None:
            return None
        if last == 0 or length == 0:
            raise ValueError("an empty suffix")
        return max(length - last, 0), length - 1
    if first is None or (last_text.strip() and (last is None or last < first)):
        return None
    if first >= length:
        raise ValueError("starts after the end")
    return first, length - 1 if last is None else min(last, length - 1)


async def _send_resource(
    writer: asyncio.StreamWriter,
    request: Request,
    resource: Resource,
    keep_alive: bool,
    head_only: bool,
) -> None:
    """200 with it all, or 206 with the range asked (RFC 9110 14.4), or 416."""
    length = resource.length
    try:
        wanted = byte_range(request.headers.get("range"), length)
    except ValueError:
        extra = f"Content-Range: bytes */{length}"
        await _respond(writer, 416, b"range not satisfiable\n", keep_alive, extra=extra)
        return
    status, first, count, extra = 200, 0, length, "Accept-Ranges: bytes"
    if wanted is not None:
        first, last = wanted
        status, count = 206, last - first + 1
        extra += f"\r\nContent-Range: bytes {first}-{last}/{length}"
    writer.write(_head(status, count, keep_alive, resource.content_type, extra))
    if not head_only:
        for chunk in resource.chunks(first, count):
            writer.write(chunk)
            await writer.drain()
    await writer.drain()


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


SERVICES: dict[str, tuple[int, Handler]] = {
    "echo": (7, echo),
    "discard": (9, discard),
    "daytime": (13, daytime),
    "chargen": (19, chargen),
    "http": (80, http),
}


# ---- UDP, as inetd's internal services -------------------------------------------------------


class UdpService(asyncio.DatagramProtocol):
    """A UDP service: each datagram is answered (or not) on its own."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def reply(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        # An unconnected endpoint hears no ICMP error; a failed send (EMSGSIZE) lands here.
        log.debug("%s: %s", type(self).__name__, exc)


class UdpEcho(UdpService):
    """RFC 862: each datagram sent back whole to its sender."""

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.reply(data, addr)


class UdpDiscard(UdpService):
    """RFC 863: every datagram thrown away."""

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        pass


class UdpDaytime(UdpService):
    """RFC 867: any datagram gets the date and time back, one line."""

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.reply(daytime_line(), addr)


# The UDP services, on the same ports as their TCP namesakes and switched
# with them (--services echo turns on TCP and UDP echo, as inetd.conf's
# two lines usually stand together).
UDP_SERVICES: dict[str, Callable[[], UdpService]] = {
    "echo": UdpEcho,
    "discard": UdpDiscard,
    "daytime": UdpDaytime,
}
