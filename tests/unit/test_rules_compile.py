"""rules.compile_rules: the compiled lookups send every packet to the chain first-match evaluation picks.

A small reference evaluator below reads what ``compile_rules`` emits — the
``from_lan`` lines in order (verdict-map lookups ``ip saddr . meta l4proto .
th dport vmap @rules_0`` and linear rules ``ip saddr { … } … goto rule_x``)
and the ``rules_N`` maps' interval elements — and decides which rule chain a
packet reaches.  It is strict: any syntax it does not know fails the test, so
a new form in the compiler has to be taught here first.  Hypothesis then
compares it with direct first-match evaluation of the ``RuleConfig`` list (as
docs/configuration.md defines it) on random rule lists built to overlap.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wanlb import rules as rules_module
from wanlb.config import RuleConfig
from wanlb.nftsync import Chain, Counter, Set
from wanlb.rules import MAX_MAP_ELEMENTS, MAX_PARTS, CompiledRules, compile_rules, domain_set, rule_chain

# Written out here, not imported: the evaluator must not share the compiler's tables.
PROTO = {"tcp": 6, "udp": 17, "icmp": 1, "sctp": 132, "udplite": 136, "gre": 47, "esp": 50, "ah": 51}
DSCP = {"ef": 46, "va": 44, **{f"cs{i}": 8 * i for i in range(8)}}
DSCP.update({f"af{c}{d}": 8 * c + 2 * d for c in range(1, 5) for d in range(1, 4)})
TCP, UDP, ICMP, SCTP, GRE = 6, 17, 1, 132, 47
KEYS = {"ip saddr": "src", "ip daddr": "dst", "meta l4proto": "proto", "th sport": "sport", "th dport": "dport"}


def verdict(rule: RuleConfig) -> str:
    return f"goto target_{rule.name}"


@dataclass(frozen=True)
class Packet:
    src: int
    dst: int
    proto: int
    sport: int  # for a protocol without ports: whatever bytes ``th sport`` would read there
    dport: int
    iif: str
    dscp: int


# --- the spec: first match over the RuleConfig list ------------------------------------------------


def rule_matches(rule: RuleConfig, p: Packet, resolved: Mapping[str, set[int]]) -> bool:
    def inside(addr: int, nets: Iterable[ipaddress.IPv4Network]) -> bool:
        return any(int(n.network_address) <= addr <= int(n.broadcast_address) for n in nets)

    def in_ranges(port: int, ranges: Iterable[tuple[int, int]]) -> bool:
        return any(lo <= port <= hi for lo, hi in ranges)

    if rule.src and not inside(p.src, rule.src):
        return False
    if inside(p.src, rule.src_not):
        return False
    if rule.dst and not inside(p.dst, rule.dst):
        return False
    if inside(p.dst, rule.dst_not):
        return False
    if rule.dst_domains and not any(p.dst in resolved.get(d, set()) for d in rule.dst_domains):
        return False
    if rule.proto is not None and p.proto != rule.proto:
        return False
    if rule.proto is None and (rule.sport or rule.dport) and p.proto not in (TCP, UDP):
        return False  # ports without a proto: tcp and udp
    if rule.sport and not in_ranges(p.sport, rule.sport):
        return False
    if rule.dport and not in_ranges(p.dport, rule.dport):
        return False
    if rule.iif and p.iif not in rule.iif:
        return False
    return not (rule.dscp and p.dscp not in rule.dscp)


def first_match(rules: Sequence[RuleConfig], p: Packet, resolved: Mapping[str, set[int]]) -> str | None:
    for rule in rules:
        if rule_matches(rule, p, resolved):
            return rule_chain(rule.name)
    return None


# --- the reference evaluator of the compiled output -----------------------------------------------

Interval = tuple[int, int]


def parse_value(field: str, text: str) -> Interval:
    """One value of a field as an inclusive integer interval."""
    if field in ("src", "dst"):
        if "/" in text:
            net = ipaddress.IPv4Network(text)  # strict: host bits set would be an nft error
            return int(net.network_address), int(net.broadcast_address)
        lo, _, hi = text.partition("-")
        return int(ipaddress.IPv4Address(lo)), int(ipaddress.IPv4Address(hi or lo))
    if field == "proto":
        value = PROTO[text] if text in PROTO else int(text)
        assert 0 <= value <= 255, text
        return value, value
    if field == "dscp":
        value = DSCP[text] if text in DSCP else int(text)
        assert 0 <= value <= 63, text
        return value, value
    assert field in ("sport", "dport"), field
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
    assert m, text
    lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    assert 1 <= lo <= hi <= 65535, text
    return lo, hi


@dataclass(frozen=True)
class MapLookup:
    fields: tuple[str, ...]
    elements: tuple[tuple[tuple[Interval, ...], str], ...]  # (one interval per field, chain)

    def target(self, p: Packet) -> str | None:
        hits = [chain for key, chain in self.elements if all(lo <= getattr(p, f) <= hi
                for f, (lo, hi) in zip(self.fields, key, strict=True))]  # fmt: skip
        assert len(hits) <= 1, f"a verdict map with overlapping elements: {hits}"
        return hits[0] if hits else None


@dataclass(frozen=True)
class Match:
    field: str  # src, dst, proto, sport, dport, iif, dscp
    negated: bool
    values: tuple[Interval, ...] = ()
    names: tuple[str, ...] = ()  # iifname
    set_name: str | None = None  # @dom_x

    def holds(self, p: Packet, sets: Mapping[str, set[int]]) -> bool:
        value = getattr(p, self.field)
        if self.set_name is not None:
            found = value in sets[self.set_name]
        elif self.field == "iif":
            found = value in self.names
        else:
            found = any(lo <= value <= hi for lo, hi in self.values)
        return found != self.negated


@dataclass(frozen=True)
class LinearRule:
    matches: tuple[Match, ...]
    chain: str

    def target(self, p: Packet, sets: Mapping[str, set[int]]) -> str | None:
        return self.chain if all(m.holds(p, sets) for m in self.matches) else None


_TOKEN = re.compile(r'\{|\}|,|!=|"[^"]*"|[^\s{},]+')
_SELECTORS = {**KEYS, "ip dscp": "dscp"}


def parse_linear(line: str) -> LinearRule:
    tokens = _TOKEN.findall(line)
    assert "".join(tokens) == re.sub(r"\s+", "", line), f"unexpected characters in {line!r}"
    matches: list[Match] = []
    i = 0

    def take() -> str:
        nonlocal i
        assert i < len(tokens), f"truncated rule {line!r}"
        i += 1
        return tokens[i - 1]

    while True:
        word = take()
        if word == "goto":
            chain = take()
            assert i == len(tokens), f"something after the verdict in {line!r}"
            return LinearRule(tuple(matches), chain)
        if word == "iifname":
            field = "iif"
        else:
            selector = f"{word} {take()}"
            assert selector in _SELECTORS, f"unknown selector {selector!r} in {line!r}"
            field = _SELECTORS[selector]
        negated = tokens[i] == "!="
        if negated:
            take()
        first = take()
        raw = [first]
        if first == "{":
            raw = []
            while (tok := take()) != "}":
                if tok != ",":
                    raw.append(tok)
            assert raw, f"empty set in {line!r}"
        if raw[0].startswith("@"):
            assert len(raw) == 1 and field == "dst", line
            matches.append(Match(field, negated, set_name=raw[0][1:]))
        elif field == "iif":
            assert all(r.startswith('"') and r.endswith('"') for r in raw), line
            matches.append(Match(field, negated, names=tuple(r[1:-1] for r in raw)))
        else:
            matches.append(Match(field, negated, tuple(parse_value(field, r) for r in raw)))


@dataclass(frozen=True)
class Evaluator:
    steps: tuple[MapLookup | LinearRule, ...]
    chains: Mapping[str, Chain]
    sets: Mapping[str, set[int]]

    def target(self, p: Packet) -> str | None:
        for step in self.steps:
            hit = step.target(p) if isinstance(step, MapLookup) else step.target(p, self.sets)
            if hit is not None:
                assert hit in self.chains, f"goto a chain that does not exist: {hit}"
                return hit
        return None


def evaluator(compiled: CompiledRules, rules: Sequence[RuleConfig], resolved: Mapping[str, set[int]]) -> Evaluator:
    """Read the compiled objects back, checking on the way what nft would insist on."""
    maps = {o.name: o for o in compiled.objects if isinstance(o, Set) and o.map_type}
    chains = {o.name: o for o in compiled.objects if isinstance(o, Chain)}
    counters = {o.name for o in compiled.objects if isinstance(o, Counter)}
    assert len(chains) == len(rules) and len(counters) == len(rules), "one chain and one counter per rule"
    for rule in rules:
        name = rule_chain(rule.name)
        assert name in counters
        assert chains[name].rules == (f'counter name "{name}"', verdict(rule))
    sets: dict[str, set[int]] = {}
    for rule in rules:
        if rule.dst_domains:
            dom = [o for o in compiled.objects if isinstance(o, Set) and o.name == domain_set(rule.name)]
            assert len(dom) == 1 and dom[0].elements is None and dom[0].type == "ipv4_addr"  # filled by the daemon
            sets[domain_set(rule.name)] = set().union(*(resolved.get(d, set()) for d in rule.dst_domains))
    steps: list[MapLookup | LinearRule] = []
    used_maps: list[str] = []
    for line in compiled.lookups:
        m = re.fullmatch(r"(?:meta l4proto (\S+) )?(.+) vmap @(rules_\d+(?:_\S+)?)", line)
        if m is None:
            steps.append(parse_linear(line))
            continue
        guard, name = m.group(1), m.group(3)
        keys = m.group(2).split(" . ")
        assert all(k in KEYS for k in keys), line
        fields = tuple(KEYS[k] for k in keys)
        assert list(fields) == [f for f in KEYS.values() if f in fields], f"key fields out of order: {line}"
        # A guarded map (one per protocol) holds the key without the protocol, which the guard fixes.
        assert (guard is None) == (name == f"rules_{name.split('_')[1]}"), line
        assert guard is None or ("proto" not in fields and name.endswith(f"_{guard}")), line
        vmap = maps[name]
        types = {"src": "ipv4_addr", "dst": "ipv4_addr", "proto": "inet_proto", "sport": "inet_service",
                 "dport": "inet_service"}  # fmt: skip
        assert vmap.type == " . ".join(types[f] for f in fields), (vmap.type, line)
        assert vmap.map_type == "verdict" and "interval" in vmap.flags
        assert vmap.elements, "an empty verdict map"
        elements = []
        for element in vmap.elements:
            key, _, target = element.partition(" : ")
            assert target.startswith("goto "), element
            parts = key.split(" . ")
            assert len(parts) == len(fields), element
            values = {f: parse_value(f, v) for f, v in zip(fields, parts, strict=True)}
            if guard is not None:
                values["proto"] = parse_value("proto", guard)
            order = tuple(f for f in KEYS.values() if f in values)
            elements.append((tuple(values[f] for f in order), target[5:]))
        assert_disjoint([key for key, _ in elements])  # nft refuses overlaps; first match would break
        steps.append(MapLookup(order if guard else fields, tuple(elements)))
        used_maps.append(name)
    assert sorted(used_maps) == sorted(maps), "every map is looked up exactly once"
    return Evaluator(tuple(steps), chains, sets)


def assert_disjoint(keys: list[tuple[Interval, ...]]) -> None:
    """No two elements overlap in every field (a sweep over the first field, not all pairs)."""
    keys = sorted(keys)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            if b[0][0] > a[0][1]:
                break
            assert not all(x[0] <= y[1] and y[0] <= x[1] for x, y in zip(a, b, strict=True)), (a, b)


def first_rule_order(compiled: CompiledRules, rules: Sequence[RuleConfig]) -> list[int]:
    """Per lookup line, the positions (in ``rules``) of the rules it can send to."""
    position = {rule_chain(r.name): i for i, r in enumerate(rules)}
    maps = {o.name: o for o in compiled.objects if isinstance(o, Set) and o.map_type}
    out: list[list[int]] = []
    group = None
    for line in compiled.lookups:
        m = re.fullmatch(r"(.+) vmap @(rules_(\d+)\S*)", line)
        elements = maps[m.group(2)].elements if m else [line]
        positions = {position[re.search(r"goto (\S+)$", e).group(1)] for e in elements}
        if m and m.group(3) == group:  # the per-protocol maps of one group are one step
            out[-1] = sorted(set(out[-1]) | positions)
        else:
            out.append(sorted(positions))
        group = m.group(3) if m else None
    return out


# --- random rule lists, built to overlap ------------------------------------------------------------

BASE = int(ipaddress.IPv4Address("10.0.0.0"))
SPAN = 1 << 10  # 10.0.0.0 - 10.0.3.255: prefixes from /22 to /32 inside it overlap often
OUTSIDE = int(ipaddress.IPv4Address("192.168.7.0"))
PORTS = 40
IIFS = ("lan0", "lan1", "lan2")
DSCPS = (0, 8, 10, 46)
PROTOS = (TCP, UDP, ICMP, SCTP, GRE)
DOMAINS = ("a.example.com", "b.example.com")

nets = st.builds(
    lambda addr, plen: ipaddress.IPv4Network((BASE + addr, plen), strict=False),
    st.integers(0, SPAN - 1),
    st.sampled_from([22, 24, 26, 28, 29, 30, 31, 32, 32, 32]),
)
port_ranges = st.builds(  # as a config gives them: 7 or "7-9"
    lambda lo, width: lo if width == 0 else f"{lo}-{min(PORTS, lo + width)}",
    st.integers(1, PORTS),
    st.sampled_from([0, 0, 1, 3, 9]),
)
SHAPES = (
    frozenset({"src"}),
    frozenset({"dst"}),
    frozenset({"src", "dst"}),
    frozenset({"proto"}),
    frozenset({"dport"}),
    frozenset({"proto", "dport"}),
    frozenset({"src", "proto", "dport"}),
    frozenset({"src", "sport", "dport"}),
    frozenset({"dst", "proto", "sport"}),
    frozenset(),  # matches everything
)
EXTRAS = ("src_not", "dst_not", "iif", "dscp", "dst_domains")


@st.composite
def rule_lists(draw: st.DrawFn) -> list[RuleConfig]:
    shapes = draw(st.lists(st.sampled_from(SHAPES), min_size=1, max_size=3))  # few shapes: runs of the same one
    rules = []
    for n in range(draw(st.integers(1, 25))):
        fields: dict[str, object] = {}
        shape = set(draw(st.sampled_from(shapes)))
        if draw(st.integers(0, 5)) == 0:
            shape.add(draw(st.sampled_from(EXTRAS)))
        if "src" in shape:
            fields["src"] = draw(st.lists(nets, min_size=1, max_size=4))
        if "dst" in shape:
            fields["dst"] = draw(st.lists(nets, min_size=1, max_size=4))
        if "src_not" in shape:
            fields["src_not"] = draw(st.lists(nets, min_size=1, max_size=2))
        if "dst_not" in shape:
            fields["dst_not"] = draw(st.lists(nets, min_size=1, max_size=2))
        ports = "sport" in shape or "dport" in shape
        if "sport" in shape:
            fields["sport"] = draw(st.lists(port_ranges, min_size=1, max_size=4))
        if "dport" in shape:
            fields["dport"] = draw(st.lists(port_ranges, min_size=1, max_size=4))
        if "proto" in shape or (ports and draw(st.booleans())):
            fields["proto"] = draw(st.sampled_from((TCP, UDP, SCTP) if ports else PROTOS))
        if "iif" in shape:
            fields["iif"] = draw(st.lists(st.sampled_from(IIFS), min_size=1, max_size=2, unique=True))
        if "dscp" in shape:
            fields["dscp"] = draw(st.lists(st.sampled_from(DSCPS), min_size=1, max_size=2, unique=True))
        if "dst_domains" in shape:
            fields["dst_domains"] = draw(st.lists(st.sampled_from(DOMAINS), min_size=1, max_size=2, unique=True))
        target = draw(st.sampled_from([{"via": "a"}, {"policy": "p"}, {"action": "drop"}, {"action": "bypass"}]))
        rules.append(RuleConfig(name=f"r{n}", **fields, **target))
    return rules


def packets_for(rules: Sequence[RuleConfig], rng: random.Random, resolved: Mapping[str, set[int]]) -> list[Packet]:
    """Random packets, and packets at and just beyond the edges of every rule's values."""

    def addr() -> int:
        return OUTSIDE + rng.randrange(256) if rng.random() < 0.05 else BASE + rng.randrange(SPAN)

    def near(nets: Sequence[ipaddress.IPv4Network], fallback: int) -> int:
        if not nets:
            return fallback
        net = rng.choice(nets)
        edge = rng.choice([int(net.network_address), int(net.broadcast_address)])
        return max(0, edge + rng.choice([-1, 0, 0, 1]))

    def port_near(ranges: Sequence[tuple[int, int]], fallback: int) -> int:
        if not ranges:
            return fallback
        return max(1, rng.choice(rng.choice(ranges)) + rng.choice([-1, 0, 0, 1]))

    def random_packet() -> Packet:
        return Packet(addr(), addr(), rng.choice(PROTOS), rng.randint(1, PORTS + 1), rng.randint(1, PORTS + 1),
                      rng.choice(IIFS), rng.choice(DSCPS))  # fmt: skip

    out = [random_packet() for _ in range(150)]
    for rule in rules:
        for _ in range(6):
            base = random_packet()
            dst = near(rule.dst or rule.dst_not, base.dst)
            if rule.dst_domains and rng.random() < 0.7:
                dst = rng.choice(sorted(set().union(*(resolved[d] for d in rule.dst_domains))))
            out.append(
                Packet(
                    near(rule.src or rule.src_not, base.src),
                    dst,
                    rule.proto if rule.proto is not None and rng.random() < 0.8 else base.proto,
                    port_near(rule.sport, base.sport),
                    port_near(rule.dport, base.dport),
                    rng.choice(rule.iif) if rule.iif and rng.random() < 0.8 else base.iif,
                    rng.choice(rule.dscp) if rule.dscp and rng.random() < 0.8 else base.dscp,
                )
            )
    return out


