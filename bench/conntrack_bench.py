"""wanlb conntrack vs conntrack-tools on a 262,144-entry table in a scratch namespace.

Run as root:  python bench/conntrack_bench.py [--rounds 5] [--entries 262144] [--busy]

Each comparison runs the wanlb command and its conntrack-tools equivalent
alternately, ``--rounds`` times, and prints medians and ratios (wanlb / tools)
as a Markdown table: wall-clock time of the whole command (interpreter start
included) and its CPU time (user + sys of the command and the processes it
waited for).  ``--busy`` keeps one core spinning meanwhile, as on a gateway with
no idle core.  The namespace is deleted on every exit path.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Benchmark this checkout, whatever copy of wanlb the interpreter has installed.
SRC = str(Path(__file__).resolve().parents[1] / "src")
ISPS = {"a": 0x100, "b": 0x200, "c": 0x300, "d": 0x400}
ENV = {**os.environ, "PYTHONPATH": SRC}
PY = sys.executable
sys.path.insert(0, SRC)  # the control client, for the daemon in the events burst


class Bench:
    def __init__(self, ns: str, config: str) -> None:
        self.ns = ns
        self.config = config

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, "sh", "-c", script], env=ENV, capture_output=True, text=True, check=check
        )

    def wanlb(self, args: str, config: bool = True) -> str:
        """The CLI as the ``wanlb`` script runs it, no daemon.  With ``config``, as on a gateway where wanlb
        runs: ISP names come from its runtime state (next to the socket path); without, as on a host with
        neither config nor state."""
        if not config:
            return f"{PY} -m wanlb.cli conntrack --config /nonexistent --socket /nonexistent {args}"
        return f"{PY} -m wanlb.cli conntrack --config {self.config} --socket {self.socket} {args}"

    socket = "/nonexistent"

    def timed(self, script: str) -> tuple[float, int, float]:
        """Wall time, peak RSS (KiB) and CPU time (user+sys of the command and what it waited for, s) of one
        run; ``ip netns exec`` execs, so wait4 sees the command."""
        t0 = time.perf_counter()
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, "sh", "-c", f"exec {script}"], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        _pid, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"{script!r} exited {proc.returncode}")
        return elapsed, usage.ru_maxrss, usage.ru_utime + usage.ru_stime

    def refill_isp(self, mark: int) -> None:
        """Re-create the entries of one ISP (after a delete) so the next round sees a full table."""
        code = (
            "from wanlb.ctnetlink.synth import entries; from wanlb.ctnetlink.client import Conntrack; "
            f"ct = Conntrack(); errs = [c for c in ct.create(e for e, _ in entries({self.entries}) "
            f"if e.mark == {mark}) if c and c != 17]; assert not errs, errs"
        )
        self.sh(f"{PY} -c '{code}'")

    entries = 0


def _write_state(config: Path, tmp: Path) -> str:
    """The runtime state a running wanlb would have written for ``config``; returns its socket path."""
    from wanlb import runtime
    from wanlb.config import load_config

    run = tmp / "run"
    run.mkdir(mode=0o700)
    runtime.save(run / "wanlb.state.json", runtime.allocate(load_config(config), None, reload=False).state)
    return str(run / "wanlb.sock")


def compare(b: Bench, rounds: int, ours: str, theirs: str) -> dict:
    """Alternate the two commands ``rounds`` times; medians, ratio and wanlb's peak RSS."""
    runs: dict[str, list[tuple[float, int, float]]] = {"ours": [], "theirs": []}
    for _ in range(rounds):
        for which in ("ours", "theirs"):
            runs[which].append(b.timed(ours if which == "ours" else theirs))
    return _summary(runs)


