"""`ustack plot`: one connection's graphs as SVG or PNG, drawn with matplotlib
(the optional extra `ustack[plot]`; imported only when a graph is drawn).

What each graph shows comes from ustack.study.plot_data; this module only
draws it: the time-sequence graph (tcptrace's colours where it has them),
cwnd/ssthresh/flight, SRTT/RTTVAR/RTO, the two windows, and a timeline of
both ends' states.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any
from typing import Literal
from typing import NamedTuple

from ustack.study import load
from ustack.study.plot_data import KINDS
from ustack.study.plot_data import PlotData
from ustack.study.plot_data import plot_data

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

EXTRA_MISSING = "ustack plot needs matplotlib: pip install 'ustack[plot]'"

COLOURS = {
    "new": "#1f5fa8",
    "retransmission": "#d62728",
    "probe": "#9467bd",
    "lost": "#7a7a7a",
    "ack": "#2ca02c",
    "window": "#bcbd22",
    "sack": "#8c564b",
    "marker": "#d62728",
}
_FIGSIZE = (9.0, 4.8)
_NAMED_MARKERS = 15  # more loss events than this: marks only, named by the legend
_STATE_COLOURS = (
    "#c6dbef", "#fdd0a2", "#c7e9c0", "#dadaeb", "#fcbba1", "#d9d9d9", "#fee391", "#bcbddc",
    "#a1d99b", "#fdae6b", "#9ecae1",
)  # fmt: skip


class PlotUnavailable(Exception):
    """matplotlib is not installed (the `plot` extra)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """Where a graph's time axis lies in its SVG (user units): the report
    page draws its highlight there."""

    left: float
    right: float
    top: float
    bottom: float
    t_min: float
    t_max: float


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable(EXTRA_MISSING) from None
    return matplotlib


def _figure() -> Figure:
    _matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=_FIGSIZE, layout="constrained")


# ---- the graphs ------------------------------------------------------------------------


def _time_sequence(ax: Axes, data: PlotData) -> None:
    ax.set_title(f"time-sequence: {data.sender}'s data ({data.title})", fontsize=10)
    # Each segment a vertical bar from its first byte to its end; lost ones
    # dashed. Retransmissions get a dot and lost ones a cross as well: on a
    # long transfer a bar of a few bytes is too short to see.
    bars: dict[str, tuple[str, float, Literal["solid", "dashed"], str | None]] = {
        "new": ("segment sent", 1.0, "solid", None),
        "retransmission": ("retransmission", 2.4, "solid", "o"),
        "probe": ("probe", 2.4, "solid", "o"),
        "lost": ("lost (fault injector)", 1.0, "dashed", "x"),
    }
    for kind, (label, width, style, mark) in bars.items():
        sent = [
            s for s in data.sent if (s.lost if kind == "lost" else s.kind == kind and not s.lost)
        ]
        if not sent:
            continue
        times = [s.time for s in sent]
        ax.vlines(
            times, [s.start for s in sent], [s.end for s in sent], colors=COLOURS[kind],
            linewidth=width, linestyles=style, label=label, gid=f"sent-{kind}",
        )  # fmt: skip
        if mark == "o":
            ys = [s.start for s in sent]
            ax.plot(times, ys, "o", color=COLOURS["retransmission"], markersize=3)
        elif mark == "x":
            ax.plot(times, [s.end for s in sent], "x", color=COLOURS["lost"], markersize=5)
    if data.acked:
        times = [a.time for a in data.acked]
        ax.step(
            times, [a.ack for a in data.acked], where="post", color=COLOURS["ack"],
            linewidth=1.0, label="ACK", gid="ack-line",
        )  # fmt: skip
        scaled = "" if data.window_scaled else " (unscaled)"
        ax.step(
            times, [a.edge for a in data.acked], where="post", color=COLOURS["window"],
            linewidth=1.0, label=f"ACK + receive window{scaled}", gid="window-line",
        )  # fmt: skip
    if data.sacked:
        ax.vlines(
            [s.time for s in data.sacked],
            [s.start for s in data.sacked],
            [s.end for s in data.sacked],
            colors=COLOURS["sack"],
            linewidth=2.5,
            alpha=0.6,
            label="SACK block",
            gid="sack-blocks",
        )
    _markers(ax, data, lambda marker: marker.seq)
    ax.set_xlabel("time since the connection's start (s)")
    ax.set_ylabel("relative sequence number (bytes)")
    if ax.get_legend_handles_labels()[0]:  # (a SYN and a RST alone draw nothing named)
        ax.legend(loc="upper left", fontsize=8)


