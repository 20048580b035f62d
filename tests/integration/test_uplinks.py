"""Real uplinks in the lab: DHCP WANs (dnsmasq in the ISP router, dhcpcd in the gateway), a PPP-like
point-to-point WAN, two identical LTE modems — all ``gateway: auto`` — under real traffic.

What each test shows is an acceptance point of issue 17: balancing with learned gateways (and status
saying where they came from), a lease change (new subnet and router) under traffic, a point-to-point
session deleted and created again, an interface that never appears, two modems with the same gateway,
subnet and address, and bad input on a running daemon.  Durations are printed, not asserted (the
benchmark, bench/failover_bench.py --uplinks, records them).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from wanlb.control import DaemonRefused
from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab, LabError, python_module
from wanlb.lab.topology import LAN_LEAK_COUNTER, SERVER6_ADDRS, isp_for_source

pytestmark = pytest.mark.usefixtures("require_root")

WANLB = [sys.executable, "-m", "wanlb.cli"]


@pytest.fixture
def running(lab_factory: Callable[..., Lab]) -> Iterator[Callable[..., tuple[Lab, LabGateway]]]:
    """``start(uplinks=..., weights=..., edit=...)``: a lab with those uplinks and the daemon on its config
    (changed by ``edit``), every ISP up; stopped and cleaned up at the end."""
    gateways: list[LabGateway] = []

    def start(
        uplinks: tuple[str, ...], edit: Callable[[dict[str, Any]], None] = lambda _: None, wait: bool = True, **kw: Any
    ) -> tuple[Lab, LabGateway]:
        lab = lab_factory(isps=len(uplinks), uplinks=uplinks, **kw)
        gw = LabGateway(lab)
        gw.write(edit)
        gw.start()
        gateways.append(gw)
        if wait:
            gw.wait_for(dict.fromkeys(lab.isps, "up"), timeout=15)
        return lab, gw

    yield start
    for gw in gateways:
        gw.stop(cleanup=True)


def entries(gw: LabGateway) -> list[dict[str, Any]]:
    out = gw.run(*WANLB, "conntrack", "--config", str(gw.config), "list", "-o", "json")
    return [json.loads(line) for line in out.splitlines()]


def start_streams(lab: Lab, n: int) -> list[subprocess.Popen[str]]:
    argv = python_module("wanlb.lab.traffic", "stream", "--stall", "3")
    return [lab.popen("c2", argv, stdout=subprocess.PIPE, text=True) for _ in range(n)]


def stop_streams(streams: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    for proc in streams:
        proc.terminate()
    return [json.loads(proc.communicate(timeout=30)[0]) for proc in streams]


def streams_on(lab: Lab, gw: LabGateway, n: int, isps: set[str]) -> list[subprocess.Popen[str]]:
    """At least one long-lived stream on each of ``isps`` (they are balanced: start more until so)."""
    streams = start_streams(lab, n)
    deadline = time.monotonic() + 10
    while {e["isp"] for e in entries(gw) if e["orig"].get("dport") == 5001} < isps:
        assert time.monotonic() < deadline, "the streams did not reach every ISP"
        streams += start_streams(lab, 3)
        time.sleep(0.3)
    return streams


def leaks(lab: Lab) -> dict[str, int]:
    return {isp: lab.counter(isp, LAN_LEAK_COUNTER) for isp in lab.isps}


def by_isp(gw: LabGateway) -> dict[str, dict[str, Any]]:
    return {i["name"]: i for i in gw.status()["isps"]}


def wait_until(what: str, check: Callable[[], bool], timeout: float = 15.0) -> float:
    """Poll until ``check()``; the wall time it first held."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise LabError(f"{what}: not after {timeout}s")
        time.sleep(0.02)
    return time.time()


