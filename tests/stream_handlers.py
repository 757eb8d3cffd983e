"""Server handlers (asyncio.start_server's client_connected_cb) that the
stream tests share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from collections.abc import Callable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def recording_resets(seen: list[BaseException]) -> Handler:
    """A handler that reads to the end and records in `seen` the
    ConnectionResetError its reader raises when the peer resets."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()
        except ConnectionResetError as exc:
            seen.append(exc)

    return handler
