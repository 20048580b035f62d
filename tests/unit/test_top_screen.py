"""`wanlb top`'s pure parts: rates between two status answers, sparklines, formatting, the screen built from
status answers, and the keyboard's cbreak mode on a real pseudo-terminal."""

from __future__ import annotations

import os
import termios
import time
from typing import Any

import pytest
from rich.console import Console

from wanlb.top import (
    BLOCKS,
    History,
    IspRates,
    Keyboard,
    Sample,
    TopModel,
    build_screen,
    human_bytes,
    human_count_rate,
    human_duration,
    human_rate,
    isp_rates,
    per_second,
    rates_of,
    rule_rates,
    sparkline,
)
from wanlb.top import (
    event_line as top_event_line,
)
from wanlb.top import (
    ipv6_text as top_ipv6_text,
)
from wanlb.top import (
    state_text as top_state_text,
)
from wanlb.view import Event, Isp, from_json

NAMES = ("isp1", "isp2", "isp3")


def state_text(isp: dict[str, Any]) -> Any:
    return top_state_text(from_json(Isp, isp))


def ipv6_text(isp: dict[str, Any]) -> Any:
    return top_ipv6_text(from_json(Isp, isp))


def event_line(ev: dict[str, Any]) -> str:
    return top_event_line(from_json(Event, ev))


def status(k: int, *, statuses: tuple[str, ...] = ("up", "down", "degraded"), counters: bool = True) -> dict[str, Any]:
    """A status answer at step ``k``: ISP i has received 1000·(i+1)·k bytes, sent 100·(i+1)·k, had 5·(i+1)·k
    new connections; rule ``pin`` has 3·k hits."""
    isps = []
    for i, (name, state) in enumerate(zip(NAMES, statuses, strict=True)):
        isp: dict[str, Any] = {
            "name": name,
            "status": state,
            "active": state == "up",
            "weight": i + 1,
            "tier": 1,
            "mark": 0x100 * (i + 1),
            "table": 201 + i,
            "interface": f"wan{i + 1}",
            "share_percent": 100.0 if state == "up" else 0.0,
            "since": 1_000_000.0,
            "link_down": False,
            "health": {"monitored": True, "loss_percent": 2.5, "latency_ms": 12.34, "held_down_seconds": 0},
        }
        if counters:
            isp |= {"bytes_rx": 1000 * (i + 1) * k, "bytes_tx": 100 * (i + 1) * k, "new_connections": 5 * (i + 1) * k,
                    "packets_rx": k, "packets_tx": k}  # fmt: skip
        else:
            isp |= {"bytes_rx": None, "bytes_tx": None, "new_connections": None, "packets_rx": None,
                    "packets_tx": None}  # fmt: skip
        isps.append(isp)
    return {
        "ok": True,
        "pid": 4242,
        "uptime_seconds": 3723.0 + k,
        "reloads": 1,
        "nft_applies": 7,
        "conntrack": {"entries": 99, "max": 262144, "warnings": []},
        "isps": isps,
        "conn_counts": {"isp1": 10 * k, "isp2": 0, "isp3": k},
        "rules": [{"name": "pin", "target": "via isp2", "hits": 3 * k}],
        "events": [_event(j) for j in range(30)],
    }


def _event(j: int) -> dict[str, Any]:
    return {"time": 1_000_000.0 + j, "isp": "isp2", "event": "down", "status": "down", "from": "up",
            "reason": f"failed round {j}", "flushed": j, "error": None}  # fmt: skip


def render(model: TopModel, width: int = 120, height: int = 40, **kwargs: Any) -> str:
    console = Console(width=width, height=height, record=True, file=open(os.devnull, "w"), color_system=None)  # noqa: SIM115
    console.print(build_screen(model, width, height, now_wall=1_000_300.0, **kwargs))
    text = console.export_text()
    console.file.close()
    return text


# --- rates ------------------------------------------------------------------------------------------


