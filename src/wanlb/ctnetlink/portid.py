"""Which process sent a netlink request: conntrack -E's `` [USERSPACE] portid=N progname=NAME`` suffix.

The kernel stamps an event caused by a userspace request (``conntrack -D``, ``-I``, a daemon's flush)
with the requesting socket's port id; events of packets carry 0.  conntrack 1.4.7 finds the socket in
``/proc/net/netlink`` (this namespace's), its inode among ``/proc/PID/fd`` (PID = the port id first,
as a process's first netlink socket is bound to its PID, then every process) and the name in
``/proc/PID/stat``; without a live owner only the port id is printed.  Done here the same way, once
per port id in a row of events from it (a 200k-entry ``-D`` costs one look-up, not 200k).
"""

from __future__ import annotations

import os

NETLINK_NETFILTER = 12


def socket_inode(portid: int, proc: str = "/proc") -> int | None:
    """The inode of this namespace's NETLINK_NETFILTER socket bound to ``portid``, if one is open."""
    try:
        with open(f"{proc}/net/netlink") as rows:
            for row in rows:
                cols = row.split()
                # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
                if len(cols) >= 10 and cols[1] == str(NETLINK_NETFILTER) and cols[2] == str(portid):
                    return int(cols[9])
    except (OSError, ValueError):
        return None
    return None


def _comm(pid: str, proc: str) -> str | None:
    try:
        with open(f"{proc}/{pid}/stat") as stat:
            text = stat.read(4096)
    except OSError:
        return None
    start = text.find("(")
    end = text.find(")", start + 1)  # up to the first ')', as conntrack reads it
    return text[start + 1 : end] if start >= 0 and end > start else None


def _holds(pid: str, inode: int, proc: str) -> bool:
    target = f"socket:[{inode}]"
    try:
        fds = os.listdir(f"{proc}/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"{proc}/{pid}/fd/{fd}") == target:
                return True
        except OSError:
            continue
    return False


def program_of(portid: int, proc: str = "/proc") -> str | None:
    """The name (``comm``) of the process holding the netlink socket ``portid``, or None."""
    inode = socket_inode(portid, proc)
    if inode is None:
        return None
    first = str(portid)
    if _holds(first, inode, proc):
        return _comm(first, proc)
    for pid in os.listdir(proc):
        if pid.isdigit() and int(pid) > 1 and pid != first and _holds(pid, inode, proc):
            return _comm(pid, proc)
    return None


class Senders:
    """The ``[USERSPACE]`` suffix per event, looking a port id up again only when it changes."""

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self._last: tuple[int, str] | None = None

    def suffix(self, portid: int) -> str:
        if portid == 0:
            return ""
        if self._last is None or self._last[0] != portid:
            name = program_of(portid, self.proc)
            text = f" [USERSPACE] portid={portid}" + (f" progname={name}" if name else "")
            self._last = (portid, text)
        return self._last[1]
