"""The lab's shape: node and namespace names, interfaces, addresses and the commands that build it.

Everything here is pure (no root, no subprocesses), so the topology and the generated
iproute2/nft/YAML text can be unit-tested anywhere; `wanlb.lab.lab` only executes it.

Layout for N ISPs and M clients (every address lives only inside the lab's namespaces)::

    c1..cM (eth0 192.168.77.(10+k)/24) ── lanpK ┐
                                              lan0 (bridge, 192.168.77.1/24)   gw
    gw wan{i} 100.64.{i}.2/24 ── cust0 100.64.{i}.1/24   isp{i}   up0 198.18.{i}.1/24
                                 ── isp{i} 198.18.{i}.2/24   inet (servers on lo: 203.0.113.10/.20/.30/.40)
    (FTP on 203.0.113.40:21 only after `Lab.start_ftp()`)

Each ISP's uplink has a mode (``Topology.uplinks``), like the uplinks real gateways have:

* ``static``: addresses and the gateway written into the config (100.64.i.2/24 via 100.64.i.1);
* ``dhcp``: the ISP router runs a DHCP server (dnsmasq) handing out 100.64.i.2/24 with router
  100.64.i.1 (after ``Lab.lease_change``: 100.80.i.2/24 via 100.80.i.1, and back), and router
  advertisements for IPv6; the gateway runs a real DHCP client (dhcpcd) and wanlb learns the next hops;
* ``p2p``: a PPP session's effect (this kernel has no PPP): ``100.64.i.2 peer 100.64.i.1/32`` on a
  link without ARP, ``default dev wan<i>``, the interface deleted and created again with another
  address (100.64.i.6) on ``Lab.reconnect``;
* ``modem``: an LTE modem that NATs: its LAN side is 192.168.8.1/24 on every modem, it leases
  192.168.8.100 to the gateway (two modems: the same subnet, gateway and WAN address twice), and the
  servers see its own uplink address 198.18.i.1.

An HA pair (``Topology(ha=True)``, issue 20) has two gateways, gw1 and gw2, instead of gw; every segment
they share is a bridge outside both, so either can die without taking a segment with it::

    c1..cM eth0 ── sw: lanpK ┐
                   sw: lan0 (bridge, no address)
    gw{g} lan0 192.168.77.(1+g)/24 ── sw: gw{g} ┘
    gw{g} wan{i} 100.64.{i}.(1+g)/24 ── isp{i}: gw{g} ── isp{i}: cust0 (bridge, 100.64.{i}.1/24)
    gw1 sync0 10.255.0.1/30 ── gw2 sync0 10.255.0.2/30 (conntrackd and VRRP unicast)

The clients' default gateway stays 192.168.77.1, and the SNAT source the servers should see is
100.64.{i}.10: those are the pair's virtual addresses (VIPs), which the lab never configures (keepalived
moves them; a test may put them by hand). Only ``static`` uplinks: a DHCP lease, a PPP session or a
modem's NAT gives one address to one box, which two gateways cannot share. IPv4 only for now.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

NS_PREFIX = "wlab-"
"""Every lab namespace starts with this; `lab down --all` removes all of them."""

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_]{0,23}")
"""Lab names: no '-' so that the namespace prefix `wlab-<name>-` of one lab never matches another's."""

MAX_ISPS = 16
MAX_CLIENTS = 32

LAN_IF = "lan0"
LAN_GW = "192.168.77.1"
LAN_PREFIX_LEN = 24
LAN_PREFIX = f"192.168.77.0/{LAN_PREFIX_LEN}"
CLIENT_IF = "eth0"
ISP_CUSTOMER_IF = "cust0"  # ISP router's gw-facing end; `fail --mode link` downs it
ISP_UPLINK_IF = "up0"  # ISP router's inet-facing end

HTTP_ADDR = "203.0.113.10"
HTTP_PORT = 80
HTTPS_PORT = 443
STREAM_ADDR = "203.0.113.20"
STREAM_PORT = 5001
DNS_ADDR = "203.0.113.30"
DNS_PORT = 53
FTP_ADDR = "203.0.113.40"  # `Lab.start_ftp()`; not started by `lab up`
FTP_PORT = 21
FTP_PASSIVE_PORTS = (30000, 30099)
SERVER_ADDRS = ("203.0.113.10", "203.0.113.20", "203.0.113.30", "203.0.113.40")
"""Addresses on inet's loopback: servers and ping targets (the kernel answers ping on all of them)."""
HEALTH_TARGETS = ("203.0.113.10", "203.0.113.30")
"""ICMP health targets written into the generated config; shared by all ISPs, like public resolvers are."""

UPLINK_MODES = ("static", "dhcp", "p2p", "modem")
UPLINK_PRESETS = {"mixed": ("static", "dhcp", "p2p"), "twins": ("modem", "modem"), "dynamic": ("dhcp", "dhcp", "p2p")}
"""`lab up --uplinks NAME`: one ISP per mode, two identical LTE modems, two DHCP WANs and a PPP-like one."""
LEASE_TIME = "2m"  # dnsmasq's shortest: renewals every minute
MODEM_SUBNET = "192.168.8"  # what every modem of the `modem` mode uses (as Huawei's do)
DHCP_MODES = ("dhcp", "modem")  # uplinks whose address comes from the ISP's DHCP server

NFT_TABLE = "lab"  # never "wanlb": the daemon owns that name
SPOOF_COUNTER = "spoofed"
FAIL_COUNTER = "failed"
LAN_LEAK_COUNTER = "lan_leak"
COUNTERS = (SPOOF_COUNTER, FAIL_COUNTER, LAN_LEAK_COUNTER)
"""Every named counter of an ISP router's `ip lab` table."""

HA_GATEWAYS = ("gw1", "gw2")
"""An HA lab's gateway nodes; gw1 is the pair's primary (the one a VRRP config gives the higher priority)."""
SWITCH = "sw"  # an HA lab's LAN switch: a namespace holding only the bridge, so no gateway owns the LAN
SYNC_IF = "sync0"  # the HA pair's dedicated link (conntrackd, VRRP unicast)
SYNC_PREFIX_LEN = 30
WAN_PREFIX_LEN = 24
LAN_VIP = LAN_GW
"""An HA pair's LAN virtual address: the clients' default gateway, held by whichever gateway is master."""