def _summary(runs: dict[str, list[tuple[float, int, float]]]) -> dict:
    """Medians of wall and CPU time, their ratios (wanlb / tools), wanlb's peak RSS."""
    wall = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
    cpu = {k: statistics.median(r[2] for r in v) for k, v in runs.items()}
    return {
        "ours": wall["ours"],
        "theirs": wall["theirs"],
        "ratio": wall["ours"] / wall["theirs"],
        "cpu_ours": cpu["ours"],
        "cpu_theirs": cpu["theirs"],
        "cpu_ratio": cpu["ours"] / cpu["theirs"] if cpu["theirs"] else float("nan"),
        "rss_mb": max(r[1] for r in runs["ours"]) / 1024,
    }


DAEMON_LINKS = ("lan0", "wan0", "wan1", "wan2", "wan3")


def _daemon_config(tmp: Path) -> Path:
    """The benchmark's four ISPs (same marks and mask) on links of their own, so ``wanlb run`` can start."""
    isps = "\n".join(
        f"  - {{name: {n}, interface: wan{i}, gateway: 10.99.{i}.1, mark: {m:#x}}}"
        for i, (n, m) in enumerate(ISPS.items())
    )
    path = tmp / "daemon.yaml"
    path.write_text(
        f"lan:\n  interfaces: [lan0]\nmark_mask: 0xff00\nisps:\n{isps}\ncontrol:\n  socket: {tmp / 'wanlb.sock'}\n"
    )
    return path


def _start_daemon(b: Bench, tmp: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    """``wanlb run`` in the namespace with :func:`_daemon_config`: (process, control socket, config)."""
    links = "; ".join(  # veth pairs inside the namespace: this kernel has no dummy driver
        [f"ip link add {d} type veth peer name {d}p; ip link set {d} up; ip link set {d}p up" for d in DAEMON_LINKS]
        + [f"ip addr add 10.99.{i}.2/24 dev wan{i}" for i in range(4)]
    )
    b.sh(links)
    config = _daemon_config(tmp)
    with (tmp / "daemon.log").open("wb") as log:
        proc = subprocess.Popen(["ip", "netns", "exec", b.ns, PY, "-m", "wanlb.cli", "run", "-c", str(config)],
                                stderr=log, env=ENV)  # fmt: skip
    sock = str(tmp / "wanlb.sock")
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"wanlb run exited: {(tmp / 'daemon.log').read_text()[-2000:]}")
        if os.path.exists(sock):
            return proc, sock, config
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("wanlb run did not open its control socket")


def _dump_by_mark(b: Bench) -> dict[int, int]:
    """A fresh table count per mark, by conntrack-tools (independent of our codec)."""
    out = b.sh("conntrack -L 2>/dev/null | grep -o 'mark=[0-9]*' | sort | uniq -c").stdout
    counts = {int(mark.split("=")[1]): int(n) for n, mark in (line.split() for line in out.splitlines())}
    return {m: n for m, n in counts.items() if n}


def _daemon_vs_dump(b: Bench, sock: str, settle: float = 30.0) -> dict:
    """The daemon's per-mark counts once they stop changing, next to a fresh dump."""
    from wanlb.control import request

    t0, last = time.monotonic(), None
    while time.monotonic() - t0 < settle:
        reply = request(sock, {"cmd": "conn_counts"})
        counts = {int(m): n for m, n in reply["counts"].items()}
        if counts == last:
            break
        last = counts
        time.sleep(0.5)
    dump = _dump_by_mark(b)
    return {"equal": counts == dump, "daemon": counts, "dump": dump,
            "lost_events": reply["lost_events"], "resyncs": reply["resyncs"]}  # fmt: skip


def _wait_quiet(paths: list[Path]) -> None:
    last = -1
    for _ in range(60):  # until the listeners stopped writing
        time.sleep(1.0)
        size = sum(p.stat().st_size for p in paths)
        if size == last:
            return
        last = size


