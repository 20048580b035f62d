"""The lab's pure half: names, addresses, generated iproute2/nft/YAML text (no root needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from wanlb.lab.topology import (
    COUNTERS,
    LAN_LEAK_COUNTER,
    FailMode,
    Topology,
    TopologyError,
    fail_nft,
    gateway_nat_nft,
    isp_for_source,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lab.yaml"


def test_names_and_build_order() -> None:
    topo = Topology("t1", isps=2, clients=3)
    assert topo.nodes == ["gw", "isp1", "isp2", "inet", "c1", "c2", "c3"]
    assert topo.ns("isp2") == "wlab-t1-isp2"
    assert all(topo.ns(n).startswith(topo.prefix) for n in topo.nodes)


@pytest.mark.parametrize("name", ["", "Lab", "a-b", "-x", "x" * 25, "a b"])
def test_bad_names_rejected(name: str) -> None:
    with pytest.raises(TopologyError):
        Topology(name)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"isps": 0}, "--isps"), ({"clients": 0}, "--clients"), ({"weights": (1, 2)}, "weights"),
     ({"isps": 2, "weights": (1, 0)}, "weights")],
)  # fmt: skip
def test_bad_sizes_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        Topology("x", **kwargs)


def test_isp_lookup() -> None:
    topo = Topology("x", isps=3)
    assert topo.isp_index("isp3") == 3
    assert topo.isp_index("2") == 2
    for bad in ("isp4", "isp0", "wan1", "0"):
        with pytest.raises(TopologyError, match="unknown ISP"):
            topo.isp_index(bad)
    with pytest.raises(TopologyError, match="unknown node"):
        topo.ns("isp4")


def test_veths_are_created_from_inside_namespaces() -> None:
    """Every `link add` names its peer's namespace: nothing is ever created in the host namespace."""
    topo = Topology("x", isps=2, clients=2)
    adds = [line for node in topo.nodes for line in topo.ip_batch(node) if line.startswith("link add")]
    veths = [line for line in adds if "type veth" in line]
    assert len(veths) == len(topo.links) == 2 + 2 + 2
    assert all(" netns wlab-x-" in line for line in veths)
    assert all(line.startswith("link add name ") for line in adds)  # `link add a` would parse as `address`


def test_addresses() -> None:
    topo = Topology("x", isps=2, clients=2)
    gw = topo.ip_batch("gw")
    assert "addr add 192.168.77.1/24 dev lan0" in gw
    assert "addr add 100.64.2.2/24 dev wan2" in gw
    assert gw[-1] == "route add default via 100.64.1.1 dev wan1"
    isp2 = topo.ip_batch("isp2")
    assert "addr add 100.64.2.1/24 dev cust0" in isp2
    assert "route add default via 198.18.2.2 dev up0" in isp2
    inet = topo.ip_batch("inet")
    assert "route add 100.64.2.0/24 via 198.18.2.1 dev isp2" in inet
    assert "addr add 203.0.113.40/32 dev lo" in inet
    assert "addr add 192.168.77.12/24 dev eth0" in topo.ip_batch("c2")
    assert "route add default via 192.168.77.1 dev eth0" in topo.ip_batch("c2")


def test_sysctls() -> None:
    topo = Topology("x")
    assert topo.sysctls("gw")["net.ipv4.ip_forward"] == "1"
    assert topo.sysctls("isp1")["net.ipv4.ip_forward"] == "1"
    assert "net.ipv4.ip_forward" not in topo.sysctls("inet")
    assert all(topo.sysctls(n)["net.ipv6.conf.all.disable_ipv6"] == "1" for n in topo.nodes)


def test_isp_ruleset_is_bcp38_in_lab_table() -> None:
    text = Topology("x", isps=2).isp_nft(2)
    assert "table ip lab {" in text and "wanlb" not in text
    assert 'iifname "cust0" ip saddr != { 100.64.2.0/24, 100.80.2.0/24 } counter name "spoofed" drop' in text
    assert all(";" not in line for line in text.splitlines() if "hook" not in line)  # nft 1.0.6


