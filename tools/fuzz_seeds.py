#!/usr/bin/env python3
"""Write the hand-made cases of the fuzz corpus (tests/fuzz_corpus/seed-*.json).

    python -m tools.fuzz_seeds [--corpus DIR]

Each seed drives the stack through one of the nastiest corners with packets
built here around the live TCB's values (sequence numbers at the window
edges, across 2^32, 2^31 away; every flag combination; broken headers and
options with correct checksums; SYN cookies; TIME_WAIT; zero windows; SACK
recovery with lying blocks; timers running out). The cases are concrete, so
they replay without this script; test_fuzz_corpus.py replays them with every
invariant checked after every action, and tools/fuzz.py --replay does too.
"""

from __future__ import annotations

import argparse
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests import fuzz_ipv6 as v6
from tests import fuzzworld as fw
from tests.attacks import ipv4_packet
from tests.attacks import tcp_segment
from ustack.cli.args import folder_to_write
from ustack.tcp.connection import TcpConnection
from ustack.tcp.time_wait import TimeWait
from ustack.wire.ipv4 import PROTO_TCP
from ustack.wire.tcp import ACK
from ustack.wire.tcp import FIN
from ustack.wire.tcp import PSH
from ustack.wire.tcp import RST
from ustack.wire.tcp import SYN
from ustack.wire.tcp import URG

ROOT = Path(__file__).resolve().parent.parent

Key = tuple[int, int, int]
HALF = 1 << 31
MASK = 0xFFFFFFFF
KEY: Key = (fw.PEER, 40000, 80)


def mss(value: int) -> bytes:
    return struct.pack("!BBH", 2, 4, value)


def ws(shift: int) -> bytes:
    return bytes((1, 3, 3, shift))


def ts(tsval: int, tsecr: int) -> bytes:
    return b"\x01\x01" + struct.pack("!BBII", 8, 10, tsval & MASK, tsecr & MASK)


def sack(*blocks: tuple[int, int]) -> bytes:
    body = b"".join(struct.pack("!II", left & MASK, right & MASK) for left, right in blocks)
    return b"\x01\x01" + bytes((5, 2 + len(body))) + body


SACK_OK = b"\x01\x01\x04\x02"
LINUX_SYN = mss(1460) + SACK_OK + ts(100, 0) + ws(7)


def segment(key: Key, seq: int, ack: int, flags: int, **fields: Any) -> bytes:
    """From the peer of connection `key` to us (`fields`: tcp_segment's)."""
    remote, remote_port, local_port = key
    local = fw.US6 if fw.is_ipv6(remote) else fw.US
    return tcp_segment(remote, local, remote_port, local_port, seq, ack, flags, **fields)


def ipv4(payload: bytes, src: int = fw.PEER, dst: int = fw.US, **fields: Any) -> bytes:
    """`payload` from the peer to us (`fields`: ipv4_packet's)."""
    return ipv4_packet(payload, src, dst, ident=1, **fields)


class Seed:
    """A world driven by hand; every action is recorded (and checked) by it."""

    def __init__(self, setup: int) -> None:
        self.w = fw.World(fw.SETUPS[setup])
        self.tsval = 100

    def conn(self, key: Key = KEY) -> TcpConnection:
        return self.w.tcp.connections[key]

    def packet(self, data: bytes) -> None:
        self.w.apply(["packet", data])

    def send(self, flags: int, seq: int, ack: int, key: Key = KEY, **fields: Any) -> None:
        data = segment(key, seq, ack, flags, **fields)
        if fw.is_ipv6(key[0]):
            self.packet(v6.fixed_header(key[0], fw.US6, PROTO_TCP, len(data)) + data)
        else:
            self.packet(ipv4(data, src=key[0]))

    def stamp(self, key: Key = KEY) -> bytes:
        """The peer's timestamps, if the connection uses them."""
        conn = self.w.tcp.connections.get(key)
        record = self.w.tcp.time_wait_at(key)
        if (conn is None or not conn.ts_ok) and (record is None or record.ts_recent is None):
            return b""
        self.tsval += 1
        last = self.w.last_out.get(key)
        return ts(self.tsval, last[3] if last and last[3] is not None else 0)

    def peer(self, flags: int = ACK, payload: bytes = b"", key: Key = KEY, **fields: Any) -> None:
        """A well-behaved segment: at RCV.NXT, acknowledging all we sent."""
        conn = self.conn(key)
        options = fields.pop("options", self.stamp(key))
        self.send(flags, conn.rcv_nxt, conn.snd_max, key, options=options, payload=payload,
                  **fields)  # fmt: skip

    def handshake(self, key: Key = KEY, iss: int = 1000, options: bytes = LINUX_SYN) -> None:
        self.send(SYN, iss, 0, key, options=options)
        conn = self.conn(key)
        self.send(ACK, iss + 1, conn.snd_nxt, key, options=self.stamp(key))

    def advance(self, dt: float) -> None:
        self.w.apply(["advance", dt])

    def app(self, op: str, arg: Any = None, key: Key = KEY) -> None:
        self.w.apply(["app", list(key), op, arg])

    def case(self) -> fw.Case:
        self.w.finish()
        return fw.make_case(self.w)


