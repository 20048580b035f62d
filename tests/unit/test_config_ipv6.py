"""IPv6 configuration (lan.ipv6_prefixes, gateway6, ipv6 mode/prefix) and what it renders."""

from __future__ import annotations

import ipaddress

import pytest

from wanlb import runtime
from wanlb.config import ConfigError, parse_config
from wanlb.nftsync import Set
from wanlb.plan import plan
from wanlb.render import render
from wanlb.uplink import ConnectedRoute

LAN = "lan: {interfaces: [lan0], ipv6_prefixes: [fd00:77::/64, 2001:db8:300::/64]}\n"


def isp(n: int, ipv6: str, gw6: str = "'fe80::1'") -> str:
    return f"  - {{name: isp{n}, interface: wan{n}, gateway: 100.64.{n}.1, gateway6: {gw6}, ipv6: {ipv6}}}\n"


GOOD = (
    LAN
    + "isps:\n"
    + isp(1, "{mode: netmap, prefix: 2001:db8:100::/64}")
    + isp(2, "{mode: masquerade}")
    + isp(3, "{mode: routed, prefix: 2001:db8:300::/64}")
    + "  - {name: isp4, interface: wan4, gateway: 100.64.4.1}\n"
)


def rendered(text: str = GOOD):  # type: ignore[no-untyped-def]
    cfg = parse_config(text)
    return render(plan(cfg, runtime.allocate(cfg, None, reload=False).state))


def test_every_mode_renders_its_translation_leak_guard_and_ip6_rules() -> None:
    r = rendered()
    chains = {o.name: o for o in r.nft.objects if o.kind == "chain"}
    lan6 = chains["from_lan6"].rules
    assert "ip6 saddr 2001:db8:300::/64 goto isp_isp3" in lan6  # routed: its source decides
    assert lan6[-1] == "goto balance_6"
    assert chains["balance_6"].rules == ("numgen inc mod 2 vmap { 0 : goto isp_isp1, 1 : goto isp_isp2 }",)  # NAT
    post = chains["postrouting"].rules
    v6 = "meta nfproto ipv6 meta mark & 0xff00"
    assert f'{v6} == 0x100 oifname "wan1" ip6 saddr @lan6_nat snat ip6 prefix to 2001:db8:100::/64' in post
    assert f'{v6} == 0x200 oifname "wan2" ip6 saddr @lan6_nat masquerade' in post
    assert not [line for line in post if "wan3" in line and "ipv6" in line]  # routed: untranslated
    egress = chains["egress"].rules
    leak = 'counter name "leak_dropped" drop'
    assert f'meta nfproto ipv6 oifname {{ "wan1", "wan2", "wan4" }} ip6 saddr @lan6 {leak}' in egress
    assert f'meta nfproto ipv6 oifname "wan3" ip6 saddr @lan6 ip6 saddr != 2001:db8:300::/64 {leak}' in egress
    sets = {o.name: o for o in r.nft.objects if o.kind == "set"}
    assert sets["lan6_nat"].elements == ("fd00:77::/64",)
    v6 = [rule.describe() for rule in r.routing.rules if rule.family == 6]
    assert "-6 10000: from all lookup main suppress_prefixlength 0 proto 119" in v6
    assert "-6 10202: from 2001:db8:300::/64 lookup 203 proto 119" in v6
    assert not [line for line in v6 if "204" in line]  # isp4 carries no IPv6
    assert ("net/ipv6/conf/wan3/accept_ra", "2") in r.routing.sysctls


def test_inbound_maps_only_the_opted_in_netmap_prefix_back_to_the_lan() -> None:
    def dnat(text: str) -> tuple[str, ...] | None:
        chains = {o.name: o for o in rendered(text).nft.objects if o.kind == "chain"}
        return chains["inbound6"].rules if "inbound6" in chains else None

    def unsolicited(text: str) -> list[str]:
        chains = {o.name: o for o in rendered(text).nft.objects if o.kind == "chain"}
        return [line for line in chains["prerouting"].rules if "unsolicited_dropped" in line]

    assert dnat(GOOD) is None  # off by default: no LAN host is reachable from outside ...
    local = "fib daddr type != local"  # the gateway's own address in the prefix stays the gateway's
    drop = 'ct state { new, invalid, untracked } counter name "unsolicited_dropped" drop'
    assert unsolicited(GOOD) == [  # ... and what tries is dropped, not bounced out of the WAN again
        f'iifname {{ "wan1", "wan2", "wan3", "wan4" }} ip6 daddr 2001:db8:100::/64 {local} {drop}'
    ]
    opted = GOOD.replace("{mode: netmap, prefix: 2001:db8:100::/64}", "{mode: netmap, prefix: 2001:db8:100::/64, "
                         "inbound: true}")  # fmt: skip
    assert dnat(opted) == (
        'iifname "wan1" ip6 daddr 2001:db8:100::/64 fib daddr type != local dnat ip6 prefix to fd00:77::/64',
    )
    chain = next(o for o in rendered(opted).nft.objects if o.kind == "chain" and o.name == "inbound6")
    assert chain.hook == ("nat", "prerouting", -100, "accept")
    assert unsolicited(opted) == [  # mapped on its own WAN only: arriving on another, it has nowhere to go
        f'iifname {{ "wan2", "wan3", "wan4" }} ip6 daddr 2001:db8:100::/64 {local} {drop}'
    ]


