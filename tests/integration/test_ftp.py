"""FTP through the balanced gateway: both of a session's connections must leave through the same ISP.

FTP opens a second (data) connection per transfer. Passive mode: the client connects to the port the
server named; unless the gateway ties that connection to the control connection (conntrack's ftp helper
makes it RELATED, so it inherits the control connection's ct mark), the balancer sends it out through
the next ISP and the server sees it from another address. Active mode: the server connects to the address
in the client's PORT/EPRT, which the gateway must rewrite to its WAN address (nf_nat_ftp) and accept back.
The lab's FTP server accepts and logs data connections from or to any address, so a wrong ISP shows up
in its transfer log instead of as a refusal.

curl runs in the LAN clients: 10 passive transfers (EPSV and PASV alternating) and 10 active ones (EPRT
and PORT alternating), one at a time, alternating between the clients.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import module_lab

from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab
from wanlb.lab.servers import FTP_FILE, FTP_FILE_SIZE, ftp_payload
from wanlb.lab.topology import FTP_ADDR, FTP_PORT, LAN_LEAK_COUNTER, isp_for_source

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

ALL_UP = {"isp1": "up", "isp2": "up", "isp3": "up"}
TRANSFERS = 10  # per mode
PAYLOAD_SHA256 = hashlib.sha256(ftp_payload()).hexdigest()
URL = f"ftp://{FTP_ADDR}:{FTP_PORT}/{FTP_FILE}"
# (mode, data command the server must see, curl options)
VARIANTS = {
    "passive": [("EPSV", ["--ftp-pasv"]), ("PASV", ["--ftp-pasv", "--disable-epsv"])],
    "active": [("EPRT", ["--ftp-port", "-"]), ("PORT", ["--ftp-port", "-", "--disable-eprt"])],
}


lab = module_lab(isps=3, clients=2)


@pytest.fixture
def gw(lab: Lab) -> Iterator[LabGateway]:
    g = LabGateway(lab)
    g.write(lambda cfg: None)  # the lab's default config: 3 ISPs, weight 1 each, ICMP health
    try:
        g.start()
        g.wait_for(ALL_UP)
        yield g
    finally:
        g.stop(cleanup=True)


@pytest.fixture(scope="module")
def ftp_log(lab: Lab) -> Path:
    return lab.start_ftp()


def new_records(log: Path, seen: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Transfer records after the first `seen`, once at least one more is there (the server writes its line
    right after it answers 226, so curl may exit a moment before it) or after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        lines = log.read_text().splitlines()[seen:]
        if lines or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.02)


def check_transfer(mode: str, command: str, rc: int, body: bytes, err: str, records: list[dict[str, Any]]) -> str:
    """What is wrong with one transfer ('' if nothing): curl's result, the content, the server's record."""
    if rc != 0:
        # curl 7.88's own message can hide the server's answer (curl issue 10622): show the replies too
        why = [line for line in err.splitlines() if line.startswith(("< 4", "< 5", "curl:"))]
        return f"curl exit {rc}: {' | '.join(why)[-300:]}"
    if len(body) != FTP_FILE_SIZE or hashlib.sha256(body).hexdigest() != PAYLOAD_SHA256:
        return f"wrong content: {len(body)} bytes, sha256 {hashlib.sha256(body).hexdigest()[:16]}"
    if len(records) != 1:
        return f"{len(records)} transfer records: {records}"
    r = records[0]
    control, data = r["control_peer"][0], (r["data_peer"] or [None])[0]
    if (r["mode"], r["data_command"]) != (mode, command) or not r["completed"] or r["bytes"] != FTP_FILE_SIZE:
        return f"unexpected record {r}"
    if isp_for_source(control) is None:
        return f"control connection from {control}, not a WAN address"
    if data != control:
        return f"data connection from {data} ({isp_for_source(data or '')}), control from {control}"
    if mode == "active" and r["port_arg"][0] != control:
        return f"{command} carried {r['port_arg'][0]}, not the WAN address {control}"
    return ""


def test_passive_and_active_ftp_keep_each_session_on_one_isp(lab: Lab, gw: LabGateway, ftp_log: Path) -> None:
    log = ftp_log
    leaks = {isp: lab.counter(isp, LAN_LEAK_COUNTER) for isp in lab.isps}
    problems: list[str] = []
    isps_used: dict[str, set[str]] = {mode: set() for mode in VARIANTS}
    seen = 0
    for mode, variants in VARIANTS.items():
        for n in range(TRANSFERS):
            command, options = variants[n % len(variants)]
            client = lab.clients[n % len(lab.clients)]
            proc = lab.run(client, ["curl", "-svS", "--max-time", "20", *options, URL], capture_output=True)
            records = new_records(log, seen, timeout=5.0 if proc.returncode == 0 else 0.5)
            seen += len(records)
            err = proc.stderr.decode(errors="replace")
            problem = check_transfer(mode, command, proc.returncode, proc.stdout, err, records)
            if problem:
                problems.append(f"{mode} #{n + 1} {command} from {client}: {problem}")
            elif isp := isp_for_source(records[0]["control_peer"][0]):
                isps_used[mode].add(isp)
    assert problems == [], f"{len(problems)} of {2 * TRANSFERS} transfers went wrong:\n" + "\n".join(problems)
    # The balancer hands consecutive new connections to the ISPs in turn: 10 sessions use more than one.
    assert all(len(used) > 1 for used in isps_used.values()), isps_used
    assert {isp: lab.counter(isp, LAN_LEAK_COUNTER) for isp in lab.isps} == leaks, "un-NATed LAN packets reached an ISP"


@pytest.mark.parametrize(
    "balance",
    [
        {"algorithm": "weighted"},
        {"algorithm": "hash", "hash": {"fields": ["src", "dst"]}},
        {"algorithm": "weighted", "sticky": {"by": "source"}},
    ],
    ids=["weighted", "hash", "sticky"],
)
def test_passive_ftp_without_a_helper_needs_hash_or_sticky(lab: Lab, ftp_log: Path, balance: dict[str, Any]) -> None:
    """No conntrack helper: the data connection is a NEW connection of its own. Round-robin sends it out
    through another ISP than the control connection, and the server refuses it; ``hash`` (same client,
    same server) and ``sticky`` (same client) keep both on one ISP. This is why they exist."""

    def edit(cfg: dict[str, Any]) -> None:
        cfg["helpers"] = []
        cfg["balance"] = balance

    g = LabGateway(lab)
    g.write(edit)
    try:
        g.start()
        g.wait_for(ALL_UP)
        seen = len(ftp_log.read_text().splitlines())
        results = []
        for n in range(6):
            command, options = VARIANTS["passive"][n % 2]
            proc = lab.run("c1", ["curl", "-svS", "--max-time", "10", *options, URL], capture_output=True)
            records = new_records(ftp_log, seen, timeout=3.0 if proc.returncode == 0 else 0.5)
            seen += len(records)
            err = proc.stderr.decode(errors="replace")
            results.append(check_transfer("passive", command, proc.returncode, proc.stdout, err, records))
    finally:
        g.stop(cleanup=True)
    if balance == {"algorithm": "weighted"}:
        assert sum(1 for r in results if r) >= 3, results  # most sessions split across two ISPs
    else:
        assert results == [""] * 6, results
