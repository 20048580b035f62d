"""conntrack(8) command lines for ``wanlb conntrack``: ``-L -G -D -F -E -C -S -U -I -A -R`` and their options.

So that ``alias conntrack='wanlb conntrack'`` keeps scripts working: the same command letters and
options, the same text on stdout (byte-identical to conntrack-tools 1.4.7 but for timeouts, which change
between reads), the same exit statuses (``-D``/``-U`` that matched nothing and ``-G`` of an absent entry
exit 1) and the same table left behind.  Where conntrack 1.4.7 fails (``-U`` of zoned entries or without
``-f``, a ``-R`` file's lines sharing the last line's mark) wanlb does what the command line says.  What
is not supported is refused with exit 2 and a sentence, never silently ignored; docs/conntrack.md lists it.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

from wanlb.ctnetlink import constants as C
from wanlb.ctnetlink.entry import Entry
from wanlb.ctnetlink.filters import Filter
from wanlb.ctnetlink.update import Change

COMMANDS = {
    "-L": "list", "--dump": "list", "-G": "get", "--get": "get", "-D": "delete", "--delete": "delete",
    "-F": "flush", "--flush": "flush", "-E": "events", "--event": "events", "-C": "count", "--count": "count",
    "-S": "stats", "--stats": "stats", "-U": "update", "--update": "update", "-I": "create", "--create": "create",
    "-A": "add", "--add": "add",
}  # fmt: skip
LOAD = ("-R", "--load-file")
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
    "--icmpv6-type": "icmp_type", "--icmpv6-code": "icmp_code", "--icmpv6-id": "icmp_id",
    "--srckey": "srckey", "--orig-key-src": "srckey", "--dstkey": "dstkey", "--orig-key-dst": "dstkey",
    "-e": "event_mask", "--event-mask": "event_mask", "-t": "timeout", "--timeout": "timeout",
}  # fmt: skip
NAT_FLAGS = {"-n": "src", "--src-nat": "src", "-g": "dst", "--dst-nat": "dst", "-j": "any", "--any-nat": "any"}
OUTPUTS = {"extended", "id"}
NOT_SUPPORTED = {
    "-l": "labels", "--label": "labels", "--label-add": "labels", "--label-del": "labels",
    "-c": "secmark", "--secmark": "secmark", "-b": "buffer sizes",
    "--buffer-size": "buffer sizes", "-z": "zeroing counters", "--zero": "zeroing counters",
    "-a": "name resolution", "--src-nat-addr": "NAT address filters",
}  # fmt: skip
_TUPLE = {"src", "dst", "reply_src", "reply_dst", "proto", "sport", "dport", "reply_sport", "reply_dport",
          "icmp_type", "icmp_code", "icmp_id", "srckey", "dstkey"}  # fmt: skip
SETTERS = {"mark", "status", "timeout", "state"}  # what -U sets (and -I gives the new entry)
# The options conntrack 1.4.7 takes with each writing command (anything else is an "Illegal option"); in -U
# the tuple options and the masks select, the SETTERS set.  The timeout goes with writing commands only.
LEGAL = {
    "update": _TUPLE | SETTERS | {"mask_src", "mask_dst", "family", "output"},
    "create": _TUPLE | SETTERS | {"zone", "orig_zone", "reply_zone"},
    "add": _TUPLE | SETTERS | {"zone", "orig_zone", "reply_zone"},
}
LEGAL_NAT = {"update": {"src", "dst"}, "create": set(), "add": set()}  # -n/-g select in -U; -j is illegal
FLAGS = {"list": "-L", "get": "-G", "events": "-E", "count": "-C", "stats": "-S"}  # for the -R message
MAX_LOAD_BYTES = 64 << 20  # a -R file (a 262,144-entry save is ~40 MiB)
MAX_LINE = 10240  # conntrack's own line buffer


class Usage(Exception):
    """A command line conntrack-compat mode cannot run; exit 2."""


class _Failed(Exception):
    """The kernel refused a change: conntrack's ``Operation failed: …``, exit 1 (a -R file stops there)."""


