"""`wanlb demo` runs end to end, meets its own checks, and leaves no namespace behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

HA_HELPERS = bool(shutil.which("keepalived") and shutil.which("conntrackd"))  # else the demo skips its HA act


def lab_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("wlab-demo")}


def test_demo_passes_within_two_minutes_and_cleans_up() -> None:
    """The whole demo (about a minute: the single-gateway acts, then the HA act in a lab of its own)."""
    before = lab_namespaces()
    env = os.environ | {"COLUMNS": "200"}  # rich wraps at 80 columns into a pipe: keep each summary line whole
    argv = [sys.executable, "-m", "wanlb.cli", "demo"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "all checks held" in out
    assert "intact" in out
    assert "blackholed: down after" in out and " down: 1000 connections, 0 failed" in out
    if HA_HELPERS:
        kept = r"(\d+)/(\d+) streams kept their ISP and source"
        takeover = re.search(rf"HA takeover: gw2 master after [\d.]+ s; {kept}", out)
        assert takeover and takeover[1] == takeover[2] != "0", out[-3000:]
        assert re.search(r"new connections through gw2 \(.*\), 0 failed; a UDP flow kept", out), out[-3000:]
        failback = re.search(rf"HA failback: gw1 master again [\d.]+ s .*?; {kept}", out)
        assert failback and failback[1] == failback[2] != "0", out[-3000:]
    else:
        assert "HA act skipped" in out
    assert lab_namespaces() == before


def test_the_ha_act_can_be_left_out() -> None:
    out = subprocess.run([sys.executable, "-m", "wanlb.cli", "demo", "--help"], capture_output=True, text=True).stdout
    assert "--no-ha" in out
