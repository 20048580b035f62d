"""``wanlb top``: a live full-screen view of the daemon, read over the control socket once a second.

The pure parts — rates from two ``status`` answers, sparklines, number formatting and the screen built
from the answers (:class:`TopModel` → :func:`build_screen`) — are apart from the terminal handling
(:func:`run_top`: cbreak mode, keys read with ``select``, rich's alternate screen, signals), so they are
tested without a terminal.  ``wanlb status --rates`` uses the same rate arithmetic.

Rates are differences of the daemon's nft counter totals (``isps[].bytes_rx`` …) between two answers,
divided by the time between the answers as this process measured it (monotonic clock).  A counter
that went down (the table was recreated: ``wanlb stop --cleanup`` and a new start) gives no rate for
that interval rather than a negative one.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import select
import signal
import sys
import termios
import textwrap
import threading
import time
import tty
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console, JustifyMethod, RenderableType
from rich.layout import Layout
from rich.live import Live
from rich.measure import Measurement
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from wanlb.view import Event, Ha, Isp, Status, from_json

BLOCKS = "▁▂▃▄▅▆▇█"
HISTORY = 60  # samples kept per ISP for the sparklines (a minute at the default interval)
REQUEST_TIMEOUT = 5.0  # the daemon may take up to 2 s for the nft counters; more than this is "not answering"
STATE_STYLES = {
    "up": "bold green",
    "degraded": "bold yellow",
    "down": "bold red",
    "disabled": "bold magenta",
    "removed": "dim",
    "added": "cyan",
    "replaced": "cyan",
}
QUIT_KEYS = frozenset("qQ")
WIDE = 1000  # columns "as wide as it takes" (status --wide) and the most COLUMNS is taken at
STATE_CAP, IPV6_CAP = 16, 14  # what a too wide table squeezes its state and ipv6 columns to (their words wrap)
EVENTS_MIN = 3  # the fewest lines of the events panel: its borders and one line


# --- rates ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One ``status`` answer (read into the view) and when it arrived (``time.monotonic()``)."""

    at: float
    status: Status

    @classmethod
    def of(cls, at: float, reply: Mapping[str, Any]) -> Sample:
        """A sample of the daemon's JSON answer."""
        return cls(at, from_json(Status, reply))


@dataclass(frozen=True)
class IspRates:
    """Per second over the interval between two samples; None where it cannot be known."""

    new_per_second: float | None = None
    rx_bytes_per_second: float | None = None
    tx_bytes_per_second: float | None = None

    @property
    def throughput(self) -> float | None:
        """Bytes per second in and out together."""
        if self.rx_bytes_per_second is None or self.tx_bytes_per_second is None:
            return None
        return self.rx_bytes_per_second + self.tx_bytes_per_second


def per_second(old: float | None, new: float | None, seconds: float) -> float | None:
    """(new - old) / seconds; None if a value is missing, no time passed, or the counter went down (reset)."""
    if old is None or new is None or seconds <= 0 or new < old:
        return None
    return (new - old) / seconds


def isp_rates(before: Sample | None, after: Sample) -> dict[str, IspRates]:
    """Per ISP of ``after``: new connections, bytes in and bytes out per second since ``before``."""
    old = {isp.name: isp for isp in before.status.isps} if before is not None else {}
    dt = after.at - before.at if before is not None else 0.0
    out = {}
    for isp in after.status.isps:
        prev = old.get(isp.name, Isp())
        out[isp.name] = IspRates(
            per_second(prev.new_connections, isp.new_connections, dt),
            per_second(prev.bytes_rx, isp.bytes_rx, dt),
            per_second(prev.bytes_tx, isp.bytes_tx, dt),
        )
    return out


def rule_rates(before: Sample | None, after: Sample) -> dict[str, float | None]:
    """Per rule of ``after``: hits (NEW packets matched) per second since ``before``."""
    old = {r.name: r.hits for r in before.status.rules} if before is not None else {}
    dt = after.at - before.at if before is not None else 0.0
    return {r.name: per_second(old.get(r.name), r.hits, dt) for r in after.status.rules}


