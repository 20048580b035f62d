"""Schedules (``when`` on rules and policies): which are in effect at an instant, the next boundary exactly
(across DST in Europe/Berlin, across midnight), the config errors, the ruleset without the rules that are
off, and the daemon switching at a boundary (a fake wall clock) without touching a connection."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_daemon_fake import CONFIG, Harness, run, settle
from test_rules_compile import evaluator, first_match, packets_for, resolution, rule_lists, verdict

from wanlb import runtime, schedule
from wanlb.config import Config, ConfigError, RuleConfig, WhenConfig, parse_config
from wanlb.daemon import main as daemon_main
from wanlb.daemon.surface import Surface
from wanlb.nftsync import full_text
from wanlb.plan import plan
from wanlb.render import render
from wanlb.rules import compile_rules

BERLIN = "Europe/Berlin"


def at(text: str) -> float:
    """Unix time of an ISO 8601 instant with its offset (``2025-03-30T01:00:00+00:00``)."""
    return datetime.fromisoformat(text).timestamp()


def utc(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def flips(when: WhenConfig, start: str, n: int) -> list[tuple[str | None, bool]]:
    """The next ``n`` boundaries after ``start`` (UTC) and whether the window is open after each."""
    out, t = [], at(start)
    for _ in range(n):
        t = schedule.next_flip(when, t)
        out.append((utc(t), schedule.is_open(when, t) if t is not None else False))
        if t is None:
            break
    return out


# --- a window at an instant ---------------------------------------------------------------------------------


def test_office_hours_in_berlin_are_wall_clock_hours_winter_and_summer() -> None:
    office = WhenConfig(days=["mon-fri"], time="08:00-18:00", tz=BERLIN)
    assert schedule.is_open(office, at("2025-01-06T08:00:00+01:00"))  # Monday, opens at 08:00 sharp
    assert not schedule.is_open(office, at("2025-01-06T07:59:59+01:00"))
    assert not schedule.is_open(office, at("2025-01-06T18:00:00+01:00"))  # [from, to): closed at 18:00
    assert schedule.is_open(office, at("2025-07-07T17:59:59+02:00"))  # summer time: still Berlin's 17:59
    assert not schedule.is_open(office, at("2025-01-11T12:00:00+01:00"))  # Saturday
    # a UTC instant that is Monday in Berlin but Sunday in New York
    assert schedule.is_open(office, at("2025-01-06T07:30:00+00:00"))


def test_a_window_across_midnight_belongs_to_the_day_it_starts_on() -> None:
    night = WhenConfig(days=["fri"], time="22:00-06:00", tz="UTC")
    assert schedule.is_open(night, at("2025-01-03T23:00:00+00:00"))  # Friday night
    assert schedule.is_open(night, at("2025-01-04T05:59:59+00:00"))  # Saturday morning: Friday's window
    assert not schedule.is_open(night, at("2025-01-04T06:00:00+00:00"))
    assert not schedule.is_open(night, at("2025-01-04T23:00:00+00:00"))  # Saturday night: not a Friday
    assert not schedule.is_open(night, at("2025-01-03T05:00:00+00:00"))  # Friday morning: Thursday's would be
    assert flips(night, "2025-01-01T00:00:00+00:00", 3) == [
        ("2025-01-03 22:00:00", True),
        ("2025-01-04 06:00:00", False),
        ("2025-01-10 22:00:00", True),
    ]


def test_days_alone_are_whole_local_days_and_time_alone_every_day() -> None:
    weekend = WhenConfig(days=["sat-sun"], tz=BERLIN)  # a range across nothing; sat-mon would wrap the week
    assert flips(weekend, "2025-01-08T00:00:00+00:00", 2) == [
        ("2025-01-10 23:00:00", True),  # Saturday 00:00 in Berlin
        ("2025-01-12 23:00:00", False),  # Monday 00:00
    ]
    lunch = WhenConfig(time="12:00-13:00", tz="UTC")
    assert [t for t, _ in flips(lunch, "2025-01-04T12:30:00+00:00", 3)] == [
        "2025-01-04 13:00:00",
        "2025-01-05 12:00:00",
        "2025-01-05 13:00:00",
    ]
    always = WhenConfig(days=["mon-sun"])
    assert schedule.next_flip(always, at("2025-01-04T12:30:00+00:00")) is None


# --- DST: Europe/Berlin springs forward on 2025-03-30 at 01:00 UTC and falls back on 2025-10-26 at 01:00 UTC ---


def test_office_hours_follow_the_clock_change_to_the_second() -> None:
    office = WhenConfig(days=["mon-fri"], time="08:00-18:00", tz=BERLIN)
    assert flips(office, "2025-03-28T12:00:00+00:00", 3) == [
        ("2025-03-28 17:00:00", False),  # Friday 18:00 CET
        ("2025-03-31 06:00:00", True),  # Monday 08:00 CEST: an hour earlier in UTC
        ("2025-03-31 16:00:00", False),
    ]
    assert flips(office, "2025-10-24T12:00:00+00:00", 2) == [
        ("2025-10-24 16:00:00", False),  # Friday 18:00 CEST
        ("2025-10-27 07:00:00", True),  # Monday 08:00 CET
    ]


def test_a_boundary_in_the_skipped_hour_takes_effect_at_the_jump() -> None:
    early = WhenConfig(days=["sun"], time="02:30-04:00", tz=BERLIN)
    assert flips(early, "2025-03-29T12:00:00+00:00", 2) == [
        ("2025-03-30 01:00:00", True),  # 02:00 CET jumps to 03:00 CEST: past 02:30 at once
        ("2025-03-30 02:00:00", False),  # 04:00 CEST
    ]
    inside = WhenConfig(days=["sun"], time="02:10-02:50", tz=BERLIN)  # never read on that Sunday
    assert flips(inside, "2025-03-29T12:00:00+00:00", 1) == [("2025-04-06 00:10:00", True)]


def test_the_repeated_hour_is_inside_a_window_both_times() -> None:
    repeated = WhenConfig(time="02:30-02:45", tz=BERLIN)
    assert flips(repeated, "2025-10-25T23:00:00+00:00", 5) == [
        ("2025-10-26 00:30:00", True),  # 02:30 CEST
        ("2025-10-26 00:45:00", False),
        ("2025-10-26 01:30:00", True),  # 02:30 CET, an hour later
        ("2025-10-26 01:45:00", False),
        ("2025-10-27 01:30:00", True),
    ]
    # a window that ends inside the repeated hour closes, opens again when the clock goes back, closes again
    across = WhenConfig(time="01:00-02:30", tz=BERLIN)
    assert flips(across, "2025-10-25T22:00:00+00:00", 4) == [
        ("2025-10-25 23:00:00", True),  # 01:00 CEST
        ("2025-10-26 00:30:00", False),  # 02:30 CEST
        ("2025-10-26 01:00:00", True),  # 03:00 CEST is 02:00 CET: inside again
        ("2025-10-26 01:30:00", False),  # 02:30 CET
    ]


windows = st.builds(
    lambda days, start, length, tz: WhenConfig(
        days=days,
        time=f"{start // 60:02d}:{start % 60:02d}-{(start + length) % 1440 // 60:02d}:{(start + length) % 60:02d}",
        tz=tz,
    ),
    st.lists(st.sampled_from(["mon", "tue-thu", "fri-sun", "sat", "sun-mon"]), max_size=2),
    st.integers(0, 1439),
    st.integers(1, 1439),
    st.sampled_from([BERLIN, "UTC", "America/New_York", "Australia/Lord_Howe"]),  # (Lord Howe: 30-minute DST)
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(when=windows, start=st.sampled_from(["2025-03-27", "2025-10-23", "2025-04-03", "2025-11-01"]))
def test_next_flip_is_the_first_minute_a_scan_of_the_clock_sees_change(when: WhenConfig, start: str) -> None:
    """Boundaries and zone transitions fall on whole minutes: scanning minute by minute finds each flip."""
    t = at(f"{start}T00:00:00+00:00")
    for _ in range(3):
        flip = schedule.next_flip(when, t)
        state, scan = schedule.is_open(when, t), t + 60
        while scan < t + 9 * 86400 and schedule.is_open(when, scan) == state:
            scan += 60
        assert flip == (scan if scan < t + 9 * 86400 else None), (when, utc(t))
        if flip is None:
            return
        t = flip


# --- rules and policies of a config --------------------------------------------------------------------------

BASE = """\
lan: {interfaces: [lan0]}
isps:
  - {name: a, interface: wan1, gateway: 100.64.1.1}
  - {name: b, interface: wan2, gateway: 100.64.2.1}
