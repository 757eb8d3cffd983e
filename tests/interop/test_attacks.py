"""Attacks on a live daemon, each from inside the test's own namespace:

- a SYN flood from spoofed sources (RFC 4987): the half-open backlog stays
  bounded, SYN cookies answer the rest, memory stays flat, and legitimate
  curls during the flood all complete (tools/synflood.py is the 100,000 run);
- blind in-window RST, SYN and data (RFC 5961) during 50 MB transfers both
  ways: no reset, no corruption, rate-limited challenge ACKs; the exact-seq RST
  still resets (the control case);
- slow readers both ways: a zero window holds the sender off, memory stays
  bounded, and every byte arrives once the reader reads.

The injector is tests/attacks.py, run in the namespace with an AF_PACKET
socket on tun0; spoofed SYN sources are in 198.19.0.0/16, not local to the
namespace, so nothing answers them and nothing leaves.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from attacks import flood_with_curls
from test_lifecycle import PASSIVE_CLOSE

from tools.losstest import pattern_sha256
from ustack import services
from ustack.linux.lab import LINUX_ADDRESS
from ustack.linux.lab import STACK_ADDRESS
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon

Spawn = Callable[..., "subprocess.Popen[Any]"]

ATTACKS = Path(__file__).resolve().parents[1] / "attacks.py"
BACKLOG = 128  # ustack.api.start_server's default
FLOOD_SYNS = 20_000
MiB = 1 << 20
BULK = 50 * MiB
CHALLENGE_LIMIT = 10  # TcpConfig.challenge_ack_limit: challenge ACKs a second, per connection
INJECT_RATE = 3000  # spoofed segments a second


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """subprocess.Popen for the test's clients: any still running when the
    test ends (a failure left it waiting) is killed."""
    started: list[subprocess.Popen[Any]] = []

    def start(argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        started.append(subprocess.Popen(argv, **kwargs))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def test_syn_flood_keeps_memory_bounded_and_legitimate_curls_complete(
    ns: Netns, tmp_path: Path
) -> None:
    # Trace only the legitimate client: 20,000 spoofed handshakes would bury it.
    daemon = UstackDaemon.start(ns, tmp_path, "--services", "http", "--trace-host", LINUX_ADDRESS)
    try:
        assert ns.run("curl", "-sS", "-o", "/dev/null", "http://198.18.0.2/").returncode == 0
        report = flood_with_curls(ns, daemon, FLOOD_SYNS, curl_every=0.1, max_time=30)
        print("\n".join(report.lines()))
        # Every spoofed SYN reached ustack (the injector resends what the TUN
        # queue dropped) and was answered: half-open up to the backlog, then cookies.
        assert report.injector["delivered"] == FLOOD_SYNS
        assert report.syns_handled >= FLOOD_SYNS
        assert report.half_open_peak <= BACKLOG
        assert report.cookies_sent >= FLOOD_SYNS - BACKLOG
        assert report.backlog_drops == 0
        # Memory: no state per SYN beyond the backlog (a generous bound).
        assert report.rss_peak - report.rss_before < 16 * 1024, report.lines()
        # Every legitimate client got its page; those that came while the
        # backlog was full were let in by their cookie.
        assert report.curls and report.curls_ok == len(report.curls), report.curls
        assert report.cookies_accepted >= 1
        cookie_lives = [
            life
            for life in daemon.lives(remote="198.18.0.1")
            if life[:2] == ["LISTEN", "ESTABLISHED"]
        ]
        assert cookie_lives, "no legitimate connection was rebuilt from a cookie"
        assert daemon.process.poll() is None
    finally:
        code = daemon.stop()
    assert code == 0
    assert "Traceback" not in daemon.log_text()


# ---- blind in-window attacks (RFC 5961) -----------------------------------------------------


def test_connections_reports_absolute_origins_and_the_receive_window(
    ns: Netns, daemon: UstackDaemon, spawn: Spawn
) -> None:
    """`connections` gives ISS and IRS (absolute) beside the relative numbers,
    and RCV.WND as advertised: what the injector needs to aim at a window."""
    client = spawn(ns.command("nc", "-N", STACK_ADDRESS, "9"), stdin=subprocess.PIPE)
    try:
        assert client.stdin is not None
        client.stdin.write(b"x" * 1000)
        client.stdin.flush()
        deadline = time.monotonic() + 10
        while not (rows := daemon.connections()) or rows[0]["rcv_nxt"] < 1001:
            assert time.monotonic() < deadline, rows
            time.sleep(0.02)
        (row,) = rows
        segments = [e for e in daemon.trace_events() if e["type"] == "segment"]
        syn = next(e for e in segments if e["direction"] == "in" and e["flags"] == "S")
        synack = next(e for e in segments if e["direction"] == "out" and e["flags"] == "S.")
        assert (row["irs"], row["iss"]) == (syn["seq"], synack["seq"])
        assert row["rcv_nxt"] == 1001  # relative: SYN + 1000 bytes
        assert 0 < row["rcv_wnd"] <= 256 * 1024
    finally:
        client.stdin.close()  # type: ignore[union-attr]
        client.wait(timeout=10)


def wait_for_transfer(
    daemon: UstackDaemon, client_port: int, timeout: float = 10
) -> dict[str, Any]:
    """The connection of `client_port` once it is ESTABLISHED and data flows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for row in daemon.connections():
            moving = row["snd_nxt"] > 1 or row["rcv_nxt"] > 1000
            ours = row["remote"].endswith(f":{client_port}") and row["state"] == "ESTABLISHED"
            if ours and moving:
                return row
        time.sleep(0.02)
    raise AssertionError(f"no transfer from port {client_port}: {daemon.connections()}")


