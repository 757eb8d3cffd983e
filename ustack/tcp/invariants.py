"""Invariants of the TCP core, checked from outside between two inputs.

The fuzzer (tools/fuzz.py) checks them after every packet, timer and
application call; any test can do the same:

    checker = InvariantChecker(stack.tcp)
    ...feed a segment...
    checker.check(now)           # raises InvariantError naming the rule
    ...close everything, let the clock run past every timer...
    checker.check_quiescent()    # nothing left behind

They read the connections' private fields on purpose: these are the TCB's
own promises (RFC 9293 3.3.1 and the comments in connection.py), not
behaviour seen on the wire. Sequence numbers compare on the circle (seq.py).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sized
from typing import NoReturn

from ustack.tcp import seq
from ustack.tcp.connection import TcpConnection
from ustack.tcp.demux import TcpDemux
from ustack.tcp.states import State

# States in which our FIN has been queued (after CLOSE or shutdown).
_FIN_QUEUED = (State.FIN_WAIT_1, State.FIN_WAIT_2, State.CLOSING, State.LAST_ACK, State.TIME_WAIT)
# States in which data and our FIN may go out (states.SENDS_DATA).
_SENDS = (State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK)
_HANDSHAKE = (State.SYN_SENT, State.SYN_RECEIVED)
_SYN_MAY_BE_UNACKED = (*_HANDSHAKE, State.FIN_WAIT_1, State.CLOSING)
MAX_SEND_WINDOW = 0xFFFF << 14  # RFC 7323 2.3: the largest window a peer can announce
Fail = Callable[[str, str], NoReturn]


class InvariantError(AssertionError):
    """An invariant broke. `rule` is a short stable name (for grouping
    failures); the message says which connection and what values."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(f"{rule}: {detail}")
        self.rule = rule


class _Seen:
    """What a connection looked like at the previous check."""

    __slots__ = ("irs", "iss", "rcv_adv", "rcv_nxt", "snd_max", "snd_una", "synced", "ts_recent")

    def __init__(self, conn: TcpConnection) -> None:
        self.iss = conn.iss
        self.snd_una = conn.snd_una
        self.snd_max = conn.snd_max
        self.synced = conn.state is not State.SYN_SENT  # IRS (and so RCV.*) known
        self.irs = conn.irs
        self.rcv_nxt = conn.rcv_nxt
        self.rcv_adv = conn.rcv_adv
        self.ts_recent = conn.ts_recent