def events(b: Bench, count: int) -> dict:
    """``count`` NEW then ``count`` DESTROY while ``watch --json``, ``conntrack -E`` and ``wanlb run`` listen.

    The namespace runs with ``nf_conntrack_events=1`` so that the daemon's counter does
    not resync every 30 s (its ``events=2`` safeguard): its counts after each half of
    the burst then come from events alone, and ``resyncs`` shows if one ran anyway.
    """
    b.sh("sysctl -qw net.netfilter.nf_conntrack_events=1")
    with tempfile.TemporaryDirectory(prefix="wlct-events-") as tmp:
        path_w, path_e = Path(tmp) / "watch.jsonl", Path(tmp) / "conntrack-E.txt"
        daemon, sock, _config = _start_daemon(b, Path(tmp))
        watch = ctev = None
        try:
            with path_w.open("w") as out_w, path_e.open("w") as out_e:
                watch = subprocess.Popen(["ip", "netns", "exec", b.ns, *b.wanlb("watch --json -e new,destroy").split()],
                                         stdout=out_w, stderr=subprocess.PIPE, env=ENV)  # fmt: skip
                ctev = subprocess.Popen(["ip", "netns", "exec", b.ns, "conntrack", "-E", "-e", "NEW,DESTROY"],
                                        stdout=out_e, stderr=subprocess.DEVNULL)  # fmt: skip
                time.sleep(1.0)  # all subscribed
                before = _daemon_vs_dump(b, sock)
                create = (
                    "from wanlb.ctnetlink.synth import entries; from wanlb.ctnetlink.client import Conntrack; "
                    f"burst = [e._replace(mark=0x500) for e, _ in entries({count})]; "
                    "assert Conntrack().create(burst).count(0) == len(burst)"
                )
                b.sh(f"{PY} -c '{create}'")
                _wait_quiet([path_w, path_e])
                after_new = _daemon_vs_dump(b, sock)
                flush = (
                    "from wanlb.ctnetlink.client import Conntrack; from wanlb.ctnetlink.filters import Filter; "
                    "Conntrack().delete_matching(Filter(mark=0x500, mark_mask=0xff00))"
                )
                b.sh(f"{PY} -c '{flush}'")
                _wait_quiet([path_w, path_e])
                after_destroy = _daemon_vs_dump(b, sock)
                for p in (watch, ctev):  # SIGTERM: SIGINT is ignored by processes started in the background
                    p.send_signal(signal.SIGTERM)
                    p.wait(10)
        finally:
            for p in (watch, ctev):  # never left behind, whatever failed above
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
            daemon.terminate()
            daemon.wait(15)
        lines = path_w.read_text().splitlines()
        ct_lines = path_e.read_text().splitlines()
    remaining = int(b.sh("conntrack -L -m 0x500/0xff00 2>/dev/null | wc -l").stdout)
    return {
        "burst": count,
        "watch_new": sum('"event":"new"' in x for x in lines),
        "watch_destroy": sum('"event":"destroy"' in x for x in lines),
        "watch_lost_reports": sum('"event":"lost"' in x for x in lines),
        "table_after": remaining,
        "conntrack_E_new": sum("[NEW]" in x for x in ct_lines),
        "conntrack_E_destroy": sum("[DESTROY]" in x for x in ct_lines),
        "daemon_before": before,
        "daemon_after_new": after_new,
        "daemon_after_destroy": after_destroy,
    }


def event_listeners() -> int:
    """Conntrack event subscribers in the root and named namespaces.

    The kernel decides whether to build event messages by a machine-wide check,
    so one listener anywhere (another test run's daemon) makes every create and
    delete here build NEW/DESTROY messages: printed so the numbers can be read.
    """
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    namespaces = [line.split()[0] for line in listed.splitlines() if line.strip()]
    total = 0
    for ns in [None, *namespaces]:
        cmd = ["cat", "/proc/net/netlink"] if ns is None else ["ip", "netns", "exec", ns, "cat", "/proc/net/netlink"]
        rows = subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[1:]
        total += sum(1 for r in rows if r.split()[1] == "12" and int(r.split()[3], 16))
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--entries", type=int, default=262144)
    parser.add_argument("--events", type=int, default=100000)
    parser.add_argument(
        "--busy", action="store_true", help="keep one core busy with a spinning process (a busy gateway)"
    )
    args = parser.parse_args()
    hog = subprocess.Popen([PY, "-c", "while True: pass"]) if args.busy else None
    try:
        return _run(args)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


