"""The daemon executing the fleet's effects on a FakeKernel: failover, failed applies, reload, admin.

Driven with asyncio directly (``run()`` is not called: it opens the control socket and netlink sockets).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from fakekernel import FakeCounter, FakeKernel

from wanlb import runtime, view
from wanlb.adapters import nft
from wanlb.commands import Disable, Enable
from wanlb.config import load_config
from wanlb.daemon import Daemon
from wanlb.daemon.surface import Surface
from wanlb.domains import DomainWatcher, ResolverSettings
from wanlb.health.monitor import RoundResult
from wanlb.runtime import RuntimeState, StateStore
from wanlb.uplink import ConnectedRoute

HEALTH = "health: {targets: [192.0.2.1], down_after: 3, up_after: 5}"
CONFIG = f"""\
lan: {{interfaces: [lan0]}}
isps:
  - {{name: a, interface: wan1, gateway: 100.64.1.1, {HEALTH}}}
  - {{name: b, interface: wan2, gateway: 100.64.2.1, {HEALTH}}}
  - {{name: c, interface: wan3, gateway: 100.64.3.1, tier: 2}}
control: {{socket: SOCKET}}
"""
FAIL = RoundResult(ok=False, answered=0, latency=None, loss=1.0, errors={"192.0.2.1": "no answer in 300 ms"})
GOOD = RoundResult(ok=True, answered=1, latency=0.012, loss=0.0, errors={})


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        self.t += 0.2
        return self.t


class StubMonitor:
    """Stands in for IspMonitor (which opens raw sockets): records which ISPs the daemon monitors."""

    started: ClassVar[list[str]] = []

    def __init__(
        self,
        isp: Any,
        mark: int,
        on_round: Callable[[str, RoundResult, int], None],
        family: int = 4,
        interval: Callable[[], float] | None = None,
        **_: Any,
    ) -> None:
        self.isp, self.mark, self.on_round = isp, mark, on_round
        self.health = isp.health
        self.interval = interval or (lambda: isp.health.interval)
        self.targets = isp.health.targets_of(family)
        self.rounds = 0
        self.last = None
        StubMonitor.started.append(isp.name)

    async def run(self) -> None:
        await asyncio.Event().wait()


class Harness:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str = CONFIG) -> None:
        self.path = tmp_path / "wanlb.yaml"
        self.socket = str(tmp_path / "wanlb.sock")
        self.write(text)
        self.config = load_config(self.path)
        self.kernel = FakeKernel(
            {"lan0": True, "wan1": True, "wan2": True, "wan3": True},
            (
                ConnectedRoute(ipaddress.IPv4Network("192.168.77.0/24"), "lan0"),
                *(ConnectedRoute(ipaddress.IPv4Network(f"100.64.{i}.0/24"), f"wan{i}") for i in (1, 2, 3)),
            ),
            {"net/ipv4/ip_forward": "0"},
        )
        self.kernel.conntrack = [0x100] * 3 + [0x200] * 2 + [0x300] + [0] * 4
        state = runtime.allocate(self.config, None, reload=False).state
        self.store = StateStore(None, RuntimeState())
        self.store.set_allocation(state)
        self.counter = FakeCounter(self.kernel, state.names_by_mark(), self.config.mark_mask)
        self.clock = Clock()
        # Monitors are stubs (they open raw sockets).
        StubMonitor.started = []
        self.daemon: Daemon | None = None

    def write(self, text: str) -> None:
        self.path.write_text(text.replace("SOCKET", "/run/wanlb-unit-test/wanlb.sock"))

    def build(self) -> Daemon:
        self.daemon = Daemon(
            str(self.path),
            self.config,
            self.kernel,
            self.store,
            counter=self.counter,  # type: ignore[arg-type]
            clock=self.clock,
            wall=self.clock,
            monitor=StubMonitor,  # type: ignore[arg-type]
        )
        return self.daemon

    def flushes(self) -> list[tuple[Any, ...]]:
        return [c for c in self.kernel.calls if c[0] == "ct_flush"]

    def balance(self) -> str:
        return " ".join(self.kernel.nft_rules("balance"))


async def settle(d: Daemon) -> None:
    """Wait for every task the daemon spawned (effects of rounds, link events) to finish."""
    while d._tasks:
        await asyncio.gather(*list(d._tasks))


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


async def stop_monitors(d: Daemon) -> None:
    tasks = [t for _, t in d.monitors.running.values()]
    d.monitors.stop()
    await asyncio.gather(*tasks, return_exceptions=True)


def events(d: Daemon) -> list[dict[str, Any]]:
    """The daemon's event history as status sends it."""
    return [view.to_json(e) for e in d.history.events]


