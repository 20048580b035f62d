"""The integration tests' lab harness: a module-scoped lab built once per test module (:func:`module_lab`) and a
``gw`` fixture (registered by conftest.py) that leaves the lab as it found it."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab


def unique_lab_name() -> str:
    """`t<pid><4 hex>`: unique across concurrent test runs on one machine, valid as a lab name."""
    return f"t{os.getpid()}{secrets.token_hex(2)}"


def module_lab(setup: Callable[[Lab], None] | None = None, **up: Any) -> Any:
    """A module-scoped ``lab`` fixture: ``Lab.up(**up)`` under a unique name, ``setup(lab)`` once (extra servers,
    addresses, sysctls), torn down after the module whatever happened.  In a test module:
    ``lab = module_lab(ipv6=True)``."""

    @pytest.fixture(scope="module")
    def lab() -> Iterator[Lab]:
        if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None:
            pytest.skip("needs root, iproute2 and nft")
        with Lab.up(unique_lab_name(), **up) as built:
            if setup is not None:
                setup(built)
            yield built

    return lab


@pytest.fixture
def gw(lab: Lab) -> Iterator[LabGateway]:
    """A daemon driver for the module's ``lab`` (not started: ``gw.write(edit)``, ``gw.start()``). Afterwards,
    whatever the test did: the daemon stopped with cleanup, every ISP healed, the gateway's conntrack table
    emptied — the next test starts from the lab as ``lab up`` built it."""
    gateway = LabGateway(lab)
    try:
        yield gateway
    finally:
        try:
            gateway.stop(cleanup=True)
        finally:
            for isp in lab.isps:
                lab.heal(isp)
            lab.run("gw", ["conntrack", "-F"], capture_output=True, check=False)


CHROMIUM = "/usr/bin/chromium"


@contextmanager
def chromium_in(lab: Lab, node: str = "c1") -> Iterator[Any]:
    """Debian's chromium, driven by Playwright, with all its network in the lab node's namespace: a two-line
    wrapper given as ``executable_path`` (``ip netns exec`` only switches namespaces and execs, so the browser
    keeps the pipes Playwright drives it through; the lab's teardown kills any chromium a failed test left)."""
    from playwright import sync_api

    wrapper = lab.dir / f"chromium-in-{node}"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {lab.ns(node)} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o700)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(wrapper), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()
