"""The control socket: a unix stream socket (mode 0600) speaking JSON lines.

Protocol version 2. Each request is one line holding a JSON object with a
"command" string; each reply is one line holding a JSON object with "ok"
(true/false) and either the command's fields or "error". A connection may
carry many requests. Bad input gets an error reply, never a crash.

A long answer (version 2: "connections") comes in several lines, so that
building it never holds the event loop for long: every line but the last
carries "more": true and a part of each list field (at most CHUNK_ROWS
rows); the last line has "more": false and the rest. A client concatenates
the lists (request() does). Version 1 answered in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from pathlib import Path
from typing import Any
from typing import BinaryIO

log = logging.getLogger("ustack.control")

PROTOCOL_VERSION = 2
MAX_REQUEST = 64 * 1024
# Rows per line of a chunked reply: building and encoding 200 connection rows
# takes about 3 ms, the longest the event loop waits on one control request.
CHUNK_ROWS = 200

Handler = Callable[[dict[str, Any]], dict[str, Any]]
# A command with a long answer: it yields the parts of its reply (each with at
# most CHUNK_ROWS rows per list), and the server lets the loop run between them.
ChunkedHandler = Callable[[dict[str, Any]], AsyncIterator[dict[str, Any]]]
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
    def __init__(self, server: asyncio.AbstractServer, path: Path, made_dir: bool) -> None:
        self._server = server
        self.path = path
        self._made_dir = made_dir  # remove the directory too (e.g. /run/ustack/net-INODE)

    @classmethod
    async def start(
        cls,
        path: Path,
        handlers: dict[str, Handler],
        stream_handlers: dict[str, StreamHandler] | None = None,
        chunked_handlers: dict[str, ChunkedHandler] | None = None,
    ) -> ControlServer:
        commands = _Commands(handlers, stream_handlers or {}, chunked_handlers or {})
        made_dir = _make_room(path)

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _serve_client(reader, writer, commands)

        old_umask = os.umask(0o177)  # the socket is born 0600: no window for others
        try:
            server = await asyncio.start_unix_server(on_client, path, limit=MAX_REQUEST)
        except OSError as exc:
            raise ControlError(
                f"cannot make control socket {path}: {exc.strerror or exc}"
            ) from None
        finally:
            os.umask(old_umask)
        log.info("control socket %s", path)
        return cls(server, path, made_dir)

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self._made_dir:
            with contextlib.suppress(OSError):  # not empty: someone else's files, leave it
                self.path.parent.rmdir()


def _make_room(path: Path) -> bool:
    """Make the socket's directory (0700 when we make it; True then) and remove
    a socket a dead daemon left there; anything else at `path` is not ours to
    delete."""
    made_dir = not path.parent.exists()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return made_dir
    except OSError as exc:
        raise ControlError(f"cannot make control socket {path}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"control socket {path} exists and is not a socket: not replacing it")
    if _answers(path):
        raise ControlError(f"control socket {path} is in use by a running daemon")
    try:
        path.unlink()  # left behind by a daemon that died
    except OSError as exc:
        raise ControlError(f"cannot remove stale control socket {path}: {exc.strerror}") from None
    return made_dir


class _Commands:
    def __init__(
        self,
        plain: dict[str, Handler],
        stream: dict[str, StreamHandler],
        chunked: dict[str, ChunkedHandler],
    ) -> None:
        self.plain, self.stream, self.chunked = plain, stream, chunked

    def known(self) -> str:
        return ", ".join(sorted([*self.plain, *self.stream, *self.chunked]))


async def _serve_client(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, commands: _Commands
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
            elif request["command"] in commands.stream:
                await commands.stream[request["command"]](request, reader, writer)
                return
            elif request["command"] in commands.chunked:
                await _send_chunked(commands.chunked[request["command"]], request, writer)
            else:
                writer.write(encode(_dispatch(request, commands)))
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
    except RecursionError:
        return None, "not JSON: nested too deeply"
    except ValueError as exc:  # bad UTF-8, bad JSON, an integer of over 4300 digits
        return None, f"not JSON: {exc}"
    if not isinstance(request, dict) or not isinstance(request.get("command"), str):
        return None, 'a request is a JSON object with a "command" string'
    return request, ""


async def _send_chunked(
    handler: ChunkedHandler, request: dict[str, Any], writer: asyncio.StreamWriter
) -> None:
    """Each part as it comes, "more": true on all but the last; the loop runs
    other callbacks between parts, and a slow reader holds us at drain()."""
    part: dict[str, Any] = {}
    try:
        async for following in handler(request):
            if part:
                writer.write(
                    encode({"ok": True, "version": PROTOCOL_VERSION, **part, "more": True})
                )
                await writer.drain()
                await asyncio.sleep(0)
            part = following
    except ControlRequestError as exc:
        writer.write(encode(error_reply(str(exc))))
        return
    except (ConnectionError, OSError):
        raise  # the client went away: _serve_client hangs up
    except Exception as exc:  # a handler bug must not take the daemon down
        log.exception("control command %r failed", request["command"])
        writer.write(encode(error_reply(f"internal error: {exc}")))
        return
    writer.write(encode({"ok": True, "version": PROTOCOL_VERSION, **part, "more": False}))


def _dispatch(request: dict[str, Any], commands: _Commands) -> dict[str, Any]:
    handler = commands.plain.get(request["command"])
    if handler is None:
        return error_reply(f"unknown command {request['command']!r} (known: {commands.known()})")
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
        try:
            sock.sendall(encode({"command": command, **fields}))
            with sock.makefile("rb") as stream:
                return read_reply(stream, path)
        except TimeoutError:
            raise ControlError(f"the daemon at {path} did not answer in {timeout:g} s") from None
        except OSError as exc:
            raise ControlError(f"the daemon at {path} went away: {exc.strerror or exc}") from None


def read_reply(stream: BinaryIO, path: Path) -> dict[str, Any]:
    """One reply: the lines of a chunked one joined (their lists concatenated)."""
    reply: dict[str, Any] = {}
    while True:
        line = stream.readline()
        if not line:
            raise ControlError(f"the daemon at {path} closed the connection without a reply")
        try:
            part = json.loads(line)
        except ValueError:
            part = None
        if not isinstance(part, dict):  # the daemon answers with an object
            raise ControlError(f"{path} answered {line[:60]!r}: not a ustack daemon?")
        if not merge_part(reply, part):
            return reply


def merge_part(reply: dict[str, Any], part: dict[str, Any]) -> bool:
    """Add one line of a reply to what came before (lists concatenated);
    True while more lines follow ("more" is then taken out of `reply`)."""
    for key, value in part.items():
        if isinstance(value, list) and isinstance(reply.get(key), list):
            reply[key].extend(value)
        else:
            reply[key] = value
    if part.get("more"):
        return True
    reply.pop("more", None)
    return False
