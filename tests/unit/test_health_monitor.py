"""The probing loop's round logic, with a scripted prober instead of the network (probes themselves are
exercised against the kernel in tests/integration/test_failover.py)."""

from __future__ import annotations

import asyncio

import pytest

from wanlb.config import parse_config
from wanlb.health.machine import HealthMachine, HealthParams
from wanlb.health.monitor import IspMonitor, RoundResult
from wanlb.health.probes import ProbeFailed
from wanlb.states import IspStatus

CONFIG = """
lan: {interfaces: [lan0]}
isps:
  - name: a
    interface: wan1
    gateway: 100.64.1.1
    health: {targets: [192.0.2.1, 192.0.2.2, 192.0.2.3], quorum: 2, interval: 50ms, timeout: 200ms}
"""


class ScriptedProber:
    """Answers per target: a latency, 'refuse' (ProbeFailed), 'crash' (a bug) or 'silent' (never answers)."""

    def __init__(self, script: dict[str, str | float]):
        self.script = script
        self.started = 0

    async def probe(self, target: str) -> float:
        self.started += 1
        answer = self.script[target]
        if answer == "refuse":
            raise ProbeFailed("connection refused")
        if answer == "crash":
            raise ValueError("a bug in a probe")
        if answer == "silent":
            await asyncio.sleep(3600)
        await asyncio.sleep(0.001)
        return float(answer)

    def close(self) -> None:
        pass


def monitor(script: dict[str, str | float]) -> tuple[IspMonitor, list[tuple[str, RoundResult, int]]]:
    """A monitor on a scripted prober; the list gets (ISP, result, probes started so far) per finished round."""
    isp = parse_config(CONFIG).isps[0]
    prober = ScriptedProber(script)
    rounds: list[tuple[str, RoundResult, int]] = []

    def record(name: str, result: RoundResult, family: int) -> None:
        rounds.append((name, result, prober.started))

    m = IspMonitor(isp, 0x100, record)
    m.prober = prober  # type: ignore[assignment]
    return m, rounds


def test_round_passes_with_quorum_and_counts_every_lost_probe() -> None:
    m, _ = monitor({"192.0.2.1": 0.010, "192.0.2.2": 0.030, "192.0.2.3": "silent"})
    result = asyncio.run(m.probe_round())
    assert result.ok and result.answered == 2
    assert result.latency == pytest.approx(0.020)
    assert result.loss == pytest.approx(1 / 3)
    assert result.errors == {"192.0.2.3": "no answer in 200 ms"}


def test_round_fails_below_quorum_with_reasons() -> None:
    m, _ = monitor({"192.0.2.1": 0.010, "192.0.2.2": "refuse", "192.0.2.3": "silent"})
    result = asyncio.run(m.probe_round())
    assert not result.ok and result.answered == 1
    assert result.errors == {"192.0.2.2": "connection refused", "192.0.2.3": "no answer in 200 ms"}


def test_rounds_overlap_so_a_dead_link_is_counted_at_the_probing_rate() -> None:
    """Rounds start every 50 ms although each waits 200 ms for its answers. When the 2nd failed round
    ends, about 5 rounds have started; one round at a time would have started exactly 2."""
    m, rounds = monitor({t: "silent" for t in ("192.0.2.1", "192.0.2.2", "192.0.2.3")})

    async def run_two_rounds() -> None:
        task = asyncio.create_task(m.run())
        async with asyncio.timeout(5):
            while len(rounds) < 2:
                await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(run_two_rounds())
    assert [(name, result.ok, result.answered) for name, result, _ in rounds[:2]] == [("a", False, 0)] * 2
    assert "192.0.2.1 no answer in 200 ms" in rounds[1][1].describe_errors()
    assert rounds[1][1].loss == 1.0 and m.rounds >= 2 and m.last is not None
    assert rounds[1][2] >= 3 * 3, "rounds did not overlap"
    # The fleet's machine (down_after=2) turns those two rounds into DOWN.
    machine = HealthMachine(HealthParams(down_after=2))
    transitions = [machine.round(0.0, r.ok, r.latency, r.loss) for _, r, _ in rounds[:2]]
    assert [t.new for t in transitions if t] == [IspStatus.DOWN]


def test_the_monitor_probes_through_the_mark_it_is_given_and_the_isps_interface() -> None:
    isp = parse_config(CONFIG).isps[0]
    m = IspMonitor(isp, 0x4200, lambda name, result: None)  # the mark comes from the runtime allocation
    assert (m.mark, m.prober.egress.mark, m.prober.egress.device) == (0x4200, 0x4200, "wan1")
    m.prober.close()


def test_a_crashing_probe_is_a_lost_probe_not_a_dead_monitor() -> None:
    m, _ = monitor({"192.0.2.1": 0.010, "192.0.2.2": 0.010, "192.0.2.3": "crash"})
    result = asyncio.run(m.probe_round())
    assert result.ok and result.errors == {"192.0.2.3": "probe error: ValueError('a bug in a probe')"}


def test_the_target_gateway_is_the_next_hop_the_uplink_has_now_and_no_interface_means_no_rounds() -> None:
    import ipaddress

    from wanlb.uplink import Uplink

    text = CONFIG.replace("gateway: 100.64.1.1", "gateway: auto").replace("192.0.2.1, 192.0.2.2, 192.0.2.3", "gateway")
    isp = parse_config(text.replace("quorum: 2", "quorum: 1")).isps[0]
    link = [Uplink("waiting for gateway")]
    rounds: list[RoundResult] = []
    prober = ScriptedProber({"100.64.9.1": 0.004, "10.0.0.1": 0.002})
    m = IspMonitor(isp, 0x100, lambda _n, r, _f: rounds.append(r), uplink=lambda: link[0])
    m.prober = prober  # type: ignore[assignment]

    async def go() -> None:
        await m._round()
        link[0] = Uplink(None, ipaddress.IPv4Address("100.64.9.1"))  # learned: a DHCP router
        await m._round()
        link[0] = Uplink(None, None, peer=ipaddress.IPv4Address("10.0.0.1"))  # PPP: the peer address
        await m._round()
        link[0] = Uplink("no interface")
        await m._round()  # skipped: nothing sent, nothing reported

    asyncio.run(go())
    assert [r.ok for r in rounds] == [False, True, True] and prober.started == 2
    assert rounds[0].errors == {"gateway": "no next hop to probe (none learned, or a device route without a peer)"}
    assert rounds[2].latency == 0.002


def test_a_sparse_interval_skips_ticks_and_the_full_rate_is_back_at_the_next_tick() -> None:
    """While the fleet says 1 s (a standby ISP nobody uses) the monitor, ticking every 50 ms, starts one round;
    when it says 50 ms again (the ISP is needed) the rounds come at the full rate from the next tick on."""
    m, rounds = monitor({t: 0.001 for t in ("192.0.2.1", "192.0.2.2", "192.0.2.3")})
    now = {"interval": 1.0}
    m.interval = lambda: now["interval"]

    async def go() -> tuple[int, int]:
        task = asyncio.create_task(m.run())
        await asyncio.sleep(0.5)  # ten ticks
        sparse = len(rounds)
        now["interval"] = 0.05
        await asyncio.sleep(0.5)
        task.cancel()
        return sparse, len(rounds) - sparse

    sparse, full = asyncio.run(go())
    assert sparse == 1, sparse
    assert full >= 5, full  # about ten: every tick
