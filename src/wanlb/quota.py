"""Data quotas: bytes counted per billing cycle, thresholds told once, and what an ISP over its limit may still
take.  Pure: counter readings and wall time in, the new counts and what to tell out.

An ISP's count is what the kernel counted on its WAN, both directions — the nft counters
``isp_<name>_rx``/``_tx`` the datapath keeps for every packet in and out of the interface, the gateway's own
probes included — read every few seconds by :mod:`wanlb.daemon.quotas`.  A count keeps the last reading it
added (``rx``/``tx``), so the bytes of any gap between two readings (a restart, a ``kill -9``) are added by
the next one: a kernel counter lower than that reading was reset (a reboot, ``stop --cleanup``, the ISP
removed and added back) and counted from zero.

Cycles are ``monthly`` — from midnight (local time) of ``start_day``, or of a shorter month's last day — or
``every`` N days from the start recorded when counting began.  A new cycle starts the count again; at each
``warn`` threshold, and at the limit, one event per cycle.  :func:`held_back` says what an ISP over its limit
may still take, as the statuses the planner balances by (:meth:`wanlb.fleet.Fleet.balancing`): ``standby``
NEW connections only while no other ISP is usable, ``last-resort`` only while no ISP is up (like a degraded
ISP), ``drop`` none.  Existing connections are never touched.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any

from wanlb.states import IspStatus

if TYPE_CHECKING:
    from wanlb.config import Config
    from wanlb.config.schema import QuotaConfig

VERSION = 1
MAX_BYTES = (1 << 63) - 1  # a count or a reading beyond this is absurd (nft counters are 64-bit, never near it)
# Seconds from 1970 (the year 5138) a cycle start may be, either way: one just before 1970 is not absurd (a
# gateway without a battery-backed clock boots in 1970, and west of Greenwich its midnight is in 1969).
MAX_TIME = 1e11
_ISP_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,14}")
DAY = 86400.0


@dataclass(frozen=True)
class Usage:
    """One ISP's count in its current cycle: what is persisted, and what status shows."""

    used: int = 0  # bytes counted in this cycle, both directions
    start: float = 0.0  # when the cycle began (wall time)
    end: float = 0.0  # when the next one begins
    rx: int | None = None  # the WAN counters' reading last added; None: none yet (the next one is the baseline)
    tx: int | None = None
    warned: tuple[float, ...] = ()  # the thresholds (percent) told this cycle
    limited: bool = False  # the limit was told: the ISP is held back until the cycle ends or a reset


@dataclass(frozen=True)
class Notice:
    """Something to tell about a quota: an event name (``quota-warning``, ``quota-limit``, ``quota-reset``)
    and its reason."""

    event: str
    reason: str


# --- cycles -------------------------------------------------------------------------------------------------


def _month_start(year: int, month: int, day: int, tz: tzinfo | None) -> float:
    """Midnight of ``day`` of the month, or of its last day if it is shorter (``start_day: 31`` in April)."""
    return datetime(year, month, min(day, calendar.monthrange(year, month)[1]), tzinfo=tz).timestamp()


def bounds(q: QuotaConfig, anchor: float | None, now: float, tz: tzinfo | None = None) -> tuple[float, float]:
    """The cycle ``now`` lies in: (start, end).  ``anchor``: the recorded start of an ``every`` cycle (None: it
    starts now).  ``tz``: the zone whose midnights start a month (None: the gateway's local time)."""
    if q.every is not None:
        period = q.every * DAY
        if anchor is None or now < anchor:
            start = now if anchor is None else anchor
        else:
            start = anchor + math.floor((now - anchor) / period) * period
        return start, start + period
    t = datetime.fromtimestamp(now, tz)
    year, month = t.year, t.month
    start = _month_start(year, month, q.start_day, tz)
    if start > now:
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
        start = _month_start(year, month, q.start_day, tz)
    following = (year, month + 1) if month < 12 else (year + 1, 1)
    return start, _month_start(*following, q.start_day, tz)


def describe(q: QuotaConfig) -> str:
    """``monthly from day 5`` or ``every 30 days``, for status."""
    if q.every is not None:
        return f"every {q.every} day{'s' if q.every != 1 else ''}"
    return f"monthly from day {q.start_day}" + (" (or the month's last)" if q.start_day > 28 else "")


# --- counting -----------------------------------------------------------------------------------------------


def counted(usage: Usage, rx: int, tx: int) -> Usage:
    """Add what the WAN counters counted since the last reading (the first reading is only the baseline); a
    counter below its last reading was reset and counted from zero, so all of it is new."""

    def delta(now: int, last: int | None) -> int:
        return 0 if last is None else now - last if now >= last else now

    used = min(MAX_BYTES, usage.used + delta(rx, usage.rx) + delta(tx, usage.tx))
    return replace(usage, used=used, rx=rx, tx=tx)


