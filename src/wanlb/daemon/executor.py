"""The daemon's executor: it carries out effects; it decides nothing.

Decisions live in :class:`wanlb.fleet.Fleet` (per-ISP state, least-conn/latency weights → effects) and
in the pure plan/render/diff behind :class:`wanlb.reconcile.Reconciler`.  The daemon feeds the fleet its
inputs — probe rounds (:class:`wanlb.health.monitor.Monitors`), commands (:mod:`wanlb.commands`), link
and routing events, reloads, the resync and adjust timers — and carries out what comes back, in order:
save the runtime state, reconcile the kernel (in a worker thread, one at a time), flush conntrack marks
(only if that reconcile succeeded), record the event (:class:`wanlb.history.EventLog`: history, log,
metrics, SSE, hooks).  What it shows is the read model, :func:`wanlb.view.build`.

Nothing on the event loop waits for a file, a parse or a subprocess: config parsing, state writes,
kernel work and flushes run in threads; hooks are asynchronous subprocesses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from wanlb import runtime, view
from wanlb.commands import Disable, Enable
from wanlb.config import Config, ConfigError, load_config
from wanlb.ctcounts import ConnCounter
from wanlb.daemon.flush import count_and_flush
from wanlb.domains import DomainSets
from wanlb.fleet import ClearSticky, Effect, Emit, Fleet, Flush, Reconcile, SaveState
from wanlb.health.monitor import IspMonitor, Monitors, RoundResult
from wanlb.history import EventLog
from wanlb.kernel import Kernel
from wanlb.metrics import Metrics
from wanlb.reconcile import Reconciler, ReconcileResult, read_snapshot
from wanlb.render import forget_clients
from wanlb.rules import domain_sets_text
from wanlb.tasks import log_crash
from wanlb.tune import TableStats, table_warnings
from wanlb.uplink import uplinks
from wanlb.verify import config_warnings, verify

if TYPE_CHECKING:
    from wanlb.api import Api
    from wanlb.daemon.pair import Pair

log = logging.getLogger("wanlb.daemon")

RESYNC_INTERVAL = 5.0
UPLINK_SETTLE = 0.05  # seconds between an address/route event and the look at the uplinks it causes


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
        monitor: type[IspMonitor] = IspMonitor,
    ):
        self.config_path = config_path
        self.kernel, self.store = kernel, store
        self.cleanup_on_exit = cleanup_on_exit
        self.clock, self.wall = clock, wall
        seen = uplinks(config, read_snapshot(kernel, config, store.state.protocols))
        self.fleet = Fleet(config, store.state, seen, clock(), wall())  # the one owner of config and allocation
        self.reconciler = Reconciler(kernel, store)
        self.counter = counter if counter is not None else ConnCounter(store.state.names_by_mark(), config.mark_mask)
        self.metrics = Metrics()
        self.history = EventLog(self.metrics, self.spawn)
        self.monitors = Monitors(self.on_round, monitor)
        self.domains = DomainSets(
            lambda text: self.spawn(self._apply_domains(text)),
            lambda *args: domain_sets_text(self.config.rules, *args),
            lambda: self.config.ipv6,
        )
        self.last: ReconcileResult | None = None
        self.last_error: str | None = None
        self.started = wall()
        self.reloads = self.link_events = 0
        self.last_reload: view.Reload | None = None  # outcome of the last reload request, for status
        self.table_stats: TableStats | None = None
        self.table_warnings: list[str] = []
        self.api: Api | None = None
        self.pair: Pair | None = None  # one node of an HA pair (daemon.pair), when the config has ha
        self.stopping = asyncio.Event()  # set: `wanlb stop`, SIGTERM, SIGINT
        self.reloaded = asyncio.Event()  # set by every adopted config: the schedule timer (daemon.main) re-arms
        self.reconcile_lock, self._flush_lock, self._reload_lock = asyncio.Lock(), asyncio.Lock(), asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._hup_queued = self._look_queued = False  # a reload / a look at the uplinks is already coming
        self._trial: asyncio.Task[None] | None = None

    @property
    def config(self) -> Config:
        return self.fleet.config

    # --- executing effects ---------------------------------------------------------------------

    async def execute(self, effects: list[Effect]) -> str | None:
        """Carry out one batch of effects in order; returns the reconcile error, if any.  A flush runs only
        after the batch's reconcile succeeded: until then a flushed connection could return to the ISP."""
        error: str | None = None
        decided, applied = self.wall(), None
        flushed: dict[str, int | None] = {}
        for effect in effects:
            if isinstance(effect, SaveState):
                await asyncio.to_thread(self.store.set_allocation, effect.state)
                self.counter.marks = self.store.state.names_by_mark()
            elif isinstance(effect, Reconcile):
                error = await self._reconcile_logged(effect.why) or error
                done = self.last.nft_done if self.last is not None and error is None else None
                applied = done if done is not None else self.wall()
            elif isinstance(effect, Flush) and error is None:
                flushed[effect.isp] = await self._flush(effect)
            elif isinstance(effect, ClearSticky) and error is None:
                await self._forget_clients(effect.isp, effect.family)
            elif isinstance(effect, Emit):
                flush = flushed.get(effect.event.isp)
                self.history.record(self.config, effect.event, error, flush, decided, applied, self.wall())
        return error

    def spawn_effects(self, effects: list[Effect]) -> None:
        if effects:
            self.spawn(self.execute(effects))

    async def reconcile(self, why: str) -> ReconcileResult:
        """Converge the kernel to the fleet's current config, allocation, statuses, weights and the schedules
        at ``wall()``: in a worker thread (kernel calls block), one at a time, each from the state when it starts."""
        async with self.reconcile_lock:
            fleet = self.fleet
            args = (fleet.config, fleet.state, fleet.balancing(), dict(fleet.adjusted), fleet.balancing(6))
            # Shielded: a cancelled caller must not release the lock while the thread still works.
            started = time.monotonic()
            work = asyncio.ensure_future(asyncio.to_thread(self.reconciler.reconcile, *args, self.wall()))
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
            self.domains.push()  # a domain set the transaction (re)created starts empty
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
        """Delete the conntrack entries with the mark (all, or those rules' on_recover picks); returns how many."""
        start = time.monotonic()
        try:
            async with self._flush_lock:
                count = await asyncio.to_thread(count_and_flush, self.kernel, flush, self.last)
        except Exception as exc:  # retried by the next resync
            log.error("could not flush %s's connections (mark %#x): %s", flush.isp, flush.mark, exc)
            return None
        if flush.mask == self.config.mark_mask and not flush.family and flush.moved is None:  # all of a mark
            self.counter.forget(flush.mark)
        family = f"IPv{flush.family} " if flush.family else ""
        took = (time.monotonic() - start) * 1000
        log.warning("flushed %d %sconnections of %s (%s) in %.0f ms", count, family, flush.isp, flush.why, took)
        await self.execute(self.fleet.flushed(flush.mark, flush.mask))
        return count

    async def _forget_clients(self, isp: str, family: int = 0) -> None:
        """Empty the sets that pin clients to ``isp``: their next connection is balanced afresh."""
        text = forget_clients(self.last.desired, isp, family) if self.last is not None else ""
        if not text:
            return
        try:
            await asyncio.to_thread(self.kernel.nft_apply, text)
        except Exception as exc:  # the entries expire on their own; the lookups skip an unusable ISP anyway
            log.error("could not empty %s's sticky sets: %s", isp, exc)
            return
        log.info("forgot the clients pinned to %s", isp)

    async def _apply_domains(self, text: str) -> None:
        async with self.reconcile_lock:  # not while a reconcile may be re-creating the sets
            try:
                await asyncio.to_thread(self.kernel.nft_apply, text)
            except Exception as exc:  # the next push (change, reconcile, resync) tries again
                log.error("could not update the domain sets: %s", exc)

    # --- inputs -------------------------------------------------------------------------------

    def on_round(self, name: str, result: RoundResult, family: int = 4) -> None:
        """A monitor's finished round: the fleet decides, a task of the daemon's own carries it out."""
        effects = self.fleet.round(
            name, self.clock(), self.wall(), result.ok, result.latency, result.loss, result.describe_errors(), family
        )
        if result.latency is not None:
            self.metrics.probe_rtt.labels(name, str(family)).observe(result.latency)
        self.spawn_effects(effects)

    async def flush_asked(self, isp: str) -> dict[str, Any]:
        """``wanlb conntrack delete --isp``: the fleet names the mark, the flush is the usual one."""
        try:
            flush = self.fleet.flush_asked(isp)
        except KeyError:
            return {"ok": False, "error": f"no ISP named {isp!r}"}
        deleted = await self._flush(flush)
        if deleted is None:
            return {"ok": False, "error": "flush failed (the daemon's log says why)"}
        return {"ok": True, "isp": isp, "mark": flush.mark, "mark_mask": flush.mask, "deleted": deleted}

    def stop(self, cleanup: bool = False) -> None:
        """End the daemon (``wanlb stop``); with ``cleanup`` remove everything it added on the way out."""
        self.cleanup_on_exit = self.cleanup_on_exit or cleanup
        self.stopping.set()

    async def admin(self, command: Enable | Disable) -> dict[str, Any]:
        """Drain (disable) an ISP, with its reason and timer, or hand it back to its probes (enable)."""
        now, wall = self.clock(), self.wall()
        try:
            if isinstance(command, Disable):
                message, effects = self.fleet.disable(command.isp, now, wall, command.reason, command.seconds)
            else:
                message, effects = self.fleet.enable(command.isp, now, wall)
        except KeyError:
            return {"ok": False, "error": f"no ISP named {command.isp!r}"}
        error = await self.execute(effects)
        return {"ok": True, "message": message} if error is None else {"ok": False, "error": f"{message}; {error}"}

    def link_changed(self, name: str, usable: bool) -> None:
        if name in {*self.config.lan.interfaces, *(i.interface for i in self.config.isps)}:
            self.link_events += 1
            self.spawn_effects(self.fleet.link(name, usable, self.clock(), self.wall()))

    def routing_changed(self) -> None:
        """An address or someone else's route changed: look at the uplinks soon (events come in bursts:
        a DHCP client adds the address, the subnet route and the default route within milliseconds)."""
        if not self._look_queued:
            self._look_queued = True
            self.spawn(self._look())

    async def _look(self) -> None:
        await asyncio.sleep(UPLINK_SETTLE)
        self._look_queued = False  # an event from now on may follow this reconcile's read: it queues another
        await self._reconcile_logged("uplink change")

    async def adjust(self) -> None:
        """least-conn / latency: the fleet recomputes the weights from the live counts and the probes."""
        await self.execute(self.fleet.adjust(self.counter.by_isp()))

    # --- reload, try, confirm ------------------------------------------------------------------

    async def reload(self, path: str | None = None) -> tuple[bool, str]:
        """Re-read the config (or ``path``) off the loop; verify it; adopt it, or refuse and keep the running one.
        Reloads run one at a time, each allocating from the state the previous one left."""
        async with self._reload_lock:
            return await self._reload(path or self.config_path)

    def sighup(self) -> None:
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
        self.last_reload = view.Reload(round(self.wall(), 3), ok, text[:2000])
        result = "ok" if ok else "failed" if text.startswith("reloaded, but") else "refused"
        self.metrics.reloads.labels(result).inc()
        if self.history.publish is not None:
            self.history.publish("reload", {**view.to_json(self.last_reload), "result": result})
        return ok, text

    async def _adopt(self, path: str, previous: Config | None) -> tuple[bool, str]:
        try:
            new = previous or await asyncio.to_thread(load_config, path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration:\n%s", exc)
            return False, str(exc)
        fleet = self.fleet
        verdict = await asyncio.to_thread(
            verify, new, fleet.state, self.kernel, reload=True, statuses=fleet.balancing(), statuses6=fleet.balancing(6)
        )
        if verdict.allocation is None or verdict.errors:
            text = "\n".join(f"{path}: {e}" if e.startswith("the kernel") else e for e in verdict.errors)
            log.error("reload refused, keeping the running configuration:\n%s", text)
            return False, text
        for warning in verdict.warnings:
            log.warning("%s", warning)
        if new.control.socket != self.config.control.socket:
            log.warning("control.socket changes take effect at the next start")
        self.config_path = path
        self.counter.mark_mask = new.mark_mask
        error = await self.execute(self.fleet.reload(new, verdict.allocation, self.clock(), self.wall()))
        self.reloaded.set()
        self.reloads += 1
        self.monitors.start(new, self.fleet)
        self.domains.configure(new)
        if self.pair is not None:
            await self.pair.reconfigure(new)
        if self.api is not None and new.api is not None:
            await self.api.reconfigure(new.api)
        elif (self.api is None) != (new.api is None):
            log.warning("adding or removing the api section takes effect at the next start")
        self.warn_about_config()
        if error is not None:
            return False, f"reloaded, but applying it failed (retried every {RESYNC_INTERVAL:g}s): {error}"
        return True, "reloaded"

    async def try_config(self, path: str, timeout: float) -> dict[str, Any]:
        """Apply ``path`` now and go back to the running configuration unless confirmed within ``timeout``: a
        config that cuts off an admin working through the gateway undoes itself.  A reload's checks come first."""
        async with self._reload_lock:
            if self._trial is not None:
                return {"ok": False, "error": "a trial is already pending: `wanlb try --confirm` or wait for it"}
            before = (self.config_path, self.config)
            ok, text = await self._reload(path)
            if not ok:
                return {"ok": False, "error": text}
            self._trial = asyncio.create_task(self._roll_back_after(timeout, *before))
            self._trial.add_done_callback(log_crash)
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
        same = "; that file now holds the tried version" if tried == path else ""
        log.warning("trial of %s not confirmed in %gs: rolled back to the configuration loaded from %s before it "
                    "(%s)%s", tried, timeout, path, text, same)  # fmt: skip

    # --- resync -----------------------------------------------------------------------------------

    async def resync(self) -> None:
        """Level-triggered repair: drains whose timer ran out end, reconcile, then the flushes the live counts
        say are still missing."""
        await self.execute(self.fleet.expire_drains(self.clock(), self.wall()))
        if await self._reconcile_logged("resync") is None:
            await self.execute(self.fleet.resync(self.counter.counts()))
        await self.watch_table()

    async def watch_table(self) -> None:
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

    def warn_about_config(self) -> None:
        """What is valid but probably not what the operator meant (at start and after each reload)."""
        self.spawn(self._warn(self.config))

    async def _warn(self, config: Config) -> None:
        for warning in await asyncio.to_thread(config_warnings, config, self.kernel):  # (stats files, lists links)
            log.warning("%s", warning)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine in the background, keeping a reference so it is not collected."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(log_crash)
