"""The control socket and the client commands against the real daemon in a
namespace: bad requests, a closed stdout, a path that is not a socket, a long
connection table served without stalling the stack, per-namespace defaults,
and the daemon run without root."""

from __future__ import annotations

import grp
import json
import os
import pwd
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from ustack.linux.control import request
from ustack.linux.lab import STACK_ADDRESS
from ustack.linux.lab import STACK_ADDRESS6
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon
from ustack.linux.lab import netns
from ustack.linux.lab import ping
from ustack.linux.lab import start_until_ready
from ustack.linux.lab import stop_process

_DIGITS_5000 = b"9" * 5000
BAD_REQUESTS = [
    b"[" * 60000,  # under the 64 KiB line limit, deeper than the JSON decoder's recursion
    b'{"command": "connect", "host": "198.18.0.1", "port": ' + _DIGITS_5000 + b"}",
    b'{"command": "connect", "host": "198.18.0.1", "port": Infinity}',
    b'{"command": "connect", "host": "198.18.0.1", "port": -Infinity}',
    b'{"command": "connect", "host": "198.18.0.1", "port": NaN}',
    b'{"command": "connect", "host": "198.18.0.1", "port": 1e400}',
    b'{"command": "connect", "host": "198.18.0.1", "port": 80.5}',
    b'{"command": "connect", "host": "198.18.0.1", "port": true}',
    b'{"command": "connect", "host": "198.18.0.1", "port": "80"}',
    b'{"command": "connect", "host": 3322085377, "port": 80}',
    b'{"command": "connect", "host": ["198.18.0.1"], "port": 80}',
    b'{"command": "connect", "host": "::ffff:198.18.0.1", "port": 80}',  # RFC 4291 2.5.5.2
    b'{"command": "connect", "host": "[2001:2::1]", "port": 80}',
    b'{"command": "connect"}',
    b'{"command": "config", "msl": 1e400}',
    b'{"command": "config", "msl": NaN}',
    b'{"command": "config", "fin_timeout": -Infinity}',
    b'{"command": "config", "msl": ' + _DIGITS_5000 + b"}",
    b'{"command": "config", "time_wait_rst": [[[]]]}',
    b'{"command": "fault", "do": "clear", "id": 1e400}',
    b'{"command": "fault", "do": "add", "rule": {"drop": 1}}',
    b'{"command": "fault", "do": ' + b"[" * 500 + b"]" * 500 + b"}",
    b'{"command": 5}',
    b'{"command": "stats"',
    b'{"command": "\\ud800"}',
    b'{"command": "nope"}',
]


def test_every_bad_request_gets_an_error_reply(ns: Netns, daemon: UstackDaemon) -> None:
    """Each on a connection of its own ("connect" takes its connection over)."""
    for line in BAD_REQUESTS:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(daemon.control))
            sock.sendall(line + b"\n")
            reply = sock.makefile("rb").readline()
        assert reply, f"no reply to {line[:70]!r}"
        assert json.loads(reply)["ok"] is False, (line[:70], reply)
    assert ping(ns).returncode == 0  # the daemon carries on
    assert daemon.stats()["icmp.echo"] == 1
    assert "Traceback" not in daemon.log_text()


def _write_into_closed_pipe(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """`ustack ARGV | head -0`, without the race: the reader is gone before we write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "ustack", *argv],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=30,
        )  # fmt: skip
    finally:
        os.close(write_end)


def test_a_reader_that_went_away_ends_every_command_quietly(
    ns: Netns, daemon: UstackDaemon
) -> None:
    """As `ls | head` does: no BrokenPipeError traceback, exit 128 + SIGPIPE."""
    assert ping(ns).returncode == 0
    assert daemon.request("fault", do="add", rule="drop:port=5555")["ok"]
    control = ("--control", str(daemon.control))
    for argv in (["ss"], ["stats"], ["stats", "--json"], ["config"], ["fault", "list"]):
        result = _write_into_closed_pipe([*argv, *control])
        assert (result.returncode, result.stderr) == (141, ""), argv


def test_a_control_path_that_is_not_a_socket_is_left_alone(ns: Netns, tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("data\n")
    argv = ns.command(sys.executable, "-m", "ustack", "serve", "--log-level", "error",
                      "--control", str(precious))  # fmt: skip
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"ustack: error: control socket {precious} exists and is not a socket: not replacing it\n"
    )
    assert precious.read_text() == "data\n"
    assert ns.run("ip", "link", "show", "tun0").returncode != 0  # the device went again


# ---- a long connection table ------------------------------------------------------------

_HOLD_CONNECTIONS = """\
import resource, socket, sys
count = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (count + 64, count + 64))
held = [socket.create_connection((sys.argv[2], 9), timeout=10) for _ in range(count)]
print("open", flush=True)
sys.stdin.read()
"""


# Asks the daemon for "stats" over and over on one connection until its stdin
# closes, then prints each (sent at, round trip) (CLOCK_MONOTONIC, the same in
# every process): a round trip that took long is a time the loop did nothing else.
# A process of its own, so that our own work (decoding the big reply) cannot
# hold it up.
_LAG_PROBE = """\
import json, select, socket, sys, time
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
replies = sock.makefile("rb")
samples = []
while not select.select([0], [], [], 0)[0]:
    sent = time.monotonic()
    sock.sendall(b'{"command": "stats"}\\n')
    replies.readline()
    samples.append((sent, time.monotonic() - sent))
    if len(samples) == 1:
        print("probing", flush=True)
