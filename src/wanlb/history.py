"""The daemon's record of ISP events: the history status shows, the log line, the metrics, SSE and hooks.

The fleet decides what happened (:class:`wanlb.fleet.Event`); the daemon, once it has carried the event's
batch out, hands it here with what carrying it out gave (an apply error, how many connections a flush
deleted, how long it took).  :meth:`EventLog.record` turns that into the read model's
:class:`wanlb.view.Event`, keeps the last :data:`HISTORY`, logs one line (``from → to`` as status shows
it), counts transitions once per event, publishes it to the API's listeners and starts the hooks —
never waited for (they run as asynchronous subprocesses, one ISP's in order).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from wanlb.config import Config
from wanlb.fleet import Event
from wanlb.hooks import run_hooks
from wanlb.metrics import Metrics, family_label
from wanlb.view import Event as EventView
from wanlb.view import to_json

log = logging.getLogger("wanlb.daemon")

HISTORY = 200


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


class EventLog:
    def __init__(self, metrics: Metrics, spawn: Callable[[Coroutine[Any, Any, Any]], None]) -> None:
        self.metrics = metrics
        self.spawn = spawn
        self.events: deque[EventView] = deque(maxlen=HISTORY)
        self.publish: Callable[[str, Any], None] | None = None  # the API's SSE hub, when it runs
        self._hook_order: dict[str, asyncio.Lock] = {}

    def record(
        self,
        config: Config,
        event: Event,
        error: str | None,
        flushed: int | None,
        decided: float,
        applied: float | None,
        now: float,
    ) -> EventView:
        """One event handled: ``decided`` when the fleet decided it, ``applied`` when the kernel had the
        change, ``now`` (wall times)."""
        level = logging.WARNING if event.event in ("down", "removed", "replaced", "quota-limit") else logging.INFO
        tag = str(event.family) if event.family else ""  # the wire's "4", "6" or "" (both)
        family = f" IPv{event.family}" if event.family else ""
        if event.old is not None and event.old != event.status:  # a transition: from → to, as status shows it
            log.log(level, "isp %s%s %s: %s → %s (%s)", event.isp, family, event.event, event.old, event.status,
                    event.reason)  # fmt: skip
        else:  # news about an ISP whose state stays (gateway, address), or one just added
            log.log(level, "isp %s%s %s (%s): %s", event.isp, family, event.event, event.status, event.reason)
        if event.event == "role":  # this HA node's role, not an ISP's state
            self.metrics.roles.labels(event.status).inc()
        elif event.event in ("suspected", "cleared"):  # passive detection: the state stays "up"
            self.metrics.suspicions.labels(event.isp, event.event).inc()
        elif event.isp and event.status != event.old:  # (the HA pair's own events have no ISP)
            self.metrics.transitions.labels(event.isp, family_label(event.family), event.status).inc()
        if event.isp and event.status in ("down", "disabled") and event.old in ("up", "degraded"):
            self.metrics.failovers.labels(event.isp, family_label(event.family)).inc()
        view = EventView(
            time=event.at,
            isp=event.isp,
            event=event.event,
            family=tag,
            status=event.status,
            from_=event.old,
            reason=event.reason,
            gateway=event.gateway,
            loss_percent=event.loss_percent,
            latency_ms=event.latency_ms,
            flushed=flushed,
            error=error,
            applied_ms=_ms(applied - decided) if applied is not None else None,
            done_ms=_ms(now - decided),
        )
        self.events.append(view)
        if self.publish is not None:
            self.publish("event", to_json(view))
        if config.hooks:
            env = {
                "WANLB_ISP": event.isp,
                "WANLB_EVENT": event.event,
                "WANLB_STATUS": event.status,
                "WANLB_INTERFACE": event.interface,
                "WANLB_FAMILY": tag,  # "4" or "6" when the ISP has health per family, else ""
                "WANLB_GATEWAY": event.gateway,  # its next hop then: an address, "device route" or "none"
                "WANLB_REASON": event.reason[:1000],
            }
            order = self._hook_order.setdefault(event.isp, asyncio.Lock())
            self.spawn(run_hooks(config.hooks, env, config.hook_timeout, order))
        return view
