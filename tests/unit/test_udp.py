"""UDP endpoints on the sans-I/O stack (net/udp.py): packets in, packets and
queued datagrams out, on a virtual clock (each call carries `now`)."""

from __future__ import annotations

import errno
import io
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP
from scapy.layers.inet import IP
from scapy.layers.inet import UDP
from scapy.layers.inet import IPerror
from scapy.layers.inet import UDPerror
from scapy.layers.inet import defragment
from scapy.layers.inet import fragment
from scapy.layers.inet6 import ICMPv6DestUnreach
from scapy.layers.inet6 import ICMPv6PacketTooBig
from scapy.layers.inet6 import IPv6
from scapy.layers.inet6 import IPv6ExtHdrFragment
from scapy.layers.inet6 import defragment6
from scapy.packet import Packet

from ustack.net.udp import EPHEMERAL_PORTS
from ustack.net.udp import MAX_PAYLOAD_V4
from ustack.net.udp import MAX_PAYLOAD_V6
from ustack.net.udp import ReceivedDatagram
from ustack.net.udp import ReceivedError
from ustack.net.udp import UdpLimits
from ustack.stack import Stack
from ustack.study.pcapng import PcapngWriter
from ustack.study.sinks import format_event
from ustack.trace.records import DatagramEvent
from ustack.trace.records import TraceEvent
from ustack.wire.address import parse_address
from ustack.wire.checksum import transport_checksum
from ustack.wire.udp import UDP_FIXED

US, PEER = "198.18.0.2", "198.18.0.1"
US6, PEER6 = "2001:2::2", "2001:2::1"
OTHER = "198.18.0.9"


class Wire:
    """A dual Stack whose transmit keeps what it sends, and its trace."""

    def __init__(self, limits: UdpLimits | None = None) -> None:
        self.sent: list[bytes] = []
        self.events: list[TraceEvent] = []
        self.stack = Stack(
            parse_address(US),
            self._transmit,
            trace=self.events.append,
            address6=parse_address(US6),
            udp_limits=limits,
        )
        self.now = 10.0

    def _transmit(self, packet: bytes, gso_size: int = 0) -> bool:
        self.sent.append(bytes(packet))
        return True

    def send(self, packet: Packet | bytes) -> list[Packet]:
        """One packet in; the packets it made come out parsed."""
        start = len(self.sent)
        self.stack.receive(bytes(packet), self.now)
        return [parse(p) for p in self.sent[start:]]

    def out(self) -> list[Packet]:
        packets = [parse(p) for p in self.sent]
        self.sent.clear()
        return packets

    @property
    def counters(self) -> dict[str, int]:
        return dict(self.stack.counters)


def parse(raw: bytes) -> Packet:
    return IPv6(raw) if raw[0] >> 4 == 6 else IP(raw)


def udp_in(sport: int, dport: int, data: bytes = b"hello", six: bool = False) -> Packet:
    if six:
        return IPv6(src=PEER6, dst=US6) / UDP(sport=sport, dport=dport) / data
    return IP(src=PEER, dst=US) / UDP(sport=sport, dport=dport) / data


def taken(endpoint: object) -> list[ReceivedDatagram | ReceivedError]:
    items = []
    while (item := endpoint.take()) is not None:  # type: ignore[attr-defined]
        items.append(item)
    return items


# ---- demux -------------------------------------------------------------------------------------


def test_a_datagram_reaches_its_endpoint_with_the_sender_and_wakes_it() -> None:
    wire = Wire()
    endpoint = wire.stack.udp.bind(None, 5000)
    woken: list[int] = []
    endpoint.wake = lambda: woken.append(1)
    assert wire.send(udp_in(40000, 5000, b"one")) == []
    assert wire.send(udp_in(40001, 5000, b"two", six=True)) == []  # dual stack: both families
    assert taken(endpoint) == [
        ReceivedDatagram(b"one", parse_address(PEER), 40000),
        ReceivedDatagram(b"two", parse_address(PEER6), 40001),
    ]
    assert woken == [1]  # once, when the queue stopped being empty
    assert wire.counters["udp.in"] == 1 and wire.counters["udp6.in"] == 1
    assert endpoint.queued_bytes == 0


