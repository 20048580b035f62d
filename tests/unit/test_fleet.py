"""The fleet: every input (probe round, link, admin, reload, resync) and the effects it returns."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from wanlb import runtime
from wanlb.config import Config, parse_config
from wanlb.fleet import Effect, Emit, Fleet, Flush, Reconcile, SaveState
from wanlb.states import IspStatus
from wanlb.uplink import Uplink

UP, DOWN, DEGRADED, DISABLED = IspStatus.UP, IspStatus.DOWN, IspStatus.DEGRADED, IspStatus.DISABLED
PROBED = "health: {targets: [192.0.2.1], down_after: 3, up_after: 5, window: 10}"
ISPS = {
    "a": f"  - {{name: a, interface: wan1, gateway: 100.64.1.1, {PROBED}}}\n",
    "b": f"  - {{name: b, interface: wan2, gateway: 100.64.2.1, {PROBED}}}\n",
    "c": "  - {name: c, interface: wan3, gateway: 100.64.3.1}\n",  # nothing probes it
}


def config(names: str = "abc", extra: str = "", **replace: str) -> Config:
    rows = "".join(replace[n] if n in replace else ISPS[n] for n in names)
    return parse_config(f"lan: {{interfaces: [lan0]}}\nisps:\n{rows}{extra}")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def tick(self) -> tuple[float, float]:
        self.now += 0.2
        return self.now, 1_700_000_000 + self.now


def make(cfg: Config | None = None, links: dict[str, bool] | None = None) -> tuple[Fleet, Clock]:
    """A fleet whose uplinks are as configured, but those whose interface ``links`` says is down."""
    cfg = cfg or config()
    state = runtime.allocate(cfg, None, reload=False).state
    seen = {i.name: Uplink("link down") for i in cfg.isps if (links or {}).get(i.interface) is False}
    return Fleet(cfg, state, seen, 0.0, 1_700_000_000.0), Clock()


def whole(isp: str, via: str | None = None, **fields: Any) -> dict[str, Uplink]:
    """A reconcile's observation of one ISP: its uplink is whole, with ``via`` as its next hop."""
    hop = ipaddress.IPv4Address(via if via is not None else f"100.64.{'abc'.index(isp) + 1}.1")
    return {isp: Uplink(None, hop, **fields)}


def rounds(fleet: Fleet, clock: Clock, name: str, pattern: str, loss: float | None = None) -> list[Effect]:
    """'+' a passing round, '-' a failed one; returns every effect, in order."""
    effects: list[Effect] = []
    for c in pattern:
        ok = c == "+"
        lost = (0.0 if ok else 1.0) if loss is None else loss
        errors = "" if ok else "192.0.2.1 no answer in 300 ms"
        effects += fleet.round(name, *clock.tick(), ok, 0.01 if ok else None, lost, errors)
    return effects