def established(setup: int = 0, written: int = 0) -> tuple[Seed, TcpConnection]:
    """A seed whose connection KEY is ESTABLISHED (with `written` bytes from the
    application, sent or queued), and that connection."""
    s = Seed(setup)
    s.handshake()
    if written:
        s.app("write", written)
    return s, s.conn()


def wraparound() -> Seed:
    """Both ISNs just below 2^32: data and FINs cross the wrap, echoed."""
    s = Seed(4)  # our ISS is 2^32 - 1: our first data byte is sequence number 0
    s.handshake(iss=MASK - 3000)
    s.app("mode", "echo")
    for _ in range(4):  # the peer's data crosses 2^32 too
        s.peer(ACK | PSH, fw._PATTERN[:1000])
    s.advance(0.2)
    s.peer(ACK | FIN)
    s.advance(0.04)
    s.peer()
    return s


def rst_variants() -> Seed:
    """RSTs at and around RCV.NXT, the window edge, 2^31 away."""
    s, conn = established()
    edge, nxt, una = conn.rcv_adv, conn.rcv_nxt, conn.snd_una
    for seq in (nxt + 1, edge - 1, edge, edge + 1, nxt - 1, nxt + HALF, nxt - HALF):
        s.send(RST, seq, 0)
        s.send(RST | ACK, seq, una)
    s.send(RST | ACK, nxt, una + 5)  # a bad ACK, but RST at RCV.NXT counts
    return s


def every_flag_combination() -> Seed:
    """All 256 flag bytes on a connection, on its closed 4-tuple and at a listener."""
    s = Seed(1)
    s.handshake()
    for flags in range(256):  # on the connection while it lives, then on the closed tuple
        conn = s.w.tcp.connections.get(KEY) or s.w.tcp.time_wait_at(KEY)
        if conn is not None:  # (a TIME_WAIT record's SND.NXT is its SND.MAX)
            nxt = conn.snd_max if isinstance(conn, TimeWait) else conn.snd_nxt
            s.send(flags, conn.rcv_nxt, nxt, payload=b"f" if flags & 1 else b"")
        else:
            s.send(flags, 5000 + flags, 77, payload=b"x" * (flags % 3))
    listener: Key = (fw.PEER, 40003, 7)
    for flags in range(256):  # and at a listener
        s.send(flags, 9000, 9000, listener, options=LINUX_SYN if flags & SYN else b"")
    s.advance(1000.0)
    return s


