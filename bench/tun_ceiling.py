"""The TUN's ceiling for one Python process: bytes into Linux's TCP with no TCP logic.

Issue 18 ("if a target proves out of reach, show the profile and the ceiling
you hit"): what one Python process can push through the TUN into a Linux TCP
receiver when it does nothing but write pre-built segments, as ustack's daemon
writes them, and read the ACKs. No stack, no event loop, no retransmission.

As root, from the repository, with the venv's Python:
    python bench/tun_ceiling.py                      # MTU 65535, offloads on, 1000 MB
    python bench/tun_ceiling.py --mtu 1500 --no-offload --mb 200
    python bench/tun_ceiling.py --all --mb 200 --json ceiling.json   # the four of them
    python bench/tun_ceiling.py --all --copy         # each payload copied in (and summed)
    python bench/tun_ceiling.py --all --reps 3 --daemon   # and ustack's daemon on the same path

In a fresh namespace of ustack.linux.lab (removed at the end, also on failure):
the TUN opened as `ustack serve` opens it (TunLink, LinkConfig's defaults:
offloads on, or --no-offload; --mtu), Linux at 198.18.0.1/24; a Python kernel
socket server on 198.18.0.1 (listen, accept one, recv_into a 1 MB buffer until
EOF, count); and this script as a minimal TCP client from 198.18.0.2: SYN with
MSS, window scale and timestamps (no SACK), the SYN-ACK read from the TUN, the
ACK, then data. Each write is one pre-built segment as large as the daemon
would hand the link: with offloads a GSO super-segment of up to 64 KB with the
partial checksum (MSS-sized pieces cut by the kernel), without them an
MSS-sized segment with its full checksum. Per write only the sequence number
is patched in place (and, without offloads, the checksum, updated for it:
the payload never changes); timestamps once per burst. With --copy, each
write's payload is first copied into the packet from an application buffer,
as a stack that builds each segment copies it (ustack's build_tcp), and
without offloads its checksum is summed in full. Writes go while the
peer's window allows; then the ACKs waiting on the TUN are read, without
blocking, and the window moves on. A gap (three duplicate ACKs, a RST, or no
ACK for 2 s) aborts the run: there is no retransmission here.

Reported: MB/s from the first data write to the ACK of the last byte (MB =
10^6 bytes), the writer's CPU per MB (user and sys: the kernel's receive path,
TCP included, runs in the writer's write() on a TUN), the receiver's CPU per
MB, writes a second and the segments they carry on the wire. --daemon: after
each transfer, ustack's daemon on the same path (a curl download of as many
bytes), its CPU per MB, for comparison. Results and what they mean:
bench/README.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import resource
import select
import signal
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import machine
from setups import MB
from setups import USTACK_LINUX
from setups import USTACK_STACK
from setups import BenchError
from setups import log_step
from setups import run

from ustack.cli.args import file_to_write
from ustack.daemon.running import GSO_SEGMENTS  # MSS per super-segment
from ustack.linux.lab import LabError
from ustack.linux.lab import Stopper
from ustack.linux.lab import UstackDaemon
from ustack.linux.lab import netns
from ustack.linux.lab import remove_stale_namespaces
from ustack.linux.lab import start_until_ready
from ustack.linux.lab import stop_process
from ustack.linux.tun import PARTIAL_TCP_HEADER
from ustack.linux.tun import VNET_HEADER_SIZE
from ustack.linux.tun import LinkConfig
from ustack.linux.tun import TunLink
from ustack.linux.tun import (
    _gso_header,  # the header TunLink.write puts on a super-segment: the daemon's bytes
)
from ustack.tcp import seq
from ustack.tcp.sender import MAX_GSO_PAYLOAD
from ustack.tcp.seq import MASK
from ustack.wire.checksum import ones_sum
from ustack.wire.checksum import pseudo_header_sum
from ustack.wire.checksum import transport_checksum
from ustack.wire.ipv4 import PROTO_TCP
from ustack.wire.ipv4 import build_ipv4_in_place
from ustack.wire.tcp import ACK
from ustack.wire.tcp import FIN
from ustack.wire.tcp import PSH
from ustack.wire.tcp import RST
from ustack.wire.tcp import SYN
from ustack.wire.tcp import TcpOptions
from ustack.wire.tcp import build_tcp
from ustack.wire.tcp import parse_tcp

NS_PREFIX = "ustack-ceil"
PORT, CLIENT_PORT = 5001, 40000
ISS = 1_000_000
IP_HEADER, TCP_HEADER, TIMESTAMPS = 20, 20, 12  # our data segments: NOP, NOP, Timestamps
SEQ_AT = IP_HEADER + 4  # in the IP packet
CHECKSUM_AT = IP_HEADER + 16
TICK = os.sysconf("SC_CLK_TCK")
APP_BUFFER = 1 << 20  # --copy: the application's data, cycled
TSVAL_AT = IP_HEADER + TCP_HEADER + 4  # after NOP, NOP, kind, length
OUR_WINDOW, OUR_SCALE = 65535, 7
STALL = 2.0  # seconds without an ACK that moves, with data in flight: a loss
READ_SIZE = 65535 + VNET_HEADER_SIZE
# An ACK from Linux: ports, seq, ack, data offset, flags, window.
ACK_FIELDS = struct.Struct("!HHIIBBH")
TS_FIELDS = struct.Struct("!II")
# Without offloads, per write: seq (patched), ack, data offset, flags, window
# (as they are) and the checksum (patched), in one call from SEQ_AT.
SEQ_TO_CHECKSUM = struct.Struct("!IIBBHH")

RECEIVER = """\
import json, os, resource, socket, sys
ready, address, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.setsockopt(socket.IPPROTO_IP, 15, 1)  # IP_FREEBIND: the TUN comes after us
listener.bind((address, port))
listener.listen(1)
os.write(ready, b"ready\\n")
os.close(ready)
conn, _ = listener.accept()
start = resource.getrusage(resource.RUSAGE_SELF)
buffer = bytearray(1 << 20)
total = 0
recv_into = conn.recv_into
while True:
    n = recv_into(buffer)
    if not n:
        break
    total += n
