"""Rules by source MAC (``src_mac``): validated and normalised, rendered as ``ether saddr`` in the IPv4 and the
IPv6 NEW-connection paths (prerouting only), a rule of its own beside the verdict maps, shown in status, and
accepted by the real nft."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess

import pytest

from wanlb import runtime
from wanlb.config import MAX_RULE_MACS, Config, ConfigError, parse_config
from wanlb.nftsync import full_text
from wanlb.plan import plan
from wanlb.render import render
from wanlb.view import _match

BASE = """\
lan: {interfaces: [lan0], ipv6_prefixes: [fd00:77::/64]}
isps:
  - {name: a, interface: wan1, gateway: 100.64.1.1, gateway6: 'fe80::1', ipv6: {mode: masquerade}}
  - {name: b, interface: wan2, gateway: 100.64.2.1, gateway6: 'fe80::2', ipv6: {mode: masquerade}}
"""
TV = BASE + "rules:\n  - {name: tv, src_mac: MACS, via: b}\n"


def cfg(text: str) -> Config:
    return parse_config(text, "c.yaml")


def rows(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    return str(info.value).splitlines()


def nft_text(config: Config) -> str:
    return full_text(render(plan(config, runtime.allocate(config, None, reload=False).state)).nft)


def chain_rules(text: str, chain: str) -> list[str]:
    prefix = f"add rule inet wanlb {chain} "
    return [line.removeprefix(prefix) for line in text.splitlines() if line.startswith(prefix)]


def test_macs_are_normalised_to_lower_case_colons() -> None:
    rule = cfg(TV.replace("MACS", '[AA:BB:CC:00:11:22, "aa-bb-cc-00-11-23", " 02:00:00:00:00:01 "]')).rules[0]
    assert rule.src_mac == ("aa:bb:cc:00:11:22", "aa:bb:cc:00:11:23", "02:00:00:00:00:01")
    assert cfg(TV.replace("MACS", "aa:bb:cc:00:11:22")).rules[0].src_mac == ("aa:bb:cc:00:11:22",)  # one: a list


@pytest.mark.parametrize(
    ("macs", "row"),
    [
        ("[aa:bb:cc:00:11]", "c.yaml:6: rules[tv].src_mac[1]: 'aa:bb:cc:00:11' is not a MAC address (six pairs of "
         "hex digits, like aa:bb:cc:dd:ee:ff)"),
        ("[aa:bb-cc:00:11:22]", "c.yaml:6: rules[tv].src_mac[1]: 'aa:bb-cc:00:11:22' is not a MAC address (six "
         "pairs of hex digits, like aa:bb:cc:dd:ee:ff)"),
        ("[10:20:30:40:50:55]", "c.yaml:6: rules[tv].src_mac[1]: YAML read 10:20:30:40:50:55 as the number "
         "8041827055: put a MAC address of digits only in quotes"),
        ("[01:00:5e:00:00:01]", "c.yaml:6: rules[tv].src_mac[1]: 01:00:5e:00:00:01 is a multicast address: no host "
         "sends from it"),
        ("[ff:ff:ff:ff:ff:ff]", "c.yaml:6: rules[tv].src_mac[1]: ff:ff:ff:ff:ff:ff is a multicast address: no host "
         "sends from it"),
        ("['00:00:00:00:00:00']", "c.yaml:6: rules[tv].src_mac[1]: 00:00:00:00:00:00 is no host's address"),
        ("{aa: 1}", "c.yaml:6: rules[tv].src_mac: expected a list of MAC addresses (like aa:bb:cc:dd:ee:ff), got a "
         "mapping"),
    ],
)  # fmt: skip
def test_bad_macs_are_config_errors(macs: str, row: str) -> None:
    assert rows(TV.replace("MACS", macs)) == [row]


def test_at_most_so_many_macs_per_rule() -> None:
    many = "[" + ", ".join(f"'02:00:00:00:{i // 256:02x}:{i % 256:02x}'" for i in range(MAX_RULE_MACS + 1)) + "]"
    assert rows(TV.replace("MACS", many)) == [
        f"c.yaml:6: rules[tv].src_mac: at most {MAX_RULE_MACS} items, not {MAX_RULE_MACS + 1}"
    ]


def test_a_mac_rule_is_one_ether_saddr_lookup_for_ipv4_and_ipv6() -> None:
    text = nft_text(
        cfg(
            BASE
            + """\
rules:
  - {name: pin1, src: [192.168.77.11], via: a}
  - {name: tv, src_mac: [aa:bb:cc:00:11:23, AA:BB:CC:00:11:22, aa:bb:cc:00:11:22], via: b}
  - {name: pin2, src: [192.168.77.12], via: a}
  - {name: tv-https, src_mac: [aa:bb:cc:00:11:24], dport: [443], src: [192.168.77.0/24], via: a}
"""
        )
    )
    mac = "ether saddr { aa:bb:cc:00:11:22, aa:bb:cc:00:11:23 } goto rule_tv"  # each once, sorted
    v4 = chain_rules(text, "from_lan")
    assert v4.index(mac) == v4.index("ip saddr vmap @rules_0") + 1  # in rule order, between the two maps
    assert v4.index("ip saddr vmap @rules_1") == v4.index(mac) + 1  # (a MAC rule is never merged into a map)
    assert (
        "ether saddr { aa:bb:cc:00:11:24 } ip saddr 192.168.77.0/24 meta l4proto { tcp, udp } th dport 443 "
        "goto rule_tv-https"
    ) in v4
    v6 = chain_rules(text, "from_lan6")  # a MAC rule without addresses matches both families
    assert mac in v6 and not any("tv-https" in line for line in v6)  # its src is IPv4 only: no IPv6 part
    assert "meta nfproto ipv6 goto via_b_6" in chain_rules(text, "rule_tv")
    # only prerouting walks the rules: the gateway's own traffic (output) never looks at a frame's source
    assert not any("from_lan" in line or "ether" in line for line in chain_rules(text, "output"))


def test_status_shows_the_macs_a_rule_matches() -> None:
    rule = cfg(TV.replace("MACS", "[aa:bb:cc:00:11:22]")).rules[0]
    assert _match(rule) == "src mac aa:bb:cc:00:11:22"


@pytest.mark.root
def test_the_real_nft_accepts_mac_rules_in_the_inet_prerouting_path() -> None:
    if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"):
        pytest.skip("needs root, nft and ip")
    text = nft_text(cfg(TV.replace("MACS", "[aa:bb:cc:00:11:22, '02:00:00:00:00:01']")))
    ns = f"wlunit-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        done = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text, capture_output=True,
                              text=True, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        listed = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "chain", "inet", "wanlb", "from_lan6"],
                                capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert "ether saddr { 02:00:00:00:00:01, aa:bb:cc:00:11:22 } goto rule_tv" in listed
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
