"""tools/scale.py's own checks: each invariant it reports must catch its fault."""

from __future__ import annotations

from tools import scale

N = 1000


def good_report(rounds: int = 3) -> scale.Report:
    report = scale.Report(N, 64, "both", ["198.18.0.101"], rss_start=40_000, fds_start=8)
    report.probe = {"failures": 0, "phases": {}}
    for number in range(1, rounds + 1):
        report.rounds.append(
            scale.Round(
                number, opened=N, established=N, connections_rows=N, closed=N, empty_s=1.0,
                rss_start=40_000, before=scale.Footprint(40_000 if number == 1 else 50_000, 8),
                held=scale.Footprint(50_000, 8), after=scale.Footprint(50_000, 8),
            )
        )  # fmt: skip
    return report


def test_a_clean_run_has_no_problem() -> None:
    assert scale.problems(good_report(), 0.05) == []
    assert good_report().rounds[0].kib_per_conn == 10.0


def test_each_fault_is_reported() -> None:
    report = good_report()
    report.rounds[1].after.fds = 9  # an fd leaked
    report.rounds[2].opened = N - 1  # a connection did not open
    report.rounds[2].left = {"TIME_WAIT": 3}
    report.rounds[2].empty_s = None
    report.final_left = {"LAST_ACK": 1}
    report.probe["failures"] = 1
    found = "\n".join(scale.problems(report, 0.05))
    assert "fds 8/8/9" in found
    assert "999 of 1000 opened" in found
    assert "connections left: {'TIME_WAIT': 3}" in found
    assert "left at the end" in found
    assert "probe failed" in found


def test_rss_may_stay_up_after_round_one_but_not_keep_growing() -> None:
    report = good_report()
    report.rounds[0].after.rss = 45_000  # round 2 reuses what round 1 freed: fine
    assert scale.problems(report, 0.05) == []
    report.rounds[2].after.rss = 50_000 + 501  # 5% of round 1's 10,000 KiB, plus one
    assert "RSS grew 501 KiB from round 2 to round 3" in scale.problems(report, 0.05)[0]


def test_rss_handed_back_between_rounds_is_not_a_leak_but_a_higher_peak_is() -> None:
    # As a CI run: the allocator gave arenas back after each round (after
    # 44,000, 45,000, 46,000), each round regrew to the same held peak.
    report = good_report()
    for r, after in zip(report.rounds, (44_000, 45_000, 46_000), strict=True):
        r.after.rss = after
    assert scale.problems(report, 0.05) == []
    # A leak raises the peak with all connections held.
    report.rounds[2].held.rss = 50_000 + 501
    assert "RSS grew 501 KiB from round 2 to round 3" in scale.problems(report, 0.05)[0]


def test_http_response_check() -> None:
    body = scale.PATTERN[:100]
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + body
    assert scale.http_response(response, 100) == (True, "")
    assert scale.http_response(response[:-1], 100) == (False, "")
    assert scale.http_response(response[:-1] + b"x", 100)[1] == "body differs from the pattern"
    assert "content-length" in scale.http_response(response, 99)[1]
    assert scale._echo_expect(b"abc", False, b"abc", until_eof=False) == (True, "")
    assert scale._echo_expect(b"abc", False, b"abc", until_eof=True) == (False, "")
    assert scale._echo_expect(b"abd", False, b"abc", until_eof=False)[1]
