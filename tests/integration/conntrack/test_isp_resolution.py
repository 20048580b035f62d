"""``list`` works from a quick read of the config while the full load runs beside it: never shows a wrong guess."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ISPS, Netns

from wanlb.config import load_config
from wanlb.conntrack_cli import Isps, _quick_isps
from wanlb.lab.topology import Topology

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
MIXED_MARKS = """
lan: {interfaces: [lan0]}
mark_mask: "0xf0"
isps:
  - {name: a, interface: wan0, gateway: 192.0.2.1}
  - {name: b, interface: wan1, gateway: 192.0.2.2, mark: 0x10}
  - {name: c, interface: wan2, gateway: 192.0.2.3}
"""


def _configs(tmp_path: Path, isp_config: str) -> list[Path]:
    lab = tmp_path / "lab.yaml"
    lab.write_text(Topology("x", 4, 2, ()).config_yaml("/run/x.sock"))
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(MIXED_MARKS)
    return [*sorted(EXAMPLES.glob("*.yaml")), lab, mixed, Path(isp_config)]


def test_quick_read_resolves_like_the_full_load(tmp_path: Path, isp_config: str) -> None:
    for path in _configs(tmp_path, isp_config):
        cfg = load_config(path)
        assert _quick_isps(str(path)) == Isps({i.mark: i.name for i in cfg.isps}, cfg.mark_mask, "config"), path


_WRONG_GUESS = textwrap.dedent(
    """
    import sys
    import wanlb.conntrack_cli as cli
    cli._quick_isps = lambda path: cli.Isps({0x100: "b", 0x200: "a"}, 0xFF00, "config")
    cli.conntrack(sys.argv[1:])
    """
)


@pytest.mark.root
def test_a_wrong_quick_guess_is_never_shown(netns: Netns, isp_config: str) -> None:
    netns.fill(2000)
    res = netns.run(sys.executable, "-c", _WRONG_GUESS, "--config", isp_config, "list", "--isp", "b")
    lines = res.stdout.splitlines()
    want = netns.run("conntrack", "-L", "-m", f"{ISPS['b']:#x}/0xff00").stdout.count("\n")
    assert len(lines) == want > 0
    assert all(line.endswith(" isp=b") and f" mark={ISPS['b']} " in line for line in lines)


@pytest.mark.root
def test_an_invalid_config_fails_list_as_before(netns: Netns, tmp_path: Path, isp_config: str) -> None:
    netns.fill(500)
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(isp_config).read_text().replace("mark: 0x400", "mark: 0x10000"))
    res = netns.wanlb("--config", str(bad), "list", "--isp", "b", check=False)
    assert res.returncode == 2 and res.stdout == ""
    assert "mark 0x10000 is outside mark_mask 0xff00" in res.stderr
