"""IPv6 through the dual-stack lab gateway: balanced by weight, netmapped or masqueraded per ISP, sticky.

The lab (`Lab.up(ipv6=True)`) puts fd00:77::/64 on the LAN; ISP i routes 2001:db8:i00::/64 to the gateway
(its netmap prefix) and forwards only that prefix and its link prefix 2001:db8:i::/64 from the gateway
(ULA sources are counted as `lan_leak`, others as `spoofed`, in its `ip6 lab` table). Servers in inet
listen on [2001:db8:f::10]:80 (http: answers with the source it saw) and :5001 (a paced counter stream),
as on their IPv4 addresses, and the tests add [::]:9009 (a sink that answers with the byte count of an
upload).

The lab's config probes two IPv4 and two IPv6 targets per ISP: each ISP has an IPv4 and an IPv6 health.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
from collections import Counter
from typing import Any

import pytest
from harness import module_lab

from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab, python_module
from wanlb.lab.topology import (
    HTTP_ADDR,
    HTTP_PORT,
    ISP_UPLINK_IF,
    SERVER6_ADDRS,
    client6_addr,
    isp6_prefix,
    isp_for_source,
    wan6_addr,
)

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

ALL_UP = {"isp1": "up", "isp2": "up", "isp3": "up"}
SERVER6 = SERVER6_ADDRS[0]

# One connection per input line "DST PORT [SRC [TCLASS]]" (either family; SRC "-": the host's choice); prints
# the source each server saw (or "error:...") as JSON.
_CLIENT = """
import json, socket, sys
out = []
for line in sys.stdin.read().splitlines():
    dst, port, *rest = line.split()
    src, tclass = (rest + ["-", "0"])[:2]
    try:
        s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET)
        s.settimeout(3)
        if int(tclass):
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, int(tclass))
        if src != "-":
            s.bind((src, 0))
        s.connect((dst, int(port)))
        s.sendall(b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        s.close()
        out.append(json.loads(data.partition(b"\\r\\n\\r\\n")[2])["src"])
    except (OSError, ValueError, KeyError) as exc:
        out.append("error:" + type(exc).__name__)
print(json.dumps(out))
"""

# A sink on [::]:9009: reads until the client shuts its side, answers with the byte count.
_SINK = """
import socket, threading
srv = socket.socket(socket.AF_INET6)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("::", 9009))
srv.listen(16)
open(READY, "w").close()
def serve(c):
    n = 0
    while data := c.recv(65536):
        n += len(data)
    c.sendall(str(n).encode())
    c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# Uploads SIZE bytes to the sink; prints the count the sink acknowledged and the path MTU the kernel learnt.
_UPLOAD = """
import socket, sys
size = int(sys.argv[1])
s = socket.socket(socket.AF_INET6)
s.settimeout(20)
s.connect((sys.argv[2], 9009))
s.sendall(b"x" * size)
s.shutdown(socket.SHUT_WR)
got = s.recv(64)
IPV6_MTU = 24
print(got.decode(), s.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU))
"""

# Holds one stream connection; prints the source the server saw, then one line per second with the bytes
# received so far; exits with an error line if the stream stops or breaks.
_HOLD = """
import json, socket, sys, time
s = socket.socket(socket.AF_INET6)
s.settimeout(3)
s.connect((sys.argv[1], 5001))
f = s.makefile("rb")
print(json.dumps(json.loads(f.readline())["src"]), flush=True)
total, last = 0, time.monotonic()
while True:
    try:
        data = s.recv(65536)
    except OSError as exc:
        print("error:" + type(exc).__name__, flush=True)
        break
    if not data:
        print("error:closed", flush=True)
        break
    total += len(data)
    if time.monotonic() - last >= 1:
        print(total, flush=True)
        last = time.monotonic()
"""


def sh(lab: Lab, node: str, *argv: str, stdin: str | None = None) -> str:
    return lab.run(node, list(argv), capture_output=True, text=True, check=True, input=stdin).stdout


def wait_file(path: Any, what: str) -> None:
    deadline = time.monotonic() + 15
    while not path.exists():
        assert time.monotonic() < deadline, f"{what} did not start"
        time.sleep(0.05)


def _sink(lab: Lab) -> None:
    """An IPv6 sink in inet that the tests' connections go to."""
    sink = lab.dir / "sink6.ready"
    lab.popen("inet", ["python3", "-c", f"READY = {str(sink)!r}\n" + _SINK], label="sink6")
    wait_file(sink, "the IPv6 sink")


lab = module_lab(_sink, isps=3, clients=2, ipv6=True)


def start(gw: LabGateway, edit: Any = lambda _d: None, want: dict[str, str] = ALL_UP) -> None:
    gw.write(edit)
    gw.start()
    gw.wait_for(want)


