"""scripts/install.sh for real: a venv, the symlink, the unit and the config — all under a scratch directory.

The install runs from a copy of this checkout (so an upgrade can change it) into temporary --prefix,
--bin-dir, --unit-dir and --config-dir: nothing under the real /opt, /usr/local or /etc is touched, and
systemctl is never called (a stand-in on PATH fails the test if it is). The venv gets its dependencies
from PyPI (or pip's cache), like a gateway would, or offline from WANLB_WHEELS=DIR if that is set; the
first install is most of this file's run time (~15-40 s: venv + pip).

The last test starts the lab's daemon with only the capabilities the unit's CapabilityBoundingSet= grants
(setpriv) and takes it through a failover: the hardening is checked, not just parsed.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (installs a service)")]

CHECKOUT = Path(__file__).resolve().parents[2]
COPIED = ("pyproject.toml", "README.md", "src", "scripts", "packaging", "examples", "docs")


@dataclass
class Tree:
    root: Path
    src: Path  # the copy of the checkout the script runs from
    prefix: Path
    bin_dir: Path
    unit_dir: Path
    config_dir: Path
    systemctl_log: Path

    @property
    def link(self) -> Path:
        return self.bin_dir / "wanlb"

    @property
    def unit(self) -> Path:
        return self.unit_dir / "wanlb.service"

    @property
    def config(self) -> Path:
        return self.config_dir / "wanlb.yaml"

    def env(self) -> dict[str, str]:
        """No PYTHONPATH (the venv must stand alone), no WANLB_* overrides but WANLB_WHEELS (an offline
        wheel directory, see install.sh), and a systemctl that tattles."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k != "PYTHONPATH" and (not k.startswith("WANLB_") or k == "WANLB_WHEELS")
        }
        env["PATH"] = f"{self.root / 'fakebin'}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        return env

    def script(self, name: str, *args: str, paths: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["bash", str(self.src / "scripts" / name), "--prefix", str(self.prefix)]
        if paths:
            argv += ["--bin-dir", str(self.bin_dir), "--unit-dir", str(self.unit_dir)]
            argv += ["--config-dir", str(self.config_dir)]
        res = subprocess.run([*argv, *args], capture_output=True, text=True, env=self.env(), cwd="/", timeout=300)
        assert not self.systemctl_log.exists(), f"systemctl was called: {self.systemctl_log.read_text()}"
        return res

    def wanlb(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.link), *args], capture_output=True, text=True, env=self.env(), cwd="/", timeout=60
        )


def _copy_checkout(dest: Path) -> None:
    dest.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
    for name in COPIED:
        src = CHECKOUT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    root = tmp_path_factory.mktemp("install")
    t = Tree(
        root=root,
        src=root / "checkout",
        prefix=root / "prefix",  # not ending in opt/wanlb: the unit must show no default path
        bin_dir=root / "usr-local-sbin",
        unit_dir=root / "etc-systemd-system",
        config_dir=root / "conf",
        systemctl_log=root / "systemctl-called",
    )
    _copy_checkout(t.src)
    fake = root / "fakebin" / "systemctl"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "systemctl $*" >> {t.systemctl_log}\nexit 1\n')
    fake.chmod(0o755)
    yield t
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def installed(tree: Tree) -> Tree:
    start = time.monotonic()
    res = tree.script("install.sh")
    assert res.returncode == 0, res.stdout + res.stderr
    print(f"first install: {time.monotonic() - start:.1f} s")
    return tree


def test_installs_a_venv_a_link_a_unit_and_the_example_config(installed: Tree) -> None:
    t = installed
    assert os.readlink(t.link) == str(t.prefix / "bin" / "wanlb")
    cfg = dict(line.split(" = ", 1) for line in (t.prefix / "pyvenv.cfg").read_text().splitlines() if " = " in line)
    assert cfg["home"] == "/usr/bin"  # Debian's python3, not whatever python3 comes first on PATH
    assert cfg["include-system-site-packages"] == "false"  # its own dependencies, apt's are left alone
    assert stat.S_IMODE(t.config_dir.stat().st_mode) == 0o755
    assert t.config.read_text() == (CHECKOUT / "examples" / "wanlb.yaml").read_text()
    assert (t.prefix / "share" / "doc" / "wanlb" / "operations.md").is_file()  # the unit's Documentation=
    assert (t.prefix / "share" / "wanlb" / "install.sh").is_file()  # to uninstall without the checkout
    assert (t.prefix / "share" / "wanlb" / "wanlb-alerts.yml").is_file()
    assert not list(t.src.rglob("*.egg-info")) and not (t.src / "build").exists()  # the checkout stays clean


