"""The daemon's trace outputs against a real client: the same connection as
text, as JSON lines and as a pcap, and tshark (Wireshark's dissector, an
independent reader) must see in the pcap exactly the segments the JSON trace
tells of, one to one, in order. With --trace-port / --trace-host, other
connections stay out of every output.

tshark is required, not optional: CI installs it (a missing tshark fails here).
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ustack.linux.lab import LINUX_ADDRESS
from ustack.linux.lab import STACK_ADDRESS
from ustack.linux.lab import DaemonFailed
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon

HANDSHAKE_AND_CLOSE = [
    ("LISTEN", "SYN_RECEIVED"),
    ("SYN_RECEIVED", "ESTABLISHED"),
    ("ESTABLISHED", "CLOSE_WAIT"),  # curl closes first
    ("CLOSE_WAIT", "LAST_ACK"),
    ("LAST_ACK", "CLOSED"),
]
# tshark's tcp.flags.str letters (e.g. "·······AP···") as tcpdump writes them, in our order.
TSHARK_FLAGS = (("S", "S"), ("F", "F"), ("R", "R"), ("P", "P"), ("A", "."), ("U", "U"),
                ("E", "E"), ("C", "W"))  # fmt: skip
TSHARK_FIELDS = ("ip.src", "ip.dst", "tcp.srcport", "tcp.dstport", "tcp.flags.str",
                 "tcp.seq_raw", "tcp.ack_raw", "tcp.len", "tcp.window_size_value")  # fmt: skip
TEXT_SEGMENT = re.compile(
    r"#(?P<conn>\d+|-) +(?P<direction>in|out) +\S+ [<>] \S+ +(?P<flags>\S+) +seq (?P<seq>\d+)"
    r" ack (?P<ack>\d+) win (?P<window>\d+) len (?P<length>\d+)"
)


@dataclass(frozen=True)
class Captured:
    """One TCP packet of the pcap, as tshark dissected it."""

    src: str
    dst: str
    src_port: int
    dst_port: int
    flags: str
    seq: int
    ack: int
    length: int
    window: int


def tshark_flags(text: str) -> str:
    return "".join(ours for letter, ours in TSHARK_FLAGS if letter in text) or "none"


def tshark(pcap: Path) -> list[Captured]:
    """The TCP packets of a pcap file, read by tshark."""
    assert shutil.which("tshark"), "tshark is needed (Debian: apt-get install tshark)"
    fields = [arg for name in TSHARK_FIELDS for arg in ("-e", name)]
    result = subprocess.run(
        ["tshark", "-n", "-r", str(pcap), "-Y", "tcp", "-T", "fields", "-E", "separator=\t",
         *fields],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    captured = []
    for line in result.stdout.decode().splitlines():
        src, dst, sport, dport, flags, seq, ack, length, window = line.split("\t")
        captured.append(
            Captured(src, dst, int(sport), int(dport), tshark_flags(flags), int(seq), int(ack),
                     int(length), int(window))
        )  # fmt: skip
    return captured


# What the kernel sends down a TUN with IPv6 on it by itself: router
# solicitations and the rest of neighbour discovery, MLD reports (ICMPv6
# types 130-143, RFC 4861, RFC 3810). The pcap holds them like any packet.
KERNEL_IPV6_CHATTER = "icmpv6.type >= 130 && icmpv6.type <= 143"


def tshark_frame_count(pcap: Path) -> int:
    """The frames of a pcap, but for the kernel's own IPv6 chatter."""
    result = subprocess.run(
        ["tshark", "-n", "-r", str(pcap), "-Y", f"!({KERNEL_IPV6_CHATTER})",
         "-T", "fields", "-e", "frame.number"],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    return len(result.stdout.splitlines())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert records[0] == {"type": "header", "schema": 5}
    assert all("type" in r and "time" in r for r in records[1:])
    return records[1:]


def segment_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["type"] == "segment"]


