"""Failback done right, in the lab: a recovered tier waits ``failover.failback_after`` before it takes NEW
connections back; ``on_recover: move-lower-tier`` applies the new ruleset before it flushes the backup tier's
connections (else a flushed flow's next packet lands on the backup again and stays there), and a rule's own
``on_recover`` moves its connections alone; and no flush runs while no ISP is usable (the flushed connections
would have nowhere to go; kept, they resume)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from harness import module_lab

from wanlb.lab.gateway import WANLB, LabGateway
from wanlb.lab.lab import Lab, python_module
from wanlb.lab.topology import DNS_ADDR

lab = module_lab(isps=2)


def backup_tier(extra: dict[str, Any]) -> Any:
    """isp2 is the metered backup (tier 2); ``extra`` goes into ``failover``."""

    def edit(cfg: dict[str, Any]) -> None:
        cfg["isps"][1]["tier"] = 2
        cfg["failover"] = {"on_recover": "move-lower-tier", **extra}

    return edit


def udp_isp(gw: LabGateway) -> str | None:
    """The ISP of the one UDP flow to the DNS server, as the gateway's conntrack has it now."""
    out = gw.run(*WANLB, "conntrack", "--config", str(gw.config), "list", "-o", "json", "-p", "udp", "--dport", "53")
    isps = {json.loads(line)["isp"] for line in out.splitlines()}
    assert len(isps) <= 1, isps
    return isps.pop() if isps else None