def up_again(gw: LabGateway, isp: str, since: float, timeout: float = 15.0) -> dict[str, Any]:
    """Wait for the ISP to be up again after being down since ``since`` (wall time); its up event."""

    def found() -> list[dict[str, Any]]:
        events = [e for e in gw.status()["events"] if e["isp"] == isp and e["time"] >= since]
        downs = [e for e in events if e["event"] == "down"]
        return [e for e in events if e["event"] == "up" and downs and e["time"] >= downs[0]["time"]]

    wait_until(f"{isp} down and up again", lambda: bool(found()), timeout)
    gw.wait_for({isp: "up"}, timeout=timeout)
    return found()[-1]


def untouched(before: list[dict[str, Any]], after: list[dict[str, Any]], isps: set[str]) -> list[dict[str, Any]]:
    """Established connections of ``isps`` before that are gone, or carry another mark, after (closed ones
    may go on their own: a new connection reusing a TIME_WAIT tuple replaces its entry)."""
    now = {e["id"]: e for e in after}
    kept = [e for e in before if e["isp"] in isps and e.get("state") == "ESTABLISHED"]
    assert kept, f"no connection on {isps} to watch"
    return [e for e in kept if e["id"] not in now or now[e["id"]]["mark"] != e["mark"]]


def test_dhcp_and_point_to_point_uplinks_are_balanced_and_status_says_where_each_gateway_came_from(
    running: Callable[..., tuple[Lab, LabGateway]],
) -> None:
    lab, gw = running(("dhcp", "dhcp", "p2p"), weights=(2, 1, 1), ipv6=True)
    counts = lab.traffic(connections=800)
    assert counts["failed"] == counts["other"] == 0, counts
    assert abs(counts["isp1"] / 800 - 0.5) < 0.08 and all(abs(counts[i] / 800 - 0.25) < 0.08 for i in ("isp2", "isp3"))
    isps = by_isp(gw)
    assert (isps["isp1"]["gateway"], isps["isp2"]["gateway"]) == ("100.64.1.1", "100.64.2.1")
    assert isps["isp1"]["gateway_source"].startswith("default via 100.64.1.1 dev wan1 proto dhcp metric ")
    assert isps["isp3"]["gateway"] == "device route"
    assert isps["isp3"]["gateway_source"].startswith("default dev wan3 ")
    assert isps["isp3"]["addresses"] == ["100.64.3.2/32"] and isps["isp1"]["addresses"] == ["100.64.1.2/24"]
    assert all(i["uplink"] is None for i in isps.values())
    # IPv6: the DHCP ISPs' next hops come from router advertisements (link-local), the p2p one is static.
    assert isps["isp1"]["ipv6"]["gateway"].startswith("fe80::")
    assert " proto ra " in isps["isp1"]["ipv6"]["gateway_source"]
    assert isps["isp3"]["ipv6"]["gateway_source"] == "static"
    table = gw.cli("status", "--wide")  # (80 columns on a pipe would wrap the uplink lines)
    assert table.returncode == 0 and "100.64.2.1" in table.stdout and "proto dhcp" in table.stdout, table.stdout
    assert leaks(lab) == dict.fromkeys(lab.isps, 0)


def connect6(lab: Lab, n: int) -> list[str]:
    """The sources the IPv6 server saw for ``n`` connections from c1 (the netmapped client address)."""
    argv = python_module("wanlb.lab.traffic", "http", "--connections", str(n), "--parallel", "8", "--target",
                         f"[{SERVER6_ADDRS[0]}]:80")  # fmt: skip
    out = lab.run("c1", argv, capture_output=True, text=True, check=True).stdout
    return [src for src, count in json.loads(out)["sources"].items() for _ in range(count)]


