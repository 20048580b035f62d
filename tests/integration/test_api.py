"""The HTTP API, SSE stream and /metrics of a daemon in the lab, with real traffic and real failovers.

The daemon listens on the gateway's LAN address; requests come from a LAN client (curl, or Python's
urllib in the client's namespace), as an operator's browser or Prometheus on the LAN would.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from harness import module_lab
from prometheus_client.parser import text_string_to_metric_families

from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab
from wanlb.lab.topology import HTTP_ADDR, HTTP_PORT, LAN_GW

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

ALL_UP = {"isp1": "up", "isp2": "up", "isp3": "up"}
PORT = 9180
BASE = f"http://{LAN_GW}:{PORT}"
TOKEN = "s3cret-token-for-the-lab-0123456789"

# One request from a client namespace: prints {"status": code, "body": text, "type": content-type}.
_REQUEST = """
import json, sys, urllib.request, urllib.error
method, url, token = sys.argv[1], sys.argv[2], sys.argv[3]
req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
if token != "-":
    req.add_header("Authorization", "Bearer " + token)
try:
    with urllib.request.urlopen(req, timeout=15) as r:
        out = {"status": r.status, "body": r.read().decode(), "type": r.headers.get("content-type", "")}
except urllib.error.HTTPError as e:
    out = {"status": e.code, "body": e.read().decode(), "type": e.headers.get("content-type", "")}
