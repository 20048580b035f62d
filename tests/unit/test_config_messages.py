"""Config errors read like a router's: the ISP (policy, rule) by its name, what is allowed, what was written,
every independent error at once — ``FILE:LINE: isps[isp1].weight: must be 1..1000, got 0``."""

from __future__ import annotations

import pytest

from wanlb.config import ConfigError, parse_config

BASE = """\
lan:
  interfaces: [lan0]
isps:
  - name: isp1
    interface: wan1
    gateway: 100.64.1.1
    weight: 3
  - name: isp2
    interface: wan2
    gateway: 100.64.2.1
"""


def rows(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    return str(info.value).splitlines()


def edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    ("old", "new", "row"),
    [
        ("    weight: 3\n", "    weight: 0\n", "c.yaml:7: isps[isp1].weight: must be 1..1000, got 0"),
        (
            "    weight: 3\n",
            "    weight: three\n",
            "c.yaml:7: isps[isp1].weight: expected a whole number 1..1000, got 'three'",
        ),
        (
            "    weight: 3\n",
            "    weight: true\n",
            "c.yaml:7: isps[isp1].weight: expected a whole number 1..1000, got true",
        ),
        ("    weight: 3\n", "    helth: {}\n", "c.yaml:7: isps[isp1].helth: unknown key (did you mean health?)"),
        (
            "    weight: 3\n",
            "    colour: red\n",
            "c.yaml:7: isps[isp1].colour: unknown key; allowed here: name, interface, "
            "gateway, gateway_table, weight, tier, snat, mark, table, health, standby, gateway6, …",
        ),
        (
            "    weight: 3\n",
            "    health: {method: ping}\n",
            "c.yaml:7: isps[isp1].health.method: must be icmp, tcp, http, https or dns, got 'ping'",
        ),
        (
            "    weight: 3\n",
            "    snat: sometimes\n",
            "c.yaml:7: isps[isp1].snat: must be masquerade, none or an IPv4 address, got 'sometimes'",
        ),
        (
            "    weight: 3\n",
            "    health: icmp\n",
            "c.yaml:7: isps[isp1].health: expected a mapping (keys: method, targets, port, interval, timeout, "
            "down_after, up_after, quorum, window, max_loss, max_latency, recover_loss, …), got 'icmp'",
        ),
        (
            "  interfaces: [lan0]\n",
            "  interfaces: {lan0: 1}\n",
            "c.yaml:2: lan.interfaces: expected a list of interface names, got a mapping",
        ),
        (
            "  interfaces: [lan0]\n",
            "  interfaces: [lan0]\n  ipv6_prefixes: [fd00::1/64]\n",
            "c.yaml:3: lan.ipv6_prefixes[1]: 'fd00::1/64' is not an IPv6 network (like fd00::/64): it has host bits "
            "set, the network is fd00::/64",
        ),
        ("  interfaces: [lan0]\n", "  interfaces: []\n", "c.yaml:2: lan.interfaces: needs at least 1 item, got none"),
        (
            "    interface: wan2\n",
            "    interfce: wan2\n",
            "c.yaml:8: isps[isp2].interface: required field is missing (is interfce meant to be interface?)",
        ),
    ],
)
def test_an_error_names_the_isp_says_what_is_allowed_and_what_was_written(old: str, new: str, row: str) -> None:
    assert row in rows(edit(old, new))


def test_the_top_level_and_other_sections_speak_the_same_way() -> None:
    text = BASE + "local_traffic: maybe\nisps_: []\ndns: {servers: [ns1]}\nmark_mask: 0x100000000\n"
    assert rows(text) == [
        "c.yaml:11: local_traffic: expected true or false, got 'maybe'",
        "c.yaml:12: isps_: unknown key (did you mean isps?)",
        "c.yaml:13: dns.servers[1]: must be an IPv4 address or an IPv6 address, got 'ns1'",
        "c.yaml:14: mark_mask: must be 1..4294967295, got 4294967296",
    ]


def test_a_list_where_a_mapping_is_meant_says_which() -> None:
    assert rows("lan: {interfaces: [lan0]}\nisps: fiber\n") == [
        "c.yaml:2: isps: expected a list of mappings (keys: name, interface, gateway, gateway_table, weight, tier, "
        "snat, mark, table, health, standby, gateway6, …), got 'fiber'"
    ]


