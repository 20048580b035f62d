"""`wanlb explain` against the datapath: random flows from the lab's clients, each explained by the real daemon
and then made, and the ISP its conntrack entry got compared with the explanation.

Agreement means: the exact ISP where the decision names one (hash, a sticky client, a policy with one ISP in
use), membership in the candidates for weighted, and no mark for a bypass.  The flows are made in rounds:
every flow of a round is explained before any of them is made, so a round holds each sticky client once (its
own connection is the only thing that may pin it before its turn).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from harness import module_lab

from wanlb import commands
from wanlb.control import request
from wanlb.flow_explain import Decision
from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab, python_module
from wanlb.lab.topology import HTTP_ADDR, LAN_GW, STREAM_ADDR, client_addr, isp_for_source
from wanlb.view import from_json

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

ALL_UP = {"isp1": "up", "isp2": "up", "isp3": "up"}
FLOWS = 600
ROUNDS = 6
EXTRA_SERVERS = [f"203.0.113.{100 + i}" for i in range(6)]
SERVERS = [HTTP_ADDR, STREAM_ADDR, "203.0.113.40", *EXTRA_SERVERS]
STICKY = [f"192.168.77.{100 + i}" for i in range(8)]  # c1's extra addresses that the `sticky` rule sends to `pinned`
SOURCES = {"c1": [client_addr(1), *STICKY, *(f"192.168.77.{120 + i}" for i in range(8))],
           "c2": [client_addr(2), *(f"192.168.77.{140 + i}" for i in range(8))]}  # fmt: skip
API_PORT = 9181
TOKEN = "explain-lab-token-0123456789abcdef"

# One flow per input line, "PROTO SRC SPORT DST DPORT", in order: TCP connects and asks the HTTP server (which
# answers with the source address it saw), UDP sends one datagram. Prints one JSON list: what each server saw.
_CLIENT = """
import json, socket, sys
out = []
for line in sys.stdin.read().splitlines():
    proto, src, sport, dst, dport = line.split()
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    s.settimeout(2)
    try:
        s.bind((src, int(sport)))
        if proto == "udp":
            s.sendto(b"explain", (dst, int(dport)))
            out.append("-")
            continue
        s.connect((dst, int(dport)))
        s.sendall(b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        out.append(json.loads(data.partition(b"\\r\\n\\r\\n")[2])["src"])
    except (OSError, ValueError, KeyError) as exc:
        out.append("error:" + type(exc).__name__)
    finally:
        s.close()
print(json.dumps(out))
"""

# One GET from a LAN client's namespace: prints {"status": code, "body": text}.
_GET = """
import json, sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1])
if sys.argv[2] != "-":
    req.add_header("Authorization", "Bearer " + sys.argv[2])
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(json.dumps({"status": r.status, "body": r.read().decode()}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": e.read().decode()}))
"""


def _servers_and_sources(lab: Lab) -> None:
    """More server addresses in inet with HTTP on 8080 and 8081 on all of them, more client addresses."""
    for addr in EXTRA_SERVERS:
        lab.run("inet", ["ip", "addr", "add", f"{addr}/32", "dev", "lo"], check=True)
    for client, addrs in SOURCES.items():
        for addr in addrs[1:]:
            lab.run(client, ["ip", "addr", "add", f"{addr}/24", "dev", "eth0"], check=True)
    flags = []
    for port in (8080, 8081):
        flag = lab.dir / f"explain-http{port}.ready"
        flag.unlink(missing_ok=True)
        argv = python_module("wanlb.lab.servers", "http", "--listen", f"0.0.0.0:{port}", "--ready-file", str(flag))
        lab.popen("inet", argv, label=f"explain-http{port}")
        flags.append(flag)
    deadline = time.monotonic() + 15
    while not all(f.exists() for f in flags):
        assert time.monotonic() < deadline, "the HTTP servers on 8080/8081 did not start"
        time.sleep(0.05)


lab = module_lab(_servers_and_sources, isps=3, clients=2)


def _config(lab: Lab) -> Any:
    """Rules over every kind of target; policies weighted by tier, hashed over the 5-tuple, and sticky."""

    def edit(cfg: dict[str, Any]) -> None:
        cfg["isps"][0]["weight"] = 2
        cfg["balance"] = {"algorithm": "weighted", "hash": {"fields": ["src", "dst", "proto", "sport", "dport"]}}
        cfg["policies"] = {
            "fast": {"members": [{"isp": "isp1"}, {"isp": "isp2"}, {"isp": "isp3", "tier": 2}]},
            "pairs": {"members": [{"isp": "isp1"}, {"isp": "isp2"}, {"isp": "isp3"}], "algorithm": "hash"},
            "pinned": {"members": [{"isp": "isp2"}, {"isp": "isp3"}], "sticky": {"by": "source", "timeout": "10m"}},
        }
        cfg["rules"] = [
            {"name": "video", "dst": [f"{STREAM_ADDR}/32"], "dport": [8080], "policy": "fast"},
            {"name": "direct", "dst": ["203.0.113.40/32"], "action": "bypass"},
            {"name": "sticky", "src": STICKY, "policy": "pinned"},
            {"name": "hashed", "dport": [8081], "policy": "pairs"},
            {"name": "udp", "proto": "udp", "policy": "pairs"},
            {"name": "pin", "src": [client_addr(2)], "dport": [8080], "via": "isp3"},
        ]
        cfg["api"] = {"listen": [f"{LAN_GW}:{API_PORT}"], "token_file": str(lab.dir / "explain-api.token")}

    return edit


@pytest.fixture
def daemon(lab: Lab, gw: LabGateway) -> Iterator[LabGateway]:
    token = lab.dir / "explain-api.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    gw.write(_config(lab))
    gw.start()
    gw.wait_for(ALL_UP)
    yield gw


def _flows(rng: random.Random) -> list[list[tuple[str, str, str, int, str, int]]]:
    """ROUNDS rounds of (client, proto, src, sport, dst, dport), unique 5-tuples, each sticky source once a round."""
    sports = iter(rng.sample(range(20000, 60000), FLOWS))
    rounds = []
    for _ in range(ROUNDS):
        flows = []
        unused = set(STICKY)
        while len(flows) < FLOWS // ROUNDS:
            client = rng.choice(sorted(SOURCES))
            src = rng.choice(SOURCES[client])
            if src in STICKY and src not in unused:
                continue
            unused.discard(src)
            dst = rng.choice(SERVERS)
            if rng.random() < 0.2:
                flows.append((client, "udp", src, next(sports), dst, rng.randrange(1000, 2000)))
            else:
                flows.append((client, "tcp", src, next(sports), dst, rng.choice((8080, 8081))))
        rounds.append(flows)
    return rounds


def _explain(gw: LabGateway, flow: tuple[str, str, str, int, str, int]) -> Decision:
    _, proto, src, sport, dst, dport = flow
    reply = request(gw.socket, commands.message(commands.explain(src, dst, proto, sport, dport)))
    (decision,) = reply["decisions"]
    return from_json(Decision, decision)  # type: ignore[no-any-return]


def _make(lab: Lab, flows: list[tuple[str, str, str, int, str, int]]) -> dict[tuple[str, str, int], str]:
    """Make the flows, each client's in order and the clients side by side; what each TCP server saw."""
    procs = {}
    for client in SOURCES:
        mine = [f for f in flows if f[0] == client]
        argv = ["ip", "netns", "exec", lab.ns(client), "python3", "-c", _CLIENT]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs[client] = (mine, proc, "".join(" ".join(map(str, f[1:])) + "\n" for f in mine))
    seen = {}
    for mine, proc, lines in procs.values():
        out, _ = proc.communicate(lines, timeout=60)
        for f, saw in zip(mine, json.loads(out), strict=True):
            assert not saw.startswith("error:"), (f, saw)
            seen[(f[1], f[2], f[3])] = saw
    return seen


def _marks(gw: LabGateway) -> dict[tuple[str, str, int], str | None]:
    """(proto, src, sport) → the ISP of the gateway's conntrack entry (None: no mark)."""
    out = gw.cli("conntrack", "list", "-o", "json")
    assert out.returncode == 0, out.stderr
    entries = (json.loads(line) for line in out.stdout.splitlines())
    return {(e["proto"], e["orig"]["src"], e["orig"]["sport"]): e["isp"] for e in entries if "sport" in e["orig"]}


def _agrees(decision: Decision, isp: str | None) -> bool:
    if decision.verdict == "bypass":
        return isp is None
    if decision.verdict != "isp":
        return False
    return isp == decision.isp if decision.isp is not None else isp in {c.isp for c in decision.candidates}


def test_explain_agrees_with_the_datapath_on_random_flows(lab: Lab, daemon: LabGateway) -> None:
    seed = int(os.environ.get("WANLB_EXPLAIN_SEED") or random.randrange(1 << 32))  # set it to replay a run
    rng = random.Random(seed)
    started = time.monotonic()
    explained: list[tuple[tuple[str, str, str, int, str, int], Decision]] = []
    seen: dict[tuple[str, str, int], str] = {}
    marks: dict[tuple[str, str, int], str | None] = {}
    explain_seconds = 0.0
    for flows in _flows(rng):
        t = time.monotonic()
        decisions = [_explain(daemon, f) for f in flows]
        explain_seconds += time.monotonic() - t
        explained += zip(flows, decisions, strict=True)
        seen |= _make(lab, flows)
        marks |= _marks(daemon)  # each round: a UDP entry lives 30 s
    kinds: Counter[str] = Counter()
    disagree = []
    for flow, decision in explained:
        key = (flow[1], flow[2], flow[3])
        isp = marks[key]
        kinds[decision.sticky or (decision.algorithm if decision.verdict == "isp" else decision.verdict) or "?"] += 1
        if not _agrees(decision, isp):
            disagree.append((flow, isp, decision.summary))
        if flow[1] == "tcp" and isp is not None:  # the mark also chose the WAN the server saw
            assert isp_for_source(seen[key]) == isp, (flow, seen[key], isp)
    took = time.monotonic() - started
    print(f"\nexplain lab (WANLB_EXPLAIN_SEED={seed}): {len(explained)} flows, {len(explained) - len(disagree)} "
          f"agree, kinds {dict(kinds)}, {took:.1f} s ({explain_seconds:.1f} s in the explains)")  # fmt: skip
    assert disagree == [], f"WANLB_EXPLAIN_SEED={seed}"
    assert len(explained) >= 500
    # Every kind of decision was tried, and enough of the exact ones.
    assert kinds["hash"] >= 100 and kinds["pinned"] >= 15 and kinds["recorded"] >= 6, kinds
    assert kinds["weighted"] >= 100 and kinds["bypass"] >= 20, kinds
    assert sum(1 for _, d in explained if d.policy == "via_isp3") >= 10


def test_the_cli_and_the_api_give_the_same_decision(lab: Lab, daemon: LabGateway) -> None:
    flow = ("-", "tcp", client_addr(1), 40000, HTTP_ADDR, 8081)
    want = _explain(daemon, flow)
    assert want.verdict == "isp" and want.isp is not None and want.hash is not None and want.rule is not None
    assert (want.rule.index, want.rule.name, want.policy) == (4, "hashed", "pairs")

    cli = daemon.cli("explain", "--from", f"{client_addr(1)}:40000", "--to", f"{HTTP_ADDR}:8081", "--json")
    assert cli.returncode == 0, cli.stderr
    assert from_json(Decision, json.loads(cli.stdout)["decisions"][0]) == want
    text = daemon.cli("explain", "--from", f"{client_addr(1)}:40000", "--to", f"{HTTP_ADDR}:8081")
    assert text.returncode == 0 and f"{want.isp}, because rule 4 (hashed) → policy pairs: hash bucket" in text.stdout

    for bad in (["--from", "192.168.77.300"], ["--from", client_addr(1), "--proto", "icmp", "--to", "1.2.3.4:80"]):
        args = {"--to": f"{HTTP_ADDR}:80"} | dict(zip(bad[::2], bad[1::2], strict=True))
        wrong = daemon.cli("explain", *(x for kv in args.items() for x in kv))
        assert wrong.returncode == 2 and "Invalid value" in wrong.stderr, wrong.stderr
    unknown = daemon.cli("explain", "--from", client_addr(1), "--to", "video.example.com")
    assert unknown.returncode == 1 and "not a destination domain the daemon resolves" in unknown.stderr

    url = f"http://{LAN_GW}:{API_PORT}/api/v1/explain?from={client_addr(1)}:40000&to={HTTP_ADDR}:8081"

    def get(token: str) -> dict[str, Any]:
        out = lab.run("c1", ["python3", "-c", _GET, url, token], capture_output=True, text=True, check=True)
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    assert get("-")["status"] == 401  # reads need the token (no public_read)
    answer = get(TOKEN)
    assert answer["status"] == 200, answer
    assert from_json(Decision, json.loads(answer["body"])["decisions"][0]) == want
    assert get(TOKEN.replace("0", "1"))["status"] == 401
