"""Every arrow of the state table is exercised by at least one script.

The script tests are run again here, in-process, with a recorder on the
trace; the table printed with `pytest -s` shows which script covers which
transition.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
from collections.abc import Callable
from collections.abc import Iterator
from functools import partial
from typing import Any

import tcpscript

from ustack.tcp.states import TRANSITIONS
from ustack.tcp.states import Event
from ustack.tcp.states import State
from ustack.trace.records import StateChange

SCRIPT_MODULES = [
    "test_tcp_recovery",
    "test_tcp_open",
    "test_tcp_close",
    "test_tcp_data",
    "test_tcp_every_state",
    "test_tcp_sequence_and_windows",
    "test_icmp_feedback",
]


def _calls(function: Callable[..., Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The test's parametrized cases (and the `family` fixture's), as (id,
    keyword arguments)."""
    axes = []
    for mark in getattr(function, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names = [n.strip() for n in mark.args[0].split(",")] if isinstance(
            mark.args[0], str) else list(mark.args[0])  # fmt: skip
        cases = [dict(zip(names, v if len(names) > 1 else (v,), strict=True))
                 for v in mark.args[1]]  # fmt: skip
        axes.append(cases)
    if "family" in inspect.signature(function).parameters:
        # The conftest.py fixture: the script over each IP version.
        axes.append([{"family": family} for family in tcpscript.FAMILIES])
    for combination in itertools.product(*axes):
        kwargs: dict[str, Any] = {}
        for case in combination:
            kwargs.update(case)
        label = "-".join(str(v) for v in kwargs.values())
        yield (f"[{label}]" if label else ""), kwargs


def script_test_runs() -> Iterator[tuple[str, Callable[[], object]]]:
    """Every case of every script test in SCRIPT_MODULES: its id and a call
    that runs it (the caller records what the scripts do)."""
    for module_name in SCRIPT_MODULES:
        module = importlib.import_module(module_name)
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if not name.startswith("test_") or function.__module__ != module.__name__:
                continue
            for label, kwargs in _calls(function):
                yield f"{module_name}::{name}{label}", partial(function, **kwargs)


def covering_scripts() -> dict[tuple[State, Event], list[str]]:
    covered: dict[tuple[State, Event], list[str]] = {}
    current = ""

    def record(change: StateChange) -> None:
        covered.setdefault((change.old, change.event), []).append(current)

    tcpscript.transition_recorder = record
    try:
        for test_id, run in script_test_runs():
            current = test_id  # (what record() files the transitions under)
            run()
    finally:
        tcpscript.transition_recorder = None
    return covered


def test_every_transition_is_exercised() -> None:
    covered = covering_scripts()
    width = max(len(f"{s} --{e.name}--> {t.new_state}") for (s, e), t in TRANSITIONS.items())
    print("\ntransition coverage:")
    for (state, event), transition in TRANSITIONS.items():
        arrow = f"{state} --{event.name}--> {transition.new_state}"
        scripts = sorted(set(covered.get((state, event), [])))
        first = scripts[0] if scripts else "NOT COVERED"
        print(f"  {arrow:<{width}}  {len(scripts):>3}  {first}")
    missing = [f"{s} --{e.name}-->" for (s, e) in TRANSITIONS if (s, e) not in covered]
    assert not missing, f"transitions no script exercises: {missing}"
    unknown = [key for key in covered if key not in TRANSITIONS]
    assert not unknown, unknown
