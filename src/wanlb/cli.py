"""The ``wanlb`` command line.

Exit codes: 0 success · 1 runtime failure · 2 bad config or arguments ·
3 no daemon answers the control socket.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn

import click

from wanlb import __version__
from wanlb.paths import DEFAULT_CONFIG_PATH, find_socket

if TYPE_CHECKING:
    from rich.console import RenderableType

    from wanlb.config import Config
    from wanlb.top import Rates
    from wanlb.view import Domain, DomainSide, Isp, Schedule, Status

# Heavy modules (rich, pydantic via wanlb.config, yaml, the lab) are imported inside the
# commands that use them: `wanlb conntrack …` is timed against conntrack-tools and
# must not pay ~0.2 s for imports it never uses.

EXIT_RUNTIME = 1
EXIT_CONFIG = 2
EXIT_NO_DAEMON = 3
EVENTS_SHOWN = 5
STATUS_WIDTH = 80  # what `status` fits on a pipe or in a file, without COLUMNS

config_option = click.option(
    "--config",
    "-c",
    "config_path",
    default=DEFAULT_CONFIG_PATH,
    envvar="WANLB_CONFIG",
    show_default=True,
    help="YAML configuration file (env WANLB_CONFIG).",
)
socket_option = click.option(
    "--socket",
    "socket_path",
    default=None,
    envvar="WANLB_SOCKET",
    help="Control socket of the daemon (default: control.socket of the config, else /run/wanlb/wanlb.sock).",
)


def fail(message: str, code: int = EXIT_RUNTIME) -> NoReturn:
    click.echo(f"wanlb: {message}", err=True)
    sys.exit(code)


def _load(config_path: str) -> Config:
    from wanlb.config import ConfigError, load_config

    try:
        return load_config(config_path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)


def resolve_socket(socket_path: str | None, config_path: str) -> str:
    """Explicit --socket wins; else the config's control.socket (see :func:`wanlb.paths.find_socket`)."""
    return find_socket(socket_path, config_path)


def ask_daemon(socket_path: str, message: dict[str, Any]) -> dict[str, Any]:
    from wanlb.control import ControlError, DaemonRefused, request

    try:
        return request(socket_path, message)
    except DaemonRefused as exc:
        fail(str(exc), EXIT_RUNTIME)
    except ControlError as exc:
        fail(str(exc), EXIT_NO_DAEMON)


class LazyGroup(click.Group):
    """A group whose big subcommand groups are imported only when one of them is chosen.

    ``wanlb --help`` lists them by a stored short help (kept equal to the real one
    by a unit test) instead of importing them.
    """

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy  # name -> ("module:attribute", first line of its help)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module, _, attribute = self.lazy[cmd_name][0].partition(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        placeholders = {name: click.Command(name, help=text) for name, (_, text) in self.lazy.items()}
        click.Group(commands={**self.commands, **placeholders}).format_commands(ctx, formatter)


LAZY_COMMANDS = {
    "conntrack": (
        "wanlb.conntrack_cli:conntrack",
        "Inspect and clean the conntrack table (ctnetlink; works without the daemon).",
    ),
    "lab": (
        "wanlb.lab.cli:lab",
        'Network-namespace lab: clients, the gateway, ISP routers and an "internet" on this machine.',
    ),
    "quota": ("wanlb.quota_cli:quota", "Data quotas per ISP: what each counted this cycle, and a manual reset."),
}


