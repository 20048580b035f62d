"""wanlb tune's recommendation is a pure function of what it read."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from wanlb.cli import main
from wanlb.tune import BASELINE_MAX, Reading, memory_line, recommend, sysctl_file

GIB = 1 << 30
DEFAULTS = {
    "nf_conntrack_max": 65536,
    "nf_conntrack_count": 1200,
    "nf_conntrack_buckets": 65536,
    "nf_conntrack_tcp_timeout_established": 432000,
    "nf_conntrack_udp_timeout": 30,
    "nf_conntrack_udp_timeout_stream": 120,
    "nf_conntrack_events": 2,
    "nf_conntrack_acct": 0,
}
ALL_WRITABLE = dict.fromkeys(DEFAULTS, True)


def reading(ram: int = 8 * GIB, writable: dict[str, bool] = ALL_WRITABLE, **values: int) -> Reading:
    return Reading({**DEFAULTS, **values}, 256, "slabinfo", ram, writable)


def rec(rows: list, key: str) -> int | None:
    return next(r.recommended for r in rows if r.key == key)


def note(rows: list, key: str) -> str:
    return next(r.note for r in rows if r.key == key)


def test_the_baseline_for_a_gateway() -> None:
    rows, notes = recommend(reading())
    assert rec(rows, "nf_conntrack_max") == BASELINE_MAX == rec(rows, "nf_conntrack_buckets")
    assert rec(rows, "nf_conntrack_events") is None and rec(rows, "nf_conntrack_count") is None
    assert notes == []
    assert all(r.note for r in rows)


def test_the_timeouts_meet_the_nat_rfcs_and_say_why() -> None:
    rows, _ = recommend(reading())
    assert rec(rows, "nf_conntrack_tcp_timeout_established") == 7440  # RFC 5382 REQ-5: at least 2 h 4 min
    assert rec(rows, "nf_conntrack_udp_timeout_stream") == 120  # RFC 4787 REQ-5: at least 2 min
    tcp, udp = note(rows, "nf_conntrack_tcp_timeout_established"), note(rows, "nf_conntrack_udp_timeout_stream")
    assert "RFC 5382" in tcp and "3,600" in tcp  # the seed's lower figure, and why one might still pick it
    assert "RFC 4787" in udp and "60" in udp
    seeded, _ = recommend(reading(nf_conntrack_tcp_timeout_established=3600, nf_conntrack_udp_timeout_stream=60))
    assert [r.key for r in seeded if r.change] == [
        "nf_conntrack_max", "nf_conntrack_buckets", "nf_conntrack_tcp_timeout_established",
        "nf_conntrack_udp_timeout_stream",
    ]  # fmt: skip


def test_a_table_that_cannot_grow_is_told_about_the_seeds_shorter_timeouts() -> None:
    _, roomy = recommend(reading(), expect=100_000)
    assert not any("seed" in n for n in roomy)
    _, capped = recommend(reading(ram=GIB), expect=10_000_000)
    assert any("3,600" in n and "60 s" in n and "RFC" in n for n in capped), capped


def test_expect_doubles_and_rounds_up_and_never_shrinks() -> None:
    rows, _ = recommend(reading(), expect=300_000)
    assert rec(rows, "nf_conntrack_max") == 1 << 20  # 600,000 rounded up
    rows, _ = recommend(reading(nf_conntrack_max=4 << 20), expect=1000)
    assert rec(rows, "nf_conntrack_max") == 4 << 20


def test_memory_caps_the_table() -> None:
    rows, notes = recommend(reading(ram=GIB), expect=10_000_000)
    cap = rec(rows, "nf_conntrack_max")
    assert cap is not None and cap * (256 + 8) <= GIB // 16
    assert "more than 1/16 of RAM" in notes[0]
    assert "MiB of 1.0 GiB" in memory_line(reading(ram=GIB), rows)


def test_the_shared_limits_are_reported_read_only_in_a_namespace() -> None:
    ro = {**ALL_WRITABLE, "nf_conntrack_max": False, "nf_conntrack_buckets": False}
    _, notes = recommend(reading(writable=ro))
    assert any("nf_conntrack_max cannot be written here" in n for n in notes)


def test_the_persistent_file_is_sysctl_syntax() -> None:
    rows, _ = recommend(reading())
    text = sysctl_file(rows)
    settings = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert "net.netfilter.nf_conntrack_tcp_timeout_established = 7440" in settings
    assert all(line.startswith("net.netfilter.nf_conntrack_") and " = " in line for line in settings)
    assert not any("nf_conntrack_count" in line for line in settings)


def test_table_warnings_for_a_full_table_and_rising_drops() -> None:
    from wanlb.tune import TableStats, table_warnings

    assert table_warnings(None, TableStats(100, 1000)) == []
    full = table_warnings(None, TableStats(850, 1000))
    assert len(full) == 1 and "85% full" in full[0]
    rising = table_warnings(TableStats(10, 1000, drop=5, early_drop=1), TableStats(10, 1000, drop=9, early_drop=1))
    assert rising == ["conntrack drop rose by 4: the table turned connections away"]


def _persist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answers: str | None, *extra: str) -> tuple:
    """`wanlb tune --persist` into tmp_path, from a fixed reading (the /proc path is tests/integration)."""
    monkeypatch.setattr("wanlb.tune.read", reading)
    sysctl, modules = tmp_path / "90-wanlb.conf", tmp_path / "wanlb.conf"
    args = ["tune", "--persist", str(sysctl), "--modules-load", str(modules), *extra]
    return CliRunner().invoke(main, args, input=answers), sysctl, modules


def test_persist_writes_the_module_line_that_makes_the_sysctls_apply_at_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, sysctl, modules = _persist(tmp_path, monkeypatch, "y\ny\n")
    assert result.exit_code == 0, result.output
    assert "net.netfilter.nf_conntrack_tcp_timeout_established = 7440" in sysctl.read_text()
    assert "systemd-sysctl" in result.output and "nf_conntrack" in result.output  # the warning, before asking
    assert [line for line in modules.read_text().splitlines() if not line.startswith("#")] == ["nf_conntrack"]
    assert f"+++ {modules}" in result.output and "+nf_conntrack\n" in result.output  # exactly what it writes
    assert f"wrote {modules}" in result.output
    again, _, _ = _persist(tmp_path, monkeypatch, None)  # nothing to ask: both files hold it already
    assert again.exit_code == 0, again.output
    assert f"{sysctl} already holds" in again.output and f"{modules} already holds" in again.output


def test_persist_asks_before_the_module_file_and_yes_skips_asking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    declined, sysctl, modules = _persist(tmp_path, monkeypatch, "y\nn\n")
    assert declined.exit_code == 1 and "not written" in declined.output
    assert sysctl.exists() and not modules.exists()
    yes, _, _ = _persist(tmp_path, monkeypatch, None, "--yes")
    assert yes.exit_code == 0, yes.output
    assert f"{sysctl} already holds" in yes.output and modules.read_text().endswith("\nnf_conntrack\n")


def test_modules_load_goes_with_persist() -> None:
    result = CliRunner().invoke(main, ["tune", "--modules-load", "/tmp/x.conf"])
    assert result.exit_code == 2 and "--persist" in result.output
