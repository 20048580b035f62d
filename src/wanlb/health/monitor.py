"""Per-ISP probing loop: rounds of probes out, each handed to the daemon as it finishes.

A round starts every ``interval`` whether or not earlier rounds have finished,
so a dead link is counted at the probing rate, not at the (longer) timeout
rate.  A round sends one probe to every target at once and waits for every
answer or the timeout; it passes when at least ``quorum`` targets answered.
(Waiting for all of them, rather than stopping at the quorum, is what makes
the reported loss the real probe loss.)
Each finished round goes to ``on_round`` at once, which feeds the ISP's
health machine in :class:`wanlb.fleet.Fleet` (the monitor decides nothing).
That call is synchronous: the daemon starts any failover in a task of its
own, so cancelling a monitor (a reload) can never cut a failover short.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wanlb.config import NEXT_HOP_TARGETS, Config, HealthConfig, IspConfig
from wanlb.health.probes import Egress, IcmpPinger, ProbeFailed, dns_probe, http_probe, tcp_probe
from wanlb.tasks import log_crash
from wanlb.uplink import Uplink, assumed
from wanlb.view import Probes

if TYPE_CHECKING:
    from wanlb.fleet import Fleet

log = logging.getLogger("wanlb.health")

DEFAULT_PORTS = {"tcp": None, "http": 80, "https": 443, "dns": 53}


class Prober:
    """Runs one probe of the configured method against one target, through one ISP."""

    def __init__(self, health: HealthConfig, egress: Egress):
        self.health = health
        self.egress = egress
        self.port = health.port or DEFAULT_PORTS.get(health.method)
        self._pinger = IcmpPinger(egress) if health.method == "icmp" else None

    async def probe(self, target: str) -> float:
        h = self.health
        if self._pinger is not None:
            return await self._pinger.ping(target)
        assert self.port is not None  # config validation requires a port for tcp
        if h.method == "tcp":
            return await tcp_probe(self.egress, target, self.port)
        if h.method in ("http", "https"):
            return await http_probe(self.egress, target, self.port, h.method == "https", h.http_path, h.http_status)
        return await dns_probe(self.egress, target, self.port, h.dns_name)

    def close(self) -> None:
        if self._pinger is not None:
            self._pinger.close()


@dataclass(frozen=True)
class RoundResult:
    ok: bool
    answered: int
    latency: float | None  # median round trip of the answers, seconds
    loss: float  # fraction of the probes that got no answer
    errors: dict[str, str]  # target → why it did not answer

    def describe_errors(self) -> str:
        return "; ".join(f"{t} {why}" for t, why in sorted(self.errors.items()))


RoundHandler = Callable[[str, RoundResult, int], None]  # (ISP, result, address family)


class IspMonitor:
    """Probes one ISP's targets of one address family forever, through its mark and interface."""

    def __init__(
        self,
        isp: IspConfig,
        mark: int,
        on_round: RoundHandler,
        clock: Callable[[], float] = time.monotonic,
        family: int = 4,
        uplink: Callable[[], Uplink] | None = None,
        interval: Callable[[], float] | None = None,
    ):
        self.isp = isp
        self.health = isp.health
        self.family = family
        self.targets = isp.health.targets_of(family)
        self.quorum = isp.health.quorum_of(family)
        self.mark = mark
        self.on_round = on_round
        self.clock = clock
        self.prober = Prober(isp.health, Egress(mark, isp.interface, family))
        # The ISP's uplink as last observed: what the target `gateway` means now, and whether there is an
        # interface to probe through at all (without one, rounds are skipped: nothing to send, nothing to learn).
        self.uplink = uplink or (lambda: assumed(isp))
        # How often rounds run now: ``health.interval``, or a standby ISP's sparser one while it is not in use
        # (the fleet says, :meth:`wanlb.fleet.Fleet.probe_interval`).
        self.interval = interval or (lambda: isp.health.interval)
        self.rounds = 0
        self.last: RoundResult | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """A tick every ``health.interval``; a round at the ticks where the current interval has passed since
        the last one (all of them, unless the ISP is a standby one that nothing uses): a standby ISP that
        becomes needed is probed at the full rate from the next tick on."""
        interval = self.health.interval
        next_at = self.clock()
        last: float | None = None
        try:
            while True:
                now = self.clock()
                if last is None or now - last >= self.interval() - interval / 2:
                    last = now
                    self.kick()
                next_at += interval
                delay = next_at - self.clock()
                if delay < 0:  # the loop fell behind (a stalled process): skip, don't burst
                    next_at = self.clock() + interval
                    delay = interval
                await asyncio.sleep(delay)
        finally:
            for task in list(self._inflight):
                task.cancel()
            self.prober.close()

    def kick(self) -> None:
        """A round now, outside the schedule: passive detection suspects the ISP and wants to know."""
        task = asyncio.create_task(self._round())
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _probe(self, target: str, errors: dict[str, str]) -> float | None:
        try:
            async with asyncio.timeout(self.health.timeout):
                return await self.prober.probe(target)
        except TimeoutError:
            errors[target] = f"no answer in {self.health.timeout * 1000:.0f} ms"
        except (ProbeFailed, OSError) as exc:
            errors[target] = str(exc)
        except Exception as exc:  # a probe bug must cost this probe, never the monitor
            log.exception("%s probe of %s via %s failed unexpectedly", self.health.method, target, self.isp.name)
            errors[target] = f"probe error: {exc!r}"
        return None

    async def probe_round(self) -> RoundResult:
        """Probe every target at once; each answers or times out (``gateway``: the next hop it has now)."""
        errors: dict[str, str] = {}
        link = self.uplink()
        results = await asyncio.gather(*(self._probe_target(t, link, errors) for t in self.targets))
        answers = [latency for latency in results if latency is not None]
        return RoundResult(
            ok=len(answers) >= self.quorum,
            answered=len(answers),
            latency=statistics.median(answers) if answers else None,
            loss=1.0 - len(answers) / len(results),
            errors=errors,
        )

    async def _probe_target(self, target: object, link: Uplink, errors: dict[str, str]) -> float | None:
        if target in NEXT_HOP_TARGETS:
            address = link.target(self.family)
            if address is None:
                errors[str(target)] = "no next hop to probe (none learned, or a device route without a peer)"
                return None
            return await self._probe(address, errors)
        return await self._probe(str(target), errors)

    async def _round(self) -> None:
        if self.uplink().problem == "no interface":
            return
        result = await self.probe_round()
        self.rounds += 1
        self.last = result
        self.on_round(self.isp.name, result, self.family)


