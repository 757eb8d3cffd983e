"""bench/results.py and bench/compare.py on synthetic data (no network, no
root): the results document's shape, its file name, and the row-by-row
comparison that flags regressions beyond the reps' spread. The results files
kept in bench/results/ must load too."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import compare
import pytest
import results
from results import Row


def doc(rows: list[tuple[str, Row]], revision: str = "abc1234", date: str = "2026-12-07") -> dict:
    return results.document(
        rows,
        options={"settings": {"reps": 3}, "quick": True, "ipv6": True, "note": "synthetic"},
        machine={"cpus": 2, "load_average": [1.0, 1.0, 1.0]},
        notes={},
        elapsed=12.34,
        problems=0,
        revision=revision,
        date=f"{date}T10:00:00+0000",
    )


def rate(ustack: list[float], kernel: list[float], key: str = "connect") -> tuple[str, Row]:
    return key, Row("connect+close, discard port", "conn/s", "higher", ustack, kernel)


def test_the_document_keeps_every_rep_and_round_trips(tmp_path: Path) -> None:
    rows = [
        rate([3000, 3100, 2900], [5000, 5100, 4900]),
        ("p50", Row("echo p50, median", "us", "lower", [80, 82, 90], [27, 28, 30], how="median")),
        ("fail", Row("ab failed, all reps", "count", "", [0, 1, 0], [0, 0, 0], how="sum")),
    ]
    d = doc(rows)
    assert d["format"] == results.FORMAT and d["elapsed_s"] == 12.3
    first = d["rows"][0]
    assert first["key"] == "connect" and first["ustack"] == 3100 and first["kernel"] == 5100
    assert first["ratio"] == pytest.approx(3100 / 5100)
    assert first["ustack_reps"] == [3000, 3100, 2900]
    assert d["rows"][1]["ustack"] == 82 and d["rows"][2]["ustack"] == 1
    assert d["rows"][2]["ratio"] is None  # a count has no ratio
    path = results.save_path(d, folder=tmp_path)
    assert path.name == "2026-12-07-abc1234.json"
    path.write_text(json.dumps(d))
    assert results.save_path(d, folder=tmp_path).name == "2026-12-07-abc1234-2.json"
    assert results.save_path(d, "connections", tmp_path).name == (
        "2026-12-07-abc1234-connections.json"
    )
    assert results.load(path) == json.loads(json.dumps(d))


def test_load_refuses_other_json(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="not a bench results file"):
        results.load(other)
    d = doc([rate([1], [1])])
    del d["rows"][0]["ustack_reps"]
    other.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="lacks"):
        results.load(other)
    # The right format, the wrong shape (bench/compare.py read it: TypeError, KeyError)
    for key, value, said in [("rows", 5, "no rows"), ("machine", None, "no machine")]:
        d = doc([rate([1], [1])])
        d[key] = value
        other.write_text(json.dumps(d))
        with pytest.raises(ValueError, match=said):
            results.load(other)
    d = doc([rate([1], [1])])
    d["rows"] = [5]
    other.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="a row that is not an object"):
        results.load(other)


def verdicts(old: dict, new: dict) -> dict[tuple[str, str], str]:
    return {(c.key, c.what): c.verdict for c in results.compare(old, new)}


def test_a_drop_beyond_the_spread_is_a_regression_and_one_within_it_is_not() -> None:
    old = doc([rate([3000, 3050, 2950], [5000, 5050, 4950])])
    slower = doc([rate([2000, 2050, 1950], [5000, 5050, 4950])])
    v = verdicts(old, slower)
    assert v[("connect", "ustack")] == "regression"
    assert v[("connect", "ratio")] == "regression"
    assert v[("connect", "kernel")] == ""
    # 8 % lower, but the new reps spread over 30 %: noise.
    noisy = doc([rate([2760, 2300, 1900], [5000, 5050, 4950])])
    assert verdicts(old, noisy)[("connect", "ustack")] == ""
    # The whole machine slower by a third: both sides drop, the ratio holds.
    loaded = doc([rate([2000, 2030, 1970], [3333, 3360, 3300])])
    v = verdicts(old, loaded)
    assert v[("connect", "ustack")] == "regression" and v[("connect", "ratio")] == ""
    faster = doc([rate([4000, 4050, 3950], [5000, 5050, 4950])])
    assert verdicts(old, faster)[("connect", "ustack")] == "better"


def test_latency_and_memory_regress_upwards_counts_from_zero() -> None:
    def rows(p50: list[float], rss: float, failed: list[float]) -> list[tuple[str, Row]]:
        return [
            ("p50", Row("p50", "us", "lower", p50, [27, 27], how="median")),
            ("rss", Row("idle RSS", "KiB/conn", "", [rss], [4.7], how="one")),
            ("fail", Row("failed", "count", "", failed, [0, 0], how="sum")),
        ]

    old, new = doc(rows([80, 81], 7.0, [0, 0])), doc(rows([120, 121], 9.0, [0, 3]))
    v = verdicts(old, new)
    assert v[("p50", "ustack")] == v[("rss", "ustack")] == v[("fail", "ustack")] == "regression"
    v = verdicts(new, old)
    assert v[("p50", "ustack")] == v[("rss", "ustack")] == v[("fail", "ustack")] == "better"
    # A one-measurement row within the tolerance (10 %) is no change.
    assert verdicts(old, doc(rows([80, 81], 7.5, [0, 0])))[("rss", "ustack")] == ""


def test_rows_that_come_and_go() -> None:
    old = doc([rate([1], [1], "connect"), rate([1], [1], "gone")])
    new = doc([rate([1], [1], "connect"), rate([1], [1], "connectv6")])
    v = verdicts(old, new)
    assert v[("connectv6", "ustack")] == "new" and v[("gone", "ustack")] == "gone"


def test_compare_prints_the_rows_and_exits_4_on_a_regression(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(doc([rate([3000, 3050], [5000, 5050])])))
    new.write_text(json.dumps(doc([rate([2000, 2050], [5000, 5050])], revision="def5678")))
    assert compare.main([str(old), str(new)]) == 4
    out = capsys.readouterr().out
    assert "old: abc1234" in out and "new: def5678" in out and "synthetic" in out
    assert "REGRESSION" in out and "2 regression(s)" in out  # ustack's rate and the ratio
    assert compare.main([str(old), str(old)]) == 0
    assert "0 regression(s)" in capsys.readouterr().out


def test_the_kept_results_files_load() -> None:
    kept = [p for p in sorted(results.RESULTS.glob("*.json")) if "speedscope" not in p.name]
    assert kept, "bench/results/ keeps at least one run's results"
    for path in kept:
        d = results.load(path)
        assert d["machine"]["cpus"] and d["revision"] and d["rows"]
        assert all(len(row["ustack_reps"]) >= 1 for row in d["rows"] if row["ustack"] is not None)


def test_the_output_options_write_the_document_where_asked(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    results.add_output_options(parser, "connections")
    args = parser.parse_args(["--json", str(tmp_path / "out.json"), "--save", "--note", "hot"])
    assert args.note == "hot"
    written = doc([rate([1.0], [2.0])])
    results.write_outputs(written, args, "connections", folder=tmp_path)
    saved = tmp_path / "2026-12-07-abc1234-connections.json"
    assert json.loads(saved.read_text()) == json.loads((tmp_path / "out.json").read_text())
    assert results.load(saved)["rows"] == written["rows"]
