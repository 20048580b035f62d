"""Build, drive and tear down a lab: the executing half of `wanlb.lab` (the pure half is `topology`).

Everything is done with iproute2 and nft inside namespaces named `wlab-<name>-<node>`; veth pairs are
created from inside one namespace straight into the other, so the host's own network is never touched.
State lives in /run/wanlb/lab/<name>/ (lab.json, the generated wanlb.yaml, server logs); teardown works
from the namespace names alone, so even a crashed run can be cleaned up (`down_all`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import wanlb
from wanlb.lab.topology import (
    COUNTERS,
    DHCP_MODES,
    DNS_ADDR,
    DNS_PORT,
    FTP_ADDR,
    FTP_PASSIVE_PORTS,
    FTP_PORT,
    HTTP_ADDR,
    HTTP_PORT,
    HTTPS_PORT,
    ISP_CUSTOMER_IF,
    NFT_TABLE,
    NS_PREFIX,
    SERVER6_ADDRS,
    SPOOF_COUNTER,
    STREAM_ADDR,
    STREAM_PORT,
    FailMode,
    Topology,
    TopologyError,
    dhcp6_server_argv,
    dhcp6_server_conf,
    dhcp_client_argv,
    dhcp_server_argv,
    fail_nft,
    gateway_nat_nft,
    isp6_prefix,
    isp_for_source,
    p2p_local,
    pd_holder,
    vip_nat_nft,
    wan_subnet,
)

RUN_DIR = Path("/run/wanlb/lab")
STOP_GRACE = 3.0  # seconds processes get between SIGTERM and SIGKILL
READY_TIMEOUT = 15.0  # seconds the servers get to start listening


class LabError(RuntimeError):
    """Anything the lab cannot do, with a message meant for the person at the terminal."""


def python_module(module: str, *args: str) -> list[str]:
    """argv running one of the lab's helper modules with this interpreter."""
    return [sys.executable, "-m", module, *args]


