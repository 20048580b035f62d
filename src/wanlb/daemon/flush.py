"""One :class:`~wanlb.fleet.Flush` carried out, in the executor's worker thread: the kernel's flush by mark, or a
selective flush when rules' ``on_recover`` differ (which entries go is decided in :mod:`wanlb.recover`)."""

from __future__ import annotations

from wanlb import recover
from wanlb.fleet import Flush
from wanlb.flow_explain import set_elements
from wanlb.kernel import Kernel
from wanlb.reconcile import ReconcileResult


def count_and_flush(kernel: Kernel, flush: Flush, last: ReconcileResult | None) -> int:
    """Delete the flush's entries and say how many: for every entry with the mark, the kernel's count of them
    just before its one flush; for a selective flush, the entries deleted.  Those are picked by the rules of
    ``last``, the ruleset the batch's reconcile just applied — the one the flushed connections' next packets
    meet — with the domain sets the kernel holds now, read only when a rule walked matches domains."""
    if flush.moved is None:
        if count := kernel.ct_count(flush.mark, flush.mask, flush.family):
            kernel.ct_flush(flush.mark, flush.mask, flush.family)
        return count
    if last is None:  # (a selective flush always follows its batch's reconcile)
        raise RuntimeError("no ruleset applied yet: the rule of each connection cannot be told")
    walk = recover.Walk(last.desired, flush.moved)
    sets = set_elements(kernel.nft_read()) if walk.reads_sets else {}
    return kernel.ct_delete_where(flush.mark, flush.mask, flush.family, lambda entry: walk.moves(entry, sets))
