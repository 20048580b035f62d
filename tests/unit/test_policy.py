"""policy.py: tiers, hash buckets, failover, the policies a config yields, least-conn and latency weights."""

from __future__ import annotations

import itertools
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wanlb.config import StickyConfig, parse_config
from wanlb.policy import (
    HASH_BUCKETS,
    WEIGHT_SCALE,
    Member,
    adjust,
    best_members,
    hash_buckets,
    latency_weights,
    least_conn_weights,
    plan_policy,
    policies,
    shares_differ,
)

UP, DEGRADED, DOWN, DISABLED = "up", "degraded", "down", "disabled"


def members(*spec: tuple[str, int, int]) -> list[Member]:
    return [Member(isp, tier, weight) for isp, tier, weight in spec]


# --- hash buckets -------------------------------------------------------------------------------------

weights = st.sampled_from([1, 1, 2, 3, 5, 7, 10, 100, 999, 1000]) | st.integers(1, 1000)
tiers = st.lists(weights, min_size=1, max_size=12).map(lambda ws: [Member(f"m{i}", 1, w) for i, w in enumerate(ws)])


def quota(member: Member, group: list[Member], count: int = HASH_BUCKETS) -> Fraction:
    return Fraction(count * member.weight, sum(m.weight for m in group))


@settings(max_examples=300, deadline=None)
@given(tier=tiers)
def test_the_layout_has_every_bucket_and_each_member_within_one_of_its_weighted_share(tier: list[Member]) -> None:
    layout = hash_buckets(tier, tier)
    assert len(layout) == HASH_BUCKETS
    held = Counter(layout)
    assert set(held) <= {m.isp for m in tier}
    for m in tier:
        assert abs(held[m.isp] - quota(m, tier)) < 1, (m, held[m.isp])
    # contiguous runs in member order: what render turns into the jhash vmap's ranges
    assert list(layout) == sorted(layout, key=[m.isp for m in tier].index)


@settings(max_examples=400, deadline=None)
@given(tier=tiers, data=st.data())
def test_a_death_moves_only_the_dead_members_buckets_as_evenly_as_can_be_and_recovery_undoes_it(
    tier: list[Member], data: st.DataObject
) -> None:
    alive = data.draw(st.lists(st.booleans(), min_size=len(tier), max_size=len(tier)))
    live = [m for m, a in zip(tier, alive, strict=True) if a]
    base = hash_buckets(tier, tier)
    layout = hash_buckets(tier, live)
    if not live:
        assert layout == ()
        return
    assert len(layout) == HASH_BUCKETS
    names = {m.isp for m in live}
    assert set(layout) <= names
    moved = [i for i in range(HASH_BUCKETS) if layout[i] != base[i]]
    assert all(base[i] not in names for i in moved)  # only a dead member's buckets change owner
    assert all(base[i] in names or i in moved for i in range(HASH_BUCKETS))  # and every one of them does

    held = Counter(layout)
    kept = Counter(base)
    deficit = {m.isp: quota(m, live) - held[m.isp] for m in live}
    gainers = [m.isp for m in live if held[m.isp] > kept[m.isp]]
    for isp in gainers:  # a member is given buckets only while below its share: never a whole one above
        assert deficit[isp] > -1, (isp, deficit)
    # Each bucket went to the member furthest below its share, so no other way of handing out the dead
    # buckets leaves every live member less than ``worst`` below its share (largest remainders upstream
    # can make one whole bucket impossible: 6 members 3:10:3:2:535:3, two weight-3 ones dead, leave the
    # weight-535 one 1.02 buckets short whatever happens to the two buckets that move).
    worst = max(deficit.values())
    need = sum(max(kept[m.isp], _floor(quota(m, live) - worst) + 1) for m in live)
    assert need > HASH_BUCKETS, (worst, deficit)
    # hence: whenever all of them can stay within one bucket of their share, they do
    assert worst < 1 or sum(max(kept[m.isp], _floor(quota(m, live) - 1) + 1) for m in live) > HASH_BUCKETS
    assert hash_buckets(tier, tier) == base  # recovery: exactly the original layout


