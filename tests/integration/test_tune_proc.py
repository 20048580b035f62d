"""wanlb tune against /proc: the report reads the real values, --apply writes what a namespace may, and
--persist writes a file that sysctl -p accepts (host values restored afterwards)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]
PROC = Path("/proc/sys/net/netfilter")
WANLB = [sys.executable, "-m", "wanlb.cli"]


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"wltune-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _in(ns: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, check=True)


def test_report_matches_proc_and_apply_sets_what_a_namespace_may(netns: str) -> None:
    report = json.loads(_in(netns, *WANLB, "tune", "--json").stdout)
    for row in report["rows"]:
        assert row["current"] == int(_in(netns, "cat", str(PROC / row["key"])).stdout), row
    out = _in(netns, *WANLB, "tune", "--apply", "--expect", "1000000").stdout
    assert "set nf_conntrack_tcp_timeout_established = 7440" in out  # RFC 5382 REQ-5
    assert "not set: nf_conntrack_max: read-only here" in out
    assert _in(netns, "cat", str(PROC / "nf_conntrack_tcp_timeout_established")).stdout.strip() == "7440"
    assert _in(netns, "cat", str(PROC / "nf_conntrack_udp_timeout_stream")).stdout.strip() == "120"  # RFC 4787
    # the namespace (and so its timeouts) goes with the fixture; the host's values never changed
    assert (PROC / "nf_conntrack_max").read_text().strip() == str(report["rows"][0]["current"])


@pytest.mark.skipif(shutil.which("sysctl") is None, reason="needs sysctl")
def test_persisted_file_is_accepted_by_sysctl(tmp_path: Path) -> None:
    path, modules = tmp_path / "90-wanlb.conf", tmp_path / "wanlb.conf"
    persist = [*WANLB, "tune", "--persist", str(path), "--modules-load", str(modules), "--yes"]
    res = subprocess.run(persist, capture_output=True, text=True)
    assert res.returncode == 0 and f"+++ {path}" in res.stdout, res.stderr
    assert "nf_conntrack" in [line.strip() for line in modules.read_text().splitlines()]  # modules-load.d syntax
    keys = [line.split(" = ")[0].removeprefix("net.netfilter.") for line in path.read_text().splitlines()
            if line and not line.startswith("#")]  # fmt: skip
    before = {k: (PROC / k).read_text() for k in keys}
    try:
        check = subprocess.run(["sysctl", "-p", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        assert (PROC / "nf_conntrack_tcp_timeout_established").read_text().strip() == "7440"
    finally:
        for key, value in before.items():
            (PROC / key).write_text(value)
    assert {k: (PROC / k).read_text() for k in keys} == before
    again = subprocess.run(persist, capture_output=True, text=True)
    assert f"{path} already holds these values" in again.stdout and f"{modules} already holds" in again.stdout