@dataclass(frozen=True)
class Rates:
    """Per second between two answers: each ISP's new connections and bytes, each rule's hits."""

    interval_seconds: float
    isps: Mapping[str, IspRates]
    rules: Mapping[str, float | None]

    def json(self) -> dict[str, Any]:
        """The ``rates`` object of ``wanlb status --json --rates`` (documented in docs/operations.md)."""

        def r(value: float | None) -> float | None:
            return None if value is None else round(value, 1)

        return {
            "interval_seconds": round(self.interval_seconds, 3),
            "isps": {
                name: {
                    "new_per_second": r(v.new_per_second),
                    "rx_bytes_per_second": r(v.rx_bytes_per_second),
                    "tx_bytes_per_second": r(v.tx_bytes_per_second),
                }
                for name, v in self.isps.items()
            },
            "rules": {name: r(v) for name, v in self.rules.items()},
        }


def rates_of(before: Sample, after: Sample) -> Rates:
    return Rates(after.at - before.at, isp_rates(before, after), rule_rates(before, after))


# --- formatting -------------------------------------------------------------------------------------


def human_bytes(n: float | None) -> str:
    """Decimal units, as network rates are quoted: 999 B, 1.2 kB, 3.4 MB …"""
    if n is None:
        return "-"
    if abs(n) < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        n /= 1000
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def human_rate(bytes_per_second: float | None) -> str:
    return "-" if bytes_per_second is None else f"{human_bytes(bytes_per_second)}/s"


def human_count_rate(per_sec: float | None) -> str:
    if per_sec is None:
        return "-"
    return f"{per_sec:.1f}" if per_sec < 10 else f"{per_sec:.0f}"


