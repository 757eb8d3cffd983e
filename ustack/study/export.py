"""`ustack export TRACE --qlog`: a JSONL trace in qlog's JSON-SEQ shape, so
that generic qlog tooling (qvis, and scripts written for QUIC's qlog) can at
least load a TCP connection's life.

The shape is qlog's main schema, version 0.3 (draft-ietf-quic-qlog-main-
schema; JSON-SEQ framing, RFC 7464): every record starts with the record
separator 0x1E and ends with a line feed; the first record is the header
(`qlog_format` "JSON-SEQ", `qlog_version` "0.3", one `trace` with its
`vantage_point` and `common_fields`), each other one an event with `time`
(milliseconds since `common_fields.reference_time`), `name` and `data`.
qlog defines no TCP events, so the names are the nearest of QUIC's
(`transport:packet_sent`, `recovery:metrics_updated`, ...) with TCP's fields,
and ours where there is none (`ustack:decision`). docs/trace-format.md,
"qlog export", lists every event.

The trace is read a line at a time (as the other readers do): memory follows
the number of connections, not the file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from typing import Any

from ustack import __version__
from ustack.study.load import Record
from ustack.study.load import TraceError
from ustack.study.load import add_trace_arguments
from ustack.study.load import open_trace
from ustack.study.load import report_error
from ustack.trace.records import TRACE_SCHEMA_VERSION
from ustack.trace.vocabulary import TimerAction
from ustack.trace.vocabulary import TimerKind

QLOG_VERSION = "0.3"
RECORD_SEPARATOR = "\x1e"  # RFC 7464 2: each JSON text is preceded by RS, ended by LF

# The tcb's fields as recovery:metrics_updated names them (qlog's QUIC names;
# times in milliseconds), then ours that qlog has no name for.
_METRICS = (
    ("cwnd", "congestion_window", 1),
    ("ssthresh", "ssthresh", 1),
    ("flight", "bytes_in_flight", 1),
    ("srtt", "smoothed_rtt", 1000),
    ("rttvar", "rtt_variance", 1000),
    ("rto", "rto", 1000),
    ("snd_wnd", "snd_wnd", 1),
    ("rcv_wnd", "rcv_wnd", 1),
)
# The timers qlog's loss_timer_updated stands for; the others are ustack:timer_updated.
_LOSS_TIMERS = frozenset({TimerKind.RETRANSMIT, TimerKind.PROBE, TimerKind.REORDER})
_TIMER_EVENT_TYPES = {TimerAction.SET: "set", TimerAction.FIRED: "expired",
                      TimerAction.CANCELLED: "cancelled"}  # fmt: skip


def qlog_header(title: str, vantage: str, reference_ms: float) -> dict[str, Any]:
    return {
        "qlog_version": QLOG_VERSION,
        "qlog_format": "JSON-SEQ",
        "title": title,
        "description": f"ustack {__version__}: a TCP trace (schema {TRACE_SCHEMA_VERSION}) "
        "in qlog's shape; TCP segments as transport:packet_*",
        "trace": {
            "title": title,
            "vantage_point": {"name": "ustack", "type": vantage},
            "common_fields": {
                "protocol_type": ["TCP"],
                "time_format": "relative",
                # The daemon's monotonic clock (the trace's `time`), in ms.
                "reference_time": reference_ms,
            },
        },
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 6)


class QlogEvents:
    """Trace records to qlog events, one connection's metrics remembered so
    that metrics_updated carries only what changed (as qlog asks)."""

    def __init__(self, reference: float) -> None:
        self._reference = reference
        self._metrics: dict[int, dict[str, float]] = {}

    def events(self, record: Record) -> Iterator[dict[str, Any]]:
        kind = record["type"]
        base: dict[str, Any] = {"time": _ms(record["time"] - self._reference)}
        conn = record.get("conn")
        if conn is not None:
            base["group_id"] = str(conn)
        if kind == "segment":
            yield {**base, **self._segment(record)}
            metrics = self._changed_metrics(conn, record.get("tcb"))
            if metrics:
                yield {**base, "name": "recovery:metrics_updated", "data": metrics}
        elif kind == "state":
            data = {"old": record["old"], "new": record["new"], "trigger": record["event"],
                    "rule": record["rule"], "why": record["why"]}  # fmt: skip
            yield {**base, "name": "connectivity:connection_state_updated", "data": data}
        elif kind == "decision":
            data = {"kind": record.get("kind", ""), "what": record["what"], "rule": record["rule"]}
            yield {**base, "name": "ustack:decision", "data": data}
        elif kind == "timer":
            yield {**base, **self._timer(record)}
        elif kind == "connection":
            yield {**base, "name": "connectivity:connection_started", "data": _started(record)}
        elif kind == "drop":
            data = {"trigger": record["reason"], "layer": record["layer"],
                    "details": record.get("summary", "")}  # fmt: skip
            yield {**base, "name": "transport:packet_dropped", "data": data}
        elif kind == "peer_state":
            data = {"old": record["old"], "new": record["new"],
                    "peer": f"{record['remote']}:{record['remote_port']}"}  # fmt: skip
            yield {**base, "name": "ustack:peer_state_updated", "data": data}
        elif kind == "fault":
            data = {name: record[name] for name in ("action", "direction", "rule", "flags",
                    "rel_seq", "rel_ack", "length") if name in record}  # fmt: skip
            yield {**base, "name": "ustack:fault", "data": data}

    def _segment(self, record: Record) -> dict[str, Any]:
        name = (
            "transport:packet_sent" if record["direction"] == "out" else "transport:packet_received"
        )
        header = {
            "flags": record["flags"],
            "seq": record["rel_seq"],
            "ack": record["rel_ack"],
            "window": record["window"],
            "length": record["length"],
            "seq_raw": record["seq"],
            "ack_raw": record["ack"],
            "src_port": record["local_port" if record["direction"] == "out" else "remote_port"],
            "dst_port": record["remote_port" if record["direction"] == "out" else "local_port"],
        }
        data: dict[str, Any] = {"header": header, "raw": {"payload_length": record["length"]}}
        if record.get("options"):
            data["options"] = record["options"]
        if record.get("note"):
            data["trigger"] = record["note"]
        data["state"] = record["state_after"]
        if record.get("ecn"):
            data["ecn"] = record["ecn"]
        return {"name": name, "data": data}

    def _changed_metrics(self, conn: int | None, tcb: object) -> dict[str, float]:
        if conn is None or not isinstance(tcb, dict):
            return {}
        last = self._metrics.setdefault(conn, {})
        changed = {}
        for field, name, scale in _METRICS:
            if field in tcb and last.get(name) != (value := round(tcb[field] * scale, 6)):
                changed[name] = last[name] = value
        return changed

    def _timer(self, record: Record) -> dict[str, Any]:
        data: dict[str, Any] = {"timer_type": record["timer"]}
        deadline = record.get("deadline")
        if record["timer"] in _LOSS_TIMERS:
            data["event_type"] = _TIMER_EVENT_TYPES.get(record["action"], record["action"])
            if deadline is not None:
                data["delta"] = _ms(deadline - record["time"])
            return {"name": "recovery:loss_timer_updated", "data": data}
        data["action"] = record["action"]
        if deadline is not None:
            data["delta"] = _ms(deadline - record["time"])
        return {"name": "ustack:timer_updated", "data": data}


def _started(record: Record) -> dict[str, Any]:
    """connectivity:connection_started, from the initiator's side as qlog has it."""
    ours = (record["local"], record["local_port"])
    theirs = (record["remote"], record["remote_port"])
    (src, src_port), (dst, dst_port) = (theirs, ours) if record["passive"] else (ours, theirs)
    return {"ip_version": "ipv6" if ":" in src else "ipv4", "src_ip": src, "dst_ip": dst,
            "protocol": "TCP", "src_port": src_port, "dst_port": dst_port,
            "passive": record["passive"]}  # fmt: skip


