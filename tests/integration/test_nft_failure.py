"""A failover that happens while nft is failing must be completed once nft works again.

A shim `nft` first on the daemon's PATH fails every call while a flag file exists. isp1 dies during the
outage: the daemon sees it (health probes do not need nft) but cannot take it out of `balance`, so it must
not flush its connections yet (a flushed connection could be re-balanced onto the dead ISP). Once nft works,
the next resync must finish the job: isp1 out of balancing *and* its connections flushed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from acceptance import RESYNC_WAIT, marked, poll

from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

REAL_NFT = "/usr/sbin/nft"
SHIM_MESSAGE = "nft shim: injected failure"


def nft_shim(directory: Path, flag: Path) -> Path:
    directory.mkdir()
    shim = directory / "nft"
    shim.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{flag}" ]; then echo "{SHIM_MESSAGE} ({flag} exists)" >&2; exit 1; fi\n'
        f'exec {REAL_NFT} "$@"\n'
    )
    shim.chmod(0o755)
    return directory


def test_failover_during_an_nft_outage_completes_at_the_next_resync(
    lab_factory: Callable[..., Lab], tmp_path: Path
) -> None:
    lab = lab_factory(isps=3, clients=2)
    flag = tmp_path / "nft-broken"
    shim = nft_shim(tmp_path / "bin", flag)
    gw = LabGateway(lab)
    gw.write(lambda cfg: None)  # the lab default: icmp probes every 200 ms on every ISP
    gw.start(env={"PATH": f"{shim}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"})
    try:
        status = gw.wait_for({"isp1": "up", "isp2": "up", "isp3": "up"})
        mark = next(i["mark"] for i in status["isps"] if i["name"] == "isp1")
        mask = status["mark_mask"]
        counts = lab.traffic(connections=60)
        assert counts["failed"] == 0 and counts["isp1"] == 20, counts
        held = marked(gw, mark, mask)
        assert held, "isp1 carries no connection: the test would prove nothing"

        flag.touch()
        lab.fail("isp1", "blackhole")
        event = gw.wait_event("isp1", "down", timeout=10)
        log = gw.log_text()
        assert SHIM_MESSAGE in (event.get("error") or "") or SHIM_MESSAGE in log, (
            f"the failed reconcile is visible neither in the down event ({event}) nor in the log:\n{log[-2000:]}"
        )

        flag.unlink()
        left: list[str] = []
        active: bool | None = None

        def done() -> bool:
            nonlocal left, active
            active = next(i["active"] for i in gw.status()["isps"] if i["name"] == "isp1")
            left = marked(gw, mark, mask)
            return active is False and not left

        if not poll(done, RESYNC_WAIT):
            pytest.fail(
                f"{RESYNC_WAIT} s after nft works again: isp1 active={active}, {len(left)} of its connections "
                f"(of {len(held)} before it died) still in conntrack:\n" + "\n".join(left[:10]),
                pytrace=False,
            )
        counts = lab.traffic(connections=60)
        assert counts["failed"] == 0 and counts["isp1"] == 0, f"new connections after the resync: {counts}"
    finally:
        flag.unlink(missing_ok=True)
        gw.stop(cleanup=True)
