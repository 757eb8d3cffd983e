"""Private network namespaces and a real ustack daemon inside one.

Everything a test creates lives in a namespace of its own, named
ustack-t<pid>-<n>, and is removed afterwards, also when the test fails. No test
traffic can leave it: the namespace has no route anywhere but its own TUN.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ustack.linux.control import request

NS_PREFIX = "ustack-t"
STACK_ADDRESS = "198.18.0.2"
LINUX_ADDRESS = "198.18.0.1"
_serial = itertools.count()


def remove_stale_namespaces() -> None:
    """Namespaces of earlier test runs whose process died without cleaning up."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(NS_PREFIX):
            continue
        pid = name[len(NS_PREFIX) :].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


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
            raise AssertionError(f"{' '.join(argv)} exited {result.returncode}: {stderr}")
        return result

    def python(
        self, code: str, *args: str, timeout: float = 30
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a Python snippet inside the namespace (e.g. a raw-socket injector)."""
        return self.run(sys.executable, "-c", code, *args, timeout=timeout, check=True)

    def inject(self, packet: bytes, device: str = "tun0") -> None:
        """Put raw IPv4 bytes on the TUN as if the kernel routed them to the stack:
        an AF_PACKET socket skips every check the kernel's IP layer would make."""
        self.python(
            "import socket, sys\n"
            "s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM)\n"
            "s.sendto(bytes.fromhex(sys.argv[2]), (sys.argv[1], 0x0800))\n",
            device,
            packet.hex(),
        )


@contextmanager
def netns() -> Iterator[Netns]:
    name = f"{NS_PREFIX}{os.getpid()}-{next(_serial)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True
        )
        yield Netns(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


class DaemonFailed(AssertionError):
    pass


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
    ) -> UstackDaemon:
        """Start the daemon (under `wrapper`, e.g. setpriv) and wait until it is ready.
        trace=False: no trace file (long transfers, floods); `program` replaces
        `-m ustack` (a script that runs the daemon with extra services)."""
        control = workdir / "control.sock"
        log = workdir / "ustack.log"
        trace_path = workdir / "trace.jsonl"
        ready_r, ready_w = os.pipe()
        argv = ns.command(
            *wrapper, sys.executable, *program, "serve", "--control", str(control),
            "--ready-fd", str(ready_w), "--log-level", "debug",
            *(("--trace", str(trace_path)) if trace else ()), "--msl", "0.5", *extra,
        )  # fmt: skip
        with open(log, "wb") as log_file:
            process = subprocess.Popen(
                argv, stdout=log_file, stderr=subprocess.STDOUT, pass_fds=[ready_w]
            )
        os.close(ready_w)
        daemon = cls(ns, process, control, log, trace_path)
        try:
            # The daemon writes a line when the device is up; EOF means it died first.
            readable, _, _ = select.select([ready_r], [], [], ready_timeout)
            line = os.read(ready_r, 64) if readable else b""
        finally:
            os.close(ready_r)
        if line != b"ready\n":
            daemon.stop()
            raise DaemonFailed(f"ustack serve did not come up:\n{daemon.log_text()}")
        return daemon

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

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
        return reply["connections"]

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
        return reply["counters"]

    def request(self, command: str, **fields: Any) -> dict[str, Any]:
        return request(self.control, command, **fields)

    def rss_kib(self) -> int:
        """The daemon's resident memory now (VmRSS); `ip netns exec` execs
        the daemon, so the process we started is the daemon itself."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(
            next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
        )

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, then the exit code (SIGKILL if it does not go in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def ping(ns: Netns, count: int = 1, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return ns.run("ping", "-n", "-c", str(count), "-W", "2", "-i", "0.2", *extra, STACK_ADDRESS)
