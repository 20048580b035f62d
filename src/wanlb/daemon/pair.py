"""The daemon's side of an HA pair: it runs this node's helpers (:class:`wanlb.ha_supervisor.HaNode`), hears
keepalived's role changes and carries them out in the order that keeps connections on their ISPs.

Becoming master: conntrackd commits the peer's connections into the kernel *first* (each with its ct mark,
so its ISP, and its NAT binding), then the fleet hears of the role (an event; from now on it may flush),
then a resync flushes what this node's own probes say must go.  Becoming backup (or fault): the fleet first
(it stops flushing: the primary and conntrackd own the connections), then conntrackd's steps.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from wanlb import view
from wanlb.config import Config
from wanlb.ha_supervisor import HaNode, HelperState

if TYPE_CHECKING:
    from wanlb.daemon.executor import Daemon

log = logging.getLogger("wanlb.ha")


class Pair:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.node = HaNode(daemon.config)
        self._roles = asyncio.Lock()  # one role change at a time, in the order keepalived said them

    async def start(self) -> None:
        config = self.daemon.config
        await asyncio.to_thread(self.node.write, config)
        await asyncio.to_thread(self.node.prepare)
        self.node.listen(self._heard)
        self.node.start()
        log.info("ha: node %s (priority %d) started conntrackd and keepalived", config.ha.node, config.ha.priority)

    async def reconfigure(self, config: Config) -> None:
        """A reload: the helpers' files again; keepalived re-reads its own on SIGHUP (conntrackd's changes, the
        sync link's addresses, take effect at the next start)."""
        if config.ha is None:
            log.warning("ha: the ha section was removed: the helpers keep running until the next start")
            return
        await asyncio.to_thread(self.node.write, config)
        await self.node.reload_keepalived()

    async def stop(self) -> None:
        await self.node.stop()

    def _heard(self, role: str) -> None:
        self.daemon.spawn(self.become(role))

    async def become(self, role: str) -> None:
        d = self.daemon
        async with self._roles:
            if role == self.node.role:  # (None until keepalived first says: a backup's first word asks for a resync)
                return
            log.warning("ha: node %s becomes %s", d.config.ha.node if d.config.ha else "?", role)
            if role == "master":
                outcome = await self.node.become(role)
                await d.execute(d.fleet.role(role, d.wall()))
                await d.resync()
            else:
                await d.execute(d.fleet.role(role, d.wall()))
                outcome = await self.node.become(role)
            if outcome != "ok":
                log.error("ha: conntrackd's steps for %s: %s", role, outcome)

    def view(self) -> view.Ha:
        config = self.daemon.config
        ha = config.ha
        if ha is None:
            return view.Ha(role=self.daemon.fleet.ha_role or "backup")
        return view.Ha(
            node=ha.node,
            role=self.daemon.fleet.ha_role or "backup",
            since=round(self.node.role_since, 3),
            priority=ha.priority,
            sync_link=_oper_state(ha.sync.interface),
            last_commit=self.node.last_commit,
            keepalived=_helper(self.node.keepalived.state),
            conntrackd=_helper(self.node.conntrackd.state),
        )


def _helper(state: HelperState) -> view.HaHelper:
    return view.HaHelper(state.running, state.pid, state.starts, state.last_exit, state.missing)


def _oper_state(interface: str) -> str:
    """The sync link as the kernel says (``up``/``down``), or ``missing``: a 20-byte sysfs read."""
    try:
        return Path(f"/sys/class/net/{interface}/operstate").read_text()[:20].strip() or "unknown"
    except OSError:
        return "missing"
