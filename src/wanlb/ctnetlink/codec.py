"""Pure ctnetlink codec: bytes in, records out, and records in, bytes out.

No sockets here, so every function can be tested against captured or built
messages without root.

Decoding speed is what this module is about.  A conntrack dump is 250k messages
that differ in values but share a handful of *shapes* (the sequence of attribute
headers: IPv4/TCP with counters, IPv6/UDP, ...).  The first message of each shape
is walked attribute by attribute; the walk is turned into two ``struct.Struct``
objects, one reading every attribute header (native endian) and one reading every
value (network endian) at its fixed offset.  Later messages of the same length are
checked against the recorded headers with one ``unpack_from`` and one tuple
comparison and, if they match, decoded with one more ``unpack_from``.  A message
that matches no recorded shape is walked again, so the fast path can never return
something the walk would not.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from operator import itemgetter

from wanlb.ctnetlink import constants as C
from wanlb.ctnetlink.entry import FIELD_INDEX, Entry

NLMSGHDR = struct.Struct("=IHHII")
NFGENMSG = struct.Struct("=BBH")
NLATTR = struct.Struct("=HH")
_HDR_LEN = NLMSGHDR.size + NFGENMSG.size
_NLMSGERR = struct.Struct("=i")
_U32 = struct.Struct("=I")


class NetlinkError(OSError):
    """An NLMSG_ERROR with a non-zero code from the kernel."""


# ---------------------------------------------------------------- encoding


def attr(atype: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = NLATTR.size + len(payload)
    return NLATTR.pack(length, atype) + payload + b"\0" * (-length & 3)


def nest(atype: int, *attrs: bytes) -> bytes:
    return attr(atype | C.NLA_F_NESTED, b"".join(attrs))


def be8(v: int) -> bytes:
    return struct.pack(">B", v)


def be16(v: int) -> bytes:
    return struct.pack(">H", v)


def be32(v: int) -> bytes:
    return struct.pack(">I", v)


def message(msg_type: int, flags: int, family: int = 0, payload: bytes = b"", seq: int = 0) -> bytes:
    """An nfnetlink ctnetlink message: nlmsghdr + nfgenmsg + attributes."""
    nl_type = (C.NFNL_SUBSYS_CTNETLINK << 8) | msg_type
    length = _HDR_LEN + len(payload)
    return (
        NLMSGHDR.pack(length, nl_type, flags | C.NLM_F_REQUEST, seq, 0)
        + NFGENMSG.pack(family, C.NFNETLINK_V0, 0)
        + payload
    )


def encode_tuple(
    atype: int,
    family: int,
    src: bytes | None,
    dst: bytes | None,
    proto: int | None,
    sport: int | None = None,
    dport: int | None = None,
    icmp: tuple[int | None, int | None, int | None] = (None, None, None),
    zone: int | None = None,
) -> bytes:
    """CTA_TUPLE_ORIG/REPLY; fields left ``None`` are omitted (for filters).

    ``zone`` is the tuple's own (directional) zone, ``--orig-zone``/``--reply-zone``.
    """
    v6 = family == C.AF_INET6
    ips = b""
    if src is not None:
        ips += attr(C.CTA_IP_V6_SRC if v6 else C.CTA_IP_V4_SRC, src)
    if dst is not None:
        ips += attr(C.CTA_IP_V6_DST if v6 else C.CTA_IP_V4_DST, dst)
    parts = [nest(C.CTA_TUPLE_IP, ips)]
    if proto is not None:
        pa = [attr(C.CTA_PROTO_NUM, be8(proto))]
        if sport is not None:
            pa.append(attr(C.CTA_PROTO_SRC_PORT, be16(sport)))
        if dport is not None:
            pa.append(attr(C.CTA_PROTO_DST_PORT, be16(dport)))
        itype, icode, iid = icmp
        id_t, type_t, code_t = (
            (C.CTA_PROTO_ICMPV6_ID, C.CTA_PROTO_ICMPV6_TYPE, C.CTA_PROTO_ICMPV6_CODE)
            if v6
            else (C.CTA_PROTO_ICMP_ID, C.CTA_PROTO_ICMP_TYPE, C.CTA_PROTO_ICMP_CODE)
        )
        if iid is not None:
            pa.append(attr(id_t, be16(iid)))
        if itype is not None:
            pa.append(attr(type_t, be8(itype)))
        if icode is not None:
            pa.append(attr(code_t, be8(icode)))
        parts.append(nest(C.CTA_TUPLE_PROTO, *pa))
    if zone is not None:
        parts.append(attr(C.CTA_TUPLE_ZONE, be16(zone)))
    return nest(atype, *parts)


def entry_tuples(e: Entry) -> bytes:
    """Both tuples of an entry, as the kernel wants them to create it."""
    reply = encode_tuple(
        C.CTA_TUPLE_REPLY, e.family, e.reply_src, e.reply_dst, e.proto, e.reply_sport, e.reply_dport,
        (e.reply_icmp_type, e.reply_icmp_code, e.reply_icmp_id), e.reply_zone,
    )  # fmt: skip
    return orig_tuple(e) + reply


def encode_create(e: Entry, nat_src: bytes | None = None, seq: int = 0) -> bytes:
    """IPCTNL_MSG_CT_NEW creating ``e`` (timeout required; status, mark, zone, TCP state optional).

    ``nat_src`` attaches a CTA_NAT_SRC range of one address so the kernel marks the
    entry SRC_NAT as masquerade would; the reply tuple must already carry it.
    """
    if e.timeout is None:
        raise ValueError("creating a conntrack entry needs a timeout")
    # The kernel sets CONFIRMED on entries created this way before applying
    # CTA_STATUS and answers EBUSY to a status that would clear it.
    body = entry_tuples(e) + attr(C.CTA_TIMEOUT, be32(e.timeout))
    body += attr(C.CTA_STATUS, be32(e.status | C.IPS_CONFIRMED))
    if e.mark is not None:
        body += attr(C.CTA_MARK, be32(e.mark))
    if e.zone is not None:
        body += attr(C.CTA_ZONE, be16(e.zone))
    if e.tcp_state is not None:
        tcp = nest(C.CTA_PROTOINFO_TCP, attr(C.CTA_PROTOINFO_TCP_STATE, be8(e.tcp_state)))
        body += nest(C.CTA_PROTOINFO, tcp)
    if nat_src is not None:
        lo, hi = (C.CTA_NAT_V6_MINIP, C.CTA_NAT_V6_MAXIP) if e.family == C.AF_INET6 else (
            C.CTA_NAT_V4_MINIP, C.CTA_NAT_V4_MAXIP)  # fmt: skip
        body += nest(C.CTA_NAT_SRC, attr(lo, nat_src), attr(hi, nat_src))
    flags = C.NLM_F_CREATE | C.NLM_F_EXCL | C.NLM_F_ACK
    return message(C.IPCTNL_MSG_CT_NEW, flags, e.family, body, seq)


def encode_get(e: Entry, seq: int = 0) -> bytes:
    """IPCTNL_MSG_CT_GET for the entry whose original tuple (and zone) ``e`` has."""
    body = orig_tuple(e)
    if e.zone is not None:
        body += attr(C.CTA_ZONE, be16(e.zone))
    return message(C.IPCTNL_MSG_CT_GET, C.NLM_F_ACK, e.family, body, seq)


def encode_delete(e: Entry, seq: int = 0) -> bytes:
    """IPCTNL_MSG_CT_DELETE of exactly ``e``: its original tuple, zone and id (if known).

    Sending the id makes the kernel refuse (ENOENT) when the tuple has since been
    reused by a different connection, so a filtered delete never removes an entry
    it did not see.
    """
    body = orig_tuple(e)
    if e.zone is not None:
        body += attr(C.CTA_ZONE, be16(e.zone))
    if e.id is not None:
        body += attr(C.CTA_ID, be32(e.id))
    return message(C.IPCTNL_MSG_CT_DELETE, C.NLM_F_ACK, e.family, body, seq)


def orig_tuple(e: Entry) -> bytes:
    """The original tuple, with its directional zone: the kernel finds an entry by tuple *and* zone."""
    return encode_tuple(
        C.CTA_TUPLE_ORIG, e.family, e.src, e.dst, e.proto, e.sport, e.dport,
        (e.icmp_type, e.icmp_code, e.icmp_id), e.orig_zone,
    )  # fmt: skip


def encode_flush(family: int = 0, mark: int | None = None, mask: int | None = None, seq: int = 0) -> bytes:
    """IPCTNL_MSG_CT_DELETE without a tuple: the kernel deletes every entry matching mark/mask.

    nfgenmsg.version=1 tells the kernel to honour ``family`` (version 0 flushes all
    families, for compatibility with old userspace).
    """
    body = b""
    if mark is not None:
        body += attr(C.CTA_MARK, be32(mark))
        if mask is not None:
            body += attr(C.CTA_MARK_MASK, be32(mask))
    nl_type = (C.NFNL_SUBSYS_CTNETLINK << 8) | C.IPCTNL_MSG_CT_DELETE
    flags = C.NLM_F_REQUEST | C.NLM_F_ACK
    return NLMSGHDR.pack(_HDR_LEN + len(body), nl_type, flags, seq, 0) + NFGENMSG.pack(family, 1, 0) + body


def encode_dump(family: int = 0, attrs: bytes = b"", seq: int = 0) -> bytes:
    """IPCTNL_MSG_CT_GET with NLM_F_DUMP; ``attrs`` are kernel filter attributes."""
    return message(C.IPCTNL_MSG_CT_GET, C.NLM_F_DUMP, family, attrs, seq)


def encode_stats(seq: int = 0) -> bytes:
    """IPCTNL_MSG_CT_GET_STATS: the global entry count and maximum (one reply)."""
    return message(C.IPCTNL_MSG_CT_GET_STATS, C.NLM_F_ACK, 0, b"", seq)


def encode_stats_cpu(seq: int = 0) -> bytes:
    """IPCTNL_MSG_CT_GET_STATS_CPU: a dump with one message per possible CPU."""
    return message(C.IPCTNL_MSG_CT_GET_STATS_CPU, C.NLM_F_DUMP, 0, b"", seq)


# ---------------------------------------------------------------- framing


def iter_messages(buf: bytes | bytearray | memoryview, n: int) -> Iterator[tuple[int, int, int, int, int]]:
    """Split ``buf[:n]`` into netlink messages: yields (offset, length, type, flags, seq)."""
    off = 0
    unpack = NLMSGHDR.unpack_from
    while off + 16 <= n:
        length, mtype, flags, seq, _pid = unpack(buf, off)
        if length < 16:
            raise ValueError(f"truncated netlink message at offset {off}")
        yield off, length, mtype, flags, seq
        off += (length + 3) & ~3


def sender_portid(buf: bytes | bytearray | memoryview, off: int) -> int:
    """The netlink port id in a message's header: for an event, the socket whose request caused it (0: the kernel)."""
    return int(NLMSGHDR.unpack_from(buf, off)[4])