def no_ipv6(isp: dict[str, Any]) -> None:
    """Edit one ISP of the parsed config to carry no IPv6 (its IPv6 health targets go too)."""
    isp["ipv6"] = {"mode": "off"}
    isp["health"]["targets"] = [t for t in isp["health"]["targets"] if ":" not in str(t)]


def connect6(
    lab: Lab, client: str, count: int, dst: str = SERVER6, port: int = HTTP_PORT, source: str = "-", tclass: int = 0
) -> list[str]:
    """The source address the server saw (or "error:...") for each of ``count`` sequential connections."""
    out = sh(lab, client, "python3", "-c", _CLIENT, stdin=f"{dst} {port} {source} {tclass}\n" * count)
    return list(json.loads(out))


def connect4(lab: Lab, client: str, count: int) -> list[str]:
    """The same over IPv4, to the lab's HTTP server."""
    out = sh(lab, client, "python3", "-c", _CLIENT, stdin=f"{HTTP_ADDR} {HTTP_PORT}\n" * count)
    return list(json.loads(out))


def entries(lab: Lab, family: str, mark: int) -> int:
    """Conntrack entries of one family (ipv4/ipv6) carrying an ISP mark, in the gateway."""
    out = sh(lab, "gw", "conntrack", "-L", "-f", family, "-m", f"{mark}/{0xFF00}")
    return sum(1 for line in out.splitlines() if line.strip())


def refused(lab: Lab, node: str, addr: str) -> bool:
    """Whether a TCP connect from ``node`` to port 9 of ``addr`` was refused (the peer answered)."""
    script = (
        "import socket\ns = socket.socket(socket.AF_INET6)\ns.settimeout(3)\n"
        f"try:\n    s.connect(({addr!r}, 9))\nexcept ConnectionRefusedError:\n    print('refused')\n"
        "except OSError as exc:\n    print(type(exc).__name__)\n"
    )
    return sh(lab, node, "python3", "-c", script).strip() == "refused"


def leaks_and_spoofs(lab: Lab) -> dict[str, int]:
    """The ISP routers' IPv6 anti-spoofing counters, summed: what left the gateway that must not have."""
    total: Counter[str] = Counter()
    for i in (1, 2, 3):
        for name in ("lan_leak", "spoofed"):
            out = sh(lab, f"isp{i}", "nft", "-j", "list", "counter", "ip6", "lab", name)
            total[name] += next(o["counter"]["packets"] for o in json.loads(out)["nftables"] if "counter" in o)
    return dict(total)


def v6_state(gw: LabGateway) -> dict[str, str]:
    """IPv6 rules, routes of every table and the IPv6 sysctls wanlb may touch."""
    keys = ["net.ipv6.conf.all.forwarding", *(f"net.ipv6.conf.wan{i}.accept_ra" for i in (1, 2, 3))]
    return {
        "rules": gw.run("ip", "-6", "rule", "show"),
        "routes": gw.run("ip", "-6", "route", "show", "table", "all"),
        "sysctls": gw.run("sysctl", *keys),
    }


# --- balancing and translation ------------------------------------------------------------------------


def test_ipv6_is_spread_by_weight_and_netmapped_with_the_host_bits_kept(lab: Lab, gw: LabGateway) -> None:
    before = leaks_and_spoofs(lab)
    weights = {"isp1": 2, "isp2": 1, "isp3": 1}

    def edit(d: dict[str, Any]) -> None:
        for isp in d["isps"]:
            isp["weight"] = weights[isp["name"]]

    start(gw, edit)
    seen = connect6(lab, "c1", 1000) + connect6(lab, "c2", 1000)
    assert not [s for s in seen if s.startswith("error:")], Counter(seen)
    per_isp = Counter(isp_for_source(s) for s in seen)
    for isp, weight in weights.items():
        share = 100 * per_isp[isp] / len(seen)
        assert abs(share - 100 * weight / 4) <= 3, per_isp
    # netmap: ISP i's prefix with the client's own host bits
    for client, k in (("c1", 1), ("c2", 2)):
        host = int(ipaddress.IPv6Address(client6_addr(k))) & ((1 << 64) - 1)
        wanted = {str(ipaddress.IPv6Network(isp6_prefix(i))[host]) for i in (1, 2, 3)}
        got = set(connect6(lab, client, 30))
        assert got <= wanted and len(got) == 3, (got, wanted)
    assert leaks_and_spoofs(lab) == before  # no ULA source and no foreign prefix left a WAN


def test_masquerade_makes_the_wan_address_the_source(lab: Lab, gw: LabGateway) -> None:
    def edit(d: dict[str, Any]) -> None:
        d["isps"][1]["ipv6"] = {"mode": "masquerade"}  # isp2
        no_ipv6(d["isps"][2])  # isp3 carries no IPv6: it gets none

    start(gw, edit)
    seen = Counter(connect6(lab, "c1", 60))
    host = int(ipaddress.IPv6Address(client6_addr(1))) & ((1 << 64) - 1)
    assert seen == {str(ipaddress.IPv6Network(isp6_prefix(1))[host]): 30, wan6_addr(2): 30}, seen


