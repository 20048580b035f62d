"""Health monitoring and failover in the lab: real probes, real faults, real conntrack.

Each test starts its own daemon (fresh health state, so flap damping from one test never holds an
ISP down in the next) on one shared lab, and heals every ISP afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import module_lab

from wanlb.lab.gateway import WANLB, LabGateway
from wanlb.lab.lab import Lab, python_module
from wanlb.lab.topology import isp_for_source

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

ALL_UP = {"isp1": "up", "isp2": "up", "isp3": "up"}
lab = module_lab(isps=3, clients=2)


def start(gw: LabGateway, edit: Callable[[dict[str, Any]], None] = lambda cfg: None) -> None:
    """Start the daemon on the lab's config changed by ``edit``, and wait until every ISP is up."""
    gw.write(edit)
    gw.start()
    gw.wait_for(ALL_UP)


def conntrack(lab: Lab) -> list[dict[str, Any]]:
    out = lab.run(
        "gw",
        [*WANLB, "conntrack", "--config", str(lab.config_path), "list", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines()]


def start_streams(lab: Lab, n: int) -> list[subprocess.Popen[str]]:
    argv = python_module("wanlb.lab.traffic", "stream", "--stall", "3")
    return [lab.popen("c2", argv, stdout=subprocess.PIPE, text=True) for _ in range(n)]


def stop_streams(streams: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    for proc in streams:
        proc.terminate()
    return [json.loads(proc.communicate(timeout=30)[0]) for proc in streams]


def down_events(gw: LabGateway, isp: str) -> list[dict[str, Any]]:
    return [e for e in gw.status()["events"] if e["isp"] == isp and e["event"] == "down"]


def test_blackhole_removes_only_the_dead_isps_connections(lab: Lab, gw: LabGateway) -> None:
    start(gw)
    streams = start_streams(lab, 6)
    time.sleep(1.0)
    assert lab.traffic(connections=300)["failed"] == 0
    before = conntrack(lab)
    healthy = {e["id"]: e for e in before if e["isp"] in ("isp2", "isp3") and e["timeout"] > 30}
    assert len(healthy) > 150 and any(e["isp"] == "isp1" for e in before), "traffic did not reach every ISP"

    lab.fail("isp1", "blackhole")
    # The link stays up and the same targets answer through isp2/isp3: only probes that really leave
    # through isp1 can see this fault.
    event = gw.wait_event("isp1", "down", timeout=5)
    assert gw.isp_status() == {"isp1": "down", "isp2": "up", "isp3": "up"}
    after = conntrack(lab)

    assert [e for e in after if e["isp"] == "isp1"] == []
    time.sleep(0.5)  # the flush's DESTROY events reach the live counter (read every 100 ms)
    assert gw.status()["conn_counts"]["isp1"] == 0  # zeroed by the flush, never below by its events
    survivors = {e["id"]: e for e in after}
    missing = [e for i, e in healthy.items() if i not in survivors or survivors[i]["mark"] != e["mark"]]
    assert missing == [], f"{len(missing)} connections of healthy ISPs were touched"
    assert event["flushed"] > 0 and "no answer" in event["reason"]

    counts = lab.traffic(connections=90)
    assert counts["failed"] == 0 and counts["isp1"] == 0 and counts["isp2"] == counts["isp3"] == 45, counts
    results = stop_streams(streams)
    on_healthy = [r for r in results if isp_for_source(r["src"] or "") != "isp1"]
    assert on_healthy and all(r["ok"] for r in on_healthy), results


def test_five_percent_loss_with_quorum_is_no_failover(lab: Lab, gw: LabGateway) -> None:
    start(gw)
    dropped = lab.counter("isp2", "failed")
    lab.fail("isp2", "loss:5")
    seen_loss = []
    for _ in range(60):
        time.sleep(1.0)
        isp2 = next(i for i in gw.status()["isps"] if i["name"] == "isp2")
        assert isp2["status"] == "up", isp2
        seen_loss.append(isp2["health"]["loss_percent"])
    assert lab.counter("isp2", "failed") > dropped  # the fault really dropped packets
    assert max(seen_loss) > 0, "probes never saw the loss"
    assert down_events(gw, "isp2") == []


def test_flapping_isp_is_damped(lab: Lab, gw: LabGateway) -> None:
    def fast(cfg: dict[str, Any]) -> None:
        # Fast enough to follow a 300 ms flap, so only damping can keep the ruleset quiet.
        cfg["isps"][0]["health"].update(interval="50ms", timeout="100ms", down_after=2, up_after=2)

    start(gw, fast)
    applies = gw.status()["nft_applies"]
    end = time.monotonic() + 30
    while time.monotonic() < end:
        lab.fail("isp1", "blackhole")
        time.sleep(0.3)
        lab.heal("isp1")
        time.sleep(0.3)
    status = gw.status()  # still answering: no crash
    downs = down_events(gw, "isp1")
    # Undamped this is ~50 downs and ~100 applies; damped: down, up, then held 5 s, 10 s, 20 s.
    assert 2 <= len(downs) <= 6, downs
    assert status["nft_applies"] - applies <= 2 * len(downs) + 1
    assert gw.proc is not None and gw.proc.poll() is None


def rules(lab: Lab) -> str:
    return lab.run("gw", ["ip", "rule", "show"], capture_output=True, text=True, check=True).stdout


def test_all_isps_down_uses_last_resort_then_recovers(lab: Lab, gw: LabGateway) -> None:
    start(gw, lambda cfg: cfg.update(failover={"last_resort": "unreachable"}))
    for isp in lab.isps:
        lab.fail(isp, "blackhole")
    gw.wait_for({"isp1": "down", "isp2": "down", "isp3": "down"}, timeout=5)
    assert "10600:\tfrom all unreachable" in rules(lab)
    route = ["ip", "route", "get", "203.0.113.10", "from", "192.168.77.10", "iif", "lan0"]
    refused = lab.run("gw", route, capture_output=True, text=True)
    assert refused.returncode != 0 and "Network is unreachable" in refused.stderr, refused  # the 10600 rule
    assert lab.traffic(connections=10, timeout=2)["failed"] == 10

    lab.heal("isp2")
    gw.wait_for({"isp1": "down", "isp2": "up", "isp3": "down"}, timeout=5)
    assert "10600:" not in rules(lab)
    assert lab.run("gw", route, capture_output=True, text=True).returncode == 0
    counts = lab.traffic(connections=30)
    assert counts["failed"] == 0 and counts["isp2"] == 30, counts


def write_hook(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_hooks_run_async_and_failures_are_logged(lab: Lab, gw: LabGateway, tmp_path: Path) -> None:
    record = tmp_path / "events"
    hooks = [
        write_hook(tmp_path / "slow.sh", "sleep 30"),
        write_hook(tmp_path / "fails.sh", "echo broken >&2; exit 3"),
        write_hook(tmp_path / "record.sh", f'echo "$WANLB_ISP $WANLB_EVENT $WANLB_INTERFACE" >> {record}'),
    ]
    start(gw, lambda cfg: cfg.update(hooks=hooks, hook_timeout="4s"))
    lab.fail("isp1", "blackhole")
    gw.wait_for({"isp1": "down"}, timeout=3)
    lab.heal("isp1")
    # The "up" transition is processed while the first slow hook is still sleeping.
    gw.wait_for({"isp1": "up"}, timeout=4)
    deadline = time.monotonic() + 10
    while "killed after 4s" not in gw.log_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert record.read_text().splitlines() == ["isp1 down wan1", "isp1 up wan1"]
    log = gw.log_text()
    assert "fails.sh (isp1 down) failed with exit code 3: broken" in log
    assert "slow.sh (isp1 down) killed after 4s timeout" in log


@pytest.mark.parametrize(
    "health",
    [
        {"method": "http", "targets": ["203.0.113.10"], "http_path": "/health"},
        {"method": "https", "targets": ["203.0.113.10"]},
        {"method": "tcp", "targets": ["203.0.113.10"], "port": 80},
        {"method": "dns", "targets": ["203.0.113.30"], "dns_name": "example.org"},
    ],
    ids=lambda h: h["method"],
)
def test_every_probe_method_sees_a_blackhole_and_recovery(lab: Lab, gw: LabGateway, health: dict) -> None:
    gw.write(lambda cfg: cfg["isps"][0].update(health=health))
    gw.start()
    time.sleep(1.0)
    isp1 = gw.status()["isps"][0]
    assert isp1["status"] == "up" and isp1["health"]["method"] == health["method"], isp1
    assert isp1["health"]["rounds"] >= 4 and isp1["health"]["loss_percent"] == 0, isp1
    lab.fail("isp1", "blackhole")
    gw.wait_event("isp1", "down", timeout=5)
    lab.heal("isp1")
    gw.wait_event("isp1", "up", timeout=5)


def test_http_probe_checks_the_status_code(lab: Lab, gw: LabGateway) -> None:
    def wrong_status(cfg: dict[str, Any]) -> None:
        cfg["isps"][0]["health"] = {"method": "http", "targets": ["203.0.113.10"], "http_status": 204}

    gw.write(wrong_status)
    gw.start()
    event = gw.wait_event("isp1", "down", timeout=5)
    assert "status 200, expected 204" in event["reason"]
    assert gw.isp_status() == {"isp1": "down", "isp2": "up", "isp3": "up"}


def test_disable_drains_and_enable_rejoins(lab: Lab, gw: LabGateway) -> None:
    start(gw)
    streams = start_streams(lab, 3)
    time.sleep(1.0)
    cli = [*WANLB, "disable", "isp2", "--config", str(lab.config_path)]
    assert "isp2 is disabled" in subprocess.run(cli, capture_output=True, text=True, check=True).stdout
    counts = lab.traffic(connections=60)
    assert counts["failed"] == 0 and counts["isp2"] == 0, counts
    cli[len(WANLB)] = "enable"
    subprocess.run(cli, capture_output=True, text=True, check=True)
    gw.wait_for({"isp2": "up"}, timeout=5)
    assert lab.traffic(connections=60)["isp2"] == 20
    # Draining kept every stream alive, the one on isp2 included.
    results = stop_streams(streams)
    assert all(r["ok"] for r in results), results
    # One event per change, named for what happened: probes kept running while drained, so enable
    # finds isp2 healthy and it is up at once (never a "down" event for a healthy ISP).
    assert [(e["event"], e["status"]) for e in gw.status()["events"]] == [("disabled", "disabled"), ("enabled", "up")]
    bad = subprocess.run([*WANLB, "disable", "isp9", "--config", str(lab.config_path)], capture_output=True, text=True)
    assert bad.returncode == 1 and "no ISP named 'isp9'" in bad.stderr


def test_a_timed_drain_with_a_reason_reaches_status_hooks_and_ends_by_itself(
    lab: Lab, gw: LabGateway, tmp_path: Path
) -> None:
    record = tmp_path / "hooks.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "$WANLB_ISP $WANLB_EVENT $WANLB_REASON" >> {record}\n')
    hook.chmod(0o755)
    start(gw, lambda cfg: cfg.update(hooks=[str(hook)]))
    done = gw.cli("disable", "isp2", "--reason", "ISP maintenance window", "--for", "3s")
    assert done.returncode == 0 and done.stdout.strip() == "isp2 is disabled for 3s", done
    drain = {i["name"]: i["drain"] for i in gw.status()["isps"]}
    assert drain["isp1"] is None and drain["isp2"]["reason"] == "ISP maintenance window", drain
    assert lab.traffic(connections=30)["isp2"] == 0
    # The timer ends it at a resync (every 5 s): isp2 is back on its probes, which kept running, so up at once.
    event = gw.wait_event("isp2", "enabled", timeout=12)
    assert event["reason"] == "drain timer ran out" and event["status"] == "up"
    assert {i["name"]: i["drain"] for i in gw.status()["isps"]}["isp2"] is None
    assert lab.traffic(connections=30)["isp2"] == 10
    wait_until = time.monotonic() + 5
    while "enabled" not in (record.read_text() if record.exists() else "") and time.monotonic() < wait_until:
        time.sleep(0.1)
    assert record.read_text().splitlines() == [
        "isp2 disabled disabled by admin: ISP maintenance window",
        "isp2 enabled drain timer ran out",
    ]


def test_replies_pass_the_reverse_path_check_without_a_main_default_route(lab: Lab, gw: LabGateway) -> None:
    """Many multi-WAN boxes have no default route in main; replies must still be accepted on every WAN."""
    start(gw)
    default = lab.run("gw", ["ip", "route", "show", "default"], capture_output=True, text=True, check=True).stdout
    lab.run("gw", ["ip", "route", "del", "default"], check=True)
    try:
        counts = lab.traffic(connections=90)
        assert counts["failed"] == 0 and counts["isp1"] == counts["isp2"] == counts["isp3"] == 30, counts
        time.sleep(2)
        assert gw.isp_status() == ALL_UP  # probe replies pass too
    finally:
        lab.run("gw", ["ip", "route", "replace", *default.split()], check=True)


def test_reload_keeps_health_state_and_unprobed_isps_come_back(lab: Lab, gw: LabGateway) -> None:
    start(gw)
    lab.fail("isp1", "blackhole")
    gw.wait_event("isp1", "down", timeout=5)
    gw.reload()  # same config: isp1 must stay down, not be reset to up and re-detected
    time.sleep(1.0)
    assert gw.isp_status()["isp1"] == "down"
    assert [e["event"] for e in gw.status()["events"]] == ["down"]

    gw.write(lambda cfg: cfg["isps"][0].pop("health"))
    gw.reload()  # nothing probes isp1 any more: it cannot stay down forever
    assert gw.isp_status()["isp1"] == "up"
    assert next(i for i in gw.status()["isps"] if i["name"] == "isp1")["health"] == {"monitored": False}


def test_on_down_keep_leaves_the_dead_isps_entries(lab: Lab, gw: LabGateway) -> None:
    start(gw, lambda cfg: cfg.update(failover={"on_down": "keep"}))
    assert lab.traffic(connections=60)["isp1"] == 20
    lab.fail("isp1", "blackhole")
    event = gw.wait_event("isp1", "down", timeout=5)
    assert event["flushed"] is None
    assert len([e for e in conntrack(lab) if e["isp"] == "isp1"]) >= 20


def test_wan_link_coming_back_is_reconciled_at_once(lab: Lab, gw: LabGateway) -> None:
    """Setting a WAN down makes the kernel drop its routes; the link event (not the 5 s resync) restores
    them when it comes back, so the ISP is probed and used again at once."""
    start(gw)
    table = ["ip", "route", "show", "table", "201"]
    events = gw.status()["link_events"]
    lab.run("gw", ["ip", "link", "set", "wan1", "down"], check=True)
    gw.wait_event("isp1", "down", timeout=5)
    assert "default" not in lab.run("gw", table, capture_output=True, text=True, check=True).stdout
    lab.run("gw", ["ip", "link", "set", "wan1", "up"], check=True)
    deadline = time.monotonic() + 2
    while "default via 100.64.1.1" not in lab.run("gw", table, capture_output=True, text=True).stdout:
        assert time.monotonic() < deadline, "the ISP table's default route did not come back"
        time.sleep(0.05)
    assert gw.status()["link_events"] >= events + 2  # down and up were both seen
    gw.wait_event("isp1", "up", timeout=5)