def test_a_lease_change_under_traffic_moves_only_that_isp(
    running: Callable[..., tuple[Lab, LabGateway]], tmp_path: Path
) -> None:
    """isp2 is renumbered: a new IPv4 subnet and router from its DHCP server, and a new IPv6 prefix from its
    DHCPv6 prefix delegation, which wanlb's netmap follows (prefix_from).  Hooks hear of the new gateway."""
    record = tmp_path / "hooks.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "$WANLB_ISP $WANLB_EVENT $WANLB_FAMILY $WANLB_GATEWAY" >> {record}\n')
    hook.chmod(0o755)
    lab, gw = running(("dhcp", "dhcp", "p2p"), lambda cfg: cfg.update(hooks=[str(hook)]), ipv6=True)
    assert "2001:db8:200::11" in connect6(lab, 30)  # c1's ULA netmapped onto isp2's delegated /64
    streams = streams_on(lab, gw, 9, {"isp1", "isp2", "isp3"})
    assert lab.traffic(connections=300)["failed"] == 0
    before = entries(gw)
    leaked = leaks(lab)

    since = time.time()
    new = lab.lease_change("isp2")  # returns once dhcpcd holds the new lease
    assert new == "100.80.2.2"
    routed = wait_until("the new route in main", lambda: "100.80.2.1" in gw.run("ip", "route", "show", "dev", "wan2"))
    up = up_again(gw, "isp2", since)
    print(f"lease change: isp2 up again {up['time'] - routed:.2f} s after the new route was seen")
    isp2 = by_isp(gw)["isp2"]
    assert (isp2["gateway"], isp2["addresses"]) == ("100.80.2.1", ["100.80.2.2/24"])
    events = [e for e in gw.status()["events"] if e["isp"] == "isp2"]
    assert any(e["event"] == "gateway" and "100.64.2.1 → 100.80.2.1" in e["reason"] for e in events), events
    assert any(e["event"] == "address" and e["reason"] == "100.64.2.2/24 → 100.80.2.2/24" for e in events), events
    wait_until("the hooks", lambda: "isp2 gateway 4 100.80.2.1" in (record.read_text() if record.exists() else ""))

    counts = lab.traffic(connections=300)
    assert counts["failed"] == 0 and counts["isp2"] > 50, counts
    wait_until("isp2's IPv6 back", lambda: by_isp(gw)["isp2"]["ipv6"]["status"] == "up")
    sources6 = connect6(lab, 30)
    assert "2001:db8:280::11" in sources6 and "2001:db8:200::11" not in sources6, sources6  # the new delegation
    after = entries(gw)
    assert untouched(before, after, {"isp1", "isp3"}) == [], "connections of the other ISPs were touched"
    # Only isp2's connections that could no longer work are gone: nothing is left on its old address.
    assert [e for e in after if e["isp"] == "isp2" and e["reply"]["dst"] == "100.64.2.2"] == []
    results = stop_streams(streams)
    others = [r for r in results if isp_for_source(r["src"] or "") in ("isp1", "isp3")]
    assert others and all(r["ok"] for r in others), results
    assert leaks(lab) == leaked, "a LAN source left a WAN"


def test_a_point_to_point_session_recreated_under_its_name_rejoins(
    running: Callable[..., tuple[Lab, LabGateway]],
) -> None:
    lab, gw = running(("dhcp", "dhcp", "p2p"))
    streams = streams_on(lab, gw, 9, {"isp1", "isp2", "isp3"})
    before = entries(gw)
    index = int(gw.run("cat", "/sys/class/net/wan3/ifindex"))

    since = time.time()
    assert lab.reconnect("isp3") == "100.64.3.6"  # deleted, created again with another address
    routed = wait_until("pppd's default route", lambda: "default dev wan3" in gw.run("ip", "route", "show", "default"))
    up = up_again(gw, "isp3", since)
    print(f"p2p reconnect: isp3 up again {up['time'] - routed:.2f} s after its default route was seen")
    assert int(gw.run("cat", "/sys/class/net/wan3/ifindex")) != index
    isp3 = by_isp(gw)["isp3"]
    assert (isp3["gateway"], isp3["addresses"]) == ("device route", ["100.64.3.6/32"])
    events = [e for e in gw.status()["events"] if e["isp"] == "isp3"]
    assert any(e["event"] == "address" and e["reason"] == "100.64.3.2/32 → 100.64.3.6/32" for e in events), events
    report = lab.traffic_report(connections=300)
    assert report.counts["failed"] == 0 and report.counts["isp3"] > 50, report.counts

    assert untouched(before, entries(gw), {"isp1", "isp2"}) == []
    results = stop_streams(streams)
    others = [r for r in results if isp_for_source(r["src"] or "") in ("isp1", "isp2")]
    assert others and all(r["ok"] for r in others), results
    assert leaks(lab) == dict.fromkeys(lab.isps, 0)


