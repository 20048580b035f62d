"""An ISP's uplink as the kernel shows it: is its interface there, its addresses, its next hop.  Pure.

Most uplinks are not static: a DHCP lease (cable, fibre ONT, an LTE modem), a PPP session (``ppp0``, a
point-to-point link with no gateway address, created and destroyed by pppd) or a USB modem that is not
plugged in yet.  wanlb does not run their clients: whatever installed the uplink's default route
(dhclient, dhcpcd, systemd-networkd, NetworkManager, pppd, ModemManager, a script) is the source of
truth.  With ``gateway: auto`` the ISP's next hop is *learned* from that route — ``default via X dev IF``
(any metric, any protocol) in the main table (or ``gateway_table``), or ``default dev IF`` on a
point-to-point link, which becomes a device route in the ISP's own table.

:func:`uplinks` turns one read of the kernel (:class:`Snapshot`, read by ``adapters/routing``) into
an :class:`Uplink` per ISP: ready, or the one thing missing (``no interface``, ``link down``, ``no
address``, ``waiting for gateway``, a static gateway off the interface's networks), and the next hop
with where it came from.  The reconciler renders routes only for ready uplinks; the fleet turns a
missing piece into DOWN (and back through the probes), and a changed next hop or address into events.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wanlb.config import Config, IspConfig

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address
MAIN_TABLE = 254
PROTOCOL_NAMES = {2: "kernel", 3: "boot", 4: "static", 9: "ra", 11: "zebra", 16: "dhcp", 42: "babel", 186: "bgp"}
TABLE_NAMES = {253: "default", 254: "main"}


@dataclass(frozen=True)
class ConnectedRoute:
    """A directly connected network of the main table: never balanced (``bypass``), and LAN ones are never NATed."""

    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    dev: str

    def __lt__(self, other: ConnectedRoute) -> bool:  # IPv4 and IPv6 networks do not compare with each other
        return (self.dst.version, self.dst, self.dev) < (other.dst.version, other.dst, other.dev)


@dataclass(frozen=True)
class DefaultRoute:
    """A default route that is not wanlb's: what an uplink's client (or the admin) installed."""

    family: int
    table: int
    dev: str | None  # None: its interface has no name any more (or a blackhole/unreachable route)
    gateway: IPv4 | IPv6 | None  # None: a device route (point-to-point link)
    metric: int = 0
    protocol: int = 0

    def describe(self) -> str:
        """``default via 100.64.2.1 dev wan2 proto dhcp metric 1002`` (``table N`` unless main), as ip shows it."""
        via = f" via {self.gateway}" if self.gateway is not None else ""
        proto = PROTOCOL_NAMES.get(self.protocol, str(self.protocol))
        table = "" if self.table == MAIN_TABLE else f" table {TABLE_NAMES.get(self.table, self.table)}"
        return f"default{via} dev {self.dev or '?'} proto {proto} metric {self.metric}{table}"


@dataclass(frozen=True)
class Interface:
    """One WAN interface as it is now."""

    name: str
    index: int
    usable: bool  # administratively up with carrier
    addresses: tuple[ipaddress.IPv4Interface, ...] = ()
    peers: tuple[IPv4, ...] = ()  # point-to-point peers (``A peer B/32``: B)
    addresses6: tuple[tuple[ipaddress.IPv6Interface, int], ...] = ()  # global ones, with their preferred lifetime (s)


@dataclass(frozen=True)
class Snapshot:
    """One read of the kernel's routing state: what reconcile plans from and what uplinks are judged by.

    ``routes`` are wanlb's own (tagged with one of its protocols), ``defaults`` everybody else's default
    routes in the tables asked for, ``interfaces`` the interfaces asked for that exist now (the WANs, and
    those a ``prefix_from`` names).
    """

    connected: tuple[ConnectedRoute, ...] = ()
    interfaces: Mapping[str, Interface] = field(default_factory=dict)
    defaults: tuple[DefaultRoute, ...] = ()
    routes: tuple = ()  # wanlb.render.Route, tagged with one of wanlb's protocols


@dataclass(frozen=True)
class Uplink:
    """What wanlb uses of one ISP's uplink.  ``problem`` None: ready (its table gets a default route)."""

    problem: str | None = None  # no interface, link down, no address, waiting for gateway, a static gateway off-link
    via: IPv4 | None = None  # the IPv4 next hop; None while ready: a device route (point-to-point)
    source: str = "static"  # where the next hop came from: static, or the learned route as ip shows it
    index: int | None = None  # the interface's index: a new one means it was deleted and created again
    addresses: tuple[str, ...] = ()  # its IPv4 addresses (CIDR), for status and address-change events
    peer: IPv4 | None = None  # a point-to-point link's peer: what the health target ``gateway`` probes there
    problem6: str | None = None  # its IPv6 alone cannot be used: waiting for an IPv6 gateway
    via6: IPv6 | None = None
    source6: str = ""

    @property
    def ready(self) -> bool:
        return self.problem is None

    @property
    def ready6(self) -> bool:
        return self.problem is None and self.problem6 is None

    @property
    def next_hop(self) -> str:
        """The IPv4 next hop for people: an address, ``dev IF`` (a device route), or ``none``."""
        return str(self.via) if self.via is not None else ("device route" if self.ready else "none")

    def target(self, family: int) -> str | None:
        """The address the health target ``gateway`` (``gateway6``) means now; None if there is none."""
        if family == 6:
            return str(self.via6) if self.via6 is not None else None
        hop = self.via if self.via is not None else self.peer
        return str(hop) if hop is not None else None


