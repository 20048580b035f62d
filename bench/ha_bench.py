"""HA pair benchmark: how long a takeover and a failback take, and how long each connection waits.

Run as root from the repository (it builds its own lab ``wlab-ha<pid>*`` and removes it on every exit):

    python bench/ha_bench.py --trials 5

Lab: ``lab up --ha`` with 2 ISPs (gw1 and gw2 on a shared LAN and shared WAN segments, a sync link), the
lab's generated ``ha:`` sections (VRRPv3 every 100 ms, unicast over the LAN, preempt_delay 3 s, a WAN VIP
per ISP), real keepalived and conntrackd run by each wanlb daemon. Per trial both daemons start, c1 opens
long-lived verified counter streams until each ISP carries at least 5, the backup has them all in its
conntrackd cache, then:

* ``takeover``: gw1 is killed at t0 (every process SIGKILLed, every link down) → the ``role master`` event
  on gw2; ``gap``: each stream's longest wait for data across it; ``reset``: streams that broke (any is a
  failure); ``kept``: streams whose ISP on gw2 is the one they started on;
* ``failback``: gw1 comes back (links, then its daemon), syncs for preempt_delay and takes the VIPs back
  under the streams; ``gap``/``reset`` as above; ``dropped``: NEW non-SYN TCP packets the guard dropped
  on gw1 (packets that would otherwise have become connections on a random ISP).

There is no network emulation on this kernel (no netem): the links are veths, so the figures are the
control plane's (VRRP timers, conntrackd's commit, the daemon) plus TCP's retransmission timing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab
from wanlb.lab.pair import failback, start_pair, stop_pair, takeover


def trial(lab: Lab) -> dict[str, Any]:
    gws = (LabGateway(lab, "gw1"), LabGateway(lab, "gw2"))
    try:
        start_pair(gws)
        out = takeover(lab, *gws)
        back = failback(lab, *gws, guard=True, freeze=False)
    finally:
        stop_pair(lab, gws)
    return {
        "takeover": round(out["takeover"], 3),
        "takeover_gap": max(r["max_gap"] for r in out["results"]),
        "takeover_reset": sum(not r["ok"] for r in out["results"]),
        "kept": sum(out["after"].get(port) == isp for port, isp in out["isp_of"].items()),
        "streams": len(out["results"]),
        "failback_gap": max(r["max_gap"] for r in back["results"]),
        "failback_reset": sum(not r["ok"] for r in back["results"]),
        "dropped": back["guard_drops"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print every trial as JSON too")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (it builds a network-namespace lab)")
    trials = []
    with Lab.up(f"ha{os.getpid()}", isps=2, ha=True) as lab:
        for k in range(1, args.trials + 1):
            t = trial(lab)
            trials.append(t)
            print(f"trial {k}: " + ", ".join(f"{key}={value}" for key, value in t.items()), flush=True)
            if args.json:
                print(json.dumps(t))
    print("\n| figure | median | max | target |\n|---|---|---|---|")
    targets = {"takeover": ("≤ 0.4 s", 0.4), "takeover_gap": ("≤ 1 s", 1.0), "failback_gap": ("≤ 0.25 s", 0.25)}
    for key in ("takeover", "takeover_gap", "failback_gap", "takeover_reset", "failback_reset", "dropped"):
        values = [t[key] for t in trials]
        text, limit = targets.get(key, ("0" if key.endswith("reset") else "", None))
        met = "" if not text else " ✔" if (max(values) <= limit if limit is not None else max(values) == 0) else " ✘"
        print(f"| {key} | {statistics.median(values):.3f} | {max(values):.3f} | {text}{met} |")
    kept = sum(t["kept"] for t in trials)
    print(f"\nstreams kept on their ISP across the takeover: {kept} of {sum(t['streams'] for t in trials)}")


if __name__ == "__main__":
    main()
