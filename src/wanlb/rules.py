"""Rules → nft: first match wins, at the cost of a few lookups however many rules there are.  Pure.

Each rule gets a chain ``rule_<name>`` (its named counter, then its verdict:
the policy chain, ``return`` for bypass, ``drop``).  How ``from_lan`` reaches
those chains is the point of this module:

* Consecutive rules that match on the same kinds of fields among source,
  destination, protocol and ports — with no negation, interface, source MAC,
  DSCP or domain — are merged into one verdict map keyed by the concatenation of those
  fields (``ip saddr vmap @rules_3``), as long as no element of one rule
  overlaps an element of another; with a protocol, one map per protocol
  (``meta l4proto tcp ip saddr . th dport vmap @rules_4_tcp``).  500 source pins are
  then one hash/interval lookup, not 500 rules.  An overlap (a later rule
  shadowed in part by an earlier one) starts a new map, which keeps the order.
* Any other rule is one nft rule with anonymous sets (``ip saddr { … }``), so
  its own thousands of addresses are still one lookup.

Only NEW connections from the LAN reach them (``from_lan`` returns earlier for
every other packet), and the order of the emitted lookups is the order of the
rules.
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from wanlb.config import DSCP_NAMES, RuleConfig
from wanlb.nftsync import FAMILY, TABLE, Chain, Counter, Object, Set
from wanlb.protocols import NAMES as PROTO_NAMES

# (field, nft key expression, nft type)
FIELDS = (
    ("src", "ip saddr", "ipv4_addr"),
    ("dst", "ip daddr", "ipv4_addr"),
    ("proto", "meta l4proto", "inet_proto"),
    ("sport", "th sport", "inet_service"),
    ("dport", "th dport", "inet_service"),
)
FIELDS6 = (("src", "ip6 saddr", "ipv6_addr"), ("dst", "ip6 daddr", "ipv6_addr"), *FIELDS[2:])
MAX_MAP_ELEMENTS = 4096  # a rule whose product of values is larger stays a rule of its own
MAX_PARTS = 256  # distinct leading-field values in one map (bounds the overlap checks) before a new map starts
Interval = tuple[int, int]


@dataclass(frozen=True)
class CompiledRules:
    objects: tuple[Object, ...]  # counters, maps, domain sets, rule chains
    lookups: tuple[str, ...]  # from_lan statements, in rule order


def rule_chain(name: str) -> str:
    return f"rule_{name}"


def domain_set(name: str, family: int = 4) -> str:
    """The set of a rule's ``dst_domains`` addresses in one family (IPv4 ``dom_``, IPv6 ``dom6_``)."""
    return f"dom6_{name}" if family == 6 else f"dom_{name}"


def domain_sets_text(
    rules: Sequence[RuleConfig],
    families: Iterable[int],
    addresses: Callable[[str], Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address]],
    timeouts: Mapping[ipaddress.IPv4Address | ipaddress.IPv6Address, int],
) -> str:
    """The nft transaction that rewrites every domain rule's sets (``dom_`` IPv4, ``dom6_`` IPv6, of
    ``families``) with its names' ``addresses`` that have a ``timeouts`` entry (seconds left)."""
    lines = []
    families = tuple(families)
    for rule in rules:
        if not rule.dst_domains:
            continue
        wanted = {a for name in rule.dst_domains for a in addresses(name)}
        for family in families:
            name = domain_set(rule.name, family)
            lines.append(f"flush set {FAMILY} {TABLE} {name}")
            mine = sorted(a for a in wanted if a.version == family and a in timeouts)
            if mine:
                items = ", ".join(f"{a} timeout {timeouts[a]}s" for a in mine)
                lines.append(f"add element {FAMILY} {TABLE} {name} {{ {items} }}")
    return "\n".join(lines) + "\n" if lines else ""


def rule_protocols(rule: RuleConfig) -> list[int]:
    """The protocols a rule matches: its ``proto``, or TCP and UDP for ports without one; [] for any."""
    if rule.proto is not None:
        return [rule.proto]
    return [6, 17] if (rule.sport or rule.dport) else []


def _signature(rule: RuleConfig) -> tuple[str, ...] | None:
    """The fields a map for this rule would be keyed by, or None if it must stay a rule of its own."""
    if rule.src_not or rule.dst_not or rule.dst_domains or rule.iif or rule.dscp or rule.src_mac:
        return None
    used = {"src": bool(rule.src), "dst": bool(rule.dst), "proto": bool(rule_protocols(rule)),
            "sport": bool(rule.sport), "dport": bool(rule.dport)}  # fmt: skip
    sig = tuple(f for f, _, _ in FIELDS if used[f])
    return sig or None