@click.group(cls=LazyGroup, lazy=LAZY_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wanlb")
def main() -> None:
    """wanlb — a connection-sticky, health-aware multi-WAN gateway.

    NEW connections are spread over ISPs by weight and tier; every later packet
    of a connection follows the ISP it started on (conntrack mark → ip rule →
    ISP routing table).  Start with `wanlb check`, `wanlb render`, then
    `wanlb run`.  Try everything on one machine with `wanlb demo` or `wanlb lab`.
    """


def domain_line(d: Domain) -> str:
    """A resolved name's addresses (both families) and what is wrong, for ``status``: a family without
    records (``none``) is not a problem unless no family has any address."""
    sides: list[tuple[str, DomainSide]] = [("", d), *((("IPv6 ", d.ipv6),) if d.ipv6 is not None else ())]
    addrs = ", ".join(a for _, side in sides for a in side.addresses)
    problems = [f"{label}{side.state}: {side.error}" for label, side in sides if side.state in ("stale", "failed")]
    if not addrs and not problems and any(side.state == "none" for _, side in sides):
        return "no address (" + "; ".join(side.error for _, side in sides if side.error) + ")"
    return (addrs or "none yet") + (f" ({'; '.join(problems)})" if problems else "")


def schedule_text(schedule: Schedule) -> str:
    """``on until Mon 18:00`` / ``off until Tue 08:00`` (this machine's local time), or ``on``/``off`` for good."""
    state = "on" if schedule.active else "off"
    if schedule.changes_at is None:
        return state
    at = time.localtime(schedule.changes_at)
    return f"{state} until {time.strftime('%a %H:%M:%S' if at.tm_sec else '%a %H:%M', at)}"


def uplink_line(isp: Isp) -> str:
    """``isp1 wan1 100.64.1.2/24 → 100.64.1.1 (default via 100.64.1.1 dev wan1 proto dhcp metric 1003)``, what
    its uplink misses if anything, and its IPv6 next hop: where each ISP's traffic goes and why."""
    line = f"{isp.name} {isp.interface} {', '.join(isp.addresses) or 'no address'} → {isp.gateway}"
    if isp.gateway_source:  # (a daemon older than the CLI sends none)
        line += f" ({isp.gateway_source})"
    if isp.uplink:
        line += f": {isp.uplink}"
    if isp.ipv6 is not None and isp.ipv6.gateway_source:
        line += f"; IPv6 → {isp.ipv6.gateway or 'none'} ({isp.ipv6.gateway_source})"
    return line


def status_width(wide: bool, columns: str | None, terminal: int | None) -> int:
    """The width ``status`` fits: all it takes with ``--wide``; else ``COLUMNS`` (set by a user or a script), the
    terminal's width, or on a pipe 80, so that ``status | less`` and mail stay readable (scripts: ``--json``)."""
    from wanlb.top import WIDE

    if wide:
        return WIDE
    if columns is not None and columns.isdigit() and int(columns) > 0:
        return min(int(columns), WIDE)
    return min(terminal, WIDE) if terminal else STATUS_WIDTH


def _probe_cost(isp: Isp) -> str:
    """What the ISP's probes cost per day at their rate now (``3.8M``), and the rate if sparser (a standby
    ISP nobody uses: ``271k @30s``)."""
    from wanlb.top import human_bytes

    health = isp.health
    if not health.monitored:
        return "-"
    cost = human_bytes(health.probe_bytes_per_day)
    sparse = health.probe_interval_seconds > health.interval_seconds
    return f"{cost} @{health.probe_interval_seconds:g}s" if sparse else cost


def status_report(status: Status, rated: Rates | None, width: int) -> list[RenderableType]:
    """What ``status`` prints, each line at most ``width`` long (unless names alone are longer).

    The ISP table keeps name, state, share, conns, loss and rtt, then what matters next (IPv6, the rates,
    weight, tier, traffic, interface, mark, table — its columns ``keep``); what does not fit is listed under
    it per ISP, so nothing is lost at any width.  The lines below wrap with a hanging indent.
    """
    from rich import box
    from rich.table import Table

    from wanlb import top
    from wanlb.top import Column, fit_table, human_bytes, human_count_rate, human_rate, wrap

    def table(title: str) -> Table:  # at least as wide as its title, so that the title does not wrap
        return Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), show_edge=False,
                     min_width=min(len(title), width))  # fmt: skip

    isps = status.isps
    health = [isp.health for isp in isps]
    loss = tuple(f"{h.loss_percent:g}%" if h.monitored else "unmonitored" for h in health)
    rtt = tuple(f"{h.latency_ms:.1f} ms" if h.monitored and h.latency_ms is not None else "-" for h in health)
    states = []
    for isp in isps:
        state = isp.status + top.standby_note(isp)
        if left := top.drain_left(isp, time.time()):
            state += f" ({left})"
        if isp.uplink:  # what its uplink misses: the short ones in the cell, every one in "uplinks:"
            state += f" ({isp.uplink if len(isp.uplink) <= 20 else 'uplink'})"
        if isp.health.held_down_seconds:
            state += f" (held {isp.health.held_down_seconds}s)"
        states.append(state)
    columns = [
        Column("isp", tuple(isp.name for isp in isps), justify="left"),
        Column("status", tuple(states), justify="left", cap=top.STATE_CAP),
        *([Column("ipv6", tuple(map(top.ipv6_text, isps)), 1, "left", top.IPV6_CAP)] if status.any_ipv6 else []),
        Column("tier", tuple(str(isp.tier) for isp in isps), 6, "left"),
        Column("weight", tuple(str(isp.weight) for isp in isps), 5, "left"),
        Column("share", tuple(f"{isp.share_percent:.1f}%" for isp in isps), justify="left"),
        Column("mark", tuple(f"{isp.mark:#x}" for isp in isps), 11, "left"),
        Column("table", tuple(str(isp.table) for isp in isps), 12, "left"),
        Column("interface", tuple(isp.interface for isp in isps), 10, "left"),
        Column("conns", tuple(str(status.conn_counts.get(isp.name, "-")) for isp in isps)),
        Column("loss", loss, justify="left"),
        Column("rtt", rtt, justify="left"),
        Column("new", tuple("-" if isp.new_connections is None else str(isp.new_connections) for isp in isps), 9),
        Column("rx", tuple(human_bytes(isp.bytes_rx) for isp in isps), 7),
        Column("tx", tuple(human_bytes(isp.bytes_tx) for isp in isps), 8),
        Column("probes/day", tuple(_probe_cost(isp) for isp in isps), 13, "left"),
        *([Column("quota", tuple(map(top.quota_text, isps)), 6, "left")] if any(i.quota for i in isps) else []),
    ]
    if rated:
        per = [rated.isps.get(isp.name) for isp in isps]
        columns += [
            Column("new/s", tuple("-" if r is None else human_count_rate(r.new_per_second) for r in per), 4),
            Column("rx/s", tuple("-" if r is None else human_rate(r.rx_bytes_per_second) for r in per), 2),
            Column("tx/s", tuple("-" if r is None else human_rate(r.tx_bytes_per_second) for r in per), 3),
        ]
    title = f"wanlb (pid {status.pid}, up {status.uptime_seconds}s)"
    isp_table, left_out = fit_table(columns, width, lambda: table(title), wrap_from=6)
    width = max(width, top.measure(isp_table).maximum)  # a width narrower than names: the lines keep them whole too
    out: list[RenderableType] = [isp_table]
    if left_out:  # a no-break space keeps each "column value" on one line
        out.append("details:")
        for i, isp in enumerate(isps):
            items = ", ".join(f"{c.header} {c.cells[i]}".replace(" ", "\xa0") for c in left_out)
            out += wrap(f"{isp.name}: {items}", width, indent=2)
    if rated:
        out.append(f"rates over the last {rated.interval_seconds:.1f} s")
    out.append("uplinks:")
    for isp in isps:
        out += wrap(uplink_line(isp), width, indent=2)
    if status.ha is not None:
        out.append("ha:")
        out += [row for line in top.ha_lines(status.ha) for row in wrap(line, width, indent=2)]
    drains = [line for isp in isps if (line := top.drain_line(isp, time.time()))]
    if drains:
        out.append("drains:")
        out += [row for line in drains for row in wrap(line, width, indent=2)]
    quotas = [line for isp in isps if (line := top.quota_line(isp, time.time()))]
    if quotas:
        out.append("quotas:")
        out += [row for line in quotas for row in wrap(line, width, indent=2)]
    for p in status.policies:
        if p.name == "default" and p.algorithm == "weighted":
            continue
        using = ", ".join(f"{isp}×{w}" for isp, w in p.active.items()) or "no usable member"
        when = f" ({schedule_text(p.schedule)}: {p.schedule.when})" if p.schedule is not None else ""
        out += wrap(f"policy {p.name}: {p.algorithm}{', sticky' if p.sticky else ''}: {using}{when}", width)
    if status.rules:
        rules = status.rules
        rule_columns = [
            Column("rule", tuple(r.name for r in rules), justify="left"),
            Column("target", tuple(r.target for r in rules), justify="left", cap=top.STATE_CAP),
            Column("hits", tuple("-" if r.hits is None else str(r.hits) for r in rules), justify="left"),
            *([Column("schedule", tuple("" if r.schedule is None else schedule_text(r.schedule) for r in rules),
                      justify="left")] if any(r.schedule is not None for r in rules) else []),
            *([Column("hits/s", tuple(human_count_rate(rated.rules.get(r.name)) for r in rules), justify="left")]
              if rated else []),
        ]  # fmt: skip
        out.append(fit_table(rule_columns, width, lambda: table("rules (first match wins)"))[0])
    for name, d in status.domains.items():
        out += wrap(f"domain {name}: {domain_line(d)}", width)
    events = status.events[-EVENTS_SHOWN:]
    if events:
        out.append("recent events:")
        for ev in events:
            out += wrap(top.event_line(ev), width, indent=2, hang=9)
    return out