def human_duration(seconds: float | None) -> str:
    """45s, 3m05s, 2h03m, 4d02h."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def sparkline(values: Iterable[float | None], width: int, top: float | None = None) -> str:
    """The last ``width`` values as block characters, newest on the right, padded on the left.

    Scaled to ``top`` (default: the largest value shown).  Zero is the lowest block and any positive
    value at least the second, so a trickle is visible; a missing value (no answer, no rate yet) is a
    space.
    """
    shown = list(values)[-width:] if width > 0 else []
    if top is None:
        top = max((v for v in shown if v is not None), default=0.0)
    chars = []
    for v in shown:
        if v is None:
            chars.append(" ")
        elif v <= 0 or top <= 0:
            chars.append(BLOCKS[0])
        else:
            chars.append(BLOCKS[1 + min(len(BLOCKS) - 2, int(v / top * (len(BLOCKS) - 2)))])
    return "".join(chars).rjust(width)


def event_line(ev: Event) -> str:
    """``14:02:11 isp1 down (up → down): 3 failed rounds: …, flushed 48 connections``; an event of one
    family of an ISP with health per family names it (``isp1 IPv6 down …``)."""
    when = time.strftime("%H:%M:%S", time.localtime(ev.time))
    flushed = f", flushed {ev.flushed} connections" if ev.flushed is not None else ""
    change = f"{ev.from_} → {ev.status}" if ev.from_ and ev.from_ != ev.status else ev.status
    family = f" IPv{ev.family}" if ev.family else ""
    line = f"{when} {ev.isp}{family} {ev.event} ({change}): {ev.reason}{flushed}"
    return line + (f" [apply failed: {ev.error}]" if ev.error else "")


def ha_lines(ha: Ha) -> list[str]:
    """This node and its peer in a few lines (status and top): ``gw1 master since 14:02:11, priority 150, sync
    link up; keepalived and conntrackd running`` then the peer, and in capitals what needs a human now."""
    since = time.strftime("%H:%M:%S", time.localtime(ha.since))
    helpers = []
    for name, helper in (("keepalived", ha.keepalived), ("conntrackd", ha.conntrackd)):
        if helper.missing:
            helpers.append(f"{name} MISSING ({helper.missing})")
        elif not helper.running:
            helpers.append(f"{name} NOT RUNNING" + (f" ({helper.last_exit})" if helper.last_exit else ""))
        elif helper.starts > 1:
            helpers.append(f"{name} running (restarted {helper.starts - 1}×)")
    lines = [
        f"{ha.node} {ha.role} since {since}, priority {ha.priority}, sync link {ha.sync_link}; "
        + ("; ".join(helpers) if helpers else "keepalived and conntrackd running")
    ]
    peer = ha.peer
    if peer.node is None:
        lines.append("peer: never heard (no hello over the sync link yet)")
    else:
        ago = f", heard {peer.heard_seconds_ago:g} s ago" if peer.heard_seconds_ago is not None else ""
        said = peer.role or "starting"
        lines.append(
            f"peer {peer.node} {said if peer.state == 'up' else peer.state + ' (last said ' + said + ')'}, "
            f"priority {peer.priority}{ago}; config " + ("DIFFERS" if peer.config_differences else "agrees")
        )
    if peer.split_brain:
        lines.append(f"SPLIT BRAIN: {ha.node} and {peer.node} are both master (VRRP adverts do not meet)")
    lines += [f"config differs: {d}" for d in peer.config_differences]
    return lines


def drain_left(isp: Isp, now: float) -> str | None:
    """How long a timed drain still holds the ISP (``12m left``), for its state cell; None without a timer."""
    if isp.drain is None or isp.drain.until is None:
        return None
    minutes, seconds = divmod(max(0, round(isp.drain.until - now)), 60)
    return f"{minutes}m left" if minutes else f"{seconds}s left"


def drain_line(isp: Isp, now: float) -> str | None:
    """``isp2: drained: ISP maintenance, ends 14:52:10 (12m left)``: why and until when an admin drain holds it."""
    drain = isp.drain
    if drain is None:
        return None
    line = f"{isp.name}: drained" + (f": {drain.reason}" if drain.reason else "")
    if drain.until is None:
        return f"{line}, until `wanlb enable`"
    return f"{line}, ends {time.strftime('%H:%M:%S', time.localtime(drain.until))} ({drain_left(isp, now)})"


def standby_note(isp: Isp) -> str:
    """Why an up ISP takes no NEW connections: waiting to fail back (``failback in 42s``) or a worse tier."""
    if isp.quota is not None and isp.quota.exceeded and isp.usable:  # its data quota reached (at_limit)
        return " (over quota)" if not isp.active else " (over quota, in use)"
    if isp.suspected is not None:
        return " (suspected)"
    if isp.failback_seconds is not None:
        return f" (failback in {human_duration(isp.failback_seconds)})"
    return " (standby)" if isp.status == "up" and not isp.active else ""


def quota_text(isp: Isp) -> str:
    """``16% of 20.0 GiB`` (``-`` without a quota): the data quota's count this cycle, for a table cell."""
    from wanlb.quota import size

    q = isp.quota
    return "-" if q is None else f"{q.percent:g}% of {size(q.limit_bytes)}"


def quota_line(isp: Isp, now: float) -> str | None:
    """``isp2: 3.2 GiB of 20.0 GiB (16%), monthly from day 5, ends 2024-07-05 00:00 (in 12d03h); at the limit:
    standby``, or ``… REACHED, held back: standby`` (None without a quota): the quota in one line, for status."""
    from wanlb.quota import size, when

    q = isp.quota
    if q is None:
        return None
    state = "REACHED, held back" if q.exceeded else "at the limit"
    left = human_duration(q.cycle_end - now)
    return (f"{isp.name}: {size(q.used_bytes)} of {size(q.limit_bytes)} ({q.percent:g}%), {q.cycle}, ends "
            f"{when(q.cycle_end)} (in {left}); {state}: {q.at_limit}")  # fmt: skip


def state_text(isp: Isp, now: float | None = None) -> Text:
    """The ISP's state, coloured, with what qualifies it (standby, a drain's time left, held down, what its
    uplink misses)."""
    label = isp.status + standby_note(isp)
    if left := drain_left(isp, time.time() if now is None else now):
        label += f" ({left})"
    if isp.health.held_down_seconds:
        label += f" (held {isp.health.held_down_seconds:g}s)"
    if isp.link_down:
        label += f" ({isp.uplink or 'link down'})"
    return Text(label, style=STATE_STYLES.get(isp.status, ""))


