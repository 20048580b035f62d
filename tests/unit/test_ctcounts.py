"""The resync correction: a dump's counts brought up to date by the events read while it ran."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wanlb.ctcounts import corrected

A, B = 0x100, 0x200


def test_each_ids_last_event_decides() -> None:
    counts = {A: 10, B: 5}
    seen = {1: A, 2: A, 3: A}
    window = [
        (1, False, A),  # seen by the dump, destroyed after: one fewer
        (7, True, B),  # created after the dump passed its bucket: one more
        (8, True, A),  # created and destroyed within the dump: no change
        (8, False, A),
        (2, True, A),  # the dump already counted it: no change
        (9, False, B),  # destroyed before the dump reached it: no change
        (None, True, B),  # no id: cannot be matched, left out
    ]
    assert corrected(counts, seen, window) == {A: 9, B: 6}
    assert counts == {A: 10, B: 5}  # not changed in place


def test_a_reused_id_with_another_mark_moves_to_the_new_mark() -> None:
    """A SYN that reopens a closed connection's tuple may get the freed entry, and so the same id, on
    another ISP: the dump counted the old one under A, the new one is B."""
    assert corrected({A: 1}, {5: A}, [(5, False, A), (5, True, B)]) == {A: 0, B: 1}
    assert corrected({A: 1}, {5: A}, [(5, True, B)]) == {A: 0, B: 1}  # its DESTROY read before the dump
    assert corrected({B: 1}, {5: B}, [(5, False, A), (5, True, B)]) == {B: 1}  # the dump saw the new one


def test_two_live_entries_sharing_an_id_are_told_apart_by_their_source() -> None:
    """Ids are 32-bit hashes: in a table of 50,000 entries two unrelated ones share one about a third of
    the time. The dump counted x (id 5); y (also id 5, another source) was created and destroyed while the
    dump ran, unseen: its DESTROY must not take x off (keyed by id alone, it did: a count one short)."""
    x, y = (5, b"\x0a\x00\x00\x01", 1000), (5, b"\x0a\x00\x00\x02", 2000)
    assert corrected({A: 1}, {x: A}, [(y, True, A), (y, False, A)]) == {A: 1}
    assert corrected({A: 1}, {x: A}, [(y, False, A)]) == {A: 1}
    assert corrected({A: 1}, {x: A}, [(x, False, A)]) == {A: 0}


@given(
    st.dictionaries(st.integers(0, 40), st.sampled_from([A, B])),
    st.lists(st.tuples(st.integers(0, 40), st.booleans(), st.sampled_from([A, B]))),
    st.sets(st.integers(0, 40)),
)
def test_matches_the_table_after_the_events(
    before: dict[int, int], changes: list[tuple[int, bool, int]], early: set[int]
) -> None:
    """Whatever part of the changes the dump saw, the corrected counts equal the table after all events.

    The table starts as ``before`` (id → mark); the changes happen while the dump walks it and each
    sends its event (a NEW may reuse an id that was destroyed, with any mark); the dump saw the ids in
    ``early`` as they were before the changes (their buckets were visited first) and the others as they
    are after.
    """
    window, table = [], dict(before)
    for conn_id, create, mark in changes:
        if create and conn_id not in table:
            table[conn_id] = mark
            window.append((conn_id, True, mark))
        elif not create and conn_id in table:
            window.append((conn_id, False, table.pop(conn_id)))
    seen = {i: m for i, m in before.items() if i in early} | {i: m for i, m in table.items() if i not in early}
    counts: dict[int, int] = {}
    for mark in seen.values():
        counts[mark] = counts.get(mark, 0) + 1
    want: dict[int, int] = {}
    for mark in table.values():
        want[mark] = want.get(mark, 0) + 1
    got = {m: n for m, n in corrected(counts, seen, window).items() if n}
    assert got == want
