"""An HA pair in the lab (`lab up --ha`), with the real keepalived and conntrackd that wanlb renders and runs:
the primary dies (every process killed, every link down) and the established connections continue on the
backup, each on the ISP it started on, with the source address the server saw; new connections are balanced
by the backup.  Without the non-SYN guard the same takeover resets connections (the test can fail)."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import module_lab

from wanlb import ha
from wanlb.config import load_config
from wanlb.lab.gateway import WANLB, LabGateway
from wanlb.lab.lab import Lab
from wanlb.lab.pair import (
    entries,
    failback,
    peer,
    role,
    start_pair,
    stop_pair,
    stop_streams,
    streams_by_isp,
    synced,
    takeover,
    vips_isp,
    wait_until,
)
from wanlb.lab.topology import wan_vip

pytestmark = pytest.mark.skipif(
    not (shutil.which("keepalived") and shutil.which("conntrackd")), reason="needs keepalived and conntrackd"
)

lab = module_lab(ha=True, isps=2)


@pytest.fixture
def pair(lab: Lab) -> Iterator[tuple[LabGateway, LabGateway]]:
    """Both daemons running, gw1 master and gw2 backup; afterwards both stopped (cleanup) and gw1 revived."""
    gws = (LabGateway(lab, "gw1"), LabGateway(lab, "gw2"))
    try:
        start_pair(gws)
        yield gws
    finally:
        stop_pair(lab, gws)


def test_killing_the_primary_keeps_every_connection_on_its_isp(lab: Lab, pair: tuple[LabGateway, LabGateway]) -> None:
    gw1, gw2 = pair
    seen = takeover(lab, gw1, gw2)
    results = seen["results"]
    gaps = sorted(r["max_gap"] for r in results)
    print(
        f"\ntakeover {seen['takeover']:.3f} s after the kill; {len(results)} streams, largest gap per stream "
        f"{gaps[-1]:.3f} s (median {gaps[len(gaps) // 2]:.3f} s); guard dropped {seen['guard_drops']} packets"
    )
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]]  # no reset, no stall, no loss
    # Each stream kept its ISP (the synced ct mark) and its source address as the server saw it (the WAN VIP).
    assert {port: seen["after"].get(port) for port in seen["isp_of"]} == seen["isp_of"]
    vips = {wan_vip(1): "isp1", wan_vip(2): "isp2"}
    assert {vips.get(r["src"].rsplit(":", 1)[0]) for r in results} == {"isp1", "isp2"}, results
    # New connections after the takeover: balanced by the backup's weights (1:1), none failed.
    assert seen["new"]["failed"] == 0 and seen["new"]["isp1"] == seen["new"]["isp2"] == 20, seen["new"]
    assert gw2.status()["ha"]["last_commit"] == "ok"
    # TCP window tracking needs no liberal mode: the committed entries take their windows from the next packets,
    # and not one packet of the streams from the LAN was dropped as invalid on gw2.
    assert gw2.run("sysctl", "-n", "net.netfilter.nf_conntrack_tcp_be_liberal").strip() == "0"
    assert gw2.nft_counter("invalid_dropped")["packets"] == 0
    # The UDP flow too: it kept answering, on its ISP, seen by the DNS server as that ISP's WAN VIP.
    udp = seen["udp"]
    print(f"UDP flow: {udp['answered']} of {udp['sent']} queries answered, largest gap {udp['max_gap']:.3f} s")
    assert udp["ok"], udp
    assert seen["udp_before"] is not None and seen["udp_after"] == seen["udp_before"], seen
    assert seen["udp_after"]["seen_as"] == {"isp1": wan_vip(1), "isp2": wan_vip(2)}[seen["udp_after"]["isp"]]


@pytest.mark.parametrize(
    ("guard", "freeze"), [(True, False), (True, True), (False, True)],
    ids=["with the guard", "with the guard, a slow daemon", "without the guard, a slow daemon"],
)  # fmt: skip
def test_failback_after_the_primary_returns(
    lab: Lab, pair: tuple[LabGateway, LabGateway], guard: bool, freeze: bool
) -> None:
    """The returning gw1 syncs, then takes the VIPs back under full traffic. With the non-SYN guard every stream
    survives on its ISP, however slow its daemon is to have conntrackd commit; without it (ha.takeover_guard
    false) the packets that reach gw1 before the commit become NEW connections on a random ISP and their
    streams are reset: the guard is what makes the moment safe (and this test can fail)."""
    gw1, gw2 = pair
    takeover(lab, gw1, gw2)
    seen = failback(lab, gw1, gw2, guard, freeze)
    results = seen["results"]
    broken = [r for r in results if not r["ok"]]
    gaps = sorted(r["max_gap"] for r in results)
    print(
        f"\nfailback {'with' if guard else 'without'} the guard: {len(broken)} of {len(results)} streams broke; "
        f"largest gap {gaps[-1]:.3f} s; guard dropped {seen['guard_drops']}"
    )
    if guard:
        assert broken == [] and {p: seen["after"].get(p) for p in seen["isp_of"]} == seen["isp_of"], results
    else:
        assert broken, "no stream broke without the guard: the test cannot tell the guard's effect"


def test_an_isp_failing_on_the_primary_is_flushed_on_both_nodes(lab: Lab, pair: tuple[LabGateway, LabGateway]) -> None:
    """A WAN failure while the pair is healthy: the primary fails over as a single gateway does and flushes the
    dead ISP's connections; the deletions reach the backup through conntrackd, so a later takeover would not
    revive them. The backup, seeing the same ISP down on its own probes, flushes nothing itself."""
    gw1, gw2 = pair
    streams, isp_of = streams_by_isp(lab, gw1)
    wait_until("the backup has every stream", lambda: synced(gw2, set(isp_of)), timeout=10)
    dead = {port for port, isp in isp_of.items() if isp == "isp1"}
    lab.fail("isp1", "blackhole")
    try:
        down = gw1.wait_event("isp1", "down", timeout=10)
        wait_until("the dead ISP's streams gone from both nodes", lambda: not dead & set(
            {e["orig"]["sport"] for e in entries(gw1)}) and not any(synced(gw2, {port}) for port in dead))  # fmt: skip
        gone = time.time() - down["time"]
        print(f"\nisp1 down on gw1; its {len(dead)} streams gone from both nodes {gone:.3f} s after the decision")
        assert down["flushed"] and down["flushed"] >= len(dead), down
        assert synced(gw2, set(isp_of) - dead)  # the other ISP's streams are still there
        backup_down = gw2.wait_event("isp1", "down", timeout=10)
        assert backup_down["flushed"] is None, backup_down  # a backup flushes nothing
    finally:
        lab.heal("isp1")
        results = stop_streams(streams)
    alive = [r for r in results if vips_isp(r) == "isp2"]
    assert alive and all(r["ok"] for r in alive), results


def test_after_a_takeover_an_isp_down_on_the_backups_own_probes_gets_nothing(
    lab: Lab, pair: tuple[LabGateway, LabGateway]
) -> None:
    """gw2 keeps its own view of each ISP: with its probes through isp1 failing (only gw2's: a table of this
    test's own drops them in gw2) isp1 is down there while up on gw1; after gw1 dies, gw2 balances every new
    connection to isp2."""
    gw1, gw2 = pair
    gw2.run("nft", "-f", "-", stdin='table inet probes_lost { chain out { type filter hook output priority 0; '
            'oifname "wan1" meta l4proto icmp drop; }; }')  # fmt: skip
    try:
        gw2.wait_for({"isp1": "down", "isp2": "up"}, timeout=10)
        assert gw1.isp_status() == {"isp1": "up", "isp2": "up"}
        assert gw2.wait_event("isp1", "down")["flushed"] is None  # a backup flushes nothing
        lab.kill("gw1")
        wait_until("gw2 master", lambda: role(gw2) == "master", timeout=10)
        new = lab.traffic(connections=40, timeout=2.0)
        assert new["failed"] == 0 and new["isp2"] == 40 and new["isp1"] == 0, new
    finally:
        gw2.run("nft", "delete", "table", "inet", "probes_lost")


def test_the_sync_link_down_is_shown_on_both_nodes_and_flushes_nothing(
    lab: Lab, pair: tuple[LabGateway, LabGateway]
) -> None:
    gw1, gw2 = pair
    streams, isp_of = streams_by_isp(lab, gw1)
    gw2.run("ip", "link", "set", "sync0", "down")
    try:
        wait_until("both say the sync link is not up", lambda: {gw1.status()["ha"]["sync_link"],
                   gw2.status()["ha"]["sync_link"]} <= {"down", "lowerlayerdown"})  # fmt: skip
        wait_until("both say the peer is lost", lambda: peer(gw1)["state"] == peer(gw2)["state"] == "lost")
        assert (role(gw1), role(gw2)) == ("master", "backup")  # VRRP goes over the LAN: no split brain
        time.sleep(1.0)
        assert {e["orig"]["sport"] for e in entries(gw1)} >= set(isp_of)  # nothing was flushed
        assert "peer gw2 lost (last said backup)" in gw1.run(*WANLB, "status", "--wide", "--socket", str(gw1.socket))
    finally:
        gw2.run("ip", "link", "set", "sync0", "up")
        results = stop_streams(streams)
    assert all(r["ok"] for r in results), results
    wait_until("each hears the other again", lambda: peer(gw1)["state"] == peer(gw2)["state"] == "up")
    assert gw1.wait_event("", "peer", timeout=5)["status"] == "up"


def test_a_split_brain_is_seen_and_shown_on_both_nodes(lab: Lab, pair: tuple[LabGateway, LabGateway]) -> None:
    """gw1's adverts no longer reach gw2 (a table of this test's own drops VRRP in gw2, as a LAN fault between
    them would): gw2 becomes master too.  Both daemons, hearing each other over the sync link, say split brain
    (status, an event, /metrics-backing field); when the adverts flow again gw2 yields and both say it ended."""
    gw1, gw2 = pair
    assert peer(gw1)["state"] == peer(gw2)["state"] == "up" and not peer(gw1)["split_brain"]
    assert (peer(gw1)["node"], peer(gw1)["role"], peer(gw2)["role"]) == ("gw2", "backup", "master")
    gw2.run("nft", "-f", "-", stdin="table inet vrrp_lost { chain in { type filter hook input priority -300; "
            "ip protocol vrrp drop; }; }")  # fmt: skip
    try:
        wait_until("gw2 master too", lambda: role(gw2) == "master", timeout=10)
        wait_until("both say split brain", lambda: peer(gw1)["split_brain"] and peer(gw2)["split_brain"], timeout=5)
        for gw in pair:
            event = gw.wait_event("", "split-brain", timeout=5)
            assert event["status"] == "started" and "is master too" in event["reason"], event
        text = gw1.run(*WANLB, "status", "--wide", "--socket", str(gw1.socket))
        assert "SPLIT BRAIN: gw1 and gw2 are both master" in text, text
    finally:
        gw2.run("nft", "delete", "table", "inet", "vrrp_lost")
    wait_until("gw2 yields", lambda: role(gw2) == "backup", timeout=10)
    wait_until("both say it ended", lambda: not peer(gw1)["split_brain"] and not peer(gw2)["split_brain"], timeout=5)
    assert role(gw1) == "master"


def test_two_nodes_whose_marks_differ_say_so_and_check_peer_refuses_them(lab: Lab) -> None:
    """gw2's file gives isp2 another mark: a connection synced from gw1 would leave gw2 by the wrong ISP after a
    takeover.  `wanlb check --peer` refuses the two files; started anyway, both daemons show the difference
    (status, an event) and neither changes anything for it."""
    gws = gw1, gw2 = LabGateway(lab, "gw1"), LabGateway(lab, "gw2")
    check = [*WANLB, "check", "-c", str(gw1.config), "--peer", str(gw2.config)]
    try:
        for gw in gws:
            gw.write(lambda cfg: None)
        assert lab.run("gw1", check, capture_output=True, text=True).returncode == 0
        gw2.write(lambda cfg: cfg["isps"][1].update(mark=0x300))
        refused = lab.run("gw1", check, capture_output=True, text=True, check=False)
        assert refused.returncode == 2, refused
        assert "isp isp2: mark 0x200, table 202, wan vip 100.64.2.10/24 here; mark 0x300" in refused.stderr
        for gw in gws:
            gw.start()
        wait_until("gw1 master, gw2 backup", lambda: (role(gw1), role(gw2)) == ("master", "backup"))
        wait_until("both see the difference", lambda: peer(gw1)["config_differences"] and peer(gw2)[
            "config_differences"])  # fmt: skip
        [here] = peer(gw1)["config_differences"]
        assert here.startswith("isp isp2: mark 0x200, table 202, wan vip") and "mark 0x300" in here, here
        assert peer(gw2)["config_differences"][0].endswith(" on gw1")
        assert gw2.wait_event("", "config", timeout=5)["status"] == "differs"
        text = gw1.run(*WANLB, "status", "--wide", "--socket", str(gw1.socket))
        assert "config DIFFERS" in text and "config differs: isp isp2: mark 0x200" in text, text
    finally:
        stop_pair(lab, gws)


def test_a_backup_daemon_killed_with_9_and_restarted_runs_one_set_of_helpers(
    lab: Lab, pair: tuple[LabGateway, LabGateway]
) -> None:
    """kill -9 of gw2's daemon leaves its keepalived and conntrackd running (and gw2 still the backup); the next
    start ends them by their pid files and runs its own: one keepalived (parent and VRRP child) and one
    conntrackd for gw2's files, gw2 backup again, the streams on gw1 untouched."""
    gw1, gw2 = pair
    streams, _ = streams_by_isp(lab, gw1)
    root = str(ha.paths_for(load_config(str(gw2.config))).root).encode()

    def helpers() -> list[int]:  # gw2's: their command lines name its helper directory
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                if root in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
        return sorted(found)

    before = helpers()
    assert len(before) == 3, before  # keepalived, its VRRP child, conntrackd
    gw2.kill9()
    assert helpers() == before  # the helpers outlive the daemon
    gw2.start()
    wait_until("gw2 backup again", lambda: role(gw2) == "backup")
    wait_until("one new set of helpers", lambda: len(helpers()) == 3 and not set(helpers()) & set(before))
    assert role(gw1) == "master"
    results = stop_streams(streams)
    assert all(r["ok"] for r in results), results