def _markers(ax: Axes, data: PlotData, height: Callable[[Any], float]) -> None:
    """Loss-recovery events: a mark each, and its name when there are few."""
    if not data.markers:
        return
    shapes = {"RTO": "v", "TLP": "^", "fast retransmit": "D", "RACK lost": "s"}
    by_label: dict[str, list[Any]] = {}
    for marker in data.markers:
        by_label.setdefault(marker.label, []).append(marker)
    for label, markers in by_label.items():
        ax.plot(
            [m.time for m in markers],
            [height(m) for m in markers],
            shapes.get(label, "o"),
            color=COLOURS["marker"] if label != "recovery over" else COLOURS["ack"],
            markersize=6,
            fillstyle="none",
            linestyle="none",
            label=label,
            gid=f"marker-{label.replace(' ', '-')}",
        )
    if len(data.markers) > _NAMED_MARKERS:
        return  # (the legend names them: on a long transfer the names would be a smudge)
    # Names where they do not crowd: one per label within a 30th of the time axis.
    named: dict[str, float] = {}
    gap = max(data.duration, 1e-9) / 30
    for number, marker in enumerate(data.markers):
        if marker.time - named.get(marker.label, -gap) >= gap:
            named[marker.label] = marker.time
            ax.annotate(
                marker.label,
                (marker.time, height(marker)),
                textcoords="offset points",
                xytext=(4, -10 - 9 * (number % 3)),
                fontsize=7,
                color="#7f0000",
            )


def _retransmission_rug(ax: Axes, data: PlotData) -> None:
    """Retransmissions as red ticks along the bottom of a state graph."""
    times = [s.time for s in data.sent if s.kind == "retransmission"]
    if times:
        ax.plot(
            times,
            [0.0] * len(times),
            "|",
            color=COLOURS["retransmission"],
            markersize=14,
            label="retransmission",
            transform=ax.get_xaxis_transform(),
            clip_on=False,
            gid="retransmissions",
        )


def _no_tcb(ax: Axes) -> None:
    ax.text(
        0.5, 0.5, "this trace holds no TCB values (schema 4 segment records)",
        ha="center", va="center", transform=ax.transAxes,
    )  # fmt: skip


class _TcbGraph(NamedTuple):
    """A graph of the stack's own state over time: the TCB series it draws."""

    title: str
    series: dict[str, str]  # the tcb field -> its label
    unit: str
    scale: float = 1.0
    rug: bool = True  # retransmissions ticked along the bottom


_TCB_GRAPHS = {
    "cwnd": _TcbGraph(
        "ustack's congestion window",
        {"cwnd": "cwnd", "ssthresh": "ssthresh", "flight": "bytes in flight"},
        "bytes",
    ),
    "rtt": _TcbGraph(
        "ustack's RTT estimate, RFC 6298",
        {"srtt": "SRTT", "rttvar": "RTTVAR", "rto": "RTO"},
        "ms",
        scale=1000.0,
    ),
    "window": _TcbGraph(
        "windows, scaled",
        {"snd_wnd": "send window (the peer's offer)", "rcv_wnd": "receive window (ustack's)"},
        "bytes",
        rug=False,
    ),
}


def _tcb_graph(ax: Axes, data: PlotData, graph: _TcbGraph) -> None:
    ax.set_title(f"{graph.title} ({data.title})", fontsize=10)
    drawn = False
    for name, label in graph.series.items():
        xs, ys = data.series(name)
        if xs:
            ys = [y * graph.scale for y in ys]
            ax.step(xs, ys, where="post", label=label, gid=f"series-{name}")
            drawn = True
    if not drawn:
        _no_tcb(ax)
    if graph.rug:
        _retransmission_rug(ax, data)
    ax.set_xlabel("time since the connection's start (s)")
    ax.set_ylabel(graph.unit)
    ax.legend(loc="upper left", fontsize=8)


def _states(ax: Axes, data: PlotData) -> None:
    ax.set_title(f"states of both ends ({data.title})", fontsize=10)
    sides = ["ustack", "Linux"] if any(s.side == "Linux" for s in data.states) else ["ustack"]
    names = sorted({s.state for s in data.states})
    colour = {name: _STATE_COLOURS[i % len(_STATE_COLOURS)] for i, name in enumerate(names)}
    span = max(data.duration, 1e-6)
    for row, side in enumerate(sides):
        for s in (s for s in data.states if s.side == side):
            width = max(s.end - s.start, span / 500)
            ax.broken_barh(
                [(s.start, width)], (row - 0.4, 0.8), facecolors=colour[s.state],
                edgecolors="#44546a", linewidth=0.5, gid=f"state-{side}-{s.state}",
            )  # fmt: skip
            if width > span / 12:  # (the narrow ones are named by the legend)
                ax.text(
                    s.start + width / 2, row, s.state, ha="center", va="center", fontsize=7,
                    clip_on=True,
                )  # fmt: skip
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(facecolor=colour[name], edgecolor="#44546a", label=name) for name in names],
        loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=min(len(names), 5), fontsize=7,
    )  # fmt: skip
    ax.set_yticks(range(len(sides)), sides)
    ax.set_ylim(-0.6, len(sides) - 0.4)
    ax.set_xlim(0, span)
    ax.set_xlabel("time since the connection's start (s)")


