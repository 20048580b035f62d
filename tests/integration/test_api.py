"""The HTTP API, SSE stream and /metrics of a daemon in the lab, with real traffic and real failovers.

The daemon listens on the gateway's LAN address; requests come from a LAN client (curl, or Python's
urllib in the client's namespace), as an operator's browser or Prometheus on the LAN would.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
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


def configure(lab: Lab, without: str | None = None) -> Callable[[dict[str, Any]], None]:
    """The module's config: the API on the LAN address, a rule; ``without`` an ISP (a reload removing it)."""

    def edit(cfg: dict[str, Any]) -> None:
        cfg["api"] = {"listen": [f"{LAN_GW}:{PORT}"], "token_file": str(lab.dir / "api.token")}
        cfg["rules"] = [{"name": "to-stream", "dst": ["203.0.113.20/32"], "via": "isp2"}]
        cfg["isps"] = [isp for isp in cfg["isps"] if isp["name"] != without]

    return edit


@pytest.fixture(scope="module")
def gw(lab: Lab) -> Iterator[LabGateway]:
    token = lab.dir / "api.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)

    g = LabGateway(lab)
    g.write(configure(lab))
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


def failovers_of(families: dict[str, Any], isp: str) -> dict[str, float]:
    """``wanlb_failovers_total`` of one ISP, by family label."""
    return {s.labels["family"]: s.value for s in families["wanlb_failovers"].samples if s.labels["isp"] == isp}


def test_connections_events_and_metrics_reflect_real_traffic_and_a_failover(lab: Lab, gw: LabGateway) -> None:
    before = {f.name: f for f in text_string_to_metric_families(get(lab, "/metrics"))}
    failovers_before = failovers_of(before, "isp2")
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
    failovers = failovers_of(families, "isp2")  # one per family whose health went down, each counted once
    assert failovers and all(failovers[f] == failovers_before.get(f, 0) + 1 for f in failovers), failovers
    transitions = {s.labels["family"] for s in families["wanlb_isp_transitions"].samples
                   if s.labels["isp"] == "isp2" and s.labels["to"] == "down"}  # fmt: skip
    assert transitions == set(failovers)
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


# An SSE client in a client namespace: connects with an optional Last-Event-ID, prints each message that is not
# `stats` as a JSON line {"event", "id", "data"} until it has seen N of them (or the HTTP status if not 200).
_SSE = """
import http.client, json, sys
host, port, token, last, want = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
conn = http.client.HTTPConnection(host, port, timeout=30)
headers = {"Authorization": "Bearer " + token}
if last != "-":
    headers["Last-Event-ID"] = last
conn.request("GET", "/api/v1/stream", headers=headers)
r = conn.getresponse()
if r.status != 200:
    print(json.dumps({"status": r.status, "body": r.read().decode()}), flush=True)
    sys.exit()
print(json.dumps({"status": 200}), flush=True)
block = {}
while want:
    line = r.fp.readline().decode().rstrip("\\n")
    if line:
        name, _, value = line.partition(": ")
        block[name] = value
        continue
    if "event" in block and block["event"] != "stats":
        print(json.dumps({"event": block["event"], "id": block.get("id"), "data": json.loads(block["data"])}),
              flush=True)
        want -= 1
    block = {}
"""


def sse(lab: Lab, last: str | None, want: int) -> tuple[int, list[dict[str, Any]]]:
    """Connect to the stream (resuming from ``last``), read ``want`` messages besides stats; (status, messages)."""
    out = lab.run("c2", ["python3", "-c", _SSE, LAN_GW, str(PORT), TOKEN, last or "-", str(want)],
                  capture_output=True, text=True, check=True, timeout=60).stdout  # fmt: skip
    first, *messages = (json.loads(line) for line in out.splitlines())
    return first["status"], messages


def test_a_stream_client_that_reconnects_with_last_event_id_gets_what_it_missed(lab: Lab, gw: LabGateway) -> None:
    """Events carry ids; a client that was away resumes with the last one it saw and gets exactly the events
    it missed, in order; one whose id the daemon cannot serve (another run's) gets a ``gap`` first; a malformed
    id is refused with 400."""
    listening = lab.popen("c2", ["python3", "-c", _SSE, LAN_GW, str(PORT), TOKEN, "-", "1"], label="sse1",
                          stdout=-1, text=True)  # fmt: skip
    assert listening.stdout is not None and json.loads(listening.stdout.readline())["status"] == 200
    gw.request("disable", isp="isp3")
    seen = json.loads(listening.stdout.readline())
    listening.wait(20)
    assert seen["event"] == "event" and seen["data"]["event"] == "disabled" and seen["id"], seen
    # Away: three events happen without the client.
    after = len(gw.view().events)
    gw.request("enable", isp="isp3")
    gw.wait_for(ALL_UP)
    gw.request("disable", isp="isp3")
    gw.request("enable", isp="isp3")
    gw.wait_event("isp3", "enabled", after=after + 2)
    gw.wait_for(ALL_UP)
    status, missed = sse(lab, seen["id"], 3)
    assert status == 200
    assert [(m["event"], m["data"]["isp"], m["data"]["event"]) for m in missed] == [
        ("event", "isp3", "enabled"), ("event", "isp3", "disabled"), ("event", "isp3", "enabled")
    ], missed  # fmt: skip
    run, n = seen["id"].split("-")
    assert [m["id"] for m in missed] == [f"{run}-{int(n) + k}" for k in (1, 2, 3)]
    # An id of another run (the daemon restarted since): a gap marker, then everything the daemon kept.
    status, replay = sse(lab, "00000000-1", 2)
    assert status == 200 and replay[0]["event"] == "gap" and replay[0]["id"] is None, replay
    assert replay[0]["data"]["reason"] == "not this daemon's (it restarted since)"
    assert replay[1]["id"] == replay[0]["data"]["oldest"]
    status, _ = sse(lab, "not-an-id", 0)
    assert status == 400