class InvariantChecker:
    """Checks every TCB of a demultiplexer, and the tables around them.

    It remembers each connection between checks, for the rules about how
    values may move: SND.UNA, SND.MAX and RCV.NXT never go back, and the
    right edge of the receive window never moves left (RFC 9293 3.8.6.2.2)
    by more than the window scale's rounding."""

    def __init__(self, demux: TcpDemux) -> None:
        self.demux = demux
        self._seen: dict[TcpConnection, _Seen] = {}

    def check(self, now: float) -> None:
        demux = self.demux
        conns = set(demux.connections.values())
        self._check_tables(conns)
        for conn in conns:
            check_connection(conn, now, demux)
            self._check_movement(conn)
        self._check_time_waits(now)
        for gone in [c for c in self._seen if c not in conns]:
            del self._seen[gone]

    def check_quiescent(self) -> None:
        """After every connection was closed and the clock ran past all its
        timers: nothing may be left in any table or on the timer heap."""
        demux = self.demux
        if demux.connections or demux.time_wait_records():
            states = sorted(str(c.state) for c in demux.connections.values())
            states += ["TIME_WAIT"] * len(demux.time_wait_records())
            raise InvariantError("leak", f"connections left: {states}")
        if demux.next_deadline() is not None or demux._heap.entries:
            raise InvariantError("leak", f"{len(demux._heap.entries)} timer heap entries left")
        leftovers: dict[str, Sized] = {
            "keys": demux._keys,
            "apps": demux._apps,
            "scheduled": demux._heap.scheduled,
            "listener_of": demux._listener_of,
            "time_waits": demux._time_waits,
        }
        for name, table in leftovers.items():
            if table:
                raise InvariantError("leak", f"{len(table)} entries left in demux._{name}")
        for listener in demux.listeners.values():
            if listener.embryonic:
                raise InvariantError("leak", f"port {listener.port}: embryonic connections left")

    def _check_tables(self, conns: set[TcpConnection]) -> None:
        demux = self.demux
        for key, conn in demux.connections.items():
            if demux._keys.get(conn) != key:
                raise InvariantError(
                    "table", f"{conn} is under {key} but keyed {demux._keys.get(conn)}"
                )
        if set(demux._keys) != conns:
            raise InvariantError("table", "demux._keys and demux.connections disagree")
        scheduled = demux._heap.scheduled
        tables: dict[str, Iterable[TcpConnection]] = {
            "_apps": demux._apps,
            "_heap.scheduled": scheduled,
            "_listener_of": demux._listener_of,
        }
        for name, table in tables.items():
            stray = set(table) - conns
            if stray:
                raise InvariantError("table", f"demux.{name} holds connections not in the table")
        if any(conn.flushing for conn in conns):
            raise InvariantError("table", "a flush is still marked as running")
        if any(conn.state is State.TIME_WAIT and not conn.hold_acks for conn in conns):
            raise InvariantError("table", "a connection in TIME_WAIT outside a batch, no record")
        heap: dict[TcpConnection, set[float]] = {}
        for deadline, _, conn in demux._heap.entries:
            heap.setdefault(conn, set()).add(deadline)
        for conn in conns:
            next_timer = conn.get_timer()
            if next_timer is None:
                continue
            if scheduled.get(conn) != next_timer or next_timer not in heap.get(conn, ()):
                raise InvariantError(
                    "timer-heap",
                    f"{conn} has its next timer at {next_timer} but the demux scheduled "
                    f"{scheduled.get(conn)}",
                )
        for port, listener in demux.listeners.items():
            if listener.port != port or listener.state is not State.LISTEN:
                raise InvariantError("listener", f"{listener} is filed under port {port}")
            if len(listener.embryonic) > listener.backlog:
                raise InvariantError("listener", f"{listener}: backlog exceeded")
            for conn in listener.embryonic:
                filed = demux._keys.get(conn)
                if (
                    filed is None
                    or filed[2] != port
                    or demux._listener_of.get(conn) is not listener
                    or conn.state is not State.SYN_RECEIVED
                ):
                    raise InvariantError("listener", f"{listener} holds {conn} (key {filed})")

    def _check_time_waits(self, now: float) -> None:
        """The TIME_WAIT records (time_wait.py): one per 4-tuple, none also a
        connection, each group in the order of its deadlines, none overdue."""
        demux = self.demux
        for duration, group in demux._time_waits.items():
            if not group:
                raise InvariantError("time-wait", f"an empty group for 2 MSL {duration}")
            last = None
            for key, record in group.items():
                if record.key != key or key in demux.connections:
                    raise InvariantError("time-wait", f"{record} under {key}, key {record.key}")
                if 2 * record.config.msl != duration:
                    raise InvariantError("time-wait", f"{record} in the group of {duration}")
                if record.deadline < now:
                    raise InvariantError("timer-overdue", f"{record}: 2 MSL over at {now}")
                if last is not None and record.deadline < last:
                    raise InvariantError("time-wait", f"{record} before an earlier deadline")
                last = record.deadline

    def _check_movement(self, conn: TcpConnection) -> None:
        seen = self._seen.get(conn)
        now_seen = _Seen(conn)
        self._seen[conn] = now_seen
        if seen is None:
            return

        def backwards(rule: str, name: str, old: int, new: int) -> None:
            if seq.lt(new, old):
                raise InvariantError(rule, f"{conn}: {name} went back from {old} to {new}")

        if conn.iss != seen.iss:
            raise InvariantError("iss", f"{conn}: ISS changed from {seen.iss} to {conn.iss}")
        backwards("snd-una-monotonic", "SND.UNA", seen.snd_una, conn.snd_una)
        backwards("snd-max-monotonic", "SND.MAX", seen.snd_max, conn.snd_max)
        if seen.synced and now_seen.synced:
            if conn.irs != seen.irs:
                raise InvariantError("irs", f"{conn}: IRS changed from {seen.irs} to {conn.irs}")
            backwards("rcv-nxt-monotonic", "RCV.NXT", seen.rcv_nxt, conn.rcv_nxt)
            # The right edge may go back only by the rounding to the window
            # scale's unit (RFC 7323 Appendix F): a SYN,ACK says 65535 where
            # a scaled ACK cannot, and a full buffer is not rounded up again.
            retracted = seq.diff(seen.rcv_adv, conn.rcv_adv)
            if retracted >= 1 << conn.rcv_shift:
                raise InvariantError(
                    "rcv-window-shrank",
                    f"{conn}: the right edge RCV.NXT+RCV.WND went back {retracted} bytes, "
                    f"from {seen.rcv_adv} to {conn.rcv_adv} (window scale {conn.rcv_shift})",
                )
            if conn.ts_ok:
                backwards("ts-recent-monotonic", "TS.Recent", seen.ts_recent, conn.ts_recent)


