"""An in-memory kernel for unit tests: every method of :class:`wanlb.kernel.Kernel`, no root, no I/O.

Links, connected routes, ip rules and routes, sysctls and conntrack entries
are plain containers.  nft is a small interpreter of the transaction language
:mod:`wanlb.nftsync` emits, strict where nft is strict: a transaction is
applied to a copy, line by line, and replaces the tables only if every line
succeeded (``nft -f`` is atomic); a missing object, a chain or set still
referenced by a rule or a map element, or an unknown line raise
:class:`~wanlb.adapters.nft.NftError` and change nothing.  :meth:`FakeKernel.nft_read`
lists the ``inet wanlb`` table in the shape of ``nft -j list table inet wanlb``'s
``nftables`` array, rules with their text as ``expr``.

Test knobs: ``fail_nft`` (a message: every ``nft_apply`` is refused),
``calls`` (every change, in order: ``("nft_apply", text)``, ``("add_rule",
rule)``, ...; reads are not logged), :meth:`FakeKernel.nft_edit` and friends to
change the table by hand (drift), :meth:`FakeKernel.everything` to compare whole
kernels.
"""

from __future__ import annotations

import copy
import errno
import ipaddress
import re
import socket
import zlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from wanlb.adapters.nft import NftError
from wanlb.adapters.routing import Lookup, RoutingError
from wanlb.ctnetlink.entry import Entry
from wanlb.render import Route, Rule
from wanlb.runtime import sysctl_key_allowed
from wanlb.tune import TableStats
from wanlb.uplink import ConnectedRoute, DefaultRoute, Interface, Snapshot

ENOENT = "No such file or directory"
EBUSY = "Device or resource busy"
EEXIST = "File exists"
EOPNOTSUPP = "Operation not supported"
PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
_NAME = r"[A-Za-z_][A-Za-z0-9_.-]*"
_WHERE = rf"(?P<family>\w+) (?P<table>{_NAME})"
_LINES = [
    (re.compile(rf"add table {_WHERE}"), "add_table"),
    (re.compile(rf"delete table {_WHERE}"), "delete_table"),
    (re.compile(rf"add chain {_WHERE} (?P<name>{_NAME})(?: \{{ (?P<spec>[^{{}}]*) \}})?"), "add_chain"),
    (re.compile(rf"add rule {_WHERE} (?P<name>{_NAME}) (?P<rule>\S.*)"), "add_rule"),
    (re.compile(rf"flush (?P<kind>chain|set|map) {_WHERE} (?P<name>{_NAME})"), "flush"),
    (re.compile(rf"delete (?P<kind>chain|set|map|counter|ct helper) {_WHERE} (?P<name>{_NAME})"), "delete"),
    (re.compile(rf"add (?P<kind>set|map) {_WHERE} (?P<name>{_NAME}) \{{ (?P<spec>[^{{}}]*) \}}"), "add_set"),
    (re.compile(rf"add element {_WHERE} (?P<name>{_NAME}) \{{ (?P<elems>.*) \}}"), "add_element"),
    (re.compile(rf"add counter {_WHERE} (?P<name>{_NAME})"), "add_counter"),
    (re.compile(rf"add ct helper {_WHERE} (?P<name>{_NAME}) \{{ (?P<spec>[^{{}}]*) \}}"), "add_helper"),
]
_HOOK_RE = re.compile(r"type (\w+) hook (\w+) priority (-?\d+|\w+);(?: policy (accept|drop);)?")
_HELPER_RE = re.compile(r'type "([^"]+)" protocol (tcp|udp); l3proto (ip|ip6|inet);?')


class _Refused(Exception):
    """One line nft would refuse; becomes an NftError naming the line."""


@dataclass
class NftChain:
    name: str
    hook: tuple[str, str, int, str] | None = None  # (type, hook, priority, policy)
    rules: list[str] = field(default_factory=list)


@dataclass
class NftSet:
    kind: str  # "set" or "map"
    name: str
    type: str
    map_type: str | None = None
    flags: tuple[str, ...] = ()
    timeout: int | None = None
    size: int | None = None
    elements: list[str] = field(default_factory=list)

    @property
    def definition(self) -> tuple[Any, ...]:
        return (self.kind, self.type, self.map_type, tuple(sorted(self.flags)), self.timeout, self.size)


