"""Verify: can this config run here, as the next start or reload would run it?  Called by ``wanlb check``,
by every reload and by ``wanlb try``.

The shape is VyOS conf_mode's: *get_config* (:func:`wanlb.config.load_config`: the file, validated into
models) → **verify** (this: what only this machine and the running state can tell) → *generate/apply*
(:mod:`wanlb.reconcile`).  Errors refuse the config, and nothing changes; warnings are said and the
config runs:

* errors — the allocation would move live connections (:func:`wanlb.runtime.allocate` refuses), or the
  kernel would refuse the ruleset (``nft -c`` in a scratch table, with the statuses in force);
* warnings — an interface that does not exist now (it may come: ppp0, a USB modem), an uplink that is not
  usable yet and why (no learned gateway, a static one off the interface's networks), a static gateway on
  a LAN interface's network.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from wanlb import nftsync, runtime
from wanlb.config import Config
from wanlb.kernel import Kernel
from wanlb.reconcile import plan_from, read_snapshot
from wanlb.render import render
from wanlb.states import IspStatus
from wanlb.uplink import interface_warnings, uplink_warnings, uplinks

SCRATCH_TABLE = "wanlb_verify"


@dataclass(frozen=True)
class Verdict:
    allocation: runtime.Allocation | None  # what it would run with (None: refused)
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


def verify(
    config: Config,
    previous: runtime.RuntimeState | None,
    kernel: Kernel,
    *,
    reload: bool,
    statuses: Mapping[str, IspStatus] | None = None,
    statuses6: Mapping[str, IspStatus] | None = None,
    check_nft: bool = True,
) -> Verdict:
    """Verify ``config`` against ``previous`` (the runtime state: a reload keeps its promises) and the kernel.

    ``check_nft`` False skips the ``nft -c`` (it needs root)."""
    try:
        allocation = runtime.allocate(config, previous, reload=reload)
    except runtime.AllocationRefused as exc:
        return Verdict(None, (str(exc),))
    snapshot = read_snapshot(kernel, config, allocation.state.protocols)
    seen = uplinks(config, snapshot)
    warnings = interface_warnings(config, kernel.links()) + uplink_warnings(config, seen, snapshot.connected)
    errors = []
    if check_nft:
        # The statuses of both families: a policy whose members are all down renders another shape. Every
        # scheduled rule in effect (no clock): nft checks each rule's lookup, whatever the hour.
        desired = plan_from(config, allocation.state, snapshot, statuses, statuses6=statuses6)
        try:
            kernel.nft_check(nftsync.full_text(render(desired).nft, table=SCRATCH_TABLE))
        except Exception as exc:  # whatever nft says is the operator's answer
            errors.append(f"the kernel refuses the ruleset: {exc}")
    return Verdict(allocation, tuple(errors), tuple(warnings))


def config_warnings(config: Config, kernel: Kernel) -> list[str]:
    """What is valid but probably not what the operator meant (the daemon says it at start and after each
    reload): hooks that are not executable, ISPs nothing probes, interfaces that do not exist now."""
    out = [f"hook {hook} is not an executable file: it will fail on every change"
           for hook in config.hooks if not os.access(hook, os.X_OK)]  # fmt: skip
    unmonitored = [isp.name for isp in config.isps if not isp.health.targets]
    if unmonitored:
        out.append(f"no health targets for {', '.join(unmonitored)}: never declared down")
    return out + interface_warnings(config, kernel.links())