def test_demux_prefers_connected_then_bound_address_then_wildcard() -> None:
    wire = Wire()
    udp = wire.stack.udp
    wildcard = udp.bind(None, 5000, reuse_address=True)
    bound = udp.bind(parse_address(US), 5000, reuse_address=True)
    connected = udp.bind(parse_address(US), 5000, reuse_address=True)
    connected.connect(parse_address(PEER), 40000)
    wire.send(udp_in(40000, 5000, b"peer"))
    wire.send(udp_in(40001, 5000, b"other port"))
    wire.send(udp_in(40002, 5000, b"over v6", six=True))
    assert [d.data for d in taken(connected)] == [b"peer"]
    assert [d.data for d in taken(bound)] == [b"other port"]
    assert [d.data for d in taken(wildcard)] == [b"over v6"]


def test_a_connected_endpoint_hears_only_its_peer() -> None:
    wire = Wire()
    endpoint = wire.stack.udp.bind(None, 5000)
    endpoint.connect(parse_address(PEER), 40000)
    (error,) = wire.send(udp_in(40001, 5000))  # nobody else takes it: the port is closed
    assert error[ICMP].type == 3 and error[ICMP].code == 3
    assert taken(endpoint) == []


def test_an_ipv4_only_endpoint_does_not_hear_ipv6() -> None:
    wire = Wire()
    endpoint = wire.stack.udp.bind(None, 5000, family=4)
    (error,) = wire.send(udp_in(40000, 5000, six=True))
    assert error[ICMPv6DestUnreach].code == 4
    assert taken(endpoint) == []


def test_closed_port_gets_port_unreachable_as_before_and_after_close() -> None:
    wire = Wire()
    endpoint = wire.stack.udp.bind(None, 5000)
    endpoint.close()
    (error,) = wire.send(IP(src=PEER, dst=US, id=77) / UDP(sport=1, dport=5000) / b"x")
    assert (error[ICMP].type, error[ICMP].code) == (3, 3)
    assert error[IPerror].id == 77 and error[UDPerror].dport == 5000
    (error6,) = wire.send(udp_in(1, 5000, six=True))
    assert error6[ICMPv6DestUnreach].code == 4 and error6[UDPerror].dport == 5000
    assert wire.counters["udp.out.port-unreachable"] == 1
    assert wire.counters["udp6.out.port-unreachable"] == 1


# ---- input checks ------------------------------------------------------------------------------


def zero_checksum(packet: Packet) -> bytearray:
    raw = bytearray(bytes(packet))
    at = 20 if raw[0] >> 4 == 4 else 40
    raw[at + 6 : at + 8] = b"\0\0"
    return raw


def test_a_zero_checksum_is_accepted_on_ipv4_only() -> None:
    """RFC 768: zero means none was computed; RFC 8200 8.1: mandatory on IPv6."""
    wire = Wire()
    endpoint = wire.stack.udp.bind(None, 5000)
    assert wire.send(zero_checksum(udp_in(40000, 5000, b"v4"))) == []
    assert wire.send(zero_checksum(udp_in(40000, 5000, b"v6", six=True))) == []
    assert [d.data for d in taken(endpoint)] == [b"v4"]
    assert wire.counters["udp.drop.bad-checksum"] == 1


def test_a_bad_checksum_and_a_bad_length_are_dropped_and_counted() -> None:
    wire = Wire()
    endpoint = wire.stack.udp.bind(None, 5000)
    raw = bytearray(bytes(udp_in(40000, 5000, b"data")))
    raw[-1] ^= 0xFF
    assert wire.send(raw) == []
    too_long = IP(src=PEER, dst=US) / UDP(sport=40000, dport=5000, len=200) / b"data"
    assert wire.send(too_long) == []
    assert taken(endpoint) == []
    assert wire.counters["udp.drop.bad-checksum"] == 1
    assert wire.counters["udp.drop.bad-length"] == 1


def test_bytes_past_the_udp_length_are_not_data() -> None:
    wire = Wire()
    endpoint = wire.stack.udp.bind(None, 5000)
    # A UDP length of 8 + 4 inside a longer IP payload: the checksum is over the 12.
    datagram = bytes(udp_in(40000, 5000, b"data")[UDP])
    raw = bytes(IP(src=PEER, dst=US, proto=17) / (datagram + b"tail"))
    assert wire.send(raw) == []
    assert [d.data for d in taken(endpoint)] == [b"data"]


# ---- output ------------------------------------------------------------------------------------


