"""The daemon's bounded history (``wanlb.trends``): what it keeps, what it drops, and what it costs."""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import pytest
from test_daemon_fake import CONFIG, Harness, run

from wanlb import trends, view
from wanlb.daemon.surface import Surface


def _status(isps: dict[str, dict[str, object]]) -> view.Status:
    """A read model with just what the history reads: each ISP's state, probes and counter totals."""
    out, counts = [], {}
    for name, f in isps.items():
        health = view.Health(monitored=True, loss_percent=f.get("loss", 0.0), latency_ms=f.get("rtt"))  # type: ignore[arg-type]
        out.append(view.Isp(name=name, status=str(f.get("status", "up")), health=health,
                            bytes_rx=f.get("rx"), bytes_tx=f.get("tx")))  # type: ignore[arg-type]  # fmt: skip
        counts[name] = int(f.get("conns", 0))  # type: ignore[call-overload]
    return view.Status(isps=tuple(out), conn_counts=counts)


def test_a_sample_keeps_state_connections_probes_and_the_throughput_between_two_readings() -> None:
    t = trends.Trends(capacity=10)
    t.record(1000.0, _status({"a": {"rx": 1000, "tx": 500, "conns": 3, "rtt": 12.5, "loss": 5.0}}))
    t.record(1010.0, _status({"a": {"rx": 11000, "tx": 2500, "conns": 7, "rtt": 20.25, "status": "degraded"}}))
    h = t.series(0)
    assert h.times == (1000.0, 1010.0) and h.interval_seconds == trends.INTERVAL
    a = h.isps["a"]
    assert a.status == ("up", "degraded") and a.connections == (3, 7)
    assert a.rtt_ms == (12.5, 20.25) and a.loss_percent == (5.0, 0.0)
    assert a.rx_bytes_per_second == (None, 1000) and a.tx_bytes_per_second == (None, 200)  # none before 2 readings


def test_a_counter_reset_or_an_unreadable_counter_is_a_hole_not_a_negative_rate() -> None:
    t = trends.Trends(capacity=10)
    t.record(1.0, _status({"a": {"rx": 5000, "tx": 5000}}))
    t.record(10.0, _status({"a": {"rx": 100, "tx": None}}))  # the table was recreated; nft did not answer
    t.record(20.0, _status({"a": {"rx": 1100, "tx": 600}}))
    a = t.series(0).isps["a"]
    assert a.rx_bytes_per_second == (None, None, 100) and a.tx_bytes_per_second == (None, None, None)


def test_since_gives_only_later_samples_and_the_ring_keeps_the_last_capacity() -> None:
    t = trends.Trends(capacity=5)
    for i in range(12):
        t.record(100.0 + 10 * i, _status({"a": {"conns": i}}))
    h = t.series(0)
    assert h.times == (170.0, 180.0, 190.0, 200.0, 210.0) and h.isps["a"].connections == (7, 8, 9, 10, 11)
    assert t.series(190.0).times == (200.0, 210.0)  # strictly after: polling with the last time repeats nothing
    assert t.series(210.0).times == () and t.series(210.0).isps == {"a": trends.Series()}


def test_an_isp_removed_by_a_reload_drops_out_and_a_renamed_one_starts_anew() -> None:
    t = trends.Trends(capacity=10)
    t.record(1.0, _status({"a": {"conns": 1}, "b": {"conns": 2}}))
    t.record(10.0, _status({"a": {"conns": 1}, "b": {"conns": 2}}))
    t.record(20.0, _status({"a": {"conns": 1}, "c": {"conns": 4}}))  # b renamed to c
    h = t.series(0)
    assert set(h.isps) == {"a", "c"}
    assert h.isps["c"].connections == (None, None, 4) and h.isps["c"].status == (None, None, "up")
    t.record(30.0, _status({"a": {"conns": 1}, "b": {"conns": 9}}))  # b again: nothing of the old b comes back
    assert t.series(0).isps["b"].connections == (None, None, None, 9)


def test_an_isp_nobody_probes_has_no_rtt_or_loss() -> None:
    t = trends.Trends(capacity=4)
    t.record(1.0, view.Status(isps=(view.Isp(name="a"),)))
    a = t.series(0).isps["a"]
    assert a.rtt_ms == (None,) and a.loss_percent == (None,) and a.connections == (0,)


def test_a_day_of_samples_for_16_isps_stays_under_4_mb() -> None:
    """Measured, not computed: every allocation the history makes while it fills a whole day for 16 ISPs."""
    names = {f"isp{i}": {"rx": 0, "tx": 0, "conns": 0, "rtt": 1.0} for i in range(16)}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        t = trends.Trends()
        for i in range(trends.CAPACITY + 100):
            for f in names.values():
                f.update(rx=i * 1000, tx=i * 10, conns=i % 5000, rtt=1.0 + i % 7)
            t.record(float(i * 10), _status(names))
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    print(f"\nhistory of 16 ISPs over {trends.CAPACITY} samples: {used / 1e6:.2f} MB")
    assert trends.CAPACITY * trends.INTERVAL == 86400  # a day at 10 s
    assert used <= 4 * 1024 * 1024, used
    assert len(t.series(0).times) == trends.CAPACITY


def test_json_of_the_history_has_nulls_for_holes_and_no_nan() -> None:
    t = trends.Trends(capacity=4)
    t.record(1.0, _status({"a": {"rtt": None, "rx": 1}}))
    wire = view.to_json(t.series(0))
    assert wire["isps"]["a"]["rtt_ms"] == [None] and wire["isps"]["a"]["rx_bytes_per_second"] == [None]
    assert not any(isinstance(v, float) and math.isnan(v) for v in wire["isps"]["a"]["loss_percent"])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0])
def test_since_must_be_a_time(bad: float) -> None:
    with pytest.raises(ValueError, match="since"):
        trends.Trends(capacity=2).series(bad)


def test_a_copy_read_in_a_worker_does_not_move_while_sampling_goes_on() -> None:
    t = trends.Trends(capacity=3)
    t.record(1.0, _status({"a": {"conns": 1}}))
    copy = t.copy()
    for i in range(2, 6):
        t.record(float(i), _status({"a": {"conns": i}, "b": {}}))
    assert copy.series(0).times == (1.0,) and set(copy.series(0).isps) == {"a"}
    assert t.series(0).isps["a"].connections == (3, 4, 5)


def test_the_daemons_history_survives_a_reload_that_removes_an_isp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon (on the fake kernel) samples, reloads without c, samples again: a and b keep their past."""
    h = Harness(tmp_path, monkeypatch)
    got: list[trends.History] = []

    async def test() -> None:
        d = h.build()
        await d.reconcile("start")
        surface = Surface(d)
        await surface.sample()
        await surface.sample()
        h.write(CONFIG.replace("  - {name: c, interface: wan3, gateway: 100.64.3.1, tier: 2}\n", ""))
        ok, text = await d.reload()
        assert ok, text
        await surface.sample()
        got.append(await surface.history(0))

    run(test)
    history = got[0]
    assert len(history.times) == 3 and set(history.isps) == {"a", "b"}
    assert history.isps["a"].status == ("up", "up", "up") and history.isps["a"].connections == (3, 3, 3)