class Monitors:
    """One :class:`IspMonitor` task per ISP and address family that has targets, restarted as a whole when
    the config changes (the fleet keeps the health state, so nothing is lost)."""

    def __init__(self, on_round: RoundHandler, monitor: type[IspMonitor] = IspMonitor) -> None:
        self.on_round = on_round
        self.monitor = monitor  # (tests give a stub: the real one opens raw sockets)
        self.running: dict[tuple[str, int], tuple[IspMonitor, asyncio.Task[None]]] = {}

    def start(self, config: Config, fleet: Fleet) -> None:
        """(Re)start the monitors ``config`` asks for; IPv6 targets only where the fleet keeps an IPv6 state."""
        self.stop()
        for isp in config.isps:
            for family in (4, 6):
                if not isp.health.targets_of(family) or (family == 6 and not fleet.own_ipv6(isp.name)):
                    continue
                monitor = self.monitor(isp, fleet.state.mark_of(isp.name), self.on_round, family=family,
                                       uplink=functools.partial(fleet.uplink, isp.name),
                                       interval=functools.partial(fleet.probe_interval, isp.name, family))  # fmt: skip
                task = asyncio.create_task(monitor.run())
                task.add_done_callback(log_crash)
                self.running[(isp.name, family)] = (monitor, task)

    def kick(self, name: str) -> None:
        """A round now for the ISP's IPv4 (or, without IPv4 targets, IPv6) probes."""
        for family in (4, 6):
            if (name, family) in self.running:
                self.running[(name, family)][0].kick()
                return

    def stop(self) -> None:
        for _monitor, task in self.running.values():
            task.cancel()
        self.running.clear()

    def probes(self) -> dict[tuple[str, int], Probes]:
        """What each monitor knows for status: its method, targets, rounds and last errors."""
        out = {}
        for key, (m, _task) in self.running.items():
            errors = m.last.errors if m.last else {}
            out[key] = Probes(m.health.method, tuple(str(t) for t in m.targets), m.rounds, errors, m.interval())
        return out