def test_isp_ruleset_counts_lan_leaks_before_bcp38() -> None:
    """An un-NATed LAN source is counted as `lan_leak`, not as `spoofed`: its rule comes first."""
    assert LAN_LEAK_COUNTER == "lan_leak" and LAN_LEAK_COUNTER in COUNTERS
    assert set(COUNTERS) == {"spoofed", "failed", "lan_leak"}
    lines = [line.strip() for line in Topology("x", isps=3).isp_nft(3).splitlines()]
    leak = 'iifname "cust0" ip saddr 192.168.77.0/24 counter name "lan_leak" drop'
    spoof = 'iifname "cust0" ip saddr != { 100.64.3.0/24, 100.80.3.0/24 } counter name "spoofed" drop'
    assert leak in lines and spoof in lines
    assert lines.index(leak) < lines.index(spoof)
    assert all(f"counter {name} {{" in lines for name in COUNTERS)  # every counter is declared


def test_fail_modes() -> None:
    assert str(FailMode.parse("link")) == "link"
    assert str(FailMode.parse("blackhole")) == "blackhole"
    assert FailMode.parse("loss:30") == FailMode("loss", 30)
    for bad in ("loss", "loss:0", "loss:101", "loss:-1", "down", ""):
        with pytest.raises(TopologyError, match="bad fail mode"):
            FailMode.parse(bad)


def test_fail_rules() -> None:
    assert fail_nft(None) == "flush chain ip lab fail\n"
    assert fail_nft(FailMode("link")) == "flush chain ip lab fail\n"  # link mode is the link state
    assert 'fail counter name "failed" drop' in fail_nft(FailMode("blackhole"))
    assert "numgen random mod 100 < 30 counter" in fail_nft(FailMode("loss", 30))
    assert "numgen" not in fail_nft(FailMode("loss", 100))  # mod 100 can't be < 100 in nft's eyes
    assert 'oifname "wan*" masquerade' in gateway_nat_nft()


def test_source_to_isp() -> None:
    assert isp_for_source("100.64.2.2") == "isp2"
    assert isp_for_source("100.64.12.2") == "isp12"
    assert isp_for_source("192.168.77.11") is None
    assert isp_for_source("100.64.2.1") is None


def test_config_shape() -> None:
    topo = Topology("t9", isps=2, weights=(3, 1))
    cfg = yaml.safe_load(topo.config_yaml("/run/wanlb/lab/t9/wanlb.sock"))
    assert cfg["lan"] == {"interfaces": ["lan0"]}
    assert [(i["name"], i["interface"], i["gateway"], i["weight"]) for i in cfg["isps"]] == [
        ("isp1", "wan1", "100.64.1.1", 3),
        ("isp2", "wan2", "100.64.2.1", 1),
    ]
    isp = cfg["isps"][0]
    assert isp["tier"] == 1 and isp["snat"] == "masquerade"
    assert isp["health"] == {
        "method": "icmp",
        "targets": ["203.0.113.10", "203.0.113.30"],
        "quorum": 1,
        "interval": "200ms",
    }
    assert cfg["balance"] == {"algorithm": "weighted"}
    assert cfg["mark_mask"] == 0xFF00
    assert cfg["local_traffic"] is True
    assert cfg["control"] == {"socket": "/run/wanlb/lab/t9/wanlb.sock"}


def test_config_is_accepted_by_the_daemon_loader() -> None:
    from wanlb.config import parse_config

    cfg = parse_config(Topology("x", isps=3, weights=(3, 1, 1)).config_yaml("/run/x.sock"))
    assert [isp.weight for isp in cfg.isps] == [3, 1, 1]


def test_example_matches_default_lab() -> None:
    """examples/lab.yaml is what `wanlb lab up` writes for the default lab; regenerate it if this fails:
    python -c "from wanlb.lab.topology import Topology; print(Topology().config_yaml(
    '/run/wanlb/lab/lab/wanlb.sock'), end='')" > examples/lab.yaml"""
    assert EXAMPLE.read_text() == Topology().config_yaml("/run/wanlb/lab/lab/wanlb.sock")


