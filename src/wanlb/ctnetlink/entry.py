"""The decoded conntrack entry: one flat, immutable record.

A NamedTuple rather than a dataclass because the decoder builds 250k of them per
second from a tuple of unpacked values (``Entry._make``), which a dataclass
constructor with 35 keyword arguments cannot do at that rate.  Addresses stay
packed ``bytes`` (4 or 16) until something prints them.
"""

from __future__ import annotations

import socket
from typing import NamedTuple


class Entry(NamedTuple):
    family: int
    proto: int
    src: bytes
    dst: bytes
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    reply_src: bytes = b""
    reply_dst: bytes = b""
    reply_sport: int | None = None
    reply_dport: int | None = None
    reply_icmp_type: int | None = None
    reply_icmp_code: int | None = None
    reply_icmp_id: int | None = None
    orig_zone: int | None = None
    reply_zone: int | None = None
    status: int = 0
    timeout: int | None = None
    tcp_state: int | None = None
    sctp_state: int | None = None
    mark: int | None = None
    zone: int | None = None
    use: int | None = None
    id: int | None = None
    orig_packets: int | None = None
    orig_bytes: int | None = None
    reply_packets: int | None = None
    reply_bytes: int | None = None
    start: int | None = None  # ns since the epoch (nf_conntrack_timestamp=1)
    stop: int | None = None
    labels: bytes | None = None
    helper: str | None = None
    secctx: str | None = None
    secmark: int | None = None

    def addr(self, field: str) -> str:
        """Text form of one of the four address fields (``src``, ``reply_dst``, ...)."""
        return socket.inet_ntop(self.family, getattr(self, field))


FIELD_INDEX: dict[str, int] = {name: i for i, name in enumerate(Entry._fields)}
