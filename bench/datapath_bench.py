"""Datapath cost: new TCP connections per second and iperf3 throughput through the lab gateway.

Run as root from the repository (it builds its own lab ``wlab-dp<pid>*`` and removes it on every exit):

    python bench/datapath_bench.py --rounds 5

One lab (3 ISPs, 2 clients).  The gateway is switched in place between modes, interleaved in every round
(s, c, b, e, a, then again, ``--rounds`` times; ``--modes`` picks a subset that has a, b and c):

* ``s`` no gateway: the same generators run in inet itself, against the same server (how fast the server
  and the generators are without the gateway; it shows whether the server is the bottleneck).
* ``c`` masquerade-only: the lab's plain NAT (table ``ip lab``: ``oifname "wan*" masquerade``) and the
  main-table default route via isp1, as a single-WAN router has; no wanlb rules (``wanlb stop --cleanup``).
* ``b`` wanlb's ruleset, no daemon: ``wanlb run`` is started, applies its datapath and is stopped without
  cleanup (``{"cmd": "stop", "cleanup": false}``), so its nft table, ip rules and routes stay.
* ``e`` as b, plus a process in gw subscribed to conntrack NEW and DESTROY events that never reads: the
  kernel's cost of building event messages, without the daemon's own CPU.
* ``a`` the daemon running.  Health probes are off (the ISPs' ``health`` removed from the lab's config)
  unless ``--probes``, so the daemon's CPU is that of its live counts and housekeeping.

Every mode starts from an empty conntrack table in gw (``conntrack -F`` before the daemon starts).
Measured per round and mode:

* new TCP connections per second: both clients connect to a server in inet as fast as they can
  (non-blocking connects, ``--parallel`` in flight per client; each socket is closed with RST once its
  handshake completed, so no TIME_WAIT state limits ports); the server (``--server-workers`` processes on
  one SO_REUSEPORT port) accepts and closes.  Completed handshakes per second over ``--seconds``, after
  ``--warmup``; with the CPU used over that window by the generators, the server, softirq, the daemon and
  the whole machine;
* iperf3 throughput, c1 -> inet (the receiver's figure), ``--iperf-seconds``.

Then the daemon's own cost, with the daemon running and ``--hold`` idle connections held open from c1:
its CPU (user + sys from ``/proc/PID/stat``, all threads) over ``--cpu-seconds`` with no traffic, at
``--low-rate`` and at the fixed ``--rate`` (default 10,000/s; lowered to 85 % of mode a's median if the
machine does not reach it), as % of one core and per connection, and its event-loop wake-ups (voluntary
context switches of its main thread).  Finally, once the closed connections have timed out and the table
is quiet, the daemon's ``conn_counts`` against a fresh ``conntrack -L -m MARK/0xff00 | wc -l`` per mark:
once as the run left it (the default ``nf_conntrack_events``, where the daemon also resyncs from a dump
every 30 s) and once after ``--check-seconds`` at the fixed rate with ``nf_conntrack_events=1`` in gw
(no periodic resync: the counts come from events alone).

Everything prints as Markdown; the machine may be shared, so read medians, not single rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SRC = str(Path(__file__).resolve().parents[1] / "src")
sys.path.insert(0, SRC)  # benchmark this checkout, whatever wanlb is installed

from wanlb.lab.gateway import LabGateway  # noqa: E402
from wanlb.lab.lab import Lab, LabError  # noqa: E402
from wanlb.lab.topology import NFT_TABLE, gateway_nat_nft  # noqa: E402

SERVER_ADDR = "203.0.113.10"  # on inet's lo, like the lab's HTTP server (other port)
CONN_PORT = 9000
IPERF_PORT = 5202
MODES = ("s", "c", "b", "e", "a")  # run in this order in every round
MODE_NAMES = {
    "s": "no gateway: clients in inet (server capacity)",
    "c": "masquerade only",
    "b": "wanlb ruleset, no daemon",
    "e": "wanlb ruleset + idle event listener, no daemon",
    "a": "wanlb + daemon",
}
MARKS = (0x100, 0x200, 0x300)
MARK_MASK = 0xFF00
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Accept-and-close server: one process per worker on a SO_REUSEPORT listener.  Its close sends FIN; the
# client answers with RST (it closes with SO_LINGER 0), so neither side keeps TIME_WAIT.
SERVER = r"""
import os, signal, socket, sys
addr, port, workers, ready = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def serve():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((addr, port))
    s.listen(4096)
    return s
