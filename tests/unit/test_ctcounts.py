"""The resync correction: a dump's counts brought up to date by the events read while it ran."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wanlb.ctcounts import corrected


def test_each_ids_last_event_decides() -> None:
    counts = {0x100: 10, 0x200: 5}
    seen = {1, 2, 3}
    window = [
        (1, False, 0x100),  # seen by the dump, destroyed after: one fewer
        (7, True, 0x200),  # created after the dump passed its bucket: one more
        (8, True, 0x100),  # created and destroyed within the dump: no change
        (8, False, 0x100),
        (2, True, 0x100),  # the dump already counted it: no change
        (9, False, 0x200),  # destroyed before the dump reached it: no change
        (-1, True, 0x200),  # no id: cannot be matched, left out
    ]
    assert corrected(counts, seen, window) == {0x100: 9, 0x200: 6}
    assert counts == {0x100: 10, 0x200: 5}  # not changed in place


@given(
    st.sets(st.integers(0, 40)),
    st.lists(st.tuples(st.integers(0, 40), st.booleans())),
    st.sets(st.integers(0, 40)),
)
def test_matches_the_table_after_the_events(before: set[int], changes: list[tuple[int, bool]], early: set[int]) -> None:
    """Whatever part of the changes the dump saw, the corrected count equals the table after all events.

    The table starts as ``before``; the changes (id, create?) happen while the dump walks it and each
    sends its event; the dump saw the ids in ``early`` as they were before the changes (their buckets were
    visited first) and the others as they are after.
    """
    window, table = [], set(before)
    for conn_id, create in changes:
        if create != (conn_id in table):  # the kernel sends NEW only for an absent id, DESTROY for a present one
            window.append((conn_id, create, 0x100))
            (table.add if create else table.discard)(conn_id)
    seen = {i for i in before if i in early} | {i for i in table if i not in early}
    assert corrected({0x100: len(seen)}, seen, window).get(0x100, 0) == len(table)