def test_per_second_is_the_difference_over_the_time_and_unknown_when_it_cannot_be_known() -> None:
    assert per_second(100, 350, 0.5) == 500.0
    assert per_second(5, 5, 1.0) == 0.0
    assert per_second(None, 10, 1.0) is None  # no earlier value (first sample, counter unreadable)
    assert per_second(10, None, 1.0) is None
    assert per_second(10, 20, 0.0) is None
    assert per_second(500, 20, 1.0) is None  # the counter went down: the table was recreated


def test_isp_rates_between_two_answers() -> None:
    rates = isp_rates(Sample.of(10.0, status(4)), Sample.of(12.0, status(6)))
    assert rates["isp1"] == IspRates(5.0, 1000.0, 100.0)
    assert rates["isp3"] == IspRates(15.0, 3000.0, 300.0)
    assert rates["isp2"].throughput == 2200.0
    assert isp_rates(None, Sample.of(1.0, status(1)))["isp1"] == IspRates()  # a first answer has no rates
    unreadable = isp_rates(Sample.of(1.0, status(1)), Sample.of(2.0, status(2, counters=False)))
    assert unreadable["isp1"] == IspRates() and unreadable["isp1"].throughput is None


def test_an_isp_added_between_answers_has_no_rate_yet() -> None:
    before = status(1)
    before["isps"] = before["isps"][:2]
    rates = isp_rates(Sample.of(0.0, before), Sample.of(1.0, status(2)))
    assert rates["isp1"].rx_bytes_per_second == 1000.0 and rates["isp3"] == IspRates()


def test_rule_rates_and_the_json_of_status_rates() -> None:
    before, after = Sample.of(100.0, status(10)), Sample.of(101.25, status(15))
    assert rule_rates(before, after) == {"pin": 12.0}
    assert rule_rates(None, after) == {"pin": None}
    out = rates_of(before, after).json()
    assert out["interval_seconds"] == 1.25
    assert out["isps"]["isp2"] == {"new_per_second": 40.0, "rx_bytes_per_second": 8000.0, "tx_bytes_per_second": 800.0}
    assert out["rules"] == {"pin": 12.0}
    assert set(out["isps"]) == set(NAMES)


# --- formatting -------------------------------------------------------------------------------------


def test_human_units() -> None:
    assert [human_bytes(n) for n in (None, 0, 999, 1000, 1_234_567, 5e12, 7e18)] == [
        "-", "0 B", "999 B", "1.0 kB", "1.2 MB", "5.0 TB", "7000.0 PB"]  # fmt: skip
    assert human_rate(2500) == "2.5 kB/s" and human_rate(None) == "-"
    assert [human_count_rate(v) for v in (None, 0, 2.345, 12.6)] == ["-", "0.0", "2.3", "13"]
    assert [human_duration(s) for s in (None, -3, 5, 65, 3723, 90061)] == ["-", "0s", "5s", "1m05s", "1h02m", "1d01h"]


def test_sparkline_levels_padding_and_gaps() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7], 8) == "▁▂▃▄▅▆▇█"
    assert sparkline([], 4) == "    "
    assert sparkline([0, 0, 0], 5) == "  ▁▁▁"  # newest on the right, padded on the left
    assert sparkline([5, None, 5], 3) == "█ █"  # no answer: a gap
    assert sparkline([0.001, 100], 2) == "▂█"  # a trickle is never drawn as zero
    assert sparkline(range(100), 10) == sparkline(range(90, 100), 10)  # only the last `width` are drawn
    assert sparkline([1, 2], 2, top=8) == "▂▃"  # a common scale, not each series its own
    assert sparkline([16], 1, top=8) == "█"
    assert set(sparkline([3.5, 1e9, 0, 42], 4)) <= set(BLOCKS)


def test_state_text_is_coloured_and_qualified() -> None:
    up = {"status": "up", "active": True}
    assert (str(state_text(up)), state_text(up).style) == ("up", "bold green")
    assert str(state_text({"status": "up", "active": False})) == "up (standby)"
    held = state_text({"status": "down", "health": {"held_down_seconds": 12.5}, "link_down": True})
    assert (str(held), held.style) == ("down (held 12.5s) (link down)", "bold red")
    assert state_text({"status": "degraded"}).style == "bold yellow"
    assert state_text({"status": "disabled"}).style == "bold magenta"