def resolution(rng: random.Random) -> dict[str, set[int]]:
    return {d: {BASE + rng.randrange(SPAN) for _ in range(rng.randint(1, 4))} for d in DOMAINS}


# --- the property --------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=rule_lists(), seed=st.integers(0, 2**32))
def test_compiled_lookups_agree_with_first_match_on_every_packet(rules: list[RuleConfig], seed: int) -> None:
    rng = random.Random(seed)  # packets in bulk: drawn from the data stream, they would make shrinking crawl
    resolved = resolution(rng)
    compiled = compile_rules(rules, verdict)
    ev = evaluator(compiled, rules, resolved)
    for p in packets_for(rules, rng, resolved):
        assert ev.target(p) == first_match(rules, p, resolved), (p, compiled.lookups)
    # and the lookups come in rule order: a lookup never leads to a rule before one of an earlier lookup
    order = first_rule_order(compiled, rules)
    assert [i for positions in order for i in positions] == list(range(len(rules)))


# --- what merging buys, and where it stops ------------------------------------------------------------------


def pins(n: int, start: str = "10.1.0.0", step: int = 1) -> list[str]:
    first = int(ipaddress.IPv4Address(start))
    return [str(ipaddress.IPv4Address(first + i * step)) for i in range(n)]


def maps_of(compiled: CompiledRules) -> dict[str, Set]:
    return {o.name: o for o in compiled.objects if isinstance(o, Set) and o.map_type}


