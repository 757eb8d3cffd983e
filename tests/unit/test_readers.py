"""`ustack ladder` and `ustack explain` on traces as they come: far bigger
than memory (read a line at a time, memory bounded by the connection drawn),
through a pipe, and with hostile lines (skipped and counted once, never a
traceback).
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from test_ladder import lost_fin_with_peer_states
from test_ladder import passive_close
from test_ladder import write_trace
from test_trace import jsonl_lines

from ustack.cli import main
from ustack.study.load import MAX_LINE_BYTES
from ustack.trace.records import FaultEvent
from ustack.trace.records import TraceEvent
from ustack.trace.vocabulary import FaultAction


def run(argv: list[str]) -> tuple[int, str, str]:
    """`ustack ARGV` in this process: exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


# ---- a trace bigger than what is drawn -----------------------------------------------------


def replicate(lines: list[str], path: Path, size: int) -> int:
    """Copies of a one-connection trace, each with its own connection id,
    peer port and times, until the file holds `size` bytes; how many."""
    header, events = lines[0], [json.loads(line) for line in lines[1:]]
    span = events[-1]["time"] - events[0]["time"] + 0.01
    written = copies = 0
    with path.open("w", encoding="utf-8") as out:
        out.write(header + "\n")
        while written < size:
            copies += 1
            for event in events:
                event = {**event, "time": event["time"] + copies * span}
                if event.get("conn") is not None:
                    event["conn"] = copies
                if "remote_port" in event:
                    event["remote_port"] = 1024 + copies
                text = json.dumps(event) + "\n"
                written += out.write(text)
    return copies


# The reading in a child: its peak RSS (KiB) after the imports and after the reading, on
# stderr's last line.
MEASURE = """
import resource, sys
from ustack.cli import main
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
code = main(sys.argv[1:])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(code, before, after, file=sys.stderr)
"""


@pytest.fixture(scope="module")
def big_trace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    copies = replicate(jsonl_lines(passive_close().trace), path, 40_000_000)
    return path, copies


@pytest.mark.parametrize(
    ("command", "chosen", "status"),
    [("ladder", True, 0), ("explain", True, 0), ("ladder", False, 1)],
    ids=["ladder --conn", "explain --conn", "ladder listing"],
)
def test_a_big_trace_is_read_in_bounded_memory(
    big_trace: tuple[Path, int], command: str, chosen: bool, status: int
) -> None:
    path, copies = big_trace
    conn = copies // 2
    argv = [command, str(path), *(["--conn", str(conn)] if chosen else [])]
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *argv], capture_output=True, text=True, timeout=300
    )
    code, before, after = map(int, done.stderr.splitlines()[-1].split())
    assert code == status, done.stderr
    if chosen:
        # The connection drawn is the one asked for, whole.
        assert f"198.18.0.1:{1024 + conn}" in done.stdout.splitlines()[0]
        assert len(done.stdout.splitlines()) > 8  # (7 steps of explain, 20 rows of ladder)
    else:
        assert len(done.stdout.splitlines()) == copies + 1  # one row each, and the heading
    grown_mib = (after - before) / 1024
    size_mib = path.stat().st_size / 2**20
    # On the whole file in memory this was ~8 times the file (320 MiB).
    assert grown_mib < size_mib / 4, f"peak RSS grew {grown_mib:.0f} MiB on {size_mib:.0f} MiB"


def test_a_trace_through_a_pipe_reads_as_from_a_file(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "p.jsonl", passive_close().trace)
    from_file = run(["explain", str(path)])
    piped = subprocess.run(
        [sys.executable, "-m", "ustack", "explain", "-"],
        input=path.read_bytes(),
        capture_output=True,
        timeout=60,
    )
    assert from_file[0] == 0 and from_file[1].count("\n") > 5
    assert (piped.returncode, piped.stdout.decode(), piped.stderr.decode()) == from_file


# ---- hostile lines -------------------------------------------------------------------------


def _segment(**fields: Any) -> bytes:
    segment = {
        "type": "segment", "time": 0.0001, "conn": 1, "direction": "in",
        "local": "198.18.0.2", "local_port": 80, "remote": "198.18.0.1", "remote_port": 40000,
        "flags": ".", "seq": 1, "ack": 1, "rel_seq": 1, "rel_ack": 1, "window": 100,
        "length": 0, "options": {}, "state_before": "ESTABLISHED",
        "state_after": "ESTABLISHED", "note": "",
    } | fields  # fmt: skip
    return json.dumps(segment, allow_nan=True).encode()


