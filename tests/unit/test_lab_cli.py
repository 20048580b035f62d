"""`wanlb lab` argument handling and error messages that need no root."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from wanlb.config import parse_config
from wanlb.lab import cli
from wanlb.lab.topology import LAN_GW, Topology


@pytest.fixture
def not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)


def test_help_lists_the_commands() -> None:
    out = CliRunner().invoke(cli.lab, ["--help"]).output
    for command in ("up", "down", "fail", "heal", "exec", "status", "traffic"):
        assert f"  {command} " in out


@pytest.mark.parametrize(
    "args",
    [["up"], ["down", "--all"], ["status"], ["fail", "isp1"], ["heal", "isp1"], ["traffic"], ["exec", "gw", "true"]],
)
def test_every_command_says_it_needs_root(not_root: None, args: list[str]) -> None:
    result = CliRunner().invoke(cli.lab, args)
    assert result.exit_code == 1
    assert "needs root" in result.output


def test_bad_weights_are_a_usage_error() -> None:
    result = CliRunner().invoke(cli.lab, ["up", "--weights", "3,x"])
    assert result.exit_code == 2
    assert "comma-separated integers" in result.output


def test_name_comes_from_the_environment() -> None:
    option = next(p for p in cli.status.params if p.name == "name")
    assert option.envvar == "WANLB_LAB" and option.default == "lab"


def test_api_port_without_api_is_a_usage_error(not_root: None) -> None:
    result = CliRunner().invoke(cli.lab, ["up", "--api-port", "8080"])
    assert result.exit_code == 2 and "--api-port goes with --api" in result.output
    out_of_range = CliRunner().invoke(cli.lab, ["up", "--api", "--api-port", "0"])
    assert out_of_range.exit_code == 2 and "1<=x<=65535" in out_of_range.output


def test_the_api_section_makes_a_valid_lab_config_on_the_lan_address(tmp_path: Path) -> None:
    token = tmp_path / "api.token"
    for ipv6 in (False, True):
        text = Topology("t", 2, 1, (), ipv6).config_yaml(str(tmp_path / "wanlb.sock"))
        config = parse_config(text + cli.api_section(9181, token))
        assert config.api is not None
        assert config.api.listen == (f"{LAN_GW}:9181",) and config.api.token_file == str(token)
        assert not config.api.public_read  # reads need the token too: the lab's LAN is not trusted either


def test_ha_pair_commands_are_listed_and_need_root(not_root: None) -> None:
    out = CliRunner().invoke(cli.lab, ["--help"]).output
    assert "  kill " in out and "  revive " in out
    assert "--ha" in CliRunner().invoke(cli.lab, ["up", "--help"]).output
    for args in (["kill", "gw1"], ["revive", "gw1"], ["up", "--ha"]):
        result = CliRunner().invoke(cli.lab, args)
        assert result.exit_code == 1 and "needs root" in result.output


def test_an_ha_gateways_api_section_listens_on_its_own_lan_address(tmp_path: Path) -> None:
    """Not the LAN VIP: only the master holds that, and a backup's daemon could not bind it."""
    token = tmp_path / "api.token"
    topo = Topology("t", 2, 1, ha=True)
    for gw, address in (("gw1", "192.168.77.2"), ("gw2", "192.168.77.3")):
        assert topo.lan_address(gw) == address != LAN_GW
        text = topo.config_yaml(str(tmp_path / f"{gw}.sock"), gw)
        config = parse_config(text + cli.api_section(9181, token, topo.lan_address(gw)))
        assert config.api is not None and config.ha is not None
        assert config.api.listen == (f"{address}:9181",) and not config.api.public_read
    assert Topology("t", 2, 1).lan_address("gw") == LAN_GW
    with pytest.raises(cli.TopologyError, match="no gateway"):
        topo.lan_address("gw")


def test_ha_builds_ipv4_only_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pair is IPv4-only for now: --ha turns the dual-stack default off; an explicit --ipv6 goes on to the
    topology, which refuses it with the reason."""
    seen: list[dict] = []

    def fake_up(*_args: object, **kwargs: object) -> None:
        seen.append(kwargs)
        raise cli.LabError("not built")

    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr(cli.Lab, "up", fake_up)
    for args in (["up", "--ha"], ["up"], ["up", "--ha", "--ipv6"]):
        assert "not built" in CliRunner().invoke(cli.lab, args).output
    assert [(kwargs["ha"], kwargs["ipv6"]) for kwargs in seen] == [(True, False), (False, True), (True, True)]
