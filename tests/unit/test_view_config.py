"""The configuration in force as the read model shows it (the dashboard's read-only config view): each policy's
members with their tiers and weights, each rule's match, each monitored ISP's probe timing."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_daemon_fake import CONFIG, Harness, run

from wanlb import view
from wanlb.daemon.surface import Surface

EXTRA = """\
balance: {algorithm: hash, hash: {fields: [src]}}
policies:
  video: {members: [{isp: a, weight: 3}, {isp: c, tier: 1}], algorithm: failover, on_unavailable: drop}
rules:
  - {name: pin, src: ["192.168.77.11", "!192.168.77.0/28"], proto: tcp, dport: [443, "8000-8080"], via: b}
  - {name: video, dst: [203.0.113.0/24], dscp: [af41], policy: video}
  - {name: all, action: bypass}
  - {name: many, src: [RANGE], action: drop}
"""
RANGE = ", ".join(f"10.0.{i}.0/24" for i in range(30))


def _status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> view.Status:
    h = Harness(tmp_path, monkeypatch, CONFIG + EXTRA.replace("RANGE", RANGE))
    out: list[view.Status] = []

    async def test() -> None:
        d = h.build()
        await d.reconcile("start")
        d.monitors.start(d.config, d.fleet)
        out.append(Surface(d).snapshot())
        d.monitors.stop()

    run(test)
    return out[0]


def test_policies_show_their_members_tiers_weights_and_what_happens_when_none_is_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    status = _status(tmp_path, monkeypatch)
    by_name = {p.name: p for p in status.policies}
    default = by_name["default"]
    assert default.algorithm == "hash" and default.hash_fields == ("src",)
    assert default.members == (view.Member("a", 1, 1), view.Member("b", 1, 1), view.Member("c", 2, 1))
    video = by_name["video"]
    assert video.algorithm == "failover" and video.on_unavailable == "drop"
    assert video.members == (view.Member("a", 1, 3), view.Member("c", 1, 1))  # c's own tier is 2: overridden
    assert by_name["via_b"].members == (view.Member("b", 1, 1),)


def test_rules_say_what_they_match_within_bounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = {r.name: r for r in _status(tmp_path, monkeypatch).rules}
    assert rules["pin"].match == "src 192.168.77.11/32 · not src 192.168.77.0/28 · proto tcp · dport 443, 8000-8080"
    assert rules["pin"].target == "via b"  # the fields clients had stay as they were
    assert rules["video"].match == "dst 203.0.113.0/24 · dscp af41"
    assert rules["all"].match == "everything"
    many = rules["many"].match
    assert many.startswith("src 10.0.0.0/24, 10.0.1.0/24") and many.endswith("(+22 more)") and len(many) < 200, many


def test_a_monitored_isps_health_carries_its_probe_timing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    status = _status(tmp_path, monkeypatch)
    a = status.isp("a")
    assert a is not None and a.health.monitored and a.health.targets == ("192.0.2.1",)
    h = a.health
    assert (h.interval_seconds, h.timeout_seconds, h.down_after, h.up_after, h.quorum, h.window) == (
        0.2, 0.3, 3, 5, 1, 20,
    )  # fmt: skip
    assert h.max_loss_percent is None and h.max_latency_ms is None
    c = status.isp("c")
    assert c is not None and view.to_json(c.health) == {"monitored": False}  # nothing more for the unprobed
    assert view.from_json(view.Status, view.to_json(status)) == status
