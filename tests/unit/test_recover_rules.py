"""Rules' own ``on_recover``: which connections a better tier's recovery moves back from a worse one.

The fleet says which rules move (a selective Flush, or the unchanged flush by mark while every rule agrees with
the global setting); :mod:`wanlb.recover` decides, entry by entry, the rule a conntrack entry's first packet
matched; the shell deletes what it picks (tests/integration/test_failback.py shows it in the lab)."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket

import pytest
from fakekernel import FakeKernel
from test_fleet_policies import config, down, flushes, make, rounds, summary

from wanlb import recover, runtime
from wanlb.config import Config, ConfigError, parse_config
from wanlb.ctnetlink.entry import Entry
from wanlb.daemon.flush import count_and_flush
from wanlb.fleet import Flush
from wanlb.plan import Desired, plan
from wanlb.reconcile import ReconcileResult
from wanlb.schedule import Inactive

KEEP = "failover: {on_recover: keep}\n"
MOVE = "failover: {on_recover: move-lower-tier}\n"


def with_rules(failover: str, *rules: str) -> Config:
    return config(failover + "rules:\n" + "".join(f"  - {r}\n" for r in rules))


# --- config ---------------------------------------------------------------------------------------------------


def error(text: str) -> str:
    isps = "isps:\n  - {name: a, interface: wan1, gateway: 100.64.1.1}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(f"lan: {{interfaces: [lan0]}}\n{isps}{text}", "c.yaml")
    return str(info.value)


def test_a_rules_on_recover_defaults_to_the_global_one_and_is_checked_like_it() -> None:
    cfg = with_rules(MOVE, "{name: web, dport: 443, via: a}", "{name: dl, dport: 80, via: a, on_recover: keep}")
    assert [r.on_recover for r in cfg.rules] == [None, "keep"]
    assert error("rules:\n  - {name: web, via: a, on_recover: move}\n") == (
        "c.yaml:5: rules[web].on_recover: must be keep or move-lower-tier, got 'move'"
    )
    assert error("rules:\n  - {name: vpn, dst: [10.8.0.0/16], action: bypass, on_recover: keep}\n") == (
        "c.yaml:5: rules[vpn].on_recover: only for a rule with via or policy (action bypass sends nothing to an ISP)"
    )


def test_while_every_rule_agrees_with_the_global_setting_it_alone_decides() -> None:
    assert recover.moved(config(MOVE)) is True and recover.moved(config(KEEP)) is False
    same = "{name: web, dport: 443, via: a, on_recover: move-lower-tier}"
    assert recover.moved(with_rules(MOVE, same, "{name: dns, dport: 53, via: b}")) is True
    mixed = recover.moved(with_rules(KEEP, same, "{name: dns, dport: 53, via: b}"))
    assert mixed == recover.Moved(frozenset({"web"}), default=False)
    assert str(mixed) == "move-lower-tier for 1 rule"
    mixed = recover.moved(
        with_rules(MOVE, "{name: dl, dport: 80, via: a, on_recover: keep}", same, "{name: x, via: b}")
    )
    assert mixed == recover.Moved(frozenset({"web", "x"}), default=True)
    assert str(mixed) == "move-lower-tier for 2 rules and the default policy"


# --- the fleet's effects --------------------------------------------------------------------------------------

STREAM = "{name: stream, dst: [203.0.113.20], policy: default, on_recover: move-lower-tier}"


def test_a_rule_that_moves_under_a_global_keep_makes_the_recovery_flush_its_connections_only() -> None:
    fleet, clock = make(with_rules(KEEP, STREAM))
    down(fleet, clock, "a", "b")  # c (tier 2) carries everything
    effects = rounds(fleet, clock, "a", "+++++")
    assert summary(effects) == [("reconcile",), ("flush", "c"), ("emit", "a", "up")]  # new ruleset, then flush
    (flush,) = flushes(effects)
    assert flush.moved == recover.Moved(frozenset({"stream"}), default=False)
    assert (flush.mark, flush.mask, flush.why) == (
        fleet.state.isps["c"].mark,
        0xFF00,
        "a recovered (move-lower-tier for 1 rule)",
    )


def test_a_rule_that_keeps_under_a_global_move_is_left_out_and_agreeing_rules_keep_the_fast_path() -> None:
    fleet, clock = make(with_rules(MOVE, "{name: dl, dport: 80, via: a, on_recover: keep}", "{name: web, via: b}"))
    down(fleet, clock, "a", "b")
    (flush,) = flushes(rounds(fleet, clock, "a", "+++++"))
    assert flush.isp == "c" and flush.moved == recover.Moved(frozenset({"web"}), default=True)
    fleet, clock = make(with_rules(MOVE, "{name: dl, dport: 80, via: a, on_recover: move-lower-tier}"))
    down(fleet, clock, "a", "b")
    (flush,) = flushes(rounds(fleet, clock, "a", "+++++"))
    assert flush.moved is None and flush.why == "a recovered (move-lower-tier)"  # the kernel's flush by mark
    fleet, clock = make(with_rules(KEEP, "{name: dl, dport: 80, via: a, on_recover: keep}"))
    down(fleet, clock, "a", "b")
    assert flushes(rounds(fleet, clock, "a", "+++++")) == []


def test_the_end_of_a_failback_hold_down_flushes_selectively_too() -> None:
    fleet, clock = make(with_rules("failover: {failback_after: 3s}\n", STREAM))
    down(fleet, clock, "a", "b")
    assert flushes(rounds(fleet, clock, "a", "+++++")) == []  # up, held: c keeps carrying
    effects = rounds(fleet, clock, "a", "+" * 16)
    assert summary(effects) == [("reconcile",), ("flush", "c"), ("emit", "a", "failback")]
    assert flushes(effects)[0].moved == recover.Moved(frozenset({"stream"}), default=False)


# --- which entries a selective flush deletes -------------------------------------------------------------------

LAN = "192.168.1.10"


def entry(dst: str, dport: int | None = 443, proto: int = 6, src: str = LAN, mark: int = 0x300) -> Entry:
    """A conntrack entry as a dump decodes it: the original tuple, packed."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    family = socket.AF_INET if s.version == 4 else socket.AF_INET6
    sport = None if dport is None else 40000
    return Entry(family, proto, s.packed, d.packed, sport, dport, mark=mark)


