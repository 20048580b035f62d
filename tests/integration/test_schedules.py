"""Scheduled rules and rules by source MAC, through the dual-stack lab gateway (real kernel, real servers).

Which ISP a connection used is what the server saw (the source address it answers with: one per WAN for
IPv4, one netmap prefix per ISP for IPv6). A schedule's window is a few seconds of the gateway's local wall
clock, starting a few seconds after the reload that brings it; the daemon's timer switches the rule at its
boundaries (its log says so), and the tests wait for the status to say a boundary passed before looking.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from harness import module_lab

from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab, python_module
from wanlb.lab.topology import (
    CLIENT_IF,
    HTTP_ADDR,
    HTTP_PORT,
    SERVER6_ADDRS,
    STREAM_PORT,
    client6_addr,
    client_addr,
    isp_for_source,
)
from wanlb.view import Schedule

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

ALL_UP = {"isp1": "up", "isp2": "up", "isp3": "up"}
lab = module_lab(isps=3, clients=2, ipv6=True)

# One connection per input line "DST PORT [SRC]" (either family; SRC "-": the host's choice); prints the
# source each server saw (or "error:...") as a JSON list. Sequential.
_CLIENT = """
import json, socket, sys
out = []
for line in sys.stdin.read().splitlines():
    dst, port, *src = line.split()
    try:
        s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET)
        s.settimeout(3)
        if src and src[0] != "-":
            s.bind((src[0], 0))
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


def sh(lab: Lab, node: str, *argv: str, stdin: str | None = None) -> str:
    return lab.run(node, list(argv), capture_output=True, text=True, check=True, input=stdin).stdout


def connect(lab: Lab, client: str, count: int, dst: str = HTTP_ADDR, src: str = "-") -> list[str]:
    """The ISP (or "error:...") of each of ``count`` sequential connections from ``client`` to the HTTP server."""
    out = sh(lab, client, "python3", "-c", _CLIENT, stdin=f"{dst} {HTTP_PORT} {src}\n" * count)
    return [(isp_for_source(a) or a) if not a.startswith("error:") else a for a in json.loads(out)]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g}s"
        time.sleep(0.05)


def start(gw: LabGateway, edit: Callable[[dict[str, Any]], None]) -> None:
    gw.write(edit)
    gw.start()
    gw.wait_for(ALL_UP)


def hits(gw: LabGateway, rule: str) -> int | None:
    return next(r.hits for r in gw.view().rules if r.name == rule)


# --- a rule on a schedule -------------------------------------------------------------------------------------


def local_window(opens_in: float, seconds: int) -> tuple[str, float, float]:
    """A ``time:`` window of ``seconds`` on this machine's wall clock (the gateway's: the lab shares the host's
    zone), from the whole second about ``opens_in`` seconds from now: (the window, opens, closes) in Unix time."""
    opens = math.ceil(time.time() + opens_in)
    begin = datetime.fromtimestamp(opens)  # local wall clock
    return f"{begin:%H:%M:%S}-{begin + timedelta(seconds=seconds):%H:%M:%S}", opens, opens + seconds


def schedule_of(gw: LabGateway, rule: str) -> Schedule:
    found = next(r.schedule for r in gw.view().rules if r.name == rule)
    assert found is not None, f"rule {rule} shows no schedule"
    return found


def stream_mark(lab: Lab, gw: LabGateway) -> str | None:
    """The ISP whose mark the gateway's conntrack entry of c1's counter stream carries, if there is one."""
    out = sh(lab, "gw", "conntrack", "-L", "-p", "tcp", "--dport", str(STREAM_PORT), "-s", client_addr(1))
    marks = {isp.mark: isp.name for isp in gw.view().isps}
    for token in out.split():
        if token.startswith("mark="):
            return marks.get(int(token[5:]) & 0xFF00)
    return None


