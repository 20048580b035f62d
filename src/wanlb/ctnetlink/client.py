"""The conntrack operations wanlb needs, on top of the codec and the socket.

Everything streams: :meth:`Conntrack.dump` yields entries as datagrams arrive and
:meth:`Conntrack.count_by_mark` keeps only a dict of counters, so a 250k table
never sits in memory.
"""

from __future__ import annotations

import errno
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from wanlb.ctnetlink import codec
from wanlb.ctnetlink import constants as C
from wanlb.ctnetlink.codec import Decoder, NetlinkError, Shape
from wanlb.ctnetlink.entry import Entry
from wanlb.ctnetlink.filters import LEVEL_TUPLE, Filter
from wanlb.ctnetlink.nlsock import DumpInterrupted, NetlinkSocket
from wanlb.ctnetlink.update import Change

Buffer = bytes | bytearray | memoryview
Match = tuple[Buffer, int, Shape]  # (buffer, message offset, shape); valid until the next one
_REJECTED = (errno.EOPNOTSUPP, errno.EINVAL)
_MARK = struct.Struct(">I")
_DUMP_RETRIES = 3


@dataclass(frozen=True)
class Stats:
    """``conntrack -S`` and ``-C`` in one: global count/max plus per-CPU counters."""

    count: int
    max: int
    cpus: tuple[dict[str, int], ...]


