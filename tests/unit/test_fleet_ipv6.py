"""Health per address family: an ISP with IPv6 targets has an IPv6 state of its own.

Its IPv6 can be down while its IPv4 is up (and the other way round); each family's flush takes only that
family's entries; an admin drain and a dead link act on both; without IPv6 targets IPv6 follows the ISP.
"""

from __future__ import annotations

import pytest

from wanlb import runtime
from wanlb.config import Config, ConfigError, parse_config
from wanlb.fleet import Effect, Emit, Fleet, Flush
from wanlb.plan import plan
from wanlb.states import IspStatus

UP, DOWN, DISABLED = IspStatus.UP, IspStatus.DOWN, IspStatus.DISABLED
V6 = "ipv6: {mode: masquerade}"
HEALTH = "health: {targets: [192.0.2.1, 2001:db8:f::10], down_after: 3, up_after: 5, window: 10}"
TEXT = (
    "lan: {interfaces: [lan0], ipv6_prefixes: [fd00:77::/64]}\n"
    "isps:\n"
    f"  - {{name: a, interface: wan1, gateway: 100.64.1.1, gateway6: 'fe80::1', {V6}, {HEALTH}}}\n"
    f"  - {{name: b, interface: wan2, gateway: 100.64.2.1, gateway6: 'fe80::1', {V6},"
    " health: {targets: [192.0.2.1], down_after: 3}}\n"
    "  - {name: c, interface: wan3, gateway: 100.64.3.1, health: {targets: [192.0.2.1], down_after: 3}}\n"
)


def make(text: str = TEXT) -> tuple[Fleet, Config, list[float]]:
    cfg = parse_config(text)
    state = runtime.allocate(cfg, None, reload=False).state
    return Fleet(cfg, state, {}, 0.0, 1_700_000_000.0), cfg, [0.0]


def rounds(fleet: Fleet, clock: list[float], name: str, pattern: str, family: int) -> list[Effect]:
    effects: list[Effect] = []
    for c in pattern:
        clock[0] += 0.2
        ok = c == "+"
        effects += fleet.round(name, clock[0], 1e9 + clock[0], ok, 0.01 if ok else None, 0.0 if ok else 1.0,
                               "" if ok else "no answer", family)  # fmt: skip
    return effects


def flushes(effects: list[Effect]) -> list[tuple[str, int]]:
    return [(e.isp, e.family) for e in effects if isinstance(e, Flush)]


def events(effects: list[Effect]) -> list[tuple[str, str, str]]:
    return [(e.event.isp, e.event.event, e.event.family) for e in effects if isinstance(e, Emit)]


def test_ipv6_down_alone_keeps_ipv4_up_and_flushes_only_ipv6() -> None:
    fleet, _, clock = make()
    assert set(fleet.machines[6]) == {"a"}  # b has no IPv6 targets, c no IPv6
    effects = rounds(fleet, clock, "a", "---", family=6)
    assert fleet.statuses()["a"] == UP and fleet.statuses(6)["a"] == DOWN
    assert flushes(effects) == [("a", 6)]
    assert events(effects) == [("a", "down", 6)]
    # balancing: IPv4 keeps a, IPv6 loses it
    desired = plan(fleet.config, fleet.state, fleet.statuses(), statuses6=fleet.statuses(6))
    assert "a" in {i.name for i in desired.active} and "a" not in dict(desired.balance6)
    assert dict(desired.balance6) == {"b": 1}


def test_ipv4_down_alone_flushes_only_ipv4_when_ipv6_has_its_own_health() -> None:
    fleet, _, clock = make()
    effects = rounds(fleet, clock, "a", "---", family=4)
    assert fleet.statuses()["a"] == DOWN and fleet.statuses(6)["a"] == UP
    assert flushes(effects) == [("a", 4)]
    assert events(effects) == [("a", "down", 4)]


