"""A private network namespace with a real ustack daemon in it: the one lab.

Tests, benchmarks, tools and `ustack lab` all build their world here. A
namespace is named ustack-<kind><pid>-<tag> and removed afterwards, also on
failure; one left by a killed run is removed by the next run's sweep
(remove_stale_namespaces). The daemon (`python -m ustack serve`) gets its
control socket, log and trace in a directory of its own, never a default path
another namespace could share, and is started with --ready-fd: start() returns
once packets flow. No traffic can leave a namespace: it has no route anywhere
but its own TUN (or its own veth pair).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import TypeVar

from ustack.linux.control import request

NS_PREFIX = "ustack-t"  # the tests'; tools pass their own kind (ustack-b, ustack-lab, ...)
STACK_ADDRESS = "198.18.0.2"
LINUX_ADDRESS = "198.18.0.1"
STACK_ADDRESS6 = "2001:2::2"  # the IPv6 benchmarking range (RFC 5180), beside 198.18.0.0/15
LINUX_ADDRESS6 = "2001:2::1"


@dataclass(frozen=True)
class Family:
    """The lab's addresses of one IP family, for tests that run over both."""

    name: str  # "ipv4" / "ipv6": a test id
    stack: str  # the stack's address
    linux: str  # the Linux side's
    ip: str  # the IP counters' layer: "ip" / "ip6"
    icmp: str  # the ICMP counters' layer: "icmp" / "icmp6"
    udp: str  # the UDP counters' layer: "udp" / "udp6"
    mss: int  # the stack's MSS on a 1500-byte link: MTU less the IP and TCP headers
    fragment_data: int  # data a fragment carries on a 1500-byte link (IPv6: 40 + 8 of headers)

    @property
    def host(self) -> str:
        """The stack's address as a URL writes it: 198.18.0.2, [2001:2::2]."""
        return f"[{self.stack}]" if ":" in self.stack else self.stack

    @property
    def socket_family(self) -> str:
        """The socket module's name for it, for Python snippets run in a namespace."""
        return "AF_INET6" if ":" in self.stack else "AF_INET"

    def udp_client(self, *lines: str, timeout: float = 5.0) -> str:
        """A Python snippet for Netns.python: a UDP socket `s` of this family
        with a timeout, then `lines`."""
        return "\n".join(
            (
                "import socket",
                f"s = socket.socket(socket.{self.socket_family}, socket.SOCK_DGRAM)",
                f"s.settimeout({timeout})",
                *lines,
                "",
            )
        )

    def url(self, path: str = "/", port: int | None = None) -> str:
        return f"http://{self.host}{'' if port is None else f':{port}'}{path}"


IPV4 = Family("ipv4", STACK_ADDRESS, LINUX_ADDRESS, "ip", "icmp", "udp", 1460, 1480)
IPV6 = Family("ipv6", STACK_ADDRESS6, LINUX_ADDRESS6, "ip6", "icmp6", "udp6", 1440, 1448)
FAMILIES = (IPV4, IPV6)
_OURS = re.compile(r"ustack-[a-z]+(\d+)-\S+")
_serial = itertools.count()


class LabError(RuntimeError):
    """The lab could not be built (a command failed, the daemon did not come up)."""


class CommandFailed(LabError, AssertionError):
    """A command in the namespace exited non-zero (an AssertionError for the tests)."""


class DaemonFailed(LabError, AssertionError):
    """`ustack serve` did not come up."""


def _ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(["ip", *argv], capture_output=True, timeout=30)
    if check and result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()
        raise LabError(f"ip {' '.join(argv)}: {stderr}")
    return result


def _namespace_names() -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listing.splitlines() if line.split()]


def remove_stale_namespaces() -> None:
    """Namespaces of earlier runs (ustack-<kind><pid>-...) whose process is gone."""
    for name in _namespace_names():
        match = _OURS.fullmatch(name)
        if match and not Path(f"/proc/{match[1]}").exists():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


# A child that gets SIGTERM when the process that started it dies, however
# it dies, so that a killed run leaves no daemon behind, and without Python
# in the child: util-linux's setpriv sets PR_SET_PDEATHSIG and execs the
# command (prefix argv with it). A preexec_fn would run the parent's at-fork
# hooks (logging's lock release), where a signal's exception (Ctrl-C) is only
# printed, "Exception ignored", and the run it should have stopped went on (a
# lesson ended 0 after SIGINT).
DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "TERM", "--")


