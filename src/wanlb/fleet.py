"""The one owner of per-ISP state: inputs in, effects out.  Pure (time is passed in), sans-I/O.

Every input that can change an ISP — a probe round, an admin drain or enable,
a WAN link going down or up, a reload, the periodic resync — is a method of
:class:`Fleet`.  Each returns the effects to carry out, as data:

* :class:`Reconcile` — make the kernel match (balancing, routes, rules; the least-conn/latency weights
  that :meth:`Fleet.adjust` keeps);
* :class:`Flush` — delete the conntrack entries carrying a mark, *only after*
  the reconcile of the same batch succeeded (else a flushed connection could
  come back to the ISP that is leaving); also, with ``on_recover:
  move-lower-tier``, those of the ISPs a recovery takes out of use;
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

from wanlb.config import Config, IspConfig
from wanlb.health.machine import HealthMachine, HealthParams, Quality, Transition
from wanlb.plan import IspStatus
from wanlb.policy import adjust, policies, shares_differ
from wanlb.runtime import Allocation, RuntimeState
from wanlb.uplink import Uplink, assumed


@dataclass(frozen=True)
class Event:
    at: float  # wall-clock seconds
    isp: str
    event: str  # up, down, degraded, disabled, enabled, added, removed, replaced
    status: str  # the ISP's status afterwards ("removed" once it is gone)
    old: str | None
    reason: str
    interface: str
    loss_percent: float | None = None
    latency_ms: float | None = None
    family: str = ""  # "6": the ISP's IPv6 health alone; "4": its IPv4 alone (it has IPv6 health too); "": both
    gateway: str = ""  # the ISP's next hop when it happened (an address, "device route" or "none")


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
    """Per-ISP health machines, admin and link state, allocations; see the module docstring."""

    def __init__(self, config: Config, state: RuntimeState, uplinks: Mapping[str, Uplink], now: float, wall: float):
        self.config = config
        self.state = state
        self.machines: dict[str, HealthMachine] = {}
        # IPv6 health, for ISPs with IPv6 targets; any other ISP's IPv6 follows its one state.
        self.machines6: dict[str, HealthMachine] = {}
        self.since: dict[str, float] = {}
        self._uplinks: dict[str, Uplink] = dict(uplinks)  # ISP -> its uplink, as last observed
        self._hops: dict[tuple[str, int], object] = {}  # (ISP, family) -> the last next hop it had (None: dev)
        self._addresses: dict[str, tuple[str, ...]] = {}  # ISP -> the last addresses its WAN had
        self.adjusted: dict[str, dict[str, int]] = {}  # least-conn / latency: the weights in force, per policy
        for isp in config.isps:
            self._new_machine(isp, IspStatus.UP, now, wall)
            self._new_machine6(isp, IspStatus.UP, now)
            self._remember_hops(isp, self.uplink(isp.name))

    # --- what the rest of wanlb reads -------------------------------------------------------

    def statuses(self) -> dict[str, IspStatus]:
        return {name: m.status for name, m in self.machines.items()}

    def statuses6(self) -> dict[str, IspStatus]:
        """IPv6 status of every ISP: its own IPv6 health where it has IPv6 targets, else its one status."""
        return {name: self.machines6[name].status if name in self.machines6 else m.status
                for name, m in self.machines.items()}  # fmt: skip

    def uplink(self, name: str) -> Uplink:
        """The ISP's uplink as last observed (as configured before the first observation)."""
        return self._uplinks.get(name) or assumed(self.config.isp(name))

    def probed(self, name: str) -> bool:
        return bool(self.config.isp(name).health.targets_of(4))

    def quality(self, name: str) -> Quality:
        return self.machines[name].quality()

    def wants_empty(self, name: str) -> bool:
        """Its connections cannot work and the config says flush them."""
        m = self.machines[name]
        return self.config.failover.on_down == "flush" and m.status == IspStatus.DOWN and m.broken

    def wants_empty6(self, name: str) -> bool:
        """The same for the IPv6 connections of an ISP with IPv6 health of its own."""
        m = self.machines6.get(name)
        return m is not None and self.config.failover.on_down == "flush" and m.status == IspStatus.DOWN and m.broken

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
        family: int = 4,
    ) -> list[Effect]:
        """One finished probe round of ISP ``name`` (of its IPv4 or its IPv6 targets)."""
        machine = (self.machines6 if family == 6 else self.machines).get(name)
        if machine is None:  # a round that finished after its ISP (or its IPv6 targets) was removed by a reload
            return []
        t = machine.round(now, ok, latency, loss)
        if t is None:
            return []
        if errors and not ok:
            t = replace(t, reason=f"{t.reason}: {errors}")
        if family == 6:
            return self._changed6(name, t, t.new.value, wall)
        return self._changed(name, t, t.new.value, wall)

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
            effects += self._link(isp, False, "link down", now, wall)
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
            effects += self._link(isp, new.ready, new.problem or "", now, wall, new.ready6, new.problem6)
            effects += self._uplink_events(isp, old, new, wall)
        return effects

    def disable(self, name: str, now: float, wall: float) -> tuple[str, list[Effect]]:
        """Drain both families (an admin drains an uplink, not one of its address families)."""
        t = self._machine(name).disable(now)
        effects = [] if t is None else self._changed(name, t, "disabled", wall)
        t6 = self.machines6[name].disable(now) if name in self.machines6 else None
        effects += [] if t6 is None else self._changed6(name, t6, "disabled", wall)
        return f"{name} is {self.machines[name].status.value}", effects

    def enable(self, name: str, now: float, wall: float) -> tuple[str, list[Effect]]:
        t = self._machine(name).enable(now, self.probed(name))
        effects = [] if t is None else self._changed(name, t, "enabled", wall)
        t6 = self.machines6[name].enable(now, True) if name in self.machines6 else None
        effects += [] if t6 is None else self._changed6(name, t6, "enabled", wall)
        return f"{name} is {self.machines[name].status.value}", effects

    def reload(self, config: Config, allocation: Allocation, now: float, wall: float) -> list[Effect]:
        """Adopt a new config and its allocation: carry each staying ISP's state, report every change."""
        old_config, old_state = self.config, self.state
        self.config, self.state = config, allocation.state
        effects: list[Effect] = [SaveState(allocation.state), Reconcile("reload")]
        events: list[Effect] = []
        gone = set(allocation.removed) | set(allocation.replaced)
        for name in sorted(gone):
            old_isp = old_config.isp(name)
            machine = self.machines.pop(name)
            self.machines6.pop(name, None)
            self.since.pop(name, None)
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
            machine = self.machines.get(isp.name)
            if machine is None:
                self._new_machine(isp, IspStatus.UP, now, wall)
                self._remember_hops(isp, self.uplink(isp.name))
                what = "replaced" if isp.name in allocation.replaced else "added"
                why = "interface or mark changed: a new uplink" if what == "replaced" else "added to the config"
                status = self.machines[isp.name].status.value
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
                self.machines[isp.name] = fresh
        return effects + events

    def adjust(self, counts: Mapping[str, int]) -> list[Effect]:
        """least-conn / latency: new weights from the live connection counts and the probes' latency and loss;
        a reconcile only when some ISP's share moves by more than 5 points (or the adjusted policies change)."""
        qualities = {isp.name: self.quality(isp.name) for isp in self.config.isps}
        latency = {name: q.latency for name, q in qualities.items()}
        loss = {name: q.loss_percent / 100 for name, q in qualities.items()}
        fresh, base = adjust(self.config, self.statuses(), counts, latency, loss)
        changed = [p for p, w in fresh.items() if shares_differ(self.adjusted.get(p, base[p]), w)]
        if not changed and set(fresh) == set(self.adjusted):
            return []
        self.adjusted = fresh
        weights = "; ".join(f"{p}: {dict(w)}" for p, w in fresh.items())
        return [Reconcile(f"weights adjusted ({', '.join(changed) or 'policies changed'}): {weights}")]

    def flush_asked(self, name: str) -> Flush:
        """An operator asks for an ISP's connections to be deleted (``wanlb conntrack delete --isp``): its
        mark under the mask in force (the marks the state file shows).  KeyError: no such ISP."""
        slot = self.state.isps[name]
        return Flush(name, slot.mark, self.config.mark_mask, "asked on the control socket")

    def resync(self, counts: Mapping[int, int]) -> list[Effect]:
        """Flushes still missing, from live per-mark counts (``mark & mark_mask`` → entries)."""
        effects: list[Effect] = []
        mask = self.config.mark_mask
        for name, slot in self.state.isps.items():
            if name in self.machines and self.wants_empty(name) and counts.get(slot.mark, 0) > 0:
                effects.append(Flush(name, slot.mark, mask, "still has connections while down", self._family4(name)))
            # The counts do not tell the families apart: a flush of one family may find nothing to do.
            if self.wants_empty6(name) and counts.get(slot.mark, 0) > 0:
                effects.append(Flush(name, slot.mark, mask, "still has IPv6 connections while its IPv6 is down", 6))
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

    def _link(
        self,
        isp: IspConfig,
        usable: bool,
        why: str,
        now: float,
        wall: float,
        usable6: bool | None = None,
        why6: str | None = None,
    ) -> list[Effect]:
        """Feed an uplink's usability to the ISP's machines (its IPv6 one: ``usable6``, default the same)."""
        effects: list[Effect] = []
        t = self.machines[isp.name].link(now, usable, self.probed(isp.name), why)
        if t is not None:
            effects += self._changed(isp.name, replace(t, reason=f"{t.reason} ({isp.interface})"), t.new.value, wall)
        m6 = self.machines6.get(isp.name)
        ok6 = usable if usable6 is None else usable6
        t6 = None if m6 is None else m6.link(now, ok6, True, why if not usable else why6 or why)
        if t6 is not None:
            t6 = replace(t6, reason=f"{t6.reason} ({isp.interface})")
            effects += self._changed6(isp.name, t6, t6.new.value, wall)
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
        status = self.machines[isp.name].status.value
        for family, ready, via, source in ((4, new.ready, new.via, new.source), (6, new.ready6, new.via6, new.source6)):
            if not ready or (family == 6 and isp.gateway6 is None):
                continue
            known = (isp.name, family) in self._hops
            before = self._hops.get((isp.name, family))
            self._hops[(isp.name, family)] = via
            if known and before == via:
                continue
            shown = _hop_text(via, isp.interface)
            what = f"{_hop_text(before, isp.interface)} → {shown}" if known else f"learned {shown}"
            emit = self._emit(isp.name, "gateway", status, status, f"{what} ({source})", isp.interface, wall)
            family_tag = "6" if family == 6 else ("4" if isp.name in self.machines6 else "")
            effects.append(Emit(replace(emit.event, family=family_tag)))
        before = self._addresses.get(isp.name)
        if new.addresses:
            self._addresses[isp.name] = new.addresses
        if before and new.addresses and before != new.addresses:  # (a lease change, a new PPP session)
            why = f"{', '.join(before)} → {', '.join(new.addresses)}"
            effects.append(self._emit(isp.name, "address", status, status, why, isp.interface, wall))
        return effects

    def _machine(self, name: str) -> HealthMachine:
        if name not in self.machines:
            raise KeyError(f"no ISP named {name!r}")
        return self.machines[name]

    def _family4(self, name: str) -> int:
        """What a flush for the ISP's one state covers: IPv4 alone if its IPv6 has a health of its own."""
        return 4 if name in self.machines6 else 0

    def _new_machine6(self, isp: IspConfig, status: IspStatus, now: float) -> None:
        """An IPv6 health machine, for an ISP that carries IPv6 and has IPv6 targets."""
        if isp.ipv6.mode == "off" or not isp.health.targets_of(6):
            self.machines6.pop(isp.name, None)
            return
        machine = HealthMachine(params_of(isp), status)
        link = self.uplink(isp.name)
        if not link.ready6:
            machine.link(now, False, True, link.problem or link.problem6 or "")
        self.machines6[isp.name] = machine

    def _reload6(self, isp: IspConfig, now: float) -> None:
        """Keep a staying ISP's IPv6 state through a reload; start or drop its IPv6 health as the config says.

        Newly added IPv6 targets start from the ISP's admin and link state (drained stays drained).
        """
        old = self.machines6.get(isp.name)
        self._new_machine6(isp, old.status if old is not None else IspStatus.UP, now)
        new = self.machines6.get(isp.name)
        if new is None:
            return
        if old is not None and old.params == new.params:
            self.machines6[isp.name] = old
        elif old is not None:
            new.disabled, new.link_down = old.disabled, old.link_down
        elif isp.name in self.machines and self.machines[isp.name].disabled:
            new.disable(now)

    def _changed6(self, name: str, t: Transition, event: str, wall: float) -> list[Effect]:
        """A change of an ISP's IPv6 health: reconcile (IPv6 balancing), flush its IPv6 entries if broken, event."""
        isp = self.config.isp(name)
        effects: list[Effect] = [Reconcile(f"{name} IPv6 {event}")]
        sticky = self.config.balance.sticky or any(p.sticky for p in self.config.policies.values())
        if sticky and not t.new.usable:
            effects.append(ClearSticky(name, 6))
        if self.wants_empty6(name):
            effects.append(Flush(name, self.state.isps[name].mark, self.config.mark_mask, t.reason, 6))
        event_ = self._emit(name, event, t.new.value, t.old.value, t.reason, isp.interface, wall, self.machines6[name])
        effects.append(Emit(replace(event_.event, family="6")))
        return effects

    def _new_machine(self, isp: IspConfig, status: IspStatus, now: float, wall: float) -> None:
        """A fresh health machine; an ISP whose WAN link is down starts down, at start as after a reload."""
        machine = HealthMachine(params_of(isp), status)
        link = self.uplink(isp.name)
        if not link.ready:
            machine.link(now, False, bool(isp.health.targets_of(4)), link.problem or "")
        self.machines[isp.name] = machine
        self.since[isp.name] = wall

    def _changed(self, name: str, t: Transition, event: str, wall: float) -> list[Effect]:
        """A status change: reconcile, flush if it is now broken and down, and one event."""
        self.since[name] = wall
        isp = self.config.isp(name)
        effects: list[Effect] = [Reconcile(f"{name} {event}")]
        sticky = self.config.balance.sticky or any(p.sticky for p in self.config.policies.values())
        if sticky and not t.new.usable:
            effects.append(ClearSticky(name, self._family4(name)))
        if self.wants_empty(name):
            effects.append(
                Flush(name, self.state.isps[name].mark, self.config.mark_mask, t.reason, self._family4(name))
            )
        # A recovery: back in use from down or disabled, or up again after degraded (a degraded ISP takes
        # connections only while nothing is up, so an up worse tier carried its traffic meanwhile).
        recovered = not t.old.usable or (t.old == IspStatus.DEGRADED and t.new == IspStatus.UP)
        if t.new.usable and recovered and self.config.failover.on_recover == "move-lower-tier":
            effects += self._move_back(name, t.old)
        emit = self._emit(name, event, t.new.value, t.old.value, t.reason, isp.interface, wall)
        effects.append(Emit(replace(emit.event, family="4")) if name in self.machines6 else emit)
        return effects

    def _move_back(self, name: str, old: IspStatus) -> list[Effect]:
        """Flush the ISPs of a worse tier that this recovery takes out of use (they carried its traffic)."""
        now = self.statuses()
        before = {**now, name: old}

        def in_use(statuses: Mapping[str, IspStatus]) -> set[str]:
            return {isp for p in policies(self.config, statuses) for isp, _ in p.active}

        tier = self.config.isp(name).tier
        leaving = in_use(before) - in_use(now)
        return [
            Flush(i.name, self.state.isps[i.name].mark, self.config.mark_mask, f"{name} recovered (move-lower-tier)")
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
        machine: HealthMachine | None = None,
    ) -> Emit:
        machine = machine or self.machines.get(name)
        q = machine.quality() if machine is not None else None
        latency = None if q is None or q.latency is None else round(q.latency * 1000, 2)
        loss = None if q is None else round(q.loss_percent, 1)
        hop = self.uplink(name).next_hop if name in self.machines else ""
        return Emit(Event(round(wall, 3), name, event, status, old, reason, interface, loss, latency, gateway=hop))


def _hop_text(via: object, interface: str) -> str:
    return str(via) if via is not None else f"device route (dev {interface})"
