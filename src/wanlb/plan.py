"""Planning: config + runtime allocation + ISP statuses + connected routes → desired state.

This is where it is decided which ISPs take NEW connections: per policy (the
implicit ``default`` of every ISP, each configured policy, and one per ISP that
a rule pins to), the best (lowest) tier that has at least one usable ISP, and
within it the usable ISPs by the policy's algorithm (:mod:`wanlb.policy`).
Marks and tables come from the runtime allocation (by ISP name), never from a
position in the config.  Pure: no I/O, no clock.  The renderer turns the result
into nft objects and routing intent; the reconciler makes the kernel match.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from wanlb.config import Config, RuleConfig
from wanlb.policy import Adjusted, PolicyPlan, policies
from wanlb.runtime import Retired, RuntimeState, mark_shift
from wanlb.schedule import ALL_ON, Inactive
from wanlb.states import IspStatus
from wanlb.uplink import ConnectedRoute, Interface, Uplink, assumed


@dataclass(frozen=True)
class IspPlan:
    name: str
    interface: str
    uplink: Uplink  # its next hops (static or learned) and whether its table gets a route now
    mark: int
    table: int
    slot: int  # rule priority offset, from the ISP's mark: independent of the config's order
    weight: int
    tier: int
    snat: str | ipaddress.IPv4Address
    status: IspStatus
    active: bool
    share: float  # fraction of NEW connections it gets, 0..1
    ipv6: str = "off"  # netmap | masquerade | routed | off
    prefix6: ipaddress.IPv6Network | None = None  # netmap: the ISP-side prefix; routed: its prefix on the LAN
    inbound6: bool = False  # netmap: connections to prefix6 from this WAN are mapped to the LAN host


@dataclass(frozen=True)
class Desired:
    """Everything the kernel should hold for wanlb, derived from config and observations."""

    mark_mask: int
    isps: tuple[IspPlan, ...]
    lan_interfaces: tuple[str, ...]
    local_traffic: bool
    bypass: tuple[ipaddress.IPv4Network, ...]
    last_resort: str
    rule_priority: int
    route_protocol: int
    policies: tuple[PolicyPlan, ...] = ()  # the default policy (chain "balance") first
    rules: tuple[RuleConfig, ...] = ()  # every rule, in config order (``inactive.rules`` are skipped)
    inactive: Inactive = ALL_ON  # what the schedules switch off now: those rules take no place in from_lan
    helpers: tuple[str, ...] = ()
    lan_nets: tuple[ipaddress.IPv4Network, ...] = ()  # connected LAN networks: never leave a WAN unNATed
    retired: tuple[Retired, ...] = ()  # marks of removed ISPs: their packets are dropped until flushed
    domain_timeout: int = 3600  # default life of a dom_ set element (dns.max_ttl)
    lan6: tuple[ipaddress.IPv6Network, ...] = ()  # the LAN's IPv6 prefixes (lan.ipv6_prefixes)
    bypass6: tuple[ipaddress.IPv6Network, ...] = ()  # IPv6 destinations never balanced: LAN and connected
    policies6: tuple[PolicyPlan, ...] = ()  # the same policies for NEW IPv6 connections (chains "<chain>_6")
    ha: bool = False  # one node of an HA pair: its own traffic keeps its own address beside the VIP SNAT
    ha_guard: bool = False  # ... and NEW TCP must start with a SYN (ha.takeover_guard)
    passive: bool = False  # per ISP, count NEW TCP connections and SYN-ACKs (failover.passive)

    @property
    def ipv6(self) -> bool:
        """Whether any ISP carries IPv6 (else IPv6 passes untouched, as before wanlb)."""
        return any(i.ipv6 != "off" for i in self.isps)

    @property
    def balance6(self) -> tuple[tuple[str, int], ...]:
        """(isp, weight) taking NEW IPv6 connections in the default policy."""
        return self.policies6[0].active if self.policies6 else ()

    @property
    def routed6(self) -> tuple[IspPlan, ...]:
        """The ISPs whose own global prefix is on the LAN (mode ``routed``)."""
        return tuple(i for i in self.isps if i.ipv6 == "routed" and i.prefix6 is not None)

    @property
    def lan6_nat(self) -> tuple[ipaddress.IPv6Network, ...]:
        """The LAN prefixes that are translated on the way out (every one but the routed ISPs')."""
        routed = {i.prefix6 for i in self.routed6}
        return tuple(n for n in self.lan6 if n not in routed)

    @property
    def active(self) -> tuple[IspPlan, ...]:
        """The ISPs the default policy balances over."""
        return tuple(i for i in self.isps if i.active)

    @property
    def in_use(self) -> frozenset[str]:
        """Every ISP that some policy sends NEW connections to."""
        return frozenset(isp for p in self.policies for isp, _ in p.active)


def plan(
    config: Config,
    state: RuntimeState,
    statuses: Mapping[str, IspStatus] | None = None,
    connected: tuple[ConnectedRoute, ...] = (),
    adjusted: Adjusted | None = None,
    statuses6: Mapping[str, IspStatus] | None = None,
    uplinks: Mapping[str, Uplink] | None = None,
    interfaces: Mapping[str, Interface] | None = None,
    inactive: Inactive = ALL_ON,
) -> Desired:
    """Compute the desired state.  ISPs missing from ``statuses`` count as UP.

    ``statuses6``: each ISP's IPv6 status where it differs (its own IPv6 health); None: as ``statuses``.

    ``uplinks``: each ISP's uplink as the kernel shows it (:mod:`wanlb.uplink`); an ISP missing from it is
    as configured (a static next hop is ready, a learned one waits).  ``interfaces``: the snapshot's, whose
    address lifetimes tell a new delegated prefix from an old one that is running out (``prefix_from``).

    ``adjusted``: the daemon's current weights per dynamic algorithm (``least-conn``, ``latency``).

    ``inactive``: the rules and policies the schedules switch off now (:func:`wanlb.schedule.inactive`, the
    clock read by the caller); by default everything is in effect.

    ``state`` must hold a slot for every ISP of ``config`` (see :func:`wanlb.runtime.allocate`).
    """
    statuses = statuses or {}
    links = {i.name: (uplinks or {}).get(i.name) or assumed(i) for i in config.isps}
    shift = mark_shift(config.mark_mask)
    slots = {name: ((slot.mark >> shift) - 1) % 256 for name, slot in state.isps.items()}
    usable = {i.name: _usable(statuses.get(i.name, IspStatus.UP), links[i.name]) for i in config.isps}
    followed = followed_prefixes(config, connected, interfaces)
    planned = policies(config, usable, adjusted)
    # The same policies for IPv6, over the ISPs that carry it (a netmap ISP whose prefix_from interface has
    # no prefix now does not, until it has one).
    planned6 = policies(config, usable6(config, usable, statuses6, followed, links), adjusted) if config.ipv6 else ()
    default = dict(planned[0].active)
    total = sum(default.values())
    vips = config.ha.wan_vips if config.ha is not None else {}  # an HA pair's ISP: SNAT to the address both hold
    isps = tuple(
        IspPlan(
            name=i.name,
            interface=i.interface,
            uplink=links[i.name],
            mark=state.isps[i.name].mark,
            table=state.isps[i.name].table,
            slot=slots[i.name],
            weight=i.weight,
            tier=i.tier,
            snat=vips[i.name].ip if i.name in vips else i.snat,
            status=usable[i.name],
            active=i.name in default,
            share=default.get(i.name, 0) / total if total else 0.0,
            ipv6=i.ipv6.mode,
            prefix6=i.ipv6.prefix if i.ipv6.prefix_from is None else followed[i.name],
            inbound6=i.ipv6.inbound,
        )
        for i in config.isps
    )
    connected4 = {r.dst for r in connected if r.dst.version == 4}
    connected6 = {r.dst for r in connected if r.dst.version == 6}
    bypass6 = {n for n in config.lan.bypass if n.version == 6} | set(config.lan.ipv6_prefixes) | connected6
    return Desired(
        mark_mask=config.mark_mask,
        isps=isps,
        lan_interfaces=config.lan.interfaces,
        local_traffic=config.local_traffic,
        bypass=tuple(sorted({n for n in config.lan.bypass if n.version == 4} | connected4)),  # type: ignore[arg-type]
        last_resort=config.failover.last_resort,
        rule_priority=config.routing.rule_priority,
        route_protocol=config.routing.protocol,
        policies=planned,
        rules=config.rules,
        inactive=inactive,
        helpers=tuple(dict.fromkeys(config.helpers)),
        lan_nets=tuple(sorted({r.dst for r in connected if r.dst.version == 4 and r.dev in config.lan.interfaces})),  # type: ignore[arg-type]
        retired=state.retired,
        domain_timeout=max(1, round(config.dns.max_ttl)),
        lan6=config.lan.ipv6_prefixes,
        bypass6=tuple(sorted(bypass6)),
        policies6=planned6,
        ha=config.ha is not None,
        ha_guard=config.ha is not None and config.ha.takeover_guard,
        passive=config.failover.passive.enabled,
    )


def _usable(status: IspStatus, link: Uplink) -> IspStatus:
    """An ISP whose uplink misses a piece takes nothing, whatever its machine says meanwhile (the fleet
    hears of the observation only after the reconcile that made it)."""
    return IspStatus.DOWN if status.usable and not link.ready else status


_ULA = ipaddress.IPv6Network("fc00::/7")


def _delegable(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """A prefix an ISP can have delegated: not link-local, multicast or unique-local (ULA)."""
    return not (net.is_link_local or net.is_multicast or net.subnet_of(_ULA))  # type: ignore[arg-type]


def followed_prefixes(
    config: Config, connected: tuple[ConnectedRoute, ...], interfaces: Mapping[str, Interface] | None = None
) -> dict[str, ipaddress.IPv6Network | None]:
    """For each netmap ISP with ``prefix_from``: the global prefix on that interface now (from the main
    table's connected routes), of the length of the LAN prefix it maps, or None if there is none.

    Two of them: a delegation changed, and the client keeps the old prefix until its lifetime runs out
    (RFC 8415): the one whose address on the interface has the longest preferred lifetime is the new one.
    """
    routed = {i.ipv6.prefix for i in config.isps if i.ipv6.mode == "routed"}
    lan = [n for n in config.lan.ipv6_prefixes if n not in routed]
    length = lan[0].prefixlen if lan else 64
    out: dict[str, ipaddress.IPv6Network | None] = {}
    for isp in config.isps:
        dev = isp.ipv6.prefix_from
        if dev is None:
            continue
        found = sorted(
            r.dst
            for r in connected
            if r.dev == dev and r.dst.version == 6 and r.dst.prefixlen == length and _delegable(r.dst)
        )
        iface = (interfaces or {}).get(dev)
        preferred = {a.network: left for a, left in iface.addresses6} if iface is not None else {}
        found.sort(key=lambda net: -preferred.get(net, 0))  # (stable: the lowest prefix among equals)
        out[isp.name] = found[0] if found else None  # type: ignore[assignment]
    return out


def usable6(
    config: Config,
    usable: Mapping[str, IspStatus],
    statuses6: Mapping[str, IspStatus] | None,
    followed: Mapping[str, ipaddress.IPv6Network | None],
    uplinks: Mapping[str, Uplink] | None = None,
) -> dict[str, IspStatus]:
    """Each ISP's usability for NEW IPv6 connections from the translated LAN prefixes.

    Its IPv6 status (its own IPv6 health, else its one status) if it translates (netmap with a prefix
    now, or masquerade) and has an IPv6 next hop; DOWN otherwise: a ``routed`` ISP takes only its own
    prefix's connections (their source decides), and an ISP without IPv6 none.
    """
    out = {}
    for isp in config.isps:
        nat = isp.ipv6.mode == "masquerade" or (isp.ipv6.mode == "netmap" and followed.get(isp.name, True) is not None)
        link = (uplinks or {}).get(isp.name)
        routable = link.ready6 if link is not None else isp.gateway6 != "auto"
        status = (statuses6 or {}).get(isp.name, usable.get(isp.name, IspStatus.UP))
        out[isp.name] = status if nat and routable else IspStatus.DOWN
    return out
