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
