"""The network-namespace lab against the real kernel, without the daemon (no wanlb rules anywhere)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from wanlb.lab.cli import lab as lab_cli
from wanlb.lab.lab import (
    RUN_DIR,
    Lab,
    LabError,
    down_all,
    lab_namespaces,
    module_env,
    python_module,
    remove_lab,
)
from wanlb.lab.topology import LAN_LEAK_COUNTER, Topology

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("require_root")]

Factory = Callable[..., Lab]


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll for a kernel-side effect that follows a command asynchronously (a generous bound, not a
    timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def host_link_names() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {link["ifname"] for link in json.loads(out)}


def gone(name: str) -> bool:
    return not lab_namespaces(Topology(name).prefix) and not (RUN_DIR / name).exists()


def test_up_builds_everything_inside_namespaces(lab_factory: Factory) -> None:
    host_before = host_link_names()
    lab = lab_factory(isps=2, clients=3, weights=[3, 1])
    assert set(lab_namespaces(lab.topology.prefix)) == {lab.ns(n) for n in lab.nodes}
    assert host_link_names() - host_before == set()  # no interface was created in the host namespace
    again = Lab.load(lab.name)
    assert again.nodes == ["gw", "isp1", "isp2", "inet", "c1", "c2", "c3"]
    assert "weight: 3" in again.config_path.read_text()
    assert str(lab.socket_path) in lab.config_path.read_text()
    status = again.status()
    assert all(node["exists"] for node in status["nodes"])
    assert all(link["a_state"] == link["b_state"] == "UP" for link in status["links"])
    assert {p["label"] for p in status["processes"] if p["running"]} == {"http", "https", "stream", "dns"}
    assert [isp["mode"] for isp in status["isps"]] == ["ok", "ok"]


def test_clients_reach_the_server_through_isp1(lab_factory: Factory) -> None:
    """The gateway's main-table default is isp1; with a plain masquerade standing in for the daemon's
    SNAT, every client connection is seen by the server from 100.64.1.2."""
    lab = lab_factory(isps=3, clients=2, plain_nat=True)
    assert lab.traffic(connections=2000, parallel=64) == {"isp1": 2000, "isp2": 0, "isp3": 0, "other": 0, "failed": 0}
    assert lab.traffic(connections=5, nodes=["gw"])["isp1"] == 5  # the gateway's own traffic too
    stream = lab.run("c1", python_module("wanlb.lab.traffic", "stream", "--duration", "0.5"), capture_output=True)
    result = json.loads(stream.stdout)
    assert result["ok"] and result["src"] == "100.64.1.2" and result["counters"] > 0


def test_without_the_daemon_isps_drop_unnated_lan_traffic(lab_factory: Factory) -> None:
    """A LAN source leaving un-NATed is counted as a LAN leak, before (and so not as) a spoofed source."""
    lab = lab_factory(isps=2, clients=1)
    assert lab.traffic(connections=3, parallel=3, timeout=1)["failed"] == 3
    wait_until(lambda: lab.counter("isp1", LAN_LEAK_COUNTER) > 0, "the isp1 LAN-leak counter")
    assert lab.counter("isp1", "spoofed") == 0 and lab.counter("isp2", LAN_LEAK_COUNTER) == 0
    isp1 = next(isp for isp in lab.status()["isps"] if isp["name"] == "isp1")
    assert isp1[LAN_LEAK_COUNTER] > 0 and isp1["spoofed"] == 0 and isp1["failed"] == 0
    shown = CliRunner().invoke(lab_cli, ["status", "--name", lab.name])
    assert shown.exit_code == 0 and re.search(r"^  isp1 +ok +spoofed=0 failed=0 lan_leak=[1-9]", shown.output, re.M), (
        shown.output
    )


def test_anti_spoofing_drops_a_source_of_another_isp(lab_factory: Factory) -> None:
    """A packet from 100.64.2.2 (isp2's customer address) routed out of wan1: isp1 must drop it."""
    lab = lab_factory(isps=2, clients=1)
    assert lab.ping("gw", "203.0.113.30", source="100.64.1.2")  # own prefix passes, is not counted
    assert lab.counter("isp1", "spoofed") == 0
    assert not lab.ping("gw", "203.0.113.30", source="100.64.2.2")
    wait_until(lambda: lab.counter("isp1", "spoofed") == 1, "the isp1 anti-spoofing counter")
    assert lab.counter("isp2", "spoofed") == 0


@pytest.mark.parametrize("mode", ["link", "blackhole", "loss:100"])
def test_fail_breaks_only_that_isp_and_heal_restores_it(lab_factory: Factory, mode: str) -> None:
    lab = lab_factory(isps=2, clients=1, plain_nat=True)
    lab.run("gw", ["ip", "route", "add", "203.0.113.40/32", "via", "100.64.2.1"], check=True)  # a path via isp2
    lab.fail("isp1", mode)
    lab.fail("isp1", mode)  # idempotent
    assert lab.fail_modes() == {"isp1": mode, "isp2": "ok"}
    assert lab.traffic(connections=4, parallel=4, timeout=1)["failed"] == 4
    assert not lab.ping("gw", "203.0.113.30")
    assert lab.ping("gw", "203.0.113.40")  # isp2 is untouched
    # blackhole and loss break only what is beyond the router; link takes the router away too
    assert lab.ping("gw", "100.64.1.1") is (mode != "link")
    if mode == "link":
        gw_wan1 = next(link for link in lab.status()["links"] if link["a"] == "gw:wan1")
        assert gw_wan1["a_state"] == "NO-CARRIER"
    else:
        assert lab.counter("isp1", "failed") > 0
    lab.heal("isp1")
    lab.heal("isp1")  # idempotent
    assert lab.fail_modes() == {"isp1": "ok", "isp2": "ok"}
    assert lab.traffic(connections=4, parallel=4)["isp1"] == 4


def test_loss_drops_about_that_share(lab_factory: Factory) -> None:
    lab = lab_factory(isps=1, clients=1)
    lab.fail("isp1", "loss:50")
    blast = "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    blast += "for _ in range(400): s.sendto(b'x', ('203.0.113.10', 9))"
    lab.run("gw", [sys.executable, "-c", blast], check=True)
    wait_until(lambda: lab.counter("isp1", "failed") >= 100, "loss drops")
    assert lab.counter("isp1", "failed") < 300  # Binomial(400, 0.5) leaves [100, 300) ~never


def test_fail_rejects_unknown_isp_and_bad_mode(lab_factory: Factory) -> None:
    lab = lab_factory(isps=2, clients=1)
    with pytest.raises(LabError, match="unknown ISP"):
        lab.fail("isp3", "link")
    with pytest.raises(LabError, match="bad fail mode"):
        lab.fail("isp1", "loss:200")
    with pytest.raises(LabError, match="unknown node"):
        lab.ns("c2")


def test_up_refuses_an_existing_lab_and_leaves_it_alone(lab_factory: Factory) -> None:
    lab = lab_factory(isps=1, clients=1)
    with pytest.raises(LabError, match="already exists"):
        Lab.up(lab.name, isps=1, clients=1)
    assert len(lab_namespaces(lab.topology.prefix)) == 4
    assert lab.config_path.exists()


def test_a_failed_up_tears_down_what_it_built(lab_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Topology, "isp_nft", lambda self, i: "this is not nft\n")
    with pytest.raises(LabError, match="nft"):
        Lab.up(lab_name, isps=2, clients=1)
    assert gone(lab_name)


def test_down_leaves_nothing(lab_factory: Factory) -> None:
    lab = lab_factory(isps=2, clients=2)
    sleeper = lab.popen("c1", ["sleep", "600"], label="sleeper")
    lab.down()
    assert sleeper.wait(timeout=10) is not None
    assert gone(lab.name)
    lab.down()  # a second down is harmless


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_context_manager_tears_down_on_signals(lab_name: str, sig: signal.Signals) -> None:
    script = (
        "import sys, time\nfrom wanlb.lab.lab import Lab\n"
        f"with Lab.up({lab_name!r}, isps=1, clients=1):\n"
        "    print('ready', flush=True)\n    time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=module_env())
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        proc.send_signal(sig)
        proc.wait(timeout=30)
        assert gone(lab_name)
    finally:
        proc.kill()
        proc.wait()
        down_all(name_prefix=lab_name)


def test_down_all_removes_leftovers_of_crashed_runs_and_only_its_own(lab_name: str) -> None:
    """`down --all` removes every lab wanlb recorded (crashed ones too) and no other `wlab-*` namespace;
    to stay clear of labs other runs use meanwhile, this exercises it limited to this test's own prefix."""
    try:
        crashed = Lab.up(f"{lab_name}a", isps=1, clients=1)
        crashed.popen("inet", ["sleep", "600"], label="orphan")
        (crashed.dir / "lab.json").unlink()  # state lost, namespaces and a process left: still recorded
        foreign = Lab.up(f"{lab_name}b", isps=1, clients=1)
        for path in foreign.dir.iterdir():
            path.unlink()
        foreign.dir.rmdir()  # no record: namespaces someone else owns, as far as `--all` can tell
        removed = down_all(name_prefix=lab_name)
        assert len(removed) == 4 and all(ns.startswith(f"wlab-{lab_name}a-") for ns in removed), removed
        assert gone(f"{lab_name}a") and not gone(f"{lab_name}b")
        remove_lab(f"{lab_name}b")  # by name it goes
        assert gone(f"{lab_name}b")
    finally:
        down_all(name_prefix=lab_name)
        remove_lab(f"{lab_name}b")


def test_cli(lab_name: str) -> None:
    runner = CliRunner()

    def cli(*args: str) -> str:
        result = runner.invoke(lab_cli, [*args], env={"WANLB_LAB": lab_name}, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    try:
        assert "is up" in cli("up", "--isps", "2", "--clients", "1", "--weights", "2,1", "--plain-nat")
        again = runner.invoke(lab_cli, ["up"], env={"WANLB_LAB": lab_name})
        assert again.exit_code == 1 and "already exists" in again.output
        assert "isp1: blackhole" in cli("fail", "isp1", "--mode", "blackhole")
        bad = runner.invoke(lab_cli, ["fail", "isp9"], env={"WANLB_LAB": lab_name})
        assert bad.exit_code == 1 and "unknown ISP" in bad.output
        status = json.loads(cli("status", "--json"))
        assert [isp["mode"] for isp in status["isps"]] == ["blackhole", "ok"]
        assert "isp2" in cli("status")
        assert "isp1: ok" in cli("heal", "isp1")
        traffic = json.loads(cli("traffic", "--connections", "20", "--json"))
        assert traffic["counts"]["isp1"] == 20
        assert "100.0 %" in cli("traffic", "--connections", "10")
        assert "removed lab" in cli("down")
        assert gone(lab_name)
        assert "nothing to remove" in cli("down")
    finally:
        down_all(name_prefix=lab_name)


def test_state_file_records_the_lab(lab_factory: Factory) -> None:
    lab = lab_factory(isps=2, clients=1)
    state = json.loads((lab.dir / "lab.json").read_text())
    assert state["namespaces"]["inet"] == lab.ns("inet")
    assert set(state["processes"]) == {"http", "https", "stream", "dns"}
    assert Path(state["processes"]["http"]["argv"][0]).name.startswith("python")