def is_compat(argv: list[str], native: tuple[str, ...] = ()) -> bool:
    """Whether these ``wanlb conntrack`` arguments are a conntrack(8) command line.

    Not when they name one of the ``native`` subcommands (after the group's own options): there ``-c``
    is wanlb's ``--config``, not conntrack's ``--secmark`` (``count --by isp -c FILE``).
    """
    i = 0
    while i < len(argv) and argv[i] in ("-c", "--config", "--socket"):
        i += 2
    while i < len(argv) and argv[i].startswith(("--config=", "--socket=")):
        i += 1
    if i < len(argv) and argv[i] in native:
        return False
    return any(a in COMMANDS or a in NOT_SUPPORTED or a in LOAD for a in argv)


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
        if name in LOAD:
            raise Usage(f"{name} FILE must come first and alone: conntrack -R FILE")
        if name in COMMANDS:
            if command is not None:
                raise Usage("only one command (-L, -G, -D, -F, -E, -C, -S, -U, -I or -A) at a time")
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
        raise Usage("no command: use one of -L, -G, -D, -F, -E, -C, -S, -U, -I, -A or -R FILE")
    _check_legal(command, values, nat)
    return Parsed(command, values, nat)


def _check_legal(command: str, values: dict[str, str], nat: str | None) -> None:
    legal = LEGAL.get(command)
    for name in values:
        if (legal is not None and name not in legal) or (legal is None and name == "timeout"):
            raise Usage(f"Illegal option `--{name.replace('_', '-')}' with this command")
    if nat is not None and legal is not None and nat not in LEGAL_NAT[command]:
        raise Usage(f"Illegal option `--{nat}-nat' with this command")


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


def _state(value: str) -> int:
    """One TCP state, as conntrack takes it (the native ``list --state`` takes a list)."""
    try:
        if "," not in value:
            return C.tcp_state_number(value)
    except ValueError:
        pass
    raise Usage(f"unknown TCP state {value!r}: use one of {', '.join(C.TCP_STATES)}")


def _mark(value: str) -> tuple[int, int]:
    """MARK[/MASK] (mask default: all bits)."""
    m, _, k = value.partition("/")
    return _int(m, "--mark", 0xFFFFFFFF), _int(k, "--mark", 0xFFFFFFFF) if k else 0xFFFFFFFF


def _status(value: str) -> int:
    status = 0
    for name in value.split(","):
        bit = C.STATUS_BITS.get(name.strip().upper())
        if bit is None:
            raise Usage(f"-u {name!r}: use {', '.join(C.STATUS_BITS)}")
        status |= bit
    return status


def build(p: Parsed) -> tuple[Filter, dict[str, Any]]:
    """The Filter and the output options of a parsed command line."""
    v = p.values
    proto = _proto(v["proto"]) if "proto" in v else None
    states = frozenset({_state(v["state"])}) if "state" in v else None
    mark, mask = None, 0xFFFFFFFF
    if "mark" in v:
        mark, mask = _mark(v["mark"])
        mark &= mask
    status = _status(v["status"]) if "status" in v else None
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


def build_update(p: Parsed) -> tuple[Filter, Change, dict[str, Any]]:
    """-U: the tuple options and masks select (the Filter), ``-m -u -t --state`` set (the Change)."""
    v = p.values
    flt, out = build(Parsed(p.command, {k: x for k, x in v.items() if k not in SETTERS}, p.nat))
    if "state" in v and flt.proto != C.IPPROTO_TCP:
        raise Usage("--state needs -p tcp")
    mark, mask = _mark(v["mark"]) if "mark" in v else (None, 0xFFFFFFFF)
    change = Change(
        mark=mark,
        mark_mask=mask,
        status=_status(v["status"]) if "status" in v else None,
        timeout=_int(v["timeout"], "-t", 0xFFFFFFFF) if "timeout" in v else None,
        tcp_state=_state(v["state"]) if "state" in v else None,
    )
    return flt, change, out


# the reply type of each ICMP/ICMPv6 type a conntrack entry can be created for (the kernel's invmap)
_ICMP_REPLY = {C.IPPROTO_ICMP: {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 17: 18, 18: 17},
               C.IPPROTO_ICMPV6: {128: 129, 129: 128, 139: 140, 140: 139}}  # fmt: skip