@main.command()
@config_option
@click.option(
    "--peer", "peer_path", type=click.Path(dir_okay=False), default=None,
    help="An HA pair: the other node's config too; every ISP's mark, table and WAN VIP, and the VRRP instance, "
    "must be the same in both (docs/ha.md), the node names and sync addresses mirrored.",
)  # fmt: skip
def check(config_path: str, peer_path: str | None) -> None:
    """Validate a config file: exit 0 when valid, else 2 with FILE:LINE: field: message per error.

    With --peer, also compare it with the other node's: what a connection synced from one node means on the
    other must be the same (the running daemons compare the same over the sync link and show it in status).
    """
    from pathlib import Path

    from wanlb.runtime import state_dir_problem

    cfg = _load(config_path)
    if peer_path is not None:
        from wanlb.ha_peer import pair_problems

        if problems := pair_problems(cfg, _load(peer_path)):
            for problem in problems:
                click.echo(f"{config_path}: ha: {problem} (peer {peer_path})", err=True)
            sys.exit(EXIT_CONFIG)
    if problem := state_dir_problem(Path(cfg.control.socket).parent):
        fail(f"{config_path}: control.socket: {problem}: wanlb would refuse to start", EXIT_CONFIG)
    state, source = _allocation(cfg)
    isps = ", ".join(
        f"{i.name} (mark {state.isps[i.name].mark:#x}, table {state.isps[i.name].table})" for i in cfg.isps
    )
    errors, warnings = _verify(cfg)
    for error in errors:
        click.echo(f"{config_path}: {error}", err=True)
    if errors:
        sys.exit(EXIT_CONFIG)
    click.echo(f"{config_path}: ok — {len(cfg.isps)} ISP(s): {isps} [{source}]")
    for warning in warnings:
        click.echo(f"{config_path}: warning: {warning}", err=True)
    if cfg.rules or cfg.policies:
        from wanlb.render import rule_lookups

        maps, single = rule_lookups(cfg.rules)
        click.echo(
            f"  {len(cfg.rules)} rule(s) in {maps + single} lookup(s) per NEW connection "
            f"({maps} verdict map(s), {single} single rule(s)); {len(cfg.policies)} policy(ies); "
            f"balance {cfg.balance.algorithm}{', sticky' if cfg.balance.sticky else ''}"
        )


