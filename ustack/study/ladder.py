"""Ladder (sequence) diagrams of one connection, drawn from a JSONL trace.

`ustack ladder TRACE` puts the Linux peer on the left and ustack on the
right: one arrow per segment, each side's state beside it after each step,
ustack's timers as annotations, time in ms at the left margin. This module
builds the ladder's rows from the trace (read by `ustack.study.load`);
`ustack.study.ladder_draw` draws them three ways: ASCII (a terminal), SVG
(a page), Mermaid (GitHub).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ustack.study import load
from ustack.study.decode import decision_note
from ustack.study.decode import is_lost
from ustack.study.ladder_draw import draw_ascii
from ustack.study.ladder_draw import draw_mermaid
from ustack.study.ladder_draw import draw_svg
from ustack.study.load import Record
from ustack.trace.records import TraceEvent
from ustack.trace.vocabulary import LOST_NOTE
from ustack.trace.vocabulary import Note
from ustack.trace.vocabulary import TimerAction
from ustack.trace.vocabulary import TimerKind

FORMATS = ("ascii", "svg", "mermaid")

# ---- the model -------------------------------------------------------------------------


@dataclass
class Row:
    """One step of the ladder: an arrow, a timer note, or a change of state."""

    time_ms: float
    kind: str  # "arrow", "note" (a timer, on the ustack side), "state"
    direction: str = ""  # arrows: "in" = peer -> ustack, "out" = ustack -> peer
    flags: str = ""
    label: str = ""
    lost: bool = False
    peer_state: str = ""  # set when the peer's state changed at this step
    ustack_state: str = ""  # set when ustack's state changed at this step
    note: str = ""


PEER_NAME = "Linux peer"  # the other end, as the daemon meets it


@dataclass
class Ladder:
    conn: int
    peer: str  # address:port
    us: str
    passive: bool | None
    peer_start: str  # "" when the trace has no peer_state events
    ustack_start: str
    rows: list[Row]
    windows: str = ""  # how to read the "win" numbers (scaled or not)
    peer_name: str = PEER_NAME  # the other end's lifeline ("ustack b" for a memory pair)

    @property
    def title(self) -> str:
        how = {True: " (passive open)", False: " (active open)", None: ""}[self.passive]
        return f"connection {self.conn}: {self.peer_name} {self.peer} <-> ustack {self.us}{how}"


# Timer notes: (when set, its delay at "{}" at the end; when fired), for every timer the core runs.
TIMER_NOTES: dict[TimerKind, tuple[str, str]] = {
    TimerKind.RETRANSMIT: ("RTO set {}", "RTO fired"),
    TimerKind.PROBE: ("loss probe {}", "loss probe fired"),
    TimerKind.REORDER: ("RACK reorder timer {}", "RACK reorder timer fired"),
    TimerKind.PERSIST: ("persist timer {}", "persist timer fired"),
    TimerKind.DELAYED_ACK: ("delayed_ack set {}", "delayed_ack fired"),
    TimerKind.KEEPALIVE: ("keepalive set {}", "keepalive fired"),
    TimerKind.TIME_WAIT: ("2MSL timer {}", "2MSL timer expired"),
    TimerKind.FIN_WAIT_2: ("fin timeout {}", "fin timeout expired"),
}
# Re-arming a running timer is noise (every new segment re-arms the RTO),
# but not these: the restart is the point (RFC 9293 3.10.7.4: a resent FIN
# in TIME_WAIT is acknowledged again and "restart the 2 MSL timeout").
RESTART_NOTES: dict[TimerKind, str] = {TimerKind.TIME_WAIT: "2MSL restarted {}"}
# Decisions whose answer the ladder names on the arrow that carries it.
REPLY_LABELS: dict[Note, str] = {Note.FIN_AGAIN_IN_TIME_WAIT: "re-ACK of the resent FIN"}


def _duration(seconds: float) -> str:
    """ms for the short timers, s for the long ones (keeps notes narrow)."""
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"  # (RACK's reordering window: tenths of a ms)
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.0f} s"


def _options_text(options: dict[str, Any]) -> str:
    """Compact SYN options: names and the values that fit (not TS's)."""
    parts = []
    for name, value in options.items():
        if value is True or name in ("TS", "sack"):
            parts.append(name)
        else:
            parts.append(f"{name} {value}")
    return f" [{','.join(parts)}]" if parts else ""


def segment_label(
    event: Record, absolute: bool = False, numbers: tuple[int, int] | None = None
) -> str:
    """`flags seq N [ack N] win N [len N] [options] (note)`; `numbers` are
    relative seq/ack worked out by the caller when the event has none."""
    flags = event["flags"]
    seq, ack = (event["seq"], event["ack"]) if absolute else (numbers or (0, 0))
    text = f"{flags} seq {seq}"
    if "." in flags:
        text += f" ack {ack}"
    text += f" win {event['window']}"
    if event["length"]:
        text += f" len {event['length']}"
    if event.get("ecn") == "CE":
        text += " CE"  # a router's congestion mark (RFC 3168); ECT(0) on data is the norm
    if "S" in flags:
        text += _options_text(event.get("options") or {})
    note = event.get("note") or ""
    if LOST_NOTE in note:
        note = note.replace(LOST_NOTE, "lost")
    if note:
        text += f" ({note})"
    return text


def window_legend(records: Iterable[Record]) -> str:
    """How to read the labels' "win N": the 16-bit field as on the wire,
    which counts bytes only when no window scale is in effect (RFC 7323
    2.2: both SYNs must offer it, and a SYN's own window is never scaled)."""
    shifts: dict[str, int | None] = {}
    for event in records:
        if event["type"] == "segment" and "S" in event["flags"]:
            shifts.setdefault(event["direction"], (event.get("options") or {}).get("wscale"))
    if len(shifts) < 2:
        return "win: as sent, unscaled (no SYNs in the trace: the window scale is unknown)"
    peer, ours = shifts["in"], shifts["out"]
    if peer is None or ours is None:
        return "win: in bytes (no window scaling on this connection)"
    return (
        f"win: as sent (unscaled): in bytes x{1 << peer} for the peer's, x{1 << ours} for "
        f"ustack's after the SYNs (RFC 7323 2.2)"
    )


def build_ladder(
    events: Iterable[Record | TraceEvent],
    absolute: bool = False,
    conn: int | None = None,
    peer_name: str = PEER_NAME,
) -> Ladder:
    """The rows of one connection's ladder. `events` are that connection's
    (see `choose_connection`), or a whole trace with `conn` to pick one;
    `peer_name` names the other end's lifeline."""
    records = load.as_records(events)
    summary = load.choose_connection(records, conn)
    records = summary.events
    numbers = load.relative_numbers(records)
    start = records[0]["time"]
    peer_start = next((e["old"] for e in records if e["type"] == "peer_state"), "")
    ladder = Ladder(
        summary.conn, summary.peer, summary.us, summary.passive, peer_start, summary.first_state, []
    )
    ladder.windows = window_legend(records)
    ladder.peer_name = peer_name
    rows = ladder.rows

    def ms(event: Record) -> float:
        return float(event["time"] - start) * 1000.0

    shown = summary.first_state  # ustack's state as the ladder shows it so far
    pending_state: tuple[float, str] | None = None  # a change no arrow showed yet
    pending_peer: tuple[float, str] | None = None
    pending_notes: list[tuple[float, str]] = []  # timers set just before a segment goes out
    running: set[str] = set()
    reply_label: tuple[float, str] | None = None  # a decision's name for the answer it sends

    def flush_notes() -> None:
        for at, text in pending_notes:
            rows.append(Row(at, "note", note=text))
        pending_notes.clear()

    def flush_state() -> None:
        nonlocal pending_state
        if pending_state is not None:
            rows.append(Row(pending_state[0], "state", ustack_state=pending_state[1]))
            pending_state = None

    def flush_peer() -> None:
        nonlocal pending_peer
        if pending_peer is not None:
            rows.append(Row(pending_peer[0], "state", peer_state=pending_peer[1]))
            pending_peer = None

    for event in records:
        kind = event["type"]
        if kind == "segment":
            at = ms(event)
            direction = event["direction"]
            # A change of ours shows on the segment it sends (CLOSE -> FIN);
            # a timer set for that segment shows after it.
            if direction != "out" or any(t != at for t, _ in pending_notes):
                flush_notes()
            if pending_state is not None and not (direction == "out" and pending_state[0] == at):
                flush_state()
            # The peer changes state and then sends (SYN_SENT, then the SYN).
            if direction != "in":
                flush_peer()
            label = segment_label(event, absolute, numbers[id(event)])
            if reply_label is not None and direction == "out" and reply_label[0] == at:
                label += f" ({reply_label[1]})"
            reply_label = None
            row = Row(at, "arrow", direction, event["flags"], label, is_lost(event))
            if pending_peer is not None:
                row.peer_state = pending_peer[1]
                pending_peer = None
            if event.get("conn") is not None:
                if pending_state is not None or event["state_after"] != shown:
                    row.ustack_state = shown = event["state_after"]
                pending_state = None
            rows.append(row)
            flush_notes()
        elif kind == "state":
            if event["new"] != shown:
                flush_state()
                pending_state = (ms(event), event["new"])
                shown = event["new"]
        elif kind == "timer":
            name, action = event["timer"], event["action"]
            # (a timer this build does not know: by its name)
            when_set, when_fired = TIMER_NOTES.get(name, (name + " set {}", name + " fired"))
            if action == TimerAction.SET:
                # Re-arming a running timer (every new segment) is noise.
                restart = RESTART_NOTES.get(name) if name in running else None
                if (name not in running or restart) and event.get("deadline") is not None:
                    delay = _duration(event["deadline"] - event["time"])
                    # (not str.format: an unknown timer's name may hold braces)
                    text = (restart or when_set).removesuffix("{}") + delay
                    pending_notes.append((ms(event), text))
                running.add(name)
            elif action == TimerAction.FIRED:
                flush_notes()
                flush_state()
                flush_peer()
                running.discard(name)
                rows.append(Row(ms(event), "note", note=when_fired))
            else:
                running.discard(name)
                unset = when_set.removesuffix("{}")
                pending_notes[:] = [(t, n) for t, n in pending_notes if not n.startswith(unset)]
        elif kind == "peer_state":
            flush_peer()
            pending_peer = (ms(event), event["new"])
        elif kind == "decision":
            note = decision_note(event)[0]
            named = REPLY_LABELS.get(note) if note is not None else None
            if named is not None:
                reply_label = (ms(event), named)
    flush_notes()
    flush_state()
    flush_peer()
    return ladder


# ---- the three drawings ----------------------------------------------------------------


def render_ascii(
    events: Iterable[Record | TraceEvent], absolute: bool = False, peer_name: str = PEER_NAME
) -> str:
    """The ladder as text for a terminal (100 columns for usual labels)."""
    return draw_ascii(build_ladder(events, absolute, peer_name=peer_name))


def render_svg(
    events: Iterable[Record | TraceEvent], absolute: bool = False, peer_name: str = PEER_NAME
) -> str:
    """The ladder as a self-contained SVG: no fonts, scripts or links outside."""
    return draw_svg(build_ladder(events, absolute, peer_name=peer_name))


def render_mermaid(
    events: Iterable[Record | TraceEvent], absolute: bool = False, peer_name: str = PEER_NAME
) -> str:
    """The ladder as a Mermaid sequenceDiagram (GitHub renders it in Markdown)."""
    return draw_mermaid(build_ladder(events, absolute, peer_name=peer_name))


RENDERERS: dict[str, Callable[[Iterable[Record | TraceEvent], bool, str], str]] = {
    "ascii": render_ascii,
    "svg": render_svg,
    "mermaid": render_mermaid,
}


# ---- command line ----------------------------------------------------------------------


def add_ladder_arguments(parser: argparse.ArgumentParser) -> None:
    """`ustack ladder TRACE [--conn ID] [--format F] [-o FILE] [--absolute]
    [--max-line-bytes N]`."""
    load.add_trace_arguments(parser)
    parser.add_argument("--conn", type=int, help="the connection to draw (see the listing)")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="ascii (default), svg or mermaid; default from -o's suffix (.svg, .mmd, .md)",
    )
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    parser.add_argument(
        "--absolute", action="store_true", help="absolute sequence numbers (default: relative)"
    )
    parser.add_argument(
        "--peer-name",
        default=PEER_NAME,
        help=f"the other end's lifeline (default {PEER_NAME!r}; 'ustack b' for a second stack)",
    )


def _format_for(args: argparse.Namespace) -> str:
    if args.format:
        return str(args.format)
    suffix = args.output.suffix.lower() if args.output else ""
    return {".svg": "svg", ".mmd": "mermaid", ".mermaid": "mermaid", ".md": "mermaid"}.get(
        suffix, "ascii"
    )


def ladder_command(args: argparse.Namespace) -> int:
    try:
        summary = load.read_connection(args.trace, args.conn, args.max_line_bytes)
        text = RENDERERS[_format_for(args)](summary.events, args.absolute, args.peer_name)
    except load.TraceError as exc:
        return load.report_error(exc)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"ustack: error: {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
