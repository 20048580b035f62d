"""The HA helpers' files as the real programs read them: keepalived 2.2.7 accepts the rendered config
(`keepalived -t`), conntrackd 1.4.7 starts on its rendered one and answers on its own control socket, and the
supervisor restarts a helper that dies — in a namespace of this test's own, with the interfaces the config
names (veths)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import unique_lab_name

from wanlb import ha
from wanlb.config import parse_config
from wanlb.ha_supervisor import HaNode

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("keepalived") and shutil.which("conntrackd")),
    reason="needs root, keepalived and conntrackd",
)

CONFIG = """\
lan: {{interfaces: [lan0]}}
isps:
  - {{name: isp1, interface: wan1, gateway: 100.64.1.1, mark: 0x100, table: 201}}
  - {{name: isp2, interface: wan2, gateway: 100.64.2.1, mark: 0x200, table: 202}}
control: {{socket: {root}/wanlb.sock}}
ha:
  node: gw1
  priority: 150
  advert_interval: 100ms
  lan_vip: 192.168.77.1/24
  wan_vips: {{isp1: 100.64.1.10/24, isp2: 100.64.2.10/24}}
  sync: {{interface: sync0, address: 10.255.0.1, peer: 10.255.0.2}}
"""


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"wlab-{unique_lab_name()}-ha"  # (`lab down --all` removes it too, should this test be killed)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        batch = "".join(  # (this kernel has no dummy links: a veth with its peer beside it)
            f"link add {i} type veth peer name {i}p\nlink set {i} up\nlink set {i}p up\n"
            for i in ("lan0", "wan1", "wan2", "sync0")
        )
        batch += "addr add 192.168.77.2/24 dev lan0\naddr add 10.255.0.1/30 dev sync0\nlink set lo up\n"
        subprocess.run(["ip", "-n", name, "-batch", "-"], input=batch, text=True, check=True)
        yield name
    finally:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            subprocess.run(["kill", "-9", pid], check=False)
        subprocess.run(["ip", "netns", "del", name], check=False)


def in_ns(ns: str, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout)


def test_keepalived_accepts_the_rendered_config(netns: str, tmp_path: Path) -> None:
    cfg = parse_config(CONFIG.format(root=tmp_path))
    conf = tmp_path / "keepalived.conf"
    conf.write_text(ha.keepalived_conf(cfg, ha.paths_for(cfg)))
    checked = in_ns(netns, "keepalived", "-t", "-f", str(conf))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    broken = tmp_path / "broken.conf"
    broken.write_text(conf.read_text().replace("dev wan2", "dev wan9"))  # so the check can fail
    assert in_ns(netns, "keepalived", "-t", "-f", str(broken)).returncode != 0


def test_conntrackd_runs_on_the_rendered_config_and_is_restarted_when_it_dies(netns: str, tmp_path: Path) -> None:
    """The supervisor, run inside the namespace (a child python), starts conntrackd from the rendered files;
    conntrackd answers `-s` on the node's own socket; killed, it is started again."""
    script = f"""
import asyncio, os, subprocess, sys
from wanlb.config import parse_config
from wanlb.ha_supervisor import HaNode
cfg = parse_config(open({str(tmp_path / "wanlb.yaml")!r}).read())
node = HaNode(cfg)
node.write(cfg)
node.prepare()
conf = str(node.paths.conntrackd_conf)
async def main():
    node.conntrackd.start()
    for _ in range(100):
        await asyncio.sleep(0.1)
        if subprocess.run(["conntrackd", "-C", conf, "-s"], capture_output=True).returncode == 0:
            break
    else:
        sys.exit("conntrackd never answered")
    first = node.conntrackd.state.pid
    os.kill(first, 9)
    for _ in range(100):
        await asyncio.sleep(0.1)
        pid = node.conntrackd.state.pid
        answers = subprocess.run(["conntrackd", "-C", conf, "-s"], capture_output=True).returncode == 0
        if pid and pid != first and answers:
            break
    else:
        sys.exit(f"conntrackd was not restarted: {{node.conntrackd.state}} {{list(node.conntrackd.output)}}")
    print("starts", node.conntrackd.state.starts, node.conntrackd.state.last_exit)
    await node.conntrackd.stop()
asyncio.run(main())
"""
    (tmp_path / "wanlb.yaml").write_text(CONFIG.format(root=tmp_path))
    env_python = os.environ.get("PYTHON", "python3")
    done = in_ns(netns, env_python, "-c", script, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == ["starts", "2", "killed", "by", "signal", "9"], done.stdout


def test_a_missing_program_is_reported_not_crashed_on(tmp_path: Path) -> None:
    cfg = parse_config(CONFIG.format(root=tmp_path))
    node = HaNode(cfg)
    node.conntrackd.argv[0] = "conntrackd-not-installed"

    async def main() -> None:
        node.conntrackd.start()
        await asyncio.sleep(0.2)
        assert node.conntrackd.state.missing and "not installed" in node.conntrackd.state.missing
        await node.conntrackd.stop()

    asyncio.run(main())


def test_keepalived_killed_is_restarted_without_a_second_vrrp_process(netns: str, tmp_path: Path) -> None:
    """keepalived runs as a parent and a VRRP child; the supervisor restarts a SIGKILLed parent (its stale pid
    files removed first), and the old child does not live on beside the new one (two VRRP speakers)."""
    script = f"""
import asyncio, os, subprocess, sys
from wanlb.config import parse_config
from wanlb.ha_supervisor import HaNode
cfg = parse_config(open({str(tmp_path / "wanlb.yaml")!r}).read())
node = HaNode(cfg)
node.write(cfg)
node.prepare()
conf = str(node.paths.keepalived_conf).encode()
def keepaliveds():  # this node's: their command line names its file (others' may run on the machine)
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if conf in open(f"/proc/{{pid}}/cmdline", "rb").read():
                found.append(int(pid))
        except OSError:
            pass
    return sorted(found)
async def settle(n, first=None):
    for _ in range(100):
        await asyncio.sleep(0.1)
        pid = node.keepalived.state.pid
        if pid and pid != first and len(keepaliveds()) == n:
            return pid
    sys.exit(f"keepalived: {{keepaliveds()}} {{node.keepalived.state}} {{list(node.keepalived.output)}}")
async def main():
    node.keepalived.start()
    first = await settle(2)
    os.kill(first, 9)
    await settle(2, first)
    await asyncio.sleep(1.0)  # a surviving old child would still be there now
    print("processes", len(keepaliveds()), "starts", node.keepalived.state.starts)
    await node.keepalived.stop()
asyncio.run(main())
"""
    (tmp_path / "wanlb.yaml").write_text(CONFIG.format(root=tmp_path))
    done = in_ns(netns, os.environ.get("PYTHON", "python3"), "-c", script, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == ["processes", "2", "starts", "2"], done.stdout