def _verify(cfg: Config) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """:func:`wanlb.verify.verify`, as the next reload (or first start) would run it, read-only: the kernel's
    word on the ruleset (``nft -c``, as root) and what this machine says about the uplinks — interfaces that do
    not exist (with a "did you mean"), uplinks not usable yet and why, a static gateway on the LAN."""
    import shutil

    from wanlb import runtime
    from wanlb.kernel import LinuxKernel
    from wanlb.verify import verify

    try:
        previous = runtime.load(cfg.state_path)
    except (runtime.StateError, PermissionError):
        previous = None
    kernel = LinuxKernel()
    try:
        as_root = os.geteuid() == 0 and shutil.which("nft") is not None
        verdict = verify(cfg, previous, kernel, reload=previous is not None, check_nft=as_root)
    except OSError as exc:  # no netlink here (a container without it): the config itself is fine
        return (), (f"cannot read the interfaces and routes to check them: {exc}",)
    finally:
        kernel.close()
    return verdict.errors, verdict.warnings


def _allocation(cfg: Config) -> tuple[Any, str]:
    """Marks and tables the config would run with: as a reload of the running wanlb would give them
    (its runtime state, when readable), else as a first start would."""
    from wanlb import runtime

    try:
        previous = runtime.load(cfg.state_path)
    except (runtime.StateError, PermissionError):
        previous = None
    try:
        state = runtime.allocate(cfg, previous, reload=previous is not None).state
    except runtime.AllocationRefused as exc:
        click.echo(f"{cfg.state_path}: a running wanlb would refuse this config: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    return state, "as allocated by the running wanlb" if previous else "allocated at first start"


@main.command()
@config_option
@click.option("--nft-only", is_flag=True, help="Print only the nft transaction (suitable for `nft -c -f -`).")
def render(config_path: str, nft_only: bool) -> None:
    """Print exactly what would be applied (nft transaction, ip rules, routes, sysctls); change nothing.

    Connected networks and the uplinks (interfaces, learned next hops) are read
    from the kernel (read-only): connected networks are never balanced and LAN
    ones never leave unNATed; every ISP whose uplink is whole is assumed up.  Marks and tables are
    the running wanlb's (its runtime state) if there is one.  The daemon
    changes only what differs from the kernel; this shows the table as a
    whole.
    """
    from wanlb.kernel import LinuxKernel
    from wanlb.nftsync import full_text
    from wanlb.reconcile import plan_from, read_snapshot
    from wanlb.render import render as do_render
    from wanlb.schedule import inactive

    cfg = _load(config_path)
    state, _ = _allocation(cfg)
    kernel = LinuxKernel()
    try:
        snapshot = read_snapshot(kernel, cfg, state.protocols)
    finally:
        kernel.close()
    rendered = do_render(plan_from(cfg, state, snapshot, inactive=inactive(cfg, time.time())))  # schedules: now
    click.echo(full_text(rendered.nft) if nft_only else rendered.describe(), nl=False)


TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has (a unit test keeps this equal to Python's); anything else on a record
# came from `extra=` and goes into the JSON. Spelled out so `import logging` stays out of other commands.
_RECORD_ATTRS = frozenset(
    {
        *("name", "msg", "args", "levelname", "levelno", "pathname", "filename", "module", "exc_info"),
        *("exc_text", "stack_info", "lineno", "funcName", "created", "msecs", "relativeCreated", "thread"),
        *("threadName", "processName", "process", "taskName", "message", "asctime"),
    }
)


class JsonLogFormatter:
    """One JSON object per line for log collectors: ``ts`` (ISO 8601, UTC, milliseconds), ``level``,
    ``logger``, ``message``, then every ``extra=`` field of the record (values JSON cannot encode are
    given as their ``str``), and ``exc``/``stack`` with the formatted traceback when there is one.
    Newlines in a message are escaped, so a record is always one line. A ``logging.Handler`` only calls
    ``format``, so this needs no ``logging.Formatter`` base (and ``logging`` is not imported for it)."""

    def format(self, record: Any) -> str:
        import traceback
        from datetime import UTC, datetime

        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, default=str, ensure_ascii=False)


def setup_run_logging(log_format: str, verbose: bool, stream: Any = None) -> None:
    """The daemon's logging: one line per record on ``stream`` (stderr; journald under systemd), as the
    plain text it always was (``text``) or as JSON objects (``json``)."""
    import logging

    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonLogFormatter() if log_format == "json" else logging.Formatter(TEXT_LOG_FORMAT))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


