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
from enum import StrEnum

from wanlb.config import Config, RuleConfig
from wanlb.policy import Adjusted, PolicyPlan, policies
from wanlb.runtime import Retired, RuntimeState, mark_shift


class IspStatus(StrEnum):
    """What the health monitor (or an admin) says about an ISP."""

    UP = "up"
    DEGRADED = "degraded"  # quality limits exceeded but still usable as a last choice
    DOWN = "down"
    DISABLED = "disabled"  # administratively drained

    @property
    def usable(self) -> bool:
        return self in (IspStatus.UP, IspStatus.DEGRADED)


@dataclass(frozen=True, order=True)
class ConnectedRoute:
    """A directly connected network of the main table: never balanced (``bypass``), and LAN ones are never NATed."""

    dst: ipaddress.IPv4Network
    dev: str


@dataclass(frozen=True)
class IspPlan:
    name: str
    interface: str
    gateway: ipaddress.IPv4Address
    mark: int
    table: int
    slot: int  # rule priority offset, from the ISP's mark: independent of the config's order
    weight: int
    tier: int
    snat: str | ipaddress.IPv4Address
    status: IspStatus
    active: bool
    share: float  # fraction of NEW connections it gets, 0..1


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
    rules: tuple[RuleConfig, ...] = ()
    helpers: tuple[str, ...] = ()
    lan_nets: tuple[ipaddress.IPv4Network, ...] = ()  # connected LAN networks: never leave a WAN unNATed
    retired: tuple[Retired, ...] = ()  # marks of removed ISPs: their packets are dropped until flushed
    domain_timeout: int = 3600  # default life of a dom_ set element (dns.max_ttl)

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
) -> Desired:
    """Compute the desired state.  ISPs missing from ``statuses`` count as UP.

    ``adjusted``: the daemon's current weights per dynamic algorithm (``least-conn``, ``latency``).

    ``state`` must hold a slot for every ISP of ``config`` (see :func:`wanlb.runtime.allocate`).
    """
    statuses = statuses or {}
    shift = mark_shift(config.mark_mask)
    slots = {name: ((slot.mark >> shift) - 1) % 256 for name, slot in state.isps.items()}
    usable = {i.name: statuses.get(i.name, IspStatus.UP) for i in config.isps}
    planned = policies(config, usable, adjusted)
    default = dict(planned[0].active)
    total = sum(default.values())
    isps = tuple(
        IspPlan(
            name=i.name,
            interface=i.interface,
            gateway=i.gateway,
            mark=state.isps[i.name].mark,
            table=state.isps[i.name].table,
            slot=slots[i.name],
            weight=i.weight,
            tier=i.tier,
            snat=i.snat,
            status=usable[i.name],
            active=i.name in default,
            share=default.get(i.name, 0) / total if total else 0.0,
        )
        for i in config.isps
    )
    return Desired(
        mark_mask=config.mark_mask,
        isps=isps,
        lan_interfaces=config.lan.interfaces,
        local_traffic=config.local_traffic,
        bypass=tuple(sorted(set(config.lan.bypass) | {r.dst for r in connected})),
        last_resort=config.failover.last_resort,
        rule_priority=config.routing.rule_priority,
        route_protocol=config.routing.protocol,
        policies=planned,
        rules=config.rules,
        helpers=tuple(dict.fromkeys(config.helpers)),
        lan_nets=tuple(sorted({r.dst for r in connected if r.dev in config.lan.interfaces})),
        retired=state.retired,
        domain_timeout=max(1, round(config.dns.max_ttl)),
    )
