"""The HA pair lab (`Lab.up(ha=True)`, issue 20) against the real kernel: two gateways on shared segments, their
VIPs moved from a killed gateway to its peer, by hand and by a real keepalived. No wanlb daemon runs here: the
lab's `plain_nat` (SNAT of LAN sources to each WAN's VIP, in both gateways) stands in for its SNAT."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from wanlb.config import parse_config
from wanlb.lab.cli import lab as lab_cli
from wanlb.lab.lab import Lab, LabError, lab_namespaces, python_module
from wanlb.lab.topology import (
    HA_GATEWAYS,
    LAN_LEAK_COUNTER,
    LAN_PREFIX_LEN,
    SPOOF_COUNTER,
    WAN_PREFIX_LEN,
    HaNode,
    Topology,
)

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("require_root")]

Factory = Callable[..., Lab]


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll for an effect that follows asynchronously (a generous bound, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def sh(lab: Lab, node: str, *argv: str) -> str:
    return lab.run(node, list(argv), capture_output=True, text=True, check=True).stdout


def ipv4(lab: Lab, node: str) -> dict[str, list[str]]:
    """A node's IPv4 addresses per interface (no lo), as `addresses()` gives them."""
    found = {i["ifname"]: [f"{a['local']}/{a['prefixlen']}" for a in i["addr_info"]]
             for i in json.loads(sh(lab, node, "ip", "-j", "-4", "addr", "show"))}  # fmt: skip
    return {ifname: addrs for ifname, addrs in found.items() if addrs and ifname != "lo"}


def vips(facts: HaNode) -> dict[str, str]:
    """interface -> the VIP on it, in `ip addr` form."""
    return {facts.lan_interface: f"{facts.lan_vip}/{LAN_PREFIX_LEN}"} | {
        w.interface: f"{w.vip}/{WAN_PREFIX_LEN}" for w in facts.wans
    }


def holds_vips(lab: Lab, node: str) -> bool:
    held = ipv4(lab, node)
    return all(vip in held.get(ifname, []) for ifname, vip in vips(lab.topology.ha_node(node)).items())


def take_vips_by_hand(lab: Lab, node: str) -> None:
    """What a VRRP master does, by hand: the VIPs on the node, then the neighbours told. A master announces them
    with gratuitous ARP; iputils' arping -U would do that here, but it is not among the lab's dependencies, so
    the neighbours (clients, ISP routers) forget their cached MAC for every address instead and ask again —
    the result a gratuitous ARP has, without one (the keepalived test below shows the real thing)."""
    for ifname, vip in vips(lab.topology.ha_node(node)).items():
        sh(lab, node, "ip", "addr", "add", vip, "dev", ifname)
    for neighbour in (*lab.clients, *lab.isps):
        sh(lab, neighbour, "ip", "neigh", "flush", "all")


def source_seen_by_server(lab: Lab, client: str = "c1") -> str:
    out = lab.run(client, python_module("wanlb.lab.traffic", "stream", "--duration", "0.3"), capture_output=True)
    result = json.loads(out.stdout)
    assert result["ok"], result
    return str(result["src"])


def mac(lab: Lab, node: str, ifname: str) -> str:
    return str(json.loads(sh(lab, node, "ip", "-j", "link", "show", "dev", ifname))[0]["address"])


def gateway_mac_of(lab: Lab, client: str) -> str | None:
    """The MAC the client sends to for its default gateway (the LAN VIP) now."""
    entries = json.loads(sh(lab, client, "ip", "-j", "-4", "neigh", "show", "192.168.77.1"))
    return next((e["lladdr"] for e in entries if "lladdr" in e), None)


def link_states(lab: Lab) -> dict[str, tuple[str, str]]:
    return {f"{ln['a']}-{ln['b']}": (ln["a_state"], ln["b_state"]) for ln in lab.status()["links"]}


def no_drops(lab: Lab) -> bool:
    return all(lab.counter(isp, c) == 0 for isp in lab.isps for c in (SPOOF_COUNTER, LAN_LEAK_COUNTER))


