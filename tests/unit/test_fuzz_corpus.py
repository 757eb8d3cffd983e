"""The fuzzer's regression corpus, replayed, and a short fuzz run.

Every file in tests/fuzz_corpus/ is a case: an input that once broke the
stack (minimised by tools/fuzz.py) or a hand-made one for the nastiest
corners (tools/fuzz_seeds.py). Replaying it must raise nothing, keep every
invariant after every action and leave nothing behind. The short run feeds
a few thousand random programs (fixed seed) through the same fuzz target,
so CI exercises it; the long, coverage-guided run is `tools/fuzz.py`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import fuzzworld
import pytest

from tools import fuzz
from tools import fuzz_seeds
from ustack.tcp.invariants import InvariantChecker
from ustack.tcp.invariants import InvariantError
from ustack.tcp.states import State

CORPUS = Path(__file__).resolve().parent.parent / "fuzz_corpus"
CASES = sorted(CORPUS.glob("*.json"))
SHORT_RUN = 2000  # programs: a few seconds


def test_the_corpus_is_there() -> None:
    assert len(CASES) >= 10


@pytest.mark.parametrize("path", CASES, ids=[path.stem for path in CASES])
def test_corpus_case_replays_cleanly(path: Path) -> None:
    case = fuzzworld.load_case(path)
    try:
        world = fuzzworld.replay(case)
    except fuzzworld.FuzzFailure as failure:
        pytest.fail(f"{path.name}: {failure.signature}\n{failure.message}")
    packets = [action for action in case["actions"] if action[0] == "packet"]
    counters = world.stack.counters
    assert counters["ip.in"] + counters["ip6.in"] == len(packets)  # every packet went in


def test_replay_takes_a_folder_and_tells_a_file_that_is_no_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m tools.fuzz --replay DIR FILE...`: the folder's cases are
    replayed; a file that is not a case (no JSON, no actions, missing) is a
    failure told in one line, not a traceback."""
    folder = tmp_path / "cases"
    folder.mkdir()
    shutil.copy(CORPUS / "seed-keepalive.json", folder)
    (tmp_path / "empty.json").write_text("{}")
    (tmp_path / "text.json").write_text("not JSON")
    (tmp_path / "no-setup.json").write_text('{"setup": {}, "actions": []}')
    assert fuzz.replay_cases([folder]) == 0
    (tmp_path / "nothing").mkdir()
    assert fuzz.replay_cases([tmp_path / "nothing"]) == 1  # no case replayed: no pass
    others = [tmp_path / name for name in ("empty.json", "text.json", "no-setup.json", "gone.json")]
    assert fuzz.replay_cases([folder, *others]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "ok   seed-keepalive.json" in out[0] and out[-1] == "1/5 cases pass"
    assert [line.split(":")[0] for line in out if line.startswith("FAIL")] == [
        f"FAIL {path}" for path in others
    ]


@pytest.mark.parametrize("name", list(fuzz_seeds.SEEDS))
def test_a_hand_made_seed_is_what_fuzz_seeds_writes_today(name: str) -> None:
    """tools/fuzz_seeds.py aims each seed at a corner with packets built from
    the live TCB (window edges, the closing ACK of a recovery): a change of
    the stack or of the setups that moves them shows here, and the corpus is
    written again (python -m tools.fuzz_seeds) instead of drifting off its
    corners unseen."""
    _case, text = fuzz_seeds.written(name)
    assert text == (CORPUS / f"seed-{name}.json").read_text(), "python -m tools.fuzz_seeds"


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--max-len", "0"], "argument --max-len: want a whole number >= 1, not '0'"),
        (["--timeout", "nan"], "argument --timeout: want seconds in (0, 3600], not 'nan'"),
        (["--run-input", "/"], "--run-input /: Is a directory"),
        (["--work", "/proc/version", "--inputs", "1"], "--work /proc/version: File exists"),
    ],
)
def test_a_bad_fuzz_argument_is_one_line(argv: list[str], error: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tools.fuzz", *argv], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == f"fuzz.py: error: {error}"


def test_short_fuzz_run_finds_nothing() -> None:
    next_input = fuzzworld.random_programs(seed=20240611)
    coverage = fuzzworld.Coverage()
    for _ in range(SHORT_RUN):
        data = next_input()
        try:
            fuzzworld.run_program(data, coverage)
        except fuzzworld.FuzzFailure as failure:
            case = fuzzworld.minimize(failure.case, failure.signature)
            pytest.fail(
                f"{failure.signature}\n{failure.message}\n"
                f"save this case in tests/fuzz_corpus/:\n{fuzzworld.case_to_json(case)}"
            )
    assert coverage.packets > 5 * SHORT_RUN
    assert len(coverage.states) >= 8  # the run gets past the handshakes


def test_a_program_is_deterministic_and_its_case_replays_the_same() -> None:
    data = bytes(range(7, 250, 3)) * 4
    first = fuzzworld.run_program(data)
    second = fuzzworld.run_program(data)
    assert first.actions == second.actions
    again = fuzzworld.replay(fuzzworld.make_case(first))
    assert dict(again.stack.counters) == dict(first.stack.counters)


def test_the_checker_catches_a_broken_tcb() -> None:
    """The checker itself: a TCB put in a state it must never reach."""
    world = fuzzworld.World(fuzzworld.SETUPS[0])
    world.apply(["connect", 8080, 50000])
    (conn,) = world.tcp.connections.values()
    assert conn.state is State.SYN_SENT
    conn.snd_nxt = (conn.snd_una - 1) & 0xFFFFFFFF
    with pytest.raises(InvariantError, match=r"snd\.una<=snd\.nxt"):
        InvariantChecker(world.tcp).check(world.now)


def test_the_finish_catches_a_leak() -> None:
    """A connection nobody closes and no timer ends is a leak."""
    world = fuzzworld.World(fuzzworld.SETUPS[0])
    world.apply(["connect", 8080, 50000])
    (conn,) = world.tcp.connections.values()
    world.apps.clear()  # forget the application: nobody will close it
    conn._timers.deadlines.clear()
    world.tcp._heap.scheduled.clear()
    with pytest.raises(fuzzworld.FuzzFailure) as caught:
        world.finish()
    assert caught.value.signature.startswith("invariant")


def test_an_uncounted_packet_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every packet must end as accepted or as a counted drop."""
    world = fuzzworld.World(fuzzworld.SETUPS[0])
    monkeypatch.setattr(world.stack.counters, "drop", lambda *args, **kwargs: None)
    with pytest.raises(fuzzworld.FuzzFailure, match="unaccounted"):
        world.apply(["packet", b"\x45\x00garbage"])


def test_the_window_check_sees_every_data_segment(monkeypatch) -> None:
    """The world's connections are all of the checking subclass (the demux's
    connection_class), so its _emit runs for every segment: in the compiled
    build too, where only a subclass made so from the start overrides."""
    checked = []
    emit = fuzzworld._WindowChecked._emit

    def counting(self, segment) -> None:
        checked.append(len(segment.payload))
        emit(self, segment)

    monkeypatch.setattr(fuzzworld._WindowChecked, "_emit", counting)
    world = fuzzworld.replay(fuzzworld.load_case(CORPUS / "seed-sack-recovery.json"))
    assert world.tcp.connection_class is fuzzworld._WindowChecked
    assert any(checked), "no data segment went through the check"
    assert world.stack.counters["tcp.out"] >= len(checked)
