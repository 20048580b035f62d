"""The demo's HA act: an HA pair (gw1, gw2 with the keepalived and conntrackd that wanlb renders) loses its
primary under traffic and gets it back, and no connection notices.

It builds the lab `wanlb lab up --ha` builds (two ISPs, static uplinks, IPv4) and drives it with the helpers the
HA lab tests use (`wanlb.lab.pair`): what the demo shows is exactly what those tests check, not a second
implementation of it that could drift.  Those helpers are blocking scripts, so each one runs on a worker thread
while the console shows both nodes live (role, peer, connections per ISP, as each daemon reports them); then the
act prints, per ISP, its long-lived streams in the old master's and the new master's conntrack tables and as the
server saw them, and the checks: every stream intact, on the ISP it started on, seen by the server from that
ISP's WAN VIP (the source a stream keeps across a takeover only if the pair moved the VIP with the synced NAT
state).  The threads only read (status requests); everything that changes the lab happens in the helpers.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from rich.console import Console
from rich.live import Live
from rich.table import Table

from wanlb.control import ControlError
from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab, LabError
from wanlb.lab.pair import failback, role, start_pair, stop_pair, takeover, vips_isp, wait_until

Pair = tuple[LabGateway, LabGateway]
T = TypeVar("T")
HELPERS = ("keepalived", "conntrackd")
ROLE_STYLE = {"master": "green", "backup": "cyan", "fault": "red"}


def ha_lab_name(name: str) -> str:
    """The HA act's lab name: the demo's with ``ha`` appended (within the 24 characters a lab name may have), so
    a killed demo's leftovers are recognisable and `wanlb lab down --name` can remove each lab on its own."""
    return f"{name[:22]}ha"


@dataclass(frozen=True)
class IspStreams:
    """One ISP's long-lived streams across a role change. The stream reports (what the server saw) and the
    conntrack entries (what each node had) cannot be paired one to one: a report names the source address the
    server saw, not the client's port. So they are counted per ISP: the streams the old master had on it, how many
    of those the new master has on it too, and the intact streams the server saw from its WAN VIP."""

    isp: str
    before: int  # streams on it in the old master's table
    stayed: int  # of those, on the same ISP in the new master's table
    intact: int  # streams that never broke or stalled, seen by the server from this ISP's WAN VIP
    sources: tuple[str, ...]  # the addresses the server saw those from (the VIP)
    gap: float  # the largest wait for data of any of them, in seconds


@dataclass(frozen=True)
class Verdict:
    """What one role change did to the streams: per ISP, and overall."""

    isps: tuple[IspStreams, ...]
    streams: int  # every stream started (its report)
    broken: int  # reports of streams that broke, stalled or never started

    @property
    def kept(self) -> int:
        """Streams that stayed on their ISP in both tables and went on intact from its WAN VIP."""
        return sum(min(i.stayed, i.intact) for i in self.isps)

    @property
    def all_kept(self) -> bool:
        """Every stream kept: none broke, each ISP's count the same in both tables and at the server."""
        same = all(i.before == i.stayed == i.intact for i in self.isps)
        return self.streams > 0 and self.broken == 0 and same and self.kept == self.streams

    @property
    def largest_gap(self) -> float:
        return max((i.gap for i in self.isps), default=0.0)

    def line(self) -> str:
        kept = f"{self.kept}/{self.streams} streams kept their ISP and source"
        return f"{kept}, largest gap {self.largest_gap:.2f} s"


def verdict(seen: dict[str, Any], isps: list[str]) -> Verdict:
    """Judge a `takeover` or `failback` report (``isp_of``: each stream's ISP by client port on the old master,
    ``after``: the same on the new one, ``results``: the streams' own reports)."""
    isp_of: dict[int, str] = seen["isp_of"]
    after: dict[int, str] = seen["after"]
    results: list[dict[str, Any]] = seen["results"]
    rows = []
    for isp in isps:
        ports = [port for port, on in isp_of.items() if on == isp]
        mine = [r for r in results if r.get("ok") and vips_isp(r) == isp]
        sources = tuple(sorted({str(r["src"]).rsplit(":", 1)[0] for r in mine}))
        gap = max((float(r.get("max_gap") or 0.0) for r in mine), default=0.0)
        rows.append(IspStreams(isp, len(ports), sum(after.get(p) == isp for p in ports), len(mine), sources, gap))
    return Verdict(tuple(rows), len(results), sum(not r.get("ok") for r in results))


def _nodes_table(gws: Pair, title: str) -> Table:
    """Both nodes as their daemons report them right now (a killed or starting one does not answer)."""
    table = Table(title=title)
    for col in ("node", "role", "peer", "ISPs", "connections", "last commit"):
        table.add_column(col)
    for gw in gws:
        try:
            status = gw.view()
        except (ControlError, OSError):
            table.add_row(gw.node, "[red]no daemon answering", "", "", "", "")
            continue
        ha = status.ha
        if ha is None:  # not an HA config: cannot happen in this lab, but say so rather than crash the display
            table.add_row(gw.node, "[red]no ha section", "", "", "", "")
            continue
        style = ROLE_STYLE.get(ha.role, "yellow")
        peer = f"{ha.peer.node or '?'} {ha.peer.state}" + (f" ({ha.peer.role})" if ha.peer.role else "")
        isps = ", ".join(f"{i.name} {i.status}" for i in status.isps)
        conns = ", ".join(f"{isp} {n}" for isp, n in sorted(status.conn_counts.items()))
        table.add_row(gw.node, f"[{style}]{ha.role}", peer, isps, conns or "-", ha.last_commit or "-")
    return table


