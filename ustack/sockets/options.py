"""A `ustack.socket` socket's options (setsockopt/getsockopt: the common
SOL_SOCKET, IPPROTO_TCP and IPV6_V6ONLY ones, live on an open connection)
and its files (makefile), as `SocketOptions`, UstackSocket's base."""

from __future__ import annotations

import errno
import io
import socket as _socket
from typing import TYPE_CHECKING
from typing import Any

from ustack.sockets.loop_side import StreamState
from ustack.sockets.loop_side import on_loop
from ustack.sockets.loop_side import oserror
from ustack.stream_options import BROADCAST
from ustack.stream_options import KEEPALIVE
from ustack.stream_options import KEEPCNT
from ustack.stream_options import KEEPIDLE
from ustack.stream_options import KEEPINTVL
from ustack.stream_options import LINGER
from ustack.stream_options import LINGER_OPTION
from ustack.stream_options import NODELAY
from ustack.stream_options import RCVBUF
from ustack.stream_options import REUSEADDR
from ustack.stream_options import REUSEPORT
from ustack.stream_options import SNDBUF
from ustack.stream_options import SOCKET_ERROR
from ustack.stream_options import SOCKET_TYPE
from ustack.stream_options import V6ONLY
from ustack.stream_options import StreamOptions

if TYPE_CHECKING:
    from ustack.socket import SocketStack

_FLAGS = {REUSEADDR, REUSEPORT, KEEPALIVE, NODELAY, BROADCAST}  # read back as 0 or 1
_KEEPALIVE_TIMES = {KEEPIDLE, KEEPINTVL, KEEPCNT}
_SETTABLE = _FLAGS | _KEEPALIVE_TIMES | {LINGER_OPTION, RCVBUF, SNDBUF, V6ONLY}
# What reaches an open connection at once (the stream's own setsockopt).
_LIVE = _KEEPALIVE_TIMES | {KEEPALIVE, NODELAY, LINGER_OPTION}


class SocketOptions:
    """setsockopt, getsockopt and makefile of a UstackSocket."""

    if TYPE_CHECKING:  # what UstackSocket keeps and these use
        family: int
        type: int
        _stack: SocketStack
        _options: dict[tuple[int, int], Any]
        _stream: StreamState | None
        _io_refs: int

        def _check_open(self) -> None: ...

    def _stream_options(self) -> tuple[StreamOptions, int | None]:
        opts = self._options
        linger = opts.get(LINGER_OPTION)
        seconds = None if linger is None or not linger[0] else linger[1]
        options = StreamOptions(
            nodelay=bool(opts[NODELAY]) if NODELAY in opts else None,
            keepalive=bool(opts[KEEPALIVE]) if KEEPALIVE in opts else None,
            keepalive_idle=opts.get(KEEPIDLE),
            keepalive_interval=opts.get(KEEPINTVL),
            keepalive_count=opts.get(KEEPCNT),
            linger=seconds,
        )
        return options, seconds

    # ---- options --------------------------------------------------------------------------

    def setsockopt(self, level: int, optname: int, value: Any, optlen: int | None = None) -> None:
        self._check_open()
        option = (level, optname)
        if option == LINGER_OPTION:
            if isinstance(value, int):
                onoff, seconds = int(bool(value)), 0
            else:
                onoff, seconds = LINGER.unpack(bytes(value)[: LINGER.size])
            stored: Any = (int(bool(onoff)), seconds)
        elif isinstance(value, bytes | bytearray):
            stored = int.from_bytes(bytes(value)[:4], "little")
        else:
            stored = int(value)
        if option not in _SETTABLE:
            raise oserror(errno.ENOPROTOOPT)
        if level == _socket.IPPROTO_TCP and self.type != _socket.SOCK_STREAM:
            raise oserror(errno.EOPNOTSUPP)
        if option == V6ONLY and self.family != _socket.AF_INET6:
            raise oserror(errno.ENOPROTOOPT)
        self._options[option] = stored
        stream = self._stream
        if stream is not None and stream.transport is not None and option in _LIVE:
            transport = stream.transport
            wire = LINGER.pack(*stored) if option == LINGER_OPTION else stored
            self._stack.call(
                on_loop(lambda: transport.get_extra_info("socket").setsockopt(level, optname, wire))
            )

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> Any:
        self._check_open()
        option = (level, optname)
        value: Any
        if option == SOCKET_TYPE:
            value = self.type
        elif option == SOCKET_ERROR:
            stream = self._stream
            value = 0
            if stream is not None and stream.error is not None:
                value, stream.error = stream.error.errno or errno.EIO, None
        elif option in (RCVBUF, SNDBUF):
            if option in self._options:
                value = 2 * self._options[option]  # as Linux: doubled for its bookkeeping
            else:
                config = self._stack.running.stack.tcp.config
                value = config.receive_buffer if option == RCVBUF else config.send_buffer
        elif option == LINGER_OPTION:
            onoff, seconds = self._options.get(option, (0, 0))
            packed = LINGER.pack(onoff, seconds)
            return packed if buflen else onoff
        elif option == V6ONLY:
            if self.family != _socket.AF_INET6:
                raise oserror(errno.ENOPROTOOPT)
            value = self._options.get(option, 0)
        elif option in _FLAGS:
            value = int(bool(self._options.get(option, 0)))
        elif option in _KEEPALIVE_TIMES:
            stream = self._stream
            if stream is not None and stream.transport is not None:
                info = stream.transport.get_extra_info("socket")
                value = self._stack.call(on_loop(lambda: info.getsockopt(level, optname)))
            else:
                value = self._options.get(option, 0)
        else:
            raise oserror(errno.ENOPROTOOPT)
        return int(value).to_bytes(4, "little") if buflen else value

    # ---- files ------------------------------------------------------------------------------

    def makefile(
        self,
        mode: str = "r",
        buffering: int | None = None,
        *,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> Any:
        """As socket.makefile: io's layers over a SocketIO on this socket."""
        if not set(mode) <= {"r", "w", "b"}:
            raise ValueError(f"invalid mode {mode!r} (only r, w, b allowed)")
        writing = "w" in mode
        reading = "r" in mode or not writing
        rawmode = ("r" if reading else "") + ("w" if writing else "")
        raw = _socket.SocketIO(self, rawmode)  # type: ignore[arg-type]
        self._io_refs += 1
        if buffering is None:
            buffering = -1
        if buffering < 0:
            buffering = io.DEFAULT_BUFFER_SIZE
        if buffering == 0:
            if "b" not in mode:
                raise ValueError("unbuffered streams must be binary")
            return raw
        buffer: io.BufferedIOBase
        if reading and writing:
            buffer = io.BufferedRWPair(raw, raw, buffering)
        elif reading:
            buffer = io.BufferedReader(raw, buffering)
        else:
            buffer = io.BufferedWriter(raw, buffering)
        if "b" in mode:
            return buffer
        text = io.TextIOWrapper(buffer, encoding, errors, newline)  # type: ignore[type-var]
        text.mode = mode  # type: ignore[misc]
        return text