@dataclass
class Netns:
    name: str

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, *argv: str, timeout: float = 30, check: bool = False, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(
            self.command(*argv), capture_output=True, timeout=timeout, input=input
        )
        if check and result.returncode != 0:
            stderr = result.stderr.decode(errors="replace")
            raise CommandFailed(f"{' '.join(argv)} exited {result.returncode}: {stderr}")
        return result

    def python(
        self, code: str, *args: str, timeout: float = 30
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a Python snippet inside the namespace (e.g. a raw-socket injector)."""
        return self.run(sys.executable, "-c", code, *args, timeout=timeout, check=True)

    def inject(self, packet: bytes, device: str = "tun0") -> None:
        """Put raw IPv4 or IPv6 bytes on the TUN as if the kernel routed them to
        the stack: an AF_PACKET socket skips every check the kernel's IP layer
        would make."""
        ethertype = 0x86DD if packet[0] >> 4 == 6 else 0x0800
        self.python(
            "import socket, sys\n"
            "s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM)\n"
            "s.sendto(bytes.fromhex(sys.argv[2]), (sys.argv[1], int(sys.argv[3])))\n",
            device,
            packet.hex(),
            str(ethertype),
        )

    def pids(self) -> list[int]:
        result = _ip("netns", "pids", self.name, check=False)
        return [int(word) for word in result.stdout.split()]

    def end_processes(self, grace: float = 2.0) -> None:
        """End what was started inside and is still running (by PID: `ip netns
        pids` lists only this namespace's): SIGTERM, then SIGKILL."""
        for signum in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while pids and self.pids() and time.monotonic() < deadline:
                time.sleep(0.05)

    def remove(self) -> None:
        """End its processes and delete it; a second call does nothing."""
        if Path(f"/run/netns/{self.name}").exists():
            self.end_processes()
            _ip("netns", "del", self.name, check=False)


def our_namespaces(prefix: str | None = NS_PREFIX, pid: int | None = None) -> list[Netns]:
    """The namespaces netns(prefix) made in this process (or process `pid`)
    that exist now; with `prefix` None, those of every kind."""
    pid = os.getpid() if pid is None else pid
    if prefix is None:
        names = [n for n in _namespace_names() if (m := _OURS.fullmatch(n)) and m[1] == str(pid)]
    else:
        names = [n for n in _namespace_names() if n.startswith(f"{prefix}{pid}-")]
    return [Netns(name) for name in names]


@contextmanager
def netns(prefix: str = NS_PREFIX, tag: str | None = None) -> Iterator[Netns]:
    """A fresh namespace with lo up, removed on exit (with what runs in it)."""
    tag = tag if tag is not None else str(next(_serial))
    name = f"{prefix}{os.getpid()}-{tag}"
    ns = Netns(name)
    try:
        # Inside the try: a Ctrl-C while `ip netns add` runs (the name already
        # exists then) must not leave the namespace behind. The name is ours
        # alone (our PID), so removing it cannot remove another run's.
        _ip("netns", "add", name)
        _ip("-n", name, "link", "set", "lo", "up")
        yield ns
    finally:
        ns.remove()


def veth_pair(a: Netns, b: Netns, devices: tuple[str, str], addresses: tuple[str, str]) -> None:
    """Two namespaces joined by a veth pair (addresses of either family with
    their /prefix), made inside them: nothing appears in the root namespace,
    not even briefly."""
    _ip("-n", a.name, "link", "add", devices[0], "type", "veth",
        "peer", "name", devices[1], "netns", b.name)  # fmt: skip
    for ns, device, address in ((a, devices[0], addresses[0]), (b, devices[1], addresses[1])):
        # IPv6: no duplicate address detection, usable at once (not tentative).
        nodad = ("nodad",) if ":" in address else ()
        _ip("-n", ns.name, "addr", "add", address, "dev", device, *nodad)
        _ip("-n", ns.name, "link", "set", device, "up")


def start_until_ready(
    argv_with_fd: Callable[[int], Sequence[str]],
    log: Path,
    *,
    timeout: float = 30,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a server that writes 'ready' to the fd it is given once it serves;
    its output goes to `log`. It runs in a session of its own (a terminal's
    Ctrl-C is for the foreground command, not for it) and gets SIGTERM if we
    die. DaemonFailed (the server stopped) if it is not ready in time."""
    ready_r, ready_w = os.pipe()
    try:
        with open(log, "wb") as log_file:
            process = subprocess.Popen(
                [*DIE_WITH_PARENT, *argv_with_fd(ready_w)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                pass_fds=[ready_w],
                env=None if env is None else dict(env),
                cwd=cwd,
                start_new_session=True,
            )
    finally:
        os.close(ready_w)
    try:
        # The server writes a line when it is up; EOF means it died first.
        readable, _, _ = select.select([ready_r], [], [], timeout)
        line = os.read(ready_r, 64) if readable else b""
    finally:
        os.close(ready_r)
    if line != b"ready\n":
        stop_process(process)
        raise DaemonFailed(
            f"{' '.join(argv_with_fd(ready_w)[-8:])} did not come up:\n"
            + log.read_text(errors="replace")
        )
    return process


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10) -> int:
    """SIGTERM by PID, then the exit code (SIGKILL if it does not go in time)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass(frozen=True)
class ProcessCosts:
    """What a process has cost so far (the benches' and tests' CPU and
    page-fault figures): its main thread's time on a CPU (schedstat, in ns:
    much steadier than rates on a shared machine), its time in the kernel
    (stat's stime, in seconds, clock-tick coarse) and its minor page faults
    (stat's minflt)."""

    cpu_ns: int
    system_s: float
    minor_faults: int


def process_costs(pid: int) -> ProcessCosts:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # proc(5)
    on_cpu = int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    return ProcessCosts(on_cpu, int(stat[12]) / os.sysconf("SC_CLK_TCK"), int(stat[7]))


@dataclass
class UstackDaemon:
    """`ustack serve` running inside a namespace."""

    ns: Netns
    process: subprocess.Popen[bytes]
    control: Path
    log: Path
    trace: Path

    @classmethod
    def start(
        cls,
        ns: Netns,
        workdir: Path,
        *extra: str,
        wrapper: Sequence[str] = (),
        ready_timeout: float = 30,
        trace: bool = True,
        program: Sequence[str] = ("-m", "ustack"),
        log_level: str = "debug",
        msl: str | None = "0.5",
        control: bool = True,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> UstackDaemon:
        """Start the daemon (under `wrapper`, e.g. setpriv) and wait until it is
        ready; its control socket, log and trace are in `workdir`. trace=False:
        no trace file (long transfers, floods); `program` replaces `-m ustack`
        (a script that runs the daemon with extra services); msl=None: the
        daemon's own MSL; control=False: no control socket."""
        control_path = workdir / "control.sock"
        log = workdir / "ustack.log"
        trace_path = workdir / "trace.jsonl"

        def argv(ready_fd: int) -> list[str]:
            return ns.command(
                *wrapper, sys.executable, *program, "serve",
                *(("--control", str(control_path)) if control else ("--no-control",)),
                "--ready-fd", str(ready_fd), "--log-level", log_level,
                *(("--trace", str(trace_path)) if trace else ()),
                *(("--msl", msl) if msl is not None else ()), *extra,
            )  # fmt: skip

        process = start_until_ready(argv, log, timeout=ready_timeout, env=env, cwd=cwd)
        return cls(ns, process, control_path, log, trace_path)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def trace_events(self) -> list[dict[str, Any]]:
        with open(self.trace, encoding="utf-8") as stream:
            return [json.loads(line) for line in stream if line.strip()]

    def lives(self, **match: Any) -> list[list[str]]:
        """The state sequences of the connections whose "connection" trace
        event matches (e.g. local_port=80), in the order they were made."""
        events = self.trace_events()
        ids = [
            e["conn"]
            for e in events
            if e["type"] == "connection" and all(e[k] == v for k, v in match.items())
        ]
        lives = []
        for conn in ids:
            changes = [e for e in events if e["type"] == "state" and e["conn"] == conn]
            lives.append([changes[0]["old"], *(e["new"] for e in changes)] if changes else [])
        return lives

    def connections(self) -> list[dict[str, Any]]:
        reply = request(self.control, "connections")
        assert reply["ok"], reply
        connections: list[dict[str, Any]] = reply["connections"]
        return connections

    def wait_until_no_connections(self, timeout: float = 10.0) -> None:
        """TIME_WAIT and LAST_ACK end on the daemon's own timers: poll its table."""
        deadline = time.monotonic() + timeout
        while self.connections():
            if time.monotonic() > deadline:
                raise AssertionError(f"connections left: {self.connections()}")
            time.sleep(0.05)

    def stats(self) -> dict[str, int]:
        reply = request(self.control, "stats")
        assert reply["ok"], reply
        counters: dict[str, int] = reply["counters"]
        return counters

    def request(self, command: str, **fields: Any) -> dict[str, Any]:
        return request(self.control, command, **fields)

    def wait_for_ipv6(self, port: int = 7, timeout: float = 10) -> None:
        """Return once the stack answers a Linux client over IPv6: one TCP
        connect to [STACK_ADDRESS6]:port, accepted or refused (a RST is an
        answer too). The kernel's own SYN retransmissions cover a first
        packet lost: no polling. CommandFailed if no answer comes in time."""
        self.ns.python(
            "import socket, sys\n"
            "try:\n"
            "    socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3]))\n"
            "except ConnectionRefusedError:\n"
            "    pass\n",
            STACK_ADDRESS6,
            str(port),
            str(timeout),
            timeout=timeout + 5,
        )

    def rss_kib(self) -> int:
        """The daemon's resident memory now (VmRSS); `ip netns exec` execs
        the daemon, so the process we started is the daemon itself."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(
            next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
        )

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, then the exit code (SIGKILL if it does not go in time)."""
        return stop_process(self.process, timeout)

    def __enter__(self) -> UstackDaemon:
        return self

    def __exit__(self, *_exc: object) -> None:
        """`with UstackDaemon.start(...) as daemon:` stops it after the block,
        also on failure; its exit code is then daemon.process.returncode."""
        self.stop()


def ping(
    ns: Netns, count: int = 1, *extra: str, address: str = STACK_ADDRESS
) -> subprocess.CompletedProcess[bytes]:
    """ping(8) the stack; `address=STACK_ADDRESS6` pings it over IPv6 (ping
    picks the family from the address)."""
    return ns.run("ping", "-n", "-c", str(count), "-W", "2", "-i", "0.2", *extra, address)


# ---- stop signals: a run in a thread, the signal only noted -----------------------------

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_T = TypeVar("_T")


class Stopper:
    """SIGINT, SIGTERM and SIGHUP during a run in namespaces `prefix`<pid>-N
    (`ustack lab`, `ustack lesson`; `prefix` None: of every kind, stoppable).
    The run goes in a thread of its own; the
    main thread, where Python runs signal handlers, only notes a signal, and
    then, outside the handler: passes it on to `child` while that runs (the
    lab's command), or else stops the run, ending what runs in its namespaces.
    Every wait of a run is on one of those processes (a command, a server, the
    daemon), so it fails at once and the run unwinds through its own clean-up,
    in its thread, which no signal interrupts.

    (A handler that raised before could not be made safe: Python raises
    between any two bytecodes, in a finalizer, which can only print it
    ("Exception ignored in: Popen.__del__", a traceback; the lesson played on,
    CI saw it), or just after subprocess took a Popen's waitpid lock, which
    then stayed taken, and the clean-up's wait() hung for ever.)"""

    def __init__(self, prefix: str | None) -> None:
        self.prefix = prefix
        # Held by the run while it starts a `child`, so that a stop is decided
        # either before (and the run sees `stopped`) or after (and it goes to the child).
        self.lock = threading.Lock()
        self.child: subprocess.Popen[bytes] | None = None
        self.stopped = 0  # the signal that stopped the run; 0: none
        self._noted: list[int] = []

    def run(self, work: Callable[[], _T]) -> _T | None:
        """work() in a thread: what it returned (or raised, raised here), or
        None once a signal stopped it (`stopped` says which)."""
        outcome: list[tuple[bool, Any]] = []

        def in_thread() -> None:
            try:
                outcome.append((True, work()))
            except BaseException as exc:  # the caller's to raise
                outcome.append((False, exc))

        def note(signum: int, _frame: object) -> None:
            self._noted.append(signum)

        # A signal ignored from the start stays ignored: `nohup ustack lab ...`
        # and `nohup python -m tools.soak` outlive their terminal (SIGHUP).
        caught = [s for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]
        previous = {s: signal.signal(s, note) for s in caught}
        try:
            thread = threading.Thread(target=in_thread, name=self.prefix or "ustack")
            thread.start()
            while thread.is_alive():
                thread.join(0.05)
                self._act()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if self.stopped:
            return None
        returned, value = outcome[0]
        if not returned:
            raise value
        return value  # type: ignore[no-any-return]

    def _act(self) -> None:
        with self.lock:
            while self._noted and not self.stopped:
                signum = self._noted.pop(0)
                child = self.child
                if child is not None and child.poll() is None:
                    child.send_signal(signum)
                else:
                    self.stopped = signum
            if self.stopped:  # (again each time: the run may have started something since)
                for ns in our_namespaces(self.prefix):
                    ns.end_processes()


def stoppable(main: Callable[[], int | None], name: str) -> int:
    """A script's main() (bench/, tools/) stopped as `ustack lab` stops: under
    a Stopper of this process's namespaces of every kind. Its exit status, or
    after stop signal N one line, `name: stopped by SIGINT`, and 128 + N."""
    stopper = Stopper(None)
    status = stopper.run(main)
    if stopper.stopped:
        print(f"{name}: stopped by {signal.Signals(stopper.stopped).name}", file=sys.stderr)
        return 128 + stopper.stopped
    return status or 0
