"""The control socket server on a real unix socket (in-process, no daemon):
what it may remove at its path, how a chunked reply is framed and read."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ustack.linux.control import CHUNK_ROWS
from ustack.linux.control import PROTOCOL_VERSION
from ustack.linux.control import ControlError
from ustack.linux.control import ControlServer
from ustack.linux.control import request


def _stats(_request: dict[str, Any]) -> dict[str, Any]:
    return {"counters": {"ip.in": 1}}


async def _start(path: Path) -> ControlServer:
    return await ControlServer.start(path, {"stats": _stats})


@pytest.mark.parametrize("kind", ["file", "directory", "symlink"])
def test_what_is_not_a_socket_is_never_removed(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "control.sock"
    if kind == "file":
        path.write_text("precious\n")
    elif kind == "directory":
        path.mkdir()
    else:
        (tmp_path / "target").write_text("precious\n")
        path.symlink_to(tmp_path / "target")
    with pytest.raises(ControlError, match="exists and is not a socket: not replacing it"):
        asyncio.run(_start(path))
    if kind == "file":
        assert path.read_text() == "precious\n"
    elif kind == "directory":
        assert path.is_dir()
    else:
        assert path.is_symlink() and path.read_text() == "precious\n"


def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # bound, never listening: what a killed daemon leaves

    async def serve() -> dict[str, Any]:
        server = await _start(path)
        try:
            return await asyncio.to_thread(request, path, "stats")
        finally:
            await server.close()

    assert asyncio.run(serve())["counters"] == {"ip.in": 1}
    assert not path.exists()  # close() removes its own socket


def test_a_live_socket_is_in_use(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"

    async def twice() -> None:
        server = await _start(path)
        try:
            await _start(path)
        finally:
            await server.close()

    with pytest.raises(ControlError, match="in use by a running daemon"):
        asyncio.run(twice())


def test_a_socket_where_it_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ControlError, match="cannot make control socket"):
        asyncio.run(_start(tmp_path / "file" / "control.sock"))


def test_a_chunked_reply_comes_in_lines_and_is_read_as_one(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    total = 2 * CHUNK_ROWS + 7

    async def rows(_request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        for start in range(0, total, CHUNK_ROWS):
            yield {"rows": list(range(start, min(start + CHUNK_ROWS, total)))}
        yield {"rows": [], "tail": "x"}

    def raw_lines() -> list[dict[str, Any]]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(b'{"command": "rows"}\n{"command": "stats"}\n')
            sock.shutdown(socket.SHUT_WR)
            return [json.loads(line) for line in sock.makefile("rb")]

    async def serve() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        server = await ControlServer.start(path, {"stats": _stats}, None, {"rows": rows})
        try:
            lines = await asyncio.to_thread(raw_lines)
            joined = await asyncio.to_thread(request, path, "rows")
            return lines, joined
        finally:
            await server.close()

    lines, joined = asyncio.run(serve())
    assert [line["more"] for line in lines[:4]] == [True, True, True, False]
    assert all(line["ok"] and line["version"] == PROTOCOL_VERSION for line in lines)
    assert [len(line["rows"]) for line in lines[:4]] == [CHUNK_ROWS, CHUNK_ROWS, 7, 0]
    assert lines[4]["counters"] == {"ip.in": 1}  # the next request on the same connection
    assert joined["rows"] == list(range(total)) and joined["tail"] == "x"
    assert "more" not in joined


class _NotADaemon:
    """Something else listening at a control path: each connection gets
    `line` whatever it asks, and is closed."""

    def __init__(self, path: Path, line: bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen()
        self.line = line
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                conn.recv(65536)
                conn.sendall(self.line)


CLIENTS = [["stats"], ["ss"], ["fault", "list"], ["config"], ["connect", "198.18.0.1", "80"]]
OTHER_REPLIES = [b"[1]\n", b"5\n", b"null\n", b'"ok"\n']
OBJECTS_OF_ANOTHER_SHAPE = [
    b'{"ok": true}\n',
    b'{"ok": true, "counters": 5, "listening": 5, "rules": 5, "msl": 1}\n',
    b'{"ok": true, "listening": [1], "connections": [{"id": 1}], "rules": [1]}\n',
]


# (An ok object to connect is a connection made: the splice starts.)
CASES = [
    (argv, line)
    for argv in CLIENTS
    for line in OTHER_REPLIES + ([] if argv[0] == "connect" else OBJECTS_OF_ANOTHER_SHAPE)
]


@pytest.mark.parametrize(("argv", "line"), CASES)
def test_a_client_facing_another_server_says_so_in_one_line(
    tmp_path: Path, argv: list[str], line: bytes, cli_error: Callable[..., str]
) -> None:
    """`ustack ss --control PATH` where something else answers: a reply that
    is no JSON object, or an object without what the command reads, is one
    line and exit 1, never a traceback (the printing read the fields)."""
    path = tmp_path / "other.sock"
    other = _NotADaemon(path, line)
    try:
        error = cli_error([*argv, "--control", str(path)], code=1)
    finally:
        other.sock.close()
    assert "not a ustack daemon" in error