HOSTILE: list[tuple[bytes, str]] = [
    (b"[" * 100_000, "not JSON (nested too deeply)"),
    (b'{"type": "state", "why": ' + b"[" * 5000 + b"]" * 5000 + b"}",
     "not JSON (nested too deeply)"),
    (b"x" * (MAX_LINE_BYTES + 1), f"longer than {MAX_LINE_BYTES:,} bytes"),
    (b'{"type": "segment", "flags": "\xff\xfe"}', "not UTF-8"),
    (b'{"type": "timer", "time": 1e400, "conn": 1, "timer": "probe", "action": "set"}',
     "an event needs a 'type' and a numeric 'time'"),
    (b'{"type": "timer", "time": NaN, "conn": 1}', "not JSON (NaN is not a JSON number)"),
    (_segment(time=float("inf")), "not JSON (Infinity is not a JSON number)"),
    (b'{"type": "timer", "time": 1, "conn": ' + b"9" * 5000 + b"}",
     "not JSON (Exceeds the limit (4300 digits) for integer string conversion)"),
    (_segment(seq=10**30), "segment event with a bad seq"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"type": "segment"', "not JSON (Expecting ',' delimiter, column 20)"),
    (b'{"time": 1}', "an event needs a 'type' and a numeric 'time'"),
    (b'{"type": "segment", "time": true}', "an event needs a 'type' and a numeric 'time'"),
    (_segment(conn=[1]), "segment event with a bad conn"),
    (_segment(conn=True), "segment event with a bad conn"),
    (_segment(seq="1"), "segment event with a bad seq"),
    (_segment(flags=5), "segment event with a bad flags"),
    (_segment(flags="\ud800"), "segment event with a bad flags"),
    (_segment(state_after="ESTAB\nLISHED"), "segment event with a bad state_after"),
    (_segment(options=[]), "segment event with a bad options"),
    (_segment(options={"sack": [[1, [2]]]}), "segment event with a bad options"),
    (_segment(direction="up"), "segment event with a bad direction"),
    (_segment(note=7), "segment event with a bad note"),
    (b'{"type": "segment", "time": 0.0001, "conn": 1}', "segment event without direction"),
    (b'{"type": "fault", "time": 0.0001, "conn": 1, "action": "drop"}',
     "fault event without direction"),
    (b'{"type": "connection", "time": 0, "conn": 1, "local": "198.18.0.2", "local_port": 80, '
     b'"remote": "198.18.0.1", "remote_port": 40000, "passive": "yes"}',
     "connection event with a bad passive"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "fault"), HOSTILE, ids=[f for _, f in HOSTILE])
@pytest.mark.parametrize("command", ["ladder", "explain"])
def test_a_hostile_line_is_skipped_and_counted(
    tmp_path: Path, command: str, line: bytes, fault: str
) -> None:
    lines = [text.encode() for text in jsonl_lines(passive_close().trace)]
    clean = tmp_path / "clean.jsonl"
    clean.write_bytes(b"\n".join(lines) + b"\n")
    expected = run([command, str(clean)])
    assert expected[0] == 0 and expected[2] == ""

    hostile = tmp_path / "hostile.jsonl"
    hostile.write_bytes(b"\n".join([*lines[:5], line, *lines[5:]]) + b"\n")
    code, out, err = run([command, str(hostile)])
    assert (code, out) == expected[:2]
    assert (
        err
        == f"ustack: warning: {hostile}: skipped 1 malformed line (the first, line 6: {fault})\n"
    )


def test_skipped_lines_are_told_once_with_the_first(tmp_path: Path) -> None:
    lines = jsonl_lines(passive_close().trace)
    path = tmp_path / "t.jsonl"
    # A truncated last line (a trace still being written) and two bad ones before it.
    path.write_text("\n".join([*lines[:3], "{oops", *lines[3:], "[]", lines[4][:30]]))
    code, out, err = run(["ladder", str(path)])
    assert code == 0 and out.startswith("connection 1: ")
    assert err == (
        f"ustack: warning: {path}: skipped 3 malformed lines "
        "(the first, line 4: not JSON (Expecting property name enclosed in double quotes, "
        "column 2))\n"
    )


def test_a_record_type_of_a_later_writer_is_ignored_silently(tmp_path: Path) -> None:
    lines = jsonl_lines(passive_close().trace)
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join([*lines[:3], '{"type": "quic", "time": 0, "conn": 1}', *lines[3:]]))
    clean = write_trace(tmp_path / "clean.jsonl", passive_close().trace)
    assert run(["explain", str(path)]) == run(["explain", str(clean)])


def test_a_file_of_only_bad_lines_says_so_and_why(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"type": "header", "schema": 3}\n' + "[" * 10_000 + "\n")
    code, out, err = run(["explain", str(path)])
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"ustack: warning: {path}: skipped 1 malformed line (the first, line 2: not JSON "
        "(nested too deeply))",
        f"ustack: error: {path}: no connections in this trace",
    ]


# ---- odd values in well-typed fields ---------------------------------------------------------


def _every(kind: str, **fields: Any) -> Any:
    def change(records: list[dict[str, Any]]) -> None:
        for record in records:
            if record.get("type") == kind:
                record.update(fields)

    return change


def _rto_decision(records: list[dict[str, Any]]) -> None:
    """A retransmission timeout whose sentence has no number for the RTO."""
    fired = next(r for r in records if r.get("action") == "fired")
    what = "retransmission timeout #1: resend from SND.UNA, RTO now xs"
    decision = {"type": "decision", "time": fired["time"], "conn": 1, "what": what,
                "rule": "RFC 6298 5.4-5.6", "kind": "retransmission_timeout"}  # fmt: skip
    records.insert(records.index(fired) + 1, decision)


