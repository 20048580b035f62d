"""Policy-routing adapter (pyroute2): reads and changes ip rules and routes.  No decisions.

wanlb's objects are recognised by their route protocol tag (``routing.protocol``,
and any earlier tag the runtime state recorded): a rule or route carrying it
is wanlb's at any priority and in any table; anything else is someone else's.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Collection, Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from wanlb.plan import ConnectedRoute
from wanlb.render import Route, Rule

RT_SCOPE_LINK = 253
RT_TABLE_MAIN = 254
RTPROT_KERNEL = 2
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


def missing_interfaces(names: Iterable[str]) -> list[str]:
    with IPRoute() as ipr:
        present = links(ipr)
    return [n for n in names if n not in present]


def read_connected(ipr: IPRoute | None = None) -> tuple[ConnectedRoute, ...]:
    """Directly connected networks of the main table, both families (``ip route`` proto kernel).

    IPv6 link-local (fe80::/64 on every link) and multicast routes are left out: nothing routes them.
    """
    if ipr is None:
        with IPRoute() as own:
            return read_connected(own)
    names: dict[int, str | None] = {}
    found = []
    for r in ipr.get_routes(family=socket.AF_INET, table=RT_TABLE_MAIN):
        if r["scope"] != RT_SCOPE_LINK or r["proto"] != RTPROT_KERNEL or r["dst_len"] == 0:
            continue
        dev = _ifname(r.get("oif"), names)
        if dev is not None:
            found.append(ConnectedRoute(ipaddress.IPv4Network(f"{r.get('dst')}/{r['dst_len']}"), dev))
    for r in ipr.get_routes(family=socket.AF_INET6, table=RT_TABLE_MAIN):
        # IPv6 connected routes have universe scope; the kernel's ones carry no gateway.
        if r["proto"] != RTPROT_KERNEL or r["dst_len"] == 0 or r.get("gateway") or r.get("multipath"):
            continue
        net = ipaddress.IPv6Network(f"{r.get('dst')}/{r['dst_len']}")
        dev = _ifname(r.get("oif"), names)
        if dev is not None and not net.is_link_local and not net.is_multicast:
            found.append(ConnectedRoute(net, dev))
    return tuple(sorted(set(found)))


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


def read_routes(ipr: IPRoute, protocols: Collection[int]) -> list[Route]:
    """Routes of both families tagged with any of ``protocols``, in any table (one dump per family)."""
    ours: list[Route] = []
    names: dict[int, str | None] = {}
    for family, any_dst in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        for r in ipr.route("dump", family=family):
            if r["proto"] not in protocols:
                continue
            gw = r.get("gateway")
            ours.append(
                Route(
                    table=r.get("table"),
                    dst=ipaddress.ip_network(f"{r.get('dst') or any_dst}/{r['dst_len']}"),
                    dev=_ifname(r.get("oif"), names) or "?",
                    gateway=ipaddress.ip_address(gw) if gw else None,
                    protocol=r["proto"],
                )
            )
    return ours


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
