"""`wanlb try`: a config that cuts the gateway off undoes itself unless confirmed; a confirmed one stays."""

from __future__ import annotations

import copy
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from wanlb.lab.gateway import WANLB, LabGateway
from wanlb.lab.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


def _no_probes(data: dict[str, Any]) -> None:
    for isp in data["isps"]:
        isp.pop("health", None)


@pytest.fixture(scope="module")
def gw() -> Iterator[LabGateway]:
    with Lab.up(name=f"y{os.getpid()}{uuid.uuid4().hex[:4]}", isps=3, clients=1) as lab:
        g = LabGateway(lab)
        g.write(_no_probes)
        g.start()
        try:
            yield g
        finally:
            g.stop()


def _tried(gw: LabGateway, name: str, edit: Any) -> Path:
    data = copy.deepcopy(gw.base)
    _no_probes(data)
    edit(data)
    path = gw.lab.dir / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _wanlb(gw: LabGateway, *args: str) -> subprocess.CompletedProcess[str]:
    return gw.lab.run("gw", [*WANLB, *args], capture_output=True, text=True)


def test_an_unconfirmed_config_that_cuts_the_gateway_off_is_rolled_back(gw: LabGateway) -> None:
    def dead_gateways(data: dict[str, Any]) -> None:  # valid, accepted by the kernel, and useless
        for isp in data["isps"]:
            isp["gateway"] = isp["gateway"].rsplit(".", 1)[0] + ".99"

    bad = _tried(gw, "cutoff.yaml", dead_gateways)
    res = _wanlb(gw, "try", "--config", str(bad), "--socket", str(gw.lab.socket_path), "--timeout", "3s")
    assert res.returncode == 0 and "confirm within 3s" in res.stdout, res.stdout + res.stderr
    assert gw.lab.traffic(connections=30, timeout=1)["failed"] == 30  # cut off, as the admin would be
    time.sleep(4)
    counts = gw.lab.traffic(connections=30)
    assert counts["failed"] == 0 and min(counts[i] for i in gw.lab.isps) == 10, counts
    assert "not confirmed in 3s: rolled back" in gw.log_text()
    again = _wanlb(gw, "try", "--confirm", "--socket", str(gw.lab.socket_path))
    assert again.returncode == 1 and "no trial is pending" in again.stderr


def test_a_confirmed_config_stays_and_a_bad_one_is_refused_before_anything_changes(gw: LabGateway) -> None:
    good = _tried(gw, "isp3only.yaml", lambda d: [i.update(tier=2) for i in d["isps"] if i["name"] != "isp3"])
    res = _wanlb(gw, "try", "--config", str(good), "--socket", str(gw.lab.socket_path), "--timeout", "2s")
    assert res.returncode == 0, res.stderr
    assert _wanlb(gw, "try", "--confirm", "--socket", str(gw.lab.socket_path)).returncode == 0
    time.sleep(3)
    counts = gw.lab.traffic(connections=30)
    assert counts["failed"] == 0 and counts["isp3"] == 30, counts

    broken = gw.lab.dir / "broken.yaml"
    broken.write_text("lan: {interfaces: [lan0]}\nisps: []\n")
    res = _wanlb(gw, "try", "--config", str(broken), "--socket", str(gw.lab.socket_path))
    assert res.returncode == 2 and "broken.yaml:2: isps" in res.stderr, res.stderr
    assert gw.lab.traffic(connections=30)["isp3"] == 30  # nothing changed
