"""Rendering: desired state → nft objects and routing intent.  Pure.

Where a packet's fate is decided (read this first):

* ``prerouting`` (mangle priority) — IPv4, and IPv6 only when an ISP carries
  it (then NEW IPv6 connections from the LAN go through ``from_lan6``: weighted
  into the same ISP chains, netmapped or masqueraded in ``postrouting``;
  otherwise IPv6 passes unmarked and untranslated).  A NEW connection to a
  port with a conntrack helper (FTP by default) gets it, so its data
  connections are RELATED and inherit its mark.  Packets of a removed ISP's
  connections (``retired`` marks) are dropped until the flush catches them.
  Packets from the LAN jump to ``from_lan``: a connection that already carries
  an ISP mark in its ct mark has it copied into the packet mark
  (``restore_<isp>``); a NEW connection to a non-local, non-connected
  destination goes to ``balance``, where a weighted ``numgen`` map picks an ISP
  chain (``isp_<isp>``) that sets both the packet mark and the ct mark.  Every
  packet arriving on a WAN gets that WAN's mark (for the reverse-path check); a
  NEW connection arriving *inbound* on a WAN also gets it as ct mark, so its
  replies leave the same way.
* ``output`` (type route) does the same for traffic the gateway originates.
* ``ip rule fwmark MARK/MASK lookup TABLE`` sends each mark to its ISP table; a
  rule before them (``suppress_prefixlength 0``) lets more specific main-table
  routes win, and an ``unreachable`` rule after them keeps a marked packet from
  ever leaking out of another ISP when its table has no route.
* ``postrouting`` (srcnat) applies each ISP's SNAT, matched on its mark and
  its egress interface.
* ``inbound6`` (dstnat; only with an ISP's ``ipv6.inbound``) maps connections to that ISP's netmap
  prefix back to the LAN host with the same host bits.
* ``egress`` (after srcnat) is the last word before a packet leaves a WAN:
  LAN packets conntrack calls INVALID (say, the retransmitted FIN of a flushed
  connection) and anything still carrying a LAN source are dropped and counted,
  never sent un-NATed.

Only the bits of ``mark_mask`` are read or written; other mark bits belong to
whoever else uses them.  Named counters (``isp_<name>_rx/_tx/_new``,
``invalid_dropped``, ``leak_dropped``) and the dynamic ``clients`` set are
stable objects: :mod:`wanlb.nftsync` changes the table around them.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby

from wanlb.config import RuleConfig
from wanlb.nftsync import FAMILY, TABLE, Chain, Counter, Helper, Object, Set, Table, full_text
from wanlb.plan import Desired, IspPlan
from wanlb.policy import DEFAULT, HASH_SEED, PolicyPlan
from wanlb.rules import CompiledRules, compile_rules

ALL_BITS = 0xFFFFFFFF
CLIENTS_SET = "clients"
HA_GUARD_COUNTER = "ha_nonsyn_dropped"  # NEW TCP packets that are not a SYN, dropped on an HA node
CLIENTS_TIMEOUT = 900  # seconds a LAN client counts as active after its last NEW connection
HASH_KEYS = {"src": "ip saddr", "dst": "ip daddr", "proto": "meta l4proto", "sport": "th sport", "dport": "th dport"}
# IPv6 destinations never balanced: link-local and multicast, the gateway itself, LAN and connected prefixes.
_NOT_BALANCED6 = (
    "ip6 daddr { fe80::/10, ff00::/8 } return",
    "fib daddr type { local, multicast } return",
    "ip6 daddr @bypass6 return",
)
HASH_KEYS6 = HASH_KEYS | {"src": "ip6 saddr", "dst": "ip6 daddr"}

# Rule priority offsets from config.routing.rule_priority.
SUPPRESS_OFFSET = 0
LOOKUP_OFFSET = 10  # + the ISP's slot (0..255)
FROM_OFFSET = 200  # + the ISP's slot: `from PREFIX lookup TABLE` of a routed IPv6 ISP
GUARD_OFFSET = 300  # + the ISP's slot
LAST_RESORT_OFFSET = 600
PRIORITY_SPAN = 1000  # every rule wanlb owns lies in [rule_priority, rule_priority + PRIORITY_SPAN)

# Conntrack helpers wanlb can assign: config name -> ((kernel helper type, protocol, port), ...).
HELPERS: dict[str, tuple[tuple[str, str, int], ...]] = {
    "ftp": (("ftp", "tcp", 21),),
    "tftp": (("tftp", "udp", 69),),
    "irc": (("irc", "tcp", 6667),),
    "sip": (("sip", "udp", 5060),),
    "pptp": (("pptp", "tcp", 1723),),
    "h323": (("RAS", "udp", 1719), ("Q.931", "tcp", 1720)),
    "amanda": (("amanda", "udp", 10080),),
    "sane": (("sane", "tcp", 6566),),
    "snmp": (("snmp", "udp", 161),),
    "netbios-ns": (("netbios-ns", "udp", 137),),
}


@dataclass(frozen=True, order=True)
class Rule:
    """An ip rule.  ``action`` is ``lookup`` (with ``table``), ``unreachable`` or ``blackhole``."""

    priority: int
    action: str
    table: int = 0
    fwmark: int | None = None
    fwmask: int | None = None
    suppress_prefixlength: int | None = None
    protocol: int = 0
    family: int = 4  # 4 or 6: `ip rule` and `ip -6 rule` are separate lists
    src: ipaddress.IPv6Network | None = None  # `from PREFIX` (a routed IPv6 ISP's prefix); None: from all

    def describe(self) -> str:
        parts = ["-6"] if self.family == 6 else []
        parts += [f"{self.priority}:", f"from {self.src or 'all'}"]
        if self.fwmark is not None:
            parts.append(f"fwmark {self.fwmark:#x}/{self.fwmask:#x}")
        if self.action == "lookup":
            parts.append(f"lookup {'main' if self.table == 254 else self.table}")
        else:
            parts.append(self.action)
        if self.suppress_prefixlength is not None:
            parts.append(f"suppress_prefixlength {self.suppress_prefixlength}")
        parts.append(f"proto {self.protocol}")
        return " ".join(parts)


@dataclass(frozen=True)
class Route:
    """A route in one of wanlb's tables; ``gateway`` None means directly connected (scope link)."""

    table: int
    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    dev: str
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    protocol: int = 0

    @property
    def family(self) -> int:
        return self.dst.version

    def _key(self) -> tuple[object, ...]:
        return (self.table, self.family, self.dst, self.dev, str(self.gateway or ""), self.protocol)

    def __lt__(self, other: Route) -> bool:  # IPv4 and IPv6 networks do not compare with each other
        return self._key() < other._key()

    def describe(self) -> str:
        dst = "default" if self.dst.prefixlen == 0 else str(self.dst)
        via = f" via {self.gateway}" if self.gateway else " scope link"
        return f"{'-6 ' if self.family == 6 else ''}{dst}{via} dev {self.dev} table {self.table} proto {self.protocol}"


