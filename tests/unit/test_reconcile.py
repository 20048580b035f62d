"""The reconciler against the FakeKernel: converge, change nothing twice, repair drift, leave foreign things alone."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

import pytest
from fakekernel import FakeKernel, table_objects

from wanlb import runtime
from wanlb.adapters.nft import NftError
from wanlb.config import Config, parse_config
from wanlb.plan import plan
from wanlb.reconcile import Reconciler, cleanup, routing_changes
from wanlb.render import Route, Rule, render, render_nft, render_routing
from wanlb.runtime import RuntimeState, StateStore
from wanlb.states import IspStatus
from wanlb.uplink import ConnectedRoute

NET = ipaddress.IPv4Network
ADDR = ipaddress.IPv4Address
CONNECTED = (
    ConnectedRoute(NET("192.168.77.0/24"), "lan0"),
    ConnectedRoute(NET("100.64.1.0/24"), "wan1"),
    ConnectedRoute(NET("100.64.2.0/24"), "wan2"),
)
SYSCTLS = {
    "net/ipv4/ip_forward": "0",
    "net/ipv4/conf/wan1/rp_filter": "1",
    "net/ipv4/conf/wan1/src_valid_mark": "0",
    "net/ipv4/conf/wan2/rp_filter": "2",  # already what wanlb wants: never recorded, never written
    "net/ipv4/conf/wan2/src_valid_mark": "0",
}
FOREIGN_RULES = [
    Rule(0, "lookup", table=255, protocol=2),
    Rule(5000, "lookup", table=77, fwmark=0x1, fwmask=0x1, protocol=4),
    Rule(32766, "lookup", table=254, protocol=2),
]
FOREIGN_ROUTES = [
    Route(254, NET("0.0.0.0/0"), "wan1", gateway=ADDR("100.64.1.1"), protocol=4),
    Route(201, NET("10.0.0.0/8"), "wan2", gateway=ADDR("100.64.2.1"), protocol=4),  # someone else's, in our table
]
TWO = """\
lan: {interfaces: [lan0]}
isps:
  - {name: a, interface: wan1, gateway: 100.64.1.1, weight: 2}
  - {name: b, interface: wan2, gateway: 100.64.2.1}
"""


class LoggedStore(StateStore):
    """A StateStore in memory that logs its sysctl writes into the kernel's call log (to check the order)."""

    def __init__(self, kernel: FakeKernel, state: RuntimeState) -> None:
        super().__init__(None, state)
        self.kernel = kernel

    def set_sysctls(self, originals: Mapping[str, str]) -> None:
        self.kernel.calls.append(("store_sysctls", dict(originals)))
        super().set_sysctls(originals)


def kernel() -> FakeKernel:
    k = FakeKernel({"lo": True, "lan0": True, "wan1": True, "wan2": True}, CONNECTED, SYSCTLS)
    k.ip_rules = list(FOREIGN_RULES)
    k.ip_routes = list(FOREIGN_ROUTES)
    k.nft_edit("add table inet filter\nadd chain inet filter input { type filter hook input priority 0; policy drop; }")
    k.conntrack = [0x100, 0x200, 0]
    return k


class Setup:
    def __init__(self, text: str = TWO, k: FakeKernel | None = None) -> None:
        self.kernel = k or kernel()
        self.config = parse_config(text)
        self.store = LoggedStore(self.kernel, RuntimeState())
        self.store.set_allocation(runtime.allocate(self.config, None, reload=False).state)
        self.reconciler = Reconciler(self.kernel, self.store)

    def run(self, statuses: Mapping[str, IspStatus] | None = None) -> Any:
        return self.reconciler.reconcile(self.config, self.store.state, statuses or {})

    def change(self, text: str) -> None:
        """A reload: the new config and its allocation."""
        self.config = parse_config(text)
        self.store.set_allocation(runtime.allocate(self.config, self.store.state, reload=True).state)

    def desired(self, statuses: Mapping[str, IspStatus] | None = None) -> Any:
        return render(plan(self.config, self.store.state, statuses or {}, self.kernel.connected()))


