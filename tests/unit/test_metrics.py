"""The Prometheus exposition from a status snapshot: per-family health (IPv6 up, loss and RTT by ``family``)
beside the per-ISP gauges.  The scrape of a running daemon by a real Prometheus is tests/integration/test_api.py."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from wanlb.metrics import Metrics
from wanlb.view import Status, from_json


def _isp(name: str, status: str, loss: float, ipv6: dict[str, Any] | None) -> dict[str, Any]:
    return {"name": name, "status": status, "weight": 1, "share_percent": 50.0,
            "health": {"monitored": True, "loss_percent": loss}, "ipv6": ipv6}  # fmt: skip


DEAD = {"monitored": True, "loss_percent": 100.0}


def test_ipv6_health_has_its_own_up_gauge_loss_and_rtt_series() -> None:
    status = {
        "isps": [
            _isp("fiber", "up", 0.0, {"mode": "netmap", "status": "down", "own_health": True, "health": DEAD}),
            _isp("lte", "up", 10.0, {"mode": "masquerade", "status": "up", "own_health": False, "health": None}),
            _isp("dsl", "down", 100.0, None),  # carries no IPv6
        ],
        "conn_counts": {},
    }
    metrics = Metrics()
    metrics.probe_rtt.labels("fiber", "4").observe(0.010)
    metrics.probe_rtt.labels("fiber", "6").observe(0.020)
    text = metrics.render(from_json(Status, status), {}).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def samples(name: str, suffix: str = "") -> dict[tuple[str, ...], float]:
        return {
            tuple(s.labels[k] for k in sorted(s.labels) if k != "le"): s.value
            for s in families[name].samples
            if s.name == name + suffix
        }

    assert samples("wanlb_isp_up") == {("fiber",): 1.0, ("lte",): 1.0, ("dsl",): 0.0}
    assert samples("wanlb_isp_ipv6_up") == {("fiber",): 0.0, ("lte",): 1.0}
    assert samples("wanlb_isp_probe_loss_ratio") == {
        ("4", "fiber"): 0.0, ("6", "fiber"): 1.0, ("4", "lte"): 0.1, ("4", "dsl"): 1.0
    }  # fmt: skip
    assert samples("wanlb_isp_probe_rtt_seconds", "_sum") == {("4", "fiber"): 0.010, ("6", "fiber"): 0.020}


def test_an_ha_node_exposes_its_role_the_peer_split_brain_and_config_differences() -> None:
    differences = ["isp b: mark 0x200 here; mark 0x300 on gw2", "vrid: 51 here; 52 on gw2"]
    peer = {"node": "gw2", "state": "up", "role": "master", "split_brain": True, "config_differences": differences}
    status = {"isps": [], "conn_counts": {}, "ha": {"node": "gw1", "role": "master", "sync_link": "up", "peer": peer}}
    text = Metrics().render(from_json(Status, status), {}).decode()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples if s.name.startswith("wanlb_ha")]
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples}
    node = (("node", "gw1"),)
    assert values[("wanlb_ha_role", (("node", "gw1"), ("role", "master")))] == 1.0
    assert values[("wanlb_ha_role", (("node", "gw1"), ("role", "backup")))] == 0.0
    assert values[("wanlb_ha_sync_link_up", node)] == 1.0
    assert values[("wanlb_ha_peer_up", node)] == 1.0
    assert values[("wanlb_ha_split_brain", node)] == 1.0
    assert values[("wanlb_ha_config_differences", node)] == 2.0