@dataclass(frozen=True)
class RoutingIntent:
    rules: tuple[Rule, ...]
    routes: tuple[Route, ...]
    sysctls: tuple[tuple[str, str], ...]  # (/proc/sys relative key, value)
    protocol: int
    # Sysctls written only while they hold this value, never fought for: accept_ra is raised from 1 to 2,
    # but a 0 means the uplink's client handles router advertisements itself (dhcpcd, systemd-networkd).
    only_from: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Rendered:
    nft: Table
    routing: RoutingIntent

    def describe(self) -> str:
        """Human-readable text of everything that would be applied (``wanlb render``)."""
        out = ["# nft -f - (one atomic transaction; later changes touch only what differs)"]
        out += [full_text(self.nft).rstrip(), "", "# ip rules"]
        out += [r.describe() for r in self.routing.rules]
        out += ["", "# routes"]
        out += [r.describe() for r in self.routing.routes]
        out += ["", "# sysctls"]
        only = dict(self.routing.only_from)
        out += [f"{k} = {v}" + (f"  (only if it is {only[k]})" if k in only else "") for k, v in self.routing.sysctls]
        return "\n".join(out) + "\n"


def _hex(value: int) -> str:
    return f"{value:#x}"


def _set_isp_mark(target: str, isp: IspPlan, mask: int) -> str:
    clear = ALL_BITS & ~mask
    return f"{target} mark set {target} mark & {_hex(clear)} | {_hex(isp.mark)}"


