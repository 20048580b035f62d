"""A 200k conntrack event storm in a lab gateway while the daemon runs and answers its control socket.

100,000 synthetic conntrack entries carrying the lab ISPs' marks are created in the gateway namespace by
batched ctnetlink creates (100k NEW events), then deleted by one kernel flush per ISP mark (100k DESTROY
events), the way a failover flushes. After each half the daemon's live per-ISP counts (`conn_counts`, kept
from events) must equal a fresh kernel dump per mark (`conntrack -L -m MARK/MASK`). Meanwhile a thread asks
`status` over a fresh control connection again and again: every request must be answered, and the slowest
answer is recorded (the only bound is a generous one that catches a hang).

The daemon runs without health targets here, so that nothing but the storm touches the gateway's table
(probe entries would come and go during the comparison); failover under traffic is covered by
test_failover.py and test_soak.py. The figures are printed and saved as JSON in the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from acceptance import StatusPoller

from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

ENTRIES = 100_000
HANG = 5.0
"""No status answer may take longer than this: a bound that catches a hang, not a performance target."""
SETTLE = 60.0
"""Seconds the daemon's counts get to equal the kernel's after each half of the storm."""

# Runs in the gateway namespace: `create MARKS` or `flush MARKS MASK`; prints what it did as JSON.
_STORM = textwrap.dedent(
    """
    import json, sys, time
    from wanlb.ctnetlink.client import Conntrack
    from wanlb.ctnetlink.filters import Filter
    from wanlb.ctnetlink.synth import entries

    action, marks = sys.argv[1], json.loads(sys.argv[2])
    with Conntrack() as ct:
        start = time.monotonic()
        if action == "create":
            # Every other entry also sets mark bits outside the mask: both sides must count it under its ISP.
            batch = [e._replace(mark=marks[i % len(marks)] | (i % 2) * (i & 0xFF))
                     for i, (e, _nat) in enumerate(entries(int(sys.argv[3])))]
            done = ct.create(batch).count(0)
        else:
            mask = int(sys.argv[3])
            done = sum(ct.delete_matching(Filter(mark=m, mark_mask=mask)) for m in marks)
        print(json.dumps({"done": done, "seconds": round(time.monotonic() - start, 3)}))
    """
)


def kernel_counts(gw: LabGateway, marks: dict[str, int], mask: int) -> dict[str, int]:
    """Entries per ISP from a fresh kernel dump filtered by mark (conntrack-tools, not our codec)."""
    return {name: gw.run("conntrack", "-L", "-m", f"{mark:#x}/{mask:#x}").count("\n") for name, mark in marks.items()}


def settle(gw: LabGateway, marks: dict[str, int], mask: int) -> tuple[float, dict[str, int], dict[str, Any]]:
    """Poll until the daemon's per-ISP counts equal the kernel's: (seconds it took, kernel counts, daemon reply)."""
    start = time.monotonic()
    while True:
        ours = gw.request("conn_counts")
        kernel = kernel_counts(gw, marks, mask)
        if ours["by_isp"] == kernel:
            return time.monotonic() - start, kernel, ours
        if time.monotonic() - start > SETTLE:
            pytest.fail(f"after {SETTLE:g}s the daemon counts {ours['by_isp']}, the kernel holds {kernel}: {ours}")
        time.sleep(0.2)


def daemon_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def storm(gw: LabGateway, *args: str) -> dict[str, Any]:
    out = gw.run(sys.executable, "-c", _STORM, *args)
    return dict(json.loads(out.splitlines()[-1]))


@pytest.mark.parametrize("events_mode", ["1", "2"])
def test_200k_event_storm_counts_stay_exact_and_status_answers(
    lab_factory: Callable[..., Lab], tmp_path: Path, events_mode: str
) -> None:
    """events_mode 1: the counts come from events alone (resyncs only at start and after a loss report);
    2, the kernel default: the daemon also resyncs every 30 s, which the figures show if it happened."""
    lab = lab_factory(isps=3, clients=1)
    gw = LabGateway(lab)

    def no_probes(cfg: dict[str, Any]) -> None:
        for isp in cfg["isps"]:
            isp["health"]["targets"] = []

    gw.write(no_probes)
    gw.run("sysctl", "-qw", f"net.netfilter.nf_conntrack_events={events_mode}")
    gw.start()
    poller = StatusPoller(str(lab.socket_path), every=0.02, timeout=4 * HANG)
    try:
        status = gw.wait_for(dict.fromkeys(lab.isps, "up"))
        marks = {i["name"]: i["mark"] for i in status["isps"]}
        mask = status["mark_mask"]
        pid = status["pid"]
        _, empty, before = settle(gw, marks, mask)
        assert empty == dict.fromkeys(lab.isps, 0), f"the gateway's table is not empty before the storm: {empty}"
        cpu_before = daemon_cpu_seconds(pid)

        poller.start()
        created = storm(gw, "create", json.dumps(list(marks.values())), str(ENTRIES))
        assert created["done"] == ENTRIES, created
        settle_new, after_new, counts_new = settle(gw, marks, mask)
        assert sum(after_new.values()) == ENTRIES, after_new

        deleted = storm(gw, "flush", json.dumps(list(marks.values())), str(mask))
        assert deleted["done"] == ENTRIES, deleted
        settle_destroy, after_destroy, counts_destroy = settle(gw, marks, mask)
        assert after_destroy == dict.fromkeys(lab.isps, 0), after_destroy
        time.sleep(1.0)  # a few more answers after the storm
        poller.stop()
        assert not poller.is_alive(), "the status poller hung"
        cpu = daemon_cpu_seconds(pid) - cpu_before
        final = gw.status()
        assert final["conn_counts"] == after_destroy  # status shows the same live counts
        assert gw.proc is not None and gw.proc.poll() is None, "the daemon died"
    finally:
        poller.stop()
        gw.stop(cleanup=True)

    latencies = sorted(poller.latencies)
    figures = {
        "entries": ENTRIES,
        "events": 2 * ENTRIES,
        "nf_conntrack_events": int(events_mode),
        "create_seconds": created["seconds"],
        "flush_seconds": deleted["seconds"],
        "settle_after_new_seconds": round(settle_new, 3),
        "settle_after_destroy_seconds": round(settle_destroy, 3),
        "counts_after_new": after_new,
        "lost_events": counts_destroy["lost_events"],
        "lost_events_after_new": counts_new["lost_events"],
        "resyncs_during_storm": counts_destroy["resyncs"] - before["resyncs"],
        "daemon_cpu_seconds": round(cpu, 2),
        "status_polls": len(latencies),
        "status_failures": poller.failures,
        "status_max_seconds": round(latencies[-1], 4) if latencies else None,
        "status_p50_seconds": round(statistics.median(latencies), 4) if latencies else None,
        "status_p99_seconds": round(latencies[int(0.99 * (len(latencies) - 1))], 4) if latencies else None,
    }
    print("\nstorm figures:", json.dumps(figures, indent=2))
    (tmp_path / "storm.json").write_text(json.dumps(figures, indent=2) + "\n")
    assert poller.failures == [], poller.failures
    assert len(latencies) > 10, "too few status answers to say anything"
    assert latencies[-1] < HANG, f"a status answer took {latencies[-1]:.2f}s"
