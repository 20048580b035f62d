"""A data quota in the lab: counted from the kernel on the WAN (the probes included), an ISP at its limit leaves
balancing without losing a connection, status, ``wanlb status``, ``wanlb quota`` and /metrics show it, the count
survives a ``kill -9`` and a restart, and ``wanlb quota reset`` (not the API without its token) brings it back.

isp1 is the quota'd ISP (5 MiB, tier 1: every NEW connection goes to it while it may take them), isp2 the
other (tier 2). Bulk bytes come from a second stream server on the lab's internet, unpaced."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from harness import module_lab

from wanlb.lab.gateway import WANLB, LabGateway
from wanlb.lab.lab import Lab, python_module
from wanlb.lab.topology import LAN_GW, STREAM_ADDR, STREAM_PORT, isp_for_source

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

MIB = 1 << 20
BULK_PORT = 5002
API = f"http://{LAN_GW}:9180"
TOKEN = "quota-lab-token-0123456789abcdef"

# Read N bytes from the bulk server; prints {"src": the address the server saw, "bytes": n}.
_BULK = """
import json, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
f = s.makefile("rb")
src, want, got = json.loads(f.readline())["src"], int(sys.argv[3]), 0
while got < want and (chunk := f.read(min(1 << 16, want - got))):
    got += len(chunk)
s.close()
print(json.dumps({"src": src, "bytes": got}))
"""
# One request from the gateway: prints {"status": code, "body": text}.
_HTTP = """
import json, sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[2], method=sys.argv[1], data=b"" if sys.argv[1] == "POST" else None)
if len(sys.argv) > 3:
    req.add_header("Authorization", "Bearer " + sys.argv[3])