def _floor(x: Fraction) -> int:
    return x.numerator // x.denominator


def test_one_death_among_equals_and_its_recovery() -> None:
    tier = members(("a", 1, 1), ("b", 1, 1), ("c", 1, 2))
    base = hash_buckets(tier, tier)
    assert Counter(base) == {"a": 64, "b": 64, "c": 128}
    without_b = hash_buckets(tier, [tier[0], tier[2]])
    assert Counter(without_b) == {"a": 85, "c": 171}  # 256 / 3 and 2 x 256 / 3, each within one bucket
    assert [i for i in range(HASH_BUCKETS) if base[i] != without_b[i]] == [i for i, x in enumerate(base) if x == "b"]
    assert hash_buckets(tier, tier) == base
    assert hash_buckets(tier, [tier[1]]) == ("b",) * HASH_BUCKETS


# --- tiers, algorithms --------------------------------------------------------------------------------


def active(plan_members: list[Member], usable: dict[str, str], algorithm: str = "weighted") -> tuple:
    return plan_policy("p", "policy_p", plan_members, algorithm, usable).active


def test_the_best_tier_with_an_up_member_takes_the_connections() -> None:
    pm = members(("a", 1, 3), ("b", 1, 1), ("c", 2, 5), ("d", 3, 1))
    assert active(pm, {"a": UP, "b": UP, "c": UP, "d": UP}) == (("a", 3), ("b", 1))
    assert active(pm, {"a": DOWN, "b": UP, "c": UP, "d": UP}) == (("b", 1),)
    assert active(pm, {"a": DOWN, "b": DISABLED, "c": UP, "d": UP}) == (("c", 1),)  # weights reduced
    assert active(pm, {"a": DOWN, "b": DOWN, "c": DOWN, "d": UP}) == (("d", 1),)
    assert active(pm, {}) == ()  # nothing usable


def test_degraded_members_are_used_only_when_nothing_is_up_anywhere() -> None:
    pm = members(("a", 1, 1), ("b", 1, 1), ("c", 2, 1))
    assert active(pm, {"a": DEGRADED, "b": DOWN, "c": UP}) == (("c", 1),)  # an UP worse tier beats it
    assert active(pm, {"a": DEGRADED, "b": UP, "c": UP}) == (("b", 1),)  # not next to an UP one either
    assert active(pm, {"a": DEGRADED, "b": DOWN, "c": DEGRADED}) == (("a", 1),)  # the best degraded tier
    assert active(pm, {"a": DEGRADED, "b": DEGRADED, "c": DOWN}) == (("a", 1), ("b", 1))
    tier, live = best_members(pm, {"a": DEGRADED, "b": DOWN, "c": DOWN})
    assert (tier, live) == (pm[:2], pm[:1])


def test_failover_takes_the_first_usable_member_of_the_best_tier_in_config_order() -> None:
    pm = members(("b", 1, 9), ("a", 1, 1), ("c", 2, 1))
    assert active(pm, {"a": UP, "b": UP, "c": UP}, "failover") == (("b", 1),)
    assert active(pm, {"a": UP, "b": DOWN, "c": UP}, "failover") == (("a", 1),)
    assert active(pm, {"a": DOWN, "b": DISABLED, "c": UP}, "failover") == (("c", 1),)
    assert active(pm, {"a": DEGRADED, "b": DEGRADED, "c": DOWN}, "failover") == (("b", 1),)
    assert active(pm, {"a": UP, "b": DEGRADED, "c": DOWN}, "failover") == (("a", 1),)  # up beats degraded


