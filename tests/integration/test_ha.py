"""An HA pair in the lab (`lab up --ha`), with the real keepalived and conntrackd that wanlb renders and runs:
the primary dies (every process killed, every link down) and the established connections continue on the
backup, each on the ISP it started on, with the source address the server saw; new connections are balanced
by the backup.  Without the non-SYN guard the same takeover resets connections (the test can fail)."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import module_lab

from wanlb import ha
from wanlb.config import load_config
from wanlb.lab.gateway import WANLB, LabGateway
from wanlb.lab.lab import Lab, python_module
from wanlb.lab.topology import LAN_VIP, wan_vip

pytestmark = pytest.mark.skipif(
    not (shutil.which("keepalived") and shutil.which("conntrackd")), reason="needs keepalived and conntrackd"
)

lab = module_lab(ha=True, isps=2)
STREAMS_PER_ISP = 5


def wait_until(what: str, ok: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout}s")
        time.sleep(0.05)


def role(gw: LabGateway) -> str | None:
    try:
        ha = gw.status().get("ha") or {}
    except Exception:  # not answering (dead, starting)
        return None
    return ha.get("role")


@pytest.fixture
def pair(lab: Lab) -> Iterator[tuple[LabGateway, LabGateway]]:
    """Both daemons running, gw1 master and gw2 backup; afterwards both stopped (cleanup) and gw1 revived."""
    gw1, gw2 = LabGateway(lab, "gw1"), LabGateway(lab, "gw2")
    try:
        for gw in (gw1, gw2):
            gw.write(lambda cfg: None)
            gw.start()
        wait_until("gw1 master, gw2 backup", lambda: (role(gw1), role(gw2)) == ("master", "backup"))
        for gw in (gw1, gw2):
            gw.wait_for({"isp1": "up", "isp2": "up"}, timeout=10)
        yield gw1, gw2
    finally:
        for gw in (gw2, gw1):
            with contextlib.suppress(Exception):  # (a killed gateway's daemon is gone already)
                gw.stop(cleanup=True)
        if "gw1" in lab.killed():
            lab.revive("gw1")
        for c in ("c1", "c2"):
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
    for proc in streams:
        proc.terminate()
    return [json.loads(proc.communicate(timeout=30)[0]) for proc in streams]


def synced(gw: LabGateway, ports: set[int]) -> bool:
    """The backup's conntrackd holds every stream in its external cache (`conntrackd -e`)."""
    conf = str(ha.paths_for(load_config(str(gw.config))).conntrackd_conf)
    out = gw.run("conntrackd", "-C", conf, "-e")
    return all(f"sport={port} " in out for port in ports)


def takeover(lab: Lab, gw1: LabGateway, gw2: LabGateway) -> dict[str, Any]:
    """Kill gw1 under streams on both ISPs; what the streams, the backup and the servers saw."""
    streams, isp_of = streams_by_isp(lab, gw1)
    wait_until("the backup has every stream", lambda: synced(gw2, set(isp_of)), timeout=10)
    time.sleep(0.5)
    killed = time.time()
    lab.kill("gw1")
    wait_until("gw2 master", lambda: role(gw2) == "master", timeout=10)
    became = next(e["time"] for e in reversed(gw2.status()["events"]) if e["event"] == "role")
    time.sleep(3.0)  # the streams run on through gw2
    after = {e["orig"]["sport"]: e["isp"] for e in entries(gw2) if e["orig"].get("dport") == 5001}
    new = lab.traffic(connections=40, timeout=2.0)
    results = stop_streams(streams)
    return {"results": results, "isp_of": isp_of, "after": after, "new": new, "takeover": became - killed,
            "guard_drops": gw2.nft_counter("ha_nonsyn_dropped")["packets"]}  # fmt: skip


def test_killing_the_primary_keeps_every_connection_on_its_isp(lab: Lab, pair: tuple[LabGateway, LabGateway]) -> None:
    gw1, gw2 = pair
    seen = takeover(lab, gw1, gw2)
    results = seen["results"]
    gaps = sorted(r["max_gap"] for r in results)
    print(
        f"\ntakeover {seen['takeover']:.3f} s after the kill; {len(results)} streams, largest gap per stream "
        f"{gaps[-1]:.3f} s (median {gaps[len(gaps) // 2]:.3f} s); guard dropped {seen['guard_drops']} packets"
    )
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]]  # no reset, no stall, no loss
    # Each stream kept its ISP (the synced ct mark) and its source address as the server saw it (the WAN VIP).
    assert {port: seen["after"].get(port) for port in seen["isp_of"]} == seen["isp_of"]
    vips = {wan_vip(1): "isp1", wan_vip(2): "isp2"}
    assert {vips.get(r["src"].rsplit(":", 1)[0]) for r in results} == {"isp1", "isp2"}, results
    # New connections after the takeover: balanced by the backup's weights (1:1), none failed.
    assert seen["new"]["failed"] == 0 and seen["new"]["isp1"] == seen["new"]["isp2"] == 20, seen["new"]
    assert gw2.status()["ha"]["last_commit"] == "ok"


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


@pytest.mark.parametrize(
    ("guard", "freeze"), [(True, False), (True, True), (False, True)],
    ids=["with the guard", "with the guard, a slow daemon", "without the guard, a slow daemon"],
)  # fmt: skip
def test_failback_after_the_primary_returns(
    lab: Lab, pair: tuple[LabGateway, LabGateway], guard: bool, freeze: bool
) -> None:
    """The returning gw1 syncs, then takes the VIPs back under full traffic. With the non-SYN guard every stream
    survives on its ISP, however slow its daemon is to have conntrackd commit; without it (ha.takeover_guard
    false) the packets that reach gw1 before the commit become NEW connections on a random ISP and their
    streams are reset: the guard is what makes the moment safe (and this test can fail)."""
    gw1, gw2 = pair
    takeover(lab, gw1, gw2)
    seen = failback(lab, gw1, gw2, guard, freeze)
    results = seen["results"]
    broken = [r for r in results if not r["ok"]]
    gaps = sorted(r["max_gap"] for r in results)
    print(
        f"\nfailback {'with' if guard else 'without'} the guard: {len(broken)} of {len(results)} streams broke; "
        f"largest gap {gaps[-1]:.3f} s; guard dropped {seen['guard_drops']}"
    )
    if guard:
        assert broken == [] and {p: seen["after"].get(p) for p in seen["isp_of"]} == seen["isp_of"], results
    else:
        assert broken, "no stream broke without the guard: the test cannot tell the guard's effect"
