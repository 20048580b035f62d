"""Data quotas: cycles (month lengths, start_day 31, every N days, a clock that goes back), counting from the WAN
counters (baseline, resets), thresholds told once per cycle, what an ISP over its limit may take, the file's
checks (a bad file never stops the daemon), and the daemon counting, holding back and resetting on a FakeKernel."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from test_daemon_fake import Harness, events, run, settle, status_of

from wanlb import quota
from wanlb.config import parse_config
from wanlb.config.schema import QuotaConfig
from wanlb.daemon import quotas as shell
from wanlb.daemon.surface import Surface
from wanlb.quota import Usage
from wanlb.states import IspStatus

UP, DEGRADED, DOWN, DISABLED = IspStatus.UP, IspStatus.DEGRADED, IspStatus.DOWN, IspStatus.DISABLED
MIB = 1 << 20


def t(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def q(**fields: Any) -> QuotaConfig:
    return QuotaConfig(**{"limit": "100MiB", **fields})


def cycle(quota_config: QuotaConfig, now: float, anchor: float | None = None) -> tuple[datetime, datetime]:
    start, end = quota.bounds(quota_config, anchor, now, UTC)
    return datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)


# --- cycles ---------------------------------------------------------------------------------------------------


def test_a_monthly_cycle_starts_at_midnight_of_start_day() -> None:
    five = q(start_day=5)
    assert cycle(five, t(2024, 6, 10, 12)) == (datetime(2024, 6, 5, tzinfo=UTC), datetime(2024, 7, 5, tzinfo=UTC))
    assert cycle(five, t(2024, 6, 4, 23, 59)) == (datetime(2024, 5, 5, tzinfo=UTC), datetime(2024, 6, 5, tzinfo=UTC))
    assert cycle(five, t(2024, 6, 5))[0] == datetime(2024, 6, 5, tzinfo=UTC)  # midnight itself: the new cycle
    assert cycle(five, t(2025, 1, 2)) == (datetime(2024, 12, 5, tzinfo=UTC), datetime(2025, 1, 5, tzinfo=UTC))
    assert cycle(five, t(2024, 12, 20))[1] == datetime(2025, 1, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        ((2023, 2, 15), (2023, 1, 31), (2023, 2, 28)),  # a short February: its last day
        ((2023, 3, 1), (2023, 2, 28), (2023, 3, 31)),
        ((2024, 2, 29, 12), (2024, 2, 29), (2024, 3, 31)),  # a leap year's
        ((2024, 2, 28), (2024, 1, 31), (2024, 2, 29)),
        ((2024, 4, 30, 1), (2024, 4, 30), (2024, 5, 31)),  # 30 days
        ((2024, 5, 30), (2024, 4, 30), (2024, 5, 31)),
        ((2024, 12, 31), (2024, 12, 31), (2025, 1, 31)),
    ],
)
def test_start_day_31_is_the_last_day_of_a_shorter_month(now: tuple[int, ...], start: tuple[int, ...],
                                                         end: tuple[int, ...]) -> None:  # fmt: skip
    assert cycle(q(start_day=31), t(*now)) == (datetime(*start, tzinfo=UTC), datetime(*end, tzinfo=UTC))


def test_every_n_days_counts_from_the_recorded_start_and_skips_cycles_missed_while_stopped() -> None:
    thirty = q(every="30d")
    anchor = t(2024, 1, 10, 15)
    assert quota.bounds(thirty, None, anchor, UTC) == (anchor, anchor + 30 * 86400)
    assert quota.bounds(thirty, anchor, anchor + 29 * 86400, UTC) == (anchor, anchor + 30 * 86400)
    assert quota.bounds(thirty, anchor, anchor + 95 * 86400, UTC) == (anchor + 90 * 86400, anchor + 120 * 86400)
    assert quota.bounds(thirty, anchor, anchor - 5, UTC) == (anchor, anchor + 30 * 86400)  # a clock gone back
    assert QuotaConfig(limit="1GiB", every="4w").every == 28


def test_a_new_cycle_starts_the_count_again_and_says_so() -> None:
    five = q(start_day=5)
    usage, told = quota.step(five, None, (1000, 2000), t(2024, 6, 20), UTC)
    assert (usage.used, usage.rx, usage.tx, told) == (0, 1000, 2000, [])  # the first reading: the baseline
    usage, told = quota.step(five, usage, (1000 + 30 * MIB, 2000 + 10 * MIB), t(2024, 6, 25), UTC)
    assert usage.used == 40 * MIB and usage.warned == () and told == []
    usage, told = quota.step(five, usage, (1000 + 31 * MIB, 2000 + 10 * MIB), t(2024, 7, 5, 0, 0, 3), UTC)
    assert [n.event for n in told] == ["quota-reset"] and "40.0 MiB counted in the last one" in told[0].reason
    assert usage.used == MIB  # the reading that straddles the boundary counts in the new cycle
    assert (usage.start, usage.end) == (t(2024, 7, 5), t(2024, 8, 5))


def test_a_clock_that_goes_back_keeps_the_cycle_and_the_count() -> None:
    five = q(start_day=5)
    usage = Usage(used=7 * MIB, start=t(2024, 6, 5), end=t(2024, 7, 5), rx=0, tx=0)
    back, told = quota.step(five, usage, (MIB, 0), t(1970, 1, 1, 0, 1), UTC)  # an RTC-less boot before NTP
    assert told == [] and (back.used, back.start, back.end) == (8 * MIB, t(2024, 6, 5), t(2024, 7, 5))
    again, told = quota.step(five, back, (MIB, 0), t(2024, 6, 20), UTC)  # the clock is right again
    assert told == [] and again.used == 8 * MIB and again.start == t(2024, 6, 5)


# --- counting -------------------------------------------------------------------------------------------------


def test_counting_adds_both_directions_since_the_last_reading_and_survives_a_counter_reset() -> None:
    usage = quota.counted(Usage(), 500, 700)
    assert usage.used == 0 and (usage.rx, usage.tx) == (500, 700)  # a fresh quota: history is not counted
    usage = quota.counted(usage, 800, 1700)
    assert usage.used == 1300
    usage = quota.counted(usage, 40, 60)  # both counters below their last reading: reset, counted from zero
    assert usage.used == 1400 and (usage.rx, usage.tx) == (40, 60)
    usage = quota.counted(replace_reading(usage, 0, 0), 10, 20)  # readings as of counters that start from zero
    assert usage.used == 1430


def replace_reading(usage: Usage, rx: int, tx: int) -> Usage:
    return Usage(usage.used, usage.start, usage.end, rx, tx, usage.warned, usage.limited)


def test_without_a_reading_the_cycle_still_moves() -> None:
    usage = Usage(used=5, start=t(2024, 5, 1), end=t(2024, 6, 1), rx=1, tx=1)
    moved, told = quota.step(q(), usage, None, t(2024, 6, 2), UTC)
    assert moved.used == 0 and [n.event for n in told] == ["quota-reset"]


# --- thresholds -----------------------------------------------------------------------------------------------


def test_each_threshold_and_the_limit_are_told_once_per_cycle() -> None:
    cfg = q(warn=["50%", "90%"], at_limit="drop")
    usage, _ = quota.step(cfg, None, (0, 0), t(2024, 6, 2), UTC)
    seen: list[str] = []
    for mib in (10, 49, 50, 60, 89, 95, 99, 100, 130, 140):
        usage, told = quota.step(cfg, usage, (mib * MIB, 0), t(2024, 6, 3), UTC)
        seen += [f"{mib}: {n.event}" for n in told]
    assert seen == ["50: quota-warning", "95: quota-warning", "100: quota-limit"]
    assert usage.limited and usage.warned == (50.0, 90.0)
    usage, told = quota.step(cfg, usage, (141 * MIB, 0), t(2024, 7, 1, 0, 1), UTC)  # a new cycle: told again
    assert [n.event for n in told] == ["quota-reset"] and not usage.limited and usage.warned == ()
    usage, told = quota.step(cfg, usage, (300 * MIB, 0), t(2024, 7, 2), UTC)  # one jump past all of them
    assert [n.event for n in told] == ["quota-warning", "quota-warning", "quota-limit"]
    assert "it takes no NEW connections" in told[-1].reason and "its connections continue" in told[-1].reason


def test_a_reload_that_raises_the_limit_above_the_count_frees_the_isp() -> None:
    usage = Usage(used=120 * MIB, start=t(2024, 6, 1), end=t(2024, 7, 1), rx=0, tx=0, warned=(75.0, 95.0),
                  limited=True)  # fmt: skip
    freed, told = quota.step(q(limit="200MiB"), usage, (0, 0), t(2024, 6, 5), UTC)
    assert not freed.limited and [n.event for n in told] == ["quota-reset"] and "below its new limit" in told[0].reason


def test_a_manual_reset_starts_the_count_again_and_an_every_cycle_with_it() -> None:
    monthly = Usage(used=99, start=t(2024, 6, 1), end=t(2024, 7, 1), rx=5, tx=6, warned=(75.0,), limited=True)
    fresh, notice = quota.reset(q(), monthly, t(2024, 6, 9), UTC)
    assert fresh == Usage(0, t(2024, 6, 1), t(2024, 7, 1), 5, 6) and notice.event == "quota-reset"
    fresh, notice = quota.reset(q(every=30), monthly, t(2024, 6, 9), UTC)
    assert (fresh.start, fresh.end) == (t(2024, 6, 9), t(2024, 7, 9)) and "new 30-day cycle" in notice.reason


# --- held back ------------------------------------------------------------------------------------------------

CONFIG = """\
lan: {interfaces: [lan0]}
isps:
  - {name: a, interface: wan1, quota: {limit: 1MiB, at_limit: AT}}
  - {name: b, interface: wan2, quota: {limit: 1MiB, at_limit: standby}}
  - {name: c, interface: wan3}