def test_sendto_builds_a_checked_datagram_for_both_families_with_df_clear() -> None:
    wire = Wire()
    endpoint = wire.stack.udp.bind(None, 5000)
    endpoint.sendto(b"to v4", wire.now, parse_address(PEER), 9)
    endpoint.sendto(b"to v6", wire.now, parse_address(PEER6), 9)
    v4, v6 = wire.out()
    assert (v4.src, v4.dst, v4[UDP].sport, v4[UDP].dport) == (US, PEER, 5000, 9)
    assert v4.flags == 0  # DF clear: a narrower hop may fragment it
    assert (v6.src, v6.dst, bytes(v6[UDP].payload)) == (US6, PEER6, b"to v6")
    for packet in (v4, v6):
        checksum = packet[UDP].chksum
        del packet[UDP].chksum
        assert checksum == parse(bytes(packet))[UDP].chksum != 0
    assert wire.counters["udp.out"] == 1 and wire.counters["udp6.out"] == 1
    outs = [e for e in wire.events if isinstance(e, DatagramEvent)]
    assert [(e.direction, e.remote, e.length) for e in outs] == [
        ("out", PEER, 5),
        ("out", PEER6, 5),
    ]


def test_a_computed_zero_checksum_goes_as_ffff() -> None:
    """RFC 768: 0 would mean "no checksum"; the one's complement 0xFFFF is sent."""
    wire = Wire()
    endpoint = wire.stack.udp.bind(None, 5000)
    # A 2-byte payload equal to the checksum of the datagram with zeros
    # there brings the one's complement sum to 0xFFFF: a computed 0.
    header = UDP_FIXED.pack(5000, 9, 10, 0)
    zeroed = transport_checksum(parse_address(US), parse_address(PEER), 17, header + b"\0\0")
    payload = zeroed.to_bytes(2, "big")
    endpoint.sendto(payload, wire.now, parse_address(PEER), 9)
    (packet,) = wire.out()
    assert packet[UDP].chksum == 0xFFFF


@pytest.mark.parametrize("six", [False, True])
def test_a_4000_byte_datagram_goes_in_fragments_that_reassemble(six: bool) -> None:
    wire = Wire()
    endpoint = wire.stack.udp.bind(None, 5000)
    data = bytes(range(256)) * 15 + b"x" * 160  # 4000 bytes
    endpoint.sendto(data, wire.now, parse_address(PEER6 if six else PEER), 7)
    fragments = wire.out()
    assert len(fragments) == 3 and all(len(f) <= 1500 for f in fragments)
    if six:
        assert all(IPv6ExtHdrFragment in f for f in fragments)
        whole = defragment6(fragments)
        assert bytes(whole[UDP].payload) == data
    else:
        (whole,) = defragment(fragments)
        whole = IP(bytes(whole))
        assert bytes(whole[UDP].payload) == data
        checksum = whole[UDP].chksum
        del whole[UDP].chksum
        assert IP(bytes(whole))[UDP].chksum == checksum


def test_a_fragmented_datagram_in_is_delivered_whole() -> None:
    wire = Wire()
    endpoint = wire.stack.udp.bind(None, 5000)
    data = b"y" * 4000
    for piece in fragment(IP(src=PEER, dst=US) / UDP(sport=40000, dport=5000) / data, 1480):
        wire.send(piece)
    assert [d.data for d in taken(endpoint)] == [data]


def test_send_limits_and_errors() -> None:
    wire = Wire()
    udp = wire.stack.udp
    v4only = udp.bind(None, 5000, family=4)
    with pytest.raises(OSError) as too_big:
        v4only.sendto(bytes(MAX_PAYLOAD_V4 + 1), wire.now, parse_address(PEER), 9)
    assert too_big.value.errno == errno.EMSGSIZE
    v4only.sendto(bytes(MAX_PAYLOAD_V4), wire.now, parse_address(PEER), 9)
    assert len(wire.out()) == 45
    with pytest.raises(OSError) as family:
        v4only.sendto(b"x", wire.now, parse_address(PEER6), 9)
    assert family.value.errno == errno.EAFNOSUPPORT
    with pytest.raises(OSError) as no_address:
        v4only.sendto(b"x", wire.now)
    assert no_address.value.errno == errno.EDESTADDRREQ
    dual = udp.bind(None, 5001)
    dual.sendto(bytes(MAX_PAYLOAD_V6), wire.now, parse_address(PEER6), 9)
    assert len(wire.out()) == 46
    with pytest.raises(OSError):
        dual.sendto(bytes(MAX_PAYLOAD_V6 + 1), wire.now, parse_address(PEER6), 9)


