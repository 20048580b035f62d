"""Our table's named counters straight from nf_tables over netlink: one dump of ``NFT_MSG_GETOBJ`` filtered by
table and type in the kernel, about 15 µs where ``nft -j list counters`` costs a process and its JSON (tens of
milliseconds of CPU).  The passive failure detector reads the SYN and SYN-ACK counters 20 times a second and
the quotas every few seconds; status and /metrics keep ``nft -j`` (a listing of the whole table).
"""

from __future__ import annotations

import struct

from wanlb.ctnetlink import codec
from wanlb.ctnetlink import constants as C
from wanlb.ctnetlink.nlsock import NetlinkSocket

NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETOBJ = 19
NFPROTO_INET = 1
NFT_OBJECT_COUNTER = 1
NFTA_OBJ_TABLE, NFTA_OBJ_NAME, NFTA_OBJ_TYPE, NFTA_OBJ_DATA = 1, 2, 3, 4
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2
_U64 = struct.Struct(">Q")


def dump_request(table: str) -> bytes:
    """A GETOBJ dump of the counters of ``inet table`` (the kernel filters by both)."""
    payload = codec.attr(NFTA_OBJ_TABLE, table.encode() + b"\0") + codec.attr(
        NFTA_OBJ_TYPE, codec.be32(NFT_OBJECT_COUNTER)
    )
    length = codec.NLMSGHDR.size + codec.NFGENMSG.size + len(payload)
    kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETOBJ
    return (
        codec.NLMSGHDR.pack(length, kind, C.NLM_F_REQUEST | C.NLM_F_DUMP, 0, 0)
        + codec.NFGENMSG.pack(NFPROTO_INET, C.NFNETLINK_V0, 0)
        + payload
    )


def decode(buf: bytes | bytearray | memoryview, off: int, length: int) -> tuple[str, int, int] | None:
    """One GETOBJ answer: (name, packets, bytes), or None for a message that is not a whole counter."""
    name, packets, nbytes = None, None, None
    start = off + codec.NLMSGHDR.size + codec.NFGENMSG.size
    for atype, at, size in codec.attrs(buf, start, off + length):
        if atype == NFTA_OBJ_NAME:
            name = bytes(buf[at : at + size]).rstrip(b"\0").decode(errors="replace")
        elif atype == NFTA_OBJ_DATA:
            for inner, value, vsize in codec.attrs(buf, at, at + size):
                if vsize == 8 and inner == NFTA_COUNTER_PACKETS:
                    packets = _U64.unpack_from(buf, value)[0]
                elif vsize == 8 and inner == NFTA_COUNTER_BYTES:
                    nbytes = _U64.unpack_from(buf, value)[0]
    if name is None or packets is None or nbytes is None:
        return None
    return name, packets, nbytes


class CounterReader:
    """A netlink socket kept open for repeated reads of one table's counters (blocking, but a dump of a few
    dozen objects: short enough for the loop)."""

    def __init__(self, table: str) -> None:
        self.sock = NetlinkSocket()
        self.request = dump_request(table)

    def read(self) -> dict[str, tuple[int, int]]:
        """name → (packets, bytes) of every counter in the table; ENOENT (an OSError) when it has none."""
        out: dict[str, tuple[int, int]] = {}
        for buf, off, length, _mtype in self.sock.dump(self.request):
            if (found := decode(buf, off, length)) is not None:
                out[found[0]] = (found[1], found[2])
        return out

    def close(self) -> None:
        self.sock.close()
