"""The daemon's face to its clients: the read model and the command surface (:class:`wanlb.commands.Port`).

The control socket's lines and the API's routes arrive here as typed commands (:mod:`wanlb.commands`);
reads answer from the read model (:func:`wanlb.view.build`) with, where a figure lives in the kernel, one
bounded read in a worker thread (our nft counters).  The API holds this object, never the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from wanlb import commands, trends, view
from wanlb.daemon.executor import Daemon

log = logging.getLogger("wanlb.daemon")

COUNTER_READ_TIMEOUT = 2.0  # seconds status waits for nft to list our counters


class Surface:
    """:class:`wanlb.commands.Port` for one daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._counter_reads = asyncio.Semaphore(2)
        self.trends = trends.Trends()  # the day of 10 s samples (the dashboard's charts); a reload keeps it
        self._history_reads = asyncio.Semaphore(1)

    async def read_counters(self) -> dict[str, dict[str, int]]:
        """Our table's named counters (packets, bytes), read in a worker; {} if nft cannot answer in time.

        At most two reads at once: clients (status, scrapes, streams) must not fill the worker threads
        that reconciles and flushes need (a timed-out read keeps its thread until nft returns)."""
        try:
            async with asyncio.timeout(COUNTER_READ_TIMEOUT), self._counter_reads:
                listing = await asyncio.to_thread(self.daemon.kernel.nft_read)
        except Exception as exc:  # status still answers: the counters are extra
            log.debug("cannot read nft counters: %s", exc)
            return {}
        return {
            o["counter"]["name"]: {"packets": o["counter"].get("packets", 0), "bytes": o["counter"].get("bytes", 0)}
            for o in listing or ()
            if isinstance(o, dict) and "counter" in o
        }

    def snapshot(self, counters: Mapping[str, Mapping[str, int]] | None = None) -> view.Status:
        d = self.daemon
        stats = d.table_stats
        facts = view.DaemonFacts(
            pid=os.getpid(), config_path=d.config_path, uptime_seconds=d.wall() - d.started,
            nft_applies=d.reconciler.nft_applies, reloads=d.reloads, link_events=d.link_events,
            last_error=d.last_error, last_reload=d.last_reload,
            route_failures=d.last.failures if d.last else (), started=d.started,
            events_lost=d.counter.lost_events, table_entries=stats.count if stats else None,
            table_max=stats.max if stats else None, table_warnings=tuple(d.table_warnings),
            ha=d.pair.view() if d.pair is not None else None,
        )  # fmt: skip
        return view.build(
            config=d.config, fleet=d.fleet, desired=d.last.desired if d.last else None, facts=facts,
            counters=counters or {}, counts=d.counter.by_isp(), probes=d.monitors.probes(),
            domains=d.domains.status(), events=d.history.events, now=d.clock(),
        )  # fmt: skip

    async def sample(self) -> None:
        """One sample of the history: the read model with fresh counters, at wall time."""
        status = self.snapshot(await self.read_counters())
        self.trends.record(self.daemon.wall(), status)

    async def history(self, since: float) -> trends.History:
        """The samples after ``since``, read from a copy in a worker (a full day takes ~0.1 s to convert).

        One read at a time: a burst of requests must not hold several copies or fill the worker threads."""
        async with self._history_reads:
            return await asyncio.to_thread(self.trends.copy().series, since)

    def recent_events(self) -> Sequence[view.Event]:
        return tuple(self.daemon.history.events)

    def metrics_text(self, status: view.Status, counters: Mapping[str, Mapping[str, int]]) -> bytes:
        return self.daemon.metrics.render(status, counters)

    def isp_marks(self) -> tuple[dict[str, int], int]:
        d = self.daemon
        return {name: slot.mark for name, slot in d.fleet.state.isps.items()}, d.config.mark_mask

    async def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        """One control-socket request: parsed once (:func:`wanlb.commands.parse`), then submitted."""
        try:
            command = commands.parse(message)
        except commands.BadRequest as exc:
            return {"ok": False, "error": str(exc)}
        return await self.submit(command)

    async def submit(self, command: commands.Command) -> dict[str, Any]:
        d = self.daemon
        match command:
            case commands.GetStatus():
                return view.to_json(self.snapshot(await self.read_counters()))
            case commands.GetConnCounts():
                counts = {str(mark): n for mark, n in d.counter.counts().items()}
                return {"ok": True, "counts": counts, "by_isp": d.counter.by_isp(),
                        "lost_events": d.counter.lost_events, "resyncs": d.counter.resyncs}  # fmt: skip
            case commands.Reload():
                ok, text = await d.reload()
                return {"ok": ok, "message": text} if ok else {"ok": False, "error": text}
            case commands.Try(config=path, timeout=timeout):
                return await d.try_config(path, timeout)
            case commands.Confirm():
                return await d.confirm()
            case commands.Enable() | commands.Disable():
                return await d.admin(command)
            case commands.Flush(isp=isp):
                return await d.flush_asked(isp)
            case commands.Stop(cleanup=cleanup):
                d.stop(cleanup)
                return {"ok": True, "message": "stopping"}
        raise AssertionError(f"unhandled command {command!r}")
