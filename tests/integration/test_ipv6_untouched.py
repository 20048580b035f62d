"""wanlb does not handle IPv6 yet, so it must leave IPv6 alone: no mark, no NAT, no routing of its own.

The lab turns IPv6 off everywhere; this test turns it on in its own lab for gw, c1, isp1 and inet only, and
routes a ULA LAN prefix straight through isp1 (as a provider routing a customer's prefix would):

    c1 fd00:77::11 ── gw lan0 fd00:77::1 / wan1 2001:db8:1::2 ── isp1 2001:db8:1::1 / 2001:db8:ff:1::1
                                                                 ── inet 2001:db8:ff:1::2, lo 2001:db8:f::10

inet also routes the gw-isp1 link back through isp1, so a connection that the gateway wrongly NATs to its
WAN address still completes and the server reports that address, rather than timing out.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest
from harness import module_lab

from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab, python_module
from wanlb.lab.topology import ISP_CUSTOMER_IF, ISP_UPLINK_IF, LAN_IF

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

ALL_UP = {"isp1": "up", "isp2": "up", "isp3": "up"}
CLIENT6 = "fd00:77::11"
SERVER6 = "2001:db8:f::10"
HTTP6_PORT = 8080
CONNECTIONS = 20

# node -> (sysctls, `ip -6 addr add` arguments, `ip -6 route add` arguments)
IPV6: dict[str, tuple[list[str], list[str], list[str]]] = {
    "c1": ([], [f"{CLIENT6}/64 dev eth0"], ["default via fd00:77::1 dev eth0"]),
    "gw": (
        ["net.ipv6.conf.all.forwarding=1"],
        [f"fd00:77::1/64 dev {LAN_IF}", "2001:db8:1::2/64 dev wan1"],
        ["default via 2001:db8:1::1 dev wan1"],
    ),
    "isp1": (
        ["net.ipv6.conf.all.forwarding=1"],
        [f"2001:db8:1::1/64 dev {ISP_CUSTOMER_IF}", f"2001:db8:ff:1::1/64 dev {ISP_UPLINK_IF}"],
        ["fd00:77::/64 via 2001:db8:1::2", "default via 2001:db8:ff:1::2"],
    ),
    "inet": (
        [],
        ["2001:db8:ff:1::2/64 dev isp1", f"{SERVER6}/128 dev lo"],
        ["fd00:77::/64 via 2001:db8:ff:1::1", "2001:db8:1::/64 via 2001:db8:ff:1::1"],
    ),
}


def enable_ipv6(lab: Lab) -> None:
    """IPv6 on for the four nodes (all their interfaces), with addresses (no DAD wait) and routes."""
    for node, (sysctls, addrs, routes) in IPV6.items():
        on = ["net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0", *sysctls]
        lab.run(node, ["sysctl", "-q", "-w", *on], check=True)
        batch = [f"addr add {a} nodad" for a in addrs] + [f"route add {r}" for r in routes]
        lab.run(node, ["ip", "-6", "-batch", "-"], input="\n".join(batch) + "\n", text=True, check=True)
    # The link-local addresses IPv6 just gave every interface are tentative until duplicate detection ends
    # (about 2 s); until then neighbour discovery can stall the first connections.
    deadline = time.monotonic() + 15
    for node in IPV6:
        while lab.run(node, ["ip", "-6", "addr", "show", "tentative"], capture_output=True, text=True).stdout:
            assert time.monotonic() < deadline, f"{node} still has tentative IPv6 addresses"
            time.sleep(0.1)


def start_http6(lab: Lab) -> None:
    ready = lab.dir / "http6.ready"
    argv = python_module(
        "wanlb.lab.servers", "http", "--listen", f"[{SERVER6}]:{HTTP6_PORT}", "--ready-file", str(ready)
    )
    proc = lab.popen("inet", argv, label="http6", stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not ready.exists():
        assert proc.poll() is None, f"the IPv6 HTTP server exited: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, "the IPv6 HTTP server did not start"
        time.sleep(0.02)


def gw_ipv6(lab: Lab, *args: str) -> str:
    return lab.run("gw", ["ip", "-6", *args], capture_output=True, text=True, check=True).stdout


lab = module_lab(lambda built: (enable_ipv6(built), start_http6(built)), isps=3, clients=2)


def test_ipv6_is_forwarded_untouched_while_the_daemon_runs(lab: Lab, gw: LabGateway) -> None:
    rules_before = gw_ipv6(lab, "rule", "show")
    gw.start()
    gw.wait_for(ALL_UP)
    ipv4 = lab.traffic(connections=30)
    assert ipv4["failed"] == 0 and ipv4["isp1"] == ipv4["isp2"] == ipv4["isp3"] == 10, ipv4  # the daemon works

    target = ["--target", f"[{SERVER6}]:{HTTP6_PORT}"]
    out = lab.run(
        "c1",
        python_module("wanlb.lab.traffic", "http", *target, "--connections", str(CONNECTIONS), "--parallel", "4"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out)
    assert result["failed"] == 0, result
    assert result["sources"] == {CLIENT6: CONNECTIONS}, f"the server saw {result['sources']}, not the client itself"

    listing = lab.run("gw", ["conntrack", "-L", "-f", "ipv6"], capture_output=True, text=True, check=True).stdout
    entries = [line for line in listing.splitlines() if f"dst={SERVER6}" in line and f"dport={HTTP6_PORT}" in line]
    assert len(entries) >= CONNECTIONS, listing
    for line in entries:
        (orig_src, orig_dst), (reply_src, reply_dst) = re.findall(r"src=(\S+) dst=(\S+)", line)[:2]
        assert (orig_src, orig_dst) == (CLIENT6, SERVER6), line
        assert (reply_src, reply_dst) == (SERVER6, CLIENT6), f"NATed: {line}"
        assert re.search(r"\bmark=0\b", line), line

    assert gw_ipv6(lab, "rule", "show") == rules_before  # no IPv6 policy routing of its own
