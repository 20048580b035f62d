"""Stateful nft objects survive reloads and failovers: changes are applied incrementally, never by
recreating `table inet wanlb` (which would zero the per-ISP counters and empty the dynamic sets).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab, LabError

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

COUNTER = "isp_isp1_tx"
ELEMENT = "10.9.9.9"


def test_counters_and_set_elements_survive_reload_and_failover(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(isps=3, clients=2)
    gw = LabGateway(lab)
    gw.write(lambda cfg: None)  # the lab default: icmp probes on every ISP
    gw.start()
    try:
        gw.wait_for({"isp1": "up", "isp2": "up", "isp3": "up"})
        assert lab.traffic(connections=60)["isp1"] == 20
        seen: list[tuple[str, int | None, bool]] = []  # (step, the counter's packets or None if gone, element in set)

        def record(step: str) -> None:
            try:
                packets: int | None = gw.nft_counter(COUNTER)["packets"]
            except LabError:
                packets = None
            try:
                present = ELEMENT in gw.nft_set_elements("clients")
            except LabError:
                present = False
            seen.append((step, packets, present))

        counted = gw.nft_counter(COUNTER)
        assert counted["packets"] > 0, f"{COUNTER} counted nothing of isp1's traffic: {counted}"
        gw.run("nft", "add", "element", "inet", "wanlb", "clients", f"{{ {ELEMENT} timeout 10m }}")
        record("after traffic and adding the element")

        def weights(cfg: dict[str, Any]) -> None:
            for k, isp in enumerate(cfg["isps"]):
                isp["weight"] = k + 2

        gw.write(weights)
        gw.reload()
        record("after a reload with new weights")
        lab.fail("isp2", "blackhole")
        gw.wait_for({"isp2": "down"})
        record("after isp2 went down")
        lab.heal("isp2")
        gw.wait_for({"isp2": "up"}, timeout=15)
        record("after isp2 came back")

        lines = "\n".join(f"{step}: {COUNTER} packets {n}, {ELEMENT} in clients: {p}" for step, n, p in seen)
        packets = [n for _, n, _ in seen]
        assert None not in packets and packets == sorted(packets), f"{COUNTER} lost its count:\n{lines}"
        assert all(present for _, _, present in seen), f"the clients set lost {ELEMENT}:\n{lines}"
    finally:
        gw.stop(cleanup=True)