def test_500_single_address_pins_are_one_map_lookup() -> None:
    rules = [RuleConfig(name=f"pin{i}", src=[a], via="a" if i % 2 else "b") for i, a in enumerate(pins(500))]
    compiled = compile_rules(rules, verdict)
    assert compiled.lookups == ("ip saddr vmap @rules_0",)
    rules_0 = maps_of(compiled)["rules_0"]
    assert len(rules_0.elements) == 500
    assert rules_0.elements[7] == "10.1.0.7 : goto rule_pin7"
    ev = evaluator(compiled, rules, {})
    for i, a in enumerate(pins(500)):
        packet = Packet(int(ipaddress.IPv4Address(a)), 1, TCP, 1, 1, "lan0", 0)
        assert ev.target(packet) == f"rule_pin{i}"
    assert ev.target(Packet(int(ipaddress.IPv4Address("10.1.1.244")), 1, TCP, 1, 1, "lan0", 0)) is None


def test_the_documented_gaming_rule_is_one_map_of_its_product() -> None:
    rule = RuleConfig(name="gaming", src=["10.0.0.0/24"], proto="udp", dport=["27015-27030", 3478], via="fiber")
    compiled = compile_rules([rule], verdict)
    # the protocol is a guard: one map per protocol, keyed by the other fields
    assert compiled.lookups == ("meta l4proto udp ip saddr . th dport vmap @rules_0_udp",)
    assert maps_of(compiled)["rules_0_udp"].elements == (
        "10.0.0.0-10.0.0.255 . 3478 : goto rule_gaming",
        "10.0.0.0-10.0.0.255 . 27015-27030 : goto rule_gaming",
    )
    assert maps_of(compiled)["rules_0_udp"].type == "ipv4_addr . inet_service"


