"""``wanlb conntrack …``: inspect and clean the conntrack table, with or without the daemon.

Listing speed matters (tables of 250k entries), so this module imports only the
ctnetlink package up front; config (pydantic) and the control client are
imported when an ISP name is actually needed.  Bad filters are usage errors
(exit 2) reported in one line.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import click

from wanlb.conntrack_io import Out, event_stream, kernel_call
from wanlb.ctnetlink import constants as C
from wanlb.ctnetlink.client import Conntrack
from wanlb.ctnetlink.entry import Entry
from wanlb.ctnetlink.filters import Filter
from wanlb.ctnetlink.format import EVENT_PREFIX, TextFormatter, json_line
from wanlb.paths import DEFAULT_CONFIG_PATH, DEFAULT_SOCKET, find_socket

EXIT_READER_LEFT = 128 + 13  # SIGPIPE


@dataclass(frozen=True)
class Isps:
    """ISP marks as the config or the daemon know them."""

    names: dict[int, str]  # mark (already within mark_mask) -> name
    mark_mask: int
    source: str  # "state" (a running wanlb's allocation) or "config"

    def mark_of(self, name: str) -> int:
        for mark, isp in self.names.items():
            if isp == name:
                return mark
        known = ", ".join(sorted(self.names.values())) or "none"
        raise click.UsageError(f"unknown ISP {name!r} (known from {self.source}: {known})")

    def name_of(self, mark: int | None) -> str | None:
        return self.names.get((mark or 0) & self.mark_mask)


class Ctx:
    def __init__(self, config: str, socket_path: str | None) -> None:
        self.config = config
        self.explicit_socket = socket_path
        self._isps: Isps | None = None
        self._looked = False

    @property
    def socket_path(self) -> str:
        """--socket, else the config's ``control.socket`` (a plain YAML read), else the default."""
        if self.explicit_socket:
            return self.explicit_socket
        return find_socket(None, self.config)

    def isps(self, required: bool) -> Isps | None:
        """ISP marks as the running wanlb allocated them (its runtime state), else as the config would.

        The runtime state sits next to the control socket; without one (wanlb has
        not run here) the config is loaded and allocated as a first start would.
        """
        if not self._looked:
            self._looked = True
            self._isps = self._from_state() or self._from_config()
        if self._isps is None and required:
            raise click.UsageError(
                f"ISP names need the runtime state of a running wanlb (none next to {self.socket_path}; "
                f"--socket/WANLB_SOCKET) or a config ({self.config} not found; --config/WANLB_CONFIG)"
            )
        return self._isps

    def _from_state(self) -> Isps | None:
        from pathlib import Path

        from wanlb import runtime

        try:
            state = runtime.load(Path(self.socket_path).with_suffix(".state.json"))
        except runtime.StateError as err:
            raise click.UsageError(str(err)) from None
        if state is None or not state.isps:
            return None
        return Isps(state.names_by_mark(), state.mark_mask, "state")

    def _from_config(self) -> Isps | None:
        if not os.path.exists(self.config):
            return None
        from wanlb import runtime
        from wanlb.config import ConfigError, load_config

        try:
            cfg = load_config(self.config)
            state = runtime.allocate(cfg, None, reload=False).state
        except (ConfigError, runtime.AllocationRefused) as err:
            raise click.UsageError(str(err)) from None
        return Isps(state.names_by_mark(), cfg.mark_mask, "config")

    def daemon(self, req: dict[str, Any]) -> dict[str, Any] | None:
        """One control request, or None if no daemon answers."""
        return _ask(self.socket_path, req)

    def flush_by_daemon(self, isp: str) -> int | None:
        """Have a running daemon delete ``isp``'s entries (it keeps its live counts right); else None.

        The daemon resolves the name from the same runtime state as this command.
        On None (no daemon, or it does not know the name) the caller flushes itself.
        """
        reply = _ask(self.socket_path, {"cmd": "flush", "isp": isp})
        return None if reply is None else int(reply["deleted"])


def _ask(socket_path: str, req: dict[str, Any]) -> dict[str, Any] | None:
    """One control request, or None if no daemon answers or it refuses."""
    if not os.path.exists(socket_path):
        return None
    try:
        from wanlb.control import ControlError, request
    except ImportError:
        return None
    try:
        return request(socket_path, req)
    except (ControlError, OSError):
        return None


# ---------------------------------------------------------------- option parsing


class _Key(click.ParamType):
    """A GRE key, hexadecimal (0x…) or decimal, like conntrack's."""

    name = "key"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            key = int(value, 0) if isinstance(value, str) else int(value)
        except ValueError:
            self.fail(f"{value!r} is not a key", param, ctx)
        if not 0 <= key <= 0xFFFF:
            self.fail(f"{value!r} is out of range", param, ctx)
        return key


