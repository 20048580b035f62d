"""The one path that changes the kernel: observe → plan → render → diff → apply.

Start, reload, a health change and an admin action all call
:meth:`Reconciler.reconcile`; it is idempotent, so calling it again with
nothing changed touches nothing.  The nft table is replaced in a single
transaction, so a refused ruleset leaves the previous one running.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from wanlb.adapters import nft, routing
from wanlb.adapters.sysctl import SysctlKeeper
from wanlb.config import Config
from wanlb.plan import Desired, IspStatus, plan
from wanlb.render import PRIORITY_SPAN, render

log = logging.getLogger("wanlb.reconcile")


class PreflightError(RuntimeError):
    """The machine cannot run the datapath; the message is one sentence for the operator."""


def preflight(config: Config) -> None:
    """Refuse early, and clearly, instead of half-applying."""
    if os.geteuid() != 0:
        raise PreflightError("wanlb must run as root to change nftables, routing and sysctls")
    nft.nft_path()
    interfaces = [*config.lan.interfaces, *(i.interface for i in config.isps)]
    missing = routing.missing_interfaces(interfaces)
    if missing:
        raise PreflightError(f"interface(s) {', '.join(missing)} named in the config do not exist")


@dataclass(frozen=True)
class ReconcileResult:
    desired: Desired
    nft_applied: bool
    routing_changes: tuple[str, ...]
    sysctls_changed: tuple[str, ...]


class Reconciler:
    """Holds what was last applied so unchanged rulesets are not re-sent."""

    def __init__(self, state_path: str):
        self.keeper = SysctlKeeper(state_path)
        self._last_nft: str | None = None
        self.nft_applies = 0

    def reconcile(self, config: Config, statuses: Mapping[str, IspStatus]) -> ReconcileResult:
        desired = plan(config, statuses, routing.read_connected())
        rendered = render(desired)
        # Routes and rules first: a mark must have somewhere to go before nft hands it out.
        changes = routing.apply(rendered.routing)
        for change in changes:
            (log.warning if change.startswith("!") else log.info)("routing %s", change)
        sysctls = self.keeper.ensure(rendered.routing.sysctls)
        applied = False
        if rendered.nft != self._last_nft or nft.table_text() is None:
            nft.apply(rendered.nft)
            self._last_nft = rendered.nft
            self.nft_applies += 1
            applied = True
        return ReconcileResult(desired, applied, tuple(changes), tuple(sysctls))


def cleanup(config: Config) -> list[str]:
    """Remove everything wanlb added and restore the sysctls it changed; nothing else."""
    done = []
    if nft.delete_table():
        done.append("-nft table inet wanlb")
    base = config.routing.rule_priority
    done += routing.cleanup(config.routing.protocol, (base, base + PRIORITY_SPAN))
    done += [f"restored {key}" for key in SysctlKeeper(config.state_path).restore()]
    return done
