"""`serve --queues` > 1: an ICMP error that reaches a worker without the
connection it quotes goes to the other workers (daemon/icmp_relay.py), and
the one that owns the connection acts on it. Two sans-I/O stacks stand for
two workers; the relay between them is the real message format."""

from __future__ import annotations

import socket

from tcpscript import IPV6
from tcpscript import OUR_ISS
from tcpscript import PEER_PORT
from tcpscript import Family
from tcpscript import TcpScript

from ustack.daemon import icmp_relay
from ustack.wire.icmp import Quote


def two_workers(family: Family) -> tuple[TcpScript, TcpScript, list[bytes]]:
    """`owner` holds a connection; `other` (no connection) relays what it
    cannot place as icmp_relay's messages, collected in the list."""
    owner, other = TcpScript(family=family), TcpScript(family=family)
    sent: list[bytes] = []
    other.stack.tcp.foreign_icmp_error = lambda *error: sent.append(icmp_relay.encode(*error))
    return owner, other, sent


def test_the_worker_without_the_connection_relays_and_the_owner_lowers_its_mss(
    family: Family,
) -> None:
    owner, other, sent = two_workers(family)
    conn = owner.establish(mss=1460)
    owner.write(bytes(4 * owner.mss))
    owner.sent()
    other.local_port = owner.local_port
    other.icmp_error("too-big", OUR_ISS + 1, mtu=1280)
    assert len(sent) == 1
    assert other.stack.counters[f"{family.icmp}.in.relayed-to-workers"] == 1
    assert other.stack.counters[f"{family.icmp}.drop.no-connection"] == 0
    type_, code, mtu, quote = icmp_relay.decode(sent[0])
    owner.stack.tcp.receive_icmp_error(type_, code, mtu, quote, owner.now, relayed=True)
    assert (conn.path_mtu, conn.mss) == (1280, 1280 - family.tcp_headers)
    assert owner.stack.counters["tcp.pmtu.lowered"] == 1
    assert owner.ip.pmtu.lookup(owner.peer, owner.now) == 1280  # the owner's cache learnt it
    assert [len(out.payload) for out in owner.sent()][:1] == [1280 - family.tcp_headers]


def test_a_relayed_error_for_no_connection_here_is_counted_not_relayed_again(
    family: Family,
) -> None:
    owner, other, sent = two_workers(family)
    owner.establish(mss=1460)
    other.local_port = owner.local_port
    other.icmp_error("too-big", OUR_ISS + 1, mtu=1280)
    # Back to `other` as if from a third worker: nobody's, counted once, no loop.
    type_, code, mtu, quote = icmp_relay.decode(sent[0])
    other.stack.tcp.receive_icmp_error(type_, code, mtu, quote, other.now, relayed=True)
    assert len(sent) == 1
    assert other.stack.counters[f"{family.icmp}.in.relayed-not-here"] == 1


def test_without_workers_no_connection_is_a_counted_drop(family: Family) -> None:
    t = TcpScript(family=family)
    t.establish(mss=1460)
    t.icmp_error("too-big", OUR_ISS + 1, mtu=1280, dport=PEER_PORT + 1)
    assert t.stack.counters[f"{family.icmp}.drop.no-connection"] == 1
    assert t.stack.counters[f"{family.icmp}.in.relayed-to-workers"] == 0


def test_the_message_carries_an_ipv6_quote_whole() -> None:
    quote = Quote(IPV6.us, IPV6.peer, 6, 1500, bytes(range(48)))
    assert icmp_relay.decode(icmp_relay.encode(2, 0, 1280, quote)) == (2, 0, 1280, quote)


def test_the_socket_pairs_reach_every_other_worker_and_not_oneself() -> None:
    pairs = icmp_relay.socket_pairs(3)
    # Each worker has its own copy of every end after the fork: dup() here.
    relays = [
        icmp_relay.IcmpRelay([(a.dup(), b.dup()) for a, b in pairs], index) for index in range(3)
    ]
    icmp_relay.close_pairs(pairs)
    try:
        quote = Quote(1, 2, 6, 40, b"12345678")
        relays[0].send(3, 4, 1280, quote)
        assert [relay.inbox.recv(4096, socket.MSG_DONTWAIT) for relay in relays[1:]] == [
            icmp_relay.encode(3, 4, 1280, quote)
        ] * 2
        try:
            relays[0].inbox.recv(4096, socket.MSG_DONTWAIT)
            raise AssertionError("a worker heard its own relay")
        except BlockingIOError:
            pass
    finally:
        for relay in relays:
            relay.close()