socks = [serve() for _ in range(workers)]
hold = socket.socket()  # port + 1: never accepted, so connections to it stay ESTABLISHED (see HOLDER)
hold.bind((addr, port + 1))
hold.listen(4096)
open(ready, "w").close()
kids = []
for s in socks[1:]:
    pid = os.fork()
    if pid == 0:
        socks = [s]
        kids = None
        break
    kids.append(pid)
s = socks[0]
if kids is not None:
    def stop(*_):
        for k in kids:
            os.kill(k, signal.SIGTERM)
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
accept, close = s._accept, os.close
while True:
    fd, _ = accept()
    close(fd)
"""

# Idle connections held open to the server's second port, so that the table is not empty when the
# daemon's counts are compared with a dump (ESTABLISHED entries outlive the test, spread over the ISPs).
HOLDER = r"""
import socket, sys, time
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = [socket.create_connection((addr, port), timeout=5) for _ in range(n)]
print(len(socks), flush=True)
time.sleep(86400)
"""

# Mode e: a conntrack NEW+DESTROY subscriber that never reads.  The kernel builds an event message for
# every new and destroyed entry as soon as anyone listens (then drops it: the buffer is full), so (e)
# against (b) is the kernel's share of the daemon's cost, without the daemon's own CPU.
IDLE_LISTENER = r"""
import socket, time
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
s.bind((0, 1 | 4))  # NFNLGRP_CONNTRACK_NEW (1) and _DESTROY (3)
time.sleep(86400)
"""

# Connection generator: non-blocking connects, at most PARALLEL in flight, optionally paced to RATE/s;
# each socket is closed with RST as soon as the handshake completed (or failed).  Counts completions
# inside the window [WARMUP, WARMUP + SECONDS) and prints JSON.
CLIENT = r"""
import json, select, socket, struct, sys, time
addr, port, parallel = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
warmup, seconds, rate, timeout = float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]), 1.0
LINGER, SOL, LING, ERR = struct.pack("ii", 1, 0), socket.SOL_SOCKET, socket.SO_LINGER, socket.SO_ERROR
TYPE, OUT, target = socket.SOCK_STREAM | socket.SOCK_NONBLOCK, select.EPOLLOUT, (addr, port)
ep = select.epoll(parallel + 16)
flight = {}
started = ok = failed = timeouts = 0
t0 = time.monotonic()
begin, end = t0 + warmup, t0 + warmup + seconds
next_sweep = t0 + 0.1
now = t0
while now < end:
    room = parallel - len(flight)
    if rate > 0:
        room = min(room, int((now - t0) * rate) - started)
    for _ in range(room):
        s = socket.socket(socket.AF_INET, TYPE)
        s.setsockopt(SOL, LING, LINGER)
        s.connect_ex(target)
        fd = s.fileno()
        ep.register(fd, OUT)
        flight[fd] = (s, now)
    started += max(room, 0)
    events = ep.poll(0.002 if rate > 0 else 0.05)
    now = time.monotonic()
    counting = now >= begin
    for fd, _ev in events:
        s = flight.pop(fd)[0]
        err = s.getsockopt(SOL, ERR)
        s.close()
        if counting:
            if err == 0:
                ok += 1
            else:
                failed += 1
    if now >= next_sweep:
        next_sweep = now + 0.1
        for fd, (s, st) in list(flight.items()):
            if now - st > timeout:
                del flight[fd]
                s.close()
                if counting:
                    timeouts += 1
