"""Link-state events (rtnetlink ``RTMGRP_LINK``): when an interface goes up or down, reconcile now.

When a WAN is set down the kernel deletes every route through it, wanlb's ISP
table included.  The periodic resync would put them back within 5 s; reacting to
the link event instead lets a PPP/LTE uplink that comes back be probed (and
used) at once.  Only the messages are read here; what to do is the daemon's call.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable, Iterator

RTMGRP_LINK = 1
RTM_NEWLINK = 16
RTM_DELLINK = 17
IFLA_IFNAME = 3
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000

_NLMSG = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_RTA = struct.Struct("=HH")


def parse_links(data: bytes) -> Iterator[tuple[str, bool]]:
    """(interface name, usable) for every link message in one netlink datagram.

    Usable = administratively up with carrier; a deleted link is not usable.
    """
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
        end = offset + length
        if length < _NLMSG.size or end > len(data):
            return  # malformed or truncated: nothing after it can be trusted
        body = offset + _NLMSG.size
        if kind in (RTM_NEWLINK, RTM_DELLINK) and body + _IFINFO.size <= end:
            _family, _type, _index, flags, _change = _IFINFO.unpack_from(data, body)
            name = _ifname(data, body + _IFINFO.size, end)
            if name is not None:
                usable = kind == RTM_NEWLINK and flags & IFF_UP != 0 and flags & IFF_LOWER_UP != 0
                yield name, usable
        offset += (length + 3) & ~3


def _ifname(data: bytes, pos: int, end: int) -> str | None:
    while pos + _RTA.size <= end:
        rta_len, rta_type = _RTA.unpack_from(data, pos)
        if rta_len < _RTA.size:
            return None
        if rta_type == IFLA_IFNAME:
            return data[pos + _RTA.size : pos + rta_len].split(b"\0", 1)[0].decode(errors="replace")
        pos += (rta_len + 3) & ~3
    return None


class LinkWatcher:
    """Calls ``on_change(name, usable)`` from the event loop whenever a link's usability changes."""

    def __init__(self, on_change: Callable[[str, bool], None]):
        self.on_change = on_change
        self._known: dict[str, bool] = {}
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.bind((0, RTMGRP_LINK))
        self._sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ENOBUFS: messages were missed; the periodic resync covers them
                return
            for name, usable in parse_links(data):
                if self._known.get(name) != usable:
                    self._known[name] = usable
                    self.on_change(name, usable)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()
