"""Explain a flow: which ISP a NEW connection would take now, and why.  Pure.

``wanlb explain`` must never disagree with the datapath, so nothing here decides anew: it walks the very
objects :mod:`wanlb.render` turned into the ruleset the kernel holds — the last applied
:class:`~wanlb.plan.Desired` (LAN interfaces, bypass networks, the rules in order, and each policy's
:class:`~wanlb.policy.PolicyPlan`: the members in use now with their weights and tier, the hash buckets, the
sticky key) — in the order the chains do (``prerouting`` → ``from_lan``/``from_lan6`` → a rule's chain → a
policy chain → an ISP chain → the ip rules).  What only the kernel knows at this moment comes in
:class:`Live`, read by the shell just before: the elements of the sticky and domain sets, and the kernel's
route lookup of the destination (``fib daddr type``, and a main-table route more specific than a default,
which the ``suppress_prefixlength 0`` rule lets win over any ISP's table).

Exact, when the flow gives what they read: the rule, the policy, its tier and members, and the ISP for
``hash`` (:func:`nft_jhash` computes the kernel's jhash over the same register bytes), for a client a
sticky set already holds, and for a policy with one member in use.  ``weighted`` picks with ``numgen inc``
(a counter in the kernel) and ``least-conn``/``latency`` with ``numgen random``: for those the decision
names the candidates and their weights instead of guessing one.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from wanlb.config import RuleConfig
from wanlb.plan import Desired, IspPlan
from wanlb.policy import DEFAULT, HASH_SEED, PolicyPlan
from wanlb.protocols import NAMES as PROTO_NAMES
from wanlb.protocols import PORT_PROTOS
from wanlb.render import sticky_set
from wanlb.rules import domain_set, for_family, rule_protocols

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Verdict = Literal["isp", "bypass", "local", "drop", "reject", "inbound", "not_lan", "last_resort", "undetermined"]
SetElements = Mapping[str, frozenset[tuple[str, ...]]]

# --- the kernel's jhash -----------------------------------------------------------------------------------

_U32 = 0xFFFFFFFF
JHASH_INITVAL = 0xDEADBEEF  # include/linux/jhash.h


def _rol(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _U32


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    """``__jhash_mix``."""
    a = ((a - c) & _U32) ^ _rol(c, 4)
    c = (c + b) & _U32
    b = ((b - a) & _U32) ^ _rol(a, 6)
    a = (a + c) & _U32
    c = ((c - b) & _U32) ^ _rol(b, 8)
    b = (b + a) & _U32
    a = ((a - c) & _U32) ^ _rol(c, 16)
    c = (c + b) & _U32
    b = ((b - a) & _U32) ^ _rol(a, 19)
    a = (a + c) & _U32
    c = ((c - b) & _U32) ^ _rol(b, 4)
    b = (b + a) & _U32
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    """``__jhash_final``: only ``c`` is the result."""
    c = ((c ^ b) - _rol(b, 14)) & _U32
    a = ((a ^ c) - _rol(c, 11)) & _U32
    b = ((b ^ a) - _rol(a, 25)) & _U32
    c = ((c ^ b) - _rol(b, 16)) & _U32
    a = ((a ^ c) - _rol(c, 4)) & _U32
    b = ((b ^ a) - _rol(a, 14)) & _U32
    return ((c ^ b) - _rol(b, 24)) & _U32


def jhash(key: bytes, initval: int, byteorder: Literal["little", "big"] = sys.byteorder) -> int:
    """Linux's ``jhash()`` (include/linux/jhash.h: Bob Jenkins' lookup3 ``hashlittle``), bit for bit.

    Every whole 12-byte block but the last is read as three 32-bit words in the CPU's ``byteorder``
    (``__get_unaligned_cpu32``); the last 1–12 bytes are added byte by byte, lowest first, on any CPU.
    """
    length = len(key)
    a = b = c = (JHASH_INITVAL + length + initval) & _U32
    at = 0
    while length - at > 12:
        words = [int.from_bytes(key[i : i + 4], byteorder) for i in (at, at + 4, at + 8)]
        a, b, c = _mix((a + words[0]) & _U32, (b + words[1]) & _U32, (c + words[2]) & _U32)
        at += 12
    if at == length:  # (only for an empty key: a non-empty one always leaves 1-12 bytes)
        return c
    tail = key[at:].ljust(12, b"\0")
    a, b, c = ((v + int.from_bytes(tail[i : i + 4], "little")) & _U32 for v, i in ((a, 0), (b, 4), (c, 8)))
    return _final(a, b, c)


def reciprocal_scale(value: int, modulus: int) -> int:
    """A 32-bit value scaled into 0..N-1 as the kernel does it (include/linux/kernel.h): ``(value × N) >> 32``."""
    return (value * modulus) >> 32


def nft_jhash(data: bytes, modulus: int, seed: int) -> int:
    """nft's ``jhash … mod N seed S`` (net/netfilter/nft_hash.c): the hash scaled with :func:`reciprocal_scale`,
    not ``hash % N``."""
    return reciprocal_scale(jhash(data, seed), modulus)


def hash_key(fields: Sequence[str], flow: Flow) -> bytes | None:
    """The bytes nft's registers hold for ``jhash <fields>`` (the keys :data:`wanlb.render.HASH_KEYS` names):
    each field in network byte order, zero-padded to whole 32-bit registers as every part of a concatenation
    is.  None if a field is not known: a port not given, or ports of a protocol that has none (``th sport``
    then reads other header bytes, an ICMP checksum)."""
    parts = []
    for name in fields:
        if name in ("src", "dst"):
            value = (flow.src if name == "src" else flow.dst).packed
        elif name == "proto":
            value = bytes([flow.proto])
        else:
            port = flow.sport if name == "sport" else flow.dport
            if port is None or flow.proto not in PORT_PROTOS:
                return None
            value = port.to_bytes(2, "big")
        parts.append(value + bytes(-len(value) % 4))
    return b"".join(parts)


# --- what goes in ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flow:
    """The first packet of a NEW connection as the gateway's ``prerouting`` sees it."""

    src: Address
    dst: Address
    proto: int = 6
    sport: int | None = None  # None: not given (a rule or a hash that reads it cannot be decided)
    dport: int | None = None
    iif: str = ""
    dscp: int = 0
    src_mac: str | None = None  # its Ethernet source, lowercase with colons; None: not given

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise ValueError(f"{self.src} and {self.dst} are of different address families")

    @property
    def family(self) -> int:
        return self.src.version


