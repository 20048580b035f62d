"""wanlb's nft table as objects, compared with what the kernel holds, changed incrementally.  Pure.

The table has a stable skeleton — named counters, ct helpers, sets, maps and
chains — and volatile content (chain rules, static set elements).  A change is
one atomic ``nft -f`` transaction that touches only the objects whose
definition or content differs, so named counters and the elements the datapath
adds to dynamic sets survive reloads and failovers.

How "differs" is decided without re-implementing nft's canonical form: after
every apply the reconciler reads the table back and *records*, per object, the
hash of the content it rendered and a fingerprint of what the kernel then
showed (:class:`Observed`).  Next time, an object is left alone only when both
still match; a rule deleted or added by hand changes the fingerprint and the
object is rewritten.  Without a record (a fresh daemon) every object's content
is rewritten once — atomic and harmless.  Counter values and dynamic-set
elements are not part of any fingerprint: the datapath changes them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

FAMILY = "inet"
TABLE = "wanlb"
Key = tuple[str, str]  # (kind, name): kind is "chain", "set", "map", "counter" or "ct helper"


@dataclass(frozen=True)
class Chain:
    name: str
    rules: tuple[str, ...] = ()
    hook: tuple[str, str, int, str] | None = None  # (type, hook, priority, policy) for a base chain

    kind = "chain"

    @property
    def signature(self) -> tuple[Any, ...]:
        return self.hook or ()

    @property
    def content(self) -> tuple[str, ...]:
        return self.rules

    def declaration(self) -> str:
        if self.hook is None:
            return f"add chain {FAMILY} {TABLE} {self.name}"
        kind, hook, prio, policy = self.hook
        return f"add chain {FAMILY} {TABLE} {self.name} {{ type {kind} hook {hook} priority {prio}; policy {policy}; }}"

    def fill(self) -> list[str]:
        return [f"add rule {FAMILY} {TABLE} {self.name} {rule}" for rule in self.rules]

    def flush(self) -> str:
        return f"flush chain {FAMILY} {TABLE} {self.name}"


@dataclass(frozen=True)
class Set:
    """A named set or (with ``map_type``) map.  ``elements`` None = dynamic: filled by the datapath only."""

    name: str
    type: str
    flags: tuple[str, ...] = ()
    elements: tuple[str, ...] | None = ()
    map_type: str | None = None
    timeout: int | None = None  # seconds
    size: int | None = None

    @property
    def kind(self) -> str:
        return "map" if self.map_type else "set"

    @property
    def signature(self) -> tuple[Any, ...]:
        # nft -j does not report the "dynamic" flag; compare what it does report.
        flags = tuple(sorted(f for f in self.flags if f != "dynamic"))
        return (self.type, self.map_type, flags, self.timeout, self.size)

    @property
    def content(self) -> tuple[str, ...] | None:
        return self.elements

    def declaration(self) -> str:
        parts = [f"type {self.type}" + (f" : {self.map_type}" if self.map_type else "")]
        if self.size is not None:
            parts.append(f"size {self.size}")
        if self.flags:
            parts.append(f"flags {','.join(self.flags)}")
        if self.timeout is not None:
            parts.append(f"timeout {self.timeout}s")
        return f"add {self.kind} {FAMILY} {TABLE} {self.name} {{ {'; '.join(parts)}; }}"

    def fill(self) -> list[str]:
        if not self.elements:
            return []
        return [f"add element {FAMILY} {TABLE} {self.name} {{ {', '.join(self.elements)} }}"]

    def flush(self) -> str:
        return f"flush {self.kind} {FAMILY} {TABLE} {self.name}"


@dataclass(frozen=True)
class Counter:
    name: str

    kind = "counter"
    signature = ()
    content = ()

    def declaration(self) -> str:
        return f"add counter {FAMILY} {TABLE} {self.name}"

    def fill(self) -> list[str]:
        return []

    def flush(self) -> str:  # pragma: no cover - counters have no content to rewrite
        raise NotImplementedError


@dataclass(frozen=True)
class Helper:
    """A conntrack helper object (``ct helper NAME { type "T" protocol P; l3proto ip; }``)."""

    name: str
    type: str
    protocol: str

    kind = "ct helper"
    content = ()

    @property
    def signature(self) -> tuple[Any, ...]:
        return (self.type, self.protocol)

    def declaration(self) -> str:
        return (
            f'add ct helper {FAMILY} {TABLE} {self.name} {{ type "{self.type}" protocol {self.protocol}; l3proto ip; }}'
        )

    def fill(self) -> list[str]:
        return []

    def flush(self) -> str:  # pragma: no cover
        raise NotImplementedError


Object = Chain | Set | Counter | Helper


def key(obj: Object) -> Key:
    return (obj.kind, obj.name)


def content_hash(obj: Object) -> str:
    return _digest(obj.content)


@dataclass(frozen=True)
class Table:
    """The desired table: every object, in an order where each one's references exist before it."""

    objects: tuple[Object, ...]

    def by_key(self) -> dict[Key, Object]:
        return {key(o): o for o in self.objects}


@dataclass(frozen=True)
class Seen:
    """One object as the kernel shows it: its definition and a fingerprint of its content."""

    signature: tuple[Any, ...]
    fingerprint: str | None  # None: content not tracked (counters, helpers, dynamic sets)


@dataclass(frozen=True)
class Observed:
    objects: Mapping[Key, Seen] = field(default_factory=dict)


Record = dict[Key, tuple[str, str | None]]  # key -> (content hash applied, fingerprint seen after)