"""
SCHEDULED = (
    BASE
    + """\
policies:
  nights: {members: [{isp: b}], when: {time: 22:00-06:00, tz: UTC}}
rules:
  - {name: office, src: [192.168.77.11], via: b, when: {days: mon-fri, time: 08:00-18:00, tz: UTC}}
  - {name: backups, dport: [873], policy: nights}
  - {name: office-nights, src: [192.168.77.12], policy: nights, when: {days: mon-fri, tz: UTC}}
  - {name: always, src: [192.168.77.13], via: a}
"""
)


def cfg(text: str = SCHEDULED) -> Config:
    return parse_config(text, "c.yaml")


def test_a_policy_off_takes_every_rule_that_sends_to_it_with_it() -> None:
    config = cfg()
    monday_noon = at("2025-01-06T12:00:00+00:00")
    assert schedule.inactive(config, monday_noon) == schedule.Inactive(
        frozenset({"backups", "office-nights"}), frozenset({"nights"})
    )
    monday_night = at("2025-01-06T23:00:00+00:00")
    assert schedule.inactive(config, monday_night) == schedule.Inactive(frozenset({"office"}), frozenset())
    saturday_night = at("2025-01-11T23:00:00+00:00")  # the policy is on, the rule's own days are not
    assert schedule.inactive(config, saturday_night).rules == {"office", "office-nights"}
    assert schedule.inactive(cfg(BASE), monday_noon) == schedule.ALL_ON


def test_next_change_is_the_nearest_boundary_of_any_window() -> None:
    config = cfg()
    assert utc(schedule.next_change(config, at("2025-01-06T12:00:00+00:00"))) == "2025-01-06 18:00:00"
    assert utc(schedule.next_change(config, at("2025-01-06T19:00:00+00:00"))) == "2025-01-06 22:00:00"
    assert utc(schedule.next_change(config, at("2025-01-10T23:00:00+00:00"))) == "2025-01-11 00:00:00"  # mon-fri
    assert schedule.next_change(cfg(BASE), at("2025-01-06T12:00:00+00:00")) is None


def test_a_rule_is_on_while_its_window_and_its_policys_are_both_open() -> None:
    config = cfg()
    rule = next(r for r in config.rules if r.name == "office-nights")
    whens = schedule.rule_whens(config, rule)
    assert len(whens) == 2
    friday_noon = schedule.switch(whens, at("2025-01-10T12:00:00+00:00"))
    assert friday_noon == schedule.Switch(False, at("2025-01-10T22:00:00+00:00"))
    friday_night = schedule.switch(whens, at("2025-01-10T22:00:00+00:00"))
    assert friday_night == schedule.Switch(True, at("2025-01-11T00:00:00+00:00"))  # Saturday: its days end
    weekend = schedule.switch(whens, at("2025-01-11T12:00:00+00:00"))  # policy flips at 22:00 and 06:00: no matter
    assert weekend == schedule.Switch(False, at("2025-01-13T00:00:00+00:00"))
    never = schedule.switch((WhenConfig(days=["mon"]), WhenConfig(days=["tue"])), at("2025-01-06T12:00:00+00:00"))
    assert never == schedule.Switch(False, None)


def test_windows_read_back_as_written() -> None:
    assert schedule.describe(WhenConfig(days=["mon-fri"], time="08:00-18:00", tz=BERLIN)) == (
        "mon-fri 08:00-18:00 Europe/Berlin"
    )
    assert schedule.describe(WhenConfig(days=["sat", "sun", "wed"])) == "wed,sat,sun local time"
    assert schedule.describe(WhenConfig(time="22:00:30-06:00")) == "every day 22:00:30-06:00 local time"


def test_without_tz_the_system_zone_is_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    schedule.system_zone.cache_clear()
    monkeypatch.setenv("TZ", BERLIN)
    try:
        office = WhenConfig(time="08:00-18:00")
        assert schedule.is_open(office, at("2025-07-07T06:30:00+00:00"))  # 08:30 in Berlin, 06:30 in UTC
        monkeypatch.setenv("TZ", "Nowhere/Atlantis")  # what glibc does too: UTC
        schedule.system_zone.cache_clear()
        assert not schedule.is_open(office, at("2025-07-07T06:30:00+00:00"))
    finally:
        schedule.system_zone.cache_clear()


# --- config errors, in the router's words ---------------------------------------------------------------------


def rows(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    return str(info.value).splitlines()


RULE = BASE + "rules:\n  - {name: r, via: a, when: WHEN}\n"


@pytest.mark.parametrize(
    ("when", "row"),
    [
        ("{days: mon-fry}", "c.yaml:6: rules[r].when.days[1]: 'mon-fry' is not a day or a range of days: use mon, "
         "tue, wed, thu, fri, sat, sun or a range like mon-fri"),
        ("{days: [mon, 3]}", "c.yaml:6: rules[r].when.days[2]: 3 is not a day or a range of days: use mon, tue, "
         "wed, thu, fri, sat, sun or a range like mon-fri"),
        ("{time: 22:00}", "c.yaml:6: rules[r].when.time: a single time is not a window (YAML read 22:00 as the "
         "number 1320): give from-to, like 08:00-18:00"),
        ("{time: 8am-6pm}", "c.yaml:6: rules[r].when.time: '8am-6pm' is not a time window: give from-to in 24-hour "
         "time, like 08:00-18:00 or 22:00-06:00"),
        ("{time: 08:00-25:00}", "c.yaml:6: rules[r].when.time: 25:00 is not a time of day (00:00 to 23:59:59, or "
         "24:00)"),
        ("{time: 24:00-06:00}", "c.yaml:6: rules[r].when.time: 24:00 is not a time of day (00:00 to 23:59:59)"),
        ("{time: 09:75-10:00}", "c.yaml:6: rules[r].when.time: 09:75 is not a time of day (00:00 to 23:59:59)"),
        ("{time: 08:00-08:00}", "c.yaml:6: rules[r].when.time: 08:00-08:00 is empty (from and to are the same "
         "time); for all day, leave time out"),
        ("{days: mon, tz: Europe/Berln}", "c.yaml:6: rules[r].when.tz: 'Europe/Berln' is not a time zone (did you "
         "mean Europe/Berlin?): give an IANA name like Europe/Berlin or UTC"),
        ("{days: mon, tz: europe/berlin}", "c.yaml:6: rules[r].when.tz: 'europe/berlin' is not a time zone (did "
         "you mean Europe/Berlin?): give an IANA name like Europe/Berlin or UTC"),
        ("{days: mon, tz: +02:00}", "c.yaml:6: rules[r].when.tz: '+02:00' is not a time zone: give an IANA name "
         "like Europe/Berlin or UTC"),
        ("{tz: UTC}", "c.yaml:6: rules[r].when: give days (like mon-fri), time (like 08:00-18:00) or both"),
        ("mon-fri", "c.yaml:6: rules[r].when: expected a mapping (keys: days, time, tz), got 'mon-fri'"),
        ("{day: mon}", "c.yaml:6: rules[r].when.day: unknown key (did you mean days?)"),
        ("{days: {mon: 1}}", "c.yaml:6: rules[r].when.days: expected a list of days (mon, tue, …, sun) or ranges of "
         "days (mon-fri), got a mapping"),
    ],
)  # fmt: skip
def test_bad_windows_are_config_errors_that_say_what_is_allowed(when: str, row: str) -> None:
    assert rows(RULE.replace("WHEN", when)) == [row]


def test_a_policys_window_is_checked_too_and_every_error_comes_at_once() -> None:
    text = BASE + (
        "policies:\n  p: {members: [{isp: a}], when: {days: weekdays}}\n"
        "rules:\n  - {name: r, policy: p, when: {time: 18:00-8:00pm}}\n"
    )
    assert rows(text) == [
        "c.yaml:6: policies[p].when.days[1]: 'weekdays' is not a day or a range of days: use mon, tue, wed, thu, "
        "fri, sat, sun or a range like mon-fri",
        "c.yaml:8: rules[r].when.time: '18:00-8:00pm' is not a time window: give from-to in 24-hour time, like "
        "08:00-18:00 or 22:00-06:00",
    ]


def test_good_windows_in_every_spelling() -> None:
    when = cfg(RULE.replace("WHEN", "{days: [Monday, wed-fri, sun], time: ' 7:30 - 24:00 '}")).rules[0].when
    assert when is not None and when.weekdays == {0, 2, 3, 4, 6} and when.time == (27000, 86400) and when.tz is None
    wrapping = cfg(RULE.replace("WHEN", "{days: fri-mon, time: '08:00:05-08:00:10', tz: UTC}")).rules[0].when
    assert wrapping is not None and wrapping.weekdays == {4, 5, 6, 0} and wrapping.time == (28805, 28810)


# --- the ruleset: a rule that is off takes no place in from_lan, and keeps its chain and counter ------------------


def test_an_inactive_rule_is_not_looked_up_and_its_neighbours_merge() -> None:
    config = cfg()
    state = runtime.allocate(config, None, reload=False).state
    noon = full_text(render(plan(config, state, inactive=schedule.inactive(config, at("2025-01-06T12:00:00Z")))).nft)
    night = full_text(render(plan(config, state, inactive=schedule.inactive(config, at("2025-01-06T23:00:00Z")))).nft)
    for text in (noon, night):  # every rule keeps its chain and named counter (its hits survive the night)
        for name in ("office", "backups", "office-nights", "always"):
            assert f"add counter inet wanlb rule_{name}" in text and f"add chain inet wanlb rule_{name}" in text
    assert "192.168.77.11 : goto rule_office, 192.168.77.13 : goto rule_always" in noon  # one map, office on
    assert "873 : goto rule_backups" not in noon and "rule_office-nights" not in noon.split("from_lan")[-1]
    assert "192.168.77.11 : goto rule_office" not in night and "873 : goto rule_backups" in night
    assert "192.168.77.12 : goto rule_office-nights" in night


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=rule_lists(), seed=st.integers(0, 2**32))
def test_skipping_inactive_rules_is_first_match_over_the_active_ones(rules: list[RuleConfig], seed: int) -> None:
    rng = random.Random(seed)
    resolved = resolution(rng)
    off = frozenset(r.name for r in rules if rng.random() < 0.4)
    compiled = compile_rules(rules, verdict, inactive=off)
    ev = evaluator(compiled, rules, resolved)  # (it checks every rule still has its chain and counter)
    active = [r for r in rules if r.name not in off]
    for p in packets_for(rules, rng, resolved):
        assert ev.target(p) == first_match(active, p, resolved), (p, off, compiled.lookups)


# --- the daemon: at a boundary it switches, and never flushes ------------------------------------------------

# (iif keeps it a rule of its own, not a map element: its lookup in from_lan names its chain)
OFFICE = CONFIG + "rules:\n  - {name: office, iif: [lan0], via: b, when: {time: 'WINDOW', tz: UTC}}\n"


class Wall:
    """A wall clock that runs with the real one from ``start`` (the daemon's timer sleeps in real time)."""

    def __init__(self, start: float) -> None:
        self.start, self.began = start, time.monotonic()

    def __call__(self) -> float:
        return self.start + time.monotonic() - self.began


def window_from(t: float, seconds: int) -> str:
    """A ``time:`` window from ``t`` (UTC, whole seconds) lasting ``seconds``."""
    start = datetime.fromtimestamp(t, UTC)
    return f"{start:%H:%M:%S}-{start + timedelta(seconds=seconds):%H:%M:%S}"


async def wait_until(condition: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.02)


def test_the_daemon_switches_a_rule_at_its_boundaries_without_a_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opens = at("2025-01-06T08:00:00+00:00")
    h = Harness(tmp_path, monkeypatch, OFFICE.replace("WINDOW", window_from(opens, 1)))

    async def test() -> None:
        d = h.build()
        d.wall = Wall(opens - 0.5)  # half a second before the window opens

        def office_on() -> bool:
            return any("rule_office" in line for line in h.kernel.nft_rules("from_lan"))

        await d.reconcile("start")
        assert not office_on()
        timer = asyncio.create_task(daemon_main._follow_schedules(d))
        try:
            await wait_until(office_on)  # at 08:00:00, by the timer (no resync runs here)
            assert d.wall() >= opens
            rule = Surface(d).snapshot().rules[0]
            assert rule.schedule is not None and rule.schedule.active
            assert rule.schedule.changes_at == opens + 1 and rule.schedule.when == "every day 08:00-08:00:01 UTC"
            await wait_until(lambda: not office_on())  # and off again a second later
            assert d.wall() >= opens + 1
        finally:
            timer.cancel()
        await settle(d)
        assert h.flushes() == []  # established connections keep their ISP: nothing is flushed

    run(test)


def test_an_adopted_config_re_arms_the_timer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(tmp_path, monkeypatch, CONFIG)
    opens = at("2025-01-06T08:00:00+00:00")

    async def test() -> None:
        d = h.build()
        d.wall = Wall(opens - 0.5)
        await d.reconcile("start")
        timer = asyncio.create_task(daemon_main._follow_schedules(d))  # nothing scheduled: it sleeps for good
        try:
            await asyncio.sleep(0)
            h.write(OFFICE.replace("WINDOW", window_from(opens, 3600)))
            ok, _ = await d.reload()  # adopted at 07:59:59.5: office still off
            assert ok and not any("rule_office" in line for line in h.kernel.nft_rules("from_lan"))
            await wait_until(lambda: any("rule_office" in line for line in h.kernel.nft_rules("from_lan")))
        finally:
            timer.cancel()
        await settle(d)

    run(test)


def test_the_resync_repairs_a_boundary_the_timer_missed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opens = at("2025-01-06T08:00:00+00:00")
    h = Harness(tmp_path, monkeypatch, OFFICE.replace("WINDOW", window_from(opens, 3600)))

    async def test() -> None:
        d = h.build()
        clock = [opens - 60.0]
        d.wall = lambda: clock[0]
        await d.reconcile("start")
        assert not any("rule_office" in line for line in h.kernel.nft_rules("from_lan"))
        clock[0] = opens + 5  # the clock jumped past the boundary; no timer runs
        await d.resync()
        assert any("rule_office" in line for line in h.kernel.nft_rules("from_lan"))
        await settle(d)

    run(test)


def test_status_says_when_each_scheduled_rule_and_policy_switches() -> None:
    from rich.console import Console

    from wanlb import cli, view

    closes, opens = at("2025-01-06T18:00:00+00:00"), at("2025-01-06T22:00:00+00:00")
    status = view.Status(
        policies=(view.Policy("nights", active={"b": 1}, schedule=view.Schedule("every day 22:00-06:00 UTC", False,
                                                                                 opens)),),
        rules=(
            view.Rule("office", "via b", 3, "iif lan0", view.Schedule("mon-fri 08:00-18:00 UTC", True, closes)),
            view.Rule("always", "via a", 1, "everything"),
        ),
    )  # fmt: skip
    assert view.from_json(view.Status, view.to_json(status)) == status  # the wire format carries it
    console = Console(record=True, width=100)
    for part in cli.status_report(status, None, 100):
        console.print(part)
    text = console.export_text()
    assert f"on until {time.strftime('%a %H:%M', time.localtime(closes))}" in text  # (this machine's local time)
    assert f"policy nights: weighted: b×1 (off until {time.strftime('%a %H:%M', time.localtime(opens))}: " in text
