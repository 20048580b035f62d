"""``wanlb run``: load, preflight, allocate, then serve until a signal or ``wanlb stop``.

:func:`serve` is the daemon's life: the first reconcile, the control socket, signals, the resync, adjust
and count loops, the schedule timer, the link/routing watcher, the monitors, the domain resolver and (if
configured) the API; on the way out it stops them all and leaves the datapath in place — or, asked to clean
up, removes everything wanlb added.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from wanlb import control, runtime, schedule, trends
from wanlb.adapters.links import LinkWatcher
from wanlb.config import load_config
from wanlb.daemon import quotas as quota_counting
from wanlb.daemon.executor import RESYNC_INTERVAL, Daemon
from wanlb.daemon.passive import PassiveWatch
from wanlb.daemon.surface import Surface
from wanlb.fleet import Reconcile
from wanlb.kernel import LinuxKernel
from wanlb.reconcile import cleanup, preflight

log = logging.getLogger("wanlb.daemon")


async def serve(daemon: Daemon) -> None:
    d = daemon
    socket_path = d.config.control.socket
    if control.socket_in_use(socket_path):
        raise RuntimeError(f"another wanlb daemon already answers at {socket_path}")
    quotas = quota_counting.Quotas(d)
    await quotas.restore()  # before the first reconcile: an ISP over its data quota stays out of balancing
    await d.reconcile("start")
    await quotas.sync()  # the counts, cycles and thresholds as of now (a cycle may have ended while stopped)
    await d.watch_table()  # the table's size and limit are in status (and /metrics) from the start
    surface = Surface(d, quotas)
    server = await control.serve(socket_path, surface.handle)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, d.sighup)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, d.stopping.set)
    loops = [
        asyncio.create_task(_every(lambda: RESYNC_INTERVAL, d.resync)),
        asyncio.create_task(_every(lambda: d.config.balance.adjust_interval, d.adjust)),
        asyncio.create_task(d.counter.run()),
        asyncio.create_task(PassiveWatch(d).run()),
        asyncio.create_task(_every(lambda: quota_counting.INTERVAL, quotas.sync)),
        asyncio.create_task(_follow_schedules(d)),
    ]
    links = LinkWatcher(d.link_changed, d.routing_changed, lambda: d.fleet.state.protocols)
    d.monitors.start(d.config, d.fleet)
    d.domains.configure(d.config)
    d.warn_about_config()
    if d.config.ha is not None:  # conntrackd and keepalived: after the first reconcile, the datapath is in place
        from wanlb.daemon.pair import Pair

        d.pair = Pair(d)
        await d.pair.start()
    api = None
    if d.config.api is not None:
        from wanlb.api import Api, TokenError  # FastAPI and uvicorn: 0.3 s of imports, only when asked for

        try:
            api = d.api = Api(surface, d.config.api)
            d.history.publish = api.hub.publish
            await api.start()
        except (TokenError, OSError, RuntimeError) as exc:
            raise RuntimeError(f"api: {exc}") from None
        loops.append(asyncio.create_task(_every(lambda: trends.INTERVAL, surface.sample)))  # the charts' last day
    log.info("wanlb running (pid %d), control socket %s", os.getpid(), socket_path)
    try:
        await d.stopping.wait()
    finally:
        for task in loops:
            task.cancel()
        await quotas.stop(d.cleanup_on_exit)  # (before a cleanup deletes the table and its counters)
        links.close()
        d.monitors.stop()
        d.domains.stop()
        if api is not None:
            await api.stop()
        if d.pair is not None:
            await d.pair.stop()
        server.close()
        Path(socket_path).unlink(missing_ok=True)
        if d.cleanup_on_exit:
            async with d.reconcile_lock:
                for change in await asyncio.to_thread(cleanup, d.kernel, d.config, d.store.state):
                    log.info("cleanup %s", change)
                await asyncio.to_thread(runtime.remove, d.config.state_path)
            log.info("removed everything wanlb added")
        else:
            log.info("exiting; the datapath stays in place (connections keep flowing)")


async def _follow_schedules(d: Daemon) -> None:
    """Switch scheduled rules and policies at their boundaries: sleep until the next one, then reconcile (which
    plans from the clock).  An adopted config re-arms the timer; a wake-up missed or a clock that jumped is
    repaired by the resync, which plans from the clock too."""
    while True:
        if not await _boundary_reached(d):
            continue
        before = d.last.desired.inactive if d.last is not None else None
        await d.execute([Reconcile("schedule")])
        after = d.last.desired.inactive if d.last is not None else None
        if after is not None and after != before:
            rules, policies = (", ".join(sorted(names)) or "none" for names in (after.rules, after.policies))
            log.info("schedule: rules off now: %s; policies off now: %s", rules, policies)


async def _boundary_reached(d: Daemon) -> bool:
    """Wait until the config's next schedule boundary (True), or until a config is adopted (False: the new one
    has boundaries of its own)."""
    d.reloaded.clear()
    at = schedule.next_change(d.config, d.wall())
    try:
        async with asyncio.timeout(None if at is None else max(0.0, at - d.wall())):
            await d.reloaded.wait()
    except TimeoutError:
        return True
    return False


async def _every(seconds: Callable[[], float], work: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    while True:
        await asyncio.sleep(seconds())
        await work()


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
        asyncio.run(serve(Daemon(config_path, config, kernel, store, cleanup_on_exit)))
    finally:
        kernel.close()
