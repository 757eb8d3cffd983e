"""Forward: a TcpConnection attribute that one of its parts keeps."""

from __future__ import annotations

from operator import attrgetter
from typing import Generic, TypeVar, overload

T = TypeVar("T")


class Forward(Generic[T]):
    """A TcpConnection attribute kept by one of its parts: `conn.snd_una` is
    `conn.sender.snd_una`. For readers outside (the demux's trace, the
    daemon's listing, the invariants, tests); the connection itself and
    its parts use the part's attribute directly."""

    __slots__ = ("_get", "_name", "_owner")

    def __init__(self, path: str) -> None:
        owner, _, self._name = path.rpartition(".")
        self._get = attrgetter(path)
        self._owner = attrgetter(owner)

    @overload
    def __get__(self, conn: None, owner: type) -> Forward[T]: ...
    @overload
    def __get__(self, conn: object, owner: type) -> T: ...
    def __get__(self, conn: object, owner: type) -> T | Forward[T]:
        if conn is None:
            return self
        value: T = self._get(conn)
        return value

    def __set__(self, conn: object, value: T) -> None:
        setattr(self._owner(conn), self._name, value)
