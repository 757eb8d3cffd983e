"""The stack's edges against a real daemon on a real TUN, in a private namespace:

- `ustack connect` to an address no connection can have (broadcast,
  multicast, 0/8, loopback, the stack's own) fails at once with ENETUNREACH;
- SYNs from such sources, and a SYN+FIN, put on the TUN get no SYN,ACK and
  are counted;
- --max-connections: a connection beyond the limit is not established (the
  Linux client's SYNs go unanswered), is counted, and once one closes a new
  one succeeds;
- --syn-retries (and the control `config` key): a connect nobody answers
  fails with ETIMEDOUT after the time it implies.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ustack.linux.lab import LINUX_ADDRESS
from ustack.linux.lab import STACK_ADDRESS
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon
from ustack.wire.ipv4 import PROTO_TCP
from ustack.wire.ipv4 import build_ipv4
from ustack.wire.tcp import FIN
from ustack.wire.tcp import SYN
from ustack.wire.tcp import build_tcp

pytestmark = pytest.mark.netns

ECHO = 7


def ustack_connect(daemon: UstackDaemon, host: str, port: int) -> tuple[float, str, int]:
    """`ustack connect HOST PORT` with empty stdin: (seconds, stderr, exit code)."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "ustack", "connect", "--control", str(daemon.control),
         host, str(port)],
        input=b"", capture_output=True, timeout=60,
    )  # fmt: skip
    return time.monotonic() - started, result.stderr.decode(), result.returncode


def poll(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.mark.parametrize(
    "host",
    ["0.0.0.0", "255.255.255.255", "198.18.0.255", "198.18.0.0", "224.0.0.1",
     "127.0.0.1", STACK_ADDRESS],
)  # fmt: skip
def test_connect_to_an_address_no_connection_can_have_fails_at_once(
    daemon: UstackDaemon, host: str
) -> None:
    seconds, stderr, code = ustack_connect(daemon, host, ECHO)
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Errno 101" in lines[0] and host in lines[0], stderr
    assert "Traceback" not in stderr
    assert seconds < 1.5  # the CLI's own start-up included; the stack answers at once
    assert daemon.stats().get("tcp.out", 0) == 0  # not one SYN
    assert daemon.connections() == []


def syn(src: str, sport: int, flags: int = SYN) -> bytes:
    source = int.from_bytes(socket.inet_aton(src), "big")
    destination = int.from_bytes(socket.inet_aton(STACK_ADDRESS), "big")
    segment = build_tcp(
        src=source, dst=destination, src_port=sport, dst_port=ECHO, seq=1000, ack=0,
        flags=flags, window=65535,
    )  # fmt: skip
    header = build_ipv4(
        src=source, dst=destination, protocol=PROTO_TCP, payload_length=len(segment)
    )
    return header + bytes(segment)


def test_syns_from_sources_no_peer_has_and_a_syn_fin_get_no_synack(
    ns: Netns, daemon: UstackDaemon
) -> None:
    bad = ["198.18.0.2", "198.18.0.255", "255.255.255.255", "224.0.0.1", "0.0.0.0", "127.0.0.1"]
    for port, source in enumerate(bad, start=41000):
        ns.inject(syn(source, port))
    ns.inject(syn(LINUX_ADDRESS, 42000, SYN | FIN))
    ns.inject(syn(LINUX_ADDRESS, 42001))  # the control case: answered
    poll(lambda: daemon.stats().get("tcp.passive-opens", 0) == 1)
    stats = daemon.stats()
    assert stats["ip.drop.local-source"] == 1
    assert stats["ip.drop.bad-source"] == len(bad) - 1
    assert stats["tcp.drop.syn-fin"] == 1
    synacks = [
        e for e in daemon.trace_events()
        if e["type"] == "segment" and e["direction"] == "out" and e["flags"] == "S."
    ]  # fmt: skip
    assert [(e["remote"], e["remote_port"]) for e in synacks] == [(LINUX_ADDRESS, 42001)]


def echo_client(ns: Netns, count: int, timeout: float) -> subprocess.Popen[bytes]:
    """`count` Python clients in the namespace, each connecting to echo with
    `timeout`; each prints "ok" (echoed) or "timeout", then all wait for a line
    on stdin before they close."""
    code = (
        "import socket, sys\n"
        "socks = []\n"
        f"for _ in range({count}):\n"
        f"    s = socket.socket(); s.settimeout({timeout})\n"
        "    try:\n"
        f"        s.connect(('{STACK_ADDRESS}', {ECHO})); s.sendall(b'hi')\n"
        "        print('ok' if s.recv(2) == b'hi' else 'bad', flush=True); socks.append(s)\n"
        "    except TimeoutError:\n"
        "        print('timeout', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    return subprocess.Popen(
        ns.command(sys.executable, "-c", code),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_a_connection_beyond_the_limit_waits_until_one_closes(ns: Netns, tmp_path: Path) -> None:
    with UstackDaemon.start(ns, tmp_path, "--max-connections", "2") as daemon:
        holders = echo_client(ns, 2, timeout=5)
        assert holders.stdout is not None and holders.stdin is not None
        assert [holders.stdout.readline(), holders.stdout.readline()] == [b"ok\n", b"ok\n"]
        third = echo_client(ns, 1, timeout=2.5)
        out, _ = third.communicate(b"\n", timeout=30)
        assert out == b"timeout\n"  # its SYN and one retransmission went unanswered
        stats = daemon.stats()
        assert stats["tcp.drop.connection-limit"] >= 2
        assert stats["tcp.passive-opens"] == 2
        holders.communicate(b"\n", timeout=30)  # both close: the clients' FINs first
        daemon.wait_until_no_connections()
        again = echo_client(ns, 2, timeout=5)
        out, _ = again.communicate(b"\n", timeout=30)
        assert out == b"ok\nok\n"


def test_syn_retries_bound_the_connect_time(ns: Netns, tmp_path: Path) -> None:
    """Linux answers a SYN to its closed port 9 with RST,ACK; the fault rule
    drops those, so the stack's SYNs go unanswered."""
    with UstackDaemon.start(
        ns, tmp_path, "--syn-retries", "1", "--fault", "drop:dir=in,flags=RST"
    ) as daemon:
        assert daemon.request("config")["connect_timeout"] == 3.0
        seconds, stderr, code = ustack_connect(daemon, LINUX_ADDRESS, 9)
        assert code == 1 and "ETIMEDOUT" in stderr, stderr
        assert 2.9 < seconds < 4.5  # 1 s, then 2 s
        reply = daemon.request("config", syn_retries=0)
        assert reply["syn_retries"] == 0 and reply["connect_timeout"] == 1.0
        seconds, stderr, code = ustack_connect(daemon, LINUX_ADDRESS, 9)
        assert code == 1 and "ETIMEDOUT" in stderr, stderr
        assert 0.9 < seconds < 2.5
        assert not daemon.request("config", syn_retries=-1)["ok"]
    assert "Traceback" not in daemon.log_text()
