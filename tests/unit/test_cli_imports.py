"""`wanlb` imports only what the chosen command needs, and its help is unchanged by the laziness."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from wanlb import cli, config, conntrack_cli, paths

HEAVY = ("rich", "pydantic", "yaml", "wanlb.config", "wanlb.lab", "wanlb.daemon")
EXAMPLE = next((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))

_IMPORTED = """
import json, sys
from wanlb.cli import main
try:
    main(sys.argv[1:], prog_name="wanlb")
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after(*args: str) -> set[str]:
    """Modules loaded by running ``wanlb ARGS`` in a fresh interpreter."""
    res = subprocess.run([sys.executable, "-c", _IMPORTED, *args], capture_output=True, text=True, check=True)
    return set(json.loads(res.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["conntrack", "--help"],
        ["conntrack", "count", "--help"],
        ["conntrack", "--config", "/nonexistent", "--socket", "/nonexistent", "list", "--isp", "x"],
    ],
)
def test_conntrack_and_help_import_nothing_heavy(args: list[str]) -> None:
    loaded = _modules_after(*args)
    assert not [m for m in loaded if m.split(".")[0] in HEAVY or m.startswith(HEAVY)]


def test_commands_that_need_the_config_still_load_it() -> None:
    loaded = _modules_after("check", "-c", str(EXAMPLE))
    assert {"wanlb.config", "pydantic"} <= loaded and "rich" not in loaded


@pytest.mark.parametrize("name", sorted(cli.LAZY_COMMANDS))
def test_the_stored_short_help_is_the_commands_own(name: str) -> None:
    real = cli.main.get_command(click.Context(cli.main), name)
    assert real is not None and real.name == name
    shown = click.Command(name, help=cli.LAZY_COMMANDS[name][1])
    for limit in range(10, 200):
        assert shown.get_short_help_str(limit) == real.get_short_help_str(limit)


def test_help_lists_every_command_once() -> None:
    out = CliRunner().invoke(cli.main, ["--help"], terminal_width=80).output
    listed = [line.split()[0] for line in out.split("Commands:\n")[1].splitlines()]
    assert listed == sorted(["check", "conntrack", "demo", "disable", "enable", "explain", "lab", "quota", "reload",
                             "render", "run", "status", "stop", "top", "try", "tune"])  # fmt: skip


def test_defaults_equal_the_configs() -> None:
    assert config.ControlConfig().socket == paths.DEFAULT_SOCKET  # the one place both CLIs and the config read
    assert [p.default for p in conntrack_cli.conntrack.params if p.name == "config"] == [paths.DEFAULT_CONFIG_PATH]


def test_the_socket_is_found_even_in_a_broken_config(tmp_path: Path) -> None:
    broken = tmp_path / "wanlb.yaml"
    broken.write_text("control: {socket: /run/x/y.sock}\nisps: [oops\n")
    assert paths.find_socket(None, str(broken)) == paths.DEFAULT_SOCKET  # not YAML at all: the default
    broken.write_text("control: {socket: /run/x/y.sock}\nisps: 3\n")  # YAML, not a valid config
    assert paths.find_socket(None, str(broken)) == "/run/x/y.sock"
    assert paths.find_socket("/explicit.sock", str(broken)) == "/explicit.sock"