def test_hash_lays_out_the_best_tier_and_lists_its_live_members() -> None:
    pm = members(("a", 1, 1), ("b", 1, 3), ("c", 2, 1))
    plan = plan_policy("p", "policy_p", pm, "hash", {"a": UP, "b": UP, "c": UP}, hash_fields=("src",))
    assert Counter(plan.buckets) == {"a": 64, "b": 192} and plan.active == (("a", 1), ("b", 3))
    assert plan.hash_fields == ("src",) and plan.members == ("a", "b", "c")
    down = plan_policy("p", "policy_p", pm, "hash", {"a": UP, "b": DOWN, "c": UP})
    assert set(down.buckets) == {"a"}  # the tier's layout, not c's: c is a worse tier
    worse = plan_policy("p", "policy_p", pm, "hash", {"a": DOWN, "b": DOWN, "c": UP})
    assert worse.buckets == ("c",) * HASH_BUCKETS
    assert plan_policy("p", "policy_p", pm, "hash", {}).buckets == ()


def test_least_conn_and_latency_use_the_daemons_weights_and_keep_the_configured_ones_otherwise() -> None:
    pm = members(("a", 1, 1), ("b", 1, 1), ("c", 1, 2))
    usable = {"a": UP, "b": UP, "c": UP}
    configured = (("a", 1), ("b", 1), ("c", 2))
    for algorithm in ("least-conn", "latency"):
        plan = plan_policy("p", "policy_p", pm, algorithm, usable, {"a": 30, "b": 0})
        assert plan.active == (("a", 15), ("c", 1))  # b at 0 takes nothing; c left out keeps 2; reduced
        all_zero = plan_policy("p", "policy_p", pm, algorithm, usable, {"a": 0, "b": 0, "c": 0})
        assert all_zero.active == configured  # nothing to go by: the configured weights
    assert plan_policy("p", "policy_p", pm, "weighted", usable, {"a": 30, "b": 0}).active == configured


# --- the policies of a config ----------------------------------------------------------------------------

CONFIG = """
lan: {interfaces: [lan0]}
isps:
  - {name: fiber, interface: wan1, gateway: 100.64.1.1, weight: 3}
  - {name: lte, interface: wan2, gateway: 100.64.2.1, tier: 2, weight: 2}
  - {name: dsl, interface: wan3, gateway: 100.64.3.1}
balance: {algorithm: hash, hash: {fields: [src]}, sticky: {by: source-dest, timeout: 5m}}
policies:
  cheap_first:
    members: [{isp: lte, tier: 1, weight: 1}, {isp: fiber, tier: 2}]
    algorithm: weighted
    on_unavailable: drop
    sticky: {by: source, timeout: 10m}
  inherit:
    members: [{isp: dsl}, {isp: lte}]
rules:
  - {name: one, src: [10.0.0.1], via: lte}
  - {name: two, src: [10.0.0.2], via: fiber}
  - {name: three, src: [10.0.0.3], via: lte}
  - {name: four, src: [10.0.0.4], policy: cheap_first}
"""


def test_policies_are_default_then_the_configured_ones_then_one_per_via_isp() -> None:
    cfg = parse_config(CONFIG)
    plans = policies(cfg, {"fiber": UP, "lte": UP, "dsl": UP})
    assert [(p.name, p.chain) for p in plans] == [
        ("default", "balance"),
        ("cheap_first", "policy_cheap_first"),
        ("inherit", "policy_inherit"),
        ("via_lte", "via_lte"),
        ("via_fiber", "via_fiber"),
    ]
    default, cheap, inherit, via_lte, via_fiber = plans
    assert default.algorithm == "hash" and default.hash_fields == ("src",)
    assert default.members == ("fiber", "lte", "dsl") and default.active == (("fiber", 3), ("dsl", 1))
    assert default.sticky == StickyConfig(by="source-dest", timeout=300.0) and default.on_unavailable == "default"
    assert cheap.algorithm == "weighted" and cheap.active == (("lte", 1),)  # its own tier and weight
    assert cheap.on_unavailable == "drop" and cheap.sticky == StickyConfig(by="source", timeout=600.0)
    assert inherit.algorithm == "hash" and inherit.sticky == default.sticky  # balance's, when left out
    assert inherit.active == (("dsl", 1),) and inherit.members == ("dsl", "lte")  # lte's own tier 2
    assert inherit.hash_fields == ("src",) and set(inherit.buckets) == {"dsl"}
    assert via_lte.algorithm == "weighted" and via_lte.active == (("lte", 1),) and via_lte.members == ("lte",)
    assert via_fiber.sticky is None and via_fiber.on_unavailable == "default"


