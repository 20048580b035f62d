"""Drift repair: the resync compares the kernel with what wanlb wants, not with what it last sent.

Someone deletes a rule of `table inet wanlb` and adds one of their own to it; they also add their own
table, ip rule and route. Within one resync wanlb's table is exactly what it was again, and everything
that is not wanlb's is left alone.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable

import pytest
from acceptance import RESYNC_WAIT, diff, normalize_nft, poll

from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

FOREIGN_TABLE = "table ip foreign {\n\tchain c {\n\t\ttype filter hook prerouting priority 10; counter\n\t}\n}\n"
FOREIGN_RULE = "priority 12345 fwmark 0x7 lookup 77"
FOREIGN_ROUTE = "198.51.100.0/24 dev wan1 table 77"


def wanlb_table(gw: LabGateway) -> str:
    return normalize_nft(gw.run("nft", "list", "table", "inet", "wanlb"))


def foreign_state(gw: LabGateway) -> str:
    return "\n".join(
        [
            normalize_nft(gw.run("nft", "list", "table", "ip", "foreign")),
            gw.run("ip", "rule", "show", "priority", "12345"),
            gw.run("ip", "route", "show", "table", "77"),
        ]
    )


def first_rule_handle(gw: LabGateway, chain: str) -> tuple[int, str]:
    """Handle and text of the first rule of a chain of table inet wanlb."""
    for line in gw.run("nft", "-a", "list", "chain", "inet", "wanlb", chain).splitlines():
        m = re.fullmatch(r"\s*(.+?) # handle (\d+)", line)
        if m and not m.group(1).startswith(("chain ", "type ")):
            return int(m.group(2)), m.group(1)
    raise AssertionError(f"chain {chain} of table inet wanlb has no rule")


def test_resync_repairs_wanlb_table_and_leaves_foreign_objects_alone(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(isps=3, clients=2)
    gw = LabGateway(lab)
    gw.write(lambda cfg: [isp.pop("health") for isp in cfg["isps"]])  # nothing changes by itself
    gw.start()
    try:
        assert lab.traffic(connections=30)["failed"] == 0
        before = wanlb_table(gw)

        handle, deleted = first_rule_handle(gw, "prerouting")
        gw.run("nft", "delete", "rule", "inet", "wanlb", "prerouting", "handle", str(handle))
        table = json.loads(gw.run("nft", "-j", "list", "table", "inet", "wanlb"))["nftables"]
        chains = {o["chain"]["name"] for o in table if "chain" in o}
        other = "postrouting" if "postrouting" in chains else sorted(chains - {"prerouting"})[0]
        gw.run("nft", "add", "rule", "inet", "wanlb", other, "meta", "mark", "0x7", "counter", "comment", '"foreign"')
        gw.run("nft", "-f", "-", stdin=FOREIGN_TABLE)
        gw.run("ip", "rule", "add", *FOREIGN_RULE.split())
        gw.run("ip", "route", "add", *FOREIGN_ROUTE.split())
        foreign = foreign_state(gw)
        drifted = wanlb_table(gw)
        assert drifted != before

        if not poll(lambda: wanlb_table(gw) == before, RESYNC_WAIT):
            pytest.fail(
                f"{RESYNC_WAIT} s after deleting `{deleted}` from prerouting and adding a rule to {other}, "
                f"table inet wanlb is not repaired:\n{diff(before, wanlb_table(gw), 'wanted', 'in the kernel')}",
                pytrace=False,
            )
        now = foreign_state(gw)
        assert now == foreign, f"the repair touched foreign objects:\n{diff(foreign, now)}"
        assert lab.traffic(connections=30)["failed"] == 0
    finally:
        gw.stop(cleanup=True)