def test_uplink_modes_shape_addresses_routes_and_the_config() -> None:
    from wanlb.lab.topology import UPLINK_PRESETS, dhcp_client_argv, dhcp_server_argv, p2p_mac

    topo = Topology("u", isps=4, uplinks=("static", "dhcp", "p2p", "modem"), ipv6=True)
    gw = topo.ip_batch("gw")
    assert "addr add 100.64.1.2/24 dev wan1" in gw and not any("dev wan2" in ln and "addr add 100" in ln for ln in gw)
    assert "addr add 100.64.3.2 peer 100.64.3.1/32 dev wan3" in gw
    assert f"link set wan3 address {p2p_mac(3)} arp off" in gw
    assert f"link set cust0 address {p2p_mac(3)} arp off" in topo.ip_batch("isp3")  # the same MAC at both ends
    assert "route add default dev wan3 metric 103" in gw
    assert "addr add 192.168.8.1/24 dev cust0" in topo.ip_batch("isp4")
    assert not any("2001:db8:4" in ln for ln in gw)  # the modem carries no IPv6
    isp4 = topo.isp_nft(4)
    assert 'oifname "up0" masquerade' in isp4 and "ip saddr != 192.168.8.0/24" in isp4
    cfg = yaml.safe_load(topo.config_yaml("/run/x.sock"))
    assert [i["gateway"] for i in cfg["isps"]] == ["100.64.1.1", "auto", "auto", "auto"]
    assert [i.get("gateway6") for i in cfg["isps"]] == ["2001:db8:1::1", "auto", "2001:db8:3::1", None]
    assert topo.dhcp_wans == ["wan2", "wan4"]
    server = dhcp_server_argv(topo, 2, 1, "/tmp/l")
    assert "--dhcp-range=100.80.2.2,100.80.2.2,255.255.255.0,2m" in server and "--enable-ra" in server
    assert "--dhcp-option=option:router,192.168.8.1" in dhcp_server_argv(topo, 4, 0, "/tmp/l")
    client = dhcp_client_argv(topo)
    assert client[-2:] == ["--allowinterfaces", "wan2,wan4"] and "mount -t tmpfs tmpfs /run" in client[2]
    gw_lines, isp_lines = topo.wan_link(3, 1)  # a new PPP session: another address
    assert gw_lines[0].startswith("link add name wan3")
    assert "addr add 100.64.3.6 peer 100.64.3.1/32 dev wan3" in gw_lines
    assert "addr add 100.64.3.1 peer 100.64.3.6/32 dev cust0" in isp_lines
    assert UPLINK_PRESETS["twins"] == ("modem", "modem")
    with pytest.raises(TopologyError, match="uplink modes"):
        Topology("u", isps=2, uplinks=("dhcp", "pppoe"))


def test_sources_of_every_uplink_mode_map_back_to_their_isp() -> None:
    assert isp_for_source("100.80.2.2") == "isp2"  # after a lease change
    assert isp_for_source("100.64.3.6") == "isp3"  # a new PPP session
    assert isp_for_source("198.18.4.1") == "isp4"  # behind modem 4's NAT
    assert isp_for_source("100.64.2.1") is None and isp_for_source("198.18.4.2") is None


def test_dhcp_uplinks_of_a_dual_stack_lab_delegate_a_prefix_that_the_config_follows() -> None:
    from wanlb.lab.topology import dhcp6_server_conf, dhcp_client_conf

    topo = Topology("u", isps=3, uplinks=("dhcp", "modem", "p2p"), ipv6=True)
    assert topo.pd_isps == [1]
    assert "link add name pd1 type bridge" in topo.ip_batch("gw")
    assert dhcp_client_conf(topo).splitlines()[-4:] == ["interface wan1", "  ia_pd 1 pd1/0/64", "interface wan2",
                                                          "  ipv4only"]  # fmt: skip
    assert "prefix6 2001:db8:180:: 2001:db8:180:: /56;" in dhcp6_server_conf(1, 1)
    cfg = yaml.safe_load(topo.config_yaml("/run/x.sock"))
    assert cfg["isps"][0]["ipv6"] == {"mode": "netmap", "prefix_from": "pd1"}
    assert "route add 2001:db8:180::/56 via 2001:db8:1::2" in topo.ip_batch("isp1")
    assert isp_for_source("2001:db8:180::11") == "isp1"
    assert Topology("v", isps=1, uplinks=("dhcp",)).pd_isps == []  # IPv4 only: no DHCPv6


# --- an HA pair (issue 20) --------------------------------------------------------------------------------


