"""The write half of the conntrack(8) drop-in against conntrack-tools 1.4.7: -U, -I/-A and -R files give the
same exit status, summary and kernel table as conntrack (each run in a fresh table), and -E names the userspace
process that caused an event.  Where conntrack 1.4.7 fails (zoned entries under -U, -U without -f, the last
line's mark applied to every line of a -R file) the test shows conntrack's failure and what wanlb does instead."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ISPS, SRC, Netns
from test_compat import _normal

pytestmark = pytest.mark.root

OURS = ("python3", "-m", "wanlb.cli", "conntrack")
_PREFIX = re.compile(r"^(conntrack v1\.4\.7 \(conntrack-tools\)|wanlb conntrack): ", re.M)


def _summary(stderr: str) -> list[str]:
    """stderr lines without the program's prefix (``conntrack v1.4.7 (conntrack-tools): `` / ``wanlb conntrack: ``)."""
    return [_PREFIX.sub("", line) for line in stderr.splitlines() if _PREFIX.match(line)]


def _unzoned(lines: list[str]) -> list[str]:
    return [line for line in lines if "zone" not in line]


def _both(netns: Netns, prepare: Callable[[], None], args: list[str], stdin: str | None = None) -> dict[str, tuple]:
    """Run ``args`` with conntrack and with wanlb, each on a freshly prepared table: (status, stdout, stderr, table)."""
    got = {}
    for name, tool in (("theirs", ("conntrack",)), ("ours", OURS)):
        netns.run("conntrack", "-F", check=False)
        prepare()
        res = netns.run(*tool, *args, check=False, input=stdin)
        table = _normal(netns.run("conntrack", "-L").stdout)
        got[name] = (res.returncode, _normal(res.stdout), res.stderr, table)
    return got


UPDATES = [
    "-U -f ipv4 -m 0x300/0xff00",  # move every IPv4 flow onto "ISP 0x300", keeping the low bits
    "-U -f ipv4 -p tcp -m 0x5",
    "-U -s 10.1.0.0/16 -m 0x1/0x1",
    "-U -d 192.0.2.0 --mask-dst 255.255.255.0 -p udp --dport 53 -m 0x200/0xff00",
    "-U -f ipv6 -p udp -u ASSURED",
    "-U -f ipv4 -p tcp --state TIME_WAIT",
    "-U -f ipv4 -n -m 0x400/0xff00",
    "-U -s 9.9.9.9 -m 1",  # nothing matches: exit 1
]


@pytest.mark.parametrize("args", UPDATES)
def test_update_leaves_the_table_conntrack_leaves(netns: Netns, args: str) -> None:
    # 200 entries: conntrack 1.4.7 cannot update more than ~256 (see test_update_of_a_large_table_...)
    got = _both(netns, lambda: netns.fill(200), args.split())
    (their_rc, their_out, their_err, their_table), (rc, out, err, table) = got["theirs"], got["ours"]
    assert rc == their_rc, (err, their_err)
    assert _unzoned(table) == _unzoned(their_table), "the tables left differ"
    assert table != _both(netns, lambda: netns.fill(200), ["-L"])["ours"][1] or rc == 1, "nothing was updated"
    summary = re.compile(r"\d+ flow entries have been updated\.")
    assert summary.fullmatch(_summary(their_err)[-1]) and _summary(err) == [
        f"{len(out)} flow entries have been updated."
    ]
    # conntrack 1.4.7 reads its -U replies out of step and prints only some of the updated entries (and miscounts
    # them): each line it printed is one of ours, and we print one line per entry updated.
    assert set(their_out) <= set(out)


def test_update_of_a_large_table_works_where_conntrack_stops(netns: Netns) -> None:
    got = _both(netns, lambda: netns.fill(3000), ["-U", "-f", "ipv4", "-m", "0x300/0xff00"])
    assert got["theirs"][0] == 1 and "Operation failed: No buffer space available" in got["theirs"][2]
    rc, out, err, table = got["ours"]

    def isp(line: str) -> int:
        return int(re.search(r"mark=(\d+)", line)[1]) & 0xFF00  # type: ignore[index]

    netns.run("conntrack", "-F")
    netns.fill(3000)
    moved = [line for line in _normal(netns.run("conntrack", "-L", "-f", "ipv4").stdout) if isp(line) != 0x300]
    assert (
        rc == 0 and len(out) == len(moved) > 2000 and _summary(err) == [f"{len(out)} flow entries have been updated."]
    )
    assert all(isp(line) == 0x300 for line in table if "src=fd" not in line)