def walk(cfg: Config, inactive: Inactive | None = None) -> recover.Walk:
    d = applied(cfg)
    moved = recover.moved(cfg)
    assert isinstance(moved, recover.Moved)
    return recover.Walk(dataclasses.replace(d, inactive=inactive) if inactive else d, moved)


def applied(cfg: Config) -> Desired:
    return plan(cfg, runtime.allocate(cfg, None, reload=False).state)


RULES = (
    "{name: call, dst: [203.0.113.30], proto: udp, policy: default, on_recover: move-lower-tier}",
    "{name: dl, dst: [203.0.113.0/24], policy: default}",  # the global keep: a later rule it shadows loses
    "{name: web, dport: [443, 8443], policy: default, on_recover: move-lower-tier}",
    "{name: v6, dst: ['2001:db8:f::/48'], policy: default, on_recover: move-lower-tier}",
)


def test_an_entry_moves_as_the_first_rule_its_tuple_matches_says_and_else_as_the_global_setting() -> None:
    w = walk(with_rules(KEEP, *RULES))
    assert w.moves(entry("203.0.113.30", 53, proto=17), {})  # call
    assert not w.moves(entry("203.0.113.30", 53, proto=6), {})  # dl (not udp: call does not match)
    assert not w.moves(entry("203.0.113.20", 443), {})  # dl comes before web: first match wins
    assert w.moves(entry("198.51.100.7", 8443), {})  # web
    assert not w.moves(entry("198.51.100.7", 80), {})  # no rule: the default policy, keep
    assert not w.moves(entry("198.51.100.7", None, proto=1), {})  # ICMP: no ports, web cannot match
    assert w.moves(entry("2001:db8:f::20", 80, src="fd00:1::10"), {})  # v6 (dl's IPv4 network is not walked)
    assert not w.moves(entry("2001:db8:e::20", 80, src="fd00:1::10"), {})
    # the other way round: the global move, one rule keeps
    w = walk(with_rules(MOVE, "{name: dl, dst: [203.0.113.0/24], policy: default, on_recover: keep}"))
    assert not w.moves(entry("203.0.113.20", 443), {}) and w.moves(entry("198.51.100.7", 443), {})