@main.command()
@config_option
@click.option("--cleanup-on-exit", is_flag=True, help="On SIGTERM/SIGINT remove everything wanlb added.")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    envvar="WANLB_LOG_FORMAT",
    show_default=True,
    help="text: plain lines; json: one JSON object per line (ts, level, logger, message, extra fields) for "
    "log collectors (env WANLB_LOG_FORMAT).",
)
def run(config_path: str, cleanup_on_exit: bool, verbose: bool, log_format: str) -> None:
    """Apply the config and keep the gateway converged (foreground; logs to stderr).

    SIGHUP re-reads the config (a bad one is logged, the running rules stay).
    SIGTERM/SIGINT exit leaving the datapath in place unless --cleanup-on-exit.
    """
    from wanlb.daemon import run as run_daemon
    from wanlb.reconcile import PreflightError

    setup_run_logging(log_format, verbose)
    _load(config_path)
    try:
        run_daemon(config_path, cleanup_on_exit)
    except PreflightError as exc:
        fail(str(exc))
    except Exception as exc:  # one sentence for the operator, not a traceback
        fail(str(exc))


@main.command()
@config_option
@socket_option
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON (fields: docs/operations.md).")
@click.option(
    "--rates",
    is_flag=True,
    help="Ask twice, a second apart, and add new connections, bytes and rule hits per second.",
)
@click.option("--wide", is_flag=True, help="Every column in the table, however wide (else: the terminal, COLUMNS, 80).")
def status(config_path: str, socket_path: str | None, as_json: bool, rates: bool, wide: bool) -> None:
    """Show each ISP's state, share of NEW connections, connections, loss and rtt, weight, mark, table,
    interface and traffic.

    Traffic is the totals of the ISP's nft counters (new connections, bytes in and out); --rates adds
    their rate over one second.  Then an HA node's role, its helpers and its peer (split brain, configs that
    differ: docs/ha.md), the data quotas (used, limit, cycle), the policies (algorithm and the ISPs in use),
    the rules with their hits (NEW packets matched), the resolved destination domains, and recent events.
    It fits the terminal (COLUMNS, or 80 on a pipe): the columns that do not fit are listed under the table.
    `wanlb top` shows the same live.
    """
    from rich.console import Console

    from wanlb.commands import GetStatus, message
    from wanlb.top import WIDE, Sample, rates_of
    from wanlb.view import Status, from_json

    sock = resolve_socket(socket_path, config_path)
    reply = ask_daemon(sock, message(GetStatus()))
    rated = None
    if rates:
        first = Sample.of(time.monotonic(), reply)
        time.sleep(max(0.0, first.at + 1.0 - time.monotonic()))
        reply = ask_daemon(sock, message(GetStatus()))
        rated = rates_of(first, Sample.of(time.monotonic(), reply))
    if as_json:
        click.echo(json.dumps({**reply, "rates": rated.json()} if rated else reply, indent=2))
        return
    terminal = os.get_terminal_size(sys.stdout.fileno()).columns if sys.stdout.isatty() else None
    width = status_width(wide, os.environ.get("COLUMNS"), terminal)
    console = Console(width=WIDE)  # the report is fitted to `width` already: rich must not squeeze it again
    for part in status_report(from_json(Status, reply), rated, width):
        console.print(part, markup=False)