def _addr(value: str, opt: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if "/" in value:
        raise Usage(f"{opt} {value!r}: an entry is created for one address, not a prefix")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise Usage(f"{opt} {value!r} is not an address") from None


def _need(v: dict[str, str], *keys: str, say: tuple[str, ...] = ()) -> None:
    """conntrack's messages for a missing option (one alone) or a missing pair; ``say``: their long names."""
    if all(k in v for k in keys):
        return
    names = say or tuple(k.replace("_", "-") for k in keys)
    if len(names) == 1:
        raise Usage(f"You need to supply the `--{names[0]}' option for this command")
    raise Usage(f"you have to specify `--{names[0]}' and `--{names[1]}'")


def build_create(p: Parsed) -> Entry:
    """-I/-A: the entry to create; the tuple not given is the other one inverted, as conntrack does."""
    v = p.values
    _need(v, "proto", say=("protonum",))
    _need(v, "timeout")
    proto = _proto(v["proto"])
    orig, reply = "src" in v or "dst" in v, "reply_src" in v or "reply_dst" in v
    if orig or not reply:
        _need(v, "src", "dst")
    if reply:
        _need(v, "reply_src", "reply_dst")
    a = {k: _addr(v[k], f"-{k[0]}" if k in ("src", "dst") else f"--{k.replace('_', '-')}")
         for k in ("src", "dst", "reply_src", "reply_dst") if k in v}  # fmt: skip
    if len({x.version for x in a.values()}) > 1:
        raise Usage("mismatched address family")
    family = C.AF_INET6 if next(iter(a.values())).version == 6 else C.AF_INET
    if proto in (C.IPPROTO_SCTP, C.IPPROTO_DCCP):
        raise Usage(f"-I -p {v['proto']}: not supported by wanlb conntrack (its states and vtags are not)")
    icmp = (C.IPPROTO_ICMP, C.IPPROTO_ICMPV6)[family == C.AF_INET6]
    if proto in _ICMP_REPLY and proto != icmp:
        raise Usage(f"-p {v['proto']} does not go with {C.FAMILY_NAMES[family]} addresses")
    if "state" in v and proto != C.IPPROTO_TCP:
        raise Usage("--state needs -p tcp")
    ports: tuple[int | None, ...] = (None, None, None, None)
    if proto in C.PORT_PROTOS:
        if proto == C.IPPROTO_TCP:
            _need(v, "state")
        if orig:
            _need(v, "sport", "dport")
        if reply:
            _need(v, "reply_sport", "reply_dport", say=("reply-port-src", "reply-port-dst"))
        ports = tuple(_int(v[k], f"--{k}", 0xFFFF) if k in v else None
                      for k in ("sport", "dport", "reply_sport", "reply_dport"))  # fmt: skip
    elif proto == C.IPPROTO_GRE:
        _need(v, "srckey", "dstkey")
        keys = _int(v["srckey"], "--srckey", 0xFFFF), _int(v["dstkey"], "--dstkey", 0xFFFF)
        ports = (*keys, keys[1], keys[0])
    itype = icode = iid = rtype = None
    if proto in _ICMP_REPLY:
        _need(v, "icmp_type")
        _need(v, "icmp_code")
        itype, icode = _int(v["icmp_type"], "--icmp-type", 255), _int(v["icmp_code"], "--icmp-code", 255)
        iid = _int(v["icmp_id"], "--icmp-id", 0xFFFF) if "icmp_id" in v else 0
        rtype = _ICMP_REPLY[proto].get(itype)
        if rtype is None:
            raise Usage(f"ICMP type {itype} has no reply type: entries are created for echo, timestamp, "
                        "information and address requests and replies")  # fmt: skip
    sport, dport, rsport, rdport = ports
    if not reply:  # the reply tuple mirrors the original
        a["reply_src"], a["reply_dst"], rsport, rdport = a["dst"], a["src"], dport, sport
    elif not orig:
        a["src"], a["dst"], sport, dport = a["reply_dst"], a["reply_src"], rdport, rsport
    mark = _mark(v["mark"])[0] if "mark" in v else None  # the mask is ignored when creating, as conntrack does
    return Entry(
        family=family, proto=proto, src=a["src"].packed, dst=a["dst"].packed, sport=sport, dport=dport,
        icmp_type=itype, icmp_code=icode, icmp_id=iid,
        reply_src=a["reply_src"].packed, reply_dst=a["reply_dst"].packed, reply_sport=rsport, reply_dport=rdport,
        reply_icmp_type=rtype, reply_icmp_code=icode, reply_icmp_id=iid,
        orig_zone=_int(v["orig_zone"], "--orig-zone", 0xFFFF) if "orig_zone" in v else None,
        reply_zone=_int(v["reply_zone"], "--reply-zone", 0xFFFF) if "reply_zone" in v else None,
        status=_status(v["status"]) if "status" in v else 0,
        timeout=_int(v["timeout"], "-t", 0xFFFFFFFF),
        tcp_state=_state(v["state"]) if proto == C.IPPROTO_TCP else None,
        mark=mark, zone=_int(v["zone"], "-w", 0xFFFF) if "zone" in v else None,
    )  # fmt: skip


def build_any(p: Parsed) -> Any:
    """What a command needs: an Entry (-I/-A), (Filter, Change, output) (-U), else (Filter, output)."""
    if p.command in ("create", "add"):
        return build_create(p)
    if p.command == "update":
        return build_update(p)
    return build(p)


def tokens(line: str) -> list[str]:
    """One -R line split as conntrack splits it: blanks separate, double quotes group, ``\\`` escapes in quotes."""
    out: list[str] = []
    word: list[str] | None = None  # None: between words ("" is a word: a pair of quotes)
    quoted = escaped = False
    for ch in line:
        if quoted and escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
            continue
        elif ch == '"':
            quoted, word = not quoted, word if word is not None else []
            continue
        elif not quoted and ch in " \t\n\r":
            if word is not None:
                out.append("".join(word))
                word = None
            continue
        word = word if word is not None else []
        word.append(ch)
    if quoted:
        raise Usage("unterminated quote")
    if word is not None:
        out.append("".join(word))
    return out


def load_file(path: str) -> list[tuple[int, Parsed, Any]]:
    """Read and check a ``-R`` file (``-`` is stdin): every line is parsed before any runs, as conntrack does.

    Blank lines and lines starting with ``#`` (after blanks) are skipped; each other line is one
    ``-I``, ``-A``, ``-U``, ``-D`` or ``-F`` command line.  Errors name the file and line.
    """
    try:
        if path == "-":
            raw = sys.stdin.buffer.read(MAX_LOAD_BYTES + 1)
        else:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_LOAD_BYTES + 1)
    except OSError as err:
        raise Usage(f"Failed to open file {path} for reading: {err.strerror}") from None
    if len(raw) > MAX_LOAD_BYTES:
        raise Usage(f"{path}: larger than {MAX_LOAD_BYTES >> 20} MiB")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise Usage(f"{path}: not UTF-8 text") from None
    lines = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            if len(line) > MAX_LINE:
                raise Usage(f"line longer than {MAX_LINE} characters")
            stripped = line.lstrip(" \t")
            if not stripped.strip() or stripped.startswith("#"):
                continue
            parsed = parse(tokens(stripped))
            if parsed.command not in ("create", "add", "update", "delete", "flush"):
                raise Usage(f"cannot use command `{FLAGS[parsed.command]}' with --load-file")
            lines.append((n, parsed, build_any(parsed)))
        except Usage as exc:
            raise Usage(f"{path}:{n}: {exc}") from None
    return lines