def _network(value: str | None, opt: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if value is None:
        return None
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise click.UsageError(f"{opt} {value!r} is not an IP address or prefix") from None


def _mark(value: str) -> tuple[int, int]:
    try:
        mark, _, mask = value.partition("/")
        return int(mark, 0), int(mask, 0) if mask else 0xFFFFFFFF
    except ValueError:
        raise click.UsageError(f"--mark {value!r} is not MARK or MARK/MASK (decimal or 0x hex)") from None


def _filter_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("-p", "--proto", help="tcp, udp, icmp, icmpv6, sctp, dccp, udplite, gre or a number"),
        click.option("-s", "--src", help="original source ADDR[/PREFIX]"),
        click.option("-d", "--dst", help="original destination ADDR[/PREFIX]"),
        click.option("--sport", type=click.IntRange(0, 65535), help="original source port"),
        click.option("--dport", type=click.IntRange(0, 65535), help="original destination port"),
        click.option("--state", help="TCP state(s), comma separated (implies -p tcp)"),
        click.option("--isp", help="entries whose mark is this ISP's (needs config or daemon)"),
        click.option("--mark", "mark", help="MARK[/MASK]"),
        click.option("--zone", type=click.IntRange(0, 65535)),
        click.option("--orig-zone", type=click.IntRange(0, 65535), help="zone of the original direction"),
        click.option("--reply-zone", type=click.IntRange(0, 65535), help="zone of the reply direction"),
        click.option("-f", "--family", type=click.Choice(["ipv4", "ipv6"])),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def build_filter(ctx: Ctx, opts: dict[str, Any]) -> Filter:
    """Turn CLI options into a :class:`Filter`; every mistake is a UsageError (exit 2)."""
    proto = None
    if opts["proto"] is not None:
        p = opts["proto"].lower()
        proto = C.PROTO_NUMBERS.get(p)
        if proto is None:
            if not p.isdigit() or not 0 <= int(p) <= 255:
                raise click.UsageError(f"unknown protocol {opts['proto']!r}")
            proto = int(p)
    states = None
    if opts["state"]:
        try:
            states = frozenset(C.tcp_state_number(s) for s in opts["state"].split(","))
        except ValueError:
            raise click.UsageError(f"--state {opts['state']!r}: use {', '.join(C.TCP_STATES)}") from None
    mark, mask = (None, 0xFFFFFFFF)
    if opts["mark"] is not None and opts["isp"] is not None:
        raise click.UsageError("--mark and --isp are exclusive")
    if opts["mark"] is not None:
        mark, mask = _mark(opts["mark"])
    elif opts["isp"] is not None:
        isps = ctx.isps(required=True)
        assert isps is not None
        mark, mask = isps.mark_of(opts["isp"]), isps.mark_mask
    try:
        return Filter(
            family=C.FAMILY_NUMBERS[opts["family"]] if opts["family"] else None,
            proto=proto,
            src=_network(opts["src"], "-s"),
            dst=_network(opts["dst"], "-d"),
            sport=opts["sport"],
            dport=opts["dport"],
            states=states,
            mark=mark,
            mark_mask=mask,
            zone=opts["zone"],
            orig_zone=opts["orig_zone"],
            reply_zone=opts["reply_zone"],
        )
    except ValueError as err:
        raise click.UsageError(str(err)) from None


def _filter_opts(kw: dict[str, Any]) -> dict[str, Any]:
    keys = ("proto", "src", "dst", "sport", "dport", "state", "isp", "mark", "zone", "orig_zone", "reply_zone")
    return {k: kw.pop(k) for k in (*keys, "family")}


# ---------------------------------------------------------------- commands


class _Group(click.Group):
    """``conntrack`` commands end quietly when the reader of their output goes away.

    ``wanlb conntrack list | head -1``: the next write fails with EPIPE (Python ignores
    SIGPIPE).  Like conntrack-tools, which SIGPIPE kills, the command stops at once
    without a message and exits 141 (128 + SIGPIPE, what a shell reports for them).
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """A conntrack(8) command line (``-L -p tcp``, ``-D -m 0x200/0xff00``, …) runs as conntrack would."""
        from wanlb import conntrack_compat

        if conntrack_compat.is_compat(args, native=tuple(self.commands)):
            try:
                code = conntrack_compat.run(args)
                sys.stdout.flush()
            except BrokenPipeError:
                _reader_left()
            sys.exit(code)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()
            return result
        except BrokenPipeError:
            pass
        _reader_left()  # outside the handler: the failed write's frames (a dump and its relay child) are let go


def _reader_left() -> NoReturn:
    """Exit 141; stdout now leads nowhere, as what it still buffers would fail again at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.exit(EXIT_READER_LEFT)


def _config_here(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``-c/--config`` after the subcommand too (``count --by isp -c FILE``), as ``wanlb check -c`` takes it."""

    def use(cctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value is not None:
            cctx.find_object(Ctx).config = value  # type: ignore[union-attr]

    return click.option("-c", "--config", expose_value=False, callback=use, help="same as before the subcommand")(fn)


@click.group(name="conntrack", cls=_Group)
@click.option("-c", "--config", envvar="WANLB_CONFIG", default=DEFAULT_CONFIG_PATH, show_default=True)
@click.option(
    "--socket",
    "socket_path",
    envvar="WANLB_SOCKET",
    help=f"daemon control socket [default: the config's control.socket, else {DEFAULT_SOCKET}]",
)
@click.pass_context
def conntrack(cctx: click.Context, config: str, socket_path: str | None) -> None:
    """Inspect and clean the conntrack table (ctnetlink; works without the daemon)."""
    cctx.obj = Ctx(config, socket_path)


@conntrack.command(name="list")
@_config_here
@_filter_options
@click.option("-o", "--output", type=click.Choice(["text", "extended", "json"]), default="text")
@click.pass_obj
def list_cmd(ctx: Ctx, output: str, **kw: Any) -> None:
    """List entries like ``conntrack -L`` (text keeps its field order; json: one object per line)."""
    _list(ctx, _filter_opts(kw), output, Out())


def _list(ctx: Ctx, opts: dict[str, Any], output: str, out: Out) -> None:
    flt = build_filter(ctx, opts)
    isps = ctx.isps(required=False)

    def run() -> None:
        with Conntrack(relay=True) as ct:
            if output == "json":
                for e in ct.dump(flt):
                    out.add(json_line(e, isps.name_of(e.mark) if isps else None))
            else:
                fmt = TextFormatter(
                    extended=output == "extended",
                    isps=isps.names if isps else None,
                    mark_mask=isps.mark_mask if isps else 0xFFFFFFFF,
                )
                line = fmt.line
                for buf, items in ct.batches(flt):
                    out.extend([line(shape, buf, off) for off, shape in items])
        out.flush()

    kernel_call(run)


@conntrack.command()
@_config_here
@_filter_options
@click.option("--by", type=click.Choice(["isp", "mark", "proto", "state", "src"]))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def count(ctx: Ctx, by: str | None, as_json: bool, **kw: Any) -> None:
    """Count entries, optionally grouped; ``--by isp`` asks the daemon first if it runs."""
    flt = build_filter(ctx, _filter_opts(kw))
    counts: dict[str, int] = {}
    source = "kernel"
    if by == "isp":
        isps = ctx.isps(required=True)
        assert isps is not None
        live = ctx.daemon({"cmd": "conn_counts"}) if flt.empty else None
        if live is not None:
            raw = {int(m): n for m, n in live["counts"].items()}
            source = "daemon"
        else:
            raw = kernel_call(lambda: _count_marks(flt, isps.mark_mask))
        for mark, n in sorted(raw.items()):
            key = isps.names.get(mark, "none" if mark == 0 else f"mark={mark:#x}")
            counts[key] = counts.get(key, 0) + n
        for name in isps.names.values():
            counts.setdefault(name, 0)
    elif by == "mark":
        raw = kernel_call(lambda: _count_marks(flt, 0xFFFFFFFF))
        counts = {str(m): n for m, n in sorted(raw.items())}
    elif by is not None:
        counts = dict(kernel_call(lambda: _count_fields(flt, by)).most_common())
    total = sum(counts.values()) if by else kernel_call(lambda: _total(flt))
    if as_json:
        click.echo(json.dumps({"by": by, "counts": counts, "total": total, "source": source}))
        return
    width = max((len(k) for k in counts), default=0)
    for key, n in counts.items():
        click.echo(f"{key:<{width}}  {n}")
    if not by:
        click.echo(total)


def _count_marks(flt: Filter, mask: int) -> dict[int, int]:
    with Conntrack(relay=True) as ct:
        return ct.count_by_mark(flt, mask)


def _count_fields(flt: Filter, by: str) -> Counter[str]:
    key: Callable[[Entry], str] = {
        "proto": lambda e: C.PROTO_NAMES.get(e.proto, str(e.proto)),
        "state": lambda e: "-" if e.tcp_state is None else C.TCP_STATES[e.tcp_state],
        "src": lambda e: e.addr("src"),
    }[by]
    with Conntrack(relay=True) as ct:
        return Counter(key(e) for e in ct.dump(flt))


def _total(flt: Filter) -> int:
    with Conntrack(relay=True) as ct:
        if flt.empty:
            return ct.count()
        return sum(1 for _ in ct.matches(flt))


@conntrack.command()
@_config_here
@_filter_options
@click.option("-e", "--events", default="new,update,destroy", help="comma separated: new, update, destroy")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def watch(ctx: Ctx, events: str, as_json: bool, **kw: Any) -> None:
    """Print conntrack events as they happen (like ``conntrack -E``); reports lost events."""
    from wanlb.ctnetlink.events import GROUPS, LOST, EventSocket

    kinds = tuple(k.strip().lower() for k in events.split(",") if k.strip())
    bad = [k for k in kinds if k not in GROUPS]
    if bad or not kinds:
        raise click.UsageError(f"-e {events!r}: use new, update, destroy")
    flt = build_filter(ctx, _filter_opts(kw))
    isps = ctx.isps(required=False)
    fmt = TextFormatter(isps=isps.names if isps else None, mark_mask=isps.mark_mask if isps else 0xFFFFFFFF)
    check = None if flt.empty else flt.matches
    out = Out()
    seen: Counter[str] = Counter()
    sock = kernel_call(lambda: EventSocket(kinds))
    sock.setblocking(False)
    # SIGTERM ends the watch like Ctrl-C (conntrack -E does the same): what was read is written, then the summary.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        for ev in event_stream(sock):
            if ev is LOST:
                msg = f"lost events: the kernel dropped events (receive buffer full), {sock.lost} so far"
                if as_json:
                    out.add(json.dumps({"event": "lost", "lost_reports": sock.lost}))
                else:
                    click.echo(f"wanlb: {msg}", err=True)
                continue
            if ev is None:  # idle: push what we have
                out.flush()
                continue
            kind, buf, off, shape = ev
            if check is not None or as_json:
                e = shape.decode(buf, off)
                if check is not None and not check(e):
                    continue
            seen[kind] += 1
            if as_json:
                out.add(json_line(e, isps.name_of(e.mark) if isps else None, event=kind))
            else:
                out.add(EVENT_PREFIX[kind] + fmt.line(shape, buf, off))
    except KeyboardInterrupt:
        pass
    finally:
        try:
            out.flush()
        finally:
            sock.close()
            summary = ", ".join(f"{k} {seen[k]}" for k in kinds)
            click.echo(f"wanlb: events {summary}; lost reports {sock.lost}", err=True)


@conntrack.command()
@_config_here
@_filter_options
@click.option("--all", "everything", is_flag=True, help="delete every entry (needed when no filter is given)")
@click.option("--json", "as_json", is_flag=True, help='print {"deleted": N, "source": "daemon"|"kernel"}')
@click.pass_obj
def delete(ctx: Ctx, everything: bool, as_json: bool, **kw: Any) -> None:
    """Delete matching entries; a mark/ISP-only filter is one kernel flush (--isp alone: by the daemon if it runs)."""
    opts = _filter_opts(kw)
    isp = None if everything else _isp_only(opts)
    deleted = ctx.flush_by_daemon(isp) if isp is not None else None
    source = "daemon" if deleted is not None else "kernel"
    if deleted is None:
        deleted = _delete_here(ctx, opts, everything)
    if as_json:
        click.echo(json.dumps({"deleted": deleted, "source": source}))
    else:
        click.echo(f"wanlb: {deleted} entries deleted" + (" (by the daemon)" if source == "daemon" else ""), err=True)


def _isp_only(opts: dict[str, Any]) -> str | None:
    """The ISP name when ``--isp`` is the whole filter (what the daemon can flush), else None."""
    return opts["isp"] if all(v is None for k, v in opts.items() if k != "isp") else None


def _delete_here(ctx: Ctx, opts: dict[str, Any], everything: bool) -> int:
    """Resolve the filter and delete in this process; returns how many entries went."""
    flt = build_filter(ctx, opts)
    if flt.empty and not everything:
        raise click.UsageError("refusing to delete every entry without --all")
    if not flt.empty and everything:
        raise click.UsageError("--all cannot be combined with filters")
    flt = Filter(mark=0, mark_mask=0) if everything else flt

    def run() -> int:
        with Conntrack() as ct:
            return ct.delete_matching(flt)

    deleted: int = kernel_call(run)
    return deleted


@conntrack.command()
@_config_here
@click.option("-p", "--proto", required=True)
@click.option("-s", "--src", required=True)
@click.option("-d", "--dst", required=True)
@click.option("--sport", type=click.IntRange(0, 65535))
@click.option("--dport", type=click.IntRange(0, 65535))
@click.option("--zone", type=click.IntRange(0, 65535))
@click.option("--orig-zone", type=click.IntRange(0, 65535), help="the original direction's own zone")
@click.option("--icmp-type", type=click.IntRange(0, 255))
@click.option("--icmp-code", type=click.IntRange(0, 255))
@click.option("--icmp-id", type=click.IntRange(0, 65535))
@click.option("--srckey", "--orig-key-src", "srckey", type=_Key(), help="GRE source key (hex or decimal)")
@click.option("--dstkey", "--orig-key-dst", "dstkey", type=_Key(), help="GRE destination key (hex or decimal)")
@click.option("-o", "--output", type=click.Choice(["text", "extended", "json"]), default="text")
@click.pass_obj
def get(
    ctx: Ctx,
    output: str,
    orig_zone: int | None,
    icmp_type: int | None,
    icmp_code: int | None,
    icmp_id: int | None,
    srckey: int | None,
    dstkey: int | None,
    **kw: Any,
) -> None:
    """Show the one entry with this original tuple (like ``conntrack -G``); exit 1 if absent.

    TCP/UDP/SCTP/DCCP need --sport and --dport; ICMP/ICMPv6 --icmp-type, --icmp-code
    and --icmp-id; GRE --srckey and --dstkey.
    """
    unused = ("state", "isp", "mark", "family", "orig_zone", "reply_zone")
    flt = build_filter(ctx, {**kw, **dict.fromkeys(unused)})
    if flt.proto in C.PORT_PROTOS and (flt.sport is None or flt.dport is None):
        raise click.UsageError("get needs --sport and --dport for this protocol")
    if flt.proto in C.ICMP_PROTOS and None in (icmp_type, icmp_code, icmp_id):
        raise click.UsageError("get needs --icmp-type, --icmp-code and --icmp-id for ICMP")
    if flt.proto == C.IPPROTO_GRE and None in (srckey, dstkey):
        raise click.UsageError("get needs --srckey and --dstkey for GRE")
    if flt.src is None or flt.dst is None or flt.src.num_addresses != 1 or flt.dst.num_addresses != 1:
        raise click.UsageError("get needs single addresses for -s and -d")
    gre = flt.proto == C.IPPROTO_GRE
    key = Entry(
        family=flt.family or C.AF_INET, proto=flt.proto or 0,
        src=flt.src.network_address.packed, dst=flt.dst.network_address.packed,
        sport=srckey if gre else flt.sport, dport=dstkey if gre else flt.dport, zone=flt.zone,
        orig_zone=orig_zone, icmp_type=icmp_type, icmp_code=icmp_code, icmp_id=icmp_id,
    )  # fmt: skip
    isps = ctx.isps(required=False)

    def run() -> Any:
        with Conntrack() as ct:
            return ct.get_match(key)

    found = kernel_call(run)
    if found is None:
        click.echo("wanlb: no such entry", err=True)
        sys.exit(1)
    buf, off, shape = found
    if output == "json":
        e = shape.decode(buf, off)
        click.echo(json_line(e, isps.name_of(e.mark) if isps else None))
        return
    fmt = TextFormatter(
        extended=output == "extended",
        isps=isps.names if isps else None,
        mark_mask=isps.mark_mask if isps else 0xFFFFFFFF,
    )
    click.echo(fmt.line(shape, buf, off))


@conntrack.command()
@click.option("--json", "as_json", is_flag=True)
def stats(as_json: bool) -> None:
    """Table usage and per-CPU counters (``conntrack -C`` and ``-S``)."""

    def run() -> Any:
        with Conntrack() as ct:
            return ct.stats()

    s = kernel_call(run)
    usage = 100.0 * s.count / s.max if s.max else 0.0
    if as_json:
        click.echo(json.dumps({"count": s.count, "max": s.max, "usage_pct": round(usage, 2), "cpus": s.cpus}))
        return
    click.echo(f"entries {s.count}  max {s.max}  usage {usage:.1f}%")
    cols = ("found", "invalid", "insert_failed", "drop", "early_drop", "search_restart")
    click.echo("cpu  " + "  ".join(f"{c:>14}" for c in cols))
    for row in s.cpus:
        click.echo(f"{row['cpu']:<4} " + "  ".join(f"{row[c]:>14}" for c in cols))


if __name__ == "__main__":
    conntrack()


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt
