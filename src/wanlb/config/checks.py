"""Checks across the whole file that single-field validation cannot see: duplicate names, interfaces, marks
and tables, policies and rules naming what exists, IPv6 prefixes that fit together."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

from wanlb.config.errors import ConfigIssue
from wanlb.config.schema import Config
from wanlb.runtime import mark_shift

if TYPE_CHECKING:
    from wanlb.config.loader import _LineMap


def _ipv6_checks(cfg: Config, lines: _LineMap) -> list[ConfigIssue]:
    """An ISP's IPv6 needs the LAN's prefixes; a routed prefix is one of them; netmap needs exactly one LAN
    prefix left to translate (not a routed one) of its own prefix's length; prefixes never overlap."""
    issues: list[ConfigIssue] = []
    lan6 = cfg.lan.ipv6_prefixes
    routed = [isp.ipv6.prefix for isp in cfg.isps if isp.ipv6.mode == "routed" and isp.ipv6.prefix is not None]
    translated = [n for n in lan6 if n not in routed]
    seen: dict[ipaddress.IPv6Network, int] = {}
    for i, isp in enumerate(cfg.isps):
        mode, prefix = isp.ipv6.mode, isp.ipv6.prefix
        loc: tuple[str | int, ...] = ("isps", i, "ipv6", "mode")
        problem = None
        if mode != "off" and not lan6:
            problem = f"ipv6 mode {mode} needs lan.ipv6_prefixes (the LAN's IPv6 prefixes)"
        elif isp.ipv6.prefix_from is not None and len(translated) != 1:
            loc = ("isps", i, "ipv6", "prefix_from")
            problem = f"netmap maps one LAN prefix; lan.ipv6_prefixes has {len(translated)} not routed by an ISP"
        elif prefix is not None:
            loc = ("isps", i, "ipv6", "prefix")
            if mode == "routed" and prefix not in lan6:
                problem = f"{prefix} must be one of lan.ipv6_prefixes: a routed prefix is the LAN's"
            elif mode == "netmap" and len(translated) != 1:
                problem = f"netmap maps one LAN prefix; lan.ipv6_prefixes has {len(translated)} not routed by an ISP"
            elif mode == "netmap" and translated[0].prefixlen != prefix.prefixlen:  # (prefix_from: checked live)
                problem = f"{prefix} must have the LAN prefix's length (/{translated[0].prefixlen}) to keep host bits"
            elif any(prefix.overlaps(other) for other in seen):
                other = lines.path(("isps", seen[next(o for o in seen if prefix.overlaps(o))]))
                problem = f"{prefix} overlaps {other}'s prefix"
            seen.setdefault(prefix, i)
        if problem:
            issues.append(lines.issue(loc, problem))
        if isinstance(isp.gateway6, ipaddress.IPv6Address) and (inside := [n for n in lan6 if isp.gateway6 in n]):
            issues.append(
                lines.issue(
                    ("isps", i, "gateway6"),
                    f"{isp.gateway6} is inside lan.ipv6_prefixes ({inside[0]}): a WAN's next hop is on its own link, "
                    "not the LAN",
                )
            )
    return issues