def run(argv: list[str]) -> int:
    """Run one conntrack(8) command line; returns the exit status."""
    from wanlb.conntrack_io import Out, kernel_call, write_all  # the same I/O as the native commands
    from wanlb.ctnetlink.client import Conntrack
    from wanlb.ctnetlink.format import EVENT_PREFIX

    try:
        if argv and argv[0] in LOAD:
            if len(argv) != 2:
                raise Usage(f"{argv[0]} takes one FILE ('-' for stdin) and nothing else")
            lines = load_file(argv[1])
            try:
                return _load(lines)
            except _Failed as failed:
                _say(f"Operation failed: {failed}")
                return 1
        parsed = parse(argv)
        built = build_any(parsed)
    except Usage as exc:
        return _usage(str(exc))
    cmd = parsed.command
    try:
        if cmd in ("create", "add"):
            return _create(built, cmd, summary=True)
        if cmd == "update":
            return _update(*built, summary=True)
    except _Failed as failed:
        _say(f"Operation failed: {failed}")
        return 1
    flt, out_opts = built
    fmt = _formatter(out_opts)
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
        return _flush()
    if cmd == "delete":
        return _delete(flt, fmt, summary=True)
    if cmd == "get":
        return _get(flt, fmt, out_opts["key"])
    return _events(flt, fmt, parsed.values.get("event_mask", "ALL"), EVENT_PREFIX)


def _formatter(out_opts: dict[str, Any]) -> Any:
    from wanlb.ctnetlink.format import TextFormatter

    return TextFormatter(extended=out_opts["extended"], show_id=out_opts["id"])