def malformed_headers() -> Seed:
    """Broken IPv4 and TCP headers and options, checksums right: every one a counted drop."""
    s, conn = established()
    good = segment(KEY, conn.rcv_nxt, conn.snd_nxt, ACK | PSH, payload=b"data")
    for packet in (
        b"",
        b"\x45",
        b"\x60" + bytes(39),  # IPv6
        ipv4(good, ihl=4),
        ipv4(good, ihl=15),
        ipv4(good)[:30],
        ipv4(good, total=19),
        ipv4(good, total=20),
        ipv4(good, total=20 + len(good) + 1),
        ipv4(good, total=20 + len(good) - 1),
        ipv4(good, version=6),
        ipv4(good, version=5),
        ipv4(good, ttl=0),
        ipv4(good, frag=0x2000),
        ipv4(good, frag=0x0001),
        ipv4(good, bad_checksum=True),
        ipv4(good, options=b"\x01\x01\x01\x00", ihl=6),
        ipv4(good, padding=bytes(18)),
        ipv4(good, src=0),
        ipv4(good, src=0xFFFFFFFF),
        ipv4(good, dst=0xFFFFFFFF),
        ipv4(good, protocol=132),
        ipv4(good[:10]),
        ipv4(good[:19]),
    ):
        s.packet(packet)
    nxt, snd = conn.rcv_nxt, conn.snd_nxt
    for offset in (0, 1, 4, 6, 15):
        s.send(ACK, nxt, snd, offset=offset, payload=b"payload!")
    s.send(ACK, nxt, snd, bad_checksum=True)
    s.send(ACK | URG, nxt, snd, urgent=3, payload=b"urgent", reserved=15)
    for options in (
        b"\x02\x00", b"\x02\x01", b"\x02\x28", b"\x08", b"\x02\x03\x05", b"\x03\x02",
        b"\x04\x03\x00", b"\x08\x08\x00\x00\x00\x00\x00\x00", b"\x05\x03\x00",
        b"\x05\x0b" + bytes(9), b"\x1e\x02", b"\x00garbage after EOL", b"\x01" * 40,
        b"\xfe\x06\xf9\x89\x00\x00", bytes((3, 3, 255)), mss(0) + ws(15),
    ):  # fmt: skip
        s.send(ACK, nxt, snd, options=options, payload=b"opt")
    s.send(ACK, nxt, snd, options=b"\x01" * 4, offset=7, payload=b"\x02\x04\x05\xb4tail")
    s.peer(ACK | FIN)
    return s


def window_edges() -> Seed:
    """Segments at RCV.NXT+RCV.WND and just inside, overlaps, ACKs at the old-ACK bound."""
    s, conn = established(written=5000)
    edge, nxt = conn.rcv_adv, conn.rcv_nxt
    una, snd_max, wnd = conn.snd_una, conn.snd_max, conn.max_snd_wnd
    s.send(ACK, edge - 1, una, payload=b"E")  # the last byte of the window: held
    s.send(ACK, edge, una, payload=b"F")  # just beyond it
    s.send(ACK, nxt - 10, una, payload=b"o" * 20)  # old and new bytes together
    s.send(ACK, nxt - 1, una)  # old
    for ack in (una - wnd, una - wnd - 1, snd_max + 1, una + HALF, una - 1, una + 1):
        s.send(ACK, s.conn().rcv_nxt, ack)
    s.send(ACK | PSH, s.conn().rcv_nxt, snd_max, payload=b"w" * 100, window=0)
    s.advance(0.5)
    s.peer(window=3)
    s.advance(3.0)
    s.peer()
    return s


def zero_window() -> Seed:
    """A full 2 KB buffer, a FIN at zero window, probes both ways."""
    s = Seed(1)  # a 2048-byte receive buffer, no window scaling
    s.handshake()
    for _ in range(4):  # fill it, then push past it
        s.peer(ACK | PSH, b"z" * 600)
    s.peer(ACK | FIN)  # a bare FIN at a zero window
    s.app("write", 4000)
    s.peer(window=0)
    for step in (0.5, 1.0, 2.0, 4.0, 8.0):  # zero-window probes
        s.advance(step)
        s.peer(window=0)
    s.app("read", 100)
    s.app("read", 1 << 30)
    s.peer(window=0xFFFF)
    s.advance(1.0)
    s.peer()
    s.app("close")
    s.peer()
    return s


