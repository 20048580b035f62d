"""``wanlb explain``'s pure core (wanlb.flow_explain), its typed command and its daemon side, without root.

The kernel's jhash is checked against lookup3's published vectors and against values this kernel's nft computed
(``ct mark set jhash ip saddr . ip daddr . meta l4proto . th sport . th dport mod 256 seed 0x57a1b`` on UDP
flows); the integration test (tests/integration/test_explain_lab.py) compares whole decisions with real flows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import re
import time
from pathlib import Path
from typing import Any

import pytest
from test_daemon_fake import CONFIG, Harness, run

from wanlb import commands, runtime, view
from wanlb.config import Config, parse_config
from wanlb.daemon.surface import Surface
from wanlb.domains import DomainWatcher, ResolverSettings
from wanlb.flow_explain import Decision, Flow, Live, explain, hash_key, jhash, nft_jhash, set_elements
from wanlb.plan import Desired, plan
from wanlb.policy import HASH_SEED
from wanlb.schedule import Inactive
from wanlb.states import IspStatus
from wanlb.uplink import ConnectedRoute

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
ISPS = """\
isps:
  - {name: a, interface: wan1, gateway: 100.64.1.1, weight: 2}
  - {name: b, interface: wan2, gateway: 100.64.2.1}
  - {name: c, interface: wan3, gateway: 100.64.3.1, tier: 2}
"""
POLICIES = """\
balance: {hash: {fields: [src, dst, proto, sport, dport]}}
policies:
  fast: {members: [{isp: a}, {isp: b}, {isp: c}]}
  pairs: {members: [{isp: a}, {isp: b}, {isp: c, tier: 1}], algorithm: hash}
  pinned: {members: [{isp: b}, {isp: c, tier: 1}], sticky: {by: source}}
  strict: {members: [{isp: c}], on_unavailable: drop}
  polite: {members: [{isp: c}], on_unavailable: unreachable}
rules:
  - {name: v6only, src: ["fd00:77::/64"], action: drop}
  - {name: video, dst: [203.0.113.20], dport: 443, policy: fast}
  - {name: hashed, dport: [8081], policy: pairs}
  - {name: stick, src: [192.168.77.50], policy: pinned}
  - {name: vpn, dst: [10.8.0.0/16], action: bypass}
  - {name: dns, proto: udp, dport: 53, via: c}
  - {name: blocked, dport: 9090, action: drop}
  - {name: strict, dport: 9091, policy: strict}
  - {name: polite, dport: 9092, policy: polite}
  - {name: video-site, dst_domains: [video.example], policy: pairs}
  - {name: guests, iif: [lan1], dscp: [ef], via: b}
  - {name: console, src_mac: ["02:00:00:00:00:01"], via: a}