def _names(names: tuple[str, ...] | list[str]) -> str:
    return "{ " + ", ".join(f'"{n}"' for n in names) + " }"


def _restore_vmap(desired: Desired) -> str:
    entries = ", ".join(f"{_hex(i.mark)} : goto restore_{i.name}" for i in desired.isps)
    return f"ct mark & {_hex(desired.mark_mask)} vmap {{ {entries} }}"


def _ranges(owners: list[str], target: Callable[[str], str]) -> str:
    """``0-2 : goto A, 3 : goto B`` for consecutive keys with the same owner."""
    entries = []
    start = 0
    for end in range(len(owners)):
        if end + 1 == len(owners) or owners[end + 1] != owners[start]:
            key = str(start) if start == end else f"{start}-{end}"
            entries.append(f"{key} : goto {target(owners[start])}")
            start = end + 1
    return ", ".join(entries)


def sticky_set(policy: PolicyPlan, isp: str, family: int = 4) -> str:
    return f"sticky{'6' if family == 6 else ''}_{policy.chain}_{isp}"


def sticky_sets(desired: Desired, isp: str, family: int = 0) -> list[str]:
    """The sticky sets that pin clients to ``isp`` (emptied when it goes down): of one family, or both (0)."""
    names = []
    if family in (0, 4):
        names += [sticky_set(p, isp) for p in desired.policies if p.sticky and isp in p.members]
    if family in (0, 6):
        names += [sticky_set(p, isp, 6) for p in desired.policies6 if p.sticky and isp in p.members]
    return names


def forget_clients(desired: Desired, isp: str, family: int = 0) -> str:
    """The nft transaction that empties the sets pinning clients to ``isp`` (of one family, or both): their
    next connection is balanced afresh.  Empty when no policy of ``isp`` is sticky."""
    return "".join(f"flush set {FAMILY} {TABLE} {name}\n" for name in sticky_sets(desired, isp, family))


def _policy_objects(desired: Desired, policy: PolicyPlan, family: int = 4) -> list[Object]:
    """A policy's chain: sticky lookups, then the algorithm's pick among its active ISPs.

    For IPv6 (``family`` 6) the same policy, planned over the ISPs that carry IPv6, is chain
    ``<chain>_6`` with IPv6 keys and sets; it marks with the same ``isp_<name>`` chains.

    ``numgen inc`` (not ``random``) makes weighted shares exact over any window
    of TOTAL connections instead of only on average (not for the weights the
    daemon keeps adjusting, see below).  With ``sticky``, a NEW
    connection from a client found in an active ISP's set goes there (and
    refreshes the entry); any other is picked by the algorithm and recorded in
    the set of the ISP it got (``pick_`` chains).
    """
    objects: list[Object] = []
    sticky = policy.sticky
    ip, suffix, addr = ("ip6", "_6", "ipv6_addr") if family == 6 else ("ip", "", "ipv4_addr")
    chain = policy.chain + suffix
    key = f"{ip} saddr" if sticky is None or sticky.by == "source" else f"{ip} saddr . {ip} daddr"
    target = (lambda isp: f"isp_{isp}") if sticky is None else (lambda isp: f"pick_{chain}_{isp}")
    lines = []
    if sticky is not None:
        kind = addr if sticky.by == "source" else f"{addr} . {addr}"
        timeout = max(1, round(sticky.timeout))
        for isp in policy.members:
            name = sticky_set(policy, isp, family)
            objects.append(Set(name, kind, ("dynamic", "timeout"), None, timeout=timeout, size=65535))
            objects.append(Chain(f"pick_{chain}_{isp}", (f"update @{name} {{ {key} }}", f"goto isp_{isp}")))
        for isp, _ in policy.active:
            name = sticky_set(policy, isp, family)
            lines.append(f"{key} @{name} update @{name} {{ {key} }} goto isp_{isp}")
    if policy.algorithm == "hash" and policy.buckets:
        fields = " . ".join((HASH_KEYS6 if family == 6 else HASH_KEYS)[f] for f in policy.hash_fields)
        seed = _hex(HASH_SEED)
        lines.append(
            f"jhash {fields} mod {len(policy.buckets)} seed {seed} vmap {{ {_ranges(list(policy.buckets), target)} }}"
        )
    elif policy.active:
        owners = [isp for isp, weight in policy.active for _ in range(weight)]
        if len(policy.active) == 1:
            lines.append(f"goto {target(policy.active[0][0])}")
        else:
            # The daemon rewrites least-conn/latency weights every few seconds, and each rewrite restarts an
            # ``inc`` counter at 0, which would favour the first ISPs of the map: those draw at random.
            gen = "random" if policy.algorithm in ("least-conn", "latency") else "inc"
            lines.append(f"numgen {gen} mod {len(owners)} vmap {{ {_ranges(owners, target)} }}")
    elif policy.on_unavailable == "drop":
        lines.append("drop")
    elif policy.on_unavailable == "unreachable":
        lines.append("reject with icmpx type host-unreachable")
    elif policy.chain != "balance" and (desired.balance6 if family == 6 else desired.active):
        lines.append(f"goto balance{suffix}")
    objects.append(Chain(chain, tuple(lines)))
    return objects