@main.command()
@config_option
@socket_option
@click.option(
    "--from", "source", required=True, metavar="IP[:PORT]", help="The LAN client (with a port: its source port)."
)
@click.option(
    "--to",
    "destination",
    required=True,
    metavar="IP|NAME[:PORT]",
    help="The destination: an address ([IPv6]:PORT with a port) or a rule's destination domain, taken "
    "as the daemon resolved it (one answer per address).",
)
@click.option("--proto", default="tcp", show_default=True, metavar="tcp|udp|icmp|…", help="By name or number.")
@click.option("--iif", metavar="IFACE", help="The interface it arrives on (default: the first of lan.interfaces).")
@click.option("--dscp", default="cs0", show_default=True, metavar="NAME|0..63", help="Its DSCP (ef, af41, 46 …).")
@click.option("--mac", metavar="MAC", help="The client's MAC address (for rules with src_mac).")
@click.option("--json", "as_json", is_flag=True, help="Print the decisions as JSON (fields: docs/operations.md).")
def explain(
    config_path: str, socket_path: str | None, source: str, destination: str, proto: str, iif: str | None,
    dscp: str, mac: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Which ISP a NEW connection would take now, and why.

    The running daemon walks the flow through the ruleset the kernel holds, with the sticky and domain sets
    as they are now: the rule that matches (first match wins), the policy, its algorithm, tier and
    candidates, and the ISP — exact for hash, for a client a sticky set holds and for a policy with one ISP
    in use; weighted (a round-robin counter in the kernel) names the ISPs it picks among, with their weights.
    Also a bypass, a drop, the gateway itself, or the last resort when no ISP is usable.

    \b
    wanlb explain --from 192.168.1.10:5000 --to 1.2.3.4:443
    wanlb explain --from 192.168.1.10 --to video.example.com:443 --json
    """
    from wanlb.commands import BadRequest, explain_between, message

    try:
        request = message(explain_between(source, destination, proto, iif, dscp, mac))
    except BadRequest as exc:
        raise click.BadParameter(str(exc).removeprefix("bad request: ")) from None
    reply = ask_daemon(resolve_socket(socket_path, config_path), request)
    if as_json:
        click.echo(json.dumps(reply, indent=2))
        return
    for line in explain_report(reply):
        click.echo(line)


def explain_report(reply: dict[str, Any]) -> list[str]:
    """``explain``'s answer for a person: per destination address the flow, the verdict, the route, the steps."""
    from wanlb.flow_explain import Decision
    from wanlb.view import from_json

    decisions = [from_json(Decision, d) for d in reply["decisions"]]
    out = [f"{reply['name']}: {len(decisions)} address(es), as the daemon resolved it"] if reply.get("name") else []
    for d in decisions:
        f = d.flow
        src = f"[{f.src}]" if f.family == 6 and f.sport else f.src
        dst = f"[{f.dst}]" if f.family == 6 and f.dport else f.dst
        extra = "".join(f" ({what} {v})" for what, v in (("dscp", f.dscp), ("from MAC", f.src_mac)) if v)
        out.append(f"{f.proto} {src}{f':{f.sport}' if f.sport else ''} → {dst}{f':{f.dport}' if f.dport else ''} "
                   f"arriving on {f.iif}{extra}")  # fmt: skip
        out.append(f"  {d.summary}")
        out.append(f"  route: {d.route}")
        out += [f"    {step}" for step in d.steps]
    return out


@main.command()
@config_option
@socket_option
@click.option(
    "--interval",
    "-i",
    type=click.FloatRange(0.2, 60),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes.",
)
def top(config_path: str, socket_path: str | None, interval: float) -> None:
    """Live full-screen view: ISPs with rates and sparklines, rules, events; q or Ctrl-C quits.

    Per ISP: state, time in it, weight, share, connections, new connections, bytes in and out per
    second, probe loss and round-trip time, and a minute of connections and throughput as sparklines.
    Reads the daemon's control socket; when the daemon does not answer it says so and keeps asking.
    """
    if not (sys.stdout.isatty() and sys.stdin.isatty()):
        fail("top needs a terminal (for scripts: wanlb status --json [--rates])", EXIT_CONFIG)
    from wanlb.top import run_top

    sys.exit(run_top(resolve_socket(socket_path, config_path), interval))


@main.command()
@config_option
@socket_option
@click.option("--reason", default="", metavar="TEXT", help="Why (shown by status, top, the dashboard, events, hooks).")
@click.option("--for", "for_", metavar="DURATION", help="End the drain by itself after this long (e.g. 30m, 2h).")
@click.argument("isp")
def disable(config_path: str, socket_path: str | None, reason: str, for_: str | None, isp: str) -> None:
    """Drain ISP: no NEW connections go to it; its existing ones continue. Until `wanlb enable`, or for a
    while with --for (the drain then ends at the daemon's next 5 s resync and the ISP rejoins on its probes)."""
    from wanlb.commands import drain, message
    from wanlb.config import parse_duration

    try:
        seconds = None if for_ is None else parse_duration(for_)
        request = message(drain(isp, reason, seconds))
    except ValueError as exc:  # (BadRequest is one)
        raise click.BadParameter(str(exc).removeprefix("bad request: "), param_hint="--for/--reason") from None
    click.echo(ask_daemon(resolve_socket(socket_path, config_path), request)["message"])


@main.command()
@config_option
@socket_option
@click.argument("isp")
def enable(config_path: str, socket_path: str | None, isp: str) -> None:
    """Hand a disabled ISP back to its health probes (it rejoins after `up_after` good rounds)."""
    reply = ask_daemon(resolve_socket(socket_path, config_path), {"cmd": "enable", "isp": isp})
    click.echo(reply["message"])


@main.command()
@config_option
@socket_option
def reload(config_path: str, socket_path: str | None) -> None:
    """Ask the daemon to re-read its config (same as SIGHUP, but reports the result)."""
    reply = ask_daemon(resolve_socket(socket_path, config_path), {"cmd": "reload"})
    click.echo(reply.get("message", "reloaded"))


@main.command()
@click.option("--expect", type=click.IntRange(1, 100_000_000), help="Connections you expect at peak.")
@click.option("--apply", "do_apply", is_flag=True, help="Write the recommended values now (root).")
@click.option(
    "--persist",
    "persist",
    is_flag=False,
    flag_value="/etc/sysctl.d/90-wanlb.conf",
    default=None,
    metavar="[PATH]",
    help="Write them to a sysctl.d file (default /etc/sysctl.d/90-wanlb.conf) after showing the diff.",
)
@click.option(
    "--modules-load",
    "modules_load",
    default="/etc/modules-load.d/wanlb.conf",
    show_default=True,
    metavar="PATH",
    help="With --persist: where the line that loads nf_conntrack at boot goes (so the sysctls apply).",
)
@click.option("--yes", is_flag=True, help="Do not ask before --persist writes its files.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def tune(
    ctx: click.Context,
    expect: int | None,
    do_apply: bool,
    persist: str | None,
    modules_load: str,
    yes: bool,
    as_json: bool,
) -> None:
    """Report the conntrack table's size, usage and timeouts, and what a gateway should use.

    Read-only unless --apply or --persist. The recommendation starts from the
    values a multi-WAN gateway needs (max 262144 entries; TCP established
    7440 s and UDP stream 120 s, the least RFC 5382 and RFC 4787 allow a NAT),
    grows the table to twice --expect, and keeps it within 1/16 of RAM. Each
    value is explained. Inside a network namespace other than the host's,
    nf_conntrack_max and nf_conntrack_buckets are read-only (the table is
    shared): --apply says so and sets the rest. --persist also writes a
    modules-load.d line for nf_conntrack: without it the sysctl.d values are
    skipped at boot.
    """
    from wanlb import tune as t

    if ctx.get_parameter_source("modules_load") is not click.core.ParameterSource.DEFAULT and not persist:
        fail("--modules-load goes with --persist", EXIT_CONFIG)

    reading = t.read()
    rows, notes = t.recommend(reading, expect)
    count, limit = reading.values.get("nf_conntrack_count"), reading.values.get("nf_conntrack_max")
    usage = round(100 * count / limit, 1) if count is not None and limit else None
    if as_json and not (do_apply or persist):
        click.echo(
            json.dumps(
                {
                    "usage_percent": usage,
                    "entry_bytes": reading.entry_bytes,
                    "entry_bytes_source": reading.entry_bytes_source,
                    "ram_bytes": reading.ram_bytes,
                    "rows": [
                        {"key": r.key, "current": r.current, "recommended": r.recommended, "change": r.change,
                         "note": r.note}
                        for r in rows
                    ],
                    "notes": notes,
                },
                indent=2,
            )
        )  # fmt: skip
        return
    if not as_json:
        click.echo(f"conntrack table: {count:,} of {limit:,} entries ({usage}%)" if usage is not None else "")
        for r in rows:
            current = "?" if r.current is None else f"{r.current:,}"
            rec = "" if r.recommended is None else (f" → {r.recommended:,}" if r.change else " (ok)")
            click.echo(f"  net.netfilter.{r.key} = {current}{rec}\n      {r.note}")
        click.echo(t.memory_line(reading, rows))
        for note in notes:
            click.echo(f"note: {note}")
    if do_apply:
        if os.geteuid() != 0:
            fail("--apply needs root")
        done, skipped = t.apply(rows, reading)
        for line in done:
            click.echo(f"set {line}")
        for line in skipped:
            click.echo(f"not set: {line}")
    if persist:
        if _write_with_diff(persist, t.sysctl_file(rows), yes):
            click.echo(f"wrote {persist} (load it now with: sysctl -p {persist})")
        if _write_with_diff(modules_load, t.modules_load_file(persist), yes, why=t.MODULES_LOAD_WARNING):
            click.echo(f"wrote {modules_load} (systemd-modules-load reads it at boot)")


def _write_with_diff(path: str, new: str, yes: bool, why: str = "") -> bool:
    """Show how ``path`` would change (after ``why``), ask (unless ``yes``) and write it atomically; False if it
    already holds ``new``.  The diff is exactly what is written, so the user sees every byte before saying yes."""
    import difflib

    try:
        old = open(path).read()  # noqa: SIM115 - a small file read once
    except FileNotFoundError:
        old = ""
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{path}: {getattr(exc, 'strerror', None) or exc}")
    diff = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), path, path))
    if not diff:
        click.echo(f"{path} already holds these values")
        return False
    if why:
        click.echo(why)
    click.echo(diff, nl=False)
    if not yes and not click.confirm(f"write {path}?", default=False):
        fail(f"{path}: not written", EXIT_RUNTIME)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as fh:
            fh.write(new)
        os.replace(tmp, path)
    except OSError as exc:
        fail(f"{path}: {exc.strerror}")
    return True