# ---- binding -----------------------------------------------------------------------------------


def test_port_0_picks_distinct_random_ephemeral_ports() -> None:
    wire = Wire()
    ports = [wire.stack.udp.bind().local_port for _ in range(50)]
    assert all(port in EPHEMERAL_PORTS for port in ports)
    assert len(set(ports)) == 50
    assert ports != sorted(ports)  # random, not sequential (RFC 6056)


def test_a_taken_port_is_eaddrinuse_until_closed() -> None:
    wire = Wire()
    udp = wire.stack.udp
    first = udp.bind(None, 5000)
    for local, family in ((None, None), (parse_address(US), None), (None, 6)):
        with pytest.raises(OSError) as in_use:
            udp.bind(local, 5000, family)
        assert in_use.value.errno == errno.EADDRINUSE
    v4 = udp.bind(None, 5001, family=4)
    v6 = udp.bind(None, 5001, family=6)  # the families do not overlap
    assert v4.local_port == v6.local_port == 5001
    first.close()
    assert udp.bind(parse_address(US), 5000).local_port == 5000
    with pytest.raises(OSError) as not_ours:
        udp.bind(parse_address(OTHER), 5002)
    assert not_ours.value.errno == errno.EADDRNOTAVAIL


def test_max_endpoints() -> None:
    wire = Wire(UdpLimits(max_endpoints=2))
    udp = wire.stack.udp
    first = udp.bind()
    udp.bind()
    with pytest.raises(OSError) as full:
        udp.bind()
    assert full.value.errno == errno.ENOBUFS
    first.close()
    udp.bind()


def test_a_full_receive_queue_drops_and_counts() -> None:
    wire = Wire(UdpLimits(receive_queue_bytes=2500))
    endpoint = wire.stack.udp.bind(None, 5000)
    for _ in range(3):
        assert wire.send(udp_in(40000, 5000, b"z" * 1000)) == []  # no port unreachable
    assert len(taken(endpoint)) == 2
    assert wire.counters["udp.drop.receive-queue-full"] == 1
    assert wire.counters["udp.in.rcvbuf-errors"] == 1
    assert wire.counters["udp.in"] == 2
    wire.send(udp_in(40000, 5000, b"z" * 1000))  # room again once read
    assert len(taken(endpoint)) == 1


# ---- ICMP errors -------------------------------------------------------------------------------


def icmp_about(sent: Packet, type_: int = 3, code: int = 3) -> Packet:
    return IP(src=PEER, dst=US) / ICMP(type=type_, code=code) / bytes(sent)[:28]


@pytest.mark.parametrize(
    ("type_", "code", "error"),
    [
        (3, 3, "ECONNREFUSED"),
        (3, 0, "ENETUNREACH"),
        (3, 1, "EHOSTUNREACH"),
        (3, 13, "EHOSTUNREACH"),
        (3, 4, "EMSGSIZE"),
        (11, 0, "EHOSTUNREACH"),
    ],
)
def test_an_icmp_error_reaches_the_connected_endpoint_that_sent(
    type_: int, code: int, error: str
) -> None:
    wire = Wire()
    endpoint = wire.stack.udp.bind(None, 5000)
    endpoint.connect(parse_address(PEER), 9)
    endpoint.sendto(b"probe", wire.now)
    (sent,) = wire.out()
    assert wire.send(icmp_about(sent, type_, code)) == []
    (received,) = taken(endpoint)
    assert received == ReceivedError(error, parse_address(PEER), 9)
    assert received.errno == getattr(errno, error)
    assert wire.counters["udp.in.icmp-errors"] == 1


def test_an_unconnected_endpoint_hears_no_icmp_error_as_linux() -> None:
    wire = Wire()
    endpoint = wire.stack.udp.bind(None, 5000)
    endpoint.sendto(b"probe", wire.now, parse_address(PEER), 9)
    (sent,) = wire.out()
    wire.send(icmp_about(sent))
    assert taken(endpoint) == []
    assert wire.counters["udp.drop.error-unconnected"] == 1
    endpoint.close()
    wire.send(icmp_about(sent))  # no endpoint at all now
    assert wire.counters["udp.drop.no-connection"] == 1
    assert "icmp.drop.quote-unhandled-protocol" not in wire.counters


