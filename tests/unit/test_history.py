"""The event log: one line per event saying ``from → to`` as status does, and metrics that count a dual-stack
event once per family — driven by the real fleet, so the events are the ones a daemon records."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from wanlb import runtime
from wanlb.config import parse_config
from wanlb.fleet import Effect, Emit, Fleet
from wanlb.history import EventLog
from wanlb.metrics import Metrics
from wanlb.view import Status

DUAL = (
    "lan: {interfaces: [lan0], ipv6_prefixes: [fd00:77::/64]}\n"
    "isps:\n"
    "  - {name: a, interface: wan1, gateway: 100.64.1.1, gateway6: 'fe80::1', ipv6: {mode: masquerade},"
    " health: {targets: [192.0.2.1, 2001:db8:f::10], down_after: 3, up_after: 2}}\n"
    "  - {name: b, interface: wan2, gateway: 100.64.2.1, health: {targets: [192.0.2.1]}}\n"
)


class Gateway:
    """The fleet and the event log the daemon would have, with a clock."""

    def __init__(self, text: str = DUAL) -> None:
        self.config = parse_config(text)
        state = runtime.allocate(self.config, None, reload=False).state
        self.now = 0.0
        self.fleet = Fleet(self.config, state, {}, self.now, self.wall)
        self.metrics = Metrics()
        self.log = EventLog(self.metrics, spawn=lambda coro: pytest.fail("no hooks are configured"))

    @property
    def wall(self) -> float:
        return 1_700_000_000.0 + self.now

    def record(self, effects: list[Effect]) -> None:
        for e in effects:
            if isinstance(e, Emit):
                self.log.record(self.config, e.event, None, None, self.wall, self.wall, self.wall)

    def rounds(self, name: str, pattern: str, family: int) -> None:
        for c in pattern:
            self.now += 0.2
            ok = c == "+"
            self.record(self.fleet.round(name, self.now, self.wall, ok, 0.01 if ok else None, 0.0 if ok else 1.0,
                                         "" if ok else "no answer", family))  # fmt: skip

    def flap(self, name: str) -> None:
        """Both families' probes fail, then answer again: one outage of a dual-stack ISP."""
        for family in (4, 6):
            self.rounds(name, "---", family)
        for family in (4, 6):
            self.rounds(name, "++", family)

    def samples(self, metric: str) -> dict[tuple[str, ...], float]:
        """A metric's samples by their label values, in the order isp, family, to (then any other, sorted)."""
        text = self.metrics.render(Status(), {}).decode()
        family = {f.name: f for f in text_string_to_metric_families(text)}.get(metric)
        order = {"isp": 0, "family": 1, "to": 2}
        return (
            {}
            if family is None
            else {
                tuple(v for _, v in sorted(s.labels.items(), key=lambda kv: (order.get(kv[0], 3), kv[0]))): s.value
                for s in family.samples
            }
        )


def test_a_dual_stack_failover_and_drain_count_once_per_family() -> None:
    gw = Gateway()
    gw.flap("a")
    gw.record(gw.fleet.disable("a", gw.now, gw.wall)[1])
    assert gw.samples("wanlb_isp_transitions") == {
        ("a", "4", "down"): 1.0, ("a", "6", "down"): 1.0,
        ("a", "4", "up"): 1.0, ("a", "6", "up"): 1.0,
        ("a", "4", "disabled"): 1.0, ("a", "6", "disabled"): 1.0,
    }  # fmt: skip
    assert gw.samples("wanlb_failovers") == {("a", "4"): 2.0, ("a", "6"): 2.0}  # one outage + one drain each


def test_an_isp_with_one_health_for_both_families_is_counted_once_as_all() -> None:
    gw = Gateway()
    gw.rounds("b", "---", 4)
    assert gw.samples("wanlb_isp_transitions") == {("b", "all", "down"): 1.0}
    assert gw.samples("wanlb_failovers") == {("b", "all"): 1.0}


def test_the_log_line_says_from_and_to_as_status_does(caplog: pytest.LogCaptureFixture) -> None:
    gw = Gateway()
    with caplog.at_level(logging.INFO, logger="wanlb.daemon"):
        gw.rounds("a", "---", 4)
        gw.record(gw.fleet.disable("b", gw.now, gw.wall)[1])
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("isp a IPv4 down: up → down (")
    assert lines[1].startswith("isp b disabled: up → disabled (")
    assert all("down → down" not in line for line in lines), lines


def test_build_info_and_the_process_metrics_are_exposed() -> None:
    gw = Gateway()
    assert list(gw.samples("wanlb_build_info")) == [(__import__("wanlb").__version__,)]
    for standard in ("process_resident_memory_bytes", "process_cpu_seconds", "python_info"):
        assert gw.samples(standard), standard


ALERTS = Path(__file__).resolve().parents[2] / "packaging" / "wanlb-alerts.yml"


def flapping_alerts(tmp_path: Path, flaps_at: set[int]) -> subprocess.CompletedProcess[str]:
    """Scrape the real metrics of a dual-stack ISP once a minute for 10 minutes, flapping it at the minutes
    in ``flaps_at``, and run the shipped flapping alert on those series with ``promtool test rules``: it
    must fire for 4 flaps (each family's health went down 4 times), not for 2."""
    gw = Gateway()
    scrapes = []
    for minute in range(11):
        if minute in flaps_at:
            gw.flap("a")
        gw.now = 60.0 * (minute + 1)
        scrapes.append(gw.samples("wanlb_isp_transitions"))
    series = sorted({key for scrape in scrapes for key in scrape if key[2] == "down"})
    expected = [
        {"exp_labels": {"alertname": "WanlbIspFlapping", "severity": "warning", "isp": isp, "family": family,
                        "to": "down", "job": "wanlb", "instance": "gw"},
         "exp_annotations": {
             "summary": f"gw: ISP {isp} (family {family}) went down more than 3 times in 10 minutes",
             "description": "Each time its connections are flushed. Check flap damping (docs/health.md) and "
                            "`wanlb status` events."}}
        for isp, family, _ in series
    ] if len(flaps_at) > 3 else []  # fmt: skip
    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": f'wanlb_isp_transitions_total{{isp="{isp}",family="{family}",to="down",job="wanlb",'
                           f'instance="gw"}}',
                 "values": " ".join(str(int(scrape.get((isp, family, "down"), 0))) for scrape in scrapes)}
                for isp, family, _ in series
            ],
            "alert_rule_test": [{"eval_time": "10m", "alertname": "WanlbIspFlapping", "exp_alerts": expected}],
        }],
    }  # fmt: skip
    assert {family for _, family, _ in series} == {"4", "6"}
    (tmp_path / "test.yml").write_text(json.dumps(tests))  # JSON is YAML
    return subprocess.run(["promtool", "test", "rules", str(tmp_path / "test.yml")], capture_output=True, text=True)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian's prometheus)")
@pytest.mark.parametrize("flaps_at", [{2, 6}, {1, 3, 5, 7}], ids=["2 flaps: quiet", "4 flaps: fires"])
def test_the_shipped_flapping_alert_counts_a_dual_stack_outage_once(tmp_path: Path, flaps_at: set[int]) -> None:
    check = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    result = flapping_alerts(tmp_path, flaps_at)
    assert result.returncode == 0, result.stdout + result.stderr