def check_connection(conn: TcpConnection, now: float, demux: TcpDemux | None = None) -> None:
    """The rules that hold for one TCB in the table at any quiet moment."""
    state = conn.state
    config = conn.config

    def fail(rule: str, detail: str) -> NoReturn:
        raise InvariantError(rule, f"{conn} in {state}: {detail}")

    if not isinstance(state, State) or state in (State.CLOSED, State.LISTEN):
        fail("state", "a connection in the table must be in a synchronizing or later state")
    # Send sequence space: ISS <= SND.UNA <= SND.NXT <= SND.MAX.
    if not seq.le(conn.iss, conn.snd_una):
        fail("iss<=snd.una", f"ISS {conn.iss}, SND.UNA {conn.snd_una}")
    if not seq.le(conn.snd_una, conn.snd_nxt):
        fail("snd.una<=snd.nxt", f"SND.UNA {conn.snd_una}, SND.NXT {conn.snd_nxt}")
    if not seq.le(conn.snd_nxt, conn.snd_max):
        fail("snd.nxt<=snd.max", f"SND.NXT {conn.snd_nxt}, SND.MAX {conn.snd_max}")
    if state in _HANDSHAKE and conn.snd_una != conn.iss:
        fail("handshake-snd.una", f"SND.UNA {conn.snd_una} moved past ISS {conn.iss}")
    # CLOSE in SYN_RECEIVED queues the FIN before our SYN is acknowledged.
    if state not in _SYN_MAY_BE_UNACKED and conn.snd_una == conn.iss:
        fail("synchronized-snd.una", "our SYN is not acknowledged")
    # The send buffer starts at SND.UNA (after the SYN; before an acknowledged FIN).
    buf, buf_seq = conn.sender.buffer, conn.sender.buffer_seq
    if len(buf) > config.send_buffer:
        fail("send-buffer", f"{len(buf)} bytes in a {config.send_buffer}-byte buffer")
    fin_queued = conn.sender.fin_queued
    offset = seq.diff(conn.snd_una, buf_seq)
    if conn.snd_una == conn.iss:
        if buf_seq != seq.add(conn.iss, 1):
            fail("send-buffer-seq", f"buffer at {buf_seq} before the SYN is acknowledged")
    elif not (offset == 0 or (offset == 1 and conn.sender.fin_acked())):
        fail("send-buffer-seq", f"buffer at {buf_seq}, SND.UNA {conn.snd_una}")
    if seq.diff(conn.snd_max, buf_seq) > len(buf) + fin_queued:
        fail("snd.max-beyond-data", f"SND.MAX {conn.snd_max} past the data and FIN")
    if fin_queued != (state in _FIN_QUEUED):
        fail("fin-queued", f"FIN queued {fin_queued}")
    if conn.sender.fin_acked() != (state in (State.FIN_WAIT_2, State.TIME_WAIT)):
        fail("fin-acked", f"our FIN acknowledged: {conn.sender.fin_acked()}")
    if not 0 <= conn.snd_wnd <= MAX_SEND_WINDOW:
        fail("snd.wnd", f"SND.WND {conn.snd_wnd}")
    if conn.max_snd_wnd < conn.snd_wnd:
        fail("max-snd-wnd", f"max {conn.max_snd_wnd} below SND.WND {conn.snd_wnd}")
    if conn.mss <= 0 or conn.cwnd <= 0 or conn.ssthresh <= 0:
        fail("segment-size", f"MSS {conn.mss}, cwnd {conn.cwnd}, ssthresh {conn.ssthresh}")
    if not min(config.min_rto, config.initial_rto) <= conn.rto <= config.max_rto:
        fail("rto", f"RTO {conn.rto}")
    _check_rack_log(conn, fail)
    # Receive sequence space, once the peer's ISN is known.
    if state is not State.SYN_SENT:
        _check_receive_side(conn, fail)
    # Timers belong to states, and a connection with work to do has a timer.
    timers = conn.timers()
    overdue = [name for name, deadline in timers.items() if deadline < now]
    if overdue:
        fail("timer-overdue", f"{overdue} due before {now}: {timers}")
    if state is State.TIME_WAIT and set(timers) != {"time_wait"}:
        fail("timers", f"TIME_WAIT runs {sorted(timers)}")
    if "time_wait" in timers and state is not State.TIME_WAIT:
        fail("timers", "a 2MSL timer outside TIME_WAIT")
    if "fin_wait_2" in timers and state is not State.FIN_WAIT_2:
        fail("timers", "a FIN_WAIT_2 timer outside FIN_WAIT_2")
    if "keepalive" in timers and config.keepalive_idle is None:
        fail("timers", "keep-alive is off but its timer runs")
    if state in _HANDSHAKE and "retransmit" not in timers:
        fail("timers", "no retransmission timer for our SYN")
    probing = conn.snd_wnd == 0 and "persist" in timers  # (a zero-window probe in flight)
    if (
        state is not State.TIME_WAIT
        and conn.snd_una != conn.snd_max
        and "retransmit" not in timers
        and not probing
    ):
        fail("timers", f"{seq.diff(conn.snd_max, conn.snd_una)} bytes in flight, no timer")
    waiting = seq.diff(seq.add(conn.sender.fin_seq, fin_queued), conn.snd_nxt)
    if state in _SENDS and waiting > 0 and not {"retransmit", "persist"} & set(timers):
        fail("timers", f"{waiting} unsent (window {conn.snd_wnd}) and no timer to send it")
    if state is State.FIN_WAIT_2 and conn.orphaned and "fin_wait_2" not in timers:
        fail("timers", "an orphaned FIN_WAIT_2 without its timeout")
    if conn._outbox:
        fail("outbox", f"{len(conn._outbox)} segments not sent after a flush")
    if demux is not None and conn in demux._apps and conn.events:
        fail("events", f"{len(conn.events)} events not handed to the application")


