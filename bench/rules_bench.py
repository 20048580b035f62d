"""Policies and rules at scale: 16 ISPs and 1,000 rules — cold apply, a one-rule reload, the datapath's cost.

Run as root from the repository (it builds its own lab ``wlab-rb<pid><hex>-*`` plus one scratch namespace
``wlab-rb<pid><hex>-apply`` under the same prefix, and removes all of them on every exit, SIGINT and SIGTERM
included; it benchmarks this checkout's ``src/`` whatever wanlb is installed):

    python bench/rules_bench.py --rounds 5

The config (:func:`rule_set`): the lab's 16 ISPs (``isp1``..``isp16`` on ``wan1``..``wan16``, no health
probes), four policies (weighted pair, tiered pair, hash over four, failover pair) and 1,000 rules in this
order: 500 source pins (``src: [one LAN address]``, ``via: ispN``; addresses of 192.168.72.0/21 outside the
lab's clients), 300 destination prefixes (``dst: [a /24 or /28]``, alternately ``via`` and ``policy``),
200 port rules (``proto: tcp|udp``, ``dport: [a port or a 10-port range]``, ``via``).  The last rule is
``proto: tcp, dport: [9100-9102], via: isp16``.

1. **Cold render + apply**, in the scratch namespace (a bridge ``lan0`` and veth ``wan1``..``wan16`` with the
   lab gateway's addresses; this kernel has no dummy links), ``--apply-reps`` times, each from nothing (no
   table, rules, routes or state file; sysctls restored).  Two figures:

   * *library path*, in one Python process that has already imported wanlb: the wall time from
     ``load_config(path)`` to ``Reconciler.reconcile`` returning, doing what ``wanlb.daemon.run`` and
     ``Daemon.__init__``/``run`` do before the control socket opens: load_config, LinuxKernel(), preflight,
     runtime.load/allocate, StateStore + set_allocation (writes the state file), the Fleet's statuses,
     then one reconcile (plan, render, routes, ip rules, sysctls, one ``nft -f`` transaction, the read-back
     that records what the kernel shows).  Broken down by wrapping the functions the reconciler calls
     (nothing in ``src/`` is changed).  The same with the 1-rule config beside it (same ISPs and policies),
     so what the rules cost is told apart from what 16 ISPs cost;
   * *``wanlb run``*: from ``Popen(["ip", "netns", "exec", NS, python, "-m", "wanlb.cli", "run", ...])`` until
     its control socket answers a connect (interpreter start and imports included; nothing subtracted).

2. **A reload that changes one rule** (rule ``port-100``'s port moves to a free one, and back, alternately):
   in the same process and Reconciler as (1), ``--reload-reps`` times, the reconcile alone (the incremental
   nft transaction; its size is printed), and beside it what the daemon does around it on a reload
   (load_config, allocate, the ``nft -c`` check of the whole ruleset in a scratch table).  Then the same
   through a running ``wanlb run``: the round trip of ``{"cmd": "reload"}`` on its control socket.  For
   comparison, a reconcile in which nothing changed: what the daemon's resync does every 5 s.

3. **The datapath** in the lab (16 ISPs, 2 clients, gateway switched in place, one config per mode; the
   daemon applies it and is stopped without cleanup, so its table, ip rules and routes stay and the
   daemon's own CPU is not in the figures, unless ``--daemon``), interleaved in every round (the order
   reversed every other round):

   * ``1``: the same config with 1 rule (the first source pin; not matched by the traffic);
   * ``k``: the 1,000 rules; the traffic matches none of them (sources are the lab's clients, the server
     203.0.113.10 is in no prefix, ports 9000 and 5202 in no port rule), so every NEW connection walks every
     lookup and then goes to ``balance``;
   * ``m``: the 1,000 rules; the traffic goes to ports 9100/9102 and so matches the last rule (via isp16).

   Per round and mode: new TCP connections per second (datapath_bench's generator and server: both clients,
   ``--parallel`` non-blocking connects in flight each, RST on close), with the CPU split over the window,
   and iperf3 c1 -> inet (``--iperf-seconds``, receiver's figure).  Each mode starts from an empty conntrack
   table.  The rules' counters are read around every window: in ``1`` and ``k`` no rule may have matched, in
   ``m`` only the last one.

Everything prints as Markdown; the machine may be shared: read the per-round ratios and their medians.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH = str(Path(__file__).resolve().parent)
SRC = str(Path(__file__).resolve().parents[1] / "src")
sys.path.insert(0, SRC)  # benchmark this checkout, whatever wanlb is installed
sys.path.insert(1, BENCH)

import yaml  # noqa: E402
from datapath_bench import CLIENT, SERVER, machine_cpu, proc_cpu, tree_cpu  # noqa: E402

from wanlb.control import request, socket_in_use  # noqa: E402
from wanlb.lab.gateway import LabGateway  # noqa: E402
from wanlb.lab.lab import Lab, LabError, module_env, remove_lab, sigterm_as_exit  # noqa: E402
from wanlb.lab.topology import LAN_GW, LAN_IF, Topology, isp_gateway, wan_addr  # noqa: E402

SERVER_ADDR = "203.0.113.10"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PORTS = {"1": (9000, 5202), "k": (9000, 5202), "m": (9100, 9102)}  # mode -> (connection port, iperf3 port)
MODES = ("1", "k", "m")
MODE_NAMES = {
    "1": "1 rule (not matched)",
    "k": "1,000 rules, none matched",
    "m": "1,000 rules, the last one matched",
}
PINS, PREFIXES, PORT_RULES = 500, 300, 200
CHANGED_RULE = "port-100"
LAST_RULE = f"port-{PORT_RULES - 1:03d}"
PIN_NET = ipaddress.ip_network("192.168.72.0/21")
CLIENT_NET = ipaddress.ip_network("192.168.77.0/26")  # the lab's gateway and clients: never pinned
RESERVED = [
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "203.0.113.0/24",
    )
]


# --- the config ------------------------------------------------------------------------------------


def rule_set(isps: int, seed: int = 11) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(policies, rules) of the benchmark: 500 pins, 300 destination prefixes, 200 port rules, in that order."""
    rng = random.Random(seed)

    def isp(n: int) -> str:
        return f"isp{n % isps + 1}"

    def members(first: int, count: int, **extra: Any) -> list[dict[str, Any]]:
        names = list(dict.fromkeys(isp(first + k) for k in range(count)))
        return [{"isp": name, **extra} for name in names]

    policies = {
        "pair": {"members": members(0, 2)},
        "tiered": {"members": [{"isp": isp(2), "tier": 1}, {"isp": isp(3), "tier": 2}]},
        "hashed": {"members": members(4, 4), "algorithm": "hash"},
        "standby": {"members": members(8, 2), "algorithm": "failover"},
    }
    if isp(2) == isp(3):  # fewer than 4 ISPs: a tiered pair of one
        policies["tiered"]["members"] = policies["tiered"]["members"][:1]
    rules: list[dict[str, Any]] = []
    hosts = [a for a in PIN_NET.hosts() if a not in CLIENT_NET]
    for n, addr in enumerate(rng.sample(hosts, PINS)):
        rules.append({"name": f"pin-{n:03d}", "src": [str(addr)], "via": isp(n)})
    used: set[int] = set()
    names = list(policies)
    for n in range(PREFIXES):
        while True:
            net = ipaddress.ip_network((rng.randrange(1, 224) << 24 | rng.randrange(1 << 16) << 8, 24))
            if int(net.network_address) >> 8 not in used and not any(net.overlaps(r) for r in RESERVED):
                break
        used.add(int(net.network_address) >> 8)
        if n % 3 == 2:
            net = ipaddress.ip_network((int(net.network_address) + 16 * rng.randrange(16), 28))
        target = {"via": isp(n)} if n % 2 == 0 else {"policy": names[n // 2 % len(names)]}
        rules.append({"name": f"dst-{n:03d}", "dst": [str(net)], **target})
    for n in range(PORT_RULES):
        port = 10000 + 100 * n
        dport = f"{port}-{port + 9}" if n % 3 == 0 else port
        rules.append(
            {"name": f"port-{n:03d}", "proto": "tcp" if n % 2 == 0 else "udp", "dport": [dport], "via": isp(n)}
        )
    rules[-1] = {"name": LAST_RULE, "proto": "tcp", "dport": ["9100-9102"], "via": isp(isps - 1)}
    return policies, rules


def changed(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same rules with CHANGED_RULE's port moved to a free one (its +50: no other rule uses it)."""
    out = [dict(r) for r in rules]
    for r in out:
        if r["name"] == CHANGED_RULE:
            port = r["dport"][0]
            r["dport"] = [int(str(port).split("-")[0]) + 50]
    return out


def config_data(base: dict[str, Any], isps: int, rules: str) -> dict[str, Any]:
    """The lab's generated config without health probes, with the policies and ``rules``: all, one, changed."""
    data = json.loads(json.dumps(base))
    for isp in data["isps"]:
        isp.pop("health", None)
    policies, full = rule_set(isps)
    data["policies"] = policies
    data["rules"] = {"all": full, "one": full[:1], "changed": changed(full)}[rules]
    return data


def write_config(path: Path, data: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False))


# --- 1 and 2: in the scratch namespace ----------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU seconds of this process and of the children it waited for (nft), user + system."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def process_cpu(pid: int) -> float:
    """CPU seconds of a process and of the children it waited for (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / CLK_TCK


class Timer:
    """Wall time per label of the functions it wraps."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - t0
                self.calls[label] += 1

        return timed

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


KERNEL_LABELS = {
    "nft_read": "nft -j list table (subprocess)",
    "nft_apply": "nft -f transaction (subprocess)",
    "nft_check": "nft -c check (subprocess)",
    "links": "netlink: links, connected routes",
    "connected": "netlink: links, connected routes",
    "rules": "netlink: read ip rules and routes",
    "routes": "netlink: read ip rules and routes",
    "replace_route": "netlink: add routes and ip rules",
    "add_rule": "netlink: add routes and ip rules",
    "delete_rule": "netlink: delete",
    "delete_route": "netlink: delete",
    "sysctl_read": "sysctls (/proc/sys)",
    "sysctl_write": "sysctls (/proc/sys)",
}


class TimedKernel:
    """A LinuxKernel whose calls are timed; remembers the last nft transaction it applied."""

    def __init__(self, kernel: Any, timer: Timer) -> None:
        self._kernel = kernel
        self._timer = timer
        self.last_transaction = ""

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._kernel, name)
        if name == "nft_apply":

            def apply(text: str) -> None:
                self.last_transaction = text
                self._timer.wrap(KERNEL_LABELS[name], attr)(text)

            return apply
        return self._timer.wrap(KERNEL_LABELS[name], attr) if name in KERNEL_LABELS else attr


def inner_apply(paths: dict[str, str], apply_reps: int, reload_reps: int, profile: bool) -> None:
    """Runs inside the scratch namespace (``--inner``); prints one JSON object."""
    import json as json_module
    import types

    from wanlb import nftsync, runtime
    from wanlb import reconcile as reconcile_module
    from wanlb.adapters import nft as nft_adapter
    from wanlb.config import load_config
    from wanlb.fleet import Fleet
    from wanlb.kernel import LinuxKernel
    from wanlb.reconcile import Reconciler, cleanup, plan_from, preflight, read_snapshot
    from wanlb.render import render
    from wanlb.uplink import uplinks

    timer = Timer()
    reconcile_module.plan = timer.wrap("plan", reconcile_module.plan)  # type: ignore[attr-defined]
    reconcile_module.render = timer.wrap("render", reconcile_module.render)  # type: ignore[attr-defined]
    nftsync.transaction = timer.wrap("nftsync.transaction (diff → text)", nftsync.transaction)  # type: ignore[assignment]
    nftsync.observe = timer.wrap("nftsync.observe (listing → fingerprints)", nftsync.observe)  # type: ignore[assignment]
    nftsync.record_after = timer.wrap("nftsync.record_after", nftsync.record_after)  # type: ignore[assignment]
    nft_adapter.json = types.SimpleNamespace(loads=timer.wrap("json.loads of the listing", json_module.loads))  # type: ignore[assignment]
    load = timer.wrap("load_config (read, parse, validate)", load_config)

    def wipe() -> None:
        kernel = LinuxKernel()
        try:
            cfg = load_config(paths["all"])
            cleanup(kernel, cfg, runtime.load(cfg.state_path))
            runtime.remove(cfg.state_path)
        finally:
            kernel.close()

    def kernel_holds(kernel: Any, store: Any) -> dict[str, int]:
        state = store.state
        listing = kernel.nft_read() or []
        chains = [o["chain"]["name"] for o in listing if "chain" in o]
        return {
            "chains": len(chains),
            "rule_chains": sum(1 for c in chains if c.startswith("rule_")),
            "maps": sum(1 for o in listing if "map" in o),
            "map_elements": sum(len(o["map"].get("elem", ())) for o in listing if "map" in o),
            "nft_rules": sum(1 for o in listing if "rule" in o),
            "counters": sum(1 for o in listing if "counter" in o),
            "ip_rules": len(kernel.rules(set(state.protocols))),
            "routes": len(kernel.snapshot(set(state.protocols)).routes),
        }

    def cold_apply(path: str, profiler: Any = None) -> tuple[dict[str, Any], tuple[Any, ...]]:
        """From nothing to the kernel holding it, as `wanlb run` does before its control socket opens."""
        wipe()
        gc.collect()
        timer.reset()
        if profiler is not None:
            profiler.enable()
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        cfg = load(path)
        t_loaded = time.perf_counter()
        kernel = TimedKernel(LinuxKernel(), timer)
        preflight(cfg)
        previous = runtime.load(cfg.state_path)
        allocation = runtime.allocate(cfg, previous, reload=False)
        store = runtime.StateStore(cfg.state_path, previous or runtime.RuntimeState())
        store.set_allocation(allocation.state)
        seen = uplinks(cfg, read_snapshot(kernel, cfg, store.state.protocols))  # type: ignore[arg-type]
        fleet = Fleet(cfg, store.state, seen, time.monotonic(), time.time())
        t_ready = time.perf_counter()
        setup_parts, setup_calls = dict(timer.seconds), dict(timer.calls)
        reconciler = Reconciler(kernel, store)  # type: ignore[arg-type]
        result = reconciler.reconcile(cfg, store.state, fleet.statuses())
        t1, cpu1 = time.perf_counter(), cpu_seconds()
        if profiler is not None:
            profiler.disable()
        row = {
            "total": t1 - t0,
            "cpu": cpu1 - cpu0,
            "load_config": t_loaded - t0,
            "setup": t_ready - t_loaded,  # LinuxKernel, preflight, allocate, state file, Fleet
            "reconcile": t1 - t_ready,
            "parts": {k: v - setup_parts.get(k, 0.0) for k, v in timer.seconds.items()
                      if v > setup_parts.get(k, 0.0)},
            "calls": {k: n - setup_calls.get(k, 0) for k, n in timer.calls.items() if n > setup_calls.get(k, 0)},
            "transaction_lines": kernel.last_transaction.count("\n"),
            "transaction_bytes": len(kernel.last_transaction),
            "routing_changes": len(result.changes),
        }  # fmt: skip
        return row, (cfg, kernel, store, fleet, reconciler)

    def timed_reconcile(cfg: Any, kernel: Any, store: Any, fleet: Any, reconciler: Any) -> dict[str, Any]:
        before, cpu0, t0 = dict(timer.seconds), cpu_seconds(), time.perf_counter()
        result = reconciler.reconcile(cfg, store.state, fleet.statuses())
        t1, cpu1 = time.perf_counter(), cpu_seconds()
        applied = result.nft_done is not None
        return {
            "reconcile": t1 - t0,
            "reconcile_cpu": cpu1 - cpu0,
            "parts": {k: v - before.get(k, 0.0) for k, v in timer.seconds.items() if v > before.get(k, 0.0)},
            "nft_applied": applied,
            "transaction_lines": kernel.last_transaction.count("\n") if applied else 0,
            "transaction_bytes": len(kernel.last_transaction) if applied else 0,
            "transaction_head": kernel.last_transaction.splitlines()[:6] if applied else [],
        }

    one = [cold_apply(paths["one"])[0] for _ in range(apply_reps)]
    one_holds = kernel_holds(*cold_apply(paths["one"])[1][1:3])
    cold = []
    for _ in range(apply_reps):
        row, live = cold_apply(paths["all"])
        cold.append(row)
    cfg, kernel, store, fleet, reconciler = live
    holds = kernel_holds(kernel, store)
    profile_text = ""
    if profile:  # one more, profiled, not counted (cProfile slows everything down)
        import cProfile
        import io
        import pstats

        profiler = cProfile.Profile()
        _, live = cold_apply(paths["all"], profiler)
        cfg, kernel, store, fleet, reconciler = live
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(40)
        profile_text = out.getvalue()

    reloads: list[dict[str, Any]] = []
    for rep in range(reload_reps):
        path = paths["changed"] if rep % 2 == 0 else paths["all"]
        # Untimed: the daemon's resync, which runs every 5 s between an operator's edits, reads the table once
        # after an apply and takes that apply's record; a reload that follows it does not read the table.
        timed_reconcile(cfg, kernel, store, fleet, reconciler)
        gc.collect()
        timer.reset()
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        cfg = load(path)
        allocation = runtime.allocate(cfg, store.state, reload=True)
        t_alloc = time.perf_counter()
        # What Daemon._verify does before adopting a reload: the whole ruleset checked by `nft -c` in a scratch table.
        snapshot = read_snapshot(kernel, cfg, allocation.state.protocols)
        desired = plan_from(cfg, allocation.state, snapshot, fleet.statuses())
        kernel.nft_check(nftsync.full_text(render(desired).nft, table="wanlb_verify"))
        t_verified = time.perf_counter()
        store.set_allocation(allocation.state)
        row = timed_reconcile(cfg, kernel, store, fleet, reconciler)
        t1, cpu1 = time.perf_counter(), cpu_seconds()
        reloads.append(row | {"file": Path(path).name, "load_allocate": t_alloc - t0, "verify": t_verified - t_alloc,
                              "daemon_path": t1 - t0, "daemon_path_cpu": cpu1 - cpu0})  # fmt: skip
    resyncs = []  # what the daemon's resync does every 5 s: a reconcile where nothing differs
    for _ in range(reload_reps):
        gc.collect()
        timer.reset()
        resyncs.append(timed_reconcile(cfg, kernel, store, fleet, reconciler))
    reloads_holds = kernel_holds(kernel, store)
    wipe()
    out = {"cold": cold, "one": one, "holds": holds, "one_holds": one_holds, "after_reloads": reloads_holds,
           "reloads": reloads, "resyncs": resyncs, "profile": profile_text}  # fmt: skip
    print(json.dumps(out))


class Scratch:
    """The scratch namespace of parts 1 and 2: veth links with the lab gateway's names and addresses."""

    def __init__(self, lab: Lab, isps: int) -> None:
        self.ns = f"{lab.topology.prefix}apply"
        self.dir = lab.dir / "apply"
        self.isps = isps
        self.config = self.dir / "rules.yaml"
        self.changed = self.dir / "rules-changed.yaml"
        self.one = self.dir / "one-rule.yaml"
        self.socket = self.dir / "wanlb.sock"

    def up(self, base: dict[str, Any]) -> None:
        self.dir.mkdir(mode=0o700)
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        lines = ["link set lo up", f"link add {LAN_IF} type bridge", f"addr add {LAN_GW}/24 dev {LAN_IF}"]
        lines += ["link add lanp1 type veth peer name lanx1", f"link set lanp1 master {LAN_IF}"]
        for i in range(1, self.isps + 1):  # veth pairs inside the namespace: this kernel has no dummy links
            lines += [f"link add wan{i} type veth peer name wanx{i}", f"addr add {wan_addr(i)}/24 dev wan{i}"]
        ends = [LAN_IF, "lanp1", "lanx1", *(f"wan{i}" for i in range(1, self.isps + 1))]
        ends += [f"wanx{i}" for i in range(1, self.isps + 1)]
        lines += [f"link set {ifname} up" for ifname in ends]
        lines.append(f"route add default via {isp_gateway(1)} dev wan1")
        subprocess.run(["ip", "-n", self.ns, "-batch", "-"], input="\n".join(lines) + "\n", text=True, check=True)
        data = dict(base, control={"socket": str(self.socket)})
        write_config(self.config, config_data(data, self.isps, "all"))
        write_config(self.changed, config_data(data, self.isps, "changed"))
        write_config(self.one, config_data(data, self.isps, "one"))

    def down(self) -> None:
        if subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True).returncode != 0:
            return
        for pid in subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    def put(self, text: str) -> None:
        """Replace the config file atomically (a reload must never read half a file)."""
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config)

    def exec(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], env=module_env(), **kwargs)

    def library(self, apply_reps: int, reload_reps: int, profile: bool) -> dict[str, Any]:
        paths = json.dumps({"all": str(self.config), "changed": str(self.changed), "one": str(self.one)})
        argv = [sys.executable, __file__, "--inner", paths, str(apply_reps), str(reload_reps), "1" if profile else "0"]
        out = self.exec(argv, capture_output=True, text=True)
        if out.returncode != 0:
            raise LabError(f"the apply measurement failed:\n{out.stderr[-3000:]}")
        return dict(json.loads(out.stdout))

    def daemon(self, reps: int, reloads: int) -> dict[str, Any]:
        """``wanlb run`` from nothing until its socket answers; then reload round trips (one rule changed)."""
        starts: list[float] = []
        start_cpu: list[float] = []
        reload_rtts: list[float] = []
        reload_cpu: list[float] = []
        original, changed = self.config.read_text(), self.changed.read_text()
        imports = []
        for _ in range(reps):  # what `wanlb run` pays before it reads its config: interpreter start and imports
            t0 = time.perf_counter()
            self.exec([sys.executable, "-c", "import wanlb.cli, wanlb.daemon, wanlb.kernel"], check=True)
            imports.append(time.perf_counter() - t0)
        for _ in range(reps):
            self.put(original)
            self.exec(
                [sys.executable, "-m", "wanlb.cli", "stop", "--cleanup", "-c", str(self.config)],
                capture_output=True,
                check=True,
            )
            log = (self.dir / "wanlb.log").open("ab")
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, sys.executable, "-m", "wanlb.cli", "run", "-c", str(self.config)],
                stderr=log,
                env=module_env(),
            )
            try:
                while not socket_in_use(str(self.socket)):
                    if proc.poll() is not None:
                        raise LabError(f"wanlb run exited with {proc.returncode}: see {self.dir / 'wanlb.log'}")
                    if time.perf_counter() - t0 > 60:
                        raise LabError("wanlb run did not open its control socket within 60 s")
                    time.sleep(0.002)
                starts.append(time.perf_counter() - t0)
                start_cpu.append(process_cpu(proc.pid))
                for n in range(reloads):  # the daemon reloads its own file: it is replaced before each request
                    self.put(changed if n % 2 == 0 else original)
                    cpu0, t1 = process_cpu(proc.pid), time.perf_counter()
                    reply = request(str(self.socket), {"cmd": "reload"}, timeout=30)
                    reload_rtts.append(time.perf_counter() - t1)
                    reload_cpu.append(process_cpu(proc.pid) - cpu0)
                    if not reply.get("ok", False):
                        raise LabError(f"reload refused: {reply}")
                request(str(self.socket), {"cmd": "stop", "cleanup": True})
                proc.wait(30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                log.close()
        return {"starts": starts, "start_cpu": start_cpu, "reloads": reload_rtts, "reload_cpu": reload_cpu,
                "imports": imports}  # fmt: skip


# --- 3: the datapath in the lab ----------------------------------------------------------------------


class Bench:
    def __init__(self, lab: Lab, args: argparse.Namespace) -> None:
        self.lab = lab
        self.args = args
        self.gw = LabGateway(lab)
        self.isps = len(lab.isps)
        self.servers: list[subprocess.Popen[Any]] = []

    def start_servers(self) -> None:
        for port in sorted({p for p, _ in PORTS.values()}):
            ready = self.lab.dir / f"conn-server-{port}.ready"
            proc = self.lab.popen(
                "inet",
                [sys.executable, "-c", SERVER, SERVER_ADDR, str(port), str(self.args.server_workers), str(ready)],
                label=f"conn-server-{port}",
            )
            self.servers.append(proc)
            deadline = time.monotonic() + 10
            while not ready.exists():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise LabError("the connection server did not start")
                time.sleep(0.02)
        for port in sorted({p for _, p in PORTS.values()}):
            self.lab.popen(
                "inet",
                ["iperf3", "-s", "-B", SERVER_ADDR, "-p", str(port)],
                label=f"iperf3-{port}",
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        time.sleep(0.3)

    def set_mode(self, mode: str) -> float:
        """Apply mode's config with ``wanlb run`` (stopped again without cleanup unless --daemon); empty conntrack.
        Returns the seconds from start to the control socket answering."""
        self.gw.stop(cleanup=False)
        self.gw.write(lambda data: data.update(config_data(data, self.isps, "one" if mode == "1" else "all")))
        t0 = time.perf_counter()
        self.gw.start(timeout=60)
        started = time.perf_counter() - t0
        self.gw.wait_for(dict.fromkeys(self.lab.isps, "up"), timeout=30)
        if not self.args.daemon:
            self.gw.stop(cleanup=False)
        self.gw.run("conntrack", "-F")
        return started

    def rule_hits(self) -> dict[str, int]:
        """Packets counted per rule and per ISP's NEW counter (``isp_*_new``)."""
        out = json.loads(self.gw.run("nft", "-j", "list", "counters", "table", "inet", "wanlb"))
        hits = {}
        for obj in out["nftables"]:
            if "counter" in obj and (obj["counter"]["name"].startswith(("rule_", "isp_"))):
                hits[obj["counter"]["name"]] = int(obj["counter"]["packets"])
        return hits

    def connections(self, mode: str, perf: Path | None = None) -> dict[str, Any]:
        """Conn/s over the window; with ``perf``, a system-wide ``perf record`` runs over the window too."""
        args = self.args
        port = PORTS[mode][0]
        argv = [
            sys.executable,
            "-c",
            CLIENT,
            SERVER_ADDR,
            str(port),
            str(args.parallel),
            str(args.warmup),
            str(args.seconds),
            "0",
        ]
        procs = [
            self.lab.popen(node, argv, label=f"generator{i}", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i, node in enumerate(self.lab.clients)
        ]
        time.sleep(args.warmup)
        recorder = None
        if perf is not None:
            record = ["perf", "record", "-a", "-F", "999", "-o", str(perf), "--", "sleep", str(args.seconds)]
            recorder = subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = self.cpu_sample([p.pid for p in procs])
        time.sleep(args.seconds)
        after = self.cpu_sample([p.pid for p in procs])
        if recorder is not None:
            recorder.wait(30)
        results = []
        for p in procs:
            out, err = p.communicate(timeout=args.seconds + 30)
            if p.returncode != 0:
                raise LabError(f"connection generator failed: {err.strip()}")
            results.append(json.loads(out))
        wall = after["wall"] - before["wall"]
        ok = sum(r["ok"] for r in results)
        return {
            "conn_s": ok / args.seconds,
            "failed": sum(r["failed"] + r["timeouts"] for r in results),
            "cpu": {k: (after[k] - before[k]) / wall for k in after if k != "wall"},
        }

    def cpu_sample(self, client_pids: Sequence[int]) -> dict[str, float]:
        m = machine_cpu()
        sample = {
            "wall": time.monotonic(),
            "clients": sum(proc_cpu(p) for p in client_pids),
            "server": tree_cpu([p.pid for p in self.servers]),
            "busy": sum(v for k, v in m.items() if k not in ("idle", "iowait")),
            "softirq": m["softirq"],
        }
        if self.gw.proc is not None and self.gw.proc.poll() is None:
            sample["daemon"] = proc_cpu(self.gw.proc.pid)
        return sample

    def iperf(self, mode: str) -> float:
        out = self.lab.run(
            "c1",
            ["iperf3", "-c", SERVER_ADDR, "-p", str(PORTS[mode][1]), "-t", str(self.args.iperf_seconds), "-J"],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise LabError(f"iperf3 failed: {out.stdout[-500:]} {out.stderr[-500:]}")
        return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9

    def kernel_profile(self, mode: str) -> dict[str, Any]:
        """One extra window of ``mode`` (not counted in the rounds) under ``perf record -a``: the share of all
        samples in nf_tables, in its chain walk and in its set/map lookups."""
        self.set_mode(mode)
        data = self.lab.dir / f"perf-{mode}.data"
        conn = self.connections(mode, perf=data)
        out = subprocess.run(["perf", "report", "-i", str(data), "--sort", "symbol", "--stdio", "--percent-limit",
                              "0"], capture_output=True, text=True, check=True).stdout  # fmt: skip
        shares: dict[str, float] = defaultdict(float)
        top: list[tuple[float, str]] = []
        lookups: list[tuple[float, str]] = []
        for line in out.splitlines():
            m = re.match(r"\s+([\d.]+)%\s+\[(.)\]\s+(\S+)", line)
            if not m:
                continue
            share, symbol = float(m.group(1)), m.group(3)
            nft = symbol.startswith(("nft_", "nf_tables", "__nft_")) or "pipapo" in symbol
            if nft:
                shares["nf_tables, all"] += share
                top.append((share, symbol))
            if symbol == "nft_do_chain":
                shares["nft_do_chain"] += share
            if nft and ("lookup" in symbol or "pipapo" in symbol or "rbtree" in symbol or "hash" in symbol):
                shares["set and map lookups"] += share
                lookups.append((share, symbol))
        return {"mode": mode, "conn_s": conn["conn_s"], "shares": dict(shares), "top": sorted(top, reverse=True)[:8],
                "lookups": sorted(lookups, reverse=True)}  # fmt: skip

    def measure(self, n: int, mode: str) -> dict[str, Any]:
        started = self.set_mode(mode)
        hits0 = self.rule_hits()
        conn = self.connections(mode)
        gbit = self.iperf(mode)
        hits1 = self.rule_hits()
        delta = {k: v - hits0.get(k, 0) for k, v in hits1.items()}
        rules = {k: v for k, v in delta.items() if k.startswith("rule_") and v}
        isps_new = {k: v for k, v in delta.items() if k.startswith("isp_") and k.endswith("_new") and v}
        return {
            "round": n,
            "mode": mode,
            "gbit_s": gbit,
            "start_s": started,
            "rule_hits": rules,
            "isps_used": len(isps_new),
            "new_marked": sum(isps_new.values()),
            **conn,
        }


# --- reporting ---------------------------------------------------------------------------------------


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ms(values: Sequence[float]) -> str:
    return f"{med(values) * 1000:.0f} ms [{min(values) * 1000:.0f}–{max(values) * 1000:.0f}]" if values else "—"


GROUPS = (  # the breakdown the issue asks for: parse+validate, plan+render, nft apply, routing
    ("plan + render", ("plan", "render")),
    ("nft: diff → transaction text, `nft -f`",
     ("nftsync.transaction (diff → text)", "nft -f transaction (subprocess)")),
    ("nft: read back and fingerprint (`nft -j list table` ×2, observe, record)",
     ("nft -j list table (subprocess)", "nftsync.observe (listing → fingerprints)", "nftsync.record_after")),
    ("routing: netlink reads, routes and ip rules added, sysctls",
     ("netlink: links, connected routes", "netlink: read ip rules and routes", "netlink: add routes and ip rules",
      "netlink: delete", "sysctls (/proc/sys)")),
)  # fmt: skip
NESTED = {"json.loads of the listing"}  # inside "nft -j list table": shown, never added


def breakdown(rows: list[dict[str, Any]], key: str = "parts") -> list[tuple[str, list[float]]]:
    """(group, per-rep seconds) for GROUPS, then what is left of the reconcile."""
    out = []
    for name, labels in GROUPS:
        out.append((name, [sum(r[key].get(label, 0.0) for label in labels) for r in rows]))
    known = {label for _, labels in GROUPS for label in labels}
    out.append(("rest of the reconcile (routing diff, Python glue)",
                [r["reconcile"] - sum(v for k, v in r[key].items() if k in known) for r in rows]))  # fmt: skip
    return out


def report_apply(lib: dict[str, Any], daemon: dict[str, Any]) -> None:
    cold, one = lib["cold"], lib["one"]
    print("\n### 1. Cold render + apply (16 ISPs, 1,000 rules), scratch namespace\n")
    holds, one_holds = lib["holds"], lib["one_holds"]
    print(
        f"After it the kernel held {holds['chains']:,} chains ({holds['rule_chains']:,} rule chains), "
        f"{holds['maps']} verdict maps with {holds['map_elements']:,} elements, {holds['nft_rules']:,} nft rules "
        f"and {holds['counters']:,} named counters; {holds['ip_rules']} ip rules and {holds['routes']} routes "
        f"(with the 1-rule config: {one_holds['chains']} chains, {one_holds['nft_rules']} nft rules, the same ip "
        f"rules and routes). The nft transaction: {cold[0]['transaction_lines']:,} lines, "
        f"{cold[0]['transaction_bytes'] / 1024:.0f} KiB ({one[0]['transaction_lines']} lines with 1 rule).\n"
    )
    print("| what is timed (wall) | median [min–max] | CPU, median | target |")
    print("|---|---|---|---|")
    total = [r["total"] for r in cold]
    ok = "✔" if med(total) <= 0.3 else "✘"
    print(f"| library path: `load_config` → `reconcile` returned ({len(cold)} reps) | {ms(total)} "
          f"| {med([r['cpu'] for r in cold]) * 1000:.0f} ms | ≤ 300 ms {ok} |")  # fmt: skip
    print(f"| same, the 1-rule config (same 16 ISPs) | {ms([r['total'] for r in one])} "
          f"| {med([r['cpu'] for r in one]) * 1000:.0f} ms | — |")  # fmt: skip
    starts = daemon["starts"]
    ok = "✔" if med(starts) <= 0.3 else "✘"
    print(f"| `wanlb run` via `ip netns exec`: Popen → control socket answers ({len(starts)} reps) | {ms(starts)} "
          f"| {med(daemon['start_cpu']) * 1000:.0f} ms | ≤ 300 ms {ok} |")  # fmt: skip
    imports = daemon["imports"]
    print(f"| of which, before `wanlb run` reads its config: `ip netns exec` + `python -c 'import wanlb.cli, "
          f"wanlb.daemon, wanlb.kernel'` ({len(imports)} reps) | {ms(imports)} | | — |")  # fmt: skip
    print("\nCPU: user + system of the process and the `nft` processes it ran (and waited for). Breakdown of the "
          "library path (wall, medians over the reps):\n")  # fmt: skip
    print("| step | 1,000 rules, ms | share | 1 rule, ms |")
    print("|---|---|---|---|")
    whole = med(total)

    def rows(reps: list[dict[str, Any]]) -> list[tuple[str, list[float]]]:
        return [("parse + validate (`load_config`)", [r["load_config"] for r in reps]),
                ("setup: LinuxKernel, preflight, allocate, state file, Fleet", [r["setup"] for r in reps]),
                *breakdown(reps)]  # fmt: skip

    for (name, values), (_, base) in zip(rows(cold), rows(one), strict=True):
        print(f"| {name} | {med(values) * 1000:.0f} | {med(values) / whole:.0%} | {med(base) * 1000:.0f} |")
    print(f"| **total** | **{whole * 1000:.0f}** | | **{med([r['total'] for r in one]) * 1000:.0f}** |")
    print("\nIn detail (the reconcile only; calls per apply):\n")
    print("| function | 1,000 rules, ms | calls | 1 rule, ms |")
    print("|---|---|---|---|")
    for label in sorted({k for r in cold for k in r["parts"]} - {"load_config (read, parse, validate)"}):
        nested = " (inside the row above)" if label in NESTED else ""
        calls = cold[-1]["calls"].get(label, 0)
        base = med([r["parts"].get(label, 0.0) for r in one]) * 1000
        print(f"| {label}{nested} | {med([r['parts'].get(label, 0.0) for r in cold]) * 1000:.1f} | {calls} "
              f"| {base:.1f} |")  # fmt: skip


def report_reload(lib: dict[str, Any], daemon: dict[str, Any]) -> None:
    reloads, resyncs = lib["reloads"], lib["resyncs"]
    print(f"\n### 2. A reload that changes one rule ({CHANGED_RULE}'s port), same Reconciler\n")
    first = reloads[0]
    head = " / ".join(f"`{line[:90]}{' …' if len(line) > 90 else ''}`" for line in first["transaction_head"][:4])
    print(f"Each reload's nft transaction: {first['transaction_lines']} lines, {first['transaction_bytes']:,} bytes: "
          f"{head}.\n")  # fmt: skip
    print("| what is timed (wall) | median [min–max] | CPU, median | target |")
    print("|---|---|---|---|")
    rec = [r["reconcile"] for r in reloads]
    ok = "✔" if med(rec) <= 0.1 else "✘"
    print(f"| reconcile: observe, plan, render, diff, `nft -f`, read back ({len(rec)} reps) | {ms(rec)} "
          f"| {med([r['reconcile_cpu'] for r in reloads]) * 1000:.0f} ms | ≤ 100 ms {ok} |")  # fmt: skip
    print(f"| before it, in the daemon: `load_config` + `allocate` | {ms([r['load_allocate'] for r in reloads])} "
          "| | |")  # fmt: skip
    print(f"| before it, in the daemon: the `nft -c` check of the whole ruleset (plan, render, full text, nft -c) "
          f"| {ms([r['verify'] for r in reloads])} | | |")  # fmt: skip
    print(f"| = the daemon's reload path, library (sum of the three) | {ms([r['daemon_path'] for r in reloads])} "
          f"| {med([r['daemon_path_cpu'] for r in reloads]) * 1000:.0f} ms | |")  # fmt: skip
    rtt = daemon["reloads"]
    print(f"| `wanlb run`: `{{\"cmd\": \"reload\"}}` round trip on the control socket ({len(rtt)} reps) "
          f"| {ms(rtt)} | {med(daemon['reload_cpu']) * 1000:.0f} ms (daemon) | |")  # fmt: skip
    rs = [r["reconcile"] for r in resyncs]
    applied = sum(1 for r in resyncs if r["nft_applied"])
    print(f"| for comparison: a reconcile where nothing changed (the daemon's resync, every 5 s; nft applied "
          f"{applied} times) ({len(rs)} reps) | {ms(rs)} | {med([r['reconcile_cpu'] for r in resyncs]) * 1000:.0f} ms "
          "| — |")  # fmt: skip
    print("\nBreakdown of the reconcile (wall, medians):\n")
    print("| step | one-rule reload, ms | share | nothing changed, ms |")
    print("|---|---|---|---|")
    whole = med(rec)
    for (name, values), (_, quiet) in zip(breakdown(reloads), breakdown(resyncs), strict=True):
        print(f"| {name} | {med(values) * 1000:.0f} | {med(values) / whole:.0%} | {med(quiet) * 1000:.0f} |")
    print("\n| function | one-rule reload, ms | nothing changed, ms |")
    print("|---|---|---|")
    for label in sorted({k for r in reloads for k in r["parts"]} - {"load_config (read, parse, validate)"}):
        nested = " (inside the row above)" if label in NESTED else ""
        quiet = med([r["parts"].get(label, 0.0) for r in resyncs]) * 1000
        print(f"| {label}{nested} | {med([r['parts'].get(label, 0.0) for r in reloads]) * 1000:.1f} "
              f"| {quiet:.1f} |")  # fmt: skip


def report_datapath(args: argparse.Namespace, rounds: list[dict[str, Any]], isps: int) -> None:
    by_mode = {m: [r for r in rounds if r["mode"] == m] for m in MODES}
    by_mode = {m: rows for m, rows in by_mode.items() if rows}
    print(
        f"\n### 3. Datapath: {isps} ISPs, 2 clients, {args.rounds} interleaved rounds, {args.seconds:g} s windows, "
        f"{args.parallel} connects in flight per client, daemon {'running' if args.daemon else 'stopped after apply'}\n"
    )
    print(
        "| mode | new TCP conn/s (median) | min–max | iperf3 Gbit/s (median) | min–max | CPU, cores: clients "
        "| server | softirq | whole machine (of 2) | ISPs used | rules matched |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for m, rows in by_mode.items():
        cs, gs = [r["conn_s"] for r in rows], [r["gbit_s"] for r in rows]
        cpu = {k: med([r["cpu"].get(k, 0.0) for r in rows]) for k in ("clients", "server", "softirq", "busy")}
        matched = sorted({k for r in rows for k in r["rule_hits"]}) or ["none"]
        print(
            f"| ({m}) {MODE_NAMES[m]} | {med(cs):,.0f} | {min(cs):,.0f}–{max(cs):,.0f} | {med(gs):.2f} "
            f"| {min(gs):.2f}–{max(gs):.2f} | {cpu['clients']:.2f} | {cpu['server']:.2f} | {cpu['softirq']:.2f} "
            f"| {cpu['busy']:.2f} | {med([r['isps_used'] for r in rows]):.0f} | {', '.join(matched)} |"
        )
    print("\nPer-round ratios (the modes of one round ran within a minute or so):\n")
    print("| round | " + " | ".join(f"({x})/(1) conn/s | ({x})/(1) iperf3" for x in ("k", "m") if x in by_mode) + " |")
    print("|---|" + "---|---|" * len([x for x in ("k", "m") if x in by_mode]))
    ratios: dict[str, list[float]] = defaultdict(list)
    for n in sorted({r["round"] for r in rounds}):
        got = {r["mode"]: r for r in rounds if r["round"] == n}
        cells = []
        for x in ("k", "m"):
            if x in got and "1" in got:
                c = got[x]["conn_s"] / got["1"]["conn_s"]
                g = got[x]["gbit_s"] / got["1"]["gbit_s"]
                ratios[f"{x}c"].append(c)
                ratios[f"{x}g"].append(g)
                cells += [f"{c:.3f}", f"{g:.3f}"]
        print(f"| {n} | " + " | ".join(cells) + " |")
    cells = []
    for x in ("k", "m"):
        if ratios[f"{x}c"]:
            cells += [f"**{med(ratios[f'{x}c']):.3f}**", f"**{med(ratios[f'{x}g']):.3f}**"]
    print("| median | " + " | ".join(cells) + " |")
    kc, kg = med(ratios["kc"]), med(ratios["kg"])
    conn = {m: med([r["conn_s"] for r in rows]) for m, rows in by_mode.items()}
    gbit = {m: med([r["gbit_s"] for r in rows]) for m, rows in by_mode.items()}
    print(
        f"\nTargets, 1,000 unmatched rules against 1 rule, median of the per-round ratios: new conn/s {kc:.3f}× "
        f"(≥ 0.97 {'✔' if kc >= 0.97 else '✘'}), iperf3 {kg:.3f}× (≥ 0.97 {'✔' if kg >= 0.97 else '✘'}). "
        f"Ratios of the medians: conn/s {conn['k'] / conn['1']:.3f}×, iperf3 {gbit['k'] / gbit['1']:.3f}×."
    )
    failed = sum(r["failed"] for r in rounds)
    starts = {m: med([r["start_s"] for r in rows]) for m, rows in by_mode.items()}
    print(
        f"Failed or timed-out connects over all windows: {failed}. `wanlb run` in the lab gateway, start to "
        "socket (median per mode): " + ", ".join(f"({m}) {s * 1000:.0f} ms" for m, s in starts.items()) + "."
    )


def report_perf(args: argparse.Namespace, profiles: list[dict[str, Any]]) -> None:
    print(f"\nKernel profile: one more {args.seconds:g} s window of (1) and of (k) each, after the rounds and not "
          "counted in them, under `perf record -a -F 999` (the whole machine: shares of all its samples, other "
          "engineers' work included):\n")  # fmt: skip
    print("| mode | conn/s in that window | nf_tables, all `nft_*` | of which `nft_do_chain` | set and map lookups "
          "| the lookups | top nf_tables symbols |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for p in profiles:
        sh = p["shares"]
        top = ", ".join(f"`{sym}` {share:.2f}" for share, sym in p["top"][:4])
        lookups = ", ".join(f"`{sym}` {share:.2f}" for share, sym in p["lookups"])
        print(f"| ({p['mode']}) | {p['conn_s']:,.0f} | {sh.get('nf_tables, all', 0):.2f} % | "
              f"{sh.get('nft_do_chain', 0):.2f} % | {sh.get('set and map lookups', 0):.2f} % | {lookups} "
              f"| {top} |")  # fmt: skip


# --- main --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="datapath rounds (each runs every mode)")
    parser.add_argument("--isps", type=int, default=16)
    parser.add_argument("--apply-reps", type=int, default=7, help="cold applies (library path and wanlb run each)")
    parser.add_argument(
        "--reload-reps", type=int, default=10, help="one-rule reloads (library path and wanlb run each)"
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="connection-rate window per mode and round")
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--parallel", type=int, default=64, help="connects in flight per client")
    parser.add_argument("--server-workers", type=int, default=2)
    parser.add_argument("--iperf-seconds", type=int, default=3)
    parser.add_argument("--modes", default="1,k,m", help="datapath modes (1 and k required)")
    parser.add_argument("--daemon", action="store_true", help="keep the daemon running during the datapath windows")
    parser.add_argument("--perf", action="store_true", help="after the rounds, one window of 1 and k under perf record")
    parser.add_argument("--profile", action="store_true", help="cProfile the last cold apply, print the top")
    parser.add_argument("--json", action="store_true", help="print everything as JSON too")
    parser.add_argument("--inner", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        paths, apply_reps, reload_reps, profile = args.inner
        inner_apply(json.loads(paths), int(apply_reps), int(reload_reps), profile == "1")
        return
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark builds network namespaces")
    modes = [m for m in MODES if m in args.modes.split(",")]
    if not {"1", "k"} <= set(modes):
        sys.exit("--modes must include 1 and k")
    for tool in ("iperf3", "conntrack", "nft", *(["perf"] if args.perf else [])):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed")
    command = "python bench/rules_bench.py " + " ".join(sys.argv[1:])
    started = time.strftime("%Y-%m-%d %H:%M")
    load_start = os.getloadavg()
    name = f"rb{os.getpid()}{uuid.uuid4().hex[:3]}"
    rounds: list[dict[str, Any]] = []
    profiles: list[dict[str, Any]] = []
    # SIGINT always unwinds (a shell starts background jobs with it ignored), SIGHUP too; SIGTERM below.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, lambda signum, _frame: sys.exit(128 + signum))
    with sigterm_as_exit():
        try:
            with Lab.up(name=name, isps=args.isps, clients=2) as lab:
                base = yaml.safe_load(Topology(name, args.isps, 2).config_yaml(str(lab.socket_path)))
                scratch = Scratch(lab, args.isps)
                try:
                    scratch.up(base)
                    lib = scratch.library(args.apply_reps, args.reload_reps, args.profile)
                    daemon = scratch.daemon(args.apply_reps, max(1, args.reload_reps // args.apply_reps))
                finally:
                    scratch.down()
                load_mid = os.getloadavg()
                print(f"apply done, load average {load_mid[0]:.2f}", file=sys.stderr, flush=True)
                bench = Bench(lab, args)
                bench.start_servers()
                for n in range(1, args.rounds + 1):
                    for mode in modes if n % 2 else reversed(modes):
                        row = bench.measure(n, mode)
                        rounds.append(row)
                        cpu = row["cpu"]
                        print(
                            f"round {n} {mode}: {row['conn_s']:.0f} conn/s (failed {row['failed']}), "
                            f"{row['gbit_s']:.2f} Gbit/s; CPU/core: clients {cpu['clients']:.2f} server "
                            f"{cpu['server']:.2f} softirq {cpu['softirq']:.2f} machine {cpu['busy']:.2f}; "
                            f"ISPs used {row['isps_used']}, rules hit {sorted(row['rule_hits'])[:3]}",
                            file=sys.stderr,
                            flush=True,
                        )
                if args.perf:
                    profiles = [bench.kernel_profile(mode) for mode in ("1", "k")]
                bench.gw.stop(cleanup=True)
        finally:
            remove_lab(name)  # idempotent: whatever Lab.up or its context left (the lab removes it already)
    print(
        f"\n{started}; load average {load_start[0]:.2f} / {load_start[1]:.2f} / {load_start[2]:.2f} at start, "
        f"{load_mid[0]:.2f} after parts 1–2, {os.getloadavg()[0]:.2f} at the end; {os.cpu_count()} CPUs; "
        f"kernel {os.uname().release}"
    )
    report_apply(lib, daemon)
    report_reload(lib, daemon)
    if rounds:
        report_datapath(args, rounds, args.isps)
    if profiles:
        report_perf(args, profiles)
    if lib.get("profile"):
        print("\ncProfile of the last cold apply (cumulative):\n\n```\n" + lib["profile"] + "```")
    print(f"\nCommand (root, from the repository): `{command}`")
    if args.json:
        out = {"apply": lib, "daemon": daemon, "rounds": rounds, "perf": profiles}
        print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
