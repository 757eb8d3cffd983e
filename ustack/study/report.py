"""`ustack report TRACE -o session.html`: one self-contained HTML page of a
trace, to open from disk with no server and no network: the connections,
and for one of them the ladder, the graphs and a table of its events.
Choosing an arrow or a row shows the segment's fields, the state change,
the RFC rule and the explain sentence, and draws a line at its time in
every graph. Everything is inline (SVG, CSS, a small script, the events as
JSON); the page fetches nothing.

Size budget (REPORT_BUDGET, 5 MB): a long transfer is summarised, not cut.
The table and the ladder keep every event that is not a plain data segment
or bare ACK (handshake, FIN, RST, retransmissions, probes, lost segments,
state changes, decisions, timers that fired), the plain ones around each of
those (CONTEXT_ROWS either side) and the first and last of the connection,
up to MAX_ROWS; each run of plain segments left out becomes one summary row
(how many, bytes each way, from when to when). The graphs draw every
retransmission, loss, probe and event, and at most GRAPH_POINTS plain bars
and ACK/TCB points (plot_data.decimate: one per time bucket, the bucket's
lowest and highest sequence numbers kept, so the slope and the gaps stay).
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ustack.study import load
from ustack.study.decode import is_lost
from ustack.study.explain import event_sentences
from ustack.study.ladder import build_ladder
from ustack.study.ladder import window_legend
from ustack.study.ladder_draw import draw_svg
from ustack.study.plot import EXTRA_MISSING
from ustack.study.plot import PlotUnavailable
from ustack.study.plot import connection_plot_data
from ustack.study.plot import render_with_frame as render_graph
from ustack.study.plot_data import KINDS
from ustack.study.plot_data import decimate

REPORT_BUDGET = 5_000_000  # bytes of HTML, for a transfer of any length
MAX_ROWS = 1500  # events in the table and arrows in the ladder
CONTEXT_ROWS = 3  # plain segments kept either side of a notable event
EDGE_ROWS = 40  # plain segments kept at the start and at the end
GRAPH_POINTS = 3000  # plain bars, ACK points and TCB points per graph
_TIMER_NOISE = ("set", "cancelled")  # timers re-armed on every segment: kept only if few


def _plain(event: load.Record) -> bool:
    """A data segment or bare ACK with nothing else to it."""
    return (
        event["type"] == "segment"
        and event.get("conn") is not None
        and event["flags"] in (".", "P.")
        and not event.get("note")
        and event["state_before"] == event["state_after"]
    )


def _noise(event: load.Record) -> bool:
    """Left out of a long connection's table: timers re-armed on every
    segment, and the fault injector's delays and duplicates (its drops are
    folded into the segments they hit: load.as_records)."""
    kind = event["type"]
    return (kind == "timer" and event["action"] in _TIMER_NOISE) or kind == "fault"


def select_rows(events: Sequence[load.Record], max_rows: int = MAX_ROWS) -> list[int | str]:
    """The indexes of the events the table and ladder show, in order, and
    for each run left out one summary (a str) in its place."""
    if len(events) <= max_rows:
        return list(range(len(events)))
    wanted = [i for i, e in enumerate(events) if not _plain(e) and not _noise(e)]
    keep = set(wanted[: max_rows // 2])
    plain = [i for i, e in enumerate(events) if _plain(e)]
    keep.update(plain[:EDGE_ROWS] + plain[-EDGE_ROWS:])
    position = {index: n for n, index in enumerate(plain)}
    for index in sorted(keep):
        # the plain segments just before and after a notable event
        if index in position:
            continue
        for step in (-1, 1):
            j = index + step
            found = 0
            while 0 <= j < len(events) and found < CONTEXT_ROWS and len(keep) < max_rows:
                if j in position:
                    keep.add(j)
                    found += 1
                j += step
    rows: list[int | str] = []
    skipped: list[int] = []
    for index in range(len(events)):
        if index in keep:
            if skipped:
                rows.append(_summary(events, skipped))
                skipped = []
            rows.append(index)
        elif events[index]["type"] == "segment" or index in position:
            skipped.append(index)
    if skipped:
        rows.append(_summary(events, skipped))
    return rows


def _summary(events: Sequence[load.Record], skipped: list[int]) -> str:
    start = events[0]["time"]
    out = [events[i] for i in skipped if events[i]["direction"] == "out"]
    inn = [events[i] for i in skipped if events[i]["direction"] == "in"]
    first = (events[skipped[0]]["time"] - start) * 1000
    last = (events[skipped[-1]]["time"] - start) * 1000
    return (
        f"{len(skipped):,} plain segments left out, {first:.3f} to {last:.3f} ms: "
        f"ustack sent {len(out):,} ({sum(e['length'] for e in out):,} bytes), "
        f"the peer {len(inn):,} ({sum(e['length'] for e in inn):,} bytes)"
    )


# ---- the page --------------------------------------------------------------------------


def _event_json(index: int, event: load.Record, start: float, told: tuple[str, str]) -> Any:
    keep = {k: v for k, v in event.items() if k not in ("local", "remote", "tuple")}
    keep["i"] = index
    keep["t"] = round(event["time"] - start, 6)
    keep["sentence"], keep["refs"] = told
    if event["type"] == "segment":
        keep["lost"] = is_lost(event)
    return keep


def _strip_xml(svg: str) -> str:
    """An SVG file's text as an element to put in a page."""
    return svg[svg.index("<svg") :]


