"""``wanlb conntrack`` against conntrack-tools on the same table, field by field."""

from __future__ import annotations

import json
import re

import pytest
from conftest import ISPS, Netns

pytestmark = pytest.mark.root

_TOLERANT = {"timeout", "delta-time"}  # they tick between the two listings


def parse_conntrack(line: str) -> dict:
    """One ``conntrack -L -o extended,id`` line -> a normalised record."""
    tok = line.split()
    rec: dict = {"family": tok[0], "proto": tok[2], "timeout": int(tok[4])}
    rest = tok[5:]
    if rest and "=" not in rest[0] and not rest[0].startswith("["):
        rec["state"] = rest.pop(0)
    side, tuples = "orig", {"orig": {}, "reply": {}}
    flags = []
    prev = ""
    for t in rest:
        if t.startswith("["):
            flags.append(t.strip("[]"))
            continue
        key, val = t.split("=", 1)
        prev, icmp_id = key, key == "id" and prev == "code"  # ICMP's id follows its code
        if key in ("mark", "zone", "use", "delta-time") or (key == "id" and not icmp_id):
            side = "done"  # past both tuples; "id" is the entry id now
            rec[key] = int(val)
        elif key in ("packets", "bytes"):
            rec.setdefault("counters", {}).setdefault(side, {})[key] = int(val)
        elif key in ("zone-orig", "zone-reply"):
            rec[key] = int(val)
        else:
            if key == "src" and "src" in tuples["orig"]:
                side = "reply"
            tuples[side][key] = val if key in ("src", "dst") else int(val)
    rec.update(orig=tuples["orig"], reply=tuples["reply"], flags=sorted(flags))
    return rec


def from_json(obj: dict) -> dict:
    """Our JSON object -> the same normalised record (what the text format can show)."""
    flags = []
    if "SEEN_REPLY" not in obj["status"]:
        flags.append("UNREPLIED")
    if "ASSURED" in obj["status"]:
        flags.append("ASSURED")
    rec = {"family": obj["family"], "proto": obj["proto"], "timeout": obj["timeout"], "id": obj["id"]}
    if obj["state"] is not None:
        rec["state"] = obj["state"]
    rec["orig"] = {k: v for k, v in obj["orig"].items() if k != "zone"}
    rec["reply"] = {k: v for k, v in obj["reply"].items() if k != "zone"}
    if obj["counters"]:
        rec["counters"] = obj["counters"]
    for key in ("mark", "zone", "use"):
        if obj[key] is not None:
            rec[key] = obj[key]
    if obj["start"] is not None:
        import time

        rec["delta-time"] = int(time.time()) - obj["start"] // 10**9
    rec["flags"] = sorted(flags)
    return rec


def assert_same(theirs: list[dict], ours: list[dict]) -> None:
    by_id = {r["id"]: r for r in theirs}
    assert len(by_id) == len(theirs)
    assert sorted(by_id) == sorted(r["id"] for r in ours)
    for rec in ours:
        other = by_id[rec["id"]]
        for key in set(rec) | set(other):
            if key in _TOLERANT:
                assert abs(rec[key] - other[key]) <= 3, (key, rec, other)
            else:
                assert rec.get(key) == other.get(key), (key, rec, other)


FILTERS = [
    ([], []),
    (["-p", "tcp"], ["-p", "tcp"]),
    (["-p", "udp"], ["-p", "udp"]),
    (["-p", "icmp"], ["-p", "icmp"]),
    (["-f", "ipv6"], ["-f", "ipv6"]),
    (["-s", "10.1.0.7"], ["-s", "10.1.0.7"]),
    (["-d", "192.0.2.9"], ["-d", "192.0.2.9"]),
    (["-s", "fd00::1:0:3f"], ["-s", "fd00::1:0:3f"]),
    (["-p", "tcp", "--dport", "443"], ["-p", "tcp", "--dport", "443"]),
    (["-p", "udp", "--sport", "16862"], ["-p", "udp", "--sport", "16862"]),
    (["--state", "TIME_WAIT"], ["-p", "tcp", "--state", "TIME_WAIT"]),
    (["--mark", "0x200/0xff00"], ["-m", "0x200/0xff00"]),
    (["--mark", "0"], ["-m", "0"]),
    (["--zone", "2"], ["-w", "2"]),
]


