"""The control socket: a unix stream socket (mode 0600) speaking JSON lines.

Protocol version 1. Each request is one line holding a JSON object with a
"command" string; each reply is one line holding a JSON object with "ok"
(true/false) and either the command's fields or "error". A connection may
carry many requests. Bad input gets an error reply, never a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("ustack.control")

PROTOCOL_VERSION = 1
MAX_REQUEST = 64 * 1024

Handler = Callable[[dict[str, Any]], dict[str, Any]]
# A command that takes the connection over after its request (e.g. "connect",
# which turns it into a byte pipe): it writes its own reply line.
StreamHandler = Callable[
    [dict[str, Any], asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]
]


class ControlError(Exception):
    """The control socket could not be set up or reached; the message says why."""


class ControlRequestError(Exception):
    """Raised by a handler for a request it cannot honour: an error reply, not a bug."""


class ControlServer:
    def __init__(self, server: asyncio.AbstractServer, path: Path) -> None:
        self._server = server
        self.path = path

    @classmethod
    async def start(
        cls,
        path: Path,
        handlers: dict[str, Handler],
        stream_handlers: dict[str, StreamHandler] | None = None,
    ) -> ControlServer:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            if _answers(path):
                raise ControlError(f"control socket {path} is in use by a running daemon")
            path.unlink()  # left behind by a daemon that died

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _serve_client(reader, writer, handlers, stream_handlers or {})

        old_umask = os.umask(0o177)  # the socket is born 0600: no window for others
        try:
            server = await asyncio.start_unix_server(on_client, path, limit=MAX_REQUEST)
        finally:
            os.umask(old_umask)
        log.info("control socket %s", path)
        return cls(server, path)

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


async def _serve_client(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handlers: dict[str, Handler],
    stream_handlers: dict[str, StreamHandler],
) -> None:
    try:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial.strip():
                    writer.write(encode(error_reply("request not terminated by a newline")))
                break
            except asyncio.LimitOverrunError:
                writer.write(encode(error_reply(f"request longer than {MAX_REQUEST} bytes")))
                break  # the rest of the stream cannot be framed: hang up
            request, problem = _parse(line)
            if request is None:
                writer.write(encode(error_reply(problem)))
            elif request["command"] in stream_handlers:
                await stream_handlers[request["command"]](request, reader, writer)
                return
            else:
                writer.write(encode(_dispatch(request, handlers, stream_handlers)))
            await writer.drain()
        await writer.drain()
    except (ConnectionError, OSError):
        pass  # the client went away; nothing to tell it
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


def _parse(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """(the request, "") or (None, what is wrong with the line)."""
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"not JSON: {exc}"
    if not isinstance(request, dict) or not isinstance(request.get("command"), str):
        return None, 'a request is a JSON object with a "command" string'
    return request, ""


def _dispatch(
    request: dict[str, Any], handlers: dict[str, Handler], stream_handlers: dict[str, StreamHandler]
) -> dict[str, Any]:
    handler = handlers.get(request["command"])
    if handler is None:
        known = ", ".join(sorted([*handlers, *stream_handlers]))
        return error_reply(f"unknown command {request['command']!r} (known: {known})")
    try:
        return {"ok": True, "version": PROTOCOL_VERSION, **handler(request)}
    except ControlRequestError as exc:
        return error_reply(str(exc))
    except Exception as exc:  # a handler bug must not take the daemon down
        log.exception("control command %r failed", request["command"])
        return error_reply(f"internal error: {exc}")


def error_reply(message: str) -> dict[str, Any]:
    return {"ok": False, "version": PROTOCOL_VERSION, "error": message}


def encode(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply).encode() + b"\n"


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def request(path: Path, command: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
    """Send one request to a running daemon and return its reply (a client helper)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError as exc:
            reason = exc.strerror or exc
            raise ControlError(
                f"cannot reach the daemon at {path}: {reason} (is ustack serve running?)"
            ) from None
        sock.sendall(encode({"command": command, **fields}))
        with sock.makefile("rb") as stream:
            line = stream.readline()
    if not line:
        raise ControlError(f"the daemon at {path} closed the connection without a reply")
    reply: dict[str, Any] = json.loads(line)  # the daemon answers with an object
    return reply
