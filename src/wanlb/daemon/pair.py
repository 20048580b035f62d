"""The daemon's side of an HA pair: it runs this node's helpers (:class:`wanlb.ha_supervisor.HaNode`), hears
keepalived's role changes and carries them out in the order that keeps connections on their ISPs.

Becoming master: conntrackd commits the peer's connections into the kernel *first* (each with its ct mark,
so its ISP, and its NAT binding), then the fleet hears of the role (an event; from now on it may flush),
then a resync flushes what this node's own probes say must go.  Becoming backup (or fault): the fleet first
(it stops flushing: the primary and conntrackd own the connections), then conntrackd's steps.

Beside the helpers, the two daemons greet each other over the sync link (:mod:`wanlb.ha_peer`): the peer's role
and config, so that a split brain and two configs that disagree on marks are seen and shown on both nodes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from wanlb import ha_peer, view
from wanlb.config import Config
from wanlb.fleet import Emit, Event
from wanlb.ha_supervisor import HaNode, HelperState

if TYPE_CHECKING:
    from wanlb.daemon.executor import Daemon

log = logging.getLogger("wanlb.ha")


class Pair:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.node = HaNode(daemon.config)
        self._roles = asyncio.Lock()  # one role change at a time, in the order keepalived said them
        ha = daemon.config.ha
        assert ha is not None
        self.peer = ha_peer.PeerTracker(ha.node, ha.sync.interface)
        self._agree = ha_peer.agreement(daemon.config)
        self._sock: socket.socket | None = None
        self._bind_error: str | None = None
        self._greeter: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = self.daemon.config
        assert config.ha is not None
        await asyncio.to_thread(self.node.write, config)
        await asyncio.to_thread(self.node.prepare)
        self.node.listen(self._heard)
        self.node.start()
        self._greeter = asyncio.create_task(self._greet())
        log.info("ha: node %s (priority %d) started conntrackd and keepalived", config.ha.node, config.ha.priority)

    async def reconfigure(self, config: Config) -> None:
        """A reload: the helpers' files again; keepalived re-reads its own on SIGHUP (conntrackd's changes, the
        sync link's addresses, take effect at the next start)."""
        if config.ha is None:
            log.warning("ha: the ha section was removed: the helpers keep running until the next start")
            return
        await asyncio.to_thread(self.node.write, config)
        self._agree = ha_peer.agreement(config)
        self._close()  # the sync link's address may have changed: the next hello binds again
        await self.node.reload_keepalived()

    async def stop(self) -> None:
        if self._greeter is not None:
            self._greeter.cancel()
        self._close()
        await self.node.stop()

    async def _greet(self) -> None:
        """A hello to the peer every HELLO_INTERVAL, and what its silence means (lost, split brain over)."""
        while True:
            self._send()
            self._emit(self.peer.tick(time.monotonic(), self.daemon.wall(), self.node.role or ""))
            await asyncio.sleep(ha_peer.HELLO_INTERVAL)

    def _send(self) -> None:
        """One hello; the socket bound first if it is not (the sync address may not be there yet)."""
        ha = self.daemon.config.ha
        if ha is None:
            return
        if self._sock is None:
            self._bind(ha.sync.address, ha.sync.port + ha_peer.HELLO_PORT_OFFSET)
        if self._sock is None:
            return
        hello = ha_peer.Hello(ha.node, self.node.role or "", ha.priority, self._agree)
        try:
            self._sock.sendto(ha_peer.encode(hello), (str(ha.sync.peer), ha.sync.port + ha_peer.HELLO_PORT_OFFSET))
        except (OSError, ha_peer.HelloError) as exc:  # (the link is down: the peer will call us lost, and we it)
            log.debug("ha: hello not sent: %s", exc)

    def _bind(self, address: object, port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((str(address), port))
        except OSError as exc:
            sock.close()
            if str(exc) != self._bind_error:
                log.warning("ha: cannot listen for the peer on %s:%d: %s (retrying)", address, port, exc)
            self._bind_error = str(exc)
            return
        self._bind_error = None
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        """Every datagram waiting (a bounded number per wakeup), each checked: only the peer's sync address
        may speak, and only in a valid hello; anything else is counted and changes nothing."""
        ha, sock = self.daemon.config.ha, self._sock
        if ha is None or sock is None:
            return
        for _ in range(16):
            try:
                raw, (source, _port) = sock.recvfrom(ha_peer.MAX_HELLO + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("ha: hello socket: %s", exc)
                return
            if source != str(ha.sync.peer):
                self.peer.rejected(f"a datagram from {source}, not the peer {ha.sync.peer}")
                continue
            try:
                hello = ha_peer.decode(raw)
            except ha_peer.HelloError as exc:
                self.peer.rejected(str(exc))
                continue
            now, wall = time.monotonic(), self.daemon.wall()
            self._emit(self.peer.heard(hello, now, wall, self.node.role or "", self._agree))

    def _emit(self, events: list[Event]) -> None:
        for event in events:
            level = logging.ERROR if event.status in ("started", "differs") else logging.WARNING
            log.log(level, "ha: %s %s: %s", event.event, event.status, event.reason)
        self.daemon.spawn_effects([Emit(e) for e in events])

    def _close(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

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
            self._send()  # the peer hears the new role now, not at the next hello
            self._emit(self.peer.tick(time.monotonic(), d.wall(), self.node.role or ""))

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
            peer=self._peer_view(),
        )

    def _peer_view(self) -> view.HaPeer:
        p, now = self.peer, time.monotonic()
        hello = p.hello
        return view.HaPeer(
            node=hello.node if hello else None,
            state="up" if p.up(now) else ("lost" if hello else "never heard"),
            role=hello.role if hello else None,
            priority=hello.priority if hello else None,
            heard_seconds_ago=None if p.heard_at is None else round(now - p.heard_at, 2),
            split_brain=p.split_brain,
            config_differences=p.mismatch,
            bad_hellos=p.bad_hellos,
            last_bad_hello=p.last_bad,
        )


def _helper(state: HelperState) -> view.HaHelper:
    return view.HaHelper(state.running, state.pid, state.starts, state.last_exit, state.missing)


def _oper_state(interface: str) -> str:
    """The sync link as the kernel says (``up``/``down``), or ``missing``: a 20-byte sysfs read."""
    try:
        return Path(f"/sys/class/net/{interface}/operstate").read_text()[:20].strip() or "unknown"
    except OSError:
        return "missing"