@dataclass
class NftTable:
    chains: dict[str, NftChain] = field(default_factory=dict)
    sets: dict[str, NftSet] = field(default_factory=dict)  # sets and maps share one namespace, as in nft
    counters: dict[str, list[int]] = field(default_factory=dict)  # name -> [packets, bytes]
    helpers: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # name -> (type, protocol, l3proto)

    def references(self) -> list[tuple[str, tuple[str, str]]]:
        """(where, (kind, name)) for every reference a rule or a map element holds."""
        refs = []
        for chain in self.chains.values():
            refs += [(f"chain {chain.name}", ref) for rule in chain.rules for ref in rule_references(rule)]
        for s in self.sets.values():
            refs += [(f"{s.kind} {s.name}", ref) for e in s.elements for ref in rule_references(e)]
        return refs


def rule_references(text: str) -> set[tuple[str, str]]:
    """The named objects a rule (or a map element) refers to: jumped-to chains, @sets, counters, helpers."""
    refs = {("chain", m) for m in re.findall(rf"\b(?:goto|jump) ({_NAME})", text)}
    refs |= {("set", m) for m in re.findall(rf"@({_NAME})", text)}
    refs |= {("counter", m) for m in re.findall(r'counter name "([^"]+)"', text)}
    objmap = re.search(r"counter name \S+ map \{(.*)\}", text)
    if objmap:
        refs |= {("counter", m) for m in re.findall(r':\s*"([^"]+)"', objmap.group(1))}
    refs |= {("ct helper", m) for m in re.findall(r'ct helper set "([^"]+)"', text)}
    return refs


