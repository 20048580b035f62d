"""Moving wanlb's routing objects (rule priorities, table numbers) by a reload, and cleaning up after a
series of reloads: the daemon owns what it put in the kernel, not only what the current config names.

Each test builds its own lab: the second compares the gateway with a snapshot taken before wanlb ever ran
there, which a daemon of another test could have spoiled.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from acceptance import STALL, Streams, diff, wait_streams_established, wanlb_routes, wanlb_rules

from wanlb.control import DaemonRefused
from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

MOVED = {"rule_priority": 20000, "table_base": 300}
OLD_PRIORITIES = range(10000, 11000)
OLD_TABLES = {"201", "202", "203"}


def without_health(cfg: dict[str, Any]) -> None:
    for isp in cfg["isps"]:
        isp.pop("health", None)


def reload(gw: LabGateway, step: str, edit: Callable[[dict[str, Any]], None]) -> None:
    def write(cfg: dict[str, Any]) -> None:
        without_health(cfg)
        edit(cfg)

    gw.write(write)
    try:
        gw.reload()
    except DaemonRefused as exc:
        pytest.fail(f"reload '{step}' was refused: {exc}")


def test_moving_the_routing_range_keeps_streams_and_leaves_nothing_behind(
    lab_factory: Callable[..., Lab],
) -> None:
    lab = lab_factory(isps=3, clients=2)
    gw = LabGateway(lab)
    streams = Streams(lab)
    try:
        gw.write(without_health)
        gw.start()
        streams.start(6)
        carried = wait_streams_established(gw, 6)
        assert set(carried) == set(lab.isps), f"the streams did not reach every ISP: {carried}"
        time.sleep(1.0)

        reload(gw, "routing 20000/300", lambda cfg: cfg.update(routing=MOVED))
        time.sleep(STALL + 2)
        problems = [f"moving the routing range broke {s.describe()}" for s in streams.stop() if not s.ok]
        counts = lab.traffic(connections=300)
        if counts["failed"] or counts["other"] or not all(counts[isp] for isp in lab.isps):
            problems.append(f"new connections in the moved range: {counts}")
        stale_rules = [r for r in wanlb_rules(gw) if r["priority"] in OLD_PRIORITIES]
        if stale_rules:
            problems.append(f"proto 119 rules left in 10000..10999: {stale_rules}")
        stale_routes = [r for r in wanlb_routes(gw) if str(r.get("table")) in OLD_TABLES]
        if stale_routes:
            problems.append(f"proto 119 routes left in tables 201..203: {stale_routes}")
        assert not problems, "\n".join(problems)
    finally:
        streams.kill()
        gw.stop(cleanup=True)


SNAPSHOT = """
echo '# nft list ruleset'; nft list ruleset
echo '# ip rule'; ip rule
echo '# ip -4 route show table all'; ip -4 route show table all
echo '# ip -6 route show table all'; ip -6 route show table all
echo '# sysctls'
for f in /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/conf/*/rp_filter /proc/sys/net/ipv4/conf/*/src_valid_mark; do
    echo "$f $(cat "$f")"
done
"""


def snapshot(gw: LabGateway) -> str:
    return gw.run("sh", "-c", SNAPSHOT)


def test_reloads_then_stop_cleanup_restore_the_gateway_exactly(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(isps=3, clients=2)
    gw = LabGateway(lab)
    before = snapshot(gw)
    gw.write(without_health)
    gw.start()
    try:
        steps: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
            ("routing 20000/300", lambda cfg: cfg.update(routing=MOVED)),
            ("weights 3/2/1", lambda cfg: [isp.update(weight=3 - k) for k, isp in enumerate(cfg["isps"])]),
            ("order reversed", lambda cfg: cfg.update(isps=cfg["isps"][::-1])),
            ("isp3 removed", lambda cfg: cfg.update(isps=[i for i in cfg["isps"] if i["name"] != "isp3"])),
            ("default range", lambda cfg: cfg.pop("routing", None)),
        ]
        applied: list[Callable[[dict[str, Any]], None]] = []
        done: dict[str, Any] = {}
        for step, edit in steps:
            applied.append(edit)  # cumulative, as an operator editing one file
            reload(gw, step, lambda cfg: [e(cfg) for e in applied])
            done[step] = lab.traffic(connections=30)
            time.sleep(0.5)
    finally:
        stop = gw.cli("stop", "--cleanup")
        if gw.proc is not None:
            gw.proc.wait(timeout=15)
    assert stop.returncode == 0, f"wanlb stop --cleanup failed: {stop.stderr}"
    after = snapshot(gw)
    if after != before:
        pytest.fail(
            f"after the reloads and `wanlb stop --cleanup` the gateway differs from before `wanlb run`:\n"
            f"{diff(before, after, 'before wanlb run', 'after stop --cleanup')}\n"
            f"(30 new connections after each reload went: {done})",
            pytrace=False,
        )
