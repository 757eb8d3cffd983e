"""The reassembly queue: data that arrived beyond a hole, waiting for it.

Held data never overlaps itself, so it never exceeds the receive window, and
filling a hole costs time in proportion to what it releases.
"""

from __future__ import annotations

import bisect

from ustack.tcp import seq


class ReassemblyQueue:
    def __init__(self) -> None:
        # Entries sorted by their SEQ's distance from _origin (a RCV.NXT of the
        # past: every held SEQ lies ahead of it); entries never overlap.
        self._starts: list[int] = []
        self._data: list[bytes] = []
        self._origin = 0
        self.held_bytes = 0

    def __bool__(self) -> bool:
        return bool(self._data)

    def add(self, start: int, data: bytes, rcv_nxt: int) -> None:
        """Hold `data` (SEQ `start`, beyond RCV.NXT), keeping only bytes not held yet."""
        if not self._data:
            self._origin = rcv_nxt
        first = seq.diff(start, self._origin)
        last = first + len(data)
        position = bisect.bisect_right(self._starts, first)
        if position:  # the entry before may reach into the new data
            position -= 1
        cursor = first
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
            cursor = max(cursor, held_end)
            position += 1
        if cursor < last:
            new_starts.append(cursor)
            new_data.append(data[cursor - first :])
        for piece_start, piece in zip(new_starts, new_data, strict=True):
            at = bisect.bisect_left(self._starts, piece_start)
            self._starts.insert(at, piece_start)
            self._data.insert(at, piece)
            self.held_bytes += len(piece)

    def pop_ready(self, rcv_nxt: int) -> bytes | None:
        """The held bytes that now follow RCV.NXT directly, if any; old ones go."""
        while self._data:
            held_seq = seq.add(self._origin, self._starts[0])
            overlap = seq.diff(rcv_nxt, held_seq)
            if overlap < 0:
                return None  # still a hole before the first entry
            self._starts.pop(0)
            data = self._data.pop(0)
            self.held_bytes -= len(data)
            if overlap < len(data):
                return data[overlap:]
        return None

    def blocks(self, latest: tuple[int, int] | None = None) -> list[tuple[int, int]]:
        """The held data as SACK blocks (left, right edges; RFC 2018), touching
        entries merged; the block holding `latest` (the newest segment) first."""
        merged: list[list[int]] = []
        for start, data in zip(self._starts, self._data, strict=True):
            if merged and merged[-1][1] == start:
                merged[-1][1] += len(data)
            else:
                merged.append([start, start + len(data)])
        edges = [(seq.add(self._origin, a), seq.add(self._origin, b)) for a, b in merged]
        if latest is not None:
            for index, (left, right) in enumerate(edges):
                if seq.le(left, latest[0]) and seq.le(latest[1], right):
                    edges.insert(0, edges.pop(index))
                    break
        return edges

    def clear(self) -> None:
        self._starts.clear()
        self._data.clear()
        self.held_bytes = 0


class ReceiveBuffer:
    """In-order data waiting for the application: the segments' own bytes,
    kept as they came, so delivering them copies nothing until read() joins."""

    def __init__(self) -> None:
        # A list, not a deque: one per connection, mostly empty (an empty
        # deque costs 760 bytes, a list 56); take() cuts its front at once.
        self._chunks: list[bytes] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)

    def take(self, max_bytes: int) -> bytes:
        """Up to max_bytes from the front."""
        chunks = self._chunks
        if not chunks:
            return b""
        if max_bytes >= self._size:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            self._size = 0
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
        self._size -= max_bytes
        return b"".join(taken)

    def clear(self) -> None:
        self._chunks.clear()
        self._size = 0