def syn_cookies() -> Seed:
    """A full backlog: cookies, a wrong one, one with data, one stale."""
    s = Seed(1)  # backlog 1 on port 80
    s.send(SYN, 1000, 0, (fw.PEER, 40001, 80), options=mss(1460))  # fills the backlog
    for port, iss in ((40002, 2000), (40003, 3000)):
        key: Key = (fw.PEER, port, 80)
        s.send(SYN, iss, 0, key, options=mss(1460) + ts(5, 0))  # answered with a cookie
        cookie = s.w.last_out[key][0]
        s.send(ACK, iss + 1, cookie + 2, key)  # a wrong cookie
        if port == 40002:
            s.send(ACK | PSH | FIN, iss + 1, cookie + 1, key, payload=b"on a cookie")
        else:
            s.advance(200.0)  # too late: the cookie has expired
            s.send(ACK, iss + 1, cookie + 1, key)
    return s


def time_wait() -> Seed:
    """FIN again, RST (RFC 1337), old SYN, new incarnation in TIME_WAIT."""
    s = Seed(0)
    s.handshake()
    s.app("close")
    s.peer()  # FIN_WAIT_2
    s.peer(ACK | FIN)  # TIME_WAIT
    record = s.w.tcp.time_wait_at(KEY)  # (a record now, tcp/time_wait.py)
    assert record is not None
    rcv_nxt = record.rcv_nxt
    s.send(ACK | FIN, rcv_nxt - 1, record.snd_max)  # the FIN again
    s.send(RST, rcv_nxt, 0)  # ignored (RFC 1337)
    s.send(SYN, rcv_nxt - 5, 0, options=LINUX_SYN)  # an old SYN
    s.send(SYN, rcv_nxt + 100_000, 0, options=LINUX_SYN)  # a new incarnation
    new = s.conn()
    s.send(ACK, rcv_nxt + 100_001, new.snd_nxt)
    s.peer(ACK | FIN)
    return s


def dual_stack() -> Seed:
    """IPv6 beside IPv4 on one port: Packet Too Big, ICMPv6 echo, ND, an atomic fragment.

    An IPv6 connection beside an IPv4 one on the same port: Packet Too Big
    (1280, then 600, which counts as 1280: RFC 8201), ICMPv6 echo, Neighbor
    Discovery from ::, an atomic fragment, then each closes."""
    s = Seed(0)
    key6: Key = (fw.PEER6, 40000, 80)
    s.handshake(key6)
    s.handshake()
    s.app("write", 20000, key6)
    router = v6.ROUTERS6[0]
    for mtu in (1280, 600):
        conn = s.conn(key6)
        quote = v6.fixed_header(fw.US6, fw.PEER6, PROTO_TCP, 1440)
        quote += struct.pack("!HHI", 80, 40000, conn.snd_una)
        message = v6.icmpv6(router, fw.US6, 2, 0, mtu, quote)
        s.packet(v6.fixed_header(router, fw.US6, v6.NH_ICMPV6, len(message)) + message)
    echo = v6.icmpv6(fw.PEER6, fw.US6, v6.ECHO_REQUEST, 0, 0x00010001, b"ping")
    s.packet(v6.fixed_header(fw.PEER6, fw.US6, v6.NH_ICMPV6, len(echo)) + echo)
    solicitation = v6.icmpv6(0, v6.SOLICITED_US, 135, 0, 0, fw.US6.to_bytes(16, "big"))
    s.packet(
        v6.fixed_header(0, v6.SOLICITED_US, v6.NH_ICMPV6, len(solicitation), hop_limit=255)
        + solicitation
    )
    s.peer(key=key6)
    conn = s.conn(key6)
    data = segment(key6, conn.rcv_nxt, conn.snd_max, ACK | PSH, payload=b"atomic",
                   options=s.stamp(key6))  # fmt: skip
    atomic = v6.fragment_header(PROTO_TCP, 0, False, 7) + data  # RFC 6946
    s.packet(v6.fixed_header(fw.PEER6, fw.US6, v6.NH_FRAGMENT, len(atomic)) + atomic)
    s.app("read", 1 << 20, key6)
    s.app("close", None, key6)
    s.peer(ACK | FIN, key=key6)
    s.app("close")
    s.peer(ACK | FIN)
    return s