def test_without_an_ipv6_isp_nothing_ipv6_is_rendered() -> None:
    r = rendered("lan: {interfaces: [lan0]}\nisps:\n  - {name: a, interface: wan1, gateway: 100.64.1.1}\n")
    chains = {o.name: o for o in r.nft.objects if o.kind == "chain"}
    assert "from_lan6" not in chains
    assert chains["prerouting"].rules[1] == "meta nfproto != ipv4 return"
    assert not [rule for rule in r.routing.rules if rule.family == 6]
    assert not [k for k, _ in r.routing.sysctls if "ipv6" in k]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.replace("gateway6: 'fe80::1', ipv6: {mode: masquerade}", "ipv6: {mode: masquerade}"),
            "needs gateway6",
        ),
        (lambda t: t.replace("{mode: netmap, prefix: 2001:db8:100::/64}", "{mode: netmap}"), "needs the ISP-side"),
        (lambda t: t.replace("2001:db8:100::/64", "2001:db8:100::/56"), "must have the LAN prefix's length"),
        (lambda t: t.replace("2001:db8:100::/64", "2001:db8:300::/64", 1), "overlaps"),
        (
            lambda t: t.replace("{mode: routed, prefix: 2001:db8:300::/64}", "{mode: routed, prefix: 2001:db8:9::/64}"),
            "must be one of lan.ipv6_prefixes",
        ),
        (
            lambda t: t.replace("{mode: routed, prefix: 2001:db8:300::/64}", "{mode: masquerade, prefix_from: wan3}"),
            "prefix_from is for mode netmap",
        ),
        (
            lambda t: t.replace("prefix: 2001:db8:100::/64}", "prefix: 2001:db8:100::/64, prefix_from: wan1}"),
            "instead of prefix",
        ),
        (
            lambda t: t.replace("{mode: masquerade}", "{mode: masquerade, prefix: 2001:db8:7::/64}"),
            "prefix is used only by",
        ),
        (lambda t: t.replace(", ipv6_prefixes: [fd00:77::/64, 2001:db8:300::/64]", ""), "needs lan.ipv6_prefixes"),
        (lambda t: t.replace("{mode: masquerade}", "{mode: masquerade, inbound: true}"), "it needs mode netmap"),
        (lambda t: t.replace("/64}", "/64, inbound: 'yes'}", 1), "expected true or false, got 'yes'"),
        (
            lambda t: t.replace("[fd00:77::/64, 2001:db8:300::/64]", "[fd00:77::/64, fd00:78::/64, 2001:db8:300::/64]"),
            "netmap maps one LAN prefix",
        ),
    ],
)
def test_inconsistent_ipv6_settings_are_refused_with_the_reason(edit, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=message):
        parse_config(edit(GOOD))


def test_prefix_from_takes_the_global_prefix_on_its_interface_and_without_one_the_isp_carries_no_ipv6() -> None:
    text = GOOD.replace("{mode: netmap, prefix: 2001:db8:100::/64}", "{mode: netmap, prefix_from: wan1}")
    cfg = parse_config(text)
    state = runtime.allocate(cfg, None, reload=False).state
    net = ipaddress.IPv6Network
    on_wan1 = (
        ConnectedRoute(net("fd00:99::/64"), "wan1"),  # a ULA is never a delegated prefix
        ConnectedRoute(net("2001:db8:1::/56"), "wan1"),  # not the LAN prefix's length
        ConnectedRoute(net("2001:db8:101::/64"), "wan1"),
        ConnectedRoute(net("2001:db8:102::/64"), "wan2"),  # another interface
    )
    with_prefix = plan(cfg, state, connected=on_wan1)
    assert next(i for i in with_prefix.isps if i.name == "isp1").prefix6 == net("2001:db8:101::/64")
    assert dict(with_prefix.balance6) == {"isp1": 1, "isp2": 1}
    post = next(o for o in render(with_prefix).nft.objects if o.name == "postrouting").rules
    assert [line for line in post if "snat ip6 prefix to 2001:db8:101::/64" in line]
    without = plan(cfg, state, connected=on_wan1[:2])
    assert dict(without.balance6) == {"isp2": 1}
    post = next(o for o in render(without).nft.objects if o.name == "postrouting").rules
    assert not [line for line in post if '"wan1"' in line and "ipv6" in line]


