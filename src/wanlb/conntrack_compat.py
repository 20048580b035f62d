"""conntrack(8) command lines for ``wanlb conntrack``: ``-L -G -D -F -E -C -S`` and their filters.

So that ``alias conntrack='wanlb conntrack'`` keeps scripts working for everything but creating and
updating entries: the same command letters and options, the same text on stdout (byte-identical to
conntrack-tools 1.4.7 but for timeouts, which change between reads) and the same exit statuses
(``-D`` that matched nothing and ``-G`` of an absent entry exit 1).  What is not supported is refused
with exit 2 and a sentence, never silently ignored; docs/conntrack.md lists it.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

from wanlb.ctnetlink import constants as C
from wanlb.ctnetlink.entry import Entry
from wanlb.ctnetlink.filters import Filter

COMMANDS = {
    "-L": "list", "--dump": "list", "-G": "get", "--get": "get", "-D": "delete", "--delete": "delete",
    "-F": "flush", "--flush": "flush", "-E": "events", "--event": "events", "-C": "count", "--count": "count",
    "-S": "stats", "--stats": "stats",
}  # fmt: skip
# option spelling -> canonical name; every one takes a value
VALUED = {
    "-p": "proto", "--proto": "proto", "--protonum": "proto",
    "-s": "src", "--src": "src", "--orig-src": "src", "-d": "dst", "--dst": "dst", "--orig-dst": "dst",
    "-r": "reply_src", "--reply-src": "reply_src", "-q": "reply_dst", "--reply-dst": "reply_dst",
    "--sport": "sport", "--orig-port-src": "sport", "--dport": "dport", "--orig-port-dst": "dport",
    "--reply-port-src": "reply_sport", "--reply-port-dst": "reply_dport",
    "--mask-src": "mask_src", "--mask-dst": "mask_dst",
    "--state": "state", "-m": "mark", "--mark": "mark", "-w": "zone", "--zone": "zone",
    "--orig-zone": "orig_zone", "--reply-zone": "reply_zone", "-u": "status", "--status": "status",
    "-f": "family", "--family": "family", "-o": "output", "--output": "output",
    "--icmp-type": "icmp_type", "--icmp-code": "icmp_code", "--icmp-id": "icmp_id",
    "--srckey": "srckey", "--orig-key-src": "srckey", "--dstkey": "dstkey", "--orig-key-dst": "dstkey",
    "-e": "event_mask", "--event-mask": "event_mask",
}  # fmt: skip
NAT_FLAGS = {"-n": "src", "--src-nat": "src", "-g": "dst", "--dst-nat": "dst", "-j": "any", "--any-nat": "any"}
OUTPUTS = {"extended", "id"}
NOT_SUPPORTED = {
    "-I": "creating entries", "--create": "creating entries", "-U": "updating entries", "--update": "updating",
    "-R": "loading a save file", "--load-file": "loading a save file", "-l": "labels", "--label": "labels",
    "-c": "secmark", "--secmark": "secmark", "-t": "timeouts", "--timeout": "timeouts", "-b": "buffer sizes",
    "--buffer-size": "buffer sizes", "-z": "zeroing counters", "--zero": "zeroing counters",
    "-a": "name resolution", "--src-nat-addr": "NAT address filters",
}  # fmt: skip


class Usage(Exception):
    """A command line conntrack-compat mode cannot run; exit 2."""


def is_compat(argv: list[str]) -> bool:
    """Whether these ``wanlb conntrack`` arguments are a conntrack(8) command line."""
    return any(a in COMMANDS or a in NOT_SUPPORTED for a in argv)


@dataclass
class Parsed:
    command: str
    values: dict[str, str] = field(default_factory=dict)
    nat: str | None = None


def parse(argv: list[str]) -> Parsed:
    command: str | None = None
    values: dict[str, str] = {}
    nat = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, _, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in NOT_SUPPORTED:
            raise Usage(f"{name}: {NOT_SUPPORTED[name]} is not supported by wanlb conntrack (use conntrack-tools)")
        if name in COMMANDS:
            if command is not None:
                raise Usage("only one command (-L, -G, -D, -F, -E, -C or -S) at a time")
            command = COMMANDS[name]
            # -L/-D/-E/-F take an optional table name: conntrack (the default) or expect
            if i + 1 < len(argv) and argv[i + 1] in ("conntrack", "expect", "dying", "unconfirmed"):
                if argv[i + 1] != "conntrack":
                    raise Usage(f"the {argv[i + 1]} table is not supported by wanlb conntrack")
                i += 1
        elif name in NAT_FLAGS:
            if i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                raise Usage(f"{name} ADDRESS is not supported by wanlb conntrack (without an address it is)")
            nat = NAT_FLAGS[name]
        elif name in VALUED:
            if inline:
                value = inline
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise Usage(f"option {name} needs a value")
            values[VALUED[name]] = value
        else:
            raise Usage(f"unknown option {arg!r}")
        i += 1
    if command is None:
        raise Usage("no command: use one of -L, -G, -D, -F, -E, -C, -S")
    return Parsed(command, values, nat)


def _int(value: str, opt: str, high: int) -> int:
    try:
        n = int(value, 0)
    except ValueError:
        raise Usage(f"{opt} {value!r} is not a number") from None
    if not 0 <= n <= high:
        raise Usage(f"{opt} {value!r} is out of range")
    return n


def _proto(value: str) -> int:
    p = value.lower()
    if p in C.PROTO_NUMBERS:
        return C.PROTO_NUMBERS[p]
    if p.isdigit() and int(p) <= 255:
        return int(p)
    try:
        return socket.getprotobyname(p)  # /etc/protocols
    except OSError:
        raise Usage(f"unknown protocol {value!r}") from None


def _net(value: str | None, mask: str | None, opt: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if value is None:
        return None
    try:
        if mask is not None:
            return ipaddress.ip_network(f"{value}/{mask}", strict=False)
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise Usage(f"{opt} {value!r} is not an address") from None


def build(p: Parsed) -> tuple[Filter, dict[str, Any]]:
    """The Filter and the output options of a parsed command line."""
    v = p.values
    proto = _proto(v["proto"]) if "proto" in v else None
    states = None
    if "state" in v:  # one state, as conntrack takes it (the native `list --state` takes a list)
        try:
            states = frozenset({C.tcp_state_number(v["state"])}) if "," not in v["state"] else None
        except ValueError:
            states = None
        if states is None:
            raise Usage(f"unknown TCP state {v['state']!r}: use one of {', '.join(C.TCP_STATES)}")
    mark, mask = None, 0xFFFFFFFF
    if "mark" in v:
        m, _, k = v["mark"].partition("/")
        mark, mask = _int(m, "--mark", 0xFFFFFFFF), _int(k, "--mark", 0xFFFFFFFF) if k else 0xFFFFFFFF
        mark &= mask
    status = None
    if "status" in v:
        status = 0
        for name in v["status"].split(","):
            bit = C.STATUS_BITS.get(name.strip().upper())
            if bit is None:
                raise Usage(f"-u {name!r}: use {', '.join(C.STATUS_BITS)}")
            status |= bit
    gre = proto == C.IPPROTO_GRE
    ports = {k: _int(v[k], f"--{k}", 0xFFFF) for k in ("sport", "dport", "reply_sport", "reply_dport") if k in v}
    if gre:
        ports["sport"] = _int(v["srckey"], "--srckey", 0xFFFF) if "srckey" in v else ports.get("sport")
        ports["dport"] = _int(v["dstkey"], "--dstkey", 0xFFFF) if "dstkey" in v else ports.get("dport")
    family = {"ipv4": C.AF_INET, "ipv6": C.AF_INET6}.get(v.get("family", "").lower()) if "family" in v else None
    if "family" in v and family is None:
        raise Usage(f"-f {v['family']!r}: use ipv4 or ipv6")
    try:
        flt = Filter(
            family=family,
            proto=proto,
            src=_net(v.get("src"), v.get("mask_src"), "-s"),
            dst=_net(v.get("dst"), v.get("mask_dst"), "-d"),
            sport=None if gre else ports.get("sport"),
            dport=None if gre else ports.get("dport"),
            states=states,
            mark=mark,
            mark_mask=mask,
            zone=_int(v["zone"], "-w", 0xFFFF) if "zone" in v else None,
            orig_zone=_int(v["orig_zone"], "--orig-zone", 0xFFFF) if "orig_zone" in v else None,
            reply_zone=_int(v["reply_zone"], "--reply-zone", 0xFFFF) if "reply_zone" in v else None,
            status=status,
            reply_src=_net(v.get("reply_src"), None, "-r"),
            reply_dst=_net(v.get("reply_dst"), None, "-q"),
            reply_sport=ports.get("reply_sport"),
            reply_dport=ports.get("reply_dport"),
            icmp_type=_int(v["icmp_type"], "--icmp-type", 255) if "icmp_type" in v else None,
            icmp_code=_int(v["icmp_code"], "--icmp-code", 255) if "icmp_code" in v else None,
            icmp_id=_int(v["icmp_id"], "--icmp-id", 0xFFFF) if "icmp_id" in v else None,
            nat=p.nat,
        )
    except ValueError as err:
        raise Usage(str(err)) from None
    outputs = {o.strip() for o in v.get("output", "").split(",") if o.strip()}
    if outputs - OUTPUTS:
        raise Usage(f"-o {', '.join(sorted(outputs - OUTPUTS))}: not supported by wanlb conntrack (extended, id are)")
    key = {"sport": ports.get("sport"), "dport": ports.get("dport")}
    return flt, {"extended": "extended" in outputs, "id": "id" in outputs, "key": key}


def run(argv: list[str]) -> int:
    """Run one conntrack(8) command line; returns the exit status."""
    from wanlb.conntrack_io import Out, kernel_call, write_all  # the same I/O as the native commands
    from wanlb.ctnetlink.client import Conntrack
    from wanlb.ctnetlink.format import EVENT_PREFIX, TextFormatter

    try:
        parsed = parse(argv)
        flt, out_opts = build(parsed)
    except Usage as exc:
        return _usage(str(exc))
    fmt = TextFormatter(extended=out_opts["extended"], show_id=out_opts["id"])
    cmd = parsed.command
    if cmd == "list":

        def dump() -> int:
            out, n = Out(), 0
            with Conntrack(relay=True) as ct:
                for buf, items in ct.batches(flt):
                    out.extend([fmt.line(shape, buf, off) for off, shape in items])
                    n += len(items)
            out.flush()
            return n

        shown = kernel_call(dump)
        _say(f"{shown} flow entries have been shown.")
        return 0
    if cmd == "count":
        with Conntrack() as ct:
            print(ct.count() if flt.empty else sum(len(items) for _, items in ct.batches(flt)))
        return 0
    if cmd == "stats":
        with Conntrack() as ct:
            stats = ct.stats()
        lines = []
        for row in stats.cpus:
            counters = " ".join(f"{name}={row.get(name, 0)}" for name in C.CPU_STAT_NAMES.values())
            lines.append(f"cpu={row['cpu']:<4}\t{counters} ")
        write_all(("\n".join(lines) + "\n").encode())
        return 0
    if cmd == "flush":
        with Conntrack() as ct:
            ct.delete_matching(Filter(mark=0, mark_mask=0))
        _say("connection tracking table has been emptied.")
        return 0
    if cmd == "delete":
        return _delete(flt, fmt)
    if cmd == "get":
        return _get(flt, fmt, out_opts["key"])
    return _events(flt, fmt, parsed.values.get("event_mask", "ALL"), EVENT_PREFIX)


def _delete(flt: Filter, fmt: Any) -> int:
    """Like conntrack -D: print each entry deleted, exit 1 when none was."""
    from wanlb.conntrack_io import Out, kernel_call
    from wanlb.ctnetlink.client import Conntrack

    def go() -> int:
        out, victims = Out(), []
        with Conntrack() as ct:
            for buf, off, shape in ct.matches(flt):
                victims.append(shape.decode(buf, off))
                out.add(fmt.line(shape, buf, off))
            deleted = ct.delete(victims)
        out.flush()
        return deleted

    deleted = kernel_call(go)
    _say(f"{deleted} flow entries have been deleted.")
    return 0 if deleted else 1


def _get(flt: Filter, fmt: Any, key: dict[str, int | None]) -> int:
    from wanlb.conntrack_io import kernel_call
    from wanlb.ctnetlink.client import Conntrack

    if flt.src is None or flt.dst is None or flt.proto is None:
        return _usage("-G needs -p, -s and -d (and the protocol's ports, keys or ICMP fields)")
    e = Entry(
        family=flt.family or C.AF_INET, proto=flt.proto,
        src=flt.src.network_address.packed, dst=flt.dst.network_address.packed,
        sport=key["sport"], dport=key["dport"], zone=flt.zone, orig_zone=flt.orig_zone,
        icmp_type=flt.icmp_type, icmp_code=flt.icmp_code, icmp_id=flt.icmp_id,
    )  # fmt: skip

    def go() -> Any:
        with Conntrack() as ct:
            return ct.get_match(e)

    found = kernel_call(go)
    if found is None:
        _say("Operation failed: such conntrack doesn't exist")
        return 1
    buf, off, shape = found
    print(fmt.line(shape, buf, off))
    _say("1 flow entries have been shown.")
    return 0


def _events(flt: Filter, fmt: Any, mask: str, prefix: dict[str, str]) -> int:
    from wanlb.conntrack_io import Out, event_stream, kernel_call
    from wanlb.ctnetlink.events import LOST, EventSocket

    wanted = {k.strip().upper() for k in mask.split(",")}
    if wanted - {"ALL", "NEW", "UPDATE", "DESTROY"}:
        return _usage(f"-e {mask!r}: use NEW, UPDATE, DESTROY or ALL")
    kinds = ("new", "update", "destroy") if "ALL" in wanted else tuple(k.lower() for k in sorted(wanted))
    sock = kernel_call(lambda: EventSocket(kinds))
    sock.setblocking(False)
    out, shown = Out(), 0
    check = None if flt.empty else flt.matches
    try:
        for ev in event_stream(sock):
            if ev is LOST:
                _say("WARNING: We have hit ENOBUFS! We are losing events.")
                continue
            if ev is None:
                out.flush()
                continue
            kind, buf, off, shape = ev
            if check is not None and not check(shape.decode(buf, off)):
                continue
            out.add(prefix[kind] + fmt.line(shape, buf, off))
            shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        out.flush()
        sock.close()
        _say(f"{shown} flow events have been shown.")
    return 0


def _say(text: str) -> None:
    print(f"wanlb conntrack: {text}", file=sys.stderr)


def _usage(text: str) -> int:
    print(f"wanlb conntrack: {text}", file=sys.stderr)
    return 2
