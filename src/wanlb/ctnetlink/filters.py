"""Conntrack filters: one description, compiled twice.

A :class:`Filter` becomes kernel dump attributes (so the kernel copies only
matching entries) and a userspace predicate for the rest.  Family and mark have
been filtered by every kernel we support, so they are not checked again; all
other fields are, on what the kernel returns: that costs little because the
kernel already dropped most entries, and it keeps results right on kernels that
ignore part of a filter (CTA_FILTER arrived in 5.8, status in 5.15, zone in
6.8).  A kernel that rejects a filter makes the client ask
:meth:`Filter.kernel_requests` again for a lower level.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace

from wanlb.ctnetlink import codec
from wanlb.ctnetlink import constants as C
from wanlb.ctnetlink.entry import Entry

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# What the kernel is asked to filter, from most to least.
LEVEL_TUPLE = 2  # family, mark, status, CTA_FILTER tuple fields
LEVEL_MARK = 1  # family, mark, status
LEVEL_FAMILY = 0


@dataclass(frozen=True)
class Filter:
    """What ``conntrack -L`` options select; every field ``None`` matches everything.

    ``src``/``dst`` are the original direction's addresses (a prefix matches in
    userspace, a single address is also matched by the kernel); ``states`` are
    TCP state numbers and imply TCP.
    """

    family: int | None = None
    proto: int | None = None
    src: Network | None = None
    dst: Network | None = None
    sport: int | None = None
    dport: int | None = None
    states: frozenset[int] | None = None
    mark: int | None = None
    mark_mask: int = 0xFFFFFFFF
    zone: int | None = None
    orig_zone: int | None = None  # a direction's own zone (conntrack --orig-zone / --reply-zone)
    reply_zone: int | None = None
    status: int | None = None
    status_mask: int | None = None
    # matched in userspace only (conntrack -r/-q, --reply-port-*, --icmp-*, --src-nat/--dst-nat/--any-nat)
    reply_src: Network | None = None
    reply_dst: Network | None = None
    reply_sport: int | None = None
    reply_dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    nat: str | None = None  # "src", "dst" or "any"

    def __post_init__(self) -> None:
        fams = {n.version for n in (self.src, self.dst, self.reply_src, self.reply_dst) if n is not None}
        if len(fams) > 1:
            raise ValueError("source and destination are of different address families")
        if fams:
            fam = C.AF_INET if fams == {4} else C.AF_INET6
            if self.family is not None and self.family != fam:
                raise ValueError(f"address is not {C.FAMILY_NAMES[self.family]}")
            object.__setattr__(self, "family", fam)
        if self.states is not None:
            if self.proto not in (None, C.IPPROTO_TCP):
                raise ValueError("--state needs the tcp protocol")
            object.__setattr__(self, "proto", C.IPPROTO_TCP)
        if (self.sport is not None or self.dport is not None) and self.proto not in C.PORT_PROTOS:
            raise ValueError("--sport/--dport need -p tcp, udp, udplite, sctp or dccp")
        if self.mark is not None and self.mark & ~self.mark_mask:
            raise ValueError(f"mark {self.mark:#x} has bits outside mask {self.mark_mask:#x}")

    @property
    def empty(self) -> bool:
        return self == Filter()

    @property
    def mark_only(self) -> bool:
        """True if the kernel can delete the matching entries by itself (a flush by mark)."""
        return self.mark is not None and Filter(mark=self.mark, mark_mask=self.mark_mask) == self

    def residual(self, level: int) -> Filter:
        """What userspace must still check after a dump made at ``level``."""
        if level < LEVEL_MARK:
            return replace(self, family=None)
        return replace(self, family=None, mark=None, mark_mask=0xFFFFFFFF)

    def matches(self, e: Entry) -> bool:
        if self.family is not None and e.family != self.family:
            return False
        if self.proto is not None and e.proto != self.proto:
            return False
        if self.src is not None and not _in(e.src, self.src):
            return False
        if self.dst is not None and not _in(e.dst, self.dst):
            return False
        if self.sport is not None and e.sport != self.sport:
            return False
        if self.dport is not None and e.dport != self.dport:
            return False
        if self.states is not None and e.tcp_state not in self.states:
            return False
        if self.mark is not None and ((e.mark or 0) & self.mark_mask) != self.mark:
            return False
        if self.zone is not None and (e.zone or 0) != self.zone:
            return False
        if self.reply_src is not None and not _in(e.reply_src, self.reply_src):
            return False
        if self.reply_dst is not None and not _in(e.reply_dst, self.reply_dst):
            return False
        if self.reply_sport is not None and e.reply_sport != self.reply_sport:
            return False
        if self.reply_dport is not None and e.reply_dport != self.reply_dport:
            return False
        for want, got in ((self.icmp_type, e.icmp_type), (self.icmp_code, e.icmp_code), (self.icmp_id, e.icmp_id)):
            if want is not None and got != want:
                return False
        if self.nat is not None and not _natted(e, self.nat):
            return False
        if self.orig_zone is not None and _zone(e.orig_zone, e.zone) != self.orig_zone:
            return False
        if self.reply_zone is not None and _zone(e.reply_zone, e.zone) != self.reply_zone:
            return False
        if self.status is not None:
            mask = self.status if self.status_mask is None else self.status_mask
            if e.status & mask != self.status:
                return False
        return True

    def kernel_requests(self, level: int = LEVEL_TUPLE) -> Iterator[bytes]:
        """Dump requests whose union is a superset of the matching entries.

        Tuple filters need a concrete family in the kernel (with family 0 it would
        ignore the addresses), so a family-less tuple filter becomes one dump
        per family.
        """
        common = b""
        if level >= LEVEL_MARK:
            if self.mark is not None:
                common += codec.attr(C.CTA_MARK, codec.be32(self.mark))
                common += codec.attr(C.CTA_MARK_MASK, codec.be32(self.mark_mask))
            if self.status is not None:
                common += codec.attr(C.CTA_STATUS, codec.be32(self.status))
                if self.status_mask is not None:
                    common += codec.attr(C.CTA_STATUS_MASK, codec.be32(self.status_mask))
        tuple_wanted = level >= LEVEL_TUPLE and (self.proto is not None or _exact(self.src) or _exact(self.dst))
        if not tuple_wanted:
            yield codec.encode_dump(self.family or 0, common)
            return
        for family in (self.family,) if self.family else (C.AF_INET, C.AF_INET6):
            yield codec.encode_dump(family, common + self._tuple_attrs(family))

    def _tuple_attrs(self, family: int) -> bytes:
        flags = 0
        src = dst = None
        if _exact(self.src):
            flags |= C.CTA_FILTER_F_IP_SRC
            src = self.src.network_address.packed  # type: ignore[union-attr]
        if _exact(self.dst):
            flags |= C.CTA_FILTER_F_IP_DST
            dst = self.dst.network_address.packed  # type: ignore[union-attr]
        if self.proto is not None:
            flags |= C.CTA_FILTER_F_PROTO_NUM
            if self.sport is not None:
                flags |= C.CTA_FILTER_F_PROTO_SRC_PORT
            if self.dport is not None:
                flags |= C.CTA_FILTER_F_PROTO_DST_PORT
        # The zone is matched in userspace only, like conntrack -w: an entry whose zone is directional
        # (zone-orig/zone-reply) has no CTA_ZONE and counts as zone 0, which the kernel's filter disagrees with.
        out = codec.nest(C.CTA_FILTER, codec.attr(C.CTA_FILTER_ORIG_FLAGS, struct.pack("=I", flags)))
        return out + codec.encode_tuple(C.CTA_TUPLE_ORIG, family, src, dst, self.proto, self.sport, self.dport)


def _natted(e: Entry, kind: str) -> bool:
    """Source/destination NAT as conntrack(8) sees it: the reply tuple does not mirror the original."""
    snat = e.reply_dst != e.src or (e.reply_dport is not None and e.reply_dport != e.sport)
    dnat = e.reply_src != e.dst or (e.reply_sport is not None and e.reply_sport != e.dport)
    return snat if kind == "src" else dnat if kind == "dst" else snat or dnat


def _zone(directional: int | None, both: int | None) -> int:
    """A direction's zone: its own if it has one, else the entry's, else 0."""
    return directional if directional is not None else both or 0


def _exact(net: Network | None) -> bool:
    """A single IPv4 address, which the kernel can match.

    IPv6 addresses stay in userspace: the kernel's IPv6 tuple-filter compare is
    inverted (``!ipv6_addr_cmp``), so it drops exactly the entries asked for
    (seen on 6.18: ``-s fd00::1`` returned nothing).
    """
    return net is not None and net.version == 4 and net.prefixlen == net.max_prefixlen


def _in(addr: bytes, net: Network) -> bool:
    if len(addr) != len(net.network_address.packed):
        return False
    value = int.from_bytes(addr, "big")
    return value & int(net.netmask) == int(net.network_address)