class TopologyError(ValueError):
    """A lab name, size, weight list, node, ISP or fail mode that the lab cannot build."""


def client_addr(k: int) -> str:
    """Client k's LAN address (k starts at 1)."""
    return f"192.168.77.{10 + k}"


def wan_addr(i: int) -> str:
    """The gateway's address on WAN i: what the servers see when a connection leaves through ISP i."""
    return f"100.64.{i}.2"


def isp_gateway(i: int) -> str:
    """ISP router i's customer-side address: the gateway's next hop on WAN i."""
    return f"100.64.{i}.1"


def isp_customer_net(i: int, lease: int = 0) -> str:
    """A source prefix ISP router i forwards from its customer (BCP38): lease 0's, or lease 1's."""
    return f"{wan_subnet(i, lease)}.0/24"


def wan_subnet(i: int, lease: int = 0) -> str:
    """The first three octets of WAN i's subnet: 100.64.i, or 100.80.i after a lease change."""
    return f"100.{80 if lease else 64}.{i}"


def p2p_local(i: int, session: int = 0) -> str:
    """The gateway's address on point-to-point WAN i: a reconnect gets the other one."""
    return f"100.64.{i}.{6 if session else 2}"


def wan_mac(i: int, gateway: int = 0) -> str:
    """The gateway's MAC on WAN i, the same every time the interface is created (as a NIC's or a USB
    modem's is): the ISP's DHCP server knows the client again after an unplug. ``gateway`` is 1 or 2 for
    an HA pair's gw1 and gw2, which share each WAN's segment and so need MACs of their own."""
    return f"02:77:00:{gateway:02x}:{i:02x}:02"


def p2p_mac(i: int) -> str:
    """Both ends of a point-to-point WAN share one MAC: without ARP, a frame goes to the sender's own
    address (the neighbour entry of a NOARP device), which the peer then takes as its own."""
    return f"02:77:00:00:{i:02x}:01"


def isp_uplink_addr(i: int) -> str:
    """ISP router i's address towards inet."""
    return f"198.18.{i}.1"


def inet_addr(i: int) -> str:
    """inet's address on its link to ISP router i."""
    return f"198.18.{i}.2"


# --- an HA pair (with `Topology(ha=True)`): gateway g is gw1 (1) or gw2 (2) -----------------------------


def ha_lan_addr(g: int) -> str:
    """HA gateway g's own LAN address (192.168.77.2, .3): the LAN VIP .1 is the pair's, not a box's."""
    return f"192.168.77.{1 + g}"


def ha_wan_addr(i: int, g: int) -> str:
    """HA gateway g's own address on WAN i (100.64.i.2, .3): its own traffic (health probes) leaves with it."""
    return f"100.64.{i}.{1 + g}"


def wan_vip(i: int) -> str:
    """The HA pair's virtual address on WAN i: the SNAT source that stays the same when the backup takes
    over, so the servers see one customer, and the ISP (inside its customer /24, so BCP38 accepts it)."""
    return f"100.64.{i}.10"


def ha_sync_addr(g: int) -> str:
    """HA gateway g's address on the sync link (10.255.0.1, .2)."""
    return f"10.255.0.{g}"


def isp_mark(i: int) -> int:
    """ISP i's packet/ct mark as an HA pair's configs write it out: the value wanlb would allocate itself
    (the lowest free multiple of the mask's lowest bit), fixed so both gateways agree on it."""
    return 0x100 * i


def isp_table(i: int) -> int:
    """ISP i's routing table as an HA pair's configs write it out (``routing.table_base`` 200 + i)."""
    return 200 + i


@dataclass(frozen=True)
class HaWan:
    """One WAN of an HA gateway: its interface, its own address and the pair's VIP there."""

    isp: str
    interface: str
    address: str
    vip: str


@dataclass(frozen=True)
class HaNode:
    """What one gateway of an HA pair needs to know to render keepalived and conntrackd (the ``ha:`` section
    to come): its own addresses, its peer and the peer's sync address, the VIPs the pair moves. Addresses
    are bare; the prefix lengths are LAN_PREFIX_LEN, WAN_PREFIX_LEN and SYNC_PREFIX_LEN."""

    node: str
    peer: str
    primary: bool  # gw1: the one that should be master while both are alive
    lan_interface: str
    lan_address: str
    lan_vip: str
    wans: tuple[HaWan, ...]
    sync_interface: str
    sync_address: str
    peer_sync_address: str


def isp_for_source(addr: str) -> str | None:
    """Map a source address seen by a server (100.64.i.2, or an address of ISP i's IPv6 prefixes) back to
    the ISP name it left through."""
    m = re.fullmatch(r"100\.(?:64|80)\.(\d{1,3})\.(?:[236]|10)|198\.18\.(\d{1,3})\.1", addr)
    if m:  # a WAN address of ISP i (any lease, PPP session or HA gateway, or the HA VIP), or modem i's uplink
        return f"isp{int(m.group(1) or m.group(2))}"
    m = re.fullmatch(r"2001:db8:(\d{1,2})(00|80)?:[0-9a-f:]+", addr)
    return f"isp{int(m.group(1))}" if m else None


# --- IPv6 (with `Topology(ipv6=True)`): ULA on the LAN, a link prefix and a netmap prefix per ISP ----------

LAN6_PREFIX = "fd00:77::/64"
LAN6_GW = "fd00:77::1"
SERVER6_ADDRS = ("2001:db8:f::10", "2001:db8:f::20", "2001:db8:f::30")
"""IPv6 addresses on inet's loopback (servers that tests start, and ping targets)."""
HEALTH6_TARGETS = ("2001:db8:f::10", "2001:db8:f::30")
"""ICMPv6 health targets of the generated dual-stack config (the IPv6 health of each ISP)."""


def client6_addr(k: int) -> str:
    """Client k's ULA address (k starts at 1): fd00:77::11 for c1."""
    return f"fd00:77::{10 + k}"