def test_a_routed_prefix_leaves_through_its_isp_untranslated_and_ula_is_balanced_over_the_others(
    lab: Lab, gw: LabGateway
) -> None:
    """isp3 routes 2001:db8:300::/64 to the gateway (as a delegated prefix): with `mode: routed` it is on the
    LAN, c1 holds 2001:db8:300::11 beside its ULA. Connections from the routed address leave through isp3
    with that address; ULA ones are netmapped over isp1 and isp2 only; nothing leaks or is spoofed."""
    routed = isp6_prefix(3)
    sh(lab, "gw", "ip", "-6", "addr", "add", "2001:db8:300::1/64", "dev", "lan0", "nodad")
    sh(lab, "c1", "ip", "-6", "addr", "add", "2001:db8:300::11/64", "dev", "eth0", "nodad")
    try:

        def edit(d: dict[str, Any]) -> None:
            d["lan"]["ipv6_prefixes"].append(routed)
            d["isps"][2]["ipv6"] = {"mode": "routed", "prefix": routed}

        before = leaks_and_spoofs(lab)
        start(gw, edit)
        from_routed = connect6(lab, "c1", 20, source="2001:db8:300::11")
        assert from_routed == ["2001:db8:300::11"] * 20, from_routed
        # (a host prefers its global address to its ULA for a global destination: the ULA is asked for)
        from_ula = Counter(isp_for_source(s) for s in connect6(lab, "c1", 20, source=client6_addr(1)))
        assert from_ula == {"isp1": 10, "isp2": 10}, from_ula
        rules = gw.run("ip", "-6", "rule", "show")
        assert f"from {routed} lookup 203 proto 119" in rules, rules
        assert leaks_and_spoofs(lab) == before
    finally:
        sh(lab, "c1", "ip", "-6", "addr", "del", "2001:db8:300::11/64", "dev", "eth0")
        sh(lab, "gw", "ip", "-6", "addr", "del", "2001:db8:300::1/64", "dev", "lan0")


def test_prefix_from_follows_a_changed_prefix_and_leaves_the_other_isps_connections(lab: Lab, gw: LabGateway) -> None:
    """isp1 netmaps to whatever global /64 is on the gateway's `lo` (as a delegated prefix would be put on
    an interface); the prefix changes within isp1's /56 delegation and then goes: new connections follow
    (within a resync), streams held on isp2 and isp3 never break."""
    host = int(ipaddress.IPv6Address(client6_addr(1))) & ((1 << 64) - 1)
    sh(lab, "gw", "ip", "-6", "addr", "add", "2001:db8:100::1/64", "dev", "lo")
    holds: list[subprocess.Popen[str]] = []
    try:
        start(gw, lambda d: d["isps"][0].__setitem__("ipv6", {"mode": "netmap", "prefix_from": "lo"}))
        assert str(ipaddress.IPv6Network("2001:db8:100::/64")[host]) in connect6(lab, "c1", 3)
        # The gateway's own address in the prefix is the gateway's: not taken for a LAN host's, not dropped.
        assert refused(lab, "inet", "2001:db8:100::1")  # its TCP stack answered (RST), through isp1
        for _ in range(3):  # numgen inc: one stream per ISP
            holds.append(lab.popen("c1", ["python3", "-c", _HOLD, SERVER6], stdout=subprocess.PIPE, text=True))
        placed = {isp_for_source(json.loads(h.stdout.readline())): h for h in holds}  # type: ignore[union-attr]
        assert set(placed) == {"isp1", "isp2", "isp3"}, placed
        sh(lab, "gw", "ip", "-6", "addr", "del", "2001:db8:100::1/64", "dev", "lo")
        sh(lab, "gw", "ip", "-6", "addr", "add", "2001:db8:100:1::1/64", "dev", "lo")
        moved = str(ipaddress.IPv6Network("2001:db8:100:1::/64")[host])
        started = time.monotonic()
        while moved not in connect6(lab, "c1", 3):
            assert time.monotonic() - started < 12, "the new prefix was not followed within two resyncs"
            time.sleep(0.2)
        sh(lab, "gw", "ip", "-6", "addr", "del", "2001:db8:100:1::1/64", "dev", "lo")  # no prefix: no IPv6
        started = time.monotonic()
        while "isp1" in {isp_for_source(s) for s in connect6(lab, "c1", 6)}:
            assert time.monotonic() - started < 12, "isp1 still takes IPv6 without a prefix"
            time.sleep(0.2)
        for isp in ("isp2", "isp3"):
            lines = [placed[isp].stdout.readline().strip() for _ in range(2)]  # type: ignore[union-attr]
            assert not [ln for ln in lines if ln.startswith("error:")], (isp, lines)
    finally:
        for h in holds:
            h.kill()
            h.wait()
        for addr in ("2001:db8:100::1/64", "2001:db8:100:1::1/64"):
            lab.run("gw", ["ip", "-6", "addr", "del", addr, "dev", "lo"], capture_output=True)


