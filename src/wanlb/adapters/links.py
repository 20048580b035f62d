"""rtnetlink events: links going up or down, addresses and other people's routes changing.

When a WAN is set down the kernel deletes every route through it, wanlb's ISP
table included.  The periodic resync would put them back within 5 s; reacting to
the link event instead lets a PPP/LTE uplink that comes back be probed (and
used) at once.  Address and route events (a DHCP lease, a PPP session coming
up, a modem plugged in) say that an uplink may have changed: the daemon takes a
fresh look (a reconcile reads the routing snapshot) instead of waiting for the
resync.  Routes tagged with wanlb's own protocols and the local table (which
follows every address change) are not worth a look.  Only the messages are
read here; what to do is the daemon's call.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable, Collection, Iterator

RTMGRP_LINK = 1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RT_TABLE_LOCAL = 255
IFLA_IFNAME = 3
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000

_NLMSG = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_RTA = struct.Struct("=HH")
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type; flags


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


def routing_changed(data: bytes, protocols: Collection[int]) -> bool:
    """Whether a datagram holds an address change, or a route change that is not wanlb's own (a route
    tagged with one of ``protocols``) nor in the local table."""
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
        end = offset + length
        if length < _NLMSG.size or end > len(data):
            return False
        body = offset + _NLMSG.size
        if kind in (RTM_NEWADDR, RTM_DELADDR):
            return True
        if kind in (RTM_NEWROUTE, RTM_DELROUTE) and body + _RTMSG.size <= end:
            _family, _dst, _src, _tos, table, protocol, _scope, _type, _flags2 = _RTMSG.unpack_from(data, body)
            if protocol not in protocols and table != RT_TABLE_LOCAL:
                return True
        offset += (length + 3) & ~3
    return False


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
    """From the event loop: ``on_change(name, usable)`` whenever a link's usability changes, and
    ``on_routing()`` when an address or someone else's route changed (see :func:`routing_changed`)."""

    def __init__(
        self,
        on_change: Callable[[str, bool], None],
        on_routing: Callable[[], None] = lambda: None,
        protocols: Callable[[], Collection[int]] = lambda: (),
    ):
        self.on_change = on_change
        self.on_routing = on_routing
        self.protocols = protocols  # asked at every message: a reload may add a protocol
        self._known: dict[str, bool] = {}
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.bind((0, GROUPS))
        self._sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ENOBUFS: messages were missed; take a fresh look (the resync would, too)
                self.on_routing()
                return
            for name, usable in parse_links(data):
                if self._known.get(name) != usable:
                    self._known[name] = usable
                    self.on_change(name, usable)
            if routing_changed(data, self.protocols()):
                self.on_routing()

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()