def split_elements(text: str) -> list[str]:
    """``a, b : c, { x, y }`` → top-level elements."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        depth += (ch == "{") - (ch == "}")
        cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def _seconds(text: str) -> int:
    m = re.fullmatch(r"(\d+)([smhd]?)", text)
    if m is None:
        raise _Refused(f"syntax error: bad timeout {text!r}")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += (ch == "{") - (ch == "}")
        if depth < 0:
            return False
    return depth == 0 and text.count('"') % 2 == 0


class FakeKernel:
    """See the module docstring.  Attributes are the state; tests may read and set them freely."""

    def __init__(
        self,
        links: dict[str, bool] | None = None,
        connected: Sequence[ConnectedRoute] = (),
        sysctls: dict[str, str] | None = None,
    ) -> None:
        self.link_state: dict[str, bool] = dict(links or {})
        self.connected_routes: list[ConnectedRoute] = list(connected)
        # An interface's IPv4 addresses; one missing here has one in each of its connected networks (.2),
        # as in a real kernel, where a connected route comes from an address.
        self.addresses: dict[str, list[ipaddress.IPv4Interface]] = {}
        self.default_routes: list[DefaultRoute] = []  # other people's default routes (DHCP clients, pppd)
        self.local_addresses: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()  # route_lookup: "local"
        self.indexes: dict[str, int] = {}  # interface index by name; set a new one to "re-create" it
        self.refuse_routes: dict[str, str] = {}  # device -> the error every route through it gets
        self.ip_rules: list[Rule] = []
        self.ip_routes: list[Route] = []
        self.sysctls: dict[str, str] = dict(sysctls or {})
        self.conntrack: list[int] = []  # the mark of each entry
        self.conntrack6: list[int] = []  # the mark of each IPv6 entry
        self.ct_entries: list[Entry] = []  # whole entries, for a selective delete (apart from the marks above)
        self.ct_max = 262144
        self.ct_trouble = {"drop": 0, "early_drop": 0, "insert_failed": 0}
        self.tables: dict[str, NftTable] = {}  # inet tables by name
        self.fail_nft: str | None = None
        self.calls: list[tuple[Any, ...]] = []
        self.nft_refused: list[str] = []
        self._handle = 0

    # --- links and routing -------------------------------------------------------------------

    def links(self) -> dict[str, bool]:
        return dict(self.link_state)

    def set_link(self, name: str, usable: bool, drop_routes: bool = False) -> None:
        """Change a link (``drop_routes``: what the kernel does when a device goes admin down)."""
        self.link_state[name] = usable
        if drop_routes and not usable:
            self.ip_routes = [r for r in self.ip_routes if r.dev != name]

    def connected(self) -> tuple[ConnectedRoute, ...]:
        return tuple(sorted(set(self.connected_routes)))

    def snapshot(
        self, protocols: Collection[int], wans: Collection[str] = (), tables: Collection[int] = (254,)
    ) -> Snapshot:
        interfaces = {}
        for name in wans:
            if name not in self.link_state:
                continue
            addresses = self.addresses.get(name)
            if addresses is None:
                addresses = [ipaddress.IPv4Interface(f"{r.dst.network_address + 2}/{r.dst.prefixlen}")
                             for r in self.connected_routes if r.dev == name and r.dst.version == 4]  # fmt: skip
            index = self.indexes.setdefault(name, len(self.indexes) + 2)
            interfaces[name] = Interface(name, index, self.link_state[name], tuple(addresses))
        return Snapshot(
            connected=self.connected(),
            interfaces=interfaces,
            defaults=tuple(r for r in self.default_routes if r.table in tables),
            routes=tuple(self.routes(protocols)),
        )

    def rules(self, protocols: Collection[int]) -> list[Rule]:
        return [r for r in self.ip_rules if r.protocol in protocols]

    def add_rule(self, rule: Rule) -> None:
        if rule in self.ip_rules:  # pyroute2 adds with NLM_F_EXCL
            raise NetlinkError(errno.EEXIST, EEXIST)
        self.calls.append(("add_rule", rule))
        self.ip_rules.append(rule)

    def delete_rule(self, rule: Rule) -> None:
        self.calls.append(("delete_rule", rule))
        if rule in self.ip_rules:  # gone already is fine (the adapter ignores ENOENT)
            self.ip_rules.remove(rule)

    def routes(self, protocols: Collection[int]) -> list[Route]:
        return [r for r in self.ip_routes if r.protocol in protocols]

    def replace_routes(self, routes: Sequence[Route]) -> list[tuple[Route, str]]:
        failed = []
        for route in routes:
            try:
                self.replace_route(route)
            except RoutingError as exc:
                failed.append((route, str(exc)))
        return failed

    def replace_route(self, route: Route) -> None:
        if route.dev in self.refuse_routes:
            raise RoutingError(self.refuse_routes[route.dev])
        if route.dev not in self.link_state:
            raise RoutingError(f"device {route.dev} does not exist")
        if route.gateway is not None and not self.link_state[route.dev]:
            raise RoutingError("Nexthop device is not up")
        self.calls.append(("replace_route", route))
        self.ip_routes = [r for r in self.ip_routes if (r.table, r.dst) != (route.table, route.dst)]
        self.ip_routes.append(route)

    def route_lookup(self, dst: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Lookup:
        """The main table as the connected routes and a default make it; ``local_addresses`` are the box's own."""
        if dst in self.local_addresses:
            return "local", 255, ipaddress.ip_network(dst)
        default = ipaddress.ip_network("::/0" if dst.version == 6 else "0.0.0.0/0")
        nets = [r.dst for r in self.connected_routes if r.dst.version == dst.version and dst in r.dst]
        return "unicast", 254, max(nets, key=lambda n: n.prefixlen, default=default)

    def delete_route(self, route: Route) -> None:
        """Like the adapter: the route with this table, destination and protocol, if any."""
        self.calls.append(("delete_route", route))
        for r in self.ip_routes:
            if (r.table, r.dst, r.protocol) == (route.table, route.dst, route.protocol):
                self.ip_routes.remove(r)
                return

    # --- sysctls and conntrack -----------------------------------------------------------------

    def sysctl_read(self, key: str) -> str | None:
        return self.sysctls.get(key)

    def sysctl_write(self, key: str, value: str) -> None:
        if not sysctl_key_allowed(key):
            raise ValueError(f"refusing to write sysctl {key!r}: not one wanlb changes")
        if key not in self.sysctls:
            raise FileNotFoundError(errno.ENOENT, ENOENT, f"/proc/sys/{key}")
        self.calls.append(("sysctl_write", key, value))
        self.sysctls[key] = value

    def ct_count(self, mark: int, mask: int, family: int = 0) -> int:
        tables = {0: self.conntrack + self.conntrack6, 4: self.conntrack, 6: self.conntrack6}[family]
        return sum(1 for m in tables if m & mask == mark)

    def ct_flush(self, mark: int, mask: int, family: int = 0) -> None:
        self.calls.append(("ct_flush", mark, mask) if not family else ("ct_flush", mark, mask, family))
        if family in (0, 4):
            self.conntrack = [m for m in self.conntrack if m & mask != mark]
        if family in (0, 6):
            self.conntrack6 = [m for m in self.conntrack6 if m & mask != mark]

    def ct_delete_where(self, mark: int, mask: int, family: int, pick: Callable[[Entry], bool]) -> int:
        self.calls.append(("ct_delete_where", mark, mask, family))
        af = {4: socket.AF_INET, 6: socket.AF_INET6}.get(family)
        gone = [e for e in self.ct_entries if (e.mark or 0) & mask == mark and af in (None, e.family) and pick(e)]
        self.ct_entries = [e for e in self.ct_entries if e not in gone]
        return len(gone)

    def ct_stats(self) -> TableStats:
        return TableStats(len(self.conntrack), self.ct_max, **self.ct_trouble)

    # --- nft -------------------------------------------------------------------------------------

    def nft_generation(self) -> int | None:
        """Like the kernel's ruleset generation: moves with any change of a table's definition or static content
        (here a fingerprint of them, so a test that edits the tables directly moves it too)."""
        state = repr([(name, sorted(self.nft_objects(name).items(), key=repr)) for name in sorted(self.tables)])
        return zlib.crc32(state.encode())

    def nft_read(self, table: str = "wanlb") -> list[dict[str, Any]] | None:
        t = self.tables.get(table)
        if t is None:
            return None
        base = {"family": "inet", "table": table}
        out: list[dict[str, Any]] = [
            {"metainfo": {"version": "1.0.6", "release_name": "fake", "json_schema_version": 1}},
            {"table": {"family": "inet", "name": table, "handle": 1}},
        ]
        for name, (packets, nbytes) in t.counters.items():
            out.append({"counter": {**base, "name": name, "handle": self._next(), "packets": packets, "bytes": nbytes}})
        for name, (typ, proto, l3) in t.helpers.items():
            helper = {**base, "name": name, "handle": self._next(), "type": typ, "protocol": proto, "l3proto": l3}
            out.append({"ct helper": helper})
        for s in t.sets.values():
            item: dict[str, Any] = {**base, "name": s.name, "handle": self._next()}
            item["type"] = s.type.split(" . ") if " . " in s.type else s.type
            if s.map_type:
                item["map"] = s.map_type
            if s.size is not None:
                item["size"] = s.size
            flags = [f for f in s.flags if f != "dynamic"]  # nft -j does not report it
            if flags:
                item["flags"] = flags
            if s.timeout is not None:
                item["timeout"] = s.timeout
            if s.elements:
                item["elem"] = [e.split(" : ", 1) if s.map_type else e for e in s.elements]
            out.append({s.kind: item})
        for c in t.chains.values():
            chain: dict[str, Any] = {**base, "name": c.name, "handle": self._next()}
            if c.hook:
                chain.update(zip(("type", "hook", "prio", "policy"), c.hook, strict=True))
            out.append({"chain": chain})
        for c in t.chains.values():
            out += [{"rule": {**base, "chain": c.name, "handle": self._next(), "expr": r}} for r in c.rules]
        return out

    def nft_counters(self) -> dict[str, tuple[int, int]] | None:
        t = self.tables.get("wanlb")
        return None if t is None else {name: (packets, nbytes) for name, (packets, nbytes) in t.counters.items()}

    def nft_apply(self, transaction: str) -> None:
        """Atomically apply ``transaction``; raise NftError (changing nothing) on any refused line."""
        if self.fail_nft is not None:
            self.nft_refused.append(transaction)
            raise NftError(self.fail_nft)
        try:
            self.tables = self._run(transaction)
        except NftError:
            self.nft_refused.append(transaction)
            raise
        self.calls.append(("nft_apply", transaction))

    def nft_check(self, transaction: str) -> None:
        """``nft -c``: would the transaction be accepted?  Changes nothing."""
        self._run(transaction)

    def nft_edit(self, transaction: str) -> None:
        """A change by hand (drift): applied like nft would, not logged, ``fail_nft`` ignored."""
        self.tables = self._run(transaction)

    def nft_delete_rule(self, chain: str, index: int) -> str:
        """Delete one rule by hand (as ``nft delete rule ... handle N`` would); returns its text."""
        return self.tables["wanlb"].chains[chain].rules.pop(index)

    def nft_add_dynamic(self, set_name: str, element: str) -> None:
        """An element the datapath adds (``update @set { ip saddr }``)."""
        self.tables["wanlb"].sets[set_name].elements.append(element)

    def nft_bump(self, counter: str, packets: int = 1) -> None:
        """Traffic through a named counter."""
        c = self.tables["wanlb"].counters[counter]
        c[0] += packets
        c[1] += 100 * packets

    def nft_rules(self, chain: str) -> list[str]:
        return list(self.tables["wanlb"].chains[chain].rules)

    def nft_objects(
        self, table: str = "wanlb", dynamic: Collection[str] | None = None
    ) -> dict[tuple[str, str], tuple[Any, Any]]:
        """(kind, name) → (definition, content), comparable with :func:`table_objects` of a desired table.

        The elements of ``dynamic`` sets are the datapath's: left out, like the desired table leaves them."""
        t = self.tables[table]
        if dynamic is None:  # wanlb's: sticky/clients sets (datapath) and domain sets (the daemon's resolver)
            dynamic = {s.name for s in t.sets.values() if "dynamic" in s.flags or s.name.startswith("dom_")}
        objects: dict[tuple[str, str], tuple[Any, Any]] = {}
        for name in t.counters:
            objects[("counter", name)] = ((), ())
        for name, (typ, proto, _l3) in t.helpers.items():
            objects[("ct helper", name)] = ((typ, proto), ())
        for s in t.sets.values():
            elements = () if s.name in dynamic else tuple(s.elements)
            objects[(s.kind, s.name)] = ((s.type, s.map_type, tuple(sorted(s.flags)), s.timeout, s.size), elements)
        for c in t.chains.values():
            objects[("chain", c.name)] = (c.hook or (), tuple(c.rules))
        return objects

    # --- the interpreter -------------------------------------------------------------------------

    def _next(self) -> int:
        self._handle += 1
        return self._handle

    def _run(self, transaction: str) -> dict[str, NftTable]:
        tables = copy.deepcopy(self.tables)
        for number, raw in enumerate(transaction.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                self._line(tables, line)
            except _Refused as exc:
                raise NftError(f"/dev/stdin:{number}: Error: {exc}\n{line}") from None
        return tables

    def _line(self, tables: dict[str, NftTable], line: str) -> None:
        found = next(((m, op) for pattern, op in _LINES if (m := pattern.fullmatch(line))), None)
        if found is None:
            raise _Refused("syntax error, unexpected line")
        m, op = found
        if m.group("family") != "inet":
            raise _Refused(f"the fake kernel has only inet tables, not {m.group('family')}")
        name = m.group("table")
        if op == "add_table":
            tables.setdefault(name, NftTable())
            return
        if name not in tables:
            raise _Refused(f"Could not process rule: {ENOENT} (no table inet {name})")
        if op == "delete_table":
            del tables[name]
            return
        getattr(self, f"_{op}")(tables[name], m)

    @staticmethod
    def _add_chain(t: NftTable, m: re.Match[str]) -> None:
        name, spec = m.group("name"), m.group("spec")
        hook = None
        if spec is not None:
            h = _HOOK_RE.fullmatch(spec.strip())
            if h is None:
                raise _Refused(f"syntax error in chain spec {spec!r}")
            prio = int(h.group(3)) if h.group(3).lstrip("-").isdigit() else PRIORITIES.get(h.group(3))
            if prio is None:
                raise _Refused(f"syntax error: unknown priority {h.group(3)!r}")
            hook = (h.group(1), h.group(2), prio, h.group(4) or "accept")
        old = t.chains.get(name)
        if old is None:
            t.chains[name] = NftChain(name, hook)
        elif hook is not None and (old.hook is None or old.hook[:3] != hook[:3]):
            raise _Refused(f"Could not process rule: {EOPNOTSUPP} (chain {name} exists with another hook)")
        elif hook is not None:
            old.hook = hook  # nft updates a base chain's policy in place

    @staticmethod
    def _check_refs(t: NftTable, text: str) -> None:
        for kind, ref in sorted(rule_references(text)):
            if kind == "chain":
                target = t.chains.get(ref)
                if target is None:
                    raise _Refused(f"Could not process rule: {ENOENT} (no chain {ref})")
                if target.hook is not None:
                    raise _Refused(f"Could not process rule: {EOPNOTSUPP} (cannot jump to base chain {ref})")
            elif kind == "set" and ref not in t.sets:
                raise _Refused(f"Could not process rule: {ENOENT} (no set {ref})")
            elif kind == "counter" and ref not in t.counters:
                raise _Refused(f"Could not process rule: {ENOENT} (no counter {ref})")
            elif kind == "ct helper" and ref not in t.helpers:
                raise _Refused(f"Could not process rule: {ENOENT} (no ct helper {ref})")

    def _add_rule(self, t: NftTable, m: re.Match[str]) -> None:
        chain, text = m.group("name"), m.group("rule").strip()
        if chain not in t.chains:
            raise _Refused(f"Could not process rule: {ENOENT} (no chain {chain})")
        if not _balanced(text):
            raise _Refused("syntax error, unbalanced braces or quotes")
        self._check_refs(t, text)
        t.chains[chain].rules.append(text)

    @staticmethod
    def _flush(t: NftTable, m: re.Match[str]) -> None:
        kind, name = m.group("kind"), m.group("name")
        if kind == "chain":
            if name not in t.chains:
                raise _Refused(f"Could not process rule: {ENOENT} (no chain {name})")
            t.chains[name].rules.clear()
            return
        s = t.sets.get(name)
        if s is None or s.kind != kind:
            raise _Refused(f"Could not process rule: {ENOENT} (no {kind} {name})")
        s.elements.clear()

    @staticmethod
    def _delete(t: NftTable, m: re.Match[str]) -> None:
        kind, name = m.group("kind"), m.group("name")
        store: dict[str, Any] = {
            "chain": t.chains,
            "set": t.sets,
            "map": t.sets,
            "counter": t.counters,
            "ct helper": t.helpers,
        }[kind]
        if name not in store or (kind in ("set", "map") and t.sets[name].kind != kind):
            raise _Refused(f"Could not process rule: {ENOENT} (no {kind} {name})")
        ref_kind = "set" if kind == "map" else kind
        own = f"{kind} {name}"
        users = [where for where, ref in t.references() if ref == (ref_kind, name) and where != own]
        if users:
            raise _Refused(f"Could not process rule: {EBUSY} ({kind} {name} is used by {', '.join(users)})")
        del store[name]

    @staticmethod
    def _add_set(t: NftTable, m: re.Match[str]) -> None:
        kind, name = m.group("kind"), m.group("name")
        new = NftSet(kind, name, "")
        for part in (p.strip() for p in m.group("spec").split(";")):
            if not part:
                continue
            word, _, value = part.partition(" ")
            if word == "type":
                typ, sep, map_type = value.partition(" : ")
                new.type, new.map_type = typ.strip(), (map_type.strip() if sep else None)
            elif word == "flags":
                new.flags = tuple(f.strip() for f in value.split(","))
            elif word == "timeout":
                new.timeout = _seconds(value.strip())
            elif word == "size":
                new.size = int(value)
            else:
                raise _Refused(f"syntax error, unexpected {word!r} in {kind} {name}")
        if not new.type or (kind == "map") != (new.map_type is not None):
            raise _Refused(f"syntax error: bad type for {kind} {name}")
        old = t.sets.get(name)
        if old is None:
            t.sets[name] = new
        elif old.definition != new.definition:
            raise _Refused(f"Could not process rule: {EEXIST} ({old.kind} {name} exists with another definition)")

    def _add_element(self, t: NftTable, m: re.Match[str]) -> None:
        name = m.group("name")
        s = t.sets.get(name)
        if s is None:
            raise _Refused(f"Could not process rule: {ENOENT} (no set {name})")
        for element in split_elements(m.group("elems")):
            if (" : " in element) != (s.kind == "map"):
                raise _Refused(f"syntax error: element {element!r} does not fit {s.kind} {name}")
            self._check_refs(t, element)
            if element not in s.elements:
                s.elements.append(element)

    @staticmethod
    def _add_counter(t: NftTable, m: re.Match[str]) -> None:
        t.counters.setdefault(m.group("name"), [0, 0])

    @staticmethod
    def _add_helper(t: NftTable, m: re.Match[str]) -> None:
        name = m.group("name")
        h = _HELPER_RE.fullmatch(m.group("spec").strip())
        if h is None:
            raise _Refused(f"syntax error in ct helper {name}")
        new = (h.group(1), h.group(2), h.group(3))
        if t.helpers.setdefault(name, new) != new:
            raise _Refused(f"Could not process rule: {EEXIST} (ct helper {name} exists with another definition)")

    # --- whole-kernel comparison -----------------------------------------------------------------

    def everything(self) -> dict[str, Any]:
        """Everything a test may compare before and after (counter values and handles left out)."""
        return {
            "links": dict(self.link_state),
            "rules": sorted(self.ip_rules),
            "routes": sorted(self.ip_routes),
            "sysctls": dict(self.sysctls),
            "conntrack": sorted(self.conntrack),
            "nft": {name: self.nft_objects(name, dynamic=()) for name in sorted(self.tables)},
        }


def table_objects(table: Any) -> dict[tuple[str, str], tuple[Any, Any]]:
    """A desired :class:`wanlb.nftsync.Table` in :meth:`FakeKernel.nft_objects` form (dynamic sets: no content)."""
    objects: dict[tuple[str, str], tuple[Any, Any]] = {}
    for o in table.objects:
        if o.kind == "counter":
            objects[("counter", o.name)] = ((), ())
        elif o.kind == "ct helper":
            objects[("ct helper", o.name)] = ((o.type, o.protocol), ())
        elif o.kind in ("set", "map"):
            objects[(o.kind, o.name)] = ((o.type, o.map_type, tuple(sorted(o.flags)), o.timeout, o.size),
                                         tuple(o.elements or ()))  # fmt: skip
        else:
            objects[("chain", o.name)] = (o.hook or (), tuple(o.rules))
    return objects


class FakeCounter:
    """Stands in for :class:`wanlb.ctcounts.ConnCounter`: counts straight from a FakeKernel's conntrack."""

    def __init__(self, kernel: FakeKernel, marks: dict[int, str], mark_mask: int) -> None:
        self.kernel = kernel
        self.marks = dict(marks)
        self.mark_mask = mark_mask
        self.lost_events = 0
        self.resyncs = 0
        self.forgotten: list[int | None] = []

    def counts(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for mark in self.kernel.conntrack:
            out[mark & self.mark_mask] = out.get(mark & self.mark_mask, 0) + 1
        return out

    def by_isp(self) -> dict[str, int]:
        counts = self.counts()
        return {name: counts.get(mark, 0) for mark, name in self.marks.items()}

    def forget(self, mark: int) -> None:
        self.forgotten.append(mark)

    async def run(self) -> None:  # pragma: no cover - the daemon's run() is not used in unit tests
        import asyncio

        await asyncio.Event().wait()