def test_ipv6_follows_hash_rules_and_sticky_like_ipv4(lab: Lab, gw: LabGateway) -> None:
    """The policy layer applies to IPv6: `hash` keeps a client–server pair on one ISP and spreads pairs; a
    port rule pins IPv6 too; sticky by source keeps a client on its ISP until that ISP's IPv6 dies."""
    extra = [f"fd00:77::1:{k:x}" for k in range(1, 41)]  # more client addresses on c1: 40 pairs
    for addr in extra:
        sh(lab, "c1", "ip", "-6", "addr", "add", f"{addr}/64", "dev", "eth0", "nodad")
    try:
        start(gw, lambda d: d.update(balance={"algorithm": "hash", "hash": {"fields": ["src", "dst"]}}))
        assert len({isp_for_source(s) for s in connect6(lab, "c1", 60, source=client6_addr(1))}) == 1
        per_pair = {a: {isp_for_source(s) for s in connect6(lab, "c1", 3, source=a)} for a in extra}
        assert all(len(isps) == 1 for isps in per_pair.values()), per_pair
        assert len(set.union(*per_pair.values())) == 3, per_pair  # 40 pairs spread over the three ISPs
        gw.stop(cleanup=True)

        ef = {"name": "ef", "dscp": ["ef"], "via": "isp1"}  # DSCP (the traffic class), an IPv6 source, a port
        pin = {"name": "pin6", "src": [extra[0]], "via": "isp2"}
        web = {"name": "web", "proto": "tcp", "dport": [HTTP_PORT], "via": "isp3"}
        start(gw, lambda d: d.update(rules=[ef, pin, web]))
        assert {isp_for_source(s) for s in connect6(lab, "c1", 10, source=extra[0], tclass=46 << 2)} == {"isp1"}
        assert {isp_for_source(s) for s in connect6(lab, "c1", 20, source=extra[0])} == {"isp2"}
        assert {isp_for_source(s) for s in connect6(lab, "c1", 20, source=client6_addr(1))} == {"isp3"}
        assert {isp_for_source(s) for s in connect4(lab, "c1", 20)} == {"isp3"}
        hits = {r["name"]: r["hits"] for r in gw.status()["rules"]}
        assert hits == {"ef": 10, "pin6": 20, "web": 40}, hits
        gw.stop(cleanup=True)

        start(gw, lambda d: d.update(balance={"algorithm": "weighted", "sticky": {"by": "source", "timeout": "10m"}}))
        first = {isp_for_source(s) for s in connect6(lab, "c1", 30)}
        assert len(first) == 1, first
        (pinned,) = first
        lab.fail(pinned, "blackhole", family=6)
        gw.wait_event(pinned, "down", timeout=10, family="6")
        after = {isp_for_source(s) for s in connect6(lab, "c1", 30)}
        assert len(after) == 1 and pinned not in after, (pinned, after)
    finally:
        for addr in extra:
            lab.run("c1", ["ip", "-6", "addr", "del", f"{addr}/64", "dev", "eth0"], capture_output=True)


def _set(lab: Lab, name: str) -> set[str]:
    out = sh(lab, "gw", "nft", "-j", "list", "set", "inet", "wanlb", name)
    elems = json.loads(out)["nftables"][1]["set"].get("elem", [])
    return {e["elem"]["val"] if isinstance(e, dict) else e for e in elems}


