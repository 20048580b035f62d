"""``wanlb conntrack`` against conntrack-tools on the same table, field by field."""

from __future__ import annotations

import json
import re

import pytest
from conftest import ISPS, Netns
from ctparity import json_parity

pytestmark = pytest.mark.root

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
    got = json_parity(mixed_ns, ours, theirs)
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
