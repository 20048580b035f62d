"""Pure codec tests: kernel-style messages built here, decoded by wanlb.ctnetlink.codec."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wanlb.ctnetlink import codec
from wanlb.ctnetlink import constants as C
from wanlb.ctnetlink.codec import Decoder, attr, be8, be16, be32, nest
from wanlb.ctnetlink.entry import Entry


def be64(v: int) -> bytes:
    return struct.pack(">Q", v)


def kernel_message(e: Entry, msg_type: int = C.IPCTNL_MSG_CT_NEW, flags: int = 0) -> bytes:
    """A message laid out the way ctnetlink_fill_info() does for a dump."""

    def tup(atype: int, p: str, zone: int | None) -> bytes:
        d = e._asdict()
        v6 = e.family == C.AF_INET6
        ip = nest(
            C.CTA_TUPLE_IP,
            attr(C.CTA_IP_V6_SRC if v6 else C.CTA_IP_V4_SRC, d[p + "src"]),
            attr(C.CTA_IP_V6_DST if v6 else C.CTA_IP_V4_DST, d[p + "dst"]),
        )
        pa = [attr(C.CTA_PROTO_NUM, be8(e.proto))]
        if e.proto in C.ICMP_PROTOS:
            base = C.CTA_PROTO_ICMPV6_ID if v6 else C.CTA_PROTO_ICMP_ID
            pa += [
                attr(base, be16(d[p + "icmp_id"])),
                attr(base + 1, be8(d[p + "icmp_type"])),
                attr(base + 2, be8(d[p + "icmp_code"])),
            ]
        elif d[p + "sport"] is not None:
            pa += [attr(C.CTA_PROTO_SRC_PORT, be16(d[p + "sport"])), attr(C.CTA_PROTO_DST_PORT, be16(d[p + "dport"]))]
        parts = [ip, nest(C.CTA_TUPLE_PROTO, *pa)]
        if zone is not None:
            parts.append(attr(C.CTA_TUPLE_ZONE, be16(zone)))
        return nest(atype, *parts)

    body = tup(C.CTA_TUPLE_ORIG, "", e.orig_zone) + tup(C.CTA_TUPLE_REPLY, "reply_", e.reply_zone)
    if e.zone is not None:
        body += attr(C.CTA_ZONE, be16(e.zone))
    body += attr(C.CTA_STATUS, be32(e.status))
    if e.timeout is not None:
        body += attr(C.CTA_TIMEOUT, be32(e.timeout))
    if e.orig_packets is not None:
        for atype, p, b in ((C.CTA_COUNTERS_ORIG, e.orig_packets, e.orig_bytes),
                            (C.CTA_COUNTERS_REPLY, e.reply_packets, e.reply_bytes)):  # fmt: skip
            body += nest(atype, attr(C.CTA_COUNTERS_PACKETS, be64(p)), attr(C.CTA_COUNTERS_BYTES, be64(b or 0)))
    if e.start is not None:
        ts = attr(C.CTA_TIMESTAMP_START, be64(e.start))
        if e.stop is not None:
            ts += attr(C.CTA_TIMESTAMP_STOP, be64(e.stop))
        body += nest(C.CTA_TIMESTAMP, ts)
    if e.tcp_state is not None:
        tcp = nest(
            C.CTA_PROTOINFO_TCP,
            attr(C.CTA_PROTOINFO_TCP_STATE, be8(e.tcp_state)),
            attr(2, be8(7)),  # wscale original: unknown to the schema, must be skipped
            attr(4, b"\x00\x00"),
        )
        body += nest(C.CTA_PROTOINFO, tcp)
    if e.helper is not None:
        body += nest(C.CTA_HELP, attr(C.CTA_HELP_NAME, e.helper.encode() + b"\0"))
    if e.labels is not None:
        body += attr(C.CTA_LABELS, e.labels)
    if e.mark is not None:
        body += attr(C.CTA_MARK, be32(e.mark))
    if e.id is not None:
        body += attr(C.CTA_ID, be32(e.id))
    if e.use is not None:
        body += attr(C.CTA_USE, be32(e.use))
    return codec.message(msg_type, flags, e.family, body)


u8 = st.integers(0, 255)
u16 = st.integers(0, 65535)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    family = draw(st.sampled_from([C.AF_INET, C.AF_INET6]))
    n = 4 if family == C.AF_INET else 16
    addr = st.binary(min_size=n, max_size=n)
    icmp = C.IPPROTO_ICMP if family == C.AF_INET else C.IPPROTO_ICMPV6
    proto = draw(st.sampled_from([C.IPPROTO_TCP, C.IPPROTO_UDP, icmp, C.IPPROTO_GRE, C.IPPROTO_SCTP]))
    src, dst, rsrc, rdst = (draw(addr) for _ in range(4))
    ports = {}
    if proto in C.ICMP_PROTOS:
        ports = dict(icmp_type=draw(u8), icmp_code=draw(u8), icmp_id=draw(u16),
                     reply_icmp_type=draw(u8), reply_icmp_code=draw(u8), reply_icmp_id=draw(u16))  # fmt: skip
    else:
        ports = dict(sport=draw(u16), dport=draw(u16), reply_sport=draw(u16), reply_dport=draw(u16))
    acct = draw(st.booleans())
    tstamp = draw(st.booleans())
    opt = st.one_of(st.none(), u16)
    return Entry(
        family=family, proto=proto, src=src, dst=dst, reply_src=rsrc, reply_dst=rdst, **ports,
        orig_zone=draw(opt), reply_zone=draw(opt), zone=draw(opt),
        status=draw(st.integers(0, 0xFFFF)), timeout=draw(u32),
        tcp_state=draw(st.integers(0, 9)) if proto == C.IPPROTO_TCP else None,
        mark=draw(st.one_of(st.none(), u32)), use=draw(u32), id=draw(u32),
        orig_packets=draw(u64) if acct else None, orig_bytes=draw(u64) if acct else None,
        reply_packets=draw(u64) if acct else None, reply_bytes=draw(u64) if acct else None,
        start=draw(u64) if tstamp else None, stop=draw(st.one_of(st.none(), u64)) if tstamp else None,
        labels=draw(st.one_of(st.none(), st.binary(min_size=16, max_size=16))),
        helper=draw(st.one_of(st.none(), st.sampled_from(["ftp", "sip", "tftp"]))),
    )  # fmt: skip


@settings(max_examples=300)
@given(st.lists(entries(), min_size=1, max_size=6))
def test_decode_round_trips_through_one_shared_decoder(batch: list[Entry]) -> None:
    """A shared decoder (shape cache warm) decodes every message exactly like a fresh one."""
    shared = Decoder()
    for e in batch * 2:
        msg = kernel_message(e)
        assert shared.decode(msg, 0, len(msg)) == e
        assert Decoder().decode(msg, 0, len(msg)) == e


def test_same_length_different_layout_is_not_confused() -> None:
    """Two messages of equal length whose attributes differ must each get their own shape."""
    base = Entry(family=C.AF_INET, proto=C.IPPROTO_UDP, src=b"\1\2\3\4", dst=b"\5\6\7\10", sport=1, dport=2,
                 reply_src=b"\5\6\7\10", reply_dst=b"\1\2\3\4", reply_sport=2, reply_dport=1,
                 timeout=30, mark=7, use=1)  # fmt: skip
    a = kernel_message(base)
    b = kernel_message(base._replace(mark=None, id=9))  # CTA_ID instead of CTA_MARK: same size
    assert len(a) == len(b)
    d = Decoder()
    assert d.decode(a, 0, len(a)).mark == 7
    got = d.decode(b, 0, len(b))
    assert (got.mark, got.id) == (None, 9)


def test_protocol_is_part_of_the_shape() -> None:
    """UDP and GRE messages share a layout; formatters need to tell them apart."""
    e = Entry(family=C.AF_INET, proto=C.IPPROTO_UDP, src=b"\1\1\1\1", dst=b"\2\2\2\2", sport=1, dport=2,
              reply_src=b"\2\2\2\2", reply_dst=b"\1\1\1\1", reply_sport=2, reply_dport=1)  # fmt: skip
    d = Decoder()
    m1, m2 = kernel_message(e), kernel_message(e._replace(proto=C.IPPROTO_GRE))
    s1, s2 = d.shape(m1, 0, len(m1)), d.shape(m2, 0, len(m2))
    assert (s1.proto, s2.proto) == (C.IPPROTO_UDP, C.IPPROTO_GRE)


def test_decode_at_an_offset_inside_a_larger_buffer() -> None:
    e = Entry(family=C.AF_INET6, proto=C.IPPROTO_TCP, src=bytes(16), dst=bytes(range(16)), sport=5, dport=6,
              reply_src=bytes(range(16)), reply_dst=bytes(16), reply_sport=6, reply_dport=5, tcp_state=3)  # fmt: skip
    msg = kernel_message(e)
    buf = bytearray(b"\xff" * 8 + msg + b"\xee" * 8)
    assert Decoder().decode(memoryview(buf), 8, len(msg)) == e


def test_malformed_attribute_is_an_error() -> None:
    msg = bytearray(kernel_message(Entry(family=2, proto=17, src=bytes(4), dst=bytes(4))))
    struct.pack_into("=H", msg, 20, 0xFFF)  # first attribute claims to run past the message
    with pytest.raises(ValueError):
        Decoder().decode(bytes(msg), 0, len(msg))


def test_iter_messages_and_error_code() -> None:
    ack = codec.NLMSGHDR.pack(36, C.NLMSG_ERROR, 0, 5, 0) + struct.pack("=i", -2) + bytes(16)
    done = codec.NLMSGHDR.pack(20, C.NLMSG_DONE, C.NLM_F_MULTI, 5, 0) + bytes(4)
    buf = ack + done
    frames = list(codec.iter_messages(buf, len(buf)))
    assert [(off, t, seq) for off, _len, t, _f, seq in frames] == [(0, C.NLMSG_ERROR, 5), (36, C.NLMSG_DONE, 5)]
    assert codec.error_code(buf, 0) == -2


def test_flush_by_mark_request() -> None:
    msg = codec.encode_flush(0, 0x200, 0xFF00, seq=3)
    length, mtype, flags, seq, _ = codec.NLMSGHDR.unpack_from(msg)
    assert (length, mtype, seq) == (len(msg), (1 << 8) | C.IPCTNL_MSG_CT_DELETE, 3)
    assert flags & C.NLM_F_ACK
    assert msg[17] == 1  # nfgenmsg.version 1: the kernel honours the family
    got = {t: msg[p : p + n] for t, p, n in codec.attrs(msg, 20, len(msg))}
    assert got == {C.CTA_MARK: be32(0x200), C.CTA_MARK_MASK: be32(0xFF00)}


def test_create_always_carries_confirmed_status() -> None:
    e = Entry(family=2, proto=6, src=bytes(4), dst=bytes(4), sport=1, dport=2, reply_src=bytes(4),
              reply_dst=bytes(4), reply_sport=2, reply_dport=1, timeout=10, status=C.IPS_ASSURED)  # fmt: skip
    msg = codec.encode_create(e)
    got = {t: msg[p : p + n] for t, p, n in codec.attrs(msg, 20, len(msg))}
    assert got[C.CTA_STATUS] == be32(C.IPS_ASSURED | C.IPS_CONFIRMED)
    with pytest.raises(ValueError):
        codec.encode_create(e._replace(timeout=None))


def test_stats_reply_decoding() -> None:
    body = attr(C.CTA_STATS_GLOBAL_ENTRIES, be32(42)) + attr(C.CTA_STATS_GLOBAL_MAX_ENTRIES, be32(65536))
    msg = codec.message(C.IPCTNL_MSG_CT_GET_STATS, 0, 0, body)
    assert codec.decode_stats(msg, 0, len(msg)) == {1: 42, 2: 65536}


def test_entry_addr_text() -> None:
    e = Entry(family=socket.AF_INET6, proto=6, src=socket.inet_pton(socket.AF_INET6, "fd00::1"), dst=bytes(16))
    assert e.addr("src") == "fd00::1"
