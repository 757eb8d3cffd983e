"""What the views read of a 4-tuple in TIME_WAIT, once a compact record
(tcp/time_wait.py) holds it in place of the connection: `ustack ss` (the
control's connection rows), the fault log's relative numbers and the
connection number the peer states are filed under. Each must read as it
read of the connection: the same number, the same ISNs, the sequence
numbers where the connection left them.
"""

from __future__ import annotations

from scapy.layers.inet import IP
from scapy.layers.inet import TCP

from tools.time_wait_load import A
from tools.time_wait_load import B
from tools.time_wait_load import Pair
from ustack.daemon.reports import connection_row
from ustack.daemon.reports import fault_event
from ustack.daemon.reports import table_rows
from ustack.study.faults import FaultInjector
from ustack.study.faults import Verdict
from ustack.study.faults import parse_rule
from ustack.tcp.connection import TcpConnection
from ustack.tcp.time_wait import numbered_at
from ustack.trace.records import dotted

SENT, RECEIVED = 3000, 1200  # bytes each way before the close


def _in_fin_wait_2() -> tuple[Pair, TcpConnection, TcpConnection]:
    """`a` sent SENT bytes and its FIN, `b` answered RECEIVED bytes and has
    not closed yet: `a` is in FIN_WAIT_2, everything acknowledged."""
    pair = Pair()
    conn = pair.connect()
    conn.send(b"x" * SENT, pair.now)
    pair.a.tcp.flush(conn)
    pair.run()
    theirs = pair.accepted.pop()
    assert theirs.read(1 << 16, pair.now) == b"x" * SENT
    theirs.send(b"y" * RECEIVED, pair.now)
    pair.b.tcp.flush(theirs)
    pair.run()
    assert conn.read(1 << 16, pair.now) == b"y" * RECEIVED
    conn.close(pair.now)
    pair.a.tcp.flush(conn)
    pair.run()
    assert str(conn.state) == "FIN_WAIT_2"
    return pair, conn, theirs


def test_ss_reads_a_time_wait_record_as_it_read_the_connection() -> None:
    pair, conn, theirs = _in_fin_wait_2()
    key = pair.a.tcp._keys[conn]
    before = connection_row(A, key, conn, pair.now)
    theirs.close(pair.now)
    pair.b.tcp.flush(theirs)
    pair.run()
    assert not pair.a.tcp.connections
    [after] = table_rows(pair.a, pair.now)
    assert after["state"] == "TIME_WAIT"
    for name in ("id", "local", "remote", "iss", "irs", "snd_nxt"):
        assert after[name] == before[name], name
    # Our FIN is acknowledged (1 + SENT + 1 from the ISS); theirs is in: RCV.NXT
    # one past the FIN_WAIT_2 figure.
    assert after["snd_una"] == after["snd_nxt"] == SENT + 2
    assert after["rcv_nxt"] == before["rcv_nxt"] + 1 == RECEIVED + 2
    # The window our ACKs advertise (scaled): as the connection advertised it.
    assert after["rcv_wnd"] == before["rcv_wnd"] > 0


def test_fault_events_and_peer_states_number_a_time_wait_segment_as_the_connection() -> None:
    pair, conn, theirs = _in_fin_wait_2()
    key = pair.a.tcp._keys[conn]
    remote, remote_port, local_port = key
    theirs.close(pair.now)
    pair.b.tcp.flush(theirs)
    pair.run()
    assert pair.a.tcp.time_wait_at(key) is not None
    numbered = numbered_at(pair.a.tcp, key)
    assert numbered is not None and numbered.conn_id == conn.conn_id
    assert numbered_at(pair.a.tcp, (remote, remote_port, local_port + 1)) is None
    # The peer's FIN again, as the fault log would show it.
    fin = IP(src=dotted(B), dst=dotted(A)) / TCP(
        sport=remote_port, dport=local_port, flags="FA",
        seq=(conn.irs + RECEIVED + 1) & 0xFFFFFFFF, ack=(conn.iss + SENT + 2) & 0xFFFFFFFF,
    )  # fmt: skip
    rule = FaultInjector().add(parse_rule("drop:flags=FIN"))
    event = fault_event(pair.a, "in", bytes(fin), Verdict(0, 0.0, rule), pair.now)
    assert (event.conn, event.rel_seq, event.rel_ack) == (conn.conn_id, RECEIVED + 1, SENT + 2)
