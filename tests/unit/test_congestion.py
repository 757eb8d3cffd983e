"""The congestion controllers against the formulas of RFC 5681 and RFC 9438."""

from __future__ import annotations

import pytest

from ustack.tcp import congestion
from ustack.tcp.congestion import Cubic
from ustack.tcp.congestion import NewReno
from ustack.tcp.congestion import make

MSS = 1000


def test_newreno_slow_start_then_avoidance() -> None:
    cc = NewReno(MSS, 10 * MSS)
    cc.on_ack(MSS, 0.0, 0.01)
    assert cc.cwnd == 11 * MSS  # slow start: one segment per segment acknowledged
    cc.ssthresh = cc.cwnd
    for _ in range(10):
        cc.on_ack(MSS, 0.0, 0.01)
    assert cc.cwnd == 11 * MSS  # not yet a whole window acknowledged
    cc.on_ack(MSS, 0.0, 0.01)
    assert cc.cwnd == 12 * MSS  # one segment per window (RFC 5681 3.1)


def test_newreno_loss_and_timeout() -> None:
    cc = NewReno(MSS, 20 * MSS)
    cc.on_loss(0.0, 20 * MSS)
    assert (cc.ssthresh, cc.cwnd) == (10 * MSS, 10 * MSS)
    cc.on_timeout(0.0, 2 * MSS)
    assert (cc.ssthresh, cc.cwnd) == (2 * MSS, MSS)  # ssthresh floor 2 segments


def test_cubic_reduces_by_beta_and_remembers_w_max() -> None:
    cc = Cubic(MSS, 100 * MSS)
    cc.on_loss(0.0, 100 * MSS)
    assert cc.ssthresh == cc.cwnd == 70 * MSS
    assert cc.w_max == 100
    cc.on_loss(1.0, 70 * MSS)  # below the old maximum: fast convergence
    assert cc.w_max == pytest.approx(70 * 1.7 / 2)


def test_cubic_grows_back_to_w_max_at_k() -> None:
    cc = Cubic(MSS, 100 * MSS)
    cc.on_loss(0.0, 100 * MSS)
    k = ((100 - 70) / Cubic(1000, 1000).C) ** (1 / 3)  # RFC 9438 eq. 2: about 4.2 s
    rtt, now = 0.1, 0.0  # long enough that the cubic curve, not Reno's line, leads
    while now < k:
        now += rtt
        for _ in range(cc.cwnd // MSS):
            cc.on_ack(MSS, now, rtt)
    assert 95 * MSS <= cc.cwnd <= 105 * MSS  # the plateau around W_max


def test_cubic_is_never_slower_than_reno_on_short_rtts() -> None:
    cc = Cubic(MSS, 100 * MSS)
    cc.on_loss(0.0, 100 * MSS)
    rtt, now = 0.001, 0.0
    for _ in range(200):  # 200 round trips: Reno adds about 0.53 segment each (RFC 9438 4.3)
        now += rtt
        for _ in range(cc.cwnd // MSS):
            cc.on_ack(MSS, now, rtt)
    assert cc.cwnd >= (70 + 200 * 0.5) * MSS


def test_make_rejects_unknown_names() -> None:
    assert make("newreno", MSS, MSS).name == "newreno"
    with pytest.raises(ValueError, match="unknown congestion control"):
        make("vegas", MSS, MSS)


@pytest.mark.parametrize("name", sorted(congestion.ALGORITHMS))
def test_copy_keeps_every_field_apart(name):
    """cc.copy() (what an undo restores, dsack.py) is copy.copy's result:
    every slot (or, compiled, every attribute mypyc lays out) the same, the
    object apart."""
    cc = congestion.make(name, 1000, 10_000)
    for now in range(30):
        cc.on_ack(1000, float(now), 0.05)
    cc.on_loss(31.0, 20_000)
    cc.on_ack(1000, 32.0, 0.05)
    kind = type(cc)
    fields = getattr(kind, "__slots__", None) or kind.__mypyc_attrs__
    other = cc.copy()
    assert other is not cc and type(other) is kind
    assert [getattr(other, f) for f in fields] == [getattr(cc, f) for f in fields]