def test_icmpv6_port_unreachable_and_packet_too_big_reach_the_endpoint() -> None:
    wire = Wire()
    endpoint = wire.stack.udp.bind(None, 5000)
    endpoint.connect(parse_address(PEER6), 9)
    endpoint.sendto(b"x" * 1400, wire.now)
    (sent,) = wire.out()
    wire.send(IPv6(src=PEER6, dst=US6) / ICMPv6DestUnreach(code=4) / bytes(sent)[:1000])
    wire.send(IPv6(src=PEER6, dst=US6) / ICMPv6PacketTooBig(mtu=1280) / bytes(sent)[:1000])
    assert [item.error for item in taken(endpoint)] == ["ECONNREFUSED", "EMSGSIZE"]  # type: ignore[union-attr]
    # The Packet Too Big taught the path MTU: the same datagram now goes in fragments.
    endpoint.sendto(b"x" * 1400, wire.now)
    fragments = wire.out()
    assert len(fragments) == 2 and all(len(f) <= 1280 for f in fragments)


# ---- the trace ---------------------------------------------------------------------------------


def test_a_pcapng_capture_shows_each_datagram_with_its_line(tmp_path: Path) -> None:
    """The datagram records go into the text trace and onto the pcapng frames
    (as segments' do): the echo request's frame and the reply's each carry
    their own line."""
    stream = io.BytesIO()
    writer = PcapngWriter(stream, clock=lambda: 1_700_000_000.0)
    lines: list[str] = []

    def trace(event: TraceEvent) -> None:
        writer(event)
        lines.append(format_event(event)[1])

    stack = Stack(parse_address(US), lambda packet: True, trace=trace)
    stack.ip.tap = writer.tap
    endpoint = stack.udp.bind(None, 7)
    stack.receive(bytes(udp_in(40000, 7, b"echo me")), 1.0)
    (received,) = taken(endpoint)
    assert isinstance(received, ReceivedDatagram)
    endpoint.sendto(received.data, 1.0, received.remote, received.remote_port)
    writer.settle()
    assert [" ".join(line.split()) for line in lines] == [
        "#- in 198.18.0.1:40000 > 198.18.0.2:7 UDP len 7",
        "#- out 198.18.0.1:40000 < 198.18.0.2:7 UDP len 7",
    ]
    path = tmp_path / "udp.pcapng"
    path.write_bytes(stream.getvalue())
    result = subprocess.run(
        [
            "tshark",
            "-n",
            "-r",
            str(path),
            "-T",
            "fields",
            "-e",
            "udp.dstport",
            "-e",
            "frame.comment",
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    rows = [line.split("\t") for line in result.stdout.decode().splitlines()]
    assert [row[0] for row in rows] == ["7", "40000"]
    assert "in 198.18.0.1:40000 > 198.18.0.2:7 UDP len 7" in rows[0][1]
    assert "out 198.18.0.1:40000 < 198.18.0.2:7 UDP len 7" in rows[1][1]


def test_no_datagram_to_an_address_ip_refuses() -> None:
    wire = Wire()
    endpoint = wire.stack.udp.bind()
    for address in ("255.255.255.255", "127.0.0.1", "224.0.0.1", US):
        with pytest.raises(OSError) as refused:
            endpoint.sendto(b"x", wire.now, parse_address(address), 9)
        assert refused.value.errno == errno.ENETUNREACH
        with pytest.raises(OSError):
            endpoint.connect(parse_address(address), 9)
    assert wire.out() == []


def test_a_send_between_packets_in_is_stamped_with_its_own_time() -> None:
    wire = Wire()
    taps: list[tuple[str, float]] = []
    wire.stack.ip.tap = lambda direction, packet, now: taps.append((direction, now))
    endpoint = wire.stack.udp.bind(None, 5000)
    wire.stack.receive(bytes(udp_in(40000, 5000)), 1.0)
    endpoint.sendto(b"later", 5.0, parse_address(PEER), 40000)
    assert taps == [("in", 1.0), ("out", 5.0)]
    outs = [e.time for e in wire.events if isinstance(e, DatagramEvent)]
    assert outs == [1.0, 5.0]