def transaction(desired: Table, observed: Observed | None, record: Mapping[Key, tuple[str, str | None]]) -> str:
    """The ``nft -f`` text that turns ``observed`` into ``desired``; empty when nothing differs.

    Order inside the one atomic transaction: create missing objects (chains
    before the maps whose elements jump to them); flush the contents to
    rewrite; delete objects no longer wanted (or whose definition changed, to
    re-create them); then fill contents.  When anything is deleted, every chain
    and static set is rewritten, so no rule or element still refers to it.
    """
    want = desired.by_key()
    if observed is None:
        lines = [f"add table {FAMILY} {TABLE}"]
        lines += [o.declaration() for o in desired.objects]
        lines += [line for o in desired.objects for line in o.fill()]
        return "\n".join(lines) + "\n"
    have = observed.objects
    stale = [k for k in have if k not in want]
    redefine = [k for k, o in want.items() if k in have and have[k].signature != o.signature]
    rewrite_all = bool(stale or redefine)
    create: list[Object] = []
    refill: list[Object] = []
    for k, o in want.items():
        if k not in have or k in redefine:
            create.append(o)
        elif (
            o.content is not None
            and (o.kind in ("chain", "set", "map"))
            and (rewrite_all or record.get(k) != (content_hash(o), have[k].fingerprint))
        ):
            refill.append(o)
    if not (stale or create or refill):
        return ""
    lines: list[str] = []
    flush = [o.flush() for o in refill]
    if rewrite_all:  # stale and re-created chains and maps may refer to doomed objects: empty them first
        doomed = [(kind, name) for kind, name in (*stale, *redefine) if kind in ("chain", "map")]
        flush += [f"flush {kind} {FAMILY} {TABLE} {name}" for kind, name in doomed]
    deletions = [_delete(k) for k in (*stale, *redefine)]
    # Chains are deleted after everything that may jump to them (maps, other chains).
    deletions.sort(key=lambda line: line.startswith("delete chain"))
    lines += flush + deletions
    lines += [o.declaration() for o in _creation_order(create)]
    lines += [line for o in (*refill, *create) for line in o.fill()]
    return "\n".join(lines) + "\n"


def _creation_order(objects: Iterable[Object]) -> list[Object]:
    rank = {"counter": 0, "ct helper": 0, "chain": 1, "set": 2, "map": 2}
    return sorted(objects, key=lambda o: rank[o.kind])


def _delete(k: Key) -> str:
    kind, name = k
    return f"delete {kind} {FAMILY} {TABLE} {name}"


def full_text(desired: Table, table: str = TABLE) -> str:
    """The whole table as a transaction that creates it from nothing (``wanlb render``).

    Another ``table`` name gives the same objects in a scratch table: ``nft -c``
    of that verifies a config against the running kernel without touching ours.
    """
    text = transaction(desired, None, {})
    return text if table == TABLE else re.sub(rf"\b{FAMILY} {TABLE}\b", f"{FAMILY} {table}", text)


def unfilled(desired: Table) -> frozenset[str]:
    """Sets whose elements the datapath or the daemon add (``elements`` None): not fingerprinted."""
    return frozenset(o.name for o in desired.objects if isinstance(o, Set) and o.elements is None)


def record_after(desired: Table, observed: Observed) -> Record:
    """What to remember after a successful apply: per desired object, its content hash and what the kernel shows."""
    seen = observed.objects
    return {key(o): (content_hash(o), seen[key(o)].fingerprint) for o in desired.objects if key(o) in seen}


# --- reading the kernel's JSON ----------------------------------------------------------------

_VOLATILE = {"handle", "packets", "bytes", "expires", "family", "table"}


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def observe(listing: Sequence[Mapping[str, Any]], dynamic_sets: Iterable[str] = ()) -> Observed:
    """Parse ``nft -j list table inet wanlb`` output (its ``nftables`` array) into :class:`Observed`.

    ``dynamic_sets`` names the sets whose elements belong to the datapath and are not fingerprinted.
    """
    dynamic = set(dynamic_sets)
    rules: dict[str, list[Any]] = {}
    objects: dict[Key, Seen] = {}
    chains: dict[str, tuple[Any, ...]] = {}
    for item in listing:
        if "rule" in item:
            rule = item["rule"]
            rules.setdefault(rule["chain"], []).append(
                _strip({"expr": rule.get("expr"), "comment": rule.get("comment")})
            )
        elif "chain" in item:
            c = item["chain"]
            chains[c["name"]] = (c["type"], c["hook"], c["prio"], c["policy"]) if "hook" in c else ()
        elif "set" in item or "map" in item:
            kind = "set" if "set" in item else "map"
            s = item[kind]
            flags = tuple(sorted(f for f in s.get("flags", ()) if f != "dynamic"))
            typ = s["type"] if isinstance(s["type"], str) else " . ".join(s["type"])
            sig = (typ, s.get("map"), flags, s.get("timeout"), s.get("size"))
            elems = None if s["name"] in dynamic else _digest(sorted(_digest(_strip(e)) for e in s.get("elem", ())))
            objects[(kind, s["name"])] = Seen(sig, elems)
        elif "counter" in item:
            objects[("counter", item["counter"]["name"])] = Seen((), None)
        elif "ct helper" in item:
            h = item["ct helper"]
            objects[("ct helper", h["name"])] = Seen((h["type"], h["protocol"]), None)
    for name, sig in chains.items():
        objects[("chain", name)] = Seen(sig, _digest(rules.get(name, [])))
    return Observed(objects)