def _rule_verdict(rule: RuleConfig) -> str:
    if rule.action == "bypass":
        return "return"  # no mark: the main table routes it
    if rule.action == "drop":
        return "drop"
    if rule.via is not None:
        return f"goto via_{rule.via}"
    return "goto balance" if rule.policy == DEFAULT else f"goto policy_{rule.policy}"


def _rule_verdict_dual(rule: RuleConfig) -> tuple[str, ...]:
    """The verdict when IPv6 is balanced too: an IPv6 packet goes to the policy's IPv6 chain."""
    verdict = _rule_verdict(rule)
    return (f"meta nfproto ipv6 {verdict}_6", verdict) if verdict.startswith("goto ") else (verdict,)


@functools.lru_cache(maxsize=8)
def _compiled(
    rules: tuple[RuleConfig, ...], domain_timeout: int, ipv6: bool = False, inactive: frozenset[str] = frozenset()
) -> CompiledRules:
    """The rules compiled once per config and schedule state (models are immutable): every resync and verify
    renders them."""
    return compile_rules(rules, _rule_verdict_dual if ipv6 else _rule_verdict, domain_timeout, inactive=inactive)


@functools.lru_cache(maxsize=8)
def _compiled6(
    rules: tuple[RuleConfig, ...], domain_timeout: int, inactive: frozenset[str] = frozenset()
) -> CompiledRules:
    """The IPv6 lookups of the rules (and their maps and IPv6 domain sets), for ``from_lan6``."""
    return compile_rules(rules, _rule_verdict_dual, domain_timeout, family=6, inactive=inactive)


def rule_lookups(rules: tuple[RuleConfig, ...]) -> tuple[int, int]:
    """(verdict maps, single rules) that ``rules`` compile to: what a NEW connection walks (``wanlb check``)."""
    lookups = _compiled(rules, 3600).lookups
    maps = sum(1 for line in lookups if " vmap @rules_" in line)
    return maps, len(lookups) - maps


def _classify_new(desired: Desired, rules: tuple[str, ...] = ()) -> list[str]:
    """Rules shared by from_lan and output: which NEW connections get a rule's target or balance."""
    lines = [
        "ct state != new return",
        "fib daddr type { local, broadcast, multicast } return",
    ]
    if desired.bypass:
        lines.append("ip daddr @bypass return")
    lines += rules
    if desired.active:
        lines.append("goto balance")
    return lines


def _helper_objects(desired: Desired) -> list[Helper]:
    return [Helper(f"helper_{kind.lower().replace('.', '')}", kind, proto)
            for name in desired.helpers for kind, proto, _port in HELPERS[name]]  # fmt: skip


def _helper_rules(desired: Desired) -> list[str]:
    rules = []
    for name in desired.helpers:
        for kind, proto, port in HELPERS[name]:
            helper = f"helper_{kind.lower().replace('.', '')}"
            only4 = "meta nfproto ipv4 " if desired.ipv6 else ""  # the helper objects are l3proto ip
            rules.append(f'{only4}ct state new {proto} dport {port} ct helper set "{helper}"')
    return rules


