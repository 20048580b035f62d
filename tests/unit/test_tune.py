"""wanlb tune's recommendation is a pure function of what it read."""

from __future__ import annotations

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


def test_the_seed_baseline_for_a_gateway() -> None:
    rows, notes = recommend(reading())
    assert rec(rows, "nf_conntrack_max") == BASELINE_MAX == rec(rows, "nf_conntrack_buckets")
    assert rec(rows, "nf_conntrack_tcp_timeout_established") == 3600
    assert rec(rows, "nf_conntrack_udp_timeout_stream") == 60
    assert rec(rows, "nf_conntrack_events") is None and rec(rows, "nf_conntrack_count") is None
    assert notes == []
    assert all(r.note for r in rows)


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
    assert "net.netfilter.nf_conntrack_tcp_timeout_established = 3600" in settings
    assert all(line.startswith("net.netfilter.nf_conntrack_") and " = " in line for line in settings)
    assert not any("nf_conntrack_count" in line for line in settings)


def test_table_warnings_for_a_full_table_and_rising_drops() -> None:
    from wanlb.tune import TableStats, table_warnings

    assert table_warnings(None, TableStats(100, 1000)) == []
    full = table_warnings(None, TableStats(850, 1000))
    assert len(full) == 1 and "85% full" in full[0]
    rising = table_warnings(TableStats(10, 1000, drop=5, early_drop=1), TableStats(10, 1000, drop=9, early_drop=1))
    assert rising == ["conntrack drop rose by 4: the table turned connections away"]
