"""The Linux peer's own TCP states, from the kernel tracepoint sock:inet_sock_set_state.

A `PeerStateWatcher` makes a private tracing instance (tracefs
``instances/ustack-<pid>``), enables the tracepoint there, reads its
``trace_pipe`` in a thread and hands each state change of a Linux socket whose
remote end is the stack to the event loop as a `PeerStateChange`. The global
tracing instance is never touched; at stop the instance is removed (and tracefs
unmounted if we mounted it).

TIME_WAIT: Linux hands a closing connection over to a small "timewait socket"
and closes the full socket, so the tracepoint says FIN_WAIT2 -> CLOSE (or
FIN_WAIT1/CLOSING -> CLOSE) where the connection really went on in TIME_WAIT,
or in FIN_WAIT2 if the application had already closed it. The timewait socket
emits no tracepoint. So after such a CLOSE the watcher asks sock_diag (in its
own network namespace, which must be the Linux peer's) whether a timewait
socket holds that 4-tuple, reports its state instead of CLOSED, and then polls
it until it changes or goes away (CLOSED).

Tracefs is global to the machine, not per network namespace, and the
tracepoint has no field for the namespace: another namespace's sockets between
the same two addresses show too (parallel labs all use 198.18.0.1/.2). So a
socket's changes are reported only once it is known to be in the watcher's
namespace (sock_diag answers for its own namespace only):
- live: an exact sock_diag lookup of its 4-tuple finds a socket (full, request
  or timewait) here, when its first change is handled; or
- gone already (a connection of a few microseconds): the tracepoint
  tcp:tcp_destroy_sock, read with the changes, gives the socket's cookie, and
  the destroy notices of our namespace's sock_diag (DestroyNotices) name that
  cookie.
Until then its changes are held, in order; those of a socket whose destroy
notice does not come within HOLD_FOREIGN seconds of its tcp_destroy_sock are
dropped and counted (`peer_states.foreign`), as are those of a socket neither
found nor freed within HOLD_UNSEEN (one kept alive unhashed: a refused
connect whose application has not closed it yet, or another namespace's live
connection).
The limit: another namespace's socket on the very same 4-tuple at the very
time ours is live passes the lookup too. Without sock_diag, its destroy
notices or tcp_destroy_sock nothing is filtered (a warning says so).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import itertools
import logging
import os
import threading
from collections import Counter
from collections import deque
from collections.abc import Callable
from pathlib import Path

from ustack.linux.sock_diag import DestroyNotices
from ustack.linux.sock_diag import Key
from ustack.linux.sock_diag import SockDiag
from ustack.linux.tracefs import INSTANCE_PREFIX
from ustack.linux.tracefs import TRACING_ROOT
from ustack.linux.tracefs import KernelStateChange
from ustack.linux.tracefs import (
    PeerStatesError as PeerStatesError,  # (part of the watcher's interface)
)
from ustack.linux.tracefs import SocketDestroyed
from ustack.linux.tracefs import disable_event
from ustack.linux.tracefs import mount_tracefs
from ustack.linux.tracefs import parse_destroy_line
from ustack.linux.tracefs import parse_line
from ustack.linux.tracefs import remove_stale_instances
from ustack.linux.tracefs import unmount
from ustack.linux.tracefs import write_file
from ustack.trace.records import PeerStateChange

log = logging.getLogger("ustack.peer_states")

EVENT = ("sock", "inet_sock_set_state")
DESTROY_EVENT = ("tcp", "tcp_destroy_sock")  # its cookie ties a gone socket to its namespace
# Written to our instance's trace_marker to wake the reader thread at stop.
STOP_MARKER = "ustack-peer-states: stop"
BUFFER_SIZE_KB = 512  # per CPU; state changes are small and read at once
TIMEWAIT_POLL = 0.1  # seconds between sock_diag looks at held timewait sockets
JOIN_TIMEOUT = 2.0
# How long the changes of a socket not (yet) known to be ours are held: its
# destroy notice comes from a workqueue once the last packet that holds it is freed.
HOLD_FOREIGN = 2.0
HOLD_UNSEEN = 60.0  # a socket not found, not freed yet either
NOTICES_LOST_COUNTER = "peer_states.notices-lost"  # ENOBUFS on the destroy notices
FOREIGN_COUNTER = "peer_states.foreign"  # changes dropped: not our namespace's

# The states a full socket leaves for CLOSE when a timewait socket takes over.
_HANDOFF_FROM = frozenset({"FIN_WAIT_1", "FIN_WAIT_2", "CLOSING"})
_instance_serial = itertools.count()


# ---- the watcher ----------------------------------------------------------------------------


class PeerStateWatcher:
    """Reports the state changes of the Linux sockets whose remote end is the
    stack, as `PeerStateChange` events passed to `emit` on the loop's thread.

    `conn_lookup(linux_address, linux_port, stack_port)` names our connection
    on that 4-tuple (None if none); it is called on the loop's thread.
    `stack_address6`: the stack's IPv6 address, when Linux reaches it over
    IPv6 too (the tracepoint then reports AF_INET6 sockets as well).
    `start()` and `stop()` are called on the loop's thread (or with no loop
    running); `start()` also makes the sock_diag sockets, so it must run in the
    Linux peer's network namespace: only that namespace's sockets are reported
    (see the module's note). `counters[FOREIGN_COUNTER]` counts the changes
    of other namespaces' sockets left out."""

    def __init__(
        self,
        stack_address: str,
        emit: Callable[[PeerStateChange], None],
        conn_lookup: Callable[[str, int, int], int | None],
        loop: asyncio.AbstractEventLoop,
        *,
        stack_address6: str | None = None,
        tracing_root: Path | str = TRACING_ROOT,
        counters: Counter[str] | None = None,
    ) -> None:
        # The stack's addresses by family (4, 6), in the text the trace writes.
        self._stacks = {4: str(ipaddress.IPv4Address(stack_address))}
        if stack_address6 is not None:
            self._stacks[6] = str(ipaddress.IPv6Address(stack_address6))
        self._emit_event = emit
        self._conn_lookup = conn_lookup
        self._loop = loop
        self._root = Path(tracing_root)
        serial = next(_instance_serial)
        suffix = "" if serial == 0 else f"-{serial}"
        self._name = f"{INSTANCE_PREFIX}{os.getpid()}{suffix}"
        self._instance: Path | None = None  # set once we made it
        self._mounted = False
        self._enabled = False
        self._fd: int | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._diag: SockDiag | None = None
        self._held: dict[Key, str] = {}  # 4-tuples in a timewait socket, and its state
        self._open: set[Key] = set()  # 4-tuples reported in a state other than CLOSED
        self.counters: Counter[str] = Counter() if counters is None else counters
        # The namespace filter (module note). Off when a part is missing.
        self._notices: DestroyNotices | None = None
        self._destroy_traced = False  # tcp_destroy_sock is enabled in our instance
        self._ours: set[Key] = set()  # 4-tuples found in our namespace, until CLOSED
        self._pending: dict[Key, list[KernelStateChange]] = {}  # held, in order
        self._hold_timers: dict[Key, asyncio.TimerHandle] = {}
        self._awaiting: dict[int, Key] = {}  # cookie of a gone socket -> its held 4-tuple
        self._our_cookies: dict[int, float] = {}  # destroy notices read, and when
        # connect(2) enters SYN_SENT before it picks the port: (Linux address,
        # stack port) -> when each such SYN_SENT was handled, oldest first.
        self._unbound: dict[tuple[str, int], deque[float]] = {}
        self._poll: asyncio.TimerHandle | None = None
        self._started = False
        self._closed = False
        self._mono_clock = False  # our instance stamps events with CLOCK_MONOTONIC

    @property
    def instance_path(self) -> Path:
        """Where the private tracing instance is (while running)."""
        return self._root / "instances" / self._name

    # ---- start and stop ------------------------------------------------------------------

    def start(self) -> None:
        """Make the instance, enable the tracepoint, start reading. PeerStatesError
        (nothing left behind) when that cannot be done."""
        if self._started:
            raise PeerStatesError("peer states: the watcher was already started")
        self._started = True
        try:
            self._set_up()
        except BaseException:
            self._tear_down()
            self._closed = True
            raise
        self._thread = threading.Thread(
            target=self._read_pipe, name=f"peer-states-{self._name}", daemon=True
        )
        self._thread.start()
        log.info("peer states: tracing sock:inet_sock_set_state in %s", self.instance_path)

    def stop(self) -> None:
        """Stop reading, disable the tracepoint, remove the instance, unmount
        tracefs if we mounted it. Idempotent; never raises."""
        if self._closed:
            return
        self._closed = True
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None
        self._held.clear()
        self._open.clear()
        self._unbound.clear()
        for timer in self._hold_timers.values():
            timer.cancel()
        self._hold_timers.clear()
        self._pending.clear()
        self._awaiting.clear()
        self._ours.clear()
        self._stop_reader()
        self._tear_down()

    def _set_up(self) -> None:
        root = self._root
        if not (root / "instances").is_dir():
            if root != TRACING_ROOT:
                raise PeerStatesError(f"no tracefs at {root} (it has no instances/ directory)")
            if not root.is_dir():
                raise PeerStatesError(f"no {root}: the kernel has no tracing (CONFIG_TRACING)")
            mount_tracefs(root)
            self._mounted = True
            if not (root / "instances").is_dir():
                raise PeerStatesError(f"tracefs on {root} has no instances/ directory")
        remove_stale_instances(root)
        instance = self.instance_path
        try:
            instance.mkdir()
        except FileExistsError:
            # Only a process that had our pid before us names an instance so.
            try:
                instance.rmdir()
                instance.mkdir()
            except OSError as exc:
                raise PeerStatesError(f"tracing instance {instance} exists and is in use") from exc
        except OSError as exc:
            hint = " (needs root)" if exc.errno in (errno.EPERM, errno.EACCES) else ""
            raise PeerStatesError(
                f"cannot create tracing instance {instance}: {exc.strerror}{hint}"
            ) from exc
        self._instance = instance
        event = instance.joinpath("events", *EVENT)
        if not (event / "enable").is_file():
            raise PeerStatesError(
                f"the kernel has no tracepoint {':'.join(EVENT)} ({event} is missing)"
            )
        # trace_clock mono: the events carry the time they happened, on the
        # loop's clock, so they sort in among ours although they arrive late.
        for setting, value in ((instance / "trace_clock", "mono"),
                               (instance / "buffer_size_kb", str(BUFFER_SIZE_KB)),
                               # AF_INET (2) and AF_INET6 (10), TCP (6).
                               (event / "filter",
                                "(family == 2 || family == 10) && protocol == 6")):  # fmt: skip
            try:
                write_file(setting, value)  # nice to have: without them it still works
            except OSError as exc:
                log.debug("peer states: cannot set %s: %s", setting, exc.strerror)
            else:
                if setting.name == "trace_clock":
                    self._mono_clock = True
        try:
            self._fd = os.open(instance / "trace_pipe", os.O_RDONLY | os.O_CLOEXEC)
            write_file(event / "enable", "1")
            self._enabled = True
        except OSError as exc:
            raise PeerStatesError(
                f"cannot enable {':'.join(EVENT)} in {instance}: {exc.strerror}"
            ) from exc
        try:
            self._diag = SockDiag()
        except OSError as exc:
            log.warning("peer states: no sock_diag (%s): TIME_WAIT shows as CLOSED", exc.strerror)
        self._set_up_namespace_filter(instance)

    def _set_up_namespace_filter(self, instance: Path) -> None:
        """tcp_destroy_sock in our instance and our namespace's destroy
        notices: without either, other namespaces' sockets show too."""
        event = instance.joinpath("events", *DESTROY_EVENT)
        try:
            write_file(event / "filter", "family == 2 || family == 10")
            write_file(event / "enable", "1")
            self._destroy_traced = True
            self._notices = DestroyNotices()
            self._loop.add_reader(self._notices.fileno(), self._read_notices)
        except OSError as exc:
            log.warning(
                "peer states: no namespace filter (%s: %s): other namespaces' sockets "
                "between the same addresses show too",
                exc.filename or "sock_diag",
                exc.strerror,
            )
            if self._notices is not None:
                self._notices.close()
                self._notices = None

    def _stop_reader(self) -> None:
        """The reader blocks in read(2) on trace_pipe: wake it with a line of our
        own in our instance's trace_marker; it sees `_stopping` and returns."""
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        assert self._instance is not None
        for wake, value in ((self._instance / "trace_marker", STOP_MARKER + "\n"),
                            # Turning tracing off also wakes readers (Linux 6.7+).
                            (self._instance / "tracing_on", "0")):  # fmt: skip
            if not thread.is_alive():
                break
            try:
                write_file(wake, value)
            except OSError as exc:
                log.warning("peer states: cannot write %s: %s", wake, exc.strerror)
            thread.join(JOIN_TIMEOUT)
        if thread.is_alive():
            log.error("peer states: the trace_pipe reader does not stop; leaving %s", self._name)
            self._fd = None  # still in use by the thread: not ours to close
        else:
            self._thread = None

    def _tear_down(self) -> None:
        if self._diag is not None:
            self._diag.close()
            self._diag = None
        if self._notices is not None:
            self._loop.remove_reader(self._notices.fileno())
            self._notices.close()
            self._notices = None
        instance = self._instance
        if instance is not None:
            if self._destroy_traced:
                disable_event(instance, DESTROY_EVENT)
            if self._enabled:
                disable_event(instance, EVENT)
        self._destroy_traced = self._enabled = False
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if instance is not None and self._thread is None:
            try:
                instance.rmdir()
                self._instance = None
            except OSError as exc:
                log.warning("peer states: cannot remove %s: %s", instance, exc.strerror)
        if self._mounted and self._instance is None:
            unmount(self._root)
            self._mounted = False

    # ---- the reader thread -----------------------------------------------------------------

    def _read_pipe(self) -> None:
        fd = self._fd
        assert fd is not None
        pending = b""
        while not self._stopping.is_set():
            try:
                chunk = os.read(fd, 1 << 16)
            except InterruptedError:
                continue
            except OSError as exc:
                log.error("peer states: reading trace_pipe failed: %s", exc.strerror)
                return
            if not chunk:  # tracing was turned off under us
                if not self._stopping.is_set():
                    log.error("peer states: trace_pipe ended")
                return
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                text = line.decode("ascii", "replace")
                change = parse_line(text, self._stacks.values())
                destroyed = (
                    None if change is not None else parse_destroy_line(text, self._stacks.values())
                )
                try:
                    if change is not None:
                        self._loop.call_soon_threadsafe(self._handle, change)
                    elif destroyed is not None:
                        self._loop.call_soon_threadsafe(self._destroyed, destroyed)
                except RuntimeError:  # the loop is closed
                    return

    # ---- on the loop's thread --------------------------------------------------------------

    def _handle(self, change: KernelStateChange) -> None:
        if self._closed:
            return
        key = (change.linux, change.linux_port, change.stack_port)
        if change.old == "CLOSED" and change.new == "SYN_SENT" and change.linux_port == 0:
            # The port shows with the next change (SYN_SENT -> ESTABLISHED or CLOSED).
            unbound = self._unbound.setdefault((change.linux, change.stack_port), deque())
            unbound.append(self._time_of(change))
            return
        pending = self._pending.get(key)
        if pending is not None:  # behind changes still held: in order
            pending.append(change)
            if self._found_here(key):
                self._confirm(key)
            return
        if self._is_ours(key):
            self._accept(change)
            return
        self._pending[key] = [change]
        self._hold_timers[key] = self._loop.call_later(HOLD_UNSEEN, self._give_up, key)

    # ---- the namespace filter (module note) ------------------------------------------------

    def _is_ours(self, key: Key) -> bool:
        """Known ours, or found live here; True when there is no filter."""
        if key in self._ours or key in self._open or key in self._held:
            return True
        if self._diag is None or self._notices is None or not self._destroy_traced:
            return True
        return self._found_here(key)

    def _found_here(self, key: Key) -> bool:
        """Whether sock_diag (our namespace only) holds this 4-tuple now."""
        if self._diag is None:
            return False
        try:
            found = self._diag.holds(key, self._stack_facing(key[0]))
        except OSError as exc:
            self._diag_failed(exc)
            return False
        if found:
            self._ours.add(key)
        return found

    def _destroyed(self, gone: SocketDestroyed) -> None:
        """A socket was freed: if its changes are held, its cookie will say
        whether it was ours (a disconnected one has lost its remote port)."""
        if self._closed:
            return
        for key, changes in self._pending.items():
            if key[1] != gone.linux_port:
                continue
            # Port 0: disconnected (a refused connect), so closed already
            # (not a listener on that port).
            if gone.stack_port == key[2] or (gone.stack_port == 0 and changes[-1].new == "CLOSED"):
                if gone.cookie in self._our_cookies:
                    self._confirm(key)
                    return
                # Its notice comes soon if it is ours (the kernel's workqueue).
                self._awaiting[gone.cookie] = key
                self._hold_timers.pop(key).cancel()
                self._hold_timers[key] = self._loop.call_later(HOLD_FOREIGN, self._give_up, key)
                return

    def _read_notices(self) -> None:
        """Our namespace's destroy notices: their cookies, kept a while."""
        if self._notices is None:
            return
        try:
            cookies, lost = self._notices.read()
        except OSError as exc:
            log.warning("peer states: reading destroy notices failed: %s", exc.strerror)
            return
        if lost:  # their sockets' held changes are dropped: counted too
            log.warning("peer states: destroy notices lost (ENOBUFS)")
            self.counters[NOTICES_LOST_COUNTER] += 1
        now = self._loop.time()
        for cookie in cookies:
            self._our_cookies[cookie] = now
            key = self._awaiting.pop(cookie, None)
            if key is not None and key in self._pending:
                self._confirm(key)
        # A tcp_destroy_sock line comes before its notice or a moment after.
        for cookie, seen in list(self._our_cookies.items()):
            if seen > now - 4 * HOLD_FOREIGN:
                break
            del self._our_cookies[cookie]

    def _confirm(self, key: Key) -> None:
        """The held changes are of our namespace's socket: report them."""
        self._ours.add(key)
        timer = self._hold_timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        for change in self._pending.pop(key, []):
            self._accept(change)

    def _give_up(self, key: Key) -> None:
        """Not found in our namespace in time: another namespace's socket."""
        self._hold_timers.pop(key, None)
        changes = self._pending.pop(key, [])
        self._awaiting = {c: k for c, k in self._awaiting.items() if k != key}
        self.counters[FOREIGN_COUNTER] += len(changes)
        for change in changes:
            waiting = self._unbound.get((change.linux, change.stack_port))
            if change.old == "SYN_SENT" and waiting:
                waiting.popleft()  # (its SYN_SENT without a port was that socket's)
                if not waiting:
                    del self._unbound[(change.linux, change.stack_port)]
        log.debug("peer states: %s:%d is not in our namespace: %d changes left out",
                  key[0], key[1], len(changes))  # fmt: skip

    def _accept(self, change: KernelStateChange) -> None:
        """A change of a socket of our namespace."""
        key = (change.linux, change.linux_port, change.stack_port)
        held = self._held.pop(key, None)
        if held is not None:  # the 4-tuple is used anew: its timewait socket is gone
            self._report(key, held, "CLOSED")
        if change.old == "SYN_SENT" and key not in self._open:
            waiting = self._unbound.get((change.linux, change.stack_port))
            if waiting:
                handled = waiting.popleft()
                if not waiting:
                    del self._unbound[(change.linux, change.stack_port)]
                self._report(key, "CLOSED", "SYN_SENT", handled)
        old, new = change.old, change.new
        if new == "CLOSED" and old in _HANDOFF_FROM:
            state = self._timewait_state(key)
            if state is not None:
                self._held[key] = state
                self._schedule_poll()
                if state == old:  # closed by its application: FIN_WAIT_2 goes on
                    return
                # It moved on before we looked: say so at the time we saw it.
                self._report(key, old, state, self._loop.time())
                return
        self._report(key, old, new, self._time_of(change))

    def _time_of(self, change: KernelStateChange) -> float:
        """The kernel's timestamp when the instance runs on the mono clock."""
        return change.at if change.at is not None and self._mono_clock else self._loop.time()

    def _timewait_state(self, key: Key) -> str | None:
        if self._diag is None:
            return None
        try:
            return self._diag.timewait_state(key, self._stack_facing(key[0]))
        except OSError as exc:
            self._diag_failed(exc)
            return None

    def _schedule_poll(self) -> None:
        if self._poll is None and not self._closed:
            self._poll = self._loop.call_later(TIMEWAIT_POLL, self._poll_timewait)

    def _poll_timewait(self) -> None:
        self._poll = None
        if self._closed or not self._held or self._diag is None:
            return
        families = {6 if ":" in linux else 4 for linux, _, _ in self._held}
        current: dict[Key, str] = {}
        try:
            for family in families:
                current.update(self._diag.timewait_states(self._stacks[family]))
        except OSError as exc:
            self._diag_failed(exc)
            return
        for key, state in list(self._held.items()):
            now = current.get(key)
            if now is None:
                del self._held[key]
                self._report(key, state, "CLOSED")
            elif now != state:
                self._held[key] = now
                self._report(key, state, now)
        if self._held:
            self._schedule_poll()

    def _stack_facing(self, linux: str) -> str:
        """The stack's address of the family of this Linux address."""
        return self._stacks[6 if ":" in linux else 4]

    def _diag_failed(self, exc: OSError) -> None:
        log.warning("peer states: sock_diag failed (%s): TIME_WAIT shows as CLOSED", exc)
        if self._diag is not None:
            self._diag.close()
            self._diag = None
        self._held.clear()

    def _report(self, key: Key, old: str, new: str, handled: float | None = None) -> None:
        if new == "CLOSED":
            self._open.discard(key)
            if key not in self._held:  # the 4-tuple is free: another socket may take it
                self._ours.discard(key)
        else:
            self._open.add(key)
        linux, linux_port, stack_port = key
        self._emit_event(
            PeerStateChange(
                time=self._loop.time() if handled is None else handled,
                conn=self._conn_lookup(linux, linux_port, stack_port),
                local=self._stack_facing(linux),
                local_port=stack_port,
                remote=linux,
                remote_port=linux_port,
                old=old,
                new=new,
            )
        )
