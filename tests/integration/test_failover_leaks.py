"""No packet with a LAN source ever leaves the gateway, not even around failovers.

A connection whose conntrack entry is flushed, or a packet conntrack calls invalid (a late retransmission,
a stray FIN/RST), skips NAT; if the gateway forwards it anyway it reaches an ISP with the LAN address as
source. Each lab ISP router counts such packets in its named counter `lan_leak` (before its BCP38 drop).
Five failovers, rotating over the ISPs, with long streams and a steady rate of short connections running.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable

import pytest
from acceptance import Streams

from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab, LabError, python_module

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

LEAK_COUNTER = "lan_leak"
FAILOVERS = ("isp1", "isp2", "isp3", "isp1", "isp2")
STREAMS = 6


def leaks(lab: Lab) -> dict[str, int]:
    return {isp: lab.counter(isp, LEAK_COUNTER) for isp in lab.isps}


def test_failovers_never_leak_lan_sources_to_an_isp(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(isps=3, clients=2)
    gw = LabGateway(lab)
    gw.write(lambda cfg: None)  # the lab default: icmp probes every 200 ms on every ISP
    gw.start()
    streams = Streams(lab)
    pacers: list[subprocess.Popen[str]] = []
    try:
        gw.wait_for({isp: "up" for isp in lab.isps})
        try:
            baseline = leaks(lab)
        except LabError as exc:
            pytest.fail(f"counter {LEAK_COUNTER!r} not found on the lab's ISP routers (topology.isp_nft): {exc}")
        pace = python_module("wanlb.lab.traffic", "pace", "--every", "0.05", "--timeout", "1")
        pacers = [lab.popen(client, pace, stdout=subprocess.PIPE, text=True) for client in lab.clients]
        timeline = []
        for n, isp in enumerate(FAILOVERS, start=1):
            streams.start(STREAMS - len(streams.running()))  # replace the streams the last failover broke
            time.sleep(1.0)
            lab.fail(isp, "blackhole")
            gw.wait_for({isp: "down"}, timeout=10)
            time.sleep(1.0)  # the flush, and the reconnects through the other ISPs
            lab.heal(isp)
            gw.wait_for({isp: "up"}, timeout=20)  # a repeated down is held for a while (flap damping)
            now = leaks(lab)
            timeline.append(f"after failover {n} ({isp} down and up): {now}")

        for proc in pacers:
            proc.terminate()
        paced = [json.loads(proc.communicate(timeout=30)[0])["connections"] for proc in pacers]
        stopped = streams.stop()
        leaked = {isp: n - baseline[isp] for isp, n in leaks(lab).items()}
        failed = sum(1 for records in paced for r in records if r[1] is None)
        total = sum(len(records) for records in paced)
        broken = sum(1 for s in stopped if not s.ok)
        if sum(leaked.values()):
            pytest.fail(
                f"packets with a LAN source reached the ISPs: {leaked}\n"
                + "\n".join(timeline)
                + f"\n(paced connections failed: {failed} of {total}; streams broken: {broken} of {len(stopped)})",
                pytrace=False,
            )
    finally:
        for proc in pacers:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        streams.kill()
        gw.stop(cleanup=True)
