"""``wanlb demo``: the whole gateway on one machine in under a minute.

Builds the lab, runs the daemon inside the gateway namespace, pushes rounds of
short connections from the clients while a long-lived stream runs, changes the
weights live (the stream must not notice), blackholes an ISP that the stream
does not use (failover: its share goes to the others, nothing else notices),
heals it, and prints per-ISP shares as the servers saw them.  Everything is
torn down on every exit path, Ctrl-C included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter

import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from wanlb.control import ControlError, request, socket_in_use
from wanlb.lab.lab import Lab

ROUNDS_PER_PHASE = 8
CONNECTIONS_PER_ROUND = 125
ROUND_PAUSE = 0.4  # seconds: slow enough for a person to watch the shares converge
PHASES: tuple[tuple[str, dict[str, int]], ...] = (
    ("weights 3:2:1", {"isp1": 3, "isp2": 2, "isp3": 1}),
    ("reloaded to 1:1:2", {"isp1": 1, "isp2": 1, "isp3": 2}),
)


def _table(title: str, counts: Counter[str], weights: dict[str, int], status: dict | None) -> Table:
    total = sum(counts[i] for i in weights) or 1
    wsum = sum(weights.values())
    table = Table(title=title)
    for col in ("isp", "state", "weight", "target share", "connections", "seen share"):
        table.add_column(col, justify="right" if col != "isp" else "left")
    states = {i["name"]: i["status"] for i in (status or {}).get("isps", [])}
    for isp, weight in weights.items():
        table.add_row(
            isp,
            states.get(isp, "?"),
            str(weight),
            f"{100 * weight / wsum:.1f}%",
            str(counts[isp]),
            f"{100 * counts[isp] / total:.1f}%",
        )
    return table


def _write_weights(lab: Lab, weights: dict[str, int]) -> None:
    data = yaml.safe_load(lab.config_path.read_text())
    for isp in data["isps"]:
        isp["weight"] = weights[isp["name"]]
    lab.config_path.write_text(yaml.safe_dump(data, sort_keys=False))


def _stream_isp(lab: Lab) -> str | None:
    """Which ISP the demo's long-lived stream left through (from the gateway's conntrack table)."""
    argv = [sys.executable, "-m", "wanlb.cli", "conntrack", "--config", str(lab.config_path), "list"]
    argv += ["-p", "tcp", "--dport", "5001", "--state", "ESTABLISHED", "-o", "json"]
    out = lab.run("gw", argv, capture_output=True, text=True, check=True).stdout
    isps = [json.loads(line).get("isp") for line in out.splitlines()]
    return isps[0] if isps else None


def _wait_state(lab: Lab, isp: str, state: str, timeout: float = 5.0) -> tuple[float, dict]:
    """Seconds until the daemon has applied ``isp``'s change to ``state``, and that event (raises after ``timeout``)."""
    start = time.monotonic()
    seen = len(request(str(lab.socket_path), {"cmd": "status"})["events"])
    while True:
        events = request(str(lab.socket_path), {"cmd": "status"})["events"][seen:]
        found = [e for e in events if e["isp"] == isp and e["status"] == state]
        if found:
            return time.monotonic() - start, found[-1]
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"{isp} did not become {state} within {timeout} s")
        time.sleep(0.02)


def _wait_for_daemon(lab: Lab, proc: subprocess.Popen, log_path: str) -> None:
    deadline = time.monotonic() + 20
    while not socket_in_use(str(lab.socket_path)):
        if proc.poll() is not None or time.monotonic() > deadline:
            with open(log_path) as fh:
                raise RuntimeError(f"the daemon did not start:\n{fh.read()[-2000:]}")
        time.sleep(0.05)