def ipv6_text(isp: Isp) -> Text:
    """The ISP's IPv6: its mode and status, coloured like the state (``-`` when it carries none); with
    IPv6 health targets of its own, their loss."""
    ipv6 = isp.ipv6
    if ipv6 is None:
        return Text("-")
    label = f"{ipv6.mode} {ipv6.status}"
    health = ipv6.health
    if health is not None and health.monitored and health.loss_percent:
        label += f" (loss {health.loss_percent:g}%)"
    return Text(label, style=STATE_STYLES.get(ipv6.status, ""))


# --- fitting a width ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Column:
    """A column of a table fitted to a width (:func:`fit_table`).

    ``keep`` says what goes first when the table is too wide: 0 is never left out, the highest goes first.
    ``cap`` is for cells of words (a state): the width they wrap at, rather than a column be left out.  Other
    cells (names, numbers) never wrap, so a name is never cut.
    """

    header: str
    cells: tuple[RenderableType, ...]
    keep: int = 0
    justify: JustifyMethod = "right"
    cap: int | None = None


def measure(renderable: RenderableType) -> Measurement:
    """The narrowest and the natural width of ``renderable``."""
    console = Console(width=WIDE, file=io.StringIO(), color_system=None)
    return Measurement.get(console, console.options, renderable)


def fit_table(columns: Sequence[Column], width: int, new: Callable[[], Table],
              wrap_from: int = 0) -> tuple[Table, tuple[Column, ...]]:  # fmt: skip
    """``columns`` as rows of ``new()`` at most ``width`` wide if they can be, and the columns left out.

    Columns are left out highest ``keep`` first until the table fits, but before one of ``keep`` ``wrap_from``
    or less goes, the capped columns wrap at their caps.  When only the ``keep`` 0 columns are left and they are
    still too wide, the capped ones wrap narrower, down to their longest word.  The table's natural width is then
    what it needs: print it at that width at least, or rich cuts the cells that do not wrap (names).
    """

    def build(shown: Sequence[Column], caps: Mapping[Column, int]) -> Table:
        table = new()
        for c in shown:
            table.add_column(c.header, justify=c.justify, no_wrap=c.cap is None, max_width=caps.get(c))
        for row in zip(*(c.cells for c in shown), strict=True):
            table.add_row(*row)
        return table

    shown, caps, wrapped = list(columns), {}, False
    while (excess := measure(table := build(shown, caps)).maximum - width) > 0:
        first = max((c for c in shown if c.keep), key=lambda c: c.keep, default=None)
        if not wrapped and (first is None or first.keep <= wrap_from):
            caps, wrapped = {c: c.cap for c in columns if c.cap is not None}, True
        elif first is not None:
            shown.remove(first)
        else:
            table = build(shown, _narrower(shown, caps, excess))
            break
    return table, tuple(c for c in columns if c not in shown)


def _narrower(shown: Sequence[Column], caps: Mapping[Column, int], excess: int) -> dict[Column, int]:
    """``caps`` made ``excess`` narrower in all, no column's narrower than its longest word."""
    out = dict(caps)
    for c in shown:
        if c in out and excess > 0:
            cells = (c.header, *c.cells)
            now = min(out[c], max(measure(cell).maximum for cell in cells))
            out[c] = max(max(measure(cell).minimum for cell in cells), now - excess)
            excess -= now - out[c]
    return out


def wrap(line: str, width: int, indent: int = 0, hang: int = 4) -> list[str]:
    """``line`` in lines of at most ``width``, indented by ``indent`` and its continuations by ``hang`` more,
    broken at spaces (a no-break space keeps two words together): nothing is cut, only a word longer than a
    whole line is split."""
    lines = textwrap.wrap(line, max(width, indent + hang + 8), initial_indent=" " * indent,
                          subsequent_indent=" " * (indent + hang), break_on_hyphens=False)  # fmt: skip
    return [part.replace("\xa0", " ") for part in lines]


# --- the model --------------------------------------------------------------------------------------


