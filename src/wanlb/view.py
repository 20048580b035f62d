"""The read model: what ``status``, ``top``, the API, ``/metrics``, SSE and the dashboard show, as frozen data.

:func:`build` makes a :class:`Status` from the daemon's parts — the fleet (per-ISP state), the last
reconcile's plan, the nft counters, the live conntrack counts, the probes — and is pure: everything it
needs is passed in.  :func:`to_json` is the wire format (the control socket's ``status`` answer, the API's
``/api/v1/status``, the events on SSE), :func:`from_json` reads it back on the CLI's and ``top``'s side of
the socket.  Nothing else reads the status structure by its keys (``tests/unit/test_view.py`` checks
that by walking the consumers' syntax trees), so a field is added here, once, and typed.

The JSON is the one the daemon has always sent: the fields below, in this order; ``health`` of an ISP
nobody probes is ``{"monitored": false}`` alone, and a destination domain has an ``ipv6`` member only when
IPv6 is balanced.  Every field is documented in docs/operations.md (a test keeps the two equal).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wanlb.config import Config, RuleConfig
    from wanlb.fleet import Fleet
    from wanlb.plan import Desired
    from wanlb.states import IspStatus

USABLE = frozenset({"up", "degraded"})


@dataclass(frozen=True)
class Health:
    """One address family's probes of an ISP, as its health machine and monitor see them."""

    monitored: bool = False  # it has targets of this family; when false no other field is sent
    method: str = ""
    targets: tuple[str, ...] = ()
    rounds: int = 0
    loss_percent: float = 0.0
    latency_ms: float | None = None
    jitter_ms: float | None = None
    held_down_seconds: float = 0.0
    last_errors: Mapping[str, str] = field(default_factory=dict)
    # The probe timing in force (the ISP's ``health`` config), for the dashboard's configuration view:
    interval_seconds: float = 0.0
    probe_interval_seconds: float = 0.0  # in force now: a standby ISP's standby_interval while it is not in use
    probe_bytes_per_day: int = 0  # the probes' own data at that rate (an estimate for TCP methods)
    timeout_seconds: float = 0.0
    down_after: int = 0
    up_after: int = 0
    quorum: int = 0
    window: int = 0
    max_loss_percent: float | None = None
    max_latency_ms: float | None = None

    def _json(self, out: dict[str, Any]) -> dict[str, Any]:
        return out if self.monitored else {"monitored": False}


@dataclass(frozen=True)
class Ipv6:
    mode: str = "off"
    gateway: str | None = None  # its IPv6 next hop, "device route", or None while none is learned
    gateway_source: str = ""
    uplink: str | None = None  # "waiting for IPv6 gateway" while it has none
    status: str = "up"
    own_health: bool = False
    health: Health | None = None


@dataclass(frozen=True)
class Drain:
    """An admin drain: what the operator said, and when it ends by itself (wall time; None: at ``enable``)."""

    reason: str = ""
    until: float | None = None


@dataclass(frozen=True)
class Quota:
    """An ISP's data quota this cycle (``isps[].quota``): the bytes through its WAN, both directions, probes
    included (:mod:`wanlb.quota`)."""

    used_bytes: int = 0
    limit_bytes: int = 0
    percent: float = 0.0
    cycle: str = ""  # "monthly from day 5", "every 30 days"
    cycle_start: float = 0.0
    cycle_end: float = 0.0  # wall time: the count starts again then
    at_limit: str = "standby"
    exceeded: bool = False  # the count reached the limit: held back from balancing as at_limit says
    warned: tuple[float, ...] = ()  # the thresholds (percent) told this cycle