try:
    with urllib.request.urlopen(req, timeout=15) as r:
        print(json.dumps({"status": r.status, "body": r.read().decode()}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": e.read().decode()}))
"""


def _bulk_server(lab: Lab) -> None:
    """An unpaced stream server beside the lab's own (which sends 256 KiB/s), and the API's token."""
    ready = lab.dir / "bulk.ready"
    argv = python_module("wanlb.lab.servers", "stream", "--listen", f"{STREAM_ADDR}:{BULK_PORT}",
                         "--rate", str(1 << 30), "--ready-file", str(ready))  # fmt: skip
    lab.popen("inet", argv, label="bulk")
    token = lab.dir / "api.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    until(ready.exists, "the bulk server listens")


lab = module_lab(_bulk_server, isps=2)


def until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll ``check`` until it is truthy (its value); fail naming ``what`` if it never is."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.1)
    return value


def configure(lab: Lab) -> Callable[[dict[str, Any]], None]:
    def edit(cfg: dict[str, Any]) -> None:
        cfg["isps"][0]["quota"] = {"limit": "5MiB", "warn": ["50%"], "at_limit": "standby"}
        cfg["isps"][1]["tier"] = 2
        cfg["control"]["data_dir"] = str(lab.dir)  # (not the host's /var/lib/wanlb)
        cfg["api"] = {"listen": [f"{LAN_GW}:9180"], "token_file": str(lab.dir / "api.token")}

    return edit


def quota_of(gw: LabGateway, isp: str = "isp1") -> dict[str, Any]:
    [found] = [i for i in gw.status()["isps"] if i["name"] == isp]
    return dict(found["quota"] or {}) | {"status": found["status"], "active": found["active"]}


def bulk(lab: Lab, nbytes: int) -> str | None:
    """Download ``nbytes`` from c1; the ISP it went through."""
    out = lab.run("c1", ["python3", "-c", _BULK, STREAM_ADDR, str(BULK_PORT), str(nbytes)], capture_output=True,
                  text=True, check=True).stdout  # fmt: skip
    result = json.loads(out)
    assert result["bytes"] == nbytes, result
    return isp_for_source(result["src"])


def shares(lab: Lab) -> dict[str, int]:
    report = lab.traffic(connections=20, timeout=2.0)
    assert report["failed"] == 0, report
    return {isp: report[isp] for isp in ("isp1", "isp2")}


def stream_isp(gw: LabGateway) -> str | None:
    """The ISP of the long-lived stream's connection, as the gateway's conntrack has it."""
    out = gw.run(*WANLB, "conntrack", "--config", str(gw.config), "list", "-o", "json", "-p", "tcp", "--dport",
                 str(STREAM_PORT))  # fmt: skip
    isps = {json.loads(line)["isp"] for line in out.splitlines()}
    return isps.pop() if len(isps) == 1 else None


def http(gw: LabGateway, method: str, path: str, *token: str) -> dict[str, Any]:
    return json.loads(gw.run("python3", "-c", _HTTP, method, API + path, *token))  # type: ignore[no-any-return]


def test_an_isp_at_its_quota_leaves_balancing_keeps_its_connections_and_the_count_survives(
    lab: Lab, gw: LabGateway
) -> None:
    gw.write(configure(lab))
    gw.start()
    gw.wait_for({"isp1": "up", "isp2": "up"})
    # The probes alone (no client traffic yet) are counted: the WAN's counters see the gateway's own packets.
    until(lambda: quota_of(gw).get("used_bytes", 0) > 0, "the probes are counted")
    assert not quota_of(gw)["exceeded"] and quota_of(gw)["limit_bytes"] == 5 * MIB
    assert shares(lab) == {"isp1": 20, "isp2": 0}

    stream = lab.popen("c1", python_module("wanlb.lab.traffic", "stream", "--stall", "5"), stdout=subprocess.PIPE,
                       text=True)  # fmt: skip
    try:
        until(lambda: stream_isp(gw) == "isp1", "the long-lived stream runs through isp1")
        assert bulk(lab, 6 * MIB) == "isp1"
        limit = gw.wait_event("isp1", "quota-limit", timeout=30)
        assert "reached its quota" in limit["reason"] and limit["status"] == "up"
        assert [e.event for e in gw.view().events if e.isp == "isp1" and e.event.startswith("quota")] == [
            "quota-warning", "quota-limit"]  # fmt: skip
        held = quota_of(gw)
        assert held["exceeded"] and held["used_bytes"] >= 6 * MIB and held["percent"] >= 100
        assert (held["status"], held["active"]) == ("up", False)  # its own state is up; it takes nothing NEW
        assert shares(lab) == {"isp1": 0, "isp2": 20}  # NEW connections go elsewhere ...
        assert stream_isp(gw) == "isp1"  # ... the existing one stays where it is

        text = gw.cli("status", "--wide")
        assert text.returncode == 0 and "over quota" in text.stdout and "quotas:" in text.stdout, text.stdout
        assert "REACHED, held back: standby" in text.stdout, text.stdout
        shown = json.loads(gw.cli("quota", "show", "--json").stdout)
        assert shown["isp1"]["exceeded"] and shown["isp2"] is None
        metrics = http(gw, "GET", "/metrics", TOKEN)["body"]
        assert 'wanlb_isp_quota_exceeded{isp="isp1"} 1.0' in metrics
        assert 'wanlb_isp_quota_limit_bytes{isp="isp1"} 5.24288e+06' in metrics
    finally:
        stream.terminate()
        result = json.loads(stream.communicate(timeout=30)[0])
    assert result["ok"] and isp_for_source(result["src"]) == "isp1", result  # never broken, never moved
    assert "flushed" not in gw.log_text()

    # kill -9 and a restart: the count is the file's plus what the kernel counted meanwhile; isp1 stays out.
    before = quota_of(gw)["used_bytes"]
    gw.kill9()
    gw.start()
    gw.wait_for({"isp1": "up", "isp2": "up"})
    after = quota_of(gw)
    assert after["exceeded"] and after["used_bytes"] >= before and not after["active"]
    assert shares(lab) == {"isp1": 0, "isp2": 20}

    assert http(gw, "POST", "/api/v1/isps/isp1/quota/reset")["status"] == 401  # a write needs the token
    reset = gw.cli("quota", "reset", "isp1")
    assert reset.returncode == 0 and "quota count reset" in reset.stdout, reset.stderr
    gw.wait_event("isp1", "quota-reset")
    fresh = quota_of(gw)
    assert not fresh["exceeded"] and fresh["used_bytes"] < MIB and fresh["active"]
    assert shares(lab) == {"isp1": 20, "isp2": 0}
    answer = http(gw, "POST", "/api/v1/isps/isp2/quota/reset", TOKEN)
    assert answer["status"] == 409 and "isp2 has no quota" in answer["body"]
    assert json.loads((lab.dir / "quota.json").read_text())["isps"]["isp1"]["used"] < MIB