def step(
    q: QuotaConfig,
    usage: Usage | None,
    reading: tuple[int, int] | None,
    now: float,
    tz: tzinfo | None = None,
) -> tuple[Usage, list[Notice]]:
    """One look at a quota: a new cycle if one began (the count starts again), the reading added, each
    threshold and the limit told once per cycle.  ``usage`` None: counting begins now; ``reading`` None: the
    counters could not be read (the cycle still moves)."""
    notices: list[Notice] = []
    if usage is None:
        start, end = bounds(q, None, now, tz)
        usage = Usage(start=start, end=end)
    else:
        start, end = bounds(q, usage.start, now, tz)
        if start > usage.start:  # (the bytes of a reading that straddles the boundary count in the new cycle)
            why = f"a new cycle ({describe(q)}): {size(usage.used)} counted in the last one"
            notices.append(Notice("quota-reset", why))
            usage = replace(usage, used=0, warned=(), limited=False)
        elif start < usage.start:  # the clock went back (an RTC-less boot before NTP): the cycle stays
            start, end = bounds(q, usage.start, usage.start, tz)
        usage = replace(usage, start=start, end=end)
    if reading is not None:
        usage = counted(usage, *reading)
    return _told(q, usage, notices, tz)


def reset(q: QuotaConfig, usage: Usage | None, now: float, tz: tzinfo | None = None) -> tuple[Usage, Notice]:
    """``wanlb quota reset``: the count starts again from now (a topped-up or re-billed line); an ``every``
    cycle starts again now too (how a prepaid period is lined up), a monthly one stays on its calendar."""
    old = usage or Usage()
    start, end = bounds(q, None if q.every is not None else old.start, now, tz)
    fresh = Usage(0, start, end, old.rx, old.tx)
    why = f"reset by an operator: {size(old.used)} counted before"
    return fresh, Notice("quota-reset", why + (f"; a new {q.every}-day cycle from now" if q.every else ""))


def _told(q: QuotaConfig, usage: Usage, notices: list[Notice], tz: tzinfo | None) -> tuple[Usage, list[Notice]]:
    """The thresholds crossed and the limit reached (or lifted by a reload raising it), each told once."""
    warned = list(usage.warned)
    ends = when(usage.end, tz)
    for percent in q.warn:
        if percent not in warned and usage.used * 100 >= percent * q.limit:
            warned.append(percent)
            why = f"{percent:g}% of its quota used: {size(usage.used)} of {size(q.limit)}; the cycle ends {ends}"
            notices.append(Notice("quota-warning", why))
    over = usage.used >= q.limit
    if over and not usage.limited:
        why = f"reached its quota: {size(usage.used)} of {size(q.limit)}; {AT_LIMIT[q.at_limit]} until the cycle"
        notices.append(Notice("quota-limit", f"{why} ends ({ends}) or `wanlb quota reset`; its connections continue"))
    elif usage.limited and not over:
        why = f"{size(usage.used)} is below its new limit of {size(q.limit)}: it takes NEW connections again"
        notices.append(Notice("quota-reset", why))
    return replace(usage, warned=tuple(warned), limited=over), notices


AT_LIMIT = {
    "standby": "it takes NEW connections only while no other ISP is usable",
    "last-resort": "it takes NEW connections only while no ISP is up (like a degraded ISP)",
    "drop": "it takes no NEW connections",
}


def step_all(
    config: Config,
    usages: Mapping[str, Usage],
    readings: Mapping[str, tuple[int, int]],
    now: float,
    tz: tzinfo | None = None,
) -> tuple[dict[str, Usage], list[tuple[str, Notice]]]:
    """:func:`step` for every ISP with a quota (the counts of ISPs without one are dropped): the new counts and
    (ISP, notice) pairs in config order."""
    out: dict[str, Usage] = {}
    told: list[tuple[str, Notice]] = []
    for isp in config.isps:
        if isp.quota is not None:
            out[isp.name], notices = step(isp.quota, usages.get(isp.name), readings.get(isp.name), now, tz)
            told += [(isp.name, n) for n in notices]
    return out, told


# --- what an ISP over its limit may take -----------------------------------------------------------------------


def over(config: Config, usages: Mapping[str, Usage]) -> dict[str, str]:
    """ISP → its ``at_limit``, for each ISP whose count has reached its limit."""
    return {i.name: i.quota.at_limit for i in config.isps
            if i.quota is not None and i.name in usages and usages[i.name].used >= i.quota.limit}  # fmt: skip