def _scoped(svg: str, prefix: str) -> str:
    """matplotlib names the parts of every figure alike (figure_1, patch_1,
    its clip paths): in one page each graph's ids get its own prefix."""
    return (
        svg.replace(' id="', f' id="{prefix}-')
        .replace("url(#", f"url(#{prefix}-")
        .replace('xlink:href="#', f'xlink:href="#{prefix}-')
    )


def _row_html(index: int, event: load.Record, start: float) -> str:
    at = f"{(event['time'] - start) * 1000:.3f}"
    kind = event["type"]
    if kind == "segment":
        arrow = "&larr; ustack" if event["direction"] == "out" else "&rarr; ustack"
        what = f"{arrow} {event['flags']} seq {event['rel_seq']}"
        if "." in event["flags"]:
            what += f" ack {event['rel_ack']}"
        what += f" win {event['window']}"
        if event["length"]:
            what += f" len {event['length']}"
        if event.get("note"):
            what += f" ({event['note']})"
        detail = (
            f"{event['state_before']} &rarr; {event['state_after']}"
            if event["state_before"] != event["state_after"]
            else event["state_after"]
        )
    elif kind == "state":
        what = f"ustack {event['old']} &rarr; {event['new']}"
        detail = html.escape(event["rule"])
    elif kind == "peer_state":
        what = f"Linux {event['old']} &rarr; {event['new']}"
        detail = ""
    elif kind == "decision":
        what = html.escape(event["what"])
        detail = html.escape(event["rule"])
    elif kind == "timer":
        what = f"timer {event['timer']} {event['action']}"
        detail = ""
    else:
        what, detail = html.escape(kind), ""
    classes = [kind]
    if kind == "segment":
        classes.append(event["direction"])
        if is_lost(event):
            classes.append("lost")
        if event.get("note") and "retransmission" in event["note"]:
            classes.append("resent")
    return (
        f'<tr class="ev {" ".join(classes)}" data-ev="{index}"><td>{at}</td><td>{kind}</td>'
        f"<td>{what}</td><td>{detail}</td></tr>"
    )


