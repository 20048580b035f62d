"""Planning: config + observed health (+ observed connected routes) → desired state.

This is where it is decided which ISPs take NEW connections: the best (lowest)
tier that has at least one usable ISP, and within it every usable ISP by weight.
Pure: no I/O, no clock.  The renderer turns the result into nft text and routing
intent; the reconciler applies it.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from wanlb.config import Config


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
    """A directly connected network from the main table, copied into every ISP table."""

    dst: ipaddress.IPv4Network
    dev: str
    prefsrc: ipaddress.IPv4Address | None = None


@dataclass(frozen=True)
class IspPlan:
    name: str
    interface: str
    gateway: ipaddress.IPv4Address
    mark: int
    table: int
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
    connected: tuple[ConnectedRoute, ...]
    last_resort: str
    rule_priority: int
    route_protocol: int
    weights: tuple[tuple[str, int], ...] = field(default=())  # reduced weights of active ISPs

    @property
    def active(self) -> tuple[IspPlan, ...]:
        return tuple(i for i in self.isps if i.active)


def _best_tier(config: Config, statuses: Mapping[str, IspStatus]) -> tuple[int | None, bool]:
    """The lowest tier with an UP ISP; failing that, the lowest with a DEGRADED one.

    Returns (tier, degraded_only).  Degraded ISPs are only used when nothing better
    is left anywhere, so a lossy link never steals traffic from a clean one.
    """
    up = [i.tier for i in config.isps if statuses.get(i.name, IspStatus.UP) == IspStatus.UP]
    if up:
        return min(up), False
    degraded = [i.tier for i in config.isps if statuses.get(i.name, IspStatus.UP) == IspStatus.DEGRADED]
    if degraded:
        return min(degraded), True
    return None, False


def plan(
    config: Config,
    statuses: Mapping[str, IspStatus] | None = None,
    connected: tuple[ConnectedRoute, ...] = (),
) -> Desired:
    """Compute the desired state.  ISPs missing from ``statuses`` count as UP."""
    statuses = statuses or {}
    tier, degraded_only = _best_tier(config, statuses)
    wanted = IspStatus.DEGRADED if degraded_only else IspStatus.UP

    def is_active(name: str, isp_tier: int) -> bool:
        return tier is not None and isp_tier == tier and statuses.get(name, IspStatus.UP) == wanted

    active = [i for i in config.isps if is_active(i.name, i.tier)]
    divisor = math.gcd(*(i.weight for i in active)) if active else 1
    total = sum(i.weight for i in active)
    isps = tuple(
        IspPlan(
            name=i.name,
            interface=i.interface,
            gateway=i.gateway,
            mark=i.mark or 0,
            table=i.table or 0,
            weight=i.weight,
            tier=i.tier,
            snat=i.snat,
            status=statuses.get(i.name, IspStatus.UP),
            active=is_active(i.name, i.tier),
            share=(i.weight / total) if is_active(i.name, i.tier) else 0.0,
        )
        for i in config.isps
    )
    return Desired(
        mark_mask=config.mark_mask,
        isps=isps,
        lan_interfaces=config.lan.interfaces,
        local_traffic=config.local_traffic,
        bypass=tuple(sorted(set(config.lan.bypass) | {r.dst for r in connected})),
        connected=tuple(sorted(set(connected))),
        last_resort=config.failover.last_resort,
        rule_priority=config.routing.rule_priority,
        route_protocol=config.routing.protocol,
        weights=tuple((i.name, i.weight // divisor) for i in active),
    )
