"""The kernel as the reconciler and the daemon see it: one interface, a real and a fake implementation.

:class:`LinuxKernel` calls the thin adapters (nft, pyroute2, /proc/sys,
ctnetlink).  Tests give the reconciler and the daemon a fake with the same
methods (``tests/fakekernel.py``), so their logic runs in milliseconds without
root; the real-kernel tests in the lab still cover the adapters.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from pyroute2 import IPRoute

from wanlb.adapters import nft, routing, sysctl
from wanlb.ctnetlink import codec
from wanlb.ctnetlink.client import Conntrack
from wanlb.ctnetlink.entry import Entry
from wanlb.ctnetlink.filters import Filter
from wanlb.ctnetlink.nlsock import DumpInterrupted
from wanlb.render import Route, Rule
from wanlb.tune import TableStats
from wanlb.uplink import Snapshot

PICK_BATCH = 65536  # entries a selective delete holds at once (a dump that has more is followed by another)
PICK_PASSES = 16  # dumps one selective delete makes at most


class Kernel(Protocol):
    def links(self) -> dict[str, bool]:
        """Interface name → usable (up with carrier)."""

    def snapshot(
        self, protocols: Collection[int], wans: Collection[str] = (), tables: Collection[int] = (254,)
    ) -> Snapshot:
        """Connected networks, wanlb's routes (tagged with ``protocols``), other default routes in ``tables``
        and the ``wans`` interfaces that exist (see :func:`wanlb.adapters.routing.read_snapshot`)."""

    def rules(self, protocols: Collection[int]) -> list[Rule]: ...

    def add_rule(self, rule: Rule) -> None: ...

    def delete_rule(self, rule: Rule) -> None: ...

    def replace_routes(self, routes: Sequence[Route]) -> list[tuple[Route, str]]:
        """Install each route (replacing its table and destination); the ones that failed, and why."""

    def delete_route(self, route: Route) -> None: ...

    def route_lookup(self, dst: ipaddress.IPv4Address | ipaddress.IPv6Address) -> routing.Lookup:
        """The kernel's route for an unmarked packet to ``dst``: (type, table, prefix) (``wanlb explain``)."""

    def nft_read(self) -> Sequence[Any] | None:
        """``nft -j list table inet wanlb`` (the ``nftables`` array), or None when the table is missing."""

    def nft_counters(self) -> dict[str, tuple[int, int]] | None:
        """Our table's named counters alone, name → (packets, bytes); None when the table is missing."""

    def nft_generation(self) -> int | None:
        """The ruleset generation (changes with every committed transaction), None if unknown."""

    def nft_apply(self, transaction: str) -> None:
        """Apply one ``nft -f`` transaction atomically (all or nothing); raise on refusal."""

    def nft_check(self, transaction: str) -> None:
        """Ask whether a transaction would be accepted (``nft -c``), changing nothing; raise if not."""

    def sysctl_read(self, key: str) -> str | None: ...

    def sysctl_write(self, key: str, value: str) -> None: ...

    def ct_count(self, mark: int, mask: int, family: int = 0) -> int:
        """Conntrack entries whose ``mark & mask == mark``."""

    def ct_flush(self, mark: int, mask: int, family: int = 0) -> None:
        """Delete every conntrack entry whose ``mark & mask == mark`` (one kernel flush)."""

    def ct_delete_where(self, mark: int, mask: int, family: int, pick: Callable[[Entry], bool]) -> int:
        """Delete the entries with the mark (of ``family``; 0: both) that ``pick`` chooses; how many went."""

    def ct_stats(self) -> TableStats:
        """The table's size, limit and trouble counters."""


