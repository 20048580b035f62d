"""Uplinks from a routing snapshot: what is missing, the next hop (static or learned) and where it came from."""

from __future__ import annotations

import ipaddress
import struct

from wanlb.adapters.links import RTM_DELROUTE, RTM_NEWADDR, RTM_NEWROUTE, routing_changed
from wanlb.config import parse_config
from wanlb.plan import plan
from wanlb.render import render_routing
from wanlb.runtime import allocate
from wanlb.uplink import DefaultRoute, Interface, Snapshot, Uplink, uplink, uplink_warnings, uplinks

A4 = ipaddress.IPv4Address
A6 = ipaddress.IPv6Address
IF4 = ipaddress.IPv4Interface
IF6 = ipaddress.IPv6Interface
CONFIG = """\
lan: {interfaces: [lan0], ipv6_prefixes: ["fd00:77::/64"]}
isps:
  - {name: fiber, interface: wan1, gateway: 100.64.1.1}
  - {name: cable, interface: wan2, gateway: auto, gateway6: auto, ipv6: {mode: masquerade}}
  - {name: pppoe, interface: ppp0, health: {targets: [gateway, 192.0.2.1]}}
  - {name: lte, interface: wwan0, gateway: auto, gateway_table: 100}
"""
DHCP = DefaultRoute(4, 254, "wan2", A4("100.64.2.1"), 1002, 16)
RA = DefaultRoute(6, 254, "wan2", A6("fe80::1"), 1024, 9)
PPP = DefaultRoute(4, 254, "ppp0", None, 0, 3)


def snap(*defaults: DefaultRoute, **interfaces: Interface) -> Snapshot:
    return Snapshot(interfaces=interfaces, defaults=defaults)


def iface(name: str, addr: str = "", usable: bool = True, peer: str = "", index: int = 5) -> Interface:
    return Interface(name, index, usable, (IF4(addr),) if addr else (), (A4(peer),) if peer else ())


CFG = parse_config(CONFIG)
ISP = {i.name: i for i in CFG.isps}


def test_a_learned_next_hop_is_the_lowest_metric_default_route_through_the_interface() -> None:
    worse = DefaultRoute(4, 254, "wan2", A4("100.64.2.9"), 2000, 4)
    elsewhere = DefaultRoute(4, 254, "eth9", A4("10.9.9.1"), 1, 4)
    link = uplink(ISP["cable"], snap(worse, DHCP, elsewhere, RA, wan2=iface("wan2", "100.64.2.2/24")))
    assert link.ready and link.via == A4("100.64.2.1") and link.next_hop == "100.64.2.1"
    assert link.source == "default via 100.64.2.1 dev wan2 proto dhcp metric 1002"
    assert link.ready6 and link.via6 == A6("fe80::1")
    assert link.source6 == "default via fe80::1 dev wan2 proto ra metric 1024"
    assert link.addresses == ("100.64.2.2/24",) and link.index == 5


def test_a_point_to_point_session_is_a_device_route_and_its_peer_is_the_gateway_target() -> None:
    link = uplink(ISP["pppoe"], snap(PPP, ppp0=iface("ppp0", "198.51.100.7/32", peer="198.51.100.1")))
    assert link.ready and link.via is None and link.next_hop == "device route"
    assert link.target(4) == "198.51.100.1"  # the health target `gateway` on a PPP link
    assert link.source == "default dev ppp0 proto boot metric 0"
    desired = plan(CFG, allocate(CFG, None, reload=False).state, uplinks={"pppoe": link})
    route = next(r for r in render_routing(desired).routes if r.dev == "ppp0")
    assert route.gateway is None and route.describe().startswith("default scope link dev ppp0")


def test_what_is_missing_comes_in_the_order_an_operator_looks() -> None:
    assert uplink(ISP["pppoe"], snap(PPP)).problem == "no interface"
    assert uplink(ISP["pppoe"], snap(PPP, ppp0=iface("ppp0", "10.0.0.2/32", usable=False))).problem == "link down"
    assert uplink(ISP["pppoe"], snap(PPP, ppp0=iface("ppp0"))).problem == "no address"
    waiting = uplink(ISP["pppoe"], snap(ppp0=iface("ppp0", "10.0.0.2/32")))
    assert waiting.problem == "waiting for gateway" and waiting.target(4) is None
    assert waiting.source == "no default route through ppp0 in table main"


