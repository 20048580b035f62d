"""An HA pair's config: what `check` refuses, and the helpers' files rendered from it (the real programs read
them in tests/integration/test_ha_helpers.py)."""

from __future__ import annotations

import pytest

from wanlb import ha, nftsync, runtime
from wanlb.config import ConfigError, parse_config
from wanlb.fleet import Emit, Fleet
from wanlb.plan import plan
from wanlb.render import render

PAIR = """\
lan: {interfaces: [lan0]}
isps:
  - {name: isp1, interface: wan1, gateway: 100.64.1.1, mark: 0x100, table: 201, health: {targets: [192.0.2.1]}}
  - {name: isp2, interface: wan2, gateway: 100.64.2.1, mark: 0x200, table: 202}
control: {socket: /run/wanlb/gw1/wanlb.sock}
ha:
  node: gw1
  priority: 150
  advert_interval: 100ms
  unicast_peer: 192.168.77.3
  lan_vip: 192.168.77.1/24
  wan_vips: {isp1: 100.64.1.10/24}
  sync: {interface: sync0, address: 10.255.0.1, peer: 10.255.0.2}
"""


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    return str(info.value).splitlines()


def test_a_pair_must_write_out_its_allocation_and_name_what_exists() -> None:
    text = (
        PAIR.replace(", mark: 0x200, table: 202", "")
        .replace("isp1: 100.64.1.10/24", "isp1: 100.64.1.10/24, isp7: 100.64.7.10/24")
        .replace("interface: sync0", "interface: wan2")
    )
    assert errors(text) == [
        "c.yaml:4: isps[isp2]: with ha, give mark and table: the pair shares one allocation, so both nodes' files "
        "must say the same",
        "c.yaml:12: ha.wan_vips[isp7]: no ISP named 'isp7' (ISPs: isp1, isp2)",
        "c.yaml:13: ha.sync.interface: wan2 carries LAN or WAN traffic: conntrackd needs a dedicated link",
    ]


def test_a_learned_uplink_cannot_be_shared() -> None:
    [row] = errors(PAIR.replace("gateway: 100.64.1.1, mark", "gateway: auto, mark"))
    assert row.startswith("c.yaml:12: ha.wan_vips[isp1]: ISP isp1 learns its gateway (DHCP, PPP, a modem)"), row


@pytest.mark.parametrize("interval", ["5ms", "105ms", "41s"])
def test_the_advert_interval_is_whole_centiseconds(interval: str) -> None:
    [row] = errors(PAIR.replace("advert_interval: 100ms", f"advert_interval: {interval}"))
    assert row.startswith("c.yaml:9: ha.advert_interval: must be 10ms..40.95s in steps of 10ms"), row


def test_keepalived_holds_every_vip_and_tells_the_daemon_through_its_fifo() -> None:
    cfg = parse_config(PAIR)
    text = ha.keepalived_conf(cfg, ha.paths_for(cfg))
    assert "    notify_fifo /run/wanlb/gw1/wanlb.ha/notify.fifo\n" in text and "    vrrp_version 3\n" in text
    assert "    state BACKUP\n    interface lan0\n    virtual_router_id 51\n    priority 150\n" in text
    assert "    advert_int 0.1\n    preempt_delay 5\n" in text
    assert "    unicast_peer {\n        192.168.77.3\n    }\n    check_unicast_src\n" in text
    assert "virtual_ipaddress {\n        192.168.77.1/24 dev lan0\n    }" in text
    assert "virtual_ipaddress_excluded {\n        100.64.1.10/24 dev wan1\n    }" in text


def test_conntrackd_syncs_over_the_dedicated_link_with_its_own_lock_and_socket() -> None:
    cfg = parse_config(PAIR)
    text = ha.conntrackd_conf(cfg, ha.paths_for(cfg))
    for line in ("IPv4_address 10.255.0.1", "IPv4_Destination_Address 10.255.0.2", "Interface sync0",
                 "LockFile /run/wanlb/gw1/wanlb.ha/conntrackd.lock", "Path /run/wanlb/gw1/wanlb.ha/conntrackd.ctl",
                 "DisableExternalCache Off", "NetlinkEventsReliable On", "Systemd off"):  # fmt: skip
        assert f" {line}\n" in text, line


@pytest.mark.parametrize(
    ("line", "role"),
    [('INSTANCE "wanlb" MASTER 150', "master"), ('INSTANCE "wanlb" BACKUP 150', "backup"),
     ('INSTANCE "wanlb" FAULT 150', "fault"), ('INSTANCE "wanlb" STOP 150', None),
     ('INSTANCE "other" MASTER 100', None), ('GROUP "g" MASTER', None), ("", None), ("\x00" * 50, None)],
)  # fmt: skip
def test_the_fifo_lines_keepalived_writes(line: str, role: str | None) -> None:
    assert ha.parse_notify(line) == role


def test_the_datapath_snats_to_the_wan_vip_and_guards_the_takeover() -> None:
    cfg = parse_config(PAIR)
    desired = plan(cfg, runtime.allocate(cfg, None, reload=False).state, {})
    text = nftsync.full_text(render(desired).nft)
    assert 'oifname "wan1" fib saddr type local masquerade' in text  # probes keep the node's own address
    assert 'meta mark & 0xff00 == 0x100 oifname "wan1" snat ip to 100.64.1.10' in text
    assert 'meta mark & 0xff00 == 0x200 oifname "wan2" masquerade' in text  # no VIP: the node's own
    assert "ct state new tcp flags & (syn | ack | rst | fin) != syn" in text
    single = parse_config(PAIR.split("ha:")[0])
    plain = nftsync.full_text(render(plan(single, runtime.allocate(single, None, reload=False).state, {})).nft)
    assert "tcp flags & (syn | ack | rst | fin)" not in plain and "fib saddr type local masquerade" not in plain


def test_a_backup_flushes_nothing_and_a_role_change_is_an_event() -> None:
    cfg = parse_config(PAIR)
    fleet = Fleet(cfg, runtime.allocate(cfg, None, reload=False).state, {}, 0.0, 1e9)
    assert fleet.ha_role == "backup"
    effects = []
    for k in range(3):
        effects += fleet.round("isp1", 0.2 * (k + 1), 1e9, False, None, 1.0, "no answer")
    assert fleet.statuses()["isp1"].value == "down" and not fleet.wants_empty("isp1")
    assert not any(type(e).__name__ == "Flush" for e in effects)
    events = fleet.role("master", 1e9 + 1)
    assert [(e.event.event, e.event.status, e.event.old) for e in events if isinstance(e, Emit)] == [
        ("role", "master", "backup")
    ]
    assert fleet.wants_empty("isp1")  # the master flushes what its probes say must go (at the resync)
    assert fleet.role("master", 1e9 + 2) == []
