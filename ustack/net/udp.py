"""UDP (RFC 768) for applications, both families, sans-I/O.

`UdpLayer` (the stack's `stack.udp`) keeps the endpoints: bound to one of the
stack's addresses or to the wildcard, on a port or an ephemeral one, for
IPv4, IPv6 or both (as a Linux AF_INET6 socket without IPV6_V6ONLY), and
optionally connected to one peer. IP input has checked a datagram's length
and checksum (`IpLayerBase._receive_udp`) before `deliver` is called; IP
output fragments what is larger than the path MTU.

An endpoint queues what arrives (datagrams and ICMP errors) and calls its
`wake` callable when its queue goes from empty to not empty; the application
then takes them with `take()`. Nothing here reads a clock or a socket.
"""

from __future__ import annotations

import errno
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field

from ustack.counters import Counters
from ustack.trace.records import DatagramEvent
from ustack.trace.records import Tracer
from ustack.trace.vocabulary import DropReason
from ustack.trace.vocabulary import Layer
from ustack.wire.address import IPV4_MAX
from ustack.wire.address import format_address
from ustack.wire.address import is_ipv6
from ustack.wire.checksum import Buffer
from ustack.wire.checksum import transport_checksum
from ustack.wire.icmp import Quote
from ustack.wire.ipv4 import PROTO_UDP
from ustack.wire.udp import UDP_FIXED
from ustack.wire.udp import UDP_HEADER_LENGTH

EPHEMERAL_PORTS = range(32768, 61000)  # Linux's ip_local_port_range, as TCP's
# The largest UDP payload: 65,535 less the IPv4 header (20) and UDP's (8);
# over IPv6 the payload length field counts no IPv6 header (RFC 8200 3).
MAX_PAYLOAD_V4 = 65535 - 20 - UDP_HEADER_LENGTH  # 65,507
MAX_PAYLOAD_V6 = 65535 - UDP_HEADER_LENGTH  # 65,527

IPV4, IPV6 = 4, 6
BOTH = frozenset({IPV4, IPV6})

# Sends one UDP datagram (header and payload) to an address: (dst, datagram, now).
DatagramOutput = Callable[[int, bytearray, float], None]
# What an ICMP error (type, code, ipv6?) means: its errno name, or None.
ErrorMeaning = Callable[[int, int, bool], str | None]
# Lowers the path MTU to a destination, as a Packet Too Big taught: (dst, mtu, now).
LowerPathMtu = Callable[[int, int, float], object]
# Raises OSError for a destination nothing may be sent to (Stack: the IP
# layer's check_destination: broadcast, loopback, the stack's own address...).
CheckDestination = Callable[[int], None]


@dataclass(frozen=True)
class UdpLimits:
    """Linux-like defaults: net.core.rmem_default for the receive queue (in
    payload bytes here, Linux counts the buffers' truesize), and a cap on
    the endpoints so that a program cannot fill the table."""

    max_endpoints: int = 4096
    receive_queue_bytes: int = 212992


@dataclass(frozen=True, slots=True)
class ReceivedDatagram:
    data: bytes
    remote: int
    remote_port: int


@dataclass(frozen=True, slots=True)
class ReceivedError:
    """An ICMP error about a datagram this endpoint sent: the errno name
    (ECONNREFUSED for port unreachable...) and the destination it was sent to."""

    error: str
    remote: int
    remote_port: int

    @property
    def errno(self) -> int:
        return int(getattr(errno, self.error, errno.EIO))


@dataclass(eq=False)
class UdpEndpoint:
    """One UDP endpoint: what a bound (and maybe connected) datagram socket is."""

    layer: UdpLayer
    local: int | None  # None: the wildcard (0.0.0.0 and/or ::)
    local_port: int
    families: frozenset[int]
    reuse_address: bool = False  # SO_REUSEADDR: shares the port with others that set it
    remote: int | None = None  # connected to (remote, remote_port)
    remote_port: int = 0
    wake: Callable[[], None] | None = None
    queue: deque[ReceivedDatagram | ReceivedError] = field(default_factory=deque)
    queued_bytes: int = 0
    closed: bool = False

    def connect(self, remote: int, remote_port: int) -> None:
        """From now on, send to and hear only (remote, remote_port) (RFC 768
        has no connection: this is the sockets API's filter)."""
        self.layer.check_destination(self, remote)
        if not 0 < remote_port <= 0xFFFF:
            raise OSError(errno.EINVAL, f"port {remote_port} out of range")
        self.remote, self.remote_port = remote, remote_port

    def sendto(self, data: Buffer, now: float, remote: int | None = None, port: int = 0) -> None:
        """One datagram to (remote, port), or to the connected peer when `remote` is None."""
        self.layer.send(self, data, now, remote, port)

    def take(self) -> ReceivedDatagram | ReceivedError | None:
        """The oldest datagram or error queued, or None."""
        if not self.queue:
            return None
        item = self.queue.popleft()
        if isinstance(item, ReceivedDatagram):
            self.queued_bytes -= len(item.data)
        return item

    def close(self) -> None:
        self.layer.close(self)