usage = resource.getrusage(resource.RUSAGE_SELF)
conn.close()
user, sys_ = usage.ru_utime - start.ru_utime, usage.ru_stime - start.ru_stime
print(json.dumps({"bytes": total, "user": user, "sys": sys_}), flush=True)
"""


class Aborted(Exception):
    """The transfer cannot go on without TCP logic (a loss, a RST, a stall)."""


# ---- the pure parts: sizes and checksums --------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What one write carries, as the daemon would hand it to the link."""

    mss: int  # payload of one segment on the wire (MTU - 40 - timestamps)
    payload: int  # payload of one write: a GSO super-segment, or one segment
    gso_size: int  # 0: the write is one segment

    @property
    def segments_per_write(self) -> int:
        return -(-self.payload // self.mss)


def plan(mtu: int, offload: bool, peer_mss: int | None = None) -> Plan:
    """The daemon's sizes (ustack/daemon/running.py, ustack/tcp/sender.py):
    MSS = MTU - 40 (or the peer's, if smaller) less the timestamp option;
    with offloads up to 44 MSS per write within an IP datagram's 64 KB, cut
    by the kernel (GSO) when the packet is larger than the MTU."""
    mss = min(mtu - IP_HEADER - TCP_HEADER, peer_mss or mtu) - TIMESTAMPS
    if not offload:
        return Plan(mss, mss, 0)
    payload = min(mss * GSO_SEGMENTS, MAX_GSO_PAYLOAD)
    packet = IP_HEADER + TCP_HEADER + TIMESTAMPS + payload
    return Plan(mss, payload, mss if packet > mtu else 0)


def fold(total: int) -> int:
    """A one's-complement sum folded to 16 bits (RFC 1071)."""
    total = (total & 0xFFFF) + (total >> 16)
    return (total & 0xFFFF) + (total >> 16)


def checksum_with(base: int, value: int) -> int:
    """The TCP checksum of a segment whose sum with a 32-bit field at 0 is
    `base` (pseudo-header included, checksum field 0), once `value` is in
    that field (RFC 1624: the field's two words added)."""
    return ~fold(base + (value >> 16) + (value & 0xFFFF)) & 0xFFFF


def replace_in_sum(base: int, old: int, new: int) -> int:
    """`base` with one 32-bit field changed from `old` to `new`: the old words
    taken out (their complements added), the new ones added."""
    return fold(base + (~old >> 16 & 0xFFFF) + (~old & 0xFFFF) + (new >> 16) + (new & 0xFFFF))


def una_of(ack: int, base: int, nxt: int) -> int:
    """The offset from the first data byte (seq `base`) that ACK number `ack`
    acknowledges, with `nxt` the offset of the next byte to send: sequence
    numbers wrap at 2^32, offsets do not (the signed distance from nxt, as
    RFC 1982 compares them). Above nxt: an ACK of data not sent."""
    return nxt + seq.diff(ack, (base + nxt) & MASK)


# ---- the writer, inside the namespace ---------------------------------------------------


@dataclass
class Counts:
    writes: int = 0
    acks: int = 0  # packets read from the TUN during the data phase
    waits: int = 0  # times the window was closed and nothing was waiting: poll()


class Writer:
    """A TCP client with no TCP logic: the handshake, pre-built segments, ACKs read."""

    def __init__(self, link: TunLink, mtu: int, offload: bool) -> None:
        self.link = link
        self.fd = link.fd
        self.mtu = mtu
        self.offload = offload
        self.src = int(ipaddress.IPv4Address(USTACK_STACK))
        self.dst = int(ipaddress.IPv4Address(USTACK_LINUX))
        self.skip = VNET_HEADER_SIZE if offload else 0  # the virtio-net header on reads
        self.poll = select.poll()
        self.poll.register(self.fd, select.POLLIN)
        # As the daemon: with offloads, the kernel finishes our TCP checksums.
        link.partial_tcp_checksums = offload
        self.irs = 0  # Linux's ISS
        self.synced = False  # the SYN-ACK came
        self.syn_window = 0
        self.scale = 0  # Linux's window scale
        self.peer_mss: int | None = None
        self.tsecr = 0  # Linux's latest TSval
        self.counts = Counts()
        self.peer_fin = False

    def tsval(self) -> int:
        return int(time.monotonic() * 1000) & MASK

    def segment(self, seq: int, flags: int, length: int = 0, options: TcpOptions | None = None,
                ) -> bytearray:  # fmt: skip
        """A whole IPv4 packet built as ustack's TCP and IP layers build one."""
        if options is None:
            options = TcpOptions(timestamps=(self.tsval(), self.tsecr))
        packet = build_tcp(
            self.src, self.dst, CLIENT_PORT, PORT, seq & MASK,
            (self.irs + 1 + self.peer_fin) & MASK if self.synced else 0, flags, OUR_WINDOW,
            options, bytes(length), headroom=IP_HEADER, partial_checksum=self.offload,
        )  # fmt: skip
        build_ipv4_in_place(packet, src=self.src, dst=self.dst, protocol=PROTO_TCP, ttl=64,
                            identification=0)  # fmt: skip
        return packet

    def send(self, packet: bytearray, gso_size: int = 0) -> None:
        """The daemon's way out: TunLink.write, with partial checksums with offloads."""
        if not self.link.write(packet, gso_size):
            raise Aborted("the TUN refused a write")

    def packets(self, timeout: float) -> list[bytes]:
        """What is waiting on the TUN; if nothing, what comes within `timeout`."""
        got: list[bytes] = []
        read, fd = os.read, self.fd
        while True:
            try:
                got.append(read(fd, READ_SIZE))
            except BlockingIOError:
                if got or timeout <= 0 or not self.poll.poll(timeout * 1000):
                    return got
                self.counts.waits += 1
                timeout = 0

    def ours(self, data: bytes) -> int | None:
        """The offset of the TCP header of a packet from Linux to our port, else None."""
        at = self.skip
        if len(data) < at + IP_HEADER + TCP_HEADER or data[at] >> 4 != 4:
            return None
        if data[at + 9] != PROTO_TCP:
            return None
        tcp = at + (data[at] & 0x0F) * 4
        return tcp if data[tcp + 2] << 8 | data[tcp + 3] == CLIENT_PORT else None

    def handshake(self) -> None:
        options = TcpOptions(mss=self.mtu - 40, window_scale=OUR_SCALE,
                             timestamps=(self.tsval(), 0))  # fmt: skip
        self.send(self.segment(ISS, SYN, options=options))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for data in self.packets(0.5):
                tcp = self.ours(data)
                if tcp is None:
                    continue
                header = parse_tcp(memoryview(data)[tcp:])
                if header.flags & RST:
                    raise Aborted("the receiver answered the SYN with a RST")
                if header.flags & (SYN | ACK) == SYN | ACK and header.ack == ISS + 1:
                    self.irs, self.synced = header.seq, True
                    self.scale = header.options.window_scale or 0
                    self.peer_mss = header.options.mss
                    if header.options.timestamps is None:
                        raise Aborted("no timestamps in the SYN-ACK")
                    self.tsecr = header.options.timestamps[0]
                    self.syn_window = header.window  # not scaled (RFC 7323 2.2)
                    self.send(self.segment(ISS + 1, ACK))
                    return
        raise Aborted("no SYN-ACK in 5 s")

    def transfer(self, total: int, copy: bool = False) -> dict[str, float]:
        """`total` bytes, then the FIN; the figures of the data phase."""
        sizes = plan(self.mtu, self.offload, self.peer_mss)
        base = ISS + 1  # the sequence number of offset 0
        packet = self.segment(base, ACK, sizes.payload)
        if self.offload:
            vnet = _gso_header(packet, sizes.gso_size) if sizes.gso_size else PARTIAL_TCP_HEADER
            check_base = 0
        else:
            # The sum with seq 0 and the checksum field 0: per write only seq changes.
            vnet = b""
            struct.pack_into("!I", packet, SEQ_AT, 0)
            struct.pack_into("!H", packet, CHECKSUM_AT, 0)
            tcp_length = len(packet) - IP_HEADER
            check_base = ones_sum(
                memoryview(packet)[IP_HEADER:],
                pseudo_header_sum(self.src, self.dst, PROTO_TCP, tcp_length),
            )
        ack_number, offset_byte, flags, window = struct.unpack_from("!IBBH", packet, SEQ_AT + 4)
        stamps = TS_FIELDS.unpack_from(packet, TSVAL_AT)
        state = {"una": 0, "nxt": 0, "wnd": self.syn_window, "dups": 0}
        full_end = total - total % sizes.payload
        steal0, sched0, usage0 = steal(), schedstat(), resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        # -- the loop: as tight as Python goes ----------------------------------------------
        nxt, una, wnd = 0, 0, self.syn_window
        payload, fd, counts = sizes.payload, self.fd, self.counts
        writev, write = os.writev, os.write
        vector = [vnet, packet]
        pack_seq = struct.Struct("!I").pack_into
        pack_seq_checksum = SEQ_TO_CHECKSUM.pack_into
        writes = 0
        # --copy: each write's payload copied in from the application's bytes
        # (as a stack building each segment copies it), and its checksum
        # summed in full without offloads
        app_view = memoryview(os.urandom(APP_BUFFER + payload))
        data_view = memoryview(packet)[len(packet) - payload :]
        tcp_view = memoryview(packet)[IP_HEADER:]
        checksum, pack_checksum = transport_checksum, struct.Struct("!H").pack_into
        src, dst = self.src, self.dst
        while nxt < full_end:
            limit = min(una + wnd, full_end)
            if self.offload and not copy:
                while nxt + payload <= limit:
                    pack_seq(packet, SEQ_AT, (base + nxt) & MASK)
                    writev(fd, vector)
                    nxt += payload
                    writes += 1
            elif copy and self.offload:
                while nxt + payload <= limit:
                    at = nxt % APP_BUFFER
                    data_view[:] = app_view[at : at + payload]
                    pack_seq(packet, SEQ_AT, (base + nxt) & MASK)
                    writev(fd, vector)
                    nxt += payload
                    writes += 1
            elif copy:
                while nxt + payload <= limit:
                    at = nxt % APP_BUFFER
                    data_view[:] = app_view[at : at + payload]
                    pack_seq_checksum(packet, SEQ_AT, (base + nxt) & MASK, ack_number,
                                      offset_byte, flags, window, 0)  # fmt: skip
                    pack_checksum(packet, CHECKSUM_AT, checksum(src, dst, PROTO_TCP, tcp_view))
                    write(fd, packet)
                    nxt += payload
                    writes += 1
            else:
                while nxt + payload <= limit:
                    number = (base + nxt) & MASK
                    # checksum_with(check_base, number), inlined
                    s = check_base + (number >> 16) + (number & 0xFFFF)
                    s = (s & 0xFFFF) + (s >> 16)
                    s = (s & 0xFFFF) + (s >> 16)
                    pack_seq_checksum(packet, SEQ_AT, number, ack_number, offset_byte, flags,
                                      window, ~s & 0xFFFF)  # fmt: skip
                    write(fd, packet)
                    nxt += payload
                    writes += 1
            state["nxt"] = nxt
            self.take_acks(state, base, blocking=nxt < full_end and nxt + payload > una + wnd)
            una, wnd = state["una"], state["wnd"]
            # Timestamps once per burst: the latest of Linux's echoed, our clock.
            new = (self.tsval(), self.tsecr)
            if new != stamps:
                TS_FIELDS.pack_into(packet, TSVAL_AT, *new)
                if not self.offload and not copy:
                    check_base = replace_in_sum(check_base, stamps[0], new[0])
                    check_base = replace_in_sum(check_base, stamps[1], new[1])
                stamps = new
        counts.writes = writes
        # -- the tail: what does not fill a write, then the FIN -----------------------------
        if nxt < total:
            while una + wnd < total:
                self.take_acks(state, base, blocking=True)
                una, wnd = state["una"], state["wnd"]
            tail = self.segment(base + nxt, ACK | PSH, total - nxt)
            self.send(tail, sizes.mss)
            counts.writes += 1
            nxt = state["nxt"] = total
        while state["una"] < total:
            self.take_acks(state, base, blocking=True)
        elapsed = time.perf_counter() - t0
        usage1, sched1, steal1 = resource.getrusage(resource.RUSAGE_SELF), schedstat(), steal()
        self.send(self.segment(base + total, FIN | ACK))
        state["nxt"] = total + 1
        while state["una"] < total + 1 or not self.peer_fin:
            self.take_acks(state, base, blocking=True)
        self.send(self.segment(base + total + 1, ACK))  # of the receiver's FIN
        return {
            "seconds": elapsed,
            "user": usage1.ru_utime - usage0.ru_utime,
            "sys": usage1.ru_stime - usage0.ru_stime,
            "cpu": (sched1[0] - sched0[0]) / 1e9,
            "runqueue_wait": (sched1[1] - sched0[1]) / 1e9,
            "steal": steal1 - steal0,
            "payload_per_write": sizes.payload,
            "mss": sizes.mss,
            "gso_size": sizes.gso_size,
            "segments": (full_end // payload) * sizes.segments_per_write
            + -(-(total - full_end) // sizes.mss),
        }

    def take_acks(self, state: dict[str, int], base: int, blocking: bool) -> None:
        """Read what Linux sent; move SND.UNA and the window. Aborted on a
        RST, three duplicate ACKs (a segment lost) or, when `blocking`, no
        ACK that moves anything for STALL seconds."""
        deadline = time.monotonic() + STALL
        while True:
            moved = False
            for data in self.packets(STALL if blocking else 0):
                self.counts.acks += 1
                tcp = self.ours(data)
                if tcp is None:
                    continue
                _sport, _dport, _seq, ack, offset_byte, flags, window = ACK_FIELDS.unpack_from(
                    data, tcp
                )
                if flags & RST:
                    raise Aborted(f"RST from Linux at offset {state['una']}")
                if offset_byte >> 4 == 8:
                    self.tsecr = TS_FIELDS.unpack_from(data, tcp + 24)[0]
                if flags & FIN and not self.peer_fin:
                    self.peer_fin = moved = True
                nxt = state["nxt"]
                una = una_of(ack, base, nxt)
                if una > nxt:
                    raise Aborted(f"ACK {ack} is outside what was sent (offset {una}, nxt {nxt})")
                wnd = window << self.scale
                if una > state["una"]:
                    state["una"], state["dups"] = una, 0
                    moved = True
                elif una == state["una"] < nxt and wnd == state["wnd"] and not flags & FIN:
                    state["dups"] += 1
                    if state["dups"] >= 3:
                        raise Aborted(
                            f"three duplicate ACKs at offset {una}: a segment was lost "
                            "(no retransmission here)"
                        )
                if wnd != state["wnd"]:
                    moved = True
                state["wnd"] = wnd
            if moved or not blocking:
                return
            if time.monotonic() > deadline:
                raise Aborted(
                    f"no ACK for {STALL:.0f} s at offset {state['una']} with "
                    f"{state['nxt'] - state['una']} bytes in flight: a segment lost? "
                    "(no retransmission here)"
                )


def schedstat() -> tuple[int, int]:
    """This thread's time on a CPU and waiting for one, in ns (exact, where
    getrusage's user/sys split follows the clock ticks)."""
    on_cpu, waiting, _slices = Path("/proc/thread-self/schedstat").read_text().split()
    return int(on_cpu), int(waiting)


def steal() -> float:
    """CPU seconds the hypervisor took from this VM, all CPUs (/proc/stat):
    time a guest's schedstat counts as on its CPU."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    return int(fields[8]) / TICK


def tun_drops() -> dict[str, int]:
    where = Path("/sys/class/net/tun0/statistics")
    return {name: int((where / name).read_text()) for name in ("rx_dropped", "tx_dropped")}


def writer_main(mtu: int, offload: bool, total: int, copy: bool) -> int:
    """Inside the namespace (the receiver listening): the whole transfer, then
    one JSON line of figures on stdout."""
    link = TunLink.open(LinkConfig(mtu=mtu, offload=offload))
    try:
        writer = Writer(link, link.mtu, link.offload)
        writer.handshake()
        figures: dict[str, Any] = dict(writer.transfer(total, copy))
        figures.update(asdict(writer.counts), mtu=link.mtu, offload=link.offload, copy=copy)
        figures.update(tun_drops())
    except Aborted as exc:
        print(json.dumps({"aborted": str(exc), "tun": tun_drops()}), flush=True)
        return 3
    finally:
        link.close()
    print(json.dumps(figures), flush=True)
    return 0


# ---- the run: namespace, receiver, writer -------------------------------------------------


def one(mtu: int, offload: bool, total: int, workdir: Path, copy: bool) -> dict[str, Any]:
    """One transfer in a namespace of its own, removed afterwards."""
    tag = f"{mtu}{'o' if offload else 'n'}"
    with netns(NS_PREFIX, tag) as ns:
        log = workdir / f"receiver-{tag}.log"
        receiver = start_until_ready(
            lambda fd: ns.command(sys.executable, "-c", RECEIVER, str(fd), USTACK_LINUX, str(PORT)),
            log,
        )
        try:
            argv = ns.command(sys.executable, str(Path(__file__).resolve()), "--writer",
                              "--mtu", str(mtu), "--bytes", str(total),
                              *(() if offload else ("--no-offload",)),
                              *(("--copy",) if copy else ()))  # fmt: skip
            done = run(argv, timeout=600, check=False)
            lines = done.stdout.decode().strip().splitlines()
            if done.returncode not in (0, 3) or not lines:
                raise BenchError(
                    f"the writer exited {done.returncode}: {done.stderr.decode()[-2000:]}"
                )
            figures: dict[str, Any] = json.loads(lines[-1])
            if "aborted" in figures:
                raise BenchError(f"MTU {mtu}, offload {offload}: aborted: {figures['aborted']} "
                                 f"(TUN drops {figures['tun']})")  # fmt: skip
            receiver.wait(timeout=10)
            got = json.loads(log.read_text().strip().splitlines()[-1])
        finally:
            stop_process(receiver)
    if got["bytes"] != total:
        raise BenchError(f"the receiver counted {got['bytes']} bytes of {total}")
    figures["receiver_user"], figures["receiver_sys"] = got["user"], got["sys"]
    figures["bytes"] = total
    return figures


def daemon_reference(mtu: int, offload: bool, total: int, workdir: Path) -> dict[str, Any]:
    """--daemon: ustack itself on the same path, for comparison: `ustack
    serve` (http) in a namespace of its own, one `curl -o /dev/null` of
    `total` bytes from the Linux side after a 1 MB warm-up, the daemon's CPU
    from /proc/PID/schedstat around it (`ip netns exec` execs the daemon:
    the PID is its own)."""
    tag = f"d{mtu}{'o' if offload else 'n'}"
    private = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=workdir))  # one per rep
    extra = ("--mtu", str(mtu), "--services", "http", *(() if offload else ("--no-offload",)))
    with (
        netns(NS_PREFIX, tag) as ns,
        UstackDaemon.start(ns, private, *extra, trace=False, log_level="info", msl=None) as daemon,
    ):
        url = f"http://{USTACK_STACK}/bytes/"
        ns.run("curl", "-s", "-o", "/dev/null", f"{url}{MB}", timeout=30, check=True)
        stat = Path(f"/proc/{daemon.process.pid}/schedstat")
        counters = daemon.stats()
        before = [int(x) for x in stat.read_text().split()[:2]]
        done = ns.run("curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
                      f"{url}{total}", timeout=600, check=True)  # fmt: skip
        after = [int(x) for x in stat.read_text().split()[:2]]
        counters = {k: v - counters.get(k, 0) for k, v in daemon.stats().items()}
    size, seconds = done.stdout.split()
    if int(size) != total:
        raise BenchError(f"curl got {int(size)} bytes of {total} from the daemon")
    cpu = (after[0] - before[0]) / 1e9
    mb = total / MB
    return {
        "mtu": mtu,
        "offload": offload,
        "bytes": total,
        "seconds": float(seconds),
        "mb_per_s": mb / float(seconds),
        "mb_per_cpu_s": mb / cpu,
        "daemon_cpu_ms_per_mb": cpu * 1000 / mb,
        "daemon_on_cpu": cpu / float(seconds),
        "daemon_runqueue_wait": (after[1] - before[1]) / 1e9 / float(seconds),
        "counters": {k: v for k, v in counters.items() if v},  # the stack's, during it
    }


def daemon_lines(references: Sequence[dict[str, Any]]) -> str:
    return "\n".join(
        f"ustack daemon, MTU {r['mtu']:>5}, offloads {'on ' if r['offload'] else 'off'}: "
        f"{r['mb_per_s']:,.0f} MB/s (curl), {r['mb_per_cpu_s']:,.0f} MB/CPU-s, daemon "
        f"{r['daemon_cpu_ms_per_mb']:.3f} ms/MB, on CPU {r['daemon_on_cpu']:.0%}, "
        f"CPU wait {r['daemon_runqueue_wait']:.0%}; segments out "
        f"{r['counters'].get('tcp.out', 0):,}, in {r['counters'].get('tcp.in', 0):,}"
        for r in sorted(references, key=lambda r: (-r["mtu"], not r["offload"]))
    )


def summary(figures: dict[str, Any]) -> dict[str, float]:
    """The per-MB and per-second figures of one transfer."""
    seconds, mb = float(figures["seconds"]), int(figures["bytes"]) / MB
    user, sys_, cpu = float(figures["user"]), float(figures["sys"]), float(figures["cpu"])
    # schedstat's exact total, split as getrusage's ticks split it
    user_share = user / (user + sys_) if user + sys_ else 0.0
    receiver = float(figures["receiver_user"]) + float(figures["receiver_sys"])
    return {
        "mb_per_s": mb / seconds,
        "writer_cpu_ms_per_mb": cpu * 1000 / mb,
        # the rate were the writer on its CPU all the time: the figure that
        # holds on a shared machine, where MB/s follows what else runs
        "mb_per_cpu_s": mb / cpu,
        "writer_user_ms_per_mb": cpu * user_share * 1000 / mb,
        "writer_sys_ms_per_mb": cpu * (1 - user_share) * 1000 / mb,
        "writer_on_cpu": cpu / seconds,
        "writer_runqueue_wait": float(figures["runqueue_wait"]) / seconds,
        "steal": float(figures["steal"]) / seconds,
        "receiver_cpu_ms_per_mb": receiver * 1000 / mb,
        "writes_per_s": int(figures["writes"]) / seconds,
    }


def table(results: Sequence[dict[str, Any]]) -> str:
    head = ("MTU", "offload", "copy", "MB/s", "MB/CPU-s", "writer ms/MB (user+sys)", "on CPU",
            "CPU wait", "steal", "recv ms/MB", "writes/s", "KB/write", "segments", "ACKs read",
            "polls", "tun drops")  # fmt: skip
    rows = [head]
    for r in results:
        s = summary(r)
        rows.append((
            str(r["mtu"]), "on" if r["offload"] else "off", "yes" if r["copy"] else "no",
            f"{s['mb_per_s']:,.0f}",
            f"{s['mb_per_cpu_s']:,.0f}",
            f"{s['writer_cpu_ms_per_mb']:.3f} ({s['writer_user_ms_per_mb']:.3f}"
            f"+{s['writer_sys_ms_per_mb']:.3f})",
            f"{s['writer_on_cpu']:.0%}", f"{s['writer_runqueue_wait']:.0%}", f"{s['steal']:.0%}",
            f"{s['receiver_cpu_ms_per_mb']:.3f}", f"{s['writes_per_s']:,.0f}",
            f"{int(r['payload_per_write']) / 1000:.1f}", f"{r['segments']:,}",
            f"{r['acks']:,}", f"{r['waits']:,}", f"{r['rx_dropped']}/{r['tx_dropped']}",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def medians(results: Sequence[dict[str, Any]]) -> str:
    """Per MTU and offload, the median of the reps' MB/s, MB per CPU-second
    and writer ms/MB."""
    groups: dict[tuple[int, bool], list[dict[str, float]]] = {}
    for r in results:
        groups.setdefault((r["mtu"], r["offload"]), []).append(summary(r))
    lines = []
    for (mtu, offload), runs in sorted(groups.items(), key=lambda g: (-g[0][0], not g[0][1])):
        middle = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        copy = ", copy" if results[0]["copy"] else ""
        lines.append(
            f"MTU {mtu:>5}, offloads {'on ' if offload else 'off'}{copy}: median of {len(runs)}: "
            f"{middle['mb_per_s']:,.0f} MB/s, {middle['mb_per_cpu_s']:,.0f} MB/CPU-s, "
            f"writer {middle['writer_cpu_ms_per_mb']:.3f} ms/MB"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mtu", type=int, default=65535)
    parser.add_argument("--no-offload", action="store_true", help="as ustack serve --no-offload")
    parser.add_argument(
        "--all", action="store_true", help="MTU 65535 and 1500, offloads on and off"
    )
    parser.add_argument(
        "--copy",
        action="store_true",
        help="copy each write's payload in from a buffer (and sum it, without offloads)",
    )
    parser.add_argument("--mb", type=float, default=1000, help="MB (10^6 bytes) to send")
    parser.add_argument("--reps", type=int, default=1, help="each a fresh namespace; rotated")
    parser.add_argument(
        "--daemon",
        action="store_true",
        help="each rep, ustack's daemon too: a curl download of as many bytes, its CPU per MB",
    )
    parser.add_argument("--json", type=file_to_write, help="write the figures here")
    parser.add_argument("--writer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.writer:
        return writer_main(args.mtu, not args.no_offload, args.bytes, args.copy)
    if os.geteuid() != 0:
        print("tun_ceiling: needs root (it makes a network namespace)", file=sys.stderr)
        return 2
    total = int(args.mb * MB)
    configs = (
        [(65535, True), (65535, False), (1500, True), (1500, False)]
        if args.all
        else [(args.mtu, not args.no_offload)]
    )
    remove_stale_namespaces()
    load_before = os.getloadavg()

    def measure() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        results: list[dict[str, Any]] = []
        references: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory(prefix="ustack-ceiling-") as workdir:
            for rep in range(args.reps):
                for mtu, offload in configs:
                    log_step(f"rep {rep + 1}/{args.reps}: MTU {mtu}, "
                             f"offloads {'on' if offload else 'off'}: {args.mb:g} MB")  # fmt: skip
                    results.append(one(mtu, offload, total, Path(workdir), args.copy))
                    if args.daemon:
                        log_step(f"rep {rep + 1}/{args.reps}: ustack's daemon, the same")
                        references.append(daemon_reference(mtu, offload, total, Path(workdir)))
        return results, references

    stopper = Stopper(NS_PREFIX)  # Ctrl-C, SIGTERM, SIGHUP: the namespaces go, as in `ustack lab`
    try:
        measured = stopper.run(measure)
    except (BenchError, LabError) as exc:
        print(f"tun_ceiling: {exc}", file=sys.stderr)
        return 1
    if measured is None:
        print(f"tun_ceiling: stopped by {signal.Signals(stopper.stopped).name}", file=sys.stderr)
        return 128 + stopper.stopped
    results, references = measured
    load_after = os.getloadavg()
    print(f"{machine.describe()} | {os.cpu_count()} CPUs | load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")  # fmt: skip
    print(table(sorted(results, key=lambda r: (-r["mtu"], not r["offload"]))))
    if args.reps > 1:
        print(medians(results))
    if references:
        print(daemon_lines(references))
    if args.json:
        document = {
            "machine": machine.info(),
            "load_before": load_before,
            "load_after": load_after,
            "results": [dict(r, **summary(r)) for r in results],
            "daemon": references,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