print(json.dumps(out))
"""


lab = module_lab(isps=3, clients=2)


@pytest.fixture(scope="module")
def gw(lab: Lab) -> Iterator[LabGateway]:
    token = lab.dir / "api.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)

    def edit(cfg: dict[str, Any]) -> None:
        cfg["api"] = {"listen": [f"{LAN_GW}:{PORT}"], "token_file": str(token)}
        cfg["rules"] = [{"name": "to-stream", "dst": ["203.0.113.20/32"], "via": "isp2"}]

    g = LabGateway(lab)
    g.write(edit)
    g.start()
    g.wait_for(ALL_UP)
    try:
        yield g
    finally:
        g.stop(cleanup=True)


def call(lab: Lab, method: str, path: str, token: str | None = TOKEN, node: str = "c1") -> dict[str, Any]:
    out = lab.run(node, ["python3", "-c", _REQUEST, method, BASE + path, token or "-"],
                  capture_output=True, text=True, check=True).stdout  # fmt: skip
    return json.loads(out)


def get(lab: Lab, path: str, token: str | None = TOKEN) -> Any:
    reply = call(lab, "GET", path, token)
    assert reply["status"] == 200, reply
    return json.loads(reply["body"]) if reply["type"].startswith("application/json") else reply["body"]


def test_reads_need_the_token_and_answer_what_status_answers(lab: Lab, gw: LabGateway) -> None:
    assert call(lab, "GET", "/healthz", None)["status"] == 200
    for path in ("/api/v1/status", "/api/v1/isps", "/api/v1/events", "/metrics", "/api/v1/connections"):
        assert call(lab, "GET", path, None)["status"] == 401, path
        assert call(lab, "GET", path, "wrong-token-wrong-token")["status"] == 401, path
    status = get(lab, "/api/v1/status")
    cli = gw.status()
    assert [i["name"] for i in status["isps"]] == [i["name"] for i in cli["isps"]] == ["isp1", "isp2", "isp3"]
    assert status["pid"] == cli["pid"] and status["rules"][0]["name"] == "to-stream"
    assert get(lab, "/api/v1/isps/isp2")["mark"] == cli["isps"][1]["mark"]
    assert call(lab, "GET", "/api/v1/isps/nosuch")["status"] == 404


def test_writes_without_a_valid_token_change_nothing(lab: Lab, gw: LabGateway) -> None:
    for token in (None, "wrong-token-wrong-token", TOKEN[:-1]):
        assert call(lab, "POST", "/api/v1/isps/isp3/disable", token)["status"] == 401
        assert call(lab, "POST", "/api/v1/reload", token)["status"] == 401
    assert gw.isp_status() == ALL_UP and gw.status()["reloads"] == 0
    reply = call(lab, "POST", "/api/v1/isps/isp3/disable")
    assert reply["status"] == 200 and gw.isp_status()["isp3"] == "disabled", reply
    assert call(lab, "POST", "/api/v1/isps/nosuch/disable")["status"] == 404
    assert call(lab, "POST", "/api/v1/isps/isp3/enable")["status"] == 200
    gw.wait_for(ALL_UP)
    assert call(lab, "POST", "/api/v1/reload")["status"] == 200 and gw.status()["reloads"] == 1


def test_connections_events_and_metrics_reflect_real_traffic_and_a_failover(lab: Lab, gw: LabGateway) -> None:
    before = {f.name: f for f in text_string_to_metric_families(get(lab, "/metrics"))}
    failovers_before = before["wanlb_failovers"].samples[0].value
    counts = lab.traffic(connections=150, parallel=16)
    assert counts["failed"] == 0
    conns = get(lab, "/api/v1/connections?isp=isp1&proto=tcp&limit=5")
    assert conns["count"] == 5 and conns["truncated"] and {c["isp"] for c in conns["connections"]} == {"isp1"}
    assert call(lab, "GET", "/api/v1/connections?src=not-an-address")["status"] == 400

    lab.fail("isp2", "blackhole")
    try:
        gw.wait_for({"isp1": "up", "isp2": "down", "isp3": "up"})
        events = get(lab, "/api/v1/events")
        assert any(e["isp"] == "isp2" and e["status"] == "down" for e in events), events
    finally:
        lab.heal("isp2")
    gw.wait_for(ALL_UP)

    deadline = time.monotonic() + 10
    while True:  # a quiet moment: the live counts stop changing once the closed connections are gone
        status = gw.status()
        families = {f.name: f for f in text_string_to_metric_families(get(lab, "/metrics"))}
        metric_conns = {s.labels["isp"]: s.value for s in families["wanlb_isp_connections"].samples}
        if metric_conns == {k: float(v) for k, v in status["conn_counts"].items()} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert metric_conns == {k: float(v) for k, v in status["conn_counts"].items()}
    up = {s.labels["isp"]: s.value for s in families["wanlb_isp_up"].samples}
    assert up == {"isp1": 1.0, "isp2": 1.0, "isp3": 1.0}
    rx = {s.labels["isp"]: s.value for s in families["wanlb_isp_bytes"].samples if s.labels["direction"] == "rx"}
    assert all(rx[i] > 0 for i in ("isp1", "isp2", "isp3")), rx
    new = {s.labels["isp"]: s.value for s in families["wanlb_isp_new_connections"].samples}
    assert sum(new.values()) >= 150
    assert families["wanlb_failovers"].samples[0].value == failovers_before + 1
    rtt = [s for s in families["wanlb_isp_probe_rtt_seconds"].samples if s.name.endswith("_count")]
    assert all(s.value > 0 for s in rtt) and len(rtt) == 3
    assert families["wanlb_conntrack_max"].samples[0].value > 0
    assert [s.labels["rule"] for s in families["wanlb_rule_hits"].samples] == ["to-stream"]
    transitions = {(s.labels["isp"], s.labels["to"]) for s in families["wanlb_isp_transitions"].samples}
    assert ("isp2", "down") in transitions and ("isp2", "up") in transitions


def test_the_stream_sends_stats_every_second_and_events_as_they_happen(lab: Lab, gw: LabGateway) -> None:
    curl = lab.popen("c2", ["curl", "-sN", "--max-time", "8", "-H", f"Authorization: Bearer {TOKEN}",
                            f"{BASE}/api/v1/stream"], label="sse", stdout=-1, text=True)  # fmt: skip
    time.sleep(1.5)
    traffic = lab.popen("c1", ["python3", "-m", "wanlb.lab.traffic", "pace", "--every", "0.01", "--duration", "4",
                               "--target", f"{HTTP_ADDR}:{HTTP_PORT}"], label="pace", stdout=-3)  # fmt: skip
    time.sleep(1.0)
    gw.request("disable", isp="isp3")
    time.sleep(1.0)
    gw.request("enable", isp="isp3")
    traffic.wait(20)
    out, _ = curl.communicate(timeout=20)
    messages = [block for block in out.split("\n\n") if block.startswith("event:")]
    kinds = [m.split("\n")[0].removeprefix("event: ") for m in messages]
    stats = [json.loads(m.split("\ndata: ")[1]) for m in messages if m.startswith("event: stats")]
    events = [json.loads(m.split("\ndata: ")[1]) for m in messages if m.startswith("event: event")]
    assert len(stats) >= 5, kinds
    assert set(stats[-1]["isps"]) == {"isp1", "isp2", "isp3"}
    rates = [s["isps"]["isp1"]["new_per_second"] or 0 for s in stats]
    assert max(rates) > 10, rates  # the paced client opened ~100 connections a second over three ISPs
    assert any((s["isps"]["isp1"]["rx_bytes_per_second"] or 0) > 0 for s in stats)
    assert [(e["isp"], e["event"]) for e in events] == [("isp3", "disabled"), ("isp3", "enabled")], events


def test_openapi_describes_what_the_server_does(lab: Lab, gw: LabGateway) -> None:
    spec = get(lab, "/api/v1/openapi.json")
    paths = spec["paths"]
    assert {
        "/healthz", "/api/v1/status", "/api/v1/isps", "/api/v1/isps/{name}", "/api/v1/events",
        "/api/v1/connections", "/api/v1/stream", "/api/v1/isps/{name}/disable", "/api/v1/isps/{name}/enable",
        "/api/v1/reload", "/metrics", "/",
    } == set(paths)  # fmt: skip
    for path, ops in paths.items():
        for method, op in ops.items():
            if method != "get" or "{" in path or path == "/api/v1/stream":
                continue
            reply = call(lab, "GET", path)
            assert str(reply["status"]) in op["responses"], (path, reply["status"])
            documented = op["responses"]["200"].get("content", {})
            assert any(reply["type"].startswith(t) for t in documented), (path, reply["type"], documented)
    assert call(lab, "GET", "/api/v1/nothing-here")["status"] == 404


_PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 9180), 2)
    print("open")
except OSError:
    print("closed")
"""