def transfer_to_attack(
    ns: Netns, spawn: Spawn, port: int, rate: str, *args: str, **popen: Any
) -> subprocess.Popen[bytes]:
    """curl from `port` (where the injector aims), at most `rate` a second
    (--limit-rate: the transfer lasts long enough to attack)."""
    argv = ["curl", "-sS", "--local-port", str(port), "--limit-rate", rate, "--max-time", "60"]
    return spawn(ns.command(*argv, *args), **popen)


def blind_attack(
    ns: Netns, daemon: UstackDaemon, client_port: int, *extra: str, count: int = 1_000_000
) -> dict[str, Any]:
    """tests/attacks.py blind in the namespace, until the last MiB of the transfer."""
    result = ns.run(
        sys.executable, str(ATTACKS), "blind", "--control", str(daemon.control),
        "--client-port", str(client_port), "--count", str(count), "--rate", str(INJECT_RATE),
        "--until", str(BULK - MiB), *extra, timeout=120, check=True,
    )  # fmt: skip
    return json.loads(result.stdout)


def connection_events(daemon: UstackDaemon, client_port: int) -> list[dict[str, Any]]:
    """The trace of the first connection from `client_port`."""
    events = daemon.trace_events()
    conn = next(
        e["conn"] for e in events if e["type"] == "connection" and e["remote_port"] == client_port
    )
    return [e for e in events if e.get("conn") == conn]


def verdicts(events: list[dict[str, Any]]) -> Counter[str]:
    """What the connection decided about the segments it did not take."""
    kinds: Counter[str] = Counter()
    for e in events:
        if e["type"] != "decision":
            continue
        what = e["what"]
        if "RST in the window" in what:
            kinds["in-window RST challenged"] += 1
        elif "SYN in a synchronized state" in what:
            kinds["in-window SYN challenged"] += 1
        elif "ACK of data never sent" in what or "ACK older than the send window" in what:
            kinds["bad-ACK data challenged"] += 1
        elif "outside the receive window" in what:
            kinds["outside the window"] += 1
        if "suppressed by the" in what and "rate limit" in what:
            kinds["challenge ACKs withheld"] += 1
    return kinds


@dataclass
class Attacked:
    """A transfer that ran under a blind attack, with what is needed to judge it."""

    out: bytes
    attack: dict[str, Any]
    before: dict[str, int]
    seconds: float

    def check_survived(self, daemon: UstackDaemon, client_port: int) -> None:
        daemon.wait_until_no_connections()
        check_survived_attack(daemon, client_port, self.attack, self.before, self.seconds)


