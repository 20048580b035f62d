"""delete, watch, stats and the daemon-side counter in scratch namespaces."""

from __future__ import annotations

import json
import queue
import sys
import textwrap
import threading
import time

import pytest
from conftest import ISPS, Netns

pytestmark = pytest.mark.root


def _marks(ns: Netns) -> dict[str, int]:
    return json.loads(ns.wanlb("count", "--by", "mark", "--json").stdout)["counts"]


def test_delete_isp_removes_exactly_its_entries(netns: Netns, isp_config: str) -> None:
    netns.fill(4000)
    before = _marks(netns)
    res = netns.wanlb("--config", isp_config, "delete", "--isp", "b")
    after = _marks(netns)
    assert str(ISPS["b"]) not in after
    assert {m: n for m, n in before.items() if m != str(ISPS["b"])} == after
    assert f"{before[str(ISPS['b'])]} entries deleted" in res.stderr


def test_delete_by_tuple_filter_and_refusals(netns: Netns) -> None:
    netns.fill(3000)
    udp53 = netns.run("conntrack", "-L", "-p", "udp", "--dport", "53").stdout.count("\n")
    total = int(netns.run("conntrack", "-C").stdout)
    assert udp53 > 0
    netns.wanlb("delete", "-p", "udp", "--dport", "53")
    assert netns.run("conntrack", "-L", "-p", "udp", "--dport", "53").stdout == ""
    assert int(netns.run("conntrack", "-C").stdout) == total - udp53
    assert netns.wanlb("delete", check=False).returncode == 2
    netns.wanlb("delete", "--all")
    assert int(netns.run("conntrack", "-C").stdout) == 0


_CONNECT = textwrap.dedent(
    """
    import socket
    srv = socket.create_server(("127.0.0.1", 0))
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    cli.sendall(b"x"); conn.recv(1)
    print(cli.getsockname()[1], srv.getsockname()[1])
    cli.close(); conn.close(); srv.close()
    """
)


# conntrack hooks only run in a namespace once something uses them
_TRACK_LOCAL = (
    "add table inet wlct; add chain inet wlct out { type filter hook output priority 0; }; "
    "add rule inet wlct out ct state new counter"
)


def _subscribed(ns: Netns) -> bool:
    """Is some NETLINK_NETFILTER socket in the namespace bound to multicast groups?"""
    rows = ns.run("cat", "/proc/net/netlink").stdout.splitlines()[1:]
    return any(r.split()[1] == "12" and int(r.split()[3], 16) for r in rows)


def test_watch_shows_new_and_destroy_of_a_real_connection(netns: Netns) -> None:
    netns.run("ip", "link", "set", "lo", "up")
    netns.run("nft", _TRACK_LOCAL)
    watch = netns.popen("watch", "--json", "-p", "tcp", "-e", "new,destroy")
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in watch.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        for _ in range(100):
            if _subscribed(netns):
                break
            time.sleep(0.05)
        sport, dport = map(int, netns.run(sys.executable, "-c", _CONNECT).stdout.split())
        netns.run("conntrack", "-D", "-p", "tcp", "--sport", str(sport), "--dport", str(dport))
        seen: dict[str, dict] = {}
        while len(seen) < 2:
            obj = json.loads(lines.get(timeout=20))
            if obj.get("orig", {}).get("sport") == sport:
                seen[obj["event"]] = obj
        assert seen["new"]["orig"] == seen["destroy"]["orig"]
        assert seen["new"]["orig"]["dst"] == "127.0.0.1"
        watch.terminate()  # SIGTERM ends it like Ctrl-C: status 0 and the summary, as conntrack -E
        assert watch.wait(10) == 0
        assert watch.stderr is not None and "wanlb: events new " in watch.stderr.read()
    finally:
        if watch.poll() is None:
            watch.kill()
        watch.wait(10)


def test_stats_match_proc(netns: Netns) -> None:
    netns.fill(500)
    ours = json.loads(netns.wanlb("stats", "--json").stdout)
    proc = netns.run("cat", "/proc/net/stat/nf_conntrack").stdout.splitlines()
    names = proc[0].split()
    rows = [dict(zip(names, (int(x, 16) for x in line.split()), strict=True)) for line in proc[1:]]
    assert ours["count"] == rows[0]["entries"] == 500
    assert ours["max"] == int(netns.run("cat", "/proc/sys/net/netfilter/nf_conntrack_max").stdout)
    for cpu in ours["cpus"]:
        row = rows[cpu["cpu"]]
        for key in ("found", "invalid", "insert_failed", "drop", "early_drop", "search_restart"):
            assert cpu[key] == row[key], key