def test_an_interface_that_never_appears_stays_down_and_costs_nothing(
    running: Callable[..., tuple[Lab, LabGateway]],
) -> None:
    def ghost(cfg: dict[str, Any]) -> None:
        probe = {"method": "icmp", "targets": ["203.0.113.10", "gateway"], "interval": "200ms"}
        cfg["isps"].append({"name": "lte", "interface": "wwan0", "gateway": "auto", "health": probe})

    lab, gw = running(("dhcp", "static"), edit=ghost, wait=False)
    gw.wait_for({"isp1": "up", "isp2": "up", "lte": "down"})
    lte = by_isp(gw)["lte"]
    assert (lte["status"], lte["uplink"], lte["gateway"], lte["active"]) == ("down", "no interface", "none", False)
    first = gw.status()
    time.sleep(2)
    later = gw.status()
    assert later["nft_applies"] == first["nft_applies"] and later["route_failures"] == []
    assert by_isp(gw)["lte"]["health"]["rounds"] == 0  # no probes through an interface that is not there
    assert "interface wwan0 does not exist now" in gw.log_text()
    assert lab.traffic(connections=100)["failed"] == 0
    check = gw.cli("check")
    assert check.returncode == 0 and "isp lte: interface wwan0 does not exist now" in check.stderr, check

    # The modem is plugged in (an interface of that name, a DHCP lease): it joins.
    gw.run("ip", "link", "set", "wan2", "down")
    gw.run("ip", "link", "set", "wan2", "name", "wwan0")
    gw.write(lambda cfg: (ghost(cfg), cfg["isps"].pop(1)))
    assert gw.reload()["ok"]
    gw.run("ip", "addr", "flush", "dev", "wwan0")
    gw.run("ip", "addr", "add", "100.64.2.2/24", "dev", "wwan0")
    gw.run("ip", "link", "set", "wwan0", "up")
    gw.run("ip", "route", "add", "default", "via", "100.64.2.1", "dev", "wwan0", "metric", "700", "proto", "dhcp")
    gw.wait_for({"lte": "up"}, timeout=15)
    assert by_isp(gw)["lte"]["gateway"] == "100.64.2.1"
    assert lab.traffic(connections=200)["isp2"] > 30  # the servers see wwan0's address: isp2's


def test_two_identical_modems_both_carry_and_fail_apart(running: Callable[..., tuple[Lab, LabGateway]]) -> None:
    lab, gw = running(("modem", "modem"))
    isps = by_isp(gw)
    for name in ("isp1", "isp2"):
        assert (isps[name]["gateway"], isps[name]["addresses"]) == ("192.168.8.1", ["192.168.8.100/24"])
    assert isps["isp1"]["gateway_source"].startswith("default via 192.168.8.1 dev wan1 proto dhcp metric ")
    assert isps["isp2"]["gateway_source"].startswith("default via 192.168.8.1 dev wan2 proto dhcp metric ")
    # The gateway's own traffic to the modems' shared address (their web UIs): the main table's first
    # connected route, unless the socket is bound to the other modem's interface (docs/configuration.md).
    assert " dev wan1 " in gw.run("ip", "route", "get", "192.168.8.1")
    assert " dev wan2 " in gw.run("ip", "route", "get", "192.168.8.1", "oif", "wan2")
    counts = lab.traffic(connections=400)
    assert counts["failed"] == 0 and 120 < counts["isp1"] < 280, counts  # the servers see each modem's address
    streams = streams_on(lab, gw, 6, {"isp1", "isp2"})
    before = entries(gw)

    lab.fail("isp1", "blackhole")
    gw.wait_event("isp1", "down", timeout=5)
    after = entries(gw)
    assert [e for e in after if e["isp"] == "isp1"] == []
    assert untouched(before, after, {"isp2"}) == []
    counts = lab.traffic(connections=100)
    assert counts["failed"] == 0 and counts["isp2"] == 100, counts
    results = stop_streams(streams)
    on2 = [r for r in results if isp_for_source(r["src"] or "") == "isp2"]
    assert on2 and all(r["ok"] for r in on2), results
    assert leaks(lab) == dict.fromkeys(lab.isps, 0)