def test_a_rule_a_schedule_switches_off_now_is_skipped() -> None:
    cfg = with_rules(KEEP, *RULES)
    off = walk(cfg, Inactive(rules=frozenset({"dl"})))
    assert off.moves(entry("203.0.113.20", 443), {})  # dl is skipped: web matches
    assert not walk(cfg).moves(entry("203.0.113.20", 443), {})


def test_what_conntrack_does_not_record_leaves_the_rule_untold_and_the_global_setting_decides() -> None:
    rules = (
        "{name: tv, src_mac: ['02:00:00:00:00:01'], dst: [203.0.113.40], policy: default, on_recover: keep}",
        "{name: voice, dscp: [ef], dst: [203.0.113.50], policy: default}",
        "{name: all, policy: default}",  # under the global move everything else moves back...
    )
    w = walk(with_rules("failover: {on_recover: move-lower-tier}\n", *rules[:1], *rules[2:]))
    assert w.moves(entry("203.0.113.40", 443), {})  # ...and tv's cannot be told apart: the global setting
    w = walk(
        with_rules(KEEP, *rules[1:2], "{name: x, dst: [203.0.113.50], policy: default, on_recover: move-lower-tier}")
    )
    assert not w.moves(entry("203.0.113.50", 443), {})  # voice (DSCP) reached first: untold, keep
    # an interface is known when the LAN has one: every connection from the LAN came in on it
    iif = "{name: lan, iif: [lan0], dst: [203.0.113.40], policy: default, on_recover: move-lower-tier}"
    assert walk(with_rules(KEEP, iif)).moves(entry("203.0.113.40", 443), {})
    two = parse_config(
        "lan: {interfaces: [lan0, lan1]}\nisps:\n  - {name: a, interface: wan1, gateway: 100.64.1.1}\n"
        f"{KEEP}rules:\n  - {iif}\n"
    )
    assert not walk(two).moves(entry("203.0.113.40", 443), {})  # which of two: untold


def test_domain_rules_match_what_their_sets_hold_now_and_only_they_make_the_shell_read_the_sets() -> None:
    rule = "{name: video, dst_domains: [video.example], policy: default, on_recover: move-lower-tier}"
    w = walk(with_rules(KEEP, rule))
    assert w.reads_sets and not walk(with_rules(KEEP, *RULES)).reads_sets
    assert w.moves(entry("203.0.113.70", 443), {"dom_video": frozenset({("203.0.113.70",)})})
    assert not w.moves(entry("203.0.113.70", 443), {"dom_video": frozenset()})


def test_rules_after_the_last_one_that_differs_from_the_global_setting_are_not_walked() -> None:
    w = walk(with_rules(KEEP, *RULES, "{name: late, dport: 80, policy: default}", "{name: later, via: a}"))
    assert [s.name for s in w.steps[4]] == ["call", "dl", "web"]  # (v6 has no IPv4 part)
    assert [s.name for s in w.steps[6]] == ["web", "v6"]  # call and dl name IPv4 networks only


# --- the shell: the kernel's flush by mark unchanged, or a dump and deletes one by one -------------------------


def test_a_selective_flush_deletes_the_picked_entries_of_the_mark_and_counts_them() -> None:
    cfg = with_rules(KEEP, *RULES)
    kernel = FakeKernel()
    moving, staying = entry("203.0.113.30", 53, proto=17), entry("203.0.113.20", 5001)
    other_isp = entry("203.0.113.30", 53, proto=17, mark=0x100)
    kernel.ct_entries = [moving, staying, other_isp]
    kernel.conntrack = [0x300, 0x300, 0x100]
    flush = Flush("c", 0x300, 0xFF00, "a recovered", moved=recover.Moved(frozenset({"call", "web", "v6"}), False))
    assert count_and_flush(kernel, flush, ReconcileResult(applied(cfg), None, (), ())) == 1
    assert kernel.ct_entries == [staying, other_isp]
    assert kernel.calls == [("ct_delete_where", 0x300, 0xFF00, 0)]  # no flush by mark
    whole = dataclasses.replace(flush, moved=None)
    assert count_and_flush(kernel, whole, None) == 2  # the kernel's count just before its one flush
    assert kernel.calls[1:] == [("ct_flush", 0x300, 0xFF00)] and kernel.conntrack == [0x100]
    with pytest.raises(RuntimeError, match="no ruleset applied yet"):
        count_and_flush(kernel, flush, None)
