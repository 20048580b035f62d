"""Passive detection's arithmetic: SYNs older than the timeout, no SYN-ACK in the window, another ISP
answering; a reset of the counters; and the fleet's side (a suspect is a last choice until a probe round
sent after the suspicion answers)."""

from __future__ import annotations

from test_fleet_policies import config, make, rounds, summary

from wanlb.health.passive import PassiveDetector


def feed(d: PassiveDetector, steps: list[tuple[float, dict[str, tuple[int, int]]]]) -> list[dict[str, str]]:
    return [d.sample(t, counts) for t, counts in steps]


def test_unanswered_syns_with_another_isp_answering_make_a_suspect() -> None:
    d = PassiveDetector(timeout=0.15, window=1.0, min_connections=2)
    out = feed(d, [
        (0.00, {"a": (10, 10), "b": (10, 10)}),
        (0.05, {"a": (11, 10), "b": (11, 11)}),  # a SYN each; b's answered at once
        (0.10, {"a": (12, 10), "b": (12, 12)}),
        (0.20, {"a": (12, 10), "b": (12, 12)}),  # a's first SYN is 0.15 s old: one is not enough
        (0.25, {"a": (12, 10), "b": (12, 12)}),  # both are: suspected
    ])  # fmt: skip
    assert out[:4] == [{}, {}, {}, {}]
    assert list(out[4]) == ["a"] and "2 new connections without an answer for 150 ms" in out[4]["a"]
    assert "while b answered" in out[4]["a"]


def test_one_syn_ack_in_the_window_or_no_other_isp_answering_is_no_suspicion() -> None:
    d = PassiveDetector(timeout=0.15, window=1.0, min_connections=2)
    steps = [(0.0, {"a": (0, 0), "b": (0, 0)}), (0.05, {"a": (2, 1), "b": (1, 1)}), (0.3, {"a": (2, 1), "b": (1, 1)})]
    assert feed(d, steps)[-1] == {}  # a: one of its two answered
    d = PassiveDetector(timeout=0.15, window=1.0, min_connections=2)
    steps = [(0.0, {"a": (0, 0), "b": (0, 0)}), (0.05, {"a": (2, 0), "b": (0, 0)}), (0.3, {"a": (2, 0), "b": (0, 0)})]
    assert feed(d, steps)[-1] == {}  # nobody answered anything: the clients' or servers' trouble, not a's


def test_old_evidence_leaves_the_window_and_a_counter_reset_starts_afresh() -> None:
    d = PassiveDetector(timeout=0.15, window=1.0, min_connections=2)
    feed(d, [(0.0, {"a": (0, 0), "b": (0, 0)}), (0.05, {"a": (2, 0), "b": (1, 1)})])
    assert d.sample(2.0, {"a": (2, 0), "b": (5, 5)}) == {}  # a's SYNs are older than the window now
    d = PassiveDetector(timeout=0.15, window=1.0, min_connections=2)
    feed(d, [(0.0, {"a": (50, 50), "b": (50, 50)})])
    assert d.sample(0.5, {"a": (3, 0), "b": (52, 52)}) == {}  # a's counters went back: recreated, not evidence


def test_the_fleet_holds_a_suspect_back_until_a_probe_round_sent_after_it_answers() -> None:
    fleet, clock = make(config())
    now, wall = clock.tick()
    effects = fleet.suspect("a", "2 new connections without an answer", now, wall)
    assert summary(effects) == [("reconcile",), ("emit", "a", "suspected")]
    assert fleet.statuses()["a"] == "up" and fleet.balancing()["a"] == "degraded"
    assert fleet.suspect("a", "again", now, wall) == []  # one suspicion at a time
    # A round that was in flight since before the suspicion (its answer took longer than has passed) says nothing.
    assert fleet.round("a", now + 0.01, wall, True, 0.05, 0.0) == [] and "a" in fleet.suspects
    cleared = rounds(fleet, clock, "a", "+")
    assert summary(cleared) == [("reconcile",), ("emit", "a", "cleared")] and fleet.false_alarms == 1
    assert fleet.balancing()["a"] == "up"


def test_a_failed_round_keeps_the_suspect_until_its_machine_says_down() -> None:
    fleet, clock = make(config())
    fleet.suspect("a", "no answers", *clock.tick())
    assert summary(rounds(fleet, clock, "a", "--")) == [] and "a" in fleet.suspects
    effects = rounds(fleet, clock, "a", "-")  # the third: down (down_after 3), the suspicion is over
    assert ("emit", "a", "down") in summary(effects) and "a" not in fleet.suspects
    assert fleet.false_alarms == 0
    assert fleet.suspect("c", "c has no probes to clear it", *clock.tick()) == []


def test_answers_from_before_the_failure_do_not_hide_it() -> None:
    """a answered busily until 1.0 s, then its SYNs go unanswered: suspected 0.15 s after its second unanswered
    SYN, not a whole window later."""
    d = PassiveDetector(timeout=0.15, window=1.0, min_connections=2)
    steps = [(t / 20, {"a": (t, t), "b": (t, t)}) for t in range(21)]  # every SYN answered at once
    steps += [(1.05, {"a": (21, 20), "b": (21, 21)}), (1.10, {"a": (22, 20), "b": (22, 22)})]
    steps += [(1.20, {"a": (22, 20), "b": (22, 22)}), (1.25, {"a": (22, 20), "b": (22, 22)})]
    out = feed(d, steps)
    assert all(o == {} for o in out[:-1]) and list(out[-1]) == ["a"]