def attack_during(
    ns: Netns, daemon: UstackDaemon, client_port: int, curl: subprocess.Popen[bytes]
) -> Attacked:
    """Once the transfer runs, attack it; then let curl finish, successfully."""
    wait_for_transfer(daemon, client_port)
    before = daemon.stats()
    start = time.monotonic()
    attack = blind_attack(ns, daemon, client_port)
    seconds = time.monotonic() - start
    out, err = curl.communicate(timeout=60)
    assert curl.returncode == 0, err
    return Attacked(out or b"", attack, before, seconds)


@contextmanager
def attacked_http_transfer(
    ns: Netns,
    workdir: Path,
    spawn: Spawn,
    client_port: int,
    rate: str,
    *curl_args: str,
    **popen: Any,
) -> Iterator[tuple[UstackDaemon, Attacked]]:
    """An http daemon for the block, and a curl transfer (transfer_to_attack's
    arguments) that ran under a blind attack and completed; once the daemon has
    stopped, its log holds no traceback."""
    with UstackDaemon.start(ns, workdir, "--services", "http") as daemon:
        curl = transfer_to_attack(ns, spawn, client_port, rate, *curl_args, **popen)
        yield daemon, attack_during(ns, daemon, client_port, curl)
    assert "Traceback" not in daemon.log_text()


def check_survived_attack(
    daemon: UstackDaemon,
    client_port: int,
    attack: dict[str, Any],
    before: dict[str, int],
    seconds: float,
) -> Counter[str]:
    """No reset, challenge ACKs sent but within the rate limit, and no
    injected byte accepted: the stack never acknowledged beyond the client's
    own stream (its FIN)."""
    after = daemon.stats()
    sent = after.get("tcp.out.challenge-ack", 0) - before.get("tcp.out.challenge-ack", 0)
    # Withheld by the 10-a-second challenge limit, or before it by the one
    # ACK per 500 ms for any invalid segment (tcp_invalid_ratelimit).
    limited = sum(
        after.get(name, 0) - before.get(name, 0)
        for name in ("tcp.out.challenge-ack-limited", "tcp.out.ack-skipped-challenge")
    )
    events = connection_events(daemon, client_port)
    kinds = verdicts(events)
    print(f"injected {attack}; challenge ACKs sent {sent}, withheld {limited}; {dict(kinds)}")
    assert min(attack["sent"].values()) >= 1000, attack
    # Most of what we aimed inside the window was handled as in-window (RCV.NXT
    # moves during an upload, so some land behind it): every kind got challenged.
    for kind in ("in-window RST challenged", "in-window SYN challenged", "bad-ACK data challenged"):
        assert kinds[kind] >= 500, kinds
    assert 1 <= sent <= CHALLENGE_LIMIT * (math.ceil(seconds) + 1), (sent, seconds)
    assert limited >= attack["total"] // 2
    assert not [e for e in events if e["type"] == "state" and e["event"] == "RCV_RST"]
    lives = daemon.lives(remote_port=client_port)
    assert lives == [PASSIVE_CLOSE], lives
    fin = [
        e for e in events if e["type"] == "segment" and e["direction"] == "in" and "F" in e["flags"]
    ]
    acked = max(e["rel_ack"] for e in events if e["type"] == "segment" and e["direction"] == "out")
    assert acked == fin[0]["rel_seq"] + 1, "ustack acknowledged bytes the client never sent"
    return kinds


def test_blind_in_window_rst_syn_and_data_during_a_50mb_download(
    ns: Netns, tmp_path: Path, spawn: Spawn
) -> None:
    port = 41000
    got = tmp_path / "download.bin"
    with attacked_http_transfer(
        ns, tmp_path, spawn, port, "20M", "-o", str(got), f"http://{STACK_ADDRESS}/bytes/{BULK}",
        stderr=subprocess.PIPE,
    ) as (daemon, attacked):  # fmt: skip
        digest = hashlib.sha256(got.read_bytes()).hexdigest()
        assert digest == pattern_sha256(BULK)
        attacked.check_survived(daemon, port)