def module_env() -> dict[str, str]:
    """Environment for the lab's own helper processes: they must import the very wanlb package this
    process runs, whatever is installed (an editable install may point at another checkout)."""
    src = str(Path(wanlb.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return os.environ | {"PYTHONPATH": f"{src}{os.pathsep}{path}" if path else src}


def require_root() -> None:
    """Namespaces, veths and nft need root; say so up front instead of failing halfway through a build."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, veth, nft): run it with sudo")


def _run(argv: Sequence[str], stdin: str | None = None) -> str:
    """Run a command, return stdout; raise LabError carrying stderr if it fails."""
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def lab_namespaces(prefix: str = NS_PREFIX) -> list[str]:
    """Existing namespaces whose name starts with `prefix` (all labs' by default)."""
    out = _run(["ip", "netns", "list"])
    names = (line.split()[0] for line in out.splitlines() if line.strip())
    return sorted(n for n in names if n.startswith(prefix))


def list_labs() -> list[str]:
    """Names of labs that have a state directory or namespaces left."""
    from_dirs = {p.name for p in RUN_DIR.iterdir() if p.is_dir()} if RUN_DIR.is_dir() else set()
    from_ns = {ns[len(NS_PREFIX) :].split("-")[0] for ns in lab_namespaces()}
    return sorted(from_dirs | from_ns)


def _namespace_pids(ns: str) -> list[int]:
    proc = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
    return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []


def _stop_namespace_processes(
    namespaces: Sequence[str], signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGKILL)
) -> None:
    """SIGTERM every process inside the namespaces, SIGKILL what is left after STOP_GRACE (``signals``:
    SIGKILL alone for a death, which no process may notice and act on). Processes are found by namespace
    membership, so PIDs recorded by a crashed run can never hit an unrelated process."""
    for sig in signals:
        pids = [pid for ns in namespaces for pid in _namespace_pids(ns)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + STOP_GRACE
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = [pid for ns in namespaces for pid in _namespace_pids(ns)]
        if not pids:
            return


def _remove_namespaces(namespaces: Sequence[str]) -> None:
    _stop_namespace_processes(namespaces)
    for ns in namespaces:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _topology(
    name: str,
    isps: int = 3,
    clients: int = 2,
    weights: Sequence[int] = (),
    ipv6: bool = False,
    uplinks: Sequence[str] = (),
    ha: bool = False,
) -> Topology:
    try:
        return Topology(name, isps, clients, tuple(weights), ipv6, tuple(uplinks), ha)
    except TopologyError as exc:
        raise LabError(str(exc)) from None


def remove_lab(name: str) -> list[str]:
    """Remove one lab by name alone (processes, namespaces, state dir), even if its lab.json is gone;
    return the namespaces removed."""
    namespaces = lab_namespaces(_topology(name).prefix)
    _remove_namespaces(namespaces)
    shutil.rmtree(RUN_DIR / name, ignore_errors=True)
    return namespaces


def down_all(name_prefix: str = "") -> list[str]:
    """Remove every lab this machine's wanlb recorded as its own (a state directory under RUN_DIR, made
    before any namespace): processes, namespaces and state; return the namespaces removed. This is the
    cleanup for crashed runs and killed demos. A `wlab-*` namespace with no record is someone else's and
    stays (`remove_lab(name)` removes one by name). `name_prefix` limits it to labs whose name starts
    with it, so a test can exercise this without touching labs that other runs use meanwhile."""
    require_root()
    removed: list[str] = []
    owned = sorted(p.name for p in RUN_DIR.glob(f"{name_prefix}*") if p.is_dir()) if RUN_DIR.is_dir() else []
    for name in owned:
        try:
            removed += remove_lab(name)
        except LabError:  # a directory that is no lab name: not ours to interpret
            continue
    return removed


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit for the duration, so `finally`/`__exit__` teardown runs on `kill` too
    (Python's default SIGTERM action ends the process without unwinding). Only possible on the main
    thread; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@dataclass
class TrafficReport:
    """Result of `Lab.traffic_report`: connections per ISP as the server saw them."""

    counts: dict[str, int]  # isp1..ispN, "other" (a source that is no WAN address), "failed"
    errors: dict[str, int] = field(default_factory=dict)  # failure kind -> count
    elapsed: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class Lab:
    """A running lab. Create with `Lab.up(...)`, attach to an existing one with `Lab.load(name)`.

    As a context manager it always tears the lab down on exit, including on KeyboardInterrupt and SIGTERM.
    """

    def __init__(self, topology: Topology, state: dict[str, Any]) -> None:
        self.topology = topology
        self._state = state
        self._children: list[subprocess.Popen[Any]] = []

    # --- life cycle --------------------------------------------------------------------------------

    @classmethod
    def up(
        cls,
        name: str = "lab",
        isps: int = 3,
        clients: int = 2,
        weights: Sequence[int] | None = None,
        plain_nat: bool = False,
        ipv6: bool = False,
        uplinks: Sequence[str] = (),
        ha: bool = False,
    ) -> Lab:
        """Build a lab and start its servers. If anything fails (or the build is interrupted), whatever
        was built is torn down before the error propagates.

        Without the daemon, client traffic leaves the gateway unNATed and the ISPs drop it (as `lan_leak`);
        `plain_nat=True` adds a plain masquerade on the WANs (never use it together with the daemon).
        `ipv6=True` builds it dual-stack (`topology` has the addresses) with netmap in the generated config.
        `uplinks`: each ISP's uplink mode (static, dhcp, p2p, modem; see `topology`); DHCP WANs have their
        leases when this returns. `ha=True` builds an HA pair, gw1 and gw2, with a config each (IPv4, static
        uplinks; `plain_nat` SNATs LAN sources to each WAN's VIP there: `vip_nat_nft`)."""
        require_root()
        topo = _topology(name, isps, clients, weights or (), ipv6, uplinks, ha)
        if lab_namespaces(topo.prefix):
            raise LabError(f"lab {name!r} already exists: `wanlb lab down --name {name}` first")
        try:
            (RUN_DIR / name).mkdir(parents=True)
        except FileExistsError:
            raise LabError(
                f"lab {name!r} already exists ({RUN_DIR / name}): `wanlb lab down --name {name}` first"
            ) from None
        state = {
            "name": name,
            "isps": isps,
            "clients": clients,
            "weights": list(topo.weights),
            "namespaces": {node: topo.ns(node) for node in topo.nodes},
            "addresses": {node: topo.addresses(node) for node in topo.nodes},
            "processes": {},
            "fail": {},
            "plain_nat": plain_nat,
            "ipv6": ipv6,
            "uplinks": list(topo.uplinks),
            "leases": {},  # ISP -> 1 after an odd number of lease changes (DHCP) or reconnects (p2p)
            "unplugged": [],
            "ha": ha,
            "killed": {},  # HA gateway -> wall-clock time `kill` took it down
            "created": time.time(),
        }
        lab = cls(topo, state)
        try:
            with sigterm_as_exit():
                lab._save()
                lab._build()
        except BaseException:
            lab.down()
            raise
        return lab

    @classmethod
    def load(cls, name: str = "lab") -> Lab:
        """Attach to a lab built earlier (possibly by another process)."""
        path = RUN_DIR / _topology(name).name / "lab.json"
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            labs = list_labs()
            raise LabError(
                f"no lab named {name!r}" + (f"; existing: {', '.join(labs)}" if labs else "; `wanlb lab up`")
            ) from None
        topo = _topology(
            state["name"], state["isps"], state["clients"], state["weights"], state.get("ipv6", False),
            state.get("uplinks", ()), state.get("ha", False),
        )  # fmt: skip
        return cls(topo, state)

    def down(self) -> None:
        """Kill every process in the lab's namespaces, delete them and the state directory. Never raises
        for things already gone, so it is safe on a half-built or already removed lab."""
        remove_lab(self.name)
        for child in self._children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=STOP_GRACE)  # reap: they were killed above

    def __enter__(self) -> Lab:
        self._exit_stack = contextlib.ExitStack()
        self._exit_stack.enter_context(sigterm_as_exit())
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._exit_stack.close()
        if threading.current_thread() is threading.main_thread():
            old = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second kill must not cut teardown short
            try:
                self.down()
            finally:
                signal.signal(signal.SIGTERM, old)
        else:
            self.down()

    def _build(self) -> None:
        topo = self.topology
        _run(["ip", "-batch", "-"], "".join(f"netns add {topo.ns(n)}\n" for n in topo.nodes))
        for node in topo.nodes:
            settings = [f"{k}={v}" for k, v in topo.sysctls(node).items()]
            _run(["ip", "netns", "exec", topo.ns(node), "sysctl", "-q", "-w", *settings])
        for node in topo.nodes:
            _run(["ip", "-n", topo.ns(node), "-batch", "-"], "\n".join(topo.ip_batch(node)) + "\n")
        for i in range(1, topo.isps + 1):
            _run(["ip", "netns", "exec", topo.ns(f"isp{i}"), "nft", "-f", "-"], topo.isp_nft(i))
        for gw in topo.gateways:
            if self._state["plain_nat"]:
                nat = vip_nat_nft(topo.isps) if topo.ha else gateway_nat_nft()
                _run(["ip", "netns", "exec", topo.ns(gw), "nft", "-f", "-"], nat)
            self.gateway_config(gw).write_text(topo.config_yaml(str(self.gateway_socket(gw)), gw))
        self._start_servers()
        self._start_uplinks()
        for gw in topo.gateways if topo.ha else ():  # the bridges forward through their ports once they are up
            self._wait_links_settled(gw)

    def _start_servers(self) -> None:
        """Start the HTTP(S), stream and DNS servers in inet and wait until all listen."""
        cert, key = self.dir / "https.crt", self.dir / "https.key"
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        _run(
            [
                "openssl",
                "req",
                "-x509",
                *ec,
                "-days",
                "7",
                "-subj",
                "/CN=wanlb-lab",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ]
        )
        servers = {
            "http": ["http", f"{HTTP_ADDR}:{HTTP_PORT}"],
            "https": ["https", f"{HTTP_ADDR}:{HTTPS_PORT}", "--cert", str(cert), "--key", str(key)],
            "stream": ["stream", f"{STREAM_ADDR}:{STREAM_PORT}"],
            "dns": ["dns", f"{DNS_ADDR}:{DNS_PORT}"],
        }
        if self.topology.ipv6:  # the same HTTP and stream services on the first IPv6 server address
            servers["http6"] = ["http", f"[{SERVER6_ADDRS[0]}]:{HTTP_PORT}"]
            servers["stream6"] = ["stream", f"[{SERVER6_ADDRS[0]}]:{STREAM_PORT}"]
        self._start_and_wait(servers)

    def _start_and_wait(self, servers: dict[str, list[str]]) -> None:
        """Start `python -m wanlb.lab.servers KIND --listen ...ARGS` in inet for each label → [KIND, ...ARGS]
        (logged to LABEL.log), then wait until every one has written its ready file."""
        procs: dict[str, subprocess.Popen[Any]] = {}
        for kind, (server, *listen) in servers.items():
            ready = self.dir / f"{kind}.ready"
            ready.unlink(missing_ok=True)
            with open(self.dir / f"{kind}.log", "wb") as log:
                procs[kind] = self.popen(
                    "inet",
                    python_module("wanlb.lab.servers", server, "--listen", *listen, "--ready-file", str(ready)),
                    label=kind,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        deadline = time.monotonic() + READY_TIMEOUT
        for kind in servers:
            while not (self.dir / f"{kind}.ready").exists():
                if time.monotonic() > deadline or procs[kind].poll() is not None:
                    log = (self.dir / f"{kind}.log").read_text(errors="replace")[-2000:]
                    raise LabError(f"the {kind} server did not start:\n{log}")
                time.sleep(0.02)

    # --- real uplinks: DHCP servers in the ISP routers, a DHCP client in the gateway ---------------------

    def _start_uplinks(self) -> None:
        """Start each DHCP ISP's server and the gateway's DHCP client; wait until every DHCP WAN has its lease."""
        topo = self.topology
        if topo.dhcp_wans:
            tools = {"dnsmasq": "dnsmasq-base", "dhcpcd": "dhcpcd-base"}
            tools |= {"dhcpd": "isc-dhcp-server"} if topo.pd_isps else {}
            missing = [package for tool, package in tools.items() if shutil.which(tool) is None]
            if missing:
                raise LabError(f"the lab's dhcp and modem uplinks need {', '.join(missing)}: apt-get install them "
                               "(scripts/install-deps.sh does)")  # fmt: skip
        for i in range(1, topo.isps + 1):
            if topo.mode(i) in DHCP_MODES:
                self._start_dhcp_server(i)
            if i in topo.pd_isps:
                self._start_dhcp6_server(i)
        if topo.dhcp_wans:
            with open(self.dir / "dhcpcd.log", "ab") as log:
                self.popen("gw", dhcp_client_argv(topo), label="dhcpcd", stdout=log, stderr=subprocess.STDOUT)
            for i in range(1, topo.isps + 1):
                if topo.mode(i) in DHCP_MODES:
                    self.wait_lease(f"isp{i}")
                if i in topo.pd_isps:
                    self.wait_delegation(f"isp{i}")

    def _start_dhcp6_server(self, i: int) -> None:
        lease = self._state["leases"].get(f"isp{i}", 0)
        conf = self.dir / f"dhcp6-isp{i}.conf"
        conf.write_text(dhcp6_server_conf(i, lease))
        leases = self.dir / f"dhcp6-isp{i}.leases"
        leases.touch()
        pid = self.dir / f"dhcp6-isp{i}.pid"
        pid.unlink(missing_ok=True)  # dhcpd refuses to start while its pid file names a live process
        argv = dhcp6_server_argv(str(conf), str(leases), str(pid))
        with open(self.dir / f"dhcp6-isp{i}.log", "ab") as log:
            self.popen(f"isp{i}", argv, label=f"dhcp6-isp{i}", stdout=log, stderr=subprocess.STDOUT)

    def delegated(self, isp: str) -> str | None:
        """The /64 the gateway holds now of the ISP's DHCPv6 delegation (on its holder interface): the one
        with the longest preferred lifetime (a changed delegation's old prefix stays until it runs out)."""
        i = self._isp_index(isp)
        out = _run(["ip", "-n", self.ns("gw"), "-j", "-6", "addr", "show", "dev", pd_holder(i), "scope", "global"])
        found = [(a.get("preferred_life_time", 0), f"{a['local']}/{a['prefixlen']}")
                 for info in (json.loads(out) if out.strip() else []) for a in info.get("addr_info", [])
                 if "local" in a]  # fmt: skip
        if not found:
            return None
        return str(ipaddress.IPv6Interface(max(found)[1]).network)

    def wait_delegation(self, isp: str, lease: int | None = None, timeout: float = 20.0) -> str:
        """Wait until the gateway holds the ISP's delegated prefix (of ``lease``, default its current one)."""
        i = self._isp_index(isp)
        self._reload()
        wanted = isp6_prefix(i, self._state["leases"].get(f"isp{i}", 0) if lease is None else lease)
        deadline = time.monotonic() + timeout
        while (held := self.delegated(isp)) != wanted:
            if time.monotonic() > deadline:
                log = (self.dir / "dhcpcd.log").read_text(errors="replace")[-1500:]
                raise LabError(f"isp{i} delegated no {wanted} in {timeout:g}s (holds {held}):\n{log}")
            time.sleep(0.05)
        return wanted

    def _start_dhcp_server(self, i: int) -> None:
        lease = self._state["leases"].get(f"isp{i}", 0)
        argv = dhcp_server_argv(self.topology, i, lease, str(self.dir / f"isp{i}.leases"))
        with open(self.dir / f"dhcp-isp{i}.log", "ab") as log:
            self.popen(f"isp{i}", argv, label=f"dhcp-isp{i}", stdout=log, stderr=subprocess.STDOUT)

    def _stop(self, label: str) -> None:
        """Stop a process this lab recorded (SIGTERM, then SIGKILL), by its pid in its own namespace only."""
        self._reload()
        info = self._state["processes"].get(label)
        if info is None:
            return
        pid = info["pid"]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if pid not in _namespace_pids(self.ns(info["node"])):
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + STOP_GRACE
            while pid in _namespace_pids(self.ns(info["node"])) and time.monotonic() < deadline:
                time.sleep(0.02)
        for child in self._children:
            if child.pid == pid:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=STOP_GRACE)
        self._update("processes", label, None)

    def gw_address(self, isp: str) -> str | None:
        """The gateway's IPv4 address on an ISP's WAN now (from DHCP for a DHCP uplink), None if it has none."""
        out = _run(["ip", "-n", self.ns("gw"), "-j", "-4", "addr", "show", "dev", f"wan{self._isp_index(isp)}"])
        infos = json.loads(out) if out.strip() else []
        return next((a["local"] for info in infos for a in info.get("addr_info", []) if a.get("local")), None)

    def wait_lease(self, isp: str, timeout: float = 20.0, not_from: str | None = None) -> str:
        """Wait until the gateway holds a lease on the ISP's WAN (an address other than ``not_from``, and the
        client's default route through it); returns the address."""
        i = self._isp_index(isp)
        deadline = time.monotonic() + timeout
        while True:
            addr = self.gw_address(isp)
            routes = _run(["ip", "-n", self.ns("gw"), "-4", "route", "show", "default", "dev", f"wan{i}"])
            if addr and addr != not_from and routes.strip():
                return addr
            if time.monotonic() > deadline:
                log = (self.dir / "dhcpcd.log").read_text(errors="replace")[-1500:]
                raise LabError(f"wan{i} got no DHCP lease in {timeout:g}s (address {addr}):\n{log}")
            time.sleep(0.05)

    def lease_change(self, isp: str) -> str:
        """The ISP moves its customer to another subnet and router (100.64.i.0/24 <-> 100.80.i.0/24), as
        an ISP renumbering does: its DHCP server hands out only the new one and refuses the old lease; the
        gateway's client is asked to rebind now (dhcpcd's SIGHUP) instead of at its renewal time.  Returns
        the new address once the gateway holds it."""
        i = self._isp_index(isp)
        if self.topology.mode(i) != "dhcp":
            raise LabError(f"isp{i} is a {self.topology.mode(i)} uplink: a lease change needs a dhcp one")
        self._reload()
        old = self._state["leases"].get(f"isp{i}", 0)
        before = self.gw_address(isp)
        self._stop(f"dhcp-isp{i}")
        if i in self.topology.pd_isps:
            self._stop(f"dhcp6-isp{i}")
        ns = self.ns(f"isp{i}")
        old_addr, new_addr = f"{wan_subnet(i, old)}.1/24", f"{wan_subnet(i, 1 - old)}.1/24"
        _run(["ip", "-n", ns, "-batch", "-"], f"addr del {old_addr} dev {ISP_CUSTOMER_IF}\n"
             f"addr add {new_addr} dev {ISP_CUSTOMER_IF}\n")  # fmt: skip
        self._update("leases", f"isp{i}", 1 - old)
        self._start_dhcp_server(i)
        if i in self.topology.pd_isps:
            self._start_dhcp6_server(i)  # and another delegated prefix
        time.sleep(0.2)  # the servers bind their ports
        self._signal("dhcpcd", signal.SIGHUP)
        address = self.wait_lease(isp, not_from=before)
        if i in self.topology.pd_isps:
            self.wait_delegation(isp)
        return address

    def _signal(self, label: str, sig: int) -> None:
        self._reload()
        info = self._state["processes"].get(label)
        if info is None or info["pid"] not in _namespace_pids(self.ns(info["node"])):
            raise LabError(f"the lab's {label} is not running")
        os.kill(info["pid"], sig)

    def unplug(self, isp: str) -> None:
        """Pull the gateway's WAN interface out (a USB modem unplugged): it is deleted, the ISP's end too."""
        self._single_gateway("unplug")
        i = self._isp_index(isp)
        _run(["ip", "-n", self.ns("gw"), "link", "del", f"wan{i}"])
        self._reload()
        self._state["unplugged"] = sorted({*self._state.get("unplugged", []), f"isp{i}"})
        self._save()

    def replug(self, isp: str) -> None:
        """Create the WAN interface again under its name (a new index; its addresses as its mode gives them:
        static, from DHCP, or the PPP session's); the ISP router's end and routes with it."""
        self._single_gateway("replug")
        i = self._isp_index(isp)
        self._reload()
        gw, router = self.topology.wan_link(i, self._state["leases"].get(f"isp{i}", 0))
        _run(["ip", "-n", self.ns("gw"), "-batch", "-"], "\n".join(gw) + "\n")
        _run(["ip", "-n", self.ns(f"isp{i}"), "-batch", "-"], "\n".join(router) + "\n")
        self._state["unplugged"] = [x for x in self._state.get("unplugged", []) if x != f"isp{i}"]
        self._save()
        if self._state["fail"].get(f"isp{i}"):  # a fail mode applied before goes on applying
            self.fail(isp, self._state["fail"][f"isp{i}"].split(" ")[0])

    def reconnect(self, isp: str) -> str:
        """A PPP session ends and a new one starts: the interface is deleted and created again under its name,
        with the session's other address (100.64.i.2 <-> 100.64.i.6) and pppd's `default dev`.  Returns the
        new address."""
        i = self._isp_index(isp)
        if self.topology.mode(i) != "p2p":
            raise LabError(f"isp{i} is a {self.topology.mode(i)} uplink: reconnect is for p2p ones (or unplug/replug)")
        self._reload()
        session = 1 - self._state["leases"].get(f"isp{i}", 0)
        self.unplug(isp)
        self._update("leases", f"isp{i}", session)
        self.replug(isp)
        return p2p_local(i, session)

    def _single_gateway(self, what: str) -> None:
        if self.topology.ha:
            raise LabError(f"{what} is for a lab with one gateway: an HA pair shares its WANs (`lab kill` a gateway)")

    # --- an HA pair's gateway dying and coming back ------------------------------------------------

    def kill(self, node: str) -> None:
        """An HA gateway dies (gw1 or gw2), all at once as far as anyone outside can tell: every process in its
        namespace is stopped (SIGSTOP: none may act on what follows, as keepalived would with a last priority-0
        advert when its links go down), every link set down (nothing leaves it any more; its peers see
        NO-CARRIER), then every process SIGKILLed. Kernel state (nft, conntrack) stays. Idempotent."""
        self._require_ha_gateway(node)
        self._update("killed", node, time.time())
        ns = self.ns(node)
        for pid in _namespace_pids(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        _run(["ip", "-n", ns, "-batch", "-"], "".join(f"link set {i} down\n" for i in self.topology.interfaces(node)))
        _stop_namespace_processes([ns], (signal.SIGKILL,))
        for child in self._children:
            child.poll()  # reap the ones this process started there
        self._wait_links_settled(node)  # until its peers' ends show NO-CARRIER too

    def revive(self, node: str) -> None:
        """A killed HA gateway comes back as built: its addresses exactly as `lab up` set them (a VIP it held
        is gone, as after a restart, so the pair never holds one twice), links up, its routes again (the
        kernel dropped them with the links). No process is started: the caller restarts what it needs."""
        self._require_ha_gateway(node)
        topo = self.topology
        self._reload()
        if node not in self._state.get("killed", {}):
            raise LabError(f"{node} is alive: revive is for a gateway `kill` took down")
        interfaces = topo.interfaces(node)
        lines = [f"addr flush dev {ifname}" for ifname in interfaces]
        lines += [f"addr add {a} dev {ifname}" for ifname, addrs in topo.addresses(node).items() for a in addrs]
        lines += [f"link set {ifname} up" for ifname in interfaces]
        lines += [f"route replace {route}" for route in topo.routes(node)]
        _run(["ip", "-n", self.ns(node), "-batch", "-"], "\n".join(lines) + "\n")
        self._update("killed", node, None)
        self._wait_links_settled(node)

    def _wait_links_settled(self, node: str, timeout: float = 10.0) -> None:
        """Wait until the kernel has marked both ends of every link of the node operationally up if they have
        carrier: it does so a moment later (linkwatch, up to a second), and a bridge forwards through a port
        only then. An end without carrier (an ISP failed with `link`) is settled too."""
        ends = {end for ln in self.topology.links if node in (ln.a, ln.b) for end in ((ln.a, ln.a_if), (ln.b, ln.b_if))}
        deadline = time.monotonic() + timeout
        while True:
            up = {(n, i["ifname"]): ("LOWER_UP" in i["flags"], i["operstate"] == "UP") for n in {n for n, _ in ends}
                  for i in json.loads(_run(["ip", "-n", self.ns(n), "-j", "link", "show"]))}  # fmt: skip
            pending = sorted(f"{n}:{ifname}" for (n, ifname), (carrier, oper) in up.items() if (n, ifname) in ends
                             and carrier != oper)  # fmt: skip
            if not pending:
                return
            if time.monotonic() > deadline:
                raise LabError(f"links of {node} not up after {timeout:g}s: {', '.join(pending)}")
            time.sleep(0.05)

    def killed(self) -> list[str]:
        """The HA gateways `kill` took down and no `revive` brought back, as recorded by any process."""
        self._reload()
        return sorted(self._state.get("killed", {}))

    def _require_ha_gateway(self, node: str) -> None:
        try:
            self.topology.ha_index(node)
        except TopologyError as exc:
            raise LabError(str(exc)) from None

    def start_ftp(self) -> Path:
        """Start the FTP server in inet on FTP_ADDR:FTP_PORT (anonymous, read-only, serving
        `wanlb.lab.servers.FTP_FILE`, passive ports FTP_PASSIVE_PORTS) and wait until it listens. Returns
        its transfer log: one JSON line per transfer (see `wanlb.lab.servers`). Needs pyftpdlib (the `test`
        extra); `lab up` does not start it."""
        transfers = self.dir / "ftp-transfers.jsonl"
        transfers.touch()
        self._start_and_wait(
            {
                "ftp": [
                    "ftp",
                    f"{FTP_ADDR}:{FTP_PORT}",
                    "--root", str(self.dir / "ftp"),
                    "--passive-ports", "{}-{}".format(*FTP_PASSIVE_PORTS),
                    "--transfer-log", str(transfers),
                ]
            }
        )  # fmt: skip
        return transfers

    # --- names and paths ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.topology.name

    @property
    def dir(self) -> Path:
        """State directory: lab.json, wanlb.yaml, server logs; the daemon's socket goes here too."""
        return RUN_DIR / self.name

    @property
    def config_path(self) -> Path:
        """The generated wanlb config for this lab's gateway (an HA lab's gw1)."""
        return self.gateway_config(self.topology.gateways[0])

    @property
    def socket_path(self) -> Path:
        """The control socket path written into that config."""
        return self.gateway_socket(self.topology.gateways[0])

    def gateway_config(self, node: str) -> Path:
        """A gateway node's generated config: wanlb.yaml for `gw`, wanlb-gw1.yaml and wanlb-gw2.yaml for an
        HA pair (each daemon has its own socket and so its own runtime state file next to it)."""
        return self.dir / ("wanlb.yaml" if node == "gw" else f"wanlb-{node}.yaml")

    def gateway_socket(self, node: str) -> Path:
        """The control socket written into a gateway node's config."""
        return self.dir / ("wanlb.sock" if node == "gw" else f"wanlb-{node}.sock")

    @property
    def isps(self) -> list[str]:
        return self.topology.isp_names

    @property
    def clients(self) -> list[str]:
        return self.topology.client_names

    @property
    def nodes(self) -> list[str]:
        return self.topology.nodes

    def ns(self, node: str) -> str:
        """Full namespace name of a node (`gw`, `c1`, `isp2`, `inet`)."""
        try:
            return self.topology.ns(node)
        except TopologyError as exc:
            raise LabError(str(exc)) from None

    def _isp_index(self, isp: str) -> int:
        try:
            return self.topology.isp_index(isp)
        except TopologyError as exc:
            raise LabError(str(exc)) from None

    def _save(self) -> None:
        tmp = self.dir / f"lab.json.{os.getpid()}"
        tmp.write_text(json.dumps(self._state, indent=2) + "\n")
        tmp.replace(self.dir / "lab.json")

    def _reload(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._state = json.loads((self.dir / "lab.json").read_text())

    def _update(self, section: str, key: str, value: Any) -> None:
        """Set (or with None, drop) one entry of lab.json, re-reading it first: another process (`wanlb
        lab fail` while a test or the demo holds this Lab) may have changed it meanwhile."""
        self._reload()
        if value is None:
            self._state[section].pop(key, None)
        else:
            self._state[section][key] = value
        self._save()

    # --- running things ----------------------------------------------------------------------------

    def run(self, node: str, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """`subprocess.run(argv, **kwargs)` inside a node's namespace (by default with an environment that
        imports this wanlb package, so `python -m wanlb...` and `wanlb` run the code under test)."""
        kwargs.setdefault("env", module_env())
        return subprocess.run(["ip", "netns", "exec", self.ns(node), *argv], **kwargs)

    def popen(self, node: str, argv: Sequence[str], label: str | None = None, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a background process inside a node's namespace, recorded in lab.json under `label` so
        `status` shows it. `down` stops it whatever happens, as it stops everything in the namespaces.
        The default environment is the one `run` uses."""
        kwargs.setdefault("env", module_env())
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(node), *argv], start_new_session=True, **kwargs)
        self._children.append(proc)
        label = label or f"{Path(argv[0]).name}-{proc.pid}"
        self._update("processes", label, {"node": node, "pid": proc.pid, "argv": list(argv)})
        return proc

    def ping(self, node: str, addr: str, count: int = 1, timeout: float = 1.0, source: str | None = None) -> bool:
        """Whether `addr` answers ICMP echo from `node` (any of `count` tries)."""
        argv = python_module("wanlb.lab.ping", addr, "--count", str(count), "--timeout", str(timeout))
        if source:
            argv += ["--source", source]
        return self.run(node, argv, capture_output=True, check=False).returncode == 0

    # --- failures ----------------------------------------------------------------------------------

    def fail(self, isp: str, mode: str | FailMode = "link", family: int | None = None) -> None:
        """Break ISP `isp` (`isp2` or `2`) in the given mode (`link`, `blackhole`, `loss:PERCENT`), replacing
        any earlier mode; `family` 4 or 6 breaks only that address family (not with `link`). Idempotent."""
        i = self._isp_index(isp)
        if isinstance(mode, str):
            try:
                mode = FailMode.parse(mode)
            except TopologyError as exc:
                raise LabError(str(exc)) from None
        if family is not None and (mode.kind == "link" or (family == 6 and not self.topology.carries_ipv6(i))):
            raise LabError("--family needs blackhole or loss, and 6 an ISP with IPv6 (a dual-stack lab, not a modem)")
        self._apply(i, mode, family)
        self._update("fail", f"isp{i}", str(mode) + (f" (IPv{family} only)" if family else ""))

    def heal(self, isp: str) -> None:
        """Undo any fail mode on the ISP. Idempotent."""
        i = self._isp_index(isp)
        self._apply(i, None)
        self._update("fail", f"isp{i}", None)

    def _apply(self, i: int, mode: FailMode | None, family: int | None = None) -> None:
        ns = self.ns(f"isp{i}")
        link = "down" if mode is not None and mode.kind == "link" else "up"
        _run(["ip", "netns", "exec", ns, "nft", "-f", "-"], fail_nft(mode, self.topology.carries_ipv6(i), family))
        if f"isp{i}" in self._state.get("unplugged", []):
            return  # no link to set: replug applies the mode again
        sides = self.topology.customer_side(i)  # (and an HA lab's bridge ports, so both gateways see it)
        _run(["ip", "-n", ns, "-batch", "-"], "".join(f"link set {ifname} {link}\n" for ifname in sides))
        if link == "up" and self.topology.carries_ipv6(i):  # IPv6 routes through cust0 went with it when it was down
            routes = self.topology.routes6(f"isp{i}")
            _run(["ip", "-n", ns, "-batch", "-"], "".join(f"route replace {r}\n" for r in routes))

    def fail_modes(self) -> dict[str, str]:
        """Current fail mode per ISP (`ok` when healthy), as recorded by any process."""
        self._reload()
        return {isp: self._state["fail"].get(isp, "ok") for isp in self.isps}

    def counter(self, isp: str, counter: str = SPOOF_COUNTER) -> int:
        """Packets counted by a named counter on an ISP router: `spoofed` (BCP38 drops), `lan_leak` (drops of
        un-NATed packets with a LAN source, before the BCP38 rule) or `failed` (drops by the blackhole/loss
        fail modes)."""
        ns = self.ns(f"isp{self._isp_index(isp)}")
        out = _run(["ip", "netns", "exec", ns, "nft", "-j", "list", "counter", "ip", NFT_TABLE, counter])
        for obj in json.loads(out)["nftables"]:
            if "counter" in obj:
                return int(obj["counter"]["packets"])
        raise LabError(f"counter {counter!r} not found on {isp}")

    # --- traffic -----------------------------------------------------------------------------------

    def traffic_report(
        self,
        connections: int = 100,
        parallel: int = 32,
        timeout: float = 2.0,
        nodes: Sequence[str] | None = None,
        target: str | None = None,
    ) -> TrafficReport:
        """Open `connections` short HTTP connections spread over `nodes` (default: all clients; `gw` tests
        the gateway's own traffic), `parallel` in flight in total; count which ISP each left through, as
        the server saw it. `target` (`ADDR:PORT`, `[IPV6]:PORT`) instead of the lab's HTTP server."""
        if connections < 1 or parallel < 1:
            raise LabError("--connections and --parallel must be at least 1")
        nodes = list(nodes or self.clients)
        clients = nodes[: min(len(nodes), connections)]
        share, extra = divmod(connections, len(clients))
        per_client_parallel = max(1, parallel // len(clients))
        workers = []
        start = time.monotonic()
        for idx, client in enumerate(clients):
            argv = python_module(
                "wanlb.lab.traffic", "http",
                "--connections", str(share + (idx < extra)),
                "--parallel", str(per_client_parallel),
                "--timeout", str(timeout),
                *(["--target", target] if target else []),
            )  # fmt: skip
            workers.append(self._spawn(client, argv))
        sources: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        failed = 0
        for worker in workers:
            out, err = worker.communicate()
            if worker.returncode != 0:
                raise LabError(f"traffic generator failed: {err.strip()}")
            result = json.loads(out)
            sources.update(result["sources"])
            errors.update(result["errors"])
            failed += result["failed"]
        counts = dict.fromkeys(self.isps, 0) | {"other": 0, "failed": failed}
        for src, n in sources.items():
            isp = isp_for_source(src)
            counts[isp if isp is not None and isp in self.isps else "other"] += n
        return TrafficReport(counts, dict(errors), round(time.monotonic() - start, 3))

    def traffic(
        self,
        connections: int = 100,
        parallel: int = 32,
        timeout: float = 2.0,
        nodes: Sequence[str] | None = None,
        target: str | None = None,
    ) -> dict[str, int]:
        """Like `traffic_report`, returning only the counts: `{"isp1": n, ..., "other": 0, "failed": 0}`."""
        return self.traffic_report(connections, parallel, timeout, nodes, target).counts

    def _spawn(self, node: str, argv: Sequence[str]) -> subprocess.Popen[str]:
        """A short-lived helper in a namespace with captured output; not recorded in lab.json."""
        return subprocess.Popen(
            ["ip", "netns", "exec", self.ns(node), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=module_env(),
        )

    # --- status ------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What is there right now: nodes and their addresses, link states, fail modes, processes."""
        self._reload()
        existing = set(lab_namespaces(self.topology.prefix))
        interfaces: dict[str, dict[str, dict[str, Any]]] = {}
        for node in self.nodes:
            ns = self.ns(node)
            if ns in existing:
                out = _run(["ip", "-n", ns, "-j", "addr", "show"])
                interfaces[node] = {i["ifname"]: i for i in json.loads(out)}
            else:
                interfaces[node] = {}

        def state(node: str, ifname: str) -> str:
            info = interfaces[node].get(ifname)
            if info is None:
                return "MISSING"
            return "NO-CARRIER" if "NO-CARRIER" in info.get("flags", []) else str(info.get("operstate"))

        return {
            "name": self.name,
            "config": str(self.config_path),
            "socket": str(self.socket_path),
            "nodes": [
                {
                    "node": node,
                    "namespace": self.ns(node),
                    "exists": self.ns(node) in existing,
                    "killed": node in self._state.get("killed", {}),
                    "addresses": sorted(
                        f"{a['local']}/{a['prefixlen']}@{ifname}"
                        for ifname, info in interfaces[node].items()
                        for a in info.get("addr_info", [])
                        if a.get("family") == "inet" and a.get("local") != "127.0.0.1"
                    ),
                }
                for node in self.nodes
            ],
            "links": [
                {
                    "a": f"{ln.a}:{ln.a_if}",
                    "b": f"{ln.b}:{ln.b_if}",
                    "a_state": state(ln.a, ln.a_if),
                    "b_state": state(ln.b, ln.b_if),
                }
                for ln in self.topology.links
            ],
            "isps": [
                {"name": isp, "mode": mode, **self._counters(isp, existing)} for isp, mode in self.fail_modes().items()
            ],
            "processes": [
                {"label": label, **info, "running": info["pid"] in _namespace_pids(self.ns(info["node"]))}
                for label, info in self._state["processes"].items()
            ],
        }

    def _counters(self, isp: str, existing: set[str]) -> dict[str, int | None]:
        if self.ns(isp) not in existing:
            return dict.fromkeys(COUNTERS)
        return {name: self.counter(isp, name) for name in COUNTERS}