def wan6_addr(i: int) -> str:
    """The gateway's address on WAN i (what masquerade makes the source)."""
    return f"2001:db8:{i}::2"


def isp6_gateway(i: int) -> str:
    return f"2001:db8:{i}::1"


def isp6_prefix(i: int, lease: int = 0) -> str:
    """ISP i's customer prefix that the LAN's ULA prefix is netmapped to: the first /64 of its delegation."""
    return f"2001:db8:{i}{'80' if lease else '00'}::/64"


def isp6_delegation(i: int, lease: int = 0) -> str:
    """What ISP i routes to the gateway and accepts from it besides the link prefix (a /56, as delegated:
    by DHCPv6-PD on a dhcp uplink, where a lease change moves it to the other one)."""
    return f"2001:db8:{i}{'80' if lease else '00'}::/56"


def pd_holder(i: int) -> str:
    """The gateway's interface (an empty bridge) where dhcpcd puts the /64 it carves from ISP i's delegated
    prefix, as it would on a LAN: wanlb's ``prefix_from`` follows it."""
    return f"pd{i}"


def isp6_uplink_addr(i: int) -> str:
    return f"2001:db8:ff:{i}::1"


def inet6_addr(i: int) -> str:
    return f"2001:db8:ff:{i}::2"


@dataclass(frozen=True)
class FailMode:
    """How an ISP is broken; applied entirely inside that ISP router's namespace."""

    kind: Literal["link", "blackhole", "loss"]
    percent: int = 0  # only for kind == "loss"

    @classmethod
    def parse(cls, text: str) -> FailMode:
        """Parse `link`, `blackhole` or `loss:PERCENT` (1..100)."""
        if text in ("link", "blackhole"):
            return cls(text)  # type: ignore[arg-type]
        m = re.fullmatch(r"loss:(\d{1,3})", text)
        if m and 1 <= int(m.group(1)) <= 100:
            return cls("loss", int(m.group(1)))
        raise TopologyError(f"bad fail mode {text!r}: use link, blackhole or loss:PERCENT (1-100)")

    def __str__(self) -> str:
        return f"loss:{self.percent}" if self.kind == "loss" else self.kind


@dataclass(frozen=True)
class Link:
    """One veth pair, named from both ends."""

    a: str
    a_if: str
    b: str
    b_if: str


