"""Address rules: the sources a SYN may come from, the addresses an active
open may go to (RFC 1122 3.2.1.3, 4.2.3.10), through the real Stack and api.

Packets are built with the wire codecs; what the stack sends is what its
transmit callable got.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import time

import pytest

from ustack.api import open_connection
from ustack.runner import StackRunner
from ustack.stack import Stack
from ustack.wire.ipv4 import PROTO_TCP
from ustack.wire.ipv4 import build_ipv4
from ustack.wire.tcp import ACK
from ustack.wire.tcp import FIN
from ustack.wire.tcp import SYN
from ustack.wire.tcp import build_tcp
from ustack.wire.tcp import parse_tcp

US = int(ipaddress.IPv4Address("198.18.0.2"))
PEER = int(ipaddress.IPv4Address("198.18.0.1"))
NETWORK = ipaddress.IPv4Network("198.18.0.0/24")

# Linux answers these with ENETUNREACH at once (checked on 6.18 in a netns:
# connect() from 198.18.0.1/24); the stack also for the ones Linux reaches
# through its loopback, which the stack has not.
NO_CONNECTION_TO = [
    "0.0.0.0",
    "0.1.2.3",
    "255.255.255.255",
    "198.18.0.255",  # the subnet's broadcast
    "198.18.0.0",  # its 0-host form (RFC 1122 3.3.6)
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "127.0.0.1",
    "127.1.2.3",
    "198.18.0.2",  # the stack itself
]

# Sources no SYN is answered from: (address, the drop counter).
BAD_SOURCES = [
    ("198.18.0.2", "ip.drop.local-source"),
    ("255.255.255.255", "ip.drop.bad-source"),
    ("198.18.0.255", "ip.drop.bad-source"),
    ("198.18.0.0", "ip.drop.bad-source"),
    ("224.0.0.1", "ip.drop.bad-source"),
    ("0.0.0.0", "ip.drop.bad-source"),
    ("0.0.0.9", "ip.drop.bad-source"),
    ("127.0.0.1", "ip.drop.bad-source"),
]


class Wire:
    """A Stack on the 198.18.0.0/24 link, listening on 80; transmit records."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.stack = Stack(US, self._transmit, network=NETWORK)
        self.stack.tcp.listen(80, lambda _conn: None)

    def _transmit(self, packet: bytes) -> bool:
        self.sent.append(bytes(packet))
        return True

    def syn(self, src: int, flags: int = SYN, sport: int = 40000) -> list[bytes]:
        segment = build_tcp(
            src=src, dst=US, src_port=sport, dst_port=80, seq=1000, ack=0, flags=flags, window=65535
        )
        header = build_ipv4(src=src, dst=US, protocol=PROTO_TCP, payload_length=len(segment))
        before = len(self.sent)
        self.stack.receive(header + segment)
        return self.sent[before:]


@pytest.mark.parametrize(("source", "counter"), BAD_SOURCES)
def test_a_syn_from_a_source_no_peer_has_gets_no_synack(source: str, counter: str) -> None:
    wire = Wire()
    assert wire.syn(int(ipaddress.IPv4Address(source))) == []
    assert wire.stack.counters[counter] == 1
    assert wire.stack.tcp.connections == {}


def test_a_syn_from_the_peer_is_answered_and_a_syn_fin_is_not() -> None:
    wire = Wire()
    assert wire.syn(PEER, SYN | FIN) == []
    assert wire.stack.counters["tcp.drop.syn-fin"] == 1
    (synack,) = wire.syn(PEER, SYN, sport=40001)
    assert parse_tcp(synack[20:]).flags == SYN | ACK


def test_without_a_known_subnet_only_the_fixed_rules_apply() -> None:
    """A Stack not told its subnet (the tests' default) knows no subnet broadcast."""
    sent: list[bytes] = []
    stack = Stack(US, lambda p: sent.append(bytes(p)) or True)
    stack.tcp.listen(80, lambda _conn: None)
    stack.connect(int(ipaddress.IPv4Address("198.18.0.255")), 80, 0.0)
    assert len(sent) == 1  # its SYN


@pytest.mark.parametrize("host", NO_CONNECTION_TO)
def test_an_active_open_to_an_address_no_connection_can_have_fails_at_once(host: str) -> None:
    sent: list[bytes] = []
    stack = Stack(US, lambda p: sent.append(bytes(p)) or True, network=NETWORK)

    async def main() -> None:
        runner = StackRunner(stack, asyncio.get_running_loop())
        started = time.monotonic()
        with pytest.raises(OSError) as refused:
            await asyncio.wait_for(open_connection(runner, host, 80), 1.0)
        assert time.monotonic() - started < 0.1
        assert refused.value.errno == errno.ENETUNREACH
        assert host in str(refused.value)

    asyncio.run(main())
    assert sent == []  # not one SYN
    assert stack.tcp.connections == {}


def test_an_active_open_to_a_host_on_the_subnet_still_sends_its_syn() -> None:
    sent: list[bytes] = []
    stack = Stack(US, lambda p: sent.append(bytes(p)) or True, network=NETWORK)
    conn = stack.connect(PEER, 80, 0.0)
    assert len(sent) == 1 and parse_tcp(sent[0][20:]).flags == SYN
    assert stack.tcp.endpoints(conn) is not None
