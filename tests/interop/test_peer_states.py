"""The Linux peer's states from the kernel tracepoint sock:inet_sock_set_state.

The direct tests run a PeerStateWatcher in this process, on an asyncio loop in
a thread that has entered a private namespace, where real Linux sockets talk
between two addresses on the namespace's lo: one plays the stack. The daemon
tests run `ustack serve --peer-states` and read its trace.
"""

from __future__ import annotations

import asyncio
import ctypes
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from collections.abc import Coroutine
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from typing import TypeVar

import pytest
from test_lifecycle import PASSIVE_CLOSE
from test_lifecycle import ustack_connect_to_nc

from ustack.linux.lab import LINUX_ADDRESS
from ustack.linux.lab import STACK_ADDRESS
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon
from ustack.linux.lab import netns
from ustack.linux.peer_states import PeerStatesError
from ustack.linux.peer_states import PeerStateWatcher
from ustack.linux.tracefs import parse_line
from ustack.linux.tracefs import state_name
from ustack.trace.records import PeerStateChange

# The direct tests' own pair, so that other namespaces' tests (198.18.0.x) do not mix in.
STACK = "198.18.200.2"
LINUX = "198.18.200.1"
STACK6 = "2001:2:200::2"
LINUX6 = "2001:2:200::1"
ENDS = {4: (LINUX, STACK), 6: (LINUX6, STACK6)}  # (Linux, the stack) by family
NS_PREFIX = "ustack-p"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")

ACTIVE_CLOSE = ["CLOSED", "SYN_SENT", "ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT"]

# As read from trace_pipe on Linux 6.18.
LINE = (
    "          python-15553   [000] ..s2.  2345.068576: inet_sock_set_state: family=AF_INET "
    "protocol=IPPROTO_TCP sport=36665 dport=46059 saddr=198.18.200.1 daddr=198.18.200.2 "
    "saddrv6=::ffff:198.18.200.1 daddrv6=::ffff:198.18.200.2 oldstate=TCP_FIN_WAIT1 "
    "newstate=TCP_FIN_WAIT2"
)


# ---- namespaces -------------------------------------------------------------------------


@pytest.fixture
def pns() -> Iterator[Netns]:
    """A namespace of our own: lo up, nothing else (stale ones are swept by conftest)."""
    with netns(NS_PREFIX) as namespace:
        yield namespace


@pytest.fixture
def pair(pns: Netns) -> Netns:
    """The namespace with LINUX and STACK on its lo, and LINUX6 and STACK6."""
    for address in (LINUX, STACK):
        subprocess.run(["ip", "-n", pns.name, "addr", "add", f"{address}/32", "dev", "lo"],
                       check=True)  # fmt: skip
    for address in (LINUX6, STACK6):  # lo does no duplicate address detection
        subprocess.run(["ip", "-n", pns.name, "-6", "addr", "add", f"{address}/128", "dev", "lo"],
                       check=True)  # fmt: skip
    return pns


def in_netns(ns: Netns, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run an asyncio main in a thread that has entered the namespace (setns
    is per thread): the loop's sockets and the watcher's sock_diag live there."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/run/netns/{ns.name}") as handle:
                if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            result["value"] = asyncio.run(main())
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the test's loop thread did not finish"
    if "error" in result:
        raise result["error"]
    return result["value"]


def tracefs_instances() -> list[str]:
    """The instances, as seen through a tracefs mount of our own (a private
    mount namespace), whatever the watcher mounted or unmounted."""
    script = (
        "mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing\n"
        "ls /sys/kernel/tracing/instances\n"
    )
    listing = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return listing.stdout.split()


class Recorder:
    """The emit callable: events, and the thread each came on."""

    def __init__(self) -> None:
        self.events: list[PeerStateChange] = []
        self.threads: set[int] = set()

    def __call__(self, event: PeerStateChange) -> None:
        self.events.append(event)
        self.threads.add(threading.get_ident())

    def life(self, linux_port: int) -> list[str]:
        changes = [e for e in self.events if e.remote_port == linux_port]
        return [changes[0].old, *(e.new for e in changes)] if changes else []

    async def wait_for(self, linux_port: int, last: str, timeout: float = 10) -> list[str]:
        deadline = time.monotonic() + timeout
        while (life := self.life(linux_port))[-1:] != [last]:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {last} for port {linux_port}: {life}")
            await asyncio.sleep(0.02)
        return life


