"""Every transition of the health state machine, driven with simulated time."""

from __future__ import annotations

import pytest

from wanlb.health.machine import HealthMachine, HealthParams
from wanlb.states import IspStatus

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


# --- enable decides at once from the rounds seen while disabled (see the machine's docstring) ---------


def test_enable_after_enough_good_rounds_is_up_at_once() -> None:
    m = HealthMachine(HealthParams(down_after=3, up_after=5))
    m.disable(0.0)
    t, trs = feed(m, 0.2, "+++++")
    assert trs == [] and m.status == DISABLED
    tr = m.enable(t)
    assert tr is not None and (tr.old, tr.new) == (DISABLED, UP) and m.status == UP
    assert tr.reason == "enabled by admin; 5 good rounds"


def test_enable_with_too_few_good_rounds_waits_for_the_rest() -> None:
    m = HealthMachine(HealthParams(down_after=3, up_after=5))
    m.disable(0.0)
    t, _ = feed(m, 0.2, "---+++")
    tr = m.enable(t)
    assert tr is not None and tr.new == DOWN and tr.reason == "enabled by admin; waiting for 2 more good rounds"
    assert not m.broken  # not failing: nothing to flush
    t, trs = feed(m, t, "++")
    assert [(x.old, x.new) for x in trs] == [(DOWN, UP)]


def test_enable_when_the_probes_fail_is_down_and_broken() -> None:
    m = HealthMachine(HealthParams(down_after=3, up_after=5))
    m.disable(0.0)
    t, _ = feed(m, 0.2, "+++++---")
    tr = m.enable(t)
    assert tr is not None and tr.new == DOWN and tr.reason == "enabled by admin; 3 failed rounds" and m.broken


def test_enable_with_bad_quality_is_degraded() -> None:
    m = HealthMachine(HealthParams(up_after=2, window=4, max_latency=0.05))
    m.disable(0.0)
    t, _ = feed(m, 0.2, "++++", latency=0.2)
    tr = m.enable(t)
    assert tr is not None and tr.new == DEGRADED and "latency" in tr.reason


def test_enable_with_the_link_down_is_down_whatever_the_probes_or_their_absence() -> None:
    for probed in (True, False):
        m = HealthMachine(HealthParams(up_after=1))
        m.disable(0.0)
        assert m.link(0.1, usable=False, probed=probed) is None  # drained: no transition, but remembered
        feed(m, 0.2, "+++")
        tr = m.enable(1.0, probed=probed)
        assert tr is not None and tr.new == DOWN and tr.reason == "enabled by admin; link down" and m.broken


# --- link events --------------------------------------------------------------------------------------


def test_link_down_is_down_at_once_and_rounds_cannot_lift_it() -> None:
    m = HealthMachine(HealthParams(down_after=3, up_after=2))
    tr = m.link(0.0, usable=False, probed=True)
    assert tr is not None and (tr.old, tr.new, tr.reason) == (UP, DOWN, "link down") and m.broken
    assert m.link(0.1, usable=False, probed=True) is None  # same state again: nothing
    _, trs = feed(m, 0.2, "++++")
    assert trs == [] and m.status == DOWN


def test_link_up_of_a_probed_isp_waits_for_good_rounds_after_it() -> None:
    m = HealthMachine(HealthParams(down_after=3, up_after=2))
    m.link(0.0, usable=False, probed=True)
    t, _ = feed(m, 0.2, "+")  # a round that passed while the link was down does not count
    assert m.link(t, usable=True, probed=True) is None
    assert m.status == DOWN and not m.broken
    t, trs = feed(m, t, "+")
    assert trs == []
    t, trs = feed(m, t, "+")
    assert [(x.old, x.new) for x in trs] == [(DOWN, UP)]


def test_link_up_of_an_unprobed_isp_is_up_at_once() -> None:
    m = HealthMachine(HealthParams())
    m.link(0.0, usable=False, probed=False)
    tr = m.link(1.0, usable=True, probed=False)
    assert tr is not None and (tr.old, tr.new) == (DOWN, UP) and not m.broken


def test_link_changes_while_disabled_do_not_move_the_status() -> None:
    m = HealthMachine(HealthParams())
    m.disable(0.0)
    assert m.link(0.1, usable=False, probed=True) is None and m.status == DISABLED and m.link_down
    assert m.link(0.2, usable=True, probed=True) is None and m.status == DISABLED and not m.link_down
