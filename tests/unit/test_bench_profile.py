"""bench/profile_daemon.py's reading of py-spy's raw stacks (no py-spy, no daemon):
the top functions by own and total samples, and the speedscope document."""

from __future__ import annotations

import profile_daemon as profile

RAW = """\
run (asyncio/base_events.py:600);on_readable (daemon/running.py:250);receive (stack.py:10) 6
run (asyncio/base_events.py:600);on_readable (daemon/running.py:251);receive (stack.py:12) 2
run (asyncio/base_events.py:600);select (selectors.py:468) 2
not a stack line
"""


def test_top_counts_own_and_total_samples_by_function() -> None:
    stacks = profile.parse_collapsed(RAW)
    assert len(stacks) == 3 and stacks[0][1] == 6
    text = profile.top(stacks, 3)
    own = text.split("by own samples:")[1].split("\n\n")[0]
    assert own.splitlines()[1].split() == ["80.0%", "receive", "(stack.py)"]
    total = text.split("by total samples")[1]
    assert "100.0%  run (asyncio/base_events.py)" in total
    assert "80.0%  on_readable (daemon/running.py)" in total
    assert text.startswith("10 samples")


def test_the_speedscope_document_shares_frames_root_first() -> None:
    document = profile.speedscope(profile.parse_collapsed(RAW), "test")
    frames = document["shared"]["frames"]  # type: ignore[index]
    (prof,) = document["profiles"]  # type: ignore[misc]
    assert prof["type"] == "sampled" and prof["weights"] == [6, 2, 2] and prof["endValue"] == 10
    first = [frames[i] for i in prof["samples"][0]]
    assert [f["name"] for f in first] == ["run", "on_readable", "receive"]
    assert first[2] == {"name": "receive", "file": "stack.py", "line": 10}
    assert len(frames) == 6  # the two on_readable lines and two receive lines are frames apart