@main.command(name="try")
@config_option
@socket_option
@click.option(
    "--timeout",
    "timeout",
    default="60s",
    show_default=True,
    help="Roll back unless confirmed within this long (1s..1h).",
)
@click.option("--confirm", is_flag=True, help="Keep the configuration being tried.")
def try_(config_path: str, socket_path: str | None, timeout: str, confirm: bool) -> None:
    """Apply a config through the running daemon and roll back automatically unless confirmed in time.

    For changes made through the gateway itself (SSH over one of its WANs): if the
    new config cuts you off, the daemon returns to the configuration it ran before
    when the timeout passes. The config is checked like `wanlb check`, and verified
    against the kernel, before anything changes. `wanlb try --confirm` keeps it
    (and makes it the file the daemon reloads from).
    """
    if confirm:
        reply = ask_daemon(resolve_socket(socket_path, config_path), {"cmd": "confirm"})
        click.echo(reply["message"])
        return
    from wanlb.config import parse_duration

    try:
        seconds = parse_duration(timeout)
    except ValueError as exc:
        fail(f"--timeout: {exc}", EXIT_CONFIG)
    _load(config_path)  # the same verify step as `wanlb check`, with its FILE:LINE errors
    message = {"cmd": "try", "config": os.path.abspath(config_path), "timeout": seconds}
    reply = ask_daemon(resolve_socket(socket_path, config_path), message)
    click.echo(reply["message"])


