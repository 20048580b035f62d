"""The fleet with policies: sticky sets emptied before a flush, connections moved back on recovery."""

from __future__ import annotations

from typing import Any

import pytest

from wanlb import runtime
from wanlb.config import Config, parse_config
from wanlb.fleet import ClearSticky, Effect, Emit, Fleet, Flush, Reconcile, SaveState

PROBED = "health: {targets: [192.0.2.1], down_after: 3, up_after: 5, window: 10, max_latency: 50ms}"
ISPS = f"""\
isps:
  - {{name: a, interface: wan1, gateway: 100.64.1.1, {PROBED}}}
  - {{name: b, interface: wan2, gateway: 100.64.2.1, {PROBED}}}
  - {{name: c, interface: wan3, gateway: 100.64.3.1, tier: 2}}
"""  # c: the metered backup, not probed (always up)


def config(extra: str = "") -> Config:
    return parse_config(f"lan: {{interfaces: [lan0]}}\n{ISPS}{extra}")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def tick(self) -> tuple[float, float]:
        self.now += 0.2
        return self.now, 1_700_000_000 + self.now


def make(cfg: Config) -> tuple[Fleet, Clock]:
    state = runtime.allocate(cfg, None, reload=False).state
    return Fleet(cfg, state, {}, 0.0, 1_700_000_000.0), Clock()


def rounds(fleet: Fleet, clock: Clock, name: str, pattern: str) -> list[Effect]:
    """'+' a good round (10 ms), 's' a slow one (200 ms: degraded), '-' a failed one."""
    effects: list[Effect] = []
    for c in pattern:
        ok = c != "-"
        latency = {"+": 0.01, "s": 0.2, "-": None}[c]
        effects += fleet.round(name, *clock.tick(), ok, latency, 0.0 if ok else 1.0, "" if ok else "no answer")
    return effects


