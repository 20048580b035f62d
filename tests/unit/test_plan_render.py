"""Plan and render are pure: these run without root."""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from hypothesis import given
from hypothesis import strategies as st

from wanlb import runtime
from wanlb.config import Config, parse_config
from wanlb.nftsync import Chain, full_text
from wanlb.plan import Desired
from wanlb.plan import plan as plan_with_state
from wanlb.render import PRIORITY_SPAN, render, render_nft, render_routing
from wanlb.states import IspStatus
from wanlb.uplink import ConnectedRoute


def config(isps: str, extra: str = "") -> Config:
    return parse_config(f"lan: {{interfaces: [lan0]}}\nisps:\n{isps}{extra}")


def plan(
    cfg: Config,
    statuses: dict[str, IspStatus] | None = None,
    connected: tuple[ConnectedRoute, ...] = (),
    state: runtime.RuntimeState | None = None,
) -> Desired:
    """plan() with a fresh allocation (marks and tables by name) unless ``state`` is given."""
    state = state or runtime.allocate(cfg, None, reload=False).state
    return plan_with_state(cfg, state, statuses, connected)


def nft_text(desired: Desired) -> str:
    return full_text(render_nft(desired))


def chain(desired: Desired, name: str) -> Chain:
    obj = render_nft(desired).by_key()[("chain", name)]
    assert isinstance(obj, Chain)
    return obj


THREE = """\
  - {name: a, interface: wan1, gateway: 100.64.1.1, weight: 3}
  - {name: b, interface: wan2, gateway: 100.64.2.1, weight: 1}
  - {name: c, interface: wan3, gateway: 100.64.3.1, weight: 2, tier: 2}
"""
LAN = (ConnectedRoute(ipaddress.IPv4Network("192.168.77.0/24"), "lan0"),)


def test_best_tier_takes_all_and_shares_follow_weights() -> None:
    d = plan(config(THREE))
    assert [(i.name, i.active, i.share) for i in d.isps] == [("a", True, 0.75), ("b", True, 0.25), ("c", False, 0.0)]
    assert d.policies[0].active == (("a", 3), ("b", 1))


def test_down_isp_leaves_its_tier_and_next_tier_takes_over() -> None:
    d = plan(config(THREE), {"a": IspStatus.DOWN})
    assert [i.name for i in d.active] == ["b"]
    d = plan(config(THREE), {"a": IspStatus.DOWN, "b": IspStatus.DISABLED})
    assert [i.name for i in d.active] == ["c"]
    assert d.active[0].share == 1.0


def test_degraded_is_used_only_when_nothing_is_up() -> None:
    d = plan(config(THREE), {"a": IspStatus.DEGRADED})
    assert [i.name for i in d.active] == ["b"]
    d = plan(config(THREE), {"a": IspStatus.DEGRADED, "b": IspStatus.DOWN, "c": IspStatus.DOWN})
    assert [i.name for i in d.active] == ["a"]


def test_all_down_has_no_active_isp_and_last_resort_rule() -> None:
    cfg = config(THREE, "failover: {last_resort: unreachable}\n")
    d = plan(cfg, dict.fromkeys("abc", IspStatus.DOWN))
    assert d.active == ()
    text = nft_text(d)
    assert chain(d, "balance").rules == ()  # it exists (rules' policies may fall back to it) but is empty
    assert "goto balance" not in text
    rules = render_routing(d).rules
    assert rules[-1].action == "unreachable" and rules[-1].fwmark is None


def test_weights_are_reduced_by_gcd_and_mapped_to_ranges() -> None:
    cfg = config(
        "  - {name: a, interface: wan1, gateway: 100.64.1.1, weight: 300}\n"
        "  - {name: b, interface: wan2, gateway: 100.64.2.1, weight: 100}\n"
    )
    text = nft_text(plan(cfg))
    assert "numgen inc mod 4 vmap { 0-2 : goto isp_a, 3 : goto isp_b }" in text


def test_marks_are_masked_and_restored_from_ct_mark() -> None:
    text = nft_text(plan(config(THREE), connected=LAN))
    assert "meta mark set meta mark & 0xffff00ff | 0x100" in text
    assert "ct mark set ct mark & 0xffff00ff | 0x100" in text
    assert "ct mark & 0xff00 vmap { 0x100 : goto restore_a, 0x200 : goto restore_b, 0x300 : goto restore_c }" in text
    assert 'iifname "wan2" ct state new ct mark & 0xff00 == 0 ct mark set ct mark & 0xffff00ff | 0x200' in text
    assert "add element inet wanlb bypass { 192.168.77.0/24 }" in text
    assert 'meta mark & 0xff00 == 0x200 oifname "wan2" masquerade' in text


def test_local_traffic_off_only_restores_in_output() -> None:
    output = "\n".join(chain(plan(config(THREE, "local_traffic: false\n")), "output").rules)
    assert "goto balance" not in output and "restore_a" in output


def test_snat_address_and_none() -> None:
    cfg = config(
        "  - {name: a, interface: wan1, gateway: 100.64.1.1, snat: 100.64.1.9}\n"
        "  - {name: b, interface: wan2, gateway: 100.64.2.1, snat: none}\n"
    )
    d = plan(cfg)
    assert 'oifname "wan1" snat ip to 100.64.1.9' in nft_text(d)
    assert not [r for r in chain(d, "postrouting").rules if 'oifname "wan2"' in r]