def _run(args: argparse.Namespace) -> int:
    ns = f"wlct-bench-{os.getpid()}-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="wlct-bench-") as tmp:
        config = Path(tmp) / "wanlb.yaml"
        isps = "\n".join(
            f"  - {{name: {n}, interface: wan{i}, gateway: 192.0.2.{i + 1}, mark: {m:#x}}}"
            for i, (n, m) in enumerate(ISPS.items())
        )
        config.write_text(f"lan:\n  interfaces: [lan0]\nmark_mask: 0xff00\nisps:\n{isps}\n")
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            b = Bench(ns, str(config))
            b.socket = _write_state(config, Path(tmp))
            b.entries = args.entries
            t0 = time.perf_counter()
            b.sh(f"{PY} -m wanlb.ctnetlink.synth {args.entries}")
            print(f"filled {args.entries} entries in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
            print(f"conntrack event listeners on this machine: {event_listeners()}")
            client = "10.1.2.3"
            seed_count = (
                "sh -c '" + "; ".join(f"conntrack -L 2>/dev/null | grep -c mark={m}" for m in ISPS.values()) + "'"
            )
            delete = (b.wanlb("delete --isp b"), "conntrack -D -m 0x200/0xff00")
            # as a user types it on a gateway: --config only, the socket is the config's control.socket
            by_daemon = f"{PY} -m wanlb.cli conntrack --config {Path(tmp) / 'daemon.yaml'} delete --isp b"
            rows = [
                ("count --by isp", b.wanlb("count --by isp"), seed_count, ""),
                ("list -o text > /dev/null", b.wanlb("list -o text", config=False), "conntrack -L", ""),
                ("list -o text (runtime state: isp= names)", b.wanlb("list -o text"), "conntrack -L", ""),
                ("list --isp b", b.wanlb("list --isp b"), "conntrack -L -m 0x200/0xff00", ""),
                (f"list -s {client}", b.wanlb(f"list -s {client}", config=False), f"conntrack -L -s {client}", ""),
                ("delete --isp b (65,536), no event listener", *delete, "quiet"),
                ("delete --isp b (65,536), a DESTROY listener", *delete, "listener"),
                ("delete --isp b (65,536), wanlb run running", by_daemon, delete[1], "daemon"),
            ]
            print(
                "| wanlb command | conntrack-tools | wanlb s | tools s | ratio | wanlb CPU s | tools CPU s "
                "| CPU ratio | wanlb peak RSS MB |"
            )
            print("|---|---|---|---|---|---|---|---|---|")
            for name, ours, theirs, kind in rows:
                if kind == "daemon":
                    r = compare_delete_daemon(b, args.rounds, ours, theirs, Path(tmp))
                elif kind:  # "quiet" or "listener": a delete
                    r = compare_delete(b, args.rounds, ours, theirs, listener=kind == "listener")
                else:
                    r = compare(b, args.rounds, ours, theirs)
                theirs_name = "seed: conntrack -L | grep -c mark=N, per ISP" if theirs is seed_count else theirs
                print(f"| `{name}` | `{theirs_name}` | {r['ours']:.3f} | {r['theirs']:.3f} | "
                      f"{r['ratio']:.2f}x | {r['cpu_ours']:.3f} | {r['cpu_theirs']:.3f} | {r['cpu_ratio']:.2f}x | "
                      f"{r['rss_mb']:.1f} |", flush=True)  # fmt: skip
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)
        # the events burst needs room in the table: a fresh namespace
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            print(f"\nevents: {events(Bench(ns, str(config)), args.events)}")
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


