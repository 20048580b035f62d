"""Acceptance of the sticky datapath with real traffic in the lab: shares, stickiness, inbound, local."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from wanlb.control import request
from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


class Gateway(LabGateway):
    """The lab's daemon with every ISP up (no health probes), weights and tiers set per test."""

    def set_weights(self, weights: dict[str, int], tiers: dict[str, int] | None = None) -> None:
        def edit(data: dict) -> None:
            for isp in data["isps"]:
                isp["weight"] = weights.get(isp["name"], 1)
                isp["tier"] = (tiers or {}).get(isp["name"], 1)
                isp.pop("health", None)  # datapath tests: every ISP is up

        self.write(edit)


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    with Lab.up(name=f"t{os.getpid()}{uuid.uuid4().hex[:4]}", isps=3, clients=2) as lab:
        g = Gateway(lab)
        g.set_weights({"isp1": 1, "isp2": 1, "isp3": 1})
        g.start()
        try:
            yield g
        finally:
            g.stop()


def shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: 100.0 * v / total for k, v in counts.items()}


def test_weights_3_to_1_over_2000_connections(gw: Gateway) -> None:
    gw.set_weights({"isp1": 3, "isp2": 1}, tiers={"isp3": 2})
    gw.reload()
    counts = gw.lab.traffic(connections=2000, parallel=64)
    assert counts["failed"] == 0 and counts["other"] == 0, counts
    s = shares({k: counts[k] for k in ("isp1", "isp2", "isp3")})
    assert abs(s["isp1"] - 75) <= 3 and abs(s["isp2"] - 25) <= 3 and s["isp3"] == 0, s


def test_weights_1_1_1_over_2000_connections(gw: Gateway) -> None:
    gw.set_weights({"isp1": 1, "isp2": 1, "isp3": 1})
    gw.reload()
    counts = gw.lab.traffic(connections=2000, parallel=64)
    assert counts["failed"] == 0 and counts["other"] == 0, counts
    for isp, share in shares({k: counts[k] for k in ("isp1", "isp2", "isp3")}).items():
        assert abs(share - 100 / 3) <= 3, (isp, counts)


def test_gateway_own_traffic_is_balanced_by_the_same_weights(gw: Gateway) -> None:
    gw.set_weights({"isp1": 3, "isp2": 1}, tiers={"isp3": 2})
    gw.reload()
    counts = gw.lab.traffic(connections=1000, parallel=32, nodes=["gw"])
    assert counts["failed"] == 0 and counts["other"] == 0, counts
    s = shares({k: counts[k] for k in ("isp1", "isp2", "isp3")})
    assert abs(s["isp1"] - 75) <= 3 and abs(s["isp2"] - 25) <= 3, s


def test_inbound_connection_replies_through_the_wan_it_came_in_on(gw: Gateway) -> None:
    lab = gw.lab
    lab.popen("gw", [sys.executable, "-m", "wanlb.lab.servers", "http", "--listen", "0.0.0.0:8080"], label="inbound")
    time.sleep(0.5)
    spoofed_before = lab.counter("isp1")
    for _ in range(5):
        out = lab.run(
            "inet",
            [sys.executable, "-m", "wanlb.lab.traffic", "http", "--target", "100.64.2.2:8080", "--connections", "4"],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(out.stdout)
        # Without the inbound mark the reply would take the main default (isp1), whose
        # anti-spoofing drops a source of 100.64.2.2: the connection would fail.
        assert result["failed"] == 0, result
    assert lab.counter("isp1") == spoofed_before


def test_stream_survives_three_reloads_and_kill_9(gw: Gateway) -> None:
    lab = gw.lab
    gw.set_weights({"isp1": 1, "isp2": 1, "isp3": 1})
    gw.reload()
    streams = [
        lab.popen(
            client,
            [sys.executable, "-m", "wanlb.lab.traffic", "stream", "--duration", "12", "--stall", "2"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for client in lab.clients * 2
    ]
    time.sleep(1.0)
    for weights in (
        {"isp1": 5, "isp2": 1, "isp3": 1},
        {"isp1": 1, "isp2": 7, "isp3": 1},
        {"isp1": 1, "isp2": 1, "isp3": 9},
    ):
        gw.set_weights(weights)
        gw.reload()
        time.sleep(1.0)
    gw.kill9()
    time.sleep(1.0)
    gw.start()
    results = [json.loads(p.communicate(timeout=30)[0]) for p in streams]
    for r in results:
        assert r["ok"], r
        assert r["counters"] > 0
    # The streams were spread over several ISPs, and each kept its source (an ISP change would have
    # broken it at the ISPs' anti-spoofing, failing "ok" above).
    assert all(r["src"].startswith("100.64.") for r in results)
    assert len({r["src"] for r in results}) >= 2


def test_daemon_live_counts_equal_the_kernel_table(gw: Gateway) -> None:
    gw.set_weights({"isp1": 1, "isp2": 1, "isp3": 1})
    gw.reload()
    gw.lab.traffic(connections=300, parallel=32)
    deadline = time.monotonic() + 10
    while True:
        live = request(str(gw.lab.socket_path), {"cmd": "conn_counts"})
        kernel = {}
        for mark, isp in ((0x100, "isp1"), (0x200, "isp2"), (0x300, "isp3")):
            out = gw.lab.run("gw", ["conntrack", "-L", "-m", str(mark)], capture_output=True, text=True).stdout
            kernel[isp] = len(out.splitlines())
        if live["by_isp"] == kernel or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # connections still closing: compare again
    assert live["by_isp"] == kernel
    assert min(kernel.values()) >= 100
