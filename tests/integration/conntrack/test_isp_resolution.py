"""How ``wanlb conntrack`` names ISPs: the running wanlb's runtime state first, else the config as a first start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ISPS, Netns

from wanlb import runtime
from wanlb.config import load_config
from wanlb.conntrack_cli import Ctx, Isps


def _with_socket(isp_config: str, tmp_path: Path) -> tuple[str, Path]:
    """The config with a control socket in tmp_path; returns (config, state file path)."""
    sock = tmp_path / "run" / "wanlb.sock"
    sock.parent.mkdir(mode=0o700)
    path = Path(isp_config)
    path.write_text(path.read_text() + f"control: {{socket: {sock}}}\n")
    return str(path), sock.with_suffix(".state.json")


def test_without_state_the_config_is_allocated_as_a_first_start(isp_config: str) -> None:
    cfg = load_config(isp_config)
    assert Ctx(isp_config, None).isps(required=True) == Isps({m: n for n, m in ISPS.items()}, cfg.mark_mask, "config")


def test_the_runtime_state_wins_over_the_config(isp_config: str, tmp_path: Path) -> None:
    config, state_path = _with_socket(isp_config, tmp_path)
    cfg = load_config(config)
    state = runtime.allocate(cfg, None, reload=False).state
    swapped = {"a": state.isps["b"], "b": state.isps["a"], "c": state.isps["c"], "d": state.isps["d"]}
    runtime.save(state_path, runtime.RuntimeState(**{**state.__dict__, "isps": swapped}))
    isps = Ctx(config, None).isps(required=True)
    assert isps is not None and isps.source == "state"
    assert isps.mark_of("a") == ISPS["b"] and isps.mark_of("b") == ISPS["a"]


def test_an_untrustworthy_state_file_is_a_usage_error(isp_config: str, tmp_path: Path) -> None:
    config, state_path = _with_socket(isp_config, tmp_path)
    state_path.write_text(json.dumps({"version": 1, "sysctls": {"../../tmp/victim": "1"}}))
    with pytest.raises(Exception, match="not one wanlb changes"):
        Ctx(config, None).isps(required=True)


@pytest.mark.root
def test_an_invalid_config_fails_list_as_before(netns: Netns, tmp_path: Path, isp_config: str) -> None:
    netns.fill(500)
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(isp_config).read_text().replace("mark: 0x400", "mark: 0x10000"))
    res = netns.wanlb("--config", str(bad), "list", "--isp", "b", check=False)
    assert res.returncode == 2 and res.stdout == ""
    assert "mark 0x10000 is outside mark_mask 0xff00" in res.stderr