def test_policies_follow_their_members_states() -> None:
    cfg = parse_config(CONFIG)
    plans = {p.name: p for p in policies(cfg, {"fiber": UP, "lte": DOWN, "dsl": DEGRADED})}
    assert plans["default"].active == (("fiber", 1),)
    assert plans["cheap_first"].active == (("fiber", 1),)  # tier 2 of the policy
    assert plans["inherit"].active == (("dsl", 1),)  # nothing up in it: its degraded one
    assert plans["via_lte"].active == () and plans["via_fiber"].active == (("fiber", 1),)
    none = {p.name: p for p in policies(cfg, {"fiber": DOWN, "lte": DISABLED, "dsl": DOWN})}
    assert all(p.active == () for p in none.values())
    assert none["cheap_first"].on_unavailable == "drop"  # carried: render drops instead of falling back


def test_adjusted_weights_are_each_policys_own() -> None:
    cfg = parse_config(
        """
lan: {interfaces: [lan0]}
isps:
  - {name: a, interface: wan1, gateway: 100.64.1.1}
  - {name: b, interface: wan2, gateway: 100.64.2.1}
  - {name: c, interface: wan3, gateway: 100.64.3.1}
balance: {algorithm: least-conn}
policies:
  inherits: {members: [{isp: a}, {isp: b}]}
  plain: {members: [{isp: a}, {isp: b}], algorithm: weighted}
  quick: {members: [{isp: a}, {isp: b}], algorithm: latency}
rules: [{name: pin, src: [10.0.0.1], via: a}]
"""
    )
    usable = {"a": UP, "b": UP, "c": UP}
    adjusted = {"default": {"a": 0, "b": 30}, "inherits": {"a": 2, "b": 6}, "quick": {"b": 0}, "plain": {"a": 0}}
    plans = {p.name: p for p in policies(cfg, usable, adjusted)}
    assert plans["default"].active == (("b", 30), ("c", 1))  # a at its target takes nothing; c keeps its weight
    assert plans["inherits"].active == (("a", 1), ("b", 3))  # each policy its own weights
    assert plans["plain"].active == (("a", 1), ("b", 1))  # weighted: not adjusted
    assert plans["quick"].active == (("a", 1),)
    assert plans["via_a"].active == (("a", 1),)  # a rule's one ISP is never adjusted away


def test_adjust_steers_each_policy_over_the_members_it_uses_now() -> None:
    """An idle backup tier or a dead ISP takes no share of the target (it would stall the steering)."""
    cfg = parse_config(
        """
lan: {interfaces: [lan0]}
isps:
  - {name: a, interface: wan1, gateway: 100.64.1.1}
  - {name: b, interface: wan2, gateway: 100.64.2.1}
  - {name: c, interface: wan3, gateway: 100.64.3.1, tier: 2}
balance: {algorithm: least-conn}
policies:
  quick: {members: [{isp: a}, {isp: b}], algorithm: latency}
  plain: {members: [{isp: a}, {isp: c}], algorithm: weighted}
"""
    )
    usable = {"a": UP, "b": UP, "c": UP}
    fresh, base = adjust(cfg, usable, {"a": 600, "b": 400, "c": 0}, {"a": 0.01, "b": 0.04}, {})
    assert set(fresh) == {"default", "quick"} and base["default"] == {"a": 1, "b": 1}
    assert fresh["default"]["a"] < fresh["default"]["b"] and "c" not in fresh["default"]  # c: idle tier 2
    assert fresh["quick"]["a"] > fresh["quick"]["b"]
    fresh, _ = adjust(cfg, {"a": UP, "b": "down", "c": UP}, {"a": 600, "b": 0, "c": 0}, {}, {})
    assert fresh["default"] == {"a": 100}  # only a is in use: nothing to steer to


