"""The daemon's face to its clients: the read model and the command surface (:class:`wanlb.commands.Port`).

The control socket's lines and the API's routes arrive here as typed commands (:mod:`wanlb.commands`);
reads answer from the read model (:func:`wanlb.view.build`) with, where a figure lives in the kernel, one
bounded read in a worker thread (our nft counters).  The API holds this object, never the daemon.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from wanlb import commands, flow_explain, trends, view
from wanlb.daemon.executor import Daemon

if TYPE_CHECKING:
    from wanlb.adapters.routing import Lookup
    from wanlb.daemon.quotas import Quotas

log = logging.getLogger("wanlb.daemon")

COUNTER_READ_TIMEOUT = 2.0  # seconds status waits for nft to list our counters
EXPLAIN_READ_TIMEOUT = 2.0  # seconds explain waits for nft to list our sets and for the route lookups


class Surface:
    """:class:`wanlb.commands.Port` for one daemon."""

    def __init__(self, daemon: Daemon, quotas: Quotas | None = None) -> None:
        self.daemon = daemon
        self.quotas = quotas  # the data quotas' counting (wanlb run has one; some tests do without)
        self._counter_reads = asyncio.Semaphore(2)
        self.trends = trends.Trends()  # the day of 10 s samples (the dashboard's charts); a reload keeps it
        self._history_reads = asyncio.Semaphore(1)
        self._explain_reads = asyncio.Semaphore(2)

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
            domains=d.domains.status(), events=d.history.events, now=d.clock(), wall=d.wall(),
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

    def peer_addresses(self) -> frozenset[bytes]:
        ha = self.daemon.config.ha
        if ha is None:
            return frozenset()
        return frozenset(a.packed for a in (ha.sync.peer, ha.unicast_peer) if a is not None)

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
            case commands.QuotaReset(isp=isp):
                if self.quotas is None:
                    return {"ok": False, "error": "this daemon counts no quotas"}
                return await self.quotas.reset(isp)
            case commands.Stop(cleanup=cleanup):
                d.stop(cleanup)
                return {"ok": True, "message": "stopping"}
            case commands.Explain():
                return await self.explain(command)
        raise AssertionError(f"unhandled command {command!r}")

    async def explain(self, command: commands.Explain) -> dict[str, Any]:
        """``wanlb explain``: the flow walked through the ruleset the kernel holds — the last applied plan, not the
        fleet's latest wish — with the kernel's sets (sticky clients, domains) and route lookups read now, in a
        worker (at most two reads at once, bounded in time, like the counters).  A destination domain gives one
        decision per address the daemon resolved for it (of the source's family)."""
        d = self.daemon
        if d.last is None:
            return {"ok": False, "error": "no ruleset is applied yet: nothing to explain"}
        desired = d.last.desired
        source = ipaddress.ip_address(command.src)
        try:
            name, destinations = self._destinations(command.dst, source.version)
        except commands.BadRequest as exc:
            return {"ok": False, "error": str(exc)}
        try:
            async with asyncio.timeout(EXPLAIN_READ_TIMEOUT), self._explain_reads:
                listing, routes = await asyncio.to_thread(self._read_for_explain, destinations)
        except Exception as exc:  # (a timeout too) no answer rather than one from half the facts
            return {"ok": False, "error": f"cannot read the kernel's sets and routes: {exc or 'timed out'}"}
        sets = flow_explain.set_elements(listing)
        iif = command.iif or desired.lan_interfaces[0]
        decisions = []
        for dst, (kind, table, prefix) in zip(destinations, routes, strict=True):
            c = command
            flow = flow_explain.Flow(source, dst, c.proto, c.sport, c.dport, iif, c.dscp, c.src_mac)
            decision = flow_explain.explain(desired, flow, flow_explain.Live(sets, kind, table, prefix))
            decisions.append(view.to_json(decision))
        return {"ok": True, "name": name, "decisions": decisions}

    def _destinations(self, dst: str, family: int) -> tuple[str | None, list[flow_explain.Address]]:
        """(the name, its addresses of ``family``) for a destination domain, from the daemon's domain state (no
        query of its own); (None, [the address]) for an address."""
        try:
            return None, [ipaddress.ip_address(dst)]
        except ValueError:
            pass
        found = self.daemon.domains.addresses(dst)
        if found is None:
            why = "a rule's dst_domains, with dns.resolve on"
            raise commands.BadRequest(f"bad request: {dst} is not a destination domain the daemon resolves ({why})")
        mine = [a for a in found if a.version == family]
        if not mine:
            raise commands.BadRequest(f"bad request: the daemon has no IPv{family} address of {dst} (yet)")
        return dst, mine

    def _read_for_explain(self, destinations: Sequence[flow_explain.Address]) -> tuple[Any, list[Lookup]]:
        kernel = self.daemon.kernel
        return kernel.nft_read(), [kernel.route_lookup(dst) for dst in destinations]