def test_ipv6_text_is_the_mode_and_the_ipv6_status_coloured() -> None:
    assert str(ipv6_text({"status": "up", "ipv6": None})) == "-"
    own = {"monitored": True, "loss_percent": 40}
    down = ipv6_text({"status": "up", "ipv6": {"mode": "netmap", "status": "down", "health": own}})
    assert (str(down), down.style) == ("netmap down (loss 40%)", "bold red")
    assert str(ipv6_text({"ipv6": {"mode": "routed", "status": "up", "health": None}})) == "routed up"


def test_the_screen_has_an_ipv6_column_only_with_ipv6() -> None:
    assert "ipv6" not in render(_model(), now_mono=20.5)
    model = TopModel()
    answer = status(1)
    answer["isps"][0]["ipv6"] = {"mode": "masquerade", "status": "degraded", "health": None}
    model.update(Sample.of(1.0, answer))
    text = render(model, now_mono=1.5)
    assert "ipv6" in text
    assert next(line for line in text.splitlines() if line.split()[:1] == ["isp1"]).split()[:4] == [
        "isp1", "up", "masquerade", "degraded"
    ]  # fmt: skip


def test_event_line() -> None:
    ev = {"time": time.mktime((2024, 5, 1, 14, 2, 11, 0, 0, -1)), "isp": "isp1", "event": "down", "status": "down",
          "from": "up", "reason": "3 failed rounds", "flushed": 48, "error": "nft said no"}  # fmt: skip
    want = "14:02:11 isp1 down (up → down): 3 failed rounds, flushed 48 connections [apply failed: nft said no]"
    assert event_line(ev) == want
    added = {**ev, "event": "added", "status": "up", "from": None, "flushed": None, "error": None}
    assert event_line(added) == "14:02:11 isp1 added (up): 3 failed rounds"
    v6 = {**ev, "family": "6", "error": None}
    assert event_line(v6) == "14:02:11 isp1 IPv6 down (up → down): 3 failed rounds, flushed 48 connections"


# --- the model and the screen -----------------------------------------------------------------------


def test_history_keeps_the_last_samples_forgets_removed_isps_and_marks_gaps() -> None:
    h = History(size=3)
    for k in range(5):
        h.add({"a": k, "b": 10 * k}, {"a": float(k), "b": None})
    assert list(h.connections["a"]) == [2, 3, 4] and list(h.throughput["b"]) == [None, None, None]
    h.gap()
    assert list(h.connections["b"]) == [30, 40, None]
    h.add({"a": 9}, {"a": 1.0})
    assert set(h.connections) == set(h.throughput) == {"a"}


def test_model_update_and_failure() -> None:
    m = TopModel()
    m.update(Sample.of(0.0, status(1)))
    assert m.rates["isp1"] == IspRates() and m.answers == 1
    m.update(Sample.of(1.0, status(2)))
    assert m.rates["isp1"].new_per_second == 5.0 and m.rule_rates == {"pin": 3.0}
    assert list(m.history.connections["isp1"]) == [10, 20]
    assert list(m.history.throughput["isp1"]) == [None, 1100.0]
    m.fail("no wanlb daemon is running", 2.0)
    m.fail("no wanlb daemon is running", 3.0)
    assert m.error and m.failing_since == 2.0 and list(m.history.connections["isp1"]) == [10, 20, None, None]
    m.update(Sample.of(4.0, status(4)))
    assert m.error is None and m.failing_since is None
    assert m.rates["isp1"].rx_bytes_per_second == pytest.approx(2000 / 3)  # across the gap: the last answer, 3 s ago


def _model(steps: int = 20) -> TopModel:
    m = TopModel()
    for k in range(1, steps + 1):
        m.update(Sample.of(float(k), status(k)))
    return m