def test_routing_intent_keeps_every_isp_table_even_when_down() -> None:
    intent = render_routing(plan(config(THREE), dict.fromkeys("abc", IspStatus.DOWN), connected=LAN))
    defaults = [r for r in intent.routes if r.dst.prefixlen == 0]
    assert [(r.table, str(r.gateway), r.dev) for r in defaults] == [
        (201, "100.64.1.1", "wan1"),
        (202, "100.64.2.1", "wan2"),
        (203, "100.64.3.1", "wan3"),
    ]
    # Only the default routes: connected networks are found in main first (the suppress rule below).
    assert intent.routes == tuple(defaults)
    lookups = [r for r in intent.rules if r.action == "lookup" and r.fwmark]
    assert [(r.fwmark, r.fwmask, r.table) for r in lookups] == [
        (0x100, 0xFF00, 201),
        (0x200, 0xFF00, 202),
        (0x300, 0xFF00, 203),
    ]
    assert intent.rules[0].suppress_prefixlength == 0
    assert all(10000 <= r.priority < 10000 + PRIORITY_SPAN for r in intent.rules)
    assert {r.protocol for r in intent.rules} == {r.protocol for r in intent.routes} == {intent.protocol} == {119}
    assert ("net/ipv4/conf/wan2/rp_filter", "2") in intent.sysctls


def test_render_is_deterministic() -> None:
    a = render(plan(config(THREE), connected=LAN))
    b = render(plan(config(THREE), connected=LAN))
    assert a == b and a.describe() == b.describe()


@given(st.lists(st.integers(min_value=1, max_value=1000), min_size=2, max_size=8))
def test_balance_map_covers_every_slot_once_in_proportion(weights: list[int]) -> None:
    isps = "".join(
        f"  - {{name: i{n}, interface: wan{n}, gateway: 100.64.{n}.1, weight: {w}}}\n" for n, w in enumerate(weights)
    )
    text = nft_text(plan(config(isps)))
    m = re.search(r"numgen inc mod (\d+) vmap \{ (.*) \}", text)
    assert m
    total = int(m.group(1))
    slots: dict[str, int] = {}
    covered = []
    for entry in m.group(2).split(", "):
        key, target = entry.split(" : goto ")
        lo, _, hi = key.partition("-")
        span = range(int(lo), int(hi or lo) + 1)
        covered += list(span)
        slots[target] = slots.get(target, 0) + len(span)
    assert sorted(covered) == list(range(total))
    for n, w in enumerate(weights):
        assert slots[f"isp_i{n}"] / total == w / sum(weights)


def test_marks_tables_and_rule_priorities_follow_the_isp_name_not_the_config_order() -> None:
    cfg = config(THREE)
    state = runtime.allocate(cfg, None, reload=False).state
    backwards = config("".join(reversed(THREE.splitlines(keepends=True))))
    moved = runtime.allocate(backwards, state, reload=True).state

    def by_isp(c: Config, s: runtime.RuntimeState) -> dict[str, tuple[int, int, list[int]]]:
        d = plan(c, state=s)
        rules = render_routing(d).rules
        return {i.name: (i.mark, i.table, sorted(r.priority for r in rules if r.fwmark == i.mark)) for i in d.isps}

    assert by_isp(backwards, moved) == by_isp(cfg, state)
    assert by_isp(cfg, state)["b"] == (0x200, 202, [10011, 10301])


def test_retired_marks_are_dropped_until_flushed() -> None:
    cfg = config(THREE)
    state = runtime.allocate(cfg, None, reload=False).state
    retired = (runtime.Retired(0x500, 0xFF00, "old"), runtime.Retired(0x400, 0xFF00, "older"))
    d = plan(cfg, state=dataclasses.replace(state, retired=retired))
    assert "ct mark & 0xff00 { 0x400, 0x500 } drop" in chain(d, "prerouting").rules
    assert "ct mark & 0xff00 { 0x400, 0x500 } drop" in chain(d, "output").rules
    assert "drop" not in "".join(chain(plan(cfg, state=state), "prerouting").rules)


def test_helpers_are_objects_assigned_to_new_ipv4_connections() -> None:
    d = plan(config(THREE, "helpers: [ftp, h323]\n"))
    table = render_nft(d)
    helpers = {(o.name, o.type, o.protocol) for o in table.objects if o.kind == "ct helper"}
    assert helpers == {("helper_ftp", "ftp", "tcp"), ("helper_ras", "RAS", "udp"), ("helper_q931", "Q.931", "tcp")}
    pre = chain(d, "prerouting").rules
    assert pre.index("meta nfproto != ipv4 return") < pre.index('ct state new tcp dport 21 ct helper set "helper_ftp"')
    assert 'ct state new tcp dport 1720 ct helper set "helper_q931"' in chain(d, "output").rules
    assert not [o for o in render_nft(plan(config(THREE, "helpers: []\n"))).objects if o.kind == "ct helper"]


def test_lan_sources_never_leave_a_natted_wan() -> None:
    cfg = config(
        "  - {name: a, interface: wan1, gateway: 100.64.1.1}\n"
        "  - {name: b, interface: wan2, gateway: 100.64.2.1, snat: none}\n"
    )
    egress = chain(plan(cfg, connected=LAN), "egress").rules
    assert 'meta nfproto ipv4 oifname { "wan1" } ip saddr @lan_nets counter name "leak_dropped" drop' in egress
    assert not [r for r in chain(plan(cfg), "egress").rules if "@lan_nets" in r]  # no LAN network known yet
