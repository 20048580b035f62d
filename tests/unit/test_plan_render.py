"""Plan and render are pure: these run without root."""

from __future__ import annotations

import ipaddress
import re

from hypothesis import given
from hypothesis import strategies as st

from wanlb.config import parse_config
from wanlb.plan import ConnectedRoute, IspStatus, plan
from wanlb.render import render, render_nft, render_routing


def config(isps: str, extra: str = "") -> object:
    return parse_config(f"lan: {{interfaces: [lan0]}}\nisps:\n{isps}{extra}")


THREE = """\
  - {name: a, interface: wan1, gateway: 100.64.1.1, weight: 3}
  - {name: b, interface: wan2, gateway: 100.64.2.1, weight: 1}
  - {name: c, interface: wan3, gateway: 100.64.3.1, weight: 2, tier: 2}
"""
LAN = (ConnectedRoute(ipaddress.IPv4Network("192.168.77.0/24"), "lan0", ipaddress.IPv4Address("192.168.77.1")),)


def test_best_tier_takes_all_and_shares_follow_weights() -> None:
    d = plan(config(THREE))
    assert [(i.name, i.active, i.share) for i in d.isps] == [("a", True, 0.75), ("b", True, 0.25), ("c", False, 0.0)]
    assert d.weights == (("a", 3), ("b", 1))


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
    text = render_nft(d)
    assert "chain balance" not in text and "goto balance" not in text
    rules = render_routing(d).rules
    assert rules[-1].action == "unreachable" and rules[-1].fwmark is None


def test_weights_are_reduced_by_gcd_and_mapped_to_ranges() -> None:
    cfg = config(
        "  - {name: a, interface: wan1, gateway: 100.64.1.1, weight: 300}\n"
        "  - {name: b, interface: wan2, gateway: 100.64.2.1, weight: 100}\n"
    )
    text = render_nft(plan(cfg))
    assert "numgen inc mod 4 vmap { 0-2 : goto isp_a, 3 : goto isp_b }" in text


def test_marks_are_masked_and_restored_from_ct_mark() -> None:
    text = render_nft(plan(config(THREE), connected=LAN))
    assert "meta mark set meta mark & 0xffff00ff | 0x100" in text
    assert "ct mark set ct mark & 0xffff00ff | 0x100" in text
    assert "ct mark & 0xff00 vmap { 0x100 : goto restore_a, 0x200 : goto restore_b, 0x300 : goto restore_c }" in text
    assert 'iifname "wan2" ct state new ct mark & 0xff00 == 0 ct mark set ct mark & 0xffff00ff | 0x200' in text
    assert "elements = { 192.168.77.0/24 }" in text
    assert 'meta mark & 0xff00 == 0x200 oifname "wan2" masquerade' in text


def test_local_traffic_off_only_restores_in_output() -> None:
    text = render_nft(plan(config(THREE, "local_traffic: false\n")))
    output = text.split("chain output {")[1].split("}")[0]
    assert "goto balance" not in output and "restore_a" in output


def test_snat_address_and_none() -> None:
    cfg = config(
        "  - {name: a, interface: wan1, gateway: 100.64.1.1, snat: 100.64.1.9}\n"
        "  - {name: b, interface: wan2, gateway: 100.64.2.1, snat: none}\n"
    )
    text = render_nft(plan(cfg))
    assert 'oifname "wan1" snat ip to 100.64.1.9' in text
    assert 'oifname "wan2"' not in text.split("chain postrouting")[1]


def test_routing_intent_keeps_every_isp_table_even_when_down() -> None:
    intent = render_routing(plan(config(THREE), dict.fromkeys("abc", IspStatus.DOWN), connected=LAN))
    defaults = [r for r in intent.routes if r.dst.prefixlen == 0]
    assert [(r.table, str(r.gateway), r.dev) for r in defaults] == [
        (201, "100.64.1.1", "wan1"),
        (202, "100.64.2.1", "wan2"),
        (203, "100.64.3.1", "wan3"),
    ]
    assert {r.table for r in intent.routes if r.dst == LAN[0].dst} == {201, 202, 203}
    lookups = [r for r in intent.rules if r.action == "lookup" and r.fwmark]
    assert [(r.fwmark, r.fwmask, r.table) for r in lookups] == [
        (0x100, 0xFF00, 201),
        (0x200, 0xFF00, 202),
        (0x300, 0xFF00, 203),
    ]
    assert intent.rules[0].suppress_prefixlength == 0
    assert all(intent.priority_range[0] <= r.priority < intent.priority_range[1] for r in intent.rules)
    assert ("net/ipv4/conf/wan2/rp_filter", "2") in intent.sysctls


def test_render_is_deterministic() -> None:
    a = render(plan(config(THREE), connected=LAN))
    b = render(plan(config(THREE), connected=LAN))
    assert a == b and a.describe() == b.describe()


@given(st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=8))
def test_balance_map_covers_every_slot_once_in_proportion(weights: list[int]) -> None:
    isps = "".join(
        f"  - {{name: i{n}, interface: wan{n}, gateway: 100.64.{n}.1, weight: {w}}}\n" for n, w in enumerate(weights)
    )
    text = render_nft(plan(config(isps)))
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