def summary(effects: list[Effect]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for e in effects:
        if isinstance(e, Reconcile):
            out.append(("reconcile",))
        elif isinstance(e, Flush):
            out.append(("flush", e.isp))
        elif isinstance(e, ClearSticky):
            out.append(("clear-sticky", e.isp))
        elif isinstance(e, Emit):
            out.append(("emit", e.event.isp, e.event.event))
        else:
            assert isinstance(e, SaveState)
            out.append(("save",))
    return out


def flushes(effects: list[Effect]) -> list[Flush]:
    return [e for e in effects if isinstance(e, Flush)]


def down(fleet: Fleet, clock: Clock, *names: str) -> None:
    for name in names:
        rounds(fleet, clock, name, "---")
    assert all(fleet.statuses()[n] == "down" for n in names)


# --- sticky -------------------------------------------------------------------------------------------------

STICKY_BALANCE = "balance: {sticky: {by: source, timeout: 10m}}\n"
STICKY_POLICY = "policies:\n  p: {members: [{isp: a}, {isp: c}], sticky: {by: source-dest}}\n"


@pytest.mark.parametrize("sticky", [STICKY_BALANCE, STICKY_POLICY], ids=["balance", "a policy"])
def test_with_sticky_an_isp_going_down_has_its_sticky_sets_emptied_before_its_flush(sticky: str) -> None:
    fleet, clock = make(config(sticky))
    effects = rounds(fleet, clock, "a", "---")
    assert summary(effects) == [("reconcile",), ("clear-sticky", "a"), ("flush", "a"), ("emit", "a", "down")]


@pytest.mark.parametrize("sticky", [STICKY_BALANCE, STICKY_POLICY], ids=["balance", "a policy"])
def test_with_sticky_every_way_out_of_use_empties_the_sets(sticky: str) -> None:
    fleet, clock = make(config(sticky))
    _, effects = fleet.disable("a", *clock.tick())  # a drain: no flush, but clients must move now
    assert summary(effects) == [("reconcile",), ("clear-sticky", "a"), ("emit", "a", "disabled")]
    effects = fleet.link("wan2", False, *clock.tick())
    assert summary(effects) == [("reconcile",), ("clear-sticky", "b"), ("flush", "b"), ("emit", "b", "down")]
    # still usable when degraded: its clients stay (the policy chains look only at active ISPs' sets)
    fleet, clock = make(config(sticky))
    effects = rounds(fleet, clock, "a", "s")
    assert summary(effects) == [("reconcile",), ("emit", "a", "degraded")]
    # and coming back needs nothing emptied
    assert ("clear-sticky", "a") not in summary(rounds(fleet, clock, "a", "+" * 10))


def test_without_sticky_no_sets_are_emptied() -> None:
    fleet, clock = make(config())
    effects = rounds(fleet, clock, "a", "---")
    assert summary(effects) == [("reconcile",), ("flush", "a"), ("emit", "a", "down")]
    _, effects = fleet.disable("b", *clock.tick())
    assert not [e for e in effects if isinstance(e, ClearSticky)]


# --- on_recover: move-lower-tier -------------------------------------------------------------------------------

MOVE = "failover: {on_recover: move-lower-tier}\n"


def test_move_lower_tier_flushes_the_backup_when_a_better_tier_recovers() -> None:
    fleet, clock = make(config(MOVE))
    down(fleet, clock, "a", "b")  # c (tier 2) carries everything
    effects = rounds(fleet, clock, "a", "+++++")
    assert summary(effects) == [("reconcile",), ("flush", "c"), ("emit", "a", "up")]
    (flush,) = flushes(effects)
    assert (flush.mark, flush.mask) == (fleet.state.isps["c"].mark, 0xFF00)
    assert flush.why == "a recovered (move-lower-tier)"
    # b's recovery takes nothing more out of use
    assert summary(rounds(fleet, clock, "b", "+++++")) == [("reconcile",), ("emit", "b", "up")]


def test_keep_leaves_the_backups_connections() -> None:
    fleet, clock = make(config())
    down(fleet, clock, "a", "b")
    assert summary(rounds(fleet, clock, "a", "+++++")) == [("reconcile",), ("emit", "a", "up")]


def test_move_lower_tier_does_nothing_while_the_backup_was_not_in_use() -> None:
    fleet, clock = make(config(MOVE))
    down(fleet, clock, "a")  # b still up: c never took over
    assert flushes(rounds(fleet, clock, "a", "+++++")) == []


def test_only_worse_tiers_are_moved_back() -> None:
    fleet, clock = make(config(MOVE + "balance: {algorithm: failover}\n"))
    down(fleet, clock, "a")  # failover: b (tier 1, like a) takes over
    effects = rounds(fleet, clock, "a", "+++++")  # a is first again: b leaves use, but it is no backup tier
    assert flushes(effects) == []


def test_an_isp_a_rule_pins_to_stays_in_use_and_keeps_its_connections() -> None:
    fleet, clock = make(config(MOVE + "rules:\n  - {name: metered, src: [10.0.0.9], via: c}\n"))
    down(fleet, clock, "a", "b")
    assert flushes(rounds(fleet, clock, "a", "+++++")) == []


def test_an_isp_a_policy_keeps_in_use_keeps_its_connections() -> None:
    policy = "policies:\n  backup_first: {members: [{isp: c, tier: 1}, {isp: a, tier: 2}]}\n"
    fleet, clock = make(config(MOVE + policy))
    down(fleet, clock, "a", "b")
    assert flushes(rounds(fleet, clock, "a", "+++++")) == []


def test_a_policy_that_leaves_the_backup_with_the_default_counts_too() -> None:
    policy = "policies:\n  p: {members: [{isp: b}, {isp: c}], algorithm: failover}\n"
    fleet, clock = make(config(MOVE + policy))
    down(fleet, clock, "a", "b")
    assert [f.isp for f in flushes(rounds(fleet, clock, "b", "+++++"))] == ["c"]


def test_an_admin_enable_is_a_recovery_too() -> None:
    fleet, clock = make(config(MOVE))
    fleet.disable("a", *clock.tick())
    fleet.disable("b", *clock.tick())  # drained: c carries everything
    rounds(fleet, clock, "a", "+++++")  # still probed meanwhile, and fine
    _, effects = fleet.enable("a", *clock.tick())
    assert fleet.statuses()["a"] == "up"
    assert [f.isp for f in flushes(effects)] == ["c"]


def test_a_better_tier_leaving_degraded_moves_the_backups_connections_back() -> None:
    """Degraded ISPs take connections only when nothing is up: a degraded tier 1 leaves them to an up tier 2.

    Its recovery (DEGRADED → UP, "quality recovered") takes tier 2 out of use like a recovery from DOWN.
    """
    fleet, clock = make(config(MOVE))
    rounds(fleet, clock, "a", "s")
    rounds(fleet, clock, "b", "s")
    assert fleet.statuses() == {"a": "degraded", "b": "degraded", "c": "up"}  # c carries everything
    effects = rounds(fleet, clock, "a", "+" * 10)  # the window's mean latency falls under 50 ms
    assert fleet.statuses()["a"] == "up"
    assert summary(effects) == [("reconcile",), ("flush", "c"), ("emit", "a", "up")]
    # the same from DOWN through DEGRADED: only the step to UP takes c out of use
    fleet, clock = make(config(MOVE))
    down(fleet, clock, "a", "b")
    effects = rounds(fleet, clock, "a", "sssss")
    assert fleet.statuses()["a"] == "degraded" and flushes(effects) == []  # c, up, still beats it
    effects = rounds(fleet, clock, "a", "+" * 10)
    assert [f.isp for f in flushes(effects)] == ["c"]


# --- failover.failback_after: a recovered ISP waits before it takes connections back ----------------------------

HOLD = "failover: {on_recover: move-lower-tier, failback_after: 3s}\n"


def test_a_recovered_better_tier_waits_failback_after_then_moves_the_backups_connections_back() -> None:
    fleet, clock = make(config(HOLD))
    down(fleet, clock, "a", "b")  # c (tier 2) carries everything
    effects = rounds(fleet, clock, "a", "+++++")
    assert summary(effects) == [("reconcile",), ("emit", "a", "up")]  # up, but no flush: c keeps carrying
    assert fleet.statuses()["a"] == "up" and fleet.balancing()["a"] == "degraded"  # a last choice meanwhile
    assert "a" in fleet.failback
    assert flushes(rounds(fleet, clock, "a", "+" * 10)) == []  # 2 s: still waiting
    effects = rounds(fleet, clock, "a", "+" * 6)  # past 3 s after the recovery
    assert summary(effects) == [("reconcile",), ("flush", "c"), ("emit", "a", "failback")]
    assert fleet.balancing()["a"] == "up" and "a" not in fleet.failback
    event = next(e.event for e in effects if isinstance(e, Emit))
    assert (event.status, event.old) == ("up", "held") and "up for 3s since it recovered" in event.reason


def test_the_hold_ends_at_the_resync_too_and_a_new_failure_cancels_it() -> None:
    fleet, clock = make(config(HOLD))
    down(fleet, clock, "a", "b")
    rounds(fleet, clock, "a", "+++++")
    rounds(fleet, clock, "a", "---")  # down again while waiting: no failback
    assert "a" not in fleet.failback and fleet.expire_drains(clock.now + 10, 0.0) == []
    clock.now += 60  # past flap damping's hold
    rounds(fleet, clock, "a", "+++++")
    assert fleet.statuses()["a"] == "up" and "a" in fleet.failback
    assert [e.isp for e in flushes(fleet.expire_drains(clock.now + 3.1, 0.0))] == ["c"]


def test_no_hold_when_nothing_else_is_up_or_after_an_admin_enable() -> None:
    fleet, clock = make(config(HOLD.replace("on_recover: move-lower-tier, ", "")))
    fleet.disable("c", *clock.tick())
    down(fleet, clock, "a", "b")  # nothing is up
    rounds(fleet, clock, "a", "+++++")
    assert "a" not in fleet.failback and fleet.balancing()["a"] == "up"  # nothing to hold it back for
    fleet.disable("b", *clock.tick())
    fleet.enable("b", *clock.tick())
    assert "b" not in fleet.failback


def test_without_failback_after_a_recovery_takes_connections_at_once() -> None:
    fleet, clock = make(config(MOVE))
    down(fleet, clock, "a", "b")
    rounds(fleet, clock, "a", "+++++")
    assert fleet.failback == {} and fleet.balancing()["a"] == "up"


# --- no flush while no ISP is usable ----------------------------------------------------------------------------


def test_a_dead_isps_flush_waits_while_no_other_isp_is_usable_and_runs_when_one_returns() -> None:
    fleet, clock = make(config())
    fleet.disable("c", *clock.tick())
    down(fleet, clock, "a")
    effects = rounds(fleet, clock, "b", "---")  # the last usable ISP dies
    assert summary(effects) == [("reconcile",), ("emit", "b", "down")]  # no flush: nowhere to go
    assert not fleet.wants_empty("a") and not fleet.wants_empty("b")
    counts = {fleet.state.isps[n].mark: 5 for n in ("a", "b")}
    assert flushes(fleet.resync(counts)) == []  # the resync does not flush them either
    effects = rounds(fleet, clock, "a", "+++++")  # a returns: b's connections may now go
    assert summary(effects) == [("reconcile",), ("flush", "b"), ("emit", "a", "up")]
    assert flushes(effects)[0].why == "a is usable again"
    assert [f.isp for f in flushes(fleet.resync(counts))] == ["b"]  # level-triggered: until b has none


# --- standby ISPs: probed sparsely while nothing uses them ------------------------------------------------------


def test_a_standby_isp_is_probed_sparsely_until_a_better_tier_fails() -> None:
    isps = ISPS.replace("tier: 2}", f"tier: 2, standby: true, {PROBED}}}")
    fleet, clock = make(parse_config(f"lan: {{interfaces: [lan0]}}\n{isps}"))
    assert (fleet.probe_interval("a"), fleet.probe_interval("c")) == (0.2, 30.0)  # c carries nothing
    down(fleet, clock, "a")
    assert fleet.probe_interval("c") == 30.0  # b still carries everything
    down(fleet, clock, "b")
    assert fleet.probe_interval("c") == 0.2  # now c is in use: the full rate
    fleet.disable("c", *clock.tick())
    assert fleet.probe_interval("c") == 30.0  # drained: in no policy's use


def test_standby_needs_no_probes_of_its_own_to_be_valid_and_rejects_a_non_boolean() -> None:
    assert parse_config(f"lan: {{interfaces: [lan0]}}\n{ISPS.replace('tier: 2}', 'tier: 2, standby: true}')}")
    with pytest.raises(Exception, match="standby"):
        parse_config(f"lan: {{interfaces: [lan0]}}\n{ISPS.replace('tier: 2}', 'tier: 2, standby: maybe}')}")
