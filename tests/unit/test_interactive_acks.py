"""Delayed ACK in interactive use, as Linux decides it (issue 18 item 5).

RFC 1122 4.2.3.2 lets a receiver hold an ACK up to 0.5 s; when it goes
within that is the stack's choice, and a Linux client depends on Linux's
choices: with Nagle on it sends a second small write only once the first
is acknowledged (RFC 896). So:

- a read that empties the buffer of a short segment ACKs it at once
  (Linux's tcp_cleanup_rbuf, ICSK_ACK_PUSHED), unless the connection is
  interactive; a second short segment before our ACK, or more than a full
  segment unacknowledged, is ACKed by the read in any case;
- data sent within the delayed-ACK time of data received makes the
  connection interactive (Linux's pingpong mode, tcp_event_data_sent): the
  answer carries the ACK;
- the delayed-ACK timer firing ends it (tcp_delack_timer_handler).

On the virtual clock of tests/tcpscript.py, the delayed ACK at 40 ms as
the daemon's. The receive buffer is 64 KB, as the window of the SYN,ACK:
a read opens no window worth announcing, so an ACK at a read is the rule's
alone."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest
from tcpscript import OUR_ISS
from tcpscript import PEER_ISS
from tcpscript import TcpScript

import ustack
from ustack.tcp.config import TcpConfig
from ustack.trace.vocabulary import Note

P = PEER_ISS + 1
U = OUR_ISS + 1
MSS = 1460


def script() -> TcpScript:
    t = TcpScript(listen=80, delayed_ack=0.04, receive_buffer=65535)
    t.establish(mss=MSS)
    return t


def interactive_script() -> TcpScript:
    """A connection made interactive: a request (4 bytes) read and answered
    (4 bytes) at once."""
    t = script()
    t.send("P.", seq=P, ack=U, payload=b"ping")
    t.read()
    t.write(b"pong")
    t.expect_many(".", "P.")
    return t


def test_a_short_segment_is_acked_when_the_application_reads_it() -> None:
    t = script()
    t.send("P.", seq=P, ack=U, payload=b"a" * 20)
    t.expect_none()  # not read yet: the ACK may wait
    t.at(0.001)
    assert t.read() == b"a" * 20
    t.expect(".", ack=P + 20)  # at the read, 39 ms before the timer
    assert t.decision_kinds() == [Note.ACK_ON_READ.kind]
    # The second piece, which Nagle held for that ACK, is acknowledged alike.
    t.send("P.", seq=P + 20, ack=U, payload=b"b" * 20)
    t.at(0.002)
    t.read()
    t.expect(".", ack=P + 40)
    t.at(1.0)
    t.expect_none()  # and the delayed-ACK timer has nothing left to send


def test_a_full_segment_read_waits_for_a_second_one_or_the_timer() -> None:
    t = script()
    t.send(".", seq=P, ack=U, payload=b"a" * t.conn.mss)  # type: ignore[union-attr]
    t.read()
    t.expect_none()  # not the end of a write: a bulk transfer's ACK every second segment
    t.at(0.04)
    t.expect(".", ack=P + t.conn.mss)  # type: ignore[union-attr]


def test_an_answer_makes_the_connection_interactive_and_carries_the_next_ack() -> None:
    t = script()
    t.send("P.", seq=P, ack=U, payload=b"ping")
    t.read()
    t.expect(".", ack=P + 4)  # not interactive yet: the read ACKs
    t.write(b"pong")  # an answer within the delayed-ACK time of the request
    t.expect("P.", ack=P + 4, payload=b"pong")
    assert Note.INTERACTIVE.kind in t.decision_kinds()
    t.send("P.", seq=P + 4, ack=U + 4, payload=b"ping")
    t.read()
    t.expect_none()  # interactive: the ACK waits for the answer...
    t.at(0.01)
    t.write(b"pong")
    t.expect("P.", ack=P + 8, payload=b"pong")  # ...which carries it: one segment, not two
    t.at(0.5)
    t.expect_none()  # (before the answer's own retransmission timeout)


def test_the_delayed_ack_timer_ends_interactive_mode() -> None:
    t = interactive_script()
    t.send("P.", seq=P + 4, ack=U + 4, payload=b"head")  # a request in two pieces
    t.read()
    t.expect_none()  # interactive: the ACK waits for an answer that does not come
    t.at(0.04)
    t.expect(".", ack=P + 8)  # the timer's ACK (Linux waits for its own alike)...
    assert t.decision_kinds()[-1] == Note.NOT_INTERACTIVE.kind
    t.send("P.", seq=P + 8, ack=U + 4, payload=b"body")
    t.at(0.041)
    t.read()
    t.expect(".", ack=P + 12)  # ...and the next short piece is ACKed on its read again


def test_a_second_short_segment_is_acked_on_read_even_when_interactive() -> None:
    t = interactive_script()
    t.send("P.", seq=P + 4, ack=U + 4, payload=b"one")
    t.send("P.", seq=P + 7, ack=U + 4, payload=b"two")  # before our ACK (ICSK_ACK_PUSHED2)
    t.expect_none()
    t.read()
    t.expect(".", ack=P + 10)


def test_more_than_a_full_segment_unacknowledged_is_acked_on_read() -> None:
    t = interactive_script()
    full = t.conn.mss  # type: ignore[union-attr]
    t.send(".", seq=P + 4, ack=U + 4, payload=b"a" * full)
    t.send("P.", seq=P + 4 + full, ack=U + 4, payload=b"b" * 100)
    t.expect_none()  # less than two full segments: the input's rule lets it wait
    t.read()
    t.expect(".", ack=P + 4 + full + 100)  # interactive, but over a full segment waits


@pytest.mark.parametrize("answer", [b"pong", b""])
def test_a_deferred_read_ack_rides_on_the_answer_or_goes_at_the_turns_end(answer: bytes) -> None:
    t = script()
    conn = t.conn
    assert conn is not None
    t.send("P.", seq=P, ack=U, payload=b"ping")
    assert conn.read(1 << 20, t.now, defer_ack=True) == b"ping"
    t.tcp.flush(conn)
    t.expect_none()  # the application's turn comes first
    if answer:
        t.write(answer)
        t.expect("P.", ack=P + 4, payload=answer)  # one segment: the answer carries the ACK
    conn.send_deferred_ack(t.now)
    t.tcp.flush(conn)
    if not answer:
        t.expect(".", ack=P + 4)  # no answer: the ACK alone, still long before the timer
    t.at(0.5)
    t.expect_none()


# ---- through the asyncio API: a client with Nagle that writes twice ----------------------


async def two_write_exchanges(rounds: int) -> list[float]:
    """A discard-like server on stack b, a client on stack a that writes a
    small piece, then (two loop turns later, so not in the same segment) a
    second one: Nagle holds the second until the first is acknowledged.
    The seconds from the first write until the server has both, each round."""
    # A delayed ACK far longer than any exchange should take, so that
    # waiting for its timer cannot pass for a slow machine.
    config = TcpConfig(delayed_ack=0.5)
    async with ustack.open_memory_pair(tcp=config, record=False) as pair:
        a, b = pair
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def discard(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(1 << 16):
                got.put_nowait(data)

        await b.start_server(discard, port=9)
        _, writer = await a.open_connection("198.18.0.2", 9)
        times = []
        for _ in range(rounds):
            start = time.monotonic()
            writer.write(b"a" * 20)
            await asyncio.sleep(0)  # the first piece leaves in its own segment
            await asyncio.sleep(0)
            writer.write(b"b" * 20)
            received = 0
            while received < 40:
                received += len(await got.get())
            times.append(time.monotonic() - start)
        writer.close()
        return times


def test_a_client_that_writes_twice_does_not_wait_for_the_delayed_ack() -> None:
    times = asyncio.run(two_write_exchanges(5))
    # Before, a round took 0.2 s: the client's tail loss probe (RFC 8985 7,
    # 200 ms while the peer may delay its ACK) resent the second piece and
    # its duplicate was ACKed at once; the delayed ACK would have taken 0.5 s.
    assert statistics.median(times) < 0.1, times


def test_a_read_announces_the_window_only_once_the_peers_view_of_it_has_halved() -> None:
    """Linux's tcp_cleanup_rbuf: a read sends a window update when the window
    the peer knows is down to half the buffer or less and the read at least
    doubles it, not whenever the window grew by two segments (a reader that
    keeps up would add an ACK of its own to every read)."""
    t = script()  # 65,535 bytes of buffer, unscaled
    for i in range(10):  # 14,600 bytes, ACKed every second segment
        t.send(".", seq=P + i * MSS, ack=U, payload=b"a" * MSS)
    assert len(t.expect_many(*["."] * 5)) == 5
    assert t.read() == b"a" * 10 * MSS
    t.expect_none()  # the peer still sees 50,935 of 65,535: no update
    for i in range(10, 34):  # 35,040 unread: the peer's window under half
        t.send(".", seq=P + i * MSS, ack=U, payload=b"b" * MSS)
    last = t.expect_many(*["."] * 12)[-1]
    assert last.window == 65535 - 24 * MSS
    t.read()
    t.expect(".", ack=P + 34 * MSS, win=65535)  # the update: the window whole again
