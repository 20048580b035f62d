"""Preflight refuses a non-root run with one sentence (running as another user needs no kernel)."""

from __future__ import annotations

import pytest

from wanlb import reconcile
from wanlb.config import parse_config
from wanlb.uplink import interface_warnings


def test_not_root_is_refused_before_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconcile.os, "geteuid", lambda: 1000)
    cfg = parse_config("lan: {interfaces: [lan0]}\nisps:\n  - {name: a, interface: wan1, gateway: 10.0.0.1}\n")
    with pytest.raises(reconcile.PreflightError, match="must run as root"):
        reconcile.preflight(cfg)


def test_missing_interfaces_are_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    """ppp0 before pppd connects, a USB modem not plugged in: the daemon starts, the ISP waits."""
    monkeypatch.setattr(reconcile.os, "geteuid", lambda: 0)
    monkeypatch.setattr("wanlb.adapters.nft.nft_path", lambda: "/usr/sbin/nft")
    monkeypatch.setattr(reconcile, "state_dir_problem", lambda _path: None)
    cfg = parse_config("lan: {interfaces: [lan0]}\nisps:\n  - {name: a, interface: wan1, gateway: 10.0.0.1}\n")
    reconcile.preflight(cfg)
    warnings = interface_warnings(cfg, {"lo", "lan0", "wan2"})
    assert warnings == [
        "isp a: interface wan1 does not exist now (did you mean wan2? interfaces: lan0, wan2); the ISP is down "
        "(no interface) until it appears"
    ]
    assert interface_warnings(cfg, {"lan0", "wan1"}) == []
    assert "lan: interface lan0 does not exist now (interfaces: wan1)" in interface_warnings(cfg, {"wan1"})[0]