@dataclass(frozen=True)
class Isp:
    name: str = ""
    interface: str = ""
    gateway: str = "none"
    gateway_source: str = ""
    uplink: str | None = None
    addresses: tuple[str, ...] = ()
    status: str = "up"  # what the kernel has (the last applied plan)
    decided: str = "up"  # what the fleet decided: differs only while applying, or when applying failed
    active: bool = True
    weight: int = 1
    tier: int = 1
    share_percent: float = 0.0
    mark: int = 0
    table: int = 0
    since: float = 0.0
    link_down: bool = False
    drain: Drain | None = None  # while an admin drain holds it (status "disabled")
    failback_seconds: float | None = None  # back up, held from balancing this much longer (failback_after)
    suspected: str | None = None  # why passive detection holds it back until its next probe round answers
    health: Health = field(default_factory=Health)
    ipv6: Ipv6 | None = None
    packets_rx: int | None = None
    packets_tx: int | None = None
    bytes_rx: int | None = None
    bytes_tx: int | None = None
    new_connections: int | None = None
    quota: Quota | None = None  # null: no data quota

    @property
    def usable(self) -> bool:
        return self.status in USABLE


@dataclass(frozen=True)
class Reload:
    time: float = 0.0
    ok: bool = False
    message: str = ""


@dataclass(frozen=True)
class Retired:
    mark: int = 0
    isp: str = ""


@dataclass(frozen=True)
class Member:
    """A policy member as configured: its tier and weight in that policy (the ISP's own unless overridden)."""

    isp: str = ""
    tier: int = 1
    weight: int = 1


@dataclass(frozen=True)
class Schedule:
    """A scheduled rule or policy (``when``): whether the ruleset the kernel has holds it, and until when."""

    when: str = ""  # its window (``mon-fri 08:00-18:00 Europe/Berlin``); a rule's policy's as ``policy NAME: …``
    active: bool = True  # in effect now: a rule is in from_lan's lookups, a policy's rules are
    changes_at: float | None = None  # when that changes next (Unix time); None: never


@dataclass(frozen=True)
class Policy:
    name: str = ""
    algorithm: str = "weighted"
    active: Mapping[str, int] = field(default_factory=dict)
    sticky: bool = False
    members: tuple[Member, ...] = ()  # every member, in config order, whether it is in use now or not
    hash_fields: tuple[str, ...] = ()  # algorithm hash: what the hash covers
    on_unavailable: str = "default"
    schedule: Schedule | None = None  # its ``when``; None: always in effect


@dataclass(frozen=True)
class Rule:
    name: str = ""
    target: str = ""
    hits: int | None = None
    match: str = ""  # what it matches, as one bounded line (``everything`` when it has no condition)
    schedule: Schedule | None = None  # its ``when`` (or its policy's); None: always in effect


@dataclass(frozen=True)
class DomainSide:
    """One address family's resolution of a rule's destination domain."""

    state: str = "pending"
    addresses: tuple[str, ...] = ()
    ttl: int | None = None
    last_success: float | None = None
    last_failure: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Domain(DomainSide):
    ipv6: DomainSide | None = None  # with IPv6 balanced: the AAAA side

    def _json(self, out: dict[str, Any]) -> dict[str, Any]:
        if self.ipv6 is None:
            del out["ipv6"]
        return out


@dataclass(frozen=True)
class Conntrack:
    entries: int | None = None
    max: int | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Event:
    """One ISP event, as recorded when the daemon finished handling it."""

    time: float = 0.0
    isp: str = ""
    event: str = ""
    family: str = ""
    status: str = ""
    from_: str | None = field(default=None, metadata={"json": "from"})
    reason: str = ""
    gateway: str = ""
    loss_percent: float | None = None
    latency_ms: float | None = None
    flushed: int | None = None
    error: str | None = None
    applied_ms: float | None = None
    done_ms: float | None = None


@dataclass(frozen=True)
class HaHelper:
    """One of an HA node's helper programs, as the daemon supervises it."""

    running: bool = False
    pid: int | None = None
    starts: int = 0
    last_exit: str | None = None
    missing: str | None = None