"""


@pytest.mark.parametrize(
    ("at_limit", "statuses", "over", "held"),
    [
        ("standby", {"a": UP, "b": UP, "c": UP}, {"a"}, {"a": DISABLED, "b": UP, "c": UP}),
        ("standby", {"a": UP, "b": UP, "c": DEGRADED}, {"a"}, {"a": DISABLED, "b": UP, "c": DEGRADED}),
        ("standby", {"a": UP, "b": DOWN, "c": DOWN}, {"a"}, {"a": UP, "b": DOWN, "c": DOWN}),  # nothing else left
        ("standby", {"a": UP, "b": UP, "c": DOWN}, {"a", "b"}, {"a": UP, "b": UP, "c": DOWN}),  # both: they share
        ("standby", {"a": DOWN, "b": UP, "c": UP}, {"a"}, {"a": DOWN, "b": UP, "c": UP}),
        ("last-resort", {"a": UP, "b": UP, "c": UP}, {"a"}, {"a": DEGRADED, "b": UP, "c": UP}),
        ("last-resort", {"a": UP, "b": DOWN, "c": DEGRADED}, {"a"}, {"a": DEGRADED, "b": DOWN, "c": DEGRADED}),
        # b is standby: a last-resort ISP is usable, so b yields to it (standby is the stricter of the two)
        ("last-resort", {"a": UP, "b": UP, "c": DOWN}, {"a", "b"}, {"a": DEGRADED, "b": DISABLED, "c": DOWN}),
        ("drop", {"a": UP, "b": DOWN, "c": DOWN}, {"a"}, {"a": DISABLED, "b": DOWN, "c": DOWN}),  # even alone
        ("drop", {"a": UP, "b": UP, "c": UP}, set(), {"a": UP, "b": UP, "c": UP}),  # under its limit
    ],
)
def test_an_isp_over_its_quota_is_held_back_as_at_limit_says(
    at_limit: str, statuses: dict[str, IspStatus], over: set[str], held: dict[str, IspStatus]
) -> None:
    config = parse_config(CONFIG.replace("AT", at_limit))
    usages = {name: Usage(used=MIB if name in over else MIB - 1) for name in ("a", "b")}
    assert quota.held_back(config, usages, statuses) == held


# --- the file -------------------------------------------------------------------------------------------------

GOOD = {"version": 1, "boot": "b1", "isps": {"a": {"used": 5, "start": 1.5e9, "rx": 10, "tx": 20,
                                                   "warned": [75], "limited": False}}}  # fmt: skip


def test_the_counts_round_trip_and_another_boot_restarts_the_readings() -> None:
    usages = quota.parse(GOOD, "b1")
    assert usages == {"a": Usage(5, 1.5e9, 0.0, 10, 20, (75.0,), False)}
    assert quota.parse(quota.to_json(usages, "b1"), "b1") == usages
    assert quota.parse(GOOD, "b2")["a"].rx == 0 and quota.parse(GOOD, "b2")["a"].tx == 0  # counters from zero
    assert quota.restarted(usages)["a"].rx == 0


@pytest.mark.parametrize(
    ("path", "value", "why"),
    [
        (("used",), -1, "a.used must be a whole number of bytes"),
        (("used",), 1 << 63, "a.used must be a whole number of bytes, 0..2^63-1"),
        (("used",), "5", "a.used must be a whole number"),
        (("used",), 5.0, "a.used must be a whole number"),
        (("used",), True, "a.used must be a whole number"),
        (("rx",), -3, "a.rx must be a whole number"),
        (("start",), "yesterday", "a.start must be a time"),
        (("start",), float("nan"), "a.start must be a time"),
        (("start",), 1e12, "a.start must be a time"),
        (("warned",), [150], "a.warned must be a list of percentages"),
        (("warned",), "75", "a.warned must be a list of percentages"),
        (("limited",), "no", "a.limited must be true or false"),
        ((), [], "a: must be an object"),
    ],
)
def test_a_bad_count_is_refused_naming_the_field(path: tuple[str, ...], value: Any, why: str) -> None:
    data = json.loads(json.dumps(GOOD))
    if path:
        data["isps"]["a"][path[0]] = value
    else:
        data["isps"]["a"] = value
    with pytest.raises(ValueError, match=why.replace("^", r"\^").replace(".", r"\.")):
        quota.parse(data, "b1")


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe\x00",
        b"[]",
        b'{"version": 2, "isps": {}}',
        json.dumps({**GOOD, "isps": {"a": {**GOOD["isps"]["a"], "used": -5}}}).encode(),
        json.dumps({**GOOD, "isps": {"A B": {}}}).encode(),
        b"[" * 100_000,
        b" " * (shell.MAX_FILE_BYTES + 1),
    ],
)
def test_a_bad_file_is_kept_aside_and_counting_starts_again(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "quota.json"
    path.write_bytes(content)
    usages, problem = shell.load(path, "b1")
    assert usages == {} and problem is not None
    assert f"kept as {path}.bad" in problem and "counting starts again from zero" in problem
    assert not path.exists() and (tmp_path / "quota.json.bad").read_bytes() == content
    shell.save(path, quota.to_json({"a": Usage(1, 2.0)}, "b1"))  # the next write starts a fresh file
    assert shell.load(path, "b1") == ({"a": Usage(1, 2.0)}, None)
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_no_file_is_no_count_and_a_directory_others_may_write_is_not_trusted(tmp_path: Path) -> None:
    assert shell.load(tmp_path / "quota.json", "b1") == ({}, None)
    (tmp_path / "quota.json").write_text(json.dumps(GOOD))
    tmp_path.chmod(0o777)
    usages, problem = shell.load(tmp_path / "quota.json", "b1")
    assert usages == {} and "writable by group or others" in str(problem)
    assert (tmp_path / "quota.json").exists()  # not the file's fault: left where it is
    with pytest.raises(OSError, match="refusing to write"):
        shell.save(tmp_path / "quota.json", GOOD)


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "elsewhere.json").write_text(json.dumps(GOOD))
    (tmp_path / "quota.json").symlink_to(tmp_path / "elsewhere.json")
    usages, problem = shell.load(tmp_path / "quota.json", "b1")
    assert usages == {} and "cannot be opened" in str(problem)
    assert (tmp_path / "elsewhere.json").exists() and (tmp_path / "quota.json.bad").is_symlink()


# --- the daemon -----------------------------------------------------------------------------------------------

DAEMON = """\
lan: {interfaces: [lan0]}
isps:
  - {name: a, interface: wan1, gateway: 100.64.1.1, quota: {limit: 5MiB, warn: [50%], at_limit: standby}}
  - {name: b, interface: wan2, gateway: 100.64.2.1}
