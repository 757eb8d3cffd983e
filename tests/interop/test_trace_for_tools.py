"""The trace for other tools, from the real daemon against real Linux tools:
the pcapng with ustack's reasons read by tshark, the JSONL trace validated
against docs/trace-schema.json, and its qlog export.

One daemon, traced to JSON lines and pcapng, its first FIN dropped by the
fault injector: nc reads daytime (ustack closes first; the FIN goes again
on RTO), curl asks a closed port (RST). tshark must show, beside the frames,
the SYN's state change with its rule, the lost FIN's fault, the
retransmission's timeout decision with its rule and the RST's rule, and see
exactly the TCP segments the JSON trace tells of.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import jsonschema

from ustack import cli
from ustack.linux.lab import LINUX_ADDRESS
from ustack.linux.lab import STACK_ADDRESS
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon

ROOT = Path(__file__).resolve().parents[2]


def tshark_rows(path: Path, display: str, *fields: str) -> list[list[str]]:
    assert shutil.which("tshark"), "tshark is needed (Debian: apt-get install tshark)"
    args = ["tshark", "-n", "-r", str(path), "-Y", display, "-T", "fields",
            "-E", "separator=\t", "-E", "occurrence=a", "-E", "aggregator=|"]  # fmt: skip
    for name in fields:
        args += ["-e", name]
    result = subprocess.run(args, capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return [line.split("\t") for line in result.stdout.decode().splitlines()]


def test_pcapng_schema_and_qlog_of_a_real_session(ns: Netns, tmp_path: Path) -> None:
    pcapng = tmp_path / "t.pcapng"
    daemon = UstackDaemon.start(
        ns, tmp_path, "--trace", str(pcapng), "--fault", "drop:dir=out,flags=FIN,count=1"
    )
    try:
        daytime = ns.run("nc", "-w", "10", STACK_ADDRESS, "13")
        assert daytime.stdout.endswith(b"-UTC\r\n")
        refused = ns.run("curl", "-sS", "--max-time", "5", f"http://{STACK_ADDRESS}:81/")
        assert refused.returncode == 7  # couldn't connect: our RST
        daemon.wait_until_no_connections()
    finally:
        assert daemon.stop() == 0
    records = daemon.trace_events()
    segments = [r for r in records if r["type"] == "segment"]

    # tshark: the same TCP segments, in order, each with its reasons.
    frames = tshark_rows(pcapng, "tcp", "ip.src", "tcp.seq_raw", "tcp.flags.str", "frame.comment")
    assert [(f[0], int(f[1])) for f in frames] == [
        (LINUX_ADDRESS if s["direction"] == "in" else STACK_ADDRESS, s["seq"]) for s in segments
    ]
    comments = [frame[3].split("|") for frame in frames]
    for segment, lines in zip(segments, comments, strict=True):
        conn = "-" if segment["conn"] is None else segment["conn"]
        assert lines[0].startswith(f"ustack #{conn} {segment['direction']}: "), lines

    syn = next(
        lines for frame, lines in zip(frames, comments, strict=True) if frame[2].endswith("S·")
    )
    assert any("state LISTEN -> SYN_RECEIVED (RCV_SYN; RFC 9293 3.10.7.2" in c for c in syn), syn
    fins = [lines for frame, lines in zip(frames, comments, strict=True) if "F" in frame[2]]
    ours = [lines for lines in fins if " out: " in lines[0]]
    assert any(line.startswith("#1 fault drop out") for line in ours[0]), ours[0]
    assert "(retransmission)" in ours[1][0]
    assert any("retransmission timeout #1" in c and "(RFC 6298 5.4-5.6)" in c for c in ours[1])
    (rst,) = [lines for frame, lines in zip(frames, comments, strict=True) if "R" in frame[2]]
    assert rst == ["ustack #- out: CLOSED (RST: no connection; RFC 9293 3.10.7.1)"]

    # The JSONL trace against its schema.
    schema = json.loads((ROOT / "docs" / "trace-schema.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    for record in records:
        assert validator.is_valid(record), (
            record,
            [e.message for e in validator.iter_errors(record)],
        )

    # ... and as qlog: one record per event, and each segment a packet event.
    qlog = tmp_path / "t.sqlog"
    assert cli.main(["export", str(daemon.trace), "--qlog", "-o", str(qlog)]) == 0
    header, *events = [json.loads(chunk) for chunk in qlog.read_text().split("\x1e")[1:]]
    assert header["qlog_format"] == "JSON-SEQ"
    packets = [e for e in events if e["name"].startswith("transport:packet_")]
    assert [p["data"]["header"]["seq_raw"] for p in packets if "dropped" not in p["name"]] == [
        s["seq"] for s in segments
    ]
