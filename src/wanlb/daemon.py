"""``wanlb run``: the asyncio daemon that owns the decisions around the datapath.

It never sees a data packet.  It reconciles the kernel on start, on SIGHUP, on a
timer (to repair what someone else removed, or routes the kernel dropped with a
link) and whenever an ISP's status changes, and answers the control socket.

Failover (:meth:`Daemon.on_transition`): a health monitor's decision is applied
in the same task that made it: record the status, reconcile (one atomic nft
transaction takes the ISP out of or back into balancing), then on DOWN delete
that ISP's conntrack entries with one kernel flush-by-mark so its clients
reconnect at once through the others.  Hooks start afterwards and are never
waited for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from wanlb import control
from wanlb.adapters.links import LinkWatcher
from wanlb.config import Config, ConfigError, load_config
from wanlb.ctcounts import ConnCounter
from wanlb.ctnetlink.client import Conntrack
from wanlb.ctnetlink.filters import Filter
from wanlb.health.machine import HealthMachine, Transition
from wanlb.health.monitor import IspMonitor, params_of
from wanlb.hooks import run_hooks
from wanlb.plan import IspStatus
from wanlb.reconcile import Reconciler, ReconcileResult, cleanup, preflight

log = logging.getLogger("wanlb.daemon")

RESYNC_INTERVAL = 5.0
EVENT_HISTORY = 200


class Daemon:
    def __init__(self, config_path: str, config: Config, cleanup_on_exit: bool = False):
        self.config_path = config_path
        self.config = config
        self.cleanup_on_exit = cleanup_on_exit
        self.statuses: dict[str, IspStatus] = {i.name: IspStatus.UP for i in config.isps}
        self.reconciler = Reconciler(config.state_path)
        self.last: ReconcileResult | None = None
        self.started = time.time()
        self.reloads = 0
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.counter = ConnCounter(self._isp_marks(config), config.mark_mask)
        self.machines: dict[str, HealthMachine] = {}
        self.monitors: dict[str, tuple[IspMonitor, asyncio.Task[None]]] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENT_HISTORY)
        self._conntrack = Conntrack()  # opened once: a failover should not wait for a socket setup
        self._flush_lock = asyncio.Lock()
        self._hook_order: dict[str, asyncio.Lock] = {}
        self.since: dict[str, float] = {i.name: time.time() for i in config.isps}
        self.link_events = 0

    @staticmethod
    def _isp_marks(config: Config) -> dict[int, str]:
        return {isp.mark or 0: isp.name for isp in config.isps}

    # --- the single reconcile path -------------------------------------------------

    async def reconcile(self, why: str) -> ReconcileResult:
        """Converge the kernel to config + statuses.

        The kernel calls block (pyroute2's sync API runs its own event loop), so
        they run in a worker thread; the lock keeps two reconciles from
        interleaving, and each one works from the state current when it starts.
        """
        async with self._lock:
            # Shielded: a cancelled caller must not release the lock while the thread still works.
            work = asyncio.ensure_future(asyncio.to_thread(self.reconciler.reconcile, self.config, dict(self.statuses)))
            try:
                result = await asyncio.shield(work)
            except asyncio.CancelledError:
                await work
                raise
        self.last = result
        if result.nft_applied:
            active = ", ".join(f"{i.name}={i.share:.0%}" for i in result.desired.active) or "none"
            log.info("applied ruleset (%s): active %s", why, active)
        return result

    def transition(self, name: str, transition: Transition) -> None:
        """A monitor's decision: handled at once, in a task the monitor cannot cancel."""
        self.spawn(self.on_transition(name, transition))

    async def on_transition(self, name: str, transition: Transition) -> None:
        """Apply a health or admin decision now: status, reconcile, flush on DOWN, event, hooks."""
        isp = next((i for i in self.config.isps if i.name == name), None)
        if isp is None or self.statuses.get(name) == transition.new:
            return
        decided = time.time()
        log.warning("isp %s is %s (%s)", name, transition.new.value, transition.reason)
        self.statuses[name] = transition.new
        self.since[name] = decided
        error = None
        try:
            await self.reconcile(f"{name} {transition.new.value}")
        except Exception as exc:  # the resync loop retries; the event is still recorded
            log.error("reconcile after %s went %s failed: %s", name, transition.new.value, exc)
            error = str(exc)
        applied = time.time()
        machine = self.machines.get(name)
        flushed = None
        if (
            transition.new == IspStatus.DOWN
            and self.config.failover.on_down == "flush"
            and error is None  # the ISP may still be in `balance`: a flushed connection could return to it
            and self.statuses.get(name) == IspStatus.DOWN  # not already back up while we waited
            and not (transition.old == IspStatus.DISABLED and not (machine and machine.failing))
        ):
            flushed = await self._flush(name, isp.mark or 0)
        quality = machine.quality() if machine else None
        self.events.append(
            {
                "time": round(decided, 3),
                "isp": name,
                "event": transition.new.value,
                "from": transition.old.value,
                "reason": transition.reason,
                "loss_percent": round(quality.loss_percent, 1) if quality else None,
                "latency_ms": _ms(quality.latency) if quality else None,
                "flushed": flushed,
                "error": error,
                "applied_ms": _ms(applied - decided),
                "done_ms": _ms(time.time() - decided),
            }
        )
        env = {"WANLB_ISP": name, "WANLB_EVENT": transition.new.value, "WANLB_INTERFACE": isp.interface}
        if self.config.hooks:
            order = self._hook_order.setdefault(name, asyncio.Lock())
            self.spawn(run_hooks(self.config.hooks, env, self.config.hook_timeout, order))

    async def _flush(self, name: str, mark: int) -> int | None:
        """Delete the ISP's connections (one kernel flush-by-mark); returns how many it held."""
        held = self.counter.by_isp().get(name)
        flt = Filter(mark=mark, mark_mask=self.config.mark_mask)
        start = time.monotonic()
        try:
            async with self._flush_lock:  # one netlink socket: one request at a time
                await asyncio.to_thread(self._conntrack.delete_matching, flt)
        except Exception as exc:  # the failover itself is done; report, don't crash
            log.error("could not flush %s's connections: %s", name, exc)
            return None
        took = (time.monotonic() - start) * 1000
        log.warning("flushed %s connections of %s in %.0f ms", held if held is not None else "the", name, took)
        return held

    async def admin(self, name: str, enable: bool) -> dict[str, Any]:
        """Drain (disable) an ISP or hand it back to its probes (enable)."""
        machine = self.machines.get(name)
        if machine is None:
            return {"ok": False, "error": f"no ISP named {name!r}"}
        now = time.monotonic()
        transition = machine.enable(now, probed=name in self.monitors) if enable else machine.disable(now)
        if transition is not None:
            await self.on_transition(name, transition)
        return {"ok": True, "message": f"{name} is {self.statuses[name].value}"}

    async def reload(self) -> tuple[bool, str]:
        """Re-read the config; a bad one is reported and the running rules stay as they are."""
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration:\n%s", exc)
            return False, str(exc)
        if new.control.socket != self.config.control.socket:
            log.warning("control.socket changes take effect at the next start")
        old = self.config
        self.config = new
        self.counter.marks, self.counter.mark_mask = self._isp_marks(new), new.mark_mask
        self.statuses = self._carried_statuses(new)
        try:
            await self.reconcile("reload")
        except Exception as exc:
            log.error("reload failed to apply (%s); restoring the previous configuration", exc)
            self.config = old
            self.counter.marks, self.counter.mark_mask = self._isp_marks(old), old.mark_mask
            self.statuses = self._carried_statuses(old)
            try:
                await self.reconcile("rollback")
            except Exception as again:
                log.error("restoring the previous configuration failed too: %s", again)
            return False, f"apply failed: {exc}"
        self.reloads += 1
        self._start_monitors()
        self._warn_about_config()
        return True, "reloaded"

    def _carried_statuses(self, config: Config) -> dict[str, IspStatus]:
        """Statuses across a reload: kept, except that an ISP nothing probes any more cannot stay down."""
        carried = {}
        for isp in config.isps:
            status = self.statuses.get(isp.name, IspStatus.UP)
            if not isp.health.targets and status != IspStatus.DISABLED:
                status = IspStatus.UP
            carried[isp.name] = status
        return carried

    def _start_monitors(self) -> None:
        """(Re)start one monitor per ISP that has targets, keeping a machine whose parameters did not change."""
        for _monitor, task in self.monitors.values():
            task.cancel()
        self.monitors.clear()
        machines: dict[str, HealthMachine] = {}
        for isp in self.config.isps:
            params = params_of(isp.health)
            machine = self.machines.get(isp.name)
            status = self.statuses.get(isp.name, IspStatus.UP)
            if machine is None or machine.params != params or machine.status != status:
                machine = HealthMachine(params, status)
            machines[isp.name] = machine
            if not isp.health.targets:
                continue
            monitor = IspMonitor(isp, machine, self.transition)
            task = asyncio.create_task(monitor.run())
            task.add_done_callback(_log_crash)
            self.monitors[isp.name] = (monitor, task)
        self.machines = machines

    def _warn_about_config(self) -> None:
        """What is valid but probably not what the operator meant (at start and after each reload)."""
        for hook in self.config.hooks:
            if not os.access(hook, os.X_OK):
                log.warning("hook %s is not an executable file: it will fail on every change", hook)
        unmonitored = [i.name for i in self.config.isps if not i.health.targets]
        if unmonitored:
            log.warning("no health targets for %s: never declared down", ", ".join(unmonitored))

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine in the background, keeping a reference so it is not collected."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_crash)

    # --- control socket --------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        desired = self.last.desired if self.last else None
        isps = []
        for isp in desired.isps if desired else ():
            isps.append(
                {
                    "name": isp.name,
                    "interface": isp.interface,
                    "gateway": str(isp.gateway),
                    "status": isp.status.value,
                    "active": isp.active,
                    "weight": isp.weight,
                    "tier": isp.tier,
                    "share_percent": round(isp.share * 100, 2),
                    "mark": isp.mark,
                    "table": isp.table,
                    "since": round(self.since.get(isp.name, self.started), 3),
                    "health": self._health(isp.name),
                }
            )
        return {
            "ok": True,
            "pid": os.getpid(),
            "config": self.config_path,
            "uptime_seconds": round(time.time() - self.started, 1),
            "mark_mask": self.config.mark_mask,
            "local_traffic": self.config.local_traffic,
            "nft_applies": self.reconciler.nft_applies,
            "reloads": self.reloads,
            "link_events": self.link_events,
            "isps": isps,
            "conn_counts": self.counter.by_isp(),
            "events": list(self.events),
        }

    def _health(self, name: str) -> dict[str, Any]:
        machine = self.machines.get(name)
        entry = self.monitors.get(name)
        if machine is None or entry is None:
            return {"monitored": False}
        monitor = entry[0]
        quality = machine.quality()
        held = machine.hold_until - time.monotonic()
        return {
            "monitored": True,
            "method": monitor.health.method,
            "targets": [str(t) for t in monitor.health.targets],
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
            return self.status()
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
        if cmd in ("enable", "disable"):
            return await self.admin(str(message.get("isp")), cmd == "enable")
        if cmd == "flush":
            return await self.flush_isp(str(message.get("isp")), message.get("config"))
        if cmd == "stop":
            self.cleanup_on_exit = self.cleanup_on_exit or bool(message.get("cleanup"))
            self._stop.set()
            return {"ok": True, "message": "stopping"}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    async def flush_isp(self, name: str, config: str | None) -> dict[str, Any]:
        """Delete an ISP's connections for ``wanlb conntrack delete --isp`` (the daemon has the marks loaded).

        A CLI naming its config file (``config``: its real path) gets the flush only if
        that is the file this daemon runs and it still gives the ISP the same mark and
        mask (it may have been edited since the last load); else an error, and the CLI
        resolves the name and flushes by itself.
        """
        cfg = self.config
        isp = next((i for i in cfg.isps if i.name == name), None)
        if isp is None:
            return {"ok": False, "error": f"no ISP named {name!r}"}
        mark = isp.mark or 0
        if config is not None and (why := await self._not_as_on_disk(config, cfg, name, mark)):
            return {"ok": False, "error": why}
        try:
            deleted = await asyncio.to_thread(_flush_now, Filter(mark=mark, mark_mask=cfg.mark_mask))
        except OSError as exc:
            return {"ok": False, "error": f"flush failed: {exc.strerror or exc}"}
        log.info("flushed %d connections of %s (asked on the control socket)", deleted, name)
        return {"ok": True, "isp": name, "mark": mark, "mark_mask": cfg.mark_mask, "deleted": deleted}

    async def _not_as_on_disk(self, config: str, cfg: Config, name: str, mark: int) -> str | None:
        """Why ``config`` may resolve ``name`` differently from the running ``cfg``; None if it cannot."""
        running = os.path.realpath(self.config_path)
        if config != running:
            return f"this daemon runs {running}, not {config}"
        try:
            on_disk = await asyncio.to_thread(load_config, self.config_path)
            same = on_disk.isp(name).mark == mark and on_disk.mark_mask == cfg.mark_mask
        except (ConfigError, KeyError):
            same = False
        return None if same else f"{running} changed since it was loaded (`wanlb reload` applies it)"

    # --- lifecycle -------------------------------------------------------------------

    def _link_changed(self, name: str, usable: bool) -> None:
        """A LAN or WAN link went up or down: routes through it may have come or gone; converge now."""
        interfaces = {*self.config.lan.interfaces, *(i.interface for i in self.config.isps)}
        if name in interfaces:
            self.link_events += 1
            self.spawn(self._reconcile_logged(f"link {name} {'up' if usable else 'down'}"))

    async def _reconcile_logged(self, why: str) -> None:
        try:
            await self.reconcile(why)
        except Exception as exc:  # the periodic resync retries
            log.error("reconcile (%s) failed: %s", why, exc)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_INTERVAL)
            await self._reconcile_logged("resync")

    async def run(self) -> None:
        socket_path = self.config.control.socket
        if control.socket_in_use(socket_path):
            raise RuntimeError(f"another wanlb daemon already answers at {socket_path}")
        await self.reconcile("start")
        server = await control.serve(socket_path, self.handle)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: self.spawn(self.reload()))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        resync = asyncio.create_task(self._resync_loop())
        counting = asyncio.create_task(self.counter.run())
        links = LinkWatcher(self._link_changed)
        self._start_monitors()
        self._warn_about_config()
        log.info("wanlb running (pid %d), control socket %s", os.getpid(), socket_path)
        try:
            await self._stop.wait()
        finally:
            resync.cancel()
            counting.cancel()
            links.close()
            for _monitor, task in self.monitors.values():
                task.cancel()
            self._conntrack.close()
            server.close()
            Path(socket_path).unlink(missing_ok=True)
            if self.cleanup_on_exit:
                for change in await asyncio.to_thread(cleanup, self.config):
                    log.info("cleanup %s", change)
                log.info("removed everything wanlb added")
            else:
                log.info("exiting; the datapath stays in place (connections keep flowing)")


def _log_crash(task: asyncio.Task[Any]) -> None:
    """A background task must never die unnoticed."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("background task %s crashed", task.get_coro(), exc_info=exc)


def _flush_now(flt: Filter) -> int:
    """One flush on a socket of its own: a control request never queues behind a failover's flush."""
    with Conntrack() as ct:
        return ct.delete_matching(flt)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def run(config_path: str, cleanup_on_exit: bool) -> None:
    config = load_config(config_path)
    preflight(config)
    asyncio.run(Daemon(config_path, config, cleanup_on_exit).run())