_IDLE_LISTENER = (
    "import socket, time; s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12); s.bind((0, 4)); "
    "print(flush=True); time.sleep(86400)"
)  # bound to NFNLGRP_CONNTRACK_DESTROY, never reads: the kernel builds every message, then drops it


def compare_delete(b: Bench, rounds: int, ours: str, theirs: str, listener: bool) -> dict:
    """Like :func:`compare`, restoring ISP b's 65,536 entries before every run (not timed).

    Deleting costs the kernel one DESTROY message per entry when the entry carries
    event state and someone listens (the kernel checks for listeners machine-wide).
    Without ``listener`` the namespace runs with ``nf_conntrack_events=0``, so no
    process elsewhere on the machine changes the numbers; with it, events are on
    and an idle DESTROY subscriber sits in the namespace, as ``wanlb run`` does.
    """
    b.sh(f"sysctl -qw net.netfilter.nf_conntrack_events={1 if listener else 0}")
    sub = None
    if listener:
        sub = subprocess.Popen(["ip", "netns", "exec", b.ns, PY, "-c", _IDLE_LISTENER], stdout=subprocess.PIPE)
        assert sub.stdout is not None and sub.stdout.readline() == b"\n"
    try:
        return _alternate_deletes(b, rounds, ours, theirs)
    finally:
        if sub is not None:
            sub.kill()
            sub.wait()


def compare_delete_daemon(b: Bench, rounds: int, ours: str, theirs: str, tmp: Path) -> dict:
    """``delete --isp b`` while ``wanlb run`` runs with a config naming the table's ISPs.

    ``ours`` names that config (``tmp/daemon.yaml``) and no socket, so the CLI finds the
    daemon and hands it the flush; the daemon is also the DESTROY listener, as on a
    gateway.  Events are on (``nf_conntrack_events=1``: its counter does not resync
    every 30 s).  Each run starts once the daemon has counted the refilled entries.
    """
    b.sh("sysctl -qw net.netfilter.nf_conntrack_events=1")
    # entries made while events were off never report DESTROY (and cost the flush less): remake b's
    b.sh("conntrack -D -m 0x200/0xff00 > /dev/null 2>&1", check=False)
    daemon, sock, config = _start_daemon(b, tmp)

    def settle() -> None:
        _wait_counted(sock, ISPS["b"], b.entries // len(ISPS))

    try:
        assert f"--config {config} " in ours
        b.refill_isp(ISPS["b"])
        settle()
        assert '"source": "daemon"' in b.sh(f"{ours} --json").stdout, "the daemon did not take the delete"
        return _alternate_deletes(b, rounds, ours, theirs, settle)
    finally:
        daemon.terminate()
        daemon.wait(15)


def _wait_counted(sock: str, mark: int, want: int, timeout: float = 60.0) -> None:
    """Until the daemon's counter holds ``want`` entries of ``mark`` (it has read their NEW events)."""
    from wanlb.control import request

    deadline = time.monotonic() + timeout
    while request(sock, {"cmd": "conn_counts"})["counts"].get(str(mark)) != want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the daemon did not count {want} entries of mark {mark:#x}")
        time.sleep(0.1)


def _alternate_deletes(b: Bench, rounds: int, ours: str, theirs: str, wait: Callable[[], None] | None = None) -> dict:
    runs: dict[str, list[tuple[float, int, float]]] = {"ours": [], "theirs": []}
    for _ in range(rounds):
        for which in ("ours", "theirs"):
            b.refill_isp(ISPS["b"])
            if wait is not None:
                wait()
            runs[which].append(b.timed(ours if which == "ours" else theirs))
            left = int(b.sh("conntrack -L -m 0x200/0xff00 2>/dev/null | wc -l").stdout)
            assert left == 0, f"{which}: {left} entries of ISP b left"
    return _summary(runs)


if __name__ == "__main__":
    sys.exit(main())