def run_demo(console: Console, name: str | None = None) -> int:
    """Run the demo; returns the process exit code (0 when every check held)."""
    name = name or f"demo{os.getpid() % 10000}{uuid.uuid4().hex[:3]}"
    started = time.monotonic()
    console.print(f"[bold]wanlb demo[/] — building lab [cyan]{name}[/]: 2 clients, gateway, 3 ISPs, internet")
    with Lab.up(name=name, isps=3, clients=2, weights=list(PHASES[0][1].values())) as lab:
        log_path = str(lab.dir / "wanlb.log")
        with open(log_path, "w") as log:
            proc = lab.popen(
                "gw", [sys.executable, "-m", "wanlb.cli", "run", "-c", str(lab.config_path)], label="wanlb", stderr=log
            )
        _wait_for_daemon(lab, proc, log_path)
        console.print(f"daemon running in the gateway namespace (log: {log_path})")
        stream = lab.popen(
            "c1",
            [sys.executable, "-m", "wanlb.lab.traffic", "stream", "--duration", "0", "--stall", "3"],
            label="stream",
            stdout=subprocess.PIPE,
            text=True,
        )
        ok = True
        summary = []
        victim = ""

        def phase(title: str, weights: dict[str, int]) -> None:
            nonlocal ok
            counts: Counter[str] = Counter()
            failed = 0
            with Live(console=console, refresh_per_second=4) as live:
                for _ in range(ROUNDS_PER_PHASE):
                    report = lab.traffic(connections=CONNECTIONS_PER_ROUND, parallel=32)
                    failed += report["failed"]
                    counts.update({k: v for k, v in report.items() if k.startswith("isp")})
                    status = request(str(lab.socket_path), {"cmd": "status"})
                    live.update(_table(f"{title}: {sum(counts.values())} new connections", counts, weights, status))
                    time.sleep(ROUND_PAUSE)
            total = sum(counts.values()) or 1
            wsum = sum(weights.values())
            worst = max(abs(100 * counts[i] / total - 100 * w / wsum) for i, w in weights.items())
            ok &= failed == 0 and worst <= 5
            summary.append(f"{title}: {total} connections, {failed} failed, max deviation {worst:.1f} points")

        for title, weights in PHASES:
            if title != PHASES[0][0]:
                _write_weights(lab, weights)
                request(str(lab.socket_path), {"cmd": "reload"})
            phase(title, weights)

        # Failover: blackhole the busiest ISP the stream does not use (its link stays up).
        weights = PHASES[-1][1]
        victim = max((i for i in weights if i != _stream_isp(lab)), key=lambda i: weights[i])
        lab.fail(victim, "blackhole")
        down_after, event = _wait_state(lab, victim, "down")
        console.print(
            f"[bold]{victim} blackholed[/]: declared down after {down_after:.2f} s "
            f"({event['reason']}), {event['flushed']} of its connections flushed"
        )
        phase(f"{victim} down", {i: (0 if i == victim else w) for i, w in weights.items()})
        lab.heal(victim)
        up_after, _ = _wait_state(lab, victim, "up")
        console.print(f"[bold]{victim} healed[/]: back up after {up_after:.2f} s")
        summary.append(f"{victim} blackholed: down after {down_after:.2f} s, up {up_after:.2f} s after healing")
        stream.terminate()
        result = json.loads(stream.communicate(timeout=10)[0] or "{}")
        ok &= bool(result.get("ok"))
        summary.append(
            f"long-lived stream from c1: left via {result.get('src')}, {result.get('counters', 0)} counters "
            f"in order across the reload and {victim}'s failover: "
            f"{'intact' if result.get('ok') else 'BROKEN: ' + str(result.get('error'))}"
        )
        try:
            request(str(lab.socket_path), {"cmd": "stop", "cleanup": True})
            proc.wait(timeout=15)
        except (ControlError, subprocess.TimeoutExpired):
            ok = False
    console.print("[bold]summary[/]")
    for line in summary:
        console.print(f"  {line}")
    console.print(
        f"lab torn down; {time.monotonic() - started:.1f} s — {'[green]all checks held' if ok else '[red]FAILED'}"
    )
    return 0 if ok else 1