def test_the_venv_runs_wanlb_not_editable(installed: Tree) -> None:
    t = installed
    res = t.wanlb("--help")
    assert res.returncode == 0 and "multi-WAN gateway" in res.stdout, res.stderr
    where = subprocess.run(
        [str(t.prefix / "bin" / "python"), "-c", "import wanlb, pydantic, pyroute2; print(wanlb.__file__)"],
        capture_output=True,
        text=True,
        env=t.env(),
        cwd="/",
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(f"{t.prefix}/lib/python3") and "site-packages/wanlb/" in where.stdout


def test_check_accepts_the_installed_example(installed: Tree) -> None:
    res = installed.wanlb("check", "-c", str(installed.config))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"{installed.config}: ok — 2 ISP(s)")


def test_the_unit_points_at_the_install_and_verifies(installed: Tree) -> None:
    t = installed
    text = t.unit.read_text()
    settings = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    assert "/opt/wanlb" not in settings and "/etc/wanlb" not in settings
    assert f"ExecStart={t.prefix}/bin/wanlb run --config ${{WANLB_CONFIG}}" in text
    assert f"Environment=WANLB_CONFIG={t.config}" in text
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd): unit not verified")
    res = subprocess.run(["systemd-analyze", "verify", str(t.unit)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr
    # The hardening stays: systemd's own exposure score (0 best, 10 worst; 2.5 when written).
    sec = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(t.unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    score = re.search(r"Overall exposure level for wanlb\.service: (\d+\.\d+)", sec.stdout)
    assert score, sec.stdout + sec.stderr
    assert float(score.group(1)) <= 3.0, sec.stdout


def test_rerun_upgrades_in_place_and_keeps_the_config(installed: Tree) -> None:
    t = installed
    t.config.write_text(t.config.read_text() + "# the operator's edit\n")
    before = t.config.read_text()
    venv = (t.prefix / "pyvenv.cfg").stat().st_ino
    init = t.src / "src" / "wanlb" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "0.1.0"', '__version__ = "0.1.0.post1"'))
    start = time.monotonic()
    res = t.script("install.sh")
    print(f"upgrade: {time.monotonic() - start:.1f} s")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "upgrading in place" in res.stdout and f"kept {t.config}" in res.stdout
    assert t.wanlb("--version").stdout.strip() == "wanlb, version 0.1.0.post1"
    assert (t.prefix / "pyvenv.cfg").stat().st_ino == venv  # the same venv, not a new one
    assert t.config.read_text() == before
    assert "0.1.0.post1" in t.unit.read_text().splitlines()[0]


def test_refuses_to_take_over_what_is_not_its_own(tree: Tree, tmp_path: Path) -> None:
    def install(prefix: Path) -> subprocess.CompletedProcess[str]:
        argv = ["--prefix", str(prefix), "--bin-dir", str(tmp_path), "--unit-dir", str(tmp_path)]
        argv += ["--config-dir", str(tmp_path / "etc")]
        script = str(tree.src / "scripts" / "install.sh")
        return subprocess.run(["bash", script, *argv], capture_output=True, text=True, env=tree.env(), timeout=60)

    foreign = tmp_path / "usr-local"
    (foreign / "lib").mkdir(parents=True)
    res = install(foreign)
    assert res.returncode == 1 and "is not empty and holds no wanlb install" in res.stderr
    (tmp_path / "wanlb").write_text("#!/bin/sh\n")  # e.g. a `pip install -e .` console script
    res = install(tmp_path / "p")
    assert res.returncode == 1 and "is not a link to" in res.stderr
    assert not (tmp_path / "p").exists() and not (tmp_path / "etc").exists()  # refused before doing anything
    res = tree.script("install.sh", "--prefix", "/usr", paths=False)
    assert res.returncode == 1 and "is a system directory" in res.stderr


def test_uninstall_removes_everything_but_the_config(installed: Tree) -> None:
    t = installed
    wants = t.unit_dir / "multi-user.target.wants"
    wants.mkdir()
    (wants / "wanlb.service").symlink_to(t.unit)  # as `systemctl enable` leaves it
    config = t.config.read_text()
    res = t.script("uninstall.sh", paths=False)  # the other paths come from the install's manifest
    assert res.returncode == 0, res.stdout + res.stderr
    assert not t.prefix.exists() and not t.link.is_symlink() and not t.unit.exists()
    assert not (wants / "wanlb.service").is_symlink()
    assert t.config.read_text() == config and f"kept {t.config_dir}" in res.stdout
    again = t.script("install.sh", "--uninstall")
    assert again.returncode == 0, again.stderr  # nothing left to remove is not an error


# --- the unit's capabilities are enough for the daemon ---------------------------------------------


def _bounding_set(unit: Path) -> list[str]:
    (line,) = [ln for ln in unit.read_text().splitlines() if ln.startswith("CapabilityBoundingSet=")]
    return line.split("=", 1)[1].split()


@pytest.mark.skipif(shutil.which("setpriv") is None or shutil.which("nft") is None, reason="needs setpriv and nft")
def test_the_daemon_runs_and_fails_over_with_only_the_units_capabilities() -> None:
    from wanlb.lab.gateway import LabGateway
    from wanlb.lab.lab import Lab, python_module

    caps = _bounding_set(CHECKOUT / "packaging" / "wanlb.service")
    assert caps == ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    keep = ",".join(f"+{c.removeprefix('CAP_').lower()}" for c in caps)
    prefix = ["setpriv", f"--bounding-set=-all,{keep}", "--inh-caps=-all", "--no-new-privs", "--"]
    with Lab.up(name=f"i{os.getpid()}{os.urandom(2).hex()}", isps=2, clients=1) as lab:
        gw = LabGateway(lab)
        hook_out = lab.dir / "hook.out"
        hook = lab.dir / "hook.sh"
        hook.write_text(f"#!/bin/sh\ngrep CapEff /proc/self/status >> {hook_out}\nnft list tables >> {hook_out}\n")
        hook.chmod(0o755)
        gw.write(lambda cfg: cfg.update(hooks=[str(hook)]))
        gw.start(prefix=prefix)
        streams = []
        try:
            assert gw.proc is not None
            status = Path(f"/proc/{gw.proc.pid}/status").read_text()
            assert "CapEff:\t0000000000003000" in status  # CAP_NET_ADMIN (12) and CAP_NET_RAW (13) only
            gw.wait_for({"isp1": "up", "isp2": "up"})
            argv = python_module("wanlb.lab.traffic", "stream", "--stall", "3")
            streams = [lab.popen("c1", argv, stdout=subprocess.PIPE, text=True) for _ in range(8)]
            time.sleep(1.0)
            lab.fail("isp1", "blackhole")
            down = gw.wait_event("isp1", "down", timeout=15)
            # Probes failed because the ISP stopped answering, not because a raw socket was refused.
            assert "no answer" in down["reason"] and "not permitted" not in down["reason"], down
            assert down["error"] is None and down["flushed"] > 0, down  # ctnetlink flush worked
            assert gw.reload()["ok"]
            lab.heal("isp1")
            gw.wait_for({"isp1": "up"}, timeout=15)  # good probe rounds: ICMP works
            hook_text = hook_out.read_text() if hook_out.exists() else ""
            assert "CapEff:\t0000000000003000" in hook_text and "table inet wanlb" in hook_text, hook_text
        finally:
            for proc in streams:
                proc.terminate()
            for proc in streams:
                proc.communicate(timeout=30)
            gw.stop(cleanup=True)
        log = gw.log_text()
        assert "Operation not permitted" not in log and "removed everything wanlb added" in log, log[-3000:]
