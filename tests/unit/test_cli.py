"""Argument validation: bad input is one clear line and exit code 2, before
anything touches the system; a failure at run time is one line and exit code 1."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from ustack import cli
from ustack.cli import build_parser
from ustack.cli import clients
from ustack.cli import serve_config
from ustack.cli.args import fault_rule
from ustack.cli.args import file_to_write
from ustack.cli.args import folder_to_write


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["serve", "--address", "1.2.3"], "bad --address '1.2.3'"),
        (["serve", "--address", "10.0.0.1"], "not a host address in 198.18.0.0/24"),
        (["serve", "--address", "198.18.0.255"], "not a host address"),
        (["serve", "--linux-address", "nonsense"], "bad --linux-address"),
        (["serve", "--address6", "198.18.0.2"], "bad --address6 '198.18.0.2': want an IPv6"),
        (["serve", "--address6", "::ffff:198.18.0.2"], "bad --address6"),
        (["serve", "--address6", "2001:3::2"], "--address6 2001:3::2 is not a host address in"),
        (["serve", "--address6", "2001:2::"], "is not a host address in 2001:2::/64"),
        (["serve", "--address6", "2001:2::1"], "--address6 2001:2::1 is the Linux side's own"),
        (["serve", "--address6", "ff02::2"], "--address6 ff02::2 is not a global unicast"),
        (["serve", "--linux-address6", "2001:2::1"], "is not a host address in 2001:2::1/128"),
        (["serve", "--linux-address6", "2001:2::1/129"], "bad --linux-address6"),
        (["serve", "--linux-address6", "198.18.0.1/24"], "bad --linux-address6"),
        (["serve", "--linux-address6", "fe80::1/64"], "not a global unicast address"),
        (["serve", "--mtu", "0"], "bad --mtu 0: want 68..65535"),
        (["serve", "--device", "a-name-longer-than-15"], "bad --device"),
        (["serve", "--log-level", "loud"], "invalid choice"),
        (["serve", "--syn-retries", "-1"], "bad --syn-retries '-1': want a whole number 0..127"),
        (["serve", "--syn-retries", "200"], "bad --syn-retries '200'"),
        (["serve", "--max-connections", "0"], "bad --max-connections '0': want a whole number"),
        (["serve", "--max-connections", "many"], "bad --max-connections 'many'"),
        (["serve", "--ipfrag-time", "0"], "bad --ipfrag-time 0: want seconds > 0"),
        (["serve", "--ipfrag-time", "soon"], "bad --ipfrag-time 'soon'"),
        (["serve", "--ipfrag-high-thresh", "-1"], "bad --ipfrag-high-thresh '-1'"),
        (["serve", "--icmp-ratelimit", "-1"], "bad --icmp-ratelimit '-1': want a whole number"),
        (["serve", "--icmp-msgs-per-sec", "1e3"], "bad --icmp-msgs-per-sec '1e3'"),
        (["serve", "--icmp-msgs-burst", "x"], "bad --icmp-msgs-burst 'x'"),
        (["serve", "--icmp-ratemask", "4294967296"], "bad --icmp-ratemask '4294967296'"),
        (["serve", "--tcp-invalid-ratelimit", "0.5"], "bad --tcp-invalid-ratelimit '0.5'"),
        (["serve", "--min-pmtu", "67"], "bad --min-pmtu '67'"),
        (["serve", "--min-pmtu", "big"], "bad --min-pmtu 'big'"),
        (["frobnicate"], "invalid choice"),
        (["fault", "bogus"], "(choose from 'drop', 'delay', 'duplicate', 'mark', 'list', 'clear')"),
        ([], "required"),
    ],
)
def test_bad_arguments(argv: list[str], expected: str, cli_error: Callable[..., str]) -> None:
    assert expected in cli_error(argv)


def test_stats_without_daemon_is_a_clear_error(tmp_path, cli_error: Callable[..., str]) -> None:
    assert "cannot reach the daemon" in cli_error(
        ["stats", "--control", str(tmp_path / "none.sock")], code=1
    )


def test_ipfrag_flags_reach_the_reassembly_limits() -> None:
    argv = ["serve", "--ipfrag-high-thresh", "65536", "--ipfrag-time", "2.5"]
    limits = serve_config(build_parser().parse_args(argv)).fragments
    assert (limits.high_thresh, limits.timeout) == (65536, 2.5)
    defaults = serve_config(build_parser().parse_args(["serve"])).fragments
    assert (defaults.high_thresh, defaults.timeout) == (4 * 1024 * 1024, 30.0)  # Linux's


def test_ecn_reaches_the_tcp_config_passive_by_default() -> None:
    assert serve_config(build_parser().parse_args(["serve"])).tcp.ecn == "passive"
    for mode in ("off", "passive", "on"):
        args = build_parser().parse_args(["serve", "--ecn", mode])
        assert serve_config(args).tcp.ecn == mode


def test_syn_retries_and_max_connections_reach_the_tcp_config() -> None:
    args = build_parser().parse_args(["serve", "--syn-retries", "1", "--max-connections", "8"])
    tcp = serve_config(args).tcp
    assert (tcp.syn_retries, tcp.max_connections) == (1, 8)
    assert tcp.connect_timeout == 3.0  # RTO 1 s, then 2 s
    defaults = serve_config(build_parser().parse_args(["serve"])).tcp
    assert (defaults.syn_retries, defaults.max_connections) == (6, 65_536)
    assert defaults.connect_timeout == 123.0  # 1+2+4+8+16+32, then 60 (max_rto)


def test_the_rate_limits_reach_the_stack_config() -> None:
    argv = ["serve", "--icmp-ratelimit", "250", "--icmp-msgs-per-sec", "10"]
    argv += ["--icmp-msgs-burst", "5", "--icmp-ratemask", "0", "--tcp-invalid-ratelimit", "0"]
    config = serve_config(build_parser().parse_args(argv))
    icmp = config.icmp
    assert (icmp.ratelimit, icmp.msgs_per_sec, icmp.msgs_burst, icmp.ratemask) == (0.25, 10, 5, 0)
    assert config.tcp.invalid_ack_ratelimit == 0.0
    # Linux's defaults (sysctl net.ipv4.icmp_* and tcp_invalid_ratelimit).
    defaults = serve_config(build_parser().parse_args(["serve"]))
    icmp = defaults.icmp
    assert (icmp.ratelimit, icmp.msgs_per_sec, icmp.msgs_burst, icmp.ratemask) == (
        1.0,
        1000,
        50,
        6168,
    )
    assert defaults.tcp.invalid_ack_ratelimit == 0.5


def test_min_pmtu_and_mtu_probing_reach_the_config() -> None:
    argv = ["serve", "--min-pmtu", "1280", "--mtu-probing"]
    config = serve_config(build_parser().parse_args(argv))
    assert (config.min_pmtu, config.tcp.mtu_probing) == (1280, True)
    defaults = serve_config(build_parser().parse_args(["serve"]))
    assert (defaults.min_pmtu, defaults.tcp.mtu_probing) == (552, False)  # as Linux


def test_ipv6_flags_reach_the_link_and_the_stack() -> None:
    defaults = serve_config(build_parser().parse_args(["serve"]))
    assert (str(defaults.address6), str(defaults.link.linux_side6)) == ("2001:2::2", "2001:2::1/64")
    argv = ["serve", "--address6", "2001:db8:0::7", "--linux-address6", "2001:db8::1/120"]
    chosen = serve_config(build_parser().parse_args(argv))
    assert (str(chosen.address6), str(chosen.link.linux_side6)) == (
        "2001:db8::7",
        "2001:db8::1/120",
    )
    ipv4_only = serve_config(build_parser().parse_args(["serve", "--no-ipv6", "--address6", "x"]))
    assert (ipv4_only.address6, ipv4_only.link.linux_side6) == (None, None)


def test_connect_and_trace_host_take_either_family() -> None:
    args = build_parser().parse_args(["connect", "2001:2:0::1", "8080"])
    assert (args.host, args.port) == ("2001:2::1", 8080)
    argv = ["serve", "--trace-host", "2001:2:0::1", "--trace-host", "198.18.0.1"]
    config = serve_config(build_parser().parse_args(argv))
    assert config.trace_filter.addresses == frozenset({"2001:2::1", "198.18.0.1"})


@pytest.fixture(autouse=True)
def _never_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """A case that wrongly passed validation must not start a daemon here."""

    def refuse(_config: object) -> int:
        raise AssertionError("serve() reached: the arguments were accepted")

    monkeypatch.setattr(cli, "serve", refuse)


_DIGITS_5000 = "9" * 5000


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # serve: every number and path flag
        (["serve", "--trace-port", "70000"], "argument --trace-port: 70000 is not in 1..65535"),
        (["serve", "--trace-port", "0"], "--trace-port: 0 is not in 1..65535"),
        (["serve", "--trace-port", _DIGITS_5000], "--trace-port: '9999"),
        (["serve", "--trace-port", "eighty"], "'eighty' is not a whole number"),
        (["serve", "--trace", "/proc/version"], "kernel's proc filesystem"),
        (["serve", "--trace", "/proc/ustack-trace"], "kernel's proc filesystem"),
        (["serve", "--trace", "/sys/kernel/ustack"], "bad --trace /sys/kernel/ustack"),
        (["serve", "--trace", "/no/such/dir/t.jsonl"], "no directory /no/such/dir"),
        (["serve", "--trace", "/etc"], "not a regular file, a FIFO or a character device"),
        (["serve", "--trace-format", "text"], "more --trace-format than --trace"),
        (["serve", "--trace", "-", "--trace-format", "pcap"], "a pcap trace needs a file"),
        (["serve", "--trace", "-", "--trace-format", "pcapng"], "a pcapng trace needs a file"),
        (["serve", "--trace", "-", "--trace-format", "pcap-ng"], "invalid choice: 'pcap-ng'"),
        # export: a format is needed; the readers' numbers
        (["export", "t.jsonl"], "one of the arguments --qlog is required"),
        (["export", "t.jsonl", "--qlog", "--conn", "one"], "--conn: invalid int value: 'one'"),
        (
            ["export", "t.jsonl", "--qlog", "--max-line-bytes", "10"],
            "want a number of bytes from 64 to 1073741824",
        ),
        (["export", "--qlog"], "the following arguments are required: trace"),
        (["serve", "--trace-host", "nobody"], "bad --trace-host"),
        (["serve", "--trace-host", "::ffff:198.18.0.1"], "bad --trace-host"),
        (["serve", "--fault-seed", "-1"], "--fault-seed: -1 is not in 0.."),
        (["serve", "--fault-seed", "1.5"], "'1.5' is not a whole number"),
        (["serve", "--ready-fd", "-1"], "--ready-fd: -1 is not in 0.."),
        (["serve", "--ready-fd", str(2**40)], "is not in 0..2147483647"),
        (["serve", "--ready-fd", "999999"], "bad --ready-fd 999999: not an open file descriptor"),
        (["serve", "--keepalive", "0"], "bad --keepalive 0: want seconds > 0"),
        (["serve", "--keepalive", "nan"], "bad --keepalive nan"),
        (["serve", "--msl", "nan"], "bad --msl nan"),
        (["serve", "--msl", "inf"], "bad --msl inf"),
        (["serve", "--msl", "1e400"], "bad --msl 1e400"),
        (["serve", "--msl", "-1"], "bad --msl -1"),
        (["serve", "--fin-timeout", "soon"], "bad --fin-timeout 'soon'"),
        (["serve", "--mtu", "nan"], "bad --mtu 'nan'"),
        (["serve", "--mtu", _DIGITS_5000], "bad --mtu"),
        (["serve", "--services", "http:0"], "bad port in --services"),
        (["serve", "--services", "http:99999"], "bad port in --services"),
        (["serve", "--services", "http:" + _DIGITS_5000], "bad port in --services"),
        (["serve", "--services", "gopher"], "unknown service 'gopher'"),
        (["serve", "--services", "echo:9,discard"], "two services on port 9"),
        (["serve", "--fault", "drop:port=70000"], "bad --fault 'drop:port=70000'"),
        (["serve", "--fault", "delay"], "delay needs delay=SECONDS"),
        (["serve", "--device", ""], "bad --device ''"),
        (["serve", "--device", "../x"], "bad --device '../x'"),
        (["serve", "--congestion", "bbr"], "invalid choice: 'bbr'"),
        (["serve", "--ecn", "2"], "invalid choice: '2'"),
        # the client commands
        (["stats", "--device", "../../etc/x"], "bad --device '../../etc/x'"),
        (["ss", "--device", ".."], "bad --device '..'"),
        (["fault", "drop", "--port", "70000"], "port=70000: want 1..65535"),
        (["fault", "drop", "--port", "x"], "argument --port: invalid int value"),
        (["fault", "drop", "--nth", "0"], "nth=0"),
        (["fault", "drop", "--count", "-1"], "count=-1"),
        (["fault", "drop", "--prob", "nan"], "prob=nan: want 0..1"),
        (["fault", "drop", "--prob", "2"], "prob=2.0: want 0..1"),
        (["fault", "delay", "--delay", "inf"], "delay=inf: want 0..60 seconds"),
        (["fault", "delay"], "delay needs delay=SECONDS"),
        (["fault", "drop", "--flags", "XMAS"], "'XMAS' is not one of"),
        (["fault", "clear", "--id", "0"], "argument --id: 0 is not in 1.."),
        (["fault", "explode"], "invalid choice: 'explode'"),
        (["fault", "drop", "--host", "2001:2::zz"], "is not an IPv4 or IPv6 address"),
        (["fault", "drop", "--family", "5"], "argument --family: invalid choice: '5'"),
        (["config", "--msl", "nan"], "bad --msl nan"),
        (["config", "--msl", "-5"], "bad --msl -5"),
        (["config", "--fin-timeout", "1e400"], "bad --fin-timeout 1e400"),
        (["config", "--time-wait-rst", "maybe"], "invalid choice: 'maybe'"),
        (["connect", "198.18.0.1", "70000"], "argument port: 70000 is not in 1..65535"),
        (["connect", "198.18.0.1", "0"], "argument port: 0 is not in 1..65535"),
        (["connect", "198.18.0.1", "http"], "argument port: 'http' is not a whole number"),
        (["connect", "example.org", "80"], "host: 'example.org' is not an IPv4 or IPv6 address"),
        (["connect", "::ffff:198.18.0.1", "80"], "is not an IPv4 or IPv6 address"),
        (["connect", "198.18.0.1"], "the following arguments are required: port"),
        (["ladder", "--conn", "x", "t.jsonl"], "argument --conn: invalid int value"),
        (["ladder", "--format", "png", "t.jsonl"], "invalid choice: 'png'"),
        (["explain"], "the following arguments are required: trace"),
        (["plot", "--kind", "pie", "t.jsonl"], "invalid choice: 'pie'"),
        (["plot", "--format", "pdf", "t.jsonl"], "invalid choice: 'pdf'"),
        (["plot", "--conn", "x", "t.jsonl"], "argument --conn: invalid int value"),
        (["report", "t.jsonl"], "the following arguments are required: -o/--output"),
        (["stats", "--bogus"], "unrecognized arguments: --bogus"),
        (["serve", "--services", "http:\u00b2"], "bad port in --services"),
        (["serve", "--syn-retries", "128"], "bad --syn-retries '128'"),
        (["serve", "--max-connections", _DIGITS_5000], "bad --max-connections '9999"),
        (["serve", "--trace-max-bytes", "100"], "bad --trace-max-bytes '100'"),
        (["serve", "--trace-max-bytes", _DIGITS_5000], "bad --trace-max-bytes '9999"),
        (["serve", "--trace-keep", "0"], "bad --trace-keep '0'"),
        (["serve", "--trace-keep", "\u00b2"], "bad --trace-keep"),
        (["serve", "--http-max-requests", _DIGITS_5000], "bad --http-max-requests '9999"),
        (["serve", "--http-max-head", "0"], "bad --http-max-head '0'"),
        (["serve", "--http-head-timeout", "nan"], "bad --http-head-timeout nan"),
        (["ladder", "--max-line-bytes", _DIGITS_5000, "t.jsonl"], "want a number of bytes"),
        (["ladder", "--max-line-bytes", "9" * 23, "t.jsonl"], "from 64 to 1073741824"),
        # a folder to write in: a file there, or nowhere to write
        (["lab", "--workdir", "/proc/version", "--", "true"], "--workdir /proc/version: not a"),
        (["lab", "--workdir", "/proc/sys/net", "--", "true"], "--workdir /proc/sys/net: No such"),
        (["lesson", "run", "handshake", "-o", "/proc/version"], "-o /proc/version: not a folder"),
    ],
)
def test_every_bad_value_is_a_usage_error(
    argv: list[str], expected: str, cli_error: Callable[..., str]
) -> None:
    """Exit code 2, one line "ustack: error: ...", no traceback (cli_error checks)."""
    assert expected in cli_error(argv)


def test_trace_host_takes_either_family_in_the_text_the_trace_writes() -> None:
    argv = ["serve", "--no-control", "--trace", "-", "--trace-host", "2001:0002::0001"]
    argv += ["--trace-host", "198.18.0.1"]
    config = serve_config(build_parser().parse_args(argv))
    assert config.trace_filter.addresses == {"2001:2::1", "198.18.0.1"}


def test_fault_host_and_family_make_a_rule_of_either_family() -> None:
    args = build_parser().parse_args(["fault", "drop", "--host", "2001:0002::1", "--family", "6"])
    assert (args.host, args.family) == ("2001:2::1", "6")
    assert fault_rule("drop:host=2001:2::1,family=6").describe()["host"] == "2001:2::1"


def test_trace_paths_that_may_be_written_pass_and_nothing_is_created(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    existing = tmp_path / "old.jsonl"
    existing.write_text("")
    new = tmp_path / "new.pcap"
    new_ng = tmp_path / "new.pcapng"
    argv = ["serve", "--no-control", "--trace", "-", "--trace", str(fifo)]
    argv += ["--trace", str(existing), "--trace", str(new), "--trace", str(new_ng)]
    config = cli.serve_config(cli.build_parser().parse_args(argv))
    assert [spec.format for spec in config.traces] == ["text", "text", "jsonl", "pcap", "pcapng"]
    assert not new.exists() and not new_ng.exists()


@given(value=st.text(min_size=1, max_size=30).filter(lambda v: not v.startswith("-")))
@settings(max_examples=100, deadline=None)
@pytest.mark.parametrize(
    "flag",
    ["--trace-port", "--fault-seed", "--mtu", "--msl", "--fin-timeout", "--keepalive",
     "--address", "--linux-address", "--services", "--fault", "--trace-host",
     "--address6", "--linux-address6",
     "--syn-retries", "--max-connections", "--trace-max-bytes", "--trace-keep", "--min-pmtu",
     "--ipfrag-high-thresh", "--ipfrag-time",
     "--http-max-requests", "--http-max-head", "--http-head-timeout", "--icmp-ratelimit",
     "--icmp-msgs-per-sec", "--icmp-msgs-burst", "--icmp-ratemask", "--tcp-invalid-ratelimit"],
)  # fmt: skip
def test_any_value_of_a_serve_flag_is_accepted_or_one_line(flag: str, value: str) -> None:
    """Random text for each flag: a valid configuration, or a UsageError
    (main's one line, exit 2), never another exception."""
    with contextlib.suppress(cli.UsageError):
        cli.serve_config(cli.build_parser().parse_args(["serve", "--no-control", flag, value]))


def test_ss_shows_the_connections_that_agreed_to_ecn(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    row = {
        "id": 1, "state": "ESTABLISHED", "local": "198.18.0.2:80", "remote": "198.18.0.1:4000",
        "send_queue": 0, "recv_queue": 0, "snd_una": 1, "snd_nxt": 1, "rcv_nxt": 1,
        "snd_wnd": 65535, "rto": 0.2, "pmtu": 1500, "mss": 1460, "timers": {},
    }  # fmt: skip
    reply = {"ok": True, "listening": [], "connections": [{**row, "ecn": True}, row]}
    monkeypatch.setattr(clients, "request", lambda *_args, **_fields: reply)
    assert cli.main(["ss", "--control", str(tmp_path / "c.sock")]) == 0
    agreed, plain = capsys.readouterr().out.splitlines()[1:]
    assert agreed.endswith(" ecn") and not plain.endswith(" ecn")


# ---- ustack lesson -----------------------------------------------------------------------


def test_lesson_lists_every_lesson_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    from ustack.study.lessons import LESSONS

    for argv in (["lesson"], ["lesson", "list"]):
        assert cli.main(argv) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [line.split()[0] for line in lines] == [lesson.name for lesson in LESSONS]
        assert all(lesson.title in line for lesson, line in zip(LESSONS, lines, strict=True))


def test_lesson_run_takes_a_name_and_an_output_directory() -> None:
    args = build_parser().parse_args(["lesson", "run", "handshake", "-o", "out"])
    assert (args.lesson_action, args.name, args.output) == ("run", "handshake", Path("out"))
    args = build_parser().parse_args(["lesson", "run", "closed-port"])
    assert args.output is None  # ./lesson-closed-port


def test_lesson_run_with_a_bad_name_lists_the_names(cli_error: Callable[..., str]) -> None:
    err = cli_error(["lesson", "run", "three-way"])
    assert "no lesson 'three-way'; the lessons: handshake, close-ustack-first" in err
    assert "closed-port" in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [(["lesson", "run"], "required: name"), (["lesson", "teach"], "invalid choice")],
)
def test_lesson_bad_arguments(
    argv: list[str], expected: str, cli_error: Callable[..., str]
) -> None:
    assert expected in cli_error(argv)


def test_lesson_run_needs_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                               cli_error: Callable[..., str]) -> None:  # fmt: skip
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    err = cli_error(["lesson", "run", "handshake", "-o", str(tmp_path / "out")], code=1)
    assert "ustack lesson needs root" in err
    assert not (tmp_path / "out").exists()  # nothing touched