def test_ha_lab_shape(lab_factory: Factory) -> None:
    """Two gateways with their own addresses on one LAN and on each WAN, a sync link, nothing holding a VIP;
    each gateway's own traffic leaves with its own address, and `fail --mode link` cuts both gateways."""
    lab = lab_factory(isps=2, clients=2, ha=True, plain_nat=True)
    topo = lab.topology
    assert topo.nodes == ["gw1", "gw2", "sw", "isp1", "isp2", "inet", "c1", "c2"]
    assert set(lab_namespaces(topo.prefix)) == {lab.ns(n) for n in topo.nodes}
    assert Lab.load(lab.name).topology == topo and topo.ha
    for gw in HA_GATEWAYS:
        assert ipv4(lab, gw) == topo.addresses(gw)  # its own addresses only: no VIP until keepalived (or a test)
    assert ipv4(lab, "sw") == {}
    assert all(a == b == "UP" for a, b in link_states(lab).values())
    assert lab.ping("gw1", "10.255.0.2") and lab.ping("gw2", "10.255.0.1")  # the sync link
    for gw in HA_GATEWAYS:
        assert lab.ping(gw, "203.0.113.10")  # un-NATed: inet routes the whole 100.64.1.0/24 back
        assert lab.ping(gw, "192.168.77.11")
    assert not lab.ping("c1", "192.168.77.1", timeout=0.3)  # the clients' gateway is a VIP nobody holds yet
    assert lab.traffic(10, timeout=0.5)["failed"] == 10
    configs = {gw: parse_config(lab.gateway_config(gw).read_text()) for gw in HA_GATEWAYS}
    assert [(i.mark, i.table) for i in configs["gw1"].isps] == [(i.mark, i.table) for i in configs["gw2"].isps]
    assert {cfg.control.socket for cfg in configs.values()} == {str(lab.gateway_socket(gw)) for gw in HA_GATEWAYS}
    assert lab.config_path == lab.gateway_config("gw1")

    lab.fail("isp1", "link")  # the ISP's bridge and both its ports: each gateway sees its WAN lose carrier
    wans = [f"{gw}:wan1-isp1:{gw}" for gw in HA_GATEWAYS]
    wait_until(lambda: {link_states(lab)[wan][0] for wan in wans} == {"NO-CARRIER"}, "both gateways' wan1 cut")
    lab.heal("isp1")
    wait_until(lambda: all(a == b == "UP" for a, b in link_states(lab).values()), "every link up again")
    assert no_drops(lab)
    with pytest.raises(LabError, match="one gateway"):
        lab.unplug("isp1")


def test_clients_follow_the_vips_from_a_killed_gateway_to_its_peer(lab_factory: Factory) -> None:
    lab = lab_factory(isps=2, clients=2, ha=True, plain_nat=True)
    take_vips_by_hand(lab, "gw1")
    assert lab.traffic(200) == {"isp1": 200, "isp2": 0, "other": 0, "failed": 0}
    assert source_seen_by_server(lab) == "100.64.1.10"  # the WAN VIP, not gw1's own 100.64.1.2
    assert gateway_mac_of(lab, "c1") == mac(lab, "gw1", "lan0")

    bystander = lab.popen("gw1", ["sleep", "600"], label="bystander")
    lab.kill("gw1")
    assert bystander.wait(timeout=10) == -signal.SIGKILL
    assert subprocess.run(["ip", "netns", "pids", lab.ns("gw1")], capture_output=True, text=True).stdout == ""
    states = link_states(lab)
    for link in ("gw1:wan1-isp1:gw1", "gw1:wan2-isp2:gw1", "gw1:sync0-gw2:sync0", "gw1:lan0-sw:gw1"):
        assert states[link] == ("DOWN", "NO-CARRIER"), link
    assert lab.killed() == ["gw1"]
    assert [n["killed"] for n in lab.status()["nodes"]] == [n == "gw1" for n in lab.nodes]
    assert lab.traffic(20, timeout=0.5)["failed"] == 20  # the VIPs died with it

    take_vips_by_hand(lab, "gw2")
    assert lab.traffic(200) == {"isp1": 200, "isp2": 0, "other": 0, "failed": 0}
    assert source_seen_by_server(lab) == "100.64.1.10"  # the same customer address as before the takeover
    assert gateway_mac_of(lab, "c1") == mac(lab, "gw2", "lan0")
    assert no_drops(lab)

    lab.revive("gw1")  # back as built: its own addresses, no VIP, its default route; no process
    assert ipv4(lab, "gw1") == lab.topology.addresses("gw1")
    assert "default via 100.64.1.1 dev wan1" in sh(lab, "gw1", "ip", "route")
    assert all(a == b == "UP" for a, b in link_states(lab).values())
    assert lab.killed() == [] and lab.ping("gw1", "10.255.0.2") and lab.ping("gw1", "203.0.113.10")
    assert lab.traffic(100)["isp1"] == 100  # still through gw2: one VIP holder
    with pytest.raises(LabError, match="alive"):
        lab.revive("gw2")


def test_kill_and_revive_on_the_command_line(lab_factory: Factory) -> None:
    lab = lab_factory(isps=1, clients=1, ha=True)
    runner = CliRunner()
    killed = runner.invoke(lab_cli, ["kill", "--name", lab.name, "gw2"])
    assert killed.exit_code == 0 and "gw2: killed" in killed.output
    assert "(KILLED)" in runner.invoke(lab_cli, ["status", "--name", lab.name]).output
    revived = runner.invoke(lab_cli, ["revive", "--name", lab.name, "gw2"])
    assert revived.exit_code == 0 and "gw2: revived" in revived.output
    assert "(KILLED)" not in runner.invoke(lab_cli, ["status", "--name", lab.name]).output
    for node in ("isp1", "gw", "c1"):
        refused = runner.invoke(lab_cli, ["kill", "--name", lab.name, node])
        assert refused.exit_code == 1 and "not a gateway of an HA pair" in refused.output
    with pytest.raises(LabError, match="no HA pair"):  # refused before anything is touched
        Lab(Topology("nohere"), {}).kill("gw")
    lab.down()
    assert lab_namespaces(lab.topology.prefix) == [] and not lab.dir.exists()