@dataclass(frozen=True)
class Topology:
    """A lab's names and addresses; validated on construction."""

    name: str = "lab"
    isps: int = 3
    clients: int = 2
    weights: tuple[int, ...] = ()
    ipv6: bool = False
    uplinks: tuple[str, ...] = ()
    """Each ISP's uplink mode (see the module docstring); default all ``static``."""
    ha: bool = False
    """Two gateways, gw1 and gw2, as an HA pair on shared segments (see the module docstring)."""

    def __post_init__(self) -> None:
        if not NAME_RE.fullmatch(self.name):
            raise TopologyError(f"bad lab name {self.name!r}: use 1-24 of [a-z0-9_], starting alphanumeric")
        if not 1 <= self.isps <= MAX_ISPS:
            raise TopologyError(f"--isps must be 1..{MAX_ISPS}, not {self.isps}")
        if not 1 <= self.clients <= MAX_CLIENTS:
            raise TopologyError(f"--clients must be 1..{MAX_CLIENTS}, not {self.clients}")
        if not self.weights:
            object.__setattr__(self, "weights", (1,) * self.isps)
        if len(self.weights) != self.isps or any(w < 1 for w in self.weights):
            raise TopologyError(f"need {self.isps} positive weights, got {list(self.weights)}")
        if not self.uplinks:
            object.__setattr__(self, "uplinks", ("static",) * self.isps)
        if len(self.uplinks) != self.isps or any(m not in UPLINK_MODES for m in self.uplinks):
            raise TopologyError(
                f"need {self.isps} uplink modes of {', '.join(UPLINK_MODES)} (or a preset: "
                f"{', '.join(UPLINK_PRESETS)}), got {','.join(self.uplinks)}"
            )
        if self.ha and self.ipv6:
            raise TopologyError("an HA lab is IPv4-only for now: leave --ipv6 out (ipv6=False)")
        if self.ha and set(self.uplinks) != {"static"}:
            raise TopologyError(
                f"an HA lab needs static uplinks, not {','.join(self.uplinks)}: both gateways share each WAN, and a "
                "DHCP lease, a PPP session or a modem's NAT gives its one address to one box only"
            )

    def mode(self, i: int) -> str:
        """ISP i's uplink mode."""
        return self.uplinks[i - 1]

    def carries_ipv6(self, i: int) -> bool:
        """Whether ISP i has IPv6 (a dual-stack lab; the modems NAT IPv4 only)."""
        return self.ipv6 and self.mode(i) != "modem"

    @property
    def pd_isps(self) -> list[int]:
        """The ISPs that delegate the gateway an IPv6 prefix by DHCPv6-PD (dhcp uplinks, dual-stack)."""
        return [i for i in range(1, self.isps + 1) if self.mode(i) == "dhcp" and self.ipv6]

    @property
    def dhcp_wans(self) -> list[str]:
        """The gateway's WANs whose address comes from DHCP (what the lab's DHCP client manages)."""
        return [f"wan{i}" for i in range(1, self.isps + 1) if self.mode(i) in DHCP_MODES]

    # --- names -------------------------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        """Namespace name prefix of this lab."""
        return f"{NS_PREFIX}{self.name}-"

    @property
    def isp_names(self) -> list[str]:
        return [f"isp{i}" for i in range(1, self.isps + 1)]

    @property
    def client_names(self) -> list[str]:
        return [f"c{k}" for k in range(1, self.clients + 1)]

    @property
    def gateways(self) -> list[str]:
        """The gateway nodes: `gw`, or an HA pair's gw1 and gw2."""
        return list(HA_GATEWAYS) if self.ha else ["gw"]

    @property
    def nodes(self) -> list[str]:
        """All nodes, in build order (a node's veth peers are created before it is configured)."""
        switch = [SWITCH] if self.ha else []
        return [*self.gateways, *switch, *self.isp_names, "inet", *self.client_names]

    def ns(self, node: str) -> str:
        """Full namespace name of a node."""
        if node not in self.nodes:
            raise TopologyError(f"unknown node {node!r}; nodes: {', '.join(self.nodes)}")
        return self.prefix + node

    def isp_index(self, isp: str) -> int:
        """Accept `isp2` or `2`; return 2."""
        m = re.fullmatch(r"(?:isp)?(\d+)", isp)
        if not m or not 1 <= int(m.group(1)) <= self.isps:
            raise TopologyError(f"unknown ISP {isp!r}; ISPs: {', '.join(self.isp_names)}")
        return int(m.group(1))

    @property
    def links(self) -> list[Link]:
        """Every veth pair of the lab. In an HA lab each gateway's WAN i ends in a port of ISP i's bridge named
        after the gateway, its lan0 in a port of the switch's bridge, and gw1 owns the sync link."""
        n = range(1, self.isps + 1)
        ups = [Link(f"isp{i}", ISP_UPLINK_IF, "inet", f"isp{i}") for i in n]
        if self.ha:
            wans = [Link(gw, f"wan{i}", f"isp{i}", gw) for gw in HA_GATEWAYS for i in n]
            lans = [Link(gw, LAN_IF, SWITCH, gw) for gw in HA_GATEWAYS]
            lans += [Link(SWITCH, f"lanp{k}", f"c{k}", CLIENT_IF) for k in range(1, self.clients + 1)]
            return [*wans, Link("gw1", SYNC_IF, "gw2", SYNC_IF), *ups, *lans]
        wans = [Link("gw", f"wan{i}", f"isp{i}", ISP_CUSTOMER_IF) for i in n]
        lans = [Link("gw", f"lanp{k}", f"c{k}", CLIENT_IF) for k in range(1, self.clients + 1)]
        return wans + ups + lans

    def bridges(self, node: str) -> dict[str, list[str]]:
        """A node's bridges and their ports: the single gateway's LAN (and DHCPv6-PD holders, with no ports);
        in an HA lab the switch's LAN and each ISP router's customer side, which both gateways plug into."""
        if node == "gw":
            return {LAN_IF: [f"lanp{k}" for k in range(1, self.clients + 1)]} | {pd_holder(i): [] for i in self.pd_isps}
        if self.ha and node == SWITCH:
            return {LAN_IF: [*HA_GATEWAYS, *(f"lanp{k}" for k in range(1, self.clients + 1))]}
        if self.ha and node in self.isp_names:
            return {ISP_CUSTOMER_IF: list(HA_GATEWAYS)}
        return {}

    def interfaces(self, node: str) -> list[str]:
        """A node's interfaces (no lo): its veth ends, then its bridges."""
        ends = [ln.a_if for ln in self.links if ln.a == node] + [ln.b_if for ln in self.links if ln.b == node]
        return ends + list(self.bridges(node))

    def customer_side(self, i: int) -> list[str]:
        """ISP router i's interfaces that `fail --mode link` sets down: its customer port, and in an HA lab that
        bridge's ports too (a bridge set down leaves its ports' carrier up: the gateways would see no fault)."""
        return [ISP_CUSTOMER_IF, *self.bridges(f"isp{i}").get(ISP_CUSTOMER_IF, [])]

    # --- an HA pair's facts (what keepalived and conntrackd will be rendered from) -----------------

    def ha_index(self, node: str) -> int:
        """1 for gw1, 2 for gw2; a TopologyError for anything else (and in a lab without HA)."""
        if not self.ha or node not in HA_GATEWAYS:
            what = "an HA lab's gateways are gw1 and gw2" if self.ha else "this lab has no HA pair (lab up --ha)"
            raise TopologyError(f"{node!r} is not a gateway of an HA pair: {what}")
        return HA_GATEWAYS.index(node) + 1

    def ha_node(self, node: str) -> HaNode:
        """The HA facts of gw1 or gw2 (see HaNode)."""
        g = self.ha_index(node)
        peer = 3 - g  # the other one of 1 and 2
        return HaNode(
            node=node,
            peer=HA_GATEWAYS[peer - 1],
            primary=g == 1,
            lan_interface=LAN_IF,
            lan_address=ha_lan_addr(g),
            lan_vip=LAN_VIP,
            wans=tuple(HaWan(f"isp{i}", f"wan{i}", ha_wan_addr(i, g), wan_vip(i)) for i in range(1, self.isps + 1)),
            sync_interface=SYNC_IF,
            sync_address=ha_sync_addr(g),
            peer_sync_address=ha_sync_addr(peer),
        )

    def lan_address(self, node: str) -> str:
        """A gateway node's own LAN address, bare: the one it always holds, so what it serves to the LAN (the
        API, ``lab up --api``) can listen there.  The single gateway's is LAN_GW; an HA gateway's is its own
        (192.168.77.2, .3), never the LAN VIP, which only the master holds (a backup could not bind it)."""
        if node not in self.gateways:
            raise TopologyError(f"{node!r} is no gateway of lab {self.name!r}: {', '.join(self.gateways)}")
        return self.ha_node(node).lan_address if self.ha else LAN_GW

    # --- build commands ----------------------------------------------------------------------------

    def sysctls(self, node: str) -> dict[str, str]:
        """Namespace sysctls per node. Without ``ipv6`` IPv6 is off everywhere so nothing but the lab's IPv4
        traffic flows; with it, addresses skip duplicate detection (they are usable at once) and routers
        forward."""
        off = "0" if self.ipv6 else "1"
        values = {"net.ipv6.conf.all.disable_ipv6": off, "net.ipv6.conf.default.disable_ipv6": off}
        if self.ipv6:
            # An interface set down loses its IPv6 addresses unless told to keep them (`fail --mode link`).
            for scope in ("all", "default"):
                values |= {f"net.ipv6.conf.{scope}.accept_dad": "0", f"net.ipv6.conf.{scope}.keep_addr_on_down": "1"}
            if node.startswith("isp") or node in self.gateways:
                values |= {"net.ipv6.conf.all.forwarding": "1"}
            if node in self.gateways and any(self.mode(i) == "dhcp" for i in range(1, self.isps + 1)):
                # Set up as for DHCP WANs with router advertisements (ifupdown's `accept_ra 2`), keeping only its
                # static addresses: the advertisements give the learned IPv6 next hop (gateway6: auto).
                for scope in ("all", "default"):
                    values |= {f"net.ipv6.conf.{scope}.accept_ra": "2", f"net.ipv6.conf.{scope}.autoconf": "0"}
        if node in self.gateways:
            # Forwarding like any router; loose rp_filter like a systemd-based distro, which the
            # per-ISP routing tables need (replies arrive on a WAN the main table does not point to).
            values |= {
                "net.ipv4.ip_forward": "1",
                "net.ipv4.conf.all.rp_filter": "2",
                "net.ipv4.conf.default.rp_filter": "2",
            }
        elif node.startswith("isp"):
            values |= {"net.ipv4.ip_forward": "1"}
        return values

    def addresses(self, node: str) -> dict[str, list[str]]:
        """A node's addresses (CIDR) per interface, both families with ``ipv6``."""
        four = self._addresses4(node)
        if not self.ipv6:
            return four
        for ifname, addrs in self._addresses6(node).items():
            four[ifname] = four.get(ifname, []) + addrs
        return four

    def _addresses6(self, node: str) -> dict[str, list[str]]:
        n = range(1, self.isps + 1)
        if node == "gw":
            return {LAN_IF: [f"{LAN6_GW}/64"]} | {f"wan{i}": [f"{wan6_addr(i)}/64"] for i in n if self.carries_ipv6(i)}
        if node == "inet":
            return {"lo": [f"{a}/128" for a in SERVER6_ADDRS]} | {f"isp{i}": [f"{inet6_addr(i)}/64"] for i in n}
        if node in self.isp_names:
            i = self.isp_index(node)
            if not self.carries_ipv6(i):
                return {}
            return {ISP_CUSTOMER_IF: [f"{isp6_gateway(i)}/64"], ISP_UPLINK_IF: [f"{isp6_uplink_addr(i)}/64"]}
        return {CLIENT_IF: [f"{client6_addr(self.client_names.index(node) + 1)}/64"]}

    def wan_addresses(self, i: int, lease: int = 0) -> tuple[list[str], list[str]]:
        """(the gateway's, the ISP router's) addresses on WAN i, as `ip addr add` arguments: a DHCP WAN's
        gateway end gets its address from the lab's DHCP server; ``lease`` is the DHCP lease or PPP session."""
        mode = self.mode(i)
        if mode == "p2p":
            local = p2p_local(i, lease)
            gw, isp = [f"{local} peer {isp_gateway(i)}/32"], [f"{isp_gateway(i)} peer {local}/32"]
        elif mode == "modem":
            gw, isp = [], [f"{MODEM_SUBNET}.1/24"]
        else:
            gw = [f"{wan_addr(i)}/24"] if mode == "static" else []
            isp = [f"{wan_subnet(i, lease)}.1/24"]
        if self.carries_ipv6(i):
            gw, isp = [*gw, f"{wan6_addr(i)}/64"], [*isp, f"{isp6_gateway(i)}/64"]
        return gw, isp

    def wan_link(self, i: int, lease: int = 0) -> tuple[list[str], list[str]]:
        """`ip -batch` lines that (re)create WAN i — (in the gateway, then in ISP router i): the veth, a point-to-
        point link's shared MAC and no ARP, the addresses, links up, the ISP's routes through it and the
        gateway's point-to-point default route (what pppd adds)."""
        peer = self.ns(f"isp{i}")
        gw = [f"link add name wan{i} type veth peer name {ISP_CUSTOMER_IF} netns {peer}"]
        isp: list[str] = []
        gw.append(self._wan_mac(i))
        if self.mode(i) == "p2p":
            isp.append(f"link set {ISP_CUSTOMER_IF} address {p2p_mac(i)} arp off")
        gw_addrs, isp_addrs = self.wan_addresses(i, lease)
        gw += [f"addr add {a} dev wan{i}" for a in gw_addrs] + [f"link set wan{i} up"]
        isp += [f"addr add {a} dev {ISP_CUSTOMER_IF}" for a in isp_addrs] + [f"link set {ISP_CUSTOMER_IF} up"]
        if self.mode(i) == "p2p":
            gw.append(f"route add default dev wan{i} metric {100 + i}")
        if self.carries_ipv6(i):
            isp += [f"route add {isp6_delegation(i, lease)} via {wan6_addr(i)}" for lease in (0, 1)]
        return gw, isp

    def _wan_mac(self, i: int, node: str = "gw") -> str:
        if self.mode(i) == "p2p":
            return f"link set wan{i} address {p2p_mac(i)} arp off"
        return f"link set wan{i} address {wan_mac(i, self.ha_index(node) if self.ha else 0)}"

    def _addresses4(self, node: str) -> dict[str, list[str]]:
        if self.ha and node in HA_GATEWAYS:  # its own addresses: the VIPs are keepalived's
            g = self.ha_index(node)
            wans = {f"wan{i}": [f"{ha_wan_addr(i, g)}/{WAN_PREFIX_LEN}"] for i in range(1, self.isps + 1)}
            sync = {SYNC_IF: [f"{ha_sync_addr(g)}/{SYNC_PREFIX_LEN}"]}
            return {LAN_IF: [f"{ha_lan_addr(g)}/{LAN_PREFIX_LEN}"]} | wans | sync
        if node == SWITCH:
            return {}
        if node == "gw":
            return {LAN_IF: [f"{LAN_GW}/{LAN_PREFIX_LEN}"]} | {
                f"wan{i}": [a for a in self.wan_addresses(i)[0] if ":" not in a] for i in range(1, self.isps + 1)
            }
        if node == "inet":
            return {"lo": [f"{a}/32" for a in SERVER_ADDRS]} | {
                f"isp{i}": [f"{inet_addr(i)}/24"] for i in range(1, self.isps + 1)
            }
        if node in self.isp_names:
            i = self.isp_index(node)
            return {ISP_CUSTOMER_IF: [a for a in self.wan_addresses(i)[1] if ":" not in a],
                    ISP_UPLINK_IF: [f"{isp_uplink_addr(i)}/24"]}  # fmt: skip
        return {CLIENT_IF: [f"{client_addr(self.client_names.index(node) + 1)}/{LAN_PREFIX_LEN}"]}

    def routes(self, node: str) -> list[str]:
        """A node's routes, as `ip route add` arguments (the IPv6 default is `::/0`: no `-6` in a batch)."""
        return self._routes4(node) + (self._routes6(node) if self.ipv6 else [])

    def routes6(self, node: str) -> list[str]:
        """A node's IPv6 routes (empty without ``ipv6``): the kernel deletes the ones through an interface
        set down, so healing a `link` failure puts them back."""
        return self._routes6(node) if self.ipv6 else []

    def _routes6(self, node: str) -> list[str]:
        n = range(1, self.isps + 1)
        if node == "gw":  # (a DHCP WAN's IPv6 default comes with the router advertisements)
            static = self.mode(1) in ("static", "p2p") and self.ipv6
            return [f"::/0 via {isp6_gateway(1)} dev wan1"] if static else []
        if node == "inet":
            nets = [(i, net) for i in n if self.carries_ipv6(i)
                    for net in (f"2001:db8:{i}::/64", isp6_delegation(i, 0), isp6_delegation(i, 1))]  # fmt: skip
            return [f"{net} via {isp6_uplink_addr(i)} dev isp{i}" for i, net in nets]
        if node in self.isp_names:
            i = self.isp_index(node)
            if not self.carries_ipv6(i):
                return []
            return [f"::/0 via {inet6_addr(i)} dev {ISP_UPLINK_IF}",
                    *(f"{isp6_delegation(i, lease)} via {wan6_addr(i)}" for lease in (0, 1))]  # fmt: skip
        return [f"::/0 via {LAN6_GW} dev {CLIENT_IF}"]

    def _routes4(self, node: str) -> list[str]:
        if node == SWITCH:
            return []
        if node in self.gateways:  # the main-table default any router has (a DHCP client or pppd adds their own)
            first = self.mode(1)
            routes = [f"default via {isp_gateway(1)} dev wan1"] if first == "static" else []
            return routes + [f"default dev wan{i} metric {100 + i}" for i in range(1, self.isps + 1)
                             if self.mode(i) == "p2p"]  # fmt: skip
        if node == "inet":
            return [f"{isp_customer_net(i, lease)} via {isp_uplink_addr(i)} dev isp{i}"
                    for i in range(1, self.isps + 1) for lease in (0, 1)]  # fmt: skip
        if node in self.isp_names:
            return [f"default via {inet_addr(self.isp_index(node))} dev {ISP_UPLINK_IF}"]
        return [f"default via {LAN_GW} dev {CLIENT_IF}"]

    def ip_batch(self, node: str) -> list[str]:
        """`ip -n NS -batch -` lines for one node: the veths it owns (each peer is created straight in the
        other namespace), addresses, links up, routes. Run in `nodes` order, so peers exist when used."""
        owned = [ln for ln in self.links if ln.a == node]
        bridges = self.bridges(node)
        lines = ["link set lo up"]
        lines += [f"link add name {bridge} type bridge" for bridge in bridges]
        lines += [f"link add name {ln.a_if} type veth peer name {ln.b_if} netns {self.ns(ln.b)}" for ln in owned]
        lines += [f"link set {port} master {bridge}" for bridge, ports in bridges.items() for port in ports]
        if node in self.gateways:
            lines += [self._wan_mac(i, node) for i in range(1, self.isps + 1)]
        elif node in self.isp_names and self.mode(self.isp_index(node)) == "p2p":
            lines.append(f"link set {ISP_CUSTOMER_IF} address {p2p_mac(self.isp_index(node))} arp off")
        lines += [f"addr add {a} dev {ifname}" for ifname, addrs in self.addresses(node).items() for a in addrs]
        lines += [f"link set {ifname} up" for ifname in self.interfaces(node)]
        lines += [f"route add {route}" for route in self.routes(node)]
        return lines

    def isp_nft(self, i: int) -> str:
        """ISP router i's ruleset: BCP38 anti-spoofing on the customer port, and an empty `fail` chain that
        fail modes fill. Counters are named so tests can read them (`nft list counter ip lab spoofed`).

        A packet from the customer with a LAN source (192.168.77.0/24) is one the gateway let out un-NATed;
        it is counted in `lan_leak` (and dropped) before the general anti-spoofing rule, so a leak is told
        apart from a reply that left through the wrong ISP (`spoofed`)."""
        return (
            f"table ip {NFT_TABLE} {{\n"
            f"    counter {SPOOF_COUNTER} {{\n    }}\n"
            f"    counter {FAIL_COUNTER} {{\n    }}\n"
            f"    counter {LAN_LEAK_COUNTER} {{\n    }}\n"
            "    chain forward {\n"
            "        type filter hook forward priority filter; policy accept;\n"
            f'        iifname "{ISP_CUSTOMER_IF}" ip saddr {LAN_PREFIX} counter name "{LAN_LEAK_COUNTER}" drop\n'
            f'        iifname "{ISP_CUSTOMER_IF}" ip saddr != {self._customer_nets(i)}'
            f' counter name "{SPOOF_COUNTER}" drop\n'
            "        jump fail\n"
            "    }\n"
            "    chain fail {\n"
            "    }\n"
            + (
                "    chain postrouting {\n"  # a modem NATs its LAN (the gateway's WAN) to its own address
                "        type nat hook postrouting priority srcnat; policy accept;\n"
                f'        oifname "{ISP_UPLINK_IF}" masquerade\n'
                "    }\n"
                if self.mode(i) == "modem"
                else ""
            )
            + "}\n"
        ) + (self._isp_nft6(i) if self.carries_ipv6(i) else "")

    def _customer_nets(self, i: int) -> str:
        if self.mode(i) == "modem":
            return f"{MODEM_SUBNET}.0/24"
        return f"{{ {isp_customer_net(i, 0)}, {isp_customer_net(i, 1)} }}"  # either lease

    def _isp_nft6(self, i: int) -> str:
        """The same for IPv6 in `table ip6 lab` (same counter names): ULA sources are leaks; only the link
        prefix and the ISP's netmap prefix may come from the customer."""
        return (
            f"table ip6 {NFT_TABLE} {{\n"
            f"    counter {SPOOF_COUNTER} {{\n    }}\n"
            f"    counter {FAIL_COUNTER} {{\n    }}\n"
            f"    counter {LAN_LEAK_COUNTER} {{\n    }}\n"
            "    chain forward {\n"
            "        type filter hook forward priority filter; policy accept;\n"
            f'        iifname "{ISP_CUSTOMER_IF}" ip6 saddr fc00::/7 counter name "{LAN_LEAK_COUNTER}" drop\n'
            f'        iifname "{ISP_CUSTOMER_IF}" ip6 saddr != {{ 2001:db8:{i}::/64, {isp6_delegation(i, 0)}, '
            f"{isp6_delegation(i, 1)} }}"
            f' counter name "{SPOOF_COUNTER}" drop\n'
            "        jump fail\n"
            "    }\n"
            "    chain fail {\n"
            "    }\n"
            "}\n"
        )

    # --- config ------------------------------------------------------------------------------------

    def config_yaml(self, socket_path: str, node: str = "gw") -> str:
        """The wanlb config for one gateway node of this lab (what the daemon in its namespace reads).

        An HA pair's two configs write every ISP's mark and table out, the same in both: a connection the
        backup takes over (its conntrack entry synced with its ct mark) must find that mark meaning the same
        ISP and table there, whatever each daemon's allocation history; their ``ha:`` sections make them a
        pair (``_ha_yaml``)."""
        if node not in self.gateways:
            raise TopologyError(f"{node!r} is no gateway of lab {self.name!r}: {', '.join(self.gateways)}")
        targets = ", ".join(HEALTH_TARGETS)
        lines = [
            f"# wanlb config for the network-namespace lab {self.name!r} (generated by `wanlb lab up`).",
            f"# The daemon runs inside the gateway namespace: ip netns exec {self.ns(node)} wanlb run ...",
            "lan:",
            f"  interfaces: [{LAN_IF}]",
            "isps:",
        ]
        if self.ipv6:
            lines.insert(4, f"  ipv6_prefixes: [{LAN6_PREFIX}]")
        if self.ha:
            pair = " and ".join(HA_GATEWAYS)
            lines.insert(2, f"# One of the HA pair {pair}: every mark and table is written out, the same in both.")
        for i, weight in enumerate(self.weights, start=1):
            mode = self.mode(i)
            lines += [
                f"  - name: isp{i}",
                f"    interface: wan{i}",
                f"    gateway: {isp_gateway(i) if mode == 'static' else 'auto'}"
                + ("" if mode == "static" else f"  # {mode}: learned from the route its client installs"),
                f"    weight: {weight}",
                "    tier: 1",
                *([f"    mark: {isp_mark(i):#x}", f"    table: {isp_table(i)}"] if self.ha else []),
                "    snat: masquerade",
                f"    health: {{ method: icmp, targets: [{targets}], quorum: 1, interval: 200ms }}",
            ]
            if self.carries_ipv6(i):  # IPv6 targets too: each family's health is its own
                lines[-1] = lines[-1].replace(f"[{targets}]", f"[{targets}, {', '.join(HEALTH6_TARGETS)}]")
                if mode == "dhcp":  # the next hop from the advertisements, the prefix delegated by DHCPv6-PD
                    lines += ["    gateway6: auto", f"    ipv6: {{ mode: netmap, prefix_from: {pd_holder(i)} }}"]
                else:
                    netmap = f"    ipv6: {{ mode: netmap, prefix: {isp6_prefix(i)} }}"
                    lines += [f"    gateway6: {isp6_gateway(i)}", netmap]
        lines += [
            "balance:",
            "  algorithm: weighted",
            "mark_mask: 0xff00",
            "local_traffic: true",
            "control:",
            f"  socket: {socket_path}",
        ]
        if self.ha:
            lines += self._ha_yaml(node)
        return "\n".join(lines) + "\n"

    def _ha_yaml(self, node: str) -> list[str]:
        """The pair's ``ha:`` section for one gateway: VRRPv3 every 100 ms, unicast to the peer over the LAN
        (the adverts go where the clients are; a dead peer's sync link losing carrier must not put the
        survivor in FAULT), gw1 preferred, the LAN VIP and one WAN VIP per ISP, conntrackd over sync0."""
        me = self.ha_node(node)
        peer = self.ha_node(me.peer)
        vips = ", ".join(f"{w.isp}: {w.vip}/24" for w in me.wans)
        return [
            "ha:",
            f"  node: {node}",
            f"  priority: {150 if me.primary else 100}",
            "  advert_interval: 100ms",
            "  preempt_delay: 3s",
            f"  unicast_peer: {peer.lan_address}",
            f"  lan_vip: {me.lan_vip}/{LAN_PREFIX_LEN}",
            f"  wan_vips: {{{vips}}}",
            f"  sync: {{interface: {me.sync_interface}, address: {me.sync_address}, peer: {me.peer_sync_address}}}",
        ]


