"""What the daemon reports: a row of the connection table (`ustack ss`), the
trace event of a packet the fault injector acted on, the counters at exit."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ustack.stack import Stack
from ustack.study.faults import Verdict
from ustack.study.packet_view import view
from ustack.tcp import seq
from ustack.tcp.connection import TcpConnection
from ustack.tcp.segment import flag_string
from ustack.tcp.time_wait import TimeWait
from ustack.tcp.time_wait import numbered_at
from ustack.trace.records import FaultEvent
from ustack.trace.records import dotted
from ustack.wire.address import format_endpoint
from ustack.wire.address import is_ipv6
from ustack.wire.checksum import Buffer
from ustack.wire.ipv4 import PROTO_TCP
from ustack.wire.tcp import TCP_FIXED


def connection_row(
    address: int,
    key: tuple[int, int, int],
    conn: TcpConnection,
    now: float,
    address6: int | None = None,
) -> dict[str, Any]:
    """One row of the "connections" control reply (and of `ustack ss`): the
    ends as ss(8) writes them, `198.18.0.2:80` or `[2001:2::2]:80`. The
    connection's own end is the stack's address of the peer's family
    (`address6` for an IPv6 peer)."""
    remote, remote_port, local_port = key
    local = address6 if is_ipv6(remote) and address6 is not None else address
    return {
        "id": conn.conn_id,
        "state": str(conn.state),
        "local": format_endpoint(local, local_port),
        "remote": format_endpoint(remote, remote_port),
        "send_queue": conn.unsent_bytes,
        "recv_queue": conn.readable_bytes,
        # Relative to our ISS and the peer's IRS, as in the trace.
        "snd_una": (conn.snd_una - conn.iss) & 0xFFFFFFFF,
        "snd_nxt": (conn.snd_nxt - conn.iss) & 0xFFFFFFFF,
        "rcv_nxt": (conn.rcv_nxt - conn.irs) & 0xFFFFFFFF,
        # The origins, for tools that need absolute numbers.
        "iss": conn.iss,
        "irs": conn.irs,
        "snd_wnd": conn.snd_wnd,
        "rcv_wnd": max(seq.diff(conn.rcv_adv, conn.rcv_nxt), 0),  # as advertised
        "rto": round(conn.rto, 3),
        # The path MTU to the peer (RFC 1191: lowered by ICMP fragmentation
        # needed) and the payload per segment it leaves (timestamps excluded).
        "pmtu": conn.path_mtu,
        "mss": conn.mss,
        "srtt": None if conn.srtt is None else round(conn.srtt, 6),
        "ecn": conn.ecn_ok,  # agreed in the handshake (RFC 3168 6.1.1)
        "timers": {name: round(deadline - now, 3) for name, deadline in conn.timers().items()},
    }


def time_wait_row(
    address: int,
    record: TimeWait,
    now: float,
    address6: int | None = None,
) -> dict[str, Any]:
    """A row for a 4-tuple in TIME_WAIT (tcp/time_wait.py): the keys of
    connection_row, with what a TIME_WAIT record keeps (as ss(8) shows
    little more than the timer of a Linux timewait socket): nothing queued,
    no send window, RTO or path figures."""
    remote, remote_port, local_port = record.key
    local = address6 if is_ipv6(remote) and address6 is not None else address
    numbers = record.unpacked()
    return {
        "id": numbers.conn_id,
        "state": "TIME_WAIT",
        "local": format_endpoint(local, local_port),
        "remote": format_endpoint(remote, remote_port),
        "send_queue": 0,
        "recv_queue": 0,
        "snd_una": (numbers.snd_max - numbers.iss) & 0xFFFFFFFF,
        "snd_nxt": (numbers.snd_max - numbers.iss) & 0xFFFFFFFF,
        "rcv_nxt": (numbers.rcv_nxt - numbers.irs) & 0xFFFFFFFF,
        "iss": numbers.iss,
        "irs": numbers.irs,
        "snd_wnd": 0,
        "rcv_wnd": numbers.window << numbers.shift,  # as advertised, scaled
        "rto": 0.0,
        "pmtu": None,
        "mss": None,
        "srtt": None,
        "ecn": False,
        "timers": {name: round(deadline - now, 3) for name, deadline in record.timers().items()},
    }


def table_rows(stack: Stack, now: float) -> list[dict[str, Any]]:
    """Every row of the connection table: connections, then TIME_WAIT records."""
    tcp = stack.tcp
    rows = [
        connection_row(tcp.address, key, conn, now, tcp.address6)
        for key, conn in tcp.connections.items()
    ]
    rows += [time_wait_row(tcp.address, tw, now, tcp.address6) for tw in tcp.time_wait_records()]
    return rows


def listening_endpoints(
    ports: Iterable[int], address: int, address6: int | None = None
) -> list[str]:
    """The "listening" list of the connections reply: each port on the
    stack's IPv4 address, then on its IPv6 one when it has one."""
    addresses = [address] if address6 is None else [address, address6]
    return [format_endpoint(each, port) for each in addresses for port in sorted(ports)]


def fault_event(
    stack: Stack, direction: str, packet: Buffer, verdict: Verdict, now: float
) -> FaultEvent:
    """The trace event for a packet the injector acted on. Any bytes at all
    may come in (the stack's own parsers count a malformed packet as a drop
    afterwards): what the header lengths do not cover is left at zero."""
    assert verdict.rule is not None
    fields: dict[str, Any] = dict.fromkeys(("local_port", "remote_port", "seq", "ack"), 0)
    flags, rel_seq, rel_ack, length, window, conn_id = "", 0, 0, 0, 0, None
    # IPv4 or IPv6 (past its extension headers): the stack's end is the
    # destination of what comes in, the source of what goes out.
    seen = view(packet)
    local_int, remote_int = stack.tcp.address, 0
    local, remote = dotted(local_int), dotted(remote_int)
    if seen is not None:
        local_int, remote_int = (seen.src, seen.dst) if direction == "out" else (seen.dst, seen.src)
        local, remote = seen.text(local_int), seen.text(remote_int)
    tcp = None if seen is None or seen.protocol != PROTO_TCP else seen.upper
    if tcp is not None and len(packet) >= tcp + TCP_FIXED.size:
        sport, dport, seq_no, ack_no, offset, bits, window, _, _ = TCP_FIXED.unpack_from(
            packet, tcp
        )
        local_port, remote_port = (sport, dport) if direction == "out" else (dport, sport)
        fields.update(local_port=local_port, remote_port=remote_port, seq=seq_no, ack=ack_no)
        flags = flag_string(bits)
        length = max(len(packet) - tcp - (offset >> 4) * 4, 0)
        key = (remote_int, remote_port, local_port)
        conn = numbered_at(stack.tcp, key)
        rel_seq, rel_ack = seq_no, ack_no
        if conn is not None:
            conn_id = conn.conn_id
            ours, theirs = (conn.iss, conn.irs) if direction == "out" else (conn.irs, conn.iss)
            rel_seq = (seq_no - ours) & 0xFFFFFFFF
            rel_ack = (ack_no - theirs) & 0xFFFFFFFF
    return FaultEvent(
        time=now,
        conn=conn_id,
        direction=direction,
        action=verdict.rule.action,
        rule=verdict.rule.id,
        local=local,
        remote=remote,
        flags=flags,
        rel_seq=rel_seq,
        rel_ack=rel_ack,
        length=length,
        window=window,
        delay=verdict.delay,
        **fields,
    )


def format_counters(counters: dict[str, int]) -> str:
    return ", ".join(f"{name}={value}" for name, value in sorted(counters.items())) or "none"
