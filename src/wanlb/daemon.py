"""``wanlb run``: the asyncio daemon that owns the decisions around the datapath.

It never sees a data packet.  It reconciles the kernel on start, on SIGHUP, on a
timer (to repair what someone else removed, or routes the kernel dropped with a
link) and whenever an ISP's status changes, and answers the control socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from wanlb import control
from wanlb.config import Config, ConfigError, load_config
from wanlb.ctcounts import ConnCounter
from wanlb.plan import IspStatus
from wanlb.reconcile import Reconciler, ReconcileResult, cleanup, preflight

log = logging.getLogger("wanlb.daemon")

RESYNC_INTERVAL = 5.0


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
            result = await asyncio.to_thread(self.reconciler.reconcile, self.config, dict(self.statuses))
        self.last = result
        if result.nft_applied:
            active = ", ".join(f"{i.name}={i.share:.0%}" for i in result.desired.active) or "none"
            log.info("applied ruleset (%s): active %s", why, active)
        return result

    async def set_status(self, name: str, status: IspStatus, reason: str = "") -> None:
        """Record an ISP's new status and converge the kernel right away."""
        if self.statuses.get(name) == status:
            return
        log.warning("isp %s is %s%s", name, status.value, f" ({reason})" if reason else "")
        self.statuses[name] = status
        await self.reconcile(f"{name} {status.value}")

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
        self.statuses = {i.name: self.statuses.get(i.name, IspStatus.UP) for i in new.isps}
        try:
            await self.reconcile("reload")
        except Exception as exc:
            log.error("reload failed to apply (%s); restoring the previous configuration", exc)
            self.config = old
            self.counter.marks, self.counter.mark_mask = self._isp_marks(old), old.mark_mask
            self.statuses = {i.name: self.statuses.get(i.name, IspStatus.UP) for i in old.isps}
            try:
                await self.reconcile("rollback")
            except Exception as again:
                log.error("restoring the previous configuration failed too: %s", again)
            return False, f"apply failed: {exc}"
        self.reloads += 1
        return True, "reloaded"

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine in the background, keeping a reference so it is not collected."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
            "isps": isps,
            "conn_counts": self.counter.by_isp(),
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
        if cmd == "stop":
            self.cleanup_on_exit = self.cleanup_on_exit or bool(message.get("cleanup"))
            self._stop.set()
            return {"ok": True, "message": "stopping"}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    # --- lifecycle -------------------------------------------------------------------

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_INTERVAL)
            try:
                await self.reconcile("resync")
            except Exception as exc:  # keep running: the next resync may succeed
                log.error("periodic reconcile failed: %s", exc)

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
        log.info("wanlb running (pid %d), control socket %s", os.getpid(), socket_path)
        try:
            await self._stop.wait()
        finally:
            resync.cancel()
            counting.cancel()
            server.close()
            Path(socket_path).unlink(missing_ok=True)
            if self.cleanup_on_exit:
                for change in await asyncio.to_thread(cleanup, self.config):
                    log.info("cleanup %s", change)
                log.info("removed everything wanlb added")
            else:
                log.info("exiting; the datapath stays in place (connections keep flowing)")


def run(config_path: str, cleanup_on_exit: bool) -> None:
    config = load_config(config_path)
    preflight(config)
    asyncio.run(Daemon(config_path, config, cleanup_on_exit).run())