@contextmanager
def udp_flow(lab: Lab, every: float) -> Iterator[subprocess.Popen[str]]:
    """One UDP flow (one socket: one 5-tuple) from c1, a DNS query every ``every`` seconds."""
    proc = lab.popen("c1", python_module("wanlb.lab.traffic", "udp", "--every", str(every), "--stall", "3"),
                     stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        yield proc
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def shares(lab: Lab, n: int = 20) -> dict[str, int]:
    report = lab.traffic(connections=n, timeout=2.0)
    assert report["failed"] == 0, report
    return {isp: report[isp] for isp in ("isp1", "isp2")}


def wait_isp(gw: LabGateway, isp: str | None, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while udp_isp(gw) != isp:
        assert time.monotonic() < deadline, f"the UDP flow is on {udp_isp(gw)}, not {isp}"
        time.sleep(0.05)


def test_a_recovered_tier_waits_failback_after_before_it_takes_connections_back(lab: Lab, gw: LabGateway) -> None:
    gw.write(backup_tier({"failback_after": "4s"}))
    gw.start()
    gw.wait_for({"isp1": "up", "isp2": "up"})
    lab.fail("isp1", "blackhole")
    gw.wait_for({"isp1": "down"})
    with udp_flow(lab, 0.01):
        wait_isp(gw, "isp2")
        seen = len(gw.view().events)
        lab.heal("isp1")
        up = gw.wait_event("isp1", "up", after=seen)
        # Up, but held: NEW connections stay on the backup, the backup's flow is not flushed.
        assert shares(lab) == {"isp1": 0, "isp2": 20}
        [isp1] = [i for i in gw.status()["isps"] if i["name"] == "isp1"]
        assert isp1["status"] == "up" and isp1["failback_seconds"] is not None and isp1["failback_seconds"] > 0
        assert "failback in" in gw.run(*WANLB, "status", "--wide", "--socket", str(gw.socket))
        assert udp_isp(gw) == "isp2"
        back = gw.wait_event("isp1", "failback", timeout=10, after=seen)
        assert 4.0 <= back["time"] - up["time"] <= 5.5, (up, back)  # (within a probe round of the 4 s)
        wait_isp(gw, "isp1")  # the backup's flow: flushed after the new ruleset, back on isp1
        assert shares(lab) == {"isp1": 20, "isp2": 0}


def test_move_lower_tier_applies_the_new_ruleset_before_it_flushes(lab: Lab, gw: LabGateway) -> None:
    """A flow sending every 2 ms sends several packets inside any gap between the flush and the new ruleset:
    were the flush first, its next packet would become a NEW connection on the backup tier again and stay
    there.  Three recoveries, each must move the flow to isp1."""
    gw.write(backup_tier({}))
    gw.start()
    gw.wait_for({"isp1": "up", "isp2": "up"})
    with udp_flow(lab, 0.002):
        for _ in range(3):
            lab.fail("isp1", "blackhole")
            gw.wait_for({"isp1": "down"})
            wait_isp(gw, "isp2")
            seen = len(gw.view().events)
            lab.heal("isp1")
            gw.wait_event("isp1", "up", after=seen)
            time.sleep(0.3)
            assert udp_isp(gw) == "isp1", "the flushed flow came back on the backup tier"


def stream_entry(gw: LabGateway) -> tuple[Any, ...] | None:
    """The TCP stream's one conntrack entry (to the stream server) as the gateway's conntrack has it now: its id,
    original tuple and ISP (what a deleted and re-created entry could not keep)."""
    out = gw.run(*WANLB, "conntrack", "--config", str(gw.config), "list", "-o", "json", "-p", "tcp", "--dport", "5001")
    entries = [json.loads(line) for line in out.splitlines()]
    assert len(entries) <= 1, entries
    return tuple(entries[0][k] for k in ("id", "orig", "isp")) if entries else None


def test_a_rules_on_recover_moves_its_connections_back_and_leaves_the_others(lab: Lab, gw: LabGateway) -> None:
    """The global ``on_recover`` is keep; a rule for the DNS server says move-lower-tier.  During an isp1 outage
    a UDP flow to the DNS server (the rule's) and a TCP stream (no rule's) both run on the backup, isp2; isp1's
    recovery deletes the UDP flow's entry alone (it comes back on isp1), the stream's stays on isp2, intact."""

    def edit(cfg: dict[str, Any]) -> None:
        backup_tier({})(cfg)
        cfg["failover"]["on_recover"] = "keep"
        cfg["rules"] = [{"name": "dns", "dst": [DNS_ADDR], "policy": "default", "on_recover": "move-lower-tier"}]

    gw.write(edit)
    gw.start()
    gw.wait_for({"isp1": "up", "isp2": "up"})
    lab.fail("isp1", "blackhole")
    gw.wait_for({"isp1": "down"})
    stream = lab.popen("c1", python_module("wanlb.lab.traffic", "stream", "--stall", "15"),
                       stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        with udp_flow(lab, 0.01):
            wait_isp(gw, "isp2")
            deadline = time.monotonic() + 10
            while (before := stream_entry(gw)) is None:
                assert time.monotonic() < deadline, "the stream never showed up"
                time.sleep(0.05)
            assert before[2] == "isp2", before
            seen, logged = len(gw.view().events), len(gw.log_text())
            lab.heal("isp1")
            gw.wait_event("isp1", "up", after=seen)  # (recorded after the batch's flush has run)
            flushed = gw.log_text()[logged:]  # the UDP flow's entry alone:
            assert "flushed 1 connections of isp2 (isp1 recovered (move-lower-tier for 1 rule))" in flushed, flushed
            wait_isp(gw, "isp1")  # the rule's flow: its next datagram is a NEW connection, on the recovered tier
            assert stream_entry(gw) == before  # the stream's entry: still on isp2, never deleted
    finally:
        stream.terminate()
        result = json.loads(stream.communicate(timeout=30)[0])
    assert result["ok"], result  # the stream carried on over isp2 throughout


def test_no_flush_while_no_isp_is_usable_and_the_connections_resume(lab: Lab, gw: LabGateway) -> None:
    """isp2 dies, then isp1, the last usable ISP: isp1's connections are kept (a flush would only break them;
    NEW ones meanwhile follow last_resort); isp1 returns and its stream carries on, intact."""
    gw.write(lambda cfg: None)
    gw.start()
    gw.wait_for({"isp1": "up", "isp2": "up"})
    lab.fail("isp2", "blackhole")
    gw.wait_for({"isp1": "up", "isp2": "down"})
    stream = lab.popen("c1", python_module("wanlb.lab.traffic", "stream", "--stall", "15"),
                       stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while gw.request("conn_counts")["by_isp"].get("isp1", 0) == 0:
            assert time.monotonic() < deadline, "the stream never showed up on isp1"
            time.sleep(0.1)
        seen = len(gw.view().events)
        lab.fail("isp1", "blackhole")
        down = gw.wait_event("isp1", "down", after=seen)
        assert down["flushed"] is None, down  # no flush was asked: nowhere else to go
        time.sleep(1.0)
        assert gw.request("conn_counts")["by_isp"].get("isp1", 0) >= 1  # the stream's entry is still there
        lab.heal("isp1")
        gw.wait_event("isp1", "up", after=seen)
        time.sleep(1.0)
    finally:
        stream.terminate()
        result = json.loads(stream.communicate(timeout=30)[0])
    assert result["ok"], result


PROBE_COUNT = """table inet t_probes {
    chain out {
        type filter hook output priority 0; policy accept;
        oifname "wan1" icmp type echo-request counter name wan1
        oifname "wan2" icmp type echo-request counter name wan2
    }
    counter wan1 { }
    counter wan2 { }
}
"""


def probe_bytes(gw: LabGateway) -> dict[str, int]:
    """The echo requests' bytes out of each WAN so far, from this test's own counters in the gateway."""
    out = json.loads(gw.run("nft", "-j", "list", "counters", "table", "inet", "t_probes"))
    return {c["counter"]["name"]: c["counter"]["bytes"] for c in out["nftables"] if "counter" in c}


def test_a_standby_isp_is_probed_sparsely_until_it_is_needed(lab: Lab, gw: LabGateway) -> None:
    """isp2 (tier 2, standby, standby_interval 3s) carries nothing while isp1 is up: its probes cost at most a
    tenth of isp1's (counted by the kernel); once isp1 is down they run at the full rate."""

    def edit(cfg: dict[str, Any]) -> None:
        cfg["isps"][1].update(tier=2, standby=True)
        cfg["isps"][1].setdefault("health", {})["standby_interval"] = "3s"

    gw.write(edit)
    gw.start()
    gw.wait_for({"isp1": "up", "isp2": "up"})
    gw.run("nft", "-f", "-", stdin=PROBE_COUNT)
    try:
        time.sleep(6.0)
        quiet = probe_bytes(gw)
        print(f"\nprobe bytes in 6 s: isp1 {quiet['wan1']}, standby isp2 {quiet['wan2']}")
        assert 0 < quiet["wan2"] * 10 <= quiet["wan1"], quiet
        [isp2] = [i for i in gw.status()["isps"] if i["name"] == "isp2"]
        assert isp2["health"]["probe_interval_seconds"] == 3.0
        lab.fail("isp1", "blackhole")
        gw.wait_for({"isp1": "down"})
        before = probe_bytes(gw)
        time.sleep(2.0)
        busy = {k: v - before[k] for k, v in probe_bytes(gw).items()}
        print(f"probe bytes in 2 s after isp1 went down: standby isp2 {busy['wan2']} (full rate: 10 rounds)")
        assert busy["wan2"] >= 5 * quiet["wan1"] / (6.0 / 0.2), busy  # at least half the full rate
        [isp2] = [i for i in gw.status()["isps"] if i["name"] == "isp2"]
        assert isp2["health"]["probe_interval_seconds"] == 0.2
    finally:
        gw.run("nft", "delete", "table", "inet", "t_probes")