print(json.dumps(samples))
"""


def _longest_round_trip(samples: list[list[float]], start: float, end: float) -> float:
    return max(rtt for sent, rtt in samples if start <= sent + rtt and sent <= end)


def test_a_long_connection_table_comes_without_stalling_the_loop(ns: Netns, tmp_path: Path) -> None:
    """10,000 connections held by one Linux client: the "connections" answer
    holds them all, and while it is served the daemon still answers within a
    generous bound (one reply of 10,000 rows held its loop some 150 ms)."""
    count = 10_000
    with UstackDaemon.start(ns, tmp_path, "--services", "discard", trace=False) as daemon:
        client = subprocess.Popen(
            ns.command(sys.executable, "-c", _HOLD_CONNECTIONS, str(count), STACK_ADDRESS),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert client.stdout is not None and client.stdout.readline() == b"open\n"
            probe = subprocess.Popen(
                [sys.executable, "-c", _LAG_PROBE, str(daemon.control)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            )  # fmt: skip
            assert probe.stdout is not None and probe.stdout.readline() == b"probing\n"
            start = time.monotonic()
            reply = request(daemon.control, "connections", timeout=60)
            end = time.monotonic()
            samples = json.loads(probe.communicate(b"", timeout=30)[0])
        finally:
            client.kill()
            client.wait()
        rows = reply["connections"]
        assert reply["ok"] and len(rows) == count
        assert {row["state"] for row in rows} == {"ESTABLISHED"}
        assert len({row["remote"] for row in rows}) == count
        assert reply["listening"] == [f"{STACK_ADDRESS}:9", f"[{STACK_ADDRESS6}]:9"]
        longest = _longest_round_trip(samples, start, end)
        print(f"connections: {count} rows in {end - start:.3f} s, longest stats {longest:.4f} s")
        assert longest < 0.1, f"the loop stalled {longest * 1000:.0f} ms"
    assert "Traceback" not in daemon.log_text()


# ---- the default control socket: one per network namespace ---------------------------------


def _environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("USTACK_CONTROL", "XDG_RUNTIME_DIR")}
    return {**env, **extra}


@contextmanager
def _serve_on_defaults(
    ns: Netns,
    workdir: Path,
    *extra: str,
    wrapper: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Iterator[Path]:
    """`ustack serve` with no --control (the default socket); yields its log."""
    workdir.mkdir(exist_ok=True)
    log = workdir / "ustack.log"

    def argv(ready_fd: int) -> list[str]:
        return ns.command(
            *wrapper, sys.executable, "-m", "ustack", "serve",
            "--ready-fd", str(ready_fd), "--log-level", "debug", *extra,
        )  # fmt: skip

    process = start_until_ready(argv, log, env=env or _environment())
    try:
        yield log
    finally:
        assert stop_process(process) == 0, log.read_text()


def _ustack(
    ns: Netns, *argv: str, wrapper: Sequence[str] = (), env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A client command run inside `ns`, on its defaults."""
    return subprocess.run(
        ns.command(*wrapper, sys.executable, "-m", "ustack", *argv),
        capture_output=True, text=True, timeout=30, env=env or _environment(),
    )  # fmt: skip


def test_daemons_on_defaults_in_two_namespaces_each_answer_their_own(tmp_path: Path) -> None:
    with netns(tag="a") as a, netns(tag="b") as b:
        with (
            _serve_on_defaults(a, tmp_path / "a", "--services", "echo"),
            _serve_on_defaults(b, tmp_path / "b", "--services", "discard"),
        ):
            inode = os.stat(f"/run/netns/{a.name}").st_ino
            socket_a = Path(f"/run/ustack/net-{inode}/tun0.sock")
            assert (socket_a.stat().st_mode & 0o777) == 0o600
            assert ping(a, 2).returncode == 0
            ss_a, ss_b = _ustack(a, "ss"), _ustack(b, "ss")
            stats_a, stats_b = _ustack(a, "stats"), _ustack(b, "stats")
        assert not socket_a.parent.exists()  # the daemon took its socket and directory away
    assert ss_a.returncode == ss_b.returncode == 0, ss_a.stderr + ss_b.stderr
    assert f"{STACK_ADDRESS}:7 " in ss_a.stdout and f"{STACK_ADDRESS}:9 " not in ss_a.stdout
    assert f"{STACK_ADDRESS}:9 " in ss_b.stdout and f"{STACK_ADDRESS}:7 " not in ss_b.stdout
    echoes = [dict(line.split() for line in s.stdout.splitlines()).get("icmp.echo")
              for s in (stats_a, stats_b)]  # fmt: skip
    assert echoes == ["2", None]