@main.command()
@config_option
@socket_option
@click.option("--cleanup", is_flag=True, help="Also remove the nft table, ip rules, routes and restore sysctls.")
def stop(config_path: str, socket_path: str | None, cleanup: bool) -> None:
    """Stop the daemon; with --cleanup remove everything wanlb added (works without a daemon too)."""
    from wanlb import runtime
    from wanlb.control import ControlError, request
    from wanlb.kernel import LinuxKernel
    from wanlb.reconcile import cleanup as do_cleanup

    sock = resolve_socket(socket_path, config_path)
    try:
        request(sock, {"cmd": "stop", "cleanup": cleanup})
        click.echo("daemon stopping" + (" and cleaning up" if cleanup else ""))
        if cleanup:
            _wait_gone(sock)
        return
    except ControlError:
        if not cleanup:
            fail(f"no wanlb daemon is running (nothing answers at {sock})", EXIT_NO_DAEMON)
    if os.geteuid() != 0:
        fail("cleanup needs root")
    cfg = _load(config_path)
    try:
        state = runtime.load(cfg.state_path)
    except runtime.StateError as exc:
        click.echo(f"wanlb: {exc}; cleaning up by the config alone", err=True)
        state = None
    kernel = LinuxKernel()
    try:
        for change in do_cleanup(kernel, cfg, state):
            click.echo(change)
    finally:
        kernel.close()
    runtime.remove(cfg.state_path)
    click.echo("cleanup done")


def _wait_gone(sock: str, timeout: float = 10.0) -> None:
    """Wait until the daemon has finished its cleanup and released the socket."""
    import time

    from wanlb.control import socket_in_use

    deadline = time.monotonic() + timeout
    while socket_in_use(sock) or os.path.exists(sock):
        if time.monotonic() > deadline:
            fail("the daemon did not finish stopping in time")
        time.sleep(0.05)


@main.command()
@click.option(
    "--name",
    default=None,
    help="Lab name (namespaces wlab-NAME-*; the HA act's lab is NAMEha); default: demo<pid><random>. A demo "
    "killed before it could clean up is removed by `wanlb lab down --name NAME` or `wanlb lab down --all`.",
)
@click.option(
    "--ha/--no-ha",
    default=True,
    show_default=True,
    help="End with the HA act: a second lab with an HA pair (keepalived, conntrackd), its primary killed under "
    "long-lived streams and brought back; --no-ha skips it (about half the run time).",
)
def demo(name: str | None, ha: bool) -> None:
    """Build the netns lab, run the gateway in it, show live per-ISP shares, then an HA pair losing its primary
    and getting it back; tear everything down (about a minute, 35 s with --no-ha)."""
    from rich.console import Console

    from wanlb.control import ControlError
    from wanlb.demo import run_demo
    from wanlb.lab.lab import LabError

    if os.geteuid() != 0:
        fail("the demo builds network namespaces and needs root")
    try:
        sys.exit(run_demo(Console(), name, ha=ha))
    except (LabError, RuntimeError, ControlError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted; the lab was torn down", 130)


if __name__ == "__main__":
    main()
