"""TCP input and output around the connections: checksum, parse, delivery by
4-tuple, TIME_WAIT reopening (RFC 6191), ICMP errors to connections (RFC 5927
4.1), ephemeral ports, and every connection's timers.

A segment that matches no connection goes to a listener on its port (what
the listener does with it, RFC 9293 3.10.7.2, is listen.py's
`receive_in_listen`), or is answered the way RFC 9293 3.10.7.1 says a
CLOSED endpoint answers (closed.py). ISNs come from isn.py (RFC 6528).
"""

from __future__ import annotations

import errno
import itertools
import random
from collections import Counter
from collections.abc import Callable

from ustack.counters import Counters
from ustack.tcp import feedback
from ustack.tcp import seq
from ustack.tcp import time_wait
from ustack.tcp.closed import reset_for_closed_port
from ustack.tcp.connection import TcpConfig
from ustack.tcp.connection import TcpConnection
from ustack.tcp.events import AppEvent
from ustack.tcp.events import Closed
from ustack.tcp.feedback import LowerPathMtu
from ustack.tcp.feedback import PathMtu
from ustack.tcp.isn import IsnGenerator
from ustack.tcp.listen import Listener
from ustack.tcp.listen import receive_in_listen
from ustack.tcp.segment import NO_OPTIONS
from ustack.tcp.segment import Segment
from ustack.tcp.segment import segment_event
from ustack.tcp.segment import tcb_snapshot
from ustack.tcp.states import Event
from ustack.tcp.states import State
from ustack.tcp.syncookies import SynCookies
from ustack.tcp.time_wait import TimeWait
from ustack.tcp.timers import TimerHeap
from ustack.trace.records import NewConnection
from ustack.trace.records import SegmentEvent
from ustack.trace.records import TraceEvent
from ustack.trace.records import Tracer
from ustack.trace.records import dotted
from ustack.trace.vocabulary import DropReason
from ustack.trace.vocabulary import Layer
from ustack.trace.vocabulary import SegmentNote
from ustack.wire.address import IPV4_MAX
from ustack.wire.checksum import Buffer
from ustack.wire.checksum import transport_checksum
from ustack.wire.errors import MalformedPacket
from ustack.wire.icmp import Quote
from ustack.wire.ipv4 import PROTO_TCP
from ustack.wire.ipv6 import IPV6_HEADER_LENGTH
from ustack.wire.tcp import ACK
from ustack.wire.tcp import RST
from ustack.wire.tcp import SYN
from ustack.wire.tcp import build_tcp
from ustack.wire.tcp import parse_tcp

# Hands a TCP segment (header + payload, checksum filled, `headroom` free
# bytes in front) to IP: (dst, packet, gso_size, protocol, the IP ECN field).
# IpLayerBase.send_in_place is one.
SendSegment = Callable[[int, bytearray, int, int, int], None]


# The application side of one connection: receives its events.
AppHandler = Callable[[AppEvent], None]
# (remote address, remote port, local port): our own address is fixed, one
# per family, and the remote address says which (IPv6 above 2**32 - 1,
# wire/address.py): one table holds the connections of both.
Key = tuple[int, int, int]


EPHEMERAL_PORTS = range(32768, 61000)  # Linux's ip_local_port_range