def dhcp_server_argv(topo: Topology, i: int, lease: int, lease_file: str) -> list[str]:
    """dnsmasq as ISP i's DHCP server on its customer port (DNS off; no config file, no pid file): one
    address (the one the servers map back to ISP i) with the router, a 2-minute lease; authoritative, so a
    client that asks for an address of the other subnet after a lease change is told no (NAK) and starts
    over.  On a dual-stack ISP it sends router advertisements too (the gateway has autoconf off and keeps
    its static address; the advertisement gives it the next hop, a link-local one).  ``--bind-dynamic``
    follows the port when it is deleted and created again (unplug, replug)."""
    if topo.mode(i) == "modem":
        first, router = f"{MODEM_SUBNET}.100", f"{MODEM_SUBNET}.1"
    else:
        first, router = wan_addr(i) if not lease else f"{wan_subnet(i, 1)}.2", f"{wan_subnet(i, lease)}.1"
    argv = [
        "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--pid-file=",
        f"--interface={ISP_CUSTOMER_IF}", "--bind-dynamic", "--user=root", "--group=root",
        f"--dhcp-range={first},{first},255.255.255.0,{LEASE_TIME}", f"--dhcp-option=option:router,{router}",
        "--dhcp-authoritative", f"--dhcp-leasefile={lease_file}", "--log-dhcp", "--log-facility=-",
    ]  # fmt: skip
    if topo.carries_ipv6(i) and topo.mode(i) == "dhcp":
        ra = [f"--ra-param={ISP_CUSTOMER_IF},10,1800", f"--dhcp-range=::,constructor:{ISP_CUSTOMER_IF},ra-only"]
        argv += ["--enable-ra", *ra]
    return argv


