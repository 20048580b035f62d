"""Policy-routing adapter (pyroute2): reads connected routes, converges rules and routes.

wanlb's objects are recognised by number, never by guesswork: rules carry
protocol ``routing.protocol`` *and* a priority inside wanlb's range; routes carry
that protocol and live in the ISP tables.  Anything else is someone else's and is
never touched.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from wanlb.plan import ConnectedRoute
from wanlb.render import Route, RoutingIntent, Rule

RT_SCOPE_LINK = 253
RT_TABLE_MAIN = 254
RTPROT_KERNEL = 2
_ACTIONS = {1: "lookup", 6: "blackhole", 7: "unreachable"}
_ACTION_NAMES = {"lookup": "FR_ACT_TO_TBL", "blackhole": "FR_ACT_BLACKHOLE", "unreachable": "FR_ACT_UNREACHABLE"}


class RoutingError(RuntimeError):
    pass


def _ifnames(ipr: IPRoute) -> dict[int, str]:
    return {link["index"]: link.get("ifname") for link in ipr.get_links()}


def missing_interfaces(names: Iterable[str]) -> list[str]:
    with IPRoute() as ipr:
        present = set(_ifnames(ipr).values())
    return [n for n in names if n not in present]


def read_connected() -> tuple[ConnectedRoute, ...]:
    """Directly connected IPv4 networks of the main table (what ``ip route`` shows as proto kernel)."""
    with IPRoute() as ipr:
        names = _ifnames(ipr)
        found = []
        for r in ipr.get_routes(family=socket.AF_INET, table=RT_TABLE_MAIN):
            if r["scope"] != RT_SCOPE_LINK or r["proto"] != RTPROT_KERNEL or r["dst_len"] == 0:
                continue
            dev = names.get(r.get("oif"))
            if dev is None:
                continue
            prefsrc = r.get("prefsrc")
            found.append(
                ConnectedRoute(
                    ipaddress.IPv4Network(f"{r.get('dst')}/{r['dst_len']}"),
                    dev,
                    ipaddress.IPv4Address(prefsrc) if prefsrc else None,
                )
            )
    return tuple(sorted(set(found)))


def _read_rules(ipr: IPRoute, protocol: int, prange: tuple[int, int]) -> dict[Rule, int]:
    """Our rules currently in the kernel, keyed by their normalised form."""
    ours: dict[Rule, int] = {}
    for r in ipr.get_rules(family=socket.AF_INET):
        prio = r.get("priority") or 0
        if r.get("protocol") != protocol or not prange[0] <= prio < prange[1]:
            continue
        action = _ACTIONS.get(r["action"], f"action{r['action']}")
        suppress = r.get("suppress_prefixlen")
        table = r.get("table") if action == "lookup" else 0
        rule = Rule(
            priority=prio,
            action=action,
            table=table,
            fwmark=r.get("fwmark"),
            fwmask=r.get("fwmask") if r.get("fwmark") is not None else None,
            # The kernel reports "no suppression" as 0xffffffff.
            suppress_prefixlength=None if suppress in (None, 0xFFFFFFFF) else suppress,
        )
        ours[rule] = ours.get(rule, 0) + 1
    return ours


def _rule_args(rule: Rule, protocol: int) -> dict:
    args: dict = {"priority": rule.priority, "protocol": protocol, "family": socket.AF_INET}
    if rule.action == "lookup":
        args["table"] = rule.table
    else:
        args["action"] = _ACTION_NAMES[rule.action]
    if rule.fwmark is not None:
        args["fwmark"] = rule.fwmark
        args["fwmask"] = rule.fwmask
    if rule.suppress_prefixlength is not None:
        args["suppress_prefixlen"] = rule.suppress_prefixlength
    return args


def _read_routes(ipr: IPRoute, protocol: int, names: dict[int, str]) -> dict[Route, dict]:
    """All routes carrying our protocol tag, in any table."""
    ours: dict[Route, dict] = {}
    for r in ipr.route("dump", family=socket.AF_INET, proto=protocol):
        table = r.get("table")
        gw = r.get("gateway")
        src = r.get("prefsrc")
        dst = r.get("dst") or "0.0.0.0"
        route = Route(
            table=table,
            dst=ipaddress.IPv4Network(f"{dst}/{r['dst_len']}"),
            dev=names.get(r.get("oif"), "?"),
            gateway=ipaddress.IPv4Address(gw) if gw else None,
            prefsrc=ipaddress.IPv4Address(src) if src else None,
        )
        ours[route] = {
            "table": table,
            "dst": f"{dst}/{r['dst_len']}",
            "proto": protocol,
            "scope": r["scope"],
            "oif": r.get("oif"),
        }
    return ours


def _route_args(route: Route, protocol: int, index: int) -> dict:
    args: dict = {
        "dst": str(route.dst),
        "table": route.table,
        "oif": index,
        "proto": protocol,
        "family": socket.AF_INET,
    }
    if route.gateway is not None:
        args["gateway"] = str(route.gateway)
    else:
        args["scope"] = RT_SCOPE_LINK
    if route.prefsrc is not None:
        args["prefsrc"] = str(route.prefsrc)
    return args


def apply(intent: RoutingIntent) -> list[str]:
    """Converge our rules and routes to ``intent``; returns a description of each change.

    Additions come before removals so that a rule or route is never missing
    while it is being replaced.  A route that the kernel refuses (its device is
    down, its gateway unreachable) is reported and retried on the next
    reconcile; the others still go in.
    """
    changes: list[str] = []
    failures: list[str] = []
    with IPRoute() as ipr:
        names = _ifnames(ipr)
        index_of = {v: k for k, v in names.items()}
        current_rules = _read_rules(ipr, intent.protocol, intent.priority_range)
        for rule in intent.rules:
            if rule not in current_rules:
                ipr.rule("add", **_rule_args(rule, intent.protocol))
                changes.append(f"+rule {rule.describe()}")
        for rule, count in current_rules.items():
            extra = count - (1 if rule in intent.rules else 0)
            for _ in range(extra):
                ipr.rule("del", **_rule_args(rule, intent.protocol))
                changes.append(f"-rule {rule.describe()}")

        current_routes = _read_routes(ipr, intent.protocol, names)
        for route in intent.routes:
            if route in current_routes:
                continue
            if route.dev not in index_of:
                failures.append(f"{route.describe()}: device {route.dev} does not exist")
                continue
            try:
                ipr.route("replace", **_route_args(route, intent.protocol, index_of[route.dev]))
                changes.append(f"+route {route.describe()}")
            except NetlinkError as exc:
                failures.append(f"{route.describe()}: {exc.args[1] if len(exc.args) > 1 else exc}")
        # A wanted route with the same table+dst was installed by `route replace` in
        # place of this one: deleting by (table, dst) would remove the new route.
        occupied = {(r.table, r.dst) for r in intent.routes}
        for route, key in current_routes.items():
            if (route.table, route.dst) not in occupied:
                _delete_route(ipr, key)
                changes.append(f"-route {route.describe()}")
    if failures:
        changes += [f"!route {f}" for f in failures]
    return changes


def _delete_route(ipr: IPRoute, key: dict) -> None:
    try:
        ipr.route("del", family=socket.AF_INET, **key)
    except NetlinkError as exc:
        if exc.code != errno.ESRCH:
            raise


def cleanup(protocol: int, priority_range: tuple[int, int]) -> list[str]:
    """Remove every rule and route that carries our marks; nothing else."""
    changes: list[str] = []
    with IPRoute() as ipr:
        for rule, count in _read_rules(ipr, protocol, priority_range).items():
            for _ in range(count):
                ipr.rule("del", **_rule_args(rule, protocol))
                changes.append(f"-rule {rule.describe()}")
        names = _ifnames(ipr)
        for route, key in _read_routes(ipr, protocol, names).items():
            _delete_route(ipr, key)
            changes.append(f"-route {route.describe()}")
    return changes