def test_ports_without_a_proto_are_tcp_and_udp() -> None:
    compiled = compile_rules([RuleConfig(name="web", dport=[443], action="bypass")], verdict)
    assert compiled.lookups == (
        "meta l4proto tcp th dport vmap @rules_0_tcp",
        "meta l4proto udp th dport vmap @rules_0_udp",
    )
    assert maps_of(compiled)["rules_0_tcp"].elements == ("443 : goto rule_web",)
    assert maps_of(compiled)["rules_0_udp"].elements == ("443 : goto rule_web",)
    ev = evaluator(compiled, [RuleConfig(name="web", dport=[443], action="bypass")], {})
    assert ev.target(Packet(1, 2, SCTP, 9, 443, "lan0", 0)) is None
    assert ev.target(Packet(1, 2, UDP, 9, 443, "lan0", 0)) == "rule_web"


def test_a_partly_shadowed_later_rule_starts_a_new_map() -> None:
    rules = [
        RuleConfig(name="office", src=["10.0.0.0/24"], via="a"),
        RuleConfig(name="other", src=["10.0.9.0/24"], via="a"),  # disjoint: same map
        RuleConfig(name="boss", src=["10.0.0.5", "10.0.7.1"], via="b"),  # 10.0.0.5 is shadowed by office
        RuleConfig(name="lab", src=["10.0.8.0/24"], via="b"),  # disjoint from boss: boss's map
    ]
    compiled = compile_rules(rules, verdict)
    assert compiled.lookups == ("ip saddr vmap @rules_0", "ip saddr vmap @rules_1")
    assert first_rule_order(compiled, rules) == [[0, 1], [2, 3]]
    ev = evaluator(compiled, rules, {})
    at = {a: Packet(int(ipaddress.IPv4Address(a)), 1, TCP, 1, 1, "lan0", 0) for a in ("10.0.0.5", "10.0.7.1")}
    assert ev.target(at["10.0.0.5"]) == "rule_office"  # first match wins
    assert ev.target(at["10.0.7.1"]) == "rule_boss"