class Conntrack:
    """A ctnetlink client bound to the current network namespace.

    ``relay`` makes large dumps receive in a forked helper (see
    :meth:`NetlinkSocket.dump`); leave it off in threaded or asyncio programs.
    """

    def __init__(self, relay: bool = False) -> None:
        self.sock = NetlinkSocket()
        self.relay = relay
        self.decoder = Decoder()
        self._level = LEVEL_TUPLE  # lowered once if the kernel rejects a filter

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Conntrack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ dumps

    def matches(self, flt: Filter | None = None) -> Iterator[Match]:
        """Every entry matching ``flt``, as (buffer, offset, shape) without building an Entry."""
        for buf, items in self.batches(flt):
            for off, shape in items:
                yield buf, off, shape

    def batches(self, flt: Filter | None = None) -> Iterator[tuple[Buffer, list[tuple[int, Shape]]]]:
        """Matching entries per received datagram: (buffer, [(offset, shape), ...]).

        Kernel filtering is tried at the highest level first; if the kernel
        rejects the filter (before sending anything) the next lower level is used.
        Userspace checks what the kernel may not have (see :mod:`filters`).
        """
        flt = flt or Filter()
        while True:
            rest = flt.residual(self._level)
            try:
                yield from self._batches_at(flt, self._level, None if rest.empty else rest.matches)
                return
            except NetlinkError as err:
                if err.errno not in _REJECTED or self._level == 0:
                    raise
                self._level -= 1

    def _batches_at(
        self, flt: Filter, level: int, check: Callable[[Entry], bool] | None
    ) -> Iterator[tuple[Buffer, list[tuple[int, Shape]]]]:
        shape_of = self.decoder.shape
        for request in flt.kernel_requests(level):
            for buf, frames in self.sock.dump_batches(request, relay=self.relay):
                items = [(off, shape_of(buf, off, length)) for off, length, _t in frames]
                if check is not None:
                    items = [(off, shape) for off, shape in items if check(shape.decode(buf, off))]
                yield buf, items

    def dump(self, flt: Filter | None = None) -> Iterator[Entry]:
        """Matching entries, decoded, streamed.

        Raises :class:`DumpInterrupted` at the end if the kernel flagged the dump
        as inconsistent (entries may then be missing or repeated).
        """
        for buf, off, shape in self.matches(flt):
            yield shape.decode(buf, off)

    def count_by_mark(self, flt: Filter | None = None, mask: int = 0xFFFFFFFF) -> dict[int, int]:
        """Number of matching entries per ``mark & mask``; retried if the dump was interrupted.

        Reads only the mark of each entry, at the offset its shape recorded.
        """
        for attempt in range(_DUMP_RETRIES):
            counts: Counter[int] = Counter()
            unpack = _MARK.unpack_from
            try:
                for buf, items in self.batches(flt):
                    for off, shape in items:
                        pos = shape.offsets.get("mark")
                        counts[(unpack(buf, off + pos)[0] if pos is not None else 0) & mask] += 1
                return dict(counts)
            except DumpInterrupted:
                if attempt == _DUMP_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def count_by_mark_with_ids(
        self, flt: Filter | None = None, mask: int = 0xFFFFFFFF
    ) -> tuple[dict[int, int], dict[codec.EntryKey, int]]:
        """:meth:`count_by_mark` plus, per entry (:func:`codec.entry_key`), the ``mark & mask`` it was
        counted under (for the daemon's resync)."""
        key = codec.entry_key
        for attempt in range(_DUMP_RETRIES):
            counts: Counter[int] = Counter()
            ids: dict[codec.EntryKey, int] = {}
            unpack = _MARK.unpack_from
            try:
                for buf, items in self.batches(flt):
                    for off, shape in items:
                        pos = shape.offsets.get("mark")
                        mark = (unpack(buf, off + pos)[0] if pos is not None else 0) & mask
                        counts[mark] += 1
                        k = key(buf, off, shape)
                        if k is not None:
                            ids[k] = mark
                return dict(counts), ids
            except DumpInterrupted:
                if attempt == _DUMP_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ single entries

    def get_match(self, e: Entry) -> Match | None:
        """The kernel's current entry with ``e``'s original tuple (and zone), undecoded."""
        try:
            replies = self.sock.request(codec.encode_get(e))
        except NetlinkError as err:
            if err.errno == errno.ENOENT:
                return None
            raise
        for msg in replies:
            return msg, 0, self.decoder.shape(msg, 0, len(msg))
        return None

    def get(self, e: Entry) -> Entry | None:
        found = self.get_match(e)
        return None if found is None else found[2].decode(found[0], found[1])

    def create(self, entries: Iterable[Entry], nat_src: bytes | None = None) -> list[int]:
        """Create entries in batches; returns each one's errno (0 = created)."""
        return self.sock.transact([codec.encode_create(e, nat_src) for e in entries])

    def update(self, entries: Iterable[Entry], change: Change) -> list[int]:
        """Apply ``change`` to these entries in batches; returns each one's errno (ENOENT: it went meanwhile)."""
        return self.sock.transact([change.encode(e) for e in entries])

    def delete(self, entries: Iterable[Entry]) -> int:
        """Delete these exact entries (tuple + zone + id) in batches; returns how many went.

        Entries already gone (ENOENT) are not errors: they expired or someone
        else removed them between the dump and the delete.
        """
        codes = self.sock.transact([codec.encode_delete(e) for e in entries])
        failed = [c for c in codes if c not in (0, errno.ENOENT)]
        if failed:
            raise NetlinkError(failed[0], f"{len(failed)} deletes failed")
        return codes.count(0)

    def delete_matching(self, flt: Filter) -> int:
        """Delete every matching entry; returns how many were deleted.

        A mark-only filter is one kernel flush (the kernel walks the table
        once); its count is the table size before minus after, so it also counts
        entries that came and went meanwhile.  Other filters dump, then delete the
        entries they saw, by id.
        """
        if flt.empty:
            raise ValueError("refusing to delete with an empty filter")
        if flt.mark_only:
            before = self.count()
            self.sock.request(codec.encode_flush(0, flt.mark, flt.mark_mask))
            return max(before - self.count(), 0)
        victims = list(self.dump(flt))
        return self.delete(victims)

    # ------------------------------------------------------------ statistics

    def count(self) -> int:
        """Entries in this namespace's table (CT_GET_STATS; what nf_conntrack_count shows)."""
        return self._global_stats().get(C.CTA_STATS_GLOBAL_ENTRIES, 0)

    def stats(self) -> Stats:
        glob = self._global_stats()
        cpus = []
        for buf, off, length, _t in self.sock.dump(codec.encode_stats_cpu()):
            raw = codec.decode_stats(buf, off, length)
            row = {"cpu": codec.res_id(buf, off)}
            row.update({name: raw.get(t, 0) for t, name in C.CPU_STAT_NAMES.items()})
            cpus.append(row)
        return Stats(
            count=glob.get(C.CTA_STATS_GLOBAL_ENTRIES, 0),
            max=glob.get(C.CTA_STATS_GLOBAL_MAX_ENTRIES, 0),
            cpus=tuple(cpus),
        )

    def _global_stats(self) -> dict[int, int]:
        replies = self.sock.request(codec.encode_stats())
        return codec.decode_stats(replies[0], 0, len(replies[0])) if replies else {}