def dhcp6_server_conf(i: int, lease: int) -> str:
    """ISC dhcpd's configuration for ISP i's DHCPv6 prefix delegation: one /56, short lifetimes."""
    prefix = isp6_delegation(i, lease).split("/")[0]
    return (
        f"# written by wanlb's lab: ISP {i}'s DHCPv6 server, prefix delegation only\n"
        "default-lease-time 120;\npreferred-lifetime 90;\nmax-lease-time 240;\n"
        f"subnet6 2001:db8:{i}::/64 {{\n  prefix6 {prefix} {prefix} /56;\n}}\n"
    )


def dhcp6_server_argv(conf: str, leases: str, pid: str) -> list[str]:
    """ISC dhcpd in DHCPv6 mode, in the foreground, on the ISP router's customer port."""
    return ["dhcpd", "-6", "-f", "-q", "-cf", conf, "-lf", leases, "-pf", pid, ISP_CUSTOMER_IF]


def dhcp_client_conf(topo: Topology) -> str:
    """dhcpcd's configuration: IPv4 leases on every DHCP WAN; on a dual-stack dhcp one also a DHCPv6
    delegated prefix, whose first /64 goes on that ISP's holder interface (the kernel takes the router
    advertisements, as wanlb's accept_ra 2 asks: ``noipv6rs``); no ARP probing of an offered address (a
    second less per lease); no hook scripts (the host's resolv.conf, NTP and hostname are never touched)."""
    lines = ["noipv6rs", "noarp", "script /bin/true"]
    for i in range(1, topo.isps + 1):
        if topo.mode(i) not in DHCP_MODES:
            continue
        lines.append(f"interface wan{i}")
        lines.append(f"  ia_pd 1 {pd_holder(i)}/0/64" if i in topo.pd_isps else "  ipv4only")
    return "\n".join(lines) + "\n"