print(json.dumps({"ok": ok, "failed": failed, "timeouts": timeouts, "seconds": seconds}))
"""


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(user, sys) CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_cpu(pid: int) -> float:
    """user + sys CPU seconds of a process (all its threads)."""
    return sum(proc_cpu_split(pid))


def machine_cpu() -> dict[str, float]:
    """Seconds of all CPUs by kind since boot (``/proc/stat``)."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    values = Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
    return {n: int(v) / CLK_TCK for n, v in zip(names, values, strict=True)}


def tree_cpu(pids: Sequence[int]) -> float:
    """CPU seconds of processes and their children still alive (the server's forked workers)."""
    total = 0.0
    for pid in pids:
        children = Path(f"/proc/{pid}/task/{pid}/children")
        kids = [int(k) for k in children.read_text().split()] if children.exists() else []
        for p in [pid, *kids]:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += proc_cpu(p)
    return total


class Bench:
    def __init__(self, lab: Lab, args: argparse.Namespace) -> None:
        self.lab = lab
        self.args = args
        self.gw = LabGateway(lab)
        self.mode: str | None = None
        self.server: subprocess.Popen[Any] | None = None
        self.listener: subprocess.Popen[Any] | None = None
        if not args.probes:
            self.gw.write(lambda data: [isp.pop("health", None) for isp in data["isps"]])
        else:
            self.gw.write(lambda data: None)

    # --- gateway modes -------------------------------------------------------------------------------

    def sh_gw(self, *argv: str, stdin: str | None = None) -> str:
        return self.gw.run(*argv, stdin=stdin)

    def daemon_running(self) -> bool:
        return self.gw.proc is not None and self.gw.proc.poll() is None

    def set_mode(self, mode: str) -> None:
        """Switch the gateway to ``mode`` in place, from an empty conntrack table."""
        if self.daemon_running():
            self.gw.stop(cleanup=mode == "c")
        if self.listener is not None:
            self.listener.terminate()
            self.listener.wait(10)
            self.listener = None
        if mode == "s":
            pass  # the gateway is not on the path
        elif mode == "c":
            out = self.gw.cli("stop", "--cleanup")  # idempotent; works without a daemon
            if out.returncode != 0:
                raise LabError(f"wanlb stop --cleanup failed: {out.stderr}")
            self.sh_gw("conntrack", "-F")
            self.sh_gw("nft", "-f", "-", stdin=gateway_nat_nft())
            tables = self.sh_gw("nft", "list", "tables")
            if "inet wanlb" in tables:
                raise LabError(f"wanlb's table is still there after cleanup: {tables}")
        else:
            self.sh_gw("nft", "-f", "-", stdin=f"table ip {NFT_TABLE} {{}}\ndelete table ip {NFT_TABLE}\n")
            self.sh_gw("conntrack", "-F")
            self.gw.start()
            want = {isp: "up" for isp in self.lab.isps}
            self.gw.wait_for(want, timeout=15)
            if mode in ("b", "e"):
                self.gw.stop(cleanup=False)
            if mode == "e":
                self.listener = self.lab.popen("gw", [sys.executable, "-c", IDLE_LISTENER], label="idle-listener")
                time.sleep(0.2)  # subscribed
        self.mode = mode

    # --- load ----------------------------------------------------------------------------------------

    def start_servers(self) -> None:
        ready = self.lab.dir / "conn-server.ready"
        self.server = self.lab.popen(
            "inet",
            [sys.executable, "-c", SERVER, SERVER_ADDR, str(CONN_PORT), str(self.args.server_workers), str(ready)],
            label="conn-server",
        )
        self.lab.popen("inet", ["iperf3", "-s", "-B", SERVER_ADDR, "-p", str(IPERF_PORT)], label="iperf3-server",
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 10
        while not ready.exists():
            if time.monotonic() > deadline or self.server.poll() is not None:
                raise LabError("the connection server did not start")
            time.sleep(0.02)
        time.sleep(0.3)  # iperf3 -s listening

    def connections(self, rate: float = 0.0, seconds: float | None = None) -> dict[str, Any]:
        """Run the generator in every client at once (``rate`` is the total, 0 = as fast as possible);
        in mode s as many generators run in inet itself.  Returns conn/s and the CPU split over the
        counting window."""
        args = self.args
        seconds = seconds or args.seconds
        nodes = ["inet"] * len(self.lab.clients) if self.mode == "s" else self.lab.clients
        per_client = rate / len(nodes) if rate else 0.0
        argv = [sys.executable, "-c", CLIENT, SERVER_ADDR, str(CONN_PORT), str(args.parallel), str(args.warmup),
                str(seconds), str(per_client)]  # fmt: skip
        procs = [
            self.lab.popen(node, argv, label=f"generator{i}", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i, node in enumerate(nodes)
        ]
        time.sleep(args.warmup)
        pids = [p.pid for p in procs]
        assert self.server is not None
        before = self._cpu_sample(pids)
        time.sleep(seconds)
        after = self._cpu_sample(pids)
        results = []
        for p in procs:
            out, err = p.communicate(timeout=seconds + 30)
            if p.returncode != 0:
                raise LabError(f"connection generator failed: {err.strip()}")
            results.append(json.loads(out))
        ok = sum(r["ok"] for r in results)
        wall = after["wall"] - before["wall"]
        cpu = {k: (after[k] - before[k]) / wall for k in after if k != "wall"}
        return {
            "conn_s": ok / seconds,
            "wall": wall,
            "ok": ok,
            "failed": sum(r["failed"] for r in results),
            "timeouts": sum(r["timeouts"] for r in results),
            "cpu": cpu,
        }

    def _cpu_sample(self, client_pids: Sequence[int]) -> dict[str, float]:
        m = machine_cpu()
        assert self.server is not None
        sample = {
            "wall": time.monotonic(),
            "clients": sum(proc_cpu(p) for p in client_pids),
            "server": tree_cpu([self.server.pid]),
            "busy": sum(v for k, v in m.items() if k not in ("idle", "iowait")),
            "softirq": m["softirq"],
        }
        if self.daemon_running():
            assert self.gw.proc is not None
            sample["daemon_user"], sample["daemon_sys"] = proc_cpu_split(self.gw.proc.pid)
            sample["daemon"] = sample["daemon_user"] + sample["daemon_sys"]
        return sample

    def hold(self, n: int) -> subprocess.Popen[str] | None:
        """``n`` idle connections from c1 (see HOLDER), open when this returns; None for n = 0."""
        if n == 0:
            return None
        argv = [sys.executable, "-c", HOLDER, SERVER_ADDR, str(CONN_PORT + 1), str(n)]
        proc = self.lab.popen("c1", argv, label="holder", stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != str(n):
            raise LabError("could not open the held connections")
        return proc

    def iperf(self) -> float:
        """c1 -> inet throughput in Gbit/s (receiver side)."""
        out = self.lab.run(
            "c1",
            ["iperf3", "-c", SERVER_ADDR, "-p", str(IPERF_PORT), "-t", str(self.args.iperf_seconds), "-J"],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise LabError(f"iperf3 failed: {out.stdout[-500:]} {out.stderr[-500:]}")
        return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9

    # --- daemon ------------------------------------------------------------------------------------

    def daemon_cpu(self, rate: float, seconds: float) -> dict[str, Any]:
        """The running daemon's CPU over ``seconds`` while the clients open ``rate`` connections/s (0: no
        traffic), and its event-loop wake-ups (voluntary context switches of its main thread)."""
        assert self.gw.proc is not None
        pid = self.gw.proc.pid
        resyncs0 = self.gw.request("conn_counts")["resyncs"]
        wakeups0 = wakeups(pid)
        if rate:
            r = self.connections(rate=rate, seconds=seconds)
            conns, wall = r["conn_s"], r["wall"]
            user, system = r["cpu"]["daemon_user"], r["cpu"]["daemon_sys"]
        else:
            t0, (u0, s0) = time.monotonic(), proc_cpu_split(pid)
            time.sleep(seconds)
            wall = time.monotonic() - t0
            u1, s1 = proc_cpu_split(pid)
            user, system, conns, r = (u1 - u0) / wall, (s1 - s0) / wall, 0.0, {}
        cpu = user + system
        woke = wakeups(pid) - wakeups0  # over the whole run, warm-up included: per second below
        reply = self.gw.request("conn_counts")
        total_wall = wall + (self.args.warmup if rate else 0.0)
        return {
            "rate": rate,
            "conn_s": conns,
            "cpu_core": cpu,
            "user_core": user,
            "sys_core": system,
            "ms_per_conn": cpu / conns * 1000 if conns else None,
            "wakeups_s": woke / total_wall,
            "resyncs": reply["resyncs"] - resyncs0,
            "lost_events": reply["lost_events"],
            "failed": r.get("failed", 0) + r.get("timeouts", 0),
        }

    def dump_counts(self) -> dict[int, int]:
        """A fresh table count per mark by conntrack-tools (independent of wanlb's codec)."""
        counts = {}
        for mark in (0, *MARKS):
            out = self.lab.run("gw", ["sh", "-c", f"conntrack -L -m {mark:#x}/{MARK_MASK:#x} 2>/dev/null | wc -l"],
                               capture_output=True, text=True, check=True)  # fmt: skip
            counts[mark] = int(out.stdout)
        return counts

    def daemon_counts(self) -> tuple[dict[int, int], dict[str, Any]]:
        reply = self.gw.request("conn_counts")
        return {m: int(reply["counts"].get(str(m), 0)) for m in (0, *MARKS)}, reply

    def counts_vs_dump(self, resyncs_at_start: int) -> dict[str, Any]:
        """After the traffic: wait until the closed connections have timed out and two dumps a second apart
        agree (the table is quiet), then compare the daemon's counts with a fresh dump.  No waiting for
        a later resync: that would replace the counts by a dump and prove nothing."""
        close_timeout = int(self.gw.run("sysctl", "-n", "net.netfilter.nf_conntrack_tcp_timeout_close"))
        time.sleep(close_timeout + 1)
        before = self.dump_counts()
        for _ in range(30):
            time.sleep(1.0)
            dump = self.dump_counts()
            if dump == before:
                break
            before = dump
        daemon, reply = self.daemon_counts()
        if daemon != dump:  # a few events may still be in flight: one more look
            time.sleep(1.0)
            dump = self.dump_counts()
            daemon, reply = self.daemon_counts()
        return {
            "equal": daemon == dump,
            "daemon": daemon,
            "dump": dump,
            "resyncs_since_traffic": reply["resyncs"] - resyncs_at_start,
            "resyncs": reply["resyncs"],
            "lost_events": reply["lost_events"],
        }

    def events_only_check(self, rate: float, seconds: float) -> dict[str, Any]:
        """The same comparison with ``nf_conntrack_events=1`` in gw, where the daemon does not resync every
        30 s (only at start and after a loss report): its counts then come from events alone."""
        self.gw.stop(cleanup=False)
        before = self.gw.run("sysctl", "-n", "net.netfilter.nf_conntrack_events").strip()
        self.gw.run("sysctl", "-qw", "net.netfilter.nf_conntrack_events=1")
        holder = None
        try:
            self.set_mode("a")
            holder = self.hold(self.args.hold)
            r = self.connections(rate=rate, seconds=seconds)
            check = self.counts_vs_dump(self.gw.request("conn_counts")["resyncs"])
            check["conn_s"] = r["conn_s"]
            return check
        finally:
            if holder is not None:
                holder.terminate()
                holder.wait(10)
            self.gw.stop(cleanup=False)
            self.gw.run("sysctl", "-qw", f"net.netfilter.nf_conntrack_events={before}")


def wakeups(pid: int) -> int:
    """Voluntary context switches of a process's main thread (the daemon's event loop): one per sleep."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


def event_listeners() -> int:
    """Conntrack event subscribers on this machine (root and named namespaces), printed with the results:
    others' listeners can make the kernel build event messages here too."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    namespaces = [line.split()[0] for line in listed.splitlines() if line.strip()]
    total = 0
    for ns in [None, *namespaces]:
        cmd = ["cat", "/proc/net/netlink"] if ns is None else ["ip", "netns", "exec", ns, "cat", "/proc/net/netlink"]
        rows = subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[1:]
        total += sum(1 for r in rows if r.split()[1] == "12" and int(r.split()[3], 16))
    return total


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def round_ratios(rounds: list[dict[str, Any]], x: str, y: str, key: str) -> list[float]:
    """Mode x's figure over mode y's, within each round."""
    by_round: dict[int, dict[str, float]] = {}
    for r in rounds:
        by_round.setdefault(r["round"], {})[r["mode"]] = r[key]
    return [v[x] / v[y] for v in by_round.values() if x in v and y in v and v[y]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of c, b, a (interleaved)")
    parser.add_argument("--seconds", type=float, default=8.0, help="connection-rate window per round")
    parser.add_argument("--warmup", type=float, default=1.5, help="seconds before each window")
    parser.add_argument("--parallel", type=int, default=64, help="connects in flight per client")
    parser.add_argument("--server-workers", type=int, default=2)
    parser.add_argument("--iperf-seconds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=10000.0, help="fixed total rate for the daemon's CPU")
    parser.add_argument("--low-rate", type=float, default=200.0)
    parser.add_argument("--cpu-seconds", type=float, default=20.0, help="window of each daemon CPU figure")
    parser.add_argument("--hold", type=int, default=1000, help="idle connections open during the daemon's runs")
    parser.add_argument("--check-seconds", type=float, default=8.0, help="traffic before the events-only check")
    parser.add_argument("--modes", default="s,c,b,e,a", help="modes per round (c, b and a are required)")
    parser.add_argument("--probes", action="store_true", help="keep the lab's health probes (icmp, 200 ms)")
    parser.add_argument("--json", action="store_true", help="print every round as JSON too")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark builds network namespaces")
    wanted = set(args.modes.split(","))
    if not {"a", "b", "c"} <= wanted <= set(MODES):
        sys.exit(f"--modes: a subset of {','.join(MODES)} with a, b and c")
    modes = [m for m in MODES if m in wanted]
    command = "python bench/datapath_bench.py " + " ".join(sys.argv[1:])
    started = time.strftime("%Y-%m-%d %H:%M")
    listeners = event_listeners()
    rounds: list[dict[str, Any]] = []
    with Lab.up(name=f"dp{os.getpid()}{uuid.uuid4().hex[:3]}", isps=3, clients=2) as lab:
        bench = Bench(lab, args)
        bench.start_servers()
        for n in range(args.rounds):
            for mode in modes:
                bench.set_mode(mode)
                conn = bench.connections()
                gbit = bench.iperf() if mode != "s" else float("nan")
                row = {"round": n + 1, "mode": mode, "gbit_s": gbit, **conn}
                rounds.append(row)
                cpu = conn["cpu"]
                print(
                    f"round {n + 1} {mode}: {conn['conn_s']:.0f} conn/s (failed {conn['failed']}, timeouts "
                    f"{conn['timeouts']}), {gbit:.2f} Gbit/s; CPU/core: clients {cpu['clients']:.2f} server "
                    f"{cpu['server']:.2f} softirq {cpu['softirq']:.2f} machine {cpu['busy']:.2f}"
                    + (f" daemon {cpu['daemon']:.3f}" if "daemon" in cpu else ""),
                    file=sys.stderr,
                    flush=True,
                )
        a_median = med([r["conn_s"] for r in rounds if r["mode"] == "a"])
        rate = args.rate if a_median >= args.rate * 1.05 else round(a_median * 0.85, -2)
        bench.set_mode("a")
        holder = bench.hold(args.hold)
        idle = bench.daemon_cpu(0.0, args.cpu_seconds)
        low = bench.daemon_cpu(args.low_rate, args.cpu_seconds)
        high = bench.daemon_cpu(rate, args.cpu_seconds)
        check = bench.counts_vs_dump(bench.gw.request("conn_counts")["resyncs"])
        if holder is not None:
            holder.terminate()
            holder.wait(10)
        events_only = bench.events_only_check(rate, args.check_seconds)
        bench.set_mode("c")  # stops the daemon with cleanup
    report(args, command, started, listeners, rounds, [idle, low, high], rate, [check, events_only])
    if args.json:
        out = {"rounds": rounds, "cpu": [idle, low, high], "checks": [check, events_only]}
        print(json.dumps(out, indent=1, default=str))


def report(
    args: argparse.Namespace,
    command: str,
    started: str,
    listeners: int,
    rounds: list[dict[str, Any]],
    cpu_rows: list[dict[str, Any]],
    rate: float,
    checks: list[dict[str, Any]],
) -> None:
    by_mode = {m: [r for r in rounds if r["mode"] == m] for m in MODES}
    by_mode = {m: rows for m, rows in by_mode.items() if rows}
    conn = {m: med([r["conn_s"] for r in rows]) for m, rows in by_mode.items()}
    gbit = {m: med([r["gbit_s"] for r in rows]) for m, rows in by_mode.items()}
    order = ", ".join(by_mode)
    print(f"\n{started}, {args.rounds} interleaved rounds ({order}), {args.seconds:g} s windows, "
          f"{args.parallel} connects in flight per client, health probes {'on' if args.probes else 'off'}; "
          f"conntrack event listeners on the machine at start: {listeners}; load average "
          f"{os.getloadavg()[0]:.2f} at the end\n")  # fmt: skip
    print("| mode | new TCP conn/s (median) | min–max | vs (c) | iperf3 Gbit/s (median) | min–max | vs (c) |"
          " CPU, cores: clients | server | softirq | daemon | whole machine (of 2) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m, rows in by_mode.items():
        cs, gs = [r["conn_s"] for r in rows], [r["gbit_s"] for r in rows]
        cpu = {k: med([r["cpu"].get(k, 0.0) for r in rows]) for k in ("clients", "server", "softirq", "daemon", "busy")}
        iperf = "— | — | —" if m == "s" else f"{gbit[m]:.2f} | {min(gs):.2f}–{max(gs):.2f} | {gbit[m] / gbit['c']:.3f}×"
        daemon = f"{cpu['daemon']:.2f}" if m == "a" else "—"
        print(
            f"| ({m}) {MODE_NAMES[m]} | {conn[m]:,.0f} | {min(cs):,.0f}–{max(cs):,.0f} | {conn[m] / conn['c']:.3f}× "
            f"| {iperf} | {cpu['clients']:.2f} | {cpu['server']:.2f} | {cpu['softirq']:.2f} | {daemon} "
            f"| {cpu['busy']:.2f} |"
        )
    ratio = conn["a"] / conn["c"]
    extra = f", (e)/(b) {conn['e'] / conn['b']:.3f}×" if "e" in conn else ""
    print(f"\nNew conn/s (a)/(c) {ratio:.3f}× (target ≥ 0.97 {'✔' if ratio >= 0.97 else '✘'}), "
          f"(b)/(c) {conn['b'] / conn['c']:.3f}×, (a)/(b) {conn['a'] / conn['b']:.3f}×{extra}; "
          f"iperf3 (a)/(c) {gbit['a'] / gbit['c']:.3f}×, (b)/(c) {gbit['b'] / gbit['c']:.3f}×. "
          "Ratios of the medians above.")  # fmt: skip
    pairs = [("a", "c"), ("b", "c"), ("a", "b")] + ([("e", "b")] if "e" in conn else [])
    per_round = {p: round_ratios(rounds, *p, "conn_s") for p in pairs}
    per_iperf = {p: round_ratios(rounds, *p, "gbit_s") for p in pairs}
    print("Medians of the ratios within each round (the modes of one round ran within a minute, so a change "
          "in the machine's load hits them alike): new conn/s "
          + ", ".join(f"({x})/({y}) {med(v):.3f}× [{min(v):.2f}–{max(v):.2f}]" for (x, y), v in per_round.items())
          + "; iperf3 "
          + ", ".join(f"({x})/({y}) {med(v):.3f}×" for (x, y), v in per_iperf.items())
          + ".")  # fmt: skip
    print("\n| daemon running (mode a) | conn/s asked | conn/s done | daemon CPU, % of a core (user + sys) "
          "| per connection, ms | event-loop wake-ups/s | resyncs in window | failed |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, r in zip(("no traffic", "low rate", "fixed high rate"), cpu_rows, strict=True):
        per = "—" if r["ms_per_conn"] is None else f"{r['ms_per_conn']:.4f}"
        print(f"| {name} | {r['rate']:,.0f} | {r['conn_s']:,.0f} | {r['cpu_core'] * 100:.2f} % "
              f"({r['user_core'] * 100:.1f} + {r['sys_core'] * 100:.1f}) | {per} "
              f"| {r['wakeups_s']:,.0f} | {r['resyncs']} | {r['failed']} |")  # fmt: skip
    high = cpu_rows[2]
    note = (
        ""
        if rate == args.rate
        else f" (mode a's median did not reach {args.rate * 1.05:,.0f}/s: the rate is 85 % of that median)"
    )
    print(f"\nDaemon CPU at {high['conn_s']:,.0f} new conn/s{note}: {high['cpu_core'] * 100:.2f} % of a core "
          f"(target ≤ 3 % at 10k/s {'✔' if high['cpu_core'] <= 0.03 else '✘'}); lost-event reports "
          f"{high['lost_events']}.")  # fmt: skip
    default, events_only = checks
    print("\nAfter the traffic, once the table was quiet (closed entries timed out, two dumps a second apart equal):\n")
    print("| mark & 0xff00 | daemon `conn_counts` | fresh dump `conntrack -L -m MARK/0xff00 \\| wc -l` "
          f"| same, nf_conntrack_events=1 ({events_only['conn_s']:,.0f} conn/s for {args.check_seconds:g} s): "
          "daemon | dump |")  # fmt: skip
    print("|---|---|---|---|---|")
    for mark in (0, *MARKS):
        print(f"| {mark:#x} | {default['daemon'][mark]:,} | {default['dump'][mark]:,} "
              f"| {events_only['daemon'][mark]:,} | {events_only['dump'][mark]:,} |")  # fmt: skip
    for name, c in (("default nf_conntrack_events", default), ("nf_conntrack_events=1", events_only)):
        print(f"\n{name}: counts = fresh dump {'✔' if c['equal'] else '✘'} (resyncs after the traffic stopped: "
              f"{c['resyncs_since_traffic']}, since the daemon started: {c['resyncs']}; lost-event reports: "
              f"{c['lost_events']})")  # fmt: skip
    print(f"\nCommand (root, from the repository): `{command}`")


if __name__ == "__main__":
    main()