def test_a_rule_that_cannot_be_a_map_element_ends_the_map_and_keeps_its_place() -> None:
    rules = [
        RuleConfig(name="one", src=["10.0.0.1"], via="a"),
        RuleConfig(name="guests", iif=["lan1"], src=["10.0.0.2"], via="b"),
        RuleConfig(name="two", src=["10.0.0.2"], via="a"),
    ]
    compiled = compile_rules(rules, verdict)
    assert compiled.lookups == (
        "ip saddr vmap @rules_0",
        'iifname { "lan1" } ip saddr 10.0.0.2 goto rule_guests',
        "ip saddr vmap @rules_1",
    )


def test_negations_dscp_domains_and_interfaces_are_linear_rules() -> None:
    rule = RuleConfig(
        name="mixed",
        src=["10.0.0.0/24", "10.0.1.0/24"],
        src_not=["10.0.0.7"],
        dst_domains=["video.example.com"],
        proto="tcp",
        sport=[1024, "2000-3000"],
        iif=["lan0", "lan1"],
        dscp=["ef", 5],
        policy="p",
    )
    compiled = compile_rules([rule], verdict)
    assert compiled.lookups == (
        'iifname { "lan0", "lan1" } ip saddr 10.0.0.0/23 ip saddr != 10.0.0.7 ip daddr @dom_mixed '
        "meta l4proto tcp th sport { 1024, 2000-3000 } ip dscp { 5, ef } goto rule_mixed",
    )
    assert not maps_of(compiled)