@dataclass(frozen=True)
class HaPeer:
    """The other node of the pair, as its hellos over the sync link say (wanlb.ha_peer)."""

    node: str | None = None
    state: str = "never heard"  # up (heard within 2 s), lost, never heard
    role: str | None = None  # as the peer last said
    priority: int | None = None
    heard_seconds_ago: float | None = None
    split_brain: bool = False  # this node and the peer are both master
    config_differences: tuple[str, ...] = ()  # what the two configs disagree on (marks, tables, VIPs, VRRP)
    bad_hellos: int = 0  # datagrams refused (not the peer's address, not a valid hello)
    last_bad_hello: str | None = None


@dataclass(frozen=True)
class Ha:
    """This node of an HA pair: its role (as keepalived last said), its helpers, the sync link, the peer."""

    node: str = ""
    role: str = "backup"
    since: float = 0.0
    priority: int = 0
    sync_link: str = "unknown"  # up, down, missing
    last_commit: str | None = None  # how conntrackd's steps for the last role change went ("ok", or what failed)
    keepalived: HaHelper = field(default_factory=HaHelper)
    conntrackd: HaHelper = field(default_factory=HaHelper)
    peer: HaPeer = field(default_factory=HaPeer)


@dataclass(frozen=True)
class Status:
    ok: bool = True
    pid: int = 0
    config: str = ""
    uptime_seconds: float = 0.0
    mark_mask: int = 0
    local_traffic: bool = True
    nft_applies: int = 0
    reloads: int = 0
    link_events: int = 0
    last_error: str | None = None
    last_reload: Reload | None = None
    route_failures: tuple[str, ...] = ()
    retired: tuple[Retired, ...] = ()
    isps: tuple[Isp, ...] = ()
    policies: tuple[Policy, ...] = ()
    rules: tuple[Rule, ...] = ()
    adjusted_weights: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    domains: Mapping[str, Domain] = field(default_factory=dict)
    conn_counts: Mapping[str, int] = field(default_factory=dict)
    events_lost: int = 0
    conntrack: Conntrack = field(default_factory=Conntrack)
    events: tuple[Event, ...] = ()
    ha: Ha | None = None  # an HA pair's node (the config's ha section); null otherwise

    def isp(self, name: str) -> Isp | None:
        return next((i for i in self.isps if i.name == name), None)

    @property
    def any_ipv6(self) -> bool:
        """Whether some ISP carries IPv6 (then the tables have an ``ipv6`` column)."""
        return any(i.ipv6 is not None for i in self.isps)


# --- building it --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probes:
    """What an ISP's monitor of one family knows that its health machine does not."""

    method: str
    targets: tuple[str, ...]
    rounds: int
    last_errors: Mapping[str, str]
    interval: float = 0.0  # how often rounds run now (a standby ISP's sparser interval while it is not in use)


@dataclass(frozen=True)
class DaemonFacts:
    """The daemon's own counters and settings that status shows."""

    pid: int
    config_path: str
    uptime_seconds: float
    nft_applies: int
    reloads: int
    link_events: int
    last_error: str | None
    last_reload: Reload | None
    route_failures: tuple[str, ...]  # routes the kernel refused at the last reconcile
    started: float  # wall time: an ISP's ``since`` before it ever changed
    events_lost: int
    table_entries: int | None
    table_max: int | None
    table_warnings: tuple[str, ...]
    ha: Ha | None = None


def _drain(fleet: Fleet, name: str) -> Drain | None:
    drain = fleet.drains.get(name)
    return None if drain is None else Drain(drain.reason, drain.until_wall)