@pytest.mark.parametrize(("ours", "theirs"), FILTERS, ids=[" ".join(o) or "all" for o, _ in FILTERS])
def test_json_equals_conntrack_extended(mixed_ns: Netns, ours: list[str], theirs: list[str]) -> None:
    ref = [
        parse_conntrack(line)
        for line in mixed_ns.run("conntrack", "-L", "-o", "extended,id", *theirs).stdout.splitlines()
    ]
    got = [from_json(json.loads(line)) for line in mixed_ns.wanlb("list", "-o", "json", *ours).stdout.splitlines()]
    assert_same(ref, got)
    assert got, "the filter must select something, or this comparison proves nothing"
    if not ours:
        assert len(got) >= 5000
        assert {"tcp", "udp", "icmp", "icmpv6"} <= {r["proto"] for r in got}
        assert any(r["orig"]["src"] != r["reply"]["dst"] for r in got)  # NATed entries present


def _strip_timeouts(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        tok = line.split()
        tok[2] = "T"  # timeout
        out.append(re.sub(r"delta-time=\d+", "delta-time=D", " ".join(tok)))
    return sorted(out)


@pytest.mark.parametrize(("ours", "theirs"), FILTERS[:6], ids=[" ".join(o) or "all" for o, _ in FILTERS[:6]])
def test_text_equals_conntrack_text(mixed_ns: Netns, ours: list[str], theirs: list[str]) -> None:
    ref = mixed_ns.run("conntrack", "-L", *theirs).stdout
    got = mixed_ns.wanlb("list", *ours).stdout
    assert _strip_timeouts(got) == _strip_timeouts(ref)


def test_extended_text_equals_conntrack(mixed_ns: Netns) -> None:
    ref = mixed_ns.run("conntrack", "-L", "-o", "extended").stdout
    got = mixed_ns.wanlb("list", "-o", "extended").stdout
    timeout = re.compile(r"^(\S+\s+\d+\s+\S+\s+\d+)\s+\d+")
    assert sorted(timeout.sub(r"\1 T", line) for line in _unt(got)) == sorted(
        timeout.sub(r"\1 T", line) for line in _unt(ref)
    )


def _unt(text: str) -> list[str]:
    return [re.sub(r"delta-time=\d+", "delta-time=D", line) for line in text.splitlines()]


def test_isp_names_and_count_by_isp(mixed_ns: Netns, isp_config: str) -> None:
    out = json.loads(mixed_ns.wanlb("--config", isp_config, "count", "--by", "isp", "--json").stdout)
    for name, mark in ISPS.items():
        ref = mixed_ns.run("conntrack", "-L", "-m", f"{mark:#x}/0xff00").stdout.count("\n")
        assert out["counts"][name] == ref
    listed = mixed_ns.wanlb("--config", isp_config, "list", "--isp", "b").stdout.splitlines()
    assert listed and all(line.endswith(" isp=b") and " mark=512 " in line for line in listed)
    assert len(listed) == out["counts"]["b"]


def test_count_by_mark_and_total(mixed_ns: Netns) -> None:
    out = json.loads(mixed_ns.wanlb("count", "--by", "mark", "--json").stdout)
    for mark, n in out["counts"].items():
        assert mixed_ns.run("conntrack", "-L", "-m", mark).stdout.count("\n") == n
    assert out["total"] == int(mixed_ns.run("conntrack", "-C").stdout)
    assert int(mixed_ns.wanlb("count").stdout) == out["total"]


@pytest.mark.parametrize(
    "args",
    [
        ["-s", "10.0.0.300"],
        ["--dport", "80"],
        ["--isp", "nosuch"],
        ["-p", "bogus"],
        ["--state", "SLEEPY"],
        ["-s", "10.0.0.1", "-d", "fd00::1"],
        ["--mark", "x"],
    ],
)
def test_bad_filters_exit_2_with_one_error(netns: Netns, isp_config: str, args: list[str]) -> None:
    res = netns.wanlb("--config", isp_config, "list", *args, check=False)
    assert res.returncode == 2
    assert res.stdout == ""
    assert sum(line.startswith("Error:") for line in res.stderr.splitlines()) == 1