def ours(k: FakeKernel) -> tuple[list[Rule], list[Route]]:
    return sorted(k.rules({119})), sorted(k.routes({119}))


def kinds(calls: list[tuple[Any, ...]]) -> list[str]:
    return [c[0] for c in calls]


# --- convergence and idempotence ------------------------------------------------------------------


def test_the_first_pass_creates_everything() -> None:
    s = Setup()
    result = s.run()
    want = s.desired()
    assert result.nft_done is not None and result.failures == ()
    assert s.kernel.nft_objects() == table_objects(want.nft)
    assert ours(s.kernel) == (sorted(want.routing.rules), sorted(want.routing.routes))
    assert s.kernel.sysctls == {
        "net/ipv4/ip_forward": "1",
        "net/ipv4/conf/wan1/rp_filter": "2",
        "net/ipv4/conf/wan1/src_valid_mark": "1",
        "net/ipv4/conf/wan2/rp_filter": "2",
        "net/ipv4/conf/wan2/src_valid_mark": "1",
    }
    assert s.store.state.sysctls == {
        "net/ipv4/ip_forward": "0",
        "net/ipv4/conf/wan1/rp_filter": "1",
        "net/ipv4/conf/wan1/src_valid_mark": "0",
        "net/ipv4/conf/wan2/src_valid_mark": "0",
    }
    assert [i.name for i in result.desired.active] == ["a", "b"]
    assert s.reconciler.nft_applies == 1


def test_the_second_pass_changes_nothing() -> None:
    s = Setup()
    s.run()
    s.kernel.calls.clear()
    result = s.run()
    assert s.kernel.calls == [] and result.nft_done is None and result.changes == ()
    assert s.reconciler.nft_applies == 1


def test_connected_copies_an_older_version_put_in_our_tables_are_removed() -> None:
    # Older versions copied every connected network into each ISP table; the suppress rule makes main's
    # connected routes win anyway, so an upgrade's first pass deletes the copies and keeps the defaults.
    s = Setup()
    copies = [Route(table, c.dst, c.dev, protocol=119) for table in (201, 202) for c in CONNECTED]
    s.kernel.ip_routes += copies
    s.run()
    assert ours(s.kernel)[1] == sorted(s.desired().routing.routes)
    assert {(r.dst.prefixlen, r.table) for r in s.desired().routing.routes} == {(0, 201), (0, 202)}


def test_foreign_rules_routes_tables_and_conntrack_are_never_touched() -> None:
    s = Setup()
    s.run()
    s.run({"a": IspStatus.DOWN})
    assert [r for r in s.kernel.ip_rules if r.protocol != 119] == FOREIGN_RULES
    assert [r for r in s.kernel.ip_routes if r.protocol != 119] == FOREIGN_ROUTES
    assert s.kernel.nft_objects("filter") == {("chain", "input"): (("filter", "input", 0, "drop"), ())}
    assert s.kernel.conntrack == [0x100, 0x200, 0]  # flushing is the daemon's call, not the reconciler's


def test_a_failover_changes_the_balance_chain_and_no_rule_or_route() -> None:
    s = Setup()
    s.run()
    s.kernel.calls.clear()
    result = s.run({"a": IspStatus.DOWN})
    assert kinds(s.kernel.calls) == ["nft_apply"]
    assert s.kernel.calls[0][1].startswith("flush chain inet wanlb balance\n")
    assert s.kernel.nft_rules("balance") == ["goto isp_b"]
    assert [i.name for i in result.desired.active] == ["b"]


# --- drift ------------------------------------------------------------------------------------------