@dataclass
class History:
    """Per ISP, the last ``size`` connection counts and throughputs (None: no answer or no rate then)."""

    size: int = HISTORY
    connections: dict[str, deque[float | None]] = field(default_factory=dict)
    throughput: dict[str, deque[float | None]] = field(default_factory=dict)

    def add(self, conns: Mapping[str, float | None], throughput: Mapping[str, float | None]) -> None:
        """One sample for the ISPs named in ``conns`` (ISPs no longer there are forgotten)."""
        for series, values in ((self.connections, conns), (self.throughput, throughput)):
            for name in list(series):
                if name not in conns:
                    del series[name]
            for name in conns:
                series.setdefault(name, deque(maxlen=self.size)).append(values.get(name))

    def gap(self) -> None:
        """No answer this time: every series moves on by a missing value."""
        for series in (self.connections, self.throughput):
            for values in series.values():
                values.append(None)


@dataclass
class TopModel:
    """What the screen shows: the latest answer, the rates since the one before, the history."""

    history: History = field(default_factory=History)
    current: Sample | None = None
    previous: Sample | None = None
    rates: dict[str, IspRates] = field(default_factory=dict)
    rule_rates: dict[str, float | None] = field(default_factory=dict)
    error: str | None = None
    failing_since: float | None = None  # monotonic time of the first failure of the current run of them
    answers: int = 0

    def update(self, sample: Sample) -> None:
        self.previous, self.current = self.current, sample
        self.rates = isp_rates(self.previous, sample)
        self.rule_rates = rule_rates(self.previous, sample)
        self.error = self.failing_since = None
        self.answers += 1
        counts = sample.status.conn_counts
        names = [isp.name for isp in sample.status.isps]
        self.history.add(
            {name: counts.get(name) for name in names},
            {name: self.rates[name].throughput for name in names},
        )

    def fail(self, error: str, at: float) -> None:
        self.error = error
        if self.failing_since is None:
            self.failing_since = at
        self.history.gap()


# --- the screen -------------------------------------------------------------------------------------


def _header(model: TopModel, now_wall: float, now_mono: float, interval: float, target: str) -> Text:
    text = Text()
    text.append("wanlb top", style="bold")
    status = model.current.status if model.current else None
    if status is not None:
        text.append(f"  pid {status.pid}  up {human_duration(status.uptime_seconds)}")
        text.append(f"  reloads {status.reloads}  nft applies {status.nft_applies}")
        ct = status.conntrack
        if ct.entries is not None:
            text.append(f"  conntrack {ct.entries}" + (f"/{ct.max}" if ct.max else ""))
    text.append(f"  {time.strftime('%H:%M:%S', time.localtime(now_wall))}  every {interval:g}s  q quits", style="dim")
    if model.error is not None:
        since = now_mono - model.failing_since if model.failing_since is not None else 0.0
        text.append(f"\ndaemon not answering ({human_duration(since)}): {model.error} — still trying",
                    style="bold white on red")  # fmt: skip
    elif status is None:
        text.append(f"\nwaiting for the daemon at {target} …", style="yellow")
    elif model.current is not None and now_mono - model.current.at > max(3.0, 3 * interval):
        text.append(f"\nlast answer {human_duration(now_mono - model.current.at)} ago", style="yellow")
    elif status.last_error:
        text.append(f"\nlast apply failed: {status.last_error}", style="red")
    if status is not None and status.ha is not None:
        for i, line in enumerate(ha_lines(status.ha)[:3]):
            alarm = line.startswith(("SPLIT", "config differs")) or "DIFFERS" in line or "MISSING" in line
            text.append(f"\n{'ha ' if i == 0 else '   '}{line}", style="bold red" if alarm else None)
    return text


def _table() -> Table:
    """A table of top: a rule under the headings, two spaces between columns, as wide as the screen."""
    return Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), expand=True, show_edge=False)


