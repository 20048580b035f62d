"""Passive detection in the lab: a blackholed ISP is out of balancing from the datapath's own evidence (its
new connections' SYNs go unanswered while the other ISPs' are answered) long before its probes, slowed to one
round every 2 s, could say; the probe round sent right after the suspicion confirms it; and with every ISP
healthy under the same traffic nothing is ever suspected."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from harness import module_lab

from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab, python_module
from wanlb.lab.topology import HTTP_ADDR

lab = module_lab(isps=3)


def slow_probes(cfg: dict[str, Any]) -> None:
    """Probe rounds every 2 s: probe-only detection would need 3 failed rounds, at least 4 s."""
    for isp in cfg["isps"]:
        isp.setdefault("health", {})["interval"] = "2s"


def paced(lab: Lab) -> subprocess.Popen[str]:
    return lab.popen("c1", python_module("wanlb.lab.traffic", "pace", "--every", "0.02", "--timeout", "1"),
                     stdout=subprocess.PIPE, text=True)  # fmt: skip


def records(proc: subprocess.Popen[str]) -> list[list[Any]]:
    proc.terminate()
    return list(json.loads(proc.communicate(timeout=20)[0])["connections"])


def test_a_blackholed_isp_leaves_balancing_on_the_datapaths_evidence(lab: Lab, gw: LabGateway) -> None:
    gw.write(slow_probes)
    gw.start()
    gw.wait_for({"isp1": "up", "isp2": "up", "isp3": "up"})
    pace = paced(lab)
    try:
        time.sleep(1.0)
        seen = len(gw.view().events)
        t0 = time.time()
        lab.fail("isp1", "blackhole")
        suspected = gw.wait_event("isp1", "suspected", timeout=5, after=seen)
        down = gw.wait_event("isp1", "down", timeout=15, after=seen)
        time.sleep(0.5)
    finally:
        done = records(pace)
        lab.heal("isp1")
    out_at = suspected["time"] + suspected["applied_ms"] / 1000  # the ruleset without isp1 was in place
    failed = [start for start, took, _ in done if took is None]
    print(f"\nsuspected {suspected['time'] - t0:.3f} s after the blackhole (in the ruleset "
          f"{out_at - t0:.3f} s), down {down['time'] - t0:.3f} s; {len(failed)} of {len(done)} connections "
          f"failed, the last started {max(failed) - t0:.3f} s after it")  # fmt: skip
    assert "new connections without an answer" in suspected["reason"], suspected
    assert suspected["time"] < down["time"]  # the datapath said so first, the probes confirmed
    assert failed and all(start <= out_at for start in failed), (out_at, failed)  # nothing failed afterwards
    [isp1] = [i for i in gw.status()["isps"] if i["name"] == "isp1"]
    assert isp1["status"] == "down" and isp1["suspected"] is None  # the machine has spoken


def test_healthy_isps_under_traffic_are_never_suspected(lab: Lab, gw: LabGateway) -> None:
    gw.write(lambda cfg: None)
    gw.start()
    gw.wait_for({"isp1": "up", "isp2": "up", "isp3": "up"})
    seen = len(gw.view().events)
    pace = paced(lab)
    try:
        lab.traffic(connections=2000, parallel=64, timeout=2.0)
        time.sleep(2.0)
    finally:
        done = records(pace)
    assert all(took is not None for _, took, _ in done)
    # Refused is answered too: a burst to a closed port (each SYN answered by a RST) suspects nobody.
    refused = lab.traffic(connections=30, parallel=30, timeout=2.0, target=f"{HTTP_ADDR}:9")
    assert refused["failed"] == 30, refused
    time.sleep(1.0)
    assert [e for e in gw.view().events[seen:] if e.event in ("suspected", "cleared")] == []