def test_a_domain_rule_pins_the_names_ipv6_addresses_from_aaaa_records(lab: Lab, gw: LabGateway) -> None:
    """dnsmasq in inet serves A and AAAA for video.wanlb.test and only A for v4only.wanlb.test: the rule's
    IPv6 set holds the AAAA address, IPv6 connections to it leave through the rule's ISP while other IPv6
    destinations are balanced, IPv4 to the A address is pinned too; the A-only name shows IPv6 ``none``."""
    resolver, domain6 = "203.0.113.53", SERVER6_ADDRS[1]
    hosts = lab.dir / "dns6-hosts"
    hosts.write_text(f"{domain6} video.wanlb.test\n{HTTP_ADDR} video.wanlb.test\n198.51.100.99 v4only.wanlb.test\n")
    ready = lab.dir / "http-domain6.ready"
    sh(lab, "inet", "ip", "addr", "add", f"{resolver}/32", "dev", "lo")
    procs = [
        lab.popen("inet", ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                           f"--addn-hosts={hosts}", "--local-ttl=60", "--local=/wanlb.test/",
                           f"--listen-address={resolver}", "--bind-interfaces", "--pid-file="],
                  label="dnsmasq6", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        lab.popen("inet", python_module("wanlb.lab.servers", "http", "--listen", f"[{domain6}]:{HTTP_PORT}",
                                        "--ready-file", str(ready)), label="http-domain6"),
    ]  # fmt: skip
    try:
        wait_file(ready, "the second IPv6 HTTP server")
        rule = {"name": "video", "dst_domains": ["video.wanlb.test", "v4only.wanlb.test"], "via": "isp3"}
        start(gw, lambda d: d.update(dns={"servers": [resolver], "timeout": "1s"}, rules=[rule]))
        deadline = time.monotonic() + 30
        while _set(lab, "dom6_video") != {domain6} or _set(lab, "dom_video") != {HTTP_ADDR, "198.51.100.99"}:
            assert time.monotonic() < deadline, (_set(lab, "dom_video"), _set(lab, "dom6_video"))
            time.sleep(0.1)
        assert {isp_for_source(s) for s in connect6(lab, "c1", 20, dst=domain6)} == {"isp3"}
        assert {isp_for_source(s) for s in connect6(lab, "c1", 30)} == {"isp1", "isp2", "isp3"}  # not the name's
        assert {isp_for_source(s) for s in connect4(lab, "c1", 10)} == {"isp3"}
        assert gw.status()["rules"][0]["hits"] == 30  # 20 IPv6 + 10 IPv4 connections, one rule
        domains = gw.status()["domains"]
        video, v4only = domains["video.wanlb.test"], domains["v4only.wanlb.test"]
        assert video["ipv6"]["addresses"] == [domain6] and video["ipv6"]["state"] == "ok", video
        assert video["addresses"] == [HTTP_ADDR] and video["state"] == "ok", video
        assert v4only["state"] == "ok" and v4only["ipv6"]["state"] == "none", v4only
        assert "no AAAA record" in v4only["ipv6"]["error"]
    finally:
        for proc in procs:
            proc.kill()
        lab.run("inet", ["ip", "addr", "del", f"{resolver}/32", "dev", "lo"], capture_output=True)


def test_dnsmasq_on_the_gateway_can_feed_a_domain_rules_ipv6_set(lab: Lab, gw: LabGateway) -> None:
    """``dns.resolve: false`` with the ``nftset=`` line docs/configuration.md gives for IPv6: dnsmasq in the
    gateway answers a client's AAAA query (forwarded to a server in inet) and puts the address into
    ``dom6_<rule>``; IPv6 connections to it then leave through the rule's ISP."""
    upstream, domain6 = "203.0.113.55", SERVER6_ADDRS[1]
    hosts = lab.dir / "dns6-hosts-2"
    hosts.write_text(f"{domain6} video.wanlb.test\n")
    ready = lab.dir / "http-domain6-2.ready"
    sh(lab, "inet", "ip", "addr", "add", f"{upstream}/32", "dev", "lo")
    common = ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-hosts", "--bind-interfaces", "--pid-file="]
    sets = "4#inet#wanlb#dom_video,6#inet#wanlb#dom6_video"
    procs = [
        lab.popen("inet", [*common, "--no-resolv", f"--addn-hosts={hosts}", "--local=/wanlb.test/",
                           f"--listen-address={upstream}"], label="dns6-upstream", stdout=-3, stderr=-3),
        lab.popen("gw", [*common, "--no-resolv", f"--server={upstream}", "--listen-address=192.168.77.1",
                         f"--nftset=/wanlb.test/{sets}"], label="dns6-gw", stdout=-3, stderr=-3),
        lab.popen("inet", python_module("wanlb.lab.servers", "http", "--listen", f"[{domain6}]:{HTTP_PORT}",
                                        "--ready-file", str(ready)), label="http-domain6-2"),
    ]  # fmt: skip
    try:
        wait_file(ready, "the second IPv6 HTTP server")
        rule = {"name": "video", "dst_domains": ["video.wanlb.test"], "via": "isp2"}
        start(gw, lambda d: d.update(dns={"resolve": False}, rules=[rule]))
        assert _set(lab, "dom6_video") == set()  # nothing until a client asks
        aaaa = (
            "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(3);"
            "q=b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x05video\\x05wanlb\\x04test\\x00"
            "\\x00\\x1c\\x00\\x01';s.sendto(q,('192.168.77.1',53));print(len(s.recv(512)))"
        )
        sh(lab, "c1", "python3", "-c", aaaa)
        deadline = time.monotonic() + 5
        while _set(lab, "dom6_video") != {domain6}:
            assert time.monotonic() < deadline, _set(lab, "dom6_video")
            time.sleep(0.1)
        assert {isp_for_source(s) for s in connect6(lab, "c1", 20, dst=domain6)} == {"isp2"}
    finally:
        for proc in procs:
            proc.kill()
        lab.run("inet", ["ip", "addr", "del", f"{upstream}/32", "dev", "lo"], capture_output=True)


