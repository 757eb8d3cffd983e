"""Function calls per segment on the stack's two paths, counted, not timed.

Two sans-I/O stacks talk in memory on a virtual clock: a sender writes a
bulk transfer and a receiver reads it. Each packet is handed to the other
stack under `sys.setprofile`, which counts every Python and C function call
made while that stack takes the packet in, answers it and sends what the
answer lets it send. The figures do not depend on the machine or its load,
so a change to the per-segment path shows as a change of calls:

- receive path: calls per full-sized data segment on the receiving stack
  (IP input, TCP input, reassembly, the ACK it sends, the read that drains
  it);
- send path: calls per ACK on the sending stack (IP and TCP input of the
  ACK, SND.UNA advance, RACK/SACK bookkeeping, send-buffer release) and the
  segments that ACK lets it send, per segment sent.

With `--time`, the same transfer runs without the profiler and the figure is
the wall time per data segment (both stacks, the whole exchange), best of 5:
the machine and its load count there, so compare runs made side by side.

With `--batch`, the receiver takes each round's packets as one batch
(TcpDemux.begin_batch/end_batch, as Stack.receive_batch does: one ACK for
the in-order data of a wake-up) and the application reads once after it.

    python bench/calls.py [--bytes N] [--mss N] [--family 4|6] [--json] [--time] [--batch]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from types import FrameType
from typing import Any

from ustack.cli.args import bounded_int
from ustack.stack import Stack
from ustack.tcp.config import TcpConfig
from ustack.tcp.connection import TcpConnection
from ustack.wire.address import parse_address

ADDRESSES = {
    4: ("198.18.0.1", "198.18.0.2"),
    6: ("2001:2::1", "2001:2::2"),
}
PORT = 9
# A fixed ISN for both stacks (RFC 6528's keyed hash is random per run), so
# every run makes the same segments and the same calls.
FIXED_ISN = 1 << 30


@dataclass
class Path:
    """The calls one stack made taking in packets, and what it sent back."""

    packets_in: int = 0
    data_segments_in: int = 0
    calls: int = 0
    by_function: Counter[str] = field(default_factory=Counter)


class Wire:
    """Two stacks joined back to back: what one transmits waits for the other."""

    def __init__(self, family: int, mss: int) -> None:
        self.queues: dict[str, list[bytes]] = {"sender": [], "receiver": []}
        sender_text, receiver_text = ADDRESSES[family]
        self.sender_address = parse_address(sender_text)
        self.receiver_address = parse_address(receiver_text)
        mtu = mss + (40 if family == 4 else 60)
        config = TcpConfig(mss=mss, delayed_ack=0.04)

        def stack(address: int, to: str) -> Stack:
            def transmit(packet: bytes | bytearray, gso_size: int = 0) -> bool:
                self.queues[to].append(bytes(packet))
                return True

            v4, v6 = (address, None) if family == 4 else (parse_address("198.18.0.9"), address)
            return Stack(v4, transmit, mtu, config, isn=lambda *_: FIXED_ISN, address6=v6)

        self.sender = stack(self.sender_address, "receiver")
        self.receiver = stack(self.receiver_address, "sender")
        self.now = 0.0


def _profiler(path: Path, detail: bool) -> Callable[[FrameType, str, Any], None]:
    by_function = path.by_function

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            path.calls += 1
            if detail:
                code = frame.f_code
                by_function[f"{code.co_filename.rsplit('/', 2)[-1]}:{code.co_name}"] += 1
        elif event == "c_call":
            path.calls += 1
            if detail:
                by_function[f"C {getattr(arg, '__qualname__', arg)}"] += 1

    return profile


def run(
    total: int, mss: int, family: int, detail: bool, profile: bool = True, batch: bool = False
) -> dict[str, Any]:
    wire = Wire(family, mss)
    accepted: list[TcpConnection] = []
    wire.receiver.tcp.listen(PORT, accepted.append)
    client = wire.sender.connect(wire.receiver_address, PORT, 0.0)
    paths = {"sender": Path(), "receiver": Path()}
    stacks = {"sender": wire.sender, "receiver": wire.receiver}
    written = 0
    received = 0
    header = 20 + (20 if family == 4 else 40)

    def deliver(to: str) -> bool:
        """Hand `to` its packets; count the calls once the handshake is over."""
        nonlocal received
        queue = wire.queues[to]
        if not queue:
            return False
        packets, queue[:] = list(queue), []
        stack, path = stacks[to], paths[to]
        batching = batch and to == "receiver"
        if batching:
            stack.tcp.begin_batch()
        counting = False
        for packet in packets:
            counting = bool(accepted) and client.state.name == "ESTABLISHED"
            data = len(packet) - header - ((packet[header - 20 + 12] >> 4) * 4 - 20) > 0
            if counting and profile:
                path.packets_in += 1
                path.data_segments_in += data
                sys.setprofile(_profiler(path, detail))
            stack.receive(packet, wire.now)
            if to == "receiver" and accepted and not batching:
                received += len(accepted[0].read(1 << 20, wire.now))
                stack.tcp.flush(accepted[0])
            if counting and profile:
                sys.setprofile(None)
        if batching:
            if counting and profile:
                sys.setprofile(_profiler(path, detail))
            stack.tcp.end_batch()
            if accepted:
                received += len(accepted[0].read(1 << 20, wire.now))
                stack.tcp.flush(accepted[0])
            if counting and profile:
                sys.setprofile(None)
        return True

    while received < total:
        if written < total and client.state.name == "ESTABLISHED":
            written += client.send(b"x" * min(65536, total - written), wire.now)
            wire.sender.tcp.flush(client)
        moved = deliver("receiver") | deliver("sender")
        if not moved:
            deadline = wire.sender.next_deadline()
            other = wire.receiver.next_deadline()
            if other is not None and (deadline is None or other < deadline):
                deadline = other
            if deadline is None:
                raise RuntimeError("the transfer stalled with no timer")
            wire.now = max(wire.now, deadline)
            wire.sender.handle_timers(wire.now)
            wire.receiver.handle_timers(wire.now)
    receive_path, send_path = paths["receiver"], paths["sender"]
    segments_sent = wire.sender.counters["tcp.out"]  # the stack counts them itself
    result: dict[str, Any] = {
        "family": family,
        "mss": mss,
        "bytes": total,
        "receive path: calls per data segment in": round(
            receive_path.calls / max(1, receive_path.data_segments_in), 1
        ),
        "send path: calls per ACK in": round(send_path.calls / max(1, send_path.packets_in), 1),
        "send path: calls per segment sent": round(send_path.calls / max(1, segments_sent), 1),
        "data segments": receive_path.data_segments_in,
        "ACKs": send_path.packets_in,
        "data segments sent": segments_sent,
    }
    if detail:
        for name, path in paths.items():
            result[f"{name} functions"] = path.by_function
    return result


def timed(total: int, mss: int, family: int, batch: bool, repeat: int = 5) -> dict[str, Any]:
    """µs per data segment with no profiler, best of `repeat` whole transfers."""
    best = float("inf")
    segments = 1
    for _ in range(repeat):
        started = time.perf_counter()
        result = run(total, mss, family, detail=False, profile=False, batch=batch)
        best = min(best, time.perf_counter() - started)
        segments = max(1, result["data segments sent"])
    return {
        "family": family,
        "mss": mss,
        "bytes": total,
        f"µs per data segment (best of {repeat}, no profiler)": round(best * 1e6 / segments, 2),
        "data segments": segments,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bytes", type=bounded_int(1, 10**10), default=4_000_000)
    parser.add_argument("--mss", type=bounded_int(536, 65495), default=1460)  # (RFC 9293's floor)
    parser.add_argument("--family", type=int, choices=(4, 6), default=4)
    parser.add_argument("--detail", action="store_true", help="the most called functions")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--time", action="store_true", help="µs per data segment without the profiler, best of 5"
    )
    parser.add_argument(
        "--batch", action="store_true", help="the receiver takes each round's packets as a batch"
    )
    args = parser.parse_args()
    if args.time:
        result = timed(args.bytes, args.mss, args.family, args.batch)
    else:
        result = run(args.bytes, args.mss, args.family, args.detail, batch=args.batch)
    for key, value in result.items():
        if isinstance(value, Counter):
            result[key] = value.most_common(25)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for key, value in result.items():
        if isinstance(value, list):
            print(f"{key} (the 25 most called):")
            for function, count in value:
                print(f"  {count:>9,}  {function}")
        else:
            print(f"{key:42} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
