"""The daemon's history of each ISP: a day of samples every 10 s in fixed-size arrays (pure, bounded).

The dashboard's charts used to know only what the open tab had seen.  The daemon samples the read model
every :data:`INTERVAL` seconds (:meth:`Trends.record`) and keeps the last :data:`CAPACITY` samples per ISP
— state, live connections, probe RTT and loss, bytes per second in and out — so a fresh tab shows the last
day, as a router's RRD graphs do.  Memory is fixed when an ISP first appears: 21 bytes a sample (float32
values, a 32-bit count, a one-byte state), 181 KB an ISP for a day; 16 ISPs take 2.9 MB, the 64 a config
may have 11.6 MB.  It lives in the daemon's memory: a reload keeps it, a restart starts it empty.

An ISP missing from a sample (removed by a reload) is dropped with its history; one that appears (added, or
renamed — a new name is a new ISP) starts with holes before its first sample.  Time is passed in.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from wanlb.view import Status

INTERVAL = 10.0  # seconds between samples
CAPACITY = 8640  # samples kept: a day at INTERVAL
STATES = ("", "up", "degraded", "down", "disabled")  # the state byte: 0 is no sample (the ISP did not exist)
_MAX_COUNT = 2**32 - 1
NAN = math.nan


@dataclass(frozen=True)
class Series:
    """One ISP's samples, aligned with :attr:`History.times`; ``None`` where there is no value."""

    status: tuple[str | None, ...] = ()
    connections: tuple[int | None, ...] = ()
    rtt_ms: tuple[float | None, ...] = ()
    loss_percent: tuple[float | None, ...] = ()
    rx_bytes_per_second: tuple[int | None, ...] = ()
    tx_bytes_per_second: tuple[int | None, ...] = ()


@dataclass(frozen=True)
class History:
    """The samples after some time, oldest first (the API's ``/api/v1/history``)."""

    interval_seconds: float = INTERVAL
    capacity: int = CAPACITY
    times: tuple[float, ...] = ()
    isps: Mapping[str, Series] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        """The wire format (what :func:`wanlb.view.to_json` gives, without walking a day of values one by one)."""
        return {
            "interval_seconds": self.interval_seconds,
            "capacity": self.capacity,
            "times": list(self.times),
            "isps": {name: {f.name: list(getattr(s, f.name)) for f in fields(Series)} for name, s in self.isps.items()},
        }


class _Columns:
    """One ISP's ring of samples, allocated once at full size."""

    def __init__(self, capacity: int) -> None:
        self.state = array("B", bytes(capacity))
        self.connections = array("I", bytes(4 * capacity))
        self.rtt = array("f", [NAN]) * capacity
        self.loss = array("f", [NAN]) * capacity
        self.rx = array("f", [NAN]) * capacity
        self.tx = array("f", [NAN]) * capacity
        self.last: tuple[float, int | None, int | None] | None = None  # (time, bytes rx, bytes tx) for rates


class Trends:
    """The last ``capacity`` samples of every ISP the read model shows."""

    def __init__(self, capacity: int = CAPACITY, interval: float = INTERVAL) -> None:
        self.capacity = capacity
        self.interval = interval
        self._times = array("d", [NAN]) * capacity
        self._head = 0  # the slot the next sample goes to
        self._size = 0
        self._isps: dict[str, _Columns] = {}

    def copy(self) -> Trends:
        """A copy to read in a worker thread while sampling goes on (memory copies: under a millisecond)."""
        out = Trends(0, self.interval)
        out.capacity, out._head, out._size, out._times = self.capacity, self._head, self._size, self._times[:]
        for name, c in self._isps.items():
            copied = out._isps[name] = _Columns(0)
            for column in ("state", "connections", "rtt", "loss", "rx", "tx"):
                setattr(copied, column, getattr(c, column)[:])
        return out

    def record(self, now: float, status: Status) -> None:
        """One sample at wall time ``now``: every ISP of ``status``; ISPs it no longer has are forgotten."""
        slot = self._head
        self._times[slot] = now
        names = {isp.name for isp in status.isps}
        for gone in [n for n in self._isps if n not in names]:
            del self._isps[gone]
        for isp in status.isps:
            cols = self._isps.get(isp.name)
            if cols is None:
                cols = self._isps[isp.name] = _Columns(self.capacity)
            cols.state[slot] = STATES.index(isp.status) if isp.status in STATES else 0
            cols.connections[slot] = max(0, min(_MAX_COUNT, status.conn_counts.get(isp.name, 0)))
            health = isp.health
            cols.rtt[slot] = _value(health.latency_ms if health.monitored else None)
            cols.loss[slot] = _value(health.loss_percent if health.monitored else None)
            last = cols.last
            cols.rx[slot] = _rate(last[0], last[1], now, isp.bytes_rx) if last else NAN
            cols.tx[slot] = _rate(last[0], last[2], now, isp.bytes_tx) if last else NAN
            cols.last = (now, isp.bytes_rx, isp.bytes_tx)
        self._head = (slot + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)

    def series(self, since: float) -> History:
        """The samples taken after ``since`` (a Unix time; 0 for all), oldest first, at most ``capacity``.

        A day of 16 ISPs takes about 0.1 s: the daemon reads a :meth:`copy` in a worker thread."""
        if not math.isfinite(since) or since < 0:
            raise ValueError(f"since must be a Unix time (seconds, ≥ 0), not {since!r}")
        times = self._ordered(self._times)
        first = next((k for k, t in enumerate(times) if t > since), len(times))
        isps = {
            name: Series(
                status=tuple(STATES[s] or None for s in self._ordered(c.state)[first:]),
                connections=tuple(
                    n if s else None
                    for n, s in zip(self._ordered(c.connections)[first:], self._ordered(c.state)[first:], strict=True)
                ),
                rtt_ms=tuple(None if v != v else round(v, 2) for v in self._ordered(c.rtt)[first:]),
                loss_percent=tuple(None if v != v else round(v, 1) for v in self._ordered(c.loss)[first:]),
                rx_bytes_per_second=tuple(None if v != v else round(v) for v in self._ordered(c.rx)[first:]),
                tx_bytes_per_second=tuple(None if v != v else round(v) for v in self._ordered(c.tx)[first:]),
            )  # (v != v: NaN, the hole)
            for name, c in self._isps.items()
        }
        return History(self.interval, self.capacity, tuple(times[first:]), isps)

    def _ordered(self, column: array[Any]) -> list[Any]:
        """A column's samples, oldest first."""
        if self._size < self.capacity:
            return column[: self._size].tolist()
        return (column[self._head :] + column[: self._head]).tolist()


def _value(v: float | None) -> float:
    return NAN if v is None else v


def _rate(t0: float, b0: int | None, t1: float, b1: int | None) -> float:
    """Bytes per second between two counter readings; a hole if either is missing or the counter went back."""
    if b0 is None or b1 is None or b1 < b0 or t1 <= t0:
        return NAN
    return (b1 - b0) / (t1 - t0)