def isp_table(model: TopModel, now_wall: float, width: int) -> Table:
    """The ISPs, fitted to ``width``: name, state, share, connections, loss and rtt always; then the rates,
    since and weight; on a wide terminal also tier, interface and next hop (the extras are on the right, so
    the columns before them stay where they are)."""
    status = model.current.status if model.current else Status()
    isps, counts = status.isps, status.conn_counts
    rates = [model.rates.get(isp.name, IspRates()) for isp in isps]
    health = [isp.health for isp in isps]
    columns = [
        Column("isp", tuple(isp.name for isp in isps), justify="left"),
        Column("state", tuple(state_text(isp) for isp in isps), justify="left", cap=STATE_CAP),
        *([Column("ipv6", tuple(ipv6_text(isp) for isp in isps), 1, "left", IPV6_CAP)] if status.any_ipv6 else []),
        Column("since", tuple(human_duration(now_wall - isp.since) if isp.since else "-" for isp in isps), 5),
        Column("weight", tuple(str(isp.weight) for isp in isps), 6),
        Column("share", tuple(f"{isp.share_percent:.1f}%" for isp in isps)),
        Column("conns", tuple(str(counts.get(isp.name, "-")) for isp in isps)),
        Column("new/s", tuple(human_count_rate(r.new_per_second) for r in rates), 4),
        Column("rx/s", tuple(human_rate(r.rx_bytes_per_second) for r in rates), 2),
        Column("tx/s", tuple(human_rate(r.tx_bytes_per_second) for r in rates), 3),
        Column("loss", tuple(f"{h.loss_percent:g}%" if h.monitored else "-" for h in health)),
        Column(
            "rtt", tuple(f"{h.latency_ms:.1f} ms" if h.monitored and h.latency_ms is not None else "-" for h in health)
        ),
        Column("tier", tuple(str(isp.tier) for isp in isps), 7),
        Column("interface", tuple(isp.interface for isp in isps), 8, "left"),
        Column("gateway", tuple(isp.gateway for isp in isps), 9, "left"),
    ]
    if any(isp.quota is not None for isp in isps):  # the data quotas' counts this cycle
        columns.append(Column("quota", tuple(quota_text(isp) for isp in isps), 5))
    return fit_table(columns, width, _table, wrap_from=6)[0]


def history_table(model: TopModel, width: int) -> Table | None:
    """Per ISP, a sparkline of connections and one of throughput, on one scale per column (so the ISPs
    compare: the top of the kept samples, in the heading), as long as ``width`` has room for; None when
    it has none."""
    conns, through = model.history.connections, model.history.throughput

    def peak(series: Mapping[str, deque[float | None]]) -> float:
        return max((v for values in series.values() for v in values if v is not None), default=0.0)

    conn_top, through_top = peak(conns), peak(through)
    heads = (f"conns (top {conn_top:g})", f"rx+tx (top {human_rate(through_top)})")

    def table(spark: int) -> Table:
        t = _table()
        t.add_column("history", no_wrap=True)
        t.add_column(heads[0], no_wrap=True, style="cyan")
        t.add_column(heads[1], no_wrap=True, style="green")
        for name in conns:
            t.add_row(
                name, sparkline(conns[name], spark, conn_top), sparkline(through.get(name, ()), spark, through_top)
            )
        return t

    fixed = measure(table(0)).maximum - len(heads[0]) - len(heads[1])  # the names' column and the padding
    fitting = (
        s for s in range(model.history.size, 0, -1) if fixed + max(s, len(heads[0])) + max(s, len(heads[1])) <= width
    )
    spark = next(fitting, 0)
    return table(spark) if spark else None


def rules_table(model: TopModel) -> Table | None:
    rules = model.current.status.rules if model.current else ()
    if not rules:
        return None
    table = _table()
    for col, justify in (("rule", "left"), ("target", "left"), ("hits", "right"), ("hits/s", "right")):
        table.add_column(col, justify=justify, no_wrap=col != "target")  # type: ignore[arg-type]
    for r in rules:
        table.add_row(r.name, r.target, "-" if r.hits is None else str(r.hits),
                      human_count_rate(model.rule_rates.get(r.name)))  # fmt: skip
    return table


def events_panel(model: TopModel, lines: int, width: int) -> Panel:
    """The latest events that fit in ``lines`` inside a panel ``width`` wide, newest at the bottom, each whole
    (wrapped under its time), but for the newest when even it alone does not fit."""
    events = list(model.current.status.events) if model.current else []
    shown: list[tuple[Event, list[str]]] = []
    used = 0
    for ev in reversed(events):
        wrapped = _event_lines(ev, width)
        if shown and used + len(wrapped) > lines:
            break
        shown.insert(0, (ev, wrapped[: max(1, lines)]))
        used += len(wrapped)
    body = Text()
    for i, (ev, wrapped) in enumerate(shown):
        body.append(("\n" if i else "") + "\n".join(wrapped), style=STATE_STYLES.get(ev.status, ""))
    if not shown:
        body.append("no events yet", style="dim")
    return Panel(body, title=f"events ({len(events)})", title_align="left", box=box.ROUNDED)