def test_ha_pair_nodes_links_and_build_order() -> None:
    from wanlb.lab.topology import Link

    topo = Topology("h", isps=2, clients=2, ha=True)
    assert topo.gateways == ["gw1", "gw2"]
    assert topo.nodes == ["gw1", "gw2", "sw", "isp1", "isp2", "inet", "c1", "c2"]
    with pytest.raises(TopologyError, match="unknown node 'gw'"):
        topo.ns("gw")
    assert Link("gw1", "sync0", "gw2", "sync0") in topo.links
    assert {ln for ln in topo.links if ln.b == "isp1"} == {Link("gw1", "wan1", "isp1", "gw1"),
                                                          Link("gw2", "wan1", "isp1", "gw2")}  # fmt: skip
    assert {ln for ln in topo.links if ln.b == "sw"} == {
        Link("gw1", "lan0", "sw", "gw1"),
        Link("gw2", "lan0", "sw", "gw2"),
    }
    assert Link("sw", "lanp2", "c2", "eth0") in topo.links
    assert all(topo.nodes.index(ln.a) < topo.nodes.index(ln.b) for ln in topo.links)  # the owner's batch runs first
    adds = [line for node in topo.nodes for line in topo.ip_batch(node) if line.startswith("link add")]
    assert len([line for line in adds if "type veth" in line]) == len(topo.links) == 2 * 2 + 1 + 2 + 2 + 2
    assert all(" netns wlab-h-" in line for line in adds if "type veth" in line)
    assert topo.bridges("sw") == {"lan0": ["gw1", "gw2", "lanp1", "lanp2"]}
    assert topo.bridges("isp2") == {"cust0": ["gw1", "gw2"]}
    assert topo.bridges("gw1") == {} and topo.bridges("c1") == {}
    assert "link set gw2 master cust0" in topo.ip_batch("isp1")
    assert "link set lanp1 master lan0" in topo.ip_batch("sw") and "link set gw1 master lan0" in topo.ip_batch("sw")


def test_ha_pair_addresses_leave_the_vips_unconfigured() -> None:
    topo = Topology("h", isps=2, clients=1, ha=True)
    assert topo.addresses("gw1") == {"lan0": ["192.168.77.2/24"], "wan1": ["100.64.1.2/24"], "wan2": ["100.64.2.2/24"],
                                     "sync0": ["10.255.0.1/30"]}  # fmt: skip
    assert topo.addresses("gw2") == {"lan0": ["192.168.77.3/24"], "wan1": ["100.64.1.3/24"], "wan2": ["100.64.2.3/24"],
                                     "sync0": ["10.255.0.2/30"]}  # fmt: skip
    assert topo.addresses("sw") == {} and topo.routes("sw") == []
    assert topo.addresses("isp1")["cust0"] == ["100.64.1.1/24"]
    assert topo.routes("gw2") == ["default via 100.64.1.1 dev wan1"]
    assert topo.routes("c1") == ["default via 192.168.77.1 dev eth0"]  # the LAN VIP
    every_line = [line for node in topo.nodes for line in topo.ip_batch(node)]
    vips = ("192.168.77.1/", "100.64.1.10/", "100.64.2.10/")
    assert not any(vip in line for line in every_line if "addr add" in line for vip in vips)
    macs = [line.split()[-1] for gw in topo.gateways for line in topo.ip_batch(gw) if " address " in line]
    assert len(macs) == len(set(macs)) == 4  # both gateways on each WAN segment: a MAC each
    assert topo.sysctls("gw2")["net.ipv4.ip_forward"] == "1" and "net.ipv4.ip_forward" not in topo.sysctls("sw")
    assert topo.interfaces("gw1") == ["wan1", "wan2", "sync0", "lan0"]
    assert topo.interfaces("gw2") == ["wan1", "wan2", "lan0", "sync0"]


def test_ha_facts_of_each_gateway_mirror_the_peer() -> None:
    from wanlb.lab.topology import HaWan, wan_vip

    topo = Topology("h", isps=2, ha=True)
    one, two = topo.ha_node("gw1"), topo.ha_node("gw2")
    assert (one.peer, two.peer, one.primary, two.primary) == ("gw2", "gw1", True, False)
    assert (one.sync_address, one.peer_sync_address) == (two.peer_sync_address, two.sync_address) == (
        "10.255.0.1", "10.255.0.2")  # fmt: skip
    assert (one.lan_address, two.lan_address, one.lan_vip, two.lan_vip) == (
        "192.168.77.2", "192.168.77.3", "192.168.77.1", "192.168.77.1")  # fmt: skip
    assert two.wans == (
        HaWan("isp1", "wan1", "100.64.1.3", "100.64.1.10"),
        HaWan("isp2", "wan2", "100.64.2.3", "100.64.2.10"),
    )
    assert [w.vip for w in one.wans] == [w.vip for w in two.wans] == [wan_vip(1), wan_vip(2)]
    for bad, topo_of in (("isp1", topo), ("gw", Topology("s"))):
        with pytest.raises(TopologyError, match="not a gateway of an HA pair"):
            topo_of.ha_node(bad)


