"""``wanlb demo``: the whole gateway on one machine, then an HA pair, in about a minute.

Builds the dual-stack lab with real uplinks — two DHCP WANs (dnsmasq in the ISPs,
dhcpcd in the gateway) and a PPP-like point-to-point one, all ``gateway: auto`` —
runs the daemon inside the gateway namespace, pushes rounds of short IPv4 and
IPv6 connections from the clients while a long-lived stream runs, changes the
weights live (the stream must not notice), blackholes an ISP that the stream
does not use (failover of both families: its share goes to the others, nothing
else notices), heals it, kills one ISP's IPv6 alone (its IPv6 share moves, its
IPv4 share stays), then renumbers a DHCP ISP under traffic (a new subnet and
router: the learned gateway follows), and prints per-ISP shares as the servers
saw them.  Then the HA act (`wanlb.demo_ha`, skipped with ``--no-ha``): in a second lab, built once the first
is gone, an HA pair loses its primary under long-lived streams on both ISPs and gets it back; every stream must
stay intact, on its ISP, with its source.  Everything is torn down on every exit path, Ctrl-C included.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter

from rich.console import Console
from rich.live import Live
from rich.table import Table

from wanlb.control import ControlError
from wanlb.demo_ha import ha_lab_name, run_ha_act
from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab
from wanlb.lab.topology import HTTP_PORT, SERVER6_ADDRS
from wanlb.view import Event, Status

UPLINKS = ("dhcp", "dhcp", "p2p")  # every gateway learned: DHCP leases and a point-to-point session
ROUNDS_PER_PHASE = 8
CONNECTIONS_PER_ROUND = 125
ROUND_PAUSE = 0.3  # seconds: slow enough for a person to watch the shares converge
TARGET6 = f"[{SERVER6_ADDRS[0]}]:{HTTP_PORT}"
PHASES: tuple[tuple[str, dict[str, int]], ...] = (
    ("weights 3:2:1", {"isp1": 3, "isp2": 2, "isp3": 1}),
    ("reloaded to 1:1:2", {"isp1": 1, "isp2": 1, "isp3": 2}),
)


def _table(
    title: str, counts: dict[int, Counter[str]], weights: dict[int, dict[str, int]], status: Status | None
) -> Table:
    table = Table(title=title)
    for col in ("isp", "IPv4", "IPv6", "v4 target", "v4 seen", "v6 target", "v6 seen"):
        table.add_column(col, justify="right" if col != "isp" else "left")
    isps = {i.name: i for i in status.isps} if status else {}
    totals = {f: sum(counts[f].values()) or 1 for f in (4, 6)}
    wsums = {f: sum(weights[f].values()) or 1 for f in (4, 6)}
    for isp in weights[4]:
        info = isps.get(isp)
        shares = []
        for f in (4, 6):
            shares += [f"{100 * weights[f].get(isp, 0) / wsums[f]:.1f}%", f"{100 * counts[f][isp] / totals[f]:.1f}%"]
        six = info.ipv6.status if info is not None and info.ipv6 is not None else "-"
        table.add_row(isp, info.status if info is not None else "?", six, *shares)
    return table


def _stream_isp(lab: Lab) -> str | None:
    """Which ISP the demo's long-lived stream left through (from the gateway's conntrack table)."""
    argv = [sys.executable, "-m", "wanlb.cli", "conntrack", "--config", str(lab.config_path), "list"]
    argv += ["-p", "tcp", "--dport", "5001", "--state", "ESTABLISHED", "-o", "json"]
    out = lab.run("gw", argv, capture_output=True, text=True, check=True).stdout
    isps = [json.loads(line).get("isp") for line in out.splitlines()]
    return isps[0] if isps else None


def _wait_state(gw: LabGateway, isp: str, state: str, seen: int, family: str | None = None) -> tuple[float, Event]:
    """Seconds until the daemon has applied ``isp``'s change to ``state`` (of one ``family``'s health, "4" or
    "6", if given) in an event after the first ``seen``, and that event (raises after 5 s)."""
    start, timeout = time.monotonic(), 5.0
    while True:
        events = gw.view().events[seen:]
        found = [e for e in events if e.isp == isp and e.status == state and family in (None, e.family)]
        if found:
            return time.monotonic() - start, found[-1]
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"{isp} did not become {state} within {timeout} s")
        time.sleep(0.02)


def run_demo(console: Console, name: str | None = None, ha: bool = True) -> int:
    """Run the demo: the single-gateway acts, then (unless ``ha`` is false) the HA act in a lab of its own, built
    after the first one is gone (two labs at once would only compete for the machine); one summary of both.
    Returns the process exit code (0 when every check of every act held)."""
    name = name or f"demo{os.getpid() % 10000}{uuid.uuid4().hex[:3]}"
    started = time.monotonic()
    summary: list[str] = []
    ok = _single_gateway_acts(console, name, summary)
    if ha:
        ok = run_ha_act(console, ha_lab_name(name), summary) and ok
    console.print("[bold]summary[/]")
    for line in summary:
        console.print(f"  {line}")
    labs = "labs" if ha else "lab"
    console.print(
        f"{labs} torn down; {time.monotonic() - started:.1f} s — {'[green]all checks held' if ok else '[red]FAILED'}"
    )
    return 0 if ok else 1


def _single_gateway_acts(console: Console, name: str, summary: list[str]) -> bool:
    """The acts with one gateway (shares, reload, failover of both families and of one, a DHCP renumbering, the
    long-lived stream through all of it) in lab ``name``, torn down on return; appends the summary lines and
    returns whether every check held."""
    console.print(
        f"[bold]wanlb demo[/] — building lab [cyan]{name}[/]: 2 clients, gateway, 3 ISPs ({', '.join(UPLINKS)}), "
        "internet"
    )
    first = list(PHASES[0][1].values())
    with Lab.up(name=name, isps=3, clients=2, weights=first, ipv6=True, uplinks=UPLINKS) as lab:
        gw = LabGateway(lab)
        gw.start(timeout=20)
        console.print(f"daemon running in the gateway namespace (log: {gw.log})")
        stream = lab.popen(
            "c1",
            [sys.executable, "-m", "wanlb.lab.traffic", "stream", "--duration", "0", "--stall", "3"],
            label="stream",
            stdout=subprocess.PIPE,
            text=True,
        )
        ok = True
        victim = ""

        def phase(title: str, weights: dict[str, int], weights6: dict[str, int] | None = None, rounds: int = 0) -> None:
            """Rounds of IPv4 and IPv6 connections; each family's shares must match its weights."""
            nonlocal ok
            wanted = {4: weights, 6: weights if weights6 is None else weights6}
            counts: dict[int, Counter[str]] = {4: Counter(), 6: Counter()}
            failed = {4: 0, 6: 0}
            with Live(console=console, refresh_per_second=4) as live:
                for _ in range(rounds or ROUNDS_PER_PHASE):
                    for family, target in ((4, None), (6, TARGET6)):
                        report = lab.traffic(connections=CONNECTIONS_PER_ROUND, parallel=32, target=target)
                        failed[family] += report["failed"]
                        counts[family].update({k: v for k, v in report.items() if k.startswith("isp")})
                    status = gw.view()
                    done = sum(counts[4].values()) + sum(counts[6].values())
                    live.update(_table(f"{title}: {done} new connections", counts, wanted, status))
                    time.sleep(ROUND_PAUSE)
            for family in (4, 6):
                total = sum(counts[family].values()) or 1
                wsum = sum(wanted[family].values())
                worst = max(abs(100 * counts[family][i] / total - 100 * w / wsum) for i, w in wanted[family].items())
                ok &= failed[family] == 0 and worst <= 5
                line = f"{total} connections, {failed[family]} failed, max deviation {worst:.1f} points"
                summary.append(f"{title}: {line}" if family == 4 else f"  IPv6: {line}")

        for title, weights in PHASES:
            if title != PHASES[0][0]:
                retuned = dataclasses.replace(lab.topology, weights=tuple(weights.values()))
                gw.config.write_text(retuned.config_yaml(str(lab.socket_path)))
                gw.reload()
            phase(title, weights)

        # Failover: blackhole the busiest ISP the stream does not use (its link stays up).
        weights = PHASES[-1][1]
        victim = max((i for i in weights if i != _stream_isp(lab)), key=lambda i: weights[i])
        seen = len(gw.view().events)
        lab.fail(victim, "blackhole")  # both families: each health declares it down
        down_after, event = _wait_state(gw, victim, "down", seen, family="4")
        down_after = max(down_after, _wait_state(gw, victim, "down", seen, family="6")[0])
        console.print(
            f"[bold]{victim} blackholed[/]: declared down after {down_after:.2f} s "
            f"({event.reason}), {event.flushed} of its connections flushed"
        )
        phase(f"{victim} down", {i: (0 if i == victim else w) for i, w in weights.items()})
        seen = len(gw.view().events)
        lab.heal(victim)
        up_after, _ = _wait_state(gw, victim, "up", seen, family="4")
        up_after = max(up_after, _wait_state(gw, victim, "up", seen, family="6")[0])
        console.print(f"[bold]{victim} healed[/]: back up after {up_after:.2f} s")
        summary.append(f"{victim} blackholed: down after {down_after:.2f} s, up {up_after:.2f} s after healing")

        # One family alone: another ISP's IPv6 dies, its IPv4 stays up (health per family).
        other = next(i for i in weights if i != victim and i != _stream_isp(lab))
        seen = len(gw.view().events)
        lab.fail(other, "blackhole", family=6)
        down6, event = _wait_state(gw, other, "down", seen, family="6")
        console.print(f"[bold]{other}'s IPv6 blackholed[/]: its IPv6 down after {down6:.2f} s, its IPv4 stays up")
        phase(f"{other} IPv6 down", weights, {i: (0 if i == other else w) for i, w in weights.items()}, rounds=4)
        seen = len(gw.view().events)
        lab.heal(other)
        up6, _ = _wait_state(gw, other, "up", seen, family="6")
        summary.append(f"{other}'s IPv6 blackholed: its IPv6 down after {down6:.2f} s, up {up6:.2f} s after healing")
        # A DHCP ISP renumbers under traffic (one the stream does not use): a new subnet and router.
        renumbered = next(i for i in ("isp1", "isp2") if i != _stream_isp(lab))
        seen = len(gw.view().events)
        pace = lab.popen("c2", [sys.executable, "-m", "wanlb.lab.traffic", "pace", "--every", "0.02", "--timeout", "1"],
                         stdout=subprocess.PIPE, text=True)  # fmt: skip
        address = lab.lease_change(renumbered)
        _, up = _wait_state(gw, renumbered, "up", seen, family="4")
        _wait_state(gw, renumbered, "up", seen, family="6")  # its IPv6 went with the address too
        gateway = next(e for e in gw.view().events[seen:] if e.isp == renumbered and e.event == "gateway")
        back = up.time - gateway.time  # the gateway event: when the daemon saw the new lease's route
        pace.terminate()
        records = json.loads(pace.communicate(timeout=10)[0])["connections"]
        failed = sum(1 for _, took, _ in records if took is None)
        hop = gateway.reason.split(" (")[0]
        line = (f"{renumbered} renumbered by DHCP to {address} (next hop {hop}): back in balancing {back:.2f} s "
                f"after the new route; {failed} of {len(records)} paced connections failed meanwhile")  # fmt: skip
        console.print(f"[bold]{line}[/]")
        summary.append(line)
        phase(f"{renumbered} renumbered", weights, rounds=4)
        stream.terminate()
        result = json.loads(stream.communicate(timeout=10)[0] or "{}")
        ok &= bool(result.get("ok"))
        summary.append(
            f"long-lived stream from c1: left via {result.get('src')}, {result.get('counters', 0)} counters "
            f"in order across the reload, {victim}'s failover and {renumbered}'s new lease: "
            f"{'intact' if result.get('ok') else 'BROKEN: ' + str(result.get('error'))}"
        )
        try:
            gw.stop(cleanup=True)
        except (ControlError, subprocess.TimeoutExpired):
            ok = False
    return ok
