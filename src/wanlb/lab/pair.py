"""Driving an HA pair in the lab (`lab up --ha`): long-lived streams on each ISP, a takeover (the primary
killed), a failback (it comes back and takes over again), and what the streams, the nodes and the servers
saw.  Shared by tests/integration/test_ha_pair.py and bench/ha_bench.py."""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

from wanlb import ha
from wanlb.config import load_config
from wanlb.lab.gateway import WANLB, LabGateway
from wanlb.lab.lab import Lab, python_module
from wanlb.lab.topology import LAN_VIP, wan_vip

STREAMS_PER_ISP = 5


def wait_until(what: str, ok: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll ``ok`` until it holds; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout}s")
        time.sleep(0.05)


def role(gw: LabGateway) -> str | None:
    """The node's HA role as its daemon says, or None while it does not answer."""
    try:
        ha = gw.status().get("ha") or {}
    except Exception:  # not answering (dead, starting)
        return None
    return ha.get("role")


def start_pair(
    gws: tuple[LabGateway, LabGateway], edit: Callable[[LabGateway, dict[str, Any]], None] | None = None
) -> None:
    """Both daemons on the lab's generated configs, until gw1 is master, gw2 backup, every ISP up on both and each
    hears the other over the sync link.  ``edit(gw, cfg)`` changes each node's config first (an ``api`` section,
    say): the configs are written afresh here, so that is where anything beyond the generated ones must go."""
    for gw in gws:
        gw.write(functools.partial(edit, gw) if edit else lambda cfg: None)
        gw.start()
    wait_until("gw1 master, gw2 backup", lambda: (role(gws[0]), role(gws[1])) == ("master", "backup"))
    isps = {isp: "up" for isp in gws[0].lab.isps}
    for gw in gws:
        gw.wait_for(isps, timeout=10)
    wait_until("each node hears the other's hellos", lambda: all(peer(gw).get("state") == "up" for gw in gws))


def peer(gw: LabGateway) -> dict[str, Any]:
    """The node's view of its peer (``ha.peer`` of its status: state, role, split brain, config differences)."""
    return dict(gw.status()["ha"]["peer"])


def stop_pair(lab: Lab, gws: tuple[LabGateway, LabGateway]) -> None:
    """Both daemons stopped with cleanup (a killed one is gone already), gw1 revived, both conntrack tables and
    the clients' neighbour caches emptied: the lab as `lab up` left it."""
    for gw in reversed(gws):
        with contextlib.suppress(Exception):
            gw.stop(cleanup=True)
    if "gw1" in lab.killed():
        lab.revive("gw1")
    for gw in gws:
        lab.run(gw.node, ["conntrack", "-F"], capture_output=True, check=False)
    for c in lab.clients:
        lab.run(c, ["ip", "neigh", "flush", "all"], check=False)


def entries(gw: LabGateway) -> list[dict[str, Any]]:
    """The node's established connections to the stream server (not the closing ones of earlier streams)."""
    out = gw.run(*WANLB, "conntrack", "--config", str(gw.config), "list", "-o", "json", "-p", "tcp", "--dport", "5001")
    return [e for line in out.splitlines() if (e := json.loads(line)).get("state") == "ESTABLISHED"]


def streams_by_isp(lab: Lab, gw: LabGateway) -> tuple[list[subprocess.Popen[str]], dict[int, str]]:
    """At least STREAMS_PER_ISP long-lived streams on each ISP (started from c1 until there are), and each
    stream's ISP by its client port, as the primary's conntrack has them."""
    argv = python_module("wanlb.lab.traffic", "stream", "--stall", "3")
    streams: list[subprocess.Popen[str]] = []
    deadline = time.monotonic() + 20
    while True:
        on = {e["orig"]["sport"]: e["isp"] for e in entries(gw) if e["orig"].get("dport") == 5001}
        if all(list(on.values()).count(isp) >= STREAMS_PER_ISP for isp in ("isp1", "isp2")):
            return streams, on
        assert time.monotonic() < deadline, f"the streams did not reach both ISPs: {on}"
        streams += [lab.popen("c1", argv, stdout=subprocess.PIPE, text=True) for _ in range(4)]
        time.sleep(0.5)