def run_python(ns: Netns, code: str, *args: str) -> str:
    return ns.python(code, *args).stdout.decode().strip()


# ---- parsing -------------------------------------------------------------------------------


def test_parse_line_and_state_names() -> None:
    change = parse_line(LINE, STACK)
    assert change is not None
    assert (change.linux, change.linux_port, change.stack, change.stack_port) == (
        LINUX, 36665, STACK, 46059,
    )  # fmt: skip
    assert (change.old, change.new) == ("FIN_WAIT_1", "FIN_WAIT_2")
    # The other end of the connection, another stack address, a listener, IPv6:
    assert parse_line(LINE, LINUX) is None
    assert parse_line(LINE, "198.18.0.2") is None
    listener = LINE.replace("daddr=198.18.200.2", "daddr=0.0.0.0")
    assert parse_line(listener, STACK) is None
    # An AF_INET6 socket with v4-mapped addresses talks IPv4: it is ours too.
    mapped = parse_line(LINE.replace("AF_INET ", "AF_INET6 "), STACK)
    assert mapped is not None and (mapped.linux, mapped.stack) == (LINUX, STACK)
    assert parse_line("<...>-1 [000] ..... 1.0: tracing_mark_write: stop", STACK) is None
    names = {
        "TCP_FIN_WAIT1": "FIN_WAIT_1", "TCP_FIN_WAIT2": "FIN_WAIT_2",
        "TCP_SYN_RECV": "SYN_RECEIVED", "TCP_NEW_SYN_RECV": "SYN_RECEIVED",
        "TCP_CLOSE": "CLOSED", "TCP_TIME_WAIT": "TIME_WAIT", "TCP_LISTEN": "LISTEN",
    }  # fmt: skip
    assert {kernel: state_name(kernel) for kernel in names} == names


# ---- the watcher in this process -------------------------------------------------------------

CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
if sys.argv[4] == "close":  # like curl: the port is picked in connect(), after SYN_SENT
    s.setsockopt(socket.IPPROTO_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT
s.bind((sys.argv[1], 0))
s.connect((sys.argv[2], int(sys.argv[3])))
print(s.getsockname()[1], flush=True)
s.sendall(b"hello")
if sys.argv[4] == "shutdown":  # half-close, read to the server's FIN, then close
    s.shutdown(socket.SHUT_WR)
    while s.recv(100):
        pass
s.close()  # "close": at once, so Linux holds FIN_WAIT_2 in a timewait socket
"""


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("how", ["close", "shutdown"])
def test_linux_client_active_close(pair: Netns, how: str, family: int) -> None:
    """A Linux client closes first: SYN_SENT .. FIN_WAIT_2 -> TIME_WAIT, and the
    timewait socket's end (killed here with ss -K) is TIME_WAIT -> CLOSED.
    Over IPv6 alike: the tracepoint's saddrv6/daddrv6, sock_diag's AF_INET6."""
    LINUX, STACK = ENDS[family]
    recorder = Recorder()
    lookups: list[tuple[str, int, int]] = []

    async def main() -> tuple[int, int, float, float, int]:
        loop = asyncio.get_running_loop()

        def conn_lookup(linux: str, linux_port: int, stack_port: int) -> int | None:
            lookups.append((linux, linux_port, stack_port))
            return 7 if stack_port == port else None

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # to the client's FIN
            await asyncio.sleep(0.3)  # so the client's FIN_WAIT_2 shows
            writer.close()

        server = await asyncio.start_server(serve, STACK, 0)
        port = server.sockets[0].getsockname()[1]
        watcher = PeerStateWatcher(ENDS[4][1], recorder, conn_lookup, loop, stack_address6=STACK6)
        start = loop.time()
        watcher.start()
        try:
            out = await asyncio.to_thread(run_python, pair, CLIENT, LINUX, STACK, str(port), how)
            client_port = int(out)
            await recorder.wait_for(client_port, "TIME_WAIT")
            dst = f"[{STACK}]" if family == 6 else STACK  # ss(8)'s filter syntax
            killed = await asyncio.to_thread(
                pair.run, "ss", "-K", "-tn", "state", "time-wait", "dst", dst
            )
            assert killed.returncode == 0
            await recorder.wait_for(client_port, "CLOSED")
        finally:
            watcher.stop()
            server.close()
        return port, client_port, start, loop.time(), threading.get_ident()

    port, client_port, start, end, loop_thread = in_netns(pair, main)
    assert recorder.life(client_port) == [*ACTIVE_CLOSE, "CLOSED"]
    events = [e for e in recorder.events if e.remote_port == client_port]
    assert all((e.local, e.local_port, e.remote, e.conn) == (STACK, port, LINUX, 7) for e in events)
    times = [e.time for e in events]
    assert times == sorted(times) and start <= times[0] and times[-1] <= end
    assert recorder.threads == {loop_thread}  # emitted on the loop's thread only
    assert (LINUX, client_port, port) in lookups


SERVER = """
import socket, sys
srv = socket.create_server((sys.argv[1], 0))
print(srv.getsockname()[1], flush=True)
c, _ = srv.accept()
while c.recv(100):  # to the stack's FIN
    pass
c.close()
"""


def test_linux_server_passive_close(pair: Netns) -> None:
    """The stack's side connects to a Linux listener and closes first."""
    recorder = Recorder()

    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        watcher = PeerStateWatcher(STACK, recorder, lambda *_: None, loop)
        watcher.start()
        try:
            server = await asyncio.create_subprocess_exec(
                *pair.command(sys.executable, "-c", SERVER, LINUX), stdout=subprocess.PIPE
            )
            assert server.stdout is not None
            port = int(await server.stdout.readline())
            _, writer = await asyncio.open_connection(LINUX, port, local_addr=(STACK, 0))
            stack_port = writer.get_extra_info("sockname")[1]
            writer.write(b"hi")
            writer.close()
            assert await server.wait() == 0
            await recorder.wait_for(port, "CLOSED")
        finally:
            watcher.stop()
        return port, stack_port

    port, stack_port = in_netns(pair, main)
    assert recorder.life(port) == PASSIVE_CLOSE
    assert {(e.local_port, e.conn) for e in recorder.events if e.remote_port == port} == {
        (stack_port, None)
    }


def test_stop_removes_the_instance_and_is_idempotent(pns: Netns) -> None:
    async def main() -> Path:
        watcher = PeerStateWatcher(STACK, Recorder(), lambda *_: None, asyncio.get_running_loop())
        watcher.start()
        try:
            assert watcher.instance_path.name in tracefs_instances()
            assert (watcher.instance_path / "trace_pipe").exists()
            enabled = watcher.instance_path / "events/sock/inet_sock_set_state/enable"
            assert enabled.read_text().strip() == "1"
            with pytest.raises(PeerStatesError, match="already started"):
                watcher.start()
        finally:
            watcher.stop()
        watcher.stop()
        return watcher.instance_path

    instance = in_netns(pns, main)
    assert instance.name not in tracefs_instances()


def test_bad_tracing_root(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    try:
        for root in (tmp_path / "missing", tmp_path):
            watcher = PeerStateWatcher(STACK, Recorder(), lambda *_: None, loop,
                                       tracing_root=root)  # fmt: skip
            with pytest.raises(PeerStatesError, match=f"no tracefs at {root} "):
                watcher.start()
            watcher.stop()
    finally:
        loop.close()
    assert list(tmp_path.iterdir()) == []


def test_missing_tracepoint_leaves_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / "instances").mkdir()  # a tracefs look-alike without the event
    loop = asyncio.new_event_loop()
    try:
        watcher = PeerStateWatcher(STACK, Recorder(), lambda *_: None, loop,
                                   tracing_root=tmp_path)  # fmt: skip
        with pytest.raises(PeerStatesError) as error:
            watcher.start()
    finally:
        loop.close()
    assert "no tracepoint sock:inet_sock_set_state" in str(error.value)
    assert "\n" not in str(error.value)
    assert list((tmp_path / "instances").iterdir()) == []


NOT_ROOT = """
import asyncio
from ustack.linux.peer_states import PeerStatesError, PeerStateWatcher
watcher = PeerStateWatcher("198.18.0.2", print, lambda *_: None, asyncio.new_event_loop())
try:
    watcher.start()
except PeerStatesError as exc:
    print(exc)
else:
    watcher.stop()
    print("started")
"""


def test_not_root_gives_a_one_line_error() -> None:
    # A private mount namespace without tracefs, then an unprivileged user.
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         "umount /sys/kernel/tracing 2>/dev/null; exec setpriv --reuid=65534 --regid=65534 "
         '--clear-groups --inh-caps=-all "$@"', "-", sys.executable, "-c", NOT_ROOT],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "cannot mount tracefs on /sys/kernel/tracing: Operation not permitted (needs root)\n"
    )