def test_drift_is_repaired_and_foreign_things_stay() -> None:
    s = Setup()
    s.run()
    k = s.kernel
    k.nft_delete_rule("from_lan", 1)
    k.nft_edit("add chain inet wanlb intruder\nadd rule inet wanlb intruder accept\n")
    lookup_a = next(r for r in k.ip_rules if r.protocol == 119 and r.fwmark == 0x100 and r.action == "lookup")
    k.ip_rules.remove(lookup_a)
    stray = Rule(10500, "blackhole", protocol=119)  # ours by its tag, wanted by nobody
    foreign = Rule(10011, "lookup", table=88, fwmark=0x100, fwmask=0xFF00, protocol=42)
    k.ip_rules += [stray, foreign]
    k.ip_routes = [r for r in k.ip_routes if not (r.protocol == 119 and r.table == 202 and r.dst.prefixlen == 0)]
    k.ip_routes = [r for r in k.ip_routes if not (r.protocol == 119 and r.table == 201 and r.dst.prefixlen == 0)]
    k.ip_routes.append(Route(201, NET("0.0.0.0/0"), "wan1", gateway=ADDR("100.64.1.99"), protocol=119))  # replaced
    k.sysctls["net/ipv4/conf/wan1/rp_filter"] = "1"
    k.calls.clear()

    result = s.run()
    want = s.desired()
    assert k.nft_objects() == table_objects(want.nft)  # the rule is back, the intruder chain is gone
    assert ours(k) == (sorted(want.routing.rules), sorted(want.routing.routes))
    assert foreign in k.ip_rules and [r for r in k.ip_rules if r.protocol != 119] == [*FOREIGN_RULES, foreign]
    assert [r for r in k.ip_routes if r.protocol != 119] == FOREIGN_ROUTES
    assert k.sysctls["net/ipv4/conf/wan1/rp_filter"] == "2"
    assert s.store.state.sysctls["net/ipv4/conf/wan1/rp_filter"] == "1"  # the original, not the drifted value
    assert "-rule 10500: from all blackhole proto 119" in result.changes
    assert k.nft_objects("filter") == {("chain", "input"): (("filter", "input", 0, "drop"), ())}
    k.calls.clear()
    s.run()
    assert k.calls == []


def test_a_duplicated_rule_of_ours_is_removed_once() -> None:
    s = Setup()
    s.run()
    guard = next(r for r in s.kernel.ip_rules if r.protocol == 119 and r.action == "unreachable")
    s.kernel.ip_rules.append(guard)
    s.kernel.calls.clear()
    s.run()
    assert s.kernel.calls == [("delete_rule", guard)]
    assert s.kernel.ip_rules.count(guard) == 1


def test_a_fresh_reconciler_rewrites_the_contents_once_then_nothing() -> None:
    s = Setup()
    s.run()
    s.kernel.nft_bump("isp_a_rx", 3)
    s.kernel.nft_add_dynamic("clients", "192.168.77.20")
    fresh = Reconciler(s.kernel, s.store)  # a restarted daemon: no record
    fresh.reconcile(s.config, s.store.state, {})
    text = s.kernel.calls[-1][1]
    assert "delete" not in text and "add counter" not in text and "clients" not in text.replace("@clients", "")
    assert s.kernel.tables["wanlb"].counters["isp_a_rx"][0] == 3
    assert s.kernel.tables["wanlb"].sets["clients"].elements == ["192.168.77.20"]
    s.kernel.calls.clear()
    fresh.reconcile(s.config, s.store.state, {})
    assert s.kernel.calls == []


# --- what moves, and in which order ---------------------------------------------------------------


def test_additions_go_before_the_nft_apply() -> None:
    s = Setup()
    s.run()
    calls = kinds(s.kernel.calls)
    nft = calls.index("nft_apply")
    assert calls.count("nft_apply") == 1
    assert {c for c in calls[:nft]} == {"replace_route", "add_rule", "sysctl_write", "store_sysctls"}
    assert calls[nft + 1 :] == []
    assert calls.index("replace_route") < calls.index("add_rule")  # a mark has somewhere to go before its rule