# --- the stretch: a real keepalived moves the VIPs ------------------------------------------------------


def keepalived_conf(facts: HaNode) -> str:
    """A minimal hand-written VRRPv3 instance over the sync link (unicast: no multicast on the segments), 100 ms
    adverts, gw1 preferred. ``dont_track_primary``: a peer's death takes the sync link's carrier with it (a
    direct link), and a tracked sync0 would put the survivor in FAULT just when it should become master."""
    addresses = "\n".join(f"        {vip} dev {ifname}" for ifname, vip in vips(facts).items())
    return (
        f"global_defs {{\n    router_id {facts.node}\n    vrrp_version 3\n}}\n"
        "vrrp_instance wanlb {\n"
        "    state BACKUP\n"
        f"    interface {facts.sync_interface}\n"
        "    dont_track_primary\n"
        "    virtual_router_id 77\n"
        f"    priority {150 if facts.primary else 100}\n"
        "    advert_int 0.1\n"
        f"    unicast_src_ip {facts.sync_address}\n"
        f"    unicast_peer {{\n        {facts.peer_sync_address}\n    }}\n"
        f"    virtual_ipaddress {{\n{addresses}\n    }}\n"
        "}\n"
    )


def start_keepalived(lab: Lab, node: str, tmp: Path) -> None:
    """keepalived's VRRP half in the node's namespace, in the foreground, its pid files under tmp (never the
    host's /run/keepalived.pid). A killed one leaves its pid files behind, naming a process that may not be
    reaped yet ("daemon is already running"): they go first, as a reboot's empty /run would have them."""
    conf, pids = tmp / f"{node}.conf", (tmp / f"{node}.pid", tmp / f"{node}-vrrp.pid")
    conf.write_text(keepalived_conf(lab.topology.ha_node(node)))
    for pid in pids:
        pid.unlink(missing_ok=True)
    argv = ["keepalived", "-n", "-l", "-D", "-P", "-f", str(conf), "-p", str(pids[0]), "-r", str(pids[1])]
    with open(tmp / f"{node}.log", "ab") as log:
        lab.popen(node, argv, label=f"keepalived-{node}", stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.skipif(shutil.which("keepalived") is None, reason="needs keepalived")
def test_keepalived_moves_the_vips_when_the_master_dies(
    lab_factory: Factory, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """No hand moves and no neighbour flushes: keepalived's gratuitous ARPs redirect the clients and the ISP
    router. How long the takeover took is recorded (record_property, and printed), never asserted."""
    lab = lab_factory(isps=2, clients=1, ha=True, plain_nat=True)
    for node in HA_GATEWAYS:
        start_keepalived(lab, node, tmp_path)
    own = lab.topology.addresses("gw2")
    wait_until(lambda: holds_vips(lab, "gw1") and ipv4(lab, "gw2") == own, "gw1 master, gw2 backup without VIPs")
    assert lab.traffic(100)["isp1"] == 100 and source_seen_by_server(lab) == "100.64.1.10"

    pace = lab.popen("c1", python_module("wanlb.lab.traffic", "pace", "--every", "0.02", "--timeout", "1"),
                     label="pace", stdout=subprocess.PIPE, text=True)  # fmt: skip
    killed_at = time.time()
    lab.kill("gw1")
    wait_until(lambda: holds_vips(lab, "gw2"), "gw2 to take the VIPs over")
    vips_moved = time.time() - killed_at
    wait_until(lambda: lab.traffic(1, timeout=0.5)["isp1"] == 1, "a connection through gw2")
    pace.send_signal(signal.SIGTERM)
    connections = json.loads(pace.communicate(timeout=10)[0])["connections"]
    assert source_seen_by_server(lab) == "100.64.1.10"
    assert gateway_mac_of(lab, "c1") == mac(lab, "gw2", "lan0")  # learnt from the gratuitous ARP
    assert no_drops(lab)

    first_ok = next(start + seconds for start, seconds, _ in connections if start >= killed_at and seconds is not None)
    failed = sum(seconds is None for start, seconds, _ in connections if start + 1.0 > killed_at)  # (--timeout 1)
    record_property("keepalived_vips_moved_s", round(vips_moved, 3))
    record_property("keepalived_first_connection_after_kill_s", round(first_ok - killed_at, 3))
    record_property("keepalived_failed_connections_every_20ms", failed)
    print(
        f"keepalived takeover: VIPs seen on gw2 by {vips_moved:.3f} s after the kill, a first new connection "
        f"through it done {first_ok - killed_at:.3f} s after it; {failed} of the 20 ms-paced connections failed"
    )

    lab.revive("gw1")  # and back: the primary preempts once its keepalived runs again
    start_keepalived(lab, "gw1", tmp_path)
    wait_until(lambda: holds_vips(lab, "gw1") and not holds_vips(lab, "gw2"), "gw1 to take the VIPs back")
    wait_until(lambda: lab.traffic(1, timeout=0.5)["isp1"] == 1, "a connection through gw1 again")
    assert gateway_mac_of(lab, "c1") == mac(lab, "gw1", "lan0")
