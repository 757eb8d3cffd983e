"""IPv4/ICMP/UDP input and the closed-port RST, packet in -> packets out, no I/O.

scapy is the independent oracle: it builds what we receive and dissects what we send.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP
from scapy.layers.inet import IP
from scapy.layers.inet import TCP
from scapy.layers.inet import UDP
from scapy.layers.inet import IPerror
from scapy.layers.inet import UDPerror

from ustack.stack import Stack

US = "198.18.0.2"
PEER = "198.18.0.1"
US_INT = 0xC6120002


class Wire:
    """A Stack whose transmit appends to a list."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.stack = Stack(US_INT, self._transmit)

    def _transmit(self, packet: bytes) -> bool:
        self.sent.append(packet)
        return True

    def send(self, packet: bytes) -> list[IP]:
        before = len(self.sent)
        self.stack.receive(packet)
        return [IP(p) for p in self.sent[before:]]

    @property
    def counters(self) -> dict[str, int]:
        return dict(self.stack.counters)


def checksums_valid(packet: IP) -> bool:
    """scapy recomputes every checksum when the fields are deleted."""
    raw = bytes(packet)
    clean = IP(raw)
    del clean.chksum
    layer = clean.payload
    if hasattr(layer, "chksum"):
        del layer.chksum
    return bytes(IP(bytes(clean))) == raw


def test_echo_request_gets_a_matching_reply() -> None:
    wire = Wire()
    (reply,) = wire.send(bytes(IP(src=PEER, dst=US) / ICMP(id=0x1234, seq=7) / b"ping data!"))
    assert (reply.src, reply.dst, reply.proto) == (US, PEER, 1)
    assert (reply[ICMP].type, reply[ICMP].code) == (0, 0)
    assert (reply[ICMP].id, reply[ICMP].seq) == (0x1234, 7)
    assert bytes(reply[ICMP].payload) == b"ping data!"
    assert reply.ttl == 64
    assert checksums_valid(reply)
    assert wire.counters["icmp.echo"] == 1


def test_odd_length_echo_payload() -> None:
    (reply,) = Wire().send(bytes(IP(src=PEER, dst=US) / ICMP() / b"abc"))
    assert bytes(reply[ICMP].payload) == b"abc"
    assert checksums_valid(reply)


def test_syn_to_closed_port_gets_rst_ack_seq_0() -> None:
    """Behaviour 1: RST|ACK, SEQ=0, ACK=SEG.SEQ+SEG.LEN (the SYN counts 1)."""
    wire = Wire()
    (rst,) = wire.send(
        bytes(IP(src=PEER, dst=US) / TCP(sport=40000, dport=80, seq=1000, flags="S"))
    )
    assert (rst[TCP].sport, rst[TCP].dport) == (80, 40000)
    assert rst[TCP].flags == "RA"
    assert (rst[TCP].seq, rst[TCP].ack) == (0, 1001)
    assert checksums_valid(rst)


def test_rst_ack_counts_payload_syn_and_fin_and_wraps() -> None:
    segment = TCP(dport=80, seq=0xFFFFFFFE, flags="SF") / b"hello"
    (rst,) = Wire().send(bytes(IP(src=PEER, dst=US) / segment))
    assert rst[TCP].flags == "RA"
    assert rst[TCP].ack == (0xFFFFFFFE + 5 + 2) & 0xFFFFFFFF


def test_ack_to_closed_port_gets_rst_seq_seg_ack() -> None:
    """Behaviour 2: RST with SEQ=SEG.ACK and no ACK flag."""
    (rst,) = Wire().send(bytes(IP(src=PEER, dst=US) / TCP(dport=22, seq=5, ack=777, flags="A")))
    assert rst[TCP].flags == "R"
    assert rst[TCP].seq == 777


def test_rst_to_closed_port_gets_nothing() -> None:
    """Behaviour 3: never answer a RST with a RST."""
    wire = Wire()
    assert wire.send(bytes(IP(src=PEER, dst=US) / TCP(dport=22, flags="R"))) == []
    assert wire.send(bytes(IP(src=PEER, dst=US) / TCP(dport=22, flags="RA", ack=9))) == []
    assert wire.counters["tcp.drop.rst-to-closed-port"] == 2


def test_ecn_setup_syn_is_a_plain_syn() -> None:
    """Behaviour 10: ECE/CWR on a SYN change nothing."""
    (rst,) = Wire().send(bytes(IP(src=PEER, dst=US) / TCP(dport=80, seq=1, flags="SEC")))
    assert (rst[TCP].flags, rst[TCP].ack) == ("RA", 2)


