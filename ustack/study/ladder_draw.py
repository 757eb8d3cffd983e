"""How a ladder is drawn: as text for a terminal, as SVG for a page, as
Mermaid for GitHub. What it shows (its rows) is `ustack.study.ladder`'s.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

if TYPE_CHECKING:
    from ustack.study.ladder import Ladder
    from ustack.study.ladder import Row


# ---- ASCII -----------------------------------------------------------------------------

_MIN_SPAN = 50  # with the columns around it, a 100-column terminal


def _ascii_room(row: Row) -> int:
    """Columns an arrow needs besides its label: its ends and a few dashes."""
    return 13 if row.direction == "in" and row.lost else 11


def _ascii_arrow(row: Row, span: int) -> str:
    label = f" {row.label} "
    if row.direction == "in":
        tail = "X   " if row.lost else ">"
        return "-----" + label + "-" * (span - 5 - len(label) - len(tail)) + tail
    head = "  X--" if row.lost else "<----"
    return head + label + "-" * (span - 5 - len(label))


def draw_ascii(ladder: Ladder) -> str:
    """The ladder as text for a terminal (100 columns for usual labels)."""
    span = max([_MIN_SPAN] + [len(r.label) + _ascii_room(r) for r in ladder.rows if r.label])
    blank = " " * span
    # The margins are as wide as their widest entry, to leave the arrows room.
    times = [f"{row.time_ms:.3f}" for row in ladder.rows]
    time_w = max(len("time ms"), *map(len, times))
    peers = [ladder.peer_start] + [row.peer_state for row in ladder.rows]
    peer_w = max(len(ladder.peer_name), *map(len, peers))

    def line(time: str, peer: str, middle: str, right: str) -> str:
        return f"{time:>{time_w}} {peer:>{peer_w}} |{middle}|  {right}".rstrip()

    out = [
        ladder.title,
        ladder.windows,
        "",
        # Each name stands on its lifeline: the peer's ends on it, "ustack" starts on it.
        f"{'time ms':>{time_w}} {ladder.peer_name:>{peer_w + 1}}{'':{span}}ustack",
        line("", ladder.peer_start, blank, ladder.ustack_start),
    ]
    last_time: float | None = None
    for row, time in zip(ladder.rows, times, strict=True):
        # Notes and state rows at the time of the row above leave it blank.
        if row.kind != "arrow" and row.time_ms == last_time:
            time = ""
        last_time = row.time_ms
        if row.kind == "arrow":
            out.append(line(time, row.peer_state, _ascii_arrow(row, span), row.ustack_state))
        elif row.kind == "note":
            out.append(line(time, "", blank, f"({row.note})"))
        else:
            out.append(line(time, row.peer_state, blank, row.ustack_state))
    return "\n".join(out) + "\n"


# ---- SVG -------------------------------------------------------------------------------

_CHAR_PX = 7.2  # a 12 px monospace glyph, near enough for layout
_ROW_PX = 38
_SLANT_PX = 16  # how far an arrow drops on its way: time passes in flight
_COLOURS = {"in": "#1f5fa8", "out": "#b5541b", "rst": "#c62828", "lost": "#7a7a7a"}


def draw_svg(ladder: Ladder) -> str:
    """The ladder as a self-contained SVG: no fonts, scripts or links outside."""
    longest = max((len(r.label) for r in ladder.rows if r.kind == "arrow"), default=0)
    peer_x = 220.0
    span = max(460.0, longest * _CHAR_PX + 60)
    us_x = peer_x + span
    right = max((len(r.ustack_state or r.note) + 2 for r in ladder.rows), default=12)
    width = us_x + 24 + max(right, 14) * _CHAR_PX
    top = 124.0
    height = top + len(ladder.rows) * _ROW_PX + 40

    parts: list[str] = []
    add = parts.append
    add(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="monospace" font-size="12">'
    )
    add(f"<title>{escape(ladder.title)}</title>")
    add("<defs>")
    for name, colour in _COLOURS.items():
        add(
            f'<marker id="head-{name}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" '
            f'markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
            f'fill="{colour}"/></marker>'
        )
    add("</defs>")
    add(f'<rect width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>')
    add(_svg_text(12, 22, ladder.title, weight="bold"))
    add(_svg_text(12, 110, ladder.windows, colour="#555555"))
    for x, name in ((peer_x, ladder.peer_name), (us_x, "ustack")):
        add(
            f'<rect x="{x - 60:.1f}" y="38" width="120" height="26" rx="4" fill="#eef2f7" '
            f'stroke="#44546a"/>'
        )
        add(_svg_text(x, 55, name, anchor="middle", weight="bold"))
        add(
            f'<line x1="{x:.1f}" y1="64" x2="{x:.1f}" y2="{height - 16:.1f}" stroke="#44546a" '
            f'stroke-dasharray="4 3"/>'
        )
    add(_svg_text(80, 90, "time ms", anchor="end", colour="#555555"))
    if ladder.peer_start:
        add(_svg_text(peer_x - 8, 90, ladder.peer_start, anchor="end", weight="bold"))
    add(_svg_text(us_x + 8, 90, ladder.ustack_start, weight="bold"))

    last_time: float | None = None
    for index, row in enumerate(ladder.rows):
        y = top + index * _ROW_PX
        if row.kind == "arrow" or row.time_ms != last_time:
            add(_svg_text(80, y + 4, f"{row.time_ms:.3f}", anchor="end", colour="#555555"))
        last_time = row.time_ms
        # A state goes where it changed: the sender's beside the arrow's
        # start (it sent in that state), the receiver's beside its head.
        peer_y = us_y = y
        if row.kind == "arrow":
            add(_svg_arrow(row, peer_x, us_x, y))
            if row.direction == "in":
                us_y += _SLANT_PX
            else:
                peer_y += _SLANT_PX
        if row.peer_state:
            add(_svg_text(peer_x - 8, peer_y + 4, row.peer_state, anchor="end", weight="bold"))
        if row.ustack_state:
            add(_svg_text(us_x + 8, us_y + 4, row.ustack_state, weight="bold"))
        if row.note:
            add(_svg_text(us_x + 8, y + 4, row.note, colour="#666666", italic=True))
    add("</svg>")
    return "\n".join(parts) + "\n"


def _svg_text(
    x: float,
    y: float,
    text: str,
    anchor: str = "start",
    colour: str = "#1a1a1a",
    weight: str = "normal",
    italic: bool = False,
) -> str:
    style = ' font-style="italic"' if italic else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{colour}" '
        f'font-weight="{weight}"{style}>{escape(text)}</text>'
    )


def _svg_arrow(row: Row, peer_x: float, us_x: float, y: float) -> str:
    x1, x2 = (peer_x, us_x) if row.direction == "in" else (us_x, peer_x)
    y2 = y + _SLANT_PX
    colour_key = "lost" if row.lost else ("rst" if "R" in row.flags else row.direction)
    colour = _COLOURS[colour_key]
    # A lost segment's line stops three quarters across; its label centres on what is drawn.
    reach = 0.75 if row.lost else 1.0
    end_x, end_y = x1 + (x2 - x1) * reach, y + (y2 - y) * reach
    mid_x, mid_y = (x1 + end_x) / 2, (y + end_y) / 2
    # The label runs along its arrow, just above it, read left to right.
    angle = math.degrees(math.atan2(y2 - y, abs(x2 - x1))) * (1 if x2 > x1 else -1)
    label = (
        f'<g transform="rotate({angle:.2f} {mid_x:.1f} {mid_y:.1f})">'
        f"{_svg_text(mid_x, mid_y - 5, row.label, anchor='middle', colour=colour)}</g>"
    )
    if not row.lost:
        return (
            f'<g><line x1="{x1:.1f}" y1="{y:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" '
            f'stroke-width="1.6" marker-end="url(#head-{colour_key})"/>{label}</g>'
        )
    cross = " ".join(
        f'<line x1="{end_x - 6:.1f}" y1="{end_y + dy:.1f}" x2="{end_x + 6:.1f}" '
        f'y2="{end_y - dy:.1f}" stroke="{colour}" stroke-width="2"/>'
        for dy in (-6, 6)
    )
    return (
        f'<g><line x1="{x1:.1f}" y1="{y:.1f}" x2="{end_x:.1f}" y2="{end_y:.1f}" '
        f'stroke="{colour}" stroke-width="1.6" stroke-dasharray="6 3"/>{cross}{label}</g>'
    )


# ---- Mermaid ---------------------------------------------------------------------------

# Mermaid reads ';' as a line break and '#' as the start of an entity code.
_MERMAID_ESCAPES = str.maketrans({"#": "#35;", ";": "#59;"})


def draw_mermaid(ladder: Ladder) -> str:
    """The ladder as a Mermaid sequenceDiagram (GitHub renders it in Markdown)."""

    def clean(text: str) -> str:
        return text.translate(_MERMAID_ESCAPES)

    out = [
        "sequenceDiagram",
        f"    participant P as {ladder.peer_name}",
        "    participant U as ustack",
        # No "<->" here: Mermaid passes note text through an HTML sanitizer.
        f"    Note over P,U: connection {ladder.conn}, {ladder.peer} - {ladder.us}",
        f"    Note over P,U: {clean(ladder.windows)}",
    ]
    if ladder.peer_start:
        out.append(f"    Note over P: {ladder.peer_start}")
    if ladder.ustack_start:
        out.append(f"    Note over U: {ladder.ustack_start}")
    for row in ladder.rows:
        if row.kind == "arrow":
            ends = "P", "U"
            if row.direction == "out":
                ends = "U", "P"
            arrow = "-x" if row.lost else "->>"
            out.append(f"    {ends[0]}{arrow}{ends[1]}: {row.time_ms:.3f} ms {clean(row.label)}")
        elif row.kind == "note":
            out.append(f"    Note over U: {clean(row.note)}")
        if row.peer_state:
            out.append(f"    Note over P: {row.peer_state}")
        if row.ustack_state:
            out.append(f"    Note over U: {row.ustack_state}")
    return "\n".join(out) + "\n"
