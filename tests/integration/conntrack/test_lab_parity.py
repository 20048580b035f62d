"""Parity on a real table: the lab gateway, with the wanlb daemon NATing real traffic.

The gateway namespace gets real NATed TCP (ESTABLISHED, TIME_WAIT, CLOSE,
SYN_SENT), UDP and ICMP connections from the clients and from itself, then
synthetic entries (IPv6, zones, unmarked, …) top it up past 5,000.  The
comparisons need a table that holds still between the two listings, so the
gateway's conntrack timeouts are raised before any traffic and every
long-lived socket stays idle.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from conftest import Netns, missing_requirement
from ctparity import json_parity

from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab

pytestmark = pytest.mark.root

MARKS = {"isp1": 0x100, "isp2": 0x200, "isp3": 0x300}  # the lab config's marks (auto-assigned, mask 0xff00)
MASK = 0xFF00
SYNTHETIC = 2500
HOLD_ADDR = "203.0.113.30"  # on inet's loopback: the helper below listens there
HELD, RESET, SILENT, UDP_FLOWS, PINGS = 40, 30, 20, 60, 6
_STILL = {
    f"net.netfilter.nf_conntrack_{name}": "7200"
    for name in (
        "tcp_timeout_time_wait", "tcp_timeout_close", "tcp_timeout_syn_sent", "tcp_timeout_fin_wait",
        "tcp_timeout_close_wait", "tcp_timeout_last_ack", "tcp_timeout_syn_recv",
        "udp_timeout", "udp_timeout_stream", "icmp_timeout",
    )
}  # fmt: skip

# inet: hold TCP connections open without a byte sent, echo UDP, drop SYNs to port 7002.
_SERVER = textwrap.dedent(
    f"""
    import selectors, socket, subprocess
    subprocess.run(["nft", "add table inet wlct; add chain inet wlct in {{ type filter hook input priority 0; }}; "
                    "add rule inet wlct in tcp dport 7002 drop"], check=True)
    tcp = socket.create_server(("{HOLD_ADDR}", 7000), backlog=256)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("{HOLD_ADDR}", 7003))
    sel, held = selectors.DefaultSelector(), []
    sel.register(tcp, selectors.EVENT_READ)
    sel.register(udp, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            if key.fileobj is tcp:
                held.append(tcp.accept()[0])
            else:
                data, peer = udp.recvfrom(2048)
                udp.sendto(data, peer)
    """
)

# a client: held connections (ESTABLISHED), reset ones (CLOSE), silent ones (SYN_SENT), UDP flows
_CLIENT = textwrap.dedent(
    f"""
    import socket, struct, time
    held = [socket.create_connection(("{HOLD_ADDR}", 7000)) for _ in range({HELD})]
    for _ in range({RESET}):
        s = socket.create_connection(("{HOLD_ADDR}", 7000))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # a RST after the handshake; a RST answering the SYN would delete the entry instead
    silent = [socket.socket() for _ in range({SILENT})]
    for s in silent:
        s.setblocking(False)
        s.connect_ex(("{HOLD_ADDR}", 7002))
    time.sleep(0.3)
    for s in silent:
        s.close()  # before the first SYN retransmission: one packet each, no reply
    for _ in range({UDP_FLOWS}):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(2)
            u.sendto(b"x", ("{HOLD_ADDR}", 7003))
            u.recv(16)
    print("ready", flush=True)
    time.sleep(3600)
    """
)


@dataclass
class LabTable:
    lab: Lab
    gw: Netns  # the gateway namespace, driven like the scratch namespaces of the other tests

    @property
    def config(self) -> tuple[str, ...]:
        return ("--config", str(self.lab.config_path))


def _every_isp_up(data: dict) -> None:
    for isp in data["isps"]:
        isp.pop("health", None)  # no probes: they would add entries between two listings


def _start(lab: Lab, node: str, script: str) -> None:
    """Run a helper script in a node and wait for its "ready" line (lab teardown stops it)."""
    proc = lab.popen(node, [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", f"helper in {node} failed"


def _real_traffic(lab: Lab) -> None:
    report = lab.traffic(connections=2400, parallel=48)
    assert report["failed"] == 0 and report["other"] == 0, report
    report = lab.traffic(connections=300, parallel=16, nodes=["gw"])  # the gateway's own, NATed too
    assert report["failed"] == 0, report
    _start(lab, "inet", _SERVER)
    for client in lab.clients:
        _start(lab, client, _CLIENT)
    for i in range(PINGS):
        assert lab.ping(lab.clients[i % 2], f"203.0.113.{10 * (1 + i % 4)}")


@pytest.fixture(scope="module")
def table() -> Iterator[LabTable]:
    if reason := missing_requirement():
        pytest.skip(reason)
    with Lab.up(name=f"ct{os.getpid()}{secrets.token_hex(2)}", isps=3, clients=2) as lab:
        gw = Netns(lab.ns("gw"))
        gw.run("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1", "net.netfilter.nf_conntrack_timestamp=1",
               *(f"{k}={v}" for k, v in _STILL.items()))  # fmt: skip
        daemon = LabGateway(lab)
        daemon.write(_every_isp_up)
        daemon.start()
        try:
            _real_traffic(lab)
            gw.fill(SYNTHETIC, mixed=True)
            time.sleep(1.0)  # the last FIN/ACKs and echo replies have passed
            yield LabTable(lab, gw)
        finally:
            daemon.stop()


def _real(objs: list[dict]) -> list[dict]:
    """Entries of lab traffic: a lab client or the gateway opened them (synthetic ones use other addresses)."""
    return [o for o in objs if o["orig"]["src"].startswith(("192.168.77.", "100.64."))]


def _isp_of(mark: int | None) -> str | None:
    return next((name for name, m in MARKS.items() if m == (mark or 0) & MASK), None)


def test_every_entry_equals_conntrack_and_the_table_is_real_and_mixed(table: LabTable) -> None:
    objs = json_parity(table.gw, [], [], table.config)
    real = _real(objs)
    assert len(objs) >= 5000 and len(real) >= len(objs) / 2
    assert {"tcp", "udp", "icmp"} <= {o["proto"] for o in real}
    assert {"ESTABLISHED", "TIME_WAIT", "CLOSE", "SYN_SENT"} <= {o["state"] for o in real}
    assert "icmpv6" in {o["proto"] for o in objs} and any(o["zone"] for o in objs)
    natted = [o for o in real if o["reply"]["dst"] != o["orig"]["src"]]
    assert len(natted) >= 2500 and {o["isp"] for o in natted} == set(MARKS)
    assert all(o["isp"] == _isp_of(o["mark"]) for o in objs)


# (ours, conntrack's, whether lab traffic must be among the matches)
LAB_FILTERS = [
    (["-p", "tcp"], ["-p", "tcp"], True),
    (["-p", "udp"], ["-p", "udp"], True),
    (["-p", "icmp"], ["-p", "icmp"], True),
    (["-p", "icmpv6"], ["-p", "icmpv6"], False),
    (["-f", "ipv4"], ["-f", "ipv4"], True),
    (["-f", "ipv6"], ["-f", "ipv6"], False),
    (["-s", "192.168.77.11"], ["-s", "192.168.77.11"], True),
    (["-d", HOLD_ADDR], ["-d", HOLD_ADDR], True),
    (["-s", "192.168.77.12", "-d", "203.0.113.10"], ["-s", "192.168.77.12", "-d", "203.0.113.10"], True),
    (["-p", "tcp", "--dport", "7000"], ["-p", "tcp", "--dport", "7000"], True),
    (["-p", "udp", "--dport", "7003"], ["-p", "udp", "--dport", "7003"], True),
    (["--state", "ESTABLISHED"], ["-p", "tcp", "--state", "ESTABLISHED"], True),
    (["--state", "TIME_WAIT"], ["-p", "tcp", "--state", "TIME_WAIT"], True),
    (["--state", "SYN_SENT"], ["-p", "tcp", "--state", "SYN_SENT"], True),
    (["--state", "CLOSE"], ["-p", "tcp", "--state", "CLOSE"], True),
    (["--isp", "isp2"], ["-m", "0x200/0xff00"], True),
    (["--isp", "isp3", "-p", "udp"], ["-m", "0x300/0xff00", "-p", "udp"], True),
    (["--mark", "0x100/0xff00"], ["-m", "0x100/0xff00"], True),
    (["--mark", "0"], ["-m", "0"], False),
    (["--zone", "2"], ["-w", "2"], False),
]


@pytest.mark.parametrize(("ours", "theirs", "real"), LAB_FILTERS, ids=[" ".join(f[0]) for f in LAB_FILTERS])
def test_filtered_entries_equal_conntrack(table: LabTable, ours: list[str], theirs: list[str], real: bool) -> None:
    objs = json_parity(table.gw, ours, theirs, table.config)
    assert _real(objs) if real else objs


def test_sport_filter_on_real_connections(table: LabTable) -> None:
    held = json_parity(table.gw, ["-p", "tcp", "--dport", "7000"], ["-p", "tcp", "--dport", "7000"])
    sport = str(held[0]["orig"]["sport"])
    objs = json_parity(table.gw, ["-p", "tcp", "--sport", sport], ["-p", "tcp", "--sport", sport])
    assert held[0]["id"] in {o["id"] for o in objs}


def _kernel_per_isp(gw: Netns, *extra: str) -> dict[str, int]:
    """What conntrack-tools counts per ISP: ``conntrack -L -m MARK/MASK [...] | wc -l``."""
    return {
        name: gw.run("conntrack", "-L", "-m", f"{mark:#x}/{MASK:#x}", *extra).stdout.count("\n")
        for name, mark in MARKS.items()
    }


def test_count_by_isp_comes_from_the_daemon_and_equals_the_kernel(table: LabTable) -> None:
    kernel = _kernel_per_isp(table.gw)
    deadline = time.monotonic() + 20
    while True:  # the daemon counts from events: give it time to drain the last ones
        out = json.loads(table.gw.wanlb(*table.config, "count", "--by", "isp", "--json").stdout)
        got = {name: out["counts"][name] for name in MARKS}
        if got == kernel or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert out["source"] == "daemon"
    assert got == kernel
    assert min(kernel.values()) >= 500  # lab traffic (and the synthetic top-up) reached every ISP
    assert out["total"] == int(table.gw.run("conntrack", "-C").stdout)


def test_filtered_count_by_isp_is_a_kernel_dump_equal_to_conntrack(table: LabTable) -> None:
    out = json.loads(table.gw.wanlb(*table.config, "count", "--by", "isp", "-p", "tcp", "--json").stdout)
    assert out["source"] == "kernel"
    assert {name: out["counts"][name] for name in MARKS} == _kernel_per_isp(table.gw, "-p", "tcp")