def test_inbound_reaches_the_lan_host_through_its_netmapped_address_only_where_opted_in(
    lab: Lab, gw: LabGateway
) -> None:
    """isp1 has ``ipv6.inbound``: a connection from the internet to c1's address in isp1's prefix reaches c1
    (which sees the internet's address), is marked isp1's and its replies leave through isp1 translated
    back; c1's address in isp2's prefix (no inbound) stays unreachable, its SYNs dropped at the gateway;
    nothing leaves a WAN with a source the ISP did not give (no ULA, no bounced internet address)."""
    before = leaks_and_spoofs(lab)
    ready = lab.dir / "c1-server6.ready"
    server = lab.popen("c1", python_module("wanlb.lab.servers", "http", "--listen", "[::]:9010", "--ready-file",
                                           str(ready)), label="c1-server6")  # fmt: skip
    try:
        wait_file(ready, "the server on c1")
        start(gw, lambda d: d["isps"][0]["ipv6"].update(inbound=True))
        host = int(ipaddress.IPv6Address(client6_addr(1))) & ((1 << 64) - 1)
        mapped = {i: str(ipaddress.IPv6Network(isp6_prefix(i))[host]) for i in (1, 2)}
        seen = connect6(lab, "inet", 10, dst=mapped[1], port=9010)
        assert not [s for s in seen if s.startswith("error:")] and len(set(seen)) == 1, seen
        assert not seen[0].startswith("fd00:"), seen  # c1 sees the internet's address, untranslated
        marks = sh(lab, "gw", "conntrack", "-L", "-f", "ipv6", "-p", "tcp", "--dport", "9010")
        isp1 = next(i["mark"] for i in gw.status()["isps"] if i["name"] == "isp1")
        assert marks.count(f"mark={isp1} ") == 10 and f"src={client6_addr(1)} " in marks, marks  # reply: from c1
        assert connect6(lab, "inet", 1, dst=mapped[2], port=9010)[0].startswith("error:")  # not opted in:
        out = sh(lab, "gw", "nft", "-j", "list", "counter", "inet", "wanlb", "unsolicited_dropped")
        dropped = next(o["counter"]["packets"] for o in json.loads(out)["nftables"] if "counter" in o)
        assert dropped >= 1  # dropped at the gateway, not bounced out of wan2 with the internet's source
        assert leaks_and_spoofs(lab) == before
    finally:
        server.kill()


def test_neighbour_discovery_works_with_wanlb_running_and_is_never_marked(lab: Lab, gw: LabGateway) -> None:
    start(gw)
    news = {i: gw.nft_counter(f"isp_isp{i}_new")["packets"] for i in (1, 2, 3)}
    for node in ("gw", "c1"):
        sh(lab, node, "ip", "-6", "neigh", "flush", "all")
    # A TCP connect to a closed port is refused only if neighbour discovery found the peer (no ping here).
    assert refused(lab, "c1", "fd00:77::1")  # the client resolves the gateway
    assert refused(lab, "gw", client6_addr(1))  # the gateway resolves the client
    for i in (1, 2, 3):  # and the ISP routers' link addresses
        assert refused(lab, "gw", f"2001:db8:{i}::1")
    neigh = sh(lab, "gw", "ip", "-6", "neigh", "show")
    assert client6_addr(1) in neigh and "2001:db8:1::1" in neigh, neigh
    # pings to the gateway itself and ND are never balanced: no NEW connection was counted on any ISP
    assert {i: gw.nft_counter(f"isp_isp{i}_new")["packets"] for i in (1, 2, 3)} == news


def test_the_gateways_own_ipv6_service_answers_through_the_wan_it_was_asked_on(lab: Lab, gw: LabGateway) -> None:
    """A connection from the internet to the gateway's address on WAN i is answered through WAN i (its ct
    mark is restored in output), not through the main table's default (isp1, whose anti-spoofing would drop
    the other WANs' sources)."""
    start(gw)
    flag = lab.dir / "gw-http6.ready"
    flag.unlink(missing_ok=True)
    server = lab.popen("gw", python_module("wanlb.lab.servers", "http", "--listen", "[::]:8081",
                                           "--ready-file", str(flag)), label="gw-http6")  # fmt: skip
    try:
        wait_file(flag, "the gateway's IPv6 server")
        for i in (1, 2, 3):
            seen = connect6(lab, "inet", 3, dst=wan6_addr(i), port=8081)
            assert seen == [f"2001:db8:ff:{i}::2"] * 3, (i, seen)  # inet's address on its link to ISP i
    finally:
        server.kill()
        server.wait()