def test_queues_reach_the_config_and_refuse_what_one_worker_would_miss(
    cli_error: Callable[..., str],
) -> None:
    assert serve_config(build_parser().parse_args(["serve"])).queues == 1
    assert serve_config(build_parser().parse_args(["serve", "--queues", "4"])).queues == 4
    for bad in ("0", "65", "two"):
        assert "bad --queues" in cli_error(["serve", "--queues", bad])
    for extra in (["--trace", "t.jsonl"], ["--fault", "drop:count=1"], ["--peer-states"]):
        message = cli_error(["serve", "--queues", "2", *extra])
        assert f"{extra[0]} needs --queues 1" in message


def test_output_to_a_full_disk_is_one_line_and_exit_1() -> None:
    """`ustack explain T >/dev/full` (or ladder, lesson list): the write fails;
    one line on stderr, exit code 1, no traceback (also none at exit, from
    what stdout still held)."""
    trace = Path(__file__).resolve().parents[1] / "lesson_traces" / "closed-port.jsonl"
    for argv in (["explain", str(trace)], ["ladder", str(trace)], ["lesson", "list"]):
        with open("/dev/full", "w") as full:
            done = subprocess.run(
                [sys.executable, "-m", "ustack", *argv], stdout=full, stderr=subprocess.PIPE,
                text=True, timeout=60,
            )  # fmt: skip
        assert done.returncode == 1, argv
        assert done.stderr == "ustack: error: [Errno 28] No space left on device\n", argv


