"""wanlb conntrack vs conntrack-tools on a 262,144-entry table in a scratch namespace.

Run as root:  python bench/conntrack_bench.py [--rounds 5] [--entries 262144]

Each comparison runs the wanlb command and its conntrack-tools equivalent
alternately, ``--rounds`` times, and prints medians and ratios (wanlb / tools)
as a Markdown table.  Wall-clock time of the whole command, interpreter start
included.  The namespace is deleted on every exit path.
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
from pathlib import Path

# Benchmark this checkout, whatever copy of wanlb the interpreter has installed.
SRC = str(Path(__file__).resolve().parents[1] / "src")
ISPS = {"a": 0x100, "b": 0x200, "c": 0x300, "d": 0x400}
ENV = {**os.environ, "PYTHONPATH": SRC}
PY = sys.executable


class Bench:
    def __init__(self, ns: str, config: str) -> None:
        self.ns = ns
        self.config = config

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, "sh", "-c", script], env=ENV, capture_output=True, text=True, check=check
        )

    def wanlb(self, args: str, config: bool = True) -> str:
        """The CLI command line; without ``config`` it runs as on a host with no wanlb config."""
        conf = self.config if config else "/nonexistent"
        return f"{PY} -m wanlb.conntrack_cli --config {conf} --socket /nonexistent {args}"

    def timed(self, script: str) -> tuple[float, int]:
        """Wall time and peak RSS (KiB) of one run; ``ip netns exec`` execs, so wait4 sees the command."""
        t0 = time.perf_counter()
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, "sh", "-c", f"exec {script}"], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        _pid, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"{script!r} exited {proc.returncode}")
        return elapsed, usage.ru_maxrss

    def refill_isp(self, mark: int) -> None:
        """Re-create the entries of one ISP (after a delete) so the next round sees a full table."""
        code = (
            "from wanlb.ctnetlink.synth import entries; from wanlb.ctnetlink.client import Conntrack; "
            f"ct = Conntrack(); errs = [c for c in ct.create(e for e, _ in entries({self.entries}) "
            f"if e.mark == {mark}) if c and c != 17]; assert not errs, errs"
        )
        self.sh(f"{PY} -c '{code}'")

    entries = 0


def compare(b: Bench, rounds: int, ours: str, theirs: str) -> dict:
    """Alternate the two commands ``rounds`` times; medians, ratio and wanlb's peak RSS."""
    t_ours, t_theirs, rss = [], [], []
    for _ in range(rounds):
        for which in ("ours", "theirs"):
            elapsed, maxrss = b.timed(ours if which == "ours" else theirs)
            (t_ours if which == "ours" else t_theirs).append(elapsed)
            if which == "ours":
                rss.append(maxrss)
    mo, mt = statistics.median(t_ours), statistics.median(t_theirs)
    return {"ours": mo, "theirs": mt, "ratio": mo / mt, "rss_mb": max(rss) / 1024}


def events(b: Bench, count: int) -> dict:
    """A burst of ``count`` NEW then ``count`` DESTROY while ``watch --json`` and ``conntrack -E`` listen."""
    with tempfile.TemporaryDirectory(prefix="wlct-events-") as tmp:
        path_w, path_e = Path(tmp) / "watch.jsonl", Path(tmp) / "conntrack-E.txt"
        with path_w.open("w") as out_w, path_e.open("w") as out_e:
            watch = subprocess.Popen(["ip", "netns", "exec", b.ns, *b.wanlb("watch --json -e new,destroy").split()],
                                     stdout=out_w, stderr=subprocess.PIPE, env=ENV)  # fmt: skip
            ctev = subprocess.Popen(["ip", "netns", "exec", b.ns, "conntrack", "-E", "-e", "NEW,DESTROY"],
                                    stdout=out_e, stderr=subprocess.DEVNULL)  # fmt: skip
            time.sleep(1.0)  # both subscribed
            code = (
                "from wanlb.ctnetlink.synth import entries; from wanlb.ctnetlink.client import Conntrack; "
                "from wanlb.ctnetlink.filters import Filter; ct = Conntrack(); "
                f"burst = [e._replace(mark=0x500) for e, _ in entries({count})]; "
                "assert ct.create(burst).count(0) == len(burst); "
                "ct.delete_matching(Filter(mark=0x500, mark_mask=0xff00))"
            )
            b.sh(f"{PY} -c '{code}'")
            last = -1
            for _ in range(60):  # wait until both stopped writing
                time.sleep(1.0)
                size = path_w.stat().st_size + path_e.stat().st_size
                if size == last:
                    break
                last = size
            for p in (watch, ctev):
                p.send_signal(signal.SIGINT)
                p.wait(10)
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
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--entries", type=int, default=262144)
    parser.add_argument("--events", type=int, default=100000)
    args = parser.parse_args()
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
            b.entries = args.entries
            t0 = time.perf_counter()
            b.sh(f"{PY} -m wanlb.ctnetlink.synth {args.entries}")
            print(f"filled {args.entries} entries in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
            client = "10.1.2.3"
            seed_count = (
                "sh -c '" + "; ".join(f"conntrack -L 2>/dev/null | grep -c mark={m}" for m in ISPS.values()) + "'"
            )
            rows = [
                ("count --by isp", b.wanlb("count --by isp"), seed_count, False),
                ("list -o text > /dev/null", b.wanlb("list -o text", config=False), "conntrack -L", False),
                ("list -o text (config: isp= names)", b.wanlb("list -o text"), "conntrack -L", False),
                ("list --isp b", b.wanlb("list --isp b"), "conntrack -L -m 0x200/0xff00", False),
                (f"list -s {client}", b.wanlb(f"list -s {client}", config=False), f"conntrack -L -s {client}", False),
                ("delete --isp b (65,536)", b.wanlb("delete --isp b"), "conntrack -D -m 0x200/0xff00", True),
            ]
            print("| wanlb command | conntrack-tools | wanlb s | tools s | ratio | wanlb peak RSS MB |")
            print("|---|---|---|---|---|---|")
            for name, ours, theirs, destructive in rows:
                r = (compare_delete if destructive else compare)(b, args.rounds, ours, theirs)
                theirs_name = "seed: conntrack -L | grep -c mark=N, per ISP" if theirs is seed_count else theirs
                print(f"| `{name}` | `{theirs_name}` | {r['ours']:.3f} | {r['theirs']:.3f} | "
                      f"{r['ratio']:.2f}x | {r['rss_mb']:.1f} |", flush=True)  # fmt: skip
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)
        # the events burst needs room in the table: a fresh namespace
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            print(f"\nevents: {events(Bench(ns, str(config)), args.events)}")
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


def compare_delete(b: Bench, rounds: int, ours: str, theirs: str) -> dict:
    """Like :func:`compare`, restoring ISP b's 65,536 entries before every run (not timed)."""
    t_ours, t_theirs, rss = [], [], []
    for _ in range(rounds):
        for which in ("ours", "theirs"):
            b.refill_isp(ISPS["b"])
            elapsed, maxrss = b.timed(ours if which == "ours" else theirs)
            (t_ours if which == "ours" else t_theirs).append(elapsed)
            if which == "ours":
                rss.append(maxrss)
            left = int(b.sh("conntrack -L -m 0x200/0xff00 2>/dev/null | wc -l").stdout)
            assert left == 0, f"{which}: {left} entries of ISP b left"
    mo, mt = statistics.median(t_ours), statistics.median(t_theirs)
    return {"ours": mo, "theirs": mt, "ratio": mo / mt, "rss_mb": max(rss) / 1024}


if __name__ == "__main__":
    sys.exit(main())
