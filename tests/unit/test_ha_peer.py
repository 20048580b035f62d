"""The pair's hellos: what a node concludes from its peer's (lost, split brain, configs that disagree), what it
refuses to read, and `wanlb check --peer`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_ha_render import PAIR

from wanlb import ha_peer
from wanlb.config import parse_config
from wanlb.ha_peer import Hello, HelloError, PeerTracker

PEER = (
    PAIR.replace("node: gw1", "node: gw2")
    .replace("priority: 150", "priority: 100")
    .replace("address: 10.255.0.1, peer: 10.255.0.2", "address: 10.255.0.2, peer: 10.255.0.1")
    .replace("gw1/wanlb.sock", "gw2/wanlb.sock")
)


def agree(text: str = PAIR) -> dict[str, str]:
    return ha_peer.agreement(parse_config(text, "c.yaml"))


def test_the_agreement_names_each_isps_mark_table_and_vip() -> None:
    fields = agree()
    assert fields["isp isp1"] == "mark 0x100, table 201, wan vip 100.64.1.10/24"
    assert fields["isp isp2"] == "mark 0x200, table 202, wan vip none"
    assert fields["vrid"] == "51" and fields["lan_vip"] == "192.168.77.1/24" and fields["advert_interval"] == "0.1s"
    assert agree(PEER) == fields  # what differs between two nodes (name, priority, sync ends) is not in it


def test_differences_say_both_sides() -> None:
    theirs = agree(PAIR.replace("mark: 0x200, table: 202", "mark: 0x300, table: 202").replace("vrid", "x"))
    theirs.pop("isp isp1")
    theirs["isp isp9"] = "mark 0x900, table 209, wan vip none"
    assert ha_peer.differences(agree(), theirs, "gw2") == (
        "isp isp1: only here (mark 0x100, table 201, wan vip 100.64.1.10/24)",
        "isp isp2: mark 0x200, table 202, wan vip none here; mark 0x300, table 202, wan vip none on gw2",
        "isp isp9: only on gw2 (mark 0x900, table 209, wan vip none)",
    )


def hello(role: str = "backup", node: str = "gw2", fields: dict[str, str] | None = None) -> Hello:
    return Hello(node, role, 100, agree() if fields is None else fields)


def test_a_hello_round_trips() -> None:
    h = hello()
    assert ha_peer.decode(ha_peer.encode(h)) == h


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[]", "not a version 1 hello"),
        (b'{"v": 2}', "not a version 1 hello"),
        (b'{"v":1,"node":"GW; rm","role":"master","priority":1,"agree":{}}', "bad node name"),
        (b'{"v":1,"node":"gw2","role":"king","priority":1,"agree":{}}', "bad role"),
        (b'{"v":1,"node":"gw2","role":"master","priority":true,"agree":{}}', "bad priority"),
        (b'{"v":1,"node":"gw2","role":"master","priority":1,"agree":{"a":1}}', "bad agreement field"),
        (b'{"v":1,"node":"gw2","role":"master","priority":1,"agree":[]}', "bad agreement fields"),
        (b" " * (ha_peer.MAX_HELLO + 1), "over 4096"),
    ],
)
def test_a_bad_datagram_is_refused_with_a_reason(raw: bytes, why: str) -> None:
    with pytest.raises(HelloError, match=why):
        ha_peer.decode(raw)


def test_the_peer_is_heard_then_lost_after_the_timeout() -> None:
    t = PeerTracker("gw1", "sync0")
    [up] = t.heard(hello(), 10.0, 1000.0, "master", agree())
    assert (up.event, up.status, up.reason) == ("peer", "up", "heard gw2 (backup)")
    assert t.tick(10.0 + ha_peer.PEER_TIMEOUT, 1002.0, "master") == []
    [lost] = t.tick(10.0 + ha_peer.PEER_TIMEOUT + 0.1, 1002.1, "master")
    assert (lost.event, lost.status, lost.old) == ("peer", "lost", "up")
    assert "nothing from gw2 for 2.1 s" in lost.reason


def test_split_brain_while_both_are_master_and_only_then() -> None:
    t = PeerTracker("gw1", "sync0")
    assert [e.event for e in t.heard(hello("master"), 1.0, 1.0, "backup", agree())] == ["peer"]
    assert not t.split_brain  # the peer is master, this node backup: as it should be
    [split] = t.heard(hello("master"), 1.5, 1.5, "master", agree())
    assert (split.event, split.status) == ("split-brain", "started") and t.split_brain
    assert "gw2 is master too" in split.reason
    [over] = t.heard(hello("backup"), 2.0, 2.0, "master", agree())
    assert (over.event, over.status, over.reason) == ("split-brain", "ended", "gw2 is backup, this node master")
    t.heard(hello("master"), 3.0, 3.0, "master", agree())
    events = t.tick(3.0 + ha_peer.PEER_TIMEOUT + 1, 9.0, "master")  # silence ends what the node can tell
    assert [(e.event, e.status) for e in events] == [("peer", "lost"), ("split-brain", "ended")]
    assert not t.split_brain


def test_configs_that_differ_are_an_event_each_way_not_per_hello() -> None:
    t = PeerTracker("gw1", "sync0")
    wrong = dict(agree(), **{"isp isp2": "mark 0x300, table 202, wan vip none"})
    events = t.heard(hello(fields=wrong), 1.0, 1.0, "backup", agree())
    [config] = [e for e in events if e.event == "config"]
    assert (config.status, config.old) == ("differs", "agrees")
    assert config.reason.startswith("isp isp2: mark 0x200") and t.mismatch
    assert t.heard(hello(fields=wrong), 1.5, 1.5, "backup", agree()) == []
    [fixed] = t.heard(hello(), 2.0, 2.0, "backup", agree())
    assert (fixed.event, fixed.status) == ("config", "agrees") and t.mismatch == ()


def test_a_hello_in_this_nodes_own_name_is_refused() -> None:
    t = PeerTracker("gw1", "sync0")
    assert t.heard(hello(node="gw1"), 1.0, 1.0, "master", agree()) == []
    assert t.hello is None and t.bad_hellos == 1 and "like this one" in (t.last_bad or "")


def test_pair_problems() -> None:
    mine, theirs = parse_config(PAIR, "a.yaml"), parse_config(PEER, "b.yaml")
    assert ha_peer.pair_problems(mine, theirs) == ()
    assert ha_peer.pair_problems(mine, mine) == (
        "both nodes are named gw1",
        "both nodes have priority 150: give the preferred primary the higher one",
        "sync: 10.255.0.1 → 10.255.0.2 here; 10.255.0.1 → 10.255.0.2 on gw1 (each node's peer must be the "
        "other's address)",
    )


def run_check(tmp_path: Path, mine: str, theirs: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "a.yaml").write_text(mine)
    (tmp_path / "b.yaml").write_text(theirs)
    argv = [
        sys.executable,
        "-m",
        "wanlb.cli",
        "check",
        "-c",
        str(tmp_path / "a.yaml"),
        "--peer",
        str(tmp_path / "b.yaml"),
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_check_peer_refuses_two_configs_that_disagree_on_a_mark(tmp_path: Path) -> None:
    ok = run_check(tmp_path, PAIR, PEER)
    assert ok.returncode == 0, ok.stderr
    bad = run_check(tmp_path, PAIR, PEER.replace("mark: 0x200", "mark: 0x300"))
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip() == (
        f"{tmp_path}/a.yaml: ha: isp isp2: mark 0x200, table 202, wan vip none here; mark 0x300, table 202, "
        f"wan vip none on gw2 (peer {tmp_path}/b.yaml)"
    )