def _retired_rules(desired: Desired) -> list[str]:
    """Drop packets of connections whose ISP is gone: the flush removes them; nothing may route them meanwhile."""
    rules = []
    for mask, group in groupby(sorted(desired.retired, key=lambda r: (r.mask, r.mark)), key=lambda r: r.mask):
        marks = ", ".join(_hex(r.mark) for r in group)
        rules.append(f"ct mark & {_hex(mask)} {{ {marks} }} drop")
    return rules


def _ipv6_objects(desired: Desired, lookups: tuple[str, ...]) -> list[Object]:
    """The LAN's IPv6 prefixes, the IPv6 destinations never balanced, and the IPv6 NEW-connection path.

    Neighbour discovery, router advertisements and anything to link-local or multicast addresses is
    never marked: ``from_lan6`` returns before balancing it (it has no conntrack entry to restore).
    Then the rules' IPv6 lookups (their IPv6 addresses, and those without addresses), whose chains send
    IPv6 to the policies' ``_6`` chains, and the default policy's ``balance_6``.
    """
    lan6 = tuple(str(n) for n in ipaddress.collapse_addresses(desired.lan6))
    nat6 = tuple(str(n) for n in ipaddress.collapse_addresses(desired.lan6_nat))
    bypass6 = tuple(str(n) for n in ipaddress.collapse_addresses(desired.bypass6))
    lines = [*_NOT_BALANCED6, "ip6 saddr != @lan6 return"]
    # A routed ISP's own prefix: its source decides, whatever the balance (it is not translated).
    lines += [f"ip6 saddr {isp.prefix6} goto isp_{isp.name}" for isp in desired.routed6]
    objects: list[Object] = [
        Set("lan6", "ipv6_addr", ("interval",), lan6),
        Set("lan6_nat", "ipv6_addr", ("interval",), nat6),
        Set("bypass6", "ipv6_addr", ("interval",), bypass6),
    ]
    lines += lookups
    lines.append("goto balance_6")
    objects.append(Chain("from_lan6", tuple(lines)))
    return objects