def _check_rack_log(conn: TcpConnection, fail: Fail) -> None:
    """With SACK, RACK's log covers SND.UNA..SND.MAX exactly, in order, and
    its counts match its entries (they gate loss detection and the pipe)."""
    rack = conn.recovery.rack
    log = rack.log
    if not conn.sack_ok or not log:
        if log:
            fail("rack-log", "a send log without SACK")
        if conn.sack_ok and conn.snd_una != conn.iss and conn.snd_una != conn.snd_max:
            fail("rack-log", f"{seq.diff(conn.snd_max, conn.snd_una)} bytes out, none logged")
        return
    if log[0].start != conn.snd_una or log[-1].end != conn.snd_max:
        fail(
            "rack-log",
            f"log {log[0].start}..{log[-1].end}, SND.UNA..MAX {conn.snd_una}..{conn.snd_max}",
        )
    previous = log[0].start
    for entry in log:
        if entry.start != previous or not seq.lt(entry.start, entry.end):
            fail("rack-log", f"entry {entry} after {previous}")
        if entry.lost and entry.sacked:
            fail("rack-log", f"entry {entry} both SACKed and lost")
        previous = entry.end
    lost = sum(entry.lost for entry in log)
    resent = sum(entry.retransmitted for entry in log)
    held = sum(seq.diff(entry.end, entry.start) for entry in log if entry.sacked)
    counts = (rack.lost_out, rack.retransmitted_out, rack.sacked_bytes)
    if counts != (lost, resent, held):
        fail("rack-log", f"counts {counts}, entries {(lost, resent, held)}")


def _check_receive_side(conn: TcpConnection, fail: Fail) -> None:
    window = seq.diff(conn.rcv_adv, conn.rcv_nxt)
    if seq.diff(conn.rcv_nxt, conn.irs) < 1:
        fail("rcv.nxt", f"RCV.NXT {conn.rcv_nxt} not past IRS {conn.irs}")
    # A FIN may take the one sequence number past a closed window (as Linux).
    if window < 0 and not (window == -1 and conn.fin_received):
        fail("rcv.nxt<=rcv-edge", f"RCV.NXT {conn.rcv_nxt} past the window edge {conn.rcv_adv}")
    granule = (1 << conn.rcv_shift) - 1
    unread = len(conn.receiver.buffer)
    limit = conn.config.receive_buffer + granule
    if max(window, 0) + unread > limit:
        fail("receive-buffer", f"{unread} unread + window {window} over {limit}")
    # Data held beyond a hole lies in a window we advertised: within the
    # buffer (the edge may have gone back by the scale's rounding since).
    held = conn.receiver.out_of_order
    if held.held_bytes + unread > limit:
        fail("reassembly", f"{held.held_bytes} bytes held, {unread} unread, over {limit}")
    if held and not conn.fin_received:
        # The entries are sorted and never overlap: the ends say it all (in
        # O(1), so that checking every step keeps reassembly linear).
        left = seq.add(held._origin, held._starts[0])
        right = seq.add(held._origin, held._starts[-1] + len(held._data[-1]))
        if not seq.lt(conn.rcv_nxt, left):
            fail("reassembly", f"held data from {left}, not beyond RCV.NXT {conn.rcv_nxt}")
        if seq.diff(right, conn.rcv_nxt) + unread > limit:
            fail("reassembly", f"held data up to {right}, past the buffer ({limit} bytes)")
    held_fin = conn.receiver.held_fin
    if held_fin is not None and (conn.fin_received or not seq.gt(held_fin, conn.rcv_nxt)):
        fail("held-fin", f"a FIN held at {held_fin}, RCV.NXT {conn.rcv_nxt}")
