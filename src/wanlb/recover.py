"""Which connections a better tier's recovery moves back from a worse one, rule by rule.  Pure.

``failover.on_recover: move-lower-tier`` flushes, when a better tier recovers (or its failback hold-down
ends), the conntrack entries of the worse-tier ISPs it takes out of use, so their connections come back; a rule
may say otherwise for its own connections (``rules[].on_recover``: a metered video call moves back, a long
download stays).  While every rule agrees with the global setting, the global setting alone decides
(:func:`moved`): one kernel flush by mark, or nothing.  Otherwise the flush is selective: the shell dumps the
ISP's entries and deletes those :meth:`Walk.moves` picks.

A conntrack entry does not record which rule its first packet matched, so it is decided the way the datapath
decided it: the entry's original tuple (addresses, protocol, ports) walks the rules in effect now, in order,
through the matcher ``wanlb explain`` uses (:func:`wanlb.flow_explain.rule_matches`).  First match wins; rules a
schedule switches off now are skipped, so a schedule boundary between the connection's start and the flush can
misattribute it.  An entry that matches no rule came through the default policy: the global setting decides it.
So it does for one whose walk reaches a rule that also reads what conntrack does not record — the source MAC,
the DSCP, the inbound interface when the LAN has several — and matches on the rest: which rule sent it cannot be
told there.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from wanlb.config import Config, RuleConfig
from wanlb.ctnetlink.constants import AF_INET6
from wanlb.ctnetlink.entry import Entry
from wanlb.flow_explain import Flow, SetElements, rule_matches
from wanlb.plan import Desired
from wanlb.rules import for_family

MOVE = "move-lower-tier"
_UNRECORDED = {"src_mac": (), "dscp": (), "iif": ()}  # a rule's fields a conntrack entry has no value for


@dataclass(frozen=True)
class Moved:
    """A selective flush: the connections of ``rules`` move back (their ``on_recover``, or the global one they
    follow, is move-lower-tier) and, if ``default``, those of no rule (``failover.on_recover`` is)."""

    rules: frozenset[str]
    default: bool

    def __str__(self) -> str:
        """What the flush's reason says: ``move-lower-tier for 2 rules and the default policy``."""
        count = len(self.rules)
        rules = f"{count} rule{'' if count == 1 else 's'}" if count else ""
        default = "the default policy" if self.default else ""
        return f"{MOVE} for {' and '.join(part for part in (rules, default) if part)}"


def moved(config: Config) -> Moved | bool:
    """What a recovery moves back from the worse tiers it takes out of use: True every connection (the global
    setting is move-lower-tier and no rule says keep: the kernel's flush by mark, unchanged), False none (keep,
    and no rule says move), else the :class:`Moved` selection."""
    default = config.failover.on_recover == MOVE
    if all(r.on_recover in (None, config.failover.on_recover) for r in config.rules):
        return default
    rules = frozenset(r.name for r in config.rules if (r.on_recover or config.failover.on_recover) == MOVE)
    return Moved(rules, default)


@dataclass(frozen=True)
class _Step:
    """One rule an entry walks: its part for the family, without the fields conntrack does not record."""

    name: str
    rule: RuleConfig
    untold: bool  # it reads one of those fields: an entry it otherwise matches cannot be attributed


class Walk:
    """A leaving ISP's entries through the rules of the ruleset just applied (``desired``), as the module
    docstring says."""

    def __init__(self, desired: Desired, moved: Moved) -> None:
        self.moved = moved
        one_lan = len(desired.lan_interfaces) == 1  # then every connection from the LAN came in on it
        on = [r for r in desired.rules if r.name not in desired.inactive.rules]
        # Past the last rule that decides otherwise than the default policy does, a match ends as no match would.
        last = max((i for i, r in enumerate(on) if (r.name in moved.rules) != moved.default), default=-1)
        self.steps: dict[int, tuple[_Step, ...]] = {}
        for family in (4, 6):
            steps = []
            for rule in on[: last + 1]:
                part = for_family(rule, family)
                if part is None:
                    continue
                untold = bool(rule.src_mac or rule.dscp or (rule.iif and not one_lan))
                steps.append(_Step(rule.name, part.model_copy(update=_UNRECORDED), untold))
            self.steps[family] = tuple(steps)

    @property
    def reads_sets(self) -> bool:
        """Whether a rule walked matches ``dst_domains``: the shell reads its sets from the kernel then."""
        return any(step.rule.dst_domains for steps in self.steps.values() for step in steps)

    def moves(self, entry: Entry, sets: SetElements) -> bool:
        """Whether this entry's connection moves back: as the first rule it matches says, else as the default
        policy does (no rule matched, or the one it reached cannot be told).  ``sets``: the domain sets now."""
        src, dst = ipaddress.ip_address(entry.src), ipaddress.ip_address(entry.dst)
        flow = Flow(src, dst, entry.proto, entry.sport, entry.dport)
        for step in self.steps[6 if entry.family == AF_INET6 else 4]:
            matched = rule_matches(step.rule, flow, sets)
            if matched is None or (matched and step.untold):
                break
            if matched:
                return step.name in self.moved.rules
        return self.moved.default
