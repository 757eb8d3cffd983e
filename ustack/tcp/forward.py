"""Forward: a TcpConnection attribute that one of its parts keeps; TcbView: all
of them, the TCB as read from outside."""

from __future__ import annotations

from operator import attrgetter
from typing import TYPE_CHECKING
from typing import ClassVar
from typing import Generic
from typing import TypeVar
from typing import overload

from ustack.compiled import mypyc_attr

if TYPE_CHECKING:
    from ustack.tcp import congestion
    from ustack.tcp.rack import Rack
    from ustack.tcp.rtt import RttEstimator

T = TypeVar("T")


@mypyc_attr(native_class=False)  # (mypyc: a native class's __set__ is not a descriptor's)
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


@mypyc_attr(allow_interpreted_subclasses=True)
class TcbView:
    """The TCB variables (RFC 9293 3.3.1) and what the connection's parts
    keep, as read from outside: TcpConnection's base."""

    __slots__ = ()

    iss: ClassVar[Forward[int]] = Forward("sender.iss")
    snd_una: ClassVar[Forward[int]] = Forward("sender.snd_una")
    snd_nxt: ClassVar[Forward[int]] = Forward("sender.snd_nxt")
    snd_max: ClassVar[Forward[int]] = Forward("sender.snd_max")
    snd_wnd: ClassVar[Forward[int]] = Forward("sender.snd_wnd")
    snd_wl1: ClassVar[Forward[int]] = Forward("sender.snd_wl1")
    snd_wl2: ClassVar[Forward[int]] = Forward("sender.snd_wl2")
    max_snd_wnd: ClassVar[Forward[int]] = Forward("sender.max_snd_wnd")
    snd_shift: ClassVar[Forward[int]] = Forward("sender.snd_shift")
    nodelay: ClassVar[Forward[bool]] = Forward("sender.nodelay")
    send_space: ClassVar[Forward[int]] = Forward("sender.space")
    unsent_bytes: ClassVar[Forward[int]] = Forward("sender.unsent")
    irs: ClassVar[Forward[int]] = Forward("receiver.irs")
    rcv_nxt: ClassVar[Forward[int]] = Forward("receiver.rcv_nxt")
    rcv_adv: ClassVar[Forward[int]] = Forward("receiver.rcv_adv")
    rcv_shift: ClassVar[Forward[int]] = Forward("receiver.rcv_shift")
    ts_recent: ClassVar[Forward[int]] = Forward("receiver.ts_recent")
    fin_received: ClassVar[Forward[bool]] = Forward("receiver.fin_received")
    readable_bytes: ClassVar[Forward[int]] = Forward("receiver.readable")
    at_eof: ClassVar[Forward[bool]] = Forward("receiver.at_eof")
    cc: ClassVar[Forward[congestion.CongestionControl]] = Forward("recovery.cc")
    cwnd: ClassVar[Forward[int]] = Forward("recovery.cc.cwnd")
    ssthresh: ClassVar[Forward[int]] = Forward("recovery.cc.ssthresh")
    rto: ClassVar[Forward[float]] = Forward("recovery.rtt.rto")
    srtt: ClassVar[Forward[float | None]] = Forward("recovery.rtt.srtt")
    _rtt: ClassVar[Forward[RttEstimator]] = Forward("recovery.rtt")
    _rack: ClassVar[Forward[Rack]] = Forward("recovery.rack")
    path_mtu: ClassVar[Forward[int]] = Forward("path.path_mtu")
    path_mtu_until: ClassVar[Forward[float | None]] = Forward("path.path_mtu_until")
    black_hole_mss: ClassVar[Forward[int | None]] = Forward("path.black_hole_mss")
    soft_error: ClassVar[Forward[str | None]] = Forward("path.soft_error")