def test_upgrading_the_pair_one_node_at_a_time_keeps_every_stream(
    lab: Lab, pair: tuple[LabGateway, LabGateway]
) -> None:
    """docs/ha.md's upgrade sequence, run as one under streams on both ISPs: restart the backup's daemon (as
    `systemctl restart wanlb` does: SIGTERM, the datapath stays), wait until it is backup with every stream
    synced; stop the primary's daemon (its keepalived leaves, the backup takes over); start it again (it comes
    back as backup, syncs for preempt_delay, then takes the VIPs back).  Every stream survives, on its ISP, with
    its source address."""
    gw1, gw2 = pair
    streams, isp_of = streams_by_isp(lab, gw1)
    try:
        wait_until("gw2 has every stream", lambda: synced(gw2, set(isp_of)), timeout=10)
        gw2.stop(cleanup=False)  # 1. the backup, upgraded
        gw2.start()
        wait_until("gw2 backup again, hearing gw1", lambda: role(gw2) == "backup" and peer(gw2)["state"] == "up")
        wait_until("gw2 has every stream again", lambda: synced(gw2, set(isp_of)), timeout=10)
        gw1.stop(cleanup=False)  # 2. the primary stops: gw2 takes over
        wait_until("gw2 master", lambda: role(gw2) == "master", timeout=10)
        time.sleep(1.0)
        on_gw2 = {e["orig"]["sport"]: e["isp"] for e in entries(gw2)}
        assert {p: on_gw2.get(p) for p in isp_of} == isp_of
        gw1.start()  # 3. the old primary, upgraded, returns: backup first, then master after preempt_delay
        wait_until("gw1 backup", lambda: role(gw1) in ("backup", "master"), timeout=10)
        wait_until("gw1 master again", lambda: role(gw1) == "master" and role(gw2) == "backup", timeout=20)
        time.sleep(1.0)
        on_gw1 = {e["orig"]["sport"]: e["isp"] for e in entries(gw1)}
        assert {p: on_gw1.get(p) for p in isp_of} == isp_of
    finally:
        results = stop_streams(streams)
    gaps = sorted(r["max_gap"] for r in results)
    print(f"\nupgrade of both nodes: {len(results)} streams, largest gap {gaps[-1]:.3f} s")
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]]
    # each ISP's streams still reach the server from that ISP's WAN VIP (no stream moved to the other's)
    assert Counter(vips_isp(r) for r in results) == Counter(isp_of.values()), results
