"""The one owner of per-ISP state: inputs in, effects out.  Pure (time is passed in), sans-I/O.

Every input that can change an ISP — a probe round, an admin drain or enable,
a WAN link going down or up, a reload, the periodic resync — is a method of
:class:`Fleet`.  Each returns the effects to carry out, as data:

* :class:`Reconcile` — make the kernel match (balancing, routes, rules; the least-conn/latency weights
  that :meth:`Fleet.adjust` keeps);
* :class:`Flush` — delete the conntrack entries carrying a mark, *only after*
  the reconcile of the same batch succeeded (else a flushed connection could
  come back to the ISP that is leaving); also, with ``on_recover:
  move-lower-tier``, those of the ISPs a recovery takes out of use (only those of
  some rules, when rules' own ``on_recover`` differ: :mod:`wanlb.recover`);
* :class:`ClearSticky` — empty an unusable ISP's sticky sets at once;
* :class:`Emit` — one event, correctly named, for history, logs and hooks;
* :class:`SaveState` — persist the runtime state (allocations).

The daemon executes effects and decides nothing.  What a dead ISP's
connections should become is desired state here: "an ISP that is DOWN because
it is broken (its link or its probes), with ``on_down: flush``, has no
conntrack entries", and "a retired mark has no entries".  :meth:`Fleet.resync`
turns the live counts into the flushes still missing, so a flush that failed
(or never ran because nft failed) is retried at the next resync.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from wanlb import quota, recover
from wanlb.config import Config, IspConfig
from wanlb.health.machine import HealthMachine, HealthParams, Quality, Transition
from wanlb.policy import adjust, policies, shares_differ
from wanlb.runtime import Allocation, RuntimeState
from wanlb.states import FAMILIES, Family, IspStatus
from wanlb.uplink import Uplink, assumed


@dataclass(frozen=True)
class Event:
    at: float  # wall-clock seconds
    isp: str
    event: str  # up, down, degraded, disabled, enabled, added, removed, replaced, failback; HA: role, peer, …
    status: str  # the ISP's status afterwards ("removed" once it is gone)
    old: str | None
    reason: str
    interface: str
    loss_percent: float | None = None
    latency_ms: float | None = None
    family: int = 0  # 6: the ISP's IPv6 health alone; 4: its IPv4 alone (it has IPv6 health too); 0: both
    gateway: str = ""  # the ISP's next hop when it happened (an address, "device route" or "none")


@dataclass(frozen=True)
class Drain:
    """An admin drain: why (free text, may be empty) and until when (monotonic and wall seconds; None: until
    ``enable``)."""

    reason: str
    until: float | None = None
    until_wall: float | None = None


@dataclass(frozen=True)
class Reconcile:
    why: str


@dataclass(frozen=True)
class Flush:
    isp: str
    mark: int
    mask: int
    why: str
    family: int = 0  # 0: both families; 4 or 6: only that family's entries
    moved: recover.Moved | None = None  # None: every entry with the mark; else those whose rule moves them back


@dataclass(frozen=True)
class ClearSticky:
    """Forget every client pinned to ``isp`` (its sticky-set entries): it is no longer usable."""

    isp: str
    family: int = 0  # 0: both families' sticky sets; 4 or 6: that family's


@dataclass(frozen=True)
class Emit:
    event: Event


@dataclass(frozen=True)
class SaveState:
    state: RuntimeState


Effect = Reconcile | Flush | ClearSticky | Emit | SaveState


def params_of(isp: IspConfig) -> HealthParams:
    h = isp.health
    return HealthParams(
        down_after=h.down_after,
        up_after=h.up_after,
        window=h.window,
        max_loss=h.max_loss,
        max_latency=h.max_latency,
        recover_loss=h.recover_loss,
        recover_latency=h.recover_latency,
        flap_window=h.flap_window,
        hold_base=h.hold_down,
        hold_max=h.hold_down_max,
    )


class Fleet:
    """Per-ISP health machines (per address family), admin and link state, allocations; see the module
    docstring.

    ``machines[4]`` holds every ISP's one health (its IPv4 probes, its link, its drain); ``machines[6]`` an
    IPv6 health of their own for the ISPs that carry IPv6 and have IPv6 targets — any other ISP's IPv6
    follows its one state.  An effect's or event's ``family`` is what it covers: 4 or 6, or 0 for both (an
    ISP without IPv6 health of its own).
    """

    def __init__(self, config: Config, state: RuntimeState, uplinks: Mapping[str, Uplink], now: float, wall: float):
        self.config = config
        self.state = state
        self.machines: dict[Family, dict[str, HealthMachine]] = {4: {}, 6: {}}
        self.since: dict[str, float] = {}
        self.drains: dict[str, Drain] = {}  # ISP -> its admin drain (reason, timer), while disabled
        self.ha_role: str | None = "backup" if config.ha is not None else None  # an HA node: as keepalived says
        self._uplinks: dict[str, Uplink] = dict(uplinks)  # ISP -> its uplink, as last observed
        self._hops: dict[tuple[str, int], object] = {}  # (ISP, family) -> the last next hop it had (None: dev)
        self._addresses: dict[str, tuple[str, ...]] = {}  # ISP -> the last addresses its WAN had
        self.adjusted: dict[str, dict[str, int]] = {}  # least-conn / latency: the weights in force, per policy
        self.failback: dict[str, float] = {}  # ISP -> when its failback hold-down ends (monotonic)
        self.suspects: dict[str, tuple[float, str]] = {}  # ISP -> since when and why passive detection suspects it
        self.false_alarms = 0  # suspicions a probe round cleared
        self.quotas: dict[str, quota.Usage] = {}  # ISP -> its data quota's count this cycle (isps[].quota)
        for isp in config.isps:
            for family in FAMILIES:
                self._new_machine(isp, IspStatus.UP, now, wall, family)
            self._remember_hops(isp, self.uplink(isp.name))

    # --- what the rest of wanlb reads -------------------------------------------------------

    def statuses(self, family: Family = 4) -> dict[str, IspStatus]:
        """Every ISP's status; of ``family`` 6: its own IPv6 health where it has one, else its one status."""
        own = self.machines[family]
        return {name: (own.get(name) or m).status for name, m in self.machines[4].items()}

    def balancing(self, family: Family = 4) -> dict[str, IspStatus]:
        """The statuses the planner balances by: an up ISP still in its failback hold-down counts as degraded,
        a last choice that takes NEW connections only while no other ISP is up (it has not yet proved itself
        for ``failover.failback_after``; with nothing else up there is nothing to hold it back for)."""
        out = self.statuses(family)
        for name in (*self.failback, *self.suspects):  # (a suspect likewise, until its probe round has said)
            if out.get(name) == IspStatus.UP:
                out[name] = IspStatus.DEGRADED
        return quota.held_back(self.config, self.quotas, out)  # an ISP over its data quota, as at_limit says

    def probe_interval(self, name: str, family: Family = 4) -> float:
        """How often the ISP's probes of ``family`` run now: its ``interval``, or for a ``standby`` ISP that no
        policy uses (a better tier carries the traffic) its ``standby_interval``.  Asked by the monitor at
        every tick of its full interval, so the full rate is back within one interval of being needed."""
        isp = self.config.isp(name)
        health = isp.health
        if not isp.standby or name in self._in_use(self.balancing(family)):
            return health.interval
        return max(health.interval, health.standby_interval)

    def _in_use(self, statuses: Mapping[str, IspStatus]) -> set[str]:
        """The ISPs some policy gives NEW connections to under these (balancing) statuses."""
        return {isp for p in policies(self.config, statuses) for isp, _ in p.active}

    def own_ipv6(self, name: str) -> bool:
        """Whether the ISP's IPv6 has a health of its own (IPv6 targets)."""
        return name in self.machines[6]

    def uplink(self, name: str) -> Uplink:
        """The ISP's uplink as last observed (as configured before the first observation)."""
        return self._uplinks.get(name) or assumed(self.config.isp(name))

    def probed(self, name: str) -> bool:
        return bool(self.config.isp(name).health.targets_of(4))

    def quality(self, name: str) -> Quality:
        return self.machines[4][name].quality()

    def wants_empty(self, name: str, family: Family = 4) -> bool:
        """Its connections (of that health's family) cannot work, the config says flush them, and another ISP
        can take them: with none usable a flush would only break connections that have nowhere else to go
        (NEW ones meanwhile follow ``failover.last_resort``); kept, they resume if their ISP returns first, and
        the resync flushes them as soon as another ISP is usable."""
        m = self.machines[family].get(name)
        if self.ha_role not in (None, "master"):  # an HA backup: conntrackd and the primary own the connections
            return False
        if m is None or self.config.failover.on_down != "flush" or m.status != IspStatus.DOWN or not m.broken:
            return False
        return any(s.usable for other, s in self.statuses(family).items() if other != name)

    # --- inputs -----------------------------------------------------------------------------

    def round(
        self,
        name: str,
        now: float,
        wall: float,
        ok: bool,
        latency: float | None,
        loss: float,
        errors: str = "",
        family: Family = 4,
    ) -> list[Effect]:
        """One finished probe round of ISP ``name`` (of its IPv4 or its IPv6 targets)."""
        machine = self.machines[family].get(name)
        if machine is None:  # a round that finished after its ISP (or its IPv6 targets) was removed by a reload
            return []
        t = machine.round(now, ok, latency, loss)
        # A round that answered clears a suspicion, if it was sent after it (not one in flight since before).
        since = self.suspects.get(name, (now, ""))[0]
        cleared = self._clear_suspicion(name, wall) if family == 4 and ok and now - (latency or 0) >= since else []
        if t is None:
            return cleared + self.expire_failbacks(now, wall)
        if errors and not ok:
            t = replace(t, reason=f"{t.reason}: {errors}")
        return cleared + self._changed(name, t, t.new.value, wall, family) + self.expire_failbacks(now, wall)

    def suspect(self, name: str, why: str, now: float, wall: float) -> list[Effect]:
        """Passive detection (wanlb.health.passive) says the ISP's new connections go unanswered: out of
        balancing now, as a last choice, until a probe round answers (a false alarm: back at once) or its
        machine declares it down.  The daemon has it probed at once."""
        machine = self.machines[4].get(name)
        if machine is None or machine.status != IspStatus.UP or name in self.suspects or not self.probed(name):
            return []  # (an ISP nobody probes could never be cleared: it is not suspected)
        self.suspects[name] = (now, why)
        isp = self.config.isp(name)
        return [Reconcile(f"{name} suspected"), self._emit(name, "suspected", "up", "up", why, isp.interface, wall)]

    def _clear_suspicion(self, name: str, wall: float) -> list[Effect]:
        if self.suspects.pop(name, None) is None:
            return []
        self.false_alarms += 1
        why = "a probe round answered: back in balancing (a false alarm)"
        interface = self.config.isp(name).interface
        return [Reconcile(f"{name} cleared"), self._emit(name, "cleared", "up", "up", why, interface, wall)]

    def link(self, interface: str, usable: bool, now: float, wall: float) -> list[Effect]:
        """A link event: a WAN that went down is DOWN at once (the fast path of a failover); anything
        else needs a look at the whole uplink (address, next hop), which the reconcile it asks for takes
        and hands to :meth:`observed`."""
        effects: list[Effect] = []
        for isp in self.config.isps if not usable else ():
            if isp.interface != interface:
                continue
            link = self.uplink(isp.name)
            if link.ready:
                self._uplinks[isp.name] = replace(link, problem="link down")
            effects += self._link(isp, {4: (False, "link down"), 6: (False, "link down")}, now, wall)
        lan = interface in self.config.lan.interfaces
        if (lan or any(i.interface == interface for i in self.config.isps)) and not effects:
            effects.append(Reconcile(f"link {interface} {'up' if usable else 'down'}"))
        return effects

    def observed(self, config: Config, seen: Mapping[str, Uplink], now: float, wall: float) -> list[Effect]:
        """What a reconcile saw of every uplink (planned with ``config``): an uplink that lost a piece is
        DOWN (and, being broken, flushed); one that is whole again is judged by its probes; a new next hop
        or address is an event.  Observations of a config replaced meanwhile are stale: ignored."""
        if config is not self.config:
            return []
        effects: list[Effect] = []
        for isp in config.isps:
            new = seen.get(isp.name)
            if new is None:
                continue
            old = self._uplinks.get(isp.name)
            self._uplinks[isp.name] = new
            usable = {4: (new.ready, new.problem or ""), 6: (new.ready6, new.problem or new.problem6 or "")}
            effects += self._link(isp, usable, now, wall)
            effects += self._uplink_events(isp, old, new, wall)
        return effects

    def disable(
        self, name: str, now: float, wall: float, reason: str = "", seconds: float | None = None
    ) -> tuple[str, list[Effect]]:
        """Drain both families (an admin drains an uplink, not one of its address families); ``reason`` is
        shown with it, and after ``seconds`` (if given) :meth:`expire_drains` hands it back to its probes."""
        self._machine(name)
        effects: list[Effect] = []
        for family in FAMILIES:
            m = self.machines[family].get(name)
            t = None if m is None else m.disable(now)
            effects += [] if t is None else self._changed(name, t, "disabled", wall, family)
        until = None if seconds is None else (now + seconds, wall + seconds)
        self.drains[name] = Drain(reason, *(until or (None, None)))
        if reason:
            effects = [_with_reason(e, f"disabled by admin: {reason}") for e in effects]
        for_how_long = "" if seconds is None else f" for {_duration(seconds)}"
        return f"{name} is {self.machines[4][name].status.value}{for_how_long}", effects

    def enable(self, name: str, now: float, wall: float, why: str = "") -> tuple[str, list[Effect]]:
        """Hand a drained ISP back to its probes (``why``: what the event says instead of "enabled by admin")."""
        self._machine(name)
        self.drains.pop(name, None)
        effects: list[Effect] = []
        for family in FAMILIES:
            m = self.machines[family].get(name)
            t = None if m is None else m.enable(now, family == 6 or self.probed(name))
            effects += [] if t is None else self._changed(name, t, "enabled", wall, family)
        if why:
            effects = [_with_reason(e, why) for e in effects]
        return f"{name} is {self.machines[4][name].status.value}", effects

    def role(self, role: str, wall: float) -> list[Effect]:
        """keepalived says this HA node's role changed: an event; as master it flushes what the health of its
        ISPs says must go (the resync finds it), as backup or in fault it flushes nothing."""
        if self.config.ha is None or role == self.ha_role:
            return []
        old, self.ha_role = self.ha_role, role
        why = f"keepalived: {role.upper()} (node {self.config.ha.node})"
        return [Emit(Event(wall, "", "role", role, old, why, self.config.ha.interface or ""))]

    def expire_drains(self, now: float, wall: float) -> list[Effect]:
        """Drains whose timer ran out end (the daemon asks at every resync, so within its interval), and
        failback hold-downs."""
        effects: list[Effect] = []
        for name, drain in sorted(self.drains.items()):
            if drain.until is not None and now >= drain.until:
                effects += self.enable(name, now, wall, "drain timer ran out")[1]
        return effects + self.expire_failbacks(now, wall)

    def expire_failbacks(self, now: float, wall: float) -> list[Effect]:
        """Failback hold-downs that ran out (asked after every probe round and resync): the ISP takes NEW
        connections again, and with ``on_recover: move-lower-tier`` (global or rules') the worse tiers' connections
        come back, new ruleset first (the Reconcile), flush after it."""
        effects: list[Effect] = []
        for name, until in sorted(self.failback.items()):
            if now < until:
                continue
            before = self.balancing()
            del self.failback[name]
            isp = self.config.isp(name)
            why = f"up for {_duration(self.config.failover.failback_after)} since it recovered: takes connections again"
            effects.append(Reconcile(f"{name} failback"))
            effects += self._move_back(name, before)
            status = self.machines[4][name].status.value
            effects.append(self._emit(name, "failback", status, "held", why, isp.interface, wall))
        return effects

    def reload(self, config: Config, allocation: Allocation, now: float, wall: float) -> list[Effect]:
        """Adopt a new config and its allocation: carry each staying ISP's state, report every change."""
        old_config, old_state = self.config, self.state
        self.config, self.state = config, allocation.state
        if (config.ha is None) != (old_config.ha is None):  # (the helpers start or end with the next start)
            self.ha_role = None if config.ha is None else "backup"
        effects: list[Effect] = [SaveState(allocation.state), Reconcile("reload")]
        events: list[Effect] = []
        gone = set(allocation.removed) | set(allocation.replaced)
        for name in sorted(gone):
            old_isp = old_config.isp(name)
            machine = self.machines[4].pop(name)
            self.machines[6].pop(name, None)
            self.since.pop(name, None)
            self.failback.pop(name, None)
            self.suspects.pop(name, None)
            self.drains.pop(name, None)  # (a replaced ISP starts undrained, as its state does)
            self._uplinks.pop(name, None)  # (a replaced ISP may have another interface: observed afresh)
            self._hops.pop((name, 4), None)
            self._hops.pop((name, 6), None)
            self._addresses.pop(name, None)
            slot = old_state.isps[name]
            effects.append(
                Flush(name, slot.mark, old_state.mark_mask, "removed" if name in allocation.removed else "replaced")
            )
            if name in allocation.removed:
                events.append(self._emit(name, "removed", "removed", machine.status.value, "removed from the config",
                                         old_isp.interface, wall))  # fmt: skip
        for isp in config.isps:
            self._reload6(isp, now)
            staying = isp.name in old_state.isps and isp.name not in gone
            if staying and isp.ipv6.mode == "off" and old_config.isp(isp.name).ipv6.mode != "off":
                slot = old_state.isps[isp.name]  # its IPv6 connections have no route through it any more
                effects.append(Flush(isp.name, slot.mark, old_state.mark_mask, "its IPv6 was turned off", 6))
            machine = self.machines[4].get(isp.name)
            if machine is None:
                self._new_machine(isp, IspStatus.UP, now, wall)
                self._remember_hops(isp, self.uplink(isp.name))
                what = "replaced" if isp.name in allocation.replaced else "added"
                why = "interface or mark changed: a new uplink" if what == "replaced" else "added to the config"
                status = self.machines[4][isp.name].status.value
                events.append(self._emit(isp.name, what, status, None, why, isp.interface, wall))
                continue
            status = machine.status
            if not self.probed(isp.name) and status in (IspStatus.DOWN, IspStatus.DEGRADED) and not machine.link_down:
                t = Transition(status, IspStatus.UP, now, "no health targets any more (reload)")
                self._new_machine(isp, IspStatus.UP, now, wall)
                events += [e for e in self._changed(isp.name, t, "up", wall) if isinstance(e, Emit)]
            elif machine.params != params_of(isp):
                fresh = HealthMachine(params_of(isp), status)
                fresh.disabled, fresh.link_down = machine.disabled, machine.link_down
                self.machines[4][isp.name] = fresh
        return effects + events

    def adjust(self, counts: Mapping[str, int]) -> list[Effect]:
        """least-conn / latency: new weights from the live connection counts and the probes' latency and loss;
        a reconcile only when some ISP's share moves by more than 5 points (or the adjusted policies change)."""
        qualities = {isp.name: self.quality(isp.name) for isp in self.config.isps}
        latency = {name: q.latency for name, q in qualities.items()}
        loss = {name: q.loss_percent / 100 for name, q in qualities.items()}
        fresh, base = adjust(self.config, self.balancing(), counts, latency, loss)
        changed = [p for p, w in fresh.items() if shares_differ(self.adjusted.get(p, base[p]), w)]
        if not changed and set(fresh) == set(self.adjusted):
            return []
        self.adjusted = fresh
        weights = "; ".join(f"{p}: {dict(w)}" for p, w in fresh.items())
        return [Reconcile(f"weights adjusted ({', '.join(changed) or 'policies changed'}): {weights}")]

    def restore_quotas(self, usages: Mapping[str, quota.Usage]) -> None:
        """The data quotas' counts as the last run left them (before the first reconcile: an ISP over its quota
        stays out of balancing across a restart)."""
        self.quotas = dict(usages)

    def count_quotas(self, readings: Mapping[str, tuple[int, int]], wall: float) -> list[Effect]:
        """A reading of the WAN counters (ISP → bytes in, bytes out): the quotas count, start new cycles and
        tell their thresholds (:func:`wanlb.quota.step`); an event each, and a reconcile first when what the
        planner balances by changed (an ISP reached its limit, or a new cycle or a reload freed it)."""
        before = (self.balancing(4), self.balancing(6))
        self.quotas, told = quota.step_all(self.config, self.quotas, readings, wall)
        effects: list[Effect] = [] if (self.balancing(4), self.balancing(6)) == before else [Reconcile("quota")]
        return effects + [self._quota_event(name, notice, wall) for name, notice in told]

    def reset_quota(self, name: str, wall: float) -> tuple[str, list[Effect]]:
        """``wanlb quota reset``: the ISP's count starts again (KeyError: no such ISP; ValueError: no quota)."""
        self._machine(name)
        q = self.config.isp(name).quota
        if q is None:
            raise ValueError(f"{name} has no quota (isps[].quota)")
        before = (self.balancing(4), self.balancing(6))
        self.quotas[name], notice = quota.reset(q, self.quotas.get(name), wall)
        effects: list[Effect] = [] if (self.balancing(4), self.balancing(6)) == before else [Reconcile("quota reset")]
        return f"{name}: quota count reset", [*effects, self._quota_event(name, notice, wall)]

    def _quota_event(self, name: str, notice: quota.Notice, wall: float) -> Emit:
        status = self.machines[4][name].status.value  # (no transition: the ISP's state stays)
        return self._emit(name, notice.event, status, status, notice.reason, self.config.isp(name).interface, wall)

    def flush_asked(self, name: str) -> Flush:
        """An operator asks for an ISP's connections to be deleted (``wanlb conntrack delete --isp``): its
        mark under the mask in force (the marks the state file shows).  KeyError: no such ISP."""
        slot = self.state.isps[name]
        return Flush(name, slot.mark, self.config.mark_mask, "asked on the control socket")

    def resync(self, counts: Mapping[int, int]) -> list[Effect]:
        """Flushes still missing, from live per-mark counts (``mark & mark_mask`` → entries)."""
        effects: list[Effect] = []
        mask = self.config.mark_mask
        why = {4: "still has connections while down", 6: "still has IPv6 connections while its IPv6 is down"}
        for name, slot in self.state.isps.items():
            # The counts do not tell the families apart: a flush of one family may find nothing to do.
            for family in FAMILIES:
                if self.wants_empty(name, family) and counts.get(slot.mark, 0) > 0:
                    effects.append(Flush(name, slot.mark, mask, why[family], self._scope(name, family)))
        # A retired mark is flushed (counted exactly by the kernel) and then released, whatever the counts say.
        effects += [Flush(r.name, r.mark, r.mask, "its ISP was removed") for r in self.state.retired]
        return effects

    def flushed(self, mark: int, mask: int) -> list[Effect]:
        """A flush of ``mark`` succeeded: a retired mark is free again."""
        if not any(r.mark == mark and r.mask == mask for r in self.state.retired):
            return []
        kept = tuple(r for r in self.state.retired if not (r.mark == mark and r.mask == mask))
        self.state = replace(self.state, retired=kept)
        return [SaveState(self.state)]

    # --- internals ----------------------------------------------------------------------------

    def _link(self, isp: IspConfig, usable: Mapping[Family, tuple[bool, str]], now: float, wall: float) -> list[Effect]:
        """Feed an uplink's usability (and, when unusable, why) to the ISP's machine of each family."""
        effects: list[Effect] = []
        for family in FAMILIES:
            m = self.machines[family].get(isp.name)
            ok, why = usable[family]
            t = None if m is None else m.link(now, ok, family == 6 or self.probed(isp.name), why)
            if t is not None:
                t = replace(t, reason=f"{t.reason} ({isp.interface})")
                effects += self._changed(isp.name, t, t.new.value, wall, family)
        return effects

    def _remember_hops(self, isp: IspConfig, link: Uplink) -> None:
        """The next hops (and addresses) an ISP has now, so a later change is told as one (a static next
        hop is known at once)."""
        if link.addresses:
            self._addresses[isp.name] = link.addresses
        if link.ready or not isp.learns:
            self._hops[(isp.name, 4)] = link.via if link.ready else isp.gateway
        if link.ready6 or isp.gateway6 not in (None, "auto"):
            self._hops[(isp.name, 6)] = link.via6 if link.ready6 else isp.gateway6

    def _uplink_events(self, isp: IspConfig, old: Uplink | None, new: Uplink, wall: float) -> list[Effect]:
        """A next hop that changed or was learned (per family), or addresses that changed: one event each."""
        effects: list[Effect] = []
        status = self.machines[4][isp.name].status.value
        hops: tuple[tuple[Family, bool, object, str], ...] = (
            (4, new.ready, new.via, new.source), (6, new.ready6, new.via6, new.source6))  # fmt: skip
        for family, ready, via, source in hops:
            if not ready or (family == 6 and isp.gateway6 is None):
                continue
            known = (isp.name, family) in self._hops
            before = self._hops.get((isp.name, family))
            self._hops[(isp.name, family)] = via
            if known and before == via:
                continue
            shown = _hop_text(via, isp.interface)
            what = f"{_hop_text(before, isp.interface)} → {shown}" if known else f"learned {shown}"
            effects.append(self._emit(isp.name, "gateway", status, status, f"{what} ({source})", isp.interface, wall,
                                      self._scope(isp.name, family)))  # fmt: skip
        before = self._addresses.get(isp.name)
        if new.addresses:
            self._addresses[isp.name] = new.addresses
        if before and new.addresses and before != new.addresses:  # (a lease change, a new PPP session)
            why = f"{', '.join(before)} → {', '.join(new.addresses)}"
            effects.append(self._emit(isp.name, "address", status, status, why, isp.interface, wall))
        return effects

    def _machine(self, name: str) -> HealthMachine:
        if name not in self.machines[4]:
            raise KeyError(f"no ISP named {name!r}")
        return self.machines[4][name]

    def _scope(self, name: str, family: Family) -> int:
        """What a change of the ISP's ``family`` health covers: 6 its IPv6; 4 its IPv4 alone if its IPv6 has a
        health of its own, else both (0)."""
        return family if family == 6 or self.own_ipv6(name) else 0

    def _new_machine(self, isp: IspConfig, status: IspStatus, now: float, wall: float, family: Family = 4) -> None:
        """A fresh health machine of one family (IPv6: only for an ISP that carries IPv6 and has IPv6 targets);
        an ISP whose uplink is not usable starts down, at start as after a reload."""
        if family == 6 and (isp.ipv6.mode == "off" or not isp.health.targets_of(6)):
            self.machines[6].pop(isp.name, None)
            return
        machine = HealthMachine(params_of(isp), status)
        link = self.uplink(isp.name)
        if not (link.ready6 if family == 6 else link.ready):
            why = link.problem or (link.problem6 if family == 6 else None) or ""
            machine.link(now, False, family == 6 or bool(isp.health.targets_of(4)), why)
        self.machines[family][isp.name] = machine
        if family == 4:
            self.since[isp.name] = wall

    def _reload6(self, isp: IspConfig, now: float) -> None:
        """Keep a staying ISP's IPv6 state through a reload; start or drop its IPv6 health as the config says.

        Newly added IPv6 targets start from the ISP's admin and link state (drained stays drained).
        """
        old = self.machines[6].get(isp.name)
        self._new_machine(isp, old.status if old is not None else IspStatus.UP, now, 0.0, 6)
        new = self.machines[6].get(isp.name)
        if new is None:
            return
        if old is not None and old.params == new.params:
            self.machines[6][isp.name] = old
        elif old is not None:
            new.disabled, new.link_down = old.disabled, old.link_down
        elif isp.name in self.machines[4] and self.machines[4][isp.name].disabled:
            new.disable(now)

    def _changed(self, name: str, t: Transition, event: str, wall: float, family: Family = 4) -> list[Effect]:
        """A status change of one family's health: reconcile, forget its sticky clients and flush its
        connections if it is now broken and down, bring connections back from worse tiers if asked, and one
        event."""
        isp = self.config.isp(name)
        scope = self._scope(name, family)
        before = {**self.balancing(family), name: t.old}
        effects: list[Effect] = [Reconcile(f"{name}{' IPv6' if family == 6 else ''} {event}")]
        if family == 4:
            self.since[name] = wall
            self._hold_failback(name, t, event)
            self.suspects.pop(name, None)  # its machine has spoken (down, or up again)
        sticky = self.config.balance.sticky or any(p.sticky for p in self.config.policies.values())
        if sticky and not t.new.usable:
            effects.append(ClearSticky(name, scope))
        if self.wants_empty(name, family):
            effects.append(Flush(name, self.state.isps[name].mark, self.config.mark_mask, t.reason, scope))
        # A recovery: back in use from down or disabled, or up again after degraded (a degraded ISP takes
        # connections only while nothing is up, so an up worse tier carried its traffic meanwhile).
        recovered = not t.old.usable or (t.old == IspStatus.DEGRADED and t.new == IspStatus.UP)
        if family == 4 and t.new.usable and recovered:
            effects += self._move_back(name, before)
        if t.new.usable and not before.get(name, t.old).usable:  # (of any family) the flushes that waited for it
            effects += self._waiting_flushes(name, family, before)
        effects.append(self._emit(name, event, t.new.value, t.old.value, t.reason, isp.interface, wall, scope))
        return effects

    def _hold_failback(self, name: str, t: Transition, event: str) -> None:
        """An ISP back from down while another is up waits ``failback_after`` before it takes connections (a
        line that comes back for a minute must not pull traffic back and forth); an admin's enable does not
        wait, a new failure ends the wait."""
        after = self.config.failover.failback_after
        if not t.new.usable:
            self.failback.pop(name, None)
        elif after > 0 and not t.old.usable and event != "enabled" and self._another_up(name):
            self.failback[name] = t.at + after

    def _another_up(self, name: str) -> bool:
        return any(s == IspStatus.UP for other, s in self.statuses().items() if other != name)

    def _waiting_flushes(self, name: str, family: Family, before: Mapping[str, IspStatus]) -> list[Effect]:
        """With no ISP usable, a dead ISP's flush waits (:meth:`wants_empty`); the first to come back ends the
        wait for the others, in the same batch (after its Reconcile: the flushed connections find it)."""
        if any(s.usable for s in before.values()):
            return []
        return [
            Flush(
                other,
                self.state.isps[other].mark,
                self.config.mark_mask,
                f"{name} is usable again",
                self._scope(other, family),
            )
            for other in sorted(self.machines[family])
            if other != name and self.wants_empty(other, family)
        ]

    def _move_back(self, name: str, before: Mapping[str, IspStatus]) -> list[Effect]:
        """Flush the ISPs of a worse tier that this recovery (or hold-down's end) takes out of use (they
        carried its traffic), as ``on_recover`` says: the global setting, or, where rules say otherwise, only
        the connections of the rules that move (:mod:`wanlb.recover`); ``before``: the balancing statuses before it."""
        moved = recover.moved(self.config)
        if moved is False:
            return []
        tier = self.config.isp(name).tier
        leaving = self._in_use(before) - self._in_use(self.balancing())
        only = None if moved is True else moved  # (True: the kernel's flush by mark of every entry)
        why = f"{name} recovered ({recover.MOVE if only is None else only})"
        return [
            Flush(i.name, self.state.isps[i.name].mark, self.config.mark_mask, why, moved=only)
            for i in self.config.isps
            if i.name in leaving and i.tier > tier
        ]

    def _emit(
        self,
        name: str,
        event: str,
        status: str,
        old: str | None,
        reason: str,
        interface: str,
        wall: float,
        family: int = 0,
    ) -> Emit:
        """One event; its quality figures are of the health it concerns (IPv6's for ``family`` 6)."""
        machine = self.machines[6 if family == 6 else 4].get(name)
        q = machine.quality() if machine is not None else None
        latency = None if q is None or q.latency is None else round(q.latency * 1000, 2)
        loss = None if q is None else round(q.loss_percent, 1)
        hop = self.uplink(name).next_hop if name in self.machines[4] else ""
        return Emit(Event(round(wall, 3), name, event, status, old, reason, interface, loss, latency, family, hop))


def _with_reason(effect: Effect, reason: str) -> Effect:
    """An ``Emit`` with the event's reason replaced (what the operator said, what ended a drain)."""
    return replace(effect, event=replace(effect.event, reason=reason)) if isinstance(effect, Emit) else effect


def _duration(seconds: float) -> str:
    """``90`` → "1m30s", ``3600`` → "60m": how long a drain lasts, as an operator wrote it."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s" if minutes and rest else f"{minutes}m" if minutes else f"{rest}s"


def _hop_text(via: object, interface: str) -> str:
    return str(via) if via is not None else f"device route (dev {interface})"
