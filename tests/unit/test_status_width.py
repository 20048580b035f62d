"""`wanlb status` and `wanlb top` fit the terminal: at 60, 80, 100 and 160 columns no line is longer than the
width, ISP names are never cut, the columns that matter most (name, state, share, conns, loss, rtt) stay, and
what a narrow table leaves out is still shown (`status`: in the details under it); a wide terminal, `--wide`
or `COLUMNS` gets more.  Real status answers from a stand-in daemon (`status`) and real rich rendering
(`top`), with the longest ISP names the config allows and long states, uplinks, events and domains."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.table import Table
from test_top_cli import FakeDaemon, Pty
from test_top_screen import NAMES, render
from test_top_screen import status as fake_status

from wanlb import cli
from wanlb.top import WIDE, Column, Sample, TopModel, fit_table, measure

LONG = ("fibre-primary01", "lte-backup-mod2", "dsl-legacy-isp3")  # 15 characters: the longest an ISP name can be
ESSENTIAL = {"isp", "share", "conns", "loss", "rtt"}
WIDTHS = (60, 80, 100, 160)
IPV6_DOWN = {"mode": "netmap", "status": "down", "own_health": True, "health": {"monitored": True, "loss_percent": 100}}
LONG_REASON = "3 failed rounds: 192.0.2.1 timed out after 1s; 198.51.100.1 timed out after 1s; 203.0.113.1 refused"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[FakeDaemon]:
    d = FakeDaemon(str(tmp_path / "wanlb.sock"))
    d.start()
    yield d
    d.stop()


def hard(answer: dict[str, Any]) -> None:
    """``answer`` with the longest names, a long state, long uplinks, a long newest event, a policy and a domain."""
    rename = dict(zip(NAMES, LONG, strict=True))
    for i, isp in enumerate(answer["isps"]):
        isp["name"] = rename[isp["name"]]
        isp["interface"] = f"enp3s0f1.12{i}"
        isp["addresses"] = [f"100.64.{i + 1}.2/24"]
        isp["gateway"] = f"100.64.{i + 1}.1"
        isp["gateway_source"] = f"default via 100.64.{i + 1}.1 dev enp3s0f1.12{i} proto dhcp metric 100{i}"
    answer["isps"][1] |= {"uplink": "waiting for gateway", "link_down": True}
    answer["isps"][1]["health"]["held_down_seconds"] = 30
    answer["conn_counts"] = {rename[k]: v for k, v in answer["conn_counts"].items()}
    answer["rules"] = [{"name": "pin-web-to-the-lte-modem", "target": f"via {LONG[1]}", "hits": 123456}]
    answer["policies"] = [{"name": "web", "algorithm": "hash", "active": dict.fromkeys(LONG, 5), "sticky": True}]
    answer["domains"] = {"cdn.example.com": {"state": "ok", "addresses": [f"192.0.2.{n}" for n in range(1, 13)]}}
    for ev in answer["events"]:
        ev["isp"] = LONG[1]
    answer["events"][-1]["reason"] = LONG_REASON


def unwrapped(lines: list[str]) -> str:
    """The lines with each wrapped line joined back to the one it continues: the continuations are indented 4
    more (9 under an event's time); the table's (under its first column) more than 11 and stay."""
    out: list[str] = []
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if out and line.strip() and len(out[-1]) - len(out[-1].lstrip()) + 4 <= indent <= 11:
            out[-1] += " " + line.strip()
        else:
            out.append(line)
    return "\n".join(out)


def status_output(daemon: FakeDaemon, *args: str, columns: int | None) -> str:
    daemon.edit = hard
    env = {"COLUMNS": None if columns is None else str(columns)}
    result = CliRunner().invoke(cli.main, ["status", "--socket", daemon.path, *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def check_fits(out: str, width: int) -> tuple[list[str], str]:
    """Every line fits, nothing is cut, every name is whole at the start of its row: the ISP table's headers, and
    the output with wrapped lines joined back."""
    lines = out.splitlines()
    too_long = [line for line in lines if len(line) > width]
    assert too_long == [], f"lines longer than {width}:\n" + "\n".join(too_long) + "\n\n" + out
    assert "…" not in out, out
    header = next(line.split() for line in lines if line.split()[:2] == ["isp", "status"])
    assert ESSENTIAL | {"status"} <= set(header), out
    assert set(LONG) <= {line.split()[0] for line in lines if "%" in line and line.split()}, out
    return header, unwrapped(lines)


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("width", WIDTHS)
def test_status_fits_the_width_keeps_names_whole_and_loses_nothing(daemon: FakeDaemon, width: int, ipv6: bool) -> None:
    if ipv6:
        daemon.ipv6 = dict.fromkeys(NAMES, IPV6_DOWN)
    header, out = check_fits(status_output(daemon, columns=width), width)
    if ipv6 and width >= 80:
        assert "ipv6" in header
    assert ("ipv6" in out) == ipv6
    # What the table leaves out is in the details, one line (or more, wrapped) per ISP: nothing is lost.
    for i, name in enumerate(LONG):
        assert f"enp3s0f1.12{i}" in out and f"metric 100{i}" in out  # the uplinks
        for column, value in (("tier", "1"), ("weight", str(i + 1)), ("mark", f"{0x100 * (i + 1):#x}"),
                              ("table", str(201 + i)), ("rx", f"{i + 1}.0 kB"), ("tx", f"{100 * (i + 1)} B"),
                              ("new", str(5 * (i + 1)))):  # fmt: skip
            assert column in header or re.search(rf"^  {name}: .*\b{column} {re.escape(value)}\b", out, re.M), (
                column, name, out)  # fmt: skip
    assert f"{LONG_REASON}, flushed 29 connections" in out and "192.0.2.11, 192.0.2.12" in out  # wrapped, not cut
    if width >= 160 and not ipv6:
        assert {"tier", "weight", "mark", "table", "interface", "rx", "tx"} <= set(header)
        assert "details:" not in out
    if width <= 80:
        assert "details:" in out


def test_status_on_a_pipe_fits_80_columns_and_wide_shows_every_column_in_the_table(daemon: FakeDaemon) -> None:
    check_fits(status_output(daemon, columns=None), 80)
    wide = status_output(daemon, "--wide", columns=60)
    header, _ = check_fits(wide, 1000)
    assert header == ["isp", "status", "tier", "weight", "share", "mark", "table", "interface", "conns", "loss", "rtt",
                      "new", "rx", "tx", "probes/day"]  # fmt: skip
    assert "details:" not in wide


def test_status_narrower_than_its_names_still_keeps_them_whole(daemon: FakeDaemon) -> None:
    out = status_output(daemon, columns=1)
    assert "…" not in out, out
    for name in LONG:  # in the table, the details and the uplinks: the lines are as wide as the table then
        assert re.search(rf"^{name}  ", out, re.M) and f"\n  {name}: tier" in out and f"\n  {name} enp3s0f1" in out, out


def test_status_on_a_terminal_fits_its_width(daemon: FakeDaemon) -> None:
    daemon.edit = hard
    t = Pty(argv=[sys.executable, "-m", "wanlb.cli", "status", "--socket", daemon.path])  # 120 columns
    try:
        assert t.finish() == 0
    finally:
        t.close()
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", t.out.decode()).replace("\r\n", "\n")  # without the colours
    check_fits(out, 120)
    assert max(len(line) for line in out.splitlines()) > 100  # the terminal's width, not 80


def test_status_rates_fit_80_columns_and_are_kept_before_the_rest(daemon: FakeDaemon) -> None:
    header, out = check_fits(status_output(daemon, "--rates", columns=80), 80)
    assert "rx/s" in header and not {"tier", "weight", "mark", "rx", "tx"} & set(header), out
    # (the rate is over the wall time between the two answers --rates reads: about 100 B/s, never exactly)
    assert re.search(rf"^  {LONG[0]}: .*\bmark 0x100, .*\btx/s (9\d|1[01]\d) B/s$", out, re.M), out


# --- wanlb top ------------------------------------------------------------------------------------------------


def top_model(isps: int = 3) -> TopModel:
    m = TopModel()
    for k in range(1, 21):
        answer = fake_status(k)
        hard(answer)
        for n in range(3, isps):  # more ISPs: copies of the last with names of their own
            answer["isps"].append(answer["isps"][2] | {"name": f"extra-isp-{n:05d}"})
        m.update(Sample.of(float(k), answer))
    return m


def events(lines: list[str]) -> str:
    """The events panel's text, its wrapped lines joined."""
    start = next(i for i, line in enumerate(lines) if line.startswith("╭─ events"))
    return " ".join(line.strip("│ ") for line in lines[start + 1 :] if line.startswith("│"))


@pytest.mark.parametrize(("width", "height"), [(60, 30), (80, 24), (100, 30), (160, 40)])
def test_top_fits_the_width_keeps_names_whole_and_shows_every_panel(width: int, height: int) -> None:
    text = render(top_model(), width=width, height=height, now_mono=20.5)
    lines = text.splitlines()
    assert len(lines) == height and max(len(line) for line in lines) <= width
    assert "…" not in text, text
    header = next(line.split() for line in lines if line.split()[:2] == ["isp", "state"])
    assert ESSENTIAL | {"state"} <= set(header), text
    for name in LONG:  # its row in the ISP table (with a share) and in the history (with a sparkline)
        starts = [line for line in lines if line.split()[:1] == [name]]
        assert any("%" in line for line in starts) and any("▁" in line or "█" in line for line in starts), text
    assert "conns (top" in text and "pin-web-to-the-lte-modem" in text and "events (30)" in text
    assert f"{LONG_REASON}, flushed 29 connections" in events(lines)  # the newest event, whole
    if width >= 100:
        assert "rx/s" in header and "tx/s" in header
    if width >= 160:
        assert {"tier", "interface"} <= set(header)  # the room of a wide terminal is used


def test_top_on_a_short_terminal_keeps_every_isp_and_the_latest_events() -> None:
    text = render(top_model(isps=8), width=80, height=24, now_mono=20.5)
    names = {*LONG, *(f"extra-isp-{n:05d}" for n in range(3, 8))}
    assert names <= {line.split()[0] for line in text.splitlines() if "%" in line}, text
    assert "events (30)" in text and f"{LONG_REASON}, flushed 29 connections" in events(text.splitlines()), text


# --- fitting columns ------------------------------------------------------------------------------------------


def test_fit_table_leaves_out_by_keep_wraps_before_what_matters_and_never_cuts_a_name() -> None:
    def table() -> Table:
        return Table(box=None, padding=(0, 1, 0, 0), show_edge=False)

    name = Column("isp", (LONG[0],), justify="left")
    state = Column("state", ("down (waiting for gateway)",), justify="left", cap=12)
    extra = Column("mark", ("0x100",), keep=9)
    rate = Column("rx/s", ("1.0 kB/s",), keep=2)
    columns = [name, state, rate, extra]
    full = measure(fit_table(columns, WIDE, table)[0]).maximum
    assert fit_table(columns, full, table)[1] == ()
    fitted, left_out = fit_table(columns, full - 1, table, wrap_from=6)
    assert left_out == (extra,) and measure(fitted).maximum <= full - 1  # the extra goes before the state wraps
    fitted, left_out = fit_table(columns, full - len("0x100 ") - 1, table, wrap_from=6)
    assert left_out == (extra,) and [c.header for c in fitted.columns] == ["isp", "state", "rx/s"]  # wrapped
    fitted, left_out = fit_table(columns, 10, table, wrap_from=6)  # narrower than the name: all that can go goes
    assert left_out == (rate, extra) and measure(fitted).maximum == len(f"{LONG[0]} (waiting ")  # (and its padding)
    no_caps = [name, Column("weight", ("1",), keep=1)]  # nothing to wrap: it leaves out, and ends
    assert fit_table(no_caps, 5, table, wrap_from=6)[1] == (no_caps[1],)


def test_a_drain_shows_its_time_left_in_the_state_and_its_reason_under_the_table(daemon: FakeDaemon) -> None:
    def drained(answer: dict[str, Any]) -> None:
        hard(answer)
        answer["isps"][0] |= {"status": "disabled", "drain": {"reason": "fibre works until noon", "until": None}}
        answer["isps"][2] |= {"status": "disabled", "drain": {"reason": "", "until": time.time() + 725}}

    daemon.edit = drained
    result = CliRunner().invoke(cli.main, ["status", "--socket", daemon.path], env={"COLUMNS": "80"})
    _, text = check_fits(result.output, 80)
    lines = result.output.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith(LONG[2]))  # the state cell may wrap
    assert re.search(r"disabled \(1[12]m ", lines[row]) and lines[row + 1].strip() == "left)", lines
    drains = text.split("drains:\n")[1].splitlines()[:2]
    assert drains[0] == f"  {LONG[0]}: drained: fibre works until noon, until `wanlb enable`"
    assert re.fullmatch(rf"  {LONG[2]}: drained, ends \d\d:\d\d:\d\d \(1[12]m left\)", drains[1]), drains