def test_domains_match_ipv6_through_a_set_of_their_own() -> None:
    """A domain rule's IPv6 lookup reads ``dom6_<rule>`` (AAAA answers), made by the IPv6 compile only;
    an IPv4 address beside the domains still keeps the rule out of IPv6."""
    rule = RuleConfig(name="video", dst_domains=["video.example.com"], dport=[443], via="a")
    v4_only = RuleConfig(name="v4", dst=["192.0.2.0/24"], dst_domains=["cdn.example.com"], via="a")
    compiled6 = compile_rules([rule, v4_only], verdict, 600, family=6)
    assert compiled6.lookups == ("ip6 daddr @dom6_video meta l4proto { tcp, udp } th dport 443 goto rule_video",)
    sets = {o.name: o for o in compiled6.objects if isinstance(o, Set)}
    assert set(sets) == {"dom6_video", "dom6_v4"}
    assert (sets["dom6_video"].type, sets["dom6_video"].flags, sets["dom6_video"].timeout) == (
        "ipv6_addr",
        ("timeout",),
        600,
    )
    assert not any(isinstance(o, Set) and o.name.startswith("dom6_") for o in compile_rules([rule], verdict).objects)


def test_a_product_larger_than_a_map_may_hold_stays_one_linear_rule() -> None:
    # 64 separate addresses x 2 protocols x 32 separate ports = MAX_MAP_ELEMENTS: still a map ...
    ports = [2 * i + 1 for i in range(32)]
    fits = RuleConfig(name="fits", src=pins(64, step=2), dport=ports, via="a")
    assert MAX_MAP_ELEMENTS == 64 * 2 * 32
    compiled = compile_rules([fits], verdict)
    assert compiled.lookups == (
        "meta l4proto tcp ip saddr . th dport vmap @rules_0_tcp",
        "meta l4proto udp ip saddr . th dport vmap @rules_0_udp",
    )
    assert sum(len(m.elements) for m in maps_of(compiled).values()) == MAX_MAP_ELEMENTS
    # ... one port more, and it is one rule with anonymous sets (still one lookup per field)
    huge = RuleConfig(name="huge", src=pins(64, step=2), dport=[*ports, 99], via="a")
    before = RuleConfig(name="before", src=["10.9.0.1"], via="b")
    after = RuleConfig(name="after", src=["10.9.0.2"], via="b")
    compiled = compile_rules([before, huge, after], verdict)
    assert compiled.lookups[0] == "ip saddr vmap @rules_0"
    assert compiled.lookups[1].startswith("ip saddr { 10.1.0.0, 10.1.0.2, ")
    assert " 10.1.0.126 } meta l4proto { tcp, udp } th dport { 1, 3, 5, " in compiled.lookups[1]
    assert compiled.lookups[1].endswith(", 63, 99 } goto rule_huge")
    assert compiled.lookups[2] == "ip saddr vmap @rules_1"
    ev = evaluator(compiled, [before, huge, after], {})
    hit = Packet(int(ipaddress.IPv4Address("10.1.0.126")), 1, UDP, 5, 99, "lan0", 0)
    assert ev.target(hit) == "rule_huge"
    assert ev.target(Packet(hit.src + 1, 1, UDP, 5, 99, "lan0", 0)) is None


