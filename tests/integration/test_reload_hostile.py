"""Every input of the bad-input corpus (tests/badinputs.py), sent as a reload to a running daemon with health probes:
refused with its FILE:LINE message, the kernel state byte-identical, `status` answered throughout, and a failover
during slow reloads still detected.

Times are recorded (``<pytest basetemp>/reload_hostile.json``, one line with `-s`); the only timed assertions are
generous bounds that catch a hang or a failover that does not happen.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import statistics
import threading
import time
import uuid
from typing import Any

import pytest
from acceptance import StatusPoller
from badinputs import BadInput, all_inputs, remove

from wanlb.control import DaemonRefused
from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

ALL_UP = {"isp1": "up", "isp2": "up", "isp3": "up"}
# The slowest inputs to parse (each ~0.5-1.5 s in `wanlb check`), reloaded over and over while isp1 fails.
SLOW = ["max_valid_looking.yaml", "unknown_keys_24000.yaml", "values_60000.yaml", "size_50mb.yaml"]
FAILOVER_BOUND = 5.0  # seconds from the fault to the down decision: ~0.8 s usually (docs/benchmarks.md)


def kernel_state(gw: LabGateway) -> dict[str, str]:
    """What wanlb put in the kernel, as text: table inet wanlb (counters and timeouts blanked), rules, routes."""
    nft = gw.run("nft", "list", "table", "inet", "wanlb")
    nft = re.sub(r"packets \d+ bytes \d+", "packets - bytes -", nft)
    nft = re.sub(r"expires \S+", "expires -", nft)
    return {"nft": nft, "rules": gw.run("ip", "rule", "show"), "routes": gw.run("ip", "route", "show", "table", "all")}


def assert_unchanged(before: dict[str, str], after: dict[str, str], item: BadInput) -> None:
    for what in before:
        if before[what] != after[what]:
            diff = "\n".join(difflib.unified_diff(before[what].splitlines(), after[what].splitlines(), lineterm=""))
            pytest.fail(f"{what} changed by the refused reload of {item.name} ({item.why}):\n{diff}")


def refused(gw: LabGateway, item: BadInput) -> float:
    """Put the input at the daemon's config path, reload; assert the refusal names FILE:LINE: field. Seconds taken."""
    item.place(gw.config)
    start = time.monotonic()
    with pytest.raises(DaemonRefused) as info:
        gw.reload()
    took = time.monotonic() - start
    first = str(info.value).split("\n")[0]
    assert first.startswith(item.prefix(str(gw.config))), f"{item.why}: {first!r}"
    assert item.message.lower() in first.lower(), f"{item.why}: {first!r}"
    return took


def downs(gw: LabGateway, isp: str) -> list[dict[str, Any]]:
    return [e for e in gw.status()["events"] if e["isp"] == isp and e["event"] == "down"]


def wait_new_down(gw: LabGateway, isp: str, seen: int, timeout: float) -> dict[str, Any]:
    """The first down event of ``isp`` after the ``seen`` it already had."""
    deadline = time.monotonic() + timeout
    while len(events := downs(gw, isp)) <= seen:
        assert time.monotonic() < deadline, f"no new down event for {isp} after {timeout} s"
        time.sleep(0.05)
    return events[seen]


def fault_during_slow_reloads(lab: Lab, gw: LabGateway, slow: list[BadInput]) -> dict[str, Any]:
    """Blackhole isp1 and at once start reloading the slowest inputs, one after the other, until the down event."""
    done = threading.Event()
    reloads: list[float] = []
    errors: list[BaseException] = []

    def keep_reloading() -> None:
        try:
            while not done.is_set():
                for item in slow:
                    reloads.append(refused(gw, item))
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    earlier = len(downs(gw, "isp1"))
    lab.fail("isp1", "blackhole")
    fault = time.time()
    worker = threading.Thread(target=keep_reloading, daemon=True)
    worker.start()
    try:
        event = wait_new_down(gw, "isp1", earlier, timeout=10)
        seen = time.time()
    finally:
        done.set()
        worker.join(timeout=60)
    if errors:
        raise errors[0]
    return {
        "decided_s": round(event["time"] - fault, 3),
        "applied_ms": event["applied_ms"],
        "seen_by_status_s": round(seen - fault, 3),
        "slow_reloads": len(reloads),
        "slow_reload_s_max": round(max(reloads), 3) if reloads else None,
    }