def _event_lines(ev: Event, width: int) -> list[str]:
    """An event's line wrapped under its time to fit in the events panel (its borders and padding take 4)."""
    return wrap(event_line(ev), width - 4, hang=9)


def _height(renderable: RenderableType, width: int) -> int:
    """Lines ``renderable`` takes at ``width``."""
    console = Console(width=width, file=io.StringIO(), color_system=None)
    return len(console.render_lines(renderable, console.options.update(width=width)))


def build_screen(model: TopModel, width: int, height: int, *, now_wall: float | None = None,
                 now_mono: float | None = None, interval: float = 1.0, target: str = "") -> Layout:  # fmt: skip
    """The whole screen for a terminal of ``width`` × ``height``: header, ISPs, history, rules, events.

    On a screen too short for all of them the history goes first, then the rules, so that every ISP and
    the newest event, whole, stay in view."""
    now_wall = time.time() if now_wall is None else now_wall
    now_mono = time.monotonic() if now_mono is None else now_mono
    history, rules = history_table(model, width), rules_table(model)
    parts: list[tuple[str, RenderableType, int]] = [  # name, what, which goes first on a short screen (0: never)
        ("header", _header(model, now_wall, now_mono, interval, target), 0),
        ("isps", isp_table(model, now_wall, width), 0),
        *([("history", Padding(history, (1, 0, 0, 0)), 2)] if history is not None else []),
        *([("rules", Padding(rules, (1, 0, 0, 0)), 1)] if rules is not None else []),
    ]
    events = model.current.status.events if model.current else ()
    need = 2 + (len(_event_lines(events[-1], width)) if events else 1)  # the panel's borders and the newest event
    sized = [(name, renderable, drop, _height(renderable, width)) for name, renderable, drop in parts]
    while sum(p[3] for p in sized) + need > height and any(p[2] for p in sized):
        sized.remove(max((p for p in sized if p[2]), key=lambda p: p[2]))
    children = [Layout(renderable, name=name, size=size) for name, renderable, _, size in sized]
    lines = max(1, height - sum(p[3] for p in sized) - 2)
    children.append(Layout(events_panel(model, lines, width), name="events", minimum_size=EVENTS_MIN, ratio=1))
    layout = Layout(name="root")
    layout.split_column(*children)
    return layout


# --- the terminal -----------------------------------------------------------------------------------