def test_the_api_listens_only_where_configured(lab: Lab, gw: LabGateway) -> None:
    def state(node: str, addr: str) -> str:
        return lab.run(node, ["python3", "-c", _PROBE, addr], capture_output=True, text=True).stdout.strip()

    assert state("gw", "127.0.0.1") == "closed"  # not configured there
    assert state("c1", LAN_GW) == "open"


def test_a_real_prometheus_scrapes_the_daemon_and_answers_promql(lab: Lab, gw: LabGateway) -> None:
    """Debian's prometheus on a LAN client scrapes /metrics with the token every second."""
    work = lab.dir / f"prometheus-{uuid.uuid4().hex[:6]}"
    work.mkdir()
    token = work / "token"
    token.write_text(TOKEN)
    (work / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: wanlb\n"
        f"    authorization: {{credentials_file: {token}}}\n"
        f"    static_configs: [{{targets: ['{LAN_GW}:{PORT}']}}]\n"
    )
    prom = lab.popen("c1", ["prometheus", f"--config.file={work / 'prometheus.yml'}",
                            f"--storage.tsdb.path={work / 'data'}", "--web.listen-address=127.0.0.1:19090"],
                     label="prometheus", stdout=-3, stderr=-3)  # fmt: skip
    query = (
        "import json,sys,urllib.request,urllib.parse\n"
        "q=urllib.parse.quote(sys.argv[1])\n"
        "try:\n"
        " r=urllib.request.urlopen('http://127.0.0.1:19090/api/v1/query?query='+q,timeout=5)\n"
        " print(json.dumps(json.load(r)['data']['result']))\n"
        "except OSError:\n"
        " print('[]')\n"
    )
    try:
        hold = (
            "import socket,time\n"
            "s=[socket.create_connection(('203.0.113.20',5001)) for _ in range(12)]\n"
            "print('open',flush=True)\ntime.sleep(60)"
        )
        held = lab.popen("c2", ["python3", "-c", hold], label="hold", stdout=-1, text=True)
        assert held.stdout is not None and held.stdout.readline().strip() == "open"
        deadline = time.monotonic() + 40
        while True:
            out = lab.run("c1", ["python3", "-c", query, "wanlb_isp_connections"], capture_output=True, text=True)
            result = {r["metric"]["isp"]: float(r["value"][1]) for r in json.loads(out.stdout or "[]")}
            want = {k: float(v) for k, v in gw.status()["conn_counts"].items()}
            if result == want and result.get("isp2", 0) >= 12:
                break
            assert time.monotonic() < deadline, (result, want)
            time.sleep(0.5)
        assert result["isp2"] >= 12  # the rule pins the held streams to isp2
        up = lab.run("c1", ["python3", "-c", query, "up{job='wanlb'}"], capture_output=True, text=True).stdout
        assert json.loads(up)[0]["value"][1] == "1"
        held.kill()
    finally:
        prom.kill()
        prom.wait(10)