def dhcp_client_argv(topo: Topology) -> list[str]:
    """dhcpcd for the gateway's DHCP WANs, in the foreground: IPv4 leases only (the kernel takes the router
    advertisements, as wanlb's accept_ra 2 asks), no ARP probing of the offered address (a second less per
    lease), no config file and no hook scripts (it must never rewrite the host's resolv.conf, NTP or
    hostname).  It runs in a mount namespace of its own (``ip netns exec`` makes one) with private /run and
    /var/lib/dhcpcd: its pid file, control socket and lease files never meet another lab's, or the host's."""
    conf = "/run/dhcpcd/dhcpcd.conf"  # written inside its own /run: a SIGHUP (rebind) reads it again
    script = (
        "mount -t tmpfs tmpfs /run && mkdir /run/dhcpcd && mount -t tmpfs tmpfs /var/lib/dhcpcd"
        f' && printf "%s" "$1" > {conf} && shift && exec "$@"'
    )
    options = ["--nobackground", "--nodev", "--config", conf, "--allowinterfaces", ",".join(topo.dhcp_wans)]
    return ["sh", "-c", script, "dhcpcd", dhcp_client_conf(topo), "dhcpcd", *options]


def gateway_nat_nft() -> str:
    """A plain masquerade on every WAN for the gateway, as a single-WAN router has. Only for checking the
    lab itself without the daemon (`Lab.up(plain_nat=True)`): with the daemon the SNAT must be its own."""
    return (
        f"table ip {NFT_TABLE} {{\n"
        "    chain postrouting {\n"
        "        type nat hook postrouting priority srcnat; policy accept;\n"
        '        oifname "wan*" masquerade\n'
        "    }\n"
        "}\n"
    )