def test_the_gateways_own_ipv6_connections_are_balanced_with_the_wans_address(lab: Lab, gw: LabGateway) -> None:
    """`local_traffic`: the gateway's own new IPv6 connections are spread by weight like the LAN's; each leaves
    with the address of the WAN it was given (masqueraded: it picked its source for the main table's
    route), which that ISP's anti-spoofing accepts."""
    start(gw)
    before = leaks_and_spoofs(lab)
    counts = lab.traffic(connections=30, parallel=1, nodes=["gw"], target=f"[{SERVER6}]:{HTTP_PORT}")
    assert counts == {"isp1": 10, "isp2": 10, "isp3": 10, "other": 0, "failed": 0}, counts
    assert leaks_and_spoofs(lab) == before


# A router advertisement (router lifetime 1800 s, no options) from ISP 1's router to all nodes on cust0.
_RA = """
import socket, struct
idx = socket.if_nametoindex("cust0")
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, idx)
s.sendto(struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0), ("ff02::1", 0, 0, idx))
"""


def test_router_advertisements_reach_a_forwarding_gateway_while_wanlb_runs(lab: Lab, gw: LabGateway) -> None:
    """A router forwards IPv6, and the kernel ignores router advertisements on an interface with accept_ra 1
    then; wanlb sets accept_ra 2 on its IPv6 WANs so an ISP's advertisements still give it a default route
    (as they must when the ISP numbers its link by SLAAC), and gives the original back on cleanup."""
    learnt = ["ip", "-6", "route", "show", "dev", "wan1", "proto", "ra"]
    assert sh(lab, "gw", "sysctl", "-n", "net.ipv6.conf.wan1.accept_ra").strip() == "1"
    sh(lab, "isp1", "python3", "-c", _RA)
    time.sleep(0.3)
    assert "default" not in sh(lab, "gw", *learnt)  # the lab's forwarding gateway ignores it without wanlb
    start(gw)
    sh(lab, "isp1", "python3", "-c", _RA)
    deadline = time.monotonic() + 5
    while "default via fe80::" not in sh(lab, "gw", *learnt):
        assert time.monotonic() < deadline, "the router advertisement was not taken"
        time.sleep(0.05)
    gw.stop(cleanup=True)
    assert sh(lab, "gw", "sysctl", "-n", "net.ipv6.conf.wan1.accept_ra").strip() == "1"
    sh(lab, "gw", "ip", "-6", "route", "flush", "dev", "wan1", "proto", "ra")


# --- connections stay where they started -------------------------------------------------------------


def test_a_long_lived_ipv6_stream_keeps_its_isp_across_reload_and_kill_9(lab: Lab, gw: LabGateway) -> None:
    start(gw)
    hold = lab.popen("c1", ["python3", "-c", _HOLD, SERVER6], label="hold6", stdout=subprocess.PIPE, text=True)
    try:
        assert hold.stdout is not None
        src = json.loads(hold.stdout.readline())
        isp = isp_for_source(src)
        assert isp is not None, src
        gw.write(lambda d: d["isps"][0].__setitem__("weight", 5))  # an edit of weights: a real reload
        assert gw.reload()["ok"]
        gw.kill9()
        time.sleep(1)
        gw.start()
        gw.wait_for(ALL_UP)
        assert gw.reload()["ok"]
        lines = [hold.stdout.readline().strip() for _ in range(3)]  # three more seconds of stream
        assert not [ln for ln in lines if ln.startswith("error:")], lines
        assert int(lines[-1]) > int(lines[0]) > 0, lines
        # a new connection of the same client may go elsewhere; the held one never moved (it would break)
        marks = sh(lab, "gw", "conntrack", "-L", "-f", "ipv6", "-p", "tcp", "--dport", "5001")
        mark = {isp["mark"]: isp["name"] for isp in gw.status()["isps"]}
        held = [ln for ln in marks.splitlines() if "ESTABLISHED" in ln]
        assert len(held) == 1 and mark[int(held[0].split("mark=")[1].split()[0]) & 0xFF00] == isp, marks
    finally:
        hold.kill()
        hold.wait()


def test_an_isp_failure_moves_ipv6_and_flushes_its_entries(lab: Lab, gw: LabGateway) -> None:
    start(gw)
    assert {isp_for_source(s) for s in connect6(lab, "c1", 30)} == {"isp1", "isp2", "isp3"}
    lab.fail("isp2", "blackhole")  # both families
    gw.wait_event("isp2", "down", timeout=10, family="4")
    gw.wait_event("isp2", "down", timeout=10, family="6")
    assert entries(lab, "ipv6", 0x200) == 0  # the flush took isp2's IPv6 entries
    seen = connect6(lab, "c1", 40)
    assert Counter(isp_for_source(s) for s in seen) == {"isp1": 20, "isp3": 20}, Counter(seen)


