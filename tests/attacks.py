"""Off-path attackers, run *inside* a test namespace: a SYN flood from spoofed
sources and blind in-window injection (RFC 5961) into a live connection.

Packets go out through an AF_PACKET socket on the TUN, so the kernel's IP
layer never sees them: they reach ustack exactly as routed packets would.
Spoofed SYN sources are random addresses of 198.19.0.0/16, which is not on
any interface of the namespace; ustack's SYN,ACKs to them go back into the
kernel, which has no route there and does not forward: nothing leaves.

Run as `python tests/attacks.py synflood ...` or `... blind ...` inside the
namespace (`Netns.command`); each prints one JSON line with what it sent.
The parent process keeps the roles apart: it starts the daemon and the
legitimate clients, and reads the daemon's counters.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from ustack.linux.control import request
from ustack.wire.checksum import internet_checksum
from ustack.wire.checksum import transport_checksum

if TYPE_CHECKING:
    from ustack.linux.lab import Netns
    from ustack.linux.lab import UstackDaemon

SPOOF_NET = ipaddress.IPv4Network("198.19.0.0/16")  # not local to the namespace
ETH_P_IP = 0x0800
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
MASK = 0xFFFFFFFF
PROTO_TCP = 6
MSS_1460 = struct.pack("!BBH", 2, 4, 1460)
_IP = struct.Struct("!BBHHHBBHII")
_TCP = struct.Struct("!HHIIBBHHH")


def tcp_segment(
    src: int,
    dst: int,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int = 0xFFFF,
    options: bytes = b"",
    payload: bytes = b"",
    offset: int | None = None,
    reserved: int = 0,
    urgent: int = 0,
    bad_checksum: bool = False,
) -> bytes:
    """A TCP segment built field by field (not by ustack's codecs, so any
    field can be wrong on purpose), options padded to a multiple of 4, its
    checksum over the pseudo-header of `src` and `dst` (spoilt if asked).
    tools/fuzz_seeds.py builds its packets here too."""
    options += b"\x00" * (-len(options) % 4)
    data_offset = (20 + len(options)) // 4 if offset is None else offset
    raw = bytearray(
        _TCP.pack(sport, dport, seq & MASK, ack & MASK, (data_offset & 15) << 4 | reserved,
                  flags, window, 0, urgent)
        + options
        + payload
    )  # fmt: skip
    checksum = transport_checksum(src, dst, PROTO_TCP, raw) ^ (0x1234 if bad_checksum else 0)
    struct.pack_into("!H", raw, 16, checksum)
    return bytes(raw)


def ipv4_packet(
    payload: bytes,
    src: int,
    dst: int,
    protocol: int = PROTO_TCP,
    ident: int = 0,
    ihl: int = 5,
    version: int = 4,
    total: int | None = None,
    ttl: int = 64,
    frag: int = 0x4000,  # DF
    options: bytes = b"",
    bad_checksum: bool = False,
    padding: bytes = b"",
) -> bytes:
    """`payload` in an IPv4 header built field by field (any of them wrong if
    asked: `total` other than the true length, a spoilt checksum, link-layer
    `padding` after the datagram)."""
    length = 20 + len(options) + len(payload) if total is None else total
    header = bytearray(
        _IP.pack(version << 4 | ihl, 0, length & 0xFFFF, ident & 0xFFFF, frag, ttl, protocol, 0,
                 src, dst)
        + options
    )  # fmt: skip
    checksum = internet_checksum(header) ^ (0x4321 if bad_checksum else 0)
    struct.pack_into("!H", header, 10, checksum)
    return bytes(header) + payload + padding


class Injector:
    """Raw IPv4 packets onto the TUN, as if the kernel had routed them there."""

    def __init__(self, device: str = "tun0") -> None:
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM)
        self._address = (device, ETH_P_IP)
        self.sent = 0
        self.refused = 0  # ENOBUFS and the like: the kernel would not take it

    def send(self, packet: bytes) -> None:
        try:
            self._sock.sendto(packet, self._address)
            self.sent += 1
        except OSError:
            self.refused += 1


def tx_dropped(device: str) -> int:
    """Packets the kernel could not queue for ustack (the TUN's queue was full)."""
    return int(Path(f"/sys/class/net/{device}/statistics/tx_dropped").read_text())


def synflood(
    target: str, port: int, count: int, rate: float | None, device: str, seed: int
) -> dict[str, Any]:
    """SYNs from random spoofed sources, flat out or paced to `rate` a second,
    until `count` of them got into the TUN's queue: what the kernel drops
    there (the queue full: ustack is slower than we are) is sent again, so
    ustack gets all `count` whatever the two speeds."""
    rng = random.Random(seed)
    dst = int(ipaddress.IPv4Address(target))
    base, size = int(SPOOF_NET.network_address), SPOOF_NET.num_addresses
    injector = Injector(device)
    dropped_before = tx_dropped(device)
    start = time.monotonic()
    delivered = 0
    while delivered < count:
        for _ in range(min(count - delivered, 4096)):
            src = base + rng.randrange(1, size - 1)
            injector.send(
                ipv4_packet(
                    tcp_segment(src, dst, rng.randrange(1024, 65536), port, rng.getrandbits(32),
                                0, SYN, 64240, MSS_1460),
                    src, dst, ident=injector.sent,
                )
            )  # fmt: skip
            if rate and injector.sent % 64 == 0:
                ahead = injector.sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        delivered = injector.sent - (tx_dropped(device) - dropped_before)
    seconds = time.monotonic() - start
    return {
        "delivered": delivered,
        "sent": injector.sent,
        "refused": injector.refused,
        "tun_tx_dropped": injector.sent - delivered,
        "seconds": round(seconds, 3),
        "rate": round(injector.sent / seconds) if seconds else 0,
    }


def _find(control: Path, client_port: int, local_port: int) -> dict[str, Any] | None:
    reply = request(control, "connections")
    for row in reply.get("connections", []):
        if row["remote"].endswith(f":{client_port}") and row["local"].endswith(f":{local_port}"):
            return row
    return None


def blind(
    control: Path,
    client: str,
    client_port: int,
    target: str,
    port: int,
    kinds: list[str],
    count: int,
    rate: float,
    device: str,
    seed: int,
    exact_rst: bool = False,
    until: int = 0,
) -> dict[str, Any]:
    """Spoof the client's 4-tuple and inject, round robin over `kinds`:

    - rst: RST with SEQ in (RCV.NXT, RCV.NXT + RCV.WND), never RCV.NXT itself;
    - syn: SYN with SEQ in the receive window;
    - data: 100 bytes at a SEQ in the window (RCV.NXT included) with an ACK
      value a blind attacker would pick, outside SND.UNA - MAX.SND.WND ..
      SND.NXT (RFC 5961 5.2): 1 GiB behind SND.UNA or 512 MiB beyond SND.NXT.

    The window is learned from the daemon's `connections` (what a blind
    attacker guesses, we read), refreshed every 16 packets since RCV.NXT
    moves during an upload; we aim at the window's upper half, which stays
    inside as RCV.NXT moves on (the right edge never moves left).
    exact_rst: one RST at exactly RCV.NXT, then stop. Stops after `count`
    packets, when the connection is gone or leaves ESTABLISHED, or once it
    has moved `until` bytes either way (so that no SYN comes after its close:
    that one would open a new connection, as any spoofed SYN does)."""
    rng = random.Random(seed)
    src, dst = int(ipaddress.IPv4Address(client)), int(ipaddress.IPv4Address(target))
    injector = Injector(device)

    def spoofed(seq: int, ack: int, flags: int, window: int, payload: bytes = b"") -> bytes:
        """From the client's address and port, both checksums right."""
        segment = tcp_segment(src, dst, client_port, port, seq, ack, flags, window, b"", payload)
        return ipv4_packet(segment, src, dst)

    sent = dict.fromkeys(kinds, 0)
    start = time.monotonic()
    row: dict[str, Any] | None = None
    i = 0
    while i < count:
        if i % 16 == 0:
            row = _find(control, client_port, port)
            if row is None or row["state"] != "ESTABLISHED":
                break  # the transfer is over
            if until and max(row["snd_una"], row["rcv_nxt"]) >= until:
                break  # nearly over: stop before a SYN may come after the close
        assert row is not None
        rcv_nxt = (row["irs"] + row["rcv_nxt"]) & MASK
        snd_una = (row["iss"] + row["snd_una"]) & MASK
        snd_nxt = (row["iss"] + row["snd_nxt"]) & MASK
        window = max(row["rcv_wnd"], 2)
        if exact_rst:
            injector.send(spoofed(rcv_nxt, 0, RST, 0))
            sent = {"rst-exact": 1}
            break
        kind = kinds[i % len(kinds)]
        inside = rng.randrange(max(window // 2, 1), window)
        bad_ack = (snd_una - (1 << 30)) if rng.random() < 0.5 else (snd_nxt + (1 << 29))
        if kind == "rst":
            packet = spoofed(rcv_nxt + inside, 0, RST, 0)
        elif kind == "syn":
            packet = spoofed(rcv_nxt + inside, 0, SYN, 64240)
        else:
            at = rcv_nxt if i % 4 == 0 else rcv_nxt + inside
            payload = b"INJECTED" * 12 + b"!!!!"
            packet = spoofed(at, bad_ack, ACK | PSH, 512, payload)
        injector.send(packet)
        sent[kind] += 1
        i += 1
        if i % 32 == 0:
            ahead = i / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    seconds = time.monotonic() - start
    return {
        "sent": sent,
        "total": injector.sent,
        "refused": injector.refused,
        "seconds": round(seconds, 3),
        "rate": round(injector.sent / seconds) if seconds else 0,
    }


# ---- the parent's side: a flood against a running daemon, with legitimate clients ---------


@dataclass
class FloodReport:
    injector: dict[str, Any]  # the injector's own line: sent, delivered, rate
    rss_before: int  # KiB, the daemon's VmRSS
    rss_peak: int
    rss_after: int
    syns_handled: int  # SYNs ustack took from the TUN (cookies + half-open + backlog drops)
    flood_seconds: float  # from the first SYN until ustack had handled the last (+- 0.25 s)
    peak_syn_rate: int  # SYNs ustack handled a second, best 0.5 s window
    cookies_sent: int
    cookies_accepted: int
    backlog_drops: int
    half_open_peak: int  # SYN_RECEIVED connections
    curls: list[tuple[int, float, str]] = field(default_factory=list)  # (exit, seconds, error)

    @property
    def curls_ok(self) -> int:
        return sum(1 for code, _, _ in self.curls if code == 0)

    def lines(self) -> list[str]:
        inj = self.injector
        ok, total = self.curls_ok, len(self.curls)
        slowest = max((seconds for _, seconds, _ in self.curls), default=0.0)
        return [
            f"SYNs sent by the injector  {inj['sent']:,} in {inj['seconds']:.2f} s "
            f"({inj['rate']:,}/s); the TUN queue dropped {inj['tun_tx_dropped']:,} "
            "(sent again)",
            f"SYNs handled by ustack     {self.syns_handled:,} in {self.flood_seconds:.2f} s "
            f"(peak {self.peak_syn_rate:,}/s)",
            f"SYN cookies                sent {self.cookies_sent:,}, "
            f"validated {self.cookies_accepted:,}",
            f"backlog drops              {self.backlog_drops:,}; "
            f"half-open (SYN_RECEIVED) peak {self.half_open_peak}",
            f"daemon RSS (KiB)           before {self.rss_before:,}, peak during "
            f"{self.rss_peak:,}, after {self.rss_after:,}",
            f"legitimate curls           {ok}/{total} succeeded ({100 * ok / max(total, 1):.1f}%), "
            f"slowest {slowest:.2f} s",
        ]


def _syns(counters: dict[str, int]) -> int:
    return (
        counters.get("tcp.syncookies.sent", 0)
        + counters.get("tcp.passive-opens", 0)
        + counters.get("tcp.drop.backlog-full", 0)
    )


def flood_with_curls(
    ns: Netns,
    daemon: UstackDaemon,
    count: int,
    rate: float = 0,
    curl_every: float = 0.1,
    max_time: float = 20,
    target_url: str = "http://198.18.0.2/",
) -> FloodReport:
    """Flood port 80 with `count` spoofed SYNs; meanwhile sample the daemon's
    RSS (every 50 ms) and counters (every 250 ms), and start a legitimate
    curl every `curl_every` seconds until ustack has handled the last SYN."""
    before = daemon.stats()
    rss_before = daemon.rss_kib()
    argv = ns.command(sys.executable, __file__, "synflood", "--count", str(count),
                      "--rate", str(rate))  # fmt: skip
    injector = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    start = time.monotonic()
    curls: list[subprocess.Popen[bytes]] = []
    delivered: int | None = None  # SYNs the injector got into the TUN's queue
    out = b""
    drain_limit = 600.0  # a stack that stopped handling SYNs: report what it did
    samples: list[tuple[float, int]] = [(0.0, _syns(before))]
    rss_peak, half_open_peak = rss_before, 0
    next_curl = next_stats = start
    try:
        while True:
            now = time.monotonic()
            rss_peak = max(rss_peak, daemon.rss_kib())
            if now >= next_curl:
                curl = ns.command("curl", "-sS", "-o", "/dev/null", "-w", "%{time_total}",
                                  "--max-time", str(max_time), target_url)  # fmt: skip
                curls.append(subprocess.Popen(curl, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
                next_curl += curl_every
            if now >= next_stats:
                reply = daemon.request("stats")
                samples.append((now - start, _syns(reply["counters"])))
                half_open_peak = max(half_open_peak, reply["connections"].get("SYN_RECEIVED", 0))
                next_stats += 0.25
                # Done when the injector is and ustack has drained the TUN's queue
                # (the curls' own SYNs count too: at least as many as were delivered).
                if injector.poll() is not None:
                    if delivered is None:
                        out, err = injector.communicate()
                        if injector.returncode != 0:
                            raise AssertionError(f"injector failed: {err.decode(errors='replace')}")
                        delivered = json.loads(out)["delivered"]
                    if samples[-1][1] - samples[0][1] >= delivered or now - start > drain_limit:
                        break
            time.sleep(0.05)
        results = []
        for process in curls:
            curl_out, curl_err = process.communicate(timeout=max_time + 10)
            seconds = float(curl_out or 0)
            results.append((process.returncode, seconds, curl_err.decode().strip()))
    finally:  # a failure on the way leaves nothing running
        for process in (injector, *curls):
            if process.poll() is None:
                process.kill()
                process.communicate()
    after = daemon.stats()
    rss_peak = max(rss_peak, daemon.rss_kib())
    last_rise = samples[-1][0]
    window = [
        (later[1] - earlier[1]) / (later[0] - earlier[0])
        for earlier, later in zip(samples, samples[2:], strict=False)
        if later[0] > earlier[0]
    ]

    def delta(name: str) -> int:
        return after.get(name, 0) - before.get(name, 0)

    return FloodReport(
        injector=json.loads(out),
        rss_before=rss_before,
        rss_peak=rss_peak,
        rss_after=daemon.rss_kib(),
        syns_handled=_syns(after) - _syns(before),
        flood_seconds=round(last_rise, 2),
        peak_syn_rate=round(max(window, default=0)),
        cookies_sent=delta("tcp.syncookies.sent"),
        cookies_accepted=delta("tcp.syncookies.accepted"),
        backlog_drops=delta("tcp.drop.backlog-full"),
        half_open_peak=half_open_peak,
        curls=results,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="tun0")
    parser.add_argument("--target", default="198.18.0.2")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--seed", type=int, default=1)
    sub = parser.add_subparsers(dest="attack", required=True)
    flood = sub.add_parser("synflood")
    flood.add_argument("--count", type=int, default=100_000)
    flood.add_argument("--rate", type=float, default=0, help="SYNs a second; 0: flat out")
    inject = sub.add_parser("blind")
    inject.add_argument("--control", type=Path, required=True)
    inject.add_argument("--client", default="198.18.0.1")
    inject.add_argument("--client-port", type=int, required=True)
    inject.add_argument("--kinds", default="rst,syn,data")
    inject.add_argument("--count", type=int, default=3000)
    inject.add_argument("--rate", type=float, default=2000)
    inject.add_argument("--exact-rst", action="store_true")
    inject.add_argument("--until", type=int, default=0, help="stop after this many bytes")
    args = parser.parse_args(argv)
    if args.attack == "synflood":
        result = synflood(args.target, args.port, args.count, args.rate or None, args.device,
                          args.seed)  # fmt: skip
    else:
        result = blind(
            args.control, args.client, args.client_port, args.target, args.port,
            args.kinds.split(","), args.count, args.rate, args.device, args.seed, args.exact_rst,
            args.until,
        )  # fmt: skip
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