def _load(lines: list[tuple[int, Parsed, Any]]) -> int:
    """Run a checked -R file's lines in order, without summaries (as conntrack); _Failed stops it.

    A -D or -U that matches nothing is no failure here (conntrack goes on and exits 0).
    """
    for _n, parsed, built in lines:
        if parsed.command in ("create", "add"):
            _create(built, parsed.command, summary=False)
        elif parsed.command == "update":
            _update(*built, summary=False)
        elif parsed.command == "delete":
            _delete(built[0], _formatter(built[1]), summary=False)
        else:
            _flush()
    return 0


def _flush() -> int:
    from wanlb.ctnetlink.client import Conntrack

    with Conntrack() as ct:
        ct.delete_matching(Filter(mark=0, mark_mask=0))
    _say("connection tracking table has been emptied.")
    return 0


def _err2str(code: int, command: str) -> str:
    """conntrack's words for a kernel error (its err2str), else the system's."""
    if code == errno.EEXIST and command == "create":
        return "Such conntrack exists, try -U to update"
    if code == errno.ENOENT and command in ("create", "add", "get", "delete"):
        return "such conntrack doesn't exist"
    if code == errno.ENOMEM and command in ("create", "add", "get"):
        return "not enough memory"
    if code == errno.ETIME and command in ("create", "add"):
        return "conntrack has expired"
    if code == errno.EINVAL:
        return "invalid parameters"
    if code == errno.EPERM:
        return "sorry, you must be root or get CAP_NET_ADMIN capability to do this"
    return os.strerror(code)


def _create(e: Entry, command: str, summary: bool) -> int:
    """-I, or -A, which conntrack 1.4.7 makes an -I that lets an existing entry be (``0 flow entries have
    been added.``, exit 0: a save file can be loaded into a table that already has some of it)."""
    from wanlb.conntrack_io import kernel_call
    from wanlb.ctnetlink.client import Conntrack

    def go() -> int:
        with Conntrack() as ct:
            return ct.create([e])[0]

    code = kernel_call(go)
    if code and not (code == errno.EEXIST and command == "add"):
        raise _Failed(_err2str(code, command))
    if summary:
        _say(f"{0 if code else 1} flow entries have been {'created' if command == 'create' else 'added'}.")
    return 0


def _update(flt: Filter, change: Change, out_opts: dict[str, Any], summary: bool) -> int:
    """Like conntrack -U: change every selected entry, print each as it is now, exit 1 when none changed.

    The matching entries are read first and changed after the dump (a table is never changed while
    the kernel walks it); an entry that went in between is skipped, as conntrack skips it.
    """
    from wanlb.conntrack_io import Out, kernel_call
    from wanlb.ctnetlink.client import Conntrack

    fmt = _formatter(out_opts)

    def go() -> tuple[int, int]:
        out, updated = Out(), 0
        with Conntrack() as ct:
            todo = [e for e in ct.dump(flt) if change.alters(e)]
            codes = ct.update(todo, change)
            for e, code in zip(todo, codes, strict=True):
                found = ct.get_match(e) if code == 0 else None
                if found is not None:
                    out.add(fmt.line(found[2], found[0], found[1]))
                    updated += 1
        out.flush()
        return updated, next((c for c in codes if c not in (0, errno.ENOENT)), 0)

    updated, failure = kernel_call(go)
    if failure:
        raise _Failed(_err2str(failure, "update"))
    if summary:
        _say(f"{updated} flow entries have been updated.")
    return 0 if updated else 1


def _delete(flt: Filter, fmt: Any, summary: bool) -> int:
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
    if summary:
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
    from wanlb.ctnetlink.codec import sender_portid
    from wanlb.ctnetlink.events import LOST, EventSocket
    from wanlb.ctnetlink.portid import Senders

    wanted = {k.strip().upper() for k in mask.split(",")}
    if wanted - {"ALL", "NEW", "UPDATE", "DESTROY"}:
        return _usage(f"-e {mask!r}: use NEW, UPDATE, DESTROY or ALL")
    kinds = ("new", "update", "destroy") if "ALL" in wanted else tuple(k.lower() for k in sorted(wanted))
    sock = kernel_call(lambda: EventSocket(kinds))
    sock.setblocking(False)
    out, shown, senders = Out(), 0, Senders()
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
            out.add(prefix[kind] + fmt.line(shape, buf, off) + senders.suffix(sender_portid(buf, off)))
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
