"""`ustack serve --queues` > 1: an ICMP error to the worker that owns its flow.

The kernel puts a packet it sends to a multi-queue TUN on the queue of its
flow hash (drivers/net/tun.c tun_automq_select_queue), and an ICMP error's
hash is that of its own addresses (the router's and ours), not of the TCP
flow it quotes: a "fragmentation needed" (RFC 1191) or a Packet Too Big
(RFC 8201) for a connection of worker 1 may reach worker 0. Without a relay
that connection never learns the path MTU and stalls until black-hole
detection (RFC 4821) guesses it. So a worker that finds no connection for
an ICMP error about TCP (TcpDemux.foreign_icmp_error) sends what it parsed
(type, code, the MTU, the quote) to every other worker over a datagram
socket pair made before the fork; the one that owns the flow acts on it
with the usual checks (the quoted sequence number, RFC 5927 4.1), the
others count it (`icmp.in.relayed-not-here`) and do not relay it again.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from ustack.counters import Counters
from ustack.runner import StackRunner
from ustack.wire.icmp import Quote

# type, code, MTU, the quote's protocol and total length, its source and
# destination (16 bytes: IPv4 or IPv6 as ints); then its transport bytes.
MESSAGE = struct.Struct("!BBIBI16s16s")
MAX_MESSAGE = MESSAGE.size + 1500  # a quote is at most what fits in a minimum-MTU error


def socket_pairs(count: int) -> list[tuple[socket.socket, socket.socket]]:
    """One datagram pair per worker: (the end others send to, its own inbox)."""
    pairs = []
    for _ in range(count):
        send_end, inbox = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        send_end.setblocking(False)
        inbox.setblocking(False)
        pairs.append((send_end, inbox))
    return pairs


def close_pairs(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    for send_end, inbox in pairs:
        send_end.close()
        inbox.close()


def encode(type_: int, code: int, mtu: int, quote: Quote) -> bytes:
    header = MESSAGE.pack(
        type_, code, mtu, quote.protocol, quote.total_length,
        quote.src.to_bytes(16, "big"), quote.dst.to_bytes(16, "big"),
    )  # fmt: skip
    return header + quote.transport[: MAX_MESSAGE - MESSAGE.size]


def decode(message: bytes) -> tuple[int, int, int, Quote]:
    """The inverse of encode; struct.error if `message` is too short."""
    type_, code, mtu, protocol, total_length, src, dst = MESSAGE.unpack_from(message)
    quote = Quote(
        int.from_bytes(src, "big"), int.from_bytes(dst, "big"), protocol, total_length,
        message[MESSAGE.size :],
    )  # fmt: skip
    return type_, code, mtu, quote


class IcmpRelay:
    """Worker `index`'s side: its inbox and the other workers' send ends."""

    def __init__(self, pairs: list[tuple[socket.socket, socket.socket]], index: int) -> None:
        self.inbox = pairs[index][1]
        self.others = [send_end for i, (send_end, _) in enumerate(pairs) if i != index]
        for i, (send_end, inbox) in enumerate(pairs):  # what this worker does not use
            if i == index:
                send_end.close()
            else:
                inbox.close()
        self._runner: StackRunner | None = None
        self._counters: Counters | None = None

    def start(self, runner: StackRunner) -> None:
        """On the worker's loop: its stack relays what it cannot place, and
        acts on what the others relay."""
        self._runner = runner
        self._counters = runner.stack.counters
        runner.stack.tcp.foreign_icmp_error = self.send
        asyncio.get_running_loop().add_reader(self.inbox.fileno(), self._on_readable)

    def send(self, type_: int, code: int, mtu: int, quote: Quote) -> None:
        message = encode(type_, code, mtu, quote)
        for other in self.others:
            try:
                other.send(message)
            except OSError:  # a full inbox (a worker stuck or gone): as a lost ICMP
                if self._counters is not None:
                    self._counters["icmp.relay.dropped"] += 1

    def _on_readable(self) -> None:
        runner = self._runner
        assert runner is not None and self._counters is not None
        tcp = runner.stack.tcp
        while True:
            try:
                message = self.inbox.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                break
            try:
                type_, code, mtu, quote = decode(message)
            except struct.error:
                self._counters["icmp.relay.malformed"] += 1
                continue
            tcp.receive_icmp_error(type_, code, mtu, quote, runner.now(), relayed=True)
        runner.done()

    def close(self) -> None:
        """Once the worker's loop is over."""
        self.inbox.close()
        for other in self.others:
            other.close()
