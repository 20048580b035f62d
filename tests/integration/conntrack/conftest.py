"""Scratch network namespaces for the conntrack integration tests.

Every namespace is named ``wlct-<pid>-<random>`` and deleted by the fixture's
finalizer, whatever the test did.  Commands run inside it with ``ip netns exec``;
the CLI runs as ``python -m wanlb.cli conntrack`` (what the ``wanlb`` script runs) with
PYTHONPATH pointing at the wanlb package this test session imported, so tests never
exercise another copy.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import wanlb

SRC = str(Path(wanlb.__file__).resolve().parent.parent)
CLI = (sys.executable, "-m", "wanlb.cli", "conntrack")
ISPS = {"a": 0x100, "b": 0x200, "c": 0x300, "d": 0x400}


def missing_requirement() -> str | None:
    """Why these tests cannot run here (no root, a tool missing), or None."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "conntrack", "nft"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, *cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": SRC}
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *cmd], capture_output=True, text=True, check=check, env=env, input=input
        )

    def wanlb(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(*CLI, *args, check=check)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": SRC}
        cmd = ["ip", "netns", "exec", self.name, *CLI, *args]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def first_line(self, *args: str) -> tuple[str, int, str]:
        """Read one line of the CLI's output and close the pipe, like ``| head -1``: (line, status, stderr)."""
        proc = self.popen(*args)
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        proc.stdout.close()
        return line, proc.wait(60), proc.stderr.read()

    def fill(self, count: int, mixed: bool = True) -> None:
        args = [sys.executable, "-m", "wanlb.ctnetlink.synth", str(count)] + (["--mixed"] if mixed else [])
        self.run(*args)


def _make(request: pytest.FixtureRequest) -> Netns:
    if reason := missing_requirement():
        pytest.skip(reason)
    name = f"wlct-{os.getpid()}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    request.addfinalizer(lambda: subprocess.run(["ip", "netns", "del", name], check=False))
    return Netns(name)


@pytest.fixture
def netns(request: pytest.FixtureRequest) -> Netns:
    return _make(request)


@pytest.fixture(scope="module")
def mixed_ns(request: pytest.FixtureRequest) -> Netns:
    """A namespace holding 6,000 mixed entries, with accounting and timestamps on."""
    ns = _make(request)
    ns.run("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1", "net.netfilter.nf_conntrack_timestamp=1")
    ns.fill(6000)
    return ns


@pytest.fixture
def isp_config(tmp_path: Path) -> Iterator[str]:
    """A wanlb config whose four ISPs own the synthetic marks 0x100..0x400."""
    isps = "\n".join(
        f"  - {{name: {n}, interface: wan{i}, gateway: 192.0.2.{i + 1}, mark: {m:#x}}}"
        for i, (n, m) in enumerate(ISPS.items())
    )
    path = tmp_path / "wanlb.yaml"
    path.write_text(f"lan:\n  interfaces: [lan0]\nmark_mask: 0xff00\nisps:\n{isps}\n")
    yield str(path)