def test_hostile_reloads_change_nothing(tmp_path_factory: pytest.TempPathFactory) -> None:
    inputs = all_inputs()
    slow = [i for i in inputs if i.name in SLOW]
    assert len(slow) == len(SLOW)
    with Lab.up(name=f"h{os.getpid()}{uuid.uuid4().hex[:4]}", isps=3, clients=1) as lab:
        gw = LabGateway(lab)
        gw.write(lambda cfg: None)  # the lab's own config: three ISPs, each probed every 200 ms
        good = gw.config.read_bytes()
        poller = StatusPoller(str(lab.socket_path))
        try:
            gw.start()
            gw.wait_for(ALL_UP)

            # The usual failover time, on this machine now, for comparison.
            lab.fail("isp1", "blackhole")
            fault = time.time()
            usual = gw.wait_event("isp1", "down", timeout=FAILOVER_BOUND)["time"] - fault
            lab.heal("isp1")
            gw.wait_for(ALL_UP)

            poller.start()
            before = kernel_state(gw)
            assert "chain balance" in before["nft"] and "lookup 201" in before["rules"], before  # wanlb's own
            reload_times: dict[str, float] = {}
            half = len(inputs) // 2
            for item in inputs[:half]:
                reload_times[item.name] = refused(gw, item)
                assert_unchanged(before, kernel_state(gw), item)

            failover = fault_during_slow_reloads(lab, gw, slow)
            gw.wait_for({"isp1": "down", "isp2": "up", "isp3": "up"})
            before = kernel_state(gw)  # isp1 is out of balancing now: that is the state to keep

            for item in inputs[half:]:
                reload_times[item.name] = refused(gw, item)
                assert_unchanged(before, kernel_state(gw), item)
            poller.halt.set()
            poller.join(timeout=15)

            remove(gw.config)
            gw.config.write_bytes(good)
            lab.heal("isp1")
            assert gw.reload()["ok"]
            gw.wait_for(ALL_UP, timeout=20)  # isp1 flapped (two downs within a minute): held down 5 s first
        finally:
            poller.halt.set()
            lab.heal("isp1")
            remove(gw.config)
            gw.config.write_bytes(good)
            gw.stop(cleanup=True)

    summary = {
        "inputs": len(inputs),
        "reload_s_max": round(max(reload_times.values()), 3),
        "reload_s_max_input": max(reload_times, key=reload_times.__getitem__),
        "reload_s_median": round(statistics.median(reload_times.values()), 3),
        "status_polls": len(poller.latencies),
        "status_s_max": round(max(poller.latencies), 3),
        "status_s_median": round(statistics.median(poller.latencies), 4),
        "status_s_p99": round(sorted(poller.latencies)[int(len(poller.latencies) * 0.99)], 3),
        "usual_failover_decided_s": round(usual, 3),
        "failover_during_reloads": failover,
        "status_failures": poller.failures,
    }
    out = tmp_path_factory.getbasetemp() / "reload_hostile.json"
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(
        f"\n{len(inputs)} hostile reloads refused (max {summary['reload_s_max']} s, {summary['reload_s_max_input']}); "
        f"{summary['status_polls']} status polls, slowest {summary['status_s_max']} s; failover decided "
        f"{failover['decided_s']} s after the fault during {failover['slow_reloads']} slow reloads (usual: "
        f"{summary['usual_failover_decided_s']} s); details in {out}"
    )
    assert poller.failures == [], poller.failures
    assert len(poller.latencies) >= 20
    assert failover["decided_s"] <= FAILOVER_BOUND, failover
    assert failover["slow_reloads"] >= 1, failover