# ---- without root ---------------------------------------------------------------------------

_USER, _GROUP = "nobody", "nogroup"
_AS_USER = ("setpriv", f"--reuid={_USER}", f"--regid={_GROUP}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all")  # fmt: skip


def _opened_to_user_script() -> str:
    """Shell commands for a private mount namespace in which the user can open
    /dev/net/tun (0666, as most distributions ship it; this machine's is 0600)
    and reach the Python interpreter (here under /root, which is 0700)."""
    lines = ["set -e", "mount -t tmpfs -o mode=0755 none /dev/net",
             "mknod -m 0666 /dev/net/tun c 10 200"]  # fmt: skip
    interpreter = Path(os.path.realpath(sys.executable))
    for closed in reversed(interpreter.parents):
        if closed != Path("/") and not os.stat(closed).st_mode & 0o001:
            inside = interpreter.relative_to(closed).parts[0]
            lines += [
                f"hold=$(mktemp -d) && mount --bind {closed}/{inside} $hold",
                f"mount -t tmpfs -o mode=0755 none {closed}",
                f"mkdir {closed}/{inside} && mount --bind $hold {closed}/{inside}",
            ]
            break
    return "\n".join(lines) + '\nexec "$@"'


def test_the_readme_recipe_without_root(ns: Netns, tmp_path: Path) -> None:
    """A persistent device owned by the user, set up by root; then the daemon
    as that user with no capability at all: curl gets the page, and `ustack ss`
    as the same user finds the daemon on the default control socket (under
    $XDG_RUNTIME_DIR, as /run/ustack is root's)."""
    ns.run("ip", "tuntap", "add", "dev", "tun0", "mode", "tun", "user", _USER, check=True)
    ns.run("ip", "addr", "add", "198.18.0.1/24", "dev", "tun0", check=True)
    ns.run("ip", "link", "set", "tun0", "up", check=True)
    runtime_dir = Path(tempfile.mkdtemp(prefix="ustack-xdg-"))  # /tmp: the user may enter it
    try:
        os.chown(runtime_dir, *_ids())
        env = _environment(XDG_RUNTIME_DIR=str(runtime_dir))
        private = ("unshare", "--mount", "--propagation", "private",
                   "sh", "-c", _opened_to_user_script(), "sh")  # fmt: skip
        wrapper = (*private, *_AS_USER)
        with _serve_on_defaults(ns, tmp_path, "--services", "http", wrapper=wrapper, env=env):
            page = ns.run("curl", "-sS", "--max-time", "10", f"http://{STACK_ADDRESS}/")
            ss = _ustack(ns, "ss", wrapper=wrapper, env=env)
            inode = os.stat(f"/run/netns/{ns.name}").st_ino
            control = runtime_dir / "ustack" / f"net-{inode}" / "tun0.sock"
            assert control.is_socket() and control.stat().st_uid == _ids()[0]
        assert b"Hello from ustack" in page.stdout, page.stderr
        assert ss.returncode == 0, ss.stderr
        listening = [line.split()[3] for line in ss.stdout.splitlines() if "LISTEN" in line]
        # A device made by root without IPv6: the daemon serves IPv4 only.
        assert listening == [f"{STACK_ADDRESS}:80"], ss.stdout
        without = _ustack(ns, "ss", wrapper=_AS_USER, env=_environment())
        assert (without.returncode, without.stderr) == (
            1,
            "ustack: error: no default control socket: not root and XDG_RUNTIME_DIR is "
            "not set (give --control PATH)\n",
        )
    finally:
        subprocess.run(["rm", "-rf", str(runtime_dir)], check=False)


def _ids() -> tuple[int, int]:
    return pwd.getpwnam(_USER).pw_uid, grp.getgrnam(_GROUP).gr_gid


def test_connect_timeout_is_one_clear_line(ns: Netns, tmp_path: Path) -> None:
    """No host answers at 198.18.0.3 (the namespace does not forward): ETIMEDOUT,
    after 1 + 2 s with one SYN retransmission (RTO doubling)."""
    with UstackDaemon.start(ns, tmp_path, "--syn-retries", "1") as daemon:
        result = subprocess.run(
            [sys.executable, "-m", "ustack", "connect", "--control", str(daemon.control),
             "198.18.0.3", "80"],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert (result.returncode, result.stderr) == (
        1,
        "ustack: error: connect to 198.18.0.3:80: ETIMEDOUT "
        "(no answer to the SYN and its 1 retransmissions)\n",
    )
