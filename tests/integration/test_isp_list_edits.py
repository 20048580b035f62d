"""Editing the ISP list never disturbs the connections of the ISPs that stay (acceptance of stable marks).

An ISP keeps its conntrack mark and routing table for as long as its name is in the config, so a reload
that removes, inserts, reorders or renames *other* ISPs must leave its connections flowing. The connections
of an ISP that is gone (removed, or renamed: a new name is a new ISP) are flushed and break; new
connections then use only the ISPs of the new config.

The lab has four ISPs; the daemon starts with isp1..isp3 (isp4 is for the insert case). Each case gets a
fresh daemon, fresh streams and an empty conntrack table.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from acceptance import STALL, Streams, wait_streams_established
from harness import module_lab

from wanlb.control import DaemonRefused
from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

STREAMS = 9
INITIAL = ("isp1", "isp2", "isp3")


def _strict_tcp(lab: Lab) -> None:
    """A connection whose conntrack entry was flushed must not be re-adopted mid-stream (loose TCP pickup):
    re-balanced onto the renamed ISP's same interface it could keep its address and port and flow on as if
    nothing happened, which would make "its connections were flushed" unobservable."""
    lab.run("gw", ["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0"], check=True)


lab = module_lab(_strict_tcp, isps=4, clients=2)


@pytest.fixture
def streams(lab: Lab) -> Iterator[Streams]:
    s = Streams(lab)
    try:
        yield s
    finally:
        s.kill()


@dataclass(frozen=True)
class Edit:
    name: str
    apply: Callable[[list[dict[str, Any]], dict[str, Any]], list[dict[str, Any]]]  # (isp1..3, isp4) -> new list


EDITS = [
    Edit("remove-first", lambda isps, isp4: isps[1:]),
    Edit("insert-isp4-on-top", lambda isps, isp4: [isp4, *isps]),
    Edit("reverse-order", lambda isps, isp4: isps[::-1]),
    Edit("rename-isp2", lambda isps, isp4: [i if i["name"] != "isp2" else {**i, "name": "isp2b"} for i in isps]),
]


def no_health(isps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in isp.items() if k != "health"} for isp in isps]


def lab_isp(interface: str) -> str:
    """wan3 -> isp3: the lab ISP behind a gateway interface (what the servers' source addresses name)."""
    return "isp" + interface.removeprefix("wan")


@pytest.mark.parametrize("edit", EDITS, ids=lambda e: e.name)
def test_isp_list_edit_keeps_the_remaining_isps_connections(
    lab: Lab, gw: LabGateway, streams: Streams, edit: Edit
) -> None:
    base = no_health(gw.base["isps"])
    initial = [i for i in base if i["name"] in INITIAL]
    isp4 = next(i for i in base if i["name"] == "isp4")
    new = edit.apply(initial, isp4)
    gw.write(lambda cfg: cfg.update(isps=initial))
    gw.start()

    streams.start(STREAMS)
    carried = wait_streams_established(gw, STREAMS)
    assert set(carried) == set(INITIAL), f"the streams did not reach every configured ISP: {carried}"
    time.sleep(1.0)

    gw.write(lambda cfg: cfg.update(isps=new))
    try:
        gw.reload()
    except DaemonRefused as exc:
        pytest.fail(f"{edit.name}: the reload was refused: {exc}")
    time.sleep(STALL + 2)  # a stream that lost its path has failed by now
    stopped = streams.stop()

    # An ISP stays the same ISP only under the same name on the same interface.
    before = {i["name"]: i["interface"] for i in initial}
    after = {i["name"]: i["interface"] for i in new}
    kept = {name for name, interface in before.items() if after.get(name) == interface}
    gone = set(before) - kept
    problems = []
    for s in stopped:
        if s.isp in kept and not (s.ok and s.result and s.result["counters"] > 0):
            problems.append(f"{s.isp} stayed in the config, but its {s.describe()}")
        elif s.isp in gone and s.ok:
            problems.append(f"{s.isp} left the config, but its {s.describe()} (its connections were not flushed)")
        elif s.isp not in kept | gone:
            problems.append(f"unexpected {s.describe()}")

    allowed = {lab_isp(i["interface"]) for i in new}
    counts = lab.traffic(connections=200)
    if counts["failed"] or counts["other"]:
        problems.append(f"new connections failed or left unNATed after the reload: {counts}")
    if any(counts[isp] for isp in set(lab.isps) - allowed):
        problems.append(f"new connections used ISPs that are not in the new config ({sorted(allowed)}): {counts}")
    if not all(counts[isp] for isp in allowed):
        problems.append(f"not every ISP of the new config ({sorted(allowed)}) took new connections: {counts}")

    config = [f"{i['name']}@{i['interface']}" for i in new]
    assert not problems, f"{edit.name} (now {config}):\n" + "\n".join(problems)