def assert_pcap_matches_jsonl(captured: list[Captured], records: list[dict[str, Any]]) -> None:
    """One to one, in order: each TCP packet is the segment event at its place."""
    events = segment_records(records)
    assert len(captured) == len(events), (captured, events)
    for i, (packet, event) in enumerate(zip(captured, events, strict=True)):
        where = f"segment {i}: {packet} vs {event}"
        local = (event["local"], event["local_port"])
        remote = (event["remote"], event["remote_port"])
        inbound = event["direction"] == "in"
        assert ((packet.src, packet.src_port), (packet.dst, packet.dst_port)) == (
            (remote, local) if inbound else (local, remote)
        ), where
        assert packet.src == (LINUX_ADDRESS if inbound else STACK_ADDRESS), where
        assert packet.flags == event["flags"], where
        assert (packet.seq, packet.ack) == (event["seq"], event["ack"]), where
        assert packet.length == event["length"], where
        assert packet.window == event["window"], where


def text_state_changes(lines: list[str], conn: int) -> list[tuple[str, str]]:
    pattern = re.compile(rf"#{conn} +state (\S+) -> (\S+)  \(")
    return [(m[1], m[2]) for m in map(pattern.search, lines) if m]


def assert_text_matches_jsonl(lines: list[str], records: list[dict[str, Any]]) -> None:
    """The text trace tells the same segments: relative numbers, flags, lengths."""
    text = [m.groupdict() for m in map(TEXT_SEGMENT.search, lines) if m]
    events = segment_records(records)
    assert len(text) == len(events)
    for row, event in zip(text, events, strict=True):
        conn = "-" if event["conn"] is None else str(event["conn"])
        assert row == {
            "conn": conn, "direction": event["direction"], "flags": event["flags"],
            "seq": str(event["rel_seq"]), "ack": str(event["rel_ack"]),
            "window": str(event["window"]), "length": str(event["length"]),
        }  # fmt: skip


def log_tail(log: str, lines: int = 25) -> str:
    """The end of a daemon log, without pyroute2's netlink chatter."""
    return "\n".join([line for line in log.splitlines() if "pyroute2" not in line][-lines:])


def curl(ns: Netns) -> None:
    result = ns.run("curl", "-sS", "--max-time", "10", f"http://{STACK_ADDRESS}/", check=True)
    assert b"Hello from ustack" in result.stdout


@contextmanager
def serving(
    ns: Netns, workdir: Path, *extra: str, clean_log: bool = True
) -> Iterator[UstackDaemon]:
    """The daemon for the block; afterwards it has exited with 0 and its
    trace files are closed (complete)."""
    daemon = UstackDaemon.start(ns, workdir, *extra)
    try:
        yield daemon
    finally:
        code = daemon.stop()
    assert code == 0, log_tail(daemon.log_text())
    if clean_log:
        assert "Traceback" not in daemon.log_text(), log_tail(daemon.log_text())


FORMATS_FROM_NAMES = {"text": "T.txt", "jsonl": "T.jsonl", "pcap": "T.pcap"}


def trace_files(directory: Path, names: dict[str, str]) -> dict[str, Path]:
    """Each trace format's file in `directory`, by format."""
    return {fmt: directory / name for fmt, name in names.items()}


def trace_arguments(files: dict[str, Path], explicit: bool) -> list[str]:
    """--trace for each file; with `explicit`, a --trace-format for each too.
    --trace-format goes with the --trace of the same rank, and the harness
    gives the first --trace (its own trace.jsonl): its format comes first."""
    args = [arg for path in files.values() for arg in ("--trace", str(path))]
    if explicit:
        args += ["--trace-format", "jsonl"]
        args += [arg for fmt in files for arg in ("--trace-format", fmt)]
    return args


@contextmanager
def serving_traced(
    ns: Netns, workdir: Path, *extra: str, clean_log: bool = True
) -> Iterator[tuple[UstackDaemon, dict[str, Path]]]:
    """`serving` with a trace file of each format (FORMATS_FROM_NAMES), told
    by its name; yields the daemon and the files, by format."""
    files = trace_files(workdir, FORMATS_FROM_NAMES)
    arguments = trace_arguments(files, explicit=False)
    with serving(ns, workdir, *arguments, *extra, clean_log=clean_log) as daemon:
        yield daemon, files


