"""One ACK per batch: segments read in one wake-up (Stack.receive_batch)
are acknowledged by one ACK after the last, as Linux's GRO gives (RFC 9293
3.10.7.4, RFC 1122 4.2.3.2); a segment beyond a hole still gets its
duplicate ACK at once (RFC 5681 4.2)."""

from __future__ import annotations

from collections.abc import Callable

from ustack.stack import Stack
from ustack.tcp.config import TcpConfig
from ustack.tcp.connection import TcpConnection
from ustack.wire.address import parse_address
from ustack.wire.ipv4 import IPV4_FIXED
from ustack.wire.ipv4 import IPV4_MIN_HEADER_LENGTH
from ustack.wire.tcp import ACK
from ustack.wire.tcp import parse_tcp

CLIENT = parse_address("198.18.0.1")
SERVER = parse_address("198.18.0.2")
PORT = 9
MSS = 1000


class Pair:
    """A client and a server stack joined back to back on a virtual clock."""

    def __init__(self) -> None:
        self.to_server: list[bytes] = []
        self.to_client: list[bytes] = []
        config = TcpConfig(mss=MSS, delayed_ack=0.04)

        def transmit_to(queue: list[bytes]) -> Callable[[bytes | bytearray, int], bool]:
            def transmit(packet: bytes | bytearray, gso_size: int = 0) -> bool:
                assert not gso_size  # (no GSO on these stacks)
                queue.append(bytes(packet))
                return True

            return transmit

        self.client = Stack(CLIENT, transmit_to(self.to_server), MSS + 40, config)
        self.server = Stack(SERVER, transmit_to(self.to_client), MSS + 40, config)
        self.accepted: list[TcpConnection] = []
        self.server.tcp.listen(PORT, self.accepted.append)
        self.conn = self.client.connect(SERVER, PORT, 0.0)
        for _ in range(3):  # SYN, SYN-ACK, ACK
            self.server_takes_all()
            self.client_takes_all()
        assert self.accepted and str(self.conn.state) == "ESTABLISHED"

    def server_takes_all(self) -> None:
        packets, self.to_server[:] = list(self.to_server), []
        for packet in packets:
            self.server.receive(packet, 0.0)

    def client_takes_all(self) -> None:
        packets, self.to_client[:] = list(self.to_client), []
        for packet in packets:
            self.client.receive(packet, 0.0)

    def data_segments(self, count: int) -> list[bytes]:
        self.conn.send(b"x" * (self.conn.mss * count), 0.0)
        self.client.tcp.flush(self.conn)
        segments, self.to_server[:] = list(self.to_server), []
        assert len(segments) == count
        return segments


def _acks(packets: list[bytes]) -> list[int]:
    """The ACK numbers of pure ACKs among `packets`."""
    acks = []
    for packet in packets:
        assert IPV4_FIXED.unpack_from(packet)[6] == 6
        header = parse_tcp(packet[IPV4_MIN_HEADER_LENGTH:])
        assert header.flags & ACK
        assert len(packet) == IPV4_MIN_HEADER_LENGTH + header.header_length
        acks.append(header.ack)
    return acks


def test_segments_received_one_by_one_get_an_ack_every_second_one() -> None:
    pair = Pair()
    segments = pair.data_segments(8)
    for packet in segments:
        pair.server.receive(packet, 0.0)
    assert len(_acks(pair.to_client)) == 4


def test_a_batch_of_segments_gets_one_ack_after_the_last() -> None:
    pair = Pair()
    segments = pair.data_segments(8)
    pair.server.receive_batch(segments, 0.0)
    acks = _acks(pair.to_client)
    assert acks == [pair.conn.snd_nxt]
    assert len(pair.accepted[0].read(1 << 20, 0.0)) == 8 * pair.conn.mss
    # The ACK went: no delayed ACK is left to fire.
    assert all("delay" not in str(kind) for kind in pair.accepted[0].timers())


def test_a_segment_beyond_a_hole_is_acked_at_once_in_a_batch() -> None:
    pair = Pair()
    segments = pair.data_segments(6)
    del segments[1]  # lost: the four after it lie beyond a hole
    pair.server.receive_batch(segments, 0.0)
    acks = _acks(pair.to_client)
    # Each segment beyond the hole: a duplicate ACK of the first one's end, at once.
    first_end = pair.conn.snd_una + pair.conn.mss
    assert acks == [first_end] * 4


def test_the_batch_ack_is_the_ack_the_last_segment_would_have_sent() -> None:
    one_by_one, batched = Pair(), Pair()
    for pair, batch in ((one_by_one, False), (batched, True)):
        segments = pair.data_segments(2)
        if batch:
            pair.server.receive_batch(segments, 0.0)
        else:
            for packet in segments:
                pair.server.receive(packet, 0.0)
    # Two segments: the second one's ACK either way, same fields but ports and ISNs.
    (plain,), (batch_ack,) = one_by_one.to_client, batched.to_client
    plain_header = parse_tcp(plain[IPV4_MIN_HEADER_LENGTH:])
    batch_header = parse_tcp(batch_ack[IPV4_MIN_HEADER_LENGTH:])
    assert plain_header.window == batch_header.window
    assert plain_header.flags == batch_header.flags
    assert (plain_header.ack - one_by_one.conn.iss) == (batch_header.ack - batched.conn.iss)