@dataclass(frozen=True)
class Live:
    """What only the kernel knows now, read by the shell just before the walk.

    ``sets``: our table's sets by name, each element a tuple of its concatenated values (:func:`set_elements`).
    ``route_*``: the kernel's route for an unmarked packet to the destination (``ip route get fibmatch``):
    its type (``local``, ``broadcast``, ``multicast``, ``unicast``, ``unreachable`` when nothing routes it),
    its table and prefix.
    """

    sets: SetElements = field(default_factory=dict)
    route_type: str = "unicast"
    route_table: int | None = None
    route_prefix: Network | None = None


def set_elements(listing: Iterable[Any] | None) -> dict[str, frozenset[tuple[str, ...]]]:
    """Each named set's elements from ``nft -j list table`` (:meth:`wanlb.kernel.Kernel.nft_read`): a tuple of
    the values of its concatenation, addresses in canonical form.  Interval elements (prefixes, ranges) are
    left out: the sets explain consults (sticky clients, destination domains) hold single values."""
    out: dict[str, frozenset[tuple[str, ...]]] = {}
    for obj in listing or ():
        found = obj.get("set") if isinstance(obj, dict) else None
        if isinstance(found, dict) and isinstance(found.get("name"), str):
            elements = (_element(e) for e in found.get("elem") or ())
            out[found["name"]] = frozenset(e for e in elements if e is not None)
    return out


def _element(element: Any) -> tuple[str, ...] | None:
    """``"1.2.3.4"``, ``{"elem": {"val": …, "timeout": …}}`` or ``{"concat": [a, b]}`` → its values."""
    if isinstance(element, dict) and "elem" in element:
        inner = element["elem"]
        element = inner.get("val") if isinstance(inner, dict) else inner
    values = element["concat"] if isinstance(element, dict) and "concat" in element else [element]
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        return None
    return tuple(_canonical(v) for v in values)