POLICIES = """lan: {interfaces: [lan0], ipv6_prefixes: [fd00:77::/64]}
isps:
  - {name: isp1, interface: wan1, gateway: 100.64.1.1, gateway6: "fe80::1",
     ipv6: {mode: netmap, prefix: "2001:db8:100::/64"}}
  - {name: isp2, interface: wan2, gateway: 100.64.2.1, gateway6: "fe80::1", ipv6: {mode: masquerade}, tier: 2}
  - {name: isp3, interface: wan3, gateway: 100.64.3.1}
balance: {algorithm: hash, sticky: {by: source, timeout: 10m}}
policies:
  cheap: {members: [{isp: isp3, tier: 1}, {isp: isp2, tier: 2}], algorithm: weighted}
rules:
  - {name: web, proto: tcp, dport: [443], via: isp3}
  - {name: pin, src: [192.168.77.50], policy: cheap}
"""


def test_policies_rules_hash_and_sticky_get_ipv6_chains_over_the_isps_that_carry_ipv6() -> None:
    r = rendered(POLICIES)
    chains = {o.name: o.rules for o in r.nft.objects if o.kind == "chain"}
    sets = {o.name for o in r.nft.objects if o.kind == "set"}
    # hash over IPv6 keys, only isp1 (isp2 is a worse tier, isp3 carries no IPv6), sticky sets of IPv6 addresses
    assert chains["balance_6"][-1].startswith("jhash ip6 saddr . ip6 daddr mod 256 ")
    assert "goto pick_balance_6_isp1" in chains["balance_6"][-1] and "isp3" not in chains["balance_6"][-1]
    assert {"sticky6_balance_isp1", "sticky_balance_isp1"} <= sets
    # a policy whose tier-1 member has no IPv6: its IPv6 goes to the next tier
    assert chains["policy_cheap_6"][-1] == "goto pick_policy_cheap_6_isp2"
    assert chains["policy_cheap"][-1] == "goto pick_policy_cheap_isp3"
    # a rule sends IPv6 to the IPv6 chain of its target; a via ISP without IPv6 falls back to balance_6
    assert chains["rule_web"] == ('counter name "rule_web"', "meta nfproto ipv6 goto via_isp3_6", "goto via_isp3")
    assert chains["via_isp3_6"] == ("goto balance_6",)
    # from_lan6 walks the rules that can match IPv6 (ports), not the IPv4 address maps
    assert chains["from_lan6"][-2:] == ("meta l4proto tcp th dport vmap @rules6_0_tcp", "goto balance_6")


def test_ipv6_prefixes_in_rules_compile_to_ip6_maps_and_ipv4_ones_stay_ipv4() -> None:
    text = POLICIES.replace(
        "  - {name: pin, src: [192.168.77.50], policy: cheap}\n",
        "  - {name: pin, src: [192.168.77.50, 'fd00:77::50'], policy: cheap}\n"
        "  - {name: v6only, dst: ['2001:db8:f::/48', '!2001:db8:f::20'], via: isp1}\n"
        "  - {name: mixed, src: ['fd00:77::/120'], dscp: [ef], via: isp1}\n",
    )
    r = rendered(text)
    chains = {o.name: o.rules for o in r.nft.objects if o.kind == "chain"}
    maps = {o.name: o for o in r.nft.objects if isinstance(o, Set) and o.map_type}
    assert maps["rules_1"].elements == ("192.168.77.50 : goto rule_pin",)  # the IPv4 part
    assert maps["rules6_1"].elements == ("fd00:77::50 : goto rule_pin",)  # the IPv6 part, same chain
    assert maps["rules6_1"].type == "ipv6_addr"
    lan4 = chains["from_lan"]
    assert not [line for line in lan4 if "rule_v6only" in line or "ip6 " in line]  # nothing IPv6 for IPv4
    lan6 = chains["from_lan6"]
    assert "ip6 saddr vmap @rules6_1" in lan6
    assert "ip6 daddr 2001:db8:f::/48 ip6 daddr != 2001:db8:f::20 goto rule_v6only" in lan6
    assert "ip6 saddr fd00:77::/120 ip6 dscp { ef } goto rule_mixed" in lan6  # DSCP in IPv6's traffic class
    assert len([o for o in r.nft.objects if o.kind == "chain" and o.name == "rule_pin"]) == 1