def summary(effects: list[Effect]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for e in effects:
        if isinstance(e, Reconcile):
            out.append(("reconcile",))
        elif isinstance(e, Flush):
            out.append(("flush", e.isp, e.mark, e.mask))
        elif isinstance(e, Emit):
            out.append(("emit", e.event.isp, e.event.event, e.event.status, e.event.old))
        else:
            assert isinstance(e, SaveState)
            out.append(("save",))
    return out


def events(effects: list[Effect]) -> list[Any]:
    return [e.event for e in effects if isinstance(e, Emit)]


# --- probe rounds -----------------------------------------------------------------------------------


def test_failed_rounds_take_an_isp_down_flush_its_mark_and_say_why() -> None:
    fleet, clock = make()
    assert rounds(fleet, clock, "a", "--") == []
    effects = rounds(fleet, clock, "a", "-")
    assert summary(effects) == [("reconcile",), ("flush", "a", 0x100, 0xFF00), ("emit", "a", "down", "down", "up")]
    (event,) = events(effects)
    assert event.reason == "3 failed rounds: 192.0.2.1 no answer in 300 ms" and event.interface == "wan1"
    assert event.loss_percent == 100.0 and event.latency_ms is None
    assert effects[0] == Reconcile("a down") and fleet.statuses()["a"] == DOWN
    assert rounds(fleet, clock, "a", "---") == []  # already down: nothing more


def test_good_rounds_bring_it_back_up_without_a_flush() -> None:
    fleet, clock = make()
    rounds(fleet, clock, "a", "---")
    assert rounds(fleet, clock, "a", "++++") == []
    effects = rounds(fleet, clock, "a", "+")
    assert summary(effects) == [("reconcile",), ("emit", "a", "up", "up", "down")]
    assert events(effects)[0].reason == "5 good rounds"


def test_quality_limits_degrade_without_a_flush() -> None:
    fleet, clock = make(config("abc", a=ISPS["a"].replace("window: 10", "window: 10, max_loss: 30")))
    effects = rounds(fleet, clock, "a", "++++", loss=0.5)  # every round passes, half the probes are lost
    assert summary(effects) == [("reconcile",), ("emit", "a", "degraded", "degraded", "up")]
    assert "loss 50% > 30%" in events(effects)[0].reason


def test_on_down_keep_never_flushes() -> None:
    fleet, clock = make(config(extra="failover: {on_down: keep}\n"))
    assert summary(rounds(fleet, clock, "a", "---")) == [("reconcile",), ("emit", "a", "down", "down", "up")]
    assert summary(fleet.link("wan2", False, *clock.tick())) == [("reconcile",), ("emit", "b", "down", "down", "up")]
    assert fleet.resync({0x100: 10, 0x200: 10}) == []


def test_a_round_of_an_isp_removed_meanwhile_is_ignored() -> None:
    fleet, clock = make()
    assert fleet.round("zz", *clock.tick(), False, None, 1.0) == []


# --- links ------------------------------------------------------------------------------------------


def test_link_down_is_down_and_flushed_at_once() -> None:
    fleet, clock = make()
    effects = fleet.link("wan1", False, *clock.tick())
    assert summary(effects) == [("reconcile",), ("flush", "a", 0x100, 0xFF00), ("emit", "a", "down", "down", "up")]
    assert events(effects)[0].reason == "link down (wan1)"
    assert summary(fleet.link("wan1", False, *clock.tick())) == [("reconcile",)]  # no news, routes may need care


def test_link_up_of_a_probed_isp_waits_for_its_rounds() -> None:
    fleet, clock = make()
    fleet.link("wan1", False, *clock.tick())
    assert fleet.uplink("a").problem == "link down"  # status says so before the reconcile looks
    assert rounds(fleet, clock, "a", "+++++") == []  # rounds while the link is down prove nothing
    # A link coming up is only a reason to look: the reconcile's observation says whether the uplink is whole.
    assert fleet.link("wan1", True, *clock.tick()) == [Reconcile("link wan1 up")]
    assert fleet.statuses()["a"] == DOWN
    assert fleet.observed(fleet.config, whole("a"), *clock.tick()) == []
    assert fleet.statuses()["a"] == DOWN
    assert rounds(fleet, clock, "a", "++++") == []
    assert summary(rounds(fleet, clock, "a", "+")) == [("reconcile",), ("emit", "a", "up", "up", "down")]


def test_link_up_of_an_unprobed_isp_is_up_once_its_uplink_is_seen_whole() -> None:
    fleet, clock = make()
    down = fleet.link("wan3", False, *clock.tick())
    assert summary(down) == [("reconcile",), ("flush", "c", 0x300, 0xFF00), ("emit", "c", "down", "down", "up")]
    assert summary(fleet.link("wan3", True, *clock.tick())) == [("reconcile",)]
    up = fleet.observed(fleet.config, whole("c"), *clock.tick())
    assert summary(up) == [("reconcile",), ("emit", "c", "up", "up", "down")]


# --- uplinks: interfaces that come and go, learned next hops ----------------------------------------


LEARNED = "  - {name: d, interface: ppp0, gateway: auto}\n"


def test_an_interface_that_does_not_exist_is_down_until_it_comes_then_probes_decide() -> None:
    fleet, clock = make(config("ab"))
    effects = fleet.observed(fleet.config, {"a": Uplink("no interface")}, *clock.tick())
    assert summary(effects) == [("reconcile",), ("flush", "a", 0x100, 0xFF00), ("emit", "a", "down", "down", "up")]
    assert events(effects)[0].reason == "no interface (wan1)"
    assert fleet.uplink("a").problem == "no interface"
    # Still missing, then there but without an address: no news (it is down already; status shows why).
    assert fleet.observed(fleet.config, {"a": Uplink("no address", index=7)}, *clock.tick()) == []
    assert fleet.uplink("a").problem == "no address"
    assert fleet.observed(fleet.config, whole("a", index=7, addresses=("100.64.1.2/24",)), *clock.tick()) == []
    assert summary(rounds(fleet, clock, "a", "+++++")) == [("reconcile",), ("emit", "a", "up", "up", "down")]


def test_a_learned_gateway_is_an_event_when_first_learned_and_when_it_changes() -> None:
    fleet, clock = make(config("ad", d=LEARNED))
    # Not observed yet: as configured, a learned next hop is waiting, so the ISP starts down.
    assert fleet.statuses()["d"] == DOWN and fleet.uplink("d").problem == "waiting for gateway"
    assert fleet.observed(fleet.config, {"d": Uplink("waiting for gateway")}, *clock.tick()) == []
    src = "default via 10.0.0.1 dev ppp0 proto dhcp metric 1002"
    lease = whole("d", "10.0.0.1", source=src, addresses=("10.0.0.2/24",))
    learned = fleet.observed(fleet.config, lease, *clock.tick())
    assert summary(learned) == [("reconcile",), ("emit", "d", "up", "up", "down"), ("emit", "d", "gateway", "up", "up")]
    gateway = events(learned)[1]
    assert gateway.reason == f"learned 10.0.0.1 ({src})" and gateway.gateway == "10.0.0.1"
    assert fleet.observed(fleet.config, lease, *clock.tick()) == []
    # A new lease: another router, another subnet.
    src2 = "default via 10.9.0.1 dev ppp0 proto dhcp metric 1002"
    lease2 = whole("d", "10.9.0.1", source=src2, addresses=("10.9.0.2/24",))
    moved = fleet.observed(fleet.config, lease2, *clock.tick())
    assert summary(moved) == [("emit", "d", "gateway", "up", "up"), ("emit", "d", "address", "up", "up")]
    assert events(moved)[0].reason == f"10.0.0.1 → 10.9.0.1 ({src2})"
    assert events(moved)[1].reason == "10.0.0.2/24 → 10.9.0.2/24"
    # A point-to-point session: a device route.
    p2p = fleet.observed(fleet.config, {"d": Uplink(None, None, "default dev ppp0 proto boot metric 0")}, *clock.tick())
    assert events(p2p)[0].reason == "10.9.0.1 → device route (dev ppp0) (default dev ppp0 proto boot metric 0)"
    assert events(p2p)[0].gateway == "device route"


def test_a_static_gateway_is_never_an_event_and_a_stale_observation_is_ignored() -> None:
    fleet, clock = make(config("ab"))
    assert fleet.observed(fleet.config, {**whole("a"), **whole("b")}, *clock.tick()) == []
    other = config("ab")  # a config adopted by a reload meanwhile: what was seen with the old one is stale
    assert fleet.observed(other, {"a": Uplink("no interface")}, *clock.tick()) == []
    assert fleet.statuses()["a"] == UP


def test_lan_links_reconcile_and_foreign_links_do_nothing() -> None:
    fleet, clock = make()
    assert fleet.link("lan0", False, *clock.tick()) == [Reconcile("link lan0 down")]
    assert fleet.link("docker0", False, *clock.tick()) == []


def test_a_wan_down_at_start_starts_down() -> None:
    fleet, _ = make(links={"wan1": False, "wan2": True})
    assert fleet.statuses() == {"a": DOWN, "b": UP, "c": UP}
    assert fleet.wants_empty("a") and not fleet.wants_empty("b")


# --- admin ------------------------------------------------------------------------------------------


def test_disable_drains_without_a_flush() -> None:
    fleet, clock = make()
    message, effects = fleet.disable("a", *clock.tick())
    assert message == "a is disabled"
    assert summary(effects) == [("reconcile",), ("emit", "a", "disabled", "disabled", "up")]
    assert rounds(fleet, clock, "a", "------") == []  # probes go on, the drain holds
    assert fleet.disable("a", *clock.tick()) == ("a is disabled", [])


def _disabled_then(pattern: str, probed: bool = True, link_down: bool = False) -> tuple[Fleet, list[Effect]]:
    fleet, clock = make()
    name = "a" if probed else "c"
    fleet.disable(name, *clock.tick())
    if link_down:
        assert fleet.link("wan1", False, *clock.tick()) == [Reconcile("link wan1 down")]
    rounds(fleet, clock, name, pattern)
    return fleet, fleet.enable(name, *clock.tick())[1]


@pytest.mark.parametrize(
    ("pattern", "probed", "link_down", "status", "flush"),
    [
        ("+++++", True, False, "up", False),  # the probes saw it healthy: up at once
        ("--+++", True, False, "down", False),  # not yet proven: down, waiting, nothing to flush
        ("", True, False, "down", False),
        ("+++---", True, False, "down", True),  # failing: down, and its connections cannot work
        ("+++++", True, True, "down", True),  # its link is down
        ("", False, False, "up", False),  # nothing probes it
    ],
)
def test_enable_is_one_event_named_enabled(
    pattern: str, probed: bool, link_down: bool, status: str, flush: bool
) -> None:
    fleet, effects = _disabled_then(pattern, probed, link_down)
    name = "a" if probed else "c"
    (event,) = events(effects)
    assert (event.isp, event.event, event.status, event.old) == (name, "enabled", status, "disabled")
    assert event.reason.startswith("enabled by admin; ")
    assert [e for e in effects if isinstance(e, Flush)] == ([Flush(name, 0x100, 0xFF00, event.reason)] if flush else [])
    assert isinstance(effects[0], Reconcile)
    assert fleet.statuses()[name] == IspStatus(status)


def test_enable_of_an_enabled_isp_does_nothing_and_an_unknown_one_is_an_error() -> None:
    fleet, clock = make()
    assert fleet.enable("a", *clock.tick()) == ("a is up", [])
    with pytest.raises(KeyError, match="no ISP named 'zz'"):
        fleet.enable("zz", *clock.tick())
    with pytest.raises(KeyError):
        fleet.disable("zz", *clock.tick())


# --- reload -----------------------------------------------------------------------------------------


def reload(fleet: Fleet, clock: Clock, cfg: Config) -> tuple[runtime.Allocation, list[Effect]]:
    allocation = runtime.allocate(cfg, fleet.state, reload=True)
    return allocation, fleet.reload(cfg, allocation, *clock.tick())


def test_reload_removing_an_isp_flushes_its_old_mark_and_says_removed() -> None:
    fleet, clock = make()
    allocation, effects = reload(fleet, clock, config("ac"))
    assert effects[:2] == [SaveState(allocation.state), Reconcile("reload")]
    assert summary(effects[2:]) == [("flush", "b", 0x200, 0xFF00), ("emit", "b", "removed", "removed", "up")]
    assert events(effects)[0].interface == "wan2"
    assert set(fleet.machines[4]) == {"a", "c"} and fleet.state == allocation.state
    assert fleet.state.retired == (runtime.Retired(0x200, 0xFF00, "b"),)


def test_reload_adding_an_isp_says_added() -> None:
    fleet, clock = make(config("ab"))
    _, effects = reload(fleet, clock, config("abc"))
    assert summary(effects) == [("save",), ("reconcile",), ("emit", "c", "added", "up", None)]
    assert fleet.state.isps["c"].mark == 0x300


def test_reload_moving_an_isp_to_another_interface_replaces_it() -> None:
    fleet, clock = make()
    rounds(fleet, clock, "b", "---")
    moved = ISPS["b"].replace("wan2", "ppp0")
    _, effects = reload(fleet, clock, config("abc", b=moved))
    assert summary(effects) == [
        ("save",),
        ("reconcile",),
        ("flush", "b", 0x200, 0xFF00),
        ("emit", "b", "replaced", "up", None),
    ]
    assert fleet.state.isps["b"].mark == 0x400 and fleet.statuses()["b"] == UP  # a new uplink, a new machine


def test_reload_removing_the_targets_of_a_down_isp_brings_it_up() -> None:
    fleet, clock = make()
    rounds(fleet, clock, "a", "---")
    unprobed = "  - {name: a, interface: wan1, gateway: 100.64.1.1}\n"
    _, effects = reload(fleet, clock, config("abc", a=unprobed))
    assert summary(effects) == [("save",), ("reconcile",), ("emit", "a", "up", "up", "down")]
    assert events(effects)[0].reason == "no health targets any more (reload)"


def test_reload_changing_health_parameters_keeps_the_status() -> None:
    fleet, clock = make()
    rounds(fleet, clock, "a", "---")
    fleet.disable("b", *clock.tick())
    fleet.link("wan3", False, *clock.tick())
    slower = {n: ISPS[n].replace("down_after: 3", "down_after: 4") for n in "ab"}
    _, effects = reload(fleet, clock, config("abc", extra="hooks: []\n", **slower))
    assert summary(effects) == [("save",), ("reconcile",)]
    assert fleet.statuses() == {"a": DOWN, "b": DISABLED, "c": DOWN}
    assert fleet.machines[4]["a"].params.down_after == 4 and fleet.machines[4]["c"].link_down


def test_reload_without_changes_only_saves_and_reconciles() -> None:
    fleet, clock = make()
    rounds(fleet, clock, "a", "---")
    machine = fleet.machines[4]["a"]
    _, effects = reload(fleet, clock, config())
    assert summary(effects) == [("save",), ("reconcile",)] and fleet.machines[4]["a"] is machine


# --- resync: the flushes still missing ------------------------------------------------------------


def test_resync_flushes_a_broken_down_isp_that_still_has_entries() -> None:
    fleet, clock = make()
    rounds(fleet, clock, "a", "---")
    assert fleet.resync({0x100: 3, 0x200: 7, 0: 40}) == [Flush("a", 0x100, 0xFF00, "still has connections while down")]
    assert fleet.resync({0x200: 7}) == []
    assert fleet.resync({}) == []


def test_resync_leaves_a_down_isp_that_is_not_broken() -> None:
    fleet, clock = make()
    fleet.disable("a", *clock.tick())
    fleet.enable("a", *clock.tick())  # down, waiting for good rounds: its link and probes are fine
    assert fleet.statuses()["a"] == DOWN
    assert fleet.resync({0x100: 3}) == []


def test_resync_flushes_retired_marks_and_flushed_releases_them() -> None:
    fleet, clock = make()
    reload(fleet, clock, config("ac"))
    assert fleet.resync({}) == [Flush("b", 0x200, 0xFF00, "its ISP was removed")]  # whatever the counts say
    effects = fleet.flushed(0x200, 0xFF00)
    assert effects == [SaveState(fleet.state)] and fleet.state.retired == ()
    assert fleet.flushed(0x200, 0xFF00) == [] and fleet.flushed(0x100, 0xFF00) == []
    assert fleet.resync({0x200: 1}) == []
    # the mark is free again for the next new ISP
    _, _ = reload(fleet, clock, config("acb", b=ISPS["b"].replace("name: b", "name: bb")))
    assert fleet.state.isps["bb"].mark == 0x200


def test_a_retired_mark_under_an_old_mask_is_flushed_with_that_mask() -> None:
    cfg = config()
    old = runtime.allocate(config(extra="mark_mask: 0xff0000\n"), None, reload=False).state
    state = runtime.allocate(cfg, old, reload=False).state  # a restart with another mask
    fleet = Fleet(cfg, state, {}, 0.0, 0.0)
    flushes = fleet.resync({})
    assert {(f.mark, f.mask) for f in flushes if isinstance(f, Flush)} == {
        (0x10000, 0xFF0000),
        (0x20000, 0xFF0000),
        (0x30000, 0xFF0000),
    }
