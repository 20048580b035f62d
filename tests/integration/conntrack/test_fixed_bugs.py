"""Reproductions of bugs found against conntrack(8) 1.4.7, each compared with what conntrack-tools does."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import Netns

pytestmark = pytest.mark.root

TCP = ["-p", "tcp", "--sport", "10", "--dport", "20", "--state", "ESTABLISHED", "-u", "SEEN_REPLY", "-t", "50"]


def _insert(netns: Netns, src: str, *extra: str) -> None:
    netns.run("conntrack", "-I", "-s", src, "-d", "2.2.2.2", *TCP, *extra)


def test_watch_prints_a_destroy_event_of_an_entry_without_mark_or_zone(netns: Netns) -> None:
    netns.run("sysctl", "-qw", "net.netfilter.nf_conntrack_events=1")
    watch = netns.popen("watch")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(watch.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    time.sleep(1.0)  # subscribed
    _insert(netns, "1.1.1.1")
    netns.run("conntrack", "-D", "-s", "1.1.1.1")
    deadline = time.monotonic() + 10
    while not any(line.startswith("[DESTROY]") for line in lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    watch.terminate()
    _, err = watch.communicate(timeout=10)
    assert "Traceback" not in err, err
    destroy = next(line for line in lines if line.startswith("[DESTROY]"))
    assert destroy.rstrip("\n").endswith("sport=20 dport=10"), destroy  # no mark, no zone: nothing after


def _table(netns: Netns) -> list[str]:
    return sorted(line.split(None, 3)[3] for line in netns.run("conntrack", "-L").stdout.splitlines())


@pytest.mark.parametrize(
    "args",
    [["--orig-zone", "7"], ["-p", "tcp", "--state", "ESTABLISHED"], ["-p", "tcp", "--dport", "20"]],
    ids=["orig-zone", "state", "dport"],
)
def test_delete_finds_entries_whose_original_direction_is_in_a_zone(netns: Netns, args: list[str]) -> None:
    _insert(netns, "1.1.1.1", "--orig-zone", "7")
    _insert(netns, "1.1.1.2", "--reply-zone", "7")
    _insert(netns, "1.1.1.3")
    res = netns.wanlb("delete", *args, "--json")
    left = _table(netns)
    netns.run("conntrack", "-F")
    _insert(netns, "1.1.1.1", "--orig-zone", "7")
    _insert(netns, "1.1.1.2", "--reply-zone", "7")
    _insert(netns, "1.1.1.3")
    netns.run("conntrack", "-D", *args, check=False)
    assert left == _table(netns), res.stdout
    assert '"deleted": 0' not in res.stdout


def test_zone_0_includes_entries_with_a_directional_zone_like_conntrack(netns: Netns) -> None:
    _insert(netns, "1.1.1.1", "--orig-zone", "7")
    _insert(netns, "1.1.1.2", "--reply-zone", "7")
    _insert(netns, "1.1.1.3", "--zone", "7")
    _insert(netns, "1.1.1.4")
    ours = sorted(line.split(None, 3)[3] for line in netns.wanlb("list", "--zone", "0").stdout.splitlines())
    theirs = sorted(line.split(None, 3)[3] for line in netns.run("conntrack", "-L", "-w", "0").stdout.splitlines())
    assert ours == theirs and len(ours) == 3, (ours, theirs)


def test_get_fetches_icmp_and_gre_entries(netns: Netns) -> None:
    netns.run(
        "conntrack", "-I", "-s", "1.1.1.1", "-d", "2.2.2.2", "-p", "icmp",
        "--icmp-type", "8", "--icmp-code", "0", "--icmp-id", "77", "-t", "50",
    )  # fmt: skip
    netns.run("conntrack", "-I", "-s", "1.1.1.1", "-d", "2.2.2.2", "-p", "gre", "--srckey", "0x10", "--dstkey", "0x20",
              "-t", "50")  # fmt: skip
    icmp = netns.wanlb("get", "-p", "icmp", "-s", "1.1.1.1", "-d", "2.2.2.2",
                       "--icmp-type", "8", "--icmp-code", "0", "--icmp-id", "77")  # fmt: skip
    want = netns.run("conntrack", "-G", "-p", "icmp", "-s", "1.1.1.1", "-d", "2.2.2.2",
                     "--icmp-type", "8", "--icmp-code", "0", "--icmp-id", "77").stdout  # fmt: skip
    assert icmp.stdout.split(None, 3)[3] == want.split(None, 3)[3]
    gre = netns.wanlb("get", "-p", "gre", "-s", "1.1.1.1", "-d", "2.2.2.2", "--srckey", "0x10", "--dstkey", "32")
    assert "srckey=0x10 dstkey=0x20" in gre.stdout
    missing = netns.wanlb("get", "-p", "gre", "-s", "1.1.1.1", "-d", "2.2.2.2", "--srckey", "1", "--dstkey", "2",
                          check=False)  # fmt: skip
    assert missing.returncode == 1