@pytest.mark.parametrize(
    ("names", "explicit"),
    [
        pytest.param(FORMATS_FROM_NAMES, False, id="formats-from-names"),
        # Names that suggest another format: the explicit one must win.
        pytest.param({"pcap": "capture.txt", "jsonl": "events.pcap", "text": "human.jsonl"},
                     True, id="explicit-trace-format"),
    ],
)  # fmt: skip
def test_text_jsonl_and_pcap_of_one_curl(
    ns: Netns, tmp_path: Path, names: dict[str, str], explicit: bool
) -> None:
    files = trace_files(tmp_path, names)
    with serving(ns, tmp_path, *trace_arguments(files, explicit)) as daemon:
        curl(ns)
        daemon.wait_until_no_connections()
        stats = daemon.stats()

    records = read_jsonl(files["jsonl"])
    # Every output saw every event: the harness's own JSONL trace is the same file.
    assert files["jsonl"].read_bytes() == daemon.trace.read_bytes()
    (connection,) = [r for r in records if r["type"] == "connection"]
    conn = connection["conn"]
    assert (connection["local"], connection["local_port"]) == (STACK_ADDRESS, 80)
    assert connection["remote"] == LINUX_ADDRESS and connection["passive"] is True
    segments = segment_records(records)
    assert {r["conn"] for r in segments} == {conn}
    assert all(r["tuple"] == f"{STACK_ADDRESS}:80 {LINUX_ADDRESS}:{connection['remote_port']}"
               for r in records if r.get("conn") == conn)  # fmt: skip
    assert sum(r["direction"] == "in" for r in segments) == stats["tcp.in"]
    assert sum(r["direction"] == "out" for r in segments) == stats["tcp.out"]
    assert (segments[0]["flags"], segments[0]["rel_seq"]) == ("S", 0)
    assert (segments[1]["flags"], segments[1]["rel_seq"], segments[1]["rel_ack"]) == ("S.", 0, 1)
    first_data = next(r for r in segments if r["length"])
    assert (first_data["direction"], first_data["rel_seq"]) == ("in", 1)  # the request

    assert files["pcap"].read_bytes()[:4] == bytes.fromhex("d4c3b2a1")
    captured = tshark(files["pcap"])
    assert tshark_frame_count(files["pcap"]) == len(captured)  # nothing but TCP went by
    assert_pcap_matches_jsonl(captured, records)

    lines = files["text"].read_text(encoding="utf-8").splitlines()
    assert not any(line.lstrip().startswith("{") for line in lines)
    assert text_state_changes(lines, conn) == HANDSHAKE_AND_CLOSE
    assert_text_matches_jsonl(lines, records)


def test_trace_port_keeps_other_connections_out_of_every_output(ns: Netns, tmp_path: Path) -> None:
    with serving_traced(ns, tmp_path, "--trace-port", "80") as (daemon, files):
        echoed = ns.run("nc", "-N", STACK_ADDRESS, "7", input=b"not traced\n", check=True)
        assert echoed.stdout == b"not traced\n"
        curl(ns)
        daytime = ns.run("nc", "-w", "5", STACK_ADDRESS, "13", check=True)
        assert daytime.stdout.endswith(b"-UTC\r\n")
        daemon.wait_until_no_connections()
        assert daemon.stats()["tcp.passive-opens"] == 3  # all three really happened

    # Every trace output is filtered: the harness's own JSONL trace is the same file.
    assert files["jsonl"].read_bytes() == daemon.trace.read_bytes()
    records = read_jsonl(files["jsonl"])
    assert [r["local_port"] for r in records if r["type"] == "connection"] == [80]
    assert not [r for r in records if r["type"] == "drop"]
    segments = segment_records(records)
    assert segments and all(80 in (r["local_port"], r["remote_port"]) for r in segments)
    (conn,) = {r["conn"] for r in segments}

    captured = tshark(files["pcap"])
    assert captured and all(80 in (p.src_port, p.dst_port) for p in captured)
    assert not [p for p in captured if {7, 13} & {p.src_port, p.dst_port}]
    assert_pcap_matches_jsonl(captured, records)

    lines = files["text"].read_text(encoding="utf-8").splitlines()
    assert not [line for line in lines if re.search(r"198\.18\.0\.2:(7|13)\b", line)]
    assert text_state_changes(lines, conn) == HANDSHAKE_AND_CLOSE
    assert_text_matches_jsonl(lines, records)