# --- least-conn ---------------------------------------------------------------------------------------------


def test_least_conn_gives_nothing_at_or_above_target_and_the_rest_by_deficit() -> None:
    assert least_conn_weights({"a": 1, "b": 1}, {"a": 1000, "b": 0}) == {"a": 0, "b": 100}
    # 600 + 100 = 700 connections soon: targets 350/350; a is 50 below, b 250 below
    assert least_conn_weights({"a": 1, "b": 1}, {"a": 300, "b": 300}) == {"a": 50, "b": 50}
    assert least_conn_weights({"a": 1, "b": 1}, {"a": 220, "b": 180}) == {"a": 30, "b": 70}
    assert least_conn_weights({"a": 3, "b": 1}, {}) == {"a": 75, "b": 25}  # idle: by weight
    assert least_conn_weights({"a": 1, "b": 1}, {"a": 50, "b": 50, "gone": 500}) == {"a": 50, "b": 50}


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(1, 20), st.integers(0, 20_000)), min_size=1, max_size=8),
    headroom=st.sampled_from([0.05, 0.1, 0.5]),
)
def test_least_conn_steers_the_counts_towards_weight_proportional_loads(
    data: list[tuple[int, int]], headroom: float
) -> None:
    w = {f"i{n}": weight for n, (weight, _) in enumerate(data)}
    counts = {f"i{n}": count for n, (_, count) in enumerate(data)}
    result = least_conn_weights(w, counts, headroom)
    assert set(result) == set(w) and all(v >= 0 for v in result.values())
    assert abs(sum(result.values()) - WEIGHT_SCALE) <= len(w) / 2 + 1e-9  # shares out of 100, rounded
    total, current = sum(w.values()), sum(counts.values())
    future = current + max(100.0, current * headroom)
    target = {i: future * w[i] / total for i in w}
    for i in w:
        if counts[i] >= target[i]:
            assert result[i] == 0, (i, result)
    below = sorted((target[i] - counts[i], result[i]) for i in w if counts[i] < target[i])
    assert all(r1 <= r2 for (_, r1), (_, r2) in itertools.pairwise(below))  # more below, more share
    # The arrivals until ``future``, split by these weights, bring the counts closer to the targets.
    gained = future - current
    spent = sum(result.values()) or 1
    after = {i: counts[i] + gained * result[i] / spent for i in w}
    distance = sum(abs(counts[i] - target[i]) for i in w)
    assert sum(abs(after[i] - target[i]) for i in w) <= distance - gained / 2


