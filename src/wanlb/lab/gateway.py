"""A wanlb daemon running in a lab's gateway namespace, driven the way an operator would drive it.

Shared by the integration tests, the failover benchmark and anyone scripting the lab: it edits the
lab's generated config, starts ``wanlb run`` (from this checkout) with its log in a file next to the
config, talks to it over the control socket and waits for states.
"""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from wanlb.control import request, socket_in_use
from wanlb.lab.lab import Lab, LabError, module_env
from wanlb.view import Status, from_json, to_json

WANLB = [sys.executable, "-m", "wanlb.cli"]


class LabGateway:
    def __init__(self, lab: Lab, node: str = "gw"):
        """The daemon of gateway ``node``: ``gw``, or an HA lab's ``gw1``/``gw2`` (the default names the first)."""
        self.lab = lab
        self.node = node if node in lab.topology.gateways else lab.topology.gateways[0]
        self.config = lab.gateway_config(self.node)
        self.socket = str(lab.gateway_socket(self.node))
        self.log = self.config.with_name("wanlb.log" if self.node == "gw" else f"wanlb-{self.node}.log")
        self.base: dict[str, Any] = yaml.safe_load(lab.topology.config_yaml(self.socket, self.node))
        self.proc: subprocess.Popen[Any] | None = None

    def write(self, edit: Callable[[dict[str, Any]], None]) -> None:
        """Write the lab's config as ``lab up`` generated it, changed by ``edit`` (which mutates the parsed YAML)."""
        data = copy.deepcopy(self.base)
        edit(data)
        self.config.write_text(yaml.safe_dump(data, sort_keys=False))

    def start(self, timeout: float = 15.0, env: Mapping[str, str] | None = None, prefix: Sequence[str] = ()) -> None:
        """Start ``wanlb run`` in the gateway namespace; ``env`` is merged over the lab's module environment
        (e.g. a ``PATH`` with a shim directory first). ``prefix`` goes before the command and must exec it
        in place (e.g. ``["prlimit", "--nofile=1024:4096"]``), so ``proc`` stays the daemon itself."""
        with self.log.open("ab") as log:
            self.proc = self.lab.popen(
                self.node,
                [*prefix, *WANLB, "run", "-c", str(self.config)],
                label="wanlb",
                stderr=log,
                env=module_env() | dict(env or {}),
            )
        deadline = time.monotonic() + timeout
        while not socket_in_use(self.socket):
            if self.proc.poll() is not None:
                raise LabError(f"wanlb exited with {self.proc.returncode}:\n{self.log_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise LabError("wanlb did not open its control socket in time")
            time.sleep(0.05)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        return request(self.socket, {"cmd": cmd, **fields})

    def status(self) -> dict[str, Any]:
        """The daemon's status answer as it arrives (the wire format)."""
        return self.request("status")

    def view(self) -> Status:
        """The status answer as the read model."""
        return from_json(Status, self.status())

    def reload(self) -> dict[str, Any]:
        return self.request("reload")

    def isp_status(self) -> dict[str, str]:
        return {isp.name: isp.status for isp in self.view().isps}

    def wait_for(self, want: dict[str, str], timeout: float = 10.0) -> dict[str, Any]:
        """Poll status until every named ISP has the wanted status; returns that status reply."""
        deadline = time.monotonic() + timeout
        while True:
            reply = self.status()
            seen = {isp.name: isp.status for isp in from_json(Status, reply).isps}
            if all(seen.get(name) == status for name, status in want.items()):
                return reply
            if time.monotonic() > deadline:
                raise LabError(f"wanted {want}, still {seen} after {timeout}s")
            time.sleep(0.05)

    def wait_event(
        self, isp: str, event: str, timeout: float = 10.0, family: str | None = None, after: int = 0
    ) -> dict[str, Any]:
        """Poll until the daemon has recorded (finished handling) an ``event`` of ``isp`` (of that address
        ``family``, "4", "6" or "" for both, if given; among the events after the first ``after``); returns it."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.view().events[after:] if e.isp == isp and e.event == event
                     and family in (None, e.family)]  # fmt: skip
            if found:
                return to_json(found[-1])  # type: ignore[no-any-return]
            if time.monotonic() > deadline:
                raise LabError(f"no {event} event for {isp} after {timeout}s")
            time.sleep(0.05)

    def run(self, *argv: str, stdin: str | None = None) -> str:
        """Run a command in the gateway namespace; its stdout, or LabError carrying its stderr."""
        proc = self.lab.run(self.node, list(argv), input=stdin, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise LabError(f"`{' '.join(argv)}` in {self.node} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return str(proc.stdout)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``wanlb ARGS -c CONFIG`` in the gateway namespace, as an operator would type it there."""
        return self.lab.run(self.node, [*WANLB, *args, "-c", str(self.config)], capture_output=True, text=True)

    def nft_counter(self, name: str) -> dict[str, int]:
        """A named counter of ``table inet wanlb``: ``{"packets": n, "bytes": n}``."""
        try:
            out = self.run("nft", "-j", "list", "counter", "inet", "wanlb", name)
        except LabError as exc:
            raise LabError(f"counter {name!r} not found in table inet wanlb: {exc}") from None
        for obj in json.loads(out)["nftables"]:
            if "counter" in obj:
                return {"packets": int(obj["counter"]["packets"]), "bytes": int(obj["counter"]["bytes"])}
        raise LabError(f"counter {name!r} not found in table inet wanlb")

    def nft_set_elements(self, name: str) -> list[str]:
        """The elements of a set of ``table inet wanlb`` (addresses, as nft prints them)."""
        try:
            out = self.run("nft", "-j", "list", "set", "inet", "wanlb", name)
        except LabError as exc:
            raise LabError(f"set {name!r} not found in table inet wanlb: {exc}") from None
        for obj in json.loads(out)["nftables"]:
            if "set" in obj:
                elements = obj["set"].get("elem", [])
                # Elements with a timeout come as {"elem": {"val": ..., "timeout": ...}}.
                return [str(e["elem"]["val"]) if isinstance(e, dict) else str(e) for e in elements]
        raise LabError(f"set {name!r} not found in table inet wanlb")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, cleanup: bool = True) -> None:
        if self.proc and self.proc.poll() is None:
            self.request("stop", cleanup=cleanup)
            self.proc.wait(timeout=15)