def _watch(console: Console, gws: Pair, title: str, work: Callable[[], T]) -> T:
    """Run ``work`` (a blocking helper of `wanlb.lab.pair`) on a worker thread while the console shows both nodes
    live; return its result or raise its exception here.  The thread is a daemon thread so that Ctrl-C (which only
    the main thread receives) goes straight to the teardown: the lab's removal ends whatever the helper waits for."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:  # handed over to the main thread, not printed by threading's excepthook
            failure.append(exc)

    worker = threading.Thread(target=run, name=f"demo: {title}", daemon=True)
    started = time.monotonic()
    worker.start()
    with Live(_nodes_table(gws, title), console=console, refresh_per_second=4) as live:
        while worker.is_alive():
            worker.join(0.25)
            live.update(_nodes_table(gws, f"{title} ({time.monotonic() - started:.1f} s)"))
    if not console.is_terminal:  # Live leaves its last frame without a newline when writing to a file or pipe
        console.line()
    if failure:
        raise failure[0]
    return outcome[0]


def _streams_table(title: str, old: str, new: str, judged: Verdict) -> Table:
    table = Table(title=title)
    for col in ("ISP", f"streams on {old}", f"same ISP on {new}", "intact at the server", "from", "largest gap"):
        table.add_column(col, justify="left" if col in ("ISP", "from") else "right")
    for i in judged.isps:
        style = "green" if i.before == i.stayed == i.intact else "red"
        table.add_row(i.isp, str(i.before), f"[{style}]{i.stayed}", f"[{style}]{i.intact}", ", ".join(i.sources) or "-",
                      f"{i.gap:.2f} s")  # fmt: skip
    if judged.broken:
        table.add_row("[red]broken", "", "", f"[red]{judged.broken}", "", "")
    return table


def _master_after_start(gw: LabGateway) -> float:
    """Seconds from the node's daemon start to its becoming master: keepalived's start, the sync, preempt_delay.
    (The daemon starts as backup and records only changes, so its start stands for entering backup.)"""
    status = gw.view()
    started = time.time() - status.uptime_seconds
    became = [e.time for e in status.events if e.event == "role" and e.status == "master"]
    return became[-1] - started if became else float("nan")


def _act(console: Console, lab: Lab, gws: Pair, summary: list[str]) -> bool:
    """Start the pair, kill the primary under traffic, bring it back; print what happened, return the checks."""
    gw1, gw2 = gws
    _watch(console, gws, "starting the pair", lambda: start_pair(gws))
    console.print("gw1 master, gw2 backup, both ISPs up on both: VRRP on the LAN, conntrackd syncing over sync0")

    seen = _watch(console, gws, "gw1 killed under streams on both ISPs", lambda: takeover(lab, gw1, gw2))
    took = verdict(seen, lab.isps)
    console.print(_streams_table("takeover: the streams, as gw1 had them and gw2 carries them", "gw1", "gw2", took))
    new, udp, before, after = seen["new"], seen["udp"], seen["udp_before"], seen["udp_after"]
    udp_kept = bool(udp.get("ok")) and before is not None and after == before
    line = f"HA takeover: gw2 master after {seen['takeover']:.2f} s; {took.line()}"
    console.print(f"[bold]{line}[/]")
    summary.append(line)
    shares = ", ".join(f"{isp} {new.get(isp, 0)}" for isp in lab.isps)
    summary.append(
        f"  then {sum(new.get(isp, 0) for isp in lab.isps)} new connections through gw2 ({shares}), "
        f"{new['failed']} failed; a UDP flow {'kept' if udp_kept else 'LOST'} "
        f"{(after or before or {}).get('isp', '?')} and its source, {udp.get('answered')} of {udp.get('sent')} "
        "queries answered"
    )
    ok = took.all_kept and new["failed"] == 0 and udp_kept

    # With the non-SYN guard as shipped (takeover_guard) and no artificially slow daemon: the failback as it is.
    title = "gw1 revived: it syncs, then takes over again"
    back = _watch(console, gws, title, lambda: failback(lab, gw1, gw2, guard=True, freeze=False))
    wait_until("gw2 backup again", lambda: role(gw2) == "backup", timeout=5)
    came = verdict(back, lab.isps)
    console.print(_streams_table("failback: the streams, as gw2 had them and gw1 carries them", "gw2", "gw1", came))
    delay = gw1.base["ha"].get("preempt_delay", "?")
    line = (
        f"HA failback: gw1 master again {_master_after_start(gw1):.2f} s after its daemon started (preempt_delay "
        f"{delay}), gw2 backup; {came.line()}"
    )
    console.print(f"[bold]{line}[/]")
    summary.append(line)
    return ok and came.all_kept


def run_ha_act(console: Console, name: str, summary: list[str]) -> bool:
    """The HA act in its own lab ``name``; appends its summary lines, returns whether every check held.  Without
    keepalived or conntrackd it is skipped (and holds): the rest of the demo needs neither."""
    missing = [helper for helper in HELPERS if shutil.which(helper) is None]
    if missing:
        line = f"HA act skipped: {' and '.join(missing)} not installed (apt install {' '.join(HELPERS)})"
        console.print(f"[yellow]{line}")
        summary.append(line)
        return True
    console.print(
        f"[bold]HA act[/] — building lab [cyan]{name}[/]: 2 clients, an HA pair gw1 (primary) and gw2, "
        "2 ISPs (static), internet"
    )
    with Lab.up(name=name, isps=2, clients=2, ha=True) as lab:
        gws = (LabGateway(lab, "gw1"), LabGateway(lab, "gw2"))
        try:
            return _act(console, lab, gws, summary)
        except (AssertionError, LabError, ControlError, subprocess.TimeoutExpired) as exc:  # the helpers' checks
            console.print(f"[red]HA act failed[/]: {exc}")
            summary.append(f"HA act FAILED: {exc}")
            return False
        finally:
            stop_pair(lab, gws)