def test_trace_host_of_nobody_leaves_every_output_empty(ns: Netns, tmp_path: Path) -> None:
    with serving_traced(ns, tmp_path, "--trace-host", "198.18.0.99") as (daemon, files):
        curl(ns)
        daemon.wait_until_no_connections()
    assert read_jsonl(files["jsonl"]) == []
    assert files["text"].read_text(encoding="utf-8") == ""
    assert len(files["pcap"].read_bytes()) == 24  # the global header, no record
    assert tshark(files["pcap"]) == []


@contextmanager
def open_echo_connection(ns: Netns) -> Iterator[Callable[[bytes], None]]:
    """An nc connection to the echo service, open (and echoing) for the block;
    yields a function that sends a line and checks that it comes back."""
    process = subprocess.Popen(
        ns.command("nc", STACK_ADDRESS, "7"), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    stdin, stdout = process.stdin, process.stdout
    assert stdin is not None and stdout is not None

    def echo(line: bytes) -> None:
        stdin.write(line)
        stdin.flush()
        readable, _, _ = select.select([stdout], [], [], 10)  # a dead daemon never answers
        assert readable and stdout.readline() == line

    try:
        echo(b"still here\n")
        yield echo
    finally:
        process.kill()
        process.wait()


def test_stopping_the_daemon_traces_the_reset_of_an_open_connection(
    ns: Netns, tmp_path: Path
) -> None:
    """SIGTERM resets every connection: the RST is the last thing in every
    output, so the files are closed only after it."""
    with serving_traced(ns, tmp_path, clean_log=False) as (daemon, files), open_echo_connection(ns):
        daemon.stop()  # while nc is still connected
    records = read_jsonl(files["jsonl"])
    segments = segment_records(records)
    last = segments[-1]
    assert (last["direction"], last["flags"], last["state_after"]) == ("out", "R.", "CLOSED")
    (abort,) = [r for r in records if r["type"] == "state" and r["event"] == "APP_ABORT"]
    assert (abort["old"], abort["new"]) == ("ESTABLISHED", "CLOSED")
    captured = tshark(files["pcap"])
    assert captured[-1].flags == "R." and captured[-1].src == STACK_ADDRESS
    assert_pcap_matches_jsonl(captured, records)
    lines = files["text"].read_text(encoding="utf-8").splitlines()
    (abort_line,) = [i for i, line in enumerate(lines) if "CLOSED  (APP_ABORT;" in line]
    rst = TEXT_SEGMENT.search(lines[-1])
    assert rst and (rst["direction"], rst["flags"]) == ("out", "R.") and abort_line < len(lines) - 1
    assert_text_matches_jsonl(lines, records)


def test_stopping_the_daemon_with_an_open_connection_logs_no_traceback(
    ns: Netns, tmp_path: Path
) -> None:
    with serving(ns, tmp_path, clean_log=False) as daemon, open_echo_connection(ns):
        daemon.stop()  # while nc is still connected
    assert "Traceback" not in daemon.log_text(), log_tail(daemon.log_text())


def test_a_trace_file_that_cannot_be_opened_is_a_one_line_error(ns: Netns, tmp_path: Path) -> None:
    with pytest.raises(DaemonFailed):
        UstackDaemon.start(ns, tmp_path, "--trace", str(tmp_path / "no-such-dir" / "t.txt"))
    log = (tmp_path / "ustack.log").read_text(errors="replace")
    assert "ustack: error:" in log and "no-such-dir" in log, log_tail(log)
    assert "Traceback" not in log, log_tail(log)


# ---- a trace that cannot be written, SIGHUP, rotation (issue 13) --------------------------------


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def trace_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "cannot write the trace" in line]


