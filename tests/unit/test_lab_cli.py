"""`wanlb lab` argument handling and error messages that need no root."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from wanlb.lab import cli


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
