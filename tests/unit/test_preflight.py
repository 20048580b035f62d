"""Preflight refuses a non-root run with one sentence (running as another user needs no kernel)."""

from __future__ import annotations

import pytest

from wanlb import reconcile
from wanlb.config import parse_config


def test_not_root_is_refused_before_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconcile.os, "geteuid", lambda: 1000)
    cfg = parse_config("lan: {interfaces: [lan0]}\nisps:\n  - {name: a, interface: wan1, gateway: 10.0.0.1}\n")
    with pytest.raises(reconcile.PreflightError, match="must run as root"):
        reconcile.preflight(cfg)