DRAWERS: dict[str, Callable[[Axes, PlotData], None]] = {
    "time-sequence": _time_sequence,
    "cwnd": partial(_tcb_graph, graph=_TCB_GRAPHS["cwnd"]),
    "rtt": partial(_tcb_graph, graph=_TCB_GRAPHS["rtt"]),
    "window": partial(_tcb_graph, graph=_TCB_GRAPHS["window"]),
    "states": _states,
}
assert tuple(DRAWERS) == KINDS


def figure(data: PlotData, kind: str) -> Figure:
    """The matplotlib Figure of one graph."""
    fig = _figure()
    ax = fig.add_subplot()
    DRAWERS[kind](ax, data)
    ax.grid(True, linewidth=0.3, alpha=0.5)
    return fig


def render(data: PlotData, kind: str, fmt: str) -> bytes:
    """One graph as SVG (text kept as <text>, stable ids) or PNG bytes."""
    return render_with_frame(data, kind, fmt)[0]


def render_with_frame(data: PlotData, kind: str, fmt: str) -> tuple[bytes, Frame]:
    """The graph's bytes and where its time axis lies in it."""
    matplotlib = _matplotlib()
    rc = {"svg.fonttype": "none", "svg.hashsalt": "ustack", "path.simplify": True}
    with matplotlib.rc_context(rc):
        fig = figure(data, kind)
        out = io.BytesIO()
        fig.savefig(out, format=fmt, dpi=110, metadata=_metadata(fmt))
        ax = fig.axes[0]
        box = ax.get_position()  # in figure fractions, y up
        width, height = fig.get_size_inches() * (72 if fmt == "svg" else 110)
        t_min, t_max = ax.get_xlim()
    frame = Frame(
        box.x0 * width, box.x1 * width, (1 - box.y1) * height, (1 - box.y0) * height,
        float(t_min), float(t_max),
    )  # fmt: skip
    return out.getvalue(), frame


def _metadata(fmt: str) -> dict[str, Any]:
    # No date in the file: the same trace gives the same bytes.
    return {"Date": None} if fmt == "svg" else {}


# ---- command line ----------------------------------------------------------------------


def add_plot_arguments(parser: argparse.ArgumentParser) -> None:
    """`ustack plot TRACE [--conn ID] [--kind K] [-o FILE.svg|.png|DIR]`."""
    load.add_trace_arguments(parser)
    parser.add_argument("--conn", type=int, help="the connection to draw (see the listing)")
    parser.add_argument(
        "--kind",
        choices=[*KINDS, "all"],
        default="time-sequence",
        help="the graph (default time-sequence); all: one file per graph into -o's directory",
    )
    parser.add_argument(
        "--format",
        choices=("svg", "png"),
        help="default from -o's suffix, else svg",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="FILE.svg or FILE.png (default: conn-N-KIND.svg here); a directory with --kind all",
    )


def _targets(args: argparse.Namespace, conn: int) -> list[tuple[str, Path, str]]:
    """(kind, path, format) of each file to write."""
    suffix = args.output.suffix.lower().lstrip(".") if args.output else ""
    fmt = args.format or (suffix if suffix in ("svg", "png") else "svg")
    if args.kind == "all":
        folder = args.output or Path(".")
        return [(kind, folder / f"conn-{conn}-{kind}.{fmt}", fmt) for kind in KINDS]
    path = args.output or Path(f"conn-{conn}-{args.kind}.{fmt}")
    return [(args.kind, path, fmt)]


def connection_plot_data(summary: load.ConnectionSummary) -> tuple[list[load.Record], PlotData]:
    """A chosen connection's events (faults folded) and its graphs' data."""
    events = load.as_records(summary.events)
    title = f"connection {summary.conn}, {summary.peer} <-> {summary.us}"
    return events, plot_data(events, summary.conn, title)


def plot_command(args: argparse.Namespace) -> int:
    try:
        _matplotlib()
    except PlotUnavailable as exc:
        print(f"ustack: error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = load.read_connection(args.trace, args.conn, args.max_line_bytes)
    except load.TraceError as exc:
        return load.report_error(exc)
    _events, data = connection_plot_data(summary)
    for kind, path, fmt in _targets(args, summary.conn):
        try:
            if args.kind == "all":
                path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(render(data, kind, fmt))
        except OSError as exc:
            print(f"ustack: error: {path}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(path)
    return 0