def test_update_reaches_entries_in_zones_where_conntrack_fails(netns: Netns) -> None:
    def prepare() -> None:
        for src, zone in (("1.1.1.1", []), ("1.1.1.2", ["-w", "7"]), ("1.1.1.3", ["--orig-zone", "7"])):
            netns.run("conntrack", "-I", "-s", src, "-d", "2.2.2.2", "-p", "udp", "--sport", "1", "--dport", "2",
                      "-t", "100", "-m", "0x201", *zone)  # fmt: skip

    got = _both(netns, prepare, ["-U", "-f", "ipv4", "-m", "0x300/0xff00"])
    assert "Operation failed: No such file or directory" in got["theirs"][2]
    assert [line for line in got["theirs"][3] if "mark=769" in line] == [got["theirs"][3][0]]  # only the unzoned one
    rc, out, err, table = got["ours"]
    assert rc == 0 and _summary(err) == ["3 flow entries have been updated."] and len(out) == 3
    assert all("mark=769" in line for line in table), table


def test_update_without_a_family_works_where_conntrack_fails(netns: Netns) -> None:
    got = _both(netns, lambda: netns.fill(200), ["-U", "-m", "0x300/0xff00"])
    assert got["theirs"][0] == 1 and "Operation not supported" in got["theirs"][2]
    rc, out, err, table = got["ours"]
    assert rc == 0 and _summary(err) == [f"{len(out)} flow entries have been updated."] and len(out) > 100
    assert all(int(re.search(r"mark=(\d+)", line)[1]) & 0xFF00 == 0x300 for line in table)  # type: ignore[index]


def test_update_sets_the_timeout(netns: Netns) -> None:
    netns.fill(100)
    netns.wanlb("-U", "-f", "ipv4", "-p", "udp", "-t", "7777")
    listing = netns.run("conntrack", "-L", "-p", "udp", "-f", "ipv4").stdout
    timeouts = {int(line.split()[2]) for line in listing.splitlines()}
    assert timeouts and max(timeouts) <= 7777 and min(timeouts) >= 7777 - 60, timeouts


CREATES = [
    ["-I", "-s", "1.1.1.1", "-d", "2.2.2.2", "-p", "tcp", "--sport", "1", "--dport", "2", "-t", "100",
     "--state", "ESTABLISHED", "-u", "SEEN_REPLY,ASSURED", "-m", "0x301/0xff00"],
    ["-I", "-s", "1.1.1.2", "-d", "2.2.2.2", "-r", "3.3.3.3", "-q", "4.4.4.4", "-p", "udp", "--sport", "7",
     "--dport", "8", "--reply-port-src", "5", "--reply-port-dst", "6", "-t", "50"],
    ["-I", "-r", "3.3.3.3", "-q", "4.4.4.4", "-p", "udp", "--reply-port-src", "5", "--reply-port-dst", "6", "-t", "9"],
    ["-I", "-s", "1.1.1.7", "-d", "2.2.2.2", "-p", "icmp", "--icmp-type", "8", "--icmp-code", "0", "--icmp-id", "5",
     "-t", "10", "-w", "3"],
    ["-I", "-s", "fd00::1", "-d", "fd00::2", "-p", "icmpv6", "--icmpv6-type", "128", "--icmpv6-code", "0",
     "--icmpv6-id", "9", "-t", "10", "--orig-zone", "4"],
    ["-I", "-s", "1.1.1.8", "-d", "2.2.2.2", "-p", "gre", "--srckey", "0x10", "--dstkey", "0x20", "-t", "10"],
    ["-I", "-s", "1.1.1.9", "-d", "2.2.2.2", "-p", "50", "-t", "10"],
    ["-A", "-s", "1.1.1.1", "-d", "2.2.2.2", "-p", "udp", "--sport", "1", "--dport", "2", "-t", "10", "-m", "4"],
]  # fmt: skip


@pytest.mark.parametrize("args", CREATES, ids=lambda a: " ".join(a[:6]))
def test_create_makes_the_entry_conntrack_makes(netns: Netns, args: list[str]) -> None:
    got = _both(netns, lambda: None, args)
    assert got["ours"][0] == got["theirs"][0] == 0, got
    assert _summary(got["ours"][2]) == _summary(got["theirs"][2]) and got["ours"][1] == got["theirs"][1] == []
    assert got["ours"][3] == got["theirs"][3] and len(got["ours"][3]) == 1