def build(
    *,
    config: Config,
    fleet: Fleet,
    desired: Desired | None,
    facts: DaemonFacts,
    counters: Mapping[str, Mapping[str, int]],
    counts: Mapping[str, int],
    probes: Mapping[tuple[str, int], Probes],
    domains: Mapping[str, Mapping[str, Any]],
    events: Sequence[Event],
    now: float,
    wall: float,
) -> Status:
    """The status: the ISPs as the kernel has them (``desired``, the last applied plan) with the fleet's view of
    each; ``counters`` are our named nft counters (rules' hits, ISPs' traffic), ``counts`` the live conntrack
    entries per ISP, ``probes`` each monitored ISP's monitor per family, ``now`` the monotonic clock, ``wall``
    the wall clock (when schedules change)."""
    isps = []
    for isp in desired.isps if desired else ():
        machine = fleet.machines[4].get(isp.name)
        if machine is None:
            continue
        traffic = {f"{way}_{d}": counters.get(f"isp_{isp.name}_{d}", {}).get(way) for way in ("packets", "bytes")
                   for d in ("rx", "tx")}  # fmt: skip
        until = fleet.failback.get(isp.name)
        suspect = isp.name in fleet.suspects  # (planned as degraded, like a hold-down: its status stays)
        held = None if until is None or machine.status.value != "up" else round(max(0.0, until - now), 1)
        q = _quota(config, fleet, isp.name)
        isps.append(
            Isp(
                name=isp.name,
                interface=isp.interface,
                gateway=isp.uplink.next_hop,
                gateway_source=isp.uplink.source,
                uplink=isp.uplink.problem,
                addresses=isp.uplink.addresses,
                status=machine.status.value
                if held is not None or suspect or _quota_holds(q, isp.status)
                else isp.status.value,
                decided=machine.status.value,
                active=isp.active,
                weight=isp.weight,
                tier=isp.tier,
                share_percent=round(isp.share * 100, 2),
                mark=isp.mark,
                table=isp.table,
                since=round(fleet.since.get(isp.name, facts.started), 3),
                link_down=machine.link_down,
                drain=_drain(fleet, isp.name),
                failback_seconds=held,
                suspected=fleet.suspects[isp.name][1] if isp.name in fleet.suspects else None,
                health=_health(config, fleet, probes, isp.name, 4, now),
                ipv6=_ipv6(config, fleet, probes, isp.name, now),
                new_connections=counters.get(f"isp_{isp.name}_new", {}).get("packets"),
                quota=q,
                **traffic,
            )
        )
    return Status(
        pid=facts.pid,
        config=facts.config_path,
        uptime_seconds=round(facts.uptime_seconds, 1),
        mark_mask=config.mark_mask,
        local_traffic=config.local_traffic,
        nft_applies=facts.nft_applies,
        reloads=facts.reloads,
        link_events=facts.link_events,
        last_error=facts.last_error,
        last_reload=facts.last_reload,
        route_failures=facts.route_failures,
        retired=tuple(Retired(r.mark, r.name) for r in fleet.state.retired),
        isps=tuple(isps),
        policies=tuple(
            Policy(
                p.name,
                p.algorithm,
                dict(p.active),
                p.sticky is not None,
                members=_members(config, p.name),
                hash_fields=p.hash_fields if p.algorithm == "hash" else (),
                on_unavailable=p.on_unavailable,
                schedule=_policy_schedule(config, desired, p.name, wall) if desired else None,
            )
            for p in (desired.policies if desired else ())
        ),
        rules=tuple(
            Rule(
                r.name,
                r.action or (f"via {r.via}" if r.via else f"policy {r.policy}"),
                counters.get(f"rule_{r.name}", {}).get("packets"),
                _match(r),
                _rule_schedule(config, desired, r, wall) if desired else None,
            )
            for r in (desired.rules if desired else ())
        ),
        adjusted_weights={p: dict(w) for p, w in fleet.adjusted.items()},
        domains={name: from_json(Domain, d) for name, d in domains.items()},
        conn_counts=dict(counts),
        events_lost=facts.events_lost,
        conntrack=Conntrack(facts.table_entries, facts.table_max, facts.table_warnings),
        events=tuple(events),
        ha=facts.ha,
    )