def test_blind_in_window_rst_syn_and_data_during_a_50mb_upload(
    ns: Netns, tmp_path: Path, spawn: Spawn
) -> None:
    port = 41001
    body = tmp_path / "upload.bin"
    data = os.urandom(BULK)
    body.write_bytes(data)
    with attacked_http_transfer(
        ns, tmp_path, spawn, port, "10M", "-H", "Expect:", "--data-binary", f"@{body}",
        f"http://{STACK_ADDRESS}/upload", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as (daemon, attacked):  # fmt: skip
        # The application saw exactly the client's bytes: no injected data.
        assert attacked.out.decode().split() == [str(BULK), hashlib.sha256(data).hexdigest()]
        attacked.check_survived(daemon, port)


def test_exact_sequence_rst_still_resets_a_transfer(
    ns: Netns, tmp_path: Path, spawn: Spawn
) -> None:
    """The control case: a RST at exactly RCV.NXT is the real thing (RFC 5961 3.2)."""
    port = 41002
    with UstackDaemon.start(ns, tmp_path, "--services", "http") as daemon:
        curl = transfer_to_attack(
            ns, spawn, port, "5M", "-o", "/dev/null", f"http://{STACK_ADDRESS}/bytes/{BULK}",
            stderr=subprocess.PIPE,
        )  # fmt: skip
        wait_for_transfer(daemon, port)
        attack = blind_attack(ns, daemon, port, "--exact-rst")
        assert attack["sent"] == {"rst-exact": 1}
        _, err = curl.communicate(timeout=60)
        assert curl.returncode != 0, "the transfer survived an exact RST"
        print(f"curl after the exact RST: exit {curl.returncode}, {err.decode().strip()}")
        resets = [
            e
            for e in connection_events(daemon, port)
            if e["type"] == "state" and e["event"] == "RCV_RST"
        ]
        assert [(e["old"], e["new"]) for e in resets] == [("ESTABLISHED", "CLOSED")]


# ---- slow readers -------------------------------------------------------------------------------

SLOW_READER_APP = Path(__file__).resolve().parents[1] / "slow_reader_app.py"
WANT = 20 * MiB  # what the writing client wants to send

# A Linux client that writes as fast as it can until nothing more goes for a
# second, says how much went, then (on a line from the test) sends the rest,
# half-closes and prints the server's answer, then the SHA-256 of what it sent.
EAGER_WRITER = r"""
import hashlib, os, select, socket, sys
data = os.urandom(int(sys.argv[3]))
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.setblocking(False)
sent = 0
while select.select([], [s], [], 1.0)[1]:
    try:
        sent += s.send(data[sent:sent + 65536])
    except BlockingIOError:
        pass
print(sent, flush=True)
sys.stdin.readline()
s.setblocking(True)
s.sendall(data[sent:])
s.shutdown(socket.SHUT_WR)
print(s.makefile().readline().strip(), flush=True)
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
"""


def spawn_python_client(ns: Netns, spawn: Spawn, script: str, *args: str) -> Any:
    """`python -c script args` in the namespace, text pipes on its three streams."""
    client = spawn(
        ns.command(sys.executable, "-c", script, *args),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert client.stdout is not None and client.stdin is not None
    return client


def zero_window_acks(events: list[dict[str, Any]]) -> int:
    return sum(
        1 for e in events if e["type"] == "segment" and e["direction"] == "out" and e["window"] == 0
    )


def test_application_that_never_reads_closes_the_window_and_holds_the_sender_off(
    ns: Netns, tmp_path: Path, spawn: Spawn
) -> None:
    daemon = UstackDaemon.start(ns, tmp_path, "--services", "hold", program=(str(SLOW_READER_APP),))
    try:
        rss_before = daemon.rss_kib()
        client = spawn_python_client(ns, spawn, EAGER_WRITER, STACK_ADDRESS, "5001", str(WANT))
        sent = int(client.stdout.readline())  # the client could not send more for a second
        (row,) = daemon.connections()
        ss = ns.run("ss", "-tin", "dst", STACK_ADDRESS).stdout.decode()
        rss_held = daemon.rss_kib()
        events = connection_events(daemon, int(row["remote"].split(":")[1]))
        # Linux probes a zero window with an old byte's SEQ (SND.UNA - 1) and no data.
        probes = [
            e
            for e in events
            if e["type"] == "segment"
            and e["direction"] == "in"
            and e["length"] == 0
            and e["rel_seq"] == row["rcv_nxt"] - 1
        ]
        print(
            f"client sent {sent:,} of {WANT:,}; ustack holds {row['recv_queue']:,}, "
            f"rcv_wnd {row['rcv_wnd']}; {zero_window_acks(events)} ACKs with win 0, "
            f"{len(probes)} zero-window probes; RSS {rss_before:,} -> {rss_held:,} KiB"
        )
        print(ss)
        # The stack's window is shut and it told the client so, more than once.
        assert row["rcv_wnd"] == 0 and row["recv_queue"] > 0
        assert zero_window_acks(events) >= 2
        assert probes, "the Linux client never probed the zero window"
        # The client is held off: its data waits in its own send buffer.
        assert sent < WANT // 2
        assert int(ss.split("\n")[1].split()[2]) > 0, ss  # Send-Q: unacknowledged bytes
        assert rss_held - rss_before < 16 * 1024
        # Now the application reads: every byte arrives, in order, intact.
        daemon.process.send_signal(signal.SIGUSR1)
        client.stdin.write("go\n")
        client.stdin.flush()
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, err
        answer, sent_digest = out.splitlines()
        assert answer == sent_digest and answer.startswith(f"{WANT} ")
    finally:
        daemon.stop()
    assert "Traceback" not in daemon.log_text()


# A Linux client with a small receive buffer that reads nothing for a while,
# then reads READ bytes and prints their SHA-256.
IDLE_READER = r"""
import hashlib, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
s.connect((sys.argv[1], int(sys.argv[2])))
print("connected", flush=True)
sys.stdin.readline()
got = bytearray()
while len(got) < int(sys.argv[3]):
    got += s.recv(65536)
print(hashlib.sha256(bytes(got[:int(sys.argv[3])])).hexdigest(), flush=True)
"""


def test_linux_reader_that_never_reads_gets_zero_window_probes_and_bounded_memory(
    ns: Netns, tmp_path: Path, spawn: Spawn
) -> None:
    daemon = UstackDaemon.start(ns, tmp_path, "--services", "chargen")
    read = 4 * MiB
    try:
        rss_before = daemon.rss_kib()
        client = spawn_python_client(ns, spawn, IDLE_READER, STACK_ADDRESS, "19", str(read))
        assert client.stdout.readline() == "connected\n"
        # chargen writes without end: the client's window closes, ustack probes it.
        deadline = time.monotonic() + 15
        while True:
            (row,) = daemon.connections()
            port = int(row["remote"].split(":")[1])
            events = connection_events(daemon, port)
            probes = [
                e for e in events if e["type"] == "segment" and e["note"] == "zero-window probe"
            ]
            if row["snd_wnd"] == 0 and len(probes) >= 2:
                break
            assert time.monotonic() < deadline, (row, len(probes))
            time.sleep(0.1)
        rss_held = daemon.rss_kib()
        print(
            f"ustack: snd_wnd 0, send queue {row['send_queue']:,} bytes, {len(probes)} "
            f"zero-window probes; RSS {rss_before:,} -> {rss_held:,} KiB"
        )
        # Backpressure: the send buffer is full and the application waits; no
        # more than the buffers hold (256 KiB each) is kept.
        assert 0 < row["send_queue"] <= 256 * 1024
        assert all(e["length"] == 1 for e in probes)
        assert rss_held - rss_before < 16 * 1024
        # The reader wakes up: the stream goes on where it stopped, intact.
        client.stdin.write("go\n")
        client.stdin.flush()
        answer, err = client.communicate(timeout=60)
        assert client.returncode == 0, err
        pattern = services.chargen_pattern()
        expected = (pattern * (read // len(pattern) + 1))[:read]
        assert answer.strip() == hashlib.sha256(expected).hexdigest()
    finally:
        daemon.stop()
    assert "Traceback" not in daemon.log_text()