@pytest.mark.parametrize(
    "formats", [pytest.param((), id="text"), pytest.param(("jsonl", "pcap"), id="pcap")]
)
def test_a_trace_on_a_full_disk_stops_that_trace_only(
    ns: Netns, tmp_path: Path, formats: tuple[str, ...]
) -> None:
    """/dev/full fails every write with ENOSPC, the first one (a header, or
    the listeners' first events) included: one line, one count, and the
    stack and the other trace carry on."""
    explicit = [arg for fmt in formats for arg in ("--trace-format", fmt)]
    with serving(ns, tmp_path, "--trace", "/dev/full", *explicit) as daemon:
        curl(ns)
        curl(ns)
        daemon.wait_until_no_connections()
        stats = daemon.stats()
    assert stats["trace.write_errors"] == 1 and stats["tcp.passive-opens"] == 2
    (error,) = trace_errors(daemon.log_text())
    assert error.endswith(
        "ustack.trace: cannot write the trace /dev/full: No space left on device (ENOSPC); "
        "that trace is stopped"
    )
    records = read_jsonl(daemon.trace)  # the other trace has it all
    assert len([r for r in records if r["type"] == "connection"]) == 2


def test_a_trace_fifo_whose_reader_goes_away_stops_that_trace_only(
    ns: Netns, tmp_path: Path
) -> None:
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so the daemon's open does not wait
    try:
        with (
            serving(ns, tmp_path, "--trace", str(fifo)) as daemon,
            open_echo_connection(ns) as echo,
        ):
            assert os.read(reader, 65536).startswith(b'{"type": "header"')
            os.close(reader)
            reader = -1
            echo(b"after the reader left\n")  # the next trace write gets EPIPE
            curl(ns)
            echo(b"the connection lives on\n")
            stats = daemon.stats()
    finally:
        if reader >= 0:
            os.close(reader)
    assert stats["trace.write_errors"] == 1
    (error,) = trace_errors(daemon.log_text())
    assert error.endswith(
        f"cannot write the trace {fifo}: Broken pipe (EPIPE); that trace is stopped"
    )
    records = read_jsonl(daemon.trace)
    assert len([r for r in records if r["type"] == "connection"]) == 2


def test_a_trace_to_stderr_closed_by_its_reader_stops_that_trace_only(
    ns: Netns, tmp_path: Path
) -> None:
    """--trace -: the daemon's stderr is a pipe whose reader goes away (EPIPE;
    SIGPIPE is ignored). The log goes to --log-file meanwhile."""
    fifo = tmp_path / "stderr.fifo"
    os.mkfifo(fifo)
    log_file = tmp_path / "daemon.log"
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    stderr_to_fifo = ("sh", "-c", 'exec 2>"$0"; exec "$@"', str(fifo))
    try:
        daemon = UstackDaemon.start(
            ns, tmp_path, "--trace", "-", "--log-file", str(log_file), wrapper=stderr_to_fifo
        )
        with daemon:
            os.close(reader)
            reader = -1
            curl(ns)
            curl(ns)
            stats = daemon.stats()
    finally:
        if reader >= 0:
            os.close(reader)
    assert daemon.process.returncode == 0
    assert stats["trace.write_errors"] == 1 and stats["tcp.passive-opens"] == 2
    log = log_file.read_text()
    (error,) = trace_errors(log)
    assert error.endswith(
        "cannot write the trace stderr: Broken pipe (EPIPE); that trace is stopped"
    )
    assert "Traceback" not in log + daemon.log_text(), log_tail(log)


def segment_keys(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["conn"], r["direction"], r["seq"], r["ack"], r["flags"], r["length"])
            for r in segment_records(records)]  # fmt: skip


