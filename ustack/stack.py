"""The stack (IP + TCP wired together, no I/O of its own) and its asyncio driver."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ustack.control import ControlServer
from ustack.headers import PROTO_TCP
from ustack.ip import IPv4Layer
from ustack.link import LinkConfig, TunLink
from ustack.tcp.connection import TcpConfig
from ustack.tcp.demux import TcpDemux
from ustack.trace import Tracer

log = logging.getLogger("ustack")

# Packets read per wake-up of the loop before other callbacks get a turn.
READ_BATCH = 256
DEFAULT_ADDRESS = ipaddress.IPv4Address("198.18.0.2")


class Stack:
    """IPv4 + ICMP + TCP for one address. Packets go in through `receive`
    and out through the `transmit` callable; the caller owns all I/O."""

    def __init__(
        self,
        address: int,
        transmit: Callable[[bytes], bool],
        mtu: int = 1500,
        tcp_config: TcpConfig | None = None,
        trace: Tracer | None = None,
        isn: Callable[[int, int, int, int, float], int] | None = None,
    ) -> None:
        self.counters: Counter[str] = Counter()
        self.ip = IPv4Layer(address, transmit, self.counters, mtu)
        config = tcp_config or TcpConfig(mss=mtu - 40)
        self.tcp = TcpDemux(address, self._send_tcp, self.counters, config, trace, isn)
        self.ip.tcp_input = self.tcp.receive

    def receive(self, packet: bytes, now: float = 0.0) -> None:
        self.ip.receive(packet, now)

    def _send_tcp(self, dst: int, segment: bytes) -> None:
        self.ip.send(dst, PROTO_TCP, segment)


@dataclass(frozen=True)
class ServeConfig:
    link: LinkConfig = field(default_factory=LinkConfig)
    address: ipaddress.IPv4Address = DEFAULT_ADDRESS
    control_path: Path | None = None
    ready_fd: int | None = None


class Daemon:
    """Runs a Stack on a TUN device until SIGINT/SIGTERM or a link failure."""

    def __init__(self, config: ServeConfig, link: TunLink) -> None:
        self.config = config
        self.link = link
        self.stack: Stack | None = None
        self._stopped = asyncio.Event()
        self._exit_code = 0

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        link = self.link
        control: ControlServer | None = None
        try:
            self.stack = Stack(int(self.config.address), link.write, link.mtu)
            if self.config.control_path is not None:
                control = await ControlServer.start(
                    self.config.control_path, {"stats": self._stats}
                )
            loop.add_reader(link.fd, self._on_readable)
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, self._stop, signal.Signals(signum).name)
            log.info("stack at %s on %s, ready", self.config.address, link.name)
            _notify_ready(self.config.ready_fd)
            await self._stopped.wait()
        finally:
            loop.remove_reader(link.fd)
            if control is not None:
                await control.close()
            link.close()
            if self.stack is not None:
                log.info("counters: %s", _format_counters(self.stack.counters))
        return self._exit_code

    def _on_readable(self) -> None:
        assert self.stack is not None
        read, receive, size = self.link.read, self.stack.receive, self.link.mtu
        try:
            for _ in range(READ_BATCH):
                packet = read(size)
                if packet is None:
                    return
                receive(packet)
        except OSError as exc:
            # The device went away under us (deleted, or the netns is gone).
            log.error("reading %s failed: %s", self.link.name, exc.strerror or exc)
            self._exit_code = 1
            self._stopped.set()

    def _stop(self, why: str) -> None:
        log.info("%s: shutting down", why)
        self._stopped.set()

    def _stats(self, _request: dict[str, object]) -> dict[str, object]:
        assert self.stack is not None
        return {"counters": dict(sorted(self.stack.counters.items()))}


def _notify_ready(ready_fd: int | None) -> None:
    """Tell whoever started us that the device is up and packets flow:
    a line on --ready-fd, and sd_notify(READY=1) under systemd Type=notify."""
    if ready_fd is not None:
        try:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
        except OSError as exc:
            log.warning("cannot write to --ready-fd %d: %s", ready_fd, exc.strerror)
    notify_socket = os.environ.get("NOTIFY_SOCKET")
    if notify_socket:
        address = "\0" + notify_socket[1:] if notify_socket.startswith("@") else notify_socket
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(b"READY=1", address)
            except OSError as exc:
                log.warning("sd_notify failed: %s", exc.strerror)


def _format_counters(counters: Counter[str]) -> str:
    return ", ".join(f"{name}={value}" for name, value in sorted(counters.items())) or "none"


def serve(config: ServeConfig) -> int:
    """Run the daemon in the foreground; the exit code."""
    # Netlink set-up is synchronous (pyroute2 runs its own loop): before ours starts.
    # A LinkError goes to the caller, which reports it on one line.
    link = TunLink.open(config.link)
    return asyncio.run(Daemon(config, link).run())