"""
LAN = (
    ConnectedRoute(ipaddress.IPv4Network("192.168.77.0/24"), "lan0"),
    ConnectedRoute(ipaddress.IPv4Network("192.168.78.0/24"), "lan1"),
)


def config(text: str = POLICIES, isps: str = ISPS) -> Config:
    return parse_config(f"lan: {{interfaces: [lan0, lan1], bypass: [198.51.100.0/24]}}\n{isps}{text}")


def desired(cfg: Config | None = None, statuses: dict[str, IspStatus] | None = None) -> Desired:
    cfg = cfg or config()
    return plan(cfg, runtime.allocate(cfg, None, reload=False).state, statuses, LAN)


def flow(
    src: str = "192.168.77.10",
    dst: str = "203.0.113.10",
    proto: int = 6,
    sport: int | None = 40000,
    dport: int | None = 80,
    iif: str = "lan0",
    dscp: int = 0,
    src_mac: str | None = "02:00:00:00:00:09",  # (no console: the rule on a MAC address says no)
) -> Flow:
    return Flow(ipaddress.ip_address(src), ipaddress.ip_address(dst), proto, sport, dport, iif, dscp, src_mac)


def decide(d: Desired | None = None, live: Live | None = None, **kw: Any) -> Decision:
    main = Live(route_type="unicast", route_table=254, route_prefix=ipaddress.ip_network("0.0.0.0/0"))
    return explain(d or desired(), flow(**kw), live or main)


# --- the kernel's jhash ---------------------------------------------------------------------------------------


def test_jhash_is_lookup3_bit_for_bit() -> None:
    """Bob Jenkins' published vectors for hashlittle (lookup3.c, driver5): Linux's jhash is the same function."""
    text = b"Four score and seven years ago"
    assert jhash(b"", 0) == 0xDEADBEEF
    assert jhash(text, 0) == 0x17770551
    assert jhash(text, 1) == 0xCD628161
    assert jhash(text[:12], 0, "big") == jhash(text[:12], 0, "little")  # the last block is read byte by byte
    assert jhash(text, 0, "big") != jhash(text, 0)  # the others as the CPU's words


@pytest.mark.parametrize(("sport", "dport", "bucket"), [(5000, 443, 71), (40000, 53, 194), (12345, 9999, 110)])
def test_nft_jhash_of_the_five_tuple_is_what_the_kernel_computed(sport: int, dport: int, bucket: int) -> None:
    udp = flow("10.9.0.1", "10.9.0.2", 17, sport, dport)
    key = hash_key(("src", "dst", "proto", "sport", "dport"), udp)
    assert key is not None and len(key) == 20  # every field a whole 32-bit register: 4 + 4 + 4 + 4 + 4
    assert key[8:12] == b"\x11\0\0\0" and key[12:16] == sport.to_bytes(2, "big") + b"\0\0"
    assert nft_jhash(key, 256, HASH_SEED) == bucket
    assert nft_jhash(key, 256, HASH_SEED) == (jhash(key, HASH_SEED) * 256) >> 32  # reciprocal_scale, not %


def test_a_hash_key_needs_every_field_it_reads() -> None:
    assert hash_key(("src", "dst"), flow(sport=None, dport=None)) is not None
    assert hash_key(("src", "sport"), flow(sport=None)) is None
    assert hash_key(("dport",), flow(proto=1, sport=None, dport=None)) is None  # ICMP: th dport is its checksum
    six = hash_key(("src", "dst"), flow("fd00:77::10", "2001:db8::1"))
    assert six is not None and len(six) == 32


# --- the walk ----------------------------------------------------------------------------------------------------


def test_hash_names_the_exact_isp_of_the_bucket_the_kernel_computes() -> None:
    d = desired()
    dec = decide(d, dport=8081)
    pairs = next(p for p in d.policies if p.name == "pairs")
    key = hash_key(pairs.hash_fields, flow(dport=8081))
    assert key is not None
    bucket = nft_jhash(key, 256, HASH_SEED)
    assert dec.hash is not None and (dec.hash.bucket, dec.hash.buckets) == (bucket, 256)
    assert (dec.verdict, dec.isp, dec.policy, dec.algorithm, dec.tier) == ("isp", pairs.buckets[bucket], "pairs",
                                                                            "hash", 1)  # fmt: skip
    assert dec.rule is not None and (dec.rule.index, dec.rule.name, dec.rule.target) == (3, "hashed", "policy pairs")
    assert dec.mark == next(i.mark for i in d.isps if i.name == dec.isp)
    assert dec.summary.startswith(f"{dec.isp}, because rule 3 (hashed) → policy pairs: hash bucket {bucket} of 256")
    assert dec.route.startswith(f"fwmark {dec.mark:#x} → table ")
    assert {c.isp for c in dec.candidates} == {"a", "b", "c"}
    assert sum(c.share_percent for c in dec.candidates) == pytest.approx(100)


def test_weighted_names_the_candidates_their_weights_and_the_tier_in_use() -> None:
    dec = decide(dst="203.0.113.20", dport=443)
    assert (dec.verdict, dec.isp, dec.policy, dec.tier) == ("isp", None, "fast", 1)
    assert [(c.isp, c.weight, c.share_percent) for c in dec.candidates] == [("a", 2, 66.67), ("b", 1, 33.33)]
    assert dec.summary == "weighted among {a×2, b×1} (numgen inc), because rule 2 (video) → policy fast, tier 1"
    down = decide(desired(statuses={"a": IspStatus.DOWN, "b": IspStatus.DOWN}), dst="203.0.113.20", dport=443)
    assert (down.isp, down.tier) == ("c", 2)  # the next tier, the one ISP in use there: exact


def test_unmatched_traffic_takes_the_default_policy() -> None:
    dec = decide()
    assert (dec.rule, dec.policy, dec.chain) == (None, "default", "balance")
    assert "no rule matched" in dec.steps
    assert dec.summary.endswith("because no rule matched → the default policy, tier 1")


def test_sticky_a_pinned_client_is_exact_a_new_one_is_recorded() -> None:
    d = desired()
    new = decide(d, src="192.168.77.50")
    assert (new.policy, new.sticky, new.isp) == ("pinned", "recorded", None)
    pinned = Live(sets={"sticky_policy_pinned_c": frozenset({("192.168.77.50",)})})
    dec = decide(d, pinned, src="192.168.77.50")
    assert (dec.sticky, dec.isp) == ("pinned", "c")
    assert "policy_pinned: 192.168.77.50 is in @sticky_policy_pinned_c (sticky) → isp_c" in dec.steps
    gone = decide(desired(statuses={"c": IspStatus.DOWN}), pinned, src="192.168.77.50")
    assert (gone.sticky, gone.isp) == ("recorded", "b")  # only the sets of the ISPs in use are looked up


def test_source_dest_sticky_keys_by_the_pair() -> None:
    d = desired(config(POLICIES.replace("sticky: {by: source}", "sticky: {by: source-dest}")))
    live = Live(sets={"sticky_policy_pinned_b": frozenset({("192.168.77.50", "203.0.113.10")})})
    assert decide(d, live, src="192.168.77.50").isp == "b"
    assert decide(d, live, src="192.168.77.50", dst="203.0.113.11").isp is None


def test_first_match_wins_and_each_target_ends_where_its_chain_does() -> None:
    assert decide(dst="10.8.1.1").verdict == "bypass"
    assert decide(proto=17, dport=53).isp == "c"  # via
    blocked = decide(dport=9090)
    assert (blocked.verdict, blocked.route) == ("drop", "none")
    assert decide(dst="203.0.113.20", dport=8081).policy == "pairs"  # video reads dport 443: not this one
    assert decide(dport=9091).isp == "c"
    strict = decide(desired(statuses={"c": IspStatus.DOWN}), dport=9091)
    assert (strict.verdict, strict.policy) == ("drop", "strict")
    assert decide(desired(statuses={"c": IspStatus.DOWN}), dport=9092).verdict == "reject"
    via_down = decide(desired(statuses={"c": IspStatus.DOWN}), proto=17, dport=53)
    assert (via_down.policy, via_down.isp) == ("default", None)  # on_unavailable default: balance
    assert "via_c: no usable member → the default policy (goto balance)" in via_down.steps


def test_interface_dscp_and_domain_rules_match_what_the_flow_and_the_sets_say() -> None:
    assert decide(iif="lan1", src="192.168.78.5", dscp=46).isp == "b"
    assert decide(iif="lan1", src="192.168.78.5").rule is None
    domain = Live(sets={"dom_video-site": frozenset({("203.0.113.80",)})})
    assert decide(live=domain, dst="203.0.113.80").policy == "pairs"
    assert decide(dst="203.0.113.80").policy == "default"


def test_a_rule_on_mac_addresses_needs_the_mac_and_a_rule_switched_off_is_skipped() -> None:
    assert decide(src_mac="02:00:00:00:00:01").isp == "a"
    assert decide(src_mac="02:00:00:00:00:02").policy == "default"
    unknown = decide(src_mac=None)
    assert unknown.verdict == "undetermined" and unknown.summary.endswith("console) reads what the flow does not give: "
                                                                          "--mac MAC")  # fmt: skip
    d = desired()
    off = dataclasses.replace(d, inactive=Inactive(rules=frozenset({"hashed"})))
    assert decide(d, dport=8081).policy == "pairs"
    skipped = decide(off, dport=8081, src_mac="02:00:00:00:00:02")
    assert skipped.policy == "default" and "rule 3 (hashed) is off now (its schedule, or its policy's): skipped" in (
        skipped.steps
    )


def test_a_rule_that_reads_a_port_the_flow_lacks_is_undetermined() -> None:
    dec = decide(dst="203.0.113.20", dport=None)
    assert dec.verdict == "undetermined" and dec.rule is None
    assert "rule 2 (video) reads what the flow does not give: --to ADDRESS:PORT" in dec.summary
    assert decide(dport=None).summary.startswith("undetermined: rule 3 (hashed)")  # video's dst already says no
    assert decide(sport=None).policy == "default"  # no rule reads the source port
    hashed = decide(sport=None, dport=8081)  # but the hash does
    assert (hashed.verdict, hashed.isp, hashed.hash and hashed.hash.bucket) == ("isp", None, None)


def test_bypass_local_inbound_and_foreign_interfaces_are_never_balanced() -> None:
    assert decide(dst="198.51.100.7").verdict == "bypass"  # lan.bypass
    lan = decide(dst="192.168.77.20")
    assert lan.verdict == "bypass" and "192.168.77.0/24" in lan.summary  # a connected network
    assert decide(live=Live(route_type="local"), dst="100.64.1.2").verdict == "local"
    assert decide(dst="224.0.0.251").verdict == "local"
    assert decide(dst="255.255.255.255").verdict == "local"
    inbound = decide(iif="wan2", src="198.18.0.9", dst="100.64.2.2")
    assert (inbound.verdict, inbound.isp) == ("inbound", "b")
    assert decide(iif="eth9").verdict == "not_lan"


def test_with_no_usable_isp_the_last_resort_answers() -> None:
    dead = {"a": IspStatus.DOWN, "b": IspStatus.DOWN, "c": IspStatus.DOWN}
    main = decide(desired(statuses=dead))
    assert (main.verdict, main.route) == ("last_resort", "the main table: 0.0.0.0/0")
    cfg = config(POLICIES + "failover: {last_resort: unreachable}\n")
    dec = decide(desired(cfg, dead), dport=8081)
    assert (dec.verdict, dec.route, dec.policy) == ("last_resort", "unreachable", "pairs")
    assert dec.summary == "no usable ISP: the last_resort rule answers unreachable"


def test_a_more_specific_main_table_route_wins_over_the_isp_table() -> None:
    vpn = Live(route_type="unicast", route_table=254, route_prefix=ipaddress.ip_network("10.9.0.0/16"))
    dec = decide(live=vpn, dst="10.9.1.1", dport=8081)
    assert dec.isp is not None and dec.route.startswith("the main table: its route for 10.9.0.0/16")


IPV6 = """\
isps:
  - {name: a, interface: wan1, gateway: 100.64.1.1, gateway6: fe80::1, ipv6: {mode: masquerade}}
  - {name: b, interface: wan2, gateway: 100.64.2.1}
  - {name: r, interface: wan3, gateway: 100.64.3.1, gateway6: "2001:db8:3::1",
     ipv6: {mode: routed, prefix: "2001:db8:300::/64"}}
