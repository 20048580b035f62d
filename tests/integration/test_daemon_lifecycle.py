"""The daemon against the real kernel in a scratch namespace: apply, reload, adopt, clean up.

Traffic-level acceptance (shares, stickiness, inbound) lives in the lab tests;
these check what wanlb does to nftables, ip rules, routes and sysctls.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from wanlb.control import socket_in_use

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and nft"),
]

WANLB = [sys.executable, "-m", "wanlb.cli"]


def sh(ns: str, cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", cmd], capture_output=True, text=True, check=check)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A namespace with lan0/wan1/wan2 (veth pairs) and a config that names them."""
    ns = f"wltest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        sh(ns, "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
        for name, addr in (("lan0", "192.168.77.1"), ("wan1", "100.64.1.2"), ("wan2", "100.64.2.2")):
            sh(
                ns,
                f"ip link add {name} type veth peer name p{name} && ip link set {name} up && "
                f"ip link set p{name} up && ip addr add {addr}/24 dev {name}",
            )
        sh(ns, "ip route add default via 100.64.1.1")
        cfg = tmp_path / "wanlb.yaml"
        cfg.write_text(
            "lan: {interfaces: [lan0]}\n"
            "isps:\n"
            "  - {name: fiber, interface: wan1, gateway: 100.64.1.1, weight: 3}\n"
            "  - {name: lte, interface: wan2, gateway: 100.64.2.1}\n"
            f"control: {{socket: {tmp_path}/wanlb.sock}}\n"
        )
        yield ns, cfg
    finally:
        for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
            os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", ns], check=False)


def snapshot(ns: str) -> str:
    return sh(
        ns,
        "nft list ruleset; ip rule; ip route show table all; "
        "sysctl net.ipv4.ip_forward net.ipv4.conf.wan1.rp_filter net.ipv4.conf.wan2.rp_filter",
    ).stdout


def start(ns: str, cfg: Path, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, *WANLB, "run", "-c", str(cfg), *extra], stderr=subprocess.PIPE, text=True
    )
    sock = str(cfg.parent / "wanlb.sock")
    deadline = time.monotonic() + 15
    while not socket_in_use(sock):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "daemon did not start"
        time.sleep(0.05)
    return proc