def _quota(config: Config, fleet: Fleet, name: str) -> Quota | None:
    """The ISP's data quota as the fleet counts it (None: it has none, or it is not counted yet)."""
    from wanlb.quota import describe  # (the daemon's side only: the CLI never builds a status)

    q = next((i.quota for i in config.isps if i.name == name), None)
    usage = fleet.quotas.get(name)
    if q is None or usage is None:
        return None
    return Quota(
        used_bytes=usage.used, limit_bytes=q.limit, percent=round(100 * usage.used / q.limit, 1),
        cycle=describe(q), cycle_start=round(usage.start, 3), cycle_end=round(usage.end, 3), at_limit=q.at_limit,
        exceeded=usage.used >= q.limit, warned=usage.warned,
    )  # fmt: skip


def _quota_holds(quota: Quota | None, planned: IspStatus) -> bool:
    """Whether the plan's status is only its quota holding it back (shown then: the ISP's own state; ``active``
    says it takes no NEW connections)."""
    return quota is not None and quota.exceeded and planned.value in ("disabled", "degraded")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _health(
    config: Config, fleet: Fleet, probes: Mapping[tuple[str, int], Probes], name: str, family: int, now: float
) -> Health:
    machine = fleet.machines[6 if family == 6 else 4].get(name)
    probe = probes.get((name, family))
    isp = next((i for i in config.isps if i.name == name), None)
    if machine is None or probe is None or isp is None:
        return Health()
    quality = machine.quality()
    from wanlb.health.probes import wire_bytes  # (the daemon's side only: the CLI never builds a status)

    held = machine.hold_until - now
    timing = isp.health
    per_probe = wire_bytes(timing.method, family, timing.dns_name, timing.http_path)
    return Health(
        monitored=True,
        method=probe.method,
        targets=probe.targets,
        rounds=probe.rounds,
        loss_percent=round(quality.loss_percent, 1),
        latency_ms=_ms(quality.latency),
        jitter_ms=_ms(quality.jitter),
        held_down_seconds=round(held, 1) if held > 0 and machine.status.value == "down" else 0,
        last_errors=dict(probe.last_errors),
        interval_seconds=timing.interval,
        probe_interval_seconds=probe.interval or timing.interval,
        probe_bytes_per_day=round(per_probe * len(probe.targets) * 86400 / (probe.interval or timing.interval)),
        timeout_seconds=timing.timeout,
        down_after=timing.down_after,
        up_after=timing.up_after,
        quorum=timing.quorum_of(family),
        window=timing.window,
        max_loss_percent=timing.max_loss,
        max_latency_ms=_ms(timing.max_latency),
    )


def _members(config: Config, policy: str) -> tuple[Member, ...]:
    """A policy's members as configured: ``default`` is every ISP, ``via_<isp>`` a rule's one ISP."""
    isps = {i.name: i for i in config.isps}
    if policy in config.policies:
        return tuple(Member(m.isp, m.tier or isps[m.isp].tier, m.weight or isps[m.isp].weight)
                     for m in config.policies[policy].members if m.isp in isps)  # fmt: skip
    if policy.startswith("via_") and policy[4:] in isps:
        return (Member(policy[4:], 1, 1),)
    return tuple(Member(i.name, i.tier, i.weight) for i in config.isps)


def _policy_schedule(config: Config, desired: Desired, name: str, wall: float) -> Schedule | None:
    from wanlb import schedule

    policy = config.policies.get(name)
    if policy is None or policy.when is None:
        return None
    changes = schedule.switch((policy.when,), wall).changes_at
    return Schedule(schedule.describe(policy.when), name not in desired.inactive.policies, changes)


def _rule_schedule(config: Config, desired: Desired, rule: RuleConfig, wall: float) -> Schedule | None:
    """A rule's own window and its policy's: it is in effect while both are open."""
    from wanlb import schedule

    whens = schedule.rule_whens(config, rule)
    if not whens:
        return None
    shown = [schedule.describe(rule.when)] if rule.when is not None else []
    policy = config.policies.get(rule.policy) if rule.policy is not None else None
    if policy is not None and policy.when is not None:
        shown.append(f"policy {rule.policy}: {schedule.describe(policy.when)}")
    changes = schedule.switch(whens, wall).changes_at
    return Schedule("; ".join(shown), rule.name not in desired.inactive.rules, changes)


