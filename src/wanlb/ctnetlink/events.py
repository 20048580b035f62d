"""Conntrack event subscription (what ``conntrack -E`` shows), with loss accounting.

The kernel drops multicast messages when a listener's receive buffer is full and
tells it with one ENOBUFS on the next ``recv``; how many were dropped is not
known.  :class:`EventSocket` turns that into a :data:`LOST` item so consumers can
report it and resynchronise (e.g. by a dump), and asks for a large buffer with
SO_RCVBUFFORCE so bursts of 100k+ events fit in the first place.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Final, Literal

from wanlb.ctnetlink import codec
from wanlb.ctnetlink import constants as C
from wanlb.ctnetlink.codec import Decoder, Shape
from wanlb.ctnetlink.nlsock import NetlinkSocket

EventKind = Literal["new", "update", "destroy"]
GROUPS: dict[str, int] = {
    "new": C.NFNLGRP_CONNTRACK_NEW,
    "update": C.NFNLGRP_CONNTRACK_UPDATE,
    "destroy": C.NFNLGRP_CONNTRACK_DESTROY,
}
DEFAULT_RCVBUF = 128 << 20
LOST: Final = "lost"  # yielded in place of events when the kernel reports ENOBUFS
Event = tuple[EventKind, memoryview, int, Shape]  # kind, buffer, offset, shape (valid until next)


class EventSocket:
    """A subscription to conntrack NEW/UPDATE/DESTROY events."""

    def __init__(self, kinds: tuple[str, ...] = ("new", "update", "destroy"), rcvbuf: int = DEFAULT_RCVBUF):
        mask = 0
        for kind in kinds:
            mask |= 1 << (GROUPS[kind] - 1)
        self.sock = NetlinkSocket(groups=mask, rcvbuf=rcvbuf)
        self.decoder = Decoder()
        self.lost = 0  # ENOBUFS reports seen (each stands for one or more events)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def setblocking(self, flag: bool) -> None:
        self.sock.sock.setblocking(flag)

    def read(self) -> Iterator[Event | str]:
        """Events of one datagram (blocking unless non-blocking was set); LOST on overflow.

        Yields nothing if a non-blocking socket has nothing to read.
        """
        try:
            n = self.sock.recv()
        except BlockingIOError:
            return
        except OSError as err:
            if err.errno != errno.ENOBUFS:
                raise
            self.lost += 1
            yield LOST
            return
        view = self.sock.view
        for off, length, mtype, flags, _seq in codec.iter_messages(view, n):
            if mtype >> 8 != C.NFNL_SUBSYS_CTNETLINK:
                continue
            if (mtype & 0xFF) == C.IPCTNL_MSG_CT_DELETE:
                kind: EventKind = "destroy"
            elif flags & (C.NLM_F_CREATE | C.NLM_F_EXCL):
                kind = "new"
            else:
                kind = "update"
            yield kind, view, off, self.decoder.shape(view, off, length)