def cli(cfg: Path, *args: str, ns: str | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    return subprocess.run([*prefix, *WANLB, *args, "-c", str(cfg)], capture_output=True, text=True)


def test_stop_cleanup_restores_exactly_the_previous_state(gateway: tuple[str, Path]) -> None:
    ns, cfg = gateway
    # Someone else's table and rule must survive untouched.
    sh(
        ns,
        "nft add table inet theirs && nft add chain inet theirs c '{ type filter hook input priority 0; }' && "
        "ip rule add priority 12345 fwmark 0x7 lookup 77",
    )
    before = snapshot(ns)
    proc = start(ns, cfg)
    during = snapshot(ns)
    assert "table inet wanlb" in during and "lookup 201" in during and "table inet theirs" in during
    status = cli(cfg, "status", "--json")
    assert status.returncode == 0 and '"share_percent": 75.0' in status.stdout
    assert cli(cfg, "stop", "--cleanup", ns=ns).returncode == 0
    proc.wait(timeout=15)
    assert snapshot(ns) == before


def test_cleanup_without_daemon_after_kill_9(gateway: tuple[str, Path]) -> None:
    ns, cfg = gateway
    before = snapshot(ns)
    proc = start(ns, cfg)
    proc.kill()
    proc.wait()
    result = cli(cfg, "stop", "--cleanup", ns=ns)
    assert result.returncode == 0, result.stderr
    assert snapshot(ns) == before


def test_restart_after_kill_9_adopts_state_and_reapplying_is_idempotent(gateway: tuple[str, Path]) -> None:
    ns, cfg = gateway
    proc = start(ns, cfg)
    first = snapshot(ns)
    proc.kill()
    proc.wait()
    proc = start(ns, cfg)
    assert snapshot(ns) == first
    cli(cfg, "stop", "--cleanup", ns=ns)
    proc.wait(timeout=15)


def test_bad_reload_keeps_running_rules_good_reload_applies(gateway: tuple[str, Path]) -> None:
    ns, cfg = gateway
    proc = start(ns, cfg)
    try:
        good = cfg.read_text()
        ruleset = sh(ns, "nft list table inet wanlb").stdout
        cfg.write_text(good.replace("weight: 3", "weight: banana"))
        result = cli(cfg, "reload")
        assert result.returncode != 0 and "isps[fiber].weight: expected a whole number" in result.stderr
        assert sh(ns, "nft list table inet wanlb").stdout == ruleset
        cfg.write_text(good.replace("weight: 3", "weight: 1"))
        assert cli(cfg, "reload").returncode == 0
        assert "numgen inc mod 2" in sh(ns, "nft list table inet wanlb").stdout
        proc.send_signal(signal.SIGHUP)  # SIGHUP takes the same path
        time.sleep(0.5)
        assert proc.poll() is None
    finally:
        cli(cfg, "stop", "--cleanup", ns=ns)
        proc.wait(timeout=15)


def test_render_passes_nft_check_and_changes_nothing(gateway: tuple[str, Path]) -> None:
    ns, cfg = gateway
    before = snapshot(ns)
    rendered = subprocess.run(
        ["ip", "netns", "exec", ns, *WANLB, "render", "--nft-only", "-c", str(cfg)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    check = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-c", "-f", "-"], input=rendered, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    assert snapshot(ns) == before


def test_clear_errors_and_nothing_applied(gateway: tuple[str, Path], tmp_path: Path) -> None:
    ns, cfg = gateway
    before = snapshot(ns)
    # An interface that does not exist (yet) is no error: pppd's ppp0, a modem not plugged in. The daemon
    # says so, with the name it probably meant, and that ISP waits.
    missing = tmp_path / "missing-if.yaml"
    missing.write_text(cfg.read_text().replace("wan2", "wan9").replace(str(cfg.parent), str(tmp_path)))
    proc = start(ns, missing)
    waiting = cli(missing, "status", "--json", ns=ns)
    isps = {i["interface"]: i for i in json.loads(waiting.stdout)["isps"]}
    assert (isps["wan9"]["status"], isps["wan9"]["uplink"]) == ("down", "no interface")
    assert isps["wan1"]["status"] == "up"
    stopped = cli(missing, "stop", "--cleanup", ns=ns)
    assert stopped.returncode == 0, stopped.stderr
    assert proc.wait(timeout=15) == 0
    assert "interface wan9 does not exist now (did you mean wan2?" in (proc.stderr.read() if proc.stderr else "")
    no_nft = subprocess.run(
        ["ip", "netns", "exec", ns, "env", "PATH=/nonexistent", *WANLB, "run", "-c", str(cfg)],
        capture_output=True,
        text=True,
    )
    assert no_nft.returncode == 1 and "'nft' command was not found" in no_nft.stderr
    assert snapshot(ns) == before
    nodaemon = cli(cfg, "status")
    assert nodaemon.returncode == 3 and "no wanlb daemon is running" in nodaemon.stderr


def test_sigterm_leaves_datapath_cleanup_on_exit_removes_it(gateway: tuple[str, Path]) -> None:
    ns, cfg = gateway
    before = snapshot(ns)
    proc = start(ns, cfg)
    during = snapshot(ns)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert snapshot(ns) == during  # connections keep flowing without the daemon
    proc = start(ns, cfg, "--cleanup-on-exit")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert snapshot(ns) == before


def test_reload_with_new_gateway_replaces_the_default_route(gateway: tuple[str, Path]) -> None:
    ns, cfg = gateway
    proc = start(ns, cfg)
    try:
        cfg.write_text(cfg.read_text().replace("gateway: 100.64.2.1", "gateway: 100.64.2.9"))
        assert cli(cfg, "reload").returncode == 0
        routes = sh(ns, "ip route show table 202").stdout
        assert "default via 100.64.2.9 dev wan2" in routes, routes
        assert "100.64.2.1" not in routes
    finally:
        cli(cfg, "stop", "--cleanup", ns=ns)
        proc.wait(timeout=15)


def test_periodic_resync_repairs_a_removed_route(gateway: tuple[str, Path]) -> None:
    ns, cfg = gateway
    proc = start(ns, cfg)
    try:
        sh(ns, "ip route del default table 201")
        deadline = time.monotonic() + 12  # the resync runs every 5 s
        while "default via 100.64.1.1" not in sh(ns, "ip route show table 201").stdout:
            assert time.monotonic() < deadline, "the removed route did not come back"
            time.sleep(0.2)
    finally:
        cli(cfg, "stop", "--cleanup", ns=ns)
        proc.wait(timeout=15)


def test_isp_names_differing_only_by_dash_and_underscore_apply(gateway: tuple[str, Path]) -> None:
    ns, cfg = gateway
    cfg.write_text(cfg.read_text().replace("name: fiber", "name: a-b").replace("name: lte", "name: a_b"))
    proc = start(ns, cfg)
    try:
        table = sh(ns, "nft list table inet wanlb").stdout
        assert "chain isp_a-b" in table and "chain isp_a_b" in table
    finally:
        cli(cfg, "stop", "--cleanup", ns=ns)
        proc.wait(timeout=15)
