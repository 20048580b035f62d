"""verify() on a fake kernel: what only this machine can tell about a config is said with it."""

from __future__ import annotations

import ipaddress

from fakekernel import FakeKernel

from wanlb.config import parse_config
from wanlb.uplink import ConnectedRoute
from wanlb.verify import verify


def test_a_static_gateway_on_the_lans_network_is_a_warning_of_verify() -> None:
    """The double-NAT mistake: the WAN and the LAN on one 192.168.1.0/24, the ISP router's .1 as gateway. The
    uplink looks whole; only the LAN's connected network tells."""
    cfg = parse_config(
        "lan: {interfaces: [lan0]}\nisps:\n  - {name: isp1, interface: wan1, gateway: 192.168.1.1}\n"
        "  - {name: isp2, interface: wan2, gateway: 100.64.2.1}\n"
    )
    net = ipaddress.IPv4Network
    routes = [ConnectedRoute(net("192.168.1.0/24"), "lan0"), ConnectedRoute(net("192.168.1.0/24"), "wan1"),
              ConnectedRoute(net("100.64.2.0/24"), "wan2")]  # fmt: skip
    kernel = FakeKernel({"lan0": True, "wan1": True, "wan2": True}, routes)
    verdict = verify(cfg, None, kernel, reload=False, check_nft=False)
    assert verdict.ok
    assert verdict.warnings == (
        "isp isp1: gateway 192.168.1.1 is on the LAN (lan0: 192.168.1.0/24): a WAN's next hop is on its own "
        "network, reached through wan1",
    )
