"""Helpers for the acceptance tests of the core redesign (stable ISP marks, level-triggered reconcile):
long-lived streams, the gateway's conntrack table, kernel snapshots and polling.

Imported by the test modules next to it (pytest puts this directory on sys.path); not a test module.
"""

from __future__ import annotations

import difflib
import json
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from wanlb.control import ControlError, request
from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab, python_module
from wanlb.lab.topology import STREAM_PORT, isp_for_source

RESYNC_WAIT = 8.0
"""Seconds a test waits for something the daemon must do "within one resync" (it resyncs every 5 s)."""

STALL = 3.0
"""A stream that gets no data for this long fails by itself (`traffic stream --stall`)."""


def poll(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Call ``check`` until it returns true or ``timeout`` seconds have passed; whether it did."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


# --- long-lived streams ---------------------------------------------------------------------------


@dataclass
class Stream:
    """One `traffic stream` client process and, once stopped, its JSON result."""

    number: int
    client: str
    proc: subprocess.Popen[str]
    result: dict[str, Any] | None = None

    @property
    def isp(self) -> str | None:
        """The lab ISP the stream left through (from the source address the server saw)."""
        src = (self.result or {}).get("src")
        return isp_for_source(src) if src else None

    @property
    def ok(self) -> bool:
        return bool(self.result and self.result.get("ok"))

    def describe(self) -> str:
        r = self.result or {}
        return (
            f"stream #{self.number} from {self.client} via {self.isp or '?'} (src {r.get('src')}): "
            f"ok={r.get('ok')}, {r.get('counters', 0)} counters, error={r.get('error')!r}"
        )


class Streams:
    """Long-lived verified connections from the LAN clients; whatever is still running is killed by
    ``kill`` (use it in a fixture's teardown)."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.all: list[Stream] = []

    def start(self, n: int, clients: Sequence[str] | None = None, stall: float = STALL) -> list[Stream]:
        """Start ``n`` streams spread round-robin over ``clients`` (default: all of the lab's)."""
        clients = list(clients or self.lab.clients)
        argv = python_module("wanlb.lab.traffic", "stream", "--stall", str(stall))
        started = []
        for k in range(n):
            client = clients[k % len(clients)]
            proc = self.lab.popen(client, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            started.append(Stream(len(self.all) + k, client, proc))
        self.all += started
        return started

    def running(self) -> list[Stream]:
        return [s for s in self.all if s.result is None and s.proc.poll() is None]

    def stop(self, streams: Sequence[Stream] | None = None) -> list[Stream]:
        """SIGTERM the streams (default: all not yet stopped) and collect their results."""
        streams = [s for s in (streams if streams is not None else self.all) if s.result is None]
        for s in streams:
            if s.proc.poll() is None:
                s.proc.terminate()
        for s in streams:
            out, err = s.proc.communicate(timeout=30)
            try:
                s.result = json.loads(out)
            except json.JSONDecodeError:
                s.result = {"src": None, "counters": 0, "ok": False, "error": f"no result: {err.strip()[-300:]}"}
        return streams

    def kill(self) -> None:
        for s in self.all:
            if s.proc.poll() is None:
                s.proc.kill()
            s.proc.wait()


# --- the gateway's conntrack table ----------------------------------------------------------------


@dataclass(frozen=True)
class CtEntry:
    """One line of `conntrack -L` in the gateway, reduced to what the tests look at."""

    state: str
    src: str  # original source (a LAN client)
    sport: int
    nat_src: str  # reply destination: the WAN address the connection was masqueraded to
    mark: int
    line: str

    @property
    def isp(self) -> str | None:
        return isp_for_source(self.nat_src)


def conntrack(gw: LabGateway, *args: str) -> list[CtEntry]:
    """`conntrack -L ARGS` in the gateway namespace, parsed."""
    out = gw.run("conntrack", "-L", *args)
    entries = []
    for line in out.splitlines():
        src = re.findall(r"\bsrc=(\S+)", line)
        dst = re.findall(r"\bdst=(\S+)", line)
        sport = re.search(r"\bsport=(\d+)", line)
        mark = re.search(r"\bmark=(\d+)", line)
        fields = line.split()
        state = fields[3] if fields and fields[0] == "tcp" and len(fields) > 3 else ""
        entries.append(
            CtEntry(
                state=state,
                src=src[0] if src else "",
                sport=int(sport.group(1)) if sport else 0,
                nat_src=dst[1] if len(dst) > 1 else "",
                mark=int(mark.group(1)) if mark else 0,
                line=line,
            )
        )
    return entries


def stream_entries(gw: LabGateway) -> list[CtEntry]:
    """Established connections to the lab's stream server."""
    return [e for e in conntrack(gw, "-p", "tcp", "--dport", str(STREAM_PORT)) if e.state == "ESTABLISHED"]


def wait_streams_established(gw: LabGateway, n: int, timeout: float = 15.0) -> dict[str, int]:
    """Wait until ``n`` stream connections are established; return how many each lab ISP carries."""
    entries: list[CtEntry] = []

    def enough() -> bool:
        nonlocal entries
        entries = stream_entries(gw)
        return len(entries) >= n

    if not poll(enough, timeout):
        lines = "\n".join(e.line for e in entries)
        raise AssertionError(f"only {len(entries)} of {n} streams got established:\n{lines}")
    return dict(Counter(e.isp or f"other({e.nat_src})" for e in entries))


def marked(gw: LabGateway, mark: int, mask: int = 0xFF00) -> list[str]:
    """`conntrack -L -m MARK/MASK` lines: the connections that belong to one ISP."""
    return [e.line for e in conntrack(gw, "-m", f"{mark:#x}/{mask:#x}")]


# --- kernel state ---------------------------------------------------------------------------------


def rules(gw: LabGateway) -> list[dict[str, Any]]:
    """`ip -j rule` in the gateway."""
    return list(json.loads(gw.run("ip", "-j", "-4", "rule", "show")))


def wanlb_rules(gw: LabGateway) -> list[dict[str, Any]]:
    """The ip rules that carry wanlb's protocol (119)."""
    return [r for r in rules(gw) if str(r.get("protocol")) == "119"]


def wanlb_routes(gw: LabGateway) -> list[dict[str, Any]]:
    """Every IPv4 route that carries wanlb's protocol (119), in any table."""
    return list(json.loads(gw.run("ip", "-j", "-4", "route", "show", "table", "all", "proto", "119")))


def normalize_nft(text: str) -> str:
    """nft text without what traffic changes by itself: counter values and dynamic set elements."""
    text = re.sub(r"packets \d+ bytes \d+", "packets - bytes -", text)
    return re.sub(r"\n\s*elements = \{[^}]*\}", "", text)


def diff(before: str, after: str, a: str = "before", b: str = "after") -> str:
    return "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True), a, b)) or "(no difference)"


class StatusPoller(threading.Thread):
    """Asks `status` on a fresh connection every `every` seconds until stopped; records each answer's
    latency, and as a failure any error or an answer without ISPs."""

    def __init__(self, socket_path: str, every: float = 0.05, timeout: float = 20.0):
        super().__init__(daemon=True)
        self.socket_path, self.every, self.timeout = socket_path, every, timeout
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            start = time.monotonic()
            try:
                reply = request(self.socket_path, {"cmd": "status"}, timeout=self.timeout)
                if not reply.get("isps"):
                    self.failures.append(f"status without ISPs: {reply}")
            except ControlError as exc:
                self.failures.append(f"{time.monotonic() - start:.3f} s: {exc}")
            else:
                self.latencies.append(time.monotonic() - start)
            self.halt.wait(self.every)

    def stop(self) -> None:
        self.halt.set()
        if self.is_alive():
            self.join(timeout=2 * self.timeout)