def render_nft(desired: Desired) -> Table:
    """The ``inet wanlb`` table wanted for ``desired``."""
    mask = desired.mark_mask
    objects: list[Object] = [Counter("invalid_dropped"), Counter("leak_dropped")]
    for isp in desired.isps:
        objects += [Counter(f"isp_{isp.name}_rx"), Counter(f"isp_{isp.name}_tx"), Counter(f"isp_{isp.name}_new")]
        if desired.passive:  # the passive detector's evidence (wanlb.health.passive)
            objects += [Counter(f"isp_{isp.name}_syn"), Counter(f"isp_{isp.name}_answer")]
    objects += _helper_objects(desired)
    objects.append(Set(CLIENTS_SET, "ipv4_addr", ("dynamic", "timeout"), None, timeout=CLIENTS_TIMEOUT, size=65535))
    if desired.bypass:
        nets = tuple(str(n) for n in ipaddress.collapse_addresses(desired.bypass))
        objects.append(Set("bypass", "ipv4_addr", ("interval",), nets))
    if desired.lan_nets:
        nets = tuple(str(n) for n in ipaddress.collapse_addresses(desired.lan_nets))
        objects.append(Set("lan_nets", "ipv4_addr", ("interval",), nets))

    for isp in desired.isps:
        objects.append(Chain(f"restore_{isp.name}", (_set_isp_mark("meta", isp, mask),)))
        objects.append(
            Chain(
                f"isp_{isp.name}",
                (
                    f'counter name "isp_{isp.name}_new"',
                    *([f'meta l4proto tcp counter name "isp_{isp.name}_syn"'] if desired.passive else []),
                    _set_isp_mark("meta", isp, mask),
                    _set_isp_mark("ct", isp, mask),
                ),
            )
        )
    for policy in desired.policies:
        objects += _policy_objects(desired, policy)
    for policy in desired.policies6:
        objects += _policy_objects(desired, policy, 6)
    compiled = _compiled(desired.rules, desired.domain_timeout, desired.ipv6, desired.inactive.rules)
    objects += compiled.objects  # the rules' chains first: the maps' elements jump to them
    if desired.ipv6:
        compiled6 = _compiled6(desired.rules, desired.domain_timeout, desired.inactive.rules)
        objects += compiled6.objects
        objects += _ipv6_objects(desired, compiled6.lookups)

    from_lan = [_restore_vmap(desired), *_classify_new(desired, compiled.lookups)]
    if desired.active:  # a client that opened a balanced connection is active for CLIENTS_TIMEOUT
        from_lan.insert(-1, f"update @{CLIENTS_SET} {{ ip saddr }}")
    if desired.ipv6:  # after the restore and `ct state != new return`: IPv6 NEW connections have their own chain
        from_lan.insert(2, "meta nfproto ipv6 goto from_lan6")
    objects.append(Chain("from_lan", tuple(from_lan)))

    rx = ", ".join(f'"{i.interface}" : "isp_{i.name}_rx"' for i in desired.isps)
    families = "{ ipv4, ipv6 }" if desired.ipv6 else "ipv4"
    prerouting = [f"counter name iifname map {{ {rx} }}", f"meta nfproto != {families} return"]
    if desired.passive:  # a SYN-ACK (or a RST: refused is answered too) from a WAN: the ISP carries TCP
        answer = ", ".join(f'"{i.interface}" : "isp_{i.name}_answer"' for i in desired.isps)
        prerouting.append(f"tcp flags & (syn | rst) != 0 counter name iifname map {{ {answer} }}")
    if desired.ipv6:  # neighbour discovery, router advertisements, link-local and multicast: never marked
        prerouting += [
            "ip6 saddr fe80::/10 return",
            "ip6 daddr { fe80::/10, ff00::/8 } return",
            "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, "
            "nd-redirect } return",
        ]
    # A connection from the internet to a netmap prefix has nowhere to go unless ``inbound`` maps it (and only
    # on that ISP's WAN): routed by the default route, it would bounce out of a WAN with a foreign source.
    # Replies to the LAN's connections are conntrack's (established, related); only what starts one is dropped.
    unsolicited = []
    for isp in desired.isps:
        if isp.ipv6 == "netmap" and isp.prefix6 is not None:
            wans = [i.interface for i in desired.isps if not (isp.inbound6 and i.interface == isp.interface)]
            if wans:
                unsolicited.append(  # the gateway's own address may be in it (prefix_from on a WAN): its own
                    f"iifname {_names(wans)} ip6 daddr {isp.prefix6} fib daddr type != local "
                    'ct state { new, invalid, untracked } counter name "unsolicited_dropped" drop'
                )
    if unsolicited:
        objects.append(Counter("unsolicited_dropped"))
        prerouting += unsolicited
    if desired.ha_guard:
        # A node taking over holds the VIPs before conntrackd has committed the peer's connections into its
        # kernel (keepalived's notify runs after the VIPs answer). A packet of such a connection would become
        # NEW: a random ISP, a reset. Only a SYN starts a TCP connection here; a dropped mid-stream packet is
        # retransmitted, by then onto the committed entry.
        objects.append(Counter(HA_GUARD_COUNTER))
        prerouting.insert(
            1, f'ct state new tcp flags & (syn | ack | rst | fin) != syn counter name "{HA_GUARD_COUNTER}" drop'
        )
    prerouting += _helper_rules(desired)
    prerouting += _retired_rules(desired)
    for i in desired.isps:
        # Every packet from a WAN carries that WAN's mark, so the reverse-path check (src_valid_mark)
        # validates it against its own ISP table, not the main table: replies still pass when main
        # has no default route or the all-down last resort is unreachable.
        prerouting.append(f'iifname "{i.interface}" {_set_isp_mark("meta", i, mask)}')
        new_inbound = f"ct state new ct mark & {_hex(mask)} == 0"
        prerouting.append(f'iifname "{i.interface}" {new_inbound} {_set_isp_mark("ct", i, mask)}')
    prerouting.append(f"iifname {_names(desired.lan_interfaces)} jump from_lan")
    objects.append(Chain("prerouting", tuple(prerouting), ("filter", "prerouting", -150, "accept")))

    output = [f"meta nfproto != {families} return", 'oifname "lo" return', *_helper_rules(desired)]
    output += _retired_rules(desired)
    output.append(_restore_vmap(desired))  # both families: the gateway answers through the WAN asked
    if desired.local_traffic:
        # A socket that set its own mark in our bits (a health probe) keeps it.
        output.append(f"meta mark & {_hex(mask)} != 0 return")
        if desired.ipv6:  # the gateway's own new IPv6 connections: like the LAN's, without the rules
            output.append("meta nfproto ipv6 goto local6")
            objects.append(Chain("local6", ("ct state != new return", *_NOT_BALANCED6, "goto balance_6")))
        output += _classify_new(desired)
    objects.append(Chain("output", tuple(output), ("route", "output", -150, "accept")))

    postrouting = []
    for isp in desired.isps:
        if isp.ipv6 not in ("netmap", "masquerade") or (isp.ipv6 == "netmap" and isp.prefix6 is None):
            continue  # (a netmap ISP whose prefix_from interface has no prefix now carries no IPv6)
        # Only marked traffic: an unmarked LAN packet (a connection older than wanlb) is never translated
        # to an address it did not start with; egress drops it rather than let its LAN source out.
        action6 = "masquerade" if isp.ipv6 == "masquerade" else f"snat ip6 prefix to {isp.prefix6}"
        marked = f'meta nfproto ipv6 meta mark & {_hex(mask)} == {_hex(isp.mark)} oifname "{isp.interface}"'
        postrouting.append(f"{marked} ip6 saddr @lan6_nat {action6}")
        if desired.local_traffic:  # the gateway's own connection balanced here: its source becomes this WAN's
            postrouting.append(f"{marked} fib saddr type local masquerade")
    postrouting.append("meta nfproto != ipv4 return")
    for isp in desired.isps:
        if isp.snat == "none":
            continue
        action = "masquerade" if isp.snat == "masquerade" else f"snat ip to {isp.snat}"
        if desired.ha and isp.snat != "masquerade":  # the node's own traffic (its probes) keeps its own address
            postrouting.append(f'oifname "{isp.interface}" fib saddr type local masquerade')
        postrouting.append(f'meta mark & {_hex(mask)} == {_hex(isp.mark)} oifname "{isp.interface}" {action}')
        # Unmarked traffic that the main table sends out this WAN (last resort
        # "main", connections older than wanlb) still needs its address rewritten.
        postrouting.append(f'meta mark & {_hex(mask)} == 0 oifname "{isp.interface}" {action}')
    objects.append(Chain("postrouting", tuple(postrouting), ("nat", "postrouting", 100, "accept")))
    inbound = [
        f'iifname "{isp.interface}" ip6 daddr {isp.prefix6} fib daddr type != local '
        f"dnat ip6 prefix to {desired.lan6_nat[0]}"
        for isp in desired.isps
        if isp.inbound6 and isp.prefix6 is not None and len(desired.lan6_nat) == 1
    ]
    if inbound:  # opt-in (ipv6.inbound): the netmap prefix back to the LAN host with the same host bits
        objects.append(Chain("inbound6", tuple(inbound), ("nat", "prerouting", -100, "accept")))

    wans = _names([i.interface for i in desired.isps])
    nat_wans = [i.interface for i in desired.isps if i.snat != "none"]
    egress = [
        f"meta nfproto ipv4 iifname {_names(desired.lan_interfaces)} oifname {wans} ct state invalid "
        'counter name "invalid_dropped" drop'
    ]
    if desired.lan_nets and nat_wans:
        egress.append(
            f'meta nfproto ipv4 oifname {_names(nat_wans)} ip saddr @lan_nets counter name "leak_dropped" drop'
        )
    if desired.ipv6:
        egress.append(
            f"meta nfproto ipv6 iifname {_names(desired.lan_interfaces)} oifname {wans} ct state invalid "
            'counter name "invalid_dropped" drop'
        )
        # No LAN IPv6 source leaves a WAN untranslated, except a routed ISP's own prefix through its own WAN.
        routed = {i.interface: i.prefix6 for i in desired.routed6}
        others = [i.interface for i in desired.isps if i.interface not in routed]
        if others:
            egress.append(
                f'meta nfproto ipv6 oifname {_names(others)} ip6 saddr @lan6 counter name "leak_dropped" drop'
            )
        egress += [f'meta nfproto ipv6 oifname "{wan}" ip6 saddr @lan6 ip6 saddr != {prefix} '
                   'counter name "leak_dropped" drop' for wan, prefix in routed.items()]  # fmt: skip
    tx = ", ".join(f'"{i.interface}" : "isp_{i.name}_tx"' for i in desired.isps)
    egress.append(f"counter name oifname map {{ {tx} }}")
    objects.append(Chain("egress", tuple(egress), ("filter", "postrouting", 110, "accept")))
    return Table(tuple(objects))