def test_sighup_reopens_the_log_and_the_traces_moved_aside(ns: Netns, tmp_path: Path) -> None:
    """logrotate's way: mv FILE FILE.1, kill -HUP. The moved files are whole;
    new events go to new files, each starting with its header; the harness's
    trace.jsonl, not moved, is continued: together the pair is that trace."""
    log_file = tmp_path / "daemon.log"
    files = trace_files(tmp_path, {"jsonl": "T.jsonl", "pcap": "T.pcap"})
    moved = {path: path.with_name(path.name + ".1") for path in [*files.values(), log_file]}
    arguments = trace_arguments(files, explicit=False)
    reopened = "SIGHUP: reopened 1 log file(s) and 3 trace file(s)"
    with serving(ns, tmp_path, *arguments, "--log-file", str(log_file)) as daemon:
        with open_echo_connection(ns) as echo:
            curl(ns)  # a connection before the rotation
            # curl is gone once it has the page; its last segments may still
            # be on their way: the rotation waits until the connection is
            # over (TIME_WAIT sends nothing unless asked, or it is gone).
            wait_for(
                lambda: all(
                    row["state"] == "TIME_WAIT"
                    for row in daemon.connections()
                    if not row["local"].endswith(":7")
                ),
                "the first curl's connection over",
            )
            for path, aside in moved.items():
                path.rename(aside)
            daemon.process.send_signal(signal.SIGHUP)
            wait_for(lambda: log_file.exists() and reopened in log_file.read_text(), reopened)
            echo(b"across the rotation\n")
            curl(ns)  # and one after
        daemon.wait_until_no_connections()

    before, after = read_jsonl(moved[files["jsonl"]]), read_jsonl(files["jsonl"])
    whole = read_jsonl(daemon.trace)
    assert before + after == whole  # nothing lost, nothing twice
    assert daemon.trace.read_text().count('"type": "header"') == 1
    opened = [r["conn"] for r in whole if r["type"] == "connection"]
    echo_conn, first, second = opened
    assert {r["conn"] for r in segment_records(before)} == {echo_conn, first}
    assert {r["conn"] for r in segment_records(after)} == {echo_conn, second}

    captured = tshark(moved[files["pcap"]]) + tshark(files["pcap"])
    assert len(tshark(moved[files["pcap"]])) == len(segment_records(before))
    assert_pcap_matches_jsonl(captured, whole)

    old_log, new_log = moved[log_file].read_text(), log_file.read_text()
    assert "ready" in old_log and reopened not in old_log
    assert new_log.splitlines()[0].endswith(reopened) and "counters:" in new_log
    assert "Traceback" not in old_log + new_log


def generations(path: Path) -> list[Path]:
    """A rotated trace's files, oldest first: FILE.N ... FILE.1, FILE."""
    rotated = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    return [*rotated, path]


def test_traces_rotate_at_max_bytes_and_every_file_reads_on_its_own(
    ns: Netns, tmp_path: Path
) -> None:
    max_bytes, connections = 4096, 8
    files = trace_files(tmp_path, {"jsonl": "T.jsonl", "pcap": "T.pcap", "text": "T.txt"})
    arguments = trace_arguments(files, explicit=False)
    with serving(ns, tmp_path, *arguments, "--trace-max-bytes", str(max_bytes),
                 "--trace-keep", "100") as daemon:  # fmt: skip
        for _ in range(connections):
            curl(ns)
        daemon.wait_until_no_connections()
        stats = daemon.stats()

    jsonl, pcaps, texts = (generations(files[fmt]) for fmt in ("jsonl", "pcap", "text"))
    assert len(jsonl) > 4 and len(pcaps) > 2 and len(texts) > 2, (jsonl, pcaps, texts)
    for path in jsonl + pcaps + texts:
        assert path.stat().st_size <= max_bytes, path
    records = [record for path in jsonl for record in read_jsonl(path)]  # each has its header
    # The harness's trace.jsonl rotated too, at its own places: the same records.
    assert records == [record for path in generations(daemon.trace) for record in read_jsonl(path)]
    segments = segment_records(records)
    assert sum(r["direction"] == "in" for r in segments) == stats["tcp.in"]
    assert sum(r["direction"] == "out" for r in segments) == stats["tcp.out"]
    assert len([r for r in records if r["type"] == "connection"]) == connections
    captured = [packet for path in pcaps for packet in tshark(path)]  # each has its header
    assert_pcap_matches_jsonl(captured, records)
    lines = [line for path in texts for line in path.read_text().splitlines()]
    assert_text_matches_jsonl(lines, records)