def simultaneous() -> Seed:
    """Simultaneous open with scaling, then simultaneous close."""
    s = Seed(2)
    key: Key = (fw.PEER, 8080, 50000)
    s.w.apply(["connect", 8080, 50000])
    s.send(SYN, 7000, 0, key, options=mss(1400) + ws(2))  # simultaneous open
    ours = s.conn(key).iss
    s.send(SYN | ACK, 7000, ours + 1, key, window=100)
    s.app("write", 300, key)
    s.app("close", None, key)
    conn = s.conn(key)
    s.send(ACK | FIN, conn.rcv_nxt, conn.snd_una, key)  # simultaneous close
    s.peer(key=key)
    return s


def sack_recovery() -> Seed:
    """Duplicate ACKs with lying SACK blocks, partial ACK, RTO."""
    s, conn = established(written=30000)
    una, mss_ = conn.snd_una, conn.mss
    lying = (
        sack((una + mss_, una + 3 * mss_)),
        sack((una + 3 * mss_, una + 2 * mss_)),  # left > right
        sack((una - 5000, una - 1000)),  # below SND.UNA
        sack((conn.snd_max, conn.snd_max + 5000)),  # beyond SND.MAX
        sack(*((una + k * mss_, una + (k + 1) * mss_) for k in range(2, 10, 2))),  # 4 blocks
        sack((una + 4 * mss_, una + 9 * mss_)),
    )
    for blocks in lying:  # duplicate ACKs with SACK blocks, true and false
        s.send(ACK, conn.rcv_nxt, una, options=s.stamp() + blocks)
    s.send(ACK, conn.rcv_nxt, una + 2 * mss_, options=s.stamp())  # a partial ACK
    s.advance(3.0)  # timeouts
    s.peer()
    return s


def keepalive() -> Seed:
    """Keep-alive probes, one answered, then the peer is declared dead."""
    s = Seed(3)  # keep-alive after 5 s, three probes a second apart
    s.handshake()
    s.advance(5.0)
    s.peer()  # answers the first probe
    s.advance(60.0)  # then silence: the connection is declared dead
    return s


def retries_exhausted() -> Seed:
    """Data, a SYN and a SYN,ACK never acknowledged: every retry limit runs out."""
    s = Seed(4)  # 3 retries, RTO at most 4 s, SYN retries 2, SYN,ACK retries 1
    s.handshake()
    s.app("write", 3000)
    s.w.apply(["connect", 8081, 50001])  # never answered
    s.send(SYN, 4000, 0, (fw.PEER, 40002, 80), options=mss(536))  # never completed
    s.advance(100.0)
    return s


# Each seed is named after its function and described by its docstring's
# first paragraph (the corpus file's "about").
SEEDS: dict[str, Callable[[], Seed]] = {
    build.__name__.replace("_", "-"): build
    for build in (
        wraparound,
        rst_variants,
        every_flag_combination,
        malformed_headers,
        window_edges,
        zero_window,
        syn_cookies,
        time_wait,
        dual_stack,
        simultaneous,
        sack_recovery,
        keepalive,
        retries_exhausted,
    )
}


def about(build: Callable[[], Seed]) -> str:
    summary = (build.__doc__ or "").split("\n\n")[0]
    return " ".join(summary.split()).rstrip(".")


def written(name: str) -> tuple[fw.Case, str]:
    """Seed `name` as built on today's stack: its case and the corpus file's text."""
    build = SEEDS[name]
    case = build().case()
    return case, fw.case_to_json(case, f"Hand-made (tools/fuzz_seeds.py): {about(build)}.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=folder_to_write, default=ROOT / "tests" / "fuzz_corpus")
    args = parser.parse_args()
    args.corpus.mkdir(parents=True, exist_ok=True)
    for name in SEEDS:
        case, text = written(name)
        path = args.corpus / f"seed-{name}.json"
        path.write_text(text)
        counters = fw.replay(case).stack.counters
        packets = counters["ip.in"] + counters["ip6.in"]
        print(f"{path.name}: {len(case['actions'])} actions, {packets} packets in")
    return 0


if __name__ == "__main__":
    sys.exit(main())