def test_multi_field_maps_stop_at_the_partition_limit_and_keep_the_order() -> None:
    ports = [2 * i + 1 for i in range(20)]
    rules = [  # leading values (src . proto): 100 x 2 = 200, then 28 x 2 = 56 (256 in all), then 1 more
        RuleConfig(name="big", src=pins(100, "10.0.0.0", 2), dport=ports, via="a"),
        RuleConfig(name="mid", src=pins(28, "10.1.0.0", 2), dport=[7], via="b"),
        RuleConfig(name="one", src=["10.2.0.0"], proto="tcp", dport=[7], via="a"),
    ]
    assert MAX_PARTS == 200 + 56
    compiled = compile_rules(rules, verdict)
    assert compiled.lookups == (
        "meta l4proto tcp ip saddr . th dport vmap @rules_0_tcp",
        "meta l4proto udp ip saddr . th dport vmap @rules_0_udp",
        "meta l4proto tcp ip saddr . th dport vmap @rules_1_tcp",
    )
    assert [len(m.elements) for m in maps_of(compiled).values()] == [100 * 20 + 28, 100 * 20 + 28, 1]
    ev = evaluator(compiled, rules, {})
    for src, rule in (("10.0.0.38", "big"), ("10.1.0.46", "mid"), ("10.2.0.0", "one")):
        assert ev.target(Packet(int(ipaddress.IPv4Address(src)), 1, TCP, 1000, 7, "lan0", 0)) == f"rule_{rule}"