def write_qlog(records: Iterable[Record], out: IO[str], title: str, conn: int | None) -> int:
    """The records (of `conn`, or all) as qlog JSON-SEQ on `out`; how many
    events were written. The header waits for the first record: its time is
    the reference, and a single connection's open says the vantage point."""
    converter: QlogEvents | None = None
    count = 0
    for record in records:
        if conn is not None and record.get("conn") != conn:
            continue
        if converter is None:
            vantage = "unknown"
            if record["type"] == "connection" and conn is not None:
                vantage = "server" if record["passive"] else "client"
            out.write(_seq(qlog_header(title, vantage, _ms(record["time"]))))
            converter = QlogEvents(record["time"])
        for event in converter.events(record):
            out.write(_seq(event))
            count += 1
    if converter is None:
        raise TraceError(f"{title}: no events" + (f" of connection {conn}" if conn else ""))
    return count


def _seq(record: dict[str, Any]) -> str:
    return RECORD_SEPARATOR + json.dumps(record, separators=(",", ":")) + "\n"


# ---- command line ----------------------------------------------------------------------


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """`ustack export TRACE --qlog [-o FILE] [--conn ID] [--max-line-bytes N]`."""
    add_trace_arguments(parser)
    formats = parser.add_mutually_exclusive_group(required=True)
    formats.add_argument(
        "--qlog",
        action="store_true",
        help="qlog JSON-SEQ (.sqlog), qlog 0.3 main schema framing with TCP events",
    )
    parser.add_argument("--conn", type=int, help="only this connection (default: all)")
    parser.add_argument("-o", "--output", type=Path, help="write here (default: stdout)")


def export_command(args: argparse.Namespace) -> int:
    title = str(args.trace)
    try:
        with open_trace(args.trace, args.max_line_bytes) as trace:
            if args.output is None:
                write_qlog(trace, sys.stdout, title, args.conn)
            else:
                try:
                    with open(args.output, "w", encoding="utf-8") as out:
                        write_qlog(trace, out, title, args.conn)
                except OSError as exc:
                    raise TraceError(f"{args.output}: {exc.strerror or exc}") from None
            if trace.skipped:
                print(f"ustack: warning: {trace.skipped_note()}", file=sys.stderr)
    except TraceError as exc:
        return report_error(exc)
    return 0