def assumed(isp: IspConfig) -> Uplink:
    """The uplink before the kernel was read: a static one as configured, a learned one waiting."""
    via6 = None if isp.gateway6 in (None, "auto") else isp.gateway6
    problem6 = "waiting for IPv6 gateway" if isp.gateway6 == "auto" else None
    if isp.learns:
        return Uplink("waiting for gateway", source="not read yet", problem6=problem6)
    return Uplink(None, isp.gateway, via6=via6, problem6=problem6, source6="static" if via6 else "")  # type: ignore[arg-type]


def uplinks(config: Config, snapshot: Snapshot) -> dict[str, Uplink]:
    """Every ISP's uplink as ``snapshot`` shows it."""
    return {isp.name: uplink(isp, snapshot) for isp in config.isps}


def uplink(isp: IspConfig, snapshot: Snapshot) -> Uplink:
    """One ISP's uplink: the first thing missing, in the order an operator would look, and the next hop."""
    iface = snapshot.interfaces.get(isp.interface)
    if iface is None:
        return Uplink("no interface", source=_learned_from(isp) if isp.learns else "static")
    addresses = tuple(str(a) for a in iface.addresses)
    peer = iface.peers[0] if iface.peers else None
    via6, problem6, source6 = _next_hop6(isp, snapshot)
    base = {"index": iface.index, "addresses": addresses, "peer": peer}
    base |= {"via6": via6, "problem6": problem6, "source6": source6}
    if not iface.usable:
        return Uplink("link down", source="static" if not isp.learns else _learned_from(isp), **base)  # type: ignore[arg-type]
    if not iface.addresses and isp.snat == "masquerade":
        return Uplink("no address", source="static" if not isp.learns else _learned_from(isp), **base)  # type: ignore[arg-type]
    if not isp.learns:
        gateway: IPv4 = isp.gateway  # type: ignore[assignment]
        networks = [a.network for a in iface.addresses]
        if networks and not any(gateway in n for n in networks) and gateway not in iface.peers:
            shown = ", ".join(str(n) for n in networks)
            return Uplink(f"gateway {gateway} is not on {isp.interface}'s networks ({shown})", gateway, **base)  # type: ignore[arg-type]
        return Uplink(None, gateway, **base)  # type: ignore[arg-type]
    route = _best(snapshot, 4, isp.lookup_table, isp.interface)
    if route is None:
        return Uplink("waiting for gateway", source=_missing(isp, snapshot, 4), **base)  # type: ignore[arg-type]
    return Uplink(None, route.gateway, route.describe(), **base)  # type: ignore[arg-type]


def _next_hop6(isp: IspConfig, snapshot: Snapshot) -> tuple[IPv6 | None, str | None, str]:
    if isp.gateway6 is None:
        return None, None, ""
    if isp.gateway6 != "auto":
        return isp.gateway6, None, "static"  # type: ignore[return-value]
    route = _best(snapshot, 6, isp.lookup_table, isp.interface)
    if route is None:
        return None, "waiting for IPv6 gateway", _missing(isp, snapshot, 6)
    return route.gateway, None, route.describe()  # type: ignore[return-value]