def test_items_without_a_unique_name_are_counted_from_one() -> None:
    assert rows(edit("  - name: isp2\n", "  - name: isp1\n")) == [
        "c.yaml:8: isps[2].name: duplicate name 'isp1' (also used by isps[1])"
    ]
    assert rows(edit("  - name: isp1\n", "  - name: ISP1\n")) == [
        "c.yaml:4: isps[1].name: 'ISP1' must match [a-z][a-z0-9_-]{0,14}"
    ]


def test_rules_and_policies_are_named_by_their_names() -> None:
    text = BASE + (
        "policies:\n  web:\n    members: [{isp: isp1}, {isp: nope}]\n"
        "rules:\n  - {name: ssh, dport: 22, via: isp9}\n  - {name: web, dst: [10.0.0.300], policy: web}\n"
    )
    assert rows(text) == [
        "c.yaml:13: policies[web].members[2].isp: no ISP named 'nope'",
        "c.yaml:15: rules[ssh].via: no ISP named 'isp9'",
        "c.yaml:16: rules[web].dst[1]: '10.0.0.300' is not an IPv4 or IPv6 address or network (like 10.0.0.0/24 or "
        "fd00::/64)",
    ]


@pytest.mark.parametrize(
    ("old", "new", "check"),
    [
        ("  interfaces: [lan0]\n", "  interfaces: lan0\n", lambda c: c.lan.interfaces == ("lan0",)),
        ("  interfaces: [lan0]\n", "  interfaces: [lan0]\n  bypass: 10.0.0.0/8\n", lambda c: len(c.lan.bypass) == 1),
        ("    weight: 3\n", "    health: {targets: 192.0.2.1}\n", lambda c: len(c.isps[0].health.targets) == 1),
        ("    weight: 3\n", "    weight: 3\n", lambda c: c.helpers == ("sip",)),
        ("    weight: 3\n", "    weight: 3\n", lambda c: c.api is not None and c.api.listen == ("127.0.0.1:9180",)),
        ("    weight: 3\n", "    weight: 3\n", lambda c: c.rules[0].iif == ("lan0",)),
        ("    weight: 3\n", "    weight: 3\n", lambda c: c.policies["p"].members[0].isp == "isp1"),
    ],
)
def test_one_value_is_accepted_wherever_a_list_is_meant(old: str, new: str, check) -> None:
    extra = (
        "helpers: sip\napi: {listen: 127.0.0.1:9180, public_read: true}\n"
        "policies: {p: {members: {isp: isp1}}}\nrules: [{name: r, iif: lan0, policy: p}]\n"
    )
    assert check(parse_config(edit(old, new) + extra))


def test_independent_errors_come_at_once() -> None:
    """A field error elsewhere does not hide what only the whole file can tell (here: a WAN on the LAN)."""
    text = edit("    interface: wan1\n    gateway: 100.64.1.1\n    weight: 3\n",
                "    interface: lan0\n    gateway: 100.64.1.1\n    weight: 0\n")  # fmt: skip
    assert rows(text) == [
        "c.yaml:5: isps[isp1].interface: lan0 is also a LAN interface",
        "c.yaml:7: isps[isp1].weight: must be 1..1000, got 0",
    ]


def test_a_field_left_at_its_default_for_the_checks_raises_no_error_of_its_own() -> None:
    """mark_mask is invalid: the marks are not then judged against the default mask the user never wrote."""
    text = edit("    weight: 3\n", "    weight: 3\n    mark: 0x10\n") + "mark_mask: 0xf0f0\n"
    assert rows(text) == ["c.yaml:12: mark_mask: mark_mask 0xf0f0 must be one contiguous run of bits"]


def test_overlapping_bypass_networks_are_refused_naming_both() -> None:
    text = edit(
        "  interfaces: [lan0]\n",
        "  interfaces: [lan0]\n  bypass: [10.0.0.0/8, 192.0.2.0/24, 10.1.0.0/16, fd00::/8, fd00:1::/32, 10.0.0.0/8]\n",
    )
    assert rows(text) == [
        "c.yaml:3: lan.bypass[3]: 10.1.0.0/16 overlaps lan.bypass[1] (10.0.0.0/8)",
        "c.yaml:3: lan.bypass[5]: fd00:1::/32 overlaps lan.bypass[4] (fd00::/8)",
        "c.yaml:3: lan.bypass[6]: 10.0.0.0/8 overlaps lan.bypass[1] (10.0.0.0/8)",
    ]