def test_least_conn_evens_out_a_loaded_isp_over_a_few_rounds() -> None:
    w = {"a": 1, "b": 1, "c": 2}
    counts = {"a": 5000, "b": 0, "c": 0}
    for _ in range(40):
        result = least_conn_weights(w, counts)
        arrivals = max(100, sum(counts.values()) // 10)
        for isp, weight in result.items():
            counts[isp] += arrivals * weight // sum(result.values())
        for isp in counts:  # and a tenth of every ISP's connections end
            counts[isp] -= counts[isp] // 10
    total = sum(counts.values())
    assert abs(counts["a"] / total - 0.25) < 0.03 and abs(counts["c"] / total - 0.5) < 0.03, counts


# --- latency ------------------------------------------------------------------------------------------------


def test_latency_weights_scale_by_speed_and_loss() -> None:
    # (10 + 5) / (20 + 5) ms: the 5 ms floor keeps sub-millisecond noise from deciding the split
    assert latency_weights({"a": 1, "b": 1}, {"a": 0.010, "b": 0.020}, {}) == {"a": 62, "b": 38}
    assert latency_weights({"a": 1, "b": 1}, {"a": 0.0005, "b": 0.001}, {}) == {"a": 52, "b": 48}
    assert latency_weights({"a": 1, "b": 1, "c": 1}, {"a": 0.001, "b": 0.15, "c": 0.0006}, {})["b"] == 2
    assert latency_weights({"a": 1, "b": 1}, {"a": 0.010, "b": 0.010}, {"b": 0.5}) == {"a": 67, "b": 33}
    assert latency_weights({"a": 3, "b": 1}, {"a": 0.010, "b": 0.010}, {}) == {"a": 75, "b": 25}
    # without a latency figure yet: quality 1, like the fastest
    unknown = latency_weights({"a": 1, "b": 1, "c": 1}, {"a": None, "b": 0.01, "c": 0.02}, {})
    assert unknown == {"a": 38, "b": 38, "c": 23}
    assert latency_weights({"a": 2, "b": 1}, {}, {}) == {"a": 67, "b": 33}  # nothing measured: configured
    # a slow or lossy line still gets a trickle, so its figures stay fresh
    assert latency_weights({"a": 1, "b": 1}, {"a": 0.001, "b": 5.0}, {})["b"] == 1
    assert latency_weights({"a": 1, "b": 1}, {"a": 0.01, "b": 0.01}, {"a": 1.0, "b": 1.0}) == {"a": 1, "b": 1}


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(1, 50), st.none() | st.floats(0.001, 2.0), st.floats(0.0, 1.0)), min_size=2, max_size=6
    ),
    which=st.integers(0, 5),
    factor=st.floats(1.0, 10.0),
    more_loss=st.floats(0.0, 1.0),
)
def test_a_slower_or_lossier_line_never_gains_share(
    data: list[tuple[int, float | None, float]], which: int, factor: float, more_loss: float
) -> None:
    w = {f"i{n}": d[0] for n, d in enumerate(data)}
    lat = {f"i{n}": d[1] for n, d in enumerate(data)}
    loss = {f"i{n}": d[2] for n, d in enumerate(data)}
    isp = f"i{which % len(data)}"
    before = latency_weights(w, lat, loss)
    assert all(v >= 1 for v in before.values())
    worse_lat = {**lat, isp: None if lat[isp] is None else lat[isp] * factor}
    worse_loss = {**loss, isp: loss[isp] + (1 - loss[isp]) * more_loss}
    for after in (latency_weights(w, worse_lat, loss), latency_weights(w, lat, worse_loss)):
        assert after[isp] <= before[isp] + 1, (before, after)  # + 1: rounding of the others' shares
        share = after[isp] / sum(after.values())
        assert share <= before[isp] / sum(before.values()) + 0.02


# --- shares_differ ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "differ"),
    [
        ({"a": 1, "b": 1}, {"a": 50, "b": 50}, False),  # the same shares, other scale
        ({"a": 50, "b": 50}, {"a": 55, "b": 45}, False),  # exactly 5 points: not more
        ({"a": 50, "b": 50}, {"a": 56, "b": 44}, True),
        ({"a": 1}, {"a": 1, "b": 1}, True),  # a new ISP takes half
        ({"a": 50, "b": 50}, {"a": 47, "b": 47, "c": 6}, True),  # only the newcomer moves by more than 5
        ({"a": 100, "b": 0}, {"a": 97, "b": 3}, False),
        ({}, {}, False),
    ],
)
def test_shares_differ_by_more_than_five_points(old: dict, new: dict, differ: bool) -> None:
    assert shares_differ(old, new) is differ
    assert shares_differ(new, old) is differ