def test_a_route_through_another_interface_is_named_in_the_wait() -> None:
    other = DefaultRoute(4, 254, "eth0", A4("192.168.1.1"), 100, 16)
    link = uplink(ISP["cable"], snap(other, wan2=iface("wan2", "100.64.2.2/24")))
    assert link.problem == "waiting for gateway"
    assert link.source == "no default route through wan2 in table main (it has one through eth0)"
    assert uplink_warnings(CFG, {"cable": link}) == [
        "isp cable: wan2: waiting for gateway: no default route through wan2 in table main (it has one through eth0);"
        " the ISP is down until it is resolved"
    ]


def test_gateway_table_is_where_a_learned_route_is_looked_for() -> None:
    in_main = DefaultRoute(4, 254, "wwan0", A4("192.168.8.1"), 10, 16)
    in_100 = DefaultRoute(4, 100, "wwan0", A4("192.168.8.1"), 10, 16)
    wwan = iface("wwan0", "192.168.8.100/24")
    assert uplink(ISP["lte"], snap(in_main, wwan0=wwan)).problem == "waiting for gateway"
    link = uplink(ISP["lte"], snap(in_100, wwan0=wwan))
    assert link.ready and link.source.endswith("table 100")
    state = allocate(CFG, None, reload=False).state
    assert 100 not in {slot.table for slot in state.isps.values()}  # never given to an ISP


def test_a_static_gateway_off_the_interfaces_networks_is_the_problem_it_is() -> None:
    # The LAN's subnet by mistake: the kernel would refuse the route; the ISP is down and says why.
    link = uplink(ISP["fiber"], snap(wan1=iface("wan1", "192.168.77.5/24")))
    assert link.problem == "gateway 100.64.1.1 is not on wan1's networks (192.168.77.0/24)"
    assert uplink(ISP["fiber"], snap(wan1=iface("wan1", "100.64.1.2/24"))).ready
    assert uplink(ISP["fiber"], snap(wan1=iface("wan1", "100.64.9.2/32", peer="100.64.1.1"))).ready


def test_an_ipv6_next_hop_learned_apart_waits_alone() -> None:
    link = uplink(ISP["cable"], snap(DHCP, wan2=iface("wan2", "100.64.2.2/24")))
    assert link.ready and not link.ready6 and link.problem6 == "waiting for IPv6 gateway"
    desired = plan(CFG, allocate(CFG, None, reload=False).state, uplinks={"cable": link})
    assert [r.dev for r in render_routing(desired).routes if r.family == 6] == []
    assert dict(desired.balance6) == {}  # no IPv6 NEW connection is sent where it has no route
    ready = uplink(ISP["cable"], snap(DHCP, RA, wan2=iface("wan2", "100.64.2.2/24")))
    desired = plan(CFG, allocate(CFG, None, reload=False).state, uplinks={"cable": ready})
    assert dict(desired.balance6) == {"cable": 1}


def test_a_missing_uplink_takes_nothing_and_gets_no_route_whatever_the_status_says() -> None:
    seen = uplinks(CFG, snap(DHCP, wan1=iface("wan1", "100.64.1.2/24"), wan2=iface("wan2", "100.64.2.2/24")))
    assert {n: u.problem for n, u in seen.items()} == {
        "fiber": None,
        "cable": None,
        "pppoe": "no interface",
        "lte": "no interface",
    }
    desired = plan(CFG, allocate(CFG, None, reload=False).state, uplinks=seen)  # statuses: all UP
    assert [i.name for i in desired.active] == ["fiber", "cable"]
    assert sorted(r.dev for r in render_routing(desired).routes if r.family == 4) == ["wan1", "wan2"]
    assert len([r for r in render_routing(desired).rules if r.action == "unreachable" and r.family == 4]) == 4


def test_without_a_snapshot_a_static_uplink_is_as_configured_and_a_learned_one_waits() -> None:
    desired = plan(CFG, allocate(CFG, None, reload=False).state)
    assert [i.name for i in desired.active] == ["fiber"]
    assert {i.name: i.uplink for i in desired.isps}["fiber"] == Uplink(None, A4("100.64.1.1"))