class LinuxKernel:
    """The real thing, in the current network namespace.

    One rtnetlink socket (pyroute2's IPRoute costs ~4 ms to open) and one
    ctnetlink socket are kept for the daemon's life; each is used by one
    thread at a time.
    """

    def __init__(self) -> None:
        self._ct = Conntrack()
        self._ct_lock = threading.Lock()
        self._ipr: IPRoute | None = None
        self._ipr_lock = threading.Lock()
        self._counters_lock = threading.Lock()  # the counters' netlink socket: passive detection and the quotas

    def close(self) -> None:
        self._ct.close()
        if self._ipr is not None:
            self._ipr.close()

    @contextmanager
    def _rtnl(self) -> Iterator[IPRoute]:
        with self._ipr_lock:
            if self._ipr is None:
                self._ipr = IPRoute()
            try:
                yield self._ipr
            except OSError:  # a broken socket is replaced at the next use
                self._ipr.close()
                self._ipr = None
                raise

    def links(self) -> dict[str, bool]:
        with self._rtnl() as ipr:
            return routing.links(ipr)

    def snapshot(
        self, protocols: Collection[int], wans: Collection[str] = (), tables: Collection[int] = (254,)
    ) -> Snapshot:
        with self._rtnl() as ipr:
            return routing.read_snapshot(ipr, protocols, wans, tables)

    def rules(self, protocols: Collection[int]) -> list[Rule]:
        with self._rtnl() as ipr:
            return routing.read_rules(ipr, protocols)

    def add_rule(self, rule: Rule) -> None:
        with self._rtnl() as ipr:
            routing.add_rule(ipr, rule)

    def delete_rule(self, rule: Rule) -> None:
        with self._rtnl() as ipr:
            routing.delete_rule(ipr, rule)

    def replace_routes(self, routes: Sequence[Route]) -> list[tuple[Route, str]]:
        with self._rtnl() as ipr:
            failed = []
            for route in routes:
                try:
                    routing.replace_route(ipr, route)
                except routing.RoutingError as exc:
                    failed.append((route, str(exc)))
            return failed

    def delete_route(self, route: Route) -> None:
        with self._rtnl() as ipr:
            routing.delete_route(ipr, route)

    def route_lookup(self, dst: ipaddress.IPv4Address | ipaddress.IPv6Address) -> routing.Lookup:
        with self._rtnl() as ipr:
            return routing.lookup(ipr, dst)

    def nft_read(self) -> Sequence[Any] | None:
        return nft.table_json()

    def nft_counters(self) -> dict[str, tuple[int, int]] | None:
        with self._counters_lock:  # (one socket, kept open: the loop and a worker thread both read it)
            return nft.counters()

    def nft_generation(self) -> int | None:
        return nft.generation()

    def nft_apply(self, transaction: str) -> None:
        nft.apply(transaction)

    def nft_check(self, transaction: str) -> None:
        nft.check(transaction)

    def sysctl_read(self, key: str) -> str | None:
        return sysctl.read(key)

    def sysctl_write(self, key: str, value: str) -> None:
        sysctl.write(key, value)

    def ct_count(self, mark: int, mask: int, family: int = 0) -> int:
        """Entries with the mark; ``family`` 4 or 6 counts only that family's (0: both)."""
        af = {4: socket.AF_INET, 6: socket.AF_INET6}.get(family)
        with self._ct_lock:
            return sum(self._ct.count_by_mark(Filter(family=af, mark=mark, mark_mask=mask)).values())

    def ct_flush(self, mark: int, mask: int, family: int = 0) -> None:
        """Delete the entries with the mark, of one family (4, 6) or both (0), in the kernel."""
        af = {4: socket.AF_INET, 6: socket.AF_INET6}.get(family, 0)
        with self._ct_lock:
            self._ct.sock.request(codec.encode_flush(af, mark, mask))

    def ct_delete_where(self, mark: int, mask: int, family: int, pick: Callable[[Entry], bool]) -> int:
        """A selective flush: the kernel dumps only the entries with the mark, ``pick`` chooses among them, and
        each chosen one is deleted by its tuple, zone and id (one already gone is not counted; a new connection
        that reuses its tuple is not touched).  Bounded: at most :data:`PICK_BATCH` entries are held at a time,
        deleted once their dump has ended (the socket carries one request at a time); a dump that had more, or
        that the kernel flagged as interrupted, is followed by another, at most :data:`PICK_PASSES` in all."""
        af = {4: socket.AF_INET, 6: socket.AF_INET6}.get(family)
        flt = Filter(family=af, mark=mark, mark_mask=mask)
        deleted = 0
        with self._ct_lock:
            for _ in range(PICK_PASSES):
                picked: list[Entry] = []
                more = False
                try:
                    for entry in self._ct.dump(flt):  # (read to its end, whatever is picked)
                        if not pick(entry):
                            continue
                        if len(picked) < PICK_BATCH:
                            picked.append(entry)
                        else:
                            more = True
                except DumpInterrupted:  # (raised at the dump's end) some entries may have been missed
                    more = True
                deleted += self._ct.delete(picked)
                if not more:
                    break
        return deleted

    def ct_stats(self) -> TableStats:
        with self._ct_lock:
            stats = self._ct.stats()
        total = {k: sum(cpu.get(k, 0) for cpu in stats.cpus) for k in ("drop", "early_drop", "insert_failed")}
        return TableStats(stats.count, stats.max, **total)