control: {socket: SOCKET, data_dir: DATA}
"""


def traffic(h: Harness, isp: str, rx: int, tx: int) -> None:
    counters = h.kernel.tables["wanlb"].counters
    counters[f"isp_{isp}_rx"][1] += rx
    counters[f"isp_{isp}_tx"][1] += tx


def test_the_daemon_counts_holds_back_without_a_flush_persists_and_resets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(tmp_path, monkeypatch, DAEMON.replace("DATA", str(tmp_path / "data")))

    async def test() -> None:
        d = h.build()
        counting = shell.Quotas(d)
        await counting.restore()
        await d.reconcile("start")
        await counting.sync()
        assert "isp_a" in h.balance() and "isp_b" in h.balance()
        traffic(h, "a", 2 * MIB, MIB)
        traffic(h, "b", 50 * MIB, 50 * MIB)  # another ISP's traffic is not a's
        await counting.sync()
        assert [e["event"] for e in events(d)] == ["quota-warning"]
        traffic(h, "a", 2 * MIB, 0)
        h.kernel.calls.clear()
        await counting.sync()
        assert "isp_a" not in h.balance() and "isp_b" in h.balance()  # no NEW connections while b is usable
        assert not [c for c in h.kernel.calls if c[0] == "ct_flush"]  # its connections stay
        limit = events(d)[-1]
        assert (limit["isp"], limit["event"], limit["status"], limit["from"]) == ("a", "quota-limit", "up", "up")
        [a, _] = status_of(d)["isps"]
        assert (a["status"], a["active"]) == ("up", False)
        assert a["quota"]["used_bytes"] == 5 * MIB and a["quota"]["exceeded"] and a["quota"]["percent"] == 100.0
        metrics = Surface(d).metrics_text(Surface(d).snapshot(), {}).decode()
        assert 'wanlb_isp_quota_used_bytes{isp="a"} 5.24288e+06' in metrics
        assert 'wanlb_isp_quota_exceeded{isp="a"} 1.0' in metrics and 'quota_used_bytes{isp="b"}' not in metrics

        # A restart (the kernel's counters kept counting meanwhile) finds the count and holds a back at once.
        traffic(h, "a", MIB, 0)
        h2 = shell.Quotas(d)
        d.fleet.restore_quotas({})
        await h2.restore()
        assert d.fleet.quotas["a"].used == 5 * MIB and "a" not in {n for n, s in d.fleet.balancing().items() if
                                                                   s.usable}  # fmt: skip
        await h2.sync()
        assert d.fleet.quotas["a"].used == 6 * MIB

        reply = await Surface(d, h2).handle({"cmd": "quota_reset", "isp": "a"})
        assert reply == {"ok": True, "message": "a: quota count reset"}
        await settle(d)
        assert "isp_a" in h.balance() and events(d)[-1]["event"] == "quota-reset"
        assert json.loads((tmp_path / "data" / "quota.json").read_text())["isps"]["a"]["used"] == 0
        assert (await Surface(d, h2).handle({"cmd": "quota_reset", "isp": "b"}))["error"] == "b has no quota " \
            "(isps[].quota)"  # fmt: skip
        assert (await Surface(d, h2).handle({"cmd": "quota_reset", "isp": "x"}))["error"] == "no ISP named 'x'"

    run(test)


def test_a_stop_with_cleanup_writes_readings_of_counters_that_start_from_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(tmp_path, monkeypatch, DAEMON.replace("DATA", str(tmp_path / "data")))

    async def test() -> None:
        d = h.build()
        counting = shell.Quotas(d)
        await counting.restore()
        await d.reconcile("start")
        traffic(h, "a", 3 * MIB, 0)
        await counting.sync()
        traffic(h, "a", MIB, 0)
        await counting.stop(cleanup=True)
        saved = json.loads((tmp_path / "data" / "quota.json").read_text())["isps"]["a"]
        assert (saved["used"], saved["rx"], saved["tx"]) == (MIB, 0, 0)  # (the first reading was the baseline)

    run(test)


def test_a_reload_that_lifts_the_quota_frees_the_isp_at_once_and_the_file_forgets_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = DAEMON.replace("DATA", str(tmp_path / "data"))
    h = Harness(tmp_path, monkeypatch, text)

    async def test() -> None:
        d = h.build()
        counting = shell.Quotas(d)
        await counting.restore()
        await d.reconcile("start")
        await counting.sync()
        traffic(h, "a", 6 * MIB, 0)
        await counting.sync()
        assert "isp_a" not in h.balance()
        h.write(text.replace("quota: {limit: 5MiB, warn: [50%], at_limit: standby}", "weight: 1"))
        assert (await d.reload()) == (True, "reloaded")
        assert "isp_a" in h.balance()  # the reload's own reconcile: no quota holds it any more
        await counting.sync()
        assert d.fleet.quotas == {}
        assert json.loads((tmp_path / "data" / "quota.json").read_text())["isps"] == {}

    run(test)


def test_status_and_top_show_the_quota_compactly() -> None:
    from rich.console import Console

    from wanlb.cli import status_report
    from wanlb.top import Sample, TopModel, isp_table, standby_note
    from wanlb.view import Isp, Status
    from wanlb.view import Quota as QuotaView

    over = QuotaView(6 * MIB, 5 * MIB, 120.0, "monthly from day 5", t(2024, 6, 5), t(2024, 7, 5), "standby", True)
    isps = (Isp(name="lte", interface="wwan0", active=False, quota=over), Isp(name="fibre", interface="eth1"))
    console = Console(width=200, record=True)
    for part in status_report(Status(isps=isps), None, 100):
        console.print(part, markup=False)
    text = console.export_text()
    assert "up (over quota)" in text and "120% of 5.0 MiB" in text and "quotas:" in text
    quotas = " ".join(text.split("quotas:")[1].split())
    assert quotas.startswith(f"lte: 6.0 MiB of 5.0 MiB (120%), monthly from day 5, ends {quota.when(t(2024, 7, 5))}")
    assert "REACHED, held back: standby" in quotas and "fibre" not in quotas  # (no quota, no line)
    assert standby_note(Isp(active=True, quota=over)) == " (over quota, in use)"  # nothing else usable
    model = TopModel()
    model.update(Sample(1.0, Status(isps=isps)))
    console = Console(width=200, record=True)
    console.print(isp_table(model, t(2024, 6, 20), 200))
    top = console.export_text()
    assert "quota" in top and "120% of 5.0 MiB" in top and "up (over quota)" in top