def _route_msg(kind: int, protocol: int, table: int = 254) -> bytes:
    body = struct.pack("=BBBBBBBBI", 2, 0, 0, 0, table, protocol, 0, 1, 0)
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_address_events_and_other_peoples_routes_are_worth_a_look_ours_and_local_ones_are_not() -> None:
    assert routing_changed(_route_msg(RTM_NEWROUTE, 16), {119})  # dhcpcd's route
    assert routing_changed(_route_msg(RTM_DELROUTE, 2), {119})  # the kernel's, gone with an address
    assert not routing_changed(_route_msg(RTM_NEWROUTE, 119), {119})  # our own reconcile's
    assert not routing_changed(_route_msg(RTM_NEWROUTE, 2, table=255), {119})  # the local table
    addr = struct.pack("=IHHII", 24, RTM_NEWADDR, 0, 0, 0) + b"\0" * 8
    assert routing_changed(_route_msg(RTM_NEWROUTE, 119) + addr, {119})
    assert not routing_changed(_route_msg(RTM_NEWROUTE, 16)[:20], {119})  # truncated: nothing trusted


def test_config_gateway_auto_is_the_default_and_bad_values_say_what_to_write() -> None:
    import pytest

    from wanlb.config import ConfigError

    base = "lan: {interfaces: [lan0], ipv6_prefixes: [fd00::/64]}\nisps:\n  - {name: a, interface: wan1%s}\n"
    assert parse_config(base % "").isps[0].gateway == "auto"
    assert parse_config(base % ", gateway: ' 10.0.0.1 '").isps[0].gateway == A4("10.0.0.1")
    for bad, message in (
        (", gateway: dhcp", "'dhcp' is not an IPv4 address or auto: write auto"),
        (", gateway: 2001:db8::1", "is not an IPv4 address or auto"),
        (", gateway6: nope, ipv6: {mode: masquerade}", "'nope' is not an IPv6 address or auto"),
        (", health: {targets: [gateway6]}", "IPv6 health targets need ipv6 mode"),
        (", health: {targets: [gw]}", "'gw' is not a target: give an IPv4 or IPv6 address, or gateway / gateway6"),
        (", gateway_table: 255", "the local table"),
        (", table: 100, gateway_table: 100", "is the routing table wanlb fills for ISP 'a'"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_config(base % bad)


def test_a_changed_delegation_is_followed_while_the_old_prefix_runs_out() -> None:
    """dhcpcd keeps a delegated prefix it failed to renew until its lifetime ends (RFC 8415): with two on
    the interface, the one with the longest preferred lifetime is the delegation now."""
    from wanlb.plan import followed_prefixes
    from wanlb.uplink import ConnectedRoute

    cfg = parse_config(CONFIG.replace("ipv6: {mode: masquerade}", "ipv6: {mode: netmap, prefix_from: pd2}"))
    old, new = ipaddress.IPv6Network("2001:db8:100::/64"), ipaddress.IPv6Network("2001:db8:180::/64")
    routes = (ConnectedRoute(old, "pd2"), ConnectedRoute(new, "pd2"))
    assert followed_prefixes(cfg, routes) == {"cable": old}  # nothing tells them apart: the lowest
    pd2 = Interface("pd2", 9, True, addresses6=((IF6("2001:db8:100::1/64"), 40), (IF6("2001:db8:180::1/64"), 3600)))
    assert followed_prefixes(cfg, routes, {"pd2": pd2}) == {"cable": new}


def test_a_static_gateway_on_the_lan_is_said_whatever_else_the_uplink_lacks() -> None:
    """The LAN's subnet where a WAN's gateway goes: said by name whether or not the WAN's own network holds
    it too (a WAN and the LAN on the same 192.168.1.0/24 is the double-NAT mistake), and a static gateway off
    a link that is down is said with the link, not only once the link comes up."""
    from wanlb.uplink import ConnectedRoute

    lan = (ConnectedRoute(ipaddress.IPv4Network("100.64.1.0/24"), "lan0"),)
    same = uplinks(CFG, snap(wan1=iface("wan1", "100.64.1.2/24")))
    assert same["fiber"].ready
    assert uplink_warnings(CFG, {"fiber": same["fiber"]}, lan) == [
        "isp fiber: gateway 100.64.1.1 is on the LAN (lan0: 100.64.1.0/24): a WAN's next hop is on its own "
        "network, reached through wan1"
    ]
    assert uplink_warnings(CFG, {"fiber": same["fiber"]}) == []  # nothing known of the LAN: nothing said
    down = uplinks(CFG, snap(wan1=iface("wan1", "192.168.77.5/24", usable=False)))
    assert uplink_warnings(CFG, {"fiber": down["fiber"]}) == [
        "isp fiber: wan1: link down, and gateway 100.64.1.1 is not on wan1's networks (192.168.77.0/24); the ISP "
        "is down until it is resolved"
    ]