def _net_interval(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Interval:
    return int(net.network_address), int(net.broadcast_address)


def for_family(rule: RuleConfig, family: int) -> RuleConfig | None:
    """The part of ``rule`` that can match connections of one address family, or None if no part can.

    Its addresses of the other family are dropped; a field that listed only those cannot match — a
    rule without addresses matches both families (its domains are resolved into a set per family).
    """

    def mine(nets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> tuple:
        return tuple(n for n in nets if n.version == family)

    src, dst = mine(rule.src), mine(rule.dst)
    if (rule.src and not src) or (rule.dst and not dst):
        return None
    changed = {"src": src, "dst": dst, "src_not": mine(rule.src_not), "dst_not": mine(rule.dst_not)}
    if all(getattr(rule, k) == v for k, v in changed.items()):
        return rule
    return rule.model_copy(update=changed)


def _merge(ranges: Sequence[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _values(rule: RuleConfig, field: str) -> list[Interval]:
    """A field's values as disjoint integer intervals (addresses as integers)."""
    if field in ("src", "dst"):
        nets = ipaddress.collapse_addresses(getattr(rule, field))
        return _merge([_net_interval(n) for n in nets])
    if field == "proto":
        return [(p, p) for p in rule_protocols(rule)]
    return _merge(getattr(rule, field))


def _show(field: str, iv: Interval, family: int = 4) -> str:
    lo, hi = iv
    if field in ("src", "dst"):
        kind = ipaddress.IPv6Address if family == 6 else ipaddress.IPv4Address
        a, b = kind(lo), kind(hi)
        return str(a) if lo == hi else f"{a}-{b}"
    if field == "proto":
        return PROTO_NAMES.get(lo, str(lo))
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _elements(rule: RuleConfig, sig: tuple[str, ...]) -> list[tuple[Interval, ...]] | None:
    per_field = [_values(rule, f) for f in sig]
    size = 1
    for values in per_field:
        size *= len(values)
    if size > MAX_MAP_ELEMENTS:
        return None
    return [tuple(combo) for combo in itertools.product(*per_field)]


def _overlaps(a: tuple[Interval, ...], b: tuple[Interval, ...]) -> bool:
    return all(x[0] <= y[1] and y[0] <= x[1] for x, y in zip(a, b, strict=True))


class _Group:
    """Consecutive rules merged into one verdict map.

    Overlaps are found per partition: elements with equal values in every field but the last share
    a sorted list of their (disjoint) last-field intervals, checked by bisection; only partitions
    whose leading values overlap the new element's are looked at.  A map stops taking rules at
    :data:`MAX_PARTS` partitions, which bounds the work per element.
    """

    def __init__(self, sig: tuple[str, ...]) -> None:
        self.sig = sig
        self.elements: list[tuple[tuple[Interval, ...], str]] = []
        self.parts: dict[tuple[Interval, ...], tuple[list[int], list[int]]] = {}  # leading values -> starts, ends

    def accepts(self, elems: list[tuple[Interval, ...]]) -> bool:
        if len(self.parts) + len({e[:-1] for e in elems} - set(self.parts)) > MAX_PARTS:
            return False
        for e in elems:
            lead, (lo, hi) = e[:-1], e[-1]
            for key, (starts, ends) in self.parts.items():
                if key != lead and not _overlaps(key, lead):
                    continue
                i = bisect.bisect_right(starts, hi)
                if i and ends[i - 1] >= lo:  # disjoint and sorted within a partition: ends are sorted too
                    return False
        return True

    def add(self, elems: list[tuple[Interval, ...]], chain: str) -> None:
        for e in elems:
            self.elements.append((e, chain))
            starts, ends = self.parts.setdefault(e[:-1], ([], []))
            i = bisect.bisect_left(starts, e[-1][0])
            starts.insert(i, e[-1][0])
            ends.insert(i, e[-1][1])


def _linear(rule: RuleConfig, family: int = 4) -> str:
    """One nft rule matching ``rule``, each field one (anonymous set) lookup."""
    parts = []
    ip = "ip6" if family == 6 else "ip"

    def nets(values: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
        items = [
            str(n) if n.prefixlen < n.max_prefixlen else str(n.network_address)
            for n in ipaddress.collapse_addresses(values)
        ]
        return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"

    def ports(values: Sequence[Interval]) -> str:
        items = [_show("dport", iv) for iv in _merge(values)]
        return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"

    if rule.iif:
        parts.append("iifname { " + ", ".join(f'"{i}"' for i in rule.iif) + " }")
    if rule.src_mac:  # (from_lan runs in prerouting only: a frame's Ethernet source is known there)
        parts.append("ether saddr { " + ", ".join(sorted(set(rule.src_mac))) + " }")
    if rule.src:
        parts.append(f"{ip} saddr {nets(rule.src)}")
    if rule.src_not:
        parts.append(f"{ip} saddr != {nets(rule.src_not)}")
    if rule.dst:
        parts.append(f"{ip} daddr {nets(rule.dst)}")
    if rule.dst_not:
        parts.append(f"{ip} daddr != {nets(rule.dst_not)}")
    if rule.dst_domains:
        parts.append(f"{ip} daddr @{domain_set(rule.name, family)}")
    protos = rule_protocols(rule)
    if len(protos) == 1:
        parts.append(f"meta l4proto {PROTO_NAMES.get(protos[0], protos[0])}")
    elif protos:
        parts.append("meta l4proto { " + ", ".join(PROTO_NAMES[p] for p in protos) + " }")
    if rule.sport:
        parts.append(f"th sport {ports(rule.sport)}")
    if rule.dport:
        parts.append(f"th dport {ports(rule.dport)}")
    if rule.dscp:
        parts.append(f"{ip} dscp {{ " + ", ".join(DSCP_NAMES.get(d, str(d)) for d in sorted(set(rule.dscp))) + " }")
    parts.append(f"goto {rule_chain(rule.name)}")
    return " ".join(parts)


def compile_rules(
    rules: Sequence[RuleConfig],
    verdict: Callable[[RuleConfig], str | tuple[str, ...]],
    domain_timeout: int = 3600,
    family: int = 4,
    inactive: frozenset[str] = frozenset(),
) -> CompiledRules:
    """The objects and ``from_lan`` lookups for ``rules``; ``verdict(rule)`` is what its chain ends with
    (one statement, or several: one per address family).

    ``family`` 6: the lookups ``from_lan6`` walks for IPv6 connections (the parts of the rules that can
    match IPv6, see :func:`for_family`), their maps (``rules6_*``) and the IPv6 domain sets (``dom6_``):
    the rules' chains and counters are the IPv4 compile's.

    ``domain_timeout`` (seconds) is the default life of an element added to a ``dom_`` set without one.

    ``inactive``: rules a schedule switches off now: they keep their chains, counters and sets (their hits and
    resolved addresses survive) but take no place in the lookups.
    """
    objects: list[Object] = []
    lookups: list[str] = []
    group: _Group | None = None
    groups: list[_Group] = []
    table = FIELDS6 if family == 6 else FIELDS

    def close() -> None:
        nonlocal group
        if group is not None:
            index = len(groups)
            groups.append(group)
            for name, guard, fields, elements in _maps(index, group, family):
                keys = " . ".join(expr for f, expr, _ in table if f in fields)
                lookups.append(f"{guard}{keys} vmap @{name}")
                types = " . ".join(t for f, _, t in table if f in fields)
                objects.append(Set(name, types, ("interval",), elements, map_type="verdict"))
        group = None

    for whole in rules:
        if family == 4:
            objects.append(Counter(rule_chain(whole.name)))
            ends = verdict(whole)
            ends = (ends,) if isinstance(ends, str) else ends
            objects.append(Chain(rule_chain(whole.name), (f'counter name "{rule_chain(whole.name)}"', *ends)))
        if whole.dst_domains:
            kind = "ipv6_addr" if family == 6 else "ipv4_addr"
            name = domain_set(whole.name, family)
            objects.append(Set(name, kind, ("timeout",), None, timeout=domain_timeout))
        rule = for_family(whole, family)
        if rule is None or whole.name in inactive:  # nothing of it can match this family, or not now
            continue
        sig = _signature(rule)
        elems = _elements(rule, sig) if sig else None
        if sig is None or elems is None:
            close()
            lookups.append(_linear(rule, family))
            continue
        if group is None or group.sig != sig or not group.accepts(elems):
            close()
            group = _Group(sig)
        group.add(elems, rule_chain(rule.name))
    close()
    return CompiledRules(tuple(objects), tuple(lookups))


def _maps(index: int, group: _Group, family: int = 4) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    """A group's verdict maps: (name, guard, key fields, elements).

    A key with the protocol and other fields is split into one map per protocol behind a
    ``meta l4proto`` guard (``meta l4proto tcp th dport vmap @rules_2_tcp``): a packet has one
    protocol, so the order of the split lookups does not matter, and a single-field interval map
    is a cheap binary search where ``meta l4proto . th dport`` needs the kernel's pipapo set
    (its AVX2 fill was most of what 200 port rules cost per NEW connection).
    """
    fields = tuple(f for f, _, _ in FIELDS if f in group.sig)
    base = f"rules6_{index}" if family == 6 else f"rules_{index}"

    def element(values: Sequence[Interval], keys: Sequence[str], chain: str) -> str:
        return " . ".join(_show(f, iv, family) for f, iv in zip(keys, values, strict=True)) + f" : goto {chain}"

    if "proto" not in fields or len(fields) == 1:
        return [(base, "", fields, tuple(element(e, fields, c) for e, c in group.elements))]
    at = fields.index("proto")
    rest = fields[:at] + fields[at + 1 :]
    by_proto: dict[int, list[str]] = {}
    for e, chain in group.elements:
        by_proto.setdefault(e[at][0], []).append(element(e[:at] + e[at + 1 :], rest, chain))
    return [
        (f"{base}_{_show('proto', (p, p))}", f"meta l4proto {_show('proto', (p, p))} ", rest, tuple(elements))
        for p, elements in sorted(by_proto.items())
    ]