def test_a_static_ipv6_gateway_inside_the_lan_prefixes_is_refused() -> None:
    text = edit("  interfaces: [lan0]\n", "  interfaces: [lan0]\n  ipv6_prefixes: [fd00:77::/64]\n")
    text = edit("    weight: 3\n", "    gateway6: fd00:77::1\n    ipv6: {mode: masquerade}\n", text)
    assert rows(text) == [
        "c.yaml:8: isps[isp1].gateway6: fd00:77::1 is inside lan.ipv6_prefixes (fd00:77::/64): a WAN's next hop "
        "is on its own link, not the LAN"
    ]
    assert parse_config(text.replace("fd00:77::1\n", "fe80::1\n"))


def test_none_is_not_an_isp_name() -> None:
    """`wanlb conntrack count --by isp` lists unmarked connections as ``none``: no ISP may be called that."""
    assert rows(edit("  - name: isp2\n", "  - name: none\n")) == [
        "c.yaml:8: isps[none].name: 'none' is reserved: `wanlb conntrack` shows unmarked connections under that name"
    ]


@pytest.mark.parametrize(
    ("quota", "row"),
    [
        ("{limit: 20}", "c.yaml:7: isps[isp1].quota.limit: 20 bytes is less than 1 MiB: write the unit, e.g. 20GiB or "
         "500MB"),
        ("{limit: 20 gigs}", "c.yaml:7: isps[isp1].quota.limit: cannot parse size '20 gigs': use e.g. 20GiB, 500MB or "
         "1.5TB"),
        ("{limit: 9EiB}", "c.yaml:7: isps[isp1].quota.limit: must be at most 8 EiB (2^63 - 1 bytes)"),
        ("{limit: true}", "c.yaml:7: isps[isp1].quota.limit: expected a size like 20GiB, 500MB or a number of bytes"),
        ("{limt: 20GiB}", "c.yaml:7: isps[isp1].quota.limt: unknown key (did you mean limit?)"),
        ("20GiB", "c.yaml:7: isps[isp1].quota: expected a mapping (keys: limit, cycle, start_day, every, warn, "
         "at_limit), got '20GiB'"),
        ("{limit: 20GiB, cycle: weekly}", "c.yaml:7: isps[isp1].quota.cycle: must be monthly, got 'weekly': for a "
         "cycle of N days write every: Nd"),
        ("{limit: 20GiB, start_day: 32}", "c.yaml:7: isps[isp1].quota.start_day: must be 1..31, got 32"),
        ("{limit: 20GiB, every: 30d, start_day: 5}", "c.yaml:7: isps[isp1].quota: give cycle: monthly (with "
         "start_day) or every: N days, not both"),
        ("{limit: 20GiB, every: 400d}", "c.yaml:7: isps[isp1].quota.every: a cycle is 1..366 days, got 400"),
        ("{limit: 20GiB, every: 1 month}", "c.yaml:7: isps[isp1].quota.every: '1 month' is not a number of days: use "
         "e.g. 30d or 4w"),
        ("{limit: 20GiB, warn: [75%, 120%]}", "c.yaml:7: isps[isp1].quota.warn[2]: '120%' is not a percentage of the "
         "limit above 0 and below 100, like 75%"),
        ("{limit: 20GiB, warn: 0.8}", "c.yaml:7: isps[isp1].quota.warn[1]: 0.8 looks like a fraction: write a "
         "percentage, like 80% (0.8% with the % sign if that is meant)"),
        ("{limit: 20GiB, warn: [75%, 75]}", "c.yaml:7: isps[isp1].quota.warn: a threshold is listed twice"),
        ("{limit: 20GiB, at_limit: stop}", "c.yaml:7: isps[isp1].quota.at_limit: must be standby, last-resort or "
         "drop, got 'stop'"),
    ],
)  # fmt: skip
def test_a_malformed_quota_says_what_is_allowed(quota: str, row: str) -> None:
    assert row in rows(edit("    weight: 3\n", f"    quota: {quota}\n"))


def test_a_quota_reads_sizes_percentages_and_cycles_as_people_write_them() -> None:
    text = edit("    weight: 3\n", "    quota: {limit: 1.5TB, every: 4w, warn: [95, 50%], at_limit: drop}\n")
    q = parse_config(text).isps[0].quota
    assert q is not None and (q.limit, q.every, q.warn, q.at_limit) == (1_500_000_000_000, 28, (50.0, 95.0), "drop")
    q = parse_config(edit("    weight: 3\n", "    quota: {limit: 20 gib, start_day: 31}\n")).isps[0].quota
    assert q is not None and (q.limit, q.cycle, q.start_day, q.every) == (20 << 30, "monthly", 31, None)