def test_bad_uplink_input_is_a_clear_warning_or_error_and_the_running_isps_are_untouched(
    running: Callable[..., tuple[Lab, LabGateway]],
) -> None:
    lab, gw = running(("static", "static", "static"))
    streams = streams_on(lab, gw, 6, {"isp1", "isp3"})
    before = entries(gw)

    def edit(change: Callable[[dict[str, Any]], None]) -> subprocess.CompletedProcess[str]:
        gw.write(change)
        return gw.cli("check")

    # gateway: auto with no default route through wan2 (the main table's goes through wan1)
    check = edit(lambda cfg: cfg["isps"][1].update(gateway="auto"))
    assert check.returncode == 0 and "Traceback" not in check.stderr
    wait = "isp isp2: wan2: waiting for gateway: no default route through wan2 in table main (it has one through wan1)"
    assert wait in check.stderr, check
    assert gw.reload()["ok"]
    gw.wait_for({"isp2": "down"})
    assert by_isp(gw)["isp2"]["uplink"] == "waiting for gateway"
    # a static gateway on the LAN's subnet, not the WAN's
    check = edit(lambda cfg: cfg["isps"][1].update(gateway="192.168.77.254"))
    assert "isp isp2: wan2: gateway 192.168.77.254 is not on wan2's networks (100.64.2.0/24)" in check.stderr, check
    assert gw.reload()["ok"] and by_isp(gw)["isp2"]["uplink"].startswith("gateway 192.168.77.254 is not on")
    # an interface that does not exist: a warning that names the close one
    check = edit(lambda cfg: cfg["isps"][1].update(interface="wan22", gateway="auto"))
    assert check.returncode == 0 and "interface wan22 does not exist now (did you mean wan2?" in check.stderr, check
    assert gw.reload()["ok"]
    gw.wait_for({"isp2": "down"})
    # not a config at all: refused, nothing changes
    check = edit(lambda cfg: cfg["isps"][1].update(gateway="dhcp"))
    assert check.returncode == 2 and "is not an IPv4 address or auto: write auto" in check.stderr, check
    with pytest.raises(DaemonRefused, match="is not an IPv4 address or auto"):
        gw.reload()
    assert by_isp(gw)["isp2"]["interface"] == "wan22"

    assert untouched(before, entries(gw), {"isp1", "isp3"}) == []
    results = stop_streams(streams)
    kept = [r for r in results if isp_for_source(r["src"] or "") in ("isp1", "isp3")]
    assert kept and all(r["ok"] for r in kept), results
    assert leaks(lab) == dict.fromkeys(lab.isps, 0)


def test_the_kernel_deletes_connections_masqueraded_to_an_address_that_went_away(
    running: Callable[..., tuple[Lab, LabGateway]],
) -> None:
    """With on_down: keep wanlb flushes nothing, and still no connection is left on isp2's old address after a
    lease change: nf_nat_masquerade deletes exactly those entries when the address goes (docs/configuration.md
    relies on it); isp1's stay."""
    lab, gw = running(("dhcp", "dhcp"), lambda cfg: cfg.update(failover={"on_down": "keep"}))
    streams = streams_on(lab, gw, 6, {"isp1", "isp2"})
    before = entries(gw)
    old = [e for e in before if e["isp"] == "isp2" and e.get("state") == "ESTABLISHED"]
    assert {e["reply"]["dst"] for e in old} == {"100.64.2.2"}
    lab.lease_change("isp2")
    wait_until("the old address's entries gone", lambda: not [
        e for e in entries(gw) if e["reply"]["dst"] == "100.64.2.2"
    ])  # fmt: skip
    assert all(e["flushed"] is None for e in gw.status()["events"])  # wanlb flushed nothing
    assert untouched(before, entries(gw), {"isp1"}) == []
    stop_streams(streams)
