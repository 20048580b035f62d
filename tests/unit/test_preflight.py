"""Preflight refuses a non-root run with one sentence (running as another user needs no kernel)."""

from __future__ import annotations

import pytest
from fakekernel import FakeKernel

from wanlb import reconcile
from wanlb.config import parse_config


def test_not_root_is_refused_before_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconcile.os, "geteuid", lambda: 1000)
    cfg = parse_config("lan: {interfaces: [lan0]}\nisps:\n  - {name: a, interface: wan1, gateway: 10.0.0.1}\n")
    with pytest.raises(reconcile.PreflightError, match="must run as root"):
        reconcile.preflight(cfg, FakeKernel({"lan0": True, "wan1": True}))


def test_missing_interfaces_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconcile.os, "geteuid", lambda: 0)
    monkeypatch.setattr("wanlb.adapters.nft.nft_path", lambda: "/usr/sbin/nft")
    cfg = parse_config("lan: {interfaces: [lan0]}\nisps:\n  - {name: a, interface: wan1, gateway: 10.0.0.1}\n")
    with pytest.raises(reconcile.PreflightError, match="interface\\(s\\) wan1 named in the config do not exist"):
        reconcile.preflight(cfg, FakeKernel({"lan0": True}))
    reconcile.preflight(cfg, FakeKernel({"lan0": True, "wan1": False}))  # present, even if down
