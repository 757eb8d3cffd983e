"""`ustack lesson`: the textbook figures, each played in a throwaway namespace
against real Linux tools, with its trace, ladder and report page written out.

The lessons' words and checks are ustack/study/lessons.py; here, how each is
played (the same ways the interop tests produce these figures: nc, Python
sockets, `ustack connect`, fault rules, a SYN put on the TUN) and the run:
a namespace with the daemon (--trace, --peer-states, the lesson's faults and
a short MSL), removed on exit, on failure and on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ustack.cli.args import UsageError
from ustack.cli.args import writable_folder
from ustack.linux.lab import LINUX_ADDRESS
from ustack.linux.lab import STACK_ADDRESS
from ustack.linux.lab import LabError
from ustack.linux.lab import Netns
from ustack.linux.lab import Stopper
from ustack.linux.lab import UstackDaemon
from ustack.linux.lab import netns
from ustack.linux.lab import remove_stale_namespaces
from ustack.study import load
from ustack.study.ladder import build_ladder
from ustack.study.ladder_draw import draw_ascii
from ustack.study.ladder_draw import draw_svg
from ustack.study.lessons import LESSONS
from ustack.study.lessons import Lesson
from ustack.study.lessons import find_lesson
from ustack.study.lessons import lesson_names
from ustack.study.lessons import missing
from ustack.study.lessons import peer_states
from ustack.study.lessons import the_connection
from ustack.study.lessons import ustack_states
from ustack.study.plot import EXTRA_MISSING
from ustack.study.plot import PlotUnavailable
from ustack.study.report import build_report
from ustack.wire.ipv4 import PROTO_TCP
from ustack.wire.ipv4 import build_ipv4
from ustack.wire.tcp import SYN
from ustack.wire.tcp import build_tcp

Scenario = Callable[[Netns, UstackDaemon], None]
LINUX_PORT = 9000  # where the Linux servers listen for `ustack connect`
CLOSED_PORT = 9  # nothing listens there on the Linux side
OLD_SYN_PORT = 40000  # the old duplicate SYN's source port

# ---- how each lesson is played ---------------------------------------------------------


def _ustack_connect(daemon: UstackDaemon, port: int) -> list[str]:
    return [sys.executable, "-m", "ustack", "connect", "--control", str(daemon.control),
            LINUX_ADDRESS, str(port)]  # fmt: skip


@contextmanager
def _linux_server(ns: Netns, after_accept: str) -> Iterator[subprocess.Popen[bytes]]:
    """A Python server on Linux's LINUX_PORT running `after_accept` (with the
    accepted socket `c`) for one connection; it prints "listening" first, and
    is ended (by PID) afterwards."""
    code = (
        "import socket\n"
        f"srv = socket.create_server(({LINUX_ADDRESS!r}, {LINUX_PORT}))\n"
        "print('listening', flush=True)\n"
        "c, _ = srv.accept()\n" + after_accept
    )
    server = subprocess.Popen(ns.command(sys.executable, "-c", code), stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        if server.stdout.readline() != b"listening\n":
            raise LabError("the Linux server did not start")
        yield server
        server.wait(timeout=20)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def handshake(ns: Netns, daemon: UstackDaemon) -> None:
    ns.run("nc", "-N", STACK_ADDRESS, "7", input=b"hello\n", check=True)


def close_ustack_first(ns: Netns, daemon: UstackDaemon) -> None:
    # The client reads daytime's line to ustack's FIN, then closes half a
    # second later (the application's pace, not a wait for anything): Linux's
    # ACK of the FIN goes alone, its own FIN after it, four arrows.
    ns.python(
        "import socket, time\n"
        f"s = socket.create_connection(({STACK_ADDRESS!r}, 13), timeout=10)\n"
        "while s.recv(1024):\n"
        "    pass\n"
        "time.sleep(0.5)\n"
        "s.close()\n"
    )


def close_linux_first(ns: Netns, daemon: UstackDaemon) -> None:
    with _linux_server(ns, "c.sendall(b'hello from Linux\\n')\nc.close()\n"):
        client = subprocess.Popen(
            _ustack_connect(daemon, LINUX_PORT), stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert client.stdin is not None and client.stdout is not None
        client.stdout.read()  # to Linux's FIN: ustack is in CLOSE_WAIT
        client.stdin.close()  # our application closes: our FIN
        client.wait(timeout=20)


def half_close(ns: Netns, daemon: UstackDaemon) -> None:
    answer = "c.sendall(b'answer ' * 3000)\n"  # 21,000 bytes: several segments
    with _linux_server(ns, "while c.recv(65536):\n    pass\n" + answer + "c.close()\n"):
        result = subprocess.run(
            _ustack_connect(daemon, LINUX_PORT), input=b"question\n", capture_output=True,
            timeout=30,
        )  # fmt: skip
        if result.stdout != b"answer " * 3000:
            raise LabError(f"ustack connect got {len(result.stdout)} bytes: {result.stderr!r}")


def simultaneous_close(ns: Netns, daemon: UstackDaemon) -> None:
    # Linux closes as soon as it accepts; we close as soon as it says so. Each
    # packet takes 0.25 s (the lesson's fault rule), so both FINs are in
    # flight at once unless our close comes more than 0.25 s after Linux's.
    with _linux_server(ns, "c.close()\nprint('closed', flush=True)\n") as server:
        client = subprocess.Popen(
            _ustack_connect(daemon, LINUX_PORT), stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert client.stdin is not None and server.stdout is not None
        if server.stdout.readline() != b"closed\n":
            raise LabError("the Linux server did not close")
        client.stdin.close()
        client.wait(timeout=20)


def daytime_with_nc(ns: Netns, daemon: UstackDaemon) -> None:
    result = ns.run("nc", "-w", "10", STACK_ADDRESS, "13", check=True)
    if not result.stdout.endswith(b"-UTC\r\n"):
        raise LabError(f"daytime answered {result.stdout!r}")


def echo_with_nc(ns: Netns, daemon: UstackDaemon) -> None:
    lines = b"".join(b"line %d\n" % i for i in range(100))
    if ns.run("nc", "-N", STACK_ADDRESS, "7", input=lines, check=True).stdout != lines:
        raise LabError("echo did not send every line back")


def old_duplicate_syn(ns: Netns, daemon: UstackDaemon) -> None:
    # A SYN Linux's sockets never sent, put on the TUN as test_edges does:
    # the kernel has no socket for ustack's SYN,ACK and resets it.
    source = int.from_bytes(socket.inet_aton(LINUX_ADDRESS), "big")
    destination = int.from_bytes(socket.inet_aton(STACK_ADDRESS), "big")
    segment = build_tcp(
        src=source, dst=destination, src_port=OLD_SYN_PORT, dst_port=7, seq=1000, ack=0,
        flags=SYN, window=65535,
    )  # fmt: skip
    header = build_ipv4(
        src=source, dst=destination, protocol=PROTO_TCP, payload_length=len(segment)
    )
    ns.inject(header + bytes(segment))
    # The SYN and the RST both in: then the connection must be gone.
    deadline = time.monotonic() + 10
    while daemon.stats().get("tcp.in", 0) < 2:
        if time.monotonic() > deadline:
            raise LabError("no RST came back from Linux in 10 s")
        time.sleep(0.05)


def closed_port(ns: Netns, daemon: UstackDaemon) -> None:
    result = subprocess.run(
        _ustack_connect(daemon, CLOSED_PORT), input=b"", capture_output=True, timeout=30
    )
    if b"ECONNREFUSED" not in result.stderr:
        raise LabError(f"ustack connect to a closed port said: {result.stderr!r}")


SCENARIOS: dict[str, Scenario] = {
    "handshake": handshake,
    "close-ustack-first": close_ustack_first,
    "close-linux-first": close_linux_first,
    "half-close": half_close,
    "simultaneous-close": simultaneous_close,
    "lost-fin-fin-wait-1": daytime_with_nc,
    "lost-fin-last-ack": echo_with_nc,
    "lost-final-ack": daytime_with_nc,
    "old-duplicate-syn": old_duplicate_syn,
    "closed-port": closed_port,
}


# ---- the run ---------------------------------------------------------------------------


NS_KIND = "ustack-lesson"  # the lesson's namespace: ustack-lesson<pid>-<n>


def play(lesson: Lesson, out: Path) -> str:
    """Play the lesson in a namespace of its own; its traces (trace.jsonl,
    trace.pcapng) and the daemon's log (daemon.log) in `out`. What went wrong
    while playing, or ""."""
    work = Path(tempfile.mkdtemp(prefix="ustack-lesson-"))  # the control socket, the log
    failure = ""
    try:
        with netns(NS_KIND) as ns, UstackDaemon.start(
            ns, work, "--peer-states", "--trace", str(out / "trace.pcapng"),
            *lesson.serve_args, msl=lesson.msl, log_level="info",
        ) as daemon:  # fmt: skip
            try:
                SCENARIOS[lesson.name](ns, daemon)
                daemon.wait_until_no_connections(timeout=20)  # TIME_WAIT ends too
            except (LabError, AssertionError, subprocess.TimeoutExpired) as exc:
                failure = str(exc).strip() or type(exc).__name__
        shutil.copyfile(work / "trace.jsonl", out / "trace.jsonl")
    finally:
        if (work / "ustack.log").exists():  # the daemon's own words, for a run that failed
            shutil.copyfile(work / "ustack.log", out / "daemon.log")
        shutil.rmtree(work, ignore_errors=True)
    return failure


def run_lesson(lesson: Lesson, out: Path) -> int:
    """`ustack lesson run NAME`: 0 if the run showed what the lesson is about;
    128 + N if signal N (SIGINT, SIGTERM, SIGHUP) stopped it, everything
    removed all the same (the Stopper: play() in a thread of its own)."""
    if os.geteuid() != 0:
        raise LabError("ustack lesson needs root (it makes a network namespace): use sudo")
    remove_stale_namespaces()
    out = writable_folder(out.resolve(), "-o")
    out.mkdir(parents=True, exist_ok=True)
    stopper = Stopper(NS_KIND)
    failure = stopper.run(lambda: play(lesson, out))
    if failure is None:  # whatever play() made of its processes ending
        return 128 + stopper.stopped
    return show(lesson, out, failure)


def show(lesson: Lesson, out: Path, failure: str = "") -> int:
    """Write the ladder and the report of the lesson's connection in `out`,
    print what to look for, the ladder and the verdict."""
    records = load.load_trace(out / "trace.jsonl")
    summary = the_connection(records, lesson.port)
    gaps = [f"the run failed: {failure}"] if failure else []
    print(lesson.title)
    print()
    print("What to look for:")
    print(textwrap.fill(lesson.look_for, 98, initial_indent="  ", subsequent_indent="  "))
    print()
    if summary is None:
        gaps.append(f"a connection on port {lesson.port} (the trace has none)")
    else:
        events = summary.events
        ladder = build_ladder(events)
        (out / "ladder.txt").write_text(draw_ascii(ladder), encoding="utf-8")
        (out / "ladder.svg").write_text(draw_svg(ladder), encoding="utf-8")
        written = ["trace.jsonl", "trace.pcapng", "ladder.txt", "ladder.svg"]
        try:
            page = build_report(out / "trace.jsonl", summary.conn)
            (out / "report.html").write_text(page, encoding="utf-8")
            written.append("report.html")
        except PlotUnavailable:
            print(f"(no report page: {EXTRA_MISSING})")
        print(f"ustack's states: {' -> '.join(ustack_states(events)) or '(none)'}")
        linux = peer_states(events)
        print(f"Linux's states:  {' -> '.join(linux) or '(none: no Linux socket had it)'}")
        print()
        print(draw_ascii(ladder))
        print(f"Written to {out}: {', '.join(written)}")
        print(f"The reasons beside each packet: tshark -r {out / 'trace.pcapng'} -Y frame.comment")
        gaps += missing(lesson, events)
    if gaps:
        print("This run did NOT show the lesson (a loaded machine can do that: run it again):")
        for gap in gaps:
            print(f"  missing: {gap}")
        return 1
    print(f"Shown: {' -> '.join(lesson.states)}; every check of the lesson holds.")
    return 0


def list_lessons() -> str:
    width = max(map(len, lesson_names()))
    return "\n".join(f"{lesson.name:<{width}}  {lesson.title}" for lesson in LESSONS) + "\n"


def lesson_command(args: argparse.Namespace) -> int:
    if args.lesson_action in (None, "list"):
        sys.stdout.write(list_lessons())
        return 0
    lesson = find_lesson(args.name)
    if lesson is None:
        raise UsageError(
            f"lesson: no lesson {args.name!r}; the lessons: {', '.join(lesson_names())}"
        )
    return run_lesson(lesson, args.output or Path(f"lesson-{lesson.name}"))