def test_a_log_that_cannot_be_written_is_told_once_not_a_traceback_per_line() -> None:
    """`ustack serve --log-file F` on a full disk: the lines are lost, and the
    first loss is one line on stderr (Python's own handler printed "--- Logging
    error ---" and a traceback for each line)."""
    program = (
        "import logging, pathlib\n"
        "from ustack.cli.serve_options import setup_logging\n"
        "setup_logging('info', pathlib.Path('/dev/full'))\n"
        "for i in range(3): logging.getLogger('ustack.test').info('line %d', i)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert done.stderr == (
        "ustack: cannot write the log ([Errno 28] No space left on device): lines are lost\n"
    )


def test_output_paths_are_checked_as_the_command_line_is_read(tmp_path: Path) -> None:
    """folder_to_write and file_to_write, the argparse types of the tools' and
    benchmarks' --workdir, --json, --keep ...: a bad path is a usage error at
    once, not a traceback after a long run."""
    new = folder_to_write(str(tmp_path / "new" / "folder"))
    assert new == tmp_path / "new" / "folder"
    assert list(tmp_path.iterdir()) == []  # nothing made yet (the run makes it), no probe left
    for text, why in [("/proc/version", "not a folder"), ("/proc/sys/x", "No such file")]:
        with pytest.raises(argparse.ArgumentTypeError, match=f"{text}: {why}"):
            folder_to_write(text)
    assert file_to_write(str(tmp_path / "r.json")) == tmp_path / "r.json"
    assert not (tmp_path / "r.json").exists()  # made later, by the run
    # Files that exist and take writes, where no new file could be made:
    # /dev/stdout, a process substitution's /dev/fd/N.
    assert file_to_write("/dev/stdout") == Path("/dev/stdout")
    read, write = os.pipe()
    try:
        assert file_to_write(f"/dev/fd/{write}") == Path(f"/dev/fd/{write}")
    finally:
        os.close(read)
        os.close(write)
    bad = [
        (str(tmp_path), "a folder, not a file"),
        ("/no/such/r.json", "no folder /no/such"),
        ("/proc/r.json", "/proc/r.json: "),  # /proc takes no file
    ]
    for text, why in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            file_to_write(text)


def test_a_stop_signal_ignored_from_the_start_stays_ignored() -> None:
    """`nohup python -m tools.soak ...` outlives its terminal: a SIGHUP it
    was started to ignore does not stop a run under the lab's Stopper."""
    program = (
        "import os, signal, sys, time\n"
        "from ustack.linux.lab import stoppable\n"
        "def main():\n"
        "    os.kill(os.getpid(), signal.SIGHUP)\n"
        "    time.sleep(0.3)\n"
        "    return 7\n"
        "sys.exit(stoppable(main, 'demo'))\n"
    )
    ignored = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),
    )  # fmt: skip
    assert (ignored.returncode, ignored.stderr) == (7, "")
    caught = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),  # (we may run under nohup)
    )  # fmt: skip
    assert (caught.returncode, caught.stderr) == (128 + signal.SIGHUP, "demo: stopped by SIGHUP\n")
