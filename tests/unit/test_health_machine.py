"""Every transition of the health state machine, driven with simulated time."""

from __future__ import annotations

import pytest

from wanlb.health.machine import HealthMachine, HealthParams
from wanlb.plan import IspStatus

UP, DOWN, DEGRADED, DISABLED = IspStatus.UP, IspStatus.DOWN, IspStatus.DEGRADED, IspStatus.DISABLED


def feed(m: HealthMachine, t: float, results: str, step: float = 0.2, latency: float = 0.01) -> tuple[float, list]:
    """Feed rounds: '+' ok, '-' failed. Returns (time after, transitions)."""
    out = []
    for c in results:
        tr = m.round(t, c == "+", latency if c == "+" else None)
        if tr:
            out.append(tr)
        t += step
    return t, out


def test_down_after_consecutive_failures_only() -> None:
    m = HealthMachine(HealthParams(down_after=3, up_after=5))
    t, trs = feed(m, 0.0, "--+--+")
    assert m.status == UP and trs == []
    t, trs = feed(m, t, "---")
    assert m.status == DOWN and [(x.old, x.new) for x in trs] == [(UP, DOWN)]
    assert trs[0].reason == "3 failed rounds"


def test_up_after_consecutive_good_rounds() -> None:
    m = HealthMachine(HealthParams(down_after=1, up_after=3), initial=DOWN)
    t, trs = feed(m, 0.0, "++-++")
    assert m.status == DOWN and trs == []
    t, trs = feed(m, t, "+")
    assert m.status == UP and [(x.old, x.new) for x in trs] == [(DOWN, UP)]


def test_degraded_with_hysteresis() -> None:
    p = HealthParams(down_after=5, window=10, max_loss=20, recover_loss=5)
    m = HealthMachine(p)
    t, trs = feed(m, 0.0, "++++++++-+")  # 10% loss: fine
    assert m.status == UP
    t, trs = feed(m, t, "-+-+")  # 3 of 10 lost: 30% > 20
    assert m.status == DEGRADED and trs[-1].new == DEGRADED and "loss" in trs[-1].reason
    t, trs = feed(m, t, "+++++")  # loss falls to 20%, then 10%: still above recover_loss 5
    assert m.status == DEGRADED
    t, trs = feed(m, t, "+++++")  # window clean: 0% ≤ 5
    assert m.status == UP and trs[-1].reason == "quality recovered"


def test_latency_limit_degrades() -> None:
    m = HealthMachine(HealthParams(window=5, max_latency=0.1, recover_latency=0.05))
    t, trs = feed(m, 0.0, "+++++", latency=0.2)
    assert m.status == DEGRADED and "latency" in trs[0].reason
    t, trs = feed(m, t, "+++++", latency=0.07)
    assert m.status == DEGRADED  # below max but above the recovery limit
    t, trs = feed(m, t, "+++++", latency=0.01)
    assert m.status == UP


def test_down_beats_degraded_and_recovery_can_land_in_degraded() -> None:
    m = HealthMachine(HealthParams(down_after=2, up_after=2, window=4, max_loss=30))
    t, _ = feed(m, 0.0, "--")
    assert m.status == DOWN
    t, trs = feed(m, t, "++")  # window: 2 of 4 lost = 50% > 30
    assert m.status == DEGRADED and trs[0].old == DOWN


def test_flapping_is_held_down_for_a_growing_interval() -> None:
    p = HealthParams(down_after=1, up_after=1, flap_window=60, hold_base=5, hold_max=20)
    m = HealthMachine(p)
    t, _ = feed(m, 0.0, "-+")  # first down: not flapping, no hold
    assert m.status == UP
    t, _ = feed(m, t, "-")  # second down within 60 s: hold 5 s
    assert m.status == DOWN and abs(m.hold_until - (t - 0.2 + 5)) < 1e-9
    t, _ = feed(m, t, "+" * 10)  # 2 s of good rounds: still held
    assert m.status == DOWN
    t, _ = feed(m, t, "+" * 20)  # past the hold
    assert m.status == UP
    t, _ = feed(m, t, "-")
    down_at = t - 0.2
    assert abs(m.hold_until - (down_at + 10)) < 1e-9  # doubled
    for _ in range(5):
        t, _ = feed(m, t + 100, "+-", step=0.2)  # keeps flapping... but 100 s apart: not within flap_window
    assert abs(m.hold_until - (t - 0.2)) < 1e-9  # hold reset once flaps are far apart


def test_hold_is_capped() -> None:
    m = HealthMachine(HealthParams(down_after=1, up_after=1, hold_base=5, hold_max=12))
    holds = []
    t = 0.0
    for _ in range(6):
        t, _ = feed(m, t, "-")
        holds.append(round(m.hold_until - (t - 0.2), 6))
        t = m.hold_until
        t, _ = feed(m, t, "+")
    assert holds == [0, 5, 10, 12, 12, 12]


def test_admin_disable_and_enable() -> None:
    m = HealthMachine(HealthParams(down_after=1, up_after=2))
    tr = m.disable(0.0)
    assert tr and tr.new == DISABLED
    t, trs = feed(m, 0.0, "++++--")
    assert m.status == DISABLED and trs == []  # probes do not override a drain
    tr = m.enable(t)
    assert tr and (tr.old, tr.new) == (DISABLED, DOWN)
    t, trs = feed(m, t, "++")
    assert m.status == UP
    assert m.enable(t) is None


def test_quality_reports_loss_latency_jitter() -> None:
    m = HealthMachine(HealthParams(window=4))
    m.round(0, True, 0.010)
    m.round(1, True, 0.030)
    m.round(2, False)
    m.round(3, True, 0.020)
    q = m.quality()
    assert q.loss_percent == 25.0
    assert abs(q.latency - 0.02) < 1e-9
    assert abs(q.jitter - 0.015) < 1e-9


def test_probe_loss_counts_lost_probes_of_passing_rounds() -> None:
    """One of two targets silent: every round passes, yet half the probes are lost."""
    m = HealthMachine(HealthParams(window=10, max_loss=20.0))
    transitions = [m.round(t * 0.2, True, 0.001, loss=0.5) for t in range(10)]
    assert m.quality().loss_percent == pytest.approx(50.0)
    assert [tr.new for tr in transitions if tr] == [IspStatus.DEGRADED]


def test_failing_is_tracked_while_disabled_so_enable_knows_the_link_died() -> None:
    m = HealthMachine(HealthParams(down_after=3))
    m.disable(0.0)
    _, transitions = feed(m, 0.2, "---")
    assert transitions == [] and m.status == DISABLED and m.failing
    tr = m.enable(1.0)
    assert tr is not None and tr.new == DOWN and m.failing


def test_degraded_goes_down_on_failed_rounds() -> None:
    m = HealthMachine(HealthParams(down_after=3, window=10, max_latency=0.05))
    t, trs = feed(m, 0.0, "++", latency=0.2)
    assert [tr.new for tr in trs] == [DEGRADED]
    t, trs = feed(m, t, "---")
    assert [(tr.old, tr.new) for tr in trs] == [(DEGRADED, DOWN)]


def test_enable_without_probes_is_up_at_once() -> None:
    m = HealthMachine(HealthParams())
    m.disable(0.0)
    tr = m.enable(1.0, probed=False)
    assert tr is not None and (tr.old, tr.new) == (DISABLED, UP) and m.status == UP