def test_many_port_rules_compile_fast_enough_to_run_every_resync() -> None:
    """1,000 port rules: the overlap checks bisect per (proto) partition instead of comparing every pair.

    Counted, not timed: at most a few checks per element."""
    rules = [RuleConfig(name=f"p{i}", proto="tcp" if i % 2 else "udp", dport=[1000 + i], via="a")
             for i in range(1000)]  # fmt: skip
    calls = 0
    real = rules_module._overlaps

    def counting(a: object, b: object) -> bool:
        nonlocal calls
        calls += 1
        return real(a, b)  # type: ignore[arg-type]

    rules_module._overlaps = counting
    try:
        compiled = compile_rules(rules, verdict)
    finally:
        rules_module._overlaps = real
    assert compiled.lookups == (
        "meta l4proto tcp th dport vmap @rules_0_tcp",
        "meta l4proto udp th dport vmap @rules_0_udp",
    )
    assert calls <= 2 * len(rules)  # two partitions (tcp, udp): one comparison of leading values each


def test_an_empty_rule_list_compiles_to_nothing() -> None:
    assert compile_rules([], verdict) == CompiledRules((), ())


@pytest.mark.parametrize(
    ("line", "packet", "expected"),
    [  # the evaluator itself: negation, sets, interfaces (a reference that always agreed would prove nothing)
        ("ip saddr != { 10.0.0.0/24, 10.0.2.1 } goto rule_x", Packet(BASE + 5, 0, TCP, 1, 1, "lan0", 0), None),
        ("ip saddr != { 10.0.0.0/24, 10.0.2.1 } goto rule_x", Packet(BASE + 256, 0, TCP, 1, 1, "lan0", 0), "rule_x"),
        ('iifname { "lan1" } ip dscp { ef, 8 } goto rule_x', Packet(0, 0, TCP, 1, 1, "lan1", 46), "rule_x"),
        ('iifname { "lan1" } ip dscp { ef, 8 } goto rule_x', Packet(0, 0, TCP, 1, 1, "lan0", 46), None),
        ("meta l4proto { tcp, udp } th dport { 1-5, 9 } goto rule_x", Packet(0, 0, UDP, 1, 9, "lan0", 0), "rule_x"),
        ("meta l4proto { tcp, udp } th dport { 1-5, 9 } goto rule_x", Packet(0, 0, GRE, 1, 9, "lan0", 0), None),
    ],
)
def test_the_reference_evaluator_reads_linear_rules(line: str, packet: Packet, expected: str | None) -> None:
    assert parse_linear(line).target(packet, {}) == expected