def status_of(d: Daemon) -> dict[str, Any]:
    return view.to_json(Surface(d).snapshot())  # type: ignore[no-any-return]


async def handle(d: Daemon, message: dict[str, Any]) -> dict[str, Any]:
    return await Surface(d).handle(message)


# --- failover ---------------------------------------------------------------------------------------


def test_failover_takes_the_isp_out_of_balancing_then_flushes_exactly_its_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(tmp_path, monkeypatch)

    async def test() -> None:
        d = h.build()
        await d.reconcile("start")
        assert "isp_a" in h.balance() and "isp_b" in h.balance()
        h.kernel.calls.clear()
        for _ in range(3):
            d.on_round("a", FAIL)
        await settle(d)
        assert "isp_a" not in h.balance() and "isp_b" in h.balance()
        assert h.flushes() == [("ct_flush", 0x100, 0xFF00)]
        calls = [c[0] for c in h.kernel.calls]
        assert calls.index("nft_apply") < calls.index("ct_flush")  # out of balancing before the flush
        assert sorted(h.kernel.conntrack) == [0] * 4 + [0x200] * 2 + [0x300]
        event = events(d)[-1]
        assert (event["isp"], event["event"], event["status"], event["from"]) == ("a", "down", "down", "up")
        assert event["flushed"] == 3 and event["error"] is None
        assert "192.0.2.1 no answer in 300 ms" in event["reason"]
        assert h.counter.forgotten == [0x100]
        status = status_of(d)
        assert [(i["name"], i["status"], i["active"]) for i in status["isps"]] == [
            ("a", "down", False),
            ("b", "up", True),
            ("c", "up", False),
        ]
        assert status["conn_counts"] == {"a": 0, "b": 2, "c": 1} and status["last_error"] is None

    run(test)


def test_a_failed_apply_during_failover_flushes_nothing_and_resync_finishes_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(tmp_path, monkeypatch)

    async def test() -> None:
        d = h.build()
        await d.reconcile("start")
        h.kernel.fail_nft = "Error: Could not process rule: Cannot allocate memory"
        for _ in range(3):
            d.on_round("a", FAIL)
        await settle(d)
        assert h.flushes() == []  # a flushed connection could come back to the ISP still in balancing
        assert "isp_a" in h.balance()
        event = events(d)[-1]
        assert event["event"] == "down" and "Cannot allocate memory" in event["error"] and event["flushed"] is None
        assert d.last_error is not None and "Cannot allocate memory" in d.last_error
        assert h.kernel.conntrack.count(0x100) == 3

        h.kernel.fail_nft = None
        await d.resync()
        assert "isp_a" not in h.balance()
        assert h.flushes() == [("ct_flush", 0x100, 0xFF00)]
        assert 0x100 not in h.kernel.conntrack and d.last_error is None
        await d.resync()
        assert len(h.flushes()) == 1  # nothing left to flush

    run(test)


def test_a_link_down_is_a_failover_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(tmp_path, monkeypatch)

    async def test() -> None:
        d = h.build()
        await d.reconcile("start")
        h.kernel.set_link("wan2", False, drop_routes=True)
        d.link_changed("wan2", False)
        d.link_changed("eth9", False)  # not ours
        await settle(d)
        assert "isp_b" not in h.balance() and h.flushes() == [("ct_flush", 0x200, 0xFF00)]
        assert events(d)[-1]["reason"] == "link down (wan2)" and d.link_events == 1

    run(test)


# --- reload -----------------------------------------------------------------------------------------