def test_removals_go_after_the_nft_apply_highest_priority_first_routes_last() -> None:
    s = Setup()
    s.run()
    s.change(TWO.replace("  - {name: b, interface: wan2, gateway: 100.64.2.1}\n", ""))
    s.kernel.calls.clear()
    s.run()
    calls = kinds(s.kernel.calls)
    nft = calls.index("nft_apply")
    assert "delete_rule" not in calls[:nft] and "delete_route" not in calls[:nft]
    deleted = [c[1] for c in s.kernel.calls if c[0] == "delete_rule"]
    assert deleted == sorted(deleted, reverse=True) and {r.fwmark for r in deleted} == {0x200}
    assert [r.priority for r in deleted] == [10301, 10011]  # the guard before the lookup it guards
    assert calls[nft + 1 :] == ["delete_rule"] * 2 + ["delete_route"]  # the default route of table 202
    assert not [r for r in s.kernel.ip_routes if r.table == 202 and r.protocol == 119]
    text = s.kernel.calls[nft][1]
    assert "delete chain inet wanlb isp_b" in text and "ct mark & 0xff00 { 0x200 } drop" in text


def test_a_priority_change_moves_every_rule() -> None:
    s = Setup()
    s.run()
    old_rules, old_routes = ours(s.kernel)
    s.change(TWO + "routing: {rule_priority: 20000}\n")
    s.run()
    rules, routes = ours(s.kernel)
    assert not set(rules) & set(old_rules) and routes == old_routes
    assert {r.priority // 1000 for r in rules} == {20}
    assert rules == sorted(s.desired().routing.rules)


def test_a_table_base_change_moves_every_route() -> None:
    s = Setup()
    s.run()
    s.change(TWO + "routing: {table_base: 300}\n")
    s.run()
    rules, routes = ours(s.kernel)
    assert {r.table for r in routes} == {301, 302}
    assert {r.table for r in rules if r.action == "lookup" and r.fwmark} == {301, 302}
    assert routes == sorted(s.desired().routing.routes)
    assert Route(201, NET("10.0.0.0/8"), "wan2", gateway=ADDR("100.64.2.1"), protocol=4) in s.kernel.ip_routes


def test_a_protocol_change_removes_what_the_old_tag_marked() -> None:
    s = Setup()
    s.run()
    s.change(TWO + "routing: {protocol: 120}\n")
    s.run()
    assert s.store.state.protocols == (119, 120)
    assert s.kernel.rules({119}) == [] and s.kernel.routes({119}) == []
    assert sorted(s.kernel.rules({120})) == sorted(s.desired().routing.rules)


# --- sysctls ----------------------------------------------------------------------------------------


def test_sysctl_originals_are_stored_before_any_sysctl_is_written() -> None:
    s = Setup()
    s.run()
    calls = kinds(s.kernel.calls)
    assert calls.index("store_sysctls") < calls.index("sysctl_write")
    recorded = next(c[1] for c in s.kernel.calls if c[0] == "store_sysctls")
    written = {c[1] for c in s.kernel.calls if c[0] == "sysctl_write"}
    assert written == set(recorded)  # each written key was recorded first
    assert "net/ipv4/conf/wan2/rp_filter" not in written


def test_sysctls_of_a_removed_isp_are_given_back() -> None:
    s = Setup()
    s.run()
    s.change(TWO.replace("  - {name: b, interface: wan2, gateway: 100.64.2.1}\n", ""))
    result = s.run()
    assert s.kernel.sysctls["net/ipv4/conf/wan2/src_valid_mark"] == "0"
    assert s.kernel.sysctls["net/ipv4/conf/wan2/rp_filter"] == "2"  # never ours: left as it is
    assert not [k for k in s.store.state.sysctls if "wan2" in k]
    assert "restored net/ipv4/conf/wan2/src_valid_mark=0" in result.changes


def test_accept_ra_is_raised_from_1_to_2_but_a_client_that_set_0_is_left_alone() -> None:
    """Forwarding on stops the kernel taking router advertisements where accept_ra is 1 (2 keeps it); a 0 means
    a userspace client (dhcpcd, systemd-networkd) handles them, and wanlb must not start the kernel's too."""
    v6 = TWO.replace("lan: {interfaces: [lan0]}", "lan: {interfaces: [lan0], ipv6_prefixes: [fd00::/64]}")
    v6 = v6.replace("gateway: 100.64.2.1}", "gateway: 100.64.2.1, gateway6: fe80::1, ipv6: {mode: masquerade}}")
    v6 = v6.replace("weight: 2}", "weight: 2, gateway6: fe80::1, ipv6: {mode: masquerade}}")
    k = kernel()
    k.sysctls |= {"net/ipv6/conf/all/forwarding": "0", "net/ipv6/conf/wan1/accept_ra": "1"}
    k.sysctls["net/ipv6/conf/wan2/accept_ra"] = "0"
    s = Setup(v6, k)
    s.run()
    assert k.sysctls["net/ipv6/conf/wan1/accept_ra"] == "2" and k.sysctls["net/ipv6/conf/wan2/accept_ra"] == "0"
    assert "net/ipv6/conf/wan2/accept_ra" not in s.store.state.sysctls
    k.sysctls["net/ipv6/conf/wan1/accept_ra"] = "0"  # a client started after wanlb took over
    s.run()
    assert k.sysctls["net/ipv6/conf/wan1/accept_ra"] == "0"
    assert "accept_ra = 2  (only if it is 1)" in s.desired().describe()


def test_a_restart_keeps_the_originals_recorded_before_it() -> None:
    s = Setup()
    s.run()
    recorded = dict(s.store.state.sysctls)
    again = Setup(k=s.kernel)
    again.store.set_sysctls(recorded)  # what the state file kept
    again.run()
    assert again.store.state.sysctls == recorded


# --- failures -----------------------------------------------------------------------------------


def test_an_nft_failure_raises_keeps_the_additions_and_the_next_pass_converges() -> None:
    s = Setup()
    s.kernel.fail_nft = "Error: Could not process rule: No buffer space available"
    with pytest.raises(NftError, match="No buffer space"):
        s.run()
    assert s.kernel.nft_read() is None
    assert ours(s.kernel) == (sorted(s.desired().routing.rules), sorted(s.desired().routing.routes))
    s.kernel.fail_nft = None
    assert s.run().nft_done is not None
    assert s.kernel.nft_objects() == table_objects(s.desired().nft)
    s.kernel.calls.clear()
    s.run()
    assert s.kernel.calls == []


def test_an_nft_failure_during_a_failover_is_applied_by_the_next_pass() -> None:
    s = Setup()
    s.run()
    s.kernel.fail_nft = "Error: interrupted"
    with pytest.raises(NftError):
        s.run({"a": IspStatus.DOWN})
    assert "isp_a" in s.kernel.nft_rules("balance")[0]
    s.kernel.fail_nft = None
    s.run({"a": IspStatus.DOWN})
    assert s.kernel.nft_objects() == table_objects(s.desired({"a": IspStatus.DOWN}).nft)


def test_a_route_the_kernel_refuses_is_reported_and_retried() -> None:
    s = Setup()
    s.kernel.refuse_routes["wan2"] = "Nexthop has invalid gateway"
    result = s.run({"b": IspStatus.DOWN})
    assert [f.split(":")[0] for f in result.failures] == ["default via 100.64.2.1 dev wan2 table 202 proto 119"]
    assert "Nexthop has invalid gateway" in result.failures[0]
    assert s.kernel.nft_read() is not None  # the rest went in
    s.kernel.refuse_routes.clear()
    result = s.run()
    assert result.failures == () and any(c.startswith("+route default via 100.64.2.1") for c in result.changes)
    assert ours(s.kernel)[1] == sorted(s.desired().routing.routes)


def test_an_uplink_that_is_not_whole_gets_no_route_and_is_not_balanced_until_it_is() -> None:
    """A WAN whose link is down (or whose interface is gone) has nothing to route to: no route is tried
    (no failure every pass), the ISP takes no NEW connections whatever its status says, and the route is back
    at the first pass that sees the link up again."""
    s = Setup()
    s.run()
    s.kernel.set_link("wan2", False, drop_routes=True)
    result = s.run()  # the statuses still say UP: the fleet hears of the observation after this pass
    assert result.failures == () and result.uplinks["b"].problem == "link down"
    assert [i.name for i in result.desired.active] == ["a"]
    assert [r.dev for r in ours(s.kernel)[1]] == ["wan1"]
    del s.kernel.link_state["wan2"]  # unplugged: the interface is gone
    assert s.run().uplinks["b"].problem == "no interface"
    s.kernel.link_state["wan2"] = True
    result = s.run()
    assert result.uplinks["b"].ready and {i.name for i in result.desired.active} == {"a", "b"}
    assert any(c.startswith("+route default via 100.64.2.1 dev wan2") for c in result.changes)


# --- cleanup ------------------------------------------------------------------------------------


def test_cleanup_leaves_the_kernel_as_it_was_before_the_first_pass() -> None:
    s = Setup()
    before = s.kernel.everything()
    s.run()
    s.run({"a": IspStatus.DOWN})
    s.change(TWO + "routing: {protocol: 120, rule_priority: 20000}\n")
    s.run()
    done = cleanup(s.kernel, s.config, s.store.state)
    assert "-nft table inet wanlb" in done
    assert s.kernel.everything() == before


def test_cleanup_without_a_config_uses_the_state() -> None:
    s = Setup()
    before = s.kernel.everything()
    s.run()
    cleanup(s.kernel, None, s.store.state)
    assert s.kernel.everything() == before
    s.kernel.calls.clear()
    assert cleanup(s.kernel, None, s.store.state) == [
        f"restored {k}={v}" for k, v in s.store.state.sysctls.items()
    ]  # nothing of ours left to remove; sysctls already as they were
    assert kinds(s.kernel.calls) == ["sysctl_write"] * len(s.store.state.sysctls)


# --- routing_changes, pure --------------------------------------------------------------------------


def _intent(cfg: Config) -> Any:
    return render_routing(plan(cfg, runtime.allocate(cfg, None, reload=False).state, {}, CONNECTED))


def test_routing_changes_replaces_a_changed_route_without_deleting_it_afterwards() -> None:
    intent = _intent(parse_config(TWO))
    changed = Route(201, NET("0.0.0.0/0"), "wan1", gateway=ADDR("100.64.1.99"), protocol=119)
    others = [r for r in intent.routes if (r.table, r.dst) != (201, NET("0.0.0.0/0"))]
    todo = routing_changes(intent, list(intent.rules), [*others, changed])
    assert todo.add_routes == tuple(r for r in intent.routes if (r.table, r.dst) == (201, NET("0.0.0.0/0")))
    assert todo.delete_routes == () and todo.add_rules == () and todo.delete_rules == ()


def test_routing_changes_of_a_converged_kernel_is_empty() -> None:
    intent = _intent(parse_config(TWO))
    todo = routing_changes(intent, list(intent.rules), list(intent.routes))
    assert (todo.add_routes, todo.add_rules, todo.delete_rules, todo.delete_routes) == ((), (), (), ())


def test_render_nft_is_what_the_reconciler_applies() -> None:
    s = Setup()
    s.run()
    assert s.kernel.nft_objects() == table_objects(render_nft(plan(s.config, s.store.state, {}, CONNECTED)))


def test_a_failover_applies_nft_first_when_the_routing_is_unchanged() -> None:
    s = Setup()
    s.run()
    s.kernel.calls.clear()
    s.kernel.ip_rules = [r for r in s.kernel.ip_rules if not (r.protocol == 119 and r.action == "unreachable")]
    s.run({"a": IspStatus.DOWN})
    calls = kinds(s.kernel.calls)
    assert calls[0] == "nft_apply" and calls[1:] == ["add_rule", "add_rule"]  # then the routing is repaired


def test_an_isp_is_back_in_balancing_only_after_its_routes() -> None:
    s = Setup()
    s.run()
    s.kernel.set_link("wan2", False, drop_routes=True)
    s.run({"b": IspStatus.DOWN})  # its default route cannot come back while the link is down
    s.kernel.set_link("wan2", True)
    s.kernel.calls.clear()
    s.run()
    calls = kinds(s.kernel.calls)
    assert calls.index("replace_route") < calls.index("nft_apply")
