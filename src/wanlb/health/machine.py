"""Per-ISP health state machine: probe rounds in, status transitions out.  Pure, sans-I/O.

Time is passed in by the caller (``now`` in seconds, any monotonic origin), so
tests drive it with simulated time and the daemon with ``time.monotonic()``.

* ``down_after`` consecutive failed rounds → DOWN; ``up_after`` consecutive good
  rounds → UP again.
* Quality (optional): over the last ``window`` rounds, probe loss above ``max_loss`` or
  mean latency above ``max_latency`` → DEGRADED; back to UP only once both are
  within the stricter ``recover_*`` limits (hysteresis, so a link hovering at the
  limit does not flap).
* Flap damping: each DOWN within ``flap_window`` of the previous one doubles a
  hold-down period (from ``hold_base`` up to ``hold_max``) during which the ISP
  stays DOWN however good its rounds are.
* Link: a WAN that loses carrier or is set down — or whose uplink is missing
  a piece: its interface, its address, its learned next hop — is DOWN at once
  (no need to wait for probes); when it comes back, probes must prove it (an
  ISP nothing probes is UP at once).
* Admin: ``disable`` drains an ISP (DISABLED) whatever its probes say.
  Probing goes on meanwhile, so ``enable`` decides at once from what the
  probes saw: UP if the last ``up_after`` rounds passed, DOWN if it is failing
  or its link is down, otherwise DOWN until it earns ``up_after`` good rounds
  (an ISP nothing probes is UP at once).
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

from wanlb.states import IspStatus


@dataclass(frozen=True)
class HealthParams:
    down_after: int = 3
    up_after: int = 5
    window: int = 20
    max_loss: float | None = None  # percent
    max_latency: float | None = None  # seconds
    recover_loss: float | None = None
    recover_latency: float | None = None
    flap_window: float = 60.0
    hold_base: float = 5.0
    hold_max: float = 300.0


@dataclass(frozen=True)
class Transition:
    old: IspStatus
    new: IspStatus
    at: float
    reason: str


@dataclass(frozen=True)
class Quality:
    loss_percent: float
    latency: float | None  # mean of answered probes in the window, seconds
    jitter: float | None  # mean absolute difference of consecutive latencies, seconds


class HealthMachine:
    def __init__(self, params: HealthParams, initial: IspStatus = IspStatus.UP):
        self.params = params
        self.status = initial
        self._fails = 0
        self._goods = 0
        self._rounds: deque[tuple[bool, float | None, float]] = deque(maxlen=params.window)
        self._last_down: float | None = None
        self._hold = 0.0
        self.hold_until = 0.0
        self.disabled = initial == IspStatus.DISABLED
        self.link_down = False

    # --- observations ------------------------------------------------------------------

    def quality(self) -> Quality:
        if not self._rounds:
            return Quality(0.0, None, None)
        lost = sum(loss for _, _, loss in self._rounds)
        latencies = [lat for ok, lat, _ in self._rounds if ok and lat is not None]
        mean = sum(latencies) / len(latencies) if latencies else None
        diffs = [abs(b - a) for a, b in itertools.pairwise(latencies)]
        jitter = sum(diffs) / len(diffs) if diffs else None
        return Quality(100.0 * lost / len(self._rounds), mean, jitter)

    def _quality_bad(self, q: Quality, loss_limit: float | None, latency_limit: float | None) -> str | None:
        if loss_limit is not None and q.loss_percent > loss_limit:
            return f"loss {q.loss_percent:.0f}% > {loss_limit:g}%"
        if latency_limit is not None and q.latency is not None and q.latency > latency_limit:
            return f"latency {q.latency * 1000:.0f} ms > {latency_limit * 1000:.0f} ms"
        return None

    def _move(self, new: IspStatus, now: float, reason: str) -> Transition | None:
        if new == self.status:
            return None
        old, self.status = self.status, new
        if new == IspStatus.DOWN:
            self._damp(now)
        return Transition(old, new, now, reason)

    def _damp(self, now: float) -> None:
        p = self.params
        flapping = self._last_down is not None and now - self._last_down < p.flap_window
        self._hold = min(p.hold_max, self._hold * 2 if self._hold else p.hold_base) if flapping else 0.0
        self.hold_until = now + self._hold
        self._last_down = now

    def round(self, now: float, ok: bool, latency: float | None = None, loss: float | None = None) -> Transition | None:
        """Feed the result of one probe round.

        ``ok`` = the quorum answered; ``latency`` = the round's typical round trip;
        ``loss`` = the fraction of the round's probes that got no answer (default:
        0 if ok else 1).  Quality limits use the probe loss, so one lost probe of
        two counts as 50 % even though the round passed.
        """
        self._rounds.append((ok, latency, (0.0 if ok else 1.0) if loss is None else loss))
        if ok:
            self._goods += 1
            self._fails = 0
        else:
            self._fails += 1
            self._goods = 0
        if self.disabled or self.link_down:
            return None
        p = self.params
        if self.status in (IspStatus.UP, IspStatus.DEGRADED) and self._fails >= p.down_after:
            return self._move(IspStatus.DOWN, now, f"{self._fails} failed rounds")
        q = self.quality()
        if self.status == IspStatus.DOWN:
            if self._goods < p.up_after:
                return None
            if now < self.hold_until:
                return None  # damped: still held down after flapping
            bad = self._quality_bad(q, p.max_loss, p.max_latency)
            return self._move(IspStatus.DEGRADED if bad else IspStatus.UP, now, bad or f"{self._goods} good rounds")
        if self.status == IspStatus.UP:
            bad = self._quality_bad(q, p.max_loss, p.max_latency)
            return self._move(IspStatus.DEGRADED, now, bad) if bad else None
        # DEGRADED: recover only within the stricter limits.
        recover_loss = p.recover_loss if p.recover_loss is not None else p.max_loss
        recover_latency = p.recover_latency if p.recover_latency is not None else p.max_latency
        if self._quality_bad(q, recover_loss, recover_latency) is None:
            return self._move(IspStatus.UP, now, "quality recovered")
        return None

    @property
    def failing(self) -> bool:
        """The last ``down_after`` rounds failed (counted even while disabled)."""
        return self._fails >= self.params.down_after

    @property
    def broken(self) -> bool:
        """Its link is down or its probes are failing: its connections cannot work (flush them)."""
        return self.link_down or self.failing

    def link(self, now: float, usable: bool, probed: bool, why: str = "link down") -> Transition | None:
        """The WAN's uplink became unusable (DOWN at once, ``why``: link down, no interface, waiting for
        gateway, ...) or usable again (probes decide; unprobed: UP)."""
        if usable == (not self.link_down):
            return None
        self.link_down = not usable
        if self.disabled:
            return None
        if not usable:
            return self._move(IspStatus.DOWN, now, why)
        self._goods = 0
        if not probed and self.status == IspStatus.DOWN:
            return self._move(IspStatus.UP, now, "link up (not monitored)")
        return None

    # --- admin -----------------------------------------------------------------------

    def disable(self, now: float) -> Transition | None:
        self.disabled = True
        return self._move(IspStatus.DISABLED, now, "disabled by admin")

    def enable(self, now: float, probed: bool = True) -> Transition | None:
        """Back from a drain, judged by what the probes saw meanwhile (see the module docstring)."""
        if not self.disabled:
            return None
        self.disabled = False
        p = self.params
        if self.link_down:
            new, why = IspStatus.DOWN, "link down"
        elif not probed:
            new, why = IspStatus.UP, "not monitored"
        elif self.failing:
            new, why = IspStatus.DOWN, f"{self._fails} failed rounds"
        elif self._goods >= p.up_after:
            bad = self._quality_bad(self.quality(), p.max_loss, p.max_latency)
            new, why = (IspStatus.DEGRADED, bad) if bad else (IspStatus.UP, f"{self._goods} good rounds")
        else:
            new, why = IspStatus.DOWN, f"waiting for {p.up_after - self._goods} more good rounds"
        old, self.status = self.status, new
        return Transition(old, new, now, f"enabled by admin; {why}")
