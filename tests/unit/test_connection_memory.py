"""Memory per connection of the sans-I/O core, measured with tracemalloc:
what an idle ESTABLISHED connection costs (after its handshake, and after a
request and its answer, all acknowledged), and what is left once closed.

The figures are Python's allocations, deterministic for a given interpreter;
the bounds leave room for its version. Before the empty deques went (events,
the receive buffer's chunks, RACK's send log), an idle connection took
5.3 KB after its handshake and 6.2 KB after an exchange; now 3.2 and 3.5 KB.

TIME_WAIT (issue 18 item 4): a compact record (tcp/time_wait.py), not the
connection: about 350 bytes, where the connection in TIME_WAIT took 6.5 KB;
measured on two stacks in memory (tools/time_wait_load.py). Also: no
__dict__ on any per-connection object, no cycle left by closed connections.
"""

from __future__ import annotations

import gc
import tracemalloc

from hand_peer import Server  # bench/hand_peer.py

from tools.time_wait_load import Pair
from ustack.tcp.connection import _LINKS
from ustack.tcp.time_wait import TimeWait

COUNT = 500
TW_COUNT = 2_000


def bytes_per_connection(exchange: bool) -> tuple[float, float]:
    """(bytes per idle ESTABLISHED connection, bytes left per connection once
    they are all closed), over COUNT connections after a warm-up."""
    server = Server()
    for port in range(1000, 1100):  # warm-up: the stack's own tables and caches
        conn = server.handshake(port)
        if exchange:
            server.exchange(port, conn)
        server.close(port, conn)
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        conns = {port: server.handshake(port) for port in range(2000, 2000 + COUNT)}
        if exchange:
            for port, conn in conns.items():
                server.exchange(port, conn)
        server.accepted.clear()
        gc.collect()
        idle = tracemalloc.get_traced_memory()[0]
        assert server.stack.tcp.queued() == {"ESTABLISHED": COUNT}
        for port, conn in conns.items():
            server.close(port, conn)
        server.stack.tcp.handle_timers(1000.0)
        del conns, conn
        gc.collect()
        closed = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert server.stack.tcp.queued() == {}
    return (idle - start) / COUNT, (closed - start) / COUNT


def test_an_idle_connection_costs_under_4_kb_and_is_freed_on_close() -> None:
    idle, left = bytes_per_connection(exchange=False)
    assert idle < 4000, f"{idle:.0f} bytes per idle connection"
    assert left < 500, f"{left:.0f} bytes per connection left after close"  # the tables' slack


def test_a_connection_idle_after_an_exchange_costs_under_4_kb() -> None:
    idle, left = bytes_per_connection(exchange=True)
    assert idle < 4000, f"{idle:.0f} bytes per idle connection after an exchange"
    assert left < 500, f"{left:.0f} bytes per connection left after close"


def traced_bytes_per(count: int, make: object) -> float:
    assert callable(make)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = make()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept
    return (after - before) / count


def test_a_time_wait_costs_at_most_512_bytes() -> None:
    """Linux's timewait socket is about 200 bytes; ours: the record (a few
    slots, its numbers packed), its 4-tuple and its place in the table."""
    pair = Pair()
    pair.cycle()  # first-use allocations out of the way

    def fill() -> None:
        for _ in range(TW_COUNT):
            pair.cycle()
        pair.accepted.clear()

    per_time_wait = traced_bytes_per(TW_COUNT, fill)
    assert pair.a.tcp.queued() == {"TIME_WAIT": TW_COUNT + 1}
    assert pair.b.tcp.queued() == {}
    assert not pair.a.tcp.connections  # records, not connections
    assert per_time_wait <= 512, per_time_wait


def test_no_per_connection_object_has_a_dict() -> None:
    """__slots__ on the connection and every part it owns, and on the record."""
    pair = Pair()
    conn = pair.connect()
    conn.send(b"x" * 3000, pair.now)  # the send buffer and RACK's log in use
    pair.a.tcp.flush(conn)
    parts = [
        conn, conn.sender, conn.receiver, conn.recovery, conn.recovery.rack,
        conn.recovery.rtt, conn.recovery.cc, conn.receiver.buffer,
        conn.receiver.out_of_order, conn._timers, conn.keepalive, conn.path,
    ]  # fmt: skip
    assert [type(part).__name__ for part in parts if hasattr(part, "__dict__")] == []
    pair.run()
    conn.close(pair.now)
    pair.a.tcp.flush(conn)
    pair.run()
    theirs = pair.accepted.pop()
    assert theirs.read(1 << 16, pair.now) == b"x" * 3000  # (unread, its close would reset)
    theirs.close(pair.now)
    pair.b.tcp.flush(theirs)
    pair.run()
    (record,) = pair.a.tcp.time_wait_records()
    assert not hasattr(record, "__dict__")
    assert isinstance(record, TimeWait) and record.unpacked().conn_id == conn.conn_id


def test_closed_connections_leave_no_cycle_for_the_collector() -> None:
    """Connections through their whole life, TIME_WAIT and its end included,
    with the collector off: a collection afterwards finds nothing of theirs
    (reference counting freed everything at once)."""
    pair = Pair(msl=0.5)
    pair.cycle()
    gc.collect()
    gc.disable()
    try:
        for _ in range(500):
            pair.cycle()
        pair.accepted.clear()
        pair.now += 2.0  # past every 2 MSL
        for stack in (pair.a, pair.b):
            stack.handle_timers(pair.now)
        assert pair.a.tcp.queued() == {} and pair.b.tcp.queued() == {}
        found = gc.collect()
    finally:
        gc.enable()
    assert found == 0


def test_release_drops_every_link_back() -> None:
    """TcpConnection.release() drops, in each part, exactly the slots that
    refer back to the connection or another part: those of its __slots__
    named like a link, which are also what the class lets be deleted
    (__deletable__, for the compiled build). Checked on the pure classes'
    declarations, read from the source of each class (compiled classes keep
    neither list)."""
    import ast
    from pathlib import Path

    import ustack

    links = {"_conn", "_owner", "_timers", "_rcv", "_snd", "_recovery"}
    for part, released in _LINKS.items():
        slots: list[str] = []
        deletable: list[str] = []
        for klass in part.__mro__[:-1]:
            source = Path(ustack.__path__[0], *klass.__module__.split(".")[1:]).with_suffix(".py")
            tree = ast.parse(source.read_text())
            (body,) = [n for n in tree.body if getattr(n, "name", "") == klass.__name__]
            for statement in body.body:
                if isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Name):
                    name = statement.targets[0].id
                    if name == "__slots__":
                        slots += ast.literal_eval(statement.value)
                    elif name == "__deletable__":
                        deletable += ast.literal_eval(statement.value)
        assert sorted(released) == sorted(n for n in slots if n in links) == sorted(deletable), part