def _best(snapshot: Snapshot, family: int, table: int, dev: str) -> DefaultRoute | None:
    """The default route through ``dev`` that the kernel itself would prefer: the lowest metric."""
    found = [r for r in snapshot.defaults if r.family == family and r.table == table and r.dev == dev]
    return min(found, key=lambda r: (r.metric, str(r.gateway or ""))) if found else None


def _learned_from(isp: IspConfig) -> str:
    return f"learned from table {TABLE_NAMES.get(isp.lookup_table, isp.lookup_table)}"


def _missing(isp: IspConfig, snapshot: Snapshot, family: int) -> str:
    """Why nothing was learned, with what the table has instead (a route through another interface)."""
    table = TABLE_NAMES.get(isp.lookup_table, str(isp.lookup_table))
    default = "default" if family == 4 else "IPv6 default"
    text = f"no {default} route through {isp.interface} in table {table}"
    others = sorted(
        {r.dev or "?" for r in snapshot.defaults if r.family == family and r.table == isp.lookup_table}
        - {isp.interface}
    )
    if others:
        text += f" (it has one through {', '.join(others)})"
    return text


def interface_warnings(config: Config, present: Collection[str]) -> list[str]:
    """What ``check`` and the daemon say about configured interfaces that do not exist now.

    Not an error: ppp0 exists only while pppd is connected, a USB modem may not be plugged in yet, a LAN
    bridge may come up after wanlb.  The ISP waits (``down (no interface)``) and joins once it is there;
    a name close to one that exists is probably a typo, so it is named.
    """
    out = []
    for isp in config.isps:
        if isp.interface not in present:
            hint = _did_you_mean(isp.interface, present)
            out.append(f"isp {isp.name}: interface {isp.interface} does not exist now{hint}; the ISP is down "
                       "(no interface) until it appears")  # fmt: skip
    for name in config.lan.interfaces:
        if name not in present:
            out.append(f"lan: interface {name} does not exist now{_did_you_mean(name, present)}"
                       "; nothing from it is balanced until it appears")  # fmt: skip
    return out


def uplink_warnings(
    config: Config, seen: Mapping[str, Uplink], connected: Collection[ConnectedRoute] = ()
) -> list[str]:
    """An ISP whose uplink is present but not usable, and why; a static gateway on the LAN (one of
    ``connected`` through a LAN interface), usable or not (``check`` prints these).

    Warnings, not errors: they depend on the kernel now (addresses come and go with DHCP), and a daemon
    started with the same config would run it, the ISP waiting until its uplink is whole."""
    lan = [r for r in connected if r.dev in config.lan.interfaces and r.dst.version == 4]
    out = []
    for isp in config.isps:
        link = seen.get(isp.name)
        if not isp.learns and (on_lan := next((r for r in lan if isp.gateway in r.dst), None)):
            out.append(f"isp {isp.name}: gateway {isp.gateway} is on the LAN ({on_lan.dev}: {on_lan.dst}): a WAN's "
                       f"next hop is on its own network, reached through {isp.interface}")  # fmt: skip
        if link is None or link.problem in (None, "no interface"):
            problem6 = None if link is None else link.problem6
            if problem6 and link is not None and link.ready:
                out.append(f"isp {isp.name}: {problem6}: {link.source6}")
            continue
        detail = f": {link.source}" if link.problem == "waiting for gateway" else ""
        if link.problem == "link down" and (off := _off_link(isp, link)):
            detail = f", and {off}"
        out.append(f"isp {isp.name}: {isp.interface}: {link.problem}{detail}; the ISP is down until it is resolved")
    return out


def _off_link(isp: IspConfig, link: Uplink) -> str | None:
    """What :func:`uplink` says of a static gateway outside its interface's networks, for an uplink whose
    first problem is another (the link is down): so both are said at once."""
    networks = [ipaddress.IPv4Interface(a).network for a in link.addresses]
    if isp.learns or not networks or any(isp.gateway in n for n in networks) or isp.gateway == link.peer:
        return None
    return f"gateway {isp.gateway} is not on {isp.interface}'s networks ({', '.join(str(n) for n in networks)})"


def _did_you_mean(name: str, present: Collection[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(present), n=1, cutoff=0.6)
    shown = ", ".join(sorted(n for n in present if n != "lo")[:12])
    return f" (did you mean {close[0]}? interfaces: {shown})" if close else f" (interfaces: {shown or 'none'})"
