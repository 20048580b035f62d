"""Destination domains against a real DNS server: dnsmasq in a network namespace of the test's own, serving a
hosts file the test rewrites (SIGHUP re-reads it).  The resolver side (tests/integration/domains_driver.py)
runs in the same namespace, so every query goes to that namespace's loopback.

Shown: a name resolves to its addresses with the server's TTL (given servers, and the system's resolv.conf);
after the record changes and the refresh is due the addresses change; with the server gone the last good
addresses stay, with the error in status, and come back fresh when it returns; NXDOMAIN is a clear error.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("require_root")]

SRC = str(Path(__file__).resolve().parents[2] / "src")
DRIVER = str(Path(__file__).resolve().with_name("domains_driver.py"))
DEADLINE = 30.0  # seconds any one wait may take: generous, never a measured bound
NAME = "video.wanlb.test"
FAST = {"servers": ["127.0.0.1"], "timeout": 0.5, "min_ttl": 1, "retry": 0.5}


class Watch:
    """A DomainWatcher running in the namespace: its JSON lines, read by a thread, folded into a state."""

    def __init__(self, proc: subprocess.Popen[str], stderr: Path) -> None:
        self.proc = proc
        self.stderr = stderr
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.changes: list[dict[str, int]] = []  # every hand-on, in order
        self.status: dict[str, Any] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, what: str, condition: Callable[[Watch], bool]) -> None:
        """Read lines until ``condition(self)`` holds; fail after DEADLINE or if the watcher stops."""
        end = time.monotonic() + DEADLINE
        while not condition(self):
            try:
                line = self.lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {what} within {DEADLINE:g}s; last status {self.status}, hand-ons {self.changes[-3:]}")
            if line is None:
                pytest.fail(f"the watcher stopped before {what}: {self.stderr.read_text()}")
            record = json.loads(line)
            if "change" in record:
                self.changes.append(record["change"])
            else:
                self.status = record["status"]


class DnsNamespace:
    """A network namespace with loopback up, whose resolv.conf points at its own 127.0.0.1, and dnsmasq in it."""

    def __init__(self, tmp: Path) -> None:
        self.name = f"wldns-{os.getpid()}-{secrets.token_hex(3)}"
        self.hosts = tmp / "hosts"
        self.log = tmp / "dnsmasq.log"
        self.etc = Path("/etc/netns") / self.name  # `ip netns exec` mounts its resolv.conf over /etc/resolv.conf
        self.dnsmasq: subprocess.Popen[bytes] | None = None
        self.processes: list[subprocess.Popen[Any]] = []

    def up(self) -> None:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.etc.mkdir(parents=True)
        (self.etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)

    def down(self) -> None:
        for proc in self.processes:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)
        shutil.rmtree(self.etc, ignore_errors=True)
        with contextlib.suppress(OSError):  # /etc/netns itself, if no other namespace uses it
            self.etc.parent.rmdir()

    def _exec(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def _loaded(self) -> int:
        """How many times dnsmasq has read the hosts file (it logs each read)."""
        return self.log.read_text().count(f"read {self.hosts}") if self.log.exists() else 0

    def _until(self, what: str, condition: Callable[[], bool]) -> None:
        end = time.monotonic() + DEADLINE
        while not condition():
            if self.dnsmasq is not None and self.dnsmasq.poll() is not None:
                pytest.fail(f"dnsmasq exited: {self.log.read_text()}")
            if time.monotonic() > end:
                pytest.fail(f"dnsmasq: no {what} within {DEADLINE:g}s: {self.log.read_text()}")
            time.sleep(0.02)

    def start_dnsmasq(self, hosts: str, ttl: int) -> None:
        """dnsmasq on the namespace's 127.0.0.1:53, answering for wanlb.test from ``hosts`` only (NXDOMAIN
        for any other name there), with ``ttl``; in the foreground, as our child."""
        self.hosts.write_text(hosts)
        before = self._loaded()
        log = self.log.open("a")
        self.dnsmasq = subprocess.Popen(
            self._exec(
                "dnsmasq",
                "--no-daemon",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                f"--addn-hosts={self.hosts}",
                f"--local-ttl={ttl}",
                "--local=/wanlb.test/",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--port=53",
                "--pid-file=",
                "--log-facility=-",
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()  # the child has its own
        self.processes.append(self.dnsmasq)
        self._until("start", lambda: self._loaded() > before)

    def set_hosts(self, hosts: str) -> None:
        """Rewrite the records and have dnsmasq re-read them (SIGHUP also empties its cache)."""
        assert self.dnsmasq is not None
        before = self._loaded()
        spare = self.hosts.with_suffix(".new")
        spare.write_text(hosts)
        spare.replace(self.hosts)
        self.dnsmasq.send_signal(signal.SIGHUP)
        self._until("re-read of the hosts file", lambda: self._loaded() > before)

    def stop_dnsmasq(self) -> None:
        assert self.dnsmasq is not None
        self.dnsmasq.kill()
        self.dnsmasq.wait()

    def _driver(self, mode: str, payload: dict[str, Any]) -> list[str]:
        return self._exec("env", f"PYTHONPATH={SRC}", sys.executable, DRIVER, mode, json.dumps(payload))

    def resolve(self, name: str, **settings: Any) -> dict[str, Any]:
        done = subprocess.run(
            self._driver("resolve", {"name": name, "settings": settings}),
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def watch(self, names: list[str], **settings: Any) -> Watch:
        stderr = self.log.with_name(f"watch{len(self.processes)}.log")
        with stderr.open("w") as err:
            proc = subprocess.Popen(
                self._driver("watch", {"names": names, "settings": settings}),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.processes.append(proc)
        return Watch(proc, stderr)


@pytest.fixture
def dns_ns(tmp_path: Path) -> Iterator[DnsNamespace]:
    if shutil.which("dnsmasq") is None:
        pytest.skip("needs dnsmasq (apt-get install dnsmasq-base)")
    ns = DnsNamespace(tmp_path)
    try:
        ns.up()
        yield ns
    finally:
        ns.down()


def test_a_name_resolves_to_its_addresses_with_the_servers_ttl(dns_ns: DnsNamespace) -> None:
    dns_ns.start_dnsmasq(f"192.0.2.11 {NAME}\n192.0.2.10 {NAME}\n198.51.100.1 other.wanlb.test\n", ttl=7)
    expected = {"addresses": ["192.0.2.10", "192.0.2.11"], "ttl": 7}
    assert dns_ns.resolve(NAME, servers=["127.0.0.1"], timeout=2.0) == expected
    assert dns_ns.resolve(NAME.upper() + ".", timeout=2.0) == expected  # the system's resolv.conf (the namespace's)


def test_addresses_follow_a_changed_record(dns_ns: DnsNamespace) -> None:
    dns_ns.start_dnsmasq(f"192.0.2.10 {NAME}\n192.0.2.11 {NAME}\n", ttl=1)
    watch = dns_ns.watch([NAME], **FAST)
    watch.wait_for("first answer", lambda w: bool(w.changes) and w.status[NAME]["state"] == "ok")
    assert set(watch.changes[0]) == {"192.0.2.10", "192.0.2.11"}
    assert watch.status[NAME]["ttl"] == 1
    assert all(timeout > 1 for timeout in watch.changes[0].values())  # the TTL plus a grace

    dns_ns.set_hosts(f"192.0.2.20 {NAME}\n")
    watch.wait_for("new address", lambda w: set(w.changes[-1]) == {"192.0.2.20"})
    watch.wait_for("status with the new address", lambda w: w.status[NAME]["addresses"] == ["192.0.2.20"])


def test_a_failing_server_keeps_the_last_good_addresses(dns_ns: DnsNamespace) -> None:
    dns_ns.start_dnsmasq(f"192.0.2.10 {NAME}\n", ttl=1)
    watch = dns_ns.watch([NAME, "missing.wanlb.test"], **FAST)
    watch.wait_for("first answer", lambda w: bool(w.changes) and w.status.get(NAME, {}).get("state") == "ok")
    assert watch.status["missing.wanlb.test"] == {
        "state": "failed",
        "addresses": [],
        "ttl": None,
        "error": "missing.wanlb.test: no such domain (NXDOMAIN)",
    }

    dns_ns.stop_dnsmasq()
    watch.wait_for("failure", lambda w: w.status[NAME]["state"] == "stale")
    assert watch.status[NAME]["addresses"] == ["192.0.2.10"]
    assert watch.status[NAME]["error"] == f"{NAME}: no answer within 0.5s: 127.0.0.1:53 did not answer"
    # Failing retries keep handing the last good address on, its timeout extended.
    handed = len(watch.changes)
    watch.wait_for("extended timeout", lambda w: len(w.changes) > handed)
    assert set(watch.changes[-1]) == {"192.0.2.10"}

    dns_ns.start_dnsmasq(f"192.0.2.30 {NAME}\n", ttl=1)
    watch.wait_for("recovery", lambda w: w.status[NAME]["state"] == "ok" and set(w.changes[-1]) == {"192.0.2.30"})


def test_nxdomain_is_a_clear_error(dns_ns: DnsNamespace) -> None:
    dns_ns.start_dnsmasq(f"192.0.2.10 {NAME}\n", ttl=60)
    assert dns_ns.resolve("missing.wanlb.test", **FAST) == {"error": "missing.wanlb.test: no such domain (NXDOMAIN)"}
