"""Output formats: conntrack-tools text (default and ``extended``) and JSON lines.

The text format is the one libnetfilter_conntrack's ``snprintf_default`` writes,
field for field and space for space, so ``grep``/``awk`` pipelines written against
``conntrack -L`` keep working; ``isp=NAME`` is appended last when the mark is a
known ISP's.

Printing 250k lines is where most of a listing's time goes, so text lines are not
built from :class:`Entry` objects.  Per message shape (see :mod:`codec`) a small
function is generated that unpacks the values straight from the netlink buffer
(IPv4 addresses as four bytes for ``%d.%d.%d.%d``) and applies one ``%`` format.
The generated source contains only integer indices and names of this module; the
unit tests check it against a plain reference formatter.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any

from wanlb.ctnetlink import constants as C
from wanlb.ctnetlink.codec import Shape
from wanlb.ctnetlink.entry import Entry

Buffer = bytes | bytearray | memoryview
LineFn = Callable[[Buffer, int], str]

EVENT_PREFIX = {"new": "    [NEW] ", "update": " [UPDATE] ", "destroy": "[DESTROY] "}


def proto_name(proto: int) -> str:
    return C.PROTO_NAMES.get(proto, "unknown")


class _StatusText(dict):
    """status -> the ``[ASSURED] `` / ``[OFFLOAD] `` / ``[HW_OFFLOAD] `` text, memoised."""

    def __missing__(self, status: int) -> str:
        if status & C.IPS_HW_OFFLOAD:
            text = "[HW_OFFLOAD] "
        elif status & C.IPS_OFFLOAD:
            text = "[OFFLOAD] "
        elif status & C.IPS_ASSURED:
            text = "[ASSURED] "
        else:
            text = ""
        self[status] = text
        return text


class _StateText(dict):
    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.names = names

    def __missing__(self, state: int) -> str:
        return self.names[state] if state < len(self.names) else "NONE"


_ASSURED = _StatusText()
_TCP = _StateText(C.TCP_STATES)
_SCTP = _StateText(C.SCTP_STATES)
_UNREPLIED = ("[UNREPLIED] ", "")
_ADDRESS_FIELDS = frozenset({"src", "dst", "reply_src", "reply_dst"})  # indexed by the SEEN_REPLY bit


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _ntop6(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6, raw)


class TextFormatter:
    """Compiles and caches one line function per shape.

    ``isps`` maps a masked mark to an ISP name; ``show_id`` adds ``id=`` like
    ``conntrack -o id``.
    """

    def __init__(
        self,
        extended: bool = False,
        isps: Mapping[int, str] | None = None,
        mark_mask: int = 0xFFFFFFFF,
        show_id: bool = False,
    ) -> None:
        self.extended = extended
        self.show_id = show_id
        self.mark_mask = mark_mask
        self._isp = {mark: f" isp={name}" for mark, name in (isps or {}).items()}
        self._cache: dict[Shape, LineFn] = {}

    def line(self, shape: Shape, buf: Buffer, off: int) -> str:
        fn = self._cache.get(shape)
        if fn is None:
            fn = self._cache[shape] = self._compile(shape)
        return fn(buf, off)

    def _compile(self, shape: Shape) -> LineFn:
        codes: list[str] = [">"]
        slot: dict[str, int] = {}
        last = n = 0
        for pos, field, code in shape.leaves:
            if pos > last:
                codes.append(f"{pos - last}x")
            if code == "4s" and field in _ADDRESS_FIELDS:
                code = "4B"  # four ints for "%d.%d.%d.%d"
            codes.append(code)
            slot[field] = n
            n += 4 if code == "4B" else 1
            last = pos + struct.calcsize(">" + code)
        family, proto = shape.family, shape.proto
        fmt: list[str] = []
        args: list[str] = []

        def v(field: str) -> str:
            return f"v[{slot[field]}]" if field in slot else "0"

        def put(text: str, *exprs: str) -> None:
            fmt.append(text)
            args.extend(exprs)

        def addrs(p: str) -> None:
            for tag in ("src", "dst"):
                f = p + tag
                if f not in slot:
                    continue
                if family == C.AF_INET:
                    i = slot[f]
                    put(f"{tag}=%d.%d.%d.%d ", *(f"v[{i + k}]" for k in range(4)))
                else:
                    put(f"{tag}=%s ", f"ntop6(v[{slot[f]}])")

        def l4(p: str) -> None:
            if proto in C.PORT_PROTOS:
                put("sport=%d dport=%d ", v(p + "sport"), v(p + "dport"))
            elif proto == C.IPPROTO_GRE:
                put("srckey=0x%x dstkey=0x%x ", v(p + "sport"), v(p + "dport"))
            elif proto in C.ICMP_PROTOS:
                put("type=%d code=%d id=%d ", v(p + "icmp_type"), v(p + "icmp_code"), v(p + "icmp_id"))

        def counters(p: str) -> None:
            if p + "packets" in slot and p + "bytes" in slot:
                put("packets=%d bytes=%d ", v(p + "packets"), v(p + "bytes"))

        if self.extended:
            put(f"{C.FAMILY_NAMES.get(family, 'unknown'):<8} {family} ")
        put(f"{proto_name(proto):<8} {proto} ")
        if "timeout" in slot:
            put("%d ", v("timeout"))
        if "tcp_state" in slot:
            put("%s ", f"TCP[{v('tcp_state')}]")
        if "sctp_state" in slot:
            put("%s ", f"SCTP[{v('sctp_state')}]")
        addrs("")
        l4("")
        if "orig_zone" in slot:
            put("zone-orig=%d ", v("orig_zone"))
        counters("orig_")
        if "status" in slot:
            put("%s", f"UNREPLIED[({v('status')} >> 1) & 1]")
        addrs("reply_")
        l4("reply_")
        if "reply_zone" in slot:
            put("zone-reply=%d ", v("reply_zone"))
        counters("reply_")
        if "status" in slot:
            put("%s", f"ASSURED[{v('status')}]")
        if "mark" in slot:
            put("mark=%d ", v("mark"))
        if "secmark" in slot:
            put("secmark=%d ", v("secmark"))
        if "secctx" in slot:
            put("secctx=%s ", f"cstr({v('secctx')})")
        if "zone" in slot:
            put("zone=%d ", v("zone"))
        if "start" in slot:
            stop = f"({v('stop')} // 1000000000 or int(now()))" if "stop" in slot else "int(now())"
            put("delta-time=%d ", f"{stop} - {v('start')} // 1000000000")
        if "helper" in slot:
            put("helper=%s ", f"cstr({v('helper')})")
        if "use" in slot:
            put("use=%d ", v("use"))
        if self.show_id and "id" in slot:
            put("id=%d ", v("id"))
        text = "".join(fmt)
        # Every piece ends with its separating space, except a status flag ("%s"), whose value carries its
        # own ("[ASSURED] " or ""): when one ends the line (an entry without mark or use, as DESTROY events
        # have), the space is stripped once the line is formatted.
        strip = bool(text) and not text.endswith(" ")
        text = text[:-1] if text.endswith(" ") else text
        if self._isp and "mark" in slot:
            text += "%s"
            args.append(f"ISP.get({v('mark')} & {self.mark_mask}, '')")
        namespace: dict[str, Any] = {
            "unpack": struct.Struct("".join(codes)).unpack_from,
            "FMT": text,
            "TCP": _TCP,
            "SCTP": _SCTP,
            "UNREPLIED": _UNREPLIED,
            "ASSURED": _ASSURED,
            "ISP": self._isp,
            "ntop6": _ntop6,
            "cstr": _cstr,
            "now": time.time,
        }
        result = f"(FMT % ({', '.join(args)},))" + (".rstrip(' ')" if strip else "")
        source = f"def line(buf, off):\n    v = unpack(buf, off)\n    return {result}\n"
        exec(compile(source, f"<conntrack line {proto_name(proto)}>", "exec"), namespace)
        return namespace["line"]


def _state_name(e: Entry) -> str | None:
    if e.tcp_state is not None:
        return _TCP[e.tcp_state]
    return None if e.sctp_state is None else _SCTP[e.sctp_state]


def status_names(status: int) -> list[str]:
    return [name for name, bit in C.STATUS_BITS.items() if status & bit]


def _tuple_json(e: Entry, p: str) -> dict[str, Any]:
    get = e._asdict()
    out: dict[str, Any] = {
        "src": socket.inet_ntop(e.family, get[p + "src"]),
        "dst": socket.inet_ntop(e.family, get[p + "dst"]),
    }
    if e.proto in C.ICMP_PROTOS:
        out.update(type=get[p + "icmp_type"], code=get[p + "icmp_code"], id=get[p + "icmp_id"])
    elif get[p + "sport"] is not None:
        out.update(sport=get[p + "sport"], dport=get[p + "dport"])
    zone = get[(p or "orig_") + "zone"]
    if zone is not None:
        out["zone"] = zone
    return out


def entry_json(e: Entry, isp: str | None = None) -> dict[str, Any]:
    """The JSON object of one entry (schema in docs/conntrack.md)."""
    counters = None
    if e.orig_packets is not None:
        counters = {
            "orig": {"packets": e.orig_packets, "bytes": e.orig_bytes},
            "reply": {"packets": e.reply_packets, "bytes": e.reply_bytes},
        }
    return {
        "family": C.FAMILY_NAMES.get(e.family, str(e.family)),
        "proto": proto_name(e.proto),
        "protonum": e.proto,
        "timeout": e.timeout,
        "state": _state_name(e),
        "orig": _tuple_json(e, ""),
        "reply": _tuple_json(e, "reply_"),
        "status": status_names(e.status),
        "mark": e.mark,
        "isp": isp,
        "zone": e.zone,
        "use": e.use,
        "id": e.id,
        "counters": counters,
        "start": e.start,
        "stop": e.stop,
        "labels": None if e.labels is None else e.labels.hex(),
        "helper": e.helper,
        "secctx": e.secctx,
    }


def json_line(e: Entry, isp: str | None = None, **extra: Any) -> str:
    obj = entry_json(e, isp)
    obj.update(extra)
    return json.dumps(obj, separators=(",", ":"))
