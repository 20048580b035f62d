"""Policies: which ISPs a group of connections may use, and how one is picked.  Pure.

A policy is a list of members (ISP, tier, weight).  The members that take NEW
connections are those of the best (lowest) tier that has an UP member — or,
when none is UP anywhere, a DEGRADED one — exactly as for the implicit
``default`` policy (every ISP with its own tier and weight, ``balance``).  The
algorithm then decides how a connection picks among them:

* ``weighted``: ``numgen inc`` over the weights (exact shares per round).
* ``hash``: a hash of the connection's fields into :data:`HASH_BUCKETS`
  buckets, assigned to the tier's members by weight.  A dead member's buckets
  go to the live ones and come back when it recovers; no other bucket moves, so
  a client–server pair keeps its ISP across connections and outages elsewhere.
* ``least-conn`` and ``latency``: ``weighted`` with weights the daemon derives
  from the live counts or the probes' quality (:func:`least_conn_weights`,
  :func:`latency_weights`).
* ``failover``: the first usable member (in config order) of the best tier.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from wanlb.config import Config, StickyConfig

HASH_BUCKETS = 256
HASH_SEED = 0x57A1B  # fixed: a restart must not move every pair
DEFAULT = "default"
WEIGHT_SCALE = 100  # least-conn / latency weights are shares out of this
LATENCY_FLOOR = 0.005  # seconds added to every latency before comparing (see latency_weights)


@dataclass(frozen=True)
class Member:
    isp: str
    tier: int
    weight: int


@dataclass(frozen=True)
class PolicyPlan:
    """One policy as the datapath should run it now."""

    name: str  # "default", a configured policy, or "via_<isp>" for a rule's single ISP
    chain: str  # nft chain
    algorithm: str
    members: tuple[str, ...]  # every member, config order (their sticky sets exist even while unused)
    active: tuple[tuple[str, int], ...]  # (isp, weight) taking NEW connections, weights reduced
    buckets: tuple[str, ...] = ()  # hash: the ISP of each bucket
    hash_fields: tuple[str, ...] = ()
    sticky: StickyConfig | None = None
    on_unavailable: str = "default"
    tier: int | None = None  # the tier in use (the best with a usable member); None while none is usable


def best_members(members: Sequence[Member], usable: Mapping[str, str]) -> tuple[list[Member], list[Member]]:
    """(the members of the best tier, those of them that take connections).

    ``usable`` maps an ISP to "up", "degraded" or anything else (unusable).
    Degraded members are chosen only when no member is up anywhere.
    """
    for wanted in ("up", "degraded"):
        tiers = [m.tier for m in members if usable.get(m.isp) == wanted]
        if tiers:
            tier = min(tiers)
            in_tier = [m for m in members if m.tier == tier]
            return in_tier, [m for m in in_tier if usable.get(m.isp) == wanted]
    return [], []


def hash_buckets(tier: Sequence[Member], live: Sequence[Member], count: int = HASH_BUCKETS) -> tuple[str, ...]:
    """Buckets → ISP: the tier's members by weight, a dead member's buckets shared among the live ones.

    The base layout depends only on the tier's members and weights, never on
    who is up; a dead member's buckets are handed out one by one to the live
    member furthest below its weighted share.  So a death moves only the dead
    member's buckets, and its recovery moves exactly those back.
    """
    if not live:
        return ()
    total = sum(m.weight for m in tier)
    quotas = [count * m.weight / total for m in tier]
    sizes = [math.floor(q) for q in quotas]
    for i in sorted(range(len(tier)), key=lambda i: (sizes[i] - quotas[i], i))[: count - sum(sizes)]:
        sizes[i] += 1
    layout: list[str] = []
    for m, size in zip(tier, sizes, strict=True):
        layout += [m.isp] * size
    alive = {m.isp for m in live}
    live_total = sum(m.weight for m in live)
    held = {m.isp: layout.count(m.isp) for m in live}
    for i, isp in enumerate(layout):
        if isp in alive:
            continue
        best = max(live, key=lambda m: (count * m.weight / live_total - held[m.isp], -live.index(m)))
        layout[i] = best.isp
        held[best.isp] += 1
    return tuple(layout)


def reduce_weights(pairs: list[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    divisor = math.gcd(*(w for _, w in pairs)) if pairs else 1
    return tuple((isp, w // divisor) for isp, w in pairs)


def plan_policy(
    name: str,
    chain: str,
    members: Sequence[Member],
    algorithm: str,
    usable: Mapping[str, str],
    adjusted: Mapping[str, int] | None = None,
    hash_fields: tuple[str, ...] = (),
    sticky: StickyConfig | None = None,
    on_unavailable: str = "default",
) -> PolicyPlan:
    """The policy's datapath for the current ISP states.

    ``adjusted`` holds the daemon's weights for ``least-conn``/``latency``
    (an ISP it leaves out keeps its configured weight; 0 takes no new
    connections while others can).
    """
    tier, live = best_members(members, usable)
    buckets: tuple[str, ...] = ()
    if algorithm == "failover":
        active = [(live[0].isp, 1)] if live else []
    elif algorithm == "hash":
        buckets = hash_buckets(tier, live)
        active = [(m.isp, m.weight) for m in live]
    else:
        weights = [(m.isp, m.weight) for m in live]
        if algorithm in ("least-conn", "latency") and adjusted:
            dynamic = [(isp, adjusted.get(isp, w)) for isp, w in weights]
            if any(w > 0 for _, w in dynamic):
                weights = [(isp, w) for isp, w in dynamic if w > 0]
        active = weights
    return PolicyPlan(
        name=name,
        chain=chain,
        algorithm=algorithm,
        members=tuple(m.isp for m in members),
        active=reduce_weights(active),
        buckets=buckets,
        hash_fields=hash_fields,
        sticky=sticky,
        on_unavailable=on_unavailable,
        tier=live[0].tier if live else None,
    )


Adjusted = Mapping[str, Mapping[str, int]]  # policy name -> ISP -> weight (least-conn, latency)


def policies(config: Config, usable: Mapping[str, str], adjusted: Adjusted | None = None) -> tuple[PolicyPlan, ...]:
    """The default policy first, then every configured one, then one ``via_<isp>`` per ISP a rule pins to."""
    bal = config.balance
    adjusted = adjusted or {}
    default = [Member(i.name, i.tier, i.weight) for i in config.isps]
    algorithm = bal.algorithm
    out = [
        plan_policy(DEFAULT, "balance", default, algorithm, usable, adjusted.get(DEFAULT), bal.hash.fields, bal.sticky),
    ]
    for name, pol in config.policies.items():
        members = []
        for m in pol.members:
            isp = config.isp(m.isp)
            members.append(Member(m.isp, m.tier or isp.tier, m.weight or isp.weight))
        algorithm = pol.algorithm or bal.algorithm
        sticky = pol.sticky or bal.sticky
        chain = f"policy_{name}"
        fields = bal.hash.fields
        weights = adjusted.get(name)
        out.append(plan_policy(name, chain, members, algorithm, usable, weights, fields, sticky, pol.on_unavailable))
    for isp in dict.fromkeys(r.via for r in config.rules if r.via is not None):
        out.append(plan_policy(f"via_{isp}", f"via_{isp}", [Member(isp, 1, 1)], "weighted", usable))
    return tuple(out)


def adjust(
    config: Config,
    usable: Mapping[str, str],
    counts: Mapping[str, int],
    latency: Mapping[str, float | None],
    loss: Mapping[str, float],
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """(new weights, configured weights) of every policy that uses ``least-conn`` or ``latency``.

    Per policy, over the members it would use now (the best tier's usable ones): an idle backup
    tier or a dead ISP takes no share of the target, so it cannot stall the steering.
    """
    fresh: dict[str, dict[str, int]] = {}
    base: dict[str, dict[str, int]] = {}
    for p in policies(config, usable):
        if not p.active or p.algorithm not in ("least-conn", "latency"):
            continue
        base[p.name] = dict(p.active)
        if p.algorithm == "least-conn":
            fresh[p.name] = least_conn_weights(base[p.name], counts)
        else:
            fresh[p.name] = latency_weights(base[p.name], latency, loss)
    return fresh, base


def least_conn_weights(weights: Mapping[str, int], counts: Mapping[str, int], headroom: float = 0.1) -> dict[str, int]:
    """New-connection weights that steer the live counts towards shares proportional to ``weights``.

    The target is where the counts should be once ``headroom`` (a fraction of
    the current total, at least 100) more connections have arrived; each ISP
    gets new connections in proportion to how far it is below its target, out
    of :data:`WEIGHT_SCALE`.  An ISP at or above its target gets 0.
    """
    total_w = sum(weights.values())
    current = sum(counts.get(isp, 0) for isp in weights)
    future = current + max(100.0, current * headroom)
    deficit = {isp: max(0.0, future * w / total_w - counts.get(isp, 0)) for isp, w in weights.items()}
    total_d = sum(deficit.values())
    return {isp: round(WEIGHT_SCALE * d / total_d) for isp, d in deficit.items()}


def latency_weights(
    weights: Mapping[str, int], latency: Mapping[str, float | None], loss: Mapping[str, float]
) -> dict[str, int]:
    """Weights scaled by probe quality: ``weight × (best + F) / (its latency + F) × (1 − loss)``.

    ``F`` (:data:`LATENCY_FLOOR`, 5 ms) keeps sub-millisecond noise between two good lines from
    deciding the split: 0.5 ms against 1 ms is 0.92, not 0.5; 1 ms against 150 ms is still 0.04.
    ``best`` is the lowest latency among ``weights``' ISPs.  An ISP without a latency figure (no
    answered probe yet) counts as the best.  Results are out of :data:`WEIGHT_SCALE`, at least 1, so
    a slow line still takes a trickle and its figures stay fresh.
    """
    known = [lat for isp in weights if (lat := latency.get(isp))]
    best = min(known) if known else 0.0
    score = {}
    for isp, w in weights.items():
        lat = latency.get(isp) or best
        quality = (best + LATENCY_FLOOR) / (lat + LATENCY_FLOOR)
        score[isp] = w * quality * max(0.0, 1.0 - loss.get(isp, 0.0))
    total = sum(score.values()) or 1.0
    return {isp: max(1, round(WEIGHT_SCALE * s / total)) for isp, s in score.items()}


def shares_differ(old: Mapping[str, int], new: Mapping[str, int], points: float = 5.0) -> bool:
    """Does any ISP's share of new connections move by more than ``points`` percentage points?"""

    def shares(w: Mapping[str, int]) -> dict[str, float]:
        total = sum(w.values()) or 1
        return {k: 100.0 * v / total for k, v in w.items()}

    a, b = shares(old), shares(new)
    return any(abs(a.get(k, 0.0) - b.get(k, 0.0)) > points for k in set(a) | set(b))
