"""The reassembly queue: data that arrived beyond a hole, waiting for it.

Held data never overlaps itself, so it never exceeds the receive window, and
filling a hole costs time in proportion to what it releases.
"""

from __future__ import annotations

import bisect

from ustack.tcp import seq


class ReassemblyQueue:
    __slots__ = ("_arrival", "_arrivals", "_data", "_origin", "_starts", "held_bytes")

    def __init__(self) -> None:
        # Entries sorted by their SEQ's distance from _origin (a RCV.NXT of the
        # past: every held SEQ lies ahead of it); entries never overlap.
        self._starts: list[int] = []
        self._data: list[bytes] = []
        # When each entry was last received (a count of arrivals): the SACK
        # blocks go most recent first (RFC 2018 4).
        self._arrivals: list[int] = []
        self._arrival = 0
        self._origin = 0
        self.held_bytes = 0

    def __bool__(self) -> bool:
        return bool(self._data)

    def add(self, start: int, data: bytes, rcv_nxt: int) -> tuple[int, int] | None:
        """Hold `data` (SEQ `start`, beyond RCV.NXT), keeping only bytes not
        held yet. Returns the first stretch of it that was held already (the
        D-SACK of RFC 2883 4), if any."""
        if not self._data:
            self._origin = rcv_nxt
        self._arrival += 1
        arrival = self._arrival
        first = seq.diff(start, self._origin)
        last = first + len(data)
        position = bisect.bisect_right(self._starts, first)
        if position:  # the entry before may reach into the new data
            position -= 1
        cursor = first
        duplicate: tuple[int, int] | None = None
        new_starts: list[int] = []
        new_data: list[bytes] = []
        while position < len(self._starts) and cursor < last:
            held_start = self._starts[position]
            held_end = held_start + len(self._data[position])
            if held_end <= cursor:
                position += 1
                continue
            if held_start >= last:
                break
            if held_start > cursor:
                new_starts.append(cursor)
                new_data.append(data[cursor - first : held_start - first])
            if duplicate is None:
                duplicate = (max(held_start, first), min(held_end, last))
            # The entry came again: its block is the most recent one now.
            self._arrivals[position] = arrival
            cursor = max(cursor, held_end)
            position += 1
        if cursor < last:
            new_starts.append(cursor)
            new_data.append(data[cursor - first :])
        for piece_start, piece in zip(new_starts, new_data, strict=True):
            at = bisect.bisect_left(self._starts, piece_start)
            self._starts.insert(at, piece_start)
            self._data.insert(at, piece)
            self._arrivals.insert(at, arrival)
            self.held_bytes += len(piece)
        if duplicate is None:
            return None
        return seq.add(self._origin, duplicate[0]), seq.add(self._origin, duplicate[1])

    def pop_ready(self, rcv_nxt: int) -> bytes | None:
        """The held bytes that now follow RCV.NXT directly, if any; old ones go."""
        while self._data:
            held_seq = seq.add(self._origin, self._starts[0])
            overlap = seq.diff(rcv_nxt, held_seq)
            if overlap < 0:
                return None  # still a hole before the first entry
            self._starts.pop(0)
            self._arrivals.pop(0)
            data = self._data.pop(0)
            self.held_bytes -= len(data)
            if overlap < len(data):
                return data[overlap:]
        return None

    def blocks(self) -> list[tuple[int, int]]:
        """The held data as SACK blocks (left, right edges; RFC 2018), touching
        entries merged: the block holding the most recently received segment
        first, then the others, most recently received first (RFC 2018 4,
        as Linux's tcp_sack_new_ofo_skb keeps them)."""
        merged: list[list[int]] = []  # [left, right, latest arrival]
        for start, data, arrival in zip(self._starts, self._data, self._arrivals, strict=True):
            if merged and merged[-1][1] == start:
                block = merged[-1]
                block[1] += len(data)
                block[2] = max(block[2], arrival)
            else:
                merged.append([start, start + len(data), arrival])
        merged.sort(key=_latest_first)
        origin = self._origin
        return [(seq.add(origin, a), seq.add(origin, b)) for a, b, _ in merged]

    def clear(self) -> None:
        self._starts.clear()
        self._data.clear()
        self._arrivals.clear()
        self.held_bytes = 0


def _latest_first(block: list[int]) -> int:
    return -block[2]


class ReceiveBuffer:
    """In-order data waiting for the application: the segments' own bytes,
    kept as they came, so delivering them copies nothing until read() joins."""

    __slots__ = ("_chunks", "size")

    def __init__(self) -> None:
        # A list, not a deque: one per connection, mostly empty (an empty
        # deque costs 760 bytes, a list 56); take() cuts its front at once.
        self._chunks: list[bytes] = []
        self.size = 0  # = len(self): read as an attribute on the per-segment path

    def __len__(self) -> int:
        return self.size

    def append(self, data: bytes, length: int) -> None:
        """`data`, of `length` bytes (the caller has it: no len() twice per segment)."""
        self._chunks.append(data)
        self.size += length

    def take(self, max_bytes: int) -> bytes:
        """Up to max_bytes from the front."""
        chunks = self._chunks
        if not chunks:
            return b""
        if max_bytes >= self.size:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            self.size = 0
            return data
        taken: list[bytes] = []
        need = max_bytes
        whole = 0  # chunks taken whole, from the front
        while need:
            chunk = chunks[whole]
            if len(chunk) <= need:
                taken.append(chunk)
                need -= len(chunk)
                whole += 1
            else:
                taken.append(chunk[:need])
                chunks[whole] = chunk[need:]
                need = 0
        del chunks[:whole]
        self.size -= max_bytes
        return b"".join(taken)

    def clear(self) -> None:
        self._chunks.clear()
        self.size = 0
