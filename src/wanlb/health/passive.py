"""Passive detection: an ISP is suspected from the datapath's own evidence, before any probe round could say.

The ruleset counts, per ISP, the NEW TCP connections balanced to it (``isp_<name>_syn``: their first packet,
a SYN) and the answers that come back from its WAN (``isp_<name>_answer``: a SYN-ACK, a RST — a refused
connection was answered — or an inbound SYN).  Every :data:`TICK` the daemon hands both to
:meth:`PassiveDetector.sample`.  An ISP with ``min_connections`` SYNs sent since its last answer, each older
than ``timeout`` and within ``window`` — while some other ISP answered in the window, so the clients and the
servers are fine — is suspected: the fleet takes it out of balancing at once and has it probed at once
(:meth:`wanlb.fleet.Fleet.suspect`); a probe round sent after that which answers clears it.

Counters, not conntrack events: reading two counters per ISP costs the same at any connection rate, and
nothing runs per connection in Python.  What counters cannot say is *which* destinations went unanswered;
the confirming probe round, and the other ISPs answering meanwhile, stand in for that.  Pure: the samples in,
the ISPs newly suspected out.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

TICK = 0.05


@dataclass(frozen=True)
class Sample:
    at: float
    syn: int


class PassiveDetector:
    def __init__(self, timeout: float, window: float, min_connections: int) -> None:
        self.timeout, self.window, self.min_connections = timeout, window, min_connections
        self.history: dict[str, deque[Sample]] = {}  # per ISP, its SYN counts of the last window
        self.answered: dict[str, tuple[int, int, float]] = {}  # per ISP: answers so far, SYNs then, when

    def sample(self, now: float, counts: Mapping[str, tuple[int, int]]) -> dict[str, str]:
        """``counts``: ISP → (SYNs, answers) so far.  Returns the ISPs that look dead now, each with why.

        An ISP's SYNs are unanswered when they were sent after its last answer came back and at least
        ``timeout`` ago (and within ``window``): answers from before a failure never hide it."""
        for name in set(self.history) - set(counts):
            del self.history[name], self.answered[name]
        waiting: dict[str, int] = {}
        for name, (syn, synack) in counts.items():
            samples = self.history.setdefault(name, deque())
            last = self.answered.get(name)
            if samples and (syn < samples[-1].syn or last is None or synack < last[0]):
                samples.clear()  # the counters were made afresh (a ruleset that recreated them)
                last = None
            samples.append(Sample(now, syn))
            while len(samples) > 1 and samples[1].at <= now - self.window:
                samples.popleft()
            if last is None:
                last = (synack, syn, -math.inf)  # the baseline: what was before is not evidence either way
            elif synack > last[0]:
                last = (synack, syn, now)  # an answer: every SYN sent so far may have been answered
            self.answered[name] = last
            old_enough = _at(samples, now - self.timeout).syn
            waiting[name] = old_enough - max(last[1], samples[0].syn)
        suspects = {}
        for name, syns in waiting.items():
            others = sorted(i for i, (_, _, at) in self.answered.items() if i != name and at >= now - self.window)
            if syns >= self.min_connections and others:
                suspects[name] = (
                    f"{syns} new connections without an answer for {self.timeout * 1000:.0f} ms and no answer "
                    f"since, while {', '.join(others)} answered"
                )
        return suspects


def _at(samples: deque[Sample], when: float) -> Sample:
    """The last sample taken at or before ``when`` (the oldest one if none is that old)."""
    found = samples[0]
    for s in samples:
        if s.at > when:
            break
        found = s
    return found
