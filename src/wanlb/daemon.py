"""``wanlb run``: the asyncio daemon.  It executes effects; it decides nothing.

Decisions live in :class:`wanlb.fleet.Fleet` (per-ISP state → effects) and in
the pure plan/render/diff behind :class:`wanlb.reconcile.Reconciler`.  The
daemon feeds the fleet its inputs — probe rounds, admin requests, link events,
reloads, the resync timer — and carries out what comes back, in order:
save the runtime state, reconcile the kernel (in a worker thread, one at a
time), flush conntrack marks (only if that reconcile succeeded), record the
event and start its hooks (never waited for).

Nothing on the event loop waits for a file, a parse or a subprocess: config
parsing, state writes, kernel work and flushes run in threads; hooks are
asynchronous subprocesses.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wanlb import control, nftsync, runtime
from wanlb.adapters.links import LinkWatcher
from wanlb.config import Config, ConfigError, load_config
from wanlb.ctcounts import ConnCounter
from wanlb.domains import DomainWatcher, ResolverSettings
from wanlb.fleet import ClearSticky, Effect, Emit, Event, Fleet, Flush, Reconcile, SaveState
from wanlb.health.monitor import IspMonitor, RoundResult
from wanlb.hooks import run_hooks
from wanlb.kernel import Kernel, LinuxKernel
from wanlb.metrics import Metrics
from wanlb.plan import IspStatus
from wanlb.policy import adjust, shares_differ
from wanlb.reconcile import Reconciler, ReconcileResult, cleanup, plan_from, preflight, read_snapshot
from wanlb.render import render, sticky_sets
from wanlb.rules import domain_set
from wanlb.tune import TableStats, table_warnings
from wanlb.uplink import interface_warnings, uplinks

if TYPE_CHECKING:
    from wanlb.api import Api

log = logging.getLogger("wanlb.daemon")

RESYNC_INTERVAL = 5.0
UPLINK_SETTLE = 0.05  # seconds between an address/route event and the look at the uplinks it causes
EVENT_HISTORY = 200
COUNTER_READ_TIMEOUT = 2.0  # seconds status waits for nft to list our counters


class Daemon:
    def __init__(
        self,
        config_path: str,
        config: Config,
        kernel: Kernel,
        store: runtime.StateStore,
        cleanup_on_exit: bool = False,
        counter: ConnCounter | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self.config_path = config_path
        self.config = config
        self.kernel = kernel
        self.store = store
        self.cleanup_on_exit = cleanup_on_exit
        self.clock, self.wall = clock, wall
        seen = uplinks(config, read_snapshot(kernel, config, store.state.protocols))
        self.fleet = Fleet(config, store.state, seen, clock(), wall())
        self.reconciler = Reconciler(kernel, store)
        self.counter = counter if counter is not None else ConnCounter(store.state.names_by_mark(), config.mark_mask)
        self.last: ReconcileResult | None = None
        self.last_error: str | None = None
        self.started = wall()
        self.reloads = 0
        self.last_reload: dict[str, Any] | None = None  # outcome of the last reload request, for status
        self.table_stats: TableStats | None = None
        self.table_warnings: list[str] = []
        self.link_events = 0
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENT_HISTORY)
        self.monitors: dict[str, tuple[IspMonitor, asyncio.Task[None]]] = {}
        self.monitors6: dict[str, tuple[IspMonitor, asyncio.Task[None]]] = {}  # ISPs with IPv6 targets
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        self._flush_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._hook_order: dict[str, asyncio.Lock] = {}
        self._reload_lock = asyncio.Lock()
        self._hup_queued = False
        self._look_queued = False  # a reconcile to look at the uplinks is coming (address/route events)
        self._trial: asyncio.Task[None] | None = None
        self.adjusted: dict[str, dict[str, int]] = {}  # least-conn / latency weights in force
        self._domains: tuple[DomainWatcher, asyncio.Task[None], ResolverSettings] | None = None
        self.metrics = Metrics()
        self._counter_reads = asyncio.Semaphore(2)
        self.api: Api | None = None

    # --- executing effects ---------------------------------------------------------------------

    async def execute(self, effects: list[Effect]) -> str | None:
        """Carry out one batch of effects in order; returns the reconcile error, if any.

        A flush runs only after the batch's reconcile succeeded: until the kernel
        has taken the ISP out of balancing, a flushed connection could return to it.
        """
        error: str | None = None
        decided = self.wall()
        applied = None
        flushed: dict[str, int | None] = {}
        for effect in effects:
            if isinstance(effect, SaveState):
                await asyncio.to_thread(self.store.set_allocation, effect.state)
                self.counter.marks = self.store.state.names_by_mark()
            elif isinstance(effect, Reconcile):
                error = await self._reconcile_logged(effect.why) or error
                done = self.last.nft_done if self.last is not None and error is None else None
                applied = done if done is not None else self.wall()
            elif isinstance(effect, Flush):
                if error is None:
                    flushed[effect.isp] = await self._flush(effect)
            elif isinstance(effect, ClearSticky):
                if error is None:
                    await self._clear_sticky(effect.isp, effect.family)
            elif isinstance(effect, Emit):
                self._record(effect.event, error, flushed.get(effect.event.isp), decided, applied)
        return error

    def spawn_effects(self, effects: list[Effect]) -> None:
        if effects:
            self.spawn(self.execute(effects))

    async def reconcile(self, why: str) -> ReconcileResult:
        """Converge the kernel to the fleet's current config, allocation and statuses.

        The kernel calls block, so they run in a worker thread; the lock keeps two
        reconciles from interleaving, and each works from the state current when it starts.
        """
        async with self._lock:
            fleet = self.fleet
            args = (fleet.config, fleet.state, fleet.statuses(), dict(self.adjusted), fleet.statuses6())
            # Shielded: a cancelled caller must not release the lock while the thread still works.
            started = time.monotonic()
            work = asyncio.ensure_future(asyncio.to_thread(self.reconciler.reconcile, *args))
            try:
                result = await asyncio.shield(work)
            except asyncio.CancelledError:
                await work
                raise
            finally:
                self.metrics.apply_seconds.observe(time.monotonic() - started)
        self.last = result
        # What the pass saw of the uplinks (interface, address, next hop) may change an ISP's state: the
        # fleet decides, in a batch of its own (this one may be carrying a flush that waits for this reconcile).
        self.spawn_effects(self.fleet.observed(args[0], result.uplinks, self.clock(), self.wall()))
        if result.nft_done is not None:
            active = ", ".join(f"{i.name}={i.share:.0%}" for i in result.desired.active) or "none"
            log.info("applied ruleset (%s): active %s", why, active)
            self._push_domains()  # a domain set the transaction (re)created starts empty
        return result

    async def _reconcile_logged(self, why: str) -> str | None:
        try:
            await self.reconcile(why)
        except Exception as exc:  # the resync retries; the error is shown in status and events
            self.last_error = f"{why}: {exc}"
            log.error("reconcile (%s) failed, retried at the next resync: %s", why, exc)
            return str(exc)
        self.last_error = None
        return None

    async def _flush(self, flush: Flush) -> int | None:
        """Delete every conntrack entry with the mark; returns how many the kernel held just before."""
        start = time.monotonic()
        try:
            async with self._flush_lock:
                count = await asyncio.to_thread(self._count_and_flush, flush.mark, flush.mask, flush.family)
        except Exception as exc:  # retried by the next resync
            log.error("could not flush %s's connections (mark %#x): %s", flush.isp, flush.mark, exc)
            return None
        if flush.mask == self.config.mark_mask and not flush.family:  # the counter keys marks (both families)
            self.counter.forget(flush.mark)
        log.warning(
            "flushed %d %sconnections of %s (%s) in %.0f ms",
            count,
            f"IPv{flush.family} " if flush.family else "",
            flush.isp,
            flush.why,
            (time.monotonic() - start) * 1000,
        )
        await self.execute(self.fleet.flushed(flush.mark, flush.mask))
        return count

    async def _clear_sticky(self, isp: str, family: int = 0) -> None:
        """Empty the sets that pin clients to ``isp`` (of one family, or both): their next connection is
        balanced afresh."""
        names = sticky_sets(self.last.desired, isp, family) if self.last is not None else []
        if not names:
            return
        try:
            await asyncio.to_thread(self.kernel.nft_apply, "".join(f"flush set inet wanlb {n}\n" for n in names))
        except Exception as exc:  # the entries expire on their own; the lookups skip an unusable ISP anyway
            log.error("could not empty %s's sticky sets: %s", isp, exc)
            return
        log.info("forgot the clients pinned to %s (%s)", isp, ", ".join(names))

    async def _adjust_loop(self) -> None:
        """least-conn / latency: recompute the weights; reconcile when a share moves by more than 5 points."""
        while True:
            await asyncio.sleep(self.config.balance.adjust_interval)
            qualities = {i.name: self.fleet.quality(i.name) for i in self.config.isps}
            latency = {name: q.latency for name, q in qualities.items()}
            loss = {name: q.loss_percent / 100 for name, q in qualities.items()}
            statuses = self.fleet.statuses()
            fresh, base = adjust(self.config, statuses, self.counter.by_isp(), latency, loss)
            changed = [p for p, w in fresh.items() if shares_differ(self.adjusted.get(p, base[p]), w)]
            if changed or set(fresh) != set(self.adjusted):
                self.adjusted = fresh
                log.info("adjusted weights (%s): %s", ", ".join(changed), fresh)
                await self._reconcile_logged("weights adjusted")

    def _count_and_flush(self, mark: int, mask: int, family: int = 0) -> int:
        count = self.kernel.ct_count(mark, mask, family)
        if count:
            self.kernel.ct_flush(mark, mask, family)
        return count

    def _record(
        self, event: Event, error: str | None, flushed: int | None, decided: float, applied: float | None
    ) -> None:
        level = logging.WARNING if event.event in ("down", "removed", "replaced") else logging.INFO
        family = f" IPv{event.family}" if event.family else ""
        if event.old is not None and event.old != event.status:  # a transition: from → to, as status shows it
            log.log(level, "isp %s%s %s: %s → %s (%s)", event.isp, family, event.event, event.old, event.status,
                    event.reason)  # fmt: skip
        else:  # news about an ISP whose state stays (gateway, address), or one just added
            log.log(level, "isp %s%s %s (%s): %s", event.isp, family, event.event, event.status, event.reason)
        if event.status != event.old:
            self.metrics.transitions.labels(event.isp, event.status).inc()
        if event.status in ("down", "disabled") and event.old in ("up", "degraded"):
            self.metrics.failovers.inc()
        self.events.append(
            {
                "time": event.at,
                "isp": event.isp,
                "event": event.event,
                "family": event.family,
                "status": event.status,
                "from": event.old,
                "reason": event.reason,
                "gateway": event.gateway,
                "loss_percent": event.loss_percent,
                "latency_ms": event.latency_ms,
                "flushed": flushed,
                "error": error,
                "applied_ms": _ms(applied - decided) if applied is not None else None,
                "done_ms": _ms(self.wall() - decided),
            }
        )
        if self.api is not None:
            self.api.hub.publish("event", self.events[-1])
        if self.config.hooks:
            env = {
                "WANLB_ISP": event.isp,
                "WANLB_EVENT": event.event,
                "WANLB_STATUS": event.status,
                "WANLB_INTERFACE": event.interface,
                "WANLB_FAMILY": event.family,  # "4" or "6" when the ISP has health per family, else ""
                "WANLB_GATEWAY": event.gateway,  # its next hop then: an address, "device route" or "none"
                "WANLB_REASON": event.reason[:1000],
            }
            order = self._hook_order.setdefault(event.isp, asyncio.Lock())
            self.spawn(run_hooks(self.config.hooks, env, self.config.hook_timeout, order))

    # --- inputs -------------------------------------------------------------------------------

    def on_round(self, name: str, result: RoundResult, family: int = 4) -> None:
        """A monitor's finished round: the fleet decides, a task of the daemon's own carries it out."""
        effects = self.fleet.round(
            name, self.clock(), self.wall(), result.ok, result.latency, result.loss, result.describe_errors(), family
        )
        if result.latency is not None:
            self.metrics.probe_rtt.labels(name, str(family)).observe(result.latency)
        self.spawn_effects(effects)

    async def admin(self, name: str, enable: bool) -> dict[str, Any]:
        """Drain (disable) an ISP or hand it back to its probes (enable)."""
        try:
            do = self.fleet.enable if enable else self.fleet.disable
            message, effects = do(name, self.clock(), self.wall())
        except KeyError:
            return {"ok": False, "error": f"no ISP named {name!r}"}
        error = await self.execute(effects)
        return {"ok": True, "message": message} if error is None else {"ok": False, "error": f"{message}; {error}"}

    def _link_changed(self, name: str, usable: bool) -> None:
        interfaces = {*self.config.lan.interfaces, *(i.interface for i in self.config.isps)}
        if name in interfaces:
            self.link_events += 1
            self.spawn_effects(self.fleet.link(name, usable, self.clock(), self.wall()))

    def _routing_changed(self) -> None:
        """An address or someone else's route changed: look at the uplinks soon (events come in bursts:
        a DHCP client adds the address, the subnet route and the default route within milliseconds)."""
        if not self._look_queued:
            self._look_queued = True
            self.spawn(self._look())

    async def _look(self) -> None:
        await asyncio.sleep(UPLINK_SETTLE)
        self._look_queued = False  # an event from now on may follow this reconcile's read: it queues another
        await self._reconcile_logged("uplink change")

    async def reload(self, path: str | None = None) -> tuple[bool, str]:
        """Re-read the config (or ``path``) off the loop; verify it; adopt it, or refuse and keep the running one.

        Reloads run one at a time, each allocating from the state the previous one left.
        """
        async with self._reload_lock:
            return await self._reload(path or self.config_path)

    def _sighup(self) -> None:
        """SIGHUPs coalesce: while one reload waits for its turn, more SIGHUPs add nothing to the queue."""
        if not self._hup_queued:
            self._hup_queued = True
            self.spawn(self._hup())

    async def _hup(self) -> None:
        async with self._reload_lock:
            self._hup_queued = False  # a SIGHUP from now on may follow a newer edit: it queues a new reload
            await self._reload(self.config_path)

    async def _reload(self, path: str, previous: Config | None = None) -> tuple[bool, str]:
        """Every reload — a request, a SIGHUP, a try, a rollback — goes here and is recorded for status."""
        ok, text = await self._adopt(path, previous)
        self.last_reload = {"time": round(self.wall(), 3), "ok": ok, "message": text[:2000]}
        result = "ok" if ok else "failed" if text.startswith("reloaded, but") else "refused"
        self.metrics.reloads.labels(result).inc()
        if self.api is not None:
            self.api.hub.publish("reload", {**self.last_reload, "result": result})
        return ok, text

    async def _adopt(self, path: str, previous: Config | None) -> tuple[bool, str]:
        try:
            new = previous or await asyncio.to_thread(load_config, path)
            allocation = runtime.allocate(new, self.fleet.state, reload=True)
            await asyncio.to_thread(self._verify, path, new, allocation.state)
        except (ConfigError, runtime.AllocationRefused, VerifyError) as exc:
            log.error("reload refused, keeping the running configuration:\n%s", exc)
            return False, str(exc)
        if new.control.socket != self.config.control.socket:
            log.warning("control.socket changes take effect at the next start")
        self.config, self.config_path = new, path
        self.counter.mark_mask = new.mark_mask
        effects = self.fleet.reload(new, allocation, self.clock(), self.wall())
        error = await self.execute(effects)
        self.reloads += 1
        self._start_monitors()
        self._start_domains()
        if self.api is not None and new.api is not None:
            await self.api.reconfigure(new.api)
        elif (self.api is None) != (new.api is None):
            log.warning("adding or removing the api section takes effect at the next start")
        self._warn_about_config()
        if error is not None:
            return False, f"reloaded, but applying it failed (retried every {RESYNC_INTERVAL:g}s): {error}"
        return True, "reloaded"

    async def try_config(self, path: str, timeout: float) -> dict[str, Any]:
        """Apply ``path`` now and go back to the running configuration unless confirmed within ``timeout``.

        For an admin working through the gateway itself: a config that cuts them
        off undoes itself.  The same checks as a reload come first.
        """
        async with self._reload_lock:
            if self._trial is not None:
                return {"ok": False, "error": "a trial is already pending: `wanlb try --confirm` or wait for it"}
            before = (self.config_path, self.config)
            ok, text = await self._reload(path)
            if not ok:
                return {"ok": False, "error": text}
            self._trial = asyncio.create_task(self._roll_back_after(timeout, *before))
            self._trial.add_done_callback(_log_crash)
        log.warning("trying %s: rolled back in %gs unless confirmed", path, timeout)
        return {"ok": True, "message": f"applied {path}; confirm within {timeout:g}s (`wanlb try --confirm`)"}

    async def confirm(self) -> dict[str, Any]:
        trial, self._trial = self._trial, None
        if trial is None:
            return {"ok": False, "error": "no trial is pending"}
        trial.cancel()
        log.info("trial of %s confirmed", self.config_path)
        return {"ok": True, "message": f"kept {self.config_path}; it is now the daemon's config"}

    async def _roll_back_after(self, timeout: float, path: str, config: Config) -> None:
        await asyncio.sleep(timeout)
        tried, self._trial = self.config_path, None  # from here on a confirm comes too late
        async with self._reload_lock:
            _, text = await self._reload(path, previous=config)
        log.warning(
            "trial of %s not confirmed in %gs: rolled back to the configuration loaded from %s before it (%s)%s",
            tried,
            timeout,
            path,
            text,
            "; that file now holds the tried version" if tried == path else "",
        )

    def _verify(self, path: str, config: Config, state: runtime.RuntimeState) -> None:
        """Ask the kernel whether the new ruleset would be accepted, in a scratch table (changes nothing)."""
        # The statuses of both families: a policy whose members are all down renders another shape.
        snapshot = read_snapshot(self.kernel, config, state.protocols)
        desired = plan_from(config, state, snapshot, self.fleet.statuses(), statuses6=self.fleet.statuses6())
        try:
            self.kernel.nft_check(nftsync.full_text(render(desired).nft, table="wanlb_verify"))
        except Exception as exc:
            raise VerifyError(f"{path}: the kernel refuses the ruleset: {exc}") from None

    async def resync(self) -> None:
        """Level-triggered repair: reconcile, then the flushes the live counts say are still missing."""
        error = await self._reconcile_logged("resync")
        if error is None:
            await self.execute(self.fleet.resync(self.counter.counts()))
        await self._watch_table()

    async def _watch_table(self) -> None:
        """Warn (log and status) while the table is near full or the kernel turns connections away."""
        try:
            stats = await asyncio.to_thread(self.kernel.ct_stats)
        except Exception as exc:  # a monitoring read: never worth more than a debug line
            log.debug("conntrack stats unavailable: %s", exc)
            return
        warnings = table_warnings(self.table_stats, stats)
        for warning in warnings:
            if warning not in self.table_warnings:
                log.warning("%s", warning)
        self.table_stats, self.table_warnings = stats, warnings

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_INTERVAL)
            await self.resync()

    def _start_monitors(self) -> None:
        """(Re)start one monitor per ISP and address family that has targets (the fleet keeps the health state).

        IPv6 targets get their own monitor only where the fleet keeps an IPv6 state (the ISP carries IPv6).
        """
        for monitors in (self.monitors, self.monitors6):
            for _monitor, task in monitors.values():
                task.cancel()
            monitors.clear()
        for isp in self.config.isps:
            for family, monitors in ((4, self.monitors), (6, self.monitors6)):
                if not isp.health.targets_of(family) or (family == 6 and isp.name not in self.fleet.machines6):
                    continue
                monitor = IspMonitor(
                    isp,
                    self.fleet.state.mark_of(isp.name),
                    self.on_round,
                    family=family,
                    uplink=functools.partial(self.fleet.uplink, isp.name),
                )
                task = asyncio.create_task(monitor.run())
                task.add_done_callback(_log_crash)
                monitors[isp.name] = (monitor, task)

    def _warn_about_config(self) -> None:
        """What is valid but probably not what the operator meant (at start and after each reload)."""
        self.spawn(asyncio.to_thread(_check_hooks, self.config.hooks))  # a stat may hang (NFS)
        unmonitored = [i.name for i in self.config.isps if not i.health.targets]
        if unmonitored:
            log.warning("no health targets for %s: never declared down", ", ".join(unmonitored))
        self.spawn(self._warn_about_interfaces(self.config))

    async def _warn_about_interfaces(self, config: Config) -> None:
        try:
            present = await asyncio.to_thread(self.kernel.links)
        except Exception as exc:  # a warning only: the uplinks are observed at every reconcile anyway
            log.debug("cannot list interfaces: %s", exc)
            return
        for warning in interface_warnings(config, present):
            log.warning("%s", warning)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine in the background, keeping a reference so it is not collected."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_crash)

    # --- control socket --------------------------------------------------------------------------

    # --- destination domains ----------------------------------------------------------------------

    def _domain_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for r in self.config.rules for n in r.dst_domains))

    def _start_domains(self) -> None:
        """(Re)start the resolver of the rules' ``dst_domains`` when the names or the resolver changed."""
        dns = self.config.dns
        names = self._domain_names() if dns.resolve else ()
        settings = ResolverSettings(
            dns.servers, timeout=dns.timeout, min_ttl=dns.min_ttl, max_ttl=dns.max_ttl, ipv6=self.config.ipv6
        )
        if self._domains is not None and (self._domains[0].names, self._domains[2]) == (names, settings):
            return
        if self._domains is not None:
            self._domains[1].cancel()
            self._domains = None
        if names:
            watcher = DomainWatcher(names, settings, lambda _elements: self._push_domains())
            task = asyncio.create_task(watcher.run())
            task.add_done_callback(_log_crash)
            self._domains = (watcher, task, settings)

    def _push_domains(self) -> None:
        """Rewrite each domain rule's sets (``dom_`` IPv4, ``dom6_`` IPv6) with its names' addresses (after
        every change and reconcile)."""
        if self._domains is None:
            return
        watcher = self._domains[0]
        elements = watcher.elements(time.monotonic())
        lines = []
        for rule in self.config.rules:
            if not rule.dst_domains:
                continue
            wanted = {a for name in rule.dst_domains for a in watcher.addresses(name)}
            for family in watcher.tables if self.config.ipv6 else (4,):  # a reload may just have dropped dom6_
                name = domain_set(rule.name, family)
                lines.append(f"flush set inet wanlb {name}")
                mine = sorted(a for a in wanted if a.version == family and a in elements)
                if mine:
                    items = ", ".join(f"{a} timeout {elements[a]}s" for a in mine)
                    lines.append(f"add element inet wanlb {name} {{ {items} }}")
        if lines:
            self.spawn(self._apply_domains("\n".join(lines) + "\n"))

    async def _apply_domains(self, text: str) -> None:
        async with self._lock:  # not while a reconcile may be re-creating the sets
            try:
                await asyncio.to_thread(self.kernel.nft_apply, text)
            except Exception as exc:  # the next push (change, reconcile, resync) tries again
                log.error("could not update the domain sets: %s", exc)

    async def read_counters(self) -> dict[str, dict[str, int]]:
        """Our table's named counters (packets, bytes), read in a worker; {} if nft cannot answer in time.

        At most two reads at once: clients (status, scrapes, streams) must not fill the worker threads
        that reconciles and flushes need (a timed-out read keeps its thread until nft returns)."""
        try:
            async with asyncio.timeout(COUNTER_READ_TIMEOUT), self._counter_reads:
                listing = await asyncio.to_thread(self.kernel.nft_read)
        except Exception as exc:  # status still answers: the counters are extra
            log.debug("cannot read nft counters: %s", exc)
            return {}
        return {
            o["counter"]["name"]: {"packets": o["counter"].get("packets", 0), "bytes": o["counter"].get("bytes", 0)}
            for o in listing or ()
            if isinstance(o, dict) and "counter" in o
        }

    def status(self, counters: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
        """The daemon's view; ``counters`` (named nft counters) fill in the rules' hits and the ISPs' traffic."""
        counters = counters or {}
        desired = self.last.desired if self.last else None
        isps = []
        for isp in desired.isps if desired else ():
            machine = self.fleet.machines.get(isp.name)
            if machine is None:
                continue
            isps.append(
                {
                    "name": isp.name,
                    "interface": isp.interface,
                    # The next hop its table routes to (static or learned), where it came from, and what its
                    # uplink misses now (None: nothing; else no interface, link down, no address, ...).
                    "gateway": isp.uplink.next_hop,
                    "gateway_source": isp.uplink.source,
                    "uplink": isp.uplink.problem,
                    "addresses": list(isp.uplink.addresses),
                    # What the kernel has (the last applied plan); "decided" differs only while a
                    # change is being applied, or when applying it failed (see last_error).
                    "status": isp.status.value,
                    "decided": machine.status.value,
                    "active": isp.active,
                    "weight": isp.weight,
                    "tier": isp.tier,
                    "share_percent": round(isp.share * 100, 2),
                    "mark": isp.mark,
                    "table": isp.table,
                    "since": round(self.fleet.since.get(isp.name, self.started), 3),
                    "link_down": machine.link_down,
                    "health": self._health(isp.name),
                    "ipv6": self._ipv6_status(isp.name),
                    # Totals of the ISP's named nft counters (they survive reloads and restarts of the
                    # daemon); None when nft could not be read or has no such counter yet.
                    "packets_rx": counters.get(f"isp_{isp.name}_rx", {}).get("packets"),
                    "packets_tx": counters.get(f"isp_{isp.name}_tx", {}).get("packets"),
                    "bytes_rx": counters.get(f"isp_{isp.name}_rx", {}).get("bytes"),
                    "bytes_tx": counters.get(f"isp_{isp.name}_tx", {}).get("bytes"),
                    "new_connections": counters.get(f"isp_{isp.name}_new", {}).get("packets"),
                }
            )
        return {
            "ok": True,
            "pid": os.getpid(),
            "config": self.config_path,
            "uptime_seconds": round(self.wall() - self.started, 1),
            "mark_mask": self.config.mark_mask,
            "local_traffic": self.config.local_traffic,
            "nft_applies": self.reconciler.nft_applies,
            "reloads": self.reloads,
            "link_events": self.link_events,
            "last_error": self.last_error,
            "last_reload": self.last_reload,
            "route_failures": list(self.last.failures) if self.last else [],
            "retired": [{"mark": r.mark, "isp": r.name} for r in self.fleet.state.retired],
            "isps": isps,
            "policies": [
                {"name": p.name, "algorithm": p.algorithm, "active": dict(p.active), "sticky": p.sticky is not None}
                for p in (desired.policies if desired else ())
            ],
            "rules": [
                {
                    "name": r.name,
                    "target": r.action or (f"via {r.via}" if r.via else f"policy {r.policy}"),
                    "hits": counters.get(f"rule_{r.name}", {}).get("packets"),
                }
                for r in (desired.rules if desired else ())
            ],
            "adjusted_weights": self.adjusted,
            "domains": self._domains[0].status() if self._domains else {},
            "conn_counts": self.counter.by_isp(),
            "events_lost": self.counter.lost_events,
            "conntrack": {
                "entries": self.table_stats.count if self.table_stats else None,
                "max": self.table_stats.max if self.table_stats else None,
                "warnings": self.table_warnings,
            },
            "events": list(self.events),
        }

    def _ipv6_status(self, name: str) -> dict[str, Any] | None:
        """An ISP's IPv6: its mode, next hop, status (its own with IPv6 targets, else its one status) and health."""
        isp = next((i for i in self.config.isps if i.name == name), None)
        if isp is None or isp.ipv6.mode == "off":
            return None
        own = name in self.fleet.machines6
        link = self.fleet.uplink(name)
        return {
            "mode": isp.ipv6.mode,
            "gateway": str(link.via6) if link.via6 is not None else ("device route" if link.ready6 else None),
            "gateway_source": link.source6,
            "uplink": link.problem6,
            "status": self.fleet.statuses6().get(name, IspStatus.UP).value,
            "own_health": own,
            "health": self._health(name, 6) if own else None,
        }

    def _health(self, name: str, family: int = 4) -> dict[str, Any]:
        machine = (self.fleet.machines6 if family == 6 else self.fleet.machines).get(name)
        entry = (self.monitors6 if family == 6 else self.monitors).get(name)
        if machine is None or entry is None:
            return {"monitored": False}
        monitor = entry[0]
        quality = machine.quality()
        held = machine.hold_until - self.clock()
        return {
            "monitored": True,
            "method": monitor.health.method,
            "targets": [str(t) for t in monitor.targets],
            "rounds": monitor.rounds,
            "loss_percent": round(quality.loss_percent, 1),
            "latency_ms": _ms(quality.latency),
            "jitter_ms": _ms(quality.jitter),
            "held_down_seconds": round(held, 1) if held > 0 and machine.status == IspStatus.DOWN else 0,
            "last_errors": monitor.last.errors if monitor.last else {},
        }

    async def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        cmd = message.get("cmd")
        if cmd == "status":
            return self.status(await self.read_counters())
        if cmd == "conn_counts":
            return {
                "ok": True,
                "counts": {str(mark): n for mark, n in self.counter.counts().items()},
                "by_isp": self.counter.by_isp(),
                "lost_events": self.counter.lost_events,
                "resyncs": self.counter.resyncs,
            }
        if cmd == "reload":
            ok, text = await self.reload()
            return {"ok": ok, "message": text} if ok else {"ok": False, "error": text}
        if cmd == "try":
            timeout = message.get("timeout", 60)
            if type(timeout) not in (int, float) or not 1 <= timeout <= 3600:
                return {"ok": False, "error": "bad request: timeout must be a number of seconds in 1..3600"}
            path = message.get("config")
            if path is None or not os.path.isabs(path):
                return {"ok": False, "error": "bad request: config must be an absolute path"}
            return await self.try_config(path, float(timeout))
        if cmd == "confirm":
            return await self.confirm()
        if cmd in ("enable", "disable"):
            return await self.admin(str(message.get("isp")), cmd == "enable")
        if cmd == "flush":
            return await self.flush_isp(str(message.get("isp")))
        if cmd == "stop":
            cleanup_flag = message.get("cleanup", False)
            if not isinstance(cleanup_flag, bool):
                return {"ok": False, "error": "bad request: cleanup must be true or false"}
            self.cleanup_on_exit = self.cleanup_on_exit or cleanup_flag
            self._stop.set()
            return {"ok": True, "message": "stopping"}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    async def flush_isp(self, name: str) -> dict[str, Any]:
        """Delete an ISP's connections for ``wanlb conntrack delete --isp`` (same marks as the state file)."""
        slot = self.fleet.state.isps.get(name)
        if slot is None:
            return {"ok": False, "error": f"no ISP named {name!r}"}
        mask = self.config.mark_mask
        try:
            async with self._flush_lock:
                deleted = await asyncio.to_thread(self._count_and_flush, slot.mark, mask)
        except OSError as exc:
            return {"ok": False, "error": f"flush failed: {exc.strerror or exc}"}
        log.info("flushed %d connections of %s (asked on the control socket)", deleted, name)
        return {"ok": True, "isp": name, "mark": slot.mark, "mark_mask": mask, "deleted": deleted}

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        socket_path = self.config.control.socket
        if control.socket_in_use(socket_path):
            raise RuntimeError(f"another wanlb daemon already answers at {socket_path}")
        await self.reconcile("start")
        await self._watch_table()  # the table's size and limit are in status (and /metrics) from the start
        server = await control.serve(socket_path, self.handle)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        resync = asyncio.create_task(self._resync_loop())
        adjusting = asyncio.create_task(self._adjust_loop())
        counting = asyncio.create_task(self.counter.run())
        links = LinkWatcher(self._link_changed, self._routing_changed, lambda: self.fleet.state.protocols)
        self._start_monitors()
        self._start_domains()
        self._warn_about_config()
        if self.config.api is not None:
            from wanlb.api import Api, TokenError  # FastAPI and uvicorn: 0.3 s of imports, only when asked for

            try:
                self.api = Api(self, self.config.api)
                await self.api.start()
            except (TokenError, OSError, RuntimeError) as exc:
                self._stop.set()
                raise RuntimeError(f"api: {exc}") from None
        log.info("wanlb running (pid %d), control socket %s", os.getpid(), socket_path)
        try:
            await self._stop.wait()
        finally:
            resync.cancel()
            adjusting.cancel()
            counting.cancel()
            links.close()
            for _monitor, task in [*self.monitors.values(), *self.monitors6.values()]:
                task.cancel()
            if self._domains is not None:
                self._domains[1].cancel()
            if self.api is not None:
                await self.api.stop()
            server.close()
            Path(socket_path).unlink(missing_ok=True)
            if self.cleanup_on_exit:
                async with self._lock:
                    for change in await asyncio.to_thread(cleanup, self.kernel, self.config, self.store.state):
                        log.info("cleanup %s", change)
                    await asyncio.to_thread(runtime.remove, self.config.state_path)
                log.info("removed everything wanlb added")
            else:
                log.info("exiting; the datapath stays in place (connections keep flowing)")


def _check_hooks(hooks: tuple[str, ...]) -> None:
    for hook in hooks:
        if not os.access(hook, os.X_OK):
            log.warning("hook %s is not an executable file: it will fail on every change", hook)


class VerifyError(Exception):
    """The kernel would refuse the rendered ruleset."""


def _log_crash(task: asyncio.Task[Any]) -> None:
    """A background task must never die unnoticed."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("background task %s crashed", task.get_coro(), exc_info=exc)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def run(config_path: str, cleanup_on_exit: bool) -> None:
    config = load_config(config_path)
    kernel = LinuxKernel()
    preflight(config)
    path = config.state_path
    previous = runtime.load(path)
    allocation = runtime.allocate(config, previous, reload=False)
    store = runtime.StateStore(path, previous or runtime.RuntimeState())
    store.set_allocation(allocation.state)
    for name in allocation.replaced + allocation.removed:
        log.warning("ISP %s changed while wanlb was stopped: its old connections are flushed", name)
    try:
        asyncio.run(Daemon(config_path, config, kernel, store, cleanup_on_exit).run())
    finally:
        kernel.close()
