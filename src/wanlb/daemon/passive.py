"""The shell of passive detection (:mod:`wanlb.health.passive`): every tick it reads the SYN and SYN-ACK
counters (one netlink dump of our table's counters, tens of microseconds, bounded by the table), feeds the
detector, and for each ISP it newly suspects has the fleet suspect it and its monitor probe it at once.

It runs beside the probe monitors and never waits on them; a read that fails (the table not there yet, a
reconcile recreating it) costs that tick only.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from wanlb.health.passive import TICK, PassiveDetector

if TYPE_CHECKING:
    from wanlb.daemon.executor import Daemon

log = logging.getLogger("wanlb.passive")


class PassiveWatch:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.detector: PassiveDetector | None = None
        self._params: tuple[float, float, int] | None = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.tick()

    def tick(self) -> None:
        d = self.daemon
        passive = d.config.failover.passive
        if not passive.enabled:
            self.detector = None
            return
        params = (passive.timeout, passive.window, passive.min_connections)
        if self.detector is None or params != self._params:  # (a reload changed them: start afresh)
            self.detector, self._params = PassiveDetector(*params), params
        try:
            raw = d.kernel.nft_counters() or {}
        except Exception as exc:  # (the table being recreated, say): this tick only
            log.debug("passive detection: cannot read the counters: %s", exc)
            return
        counts = {
            isp.name: (raw[f"isp_{isp.name}_syn"][0], raw[f"isp_{isp.name}_answer"][0])
            for isp in d.config.isps
            if f"isp_{isp.name}_syn" in raw and f"isp_{isp.name}_answer" in raw
        }
        now = d.clock()
        for name, why in self.detector.sample(now, counts).items():
            effects = d.fleet.suspect(name, why, now, d.wall())
            if effects:
                log.warning("passive detection: %s suspected: %s", name, why)
                d.spawn_effects(effects)
                d.monitors.kick(name)