def test_create_of_an_existing_entry_fails_as_conntrack_does(netns: Netns) -> None:
    entry = ["-s", "1.1.1.1", "-d", "2.2.2.2", "-p", "udp", "--sport", "1", "--dport", "2", "-t", "10"]
    got = _both(netns, lambda: netns.run("conntrack", "-I", *entry), ["-I", *entry, "-m", "5"])
    assert got["ours"][0] == got["theirs"][0] == 1
    assert (
        _summary(got["ours"][2])
        == _summary(got["theirs"][2])
        == ["Operation failed: Such conntrack exists, try -U to update"]
    )
    assert got["ours"][3] == got["theirs"][3]
    added = _both(netns, lambda: netns.run("conntrack", "-I", *entry), ["-A", *entry, "-m", "5"])
    assert added["ours"][0] == added["theirs"][0] == 0 and added["ours"][3] == added["theirs"][3]
    assert _summary(added["ours"][2]) == _summary(added["theirs"][2]) == ["0 flow entries have been added."]
    assert "mark=0" in added["ours"][3][0]  # -A leaves an existing entry as it is


BATCH = textwrap.dedent(
    """\
    # a restore: comments, blank lines and indentation are skipped
    -I -s 1.1.1.1 -d 2.2.2.2 -p tcp --sport 1 --dport 2 -t 100 --state ESTABLISHED -u SEEN_REPLY -m 0x201

    \t -I -s 1.1.1.2 -d 2.2.2.2 -p udp --sport 1 --dport 2 -t 100 -m 0x201
    -A -s 1.1.1.3 -d 2.2.2.2 -p udp --sport 1 --dport 2 -t 100 -m 0x201
    -D -s 1.1.1.1
    -D -s 9.9.9.9
    -U -s 1.1.1.2 -m 0x300/0xff00
    """
)