def test_ipv6_dying_alone_moves_and_flushes_only_ipv6(lab: Lab, gw: LabGateway) -> None:
    """Blackhole isp2's IPv6 only: its IPv6 health goes down, its IPv4 stays up; new IPv6 connections avoid
    it, new IPv4 ones still use it; its IPv6 entries are flushed, its IPv4 entries are not."""
    start(gw)
    mark = next(i["mark"] for i in gw.status()["isps"] if i["name"] == "isp2")
    assert "isp2" in {isp_for_source(s) for s in connect4(lab, "c1", 30)}
    assert "isp2" in {isp_for_source(s) for s in connect6(lab, "c1", 30)}
    v4_before = entries(lab, "ipv4", mark)
    assert v4_before > 0 and entries(lab, "ipv6", mark) > 0  # closed connections linger in TIME_WAIT
    lab.fail("isp2", "blackhole", family=6)
    down = gw.wait_event("isp2", "down", timeout=10, family="6")
    assert "no answer" in down["reason"] or "2001:db8:f::" in down["reason"], down
    isp2 = next(i for i in gw.status()["isps"] if i["name"] == "isp2")
    assert (isp2["status"], isp2["ipv6"]["status"], isp2["ipv6"]["own_health"]) == ("up", "down", True), isp2
    assert entries(lab, "ipv6", mark) == 0
    assert entries(lab, "ipv4", mark) >= v4_before  # not flushed (and still in use)
    assert "isp2" not in {isp_for_source(s) for s in connect6(lab, "c1", 30)}
    assert "isp2" in {isp_for_source(s) for s in connect4(lab, "c1", 30)}
    assert not [e for e in gw.status()["events"] if e["isp"] == "isp2" and e["family"] != "6"]
    lab.heal("isp2")
    gw.wait_event("isp2", "up", timeout=10, family="6")
    assert "isp2" in {isp_for_source(s) for s in connect6(lab, "c1", 30)}


def test_a_happy_eyeballs_client_keeps_working_while_one_family_of_its_isp_dies(lab: Lab, gw: LabGateway) -> None:
    """curl with a name of both families (IPv6 first, IPv4 after 200 ms if IPv6 has not answered): isp2's IPv6
    dies; every request still completes, the first ones by falling back to IPv4 when their IPv6 attempt was
    balanced onto isp2 before its IPv6 was declared down, the later ones over IPv6 through isp1 and isp3."""
    start(gw)
    resolve = f"dual.test:{HTTP_PORT}:[{SERVER6}],{HTTP_ADDR}"
    curl = ["curl", "-s", "--max-time", "5", "--resolve", resolve, f"http://dual.test:{HTTP_PORT}/"]
    lab.fail("isp2", "blackhole", family=6)
    seen = []
    for _ in range(30):
        out = lab.run("c1", curl, capture_output=True, text=True)
        assert out.returncode == 0, (out.returncode, out.stderr, seen)
        seen.append(json.loads(out.stdout)["src"])
    gw.wait_event("isp2", "down", timeout=10, family="6")
    later = [json.loads(lab.run("c1", curl, capture_output=True, text=True, check=True).stdout)["src"]
             for _ in range(12)]  # fmt: skip
    assert all(":" in src for src in later), later  # IPv6 again, around the dead family
    assert {isp_for_source(src) for src in later} == {"isp1", "isp3"}, later


def test_path_mtu_discovery_works_through_netmap_and_masquerade(lab: Lab, gw: LabGateway) -> None:
    """ISP 1's uplink gets MTU 1280: the client's 1500-byte packets draw Packet Too Big from ISP 1's router,
    addressed to the translated source; conntrack maps it back, the client learns the smaller path MTU and
    a 2 MB upload completes (with the error lost it would stall: nothing else shrinks the segments)."""
    sh(lab, "isp1", "ip", "link", "set", ISP_UPLINK_IF, "mtu", "1280")
    try:
        for mode in ({"mode": "netmap", "prefix": isp6_prefix(1)}, {"mode": "masquerade"}):

            def only_isp1(d: dict[str, Any], mode: dict[str, Any] = mode) -> None:
                d["isps"][0]["ipv6"] = mode
                for isp in d["isps"][1:]:
                    no_ipv6(isp)

            start(gw, only_isp1)
            sh(lab, "c1", "ip", "-6", "route", "flush", "cache")
            size = 2_000_000
            got, mtu = sh(lab, "c1", "python3", "-c", _UPLOAD, str(size), SERVER6).split()
            assert (int(got), int(mtu)) == (size, 1280), (got, mtu, mode)
            gw.stop(cleanup=True)
    finally:
        sh(lab, "isp1", "ip", "link", "set", ISP_UPLINK_IF, "mtu", "1500")


def test_stop_cleanup_leaves_ipv6_rules_routes_and_sysctls_as_before(lab: Lab, gw: LabGateway) -> None:
    before = v6_state(gw)
    start(gw)
    during = v6_state(gw)
    assert "fwmark 0x100/0xff00 lookup 201" in during["rules"], during["rules"]
    assert "default via 2001:db8:1::1 dev wan1 table 201 proto 119" in during["routes"], during["routes"]
    gw.stop(cleanup=True)
    assert v6_state(gw) == before