UNMOUNTS = """
import asyncio, os
from ustack.linux.peer_states import PeerStateWatcher
def tracefs():
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if " - tracefs " in line]
assert not tracefs()
watcher = PeerStateWatcher("198.18.0.2", print, lambda *_: None, asyncio.new_event_loop())
watcher.start()
assert tracefs() and watcher.instance_path.is_dir()
watcher.stop()
assert not tracefs(), tracefs()
print("ok")
"""


def test_mounts_tracefs_when_needed_and_unmounts_it(pns: Netns) -> None:
    # `ip netns exec` gives a fresh /sys without tracefs, as for the daemon.
    script = 'umount /sys/kernel/tracing 2>/dev/null; exec "$@"'
    result = pns.run("sh", "-c", script, "-", sys.executable, "-c", UNMOUNTS)
    assert result.stdout == b"ok\n", result.stderr.decode()


# ---- the daemon ----------------------------------------------------------------------------


@pytest.fixture
def peer_daemon(pns: Netns, tmp_path: Path) -> Iterator[UstackDaemon]:
    d = UstackDaemon.start(pns, tmp_path, "--peer-states")
    try:
        yield d
    finally:
        d.stop()
        assert f"ustack-{d.process.pid}" not in tracefs_instances()


def peer_lives(daemon: UstackDaemon, **match: Any) -> dict[int, list[str]]:
    """Per Linux port, the Linux socket's states in the daemon's trace."""
    lives: dict[int, list[str]] = {}
    for event in daemon.trace_events():
        if event["type"] != "peer_state" or any(event[k] != v for k, v in match.items()):
            continue
        life = lives.setdefault(event["remote_port"], [event["old"]])
        life.append(event["new"])
    return lives


def wait_for_peer(daemon: UstackDaemon, last: str, timeout: float = 10, **match: Any) -> None:
    deadline = time.monotonic() + timeout
    while not any(life[-1] == last for life in peer_lives(daemon, **match).values()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no peer {last}: {peer_lives(daemon, **match)}")
        time.sleep(0.05)


def test_daemon_curl_peer_states(pns: Netns, peer_daemon: UstackDaemon) -> None:
    """curl closes first: Linux goes through FIN_WAIT to TIME_WAIT (FIN_WAIT_2
    may be skipped when our FIN comes with the ACK of curl's)."""
    result = pns.run("curl", "-sS", "--max-time", "10", f"http://{STACK_ADDRESS}/", check=True)
    assert b"Hello from ustack" in result.stdout
    # Other namespaces' sockets are filtered out (test_peer_namespace.py), but
    # this daemon serves the module's other tests too: follow curl's port.
    (port,) = {
        e["remote_port"]
        for e in peer_daemon.trace_events()
        if e["type"] == "connection" and e["local_port"] == 80
    }
    wait_for_peer(peer_daemon, "TIME_WAIT", local=STACK_ADDRESS, local_port=80, remote_port=port)
    life = peer_lives(peer_daemon, local_port=80, remote_port=port)[port]
    assert life in (ACTIVE_CLOSE, [s for s in ACTIVE_CLOSE if s != "FIN_WAIT_2"])
    events = [
        e
        for e in peer_daemon.trace_events()
        if e["type"] == "peer_state" and e["remote_port"] == port
    ]
    (conn,) = {e["conn"] for e in events if e["new"] == "ESTABLISHED"}
    ours = [e for e in peer_daemon.trace_events() if e.get("conn") == conn]
    assert ours[0]["type"] == "connection" and ours[0]["remote"] == LINUX_ADDRESS


def test_daemon_stack_connects_to_linux_peer_states(pns: Netns, peer_daemon: UstackDaemon) -> None:
    """The stack connects to nc and closes first: Linux's passive close."""
    result, got = ustack_connect_to_nc(pns, peer_daemon, b"hello\n")
    assert result.returncode == 0, result.stderr
    assert got == b"hello\n"
    wait_for_peer(peer_daemon, "CLOSED", remote_port=9000)
    assert peer_lives(peer_daemon, remote_port=9000) == {9000: PASSIVE_CLOSE}
