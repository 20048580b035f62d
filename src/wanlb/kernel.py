"""The kernel as the reconciler and the daemon see it: one interface, a real and a fake implementation.

:class:`LinuxKernel` calls the thin adapters (nft, pyroute2, /proc/sys,
ctnetlink).  Tests give the reconciler and the daemon a fake with the same
methods (``tests/fakekernel.py``), so their logic runs in milliseconds without
root; the real-kernel tests in the lab still cover the adapters.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Protocol

from wanlb.adapters import nft, routing, sysctl
from wanlb.ctnetlink import codec
from wanlb.ctnetlink.client import Conntrack
from wanlb.ctnetlink.filters import Filter
from wanlb.plan import ConnectedRoute
from wanlb.render import Route, Rule


class Kernel(Protocol):
    def links(self) -> dict[str, bool]:
        """Interface name → usable (up with carrier)."""

    def connected(self) -> tuple[ConnectedRoute, ...]: ...

    def rules(self, protocols: Collection[int]) -> list[Rule]: ...

    def add_rule(self, rule: Rule) -> None: ...

    def delete_rule(self, rule: Rule) -> None: ...

    def routes(self, protocols: Collection[int]) -> list[Route]: ...

    def replace_route(self, route: Route) -> None: ...

    def delete_route(self, route: Route) -> None: ...

    def nft_read(self) -> Sequence[Any] | None:
        """``nft -j list table inet wanlb`` (the ``nftables`` array), or None when the table is missing."""

    def nft_apply(self, transaction: str) -> None:
        """Apply one ``nft -f`` transaction atomically (all or nothing); raise on refusal."""

    def sysctl_read(self, key: str) -> str | None: ...

    def sysctl_write(self, key: str, value: str) -> None: ...

    def ct_count(self, mark: int, mask: int) -> int:
        """Conntrack entries whose ``mark & mask == mark``."""

    def ct_flush(self, mark: int, mask: int) -> None:
        """Delete every conntrack entry whose ``mark & mask == mark`` (one kernel flush)."""


class LinuxKernel:
    """The real thing, in the current network namespace."""

    def __init__(self) -> None:
        self._ct = Conntrack()  # opened once: a failover should not wait for a socket setup

    def close(self) -> None:
        self._ct.close()

    def links(self) -> dict[str, bool]:
        return routing.links()

    def connected(self) -> tuple[ConnectedRoute, ...]:
        return routing.read_connected()

    def rules(self, protocols: Collection[int]) -> list[Rule]:
        return routing.read_rules(protocols)

    def add_rule(self, rule: Rule) -> None:
        routing.add_rule(rule)

    def delete_rule(self, rule: Rule) -> None:
        routing.delete_rule(rule)

    def routes(self, protocols: Collection[int]) -> list[Route]:
        return routing.read_routes(protocols)

    def replace_route(self, route: Route) -> None:
        routing.replace_route(route)

    def delete_route(self, route: Route) -> None:
        routing.delete_route(route)

    def nft_read(self) -> Sequence[Any] | None:
        return nft.table_json()

    def nft_apply(self, transaction: str) -> None:
        nft.apply(transaction)

    def sysctl_read(self, key: str) -> str | None:
        return sysctl.read(key)

    def sysctl_write(self, key: str, value: str) -> None:
        sysctl.write(key, value)

    def ct_count(self, mark: int, mask: int) -> int:
        return sum(self._ct.count_by_mark(Filter(mark=mark, mark_mask=mask)).values())

    def ct_flush(self, mark: int, mask: int) -> None:
        self._ct.sock.request(codec.encode_flush(0, mark, mask))