ODD = {
    "a state change's own words with braces": _every("state", why="{x}", event="RCV_ODD"),
    "a timer of an unknown name with braces": _every("timer", timer="{x}"),
    "an RTO sentence without its number": _rto_decision,
    "unknown states": _every("segment", state_before="{}", state_after="WEIRD"),
    "negative lengths": _every("segment", length=-5),
}


@pytest.mark.parametrize("change", ODD.values(), ids=ODD.keys())
@pytest.mark.parametrize("command", ["ladder", "explain"])
def test_odd_values_in_well_typed_fields_still_read(
    tmp_path: Path, command: str, change: Any
) -> None:
    records = [json.loads(line) for line in TEMPLATE]
    change(records)
    path = tmp_path / "odd.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    code, out, err = run([command, str(path), "--conn", "1"])
    assert (code, err) == (0, "")
    assert out.startswith(("connection 1: ", "Connection 1: "))


# ---- any damage to any line ----------------------------------------------------------------


def _template() -> list[str]:
    """A trace with every record type the readers use: peer states, a lost
    segment, timers, a fault injector's drop of an incoming segment."""
    events: list[TraceEvent] = list(lost_fin_with_peer_states())
    events.append(
        FaultEvent(1.5, 1, "in", FaultAction.DROP, 1, "198.18.0.2", 80, "198.18.0.1", 40000,
                   ".", 5, 6, 1, 2, 0, 100)
    )  # fmt: skip
    return jsonl_lines(events)


TEMPLATE = _template()
STRINGS = st.sampled_from(
    ["", "{", "{x}", "}{", "in", "out", "S", "S.", "F.", "R", "P.", ".", "LISTEN", "CLOSED",
     "TIME_WAIT", "SYN_SENT", "APP_CLOSE", "RCV_FIN", "retransmit", "set", "fired", "drop",
     "retransmission", "dropped by fault injector", "fast_retransmit",
     "retransmission timeout #1: resend from SND.UNA, RTO now xs", "RFC 9293 3.5"]
) | st.text(max_size=20)  # fmt: skip
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | STRINGS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(STRINGS, children, max_size=3)
    ),
    max_leaves=6,
)


def _object(line: bytes) -> dict[str, Any]:
    """The line's JSON object, or {} (a line damaged already)."""
    try:
        record = json.loads(line)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


@st.composite
def damaged_traces(draw: st.DrawFn) -> bytes:
    lines = [line.encode() for line in TEMPLATE]
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.integers(0, len(lines) - 1))
        how = draw(st.sampled_from(["field", "drop field", "cut", "bytes", "copy"]))
        record = _object(lines[index])
        if how in ("field", "drop field") and record:
            name = draw(st.sampled_from(sorted(record)))
            if how == "field":
                record[name] = draw(JSON_VALUES)
            else:
                del record[name]
            lines[index] = json.dumps(record).encode()
        elif how == "cut":
            lines[index] = lines[index][: draw(st.integers(0, len(lines[index])))]
        elif how == "bytes":
            lines[index] = draw(st.binary(max_size=40))
        else:  # a line again, elsewhere (time and order out of joint)
            lines.insert(draw(st.integers(0, len(lines))), lines[index])
    return b"\n".join(lines) + draw(st.sampled_from([b"\n", b""]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=damaged_traces())
def test_any_damage_gives_a_drawing_or_a_one_line_error(content: bytes) -> None:
    with tempfile_with(content) as path:
        for argv in (
            ["ladder", path],
            ["ladder", path, "--conn", "1", "--format", "svg"],
            ["ladder", path, "--conn", "1", "--format", "mermaid", "--absolute"],
            ["explain", path, "--conn", "1"],
        ):
            code, _, err = run(argv)  # (an exception fails the test)
            assert code in (0, 1), (argv, err)
            assert all(line.startswith("ustack: ") for line in err.splitlines()), err
            assert code == 0 or err.splitlines()[-1].startswith("ustack: error: ")


@contextlib.contextmanager
def tempfile_with(content: bytes) -> Iterator[str]:
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as file:
        file.write(content)
        file.flush()
        yield file.name


def test_the_line_limit_is_an_option(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "p.jsonl", passive_close().trace)
    longest = max(len(line) for line in path.read_bytes().splitlines())
    code, out, err = run(["explain", str(path), "--max-line-bytes", str(longest - 1)])
    assert code == 0 and out.startswith("Connection 1: ")
    assert "skipped 1 malformed line" in err and f"longer than {longest - 1:,} bytes)" in err
    # A usage error (its exit status is cli.py's: 1 today, 2 for usage errors soon).
    code, out, err = run(["ladder", str(path), "--max-line-bytes", "lots"])
    assert code != 0 and out == "" and err.count("\n") == 1
    assert "--max-line-bytes: want a number of bytes from 64 to 1073741824, not 'lots'" in err