def render_routing(desired: Desired) -> RoutingIntent:
    """Rules, routes and sysctls for the desired state.

    Every ISP keeps its table and rules while it is down, so its probes still
    leave through it and its recovery can be seen — as long as its uplink is
    there: an ISP whose interface, address or (learned) next hop is missing has
    its rules but no route until it comes (its ``unreachable`` guard meanwhile).
    A learned point-to-point next hop is a device route (``default dev ppp0``).
    Rule priorities follow the ISP's slot (its rank by mark), not its place in the config.
    """
    base = desired.rule_priority
    mask = desired.mark_mask
    proto = desired.route_protocol
    rules = [Rule(base + SUPPRESS_OFFSET, "lookup", table=254, suppress_prefixlength=0, protocol=proto)]
    routes: list[Route] = []
    for isp in desired.isps:
        rules.append(
            Rule(
                base + LOOKUP_OFFSET + isp.slot, "lookup", table=isp.table, fwmark=isp.mark, fwmask=mask, protocol=proto
            )
        )
        rules.append(Rule(base + GUARD_OFFSET + isp.slot, "unreachable", fwmark=isp.mark, fwmask=mask, protocol=proto))
        if isp.uplink.ready:  # else the guard keeps its marked packets from leaving anywhere until it is
            default = ipaddress.IPv4Network("0.0.0.0/0")
            routes.append(Route(isp.table, default, isp.interface, gateway=isp.uplink.via, protocol=proto))
    if not desired.active and desired.last_resort != "main":
        rules.append(Rule(base + LAST_RESORT_OFFSET, desired.last_resort, protocol=proto))
    sysctls = [("net/ipv4/ip_forward", "1")]
    for isp in desired.isps:
        conf = f"net/ipv4/conf/{isp.interface}"
        sysctls += [(f"{conf}/rp_filter", "2"), (f"{conf}/src_valid_mark", "1")]
    v6 = [isp for isp in desired.isps if isp.ipv6 != "off"]
    if v6:
        # The same priorities and tables in the IPv6 rule list, for the ISPs that carry IPv6.
        rules.append(
            Rule(base + SUPPRESS_OFFSET, "lookup", table=254, suppress_prefixlength=0, protocol=proto, family=6)
        )
        default6 = ipaddress.IPv6Network("::/0")
        for isp in v6:
            slot, mark = isp.slot, isp.mark
            rules.append(Rule(base + LOOKUP_OFFSET + slot, "lookup", table=isp.table, fwmark=mark, fwmask=mask,
                              protocol=proto, family=6))  # fmt: skip
            rules.append(Rule(base + GUARD_OFFSET + slot, "unreachable", fwmark=mark, fwmask=mask, protocol=proto,
                              family=6))  # fmt: skip
            if isp.uplink.ready6:
                routes.append(Route(isp.table, default6, isp.interface, gateway=isp.uplink.via6, protocol=proto))
            if isp.ipv6 == "routed" and isp.prefix6 is not None:  # its prefix's sources, marked or not
                rules.append(Rule(base + FROM_OFFSET + slot, "lookup", table=isp.table, src=isp.prefix6,
                                  protocol=proto, family=6))  # fmt: skip
        # Forwarding on turns router advertisements off where accept_ra is 1; 2 keeps the WANs taking them.
        sysctls.append(("net/ipv6/conf/all/forwarding", "1"))
        sysctls += [(f"net/ipv6/conf/{isp.interface}/accept_ra", "2") for isp in v6]
    return RoutingIntent(
        rules=tuple(sorted(rules)),
        routes=tuple(sorted(routes)),
        sysctls=tuple(sysctls),
        protocol=proto,
        only_from=tuple((k, "1") for k, _ in sysctls if k.endswith("/accept_ra")),
    )


def render(desired: Desired) -> Rendered:
    return Rendered(nft=render_nft(desired), routing=render_routing(desired))
