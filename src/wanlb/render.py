"""Rendering: desired state → nft ruleset text and routing intent.  Pure.

Where a packet's fate is decided (read this first):

* ``prerouting`` (mangle priority) — packets from the LAN jump to ``from_lan``:
  a connection that already carries an ISP mark in its ct mark has it copied
  into the packet mark (``restore_<isp>``); a NEW IPv4 connection to a
  non-local, non-connected destination goes to ``balance``, where a weighted
  ``numgen`` map picks an ISP chain (``isp_<isp>``) that sets both the packet
  mark and the ct mark.  Every packet arriving on a WAN gets that WAN's mark
  (for the reverse-path check); a NEW connection arriving *inbound* on a WAN
  also gets it as ct mark, so its replies leave the same way.
* ``output`` (type route) does the same for traffic the gateway originates.
* ``ip rule fwmark MARK/MASK lookup TABLE`` sends each mark to its ISP table; a
  rule before them (``suppress_prefixlength 0``) lets more specific main-table
  routes win, and an ``unreachable`` rule after them keeps a marked packet from
  ever leaking out of another ISP when its table has no route.
* ``postrouting`` (srcnat) applies each ISP's SNAT, matched on its mark and
  its egress interface.

Only the bits of ``mark_mask`` are read or written; other mark bits belong to
whoever else uses them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from wanlb.plan import Desired, IspPlan

TABLE = "wanlb"
FAMILY = "inet"
ALL_BITS = 0xFFFFFFFF

# Rule priority offsets from config.routing.rule_priority.
SUPPRESS_OFFSET = 0
LOOKUP_OFFSET = 10
GUARD_OFFSET = 100
LAST_RESORT_OFFSET = 200
PRIORITY_SPAN = 1000  # every rule wanlb owns lies in [rule_priority, rule_priority + PRIORITY_SPAN)


@dataclass(frozen=True, order=True)
class Rule:
    """An ip rule.  ``action`` is ``lookup`` (with ``table``), ``unreachable`` or ``blackhole``."""

    priority: int
    action: str
    table: int = 0
    fwmark: int | None = None
    fwmask: int | None = None
    suppress_prefixlength: int | None = None

    def describe(self) -> str:
        parts = [f"{self.priority}:", "from all"]
        if self.fwmark is not None:
            parts.append(f"fwmark {self.fwmark:#x}/{self.fwmask:#x}")
        if self.action == "lookup":
            parts.append(f"lookup {'main' if self.table == 254 else self.table}")
        else:
            parts.append(self.action)
        if self.suppress_prefixlength is not None:
            parts.append(f"suppress_prefixlength {self.suppress_prefixlength}")
        return " ".join(parts)


@dataclass(frozen=True, order=True)
class Route:
    """A route in one of wanlb's tables; ``gateway`` None means directly connected (scope link)."""

    table: int
    dst: ipaddress.IPv4Network
    dev: str
    gateway: ipaddress.IPv4Address | None = None
    prefsrc: ipaddress.IPv4Address | None = None

    def describe(self) -> str:
        dst = "default" if self.dst.prefixlen == 0 else str(self.dst)
        via = f" via {self.gateway}" if self.gateway else " scope link"
        src = f" src {self.prefsrc}" if self.prefsrc else ""
        return f"{dst}{via} dev {self.dev}{src} table {self.table}"


@dataclass(frozen=True)
class RoutingIntent:
    rules: tuple[Rule, ...]
    routes: tuple[Route, ...]
    tables: tuple[int, ...]
    sysctls: tuple[tuple[str, str], ...]  # (/proc/sys path relative key, value)
    protocol: int
    priority_range: tuple[int, int]


@dataclass(frozen=True)
class Rendered:
    nft: str
    routing: RoutingIntent

    def describe(self) -> str:
        """Human-readable text of everything that would be applied (``wanlb render``)."""
        out = ["# nft -f - (one atomic transaction)", self.nft.rstrip(), "", "# ip rules"]
        out += [r.describe() for r in self.routing.rules]
        out += ["", "# routes"]
        out += [r.describe() for r in self.routing.routes]
        out += ["", "# sysctls"]
        out += [f"{k} = {v}" for k, v in self.routing.sysctls]
        return "\n".join(out) + "\n"


def _hex(value: int) -> str:
    return f"{value:#x}"


def _set_isp_mark(target: str, isp: IspPlan, mask: int) -> str:
    clear = ALL_BITS & ~mask
    return f"{target} mark set {target} mark & {_hex(clear)} | {_hex(isp.mark)}"


def _restore_vmap(desired: Desired) -> str:
    entries = ", ".join(f"{_hex(i.mark)} : goto restore_{i.name}" for i in desired.isps)
    return f"ct mark & {_hex(desired.mark_mask)} vmap {{ {entries} }}"


def _balance_map(desired: Desired) -> str:
    """A weighted map: ``numgen inc mod TOTAL`` → consecutive ranges per active ISP.

    ``inc`` (not ``random``) makes the shares exact over any window of TOTAL
    connections instead of only on average.
    """
    total = sum(w for _, w in desired.weights)
    entries = []
    start = 0
    for name, weight in desired.weights:
        end = start + weight - 1
        key = str(start) if start == end else f"{start}-{end}"
        entries.append(f"{key} : goto isp_{name}")
        start = end + 1
    return f"numgen inc mod {total} vmap {{ {', '.join(entries)} }}"


def _bypass_elements(desired: Desired) -> str:
    nets = ipaddress.collapse_addresses(desired.bypass)
    return ", ".join(str(n) for n in nets)


