"""docs/behaviours.md, our checklist of the handshake and the teardown, cannot
drift from the tests: every test it names exists, every file it names is there,
and each of its fifty behaviours is shown by at least one unit test.

Run as a script, it prints the node ids of one behaviour's tests, for pytest:

    python -m pytest $(python tests/unit/test_behaviours_doc.py 27)
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "behaviours.md"
BEHAVIOURS = 50
UNIT = "tests/unit/"

_BEHAVIOUR = re.compile(r"^### (\d+)\. ", re.M)
_ANY_HEADING = re.compile(r"^#{1,3} ", re.M)
_TEST = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")
_FILE = re.compile(r"`((?:tests|ustack)/[\w/]+\.py)(?:::\w+)?`")


def behaviours(text: str) -> dict[int, list[tuple[str, str]]]:
    """Each numbered behaviour, with the (file, test) pairs its section names."""
    found: dict[int, list[tuple[str, str]]] = {}
    for match in _BEHAVIOUR.finditer(text):
        end = _ANY_HEADING.search(text, match.end())
        section = text[match.end() : end.start() if end else len(text)]
        found[int(match.group(1))] = _TEST.findall(section)
    return found


def node_ids(number: int, text: str) -> list[str]:
    """The pytest node ids of the tests behaviour `number` names, in order."""
    return list(dict.fromkeys(f"{path}::{name}" for path, name in behaviours(text)[number]))


def test_the_checklist_numbers_fifty_behaviours_in_order() -> None:
    numbers = [int(n) for n in _BEHAVIOUR.findall(DOC.read_text())]
    assert numbers == list(range(1, BEHAVIOURS + 1))


def test_every_behaviour_is_shown_by_a_unit_test() -> None:
    found = behaviours(DOC.read_text())
    untested = [n for n, tests in found.items() if not any(p.startswith(UNIT) for p, _ in tests)]
    assert not untested, f"behaviours with no unit test named: {untested}"


def test_every_test_the_checklist_names_exists() -> None:
    refs = _TEST.findall(DOC.read_text())
    assert refs
    missing = []
    for path, name in refs:
        assert path.startswith(UNIT), f"{path}::{name}: name interop tests by file only"
        # pytest puts tests/unit on the import path
        module = importlib.import_module(Path(path).stem)
        function = getattr(module, name, None)
        if not (
            name.startswith("test_")
            and inspect.isfunction(function)
            and function.__module__ == module.__name__
        ):
            missing.append(f"{path}::{name}")
    assert not missing, f"tests named in docs/behaviours.md that do not exist: {missing}"


def test_every_file_the_checklist_names_exists() -> None:
    paths = set(_FILE.findall(DOC.read_text()))
    assert paths
    missing = sorted(p for p in paths if not (ROOT / p).is_file())
    assert not missing, f"files named in docs/behaviours.md that do not exist: {missing}"


def test_no_test_name_carries_a_checklist_number() -> None:
    """Tests say what they show; the number lives in docs/behaviours.md only."""
    numbered = re.compile(r"^\s*(?:async\s+)?def (test_b\d\w*)", re.M)
    found = [
        f"{path.relative_to(ROOT)}::{name}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        for name in numbered.findall(path.read_text())
    ]
    assert not found, found


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit(f"usage: {sys.argv[0]} NUMBER  (1..{BEHAVIOURS}): print its tests' node ids")
    number = int(sys.argv[1])
    text = DOC.read_text()
    if number not in behaviours(text):
        sys.exit(f"no behaviour {number} in {DOC}")
    print("\n".join(node_ids(number, text)))
