"""The compiled text formatter against a plain reference written from libnetfilter_conntrack."""

from __future__ import annotations

import json
import socket
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from test_ctnetlink_codec import entries, kernel_message

from wanlb.ctnetlink import constants as C
from wanlb.ctnetlink.codec import Decoder
from wanlb.ctnetlink.entry import Entry
from wanlb.ctnetlink.format import TextFormatter, entry_json, json_line


def reference(e: Entry, extended: bool = False, isp: str | None = None) -> str:
    """snprintf_default.c, transcribed field by field."""
    d = e._asdict()
    out = []
    if extended:
        out.append(f"{C.FAMILY_NAMES.get(e.family, 'unknown'):<8} {e.family} ")
    out.append(f"{C.PROTO_NAMES.get(e.proto, 'unknown'):<8} {e.proto} ")
    if e.timeout is not None:
        out.append(f"{e.timeout} ")
    if e.tcp_state is not None:
        out.append(f"{C.TCP_STATES[e.tcp_state]} ")

    def tup(p: str) -> None:
        out.append(f"src={socket.inet_ntop(e.family, d[p + 'src'])} dst={socket.inet_ntop(e.family, d[p + 'dst'])} ")
        if e.proto in C.PORT_PROTOS:
            out.append(f"sport={d[p + 'sport']} dport={d[p + 'dport']} ")
        elif e.proto == C.IPPROTO_GRE:
            out.append(f"srckey={d[p + 'sport']:#x} dstkey={d[p + 'dport']:#x} ")
        elif e.proto in C.ICMP_PROTOS:
            out.append(f"type={d[p + 'icmp_type']} code={d[p + 'icmp_code']} id={d[p + 'icmp_id']} ")
        zone = d[(p or "orig_") + "zone"]
        if zone is not None:
            out.append(f"zone-{'reply' if p else 'orig'}={zone} ")
        if d[(p or "orig_") + "packets"] is not None:
            out.append(f"packets={d[(p or 'orig_') + 'packets']} bytes={d[(p or 'orig_') + 'bytes']} ")

    tup("")
    if not e.status & C.IPS_SEEN_REPLY:
        out.append("[UNREPLIED] ")
    tup("reply_")
    if e.status & C.IPS_HW_OFFLOAD:
        out.append("[HW_OFFLOAD] ")
    elif e.status & C.IPS_OFFLOAD:
        out.append("[OFFLOAD] ")
    elif e.status & C.IPS_ASSURED:
        out.append("[ASSURED] ")
    if e.mark is not None:
        out.append(f"mark={e.mark} ")
    if e.zone is not None:
        out.append(f"zone={e.zone} ")
    if e.start is not None:
        stop = e.stop // 10**9 if e.stop else int(time.time())
        out.append(f"delta-time={stop - e.start // 10**9} ")
    if e.helper is not None:
        out.append(f"helper={e.helper} ")
    if e.use is not None:
        out.append(f"use={e.use} ")
    return "".join(out)[:-1] + (f" isp={isp}" if isp else "")


@settings(max_examples=300)
@given(st.lists(entries(), min_size=1, max_size=5), st.booleans())
def test_text_matches_reference(batch: list[Entry], extended: bool) -> None:
    fmt = TextFormatter(extended=extended)
    dec = Decoder()
    for e in batch:
        e = e._replace(stop=None)  # delta-time against "now" is checked separately
        msg = kernel_message(e)
        # delta-time reads the clock: the reference is taken on both sides of the line, so a second
        # boundary crossed in between cannot fail the comparison.
        before = reference(e, extended)
        line = fmt.line(dec.shape(msg, 0, len(msg)), msg, 0)
        assert line in {before, reference(e, extended)}


def test_isp_name_is_appended_only_when_known() -> None:
    e = Entry(family=2, proto=17, src=b"\x0a\0\0\1", dst=b"\x0a\0\0\2", sport=5, dport=53,
              reply_src=b"\x0a\0\0\2", reply_dst=b"\x0a\0\0\1", reply_sport=53, reply_dport=5,
              timeout=30, status=C.IPS_SEEN_REPLY | C.IPS_ASSURED, mark=0x201, use=1)  # fmt: skip
    fmt = TextFormatter(isps={0x200: "fiber"}, mark_mask=0xFF00)
    dec = Decoder()
    msg = kernel_message(e)
    line = fmt.line(dec.shape(msg, 0, len(msg)), msg, 0)
    assert line == (
        "udp      17 30 src=10.0.0.1 dst=10.0.0.2 sport=5 dport=53 src=10.0.0.2 dst=10.0.0.1 "
        "sport=53 dport=5 [ASSURED] mark=513 use=1 isp=fiber"
    )
    other = kernel_message(e._replace(mark=0x301))
    assert fmt.line(dec.shape(other, 0, len(other)), other, 0).endswith("mark=769 use=1")


def test_json_schema() -> None:
    e = Entry(family=2, proto=1, src=b"\1\1\1\1", dst=b"\2\2\2\2", icmp_type=8, icmp_code=0, icmp_id=7,
              reply_src=b"\2\2\2\2", reply_dst=b"\1\1\1\1", reply_icmp_type=0, reply_icmp_code=0,
              reply_icmp_id=7, status=C.IPS_CONFIRMED, timeout=29, mark=0, use=1, id=5)  # fmt: skip
    obj = json.loads(json_line(e, "dsl", event="new"))
    assert obj["orig"] == {"src": "1.1.1.1", "dst": "2.2.2.2", "type": 8, "code": 0, "id": 7}
    assert obj["status"] == ["CONFIRMED"]
    assert (obj["proto"], obj["state"], obj["isp"], obj["event"]) == ("icmp", None, "dsl", "new")
    assert set(entry_json(e)) == set(obj) - {"event"}