def test_load_file_applies_its_lines_as_conntrack_does(netns: Netns, tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    batch.write_text(BATCH)
    got = _both(netns, lambda: netns.fill(50), ["-R", str(batch)])
    assert got["ours"][0] == got["theirs"][0] == 0, got
    assert got["ours"][3] == got["theirs"][3]
    assert got["ours"][1] == got["theirs"][1] and len(got["ours"][1]) == 2  # the entry deleted, the one updated
    assert _summary(got["ours"][2]) == _summary(got["theirs"][2]) == []  # no summaries in a batch
    stdin = _both(netns, lambda: netns.fill(50), ["-R", "-"], stdin=BATCH)
    assert stdin["ours"][3] == got["ours"][3]


@pytest.mark.parametrize(
    "text",
    [
        "-I -s 1.1.1.7 -d 2.2.2.2 -p udp --sport 1 --dport 2 -t 100\n-L\n",
        "-I -s 1.1.1.7 -d 2.2.2.2 -p udp --sport 1 --dport 2 -t 100\n-I -s 1.1.1.x -d 2.2.2.2 -p udp -t 1\n",
    ],
    ids=["list-line", "bad-address"],
)
def test_a_bad_load_file_changes_nothing(netns: Netns, tmp_path: Path, text: str) -> None:
    batch = tmp_path / "batch"
    batch.write_text(text)
    got = _both(netns, lambda: None, ["-R", str(batch)])
    assert got["ours"][0] == got["theirs"][0] == 2 and got["ours"][3] == got["theirs"][3] == []
    assert f"{batch}:2: " in got["ours"][2], got["ours"][2]  # which line is wrong


def test_load_file_stops_at_a_failed_create(netns: Netns, tmp_path: Path) -> None:
    line = "-I -s 1.1.1.9 -d 2.2.2.2 -p udp --sport 1 --dport 2 -t 100\n"
    batch = tmp_path / "batch"
    batch.write_text(line + line + line.replace("1.1.1.9", "1.1.1.8"))
    got = _both(netns, lambda: None, ["-R", str(batch)])
    assert got["ours"][0] == got["theirs"][0] == 1 and got["ours"][3] == got["theirs"][3]
    assert _summary(got["ours"][2]) == ["Operation failed: Such conntrack exists, try -U to update"]


def test_each_load_file_line_uses_its_own_mark(netns: Netns, tmp_path: Path) -> None:
    """conntrack 1.4.7 applies the file's last -m to every -U and -D line; wanlb uses each line's own."""
    batch = tmp_path / "batch"
    batch.write_text(
        "-I -s 1.1.1.2 -d 2.2.2.2 -p udp --sport 1 --dport 2 -t 100 -m 5\n"
        "-I -s 1.1.1.3 -d 2.2.2.2 -p udp --sport 1 --dport 2 -t 100 -m 6\n"
        "-D -m 5\n-U -s 1.1.1.3 -m 7\n"
        "-I -s 1.1.1.4 -d 2.2.2.2 -p udp --sport 1 --dport 2 -t 100 -m 9\n"
    )
    got = _both(netns, lambda: None, ["-R", str(batch)])
    assert [re.search(r"src=(\S+).*mark=(\d+)", line).groups() for line in got["ours"][3]] == [  # type: ignore[union-attr]
        ("1.1.1.3", "7"), ("1.1.1.4", "9")
    ]  # fmt: skip
    assert got["ours"][3] != got["theirs"][3]


_HOLD = textwrap.dedent(
    """
    import sys
    from wanlb.ctnetlink.client import Conntrack
    from wanlb.ctnetlink.entry import Entry
    with Conntrack() as ct:  # its socket stays open until stdin closes, so its owner can be found
        e = Entry(family=2, proto=17, src=bytes([1, 1, 1, 1]), dst=bytes([2, 2, 2, 2]), sport=1, dport=2,
                  reply_src=bytes([2, 2, 2, 2]), reply_dst=bytes([1, 1, 1, 1]), reply_sport=2, reply_dport=1,
                  timeout=100)
        assert ct.create([e]) == [0]
        print("created", flush=True)
        sys.stdin.read()
    """
)


def test_events_name_the_userspace_process_that_caused_them(netns: Netns) -> None:
    netns.run("sysctl", "-qw", "net.netfilter.nf_conntrack_events=1")
    watchers = {
        "ours": netns.popen("-E", "-e", "NEW"),
        "theirs": subprocess.Popen(["ip", "netns", "exec", netns.name, "conntrack", "-E", "-e", "NEW"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    }  # fmt: skip
    lines: dict[str, list[str]] = {"ours": [], "theirs": []}
    done = {k: threading.Event() for k in watchers}

    def read(name: str) -> None:
        for line in watchers[name].stdout:  # type: ignore[union-attr]
            lines[name].append(line)
            done[name].set()

    for name in watchers:
        threading.Thread(target=read, args=(name,), daemon=True).start()
    for _ in range(100):  # both subscribed (a NETLINK_NETFILTER socket bound to groups, twice)
        rows = netns.run("cat", "/proc/net/netlink").stdout.splitlines()[1:]
        if sum(1 for r in rows if r.split()[1] == "12" and int(r.split()[3], 16)) >= 2:
            break
        threading.Event().wait(0.05)
    env_cmd = ["ip", "netns", "exec", netns.name, sys.executable, "-c", _HOLD]
    holder = subprocess.Popen(env_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": SRC})  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "created\n"
        for name in watchers:
            assert done[name].wait(30), f"{name} printed no event"
    finally:
        holder.communicate("", timeout=30)
        for proc in watchers.values():
            proc.terminate()
            proc.wait(timeout=10)
    assert lines["ours"] == lines["theirs"]
    assert re.search(r" \[USERSPACE\] portid=\d+ progname=python3\S*$", lines["ours"][0]), lines["ours"]


def test_count_by_isp_takes_dash_c_and_calls_unmarked_entries_none(netns: Netns, isp_config: str) -> None:
    netns.fill(500)
    netns.run("conntrack", "-I", "-s", "1.1.1.1", "-d", "2.2.2.2", "-p", "udp", "--sport", "1", "--dport", "2",
              "-t", "100")  # fmt: skip
    res = netns.wanlb("count", "--by", "isp", "-c", isp_config, "--json")
    counts = json.loads(res.stdout)["counts"]
    assert counts["none"] >= 1 and "-" not in counts and set(ISPS) <= set(counts)
    text = netns.wanlb("count", "--by", "isp", "-c", isp_config).stdout
    assert re.search(r"^none +\d+$", text, re.M), text