"""


def test_ipv6_walks_from_lan6_over_the_isps_that_carry_it() -> None:
    cfg = parse_config(f"lan: {{interfaces: [lan0], ipv6_prefixes: [fd00:77::/64, 2001:db8:300::/64]}}\n{IPV6}"
                       "rules:\n  - {name: v4only, src: [192.168.77.0/24], action: drop}\n"
                       "  - {name: web, dport: 443, policy: default}\n")  # fmt: skip
    d = plan(cfg, runtime.allocate(cfg, None, reload=False).state)
    live = Live(route_type="unicast", route_table=254, route_prefix=ipaddress.ip_network("::/0"))
    web = explain(d, flow("fd00:77::10", "2001:db8:f::1", dport=443), live)
    assert (web.rule and web.rule.name, web.chain, web.isp) == ("web", "balance_6", "a")  # only a translates
    assert web.route == "fwmark 0x100 → table 201: default via fe80::1 dev wan1"
    routed = explain(d, flow("2001:db8:300::10", "2001:db8:f::1"), live)
    assert (routed.isp, routed.rule) == ("r", None)  # its source decides, before the rules
    foreign = explain(d, flow("2001:db8:99::10", "2001:db8:f::1"), live)
    assert foreign.verdict == "bypass" and "not a LAN IPv6 source" in foreign.summary
    assert explain(d, flow("fd00:77::10", "fe80::1"), live).verdict == "local"
    untouched = explain(desired(), flow("fd00:77::10", "2001:db8:f::1"), live)
    assert untouched.verdict == "bypass" and "no ISP carries IPv6" in untouched.summary


def test_set_elements_reads_every_shape_nft_lists() -> None:
    listing = [
        {"metainfo": {"version": "1.0.6"}},
        {"set": {"name": "sticky_balance_a", "elem": [{"elem": {"val": "192.168.77.11", "timeout": 600}}, "10.0.0.1"]}},
        {"set": {"name": "sticky_balance_b", "elem": [{"elem": {"val": {"concat": ["fd00:0::1", "2001:db8::1"]}}}]}},
        {"set": {"name": "bypass", "elem": [{"prefix": {"addr": "10.0.0.0", "len": 8}}]}},
        {"set": {"name": "empty"}},
        {"chain": {"name": "balance"}},
    ]
    assert set_elements(listing) == {
        "sticky_balance_a": frozenset({("192.168.77.11",), ("10.0.0.1",)}),
        "sticky_balance_b": frozenset({("fd00::1", "2001:db8::1")}),
        "bypass": frozenset(),
        "empty": frozenset(),
    }
    assert set_elements(None) == {}


# --- the typed command --------------------------------------------------------------------------------------------


def test_the_command_takes_endpoints_as_they_are_written() -> None:
    got = commands.explain_between("192.168.1.10:5000", "1.2.3.4:443", "TCP", "lan0", "ef", "02-00-00-AB-00-01")
    assert got == commands.Explain("192.168.1.10", "1.2.3.4", 6, 5000, 443, "lan0", 46, "02:00:00:ab:00:01")
    assert commands.parse(commands.message(got)) == got  # the socket's line round trip
    assert commands.endpoint("[2001:db8::1]:443", "to") == ("2001:db8::1", 443)
    assert commands.endpoint("2001:db8::1", "to") == ("2001:db8::1", None)
    assert commands.endpoint("Video.Example.com:80", "to", names=True) == ("Video.Example.com", 80)
    assert commands.explain_between("fd00::1", "video.example.com", "udp").dst == "video.example.com"
    assert commands.explain("10.0.0.1", "10.0.0.2", "icmp", dscp=10).proto == 1


@pytest.mark.parametrize(
    ("source", "destination", "proto", "dscp", "message"),
    [
        ("192.168.1.300", "1.2.3.4", "tcp", 0, "from must be an IPv4 or IPv6 address"),
        ("192.168.1.10", "1.2.3.999", "tcp", 0, "to must be an IPv4 or IPv6 address or a domain name"),
        ("192.168.1.10", "intranet", "tcp", 0, "or a domain name, got 'intranet'"),
        ("192.168.1.10", "2001:db8::1", "tcp", 0, "of different address families"),
        ("192.168.1.10", "1.2.3.4:80", "icmp", 0, "icmp has no ports"),
        ("192.168.1.10", "1.2.3.4:0", "tcp", 0, "must be a number in 1..65535"),
        ("192.168.1.10", "1.2.3.4:99999", "tcp", 0, "must be a number in 1..65535, got 99999"),
        ("192.168.1.10", "1.2.3.4:http", "tcp", 0, "port 'http' is not a number in 1..65535"),
        ("192.168.1.10", "1.2.3.4", "quic", 0, "proto must be tcp, udp, icmp"),
        ("192.168.1.10", "1.2.3.4", "tcp", "xx", "dscp must be a name"),
        ("192.168.1.10", "1.2.3.4", "tcp", 64, "dscp must be a name"),
        ("192.168.1.10", "[2001:db8::1", "tcp", 0, "write an IPv6 address with a port as [ADDRESS]:PORT"),
        ("192.168.1.10", "1.2.3.4", "tcp", "ef mac", "dscp must be a name"),
        ("x" * 400, "1.2.3.4", "tcp", 0, "from is ADDRESS[:PORT], one line of at most 300 characters"),
        ("192.168.1.10", "1.2.3.4\n", "tcp", 0, "to is ADDRESS[:PORT], one line"),
    ],
)
def test_bad_flows_are_refused_saying_what_is_wrong(
    source: str, destination: str, proto: str, dscp: Any, message: str
) -> None:
    with pytest.raises(commands.BadRequest, match=re.escape(message)):
        commands.explain_between(source, destination, proto, None, dscp)


def test_the_socket_line_is_checked_field_by_field() -> None:
    for bad in ({"src": 1, "dst": "1.2.3.4"}, {"src": "10.0.0.1", "dst": "1.2.3.4", "sport": True},
                {"src": "10.0.0.1", "dst": "1.2.3.4", "iif": "a b"}, {"src": "10.0.0.1"}):  # fmt: skip
        with pytest.raises(commands.BadRequest):
            commands.parse({"cmd": "explain", **bad})


# --- the daemon's side ----------------------------------------------------------------------------------------------


def test_the_daemon_explains_from_the_applied_plan_and_the_kernels_sets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = CONFIG + "balance: {sticky: {by: source, timeout: 10m}}\nrules:\n" \
        "  - {name: video, dst_domains: [video.example], via: b}\n"  # fmt: skip
    h = Harness(tmp_path, monkeypatch, text)

    async def test() -> None:
        d = h.build()
        surface = Surface(d)
        ask = commands.explain("192.168.77.11", "203.0.113.10", "tcp", 40000, 443)
        assert await surface.submit(ask) == {"ok": False, "error": "no ruleset is applied yet: nothing to explain"}
        await d.reconcile("start")
        h.kernel.nft_add_dynamic("sticky_balance_b", "192.168.77.11")
        reply = await surface.handle(commands.message(ask))
        (dec,) = [view.from_json(Decision, x) for x in reply["decisions"]]
        assert (reply["name"], dec.isp, dec.sticky, dec.flow.iif) == (None, "b", "pinned", "lan0")
        h.kernel.local_addresses.add(ipaddress.IPv4Address("192.168.77.1"))
        local = await surface.submit(commands.explain("192.168.77.11", "192.168.77.1"))
        assert view.from_json(Decision, local["decisions"][0]).verdict == "local"

        by_name = commands.explain("192.168.77.12", "video.example", "tcp", 40000, 443)
        refused = await surface.submit(by_name)
        assert not refused["ok"] and "not a destination domain the daemon resolves" in refused["error"]
        watcher = DomainWatcher(["video.example"], ResolverSettings(), lambda _e: None)
        addresses = [ipaddress.IPv4Address("192.0.2.80"), ipaddress.IPv4Address("192.0.2.81")]
        watcher.tables[4].succeeded("video.example", addresses, 300, time.monotonic())
        idle = asyncio.create_task(asyncio.Event().wait())
        d.domains._running = (watcher, idle, watcher._settings)
        h.kernel.nft_add_dynamic("dom_video", "192.0.2.80")
        named = await surface.submit(by_name)
        idle.cancel()
        decisions = [view.from_json(Decision, x) for x in named["decisions"]]
        assert named["name"] == "video.example"
        assert [(x.flow.dst, x.rule and x.rule.name) for x in decisions] == [("192.0.2.80", "video"),
                                                                              ("192.0.2.81", None)]  # fmt: skip
        wrong = await surface.submit(commands.explain("fd00::1", "video.example"))
        assert "has no IPv6 address of video.example" in wrong["error"]

    run(test)


# --- the docs -----------------------------------------------------------------------------------------------------


def _paths(cls: type, prefix: str = "") -> set[str]:
    import dataclasses
    import typing

    out = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        out.add(name)
        inner = [a for a in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(a)]
        inner += [a for t in typing.get_args(hints[f.name]) for a in typing.get_args(t) if dataclasses.is_dataclass(a)]
        for kind in inner:
            many = "[]" if typing.get_origin(hints[f.name]) is tuple else ""
            out |= _paths(kind, f"{name}{many}.")  # type: ignore[arg-type]
    return out


def test_every_field_of_a_decision_is_documented() -> None:
    section = DOCS.read_text().split("## Explain a flow")[1].split("\n## ")[0]
    documented = {m.group(1) for m in re.finditer(r"^\| `decisions\[\]\.([^`]+)` \|", section, re.M)}
    assert _paths(Decision) == documented
