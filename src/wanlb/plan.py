"""Planning: config + runtime allocation + ISP statuses + connected routes → desired state.

This is where it is decided which ISPs take NEW connections: the best (lowest)
tier that has at least one usable ISP, and within it every usable ISP by weight.
Marks and tables come from the runtime allocation (by ISP name), never from a
position in the config.  Pure: no I/O, no clock.  The renderer turns the result
into nft objects and routing intent; the reconciler makes the kernel match.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from wanlb.config import Config
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
    connected: tuple[ConnectedRoute, ...]
    last_resort: str
    rule_priority: int
    route_protocol: int
    weights: tuple[tuple[str, int], ...] = field(default=())  # reduced weights of active ISPs
    helpers: tuple[str, ...] = ()
    lan_nets: tuple[ipaddress.IPv4Network, ...] = ()  # connected LAN networks: never leave a WAN unNATed
    retired: tuple[Retired, ...] = ()  # marks of removed ISPs: their packets are dropped until flushed

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
    state: RuntimeState,
    statuses: Mapping[str, IspStatus] | None = None,
    connected: tuple[ConnectedRoute, ...] = (),
) -> Desired:
    """Compute the desired state.  ISPs missing from ``statuses`` count as UP.

    ``state`` must hold a slot for every ISP of ``config`` (see :func:`wanlb.runtime.allocate`).
    """
    statuses = statuses or {}
    shift = mark_shift(config.mark_mask)
    slots = {name: ((slot.mark >> shift) - 1) % 256 for name, slot in state.isps.items()}
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
            mark=state.isps[i.name].mark,
            table=state.isps[i.name].table,
            slot=slots[i.name],
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
        helpers=tuple(dict.fromkeys(config.helpers)),
        lan_nets=tuple(sorted({r.dst for r in connected if r.dev in config.lan.interfaces})),
        retired=state.retired,
    )