MATCH_VALUES = 8  # values of one condition a rule's ``match`` lists before "(+N more)"


def _match(rule: RuleConfig) -> str:
    """A rule's conditions as one line: ``src 192.168.77.11/32 · proto tcp · dport 443, 8000-8080``."""
    from wanlb.config import DSCP_NAMES
    from wanlb.protocols import NAMES

    def ports(values: Sequence[tuple[int, int]]) -> list[str]:
        return [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in values]

    conditions = [
        ("src", [str(n) for n in rule.src]),
        ("not src", [str(n) for n in rule.src_not]),
        ("src mac", list(rule.src_mac)),
        ("dst", [str(n) for n in rule.dst]),
        ("not dst", [str(n) for n in rule.dst_not]),
        ("dst domains", list(rule.dst_domains)),
        ("proto", [] if rule.proto is None else [NAMES.get(rule.proto, str(rule.proto))]),
        ("sport", ports(rule.sport)),
        ("dport", ports(rule.dport)),
        ("iif", list(rule.iif)),
        ("dscp", [DSCP_NAMES.get(d, str(d)) for d in rule.dscp]),
    ]
    parts = []
    for name, values in conditions:
        if values:
            more = f" (+{len(values) - MATCH_VALUES} more)" if len(values) > MATCH_VALUES else ""
            parts.append(f"{name} {', '.join(values[:MATCH_VALUES])}{more}")
    return " · ".join(parts) or "everything"


def _ipv6(config: Config, fleet: Fleet, probes: Mapping[tuple[str, int], Probes], name: str, now: float) -> Ipv6 | None:
    """An ISP's IPv6: its mode, next hop, status (its own with IPv6 targets, else its one status) and health."""
    isp = next((i for i in config.isps if i.name == name), None)
    if isp is None or isp.ipv6.mode == "off":
        return None
    own = fleet.own_ipv6(name)
    link = fleet.uplink(name)
    return Ipv6(
        mode=isp.ipv6.mode,
        gateway=str(link.via6) if link.via6 is not None else ("device route" if link.ready6 else None),
        gateway_source=link.source6,
        uplink=link.problem6,
        status=fleet.statuses(6)[name].value,
        own_health=own,
        health=_health(config, fleet, probes, name, 6, now) if own else None,
    )


# --- the wire format ----------------------------------------------------------------------------------------


def to_json(value: Any) -> Any:
    """A view (or a part of one) as JSON-able data: the wire format."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {_json_name(f): to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
        hook = getattr(value, "_json", None)
        return hook(out) if hook is not None else out
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_json(v) for k, v in value.items()}
    return value


def from_json(cls: type, data: Any) -> Any:
    """``data`` (a JSON object as :func:`to_json` wrote it) as a ``cls``; missing fields take their defaults,
    unknown ones are ignored (a newer daemon may send more)."""
    return _decode(cls, data)


def _json_name(f: dataclasses.Field[Any]) -> str:
    return f.metadata.get("json", f.name)


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


_HINTS: dict[type, dict[str, Any]] = {}


def _decode(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _decode(args[0], value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            return tp()
        hints = _hints(tp)
        kwargs = {f.name: _decode(hints[f.name], value[_json_name(f)])
                  for f in dataclasses.fields(tp) if _json_name(f) in value}  # fmt: skip
        return tp(**kwargs)
    if origin is tuple:
        item = typing.get_args(tp)[0]
        return tuple(_decode(item, v) for v in value or ())
    if origin in (Mapping, dict, typing.Mapping):
        value_type = typing.get_args(tp)[1]
        return {k: _decode(value_type, v) for k, v in (value or {}).items()}
    return value