def test_reload_removing_an_isp_flushes_its_old_mark_and_says_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(tmp_path, monkeypatch)

    async def test() -> None:
        d = h.build()
        await d.reconcile("start")
        h.write(CONFIG.replace(f"  - {{name: b, interface: wan2, gateway: 100.64.2.1, {HEALTH}}}\n", ""))
        ok, message = await d.reload()
        assert (ok, message) == (True, "reloaded")
        assert h.flushes() == [("ct_flush", 0x200, 0xFF00)]
        assert 0x200 not in h.kernel.conntrack
        event = events(d)[-1]
        assert (event["isp"], event["event"], event["status"], event["flushed"]) == ("b", "removed", "removed", 2)
        assert "isp_b" not in h.balance() and ("chain", "isp_b") not in h.kernel.nft_objects()
        assert not [r for r in h.kernel.ip_rules if r.fwmark == 0x200]
        # the flush released the retired mark, in memory and in the store
        assert d.fleet.state.retired == () and h.store.state.retired == ()
        assert set(h.store.state.isps) == {"a", "c"} and h.counter.marks == {0x100: "a", 0x300: "c"}
        assert StubMonitor.started == ["a"] and {name for name, _ in d.monitors.running} == {"a"}
        await d.resync()  # the drop rule for the retired mark goes with the next pass
        assert not [r for r in h.kernel.nft_rules("prerouting") if "0x200 } drop" in r]
        assert len(h.flushes()) == 1
        await stop_monitors(d)

    run(test)


def test_a_refused_reload_keeps_the_running_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(tmp_path, monkeypatch)

    async def test() -> None:
        d = h.build()
        await d.reconcile("start")
        before = h.kernel.everything()
        h.write(CONFIG.replace("name: b, interface: wan2", "name: b, interface: wan1"))
        ok, message = await d.reload()
        assert not ok and "duplicate interface" in message
        h.write(CONFIG.replace("gateway: 100.64.2.1, ", "gateway: 100.64.2.1, mark: 0x100, "))
        ok, message = await d.reload()
        assert not ok and "asks for mark 0x100, which 'a' has carried" in message
        assert h.kernel.everything() == before and d.config is h.config and d.reloads == 0

    run(test)


# --- admin ------------------------------------------------------------------------------------------


def test_disable_then_enable_emits_enabled_and_never_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(tmp_path, monkeypatch)

    async def test() -> None:
        d = h.build()
        await d.reconcile("start")
        assert await d.admin(Disable("a")) == {"ok": True, "message": "a is disabled"}
        assert "isp_a" not in h.balance() and h.flushes() == []  # drained, its connections keep going
        for _ in range(5):
            d.on_round("a", GOOD)
        await settle(d)
        assert await d.admin(Enable("a")) == {"ok": True, "message": "a is up"}
        assert [e["event"] for e in events(d)] == ["disabled", "enabled"]
        assert events(d)[-1]["status"] == "up" and "isp_a" in h.balance() and h.flushes() == []
        assert await d.admin(Enable("zz")) == {"ok": False, "error": "no ISP named 'zz'"}

    run(test)


def test_enable_of_a_failing_isp_is_enabled_down_and_flushed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(tmp_path, monkeypatch)

    async def test() -> None:
        d = h.build()
        await d.reconcile("start")
        await d.admin(Disable("a"))
        for _ in range(3):
            d.on_round("a", FAIL)
        await settle(d)
        assert await d.admin(Enable("a")) == {"ok": True, "message": "a is down"}
        assert [e["event"] for e in events(d)] == ["disabled", "enabled"]
        assert events(d)[-1]["status"] == "down" and events(d)[-1]["flushed"] == 3
        assert h.flushes() == [("ct_flush", 0x100, 0xFF00)]

    run(test)


def test_a_drain_with_a_reason_and_a_timer_ends_by_itself_at_a_resync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(tmp_path, monkeypatch)

    async def test() -> None:
        d = h.build()
        await d.reconcile("start")
        surface = Surface(d)
        reply = await surface.handle({"cmd": "disable", "isp": "a", "reason": "ISP maintenance", "seconds": 90})
        assert reply == {"ok": True, "message": "a is disabled for 1m30s"}
        until = status_of(d)["isps"][0]["drain"]["until"]
        assert status_of(d)["isps"][0]["drain"] == {"reason": "ISP maintenance", "until": until}
        assert 60 < until - h.clock.t <= 90  # (the fake clock ticks on every read)
        assert events(d)[-1]["reason"] == "disabled by admin: ISP maintenance"
        for _ in range(5):  # its probes go on while it is drained
            d.on_round("a", GOOD)
        await settle(d)
        await d.resync()  # not yet
        assert status_of(d)["isps"][0]["status"] == "disabled"
        h.clock.t += 90
        await d.resync()
        isp = status_of(d)["isps"][0]
        assert isp["status"] == "up" and isp["drain"] is None and "isp_a" in h.balance()
        assert [(e["event"], e["reason"]) for e in events(d)][-1] == ("enabled", "drain timer ran out")
        for bad in ({"reason": "x" * 201}, {"reason": "two\nlines"}, {"seconds": 0}, {"seconds": "60"}):
            answer = await surface.handle({"cmd": "disable", "isp": "a", **bad})
            assert answer["ok"] is False and answer["error"].startswith("bad request:"), (bad, answer)
        assert status_of(d)["isps"][0]["status"] == "up"  # bad input: no change

    run(test)