def stop_streams(streams: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    """End the streams; each one's report (ok, src, counters, max_gap)."""
    for proc in streams:
        proc.terminate()
    return [json.loads(proc.communicate(timeout=30)[0]) for proc in streams]


def synced(gw: LabGateway, ports: set[int]) -> bool:
    """The backup's conntrackd holds every stream in its external cache (`conntrackd -e`)."""
    conf = str(ha.paths_for(load_config(str(gw.config))).conntrackd_conf)
    out = gw.run("conntrackd", "-C", conf, "-e")
    return all(f"sport={port} " in out for port in ports)


def udp_flow(gw: LabGateway, sport: int) -> dict[str, Any] | None:
    """The node's conntrack entry of the UDP flow from ``sport`` (its ISP, and the reply's destination: the
    address the server answered, i.e. the SNAT source)."""
    out = gw.run(*WANLB, "conntrack", "--config", str(gw.config), "list", "-o", "json", "-p", "udp", "--dport", "53")
    found = [e for line in out.splitlines() if (e := json.loads(line))["orig"].get("sport") == sport]
    return {"isp": found[0]["isp"], "seen_as": found[0]["reply"]["dst"]} if found else None


def takeover(lab: Lab, gw1: LabGateway, gw2: LabGateway) -> dict[str, Any]:
    """Kill gw1 under TCP streams on both ISPs and one UDP flow; what the flows, the backup and the servers saw."""
    udp = lab.popen("c2", python_module("wanlb.lab.traffic", "udp", "--stall", "3"), stdout=subprocess.PIPE, text=True)
    streams, isp_of = streams_by_isp(lab, gw1)
    wait_until("the backup has every stream", lambda: synced(gw2, set(isp_of)), timeout=10)
    sport = _udp_sport(gw1)
    udp_before = udp_flow(gw1, sport)
    time.sleep(0.5)
    killed = time.time()
    lab.kill("gw1")
    wait_until("gw2 master", lambda: role(gw2) == "master", timeout=10)
    became = next(e["time"] for e in reversed(gw2.status()["events"]) if e["event"] == "role")
    time.sleep(3.0)  # the streams run on through gw2
    after = {e["orig"]["sport"]: e["isp"] for e in entries(gw2) if e["orig"].get("dport") == 5001}
    udp_after = udp_flow(gw2, sport)
    new = lab.traffic(connections=40, timeout=2.0)
    results = stop_streams(streams)
    [udp_result] = stop_streams([udp])
    return {"results": results, "isp_of": isp_of, "after": after, "new": new, "takeover": became - killed,
            "guard_drops": gw2.nft_counter("ha_nonsyn_dropped")["packets"],
            "udp": udp_result, "udp_before": udp_before, "udp_after": udp_after}  # fmt: skip


def _udp_sport(gw: LabGateway) -> int:
    """The UDP flow's source port, from the primary's only entry to the DNS server."""
    out = gw.run(*WANLB, "conntrack", "--config", str(gw.config), "list", "-o", "json", "-p", "udp", "--dport", "53")
    ports = {json.loads(line)["orig"]["sport"] for line in out.splitlines()}
    assert len(ports) == 1, f"expected one UDP flow to the DNS server: {ports}"
    return ports.pop()


def failback(lab: Lab, gw1: LabGateway, gw2: LabGateway, guard: bool, freeze: bool) -> dict[str, Any]:
    """gw1 died and gw2 carries everything; gw1 comes back (its links, then its daemon): it syncs from gw2 for
    preempt_delay, then takes the VIPs back under full traffic — the moment the guard is for."""
    streams, isp_of = streams_by_isp(lab, gw2)
    lab.revive("gw1")
    gw1.write(lambda cfg: cfg["ha"].update(takeover_guard=guard))
    gw1.start()
    wait_until("gw1 backup", lambda: role(gw1) == "backup", timeout=10)
    wait_until("gw1 has every stream", lambda: synced(gw1, set(isp_of)), timeout=10)
    # keepalived sets the VIPs and only then tells the daemon, which then has conntrackd commit: packets of the
    # streams reach gw1 in between. A busy box widens that moment; ``freeze`` stops gw1's daemon for a second
    # around the takeover, so the moment is certain to carry packets.
    assert gw1.proc is not None
    if freeze:
        gw1.proc.send_signal(signal.SIGSTOP)
    try:
        wait_until("gw1 holds the LAN VIP", lambda: f" {LAN_VIP}/" in gw1.run("ip", "-4", "addr", "show", "lan0"))
        time.sleep(1.0 if freeze else 0.0)
    finally:
        gw1.proc.send_signal(signal.SIGCONT)
    wait_until("gw1 master again", lambda: role(gw1) == "master", timeout=15)
    time.sleep(2.0)
    after = {e["orig"]["sport"]: e["isp"] for e in entries(gw1) if e["orig"].get("dport") == 5001}
    results = stop_streams(streams)
    return {"results": results, "isp_of": isp_of, "after": after,
            "guard_drops": gw1.nft_counter("ha_nonsyn_dropped")["packets"] if guard else None}  # fmt: skip


def vips_isp(result: dict[str, Any]) -> str | None:
    """The ISP whose WAN VIP the server saw as the stream's source."""
    return {wan_vip(1): "isp1", wan_vip(2): "isp2"}.get(str(result["src"]).rsplit(":", 1)[0])