def _classify_new(desired: Desired) -> list[str]:
    """Rules shared by from_lan and output: which NEW connections get balanced."""
    lines = [
        "ct state != new return",
        "meta nfproto != ipv4 return",
        "fib daddr type { local, broadcast, multicast } return",
    ]
    if desired.bypass:
        lines.append("ip daddr @bypass return")
    if desired.active:
        lines.append("goto balance")
    return lines


def render_nft(desired: Desired) -> str:
    """The whole ``inet wanlb`` table as one transaction that replaces any previous version."""
    mask = desired.mark_mask
    out: list[str] = [
        f"table {FAMILY} {TABLE} {{}}",
        f"delete table {FAMILY} {TABLE}",
        f"table {FAMILY} {TABLE} {{",
    ]

    def chain(name: str, body: list[str], hook: str | None = None) -> None:
        out.append(f"\tchain {name} {{")
        if hook:
            out.append(f"\t\t{hook}")
        out.extend(f"\t\t{line}" for line in body)
        out.append("\t}")

    if desired.bypass:
        out += [
            "\tset bypass {",
            "\t\ttype ipv4_addr",
            "\t\tflags interval",
            f"\t\telements = {{ {_bypass_elements(desired)} }}",
            "\t}",
        ]
    for isp in desired.isps:
        chain(f"restore_{isp.name}", [_set_isp_mark("meta", isp, mask)])
        chain(f"isp_{isp.name}", [_set_isp_mark("meta", isp, mask), _set_isp_mark("ct", isp, mask)])
    if desired.active:
        chain("balance", [_balance_map(desired)])

    chain("from_lan", [_restore_vmap(desired), *_classify_new(desired)])

    lan = ", ".join(f'"{i}"' for i in desired.lan_interfaces)
    prerouting = []
    for i in desired.isps:
        # Every packet from a WAN carries that WAN's mark, so the reverse-path check (src_valid_mark)
        # validates it against its own ISP table, not the main table: replies still pass when main
        # has no default route or the all-down last resort is unreachable.
        prerouting.append(f'iifname "{i.interface}" {_set_isp_mark("meta", i, mask)}')
        new_inbound = f"ct state new ct mark & {_hex(mask)} == 0"
        prerouting.append(f'iifname "{i.interface}" {new_inbound} {_set_isp_mark("ct", i, mask)}')
    prerouting.append(f"iifname {{ {lan} }} jump from_lan")
    chain("prerouting", prerouting, "type filter hook prerouting priority mangle; policy accept;")

    output = ['oifname "lo" return', _restore_vmap(desired)]
    if desired.local_traffic:
        # A socket that set its own mark in our bits (a health probe) keeps it.
        output.append(f"meta mark & {_hex(mask)} != 0 return")
        output += _classify_new(desired)
    chain("output", output, "type route hook output priority mangle; policy accept;")

    postrouting = []
    for isp in desired.isps:
        if isp.snat == "none":
            continue
        action = "masquerade" if isp.snat == "masquerade" else f"snat ip to {isp.snat}"
        postrouting.append(f'meta mark & {_hex(mask)} == {_hex(isp.mark)} oifname "{isp.interface}" {action}')
        # Unmarked traffic that the main table sends out this WAN (last resort
        # "main", connections older than wanlb) still needs its address rewritten.
        postrouting.append(f'meta mark & {_hex(mask)} == 0 oifname "{isp.interface}" {action}')
    chain("postrouting", postrouting, "type nat hook postrouting priority srcnat; policy accept;")
    out.append("}")
    return "\n".join(out) + "\n"


def render_routing(desired: Desired) -> RoutingIntent:
    """Rules, routes and sysctls for the desired state.

    Every ISP keeps its table and rules while it is down, so its probes still
    leave through it and its recovery can be seen.
    """
    base = desired.rule_priority
    mask = desired.mark_mask
    rules = [Rule(base + SUPPRESS_OFFSET, "lookup", table=254, suppress_prefixlength=0)]
    routes: list[Route] = []
    for index, isp in enumerate(desired.isps):
        rules.append(Rule(base + LOOKUP_OFFSET + index, "lookup", table=isp.table, fwmark=isp.mark, fwmask=mask))
        rules.append(Rule(base + GUARD_OFFSET + index, "unreachable", fwmark=isp.mark, fwmask=mask))
        routes.append(Route(isp.table, ipaddress.IPv4Network("0.0.0.0/0"), isp.interface, gateway=isp.gateway))
        routes += [Route(isp.table, c.dst, c.dev, prefsrc=c.prefsrc) for c in desired.connected]
    if not desired.active and desired.last_resort != "main":
        rules.append(Rule(base + LAST_RESORT_OFFSET, desired.last_resort))
    sysctls = [("net/ipv4/ip_forward", "1")]
    for isp in desired.isps:
        conf = f"net/ipv4/conf/{isp.interface}"
        sysctls += [(f"{conf}/rp_filter", "2"), (f"{conf}/src_valid_mark", "1")]
    return RoutingIntent(
        rules=tuple(sorted(rules)),
        routes=tuple(sorted(routes)),
        tables=tuple(i.table for i in desired.isps),
        sysctls=tuple(sysctls),
        protocol=desired.route_protocol,
        priority_range=(base, base + PRIORITY_SPAN),
    )


def render(desired: Desired) -> Rendered:
    return Rendered(nft=render_nft(desired), routing=render_routing(desired))