_COUNTER = textwrap.dedent(
    """
    import asyncio, json, sys
    from wanlb.ctcounts import ConnCounter
    from wanlb.ctnetlink.client import Conntrack
    from wanlb.ctnetlink.synth import fill

    async def settle(counter, want):
        for _ in range(400):
            if counter.counts() == want():
                return True
            await asyncio.sleep(0.05)
        return False

    async def main():
        fill(300)  # before the listener: only the first resync can know these
        exec(sys.argv[1])  # a real loopback connection, also before the listener
        counter = ConnCounter({0x100: "a", 0x200: "b"}, mark_mask=0xFF00, auto_mode_interval=0.5)
        task = asyncio.create_task(counter.run())
        while counter.resyncs == 0:
            await asyncio.sleep(0.01)
        resyncs = counter.resyncs
        with Conntrack() as ct:
            truth = lambda: {m: n for m, n in ct.count_by_mark(None, 0xFF00).items() if n}
            # more entries (NEW events), then remove all UDP ones (DESTROY events)
            with Conntrack() as w:
                from wanlb.ctnetlink.synth import entries
                w.create([e._replace(src=bytes([10, 200, e.src[2], e.src[3]])) for e, _ in entries(2000)])
            ok1 = await settle(counter, truth)
            with Conntrack() as w:
                import ipaddress
                from wanlb.ctnetlink.filters import Filter
                w.delete_matching(Filter(proto=17))
                # created before any listener (no event state under nf_conntrack_events=2)
                w.delete_matching(Filter(proto=6, dst=ipaddress.ip_network("127.0.0.1/32")))
            ok2 = await settle(counter, truth)
        task.cancel()
        print(json.dumps({"ok": [ok1, ok2], "resyncs": counter.resyncs - resyncs, "lost": counter.lost_events,
                          "by_isp": counter.by_isp()}))

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("events_mode", ["1", "2"])
def test_conn_counter_follows_events(netns: Netns, events_mode: str) -> None:
    netns.run("sysctl", "-qw", f"net.netfilter.nf_conntrack_events={events_mode}")
    netns.run("ip", "link", "set", "lo", "up")
    netns.run("nft", _TRACK_LOCAL)
    out = json.loads(netns.run(sys.executable, "-c", _COUNTER, _CONNECT).stdout.splitlines()[-1])
    assert out["ok"] == [True, True]
    assert out["lost"] == 0

    assert set(out["by_isp"]) == {"a", "b"}


@pytest.mark.parametrize("output", ["text", "extended", "json"])
@pytest.mark.parametrize("names", ["none", "config"])
def test_list_into_a_closed_pipe_ends_quietly(netns: Netns, isp_config: str, output: str, names: str) -> None:
    """`list | head -1`: one line, no message, status 141 (as for conntrack -L, which SIGPIPE kills)."""
    netns.fill(4000)  # ~0.7 MB of text: far more than the pipe holds
    args = ("--config", isp_config, "list", "--isp", "b") if names == "config" else ("--config", "/nonexistent", "list")
    first, code, err = netns.first_line(*args, "-o", output)
    assert (code, err) == (141, "")
    if names == "config":  # the quick config read and its check (ConfigCheck) are pending while the pipe closes
        assert (json.loads(first)["isp"] if output == "json" else first.split(" isp=")[1].strip()) == "b"
    else:
        assert first.startswith(("tcp ", "udp ", "icmp", "ipv4 ", "ipv6 ", "{"))


_CHURN = textwrap.dedent(
    """
    import asyncio, json, threading, time
    from wanlb.ctcounts import ConnCounter
    from wanlb.ctnetlink.client import Conntrack
    from wanlb.ctnetlink.synth import entries, fill

    BATCH = [e for e, nat in entries(200) if nat is None and e.family == 2]

    def churn(stop):
        # entries appear and vanish while dumps run: the dump sees some of them and misses others
        with Conntrack() as ct:
            n, previous = 0, []
            while not stop.is_set():
                n += 1
                net = bytes([10, 200 + n % 2])
                batch = [e._replace(src=net + e.src[2:], reply_dst=net + e.src[2:]) for e in BATCH]
                made = ct.create(batch)
                assert made == [0] * len(batch), made
                ct.delete(previous)
                previous = batch
                time.sleep(0.002)  # a busy gateway, not a flood: the counter's reads can catch up

    async def main():
        fill(40000)  # a dump that takes long enough for the churn to run inside it
        # no periodic resync: only the ones requested below, all while the churn runs
        counter = ConnCounter(mark_mask=0xFF00, resync_interval=3600, auto_mode_interval=3600)
        task = asyncio.create_task(counter.run())
        while counter.resyncs == 0:
            await asyncio.sleep(0.01)
        stop = threading.Event()
        worker = threading.Thread(target=churn, args=(stop,))
        worker.start()
        deadline = time.monotonic() + 120  # fail, never hang
        for _ in range(12):
            await asyncio.sleep(0.15)
            before = counter.resyncs
            counter._resync_needed.set()
            while counter.resyncs == before:
                assert time.monotonic() < deadline, "a resync did not finish"
                await asyncio.sleep(0.01)
        stop.set()
        worker.join()
        resyncs = counter.resyncs
        await asyncio.sleep(1.0)  # the pump reads what is left; no resync runs after the churn
        with Conntrack() as ct:
            truth = {m: n for m, n in ct.count_by_mark(None, 0xFF00).items() if n}
        print(json.dumps({"counts": {str(k): v for k, v in counter.counts().items()},
                          "truth": {str(k): v for k, v in truth.items()},
                          "resyncs_after": counter.resyncs - resyncs, "lost": counter.lost_events}))
        task.cancel()

    asyncio.run(main())
    """
)


def test_conn_counter_resync_during_churn_is_exact(netns: Netns) -> None:
    """Resyncs that run while entries come and go leave the counts equal to the table (no later resync)."""
    netns.run("sysctl", "-qw", "net.netfilter.nf_conntrack_events=1")
    out = json.loads(netns.run(sys.executable, "-c", _CHURN).stdout.splitlines()[-1])
    assert (out["lost"], out["resyncs_after"]) == (0, 0)
    assert out["counts"] == out["truth"]