def test_a_scheduled_rule_takes_new_connections_only_in_its_window_and_established_ones_keep_their_isp(
    lab: Lab, gw: LabGateway
) -> None:
    start(gw, lambda cfg: None)
    window, opens, closes = local_window(6, 10)
    rule = {"name": "evening", "src": [client_addr(1)], "via": "isp2", "when": {"time": window}}
    gw.write(lambda cfg: cfg.update(rules=[rule]))
    assert gw.reload()["ok"]

    before = connect(lab, "c1", 6)
    off = schedule_of(gw, "evening")
    assert not off.active and off.changes_at == opens, off  # (so the connections above ran before the window)
    assert set(before) == {"isp1", "isp2", "isp3"}, before  # balanced: the rule is not in the ruleset
    assert hits(gw, "evening") == 0

    wait_until(lambda: schedule_of(gw, "evening").active, "the window opened")
    during = connect(lab, "c1", 6)
    stream = lab.popen("c1", python_module("wanlb.lab.traffic", "stream", "--stall", "3"), stdout=subprocess.PIPE,
                       text=True)  # fmt: skip
    try:
        wait_until(lambda: stream_mark(lab, gw) is not None, "the stream's connection is tracked", 10)
        on = schedule_of(gw, "evening")
        assert on.active and on.changes_at == closes, on  # (so the stream started inside the window)
        assert set(during) == {"isp2"}, during
        assert stream_mark(lab, gw) == "isp2"

        wait_until(lambda: not schedule_of(gw, "evening").active, "the window closed")
        after = connect(lab, "c1", 6)
        assert set(after) == {"isp1", "isp2", "isp3"}, after  # NEW connections are balanced again ...
        assert stream_mark(lab, gw) == "isp2"  # ... the established one keeps its ISP (its ct mark)
        assert hits(gw, "evening") == 6 + 1  # the connections (and the stream) of the window, nothing else
    finally:
        stream.terminate()
        result = json.loads(stream.communicate(timeout=30)[0])
    assert result["ok"] and isp_for_source(result["src"]) == "isp2", result  # never broken, never moved
    log = gw.log_text()
    assert "schedule: rules off now: none" in log and "schedule: rules off now: evening" in log  # by the timer
    assert "flushed" not in log


# --- a rule by source MAC -------------------------------------------------------------------------------------


def mac_of(lab: Lab, node: str) -> str:
    return str(json.loads(sh(lab, node, "ip", "-j", "link", "show", "dev", CLIENT_IF))[0]["address"])


def test_a_mac_rule_follows_the_host_whatever_address_it_uses_ipv4_and_ipv6(lab: Lab, gw: LabGateway) -> None:
    mac = mac_of(lab, "c1")
    assert mac != mac_of(lab, "c2")
    rule = {"name": "tv", "src_mac": [mac.upper()], "via": "isp3"}  # (normalised to lower case)
    start(gw, lambda cfg: cfg.update(rules=[rule]))
    other4, other6 = "192.168.77.111", "fd00:77::1:99"  # another address of c1: a new lease, a privacy address
    sh(lab, "c1", "ip", "addr", "add", f"{other4}/24", "dev", CLIENT_IF)
    sh(lab, "c1", "ip", "-6", "addr", "add", f"{other6}/64", "dev", CLIENT_IF, "nodad")
    try:
        server6 = SERVER6_ADDRS[0]
        assert set(connect(lab, "c1", 6)) == {"isp3"}
        assert set(connect(lab, "c1", 3, src=other4)) == {"isp3"}
        assert set(connect(lab, "c1", 6, server6, client6_addr(1))) == {"isp3"}
        assert set(connect(lab, "c1", 3, server6, other6)) == {"isp3"}
        assert set(connect(lab, "c2", 6)) == {"isp1", "isp2", "isp3"}  # another host: balanced
        assert set(connect(lab, "c2", 6, server6)) == {"isp1", "isp2", "isp3"}
        assert hits(gw, "tv") == 6 + 3 + 6 + 3
        shown = next(r for r in gw.view().rules if r.name == "tv")
        assert shown.match == f"src mac {mac}" and shown.schedule is None
    finally:
        lab.run("c1", ["ip", "addr", "del", f"{other4}/24", "dev", CLIENT_IF], capture_output=True)
        lab.run("c1", ["ip", "-6", "addr", "del", f"{other6}/64", "dev", CLIENT_IF], capture_output=True)