def test_without_ipv6_targets_ipv6_follows_the_isp_and_both_families_are_flushed() -> None:
    fleet, _, clock = make()
    effects = rounds(fleet, clock, "b", "---", family=4)
    assert fleet.statuses(6)["b"] == DOWN
    assert flushes(effects) == [("b", 0)]
    assert events(effects) == [("b", "down", 0)]
    assert rounds(fleet, clock, "b", "---", family=6) == []  # no IPv6 state: a stray round changes nothing


def test_a_dead_link_and_an_admin_drain_take_both_families() -> None:
    fleet, _, _ = make()
    effects = fleet.link("wan1", False, 1.0, 1e9)
    assert fleet.statuses()["a"] == DOWN and fleet.statuses(6)["a"] == DOWN
    assert sorted(flushes(effects)) == [("a", 4), ("a", 6)]
    fleet.link("wan1", True, 2.0, 1e9)
    _, effects = fleet.disable("a", 3.0, 1e9)
    assert fleet.statuses()["a"] == DISABLED and fleet.statuses(6)["a"] == DISABLED
    assert sorted(events(effects)) == [("a", "disabled", 4), ("a", "disabled", 6)]
    assert flushes(effects) == []  # a drain keeps connections


def test_ipv6_recovers_on_its_own_rounds() -> None:
    fleet, _, clock = make()
    rounds(fleet, clock, "a", "---", family=6)
    effects = rounds(fleet, clock, "a", "+++++", family=6)
    assert fleet.statuses(6)["a"] == UP
    assert events(effects) == [("a", "up", 6)]


def test_the_resync_retries_an_ipv6_flush_that_left_entries() -> None:
    fleet, _, clock = make()
    rounds(fleet, clock, "a", "---", family=6)
    mark = fleet.state.isps["a"].mark
    assert flushes(fleet.resync({mark: 3})) == [("a", 6)]
    assert flushes(fleet.resync({mark: 0})) == []


def test_a_reload_keeps_the_ipv6_state_and_drops_it_with_the_targets() -> None:
    fleet, cfg, clock = make()
    rounds(fleet, clock, "a", "---", family=6)
    allocation = runtime.allocate(cfg, fleet.state, reload=True)
    fleet.reload(cfg, allocation, 5.0, 1e9)
    assert fleet.statuses(6)["a"] == DOWN  # the same config: the state is kept
    fewer = parse_config(TEXT.replace("[192.0.2.1, 2001:db8:f::10]", "[192.0.2.1]"))
    fleet.reload(fewer, runtime.allocate(fewer, fleet.state, reload=True), 6.0, 1e9)
    assert "a" not in fleet.machines[6] and fleet.statuses(6)["a"] == UP  # follows the ISP again


def test_ipv6_targets_need_an_isp_that_carries_ipv6() -> None:
    text = TEXT.replace(
        "gateway: 100.64.3.1, health: {targets: [192.0.2.1]", "gateway: 100.64.3.1, health: {targets: [2001:db8::1]"
    )
    with pytest.raises(ConfigError, match="IPv6 health targets need ipv6 mode"):
        parse_config(text)


def test_turning_an_isps_ipv6_off_flushes_its_ipv6_connections_only() -> None:
    """They would have no IPv6 route through it any more (its ip -6 rules and route go): flushed, so the
    client's next try is balanced onto an ISP that carries IPv6, never sent out another WAN as it is."""
    fleet, _, _ = make()
    off = parse_config(TEXT.replace(f"gateway6: 'fe80::1', {V6}, {HEALTH}", "health: {targets: [192.0.2.1]}", 1))
    effects = fleet.reload(off, runtime.allocate(off, fleet.state, reload=True), 5.0, 1e9)
    assert flushes(effects) == [("a", 6)]
    same = fleet.reload(off, runtime.allocate(off, fleet.state, reload=True), 6.0, 1e9)
    assert flushes(same) == []  # only on the change
