"""The two setups of bench/run.py (and bench/connection_count.py, bench/profile_daemon.py):
ustack's daemon on its TUN, and the kernel reference server over a veth pair,
each in network namespaces made here and removed at the end; the processes and
namespaces a run created, and the small helpers every bench script shares."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from contextlib import ExitStack
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import TypeVar
from typing import cast

from ustack.cli import UsageError
from ustack.cli import build_parser
from ustack.cli import serve_config
from ustack.linux.lab import DIE_WITH_PARENT
from ustack.linux.lab import STACK_ADDRESS6
from ustack.linux.lab import LabError
from ustack.linux.lab import Netns
from ustack.linux.lab import Stopper
from ustack.linux.lab import UstackDaemon
from ustack.linux.lab import netns
from ustack.linux.lab import remove_stale_namespaces
from ustack.linux.lab import start_until_ready
from ustack.linux.lab import stop_process
from ustack.linux.lab import veth_pair

BENCH = Path(__file__).resolve().parent
NS_PREFIX = "ustack-b"
USTACK_LINUX, USTACK_STACK = "198.18.0.1", "198.18.0.2"
KERNEL_CLIENT, KERNEL_SERVER = "198.19.0.1", "198.19.0.2"
KERNEL_CLIENT6, KERNEL_SERVER6 = "2001:2:1::1", "2001:2:1::2"  # RFC 5180's range, as the lab's
LINUX_CC = "cubic"  # ustack's default congestion control; Linux's everywhere here
ECHO, DISCARD = 7, 9
BIG_MTU = 65535
MB = 1_000_000  # MB/s here are 10^6 bytes per second, as curl reports them
TOOLS = ("ip", "curl", "ab", "ss")
DAYTIME = 13  # RFC 867: one line, then the server closes first (its TIME_WAIT)


class BenchError(Exception):
    """A failure worth one clear line (and the run's cleanup), not a traceback."""


class Interrupted(BenchError):
    """A stop signal ended the run (after its clean-up): exit 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


# ---- processes and namespaces, and their cleanup ------------------------------------------


@dataclass
class Resources:
    """Everything this run created (namespaces and servers, from ustack.linux.lab),
    removed exactly once, servers before their namespaces."""

    lab: ExitStack = field(default_factory=ExitStack)
    namespaces: dict[str, Netns] = field(default_factory=dict)
    cleaned: bool = False

    def workdir(self, prefix: str, keep: Path | None = None) -> Path:
        """A folder for the run's files (the servers' sockets and logs): `keep`,
        or a temporary one removed by the clean-up, after the servers."""
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            return keep
        return Path(self.lab.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))

    def netns(self, tag: str) -> str:
        ns = self.lab.enter_context(netns(NS_PREFIX, tag))
        self.namespaces[ns.name] = ns
        # Room for many short connections from the clients (a per-namespace setting).
        run(nsexec(ns.name, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"), timeout=10)
        return ns.name

    def server(self, process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.lab.callback(stop_process, process)
        return process

    def remove_namespace(self, name: str) -> None:
        """Ends what still runs in it, too."""
        self.namespaces.pop(name).remove()

    def run_stoppable(self, work: Callable[[], T]) -> T:
        """work(), then the clean-up, as `ustack lab` runs (the lab's Stopper):
        in a thread, while a stop signal (SIGINT, SIGTERM, SIGHUP) only ends
        what runs in this run's namespaces; work() then fails at its next wait
        on one of those processes and unwinds through the clean-up, which no
        signal interrupts. Raises Interrupted after a stop. (A handler that
        raised could land in a finalizer, which only prints it, or in a lock
        that then stayed taken: a traceback or a hang.)"""

        def work_then_clean_up() -> T:
            try:
                return work()
            finally:
                self.cleanup()

        stopper = Stopper(NS_PREFIX)
        result = stopper.run(work_then_clean_up)
        if stopper.stopped:
            raise Interrupted(stopper.stopped)
        return cast(T, result)

    def cleanup(self) -> None:
        if self.cleaned:
            return
        self.cleaned = True
        try:
            self.lab.close()
        except (OSError, subprocess.TimeoutExpired, LabError) as exc:
            print(f"bench: cleanup: {exc}", file=sys.stderr)


def failed(exc: BenchError | LabError) -> int:
    """One line on stderr for what ended the run; its exit status: 128 + N
    after stop signal N, else 1."""
    if isinstance(exc, Interrupted):
        print(f"bench: {exc}", file=sys.stderr)
        return 128 + exc.signum
    print(f"bench: error: {exc}", file=sys.stderr)
    return 1


def nsexec(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def run(
    argv: Sequence[str], timeout: float, check: bool = True, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """subprocess.run with a timeout always, and failures as BenchError."""
    try:
        result = subprocess.run(
            [*DIE_WITH_PARENT, *argv],
            capture_output=True,
            timeout=timeout,
            input=input,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"timed out after {timeout:.0f} s: {' '.join(argv)}") from None
    if check and result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()
        raise BenchError(f"exit {result.returncode}: {' '.join(argv)}: {stderr[-500:]}")
    return result


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def slab_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Slab:"):
            return int(line.split()[1])
    raise BenchError("no Slab in /proc/meminfo")


# ---- the two setups --------------------------------------------------------------------


@dataclass
class Target:
    """One side of the comparison: where the clients run and whom they talk to."""

    label: str
    client_ns: str
    server_ns: str
    address: str
    server: subprocess.Popen[bytes]
    log: Path
    control: Path | None = None  # ustack's control socket

    @property
    def pid(self) -> int:
        return self.server.pid

    def client(self, *argv: str) -> list[str]:
        return nsexec(self.client_ns, *argv)

    def alive(self) -> None:
        if self.server.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise BenchError(
                f"the {self.label} server died (exit {self.server.returncode}):\n{tail}"
            )


def start_ustack(res: Resources, workdir: Path, mtu: int, extra: Sequence[str] = ()) -> Target:
    ns = res.netns(f"u{mtu}")
    private = workdir / f"ustack-{mtu}"  # its own control socket and log
    private.mkdir(exist_ok=True)
    daemon = UstackDaemon.start(
        Netns(ns), private, "--mtu", str(mtu), "--linux-address", f"{USTACK_LINUX}/24",
        "--address", USTACK_STACK, "--services", "echo,discard,http", *extra,
        log_level="info", msl=None, trace=False,
    )  # fmt: skip
    res.server(daemon.process)
    check_pid_is(daemon.process.pid, "ustack")
    linux_cc(ns, USTACK_STACK, "tun0")
    linux_cc(ns, STACK_ADDRESS6, "tun0")
    return Target("ustack", ns, ns, USTACK_STACK, daemon.process, daemon.log, daemon.control)


def linux_cc(ns: str, peer: str, dev: str) -> None:
    """Linux's TCP towards `peer` runs CUBIC, like ustack, whatever the
    machine's default (often BBR): a host route's congctl, since a namespace's
    sysctl may not be writable."""
    host = f"{peer}/128" if ":" in peer else f"{peer}/32"
    route = ["ip", "-n", ns, "route", "replace", host, "dev", dev]
    run([*route, "congctl", "lock", LINUX_CC], timeout=10)


def start_kernel(res: Resources, workdir: Path) -> Target:
    client_ns, server_ns = res.netns("kc"), res.netns("ks")
    veth_pair(Netns(client_ns), Netns(server_ns), ("bk0", "bk1"),
              (f"{KERNEL_CLIENT}/24", f"{KERNEL_SERVER}/24"))  # fmt: skip
    for ns, dev, address in (
        (client_ns, "bk0", KERNEL_CLIENT6),
        (server_ns, "bk1", KERNEL_SERVER6),
    ):
        run(["ip", "-n", ns, "addr", "add", f"{address}/64", "dev", dev, "nodad"], timeout=10)
    for ns, dev, peer in (
        (client_ns, "bk0", KERNEL_SERVER),
        (server_ns, "bk1", KERNEL_CLIENT),
        (client_ns, "bk0", KERNEL_SERVER6),
        (server_ns, "bk1", KERNEL_CLIENT6),
    ):
        linux_cc(ns, peer, dev)
    log = workdir / "kernel-server.log"
    server = BENCH / "kernel_server.py"
    process = start_until_ready(
        lambda fd: nsexec(server_ns, sys.executable, str(server), "--address", KERNEL_SERVER,
                          "--address", KERNEL_SERVER6, "--ready-fd", str(fd)),
        log,
    )  # fmt: skip
    res.server(process)
    check_pid_is(process.pid, "kernel_server")
    return Target("kernel", client_ns, server_ns, KERNEL_SERVER, process, log)


def over_ipv6(target: Target, address: str) -> Target:
    """The same server and clients, reached at its IPv6 address (as a URL
    writes it: [2001:2::2])."""
    return dataclasses.replace(target, address=f"[{address}]")


def set_kernel_mtu(target: Target, mtu: int) -> None:
    for ns, dev in ((target.client_ns, "bk0"), (target.server_ns, "bk1")):
        run(["ip", "-n", ns, "link", "set", dev, "mtu", str(mtu)], timeout=10)


def check_pid_is(pid: int, word: str) -> None:
    """`ip netns exec` execs its command, so the PID we hold is the server's own
    (whose VmRSS we read): make sure."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    if word not in cmdline:
        raise BenchError(f"pid {pid} is {cmdline!r}, not the {word} server")


def log_step(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def checkout(text: str) -> Path:
    """argparse type of --tree: a checkout whose ustack/ a run starts."""
    path = Path(text)
    if not (path / "ustack" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(
            f"{text}: not a checkout of ustack (no ustack/__init__.py)"
        )
    return path


def check_serve_args(parser: argparse.ArgumentParser, serve_args: Sequence[str]) -> None:
    """--ustack-arg ...: read by `ustack serve`'s own parser before anything
    starts (a bad one failed in the first daemon, after the namespaces)."""
    try:
        serve_config(build_parser().parse_args(["serve", *serve_args]))
    except UsageError as exc:
        parser.error(f"--ustack-arg: {exc}")


def rows_parser(doc: str | None, rows: str, tree: str) -> argparse.ArgumentParser:
    """The options the CPU-per-unit benches (bulk_cpu, conn_cpu) share: which
    rows, how many rounds of them, and another checkout's ustack/ to run."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--tree", type=checkout, help=tree)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rows", default=rows, help="which rows, in this order")
    return parser


def parse_as_root(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The arguments, once it is sure the bench can make its namespaces (and
    those a killed run left behind are gone)."""
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces)")
    remove_stale_namespaces()
    return args


def ustack_from_tree(
    lab: ExitStack,
    workdir: Path,
    prefix: str,
    tree: Path,
    index: int,
    services: str,
    *,
    program: Sequence[str] = ("-m", "ustack"),
    env: Mapping[str, str] | None = None,
) -> tuple[Netns, subprocess.Popen[bytes]]:
    """`ustack serve --services SERVICES` run from the checkout `tree` on a TUN
    in a namespace of its own (PREFIX-uINDEX), the lab's usual addresses;
    stopped when `lab` closes. (echo_latency, two_writes: versions side by side.)"""
    ns = lab.enter_context(netns(prefix, f"u{index}"))
    private = workdir / f"ustack-{index}"
    private.mkdir()
    tree = tree.resolve()
    daemon = UstackDaemon.start(
        ns, private, "--services", services, "--linux-address", f"{USTACK_LINUX}/24",
        "--address", USTACK_STACK, program=program, log_level="warning", msl=None,
        trace=False, control=False, env={**os.environ, **(env or {}), "PYTHONPATH": str(tree)},
        cwd=tree,
    )  # fmt: skip
    lab.callback(stop_process, daemon.process)
    return ns, daemon.process


def kernel_pair(lab: ExitStack, prefix: str, devices: tuple[str, str]) -> tuple[Netns, Netns]:
    """A kernel client's namespace (PREFIX-kc) and a kernel server's
    (PREFIX-ks) joined by a veth pair with the benches' kernel addresses;
    removed when `lab` closes."""
    client, server = (lab.enter_context(netns(prefix, tag)) for tag in ("kc", "ks"))
    veth_pair(client, server, devices, (f"{KERNEL_CLIENT}/24", f"{KERNEL_SERVER}/24"))
    return client, server


def kernel_over_veth(
    lab: ExitStack,
    workdir: Path,
    prefix: str,
    devices: tuple[str, str],
    program: Sequence[str],
    env: Mapping[str, str] | None = None,
) -> tuple[Netns, Netns, subprocess.Popen[bytes]]:
    """The kernel reference server (`program`, bench/kernel_server.py or a
    wrapper of it) in a namespace (PREFIX-ks) across a veth pair from its
    client's (PREFIX-kc), with `env` added to ours; stopped when `lab` closes."""
    client, server = kernel_pair(lab, prefix, devices)
    process = start_until_ready(
        lambda fd: server.command(*program, "--address", KERNEL_SERVER, "--ready-fd", str(fd)),
        workdir / "kernel-server.log",
        env={**os.environ, **(env or {})},
    )
    lab.callback(stop_process, process)
    return client, server, process


T = TypeVar("T")


@contextmanager
def versions_and_kernel(
    name: str,
    trees: Sequence[Path],
    kernel: bool,
    start_ustack: Callable[[ExitStack, Path, Path, int], T],
    start_kernel: Callable[[ExitStack, Path], T],
) -> Iterator[list[T]]:
    """The targets of a side-by-side bench (echo_latency, two_writes): a
    daemon from each checkout in `trees` (this one if none), then the kernel
    unless not `kernel`; all stopped, their namespaces and scratch directory
    removed, on leaving."""
    remove_stale_namespaces()
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp, ExitStack() as lab:
        workdir = Path(tmp)
        targets = [
            start_ustack(lab, workdir, tree, i) for i, tree in enumerate(trees or [BENCH.parent])
        ]
        if kernel:
            targets.append(start_kernel(lab, workdir))
        yield targets
