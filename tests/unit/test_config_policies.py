"""Policies and rules in the config: what parses into what, and a FILE:LINE: path: message for each mistake."""

from __future__ import annotations

import ipaddress

import pytest

from wanlb.config import ConfigError, PolicyMember, StickyConfig, parse_config

BASE = """\
lan: {interfaces: [lan0, lan-guest]}
isps:
  - {name: fiber, interface: wan1, gateway: 100.64.1.1, weight: 3}
  - {name: lte, interface: wan2, gateway: 100.64.2.1, tier: 2}
"""  # 4 lines: what follows starts at line 5


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def error(extra: str) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(BASE + extra, "wanlb.yaml")
    return str(exc.value)


def test_the_documented_example_parses_into_what_it_says() -> None:
    cfg = parse_config(
        BASE
        + """\
policies:
  cheap_first:
    members: [{isp: lte, tier: 1, weight: 1}, {isp: fiber, tier: 2}]
    algorithm: weighted
    on_unavailable: drop
    sticky: {by: source, timeout: 10m}
  plain:
    members: [{isp: fiber}]
rules:
  - name: gaming
    src: [10.0.0.50, 10.0.1.0/24, "!10.0.1.7"]
    proto: udp
    dport: [27015-27030, 3478]
    via: fiber
  - {name: video, dst_domains: [Video.Example.COM.], policy: cheap_first}
  - {name: lan-to-vpn, dst: [10.8.0.0/16], action: bypass}
  - {name: guests, iif: [lan-guest], dscp: [ef, AF41, cs1, 5], policy: cheap_first}
  - {name: by-number, proto: 47, dst: "!192.0.2.0/24", action: drop}
  - {name: sctp, proto: SCTP, sport: "1000-2000", dport: 9, policy: default}
  - {name: ports-only, dport: 53, dst_not: 10.9.0.1, src_not: [10.9.0.2], via: lte}
"""
    )
    cheap = cfg.policies["cheap_first"]
    assert cheap.members == (PolicyMember(isp="lte", tier=1, weight=1), PolicyMember(isp="fiber", tier=2))
    assert cheap.algorithm == "weighted" and cheap.on_unavailable == "drop"
    assert cheap.sticky == StickyConfig(by="source", timeout=600.0)
    plain = cfg.policies["plain"]
    assert plain.algorithm is None and plain.sticky is None and plain.on_unavailable == "default"
    gaming, video, vpn, guests, gre, sctp, ports = cfg.rules
    assert gaming.src == (net("10.0.0.50/32"), net("10.0.1.0/24")) and gaming.src_not == (net("10.0.1.7/32"),)
    assert gaming.proto == 17 and gaming.dport == ((27015, 27030), (3478, 3478)) and gaming.via == "fiber"
    assert gaming.policy is None and gaming.action is None
    assert video.dst_domains == ("video.example.com",) and video.policy == "cheap_first"
    assert vpn.dst == (net("10.8.0.0/16"),) and vpn.action == "bypass"
    assert guests.iif == ("lan-guest",) and guests.dscp == (46, 34, 8, 5)
    assert gre.proto == 47 and gre.dst == () and gre.dst_not == (net("192.0.2.0/24"),) and gre.action == "drop"
    assert sctp.proto == 132 and sctp.sport == ((1000, 2000),) and sctp.dport == ((9, 9),)
    assert sctp.policy == "default"  # the implicit policy may be named
    assert ports.proto is None and ports.dport == ((53, 53),)  # no proto: tcp and udp, decided by rules.py
    assert ports.dst_not == (net("10.9.0.1/32"),) and ports.src_not == (net("10.9.0.2/32"),)


def test_negations_join_an_explicit_src_not() -> None:
    cfg = parse_config(
        BASE + 'rules:\n  - {name: r, src: [10.0.0.0/8, "!10.1.0.0/16"], src_not: 10.2.0.0/16, via: lte}\n'
    )
    assert cfg.rules[0].src == (net("10.0.0.0/8"),)
    assert set(cfg.rules[0].src_not) == {net("10.1.0.0/16"), net("10.2.0.0/16")}