def vip_nat_nft(isps: int) -> str:
    """`Lab.up(plain_nat=True)` for an HA pair, in both gateways: LAN sources leaving WAN i are SNATed to its
    VIP, so after a takeover the servers (and the ISP) still see the same customer address; the gateway's
    own traffic keeps its own address, so the backup's pings and probes get their replies back."""
    rules = "".join(
        f'        oifname "wan{i}" ip saddr {LAN_PREFIX} snat ip to {wan_vip(i)}\n' for i in range(1, isps + 1)
    )
    return (
        f"table ip {NFT_TABLE} {{\n"
        "    chain postrouting {\n"
        "        type nat hook postrouting priority srcnat; policy accept;\n"
        f"{rules}"
        "    }\n"
        "}\n"
    )


def fail_nft(mode: FailMode | None, ipv6: bool = False, only: int | None = None) -> str:
    """nft commands that replace the `fail` chain's content: empty for None (healed) and for `link`
    (done with the link state), a drop of every forwarded packet for blackhole, a random drop for loss.
    With ``ipv6`` the `ip6` table's chain gets the same, unless ``only`` (4 or 6) names one family: the
    other family's chain is emptied."""
    cmds = []
    for family in ("ip", "ip6") if ipv6 else ("ip",):
        cmds.append(f"flush chain {family} {NFT_TABLE} fail")
        if only is not None and family != {4: "ip", 6: "ip6"}[only]:
            continue
        if mode is not None and mode.kind == "blackhole":
            cmds.append(f'add rule {family} {NFT_TABLE} fail counter name "{FAIL_COUNTER}" drop')
        elif mode is not None and mode.kind == "loss":
            # numgen's modulus bounds the comparison to 0..99, so 100 % is an unconditional drop
            chance = f"numgen random mod 100 < {mode.percent} " if mode.percent < 100 else ""
            cmds.append(f'add rule {family} {NFT_TABLE} fail {chance}counter name "{FAIL_COUNTER}" drop')
    return "\n".join(cmds) + "\n"