def _canonical(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value


# --- what comes out ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowView:
    """The flow explained, as given (after defaults: the LAN interface, no ports)."""

    family: int = 4
    proto: str = "tcp"
    src: str = ""
    sport: int | None = None
    dst: str = ""
    dport: int | None = None
    iif: str = ""
    dscp: int = 0
    src_mac: str | None = None


@dataclass(frozen=True)
class RuleHit:
    """The rule that matched: its place (1 = first, in config order), name and target."""

    index: int = 0
    name: str = ""
    target: str = ""


@dataclass(frozen=True)
class Candidate:
    """An ISP the policy's pick may give: its weight in the pick and its share of NEW connections."""

    isp: str = ""
    weight: int = 0
    share_percent: float = 0.0


@dataclass(frozen=True)
class HashPick:
    """How ``hash`` picked: the fields, ``jhash`` value and bucket (None when a field it reads was not given)."""

    fields: tuple[str, ...] = ()
    seed: int = HASH_SEED
    buckets: int = 0
    value: int | None = None
    bucket: int | None = None


@dataclass(frozen=True)
class Decision:
    """Where a NEW connection goes now, and the steps of the datapath that send it there.

    ``verdict``: ``isp`` (marked for an ISP: ``isp`` when it is determined, else one of ``candidates``),
    ``bypass`` (unmarked: the main table routes it), ``local`` (to the gateway itself, a broadcast or
    multicast address: never balanced), ``drop``, ``reject`` (ICMP host-unreachable), ``inbound`` (arriving
    on a WAN: marked for that WAN's ISP), ``not_lan`` (arriving on an interface that is neither: untouched),
    ``last_resort`` (no usable ISP: unmarked, ``failover.last_resort`` routes it), ``undetermined`` (a rule
    reads a field the flow did not give).
    """

    flow: FlowView = field(default_factory=FlowView)
    verdict: Verdict = "isp"
    isp: str | None = None
    mark: int | None = None
    rule: RuleHit | None = None  # None: no rule matched (or none was reached)
    policy: str | None = None  # the policy that picked: "default", a configured one, or "via_<isp>" of a rule
    chain: str | None = None
    algorithm: str | None = None
    tier: int | None = None
    candidates: tuple[Candidate, ...] = ()
    sticky: str | None = None  # "pinned": the client is in the set of ``isp``; "recorded": picked, to be pinned
    hash: HashPick | None = None
    route: str = ""  # what routes the packet: an ISP's table, the main table, the last resort
    steps: tuple[str, ...] = ()  # the walk, chain by chain
    summary: str = ""


# --- the walk ----------------------------------------------------------------------------------------------


def explain(desired: Desired, flow: Flow, live: Live) -> Decision:
    """The decision for ``flow`` by the ruleset ``desired`` renders, with the kernel's ``live`` state."""
    return _Walk(desired, flow, live).prerouting()


class _Walk:
    """One flow through the chains: each method is a chain (or a jump) and ends in a :class:`Decision`.

    What the decision reports of the policy is the last policy chain walked (a policy without a usable member
    may hand the connection to the default policy)."""

    def __init__(self, desired: Desired, flow: Flow, live: Live) -> None:
        self.desired, self.flow, self.live = desired, flow, live
        self.six = flow.family == 6
        self.steps: list[str] = []
        self.rule: RuleHit | None = None
        self.plan: PolicyPlan | None = None
        self.path: list[str] = []  # the policies walked, for the summary
        self.sticky: str | None = None
        self.hash: HashPick | None = None

    def step(self, text: str) -> None:
        self.steps.append(text)

    def end(self, verdict: Verdict, summary: str, route: str = "", isp: IspPlan | None = None) -> Decision:
        f, plan = self.flow, self.plan
        proto = PROTO_NAMES.get(f.proto, str(f.proto))
        view = FlowView(f.family, proto, str(f.src), f.sport, str(f.dst), f.dport, f.iif, f.dscp, f.src_mac)
        return Decision(
            flow=view,
            verdict=verdict,
            isp=isp.name if isp is not None else None,
            mark=isp.mark if isp is not None else None,
            rule=self.rule,
            policy=plan.name if plan is not None else None,
            chain=plan.chain + ("_6" if self.six else "") if plan is not None else None,
            algorithm=plan.algorithm if plan is not None else None,
            tier=plan.tier if plan is not None else None,
            candidates=_candidates(plan) if plan is not None else (),
            sticky=self.sticky,
            hash=self.hash,
            route=route or self.main_route(),
            steps=tuple(self.steps),
            summary=summary,
        )

    # --- prerouting, from_lan, from_lan6 ---

    def prerouting(self) -> Decision:
        """IPv6 only while an ISP carries it, never link-local or multicast; then a WAN marks what arrives on it
        and a LAN interface jumps to ``from_lan``."""
        d, flow = self.desired, self.flow
        if self.six and not d.ipv6:
            self.step("prerouting: no ISP carries IPv6, IPv6 is not balanced → return")
            return self.end("bypass", "not balanced: no ISP carries IPv6, it passes unmarked and untranslated")
        if self.six and (flow.src.is_link_local or flow.dst.is_link_local or flow.dst.is_multicast):
            self.step("prerouting: link-local or multicast → return")
            return self.end("local", "link-local or multicast: never marked or balanced", "the link (no WAN)")
        wan = next((i for i in d.isps if i.interface == flow.iif), None)
        if wan is not None:
            return self.inbound(wan)
        if flow.iif not in d.lan_interfaces:
            lans = ", ".join(d.lan_interfaces)
            return self.end("not_lan", f"{flow.iif} is neither a LAN interface ({lans}) nor a WAN: left alone")
        self.step(f"prerouting: {flow.iif} is a LAN interface → from_lan")
        return self.from_lan6() if self.six else self.from_lan()

    def inbound(self, wan: IspPlan) -> Decision:
        """Arriving on a WAN: the connection is marked for that WAN's ISP, so its replies leave the way it came."""
        self.step(f"prerouting: {self.flow.iif} is {wan.name}'s WAN: a NEW connection gets its mark as ct mark")
        if self.six and self._unsolicited(wan):
            why = f"nothing on {self.flow.iif} may start a connection to a netmap prefix (unsolicited_dropped)"
            return self.end("drop", f"dropped: {why}", "none")
        summary = f"inbound on {wan.name}: marked {wan.name}, its replies leave through {wan.name}"
        return self.end("inbound", summary, "the main table (to the LAN host)", wan)

    def _unsolicited(self, wan: IspPlan) -> bool:
        """Prerouting's drop of a connection from a WAN to a netmap prefix that ``ipv6.inbound`` does not map."""
        dst = self.flow.dst
        return self.live.route_type != "local" and any(
            isp.ipv6 == "netmap"
            and isp.prefix6 is not None
            and dst in isp.prefix6
            and not (isp.inbound6 and isp.interface == wan.interface)
            for isp in self.desired.isps
        )

    def from_lan(self) -> Decision:
        dst = self.flow.dst
        if self._not_balanced_type(("local", "broadcast", "multicast")):
            return self.end("local", f"{dst} is {self._type_text()}: never balanced", "the gateway (no WAN)")
        net = _covering(dst, self.desired.bypass)
        if net is not None:
            self.step(f"from_lan: {dst} is in @bypass ({net}: lan.bypass or a connected network) → return")
            return self.end("bypass", f"not balanced: {dst} is in {net} (bypass)")
        return self.rules(self.default)

    def from_lan6(self) -> Decision:
        d, flow = self.desired, self.flow
        if self._not_balanced_type(("local", "multicast")):
            return self.end("local", f"{flow.dst} is {self._type_text()}: never balanced", "the gateway (no WAN)")
        net = _covering(flow.dst, d.bypass6)
        if net is not None:
            self.step(f"from_lan6: {flow.dst} is in @bypass6 ({net}: LAN, connected or lan.bypass) → return")
            return self.end("bypass", f"not balanced: {flow.dst} is in {net} (bypass)")
        if _covering(flow.src, d.lan6) is None:
            self.step(f"from_lan6: {flow.src} is not in lan.ipv6_prefixes (@lan6) → return")
            return self.end("bypass", f"not balanced: {flow.src} is not a LAN IPv6 source")
        for isp in d.routed6:
            if isp.prefix6 is not None and flow.src in isp.prefix6:
                self.step(f"from_lan6: {flow.src} is in {isp.name}'s routed prefix {isp.prefix6} → isp_{isp.name}")
                return self.marked(isp, f"its source is in {isp.name}'s routed prefix {isp.prefix6}")
        return self.rules(self.default)

    def _not_balanced_type(self, types: tuple[str, ...]) -> bool:
        """``fib daddr type { … } return``: the kernel's route type of the destination, or what it always is."""
        hit = self._static_type() is not None or self.live.route_type in types
        if hit:
            self.step(f"from_lan{'6' if self.six else ''}: fib daddr type is {self._type_text()} → return")
        return hit

    def _static_type(self) -> str | None:
        """The type ``fib daddr type`` gives some addresses whatever the routes (the kernel's inet_addr_type)."""
        dst = self.flow.dst
        if dst.is_multicast:
            return "multicast"
        return "broadcast" if dst.version == 4 and (dst == _LIMITED_BROADCAST or dst in _THIS_NETWORK) else None

    def _type_text(self) -> str:
        kind = self._static_type() or self.live.route_type
        return "the gateway's own address" if kind == "local" else f"a {kind} address"

    # --- the rules ---

    def rules(self, otherwise: Callable[[], Decision]) -> Decision:
        """First match wins: :func:`wanlb.rules.compile_rules` emits its lookups in the rules' order, merging into
        one map only rules whose elements do not overlap, so the first rule that matches is the one."""
        flow, off = self.flow, self.desired.inactive.rules
        for index, whole in enumerate(self.desired.rules, 1):
            rule = for_family(whole, flow.family)
            if rule is None:
                continue
            if whole.name in off:
                self.step(f"rule {index} ({whole.name}) is off now (its schedule, or its policy's): skipped")
                continue
            matched = rule_matches(rule, flow, self.live.sets)
            if matched is None:
                missing = [f for f in _UNKNOWN if getattr(rule, f) and getattr(flow, f) is None]
                self.step(f"rule {index} ({rule.name}) reads {' and '.join(missing)}, which the flow does not give")
                give = " and ".join(_UNKNOWN[f] for f in missing)
                summary = f"undetermined: rule {index} ({rule.name}) reads what the flow does not give: {give}"
                return self.end("undetermined", summary, "not known")
            if matched:
                return self.rule_target(index, whole)
        self.step("no rule matched")
        return otherwise()

    def rule_target(self, index: int, rule: RuleConfig) -> Decision:
        target = rule.action or (f"via {rule.via}" if rule.via else f"policy {rule.policy}")
        self.rule = RuleHit(index, rule.name, target)
        self.step(f"rule {index} ({rule.name}) matches → chain rule_{rule.name} → {target}")
        if rule.action == "bypass":
            return self.end("bypass", f"not balanced: rule {index} ({rule.name}) bypasses it")
        if rule.action == "drop":
            return self.end("drop", f"dropped by rule {index} ({rule.name})", "none")
        return self.policy(self._plan(f"via_{rule.via}" if rule.via else rule.policy or DEFAULT))

    def default(self) -> Decision:
        """After the rules: ``goto balance`` (IPv4 only while an ISP is in use), ``goto balance_6``."""
        if not self.six and not self.desired.active:
            return self.last_resort("no ISP is in use: from_lan ends without a mark")
        return self.policy(self._plan(DEFAULT))

    def _plan(self, name: str) -> PolicyPlan:
        plans = self.desired.policies6 if self.six else self.desired.policies
        return next(p for p in plans if p.name == name)

    # --- a policy chain ---

    def policy(self, plan: PolicyPlan) -> Decision:
        """Sticky lookups first (the active ISPs in order), then the algorithm's pick, or ``on_unavailable``."""
        self.plan, chain = plan, plan.chain + ("_6" if self.six else "")
        using = ", ".join(f"{isp}×{w}" for isp, w in plan.active) or "no usable member"
        self.step(f"{chain}: policy {plan.name}, {plan.algorithm}{self._tier()}: {using}")
        self.path.append(_policy_text(plan.name))
        if plan.sticky is not None and plan.active:
            pinned = self._pinned(plan, chain)
            if pinned is not None:
                return pinned
        if plan.algorithm == "hash" and plan.buckets:
            return self.hashed(plan, chain)
        if len(plan.active) == 1:
            return self.marked(self._isp(plan.active[0][0]), f"{self._via()}: its one ISP in use{self._tier()}")
        if plan.active:
            gen = "random" if plan.algorithm in ("least-conn", "latency") else "inc"
            self.step(f"{chain}: numgen {gen} picks by weight (a counter in the kernel: not known in advance)")
            among = ", ".join(f"{isp}×{w}" for isp, w in plan.active)
            summary = f"weighted among {{{among}}} (numgen {gen}), because {self._via()}{self._tier()}"
            return self.end("isp", summary, "the table of the ISP it picks")
        return self.unavailable(plan, chain)

    def _pinned(self, plan: PolicyPlan, chain: str) -> Decision | None:
        """``KEY @sticky_… goto isp_…`` for each ISP in use: the first set that holds the client decides."""
        assert plan.sticky is not None
        key = (str(self.flow.src),) + ((str(self.flow.dst),) if plan.sticky.by == "source-dest" else ())
        shown = " . ".join(key)
        for isp, _ in plan.active:
            name = sticky_set(plan, isp, self.flow.family)
            if key in self.live.sets.get(name, frozenset()):
                self.sticky = "pinned"
                self.step(f"{chain}: {shown} is in @{name} (sticky) → isp_{isp}")
                return self.marked(self._isp(isp), f"{self._via()}: sticky, {shown} is pinned to {isp}")
        self.sticky = "recorded"
        self.step(f"{chain}: {shown} is in no sticky set: picked now, then recorded in the set of the ISP it gets")
        return None

    def hashed(self, plan: PolicyPlan, chain: str) -> Decision:
        keys, buckets = " . ".join(plan.hash_fields), len(plan.buckets)
        data = hash_key(plan.hash_fields, self.flow)
        if data is None:
            self.hash = HashPick(plan.hash_fields, HASH_SEED, buckets)
            self.step(f"{chain}: jhash {keys} reads a port the flow does not give")
            among = ", ".join(dict.fromkeys(plan.buckets))
            summary = f"one of {{{among}}}, because {self._via()}{self._tier()}: its hash reads {keys} (give the ports)"
            return self.end("isp", summary, "the table of the ISP it picks")
        value = jhash(data, HASH_SEED)
        bucket = reciprocal_scale(value, buckets)
        self.hash = HashPick(plan.hash_fields, HASH_SEED, buckets, value, bucket)
        isp = plan.buckets[bucket]
        self.step(f"{chain}: jhash {keys} mod {buckets} seed {HASH_SEED:#x} = {bucket} → {isp}")
        return self.marked(self._isp(isp), f"{self._via()}: hash bucket {bucket} of {buckets}{self._tier()}")

    def unavailable(self, plan: PolicyPlan, chain: str) -> Decision:
        """No member usable: the policy's ``on_unavailable``."""
        if plan.on_unavailable == "drop":
            self.step(f"{chain}: no usable member, on_unavailable drop")
            return self.end("drop", f"dropped: {self._via()} has no usable member (on_unavailable: drop)", "none")
        if plan.on_unavailable == "unreachable":
            self.step(f"{chain}: no usable member, on_unavailable unreachable → ICMP host-unreachable")
            summary = f"rejected: {self._via()} has no usable member (on_unavailable: unreachable)"
            return self.end("reject", summary, "none")
        if plan.chain != "balance" and (self.desired.balance6 if self.six else self.desired.active):
            self.step(f"{chain}: no usable member → the default policy (goto balance{'_6' if self.six else ''})")
            return self.policy(self._plan(DEFAULT))
        return self.last_resort(f"{chain}: no usable member, and none in the default policy")

    # --- the ends ---

    def marked(self, isp: IspPlan, because: str) -> Decision:
        self.step(f"isp_{isp.name}: meta mark and ct mark set {isp.mark:#x}")
        return self.end("isp", f"{isp.name}, because {because}", self.isp_route(isp), isp)

    def last_resort(self, why: str) -> Decision:
        self.step(why)
        resort = "main" if self.six else self.desired.last_resort
        if resort == "main":
            return self.end("last_resort", "no usable ISP: unmarked, the main table routes it (last_resort: main)")
        return self.end("last_resort", f"no usable ISP: the last_resort rule answers {resort}", resort)

    def isp_route(self, isp: IspPlan) -> str:
        """The ip rules for a packet marked for ``isp``: a main-table route more specific than a default wins
        (``suppress_prefixlength 0``), else the ISP's table — which has its default route while its uplink is
        ready (else its ``unreachable`` guard answers)."""
        main = self._main_specific()
        if main is not None:
            return f"the main table: its route for {main} is more specific than a default (suppress_prefixlength 0)"
        link = isp.uplink
        ready, via = (link.ready6, link.via6) if self.six else (link.ready, link.via)
        if not ready:
            return f"table {isp.table} has no route ({link.problem or link.problem6 or 'no next hop'}): unreachable"
        hop = f"via {via} dev {isp.interface}" if via is not None else f"dev {isp.interface}"
        return f"fwmark {isp.mark:#x} → table {isp.table}: default {hop}"

    def main_route(self) -> str:
        """What routes an unmarked packet, as the kernel's lookup of the destination found it."""
        live = self.live
        if live.route_type == "unreachable" or live.route_prefix is None:
            return "no route (unreachable)"
        table = "the main table" if live.route_table in (None, 254) else f"table {live.route_table}"
        return f"{table}: {live.route_prefix}"

    def _main_specific(self) -> Network | None:
        prefix = self.live.route_prefix
        main = self.live.route_table == 254 and self.live.route_type == "unicast"
        return prefix if main and prefix is not None and prefix.prefixlen > 0 else None

    def _isp(self, name: str) -> IspPlan:
        return next(i for i in self.desired.isps if i.name == name)

    def _tier(self) -> str:
        return f", tier {self.plan.tier}" if self.plan is not None and self.plan.tier is not None else ""

    def _via(self) -> str:
        """How the connection reached the pick: ``rule 3 (video) → policy fast``, ``no rule matched → …``."""
        start = f"rule {self.rule.index} ({self.rule.name})" if self.rule else "no rule matched"
        return " → ".join([start, *self.path])


def _policy_text(name: str) -> str:
    """``the default policy``, ``via isp2`` (a rule's one ISP), ``policy fast``."""
    if name == DEFAULT:
        return "the default policy"
    return f"via {name[4:]}" if name.startswith("via_") else f"policy {name}"


_UNKNOWN = {"sport": "--from IP:PORT", "dport": "--to ADDRESS:PORT", "src_mac": "--mac MAC"}  # fields a flow may lack
_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")


def rule_matches(rule: RuleConfig, flow: Flow, sets: SetElements) -> bool | None:
    """Whether ``rule`` (its part for the flow's family, :func:`wanlb.rules.for_family`) matches ``flow`` as the
    nft statement or map element :func:`wanlb.rules.compile_rules` makes of it does; None when it would match
    but reads a port or the MAC address the flow does not give.  Every field given must match, the values within
    one are alternatives, and a ``dst_domains`` rule matches what its ``dom_`` set holds now."""
    protos = rule_protocols(rule)
    known = (
        not rule.iif or flow.iif in rule.iif,
        not rule.src_mac or flow.src_mac is None or flow.src_mac in rule.src_mac,
        not rule.src or _covering(flow.src, rule.src) is not None,
        not rule.src_not or _covering(flow.src, rule.src_not) is None,
        not rule.dst or _covering(flow.dst, rule.dst) is not None,
        not rule.dst_not or _covering(flow.dst, rule.dst_not) is None,
        not rule.dst_domains or (str(flow.dst),) in sets.get(domain_set(rule.name, flow.family), frozenset()),
        not protos or flow.proto in protos,
        not rule.dscp or flow.dscp in rule.dscp,
    )
    ports = ((rule.sport, flow.sport), (rule.dport, flow.dport))
    if not all(known) or any(r and p is not None and not any(lo <= p <= hi for lo, hi in r) for r, p in ports):
        return False
    unknown = any(r and p is None for r, p in ports) or (rule.src_mac and flow.src_mac is None)
    return None if unknown else True


def _covering(address: Address, networks: Iterable[Network]) -> Network | None:
    """The first of ``networks`` (of any family) that holds ``address``."""
    return next((n for n in networks if n.version == address.version and address in n), None)


def _candidates(plan: PolicyPlan) -> tuple[Candidate, ...]:
    """The ISPs the pick can give, with their weights and shares (for ``hash``: of the buckets)."""
    if plan.algorithm == "hash" and plan.buckets:
        weights, count = dict(plan.active), len(plan.buckets)
        owners = dict.fromkeys(plan.buckets)
        return tuple(Candidate(i, weights.get(i, 0), round(100 * plan.buckets.count(i) / count, 2)) for i in owners)
    total = sum(w for _, w in plan.active) or 1
    return tuple(Candidate(isp, w, round(100 * w / total, 2)) for isp, w in plan.active)