def build_report(trace: Path, conn: int | None, max_line: int = load.MAX_LINE_BYTES) -> str:
    """The page's HTML for connection `conn` of the trace (the longest-lived
    when there are several and none is named)."""
    with load.open_trace(trace, max_line) as source:
        summaries = load.connections(source)
        if not summaries:
            raise load.TraceError(f"{source.name}: no connections in this trace")
        if conn is None:
            conn = max(summaries, key=lambda s: s.end - s.start).conn
        summary = load.choose_connection(source, conn, source.name)
        skipped = source.skipped_note()
    events, data = connection_plot_data(summary)
    start = events[0]["time"]
    told = event_sentences(events, summary.peer, summary.us)
    rows = select_rows(events)
    shown = [events[r] for r in rows if isinstance(r, int)]
    # The ladder's arrows are its segments in order: the n-th arrow is the n-th shown segment.
    ladder = build_ladder(shown)
    ladder.windows = window_legend(events)  # (from the SYNs, which a long selection may skip)
    arrow_events = [r for r in rows if isinstance(r, int) and events[r]["type"] == "segment"]
    arrows = sum(1 for row in ladder.rows if row.kind == "arrow")
    if arrows != len(arrow_events):
        arrow_events = []  # (should not happen: then arrows just do not link)
    graphs = []
    frames = {}
    small = decimate(data, GRAPH_POINTS)
    for kind in KINDS:
        svg, frame = render_graph(small, kind, "svg")
        frames[kind] = dataclasses.asdict(frame)
        graphs.append(
            f'<figure class="graph" id="graph-{kind}" data-kind="{kind}">'
            f"{_scoped(_strip_xml(svg.decode()), kind)}</figure>"
        )
    payload = {
        "events": {
            str(r): _event_json(r, events[r], start, told.get(id(events[r]), ("", "")))
            for r in rows
            if isinstance(r, int)
        },
        "arrows": arrow_events,
        "frames": frames,
    }
    listing = "".join(
        f'<tr class="{"chosen" if s.conn == summary.conn else ""}"><td>{s.conn}</td>'
        f"<td>{html.escape(s.peer)}</td><td>{html.escape(s.us)}</td>"
        f"<td>{'passive' if s.passive else 'active' if s.passive is False else '?'}</td>"
        f"<td>{s.first_state} &rarr; {s.last_state}</td>"
        f"<td>{(s.end - s.start) * 1000:,.1f}</td></tr>"
        for s in summaries[:200]
    )
    more = f"<p>and {len(summaries) - 200:,} more</p>" if len(summaries) > 200 else ""
    table = "".join(
        _row_html(r, events[r], start)
        if isinstance(r, int)
        else f'<tr class="summary"><td colspan="4">{html.escape(r)}</td></tr>'
        for r in rows
    )
    notes = []
    if len(rows) < len(events):
        notes.append(
            f"{len(events):,} events; the table and ladder show {len(shown):,} of them "
            f"(every notable one, plain segments around them), the graphs at most "
            f"{GRAPH_POINTS:,} plain points each."
        )
    if len(summaries) > 1:
        notes.append(
            f"The trace holds {len(summaries):,} connections; this page shows connection "
            f"{summary.conn}. Another: ustack report {html.escape(str(trace))} --conn ID -o FILE."
        )
    if skipped:
        notes.append(html.escape(skipped))
    title = f"ustack report: connection {summary.conn}, {summary.peer} <-> {summary.us}"
    data_json = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
    return _template("page.html").format(
        title=html.escape(title),
        source=html.escape(str(trace)),
        listing=listing,
        more=more,
        notes="".join(f"<p class='note'>{n}</p>" for n in notes),
        ladder=_strip_xml(draw_svg(ladder)),
        graphs="".join(graphs),
        table=table,
        data=data_json,
        style=_template("style.css"),
        script=_template("script.js"),
        scaled=(
            " as on the wire, not scaled (the graphs scale them)"
            if data.window_scaled
            else " (no window scaling on this connection)"
        ),
    )


def _template(name: str) -> str:
    """A file of the page (report_page/: HTML with {fields}, the CSS, the script)."""
    return (resources.files("ustack.study") / "report_page" / name).read_text(encoding="utf-8")


# ---- command line ----------------------------------------------------------------------


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """`ustack report TRACE [--conn ID] -o FILE.html`."""
    load.add_trace_arguments(parser)
    parser.add_argument(
        "--conn", type=int, help="the connection to show in full (default: the longest-lived)"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="the HTML file to write")


def report_command(args: argparse.Namespace) -> int:
    try:
        page = build_report(args.trace, args.conn, args.max_line_bytes)
    except PlotUnavailable:
        print(f"ustack: error: {EXTRA_MISSING}", file=sys.stderr)
        return 2
    except load.TraceError as exc:
        return load.report_error(exc)
    try:
        args.output.write_text(page, encoding="utf-8")
    except OSError as exc:
        print(f"ustack: error: {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    size = len(page.encode())
    if size > REPORT_BUDGET:
        print(
            f"ustack: warning: {args.output}: {size:,} bytes, over the {REPORT_BUDGET:,} budget",
            file=sys.stderr,
        )
    print(args.output)
    return 0
