"""`wanlb demo` runs end to end, meets its own checks, and leaves no namespace behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


def lab_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("wlab-demo")}


def test_demo_passes_within_60_seconds_and_cleans_up() -> None:
    before = lab_namespaces()
    result = subprocess.run([sys.executable, "-m", "wanlb.cli", "demo"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "all checks held" in result.stdout
    assert "intact" in result.stdout
    assert "blackholed: down after" in result.stdout and " down: 1000 connections, 0 failed" in result.stdout
    assert lab_namespaces() == before