def held_back(config: Config, usages: Mapping[str, Usage], statuses: Mapping[str, IspStatus]) -> dict[str, IspStatus]:
    """The statuses the planner balances by, with the ISPs over their quota held back: ``drop`` as disabled;
    ``last-resort`` as degraded (a last choice: any up ISP of a policy is preferred); ``standby`` as disabled
    while any other ISP is usable — the others' statuses as just held back, so two standby ISPs over their quota
    share the traffic when nothing else is left.  Unusable ISPs stay as they are."""
    out = dict(statuses)
    limited = {name: how for name, how in over(config, usages).items() if name in out and out[name].usable}
    for name, how in limited.items():
        if how == "drop":
            out[name] = IspStatus.DISABLED
        elif how == "last-resort" and out[name] == IspStatus.UP:
            out[name] = IspStatus.DEGRADED
    standby = {name for name, how in limited.items() if how == "standby"}
    if any(s.usable for name, s in out.items() if name not in standby):
        out.update(dict.fromkeys(standby, IspStatus.DISABLED))
    return out


# --- the file's content -------------------------------------------------------------------------------------


def to_json(usages: Mapping[str, Usage], boot: str) -> dict[str, Any]:
    """The persisted form: each ISP's count, cycle start, last readings, what was told; ``boot`` says which
    boot the readings belong to (after a reboot the counters start from zero)."""
    isps = {name: {"used": u.used, "start": u.start, "rx": u.rx, "tx": u.tx, "warned": list(u.warned),
                   "limited": u.limited} for name, u in usages.items()}  # fmt: skip
    return {"version": VERSION, "boot": boot, "isps": isps}


def parse(data: Any, boot: str) -> dict[str, Usage]:
    """Decoded JSON → the counts, checked field by field (ValueError says which is wrong: a negative or absurd
    number, a wrong type); unknown keys are ignored (a newer wanlb's).  Readings of another boot than ``boot``
    are from counters that have since started from zero."""
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ValueError(f"not a version {VERSION} quota file")
    isps = data.get("isps")
    if not isinstance(isps, dict) or len(isps) > 64:
        raise ValueError("isps must be an object of at most 64 ISPs")
    same_boot = data.get("boot") == boot
    out = {}
    for name, item in isps.items():
        if not isinstance(name, str) or _ISP_NAME_RE.fullmatch(name) is None:
            raise ValueError(f"{str(name)[:20]!r} is not an ISP name")
        if not isinstance(item, dict):
            raise ValueError(f"{name}: must be an object")
        start = item.get("start")
        if type(start) not in (int, float) or not -MAX_TIME <= start <= MAX_TIME:
            raise ValueError(f"{name}.start must be a time (seconds since 1970)")
        warned = item.get("warned", [])
        if not isinstance(warned, list) or len(warned) > 8 or any(type(p) not in (int, float) or not 0 < p < 100
                                                                  for p in warned):  # fmt: skip
            raise ValueError(f"{name}.warned must be a list of percentages")
        limited = item.get("limited", False)
        if not isinstance(limited, bool):
            raise ValueError(f"{name}.limited must be true or false")
        rx, tx = (_count(item.get(k), f"{name}.{k}", True) for k in ("rx", "tx"))
        if not same_boot:  # the kernel's counters started from zero since these readings
            rx, tx = (None if r is None else 0 for r in (rx, tx))
        out[name] = Usage(_count(item.get("used"), f"{name}.used"), float(start), 0.0, rx, tx,
                          tuple(float(p) for p in warned), limited)  # fmt: skip
    return out


def _count(value: Any, what: str, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if type(value) is not int or not 0 <= value <= MAX_BYTES:
        raise ValueError(f"{what} must be a whole number of bytes, 0..2^63-1")
    return value


def restarted(usages: Mapping[str, Usage]) -> dict[str, Usage]:
    """The counts with their readings as of counters that start from zero (the table is deleted on the way
    out: ``stop --cleanup``), so the next start counts all they hold."""
    return {name: replace(u, rx=None if u.rx is None else 0, tx=None if u.tx is None else 0)
            for name, u in usages.items()}  # fmt: skip


# --- for people -------------------------------------------------------------------------------------------------


def size(n: float) -> str:
    """Binary units, as quotas are written: ``512 B``, ``3.2 MiB``, ``20.0 GiB``."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        n /= 1024
        if n < 1024 or unit == "EiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def when(t: float, tz: tzinfo | None = None) -> str:
    """``2024-07-05 00:00`` (local time unless ``tz``)."""
    return datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d %H:%M")