def test_control_commands_answer_from_the_fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(tmp_path, monkeypatch)

    async def test() -> None:
        d = h.build()
        await d.reconcile("start")
        counts = await handle(d, {"cmd": "conn_counts"})
        assert counts["by_isp"] == {"a": 3, "b": 2, "c": 1} and counts["counts"]["0"] == 4
        flushed = await handle(d, {"cmd": "flush", "isp": "c"})
        assert flushed == {"ok": True, "isp": "c", "mark": 0x300, "mark_mask": 0xFF00, "deleted": 1}
        assert (await handle(d, {"cmd": "flush", "isp": "zz"}))["ok"] is False
        assert (await handle(d, {"cmd": "nope"}))["error"] == "unknown command 'nope'"
        # Strict types: the string "false" is an error, not a truthy value that cleans up.
        refused = await handle(d, {"cmd": "stop", "cleanup": "false"})
        assert refused["ok"] is False and not d.cleanup_on_exit and not d.stopping.is_set()
        for bad in ({"cmd": "try", "config": "relative.yaml"}, {"cmd": "try", "config": "/x", "timeout": True}):
            assert (await handle(d, bad))["ok"] is False
        assert (await handle(d, {"cmd": "confirm"}))["error"] == "no trial is pending"

    run(test)


def test_reload_is_verified_through_the_kernel_it_was_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(tmp_path, monkeypatch)
    monkeypatch.undo()  # the real nft.check, as the daemon has it
    monkeypatch.setattr(nft.shutil, "which", lambda name: None)  # a machine without the nft binary

    async def test() -> None:
        d = h.build()
        await d.reconcile("start")
        ok, message = await d.reload()
        await stop_monitors(d)
        assert ok, message

    run(test)


def test_a_failed_apply_during_reload_leaves_the_flush_to_the_resync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(tmp_path, monkeypatch)

    async def test() -> None:
        d = h.build()
        await d.reconcile("start")
        h.write(CONFIG.replace(f"  - {{name: b, interface: wan2, gateway: 100.64.2.1, {HEALTH}}}\n", ""))
        h.kernel.fail_nft = "Error: Could not process rule: Cannot allocate memory"
        ok, message = await d.reload()
        assert not ok and message.startswith("reloaded, but applying it failed") and d.reloads == 1
        assert h.flushes() == [] and events(d)[-1]["event"] == "removed" and events(d)[-1]["error"]
        assert d.fleet.state.retired == (runtime.Retired(0x200, 0xFF00, "b"),)
        assert h.store.state.retired == d.fleet.state.retired  # saved before the apply: a restart still flushes it
        h.kernel.fail_nft = None
        await d.resync()
        assert h.flushes() == [("ct_flush", 0x200, 0xFF00)] and 0x200 not in h.kernel.conntrack
        assert d.fleet.state.retired == () and h.store.state.retired == ()
        await stop_monitors(d)

    run(test)


def test_an_isp_added_by_reload_on_a_down_link_is_down_as_it_would_be_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(tmp_path, monkeypatch)
    without_c = CONFIG.replace("  - {name: c, interface: wan3, gateway: 100.64.3.1, tier: 2}\n", "")
    h.write(without_c)
    h.config = load_config(h.path)
    h.store = StateStore(None, RuntimeState())
    h.store.set_allocation(runtime.allocate(h.config, None, reload=False).state)
    h.kernel.set_link("wan3", False)

    async def test() -> None:
        d = h.build()
        await d.reconcile("start")
        h.write(CONFIG.replace("tier: 2", "tier: 1"))  # c, unprobed, on wan3 whose link is down
        ok, _ = await d.reload()
        await stop_monitors(d)
        assert ok
        assert d.fleet.statuses()["c"] == "down"
        assert "isp_c" not in h.balance()

    run(test)