def test_the_screen_shows_every_isp_with_rates_sparklines_rules_and_the_latest_events() -> None:
    text = render(_model(), now_mono=20.5)
    lines = text.splitlines()
    assert len(lines) == 40
    assert "pid 4242" in lines[0] and "up 1h02m" in lines[0] and "q quits" in lines[0]
    row = {name: next(line for line in lines if line.split()[:1] == [name]) for name in NAMES}
    assert row["isp1"].split()[:5] == ["isp1", "up", "5m00s", "1", "100.0%"]
    assert "200" in row["isp1"].split() and "1.0 kB/s" in row["isp1"] and "100 B/s" in row["isp1"]
    assert "down" in row["isp2"] and "3.0 kB/s" in row["isp3"] and "15" in row["isp3"].split()
    assert "2.5%" in row["isp1"] and "12.3 ms" in row["isp1"]
    spark = [line for line in lines if line.strip().startswith("isp1") and "█" in line]
    assert len(spark) == 1  # isp1's connection history: the largest of all, so it reaches the top block
    assert "conns (top 200)" in text and "rx+tx (top 3.3 kB/s)" in text
    assert "pin" in text and "via isp2" in text and "60" in text and "3.0" in text
    assert "events (30)" in text and "failed round 29" in text  # the newest event, at the bottom
    assert "failed round 0" not in text  # the oldest do not fit


def test_the_screen_before_any_answer_and_while_the_daemon_is_away() -> None:
    m = TopModel()
    text = render(m, target="/run/wanlb/wanlb.sock")
    assert "waiting for the daemon at /run/wanlb/wanlb.sock" in text and "no events yet" in text
    m = _model(3)
    m.fail("no wanlb daemon is running (nothing answers at /x)", 10.0)
    text = render(m, now_mono=25.0)
    assert "daemon not answering (15s): no wanlb daemon is running" in text and "still trying" in text
    assert all(name in text for name in NAMES)  # the last answer stays on screen


def test_a_stale_answer_is_flagged_and_an_apply_error_shown() -> None:
    m = _model(2)
    assert "last answer 8s ago" in render(m, now_mono=10.0)
    s = status(3)
    s["last_error"] = "start: nft refused"
    m.update(Sample.of(11.0, s))
    assert "last apply failed: start: nft refused" in render(m, now_mono=11.0)


def test_the_screen_without_rules_or_counters_and_in_a_tiny_terminal() -> None:
    s = status(1, counters=False)
    s["rules"] = []
    m = TopModel()
    m.update(Sample.of(0.0, s))
    text = render(m)
    assert "hits/s" not in text and all(name in text for name in NAMES)
    small = render(_model(), width=50, height=12)  # crops, never fails
    assert len(small.splitlines()) == 12


def test_the_layout_sizes_fit_the_terminal() -> None:
    layout = build_screen(_model(), 120, 40, now_mono=20.0)
    sizes = {child.name: child.size for child in layout.children}
    assert list(sizes) == ["header", "isps", "history", "rules", "events"]
    assert sizes["isps"] == 2 + len(NAMES) and sizes["history"] == 3 + len(NAMES) and sizes["rules"] == 4
    assert sizes["events"] is None  # takes the rest


# --- the keyboard on a real pseudo-terminal ----------------------------------------------------------


def test_keyboard_cbreak_reads_keys_unechoed_and_restores_the_terminal() -> None:
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        kb = Keyboard(slave)
        kb.cbreak()
        during = termios.tcgetattr(slave)
        assert not during[3] & (termios.ICANON | termios.ECHO) and during[3] & termios.ISIG
        os.write(master, b"xq")
        assert kb.readable() == [slave] and kb.read() == "xq"  # no Enter needed
        kb.restore()
        kb.restore()  # twice is harmless
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_keyboard_without_a_terminal_does_nothing() -> None:
    r, w = os.pipe()
    try:
        kb = Keyboard(r)
        kb.cbreak()
        kb.restore()
        assert kb.saved is None
        os.close(w)
        assert kb.read() == "" and kb.eof and kb.readable() == []
    finally:
        os.close(r)
    assert Keyboard(None).readable() == []


@pytest.mark.parametrize("k", [0, 1])
def test_rates_json_of_a_first_answer_pair_with_equal_counters(k: int) -> None:
    out = rates_of(Sample.of(0.0, status(k)), Sample.of(1.0, status(k))).json()
    assert out["isps"]["isp1"] == {"new_per_second": 0.0, "rx_bytes_per_second": 0.0, "tx_bytes_per_second": 0.0}