def test_the_history_keeps_a_sample_per_isp_every_10s_and_a_reload_keeps_it(lab: Lab, gw: LabGateway) -> None:
    """``/api/v1/history``: state, connections, probe RTT and loss, throughput per ISP, the same times for all;
    a reload (SIGHUP) keeps it; an ISP a reload removes drops out, and added back it starts anew."""
    deadline = time.monotonic() + 40
    while len((history := get(lab, "/api/v1/history"))["times"]) < 2:  # the daemon samples every 10 s
        assert time.monotonic() < deadline, history
        time.sleep(1)
    times = history["times"]
    assert history["interval_seconds"] == 10 and history["capacity"] == 8640 and times == sorted(times)
    assert set(history["isps"]) == {"isp1", "isp2", "isp3"}
    for series in history["isps"].values():
        assert all(len(column) == len(times) for column in series.values()), series
        assert all(s in ("up", "degraded", "down", "disabled") for s in series["status"]), series
        assert (series["rtt_ms"][-1] or 0) > 0 and series["loss_percent"][-1] is not None  # probed: monitored
        assert series["rx_bytes_per_second"][-1] is not None  # the rate between the last two samples
    assert get(lab, f"/api/v1/history?since={times[-1]}")["times"] == []  # only what came after
    for bad in ("abc", "-1", "nan", "1e300"):
        assert call(lab, "GET", f"/api/v1/history?since={bad}")["status"] == 422, bad
    assert call(lab, "GET", "/api/v1/history", None)["status"] == 401

    reloads = gw.status()["reloads"]
    assert gw.proc is not None
    os.kill(gw.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while gw.status()["reloads"] == reloads:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert get(lab, "/api/v1/history")["times"][: len(times)] == times  # kept over the reload

    gw.write(configure(lab, without="isp3"))
    try:
        assert gw.reload()["ok"]
        last = get(lab, "/api/v1/history")["times"][-1]
        deadline = time.monotonic() + 30
        while not (later := get(lab, f"/api/v1/history?since={last}"))["times"]:
            assert time.monotonic() < deadline
            time.sleep(1)
        assert set(later["isps"]) == {"isp1", "isp2"}
        assert get(lab, "/api/v1/history")["times"][: len(times)] == times
    finally:
        gw.write(configure(lab))
        assert gw.reload()["ok"]
    gw.wait_for(ALL_UP)
    deadline = time.monotonic() + 30
    while (back := get(lab, "/api/v1/history")["isps"].get("isp3", {"status": [None]}))["status"][-1] != "up":
        assert time.monotonic() < deadline, back
        time.sleep(1)
    assert back["status"][0] is None  # a new ISP: nothing of the old one's day


_HOLD_LOOPBACK = """
import socket, time
server = socket.create_server(("127.0.0.1", 18123))
clients = [socket.create_connection(("127.0.0.1", 18123)) for _ in range(20)]
print("open", flush=True)
time.sleep(60)
"""


def test_connections_from_the_gateways_own_addresses_are_marked(lab: Lab, gw: LabGateway) -> None:
    """Loopback connections and the probes from the WAN addresses are the gateway's; a LAN client's are not."""
    held = lab.popen("gw", ["python3", "-c", _HOLD_LOOPBACK], label="loopback", stdout=-1, text=True)
    try:
        assert held.stdout is not None and held.stdout.readline().strip() == "open"
        lab.traffic(connections=20, parallel=4)
        conns = get(lab, "/api/v1/connections?limit=10000")["connections"]
    finally:
        held.kill()
        held.wait(10)
    wan = {a.split("/")[0] for isp in gw.status()["isps"] for a in isp["addresses"]}
    by_source: dict[str, set[bool]] = {}
    for c in conns:
        by_source.setdefault(c["orig"]["src"], set()).add(c["from_gateway"])
    assert by_source["127.0.0.1"] == {True}, by_source
    assert any(by_source.get(a) == {True} for a in wan), (wan, by_source)  # the ICMP probes
    lan = [src for src in by_source if src.startswith("192.168.77.") and src != LAN_GW]
    assert lan and all(by_source[src] == {False} for src in lan), by_source


def test_openapi_describes_what_the_server_does(lab: Lab, gw: LabGateway) -> None:
    spec = get(lab, "/api/v1/openapi.json")
    paths = spec["paths"]
    assert {
        "/healthz", "/api/v1/status", "/api/v1/isps", "/api/v1/isps/{name}", "/api/v1/events",
        "/api/v1/connections", "/api/v1/stream", "/api/v1/history", "/api/v1/isps/{name}/disable",
        "/api/v1/isps/{name}/enable",
        "/api/v1/reload", "/metrics", "/", "/api/v1/explain", "/api/v1/isps/{name}/quota/reset",
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