def test_resync_warns_when_the_table_fills_or_drops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(tmp_path, monkeypatch)

    async def test() -> None:
        d = h.build()
        await d.reconcile("start")
        await d.resync()
        assert status_of(d)["conntrack"]["warnings"] == []
        h.kernel.ct_max = 10  # 10 entries in the fake table: 100 % full
        h.kernel.ct_trouble["early_drop"] = 3
        await d.resync()
        warnings = status_of(d)["conntrack"]["warnings"]
        assert any("100% full" in w for w in warnings) and any("early_drop rose by 3" in w for w in warnings)

    run(test)


# --- policies ---------------------------------------------------------------------------------------


def test_a_dead_isps_sticky_clients_are_forgotten_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(tmp_path, monkeypatch, CONFIG + "balance: {sticky: {by: source, timeout: 10m}}\n")

    async def test() -> None:
        d = h.build()
        await d.reconcile("start")
        h.kernel.nft_add_dynamic("sticky_balance_b", "192.168.77.11")
        h.kernel.nft_add_dynamic("sticky_balance_a", "192.168.77.12")
        assert "@sticky_balance_b" in h.balance()
        h.kernel.set_link("wan2", False, drop_routes=True)
        d.link_changed("wan2", False)
        await settle(d)
        assert "@sticky_balance_b" not in h.balance()  # its lookup left with it
        sets = h.kernel.tables["wanlb"].sets
        assert list(sets["sticky_balance_b"].elements) == []  # and its entries are gone, not left to time out
        assert list(sets["sticky_balance_a"].elements) == ["192.168.77.12"]
        calls = [c[0] for c in h.kernel.calls]
        assert calls.index("ct_flush") > max(i for i, c in enumerate(h.kernel.calls) if "flush set" in str(c))

    run(test)


def test_status_shows_rules_with_their_hits_and_policies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = (
        "rules:\n  - {name: pin, src: [192.168.77.11], via: b}\n  - {name: vpn, dst: [10.8.0.0/16], action: bypass}\n"
    )
    h = Harness(tmp_path, monkeypatch, CONFIG + rules)

    async def test() -> None:
        d = h.build()
        await d.reconcile("start")
        h.kernel.nft_bump("rule_pin", 7)
        status = await handle(d, {"cmd": "status"})
        assert [(r["name"], r["target"], r["hits"]) for r in status["rules"]] == [
            ("pin", "via b", 7),
            ("vpn", "bypass", 0),
        ]
        assert [(p["name"], p["active"]) for p in status["policies"]] == [
            ("default", {"a": 1, "b": 1}),
            ("via_b", {"b": 1}),
        ]

    run(test)


def test_domain_sets_are_pushed_only_for_the_families_the_config_balances(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after a reload that turned IPv6 off, the resolver still holds AAAA answers: the push after the
    reconcile must not name the ``dom6_`` set the reconcile just removed (the whole update would fail)."""
    h = Harness(tmp_path, monkeypatch, CONFIG + "rules:\n  - {name: video, dst_domains: [video.example], via: b}\n")
    sent: list[str] = []
    apply = h.kernel.nft_apply
    monkeypatch.setattr(h.kernel, "nft_apply", lambda text: (sent.append(text), apply(text))[1])

    async def test() -> None:
        d = h.build()
        await d.reconcile("start")
        watcher = DomainWatcher(["video.example"], ResolverSettings(ipv6=True), lambda _e: None)
        watcher.tables[4].succeeded("video.example", [ipaddress.IPv4Address("192.0.2.80")], 300, time.monotonic())
        watcher.tables[6].succeeded("video.example", [ipaddress.IPv6Address("2001:db8::80")], 300, time.monotonic())
        idle = asyncio.create_task(asyncio.Event().wait())
        d.domains._running = (watcher, idle, watcher._settings)
        sent.clear()
        d.domains.push()
        await settle(d)
        idle.cancel()
        assert len(sent) == 1 and "dom_video" in sent[0] and "192.0.2.80 timeout" in sent[0], sent
        assert "dom6_" not in sent[0] and not h.kernel.nft_refused

    run(test)