def test_no_policies_and_no_rules_by_default() -> None:
    cfg = parse_config(BASE)
    assert cfg.policies == {} and cfg.rules == ()
    assert cfg.failover.on_recover == "keep" and cfg.balance.sticky is None


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param(
            "rules:\n  - {name: r, via: cable}\n",
            "wanlb.yaml:6: rules[r].via: no ISP named 'cable'",
            id="unknown ISP in via",
        ),
        pytest.param(
            "policies:\n  p:\n    members:\n      - {isp: fiber}\n      - {isp: cable}\n",
            "wanlb.yaml:9: policies[p].members[2].isp: no ISP named 'cable'",
            id="unknown ISP in members",
        ),
        pytest.param(
            "policies:\n  p:\n    members: [{isp: fiber}, {isp: fiber, tier: 2}]\n",
            "wanlb.yaml:7: policies[p].members[2].isp: 'fiber' is listed twice",
            id="member twice",
        ),
        pytest.param(
            "policies:\n  p: {members: [{isp: fiber}]}\nrules:\n  - {name: r, policy: q}\n",
            "wanlb.yaml:8: rules[r].policy: no policy named 'q' (policies: p)",
            id="unknown policy",
        ),
        pytest.param(
            "rules:\n  - {name: r, via: fiber}\n  - {name: s, via: lte}\n  - {name: r, action: drop}\n",
            "wanlb.yaml:8: rules[3].name: duplicate rule name 'r' (also rules[1])",
            id="duplicate rule names",
        ),
        pytest.param(
            "policies:\n  default:\n    members: [{isp: fiber}]\n",
            "wanlb.yaml:6: policies[default]: 'default' is the implicit policy of every ISP (balance); "
            "pick another name",
            id="policy named default",
        ),
        pytest.param(
            "rules:\n  - {name: r, proto: icmp, dport: [80], via: fiber}\n",
            "wanlb.yaml:6: rules[r]: ports need proto tcp, udp, sctp, dccp or udplite (or no proto: tcp and udp)",
            id="ports with proto icmp",
        ),
        pytest.param(
            "rules:\n  - {name: r, proto: 47, sport: 80, via: fiber}\n",
            "wanlb.yaml:6: rules[r]: ports need proto tcp, udp, sctp, dccp or udplite (or no proto: tcp and udp)",
            id="ports with proto gre by number",
        ),
        pytest.param(
            "rules:\n  - {name: r, via: fiber, policy: default}\n",
            "wanlb.yaml:6: rules[r]: give exactly one of via (an ISP), policy (a policy name) or action (bypass, drop)",
            id="two targets",
        ),
        pytest.param(
            "rules:\n  - {name: r, src: [10.0.0.1]}\n",
            "wanlb.yaml:6: rules[r]: give exactly one of via (an ISP), policy (a policy name) or action (bypass, drop)",
            id="no target",
        ),
        pytest.param(
            "rules:\n  - {name: r, dport: [27030-27015], via: fiber}\n",
            "wanlb.yaml:6: rules[r].dport[1]: port range 27030-27015 must lie within 1-65535, low end first",
            id="bad port range: reversed",
        ),
        pytest.param(
            "rules:\n  - {name: r, dport: [80, 0-10], via: fiber}\n",
            "wanlb.yaml:6: rules[r].dport[2]: port range 0-10 must lie within 1-65535, low end first",
            id="bad port range: port 0",
        ),
        pytest.param(
            "rules:\n  - {name: r, sport: 65536, via: fiber}\n",
            "wanlb.yaml:6: rules[r].sport[1]: port range 65536-65536 must lie within 1-65535, low end first",
            id="bad port: too large",
        ),
        pytest.param(
            "rules:\n  - {name: r, dport: [http], via: fiber}\n",
            "wanlb.yaml:6: rules[r].dport[1]: 'http' is not a port or a range like 27015-27030",
            id="bad port: a name",
        ),
        pytest.param(
            "rules:\n  - {name: r, iif: [lan0, wan2], via: fiber}\n",
            "wanlb.yaml:6: rules[r].iif[2]: wan2 is a WAN interface: rules match traffic from the LAN",
            id="WAN interface in iif",
        ),
        pytest.param(
            "rules:\n  - {name: r, iif: [lan9], via: fiber}\n",
            "wanlb.yaml:6: rules[r].iif[1]: lan9 is not in lan.interfaces (lan0, lan-guest): add it there to "
            "balance it",
            id="iif not a LAN interface",
        ),
        pytest.param(
            "rules:\n  - {name: r, dst_domains: [example..com], via: fiber}\n",
            "wanlb.yaml:6: rules[r].dst_domains[1]: 'example..com' has an empty label (a leading dot or two dots "
            "in a row).",
            id="bad domain: empty label",
        ),
        pytest.param(
            "rules:\n  - {name: r, dst_domains: [intranet], via: fiber}\n",
            "wanlb.yaml:6: rules[r].dst_domains[1]: 'intranet' is a single label: give the fully qualified name "
            "(search domains are not used).",
            id="bad domain: one label",
        ),
        pytest.param(
            "rules:\n  - {name: r, dst_domains: [ok.example.com, 'a b.example.com'], via: fiber}\n",
            "wanlb.yaml:6: rules[r].dst_domains[2]: 'a b.example.com': label 'a b' may hold only letters, digits, "
            "'-' and '_', and may not start or end with '-'.",
            id="bad domain: a space",
        ),
        pytest.param(
            "rules:\n  - {name: r, proto: tcpp, via: fiber}\n",
            "wanlb.yaml:6: rules[r].proto: 'tcpp': use tcp, udp, icmp, icmpv6, sctp, dccp, udplite, gre, esp, ah or a "
            "number 0-255",
            id="unknown protocol",
        ),
        pytest.param(
            "rules:\n  - {name: r, proto: 256, via: fiber}\n",
            "wanlb.yaml:6: rules[r].proto: 256: use tcp, udp, icmp, icmpv6, sctp, dccp, udplite, gre, esp, ah or a "
            "number 0-255",
            id="protocol number too large",
        ),
        pytest.param(
            "rules:\n  - {name: r, dscp: [ef, af44], via: fiber}\n",
            "wanlb.yaml:6: rules[r].dscp[2]: 'af44': use a DSCP name (ef, cs0-cs7, af11-af43, va) or a number 0-63",
            id="unknown DSCP name",
        ),
        pytest.param(
            'rules:\n  - {name: r, src: [10.0.0.1, "!10.0.0.5", "!10.0.0.0/33"], via: fiber}\n',
            "wanlb.yaml:6: rules[r]: src[3]: '10.0.0.0/33' is not an IPv4 or IPv6 address or network (like "
            "10.0.0.0/24 or fd00::/64)",
            id="bad negated address",
        ),
        pytest.param(
            "rules:\n  - {name: r, dst: [10.0.0.1, fd00::1/64], via: fiber}\n",
            "wanlb.yaml:6: rules[r].dst[2]: 'fd00::1/64' has host bits set: the network is fd00::/64",
            id="host bits",
        ),
        pytest.param(
            "rules:\n  - {name: Gaming, via: fiber}\n",
            "wanlb.yaml:6: rules[1].name: 'Gaming' is not a valid rule name (must match [a-z][a-z0-9_-]{0,23})",
            id="bad rule name",
        ),
        pytest.param(
            "policies:\n  p:\n    members: [{isp: fiber}]\n    on_unavailable: reject\n",
            "wanlb.yaml:8: policies[p].on_unavailable: must be default, drop or unreachable, got 'reject'",
            id="bad on_unavailable",
        ),
        pytest.param(
            "failover: {on_recover: move}\n",
            "wanlb.yaml:5: failover.on_recover: must be keep or move-lower-tier, got 'move'",
            id="bad on_recover",
        ),
    ],
)
def test_each_mistake_is_one_line_naming_file_line_and_field(extra: str, expected: str) -> None:
    assert error(extra) == expected


def test_every_mistake_of_a_file_is_reported_at_once() -> None:
    report = error(
        """\
policies:
  default: {members: [{isp: fiber}]}
  p: {members: [{isp: dsl}]}
rules:
  - {name: a, via: cable}
  - {name: a, policy: nope}
"""
    ).splitlines()
    assert report == [
        "wanlb.yaml:6: policies[default]: 'default' is the implicit policy of every ISP (balance); pick another name",
        "wanlb.yaml:7: policies[p].members[1].isp: no ISP named 'dsl'",
        "wanlb.yaml:9: rules[1].via: no ISP named 'cable'",
        "wanlb.yaml:10: rules[2].name: duplicate rule name 'a' (also rules[1])",
        "wanlb.yaml:10: rules[2].policy: no policy named 'nope' (policies: default, p)",
    ]
