"""The one path that changes the kernel: observe → plan → render → diff → apply, level-triggered.

Start, reload, a health change, a link event and the periodic resync all call
:meth:`Reconciler.reconcile`.  It compares what the kernel *has* — our nft
table read back, every ip rule and route carrying one of our protocol tags at
any priority and in any table, our sysctls — with what is desired, and changes
only the difference, so drift and half-failed passes are repaired by the next
pass.  Order matters for live traffic: new routes and rules go in first (a mark
must have somewhere to go), then the nft transaction, then stale rules are
removed from the highest priority down and stale routes last.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from wanlb import nftsync, schedule
from wanlb.config import Config
from wanlb.kernel import Kernel
from wanlb.plan import Desired, plan
from wanlb.policy import Adjusted
from wanlb.render import Route, RoutingIntent, Rule, render
from wanlb.runtime import RuntimeState, StateStore, state_dir_problem
from wanlb.states import IspStatus
from wanlb.uplink import MAIN_TABLE, Snapshot, Uplink, uplinks

log = logging.getLogger("wanlb.reconcile")


class PreflightError(RuntimeError):
    """The machine cannot run the datapath; the message is one sentence for the operator."""


def preflight(config: Config) -> None:
    """Refuse early, and clearly, instead of half-applying."""
    if os.geteuid() != 0:
        raise PreflightError("wanlb must run as root to change nftables, routing and sysctls")
    from wanlb.adapters import nft

    nft.nft_path()
    problem = state_dir_problem(Path(config.control.socket).parent)
    if problem:
        raise PreflightError(f"control.socket: {problem}: only root may write where wanlb keeps its socket and state")
    # A configured interface that does not exist yet is not fatal (ppp0 before pppd connects): the daemon
    # logs wanlb.uplink.interface_warnings and the ISP waits for it.


def read_snapshot(kernel: Kernel, config: Config, protocols: Collection[int]) -> Snapshot:
    """What a pass plans from: the routing snapshot with the config's WANs and the tables they learn from."""
    tables = {MAIN_TABLE, *(isp.lookup_table for isp in config.isps)}
    followed = [isp.ipv6.prefix_from for isp in config.isps if isp.ipv6.prefix_from]
    return kernel.snapshot(protocols, [isp.interface for isp in config.isps] + followed, tables)


def plan_from(
    config: Config,
    state: RuntimeState,
    snapshot: Snapshot,
    statuses: Mapping[str, IspStatus] | None = None,
    adjusted: Adjusted | None = None,
    statuses6: Mapping[str, IspStatus] | None = None,
    inactive: schedule.Inactive = schedule.ALL_ON,
) -> Desired:
    """:func:`wanlb.plan.plan` with everything a routing snapshot tells: connected networks, each ISP's
    uplink, the interfaces' addresses; ``inactive``: what the schedules switch off (by default nothing)."""
    seen = uplinks(config, snapshot)
    interfaces = snapshot.interfaces
    return plan(config, state, statuses, snapshot.connected, adjusted, statuses6, seen, interfaces, inactive=inactive)


@dataclass(frozen=True)
class RoutingChanges:
    """What converging the routing needs, in the order it is applied."""

    add_routes: tuple[Route, ...]
    add_rules: tuple[Rule, ...]
    delete_rules: tuple[Rule, ...]  # highest priority first: a guard goes before the lookup it guards
    delete_routes: tuple[Route, ...]


def routing_changes(intent: RoutingIntent, rules: list[Rule], routes: list[Route]) -> RoutingChanges:
    """Pure diff of wanted against present rules and routes (present = everything with our tags)."""
    have = Counter(rules)
    add_rules = tuple(r for r in intent.rules if have[r] == 0)
    delete_rules: list[Rule] = []
    for rule, count in have.items():
        delete_rules += [rule] * (count - (1 if rule in intent.rules else 0))
    present = set(routes)
    add_routes = tuple(r for r in intent.routes if r not in present)
    # `route replace` of a wanted route takes the place of any route with its table and destination:
    # deleting that one afterwards (by table + destination) would remove the new route.
    occupied = {(r.table, r.dst) for r in intent.routes}
    delete_routes = tuple(dict.fromkeys(r for r in routes if (r.table, r.dst) not in occupied))
    return RoutingChanges(add_routes, add_rules, tuple(sorted(delete_rules, reverse=True)), delete_routes)