@dataclass(eq=False, repr=False)  # (its endpoints and counters would be its repr)
class UdpLayer:
    """The UDP endpoints of a stack, and UDP in and out for both families.
    `send6`, `address6`: None for a stack without IPv6; `error_meaning`:
    an ICMP error's errno for an endpoint (None: errors are only counted);
    `lower_path_mtu`: where an ICMPv6 Packet Too Big goes (RFC 8201);
    `check_route`: raises for a destination no datagram may go to."""

    counters: Counters
    address: int
    send4: DatagramOutput
    address6: int | None = None
    send6: DatagramOutput | None = None
    error_meaning: ErrorMeaning | None = None
    lower_path_mtu: LowerPathMtu | None = None
    limits: UdpLimits = field(default_factory=UdpLimits)
    tracer: Tracer | None = None
    check_route: CheckDestination | None = None
    endpoints: dict[int, list[UdpEndpoint]] = field(default_factory=dict)  # by local port
    _count: int = field(default=0, init=False)  # endpoints, all ports together

    # ---- endpoints ------------------------------------------------------

    def bind(
        self,
        local: int | None = None,
        port: int = 0,
        family: int | None = None,
        reuse_address: bool = False,
    ) -> UdpEndpoint:
        """A new endpoint on (local, port). `local` None is the wildcard;
        `family` 4 or 6 keeps a wildcard to one family, None hears both (a
        dual-stack socket). Port 0 picks a free ephemeral port at random
        (RFC 6056 3.3.1's simple random choice). OSError EADDRINUSE when the
        port is taken for an overlapping address, EADDRNOTAVAIL for an address
        the stack does not have, ENOBUFS past max_endpoints. `reuse_address`:
        SO_REUSEADDR, the port may be shared with endpoints that set it too
        (each datagram then goes to the most specific, see lookup)."""
        if local is not None:
            if local == self.address:
                families = frozenset({IPV4})
            elif self.address6 is not None and local == self.address6:
                families = frozenset({IPV6})
            else:
                raise OSError(
                    errno.EADDRNOTAVAIL, f"{format_address(local)} is not an address of this stack"
                )
        elif family is None:
            families = BOTH if self.address6 is not None else frozenset({IPV4})
        elif family == IPV6 and self.address6 is None:
            raise OSError(errno.EAFNOSUPPORT, "this stack has no IPv6")
        else:
            families = frozenset({family})
        if self._count >= self.limits.max_endpoints:
            raise OSError(errno.ENOBUFS, f"{self._count} UDP endpoints already (max_endpoints)")
        if port == 0:
            port = self._ephemeral_port(local, families)
        elif not 0 < port <= 0xFFFF:
            raise OSError(errno.EINVAL, f"port {port} out of range")
        elif self._taken(port, local, families, reuse_address):
            raise OSError(errno.EADDRINUSE, f"UDP port {port} is in use")
        endpoint = UdpEndpoint(self, local, port, families, reuse_address=reuse_address)
        self.endpoints.setdefault(port, []).append(endpoint)
        self._count += 1
        return endpoint

    def _taken(
        self, port: int, local: int | None, families: frozenset[int], reuse: bool = False
    ) -> bool:
        """Linux's rule (udp_lib_lport_inuse): a port is taken for an address
        if an endpoint holds it for that address, or for the wildcard, of an
        overlapping family, unless both set SO_REUSEADDR."""
        for other in self.endpoints.get(port, ()):
            if reuse and other.reuse_address:
                continue
            if other.families & families and (
                other.local is None or local is None or other.local == local
            ):
                return True
        return False

    def _ephemeral_port(self, local: int | None, families: frozenset[int]) -> int:
        start = random.randrange(len(EPHEMERAL_PORTS))
        for i in range(len(EPHEMERAL_PORTS)):
            port = EPHEMERAL_PORTS[(start + i) % len(EPHEMERAL_PORTS)]
            if not self._taken(port, local, families):
                return port
        raise OSError(errno.EAGAIN, "no free ephemeral UDP port")  # as Linux's udp_lib_get_port

    def close(self, endpoint: UdpEndpoint) -> None:
        if endpoint.closed:
            return
        endpoint.closed = True
        holders = self.endpoints.get(endpoint.local_port, [])
        if endpoint in holders:
            holders.remove(endpoint)
            self._count -= 1
        if not holders:
            self.endpoints.pop(endpoint.local_port, None)
        endpoint.queue.clear()
        endpoint.queued_bytes = 0

    def check_destination(self, endpoint: UdpEndpoint, remote: int) -> None:
        """OSError if `endpoint` cannot send to `remote`: another family than
        its own (EAFNOSUPPORT), or an address the IP layer refuses
        (ENETUNREACH: broadcast, multicast, loopback, the stack's own; Linux
        says EACCES for a broadcast without SO_BROADCAST, which we lack)."""
        family = IPV6 if is_ipv6(remote) else IPV4
        if family not in endpoint.families:
            raise OSError(
                errno.EAFNOSUPPORT, f"{format_address(remote)}: not this endpoint's address family"
            )
        if self.check_route is not None:
            self.check_route(remote)

    # ---- output ---------------------------------------------------------

    def send(
        self,
        endpoint: UdpEndpoint,
        data: Buffer,
        now: float,
        remote: int | None = None,
        remote_port: int = 0,
    ) -> None:
        """RFC 768: the header and the checksum over the pseudo-header, always
        computed (both families; a computed 0 is sent as 0xFFFF, since 0
        means "none" on IPv4 and is invalid on IPv6, RFC 8200 8.1). IP
        output fragments a datagram larger than the path MTU."""
        if endpoint.closed:
            raise OSError(errno.EBADF, "the endpoint is closed")
        if remote is None:
            if endpoint.remote is None:
                raise OSError(errno.EDESTADDRREQ, "not connected: give an address")
            remote, remote_port = endpoint.remote, endpoint.remote_port
        elif endpoint.remote is not None and (remote, remote_port) != (
            endpoint.remote,
            endpoint.remote_port,
        ):
            raise OSError(errno.EISCONN, "connected: send to the peer only")
        self.check_destination(endpoint, remote)
        if not 0 < remote_port <= 0xFFFF:
            raise OSError(errno.EINVAL, f"port {remote_port} out of range")
        ipv6 = is_ipv6(remote)
        limit = MAX_PAYLOAD_V6 if ipv6 else MAX_PAYLOAD_V4
        if len(data) > limit:
            raise OSError(errno.EMSGSIZE, f"{len(data)} bytes: a UDP datagram holds {limit}")
        src = self.address6 if ipv6 else self.address
        assert src is not None
        length = UDP_HEADER_LENGTH + len(data)
        datagram = bytearray(UDP_FIXED.pack(endpoint.local_port, remote_port, length, 0))
        datagram += data
        checksum = transport_checksum(src, remote, PROTO_UDP, datagram) or 0xFFFF
        datagram[6:8] = checksum.to_bytes(2, "big")
        prefix = "udp6" if ipv6 else "udp"
        self.counters[f"{prefix}.out"] += 1
        self._trace(now, "out", src, endpoint.local_port, remote, remote_port, len(data))
        if ipv6:
            assert self.send6 is not None
            self.send6(remote, datagram, now)
        else:
            self.send4(remote, datagram, now)

    # ---- input ----------------------------------------------------------

    def lookup(
        self, local: int, local_port: int, remote: int, remote_port: int
    ) -> UdpEndpoint | None:
        """The endpoint for a datagram to (local, local_port) from (remote,
        remote_port): one connected to that peer first, then one bound to
        `local`, then a wildcard one (as Linux's compute_score prefers the
        most specific). A connected endpoint hears its peer only."""
        holders = self.endpoints.get(local_port)
        if not holders:
            return None
        family = IPV6 if local > IPV4_MAX else IPV4
        best: UdpEndpoint | None = None
        best_score = -1
        for endpoint in holders:
            if family not in endpoint.families:
                continue
            if endpoint.local is not None and endpoint.local != local:
                continue
            score = 0
            if endpoint.remote is not None:
                if (endpoint.remote, endpoint.remote_port) != (remote, remote_port):
                    continue
                score += 2
            if endpoint.local is not None:
                score += 1
            if score > best_score:
                best, best_score = endpoint, score
        return best

    def deliver(
        self,
        src: int,
        dst: int,
        src_port: int,
        dst_port: int,
        payload: memoryview,
        now: float,
    ) -> bool:
        """A datagram IP input accepted (length and checksum checked): queued
        on its endpoint (True), or False when no endpoint has the port (IP
        then answers port unreachable, RFC 1122 4.1.3.1). A full receive
        queue drops it, counted as Linux's RcvbufErrors."""
        endpoint = self.lookup(dst, dst_port, src, src_port)
        if endpoint is None:
            return False
        prefix = "udp6" if dst > IPV4_MAX else "udp"
        self._trace(now, "in", dst, dst_port, src, src_port, len(payload))
        if endpoint.queued_bytes + len(payload) > self.limits.receive_queue_bytes:
            self.counters[f"{prefix}.in.rcvbuf-errors"] += 1
            self.counters.drop(
                Layer.UDP,
                DropReason.RECEIVE_QUEUE_FULL,
                now,
                f"{endpoint.queued_bytes} bytes queued on port {dst_port}",
            )
            return True
        self.counters[f"{prefix}.in"] += 1
        endpoint.queued_bytes += len(payload)
        self._queue(endpoint, ReceivedDatagram(bytes(payload), src, src_port))
        return True

    def _queue(self, endpoint: UdpEndpoint, item: ReceivedDatagram | ReceivedError) -> None:
        was_empty = not endpoint.queue
        endpoint.queue.append(item)
        if was_empty and endpoint.wake is not None:
            endpoint.wake()

    def receive_icmp_error(self, type_: int, code: int, mtu: int, quote: Quote, now: float) -> None:
        """An ICMP or ICMPv6 error quoting a UDP datagram we sent (IP has
        checked that its source is ours). As Linux (__udp4_lib_err,
        __udp6_lib_err): the endpoint is found as for a reply, and only a
        connected one hears the error: an unconnected endpoint may have sent
        to many peers, and the error would then fail an unrelated later
        call; Linux reports to it only with IP_RECVERR, which asyncio does
        not set. Unlike Linux without IP_RECVERR, a connected endpoint hears
        soft errors too (host unreachable, time exceeded): asyncio's
        error_received is there to report them. A Packet Too Big lowers the
        path MTU first (RFC 8201 4), so the next datagrams go in smaller
        fragments, whoever sent this one."""
        ipv6 = is_ipv6(quote.src)
        if mtu and ipv6 and self.lower_path_mtu is not None:
            self.lower_path_mtu(quote.dst, mtu, now)
        src_port = int.from_bytes(quote.transport[0:2], "big")
        dst_port = int.from_bytes(quote.transport[2:4], "big")
        endpoint = self.lookup(quote.src, src_port, quote.dst, dst_port)
        error = None if self.error_meaning is None else self.error_meaning(type_, code, ipv6)
        if endpoint is None or error is None:
            self.counters.drop(Layer.UDP, DropReason.NO_CONNECTION, now, f"port {src_port}")
            return
        if endpoint.remote is None:
            self.counters.drop(Layer.UDP, DropReason.ERROR_UNCONNECTED, now, error)
            return
        self.counters[f"{'udp6' if ipv6 else 'udp'}.in.icmp-errors"] += 1
        self._queue(endpoint, ReceivedError(error, quote.dst, dst_port))

    def _trace(
        self,
        now: float,
        direction: str,
        local: int,
        local_port: int,
        remote: int,
        remote_port: int,
        length: int,
    ) -> None:
        if self.tracer is not None:
            self.tracer(
                DatagramEvent(
                    now,
                    direction,
                    format_address(local),
                    local_port,
                    format_address(remote),
                    remote_port,
                    length,
                )
            )