class Keyboard:
    """stdin in cbreak mode (keys arrive one by one, unechoed; Ctrl-C still interrupts), read with
    ``select`` so the loop never blocks on it.  :meth:`restore` puts the saved settings back; it is safe
    to call more than once."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.saved: list[Any] | None = None
        self.eof = False

    def cbreak(self) -> None:
        if self.fd is None or not os.isatty(self.fd):
            return
        if self.saved is None:
            self.saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd, termios.TCSANOW)

    def restore(self) -> None:
        if self.saved is not None and self.fd is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)

    def readable(self) -> list[int]:
        return [] if self.fd is None or self.eof else [self.fd]

    def read(self) -> str:
        assert self.fd is not None
        try:
            data = os.read(self.fd, 1024)
        except BlockingIOError:
            return ""
        if not data:
            self.eof = True  # stdin closed: only Ctrl-C (or a signal) ends top now
        return data.decode(errors="ignore")


class _Poller(threading.Thread):
    """Asks the daemon for ``status`` every ``interval`` seconds and hands each answer (or the reason
    there is none) to the main loop, waking it through a pipe.  A daemon thread: a request stuck on a
    hung daemon never delays quitting."""

    def __init__(self, socket_path: str, interval: float) -> None:
        super().__init__(name="wanlb-top-poller", daemon=True)
        self.socket_path, self.interval = socket_path, interval
        self.results: queue.SimpleQueue[tuple[float, dict[str, Any] | None, str | None]] = queue.SimpleQueue()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            self._loop()
        finally:  # the thread owns the pipe: closing it here, never under a request still writing to it
            for fd in (self.wake_r, self.wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _loop(self) -> None:
        from wanlb.control import ControlError, request

        next_at = time.monotonic()
        while not self.stopping.is_set():
            try:
                reply: dict[str, Any] | None = request(self.socket_path, {"cmd": "status"}, timeout=REQUEST_TIMEOUT)
                error = None
            except ControlError as exc:
                reply, error = None, str(exc)
            except Exception as exc:  # never die silently: the screen says what went wrong
                reply, error = None, f"{type(exc).__name__}: {exc}"
            if self.stopping.is_set():
                return
            self.results.put((time.monotonic(), reply, error))
            self.wake()
            next_at += self.interval
            now = time.monotonic()
            if next_at < now:  # a slow answer: do not try to catch up with a burst
                next_at = now + self.interval
            self.stopping.wait(next_at - now)

    def drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(self.wake_r, 4096)

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.wake_w, b"w")

    def close(self) -> None:
        """Stop asking (the thread ends after its current request, and closes the pipe)."""
        self.stopping.set()
        if self.ident is None:  # never started: nobody else will close the pipe
            for fd in (self.wake_r, self.wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)


@contextlib.contextmanager
def _signals(handlers: Mapping[int, Any]) -> Iterator[None]:
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_top(socket_path: str, interval: float = 1.0, console: Console | None = None,
            stdin_fd: int | None = None) -> int:  # fmt: skip
    """The interactive loop; returns the exit code (0 after ``q`` or Ctrl-C, 128 + the signal after
    SIGTERM or SIGHUP).

    Whatever ends it — ``q``, Ctrl-C, SIGTERM, SIGHUP, an exception — the alternate screen is left,
    the cursor shown and the terminal settings restored.  Ctrl-Z gives the terminal back before
    stopping and takes it again on ``fg``.  Signal handlers only note the signal and wake the loop,
    which acts on it between two frames: nothing is written to the terminal from inside a handler,
    so a frame is never cut by an escape sequence.
    """
    console = console or Console()
    if stdin_fd is None:
        stdin_fd = sys.stdin.fileno() if sys.stdin is not None and not sys.stdin.closed else None
    keyboard = Keyboard(stdin_fd)
    model = TopModel()
    poller = _Poller(socket_path, interval)
    pending: list[int] = []

    def note(signum: int, _frame: Any) -> None:
        pending.append(signum)
        poller.wake()

    def suspend(live: Live) -> None:
        keyboard.restore()
        console.set_alt_screen(False)
        console.show_cursor(True)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)  # stops here until SIGCONT (`fg`)
        signal.signal(signal.SIGTSTP, note)
        keyboard.cbreak()
        console.set_alt_screen(True)
        console.show_cursor(False)

    def frame() -> Layout:
        size = console.size
        return build_screen(model, size.width, size.height, interval=interval, target=socket_path)

    handlers = dict.fromkeys((signal.SIGTERM, signal.SIGHUP, signal.SIGTSTP, signal.SIGWINCH), note)
    try:
        with _signals(handlers):
            keyboard.cbreak()
            poller.start()
            with Live(frame(), console=console, screen=True, auto_refresh=False, redirect_stdout=False,
                      redirect_stderr=False) as live:  # fmt: skip
                while True:
                    ready, _, _ = select.select([*keyboard.readable(), poller.wake_r], [], [], interval)
                    if keyboard.fd in ready and QUIT_KEYS & set(keyboard.read()):
                        return 0
                    if poller.wake_r in ready:
                        poller.drain_wakeups()
                    while pending:
                        signum = pending.pop(0)
                        if signum in (signal.SIGTERM, signal.SIGHUP):
                            return 128 + signum
                        if signum == signal.SIGTSTP:
                            suspend(live)
                        # SIGWINCH: the frame below is drawn at the new size
                    while True:
                        try:
                            at, reply, error = poller.results.get_nowait()
                        except queue.Empty:
                            break
                        if reply is not None:
                            model.update(Sample.of(at, reply))
                        else:
                            model.fail(error or "no answer", at)
                    live.update(frame(), refresh=True)
    except KeyboardInterrupt:
        return 0
    finally:
        poller.close()
        keyboard.restore()