@dataclass(frozen=True)
class ReconcileResult:
    desired: Desired
    nft_done: float | None  # wall time the kernel accepted our nft change; None: nothing differed
    changes: tuple[str, ...]
    failures: tuple[str, ...]  # routes the kernel refused (device down, …): retried next pass
    uplinks: Mapping[str, Uplink] = field(default_factory=dict)  # each ISP's uplink as this pass saw it


class Reconciler:
    """Converges the kernel; remembers what its nft applies produced (see :mod:`wanlb.nftsync`).

    Sysctl originals are written to the runtime state (``store``) *before* the
    sysctl itself, so a ``kill -9`` never loses one.
    """

    def __init__(self, kernel: Kernel, store: StateStore):
        self.kernel = kernel
        self.store = store
        self.record: nftsync.Record = {}
        self.nft_applies = 0
        self.nft_reads = 0
        # The last read of our table, kept while the kernel's ruleset generation says nothing changed:
        # (generation, unfilled sets it was observed with, what it showed).
        self._seen: tuple[int, frozenset[str], nftsync.Observed | None] | None = None
        # An apply whose record (the kernel's fingerprints of it) is taken at the next read, off the
        # path of the change: (the table applied, the generation right after the apply).
        self._pending: tuple[nftsync.Table, int | None] | None = None
        self._last_routing: RoutingIntent | None = None
        self._last_active: set[str] = set()

    def reconcile(
        self,
        config: Config,
        state: RuntimeState,
        statuses: Mapping[str, IspStatus],
        adjusted: Adjusted | None = None,
        statuses6: Mapping[str, IspStatus] | None = None,
        wall: float | None = None,
    ) -> ReconcileResult:
        """Converge to ``config`` with the allocation in ``state`` and these statuses, its schedules as they
        stand at ``wall`` (Unix time; None: now).

        When the routing wanted is what the last pass wanted and no ISP joins
        balancing (a failover, a weight change), the nft transaction goes first —
        nothing new needs a route — and the routing is checked and repaired right
        after; otherwise new routes and rules go in before the nft transaction that
        may send marks to them.
        """
        kernel = self.kernel
        protocols = set(state.protocols)
        snapshot = read_snapshot(kernel, config, protocols)
        inactive = schedule.inactive(config, time.time() if wall is None else wall)
        desired = plan_from(config, state, snapshot, statuses, adjusted, statuses6, inactive)
        rendered = render(desired)
        changes: list[str] = []
        failures: list[str] = []
        active = set(desired.in_use)
        # Safe only when nothing new needs a route: same routing wanted, and no ISP joins balancing
        # (its routes may have gone with its link; they are checked below, after the nft change).
        nft_first = rendered.routing == self._last_routing and active <= self._last_active
        nft_done = self._nft(rendered.nft) if nft_first else None

        todo = routing_changes(rendered.routing, kernel.rules(protocols), list(snapshot.routes))
        refused = dict(kernel.replace_routes(todo.add_routes))
        for route in todo.add_routes:
            if route in refused:
                failures.append(f"{route.describe()}: {refused[route]}")
            else:
                changes.append(f"+route {route.describe()}")
        for rule in todo.add_rules:
            kernel.add_rule(rule)
            changes.append(f"+rule {rule.describe()}")
        self._sysctls(rendered.routing.sysctls, changes, dict(rendered.routing.only_from))
        if not nft_first:
            nft_done = self._nft(rendered.nft)
        self._last_routing, self._last_active = rendered.routing, active

        for rule in todo.delete_rules:
            kernel.delete_rule(rule)
            changes.append(f"-rule {rule.describe()}")
        for route in todo.delete_routes:
            kernel.delete_route(route)
            changes.append(f"-route {route.describe()}")
        for change in changes:
            log.info("routing %s", change)
        for failure in failures:
            log.warning("route not installed (retried at the next pass): %s", failure)
        if nft_done is not None:
            self._pending = (rendered.nft, self.kernel.nft_generation())
        seen = {isp.name: isp.uplink for isp in desired.isps}
        return ReconcileResult(desired, nft_done, tuple(changes), tuple(failures), seen)

    def _nft(self, table: nftsync.Table) -> float | None:
        """Apply what differs in our nft table; the wall time the kernel accepted it, None if nothing differed."""
        text = nftsync.transaction(table, self._observe(table), self.record)
        if not text:
            return None
        self.kernel.nft_apply(text)
        self.nft_applies += 1
        return time.time()

    def _observe(self, table: nftsync.Table) -> nftsync.Observed | None:
        """What the kernel holds of our table, read only when the ruleset generation moved.

        After an apply, the first read also yields the apply's record: its fingerprints are the
        applied table's only if no other transaction came in between (the generation is still the
        one right after the apply); otherwise nothing is attributable and every object is rewritten
        once, as after a restart.
        """
        generation = self.kernel.nft_generation()
        unfilled = nftsync.unfilled(table)
        seen = self._seen
        if self._pending is None and seen is not None and generation is not None and seen[:2] == (generation, unfilled):
            return seen[2]
        listing = self.kernel.nft_read()
        self.nft_reads += 1
        observed = None if listing is None else nftsync.observe(listing, unfilled)
        if self._pending is not None:
            applied, after = self._pending
            self._pending = None
            same = generation is not None and generation == after
            self.record = nftsync.record_after(applied, observed) if observed and same else {}
        self._seen = None if generation is None else (generation, unfilled, observed)
        return observed

    def _sysctls(
        self, wanted: tuple[tuple[str, str], ...], changes: list[str], only_from: Mapping[str, str] | None = None
    ) -> None:
        """Set wanted sysctls (recording originals first); give back the ones no longer wanted.  A key of
        ``only_from`` is written only while it holds that value (someone else set it otherwise: theirs)."""
        only_from = only_from or {}
        kernel = self.kernel
        recorded = self.store.state.sysctls
        originals = dict(recorded)
        wanted_keys = {k for k, _ in wanted}
        for key in [k for k in originals if k not in wanted_keys]:
            if kernel.sysctl_read(key) is not None:
                kernel.sysctl_write(key, originals[key])
                changes.append(f"restored {key}={originals[key]}")
            del originals[key]
        to_write = []
        for key, value in wanted:
            current = kernel.sysctl_read(key)
            if current is None or current == value or (key in only_from and current != only_from[key]):
                continue
            originals.setdefault(key, current)
            to_write.append((key, value))
        if originals != dict(recorded):
            self.store.set_sysctls(originals)
        for key, value in to_write:
            kernel.sysctl_write(key, value)
            changes.append(f"sysctl {key}={value}")


def cleanup(kernel: Kernel, config: Config | None, state: RuntimeState | None) -> list[str]:
    """Remove everything wanlb added and restore the sysctls it changed; nothing else.

    What is "ours" comes from the runtime state (every protocol tag ever used)
    and the config; the caller removes the state file afterwards.
    """
    done = []
    if kernel.nft_read() is not None:
        kernel.nft_apply(f"delete table {nftsync.FAMILY} {nftsync.TABLE}\n")
        done.append(f"-nft table {nftsync.FAMILY} {nftsync.TABLE}")
    protocols = set(state.protocols if state else ()) | ({config.routing.protocol} if config else set())
    if protocols:
        for rule in sorted(kernel.rules(protocols), reverse=True):
            kernel.delete_rule(rule)
            done.append(f"-rule {rule.describe()}")
        for route in dict.fromkeys(kernel.snapshot(protocols).routes):
            kernel.delete_route(route)
            done.append(f"-route {route.describe()}")
    for key, value in (state.sysctls if state else {}).items():
        if kernel.sysctl_read(key) is not None:
            kernel.sysctl_write(key, value)
            done.append(f"restored {key}={value}")
    return done
