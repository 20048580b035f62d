"""Policy-routing adapter (pyroute2): reads and changes ip rules and routes.  No decisions.

wanlb's objects are recognised by their route protocol tag (``routing.protocol``,
and any earlier tag the runtime state recorded): a rule or route carrying it
is wanlb's at any priority and in any table; anything else is someone else's.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Collection
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from wanlb.render import Route, Rule
from wanlb.uplink import ConnectedRoute, DefaultRoute, Interface, Snapshot

RT_SCOPE_LINK = 253
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
FOREVER = 0xFFFFFFFF  # an address lifetime that does not run out
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
_ACTIONS = {1: "lookup", 6: "blackhole", 7: "unreachable"}
_ACTION_NAMES = {"lookup": "FR_ACT_TO_TBL", "blackhole": "FR_ACT_BLACKHOLE", "unreachable": "FR_ACT_UNREACHABLE"}


class RoutingError(RuntimeError):
    pass


def _ifname(index: int | None, names: dict[int, str | None]) -> str | None:
    """The name of interface ``index`` (None if it is gone), asked once per read.

    An ``if_indextoname`` ioctl per interface a route uses: dumping every link
    through pyroute2 to name a few costs ~0.25 ms a link.
    """
    if index is None:
        return None
    if index not in names:
        try:
            names[index] = socket.if_indextoname(index)
        except OSError:
            names[index] = None
    return names[index]


def links(ipr: IPRoute) -> dict[str, bool]:
    """Every interface → whether it is usable (administratively up with carrier)."""
    return {
        link.get("ifname"): bool(link["flags"] & IFF_UP and link["flags"] & IFF_LOWER_UP) for link in ipr.get_links()
    }


def read_snapshot(
    ipr: IPRoute, protocols: Collection[int], wans: Collection[str] = (), tables: Collection[int] = (RT_TABLE_MAIN,)
) -> Snapshot:
    """One read of the routing state a reconcile needs: one route dump per family, one address dump.

    * connected networks of the main table (on-link, no gateway, not ours: the kernel's, a DHCP
      client's ``proto dhcp`` subnet route, RA prefixes; IPv6 link-local and multicast left out);
    * every default route in ``tables`` that is not ours (each nexthop of a multipath one), by device;
    * the routes tagged with one of ``protocols`` (wanlb's, in any table);
    * the interfaces named in ``wans`` that exist: index, usable, IPv4 addresses and peers, global IPv6
      addresses with their preferred lifetimes.
    """
    names: dict[int, str | None] = {}
    connected: list[ConnectedRoute] = []
    defaults: list[DefaultRoute] = []
    ours: list[Route] = []
    for family, any_dst in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        version = 4 if family == socket.AF_INET else 6
        for r in ipr.route("dump", family=family):
            table = r.get("table") or r["table"]
            gw = r.get("gateway")
            if r["proto"] in protocols:
                ours.append(
                    Route(
                        table=table,
                        dst=ipaddress.ip_network(f"{r.get('dst') or any_dst}/{r['dst_len']}"),
                        dev=_ifname(r.get("oif"), names) or "?",
                        gateway=ipaddress.ip_address(gw) if gw else None,
                        protocol=r["proto"],
                    )
                )
            elif r["type"] != RTN_UNICAST:
                continue
            elif r["dst_len"] == 0:
                if table in tables:
                    defaults += _defaults(r, version, table, names)
            elif table == RT_TABLE_MAIN and not gw and not r.get("multipath"):
                if version == 4 and r["scope"] != RT_SCOPE_LINK:
                    continue
                net = ipaddress.ip_network(f"{r.get('dst')}/{r['dst_len']}")
                dev = _ifname(r.get("oif"), names)
                if dev is not None and not net.is_link_local and not net.is_multicast:
                    connected.append(ConnectedRoute(net, dev))
    return Snapshot(
        connected=tuple(sorted(set(connected))),
        interfaces=_interfaces(ipr, wans),
        defaults=tuple(defaults),
        routes=tuple(ours),
    )


def _defaults(r: Any, version: int, table: int, names: dict[int, str | None]) -> list[DefaultRoute]:
    """A default route of someone else's, one entry per nexthop (a multipath route has several)."""
    gw = r.get("gateway")
    hops = r.get("multipath") or [{"oif": r.get("oif"), "attrs": [("RTA_GATEWAY", gw)] if gw else []}]
    out = []
    for hop in hops:
        via = dict(hop.get("attrs") or ()).get("RTA_GATEWAY")
        dev = _ifname(hop.get("oif"), names)
        out.append(DefaultRoute(version, table, dev, ipaddress.ip_address(via) if via else None,
                                r.get("priority") or 0, r["proto"]))  # fmt: skip
    return out


def _interfaces(ipr: IPRoute, wans: Collection[str]) -> dict[str, Interface]:
    """The named interfaces that exist, with their state and addresses (one address dump for all)."""
    found: dict[str, tuple[int, bool]] = {}
    for name in dict.fromkeys(wans):
        try:
            index = socket.if_nametoindex(name)  # an ioctl; a missing interface is normal (ppp0 before pppd)
            links = ipr.get_links(index)
        except (OSError, NetlinkError):
            continue
        if links and links[0].get("ifname") == name:
            flags = links[0]["flags"]
            found[name] = (index, bool(flags & IFF_UP and flags & IFF_LOWER_UP))
    if not found:
        return {}
    by_index = {index: name for name, (index, _) in found.items()}
    addrs: dict[str, list[ipaddress.IPv4Interface]] = {n: [] for n in found}
    peers: dict[str, list[ipaddress.IPv4Address]] = {n: [] for n in found}
    addrs6: dict[str, list[tuple[ipaddress.IPv6Interface, int]]] = {n: [] for n in found}
    for a in ipr.get_addr():
        name = by_index.get(a["index"])
        if name is None:
            continue
        local, address = a.get("local"), a.get("address")
        if a["family"] == socket.AF_INET and (local or address):
            addrs[name].append(ipaddress.IPv4Interface(f"{local or address}/{a['prefixlen']}"))
            if local and address and local != address:  # `A peer B/32`: IFA_ADDRESS is the peer
                peers[name].append(ipaddress.IPv4Address(address))
        elif a["family"] == socket.AF_INET6 and address and a["scope"] == 0:
            preferred = (a.get("cacheinfo") or {}).get("ifa_preferred", FOREVER)
            addrs6[name].append((ipaddress.IPv6Interface(f"{address}/{a['prefixlen']}"), preferred))
    return {
        name: Interface(name, index, usable, tuple(addrs[name]), tuple(peers[name]), tuple(addrs6[name]))
        for name, (index, usable) in found.items()
    }


def read_rules(ipr: IPRoute, protocols: Collection[int]) -> list[Rule]:
    """Rules of both families tagged with any of ``protocols``, at any priority (a rule twice is listed twice)."""
    ours: list[Rule] = []
    for r in [*ipr.get_rules(family=socket.AF_INET), *ipr.get_rules(family=socket.AF_INET6)]:
        if r.get("protocol") not in protocols:
            continue
        action = _ACTIONS.get(r["action"], f"action{r['action']}")
        suppress = r.get("suppress_prefixlen")
        ours.append(
            Rule(
                priority=r.get("priority") or 0,
                action=action,
                table=r.get("table") if action == "lookup" else 0,
                fwmark=r.get("fwmark"),
                fwmask=r.get("fwmask") if r.get("fwmark") is not None else None,
                # The kernel reports "no suppression" as 0xffffffff.
                suppress_prefixlength=None if suppress in (None, 0xFFFFFFFF) else suppress,
                protocol=r.get("protocol"),
                family=6 if r["family"] == socket.AF_INET6 else 4,
                src=ipaddress.ip_network(f"{r.get('src')}/{r['src_len']}") if r.get("src") else None,
            )
        )
    return ours


def _rule_args(rule: Rule) -> dict:
    family = socket.AF_INET6 if rule.family == 6 else socket.AF_INET
    args: dict = {"priority": rule.priority, "protocol": rule.protocol, "family": family}
    if rule.action == "lookup":
        args["table"] = rule.table
    else:
        args["action"] = _ACTION_NAMES[rule.action]
    if rule.fwmark is not None:
        args["fwmark"] = rule.fwmark
        args["fwmask"] = rule.fwmask
    if rule.suppress_prefixlength is not None:
        args["suppress_prefixlen"] = rule.suppress_prefixlength
    if rule.src is not None:
        args["src"], args["src_len"] = str(rule.src.network_address), rule.src.prefixlen
    return args


def add_rule(ipr: IPRoute, rule: Rule) -> None:
    ipr.rule("add", **_rule_args(rule))


def delete_rule(ipr: IPRoute, rule: Rule) -> None:
    try:
        ipr.rule("del", **_rule_args(rule))
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.ESRCH):
            raise


def replace_route(ipr: IPRoute, route: Route) -> None:
    """Install ``route`` (replacing whatever route has its table and destination)."""
    try:
        index = socket.if_nametoindex(route.dev)  # an ioctl: pyroute2's link_lookup dumps every link
    except OSError:
        raise RoutingError(f"device {route.dev} does not exist") from None
    args: dict = {
        "dst": str(route.dst),
        "table": route.table,
        "oif": index,
        "proto": route.protocol,
        "family": socket.AF_INET6 if route.family == 6 else socket.AF_INET,
    }
    if route.gateway is not None:
        args["gateway"] = str(route.gateway)
    else:
        args["scope"] = RT_SCOPE_LINK
    try:
        ipr.route("replace", **args)
    except NetlinkError as exc:
        raise RoutingError(exc.args[1] if len(exc.args) > 1 else str(exc)) from None


def delete_route(ipr: IPRoute, route: Route) -> None:
    """Remove the route with ``route``'s table, destination and protocol (gone already is fine)."""
    family = socket.AF_INET6 if route.family == 6 else socket.AF_INET
    args: dict = {"family": family, "table": route.table, "dst": str(route.dst), "proto": route.protocol}
    if route.gateway is None:
        args["scope"] = RT_SCOPE_LINK  # the kernel matches the scope: a link route is not deleted without it
    try:
        ipr.route("del", **args)
    except NetlinkError as exc:
        if exc.code not in (errno.ESRCH, errno.ENOENT):
            raise


RTM_F_FIB_MATCH = 0x2000  # `ip route get fibmatch`: the route entry that matched, with its prefix
_ROUTE_TYPES = {1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast", 6: "blackhole",
                7: "unreachable", 8: "prohibit", 9: "throw"}  # fmt: skip


Lookup = tuple[str, int | None, ipaddress.IPv4Network | ipaddress.IPv6Network | None]


def lookup(ipr: IPRoute, dst: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Lookup:
    """The kernel's route for an unmarked packet to ``dst`` (``ip route get fibmatch DST``): its type
    (``local``, ``broadcast``, ``unicast`` …), table and prefix; ``("unreachable", None, None)`` when the
    lookup fails (no route, or an ``unreachable``/``blackhole`` rule answers)."""
    family = socket.AF_INET6 if dst.version == 6 else socket.AF_INET
    try:
        reply = ipr.route("get", dst=str(dst), family=family, flags=RTM_F_FIB_MATCH)[0]
    except NetlinkError:
        return "unreachable", None, None
    start = reply.get_attr("RTA_DST") or ("::" if dst.version == 6 else "0.0.0.0")
    prefix = ipaddress.ip_network(f"{start}/{reply['dst_len']}")
    return _ROUTE_TYPES.get(reply["type"], str(reply["type"])), reply.get_attr("RTA_TABLE"), prefix