def error_code(buf: bytes | bytearray | memoryview, off: int) -> int:
    """The (negative) errno of an NLMSG_ERROR at ``off``; 0 is an ACK."""
    return _NLMSGERR.unpack_from(buf, off + 16)[0]


def attrs(buf: bytes | bytearray | memoryview, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """Walk attributes in ``buf[start:end]``: yields (type without flags, payload offset, payload length)."""
    unpack = NLATTR.unpack_from
    while start + 4 <= end:
        length, atype = unpack(buf, start)
        if length < 4:
            break
        yield atype & C.NLA_TYPE_MASK, start + 4, length - 4
        start += (length + 3) & ~3


def decode_stats(buf: bytes | bytearray | memoryview, off: int, length: int) -> dict[int, int]:
    """Attribute type -> u32 value of a GET_STATS / GET_STATS_CPU reply."""
    return {t: struct.unpack_from(">I", buf, p)[0] for t, p, n in attrs(buf, off + _HDR_LEN, off + length) if n == 4}


def res_id(buf: bytes | bytearray | memoryview, off: int) -> int:
    """nfgenmsg.res_id: the CPU number in GET_STATS_CPU replies."""
    return struct.unpack_from(">H", buf, off + 18)[0]


# ---------------------------------------------------------------- decoding

# Leaf schema: attribute type -> (Entry field, struct code) or a nested schema.
_Schema = dict[int, "tuple[str, str] | _Schema"]


def _tuple_schema(p: str, proto_field: str | None) -> _Schema:
    """Schema of CTA_TUPLE_ORIG (``p=""``) or CTA_TUPLE_REPLY (``p="reply_"``)."""
    proto: _Schema = {
        C.CTA_PROTO_SRC_PORT: (p + "sport", "H"),
        C.CTA_PROTO_DST_PORT: (p + "dport", "H"),
        C.CTA_PROTO_ICMP_ID: (p + "icmp_id", "H"),
        C.CTA_PROTO_ICMP_TYPE: (p + "icmp_type", "B"),
        C.CTA_PROTO_ICMP_CODE: (p + "icmp_code", "B"),
        C.CTA_PROTO_ICMPV6_ID: (p + "icmp_id", "H"),
        C.CTA_PROTO_ICMPV6_TYPE: (p + "icmp_type", "B"),
        C.CTA_PROTO_ICMPV6_CODE: (p + "icmp_code", "B"),
    }
    if proto_field:
        proto[C.CTA_PROTO_NUM] = (proto_field, "B")
    return {
        C.CTA_TUPLE_IP: {
            C.CTA_IP_V4_SRC: (p + "src", "4s"),
            C.CTA_IP_V4_DST: (p + "dst", "4s"),
            C.CTA_IP_V6_SRC: (p + "src", "16s"),
            C.CTA_IP_V6_DST: (p + "dst", "16s"),
        },
        C.CTA_TUPLE_PROTO: proto,
        C.CTA_TUPLE_ZONE: ((p or "orig_") + "zone", "H"),
    }


def _counters(p: str) -> _Schema:
    return {C.CTA_COUNTERS_PACKETS: (p + "packets", "Q"), C.CTA_COUNTERS_BYTES: (p + "bytes", "Q")}


SCHEMA: _Schema = {
    C.CTA_TUPLE_ORIG: _tuple_schema("", "proto"),
    C.CTA_TUPLE_REPLY: _tuple_schema("reply_", None),
    C.CTA_STATUS: ("status", "I"),
    C.CTA_PROTOINFO: {
        C.CTA_PROTOINFO_TCP: {C.CTA_PROTOINFO_TCP_STATE: ("tcp_state", "B")},
        C.CTA_PROTOINFO_SCTP: {C.CTA_PROTOINFO_SCTP_STATE: ("sctp_state", "B")},
    },
    C.CTA_HELP: {C.CTA_HELP_NAME: ("helper", "str")},
    C.CTA_TIMEOUT: ("timeout", "I"),
    C.CTA_MARK: ("mark", "I"),
    C.CTA_COUNTERS_ORIG: _counters("orig_"),
    C.CTA_COUNTERS_REPLY: _counters("reply_"),
    C.CTA_USE: ("use", "I"),
    C.CTA_ID: ("id", "I"),
    C.CTA_SECMARK: ("secmark", "I"),
    C.CTA_ZONE: ("zone", "H"),
    C.CTA_SECCTX: {C.CTA_SECCTX_NAME: ("secctx", "str")},
    C.CTA_TIMESTAMP: {C.CTA_TIMESTAMP_START: ("start", "Q"), C.CTA_TIMESTAMP_STOP: ("stop", "Q")},
    C.CTA_LABELS: ("labels", "bytes"),
}
_FIXED_SIZE = {code: struct.calcsize(">" + code) for code in ("B", "H", "I", "Q", "4s", "16s")}
_NFIELDS = len(Entry._fields)
_STRING_FIELDS = tuple(FIELD_INDEX[f] for f in ("helper", "secctx"))


@dataclass(frozen=True, eq=False)
class Shape:
    """A compiled message layout: how to check a message has it and how to read its values."""

    headers: struct.Struct  # every nlattr header as one u32 (len | type << 16), native endian
    expected: tuple[int, ...]
    leaves: tuple[tuple[int, str, str], ...]  # (offset in message, Entry field, struct code)
    offsets: dict[str, int]  # Entry field -> offset in the message, for readers of one field
    family: int  # nfgen_family; address attribute types pin it
    proto: int  # the CTA_PROTO_NUM value, checked as part of ``expected``
    values: struct.Struct  # every known leaf value, network endian
    getter: itemgetter  # unpacked values (+ a trailing None) -> Entry field order
    has_strings: bool

    def decode(self, buf: bytes | bytearray | memoryview, off: int) -> Entry:
        row = self.getter((*self.values.unpack_from(buf, off), None))
        if self.has_strings:
            row = list(row)
            for i in _STRING_FIELDS:
                if row[i] is not None:
                    row[i] = bytes(row[i]).split(b"\0", 1)[0].decode(errors="replace")
        return Entry._make(row)


def _walk(buf: bytes | bytearray | memoryview, off: int, length: int) -> Shape:
    """Walk one message and compile its shape (the slow path, once per shape)."""
    headers: list[tuple[int, int]] = []  # (relative offset, u32 header)
    leaves: list[tuple[int, str, str]] = [(16, "family", "B")]  # (relative offset, field, code)

    def walk(start: int, end: int, schema: _Schema) -> None:
        pos = start
        while pos + 4 <= end:
            alen, atype = NLATTR.unpack_from(buf, off + pos)
            if alen < 4 or pos + alen > end:
                raise ValueError(f"malformed attribute at offset {pos}")
            headers.append((pos, _U32.unpack_from(buf, off + pos)[0]))
            spec = schema.get(atype & C.NLA_TYPE_MASK)
            plen = alen - 4
            if isinstance(spec, dict):
                walk(pos + 4, pos + alen, spec)
            elif spec == ("proto", "B"):
                # The protocol number (and its zero padding) is part of the shape, so
                # formatters compiled per shape may print protocol-specific fields.
                headers.append((pos + 4, _U32.unpack_from(buf, off + pos + 4)[0]))
                leaves.append((pos + 4, "proto", "B"))
            elif spec is not None:
                field, code = spec
                if code in ("str", "bytes"):
                    code = f"{plen}s"
                elif _FIXED_SIZE[code] != plen:
                    raise ValueError(f"attribute {atype:#x} for {field} has {plen} bytes, not {code}")
                leaves.append((pos + 4, field, code))
            pos += (alen + 3) & ~3

    walk(_HDR_LEN, length, SCHEMA)
    hfmt, last = ["="], 0
    for pos, _ in headers:
        hfmt.append(f"{pos - last}xI" if pos > last else "I")
        last = pos + 4
    vfmt, last, slot = [">"], 0, {}
    for i, (pos, field, code) in enumerate(leaves):
        vfmt.append(f"{pos - last}x{code}" if pos > last else code)
        last = pos + struct.calcsize(">" + code)
        slot[field] = i
    missing = len(leaves)
    order = [slot.get(f, missing) for f in Entry._fields]
    strings = any(Entry._fields[i] in slot for i in _STRING_FIELDS)
    return Shape(
        headers=struct.Struct("".join(hfmt)),
        expected=tuple(h for _, h in headers),
        leaves=tuple(leaves),
        offsets={field: pos for pos, field, _ in leaves},
        family=buf[off + 16],
        proto=next((buf[off + p] for p, f, _ in leaves if f == "proto"), 0),
        values=struct.Struct("".join(vfmt)),
        getter=itemgetter(*order),
        has_strings=strings,
    )


EntryKey = tuple[int, bytes, int]
_KEY_ID, _KEY_PORT = struct.Struct(">I"), struct.Struct(">H")


def entry_key(buf: bytes | bytearray | memoryview, off: int, shape: Shape) -> EntryKey | None:
    """What tells one live entry from another in a dump or an event: its conntrack id with its original
    source address and port (None without an id).

    The id alone is a 32-bit hash: among the tens of thousands of entries of a busy table two unrelated
    ones share an id often enough (by the birthday bound) that a count keyed by it drifts by one.
    """
    offsets = shape.offsets
    pos = offsets.get("id")
    if pos is None:
        return None
    src, sport = offsets.get("src"), offsets.get("sport")
    size = 16 if shape.family == C.AF_INET6 else 4
    return (
        _KEY_ID.unpack_from(buf, off + pos)[0],
        bytes(buf[off + src : off + src + size]) if src is not None else b"",
        _KEY_PORT.unpack_from(buf, off + sport)[0] if sport is not None else 0,
    )


class Decoder:
    """Decodes ctnetlink conntrack messages into :class:`Entry`, caching shapes.

    One instance per dump or event stream; it is not thread-safe.  ``max_shapes``
    bounds memory if a table holds unusually many layouts; past it, unseen shapes
    are still decoded correctly, just without caching.
    """

    def __init__(self, max_shapes: int = 512) -> None:
        self._shapes: dict[int, list[Shape]] = {}
        self._count = 0
        self._max = max_shapes

    def shape(self, buf: bytes | bytearray | memoryview, off: int, length: int) -> Shape:
        """The shape of the message at ``buf[off:off+length]`` (header included)."""
        shapes = self._shapes.get(length)
        if shapes is not None:
            for shape in shapes:
                if shape.headers.unpack_from(buf, off) == shape.expected:
                    return shape
        shape = _walk(buf, off, length)
        if self._count < self._max:
            self._shapes.setdefault(length, []).append(shape)
            self._count += 1
        return shape

    def decode(self, buf: bytes | bytearray | memoryview, off: int, length: int) -> Entry:
        """Decode the message at ``buf[off:off+length]`` into an :class:`Entry`."""
        return self.shape(buf, off, length).decode(buf, off)
