"""What a connection tells its application (h11 style: small plain classes)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Connected:
    """The handshake completed: ESTABLISHED."""


@dataclass(frozen=True, slots=True)
class DataReceived:
    """New in-order bytes wait in the receive buffer: call read()."""


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The peer's FIN arrived after all its data: read() returns b"" once drained."""


@dataclass(frozen=True, slots=True)
class SendSpace:
    """Acknowledged data freed room in the send buffer."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection is over for the application (its TCB is gone, or waits
    out TIME_WAIT on its own). `error` is None after an orderly close, else an
    errno name: ECONNRESET, ECONNREFUSED (a RST, or an ICMP hard error while
    connecting: ENOPROTOOPT, EHOSTUNREACH... as Linux's icmp_err_convert) or
    ETIMEDOUT; a timeout after an ICMP soft error reports that error instead
    (EHOSTUNREACH, ENETUNREACH, EMSGSIZE..., RFC 1122 4.2.3.9)."""

    error: str | None = None


AppEvent = Connected | DataReceived | EndOfStream | SendSpace | Closed
