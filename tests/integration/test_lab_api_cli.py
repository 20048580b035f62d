"""`wanlb lab up --api`: the lab's generated config serves the API and dashboard, and what `lab up` prints
reaches them — the daemon in the gateway namespace, a request from a LAN client with the printed token.  With
``--ha`` both gateways' configs do, each on its own LAN address."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from wanlb.config import load_config
from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab
from wanlb.lab.pair import role, wait_until
from wanlb.lab.topology import LAN_GW

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]
WANLB = [sys.executable, "-m", "wanlb.cli"]
PORT = 9187


@pytest.fixture
def printed(lab_name: str) -> Iterator[str]:
    """What `wanlb lab up --api` printed, with the daemon started in the lab as that output says."""
    up = [*WANLB, "lab", "up", "--name", lab_name, "--isps", "1", "--clients", "1", "--api", "--api-port", str(PORT)]
    res = subprocess.run(up, capture_output=True, text=True)
    gateway = None
    try:
        assert res.returncode == 0, res.stderr
        gateway = LabGateway(Lab.load(lab_name))
        gateway.start()
        gateway.wait_for({"isp1": "up"})
        yield res.stdout
    finally:
        if gateway is not None:
            gateway.stop(cleanup=True)
        subprocess.run([*WANLB, "lab", "down", "--name", lab_name], capture_output=True, check=False)


def test_the_printed_commands_reach_the_api_and_the_dashboard(printed: str, lab_name: str) -> None:
    url = f"http://{LAN_GW}:{PORT}/"
    assert url in printed
    curl = next(line for line in printed.splitlines() if "curl" in line).split(":", 1)[1].strip()
    assert shlex.split(curl)[:5] == ["wanlb", "lab", "exec", "--name", lab_name]
    run = curl.replace("wanlb", shlex.join(WANLB), 1)  # this checkout's wanlb, whatever is on PATH
    status = json.loads(subprocess.run(["sh", "-c", run], capture_output=True, text=True, check=True).stdout)
    assert [isp["name"] for isp in status["isps"]] == ["isp1"]
    token_path = re.search(r"\$\(cat (\S+)\)", curl)
    assert token_path is not None and oct(os.stat(token_path.group(1)).st_mode & 0o777) == "0o600"
    exec_c1 = [*WANLB, "lab", "exec", "--name", lab_name, "c1", "--"]
    no_token = subprocess.run([*exec_c1, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url + "api/v1/status"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    assert no_token.stdout == "401"  # the lab's API is not open to anyone on its LAN
    page = subprocess.run([*exec_c1, "curl", "-s", url], capture_output=True, text=True, check=True).stdout
    assert "<html" in page.lower() and "API token" in page


@pytest.fixture
def printed_ha(lab_name: str) -> Iterator[str]:
    """What `wanlb lab up --ha --api` printed, with both daemons started on the configs it wrote (as they are:
    ``LabGateway.write`` would put back the generated ones, without the api section)."""
    if not (shutil.which("keepalived") and shutil.which("conntrackd")):
        pytest.skip("needs keepalived and conntrackd")
    up = [*WANLB, "lab", "up", "--name", lab_name, "--ha", "--isps", "1", "--clients", "1", "--api",
          "--api-port", str(PORT)]  # fmt: skip
    res = subprocess.run(up, capture_output=True, text=True)
    gateways: list[LabGateway] = []
    try:
        assert res.returncode == 0, res.stderr
        lab = Lab.load(lab_name)
        for node in ("gw1", "gw2"):
            gateways.append(LabGateway(lab, node))
            gateways[-1].start()
        wait_until("gw1 master, gw2 backup", lambda: (role(gateways[0]), role(gateways[1])) == ("master", "backup"))
        yield res.stdout
    finally:
        for gateway in reversed(gateways):
            gateway.stop(cleanup=True)
        subprocess.run([*WANLB, "lab", "down", "--name", lab_name], capture_output=True, check=False)


def test_an_ha_pairs_printed_commands_reach_both_gateways_apis(printed_ha: str, lab_name: str) -> None:
    """Each gateway's config has an api section on its own LAN address (not the VIP, which only the master
    holds), the same token file; the printed request reaches each daemon from c1, the backup's too."""
    lab = Lab.load(lab_name)
    apis = {gw: load_config(str(lab.gateway_config(gw))).api for gw in ("gw1", "gw2")}
    listens = {gw: api.listen if api else None for gw, api in apis.items()}
    assert listens == {"gw1": (f"192.168.77.2:{PORT}",), "gw2": (f"192.168.77.3:{PORT}",)}, listens
    [token] = {api.token_file for api in apis.values() if api}
    assert token == str(lab.dir / "api.token") and oct(os.stat(token).st_mode & 0o777) == "0o600"
    assert not any(api.public_read for api in apis.values() if api)
    curls = [line.split(":", 1)[1].strip() for line in printed_ha.splitlines() if "curl" in line]
    assert len(curls) == 2, printed_ha
    seen: dict[str, str] = {}
    for curl in curls:
        run = curl.replace("wanlb", shlex.join(WANLB), 1)
        status = json.loads(subprocess.run(["sh", "-c", run], capture_output=True, text=True, check=True).stdout)
        seen[status["ha"]["node"]] = status["ha"]["role"]
    assert seen == {"gw1": "master", "gw2": "backup"}, seen
    for url in (f"http://192.168.77.2:{PORT}/", f"http://192.168.77.3:{PORT}/"):
        assert url in printed_ha
        no_token = subprocess.run([*WANLB, "lab", "exec", "--name", lab_name, "c1", "--", "curl", "-s", "-o",
                                   "/dev/null", "-w", "%{http_code}", url + "api/v1/status"],
                                  capture_output=True, text=True, check=True)  # fmt: skip
        assert no_token.stdout == "401"
