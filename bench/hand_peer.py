"""A Stack listening on port 80 with its peer built by hand: each segment
written out (IPv4 and TCP headers), one peer port per connection, no
network and no event loop. The memory test (tests/unit/test_connection_memory.py)
and the memory benches (connection_count.py, control_parts.py) drive it."""

from __future__ import annotations

import struct

from ustack.stack import Stack
from ustack.tcp.connection import TcpConnection
from ustack.wire.ipv4 import PROTO_TCP
from ustack.wire.ipv4 import build_ipv4_in_place
from ustack.wire.tcp import ACK
from ustack.wire.tcp import FIN
from ustack.wire.tcp import SYN
from ustack.wire.tcp import TcpOptions
from ustack.wire.tcp import build_tcp

US, PEER = 0xC6120002, 0xC6120001
SYN_OPTIONS = TcpOptions(mss=1460, window_scale=7, sack_permitted=True, timestamps=(1, 0))
TS = TcpOptions(timestamps=(2, 0))


class Server:
    """A Stack listening on 80; the peer's side is built by hand, one port each."""

    def __init__(self, backlog: int = 2000) -> None:
        self.out: list[bytes] = []
        self.stack = Stack(US, lambda packet: self.out.append(bytes(packet)) or True)
        self.accepted: list[TcpConnection] = []
        self.stack.tcp.listen(80, self.accepted.append, backlog=backlog)
        self.ours: dict[int, int] = {}  # peer port -> our next SEQ
        self.theirs: dict[int, int] = {}  # peer port -> its next SEQ

    def segment(self, port: int, flags: int, payload: bytes = b"", now: float = 0.0) -> None:
        options = SYN_OPTIONS if flags & SYN else TS
        packet = build_tcp(
            src=PEER, dst=US, src_port=port, dst_port=80, seq=self.theirs.get(port, 1000),
            ack=self.ours.get(port, 0), flags=flags, window=64240, options=options,
            payload=payload, headroom=20,
        )  # fmt: skip
        build_ipv4_in_place(packet, src=PEER, dst=US, protocol=PROTO_TCP, ttl=64, identification=1)
        self.out.clear()
        self.stack.receive(packet, now)
        self.theirs[port] = self.theirs.get(port, 1000) + len(payload) + bool(flags & (SYN | FIN))

    def handshake(self, port: int) -> TcpConnection:
        self.segment(port, SYN)
        self.ours[port] = struct.unpack_from("!I", self.out[-1], 24)[0] + 1
        self.segment(port, ACK)
        return self.accepted[-1]

    def exchange(self, port: int, conn: TcpConnection) -> None:
        """A request, the answer, its ACK: then nothing in flight."""
        self.segment(port, ACK, b"GET / HTTP/1.1\r\n\r\n")
        assert conn.read(1 << 16, 0.0)
        conn.send(b"x" * 1000, 0.0)
        self.stack.tcp.flush(conn)
        self.ours[port] += 1000
        self.segment(port, ACK)

    def close(self, port: int, conn: TcpConnection) -> None:
        self.segment(port, FIN | ACK)
        conn.close(0.0)
        self.stack.tcp.flush(conn)
        self.ours[port] += 1
        self.segment(port, ACK)