def test_ha_configs_share_one_mark_and_table_allocation() -> None:
    from wanlb.config import parse_config

    topo = Topology("h", isps=3, weights=(3, 1, 1), ha=True)
    texts = {gw: topo.config_yaml(f"/run/wanlb/lab/h/wanlb-{gw}.sock", gw) for gw in topo.gateways}
    configs = {gw: parse_config(text) for gw, text in texts.items()}
    allocation = {gw: [(i.name, i.mark, i.table) for i in cfg.isps] for gw, cfg in configs.items()}
    assert allocation["gw1"] == allocation["gw2"] == [("isp1", 0x100, 201), ("isp2", 0x200, 202), ("isp3", 0x300, 203)]
    assert configs["gw1"].control.socket != configs["gw2"].control.socket
    ha = {gw: cfg.ha for gw, cfg in configs.items()}
    assert ha["gw1"] and ha["gw2"] and (ha["gw1"].priority, ha["gw2"].priority) == (150, 100)
    assert (str(ha["gw1"].sync.address), str(ha["gw1"].sync.peer)) == (
        str(ha["gw2"].sync.peer),
        str(ha["gw2"].sync.address),
    )
    assert str(ha["gw1"].unicast_peer) == "192.168.77.3" and str(ha["gw2"].unicast_peer) == "192.168.77.2"
    assert {k: str(v) for k, v in ha["gw2"].wan_vips.items()} == {f"isp{i}": f"100.64.{i}.10/24" for i in (1, 2, 3)}
    assert "wlab-h-gw2" in texts["gw2"] and "wlab-h-gw1" not in texts["gw2"]
    single = yaml.safe_load(Topology("s", isps=3).config_yaml("/run/x.sock"))
    assert all("mark" not in isp and "table" not in isp for isp in single["isps"])  # auto, as before
    for bad, topo_of in (("gw", topo), ("isp1", topo), ("gw1", Topology("s"))):
        with pytest.raises(TopologyError, match="no gateway"):
            topo_of.config_yaml("/run/x.sock", bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"ipv6": True}, "IPv4-only"), ({"isps": 2, "uplinks": ("static", "dhcp")}, "static uplinks"),
     ({"isps": 1, "uplinks": ("p2p",)}, "static uplinks"), ({"isps": 1, "uplinks": ("modem",)}, "cannot|one box")],
)  # fmt: skip
def test_ha_refuses_what_two_gateways_cannot_share(kwargs: dict, message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        Topology("h", ha=True, **kwargs)


def test_ha_isps_accept_the_vip_and_both_gateways_and_still_count_lan_leaks() -> None:
    import ipaddress

    from wanlb.lab.topology import vip_nat_nft

    topo = Topology("h", isps=2, ha=True)
    lines = [line.strip() for line in topo.isp_nft(2).splitlines()]
    spoof = next(line for line in lines if 'name "spoofed"' in line)
    nets = [ipaddress.ip_network(n.strip()) for n in spoof.split("{")[1].split("}")[0].split(",")]
    for source in ("100.64.2.10", "100.64.2.2", "100.64.2.3"):  # the VIP, gw1, gw2: none of them is spoofing
        assert any(ipaddress.ip_address(source) in net for net in nets)
    leak = next(line for line in lines if 'name "lan_leak"' in line)
    assert "ip saddr 192.168.77.0/24" in leak and lines.index(leak) < lines.index(spoof)
    assert topo.customer_side(1) == ["cust0", "gw1", "gw2"]  # `fail --mode link` cuts both gateways' carrier
    assert Topology("s").customer_side(1) == ["cust0"]
    nat = vip_nat_nft(2)
    assert 'oifname "wan1" ip saddr 192.168.77.0/24 snat ip to 100.64.1.10' in nat
    assert 'oifname "wan2" ip saddr 192.168.77.0/24 snat ip to 100.64.2.10' in nat
    assert "masquerade" not in nat  # the gateway's own traffic keeps its own address
    assert [isp_for_source(a) for a in ("100.64.2.10", "100.64.2.3", "100.64.2.1")] == ["isp2", "isp2", None]
