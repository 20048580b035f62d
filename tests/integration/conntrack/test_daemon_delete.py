"""``delete --isp`` through a running daemon; ISP names resolved from its runtime state, never re-derived.

A lab gateway runs ``wanlb run`` (no health probes: nothing adds entries behind the
tests' backs); each test starts from a table of synthetic entries whose marks
0x100, 0x200, 0x300 are the lab's isp1..isp3 (0x400 belongs to no ISP).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Netns, missing_requirement

from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab

pytestmark = pytest.mark.root

MARKS = {"isp1": 0x100, "isp2": 0x200, "isp3": 0x300}
ENTRIES = 4000


def _no_probes(data: dict[str, Any]) -> None:
    for isp in data["isps"]:
        isp.pop("health", None)


def _swapped(data: dict[str, Any]) -> None:
    """isp2 and isp3 trade marks: a config that resolves ``--isp isp2`` to 0x300."""
    _no_probes(data)
    for isp in data["isps"]:
        isp["mark"] = {"isp2": MARKS["isp3"], "isp3": MARKS["isp2"]}.get(isp["name"], MARKS[isp["name"]])


@dataclass
class Gateway:
    lab: Lab
    daemon: LabGateway
    gw: Netns

    @property
    def config(self) -> str:
        return str(self.lab.config_path)

    @property
    def socket(self) -> str:
        return str(self.lab.socket_path)

    def fresh_table(self) -> dict[int, int]:
        """Replace the table by ENTRIES synthetic entries; returns the count per mark."""
        self.gw.run("conntrack", "-F")
        self.gw.fill(ENTRIES, mixed=False)
        return self.marks()

    def marks(self) -> dict[int, int]:
        """The synthetic entries per mark (all marked), as conntrack-tools lists them. Unmarked entries are left
        out: a stray packet in the lab (CI once saw one unmarked entry appear between two listings) is no
        entry of these tests."""
        counts: dict[int, int] = {}
        for line in self.gw.run("conntrack", "-L").stdout.splitlines():
            mark = int(line.split(" mark=")[1].split()[0])
            if mark:
                counts[mark] = counts.get(mark, 0) + 1
        return counts

    def delete(self, config: str, *args: str) -> dict[str, Any]:
        """``delete --json`` with ``config`` (group options, a string) and ``args`` (the filter)."""
        return json.loads(self.gw.wanlb(*config.split(), "delete", "--json", *args).stdout)


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    if reason := missing_requirement():
        pytest.skip(reason)
    with Lab.up(name=f"cd{os.getpid()}{secrets.token_hex(2)}", isps=3, clients=2) as lab:
        daemon = LabGateway(lab)
        daemon.write(_no_probes)
        daemon.start()
        try:
            yield Gateway(lab, daemon, Netns(lab.ns("gw")))
        finally:
            daemon.stop()


def _without(counts: dict[int, int], mark: int) -> dict[int, int]:
    return {m: n for m, n in counts.items() if m != mark}


def test_delete_isp_through_the_daemon_removes_exactly_that_isps_entries(gateway: Gateway) -> None:
    before = gateway.fresh_table()
    assert before[MARKS["isp2"]] == ENTRIES // 4
    res = gateway.gw.wanlb("--config", gateway.config, "delete", "--isp", "isp2")
    assert res.stderr == f"wanlb: {ENTRIES // 4} entries deleted (by the daemon)\n"
    assert gateway.marks() == _without(before, MARKS["isp2"])
    assert "flushed 1000 connections of isp2 (asked on the control socket)" in gateway.daemon.log_text()


def test_json_reports_the_daemon_and_without_a_config_the_daemons_isps_count(gateway: Gateway) -> None:
    before = gateway.fresh_table()
    out = gateway.delete(f"--config /nonexistent --socket {gateway.socket}", "--isp", "isp1")
    assert out == {"deleted": ENTRIES // 4, "source": "daemon"}
    assert gateway.marks() == _without(before, MARKS["isp1"])


def test_an_edited_config_does_not_change_what_an_isp_name_means(gateway: Gateway, tmp_path: Path) -> None:
    """The running wanlb's allocation (its runtime state) names the marks, whatever a config file now says."""
    data = yaml.safe_load(gateway.lab.config_path.read_text())
    _swapped(data)  # not loaded by the daemon: isp2 still carries 0x200
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(data, sort_keys=False))
    for options in (f"--config {other}", f"--config {other} --socket /nonexistent/x.sock"):
        before = gateway.fresh_table()
        out = gateway.delete(options.replace("/nonexistent/x.sock", gateway.socket), "--isp", "isp2")
        assert out == {"deleted": ENTRIES // 4, "source": "daemon"}
        assert gateway.marks() == _without(before, MARKS["isp2"])


def test_without_a_daemon_names_come_from_the_state_it_left(gateway: Gateway) -> None:
    """A stopped daemon's runtime state still names the marks (connections outlive it)."""
    before = gateway.fresh_table()
    sock = f"{gateway.lab.dir}/gone.sock"  # no daemon answers here, but a state file lies next to it
    Path(f"{gateway.lab.dir}/gone.state.json").write_text(Path(gateway.socket).with_suffix(".state.json").read_text())
    out = gateway.delete(f"--config /nonexistent --socket {sock}", "--isp", "isp3")
    assert out == {"deleted": ENTRIES // 4, "source": "kernel"}
    assert gateway.marks() == _without(before, MARKS["isp3"])


def test_an_unknown_isp_is_still_a_usage_error(gateway: Gateway) -> None:
    before = gateway.fresh_table()
    res = gateway.gw.wanlb("--config", gateway.config, "delete", "--isp", "nope", check=False)
    assert res.returncode == 2 and "unknown ISP 'nope'" in res.stderr
    assert gateway.marks() == before


def _names_right(line: str, output: str) -> bool:
    """The line shows the ISP name its mark has (the daemon's ISPs), or none for a mark of no ISP."""
    if output == "json":
        obj = json.loads(line)
        mark, shown = obj["mark"], obj["isp"]
    else:
        mark = int(line.split(" mark=")[1].split()[0])
        shown = line.rstrip("\n").split(" isp=")[1] if " isp=" in line else None
    return shown == next((name for name, m in MARKS.items() if m == mark & 0xFF00), None)


@pytest.mark.parametrize("output", ["text", "extended", "json"])
def test_list_into_a_closed_pipe_with_the_daemon(gateway: Gateway, output: str) -> None:
    gateway.fresh_table()
    names_from_daemon = ("--config", "/nonexistent", "--socket", gateway.socket)
    first, code, err = gateway.gw.first_line(*names_from_daemon, "list", "-o", output)
    assert _names_right(first, output)
    assert (code, err) == (141, "")