def _cross_checks(cfg: Config, lines: _LineMap, left_out: Collection[tuple[Any, ...]] = ()) -> list[ConfigIssue]:
    """Checks across ISPs that single-field validation cannot see.

    ``left_out``: where an invalid value was left out for its default (the loader runs these checks despite
    field errors); a check that would judge by such a default is skipped."""
    issues: list[ConfigIssue] = []

    def defaulted(*prefix: Any) -> bool:
        return any(loc[: len(prefix)] == prefix for loc in left_out)

    def dup(field: str, value_of) -> None:
        seen: dict[Any, int] = {}
        for i, isp in enumerate(cfg.isps):
            value = value_of(isp)
            if value is None:
                continue
            if value in seen:
                also = lines.path(("isps", seen[value]))
                issues.append(
                    lines.issue(("isps", i, field), f"duplicate {field} {_show(value)} (also used by {also})")
                )
            else:
                seen[value] = i

    dup("name", lambda i: i.name)
    dup("interface", lambda i: i.interface)
    dup("mark", lambda i: i.mark)
    dup("table", lambda i: i.table)
    tables = {isp.table: isp.name for isp in cfg.isps if isp.table is not None}
    for i, isp in enumerate(cfg.isps):
        if isp.gateway_table is not None and isp.gateway_table in tables:
            issues.append(
                lines.issue(
                    ("isps", i, "gateway_table"),
                    f"table {isp.gateway_table} is the routing table wanlb fills for ISP {tables[isp.gateway_table]!r}"
                    ": gateway_table names the table the uplink's own client writes its default route to",
                )
            )

    mask = None if defaulted("mark_mask") else cfg.mark_mask
    for i, isp in enumerate(cfg.isps):
        if mask is not None and isp.mark is not None and (isp.mark & ~mask or not isp.mark & mask):
            issues.append(lines.issue(("isps", i, "mark"), f"mark {isp.mark:#x} is outside mark_mask {mask:#x}"))
        if isp.interface in cfg.lan.interfaces:
            issues.append(lines.issue(("isps", i, "interface"), f"{isp.interface} is also a LAN interface"))
    issues += _policy_checks(cfg, lines)
    if not defaulted("lan", "ipv6_prefixes") and not any(
        defaulted("isps", i, k) for i in range(len(cfg.isps)) for k in _IPV6
    ):
        issues += _ipv6_checks(cfg, lines)
    issues += _bypass_overlaps(cfg, lines)
    if cfg.ha is not None and not defaulted("ha"):
        issues += _ha_checks(cfg, lines)
    capacity = None if mask is None else mask >> mark_shift(mask)
    if capacity is not None and len(cfg.isps) > capacity:
        issues.append(
            lines.issue(
                ("mark_mask",), f"mark_mask {mask:#x} holds only {capacity} ISP marks, {len(cfg.isps)} ISPs configured"
            )
        )
    return issues


_IPV6 = ("ipv6", "gateway6")  # what the IPv6 checks read of an ISP


def _ha_checks(cfg: Config, lines: _LineMap) -> list[ConfigIssue]:
    """An HA pair shares one allocation and one set of VIPs: every ISP's mark and table are written out (both
    nodes' files then agree, whatever each node's runtime state holds), VIPs name ISPs that exist and are not
    translated some other way, and the adverts go out a LAN interface."""
    ha = cfg.ha
    assert ha is not None
    issues: list[ConfigIssue] = []
    for i, isp in enumerate(cfg.isps):
        missing = [k for k in ("mark", "table") if getattr(isp, k) is None]
        if missing:
            why = "the pair shares one allocation, so both nodes' files must say the same"
            issues.append(lines.issue(("isps", i), f"with ha, give {' and '.join(missing)}: {why}"))
    names = {isp.name: isp for isp in cfg.isps}
    for name, vip in ha.wan_vips.items():
        isp = names.get(name)
        if isp is None:
            issues.append(lines.issue(("ha", "wan_vips", name), f"no ISP named {name!r} (ISPs: {_known(names)})"))
        elif isp.learns:
            why = (
                "such an uplink gives one address to one box, the pair cannot share it; leave it out of wan_vips "
                "(its connections then end at a takeover, docs/ha.md)"
            )
            issues.append(
                lines.issue(("ha", "wan_vips", name), f"ISP {name} learns its gateway (DHCP, PPP, a modem): {why}")
            )
        elif isp.snat != "masquerade":
            issues.append(lines.issue(("ha", "wan_vips", name), f"ISP {name} has snat {isp.snat}: its connections "
                                      f"are translated to its WAN VIP {vip.ip}, leave snat out"))  # fmt: skip
    where = ha.interface or cfg.lan.interfaces[0]
    if where not in cfg.lan.interfaces:
        issues.append(lines.issue(("ha", "interface"), f"{where} is not a LAN interface: the VRRP adverts and the "
                                  "LAN VIP go where the LAN hosts are"))  # fmt: skip
    if ha.sync.interface in cfg.lan.interfaces or ha.sync.interface in {i.interface for i in cfg.isps}:
        issues.append(lines.issue(("ha", "sync", "interface"), f"{ha.sync.interface} carries LAN or WAN traffic: "
                                  "conntrackd needs a dedicated link"))  # fmt: skip
    if ha.sync.address == ha.sync.peer:
        issues.append(lines.issue(("ha", "sync", "peer"), "is this node's own sync address"))
    return issues


def _bypass_overlaps(cfg: Config, lines: _LineMap) -> list[ConfigIssue]:
    """Two ``lan.bypass`` networks that overlap (one inside the other: CIDR blocks never overlap partly), each
    reported at the later one, naming the earlier.  Sorted by start and then by size, a block is inside an
    earlier one exactly when it is inside the last block that was inside none: O(n log n) for 10,000."""
    nets = cfg.lan.bypass
    found: list[tuple[int, ConfigIssue]] = []
    outer: int | None = None
    for i in sorted(
        range(len(nets)), key=lambda i: (nets[i].version, int(nets[i].network_address), nets[i].prefixlen, i)
    ):
        if outer is not None and nets[i].version == nets[outer].version and nets[i].subnet_of(nets[outer]):  # type: ignore[arg-type]
            first, later = sorted((outer, i))
            where = lines.path(("lan", "bypass", first))
            found.append(
                (later, lines.issue(("lan", "bypass", later), f"{nets[later]} overlaps {where} ({nets[first]})"))
            )
        else:
            outer = i
    return [issue for _, issue in sorted(found, key=lambda pair: pair[0])]


def _policy_checks(cfg: Config, lines: _LineMap) -> list[ConfigIssue]:
    """Policies and rules name ISPs and policies that exist; names are unique."""
    issues: list[ConfigIssue] = []
    isps = {i.name for i in cfg.isps}

    def issue(loc: tuple[Any, ...], message: str) -> None:
        issues.append(lines.issue(loc, message))

    if "default" in cfg.policies:
        issue(("policies", "default"), "'default' is the implicit policy of every ISP (balance); pick another name")
    for name, pol in cfg.policies.items():
        seen: set[str] = set()
        for j, member in enumerate(pol.members):
            if member.isp not in isps:
                issue(("policies", name, "members", j, "isp"), f"no ISP named {_show(member.isp)}")
            elif member.isp in seen:
                issue(("policies", name, "members", j, "isp"), f"{_show(member.isp)} is listed twice")
            seen.add(member.isp)
    names: dict[str, int] = {}
    for i, rule in enumerate(cfg.rules):
        if rule.name in names:
            issue(
                ("rules", i, "name"),
                f"duplicate rule name {_show(rule.name)} (also {lines.path(('rules', names[rule.name]))})",
            )
        names.setdefault(rule.name, i)
        if rule.via is not None and rule.via not in isps:
            issue(("rules", i, "via"), f"no ISP named {_show(rule.via)}")
        if rule.policy is not None and rule.policy != "default" and rule.policy not in cfg.policies:
            issue(("rules", i, "policy"), f"no policy named {_show(rule.policy)} (policies: {_known(cfg.policies)})")
        if rule.on_recover is not None and rule.action is not None:  # (its connections never have an ISP)
            why = f"only for a rule with via or policy (action {rule.action} sends nothing to an ISP)"
            issue(("rules", i, "on_recover"), why)
        for j, iif in enumerate(rule.iif):
            if any(iif == isp.interface for isp in cfg.isps):
                issue(("rules", i, "iif", j), f"{iif} is a WAN interface: rules match traffic from the LAN")
            elif iif not in cfg.lan.interfaces:  # only lan.interfaces reach the rules: it could never match
                lan = ", ".join(cfg.lan.interfaces)
                issue(("rules", i, "iif", j), f"{iif} is not in lan.interfaces ({lan}): add it there to balance it")
    return issues


def _known(names: Iterable[str]) -> str:
    listed = sorted(names)
    return ", ".join(listed[:10]) + (" …" if len(listed) > 10 else "") if listed else "none defined"


def _show(value: Any) -> str:
    return (
        f"{value:#x}"
        if isinstance(value, int) and value > 255
        else repr(value)
        if isinstance(value, str)
        else str(value)
    )