def test_udp_to_closed_port_gets_port_unreachable_quoting_it() -> None:
    wire = Wire()
    datagram = IP(src=PEER, dst=US, id=4242) / UDP(sport=5000, dport=9999) / (b"x" * 1000)
    (error,) = wire.send(bytes(datagram))
    assert (error[ICMP].type, error[ICMP].code) == (3, 3)
    assert error[IPerror].id == 4242 and error[UDPerror].dport == 9999
    assert len(error) <= 576  # RFC 1812: the quote is capped
    assert checksums_valid(error)


def test_udp_with_zero_checksum_is_accepted() -> None:
    raw = bytearray(bytes(IP(src=PEER, dst=US) / UDP(dport=7) / b"hi"))
    raw[26:28] = b"\x00\x00"
    (error,) = Wire().send(bytes(raw))
    assert error[ICMP].type == 3


def test_link_padding_after_total_length_is_ignored() -> None:
    packet = bytes(IP(src=PEER, dst=US) / ICMP() / b"abcd") + b"\x00" * 10
    (reply,) = Wire().send(packet)
    assert bytes(reply[ICMP].payload) == b"abcd"


def test_not_for_us_and_bad_sources_are_dropped_silently() -> None:
    wire = Wire()
    assert wire.send(bytes(IP(src=PEER, dst="198.18.0.3") / ICMP())) == []
    assert wire.send(bytes(IP(src="255.255.255.255", dst=US) / ICMP())) == []
    assert wire.send(bytes(IP(src="224.0.0.1", dst=US) / UDP(dport=9))) == []
    assert wire.send(bytes(IP(src="0.0.0.0", dst=US) / TCP(flags="S"))) == []
    counters = wire.counters
    assert counters["ip.drop.not-for-us"] == 1
    assert counters["ip.drop.bad-source"] == 3


def test_icmp_other_than_echo_is_counted_not_answered() -> None:
    wire = Wire()
    assert wire.send(bytes(IP(src=PEER, dst=US) / ICMP(type=0))) == []
    assert wire.counters["icmp.in.type-0"] == 1


def test_unknown_protocol_is_counted() -> None:
    wire = Wire()
    assert wire.send(bytes(IP(src=PEER, dst=US, proto=132) / b"sctp?")) == []
    assert wire.counters["ip.drop.unknown-protocol"] == 1


@settings(max_examples=500)
@given(st.binary(max_size=120))
def test_random_bytes_never_raise_and_are_counted(data: bytes) -> None:
    wire = Wire()
    wire.send(data)
    counters = wire.counters
    assert counters["ip.in"] == 1
    # Random bytes almost never make a valid packet for us; if dropped, one reason is counted.
    assert sum(v for k, v in counters.items() if ".drop." in k) <= 1


@settings(max_examples=300)
@given(st.binary(min_size=20, max_size=80), st.integers(0, 79), st.integers(0, 255))
def test_corrupted_valid_packets_never_raise(tail: bytes, where: int, value: int) -> None:
    packet = bytearray(
        bytes(IP(src=PEER, dst=US) / TCP(dport=80, flags="S", options=[("MSS", 1460)]) / tail)
    )
    packet[where % len(packet)] = value
    Wire().send(bytes(packet))


def test_a_checksum_the_kernel_left_partial_is_trusted_only_when_said() -> None:
    """A packet the kernel hands over with CHECKSUM_PARTIAL carries the
    pseudo-header sum, not a checksum (TunLink.read says so): the stack must
    take it then, and drop the same bytes from anywhere else."""
    syn = IP(src=PEER, dst=US) / TCP(sport=40000, dport=7, flags="S", seq=1)
    packet = bytearray(bytes(syn))
    packet[20 + 16 : 20 + 18] = b"\x12\x34"  # what a partial checksum looks like: no sum
    wire = Wire()
    wire.send(bytes(packet))
    assert wire.counters.get("tcp.drop.bad-checksum") == 1
    wire.stack.receive(bytes(packet), 0.0, checksum_ok=True)
    (reply,) = [IP(p) for p in wire.sent]
    assert reply[TCP].flags == "RA"  # the closed port answered: the segment was taken


def test_a_partial_udp_checksum_is_trusted_only_when_said() -> None:
    packet = bytearray(bytes(IP(src=PEER, dst=US) / UDP(sport=5000, dport=9999) / b"hi"))
    packet[20 + 6 : 20 + 8] = b"\x12\x34"
    wire = Wire()
    assert wire.send(bytes(packet)) == []
    assert wire.counters.get("udp.drop.bad-checksum") == 1
    wire.stack.receive(bytes(packet), 0.0, checksum_ok=True)
    (reply,) = [IP(p) for p in wire.sent]
    assert (reply[ICMP].type, reply[ICMP].code) == (3, 3)
