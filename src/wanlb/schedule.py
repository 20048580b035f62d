"""Schedules: which rules and policies are in effect at an instant, and when that next changes.  Pure.

A ``when`` (:class:`wanlb.config.WhenConfig`) is a weekly window on one time zone's wall clock.  Whether it is
open is a function of the config and the instant alone (:func:`inactive`), so the daemon is level-triggered
here too: every reconcile plans from the clock, a timer wakes it at the next boundary (:func:`next_change`),
and the 5 s resync repairs a missed wake-up or a clock that jumped.

* A rule outside its window is skipped: it takes no place in ``from_lan``'s lookups (its chain, counter and
  domain sets stay), so a NEW connection falls through to the rules after it.
* A policy outside its window is off: every rule that sends to it is skipped as well (the policy's chain and
  sticky sets stay).  ``default`` has no window.
* Established connections keep their ISP: their ct mark is restored before any rule is looked at, and
  nothing is flushed.

Wall-clock semantics across DST: a window is open while the zone's clock *reads* inside it.  When clocks
spring forward, a boundary in the skipped hour takes effect at the jump (a window from 02:30 opens at 03:00),
and a window wholly inside it does not happen that day; when they fall back, the repeated hour is inside a
window both times it is read.  :func:`next_flip` finds every such instant exactly, jumps included.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo

from wanlb.config import DAY_SECONDS, WEEKDAYS, Config, RuleConfig, WhenConfig

HORIZON_DAYS = 8  # a weekly window flips within a week and a day (one that wraps midnight), or never
_ZONE_STEP = 6 * 3600  # a zone's offset is sampled this often: no zone changes its offset twice within it


@dataclass(frozen=True)
class Inactive:
    """What the schedules switch off at one instant (the plan skips these rules; status shows both)."""

    rules: frozenset[str] = frozenset()  # outside their own window, or sending to a policy outside its window
    policies: frozenset[str] = frozenset()  # outside their window


ALL_ON = Inactive()
"""Nothing switched off: every rule and policy in effect (no schedule, or none applied)."""


@dataclass(frozen=True)
class Switch:
    """A scheduled rule or policy at one instant: in effect or not, and when that changes (None: never)."""

    active: bool
    changes_at: float | None


@functools.cache
def system_zone() -> tzinfo:
    """The system's time zone, as the C library would take it: ``TZ``, else /etc/localtime, else UTC.

    Read once per process: a daemon follows a changed system zone from its next start."""
    name = os.environ.get("TZ", "").removeprefix(":")
    try:
        if name:
            return ZoneInfo(name)
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f)
    except (OSError, ValueError, KeyError):  # an unknown or unreadable zone: glibc falls back to UTC as well
        return ZoneInfo("UTC")


def zone(when: WhenConfig) -> tzinfo:
    return ZoneInfo(when.tz) if when.tz else system_zone()


def is_open(when: WhenConfig, now: float) -> bool:
    """Whether the zone's wall clock reads inside the window at ``now`` (Unix time).  ``[from, to)``: the window
    is open at its start and closed at its end."""
    local = datetime.fromtimestamp(now, zone(when))
    day = local.weekday()
    second = local.hour * 3600 + local.minute * 60 + local.second
    start, end = when.time or (0, DAY_SECONDS)
    days = when.weekdays
    if start < end:
        return day in days and start <= second < end
    return (day in days and second >= start) or ((day - 1) % 7 in days and second < end)  # across midnight


def next_flip(when: WhenConfig, now: float) -> float | None:
    """The first instant after ``now`` at which :func:`is_open` changes; None if it never does (every day)."""
    state = is_open(when, now)
    for at in _candidates(when, now):
        if is_open(when, at) != state:
            return at
    return None


def _candidates(when: WhenConfig, now: float) -> list[float]:
    """Every instant after ``now`` (within the horizon) at which the window can open or close, in order: each
    boundary as the clock reads it (both readings of a repeated hour) and each jump of the zone's offset (a
    boundary in a skipped hour is crossed at the jump)."""
    tz = zone(when)
    start, end = when.time or (0, DAY_SECONDS)
    first = datetime.fromtimestamp(now, tz).date() - timedelta(days=1)
    today = int(now) // DAY_SECONDS
    out = {float(t) for n in range(HORIZON_DAYS + 2) for t in _offset_changes(tz, today + n)}
    for n in range(HORIZON_DAYS + 2):
        for boundary in (start, end):
            wall = _wall(first + timedelta(days=n), boundary)
            out.update(wall.replace(tzinfo=tz, fold=fold).timestamp() for fold in (0, 1))
    return sorted(t for t in out if t > now)


def _wall(day: date, second: int) -> datetime:
    """``second`` seconds after midnight of ``day`` on the wall clock (86400: the next day's midnight)."""
    return datetime.combine(day, time()) + timedelta(seconds=second)


@functools.lru_cache(maxsize=4096)
def _offset_changes(tz: tzinfo, day: int) -> tuple[int, ...]:
    """The instants (whole seconds, as zone transitions are) within UTC day ``day`` (days since the epoch) at
    which ``tz``'s UTC offset changes: zoneinfo does not list its transitions, so sample and bisect."""
    out = []
    lo = day * DAY_SECONDS
    before = _offset(tz, lo)
    for t in range(lo + _ZONE_STEP, lo + DAY_SECONDS + 1, _ZONE_STEP):
        after = _offset(tz, t)
        if after != before:
            a, b = t - _ZONE_STEP, t  # offset(a) is `before`, offset(b) is not: bisect to the first second
            while b - a > 1:
                mid = (a + b) // 2
                a, b = (mid, b) if _offset(tz, mid) == before else (a, mid)
            out.append(b)
        before = after
    return tuple(out)


def _offset(tz: tzinfo, t: int) -> timedelta | None:
    return datetime.fromtimestamp(t, tz).utcoffset()


def rule_whens(config: Config, rule: RuleConfig) -> tuple[WhenConfig, ...]:
    """The windows a rule is in effect within: its own and its policy's (a rule is on while all are open)."""
    policy = config.policies.get(rule.policy) if rule.policy is not None else None
    return tuple(w for w in (rule.when, policy.when if policy is not None else None) if w is not None)


def inactive(config: Config, now: float) -> Inactive:
    """What the schedules switch off at ``now`` (Unix time); each distinct window is looked at once."""
    whens = {r.when for r in config.rules} | {p.when for p in config.policies.values()}
    closed = {w for w in whens if w is not None and not is_open(w, now)}
    policies = frozenset(name for name, p in config.policies.items() if p.when in closed)
    rules = frozenset(r.name for r in config.rules if r.when in closed or r.policy in policies)
    return Inactive(rules, policies)


def next_change(config: Config, now: float) -> float | None:
    """The next boundary of any window in the config (the daemon reconciles then); None if there is none.

    Each distinct window is computed once, so 10,000 rules that share a few windows cost a few."""
    whens = {r.when for r in config.rules if r.when is not None}
    whens |= {p.when for p in config.policies.values() if p.when is not None}
    flips = [t for w in whens if (t := next_flip(w, now)) is not None]
    return min(flips, default=None)


@functools.lru_cache(maxsize=1024)
def switch(whens: tuple[WhenConfig, ...], now: float) -> Switch:
    """In effect at ``now`` while every one of ``whens`` is open, and the next instant that changes.  Cached: a
    status asks it for every scheduled rule at one instant, and rules share their windows."""
    state = all(is_open(w, now) for w in whens)
    cursor = now
    while cursor < now + HORIZON_DAYS * DAY_SECONDS:
        flips = [t for w in whens if (t := next_flip(w, cursor)) is not None]
        if not flips:
            break
        cursor = min(flips)
        if all(is_open(w, cursor) for w in whens) != state:
            return Switch(state, cursor)
    return Switch(state, None)


def describe(when: WhenConfig) -> str:
    """A window for people, as status shows it: ``mon-fri 08:00-18:00 Europe/Berlin``."""
    days = _days_text(when.weekdays) if when.days else "every day"
    hours = "" if when.time is None else " " + "-".join(_clock_text(s) for s in when.time)
    return f"{days}{hours} {when.tz or 'local time'}"


def _days_text(days: frozenset[int]) -> str:
    """``mon-fri``, ``sat,sun``, ``mon,wed,fri``: runs of three or more as ranges."""
    runs: list[list[int]] = []
    for d in sorted(days):
        if runs and runs[-1][-1] == d - 1:
            runs[-1].append(d)
        else:
            runs.append([d])
    parts = [f"{WEEKDAYS[r[0]]}-{WEEKDAYS[r[-1]]}" if len(r) > 2 else ",".join(WEEKDAYS[d] for d in r) for r in runs]
    return ",".join(parts)


def _clock_text(second: int) -> str:
    hours, rest = divmod(second, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}" + (f":{seconds:02d}" if seconds else "")