class TcpDemux:
    def __init__(
        self,
        address: int,
        send: SendSegment,
        counters: Counters,
        config: TcpConfig | None = None,
        trace: Tracer | None = None,
        isn: Callable[[int, int, int, int, float], int] | None = None,
        syncookies: SynCookies | None = None,
        headroom: int = 0,
        address6: int | None = None,
        send6: SendSegment | None = None,
    ) -> None:
        """`address`, `send`, `headroom`: IPv4's; `address6` and `send6`:
        IPv6's, if the stack has it (its segments go with 40 free bytes in
        front, for the IPv6 header). Listeners hear both families."""
        self.address = address
        self.headroom = headroom  # free bytes before each segment handed to `send`
        self.address6 = address6
        self._send6 = send6
        # True when the link finishes TCP checksums (a TUN with offloads):
        # segments go with the pseudo-header sum only (CHECKSUM_PARTIAL).
        self.partial_checksums = False
        self.config = config or TcpConfig()
        self.trace = trace
        self.connections: dict[Key, TcpConnection] = {}
        self.listeners: dict[int, Listener] = {}
        self._keys: dict[TcpConnection, Key] = {}
        self._apps: dict[TcpConnection, AppHandler] = {}
        self._listener_of: dict[TcpConnection, Listener] = {}
        self._send = send
        self._counters = counters
        self._isn = isn or IsnGenerator()
        self.syncookies = syncookies  # None: a full backlog drops SYNs
        self._conn_ids = itertools.count(1)
        # The class each new connection is made of: the fuzzer's checks go in
        # as a subclass (tests/fuzzworld.py), so compiled or not they run.
        self.connection_class: type[TcpConnection] = TcpConnection
        self._heap: TimerHeap[TcpConnection] = TimerHeap()
        # Between begin_batch and end_batch: the connections (and TIME_WAIT
        # records, with the time of their segment) that took a segment, whose
        # ACK waits for the batch's end.
        self._batch: dict[TcpConnection | TimeWait, float | None] | None = None
        # The 4-tuples in TIME_WAIT (time_wait.py's records, not connections),
        # by their 2 MSL, each in the order of its deadline (a FIN again moves
        # its record to the end): the first is the next to expire, and the
        # first to give way when the table is full (TcpConfig.max_connections).
        # O(1) each, whatever their number; one group in practice.
        self._time_waits: dict[float, dict[Key, TimeWait]] = {}
        # The IP layer's path MTU cache (RFC 1191), when there is one.
        self.path_mtu: PathMtu | None = None
        self.lower_path_mtu: LowerPathMtu | None = None
        # With `serve --queues` > 1: an ICMP error about no connection of
        # ours goes to the other workers (daemon/icmp_relay.py): the kernel
        # picks the queue of an ICMP error by its own addresses, not by the
        # flow it quotes, so it may reach a worker that does not own the flow.
        self.foreign_icmp_error: Callable[[int, int, int, Quote], None] | None = None

    # ---- the application's side --------------------------------------------

    def listen(
        self,
        port: int,
        on_accept: Callable[[TcpConnection], None],
        backlog: int = 128,
        now: float = 0.0,
        family: int | None = None,
        config: TcpConfig | None = None,
    ) -> Listener:
        """Passive OPEN on `port`, for both families (None) or one (4 or 6);
        `config`: its connections' (None: the demux's)."""
        if port in self.listeners:
            raise OSError(98, f"port {port} already has a listener")  # EADDRINUSE
        listener = Listener(port, backlog, on_accept, family, config)
        listener.transition(Event.APP_LISTEN, now, self.trace)
        self.listeners[port] = listener
        return listener

    def close_listener(self, listener: Listener, now: float) -> None:
        """Closing a listener resets every connection it has not handed over
        yet (behaviour 11); later segments for them get RST as for a closed port."""
        if self.listeners.get(listener.port) is not listener:
            return
        del self.listeners[listener.port]
        listener.transition(Event.APP_CLOSE, now, self.trace)
        for conn in list(listener.embryonic):
            conn.abort(now)
            self.flush(conn)

    def connect(
        self,
        remote: int,
        remote_port: int,
        now: float,
        local_port: int | None = None,
        config: TcpConfig | None = None,
    ) -> TcpConnection:
        """Active OPEN to remote:remote_port; the SYN goes out at once.
        `config`: this connection's (its socket options; None: the demux's)."""
        if local_port is None:
            local_port = self._ephemeral_port(remote, remote_port)
        key = (remote, remote_port, local_port)
        if key in self.connections or self.time_wait_at(key) is not None:
            raise OSError(98, "that 4-tuple is in use")  # EADDRINUSE
        if not self._make_room(now):
            raise OSError(
                errno.ENOBUFS,
                f"connection table full ({self.config.max_connections} connections)",
            )
        conn = self._new_connection(key, now, config=config)
        conn.connect(now)
        self.flush(conn)
        return conn

    def attach(self, conn: TcpConnection, app: AppHandler) -> None:
        """Route `conn`'s events to `app`, from the next flush on (queued ones first)."""
        self._apps[conn] = app

    def endpoints(self, conn: TcpConnection) -> Key | None:
        return self._keys.get(conn)

    # ---- input ----------------------------------------------------------------

    def receive(
        self,
        src: int,
        dst: int,
        segment: Buffer,
        now: float = 0.0,
        checksum_ok: bool = False,
        ecn: int = 0,
    ) -> None:
        """One TCP segment from IP, with its datagram's ECN field."""
        counters = self._counters
        if not checksum_ok and transport_checksum(src, dst, PROTO_TCP, segment) != 0:
            counters.drop(Layer.TCP, DropReason.BAD_CHECKSUM, now, f"from {dotted(src)}")
            return
        try:
            header = parse_tcp(segment)
        except MalformedPacket as exc:
            counters.drop(Layer.TCP, exc, now, f"from {dotted(src)}")
            return
        counters["tcp.in"] += 1
        if header.flags & RST:
            counters["tcp.in.rst"] += 1
        payload = memoryview(segment)[header.data_offset * 4 :]
        seg = Segment(header.seq, header.ack, header.flags, header.window, payload, header.options)
        if ecn:
            seg.ecn = ecn
        key = (src, header.src_port, header.dst_port)
        conn = self.connections.get(key)
        previous: TcpConnection | TimeWait | None = None
        if conn is None and self._time_waits:
            record = self.time_wait_at(key)
            if record is not None:
                if not self._reopens(key, record.rcv_nxt, seg):
                    time_wait.receive(self, record, seg, now)
                    return
                time_wait.end(self, record, Event.RCV_SYN_NEW_INCARNATION, now)
                previous = record
        elif (
            conn is not None
            and conn.state is State.TIME_WAIT  # (in a batch: its record comes at the end)
            and self._reopens(key, conn.rcv_nxt, seg)
        ):
            conn.reopen(now)
            self.flush(conn)
            previous, conn = conn, None
        if conn is not None:
            batch = self._batch
            if batch is not None:
                conn.hold_acks = True
                batch[conn] = None
            if self.trace is None:
                conn.receive(seg, now)  # (_deliver's untraced case inlined: per segment)
                self.flush(conn)
            else:
                self._deliver(conn, key, seg, now)
            return
        listener = self.listeners.get(header.dst_port)
        if listener is not None and listener.hears(src):
            receive_in_listen(self, listener, key, seg, now, previous)
            return
        if self.trace is not None:
            self.trace(self._segment_event(now, None, key, "in", seg, "CLOSED", "CLOSED"))
        self._reply_closed(key, seg, now)

    def receive_icmp_error(
        self, type_: int, code: int, mtu: int, quote: Quote, now: float, relayed: bool = False
    ) -> None:
        """An ICMP error quoting a segment we sent: feedback.receive_icmp_error."""
        feedback.receive_icmp_error(self, type_, code, mtu, quote, now, relayed)

    def _deliver(self, conn: TcpConnection, key: Key, seg: Segment, now: float) -> None:
        if self.trace is None:
            conn.receive(seg, now)  # (what _traced does untraced, one call less per segment)
        else:
            self._traced(conn, key, seg, now, conn.receive)
        self.flush(conn)

    def _traced(
        self,
        conn: TcpConnection,
        key: Key,
        seg: Segment,
        now: float,
        handle: Callable[[Segment, float], None],
    ) -> None:
        """Let `conn` handle `seg`. With tracing on, the events the connection
        emits while it works wait until the segment's own event is out, so
        the trace reads in cause-and-effect order."""
        if self.trace is None:
            handle(seg, now)
            return
        before = "LISTEN" if conn.state is State.CLOSED else str(conn.state)
        held: list[TraceEvent] = []
        conn.trace = held.append
        try:
            handle(seg, now)
        finally:
            conn.trace = self.trace
        self.trace(self._segment_event(now, conn, key, "in", seg, before, str(conn.state)))
        for event in held:
            self.trace(event)

    def _reopens(self, key: Key, rcv_nxt: int, seg: Segment) -> bool:
        """RFC 9293 3.10.7.4 note / RFC 6191: a SYN above RCV.NXT may start a
        new incarnation of a 4-tuple in TIME_WAIT (behaviour 46)."""
        remote, _, local_port = key
        listener = self.listeners.get(local_port)
        return (
            seg.flags & (SYN | ACK | RST) == SYN
            and seq.gt(seg.seq, rcv_nxt)
            and listener is not None
            and listener.hears(remote)
        )

    def _reply_closed(self, key: Key, seg: Segment, now: float) -> None:
        reply = reset_for_closed_port(seg, len(seg.payload))
        if reply is None:
            self._counters.drop(Layer.TCP, DropReason.RST_TO_CLOSED_PORT, now)
            return
        self._counters["tcp.out.rst"] += 1
        rst = Segment(reply.seq, reply.ack, reply.flags, 0, note=SegmentNote.RST_NO_CONNECTION)
        if self.trace is not None:
            self.trace(self._segment_event(now, None, key, "out", rst, "CLOSED", "CLOSED"))
        self._transmit(key, rst)  # (the note is for the trace only)

    # ---- batches -----------------------------------------------------------------

    def begin_batch(self) -> None:
        """Segments read in one wake-up follow, until end_batch: each
        connection sends one ACK for the in-order data among them, after the
        last (Linux's GRO hands TCP such a batch as one segment)."""
        if self._batch is None:
            self._batch = {}

    def end_batch(self) -> None:
        batch, self._batch = self._batch, None
        for conn, when in (batch or {}).items():
            if isinstance(conn, TimeWait):
                if self.time_wait_at(conn.key) is conn:
                    assert when is not None
                    ack = conn.end_batch(when)
                    if ack is not None:
                        time_wait.send_ack(self, conn, ack, when)
            elif conn in self._keys:
                conn.end_batch()
                self.flush(conn)
            else:
                conn.hold_acks = False

    # ---- output, events, life cycle ----------------------------------------------

    def flush(self, conn: TcpConnection) -> None:
        """After anything happened to `conn`: send its segments, hand over its
        events, reschedule its timer, and forget it once it is closed.

        An application reacting to an event may call into the connection
        again (read, write, close) and call flush itself: that inner call
        returns at once, and this loop picks up what it queued.

        Each round looks at the outbox and the event queue before taking
        them: most rounds, the last one of every flush, find both empty."""
        # Twice per segment (after the input, after the read): membership
        # tests and a flag on the connection, not dict.get and set.add/discard.
        keys = self._keys
        if conn not in keys or conn.flushing:
            return
        key = keys[conn]
        conn.flushing = True
        try:
            progressed = True
            while progressed:
                progressed = False
                if conn._outbox:
                    progressed = True
                    self._send_out(conn, key)
                if conn in self._listener_of:
                    state = conn.state
                    if state is not State.SYN_RECEIVED and state is not State.LISTEN:
                        # Handshake done (or failed): the listener lets go of it.
                        listener = self._listener_of.pop(conn)
                        listener.embryonic.discard(conn)
                        if state is not State.CLOSED and listener.state is State.LISTEN:
                            listener.on_accept(conn)
                        progressed = True
                events = conn.events
                if events and conn in self._apps:
                    app = self._apps[conn]
                    progressed = True
                    while events:
                        event = events.pop(0)
                        app(event)
                        if type(event) is Closed:
                            # Closed is the last event: let go of the application
                            # now, not after TIME_WAIT, so its transport, protocol
                            # and futures do not sit in memory (and in every full
                            # GC) for 60 s.
                            self._apps.pop(conn, None)
                            break
        finally:
            conn.flushing = False
        state = conn.state
        if state is State.CLOSED or state is State.LISTEN:
            self._forget(conn, key)
            return
        if state is State.TIME_WAIT and not conn.hold_acks:
            time_wait.enter(self, conn, key)
            return
        # conn.get_timer() and TimerHeap.schedule inlined (twice per segment):
        # nothing to do when the earliest deadline is the one already on the heap.
        deadlines = conn.deadlines
        deadline = min(deadlines.values()) if deadlines else None
        scheduled = self._heap.scheduled
        if deadline is None:
            if conn in scheduled:
                del scheduled[conn]
        elif conn not in scheduled or scheduled[conn] != deadline:
            self._heap.schedule(conn, deadline)

    def _send_out(self, conn: TcpConnection, key: Key) -> None:
        """Transmit what the connection queued."""
        counters = self._counters
        out_segments, conn._outbox = conn._outbox, []  # (segments_to_send inlined: per segment)
        for out in out_segments:
            if self.trace is not None:
                state = str(conn.state)
                self.trace(self._segment_event(conn.now, conn, key, "out", out, state, state))
            counters["tcp.out"] += 1
            if out.flags & RST:
                counters["tcp.out.rst"] += 1
            if out.note == SegmentNote.RETRANSMISSION:
                counters["tcp.out.retransmit"] += 1
            self._transmit(key, out)

    def _forget(self, conn: TcpConnection, key: Key) -> None:
        if self.connections.get(key) is conn:
            del self.connections[key]
        self._keys.pop(conn, None)
        self._apps.pop(conn, None)
        self._heap.forget(conn)
        listener = self._listener_of.pop(conn, None)
        if listener is not None:
            listener.embryonic.discard(conn)
        conn.release()

    def next_deadline(self) -> float | None:
        deadline = self._heap.next_deadline()
        if self._time_waits:
            record = time_wait.next_to_end(self)
            if record is not None and (deadline is None or record.deadline < deadline):
                deadline = record.deadline
        return deadline

    def handle_timers(self, now: float) -> None:
        """Every timer due by `now`, the earliest first (a 2 MSL before a
        connection's timer at the same instant)."""
        heap = self._heap
        while True:
            if self._time_waits:
                record = time_wait.next_to_end(self)
                if record is not None and record.deadline <= now:
                    next_conn = heap.next_deadline()
                    if next_conn is None or record.deadline <= next_conn:
                        time_wait.end(self, record, Event.TIMEOUT_2MSL, now)
                        continue
            conn = heap.pop_due(now)
            if conn is None:
                return
            conn.handle_timer(now)
            self.flush(conn)

    # ---- TIME_WAIT (time_wait.py) ------------------------------------------------------

    def time_wait_at(self, key: Key) -> TimeWait | None:
        """The TIME_WAIT record of the 4-tuple `key`, if it is in TIME_WAIT."""
        for group in self._time_waits.values():
            record = group.get(key)
            if record is not None:
                return record
        return None

    def time_wait_records(self) -> list[TimeWait]:
        """Every TIME_WAIT record, for the listings and the checks."""
        return [record for group in self._time_waits.values() for record in group.values()]

    # ---- helpers ---------------------------------------------------------------

    def _make_room(self, now: float) -> bool:
        """Room for one more connection in the table: below the limit, or
        made by ending the oldest TIME_WAIT (counted)."""
        limit = self.config.max_connections
        if self.table_size() < limit:
            return True
        oldest = time_wait.next_to_end(self) if self._time_waits else None
        if oldest is None:
            return False
        time_wait.end(self, oldest, Event.TIME_WAIT_RECLAIMED, now)
        self._counters["tcp.time-wait-reclaimed"] += 1
        return self.table_size() < limit

    def table_size(self) -> int:
        """Connections and TIME_WAIT records: what max_connections bounds."""
        return len(self.connections) + sum(len(group) for group in self._time_waits.values())

    def _new_connection(
        self,
        key: Key,
        now: float,
        iss: int | None = None,
        passive: bool = False,
        config: TcpConfig | None = None,
    ) -> TcpConnection:
        if iss is None:
            iss = self._isn_for(key, now)
        conn = self.connection_class(
            conn_id=next(self._conn_ids), iss=iss, config=config or self.config, trace=self.trace
        )
        conn.counters = self._counters
        if key[0] > IPV4_MAX:
            conn.path.use_ipv6()
        if self.path_mtu is not None:
            # What ICMP taught us about the path (RFC 1191), until it expires.
            conn.path.path_mtu, conn.path.path_mtu_until = self.path_mtu(key[0], now)
        self.connections[key] = conn
        self._keys[conn] = key
        if self.trace is not None:
            remote, remote_port, local_port = key
            self.trace(
                NewConnection(
                    now,
                    conn.conn_id,
                    dotted(self._local(remote)),
                    local_port,
                    dotted(remote),
                    remote_port,
                    passive,
                )
            )
        return conn

    def _isn_for(self, key: Key, now: float) -> int:
        remote, remote_port, local_port = key
        return self._isn(self._local(remote), local_port, remote, remote_port, now)

    def _local(self, remote: int) -> int:
        """Our address in the family of `remote`."""
        if remote > IPV4_MAX:
            assert self.address6 is not None  # (no IPv6 segment comes without it)
            return self.address6
        return self.address

    def _ephemeral_port(self, remote: int, remote_port: int) -> int:
        start = random.randrange(len(EPHEMERAL_PORTS))
        for i in range(len(EPHEMERAL_PORTS)):
            port = EPHEMERAL_PORTS[(start + i) % len(EPHEMERAL_PORTS)]
            key = (remote, remote_port, port)
            if (
                key not in self.connections
                and port not in self.listeners
                and self.time_wait_at(key) is None
            ):
                return port
        raise OSError(99, "no free ephemeral port")  # EADDRNOTAVAIL

    def _transmit(self, key: Key, seg: Segment) -> None:
        """Build `seg` for the 4-tuple `key` and hand it to its family's IP,
        with room in front for that IP's header (no copy: IP writes there)."""
        remote, remote_port, local_port = key
        if remote > IPV4_MAX:
            assert self.address6 is not None and self._send6 is not None
            src, headroom, send = self.address6, IPV6_HEADER_LENGTH, self._send6
        else:
            src, headroom, send = self.address, self.headroom, self._send
        # build_tcp's arguments in place (per segment: no keyword matching);
        # the checksum is partial with offloads, and for GSO, whose pieces
        # the kernel sums each.
        segment = build_tcp(
            src, remote, local_port, remote_port, seg.seq, seg.ack, seg.flags, seg.window,
            None if seg.options is NO_OPTIONS else seg.options, seg.payload, 0, headroom,
            self.partial_checksums or seg.gso_size > 0,
        )  # fmt: skip
        send(remote, segment, seg.gso_size, PROTO_TCP, seg.ecn)

    def _segment_event(
        self,
        now: float,
        conn: TcpConnection | None,
        key: Key,
        direction: str,
        seg: Segment,
        before: str,
        after: str,
    ) -> SegmentEvent:
        tcb = None if conn is None else tcb_snapshot(conn)
        local = self._local(key[0])
        return segment_event(now, conn, local, key, direction, seg, before, after, tcb)

    def queued(self) -> dict[str, int]:
        """Connections by state, for stats and leak checks."""
        table = Counter(str(conn.state) for conn in self.connections.values())
        waiting = sum(len(group) for group in self._time_waits.values())
        if waiting:
            table["TIME_WAIT"] += waiting
        return dict(table)
