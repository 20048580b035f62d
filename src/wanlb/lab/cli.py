"""`wanlb lab ...`: the command-line face of the network-namespace lab (registered by wanlb.cli)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from wanlb.lab.lab import Lab, LabError, down_all, remove_lab, require_root
from wanlb.lab.topology import COUNTERS, LAN_GW, UPLINK_MODES, UPLINK_PRESETS, TopologyError

name_option = click.option(
    "--name",
    envvar="WANLB_LAB",
    default="lab",
    show_default=True,
    help="Lab name; namespaces are wlab-NAME-NODE (env WANLB_LAB).",
)


@contextlib.contextmanager
def _friendly_errors() -> Iterator[None]:
    """Show lab errors as one `Error: ...` line instead of a traceback, and check root first."""
    try:
        require_root()
        yield
    except (LabError, TopologyError) as exc:
        raise click.ClickException(str(exc)) from None


def _weights(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(w) for w in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: use comma-separated integers, e.g. 3,1") from None


def _uplinks(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if value in UPLINK_PRESETS:
        return UPLINK_PRESETS[value]
    modes = tuple(m.strip() for m in value.split(","))
    bad = [m for m in modes if m not in UPLINK_MODES]
    if bad:
        raise click.BadParameter(
            f"{', '.join(bad)}: use {', '.join(UPLINK_MODES)} per ISP (e.g. static,dhcp,p2p) or a preset: "
            + ", ".join(f"{k} = {','.join(v)}" for k, v in UPLINK_PRESETS.items())
        )
    return modes


def api_section(port: int, token_file: Path, address: str = LAN_GW) -> str:
    """The config's ``api`` section for ``lab up --api``.  On the gateway's own LAN address (``address``:
    ``Topology.lan_address``), where a browser on a LAN finds its gateway (the lab's clients reach it, the host
    cannot: the lab never touches the host's network); reads need the token too, as the docs advise for a real
    gateway."""
    return f"api:\n  listen: [{address}:{port}]\n  token_file: {token_file}\n"


def _enable_api(built: Lab, port: int) -> tuple[dict[str, str], Path]:
    """Write a fresh token (mode 0600, as the daemon demands) and an api section into each gateway's config;
    each gateway's URL, and the token file.  An HA pair's two share the token (one to paste, whichever node
    the browser opens) and the port: each listens on its own LAN address in its own namespace, and a backup
    must answer too (the LAN VIP, only the master's, would leave it unreachable)."""
    token = built.dir / "api.token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(24) + "\n")
    urls: dict[str, str] = {}
    for gw in built.topology.gateways:
        address = built.topology.lan_address(gw)
        with built.gateway_config(gw).open("a") as fh:
            fh.write(api_section(port, token, address))
        urls[gw] = f"http://{address}:{port}/"
    return urls, token


def _echo_api(built: Lab, urls: dict[str, str], token: Path) -> None:
    """`lab up --api`'s lines: where the dashboard is, and a request and a browser that reach it from c1."""
    client = f"wanlb lab exec --name {built.name} c1 --"
    bearer = f'-H "Authorization: Bearer $(cat {token})"'
    if not built.topology.ha:
        url = urls["gw"]
        click.echo(f"  dashboard and API: {url} inside the lab (the daemon listens in {built.ns('gw')}),")
        click.echo(f"                     so from a client's namespace; the token is in {token}")
        click.echo(f"  API from a client: {client} curl -s {bearer} {url}api/v1/status")
        click.echo(f"  a browser there:   {client} chromium --no-sandbox {url}  (as root; paste the token)")
        return
    where = ", ".join(f"{url} ({gw})" for gw, url in urls.items())
    click.echo(f"  dashboard and API: {where} inside the lab,")
    click.echo(f"                     each gateway's own LAN address; the token (both) is in {token}")
    for gw, url in urls.items():
        click.echo(f"  API of {gw}:        {client} curl -s {bearer} {url}api/v1/status")
    click.echo(f"  a browser there:   {client} chromium --no-sandbox {urls['gw1']}  (as root; paste the token)")


def _echo_ha(built: Lab) -> None:
    """`lab up --ha`'s summary: both gateways, and what the lab leaves to keepalived."""
    for gw in built.topology.gateways:
        facts, config = built.topology.ha_node(gw), built.gateway_config(gw)
        click.echo(f"  gateway {gw}:       {built.ns(gw)}, LAN {facts.lan_address}, sync {facts.sync_address}")
        click.echo(f"    start it:        wanlb lab exec --name {built.name} {gw} -- wanlb run -c {config} &")
    click.echo(f"  not configured:    the VIPs {LAN_GW} (LAN) and 100.64.i.10 (WAN i): keepalived's, or by hand")
    click.echo(f"  a gateway dies:    wanlb lab kill --name {built.name} gw1   (back: wanlb lab revive ...)")


@click.group(name="lab")
def lab() -> None:
    """Network-namespace lab: clients, the gateway, ISP routers and an "internet" on this machine."""


@lab.command()
@name_option
@click.option("--isps", default=3, show_default=True, help="Number of ISPs (WANs).")
@click.option("--clients", default=2, show_default=True, help="Number of LAN clients.")
@click.option("--weights", callback=_weights, help="ISP weights for the generated config, e.g. 3,1.")
@click.option("--plain-nat", is_flag=True, help="Add a plain masquerade on the WANs (to try the lab without wanlb).")
@click.option(
    "--ha",
    is_flag=True,
    help="Two gateways gw1 and gw2 as an HA pair: shared LAN and WAN segments, a sync link, a config each; the "
    "VIPs are left to keepalived (IPv4 and static uplinks only; --plain-nat SNATs to the WAN VIPs).",
)
@click.option(
    "--ipv6/--ipv4-only",
    default=True,
    show_default=True,
    help="Dual-stack: ULA fd00:77::/64 on the LAN, ISP i's prefix 2001:db8:i00::/64 netmapped to it, "
    "IPv6 on every link, anti-spoofing for both families (--ipv4-only: IPv6 off everywhere).",
)
@click.option(
    "--uplinks",
    callback=_uplinks,
    help="Each ISP's uplink, comma-separated: static (fixed address and gateway), dhcp (a DHCP server in the "
    "ISP, dhcpcd in the gateway, gateway: auto), p2p (a PPP session's effect: peer address, default dev, "
    "re-created on reconnect), modem (an LTE modem that NATs: 192.168.8.100 via 192.168.8.1 on every one); "
    "or a preset: mixed (static,dhcp,p2p), twins (modem,modem), dynamic (dhcp,dhcp,p2p). Sets --isps.",
)
@click.option(
    "--api",
    is_flag=True,
    help="Give the gateway's config an api section: the HTTP API and dashboard on the LAN address "
    f"{LAN_GW} (reached from the clients' namespaces), with a new token in the lab's directory; with --ha, "
    "each gateway's config, on its own LAN address (192.168.77.2, .3), the same token and port.",
)
@click.option("--api-port", type=click.IntRange(1, 65535), default=9180, show_default=True, help="The port for --api.")
@click.pass_context
def up(
    ctx: click.Context,
    name: str,
    isps: int,
    clients: int,
    weights: list[int] | None,
    plain_nat: bool,
    ipv6: bool,
    uplinks: tuple[str, ...],
    ha: bool,
    api: bool,
    api_port: int,
) -> None:
    """Build the lab and start its test servers."""
    if not api and ctx.get_parameter_source("api_port") is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--api-port goes with --api")
    if ha and ctx.get_parameter_source("ipv6") is click.core.ParameterSource.DEFAULT:
        ipv6 = False  # an HA lab is IPv4-only for now (an explicit --ipv6 is refused with the reason)
    with _friendly_errors():
        start = time.monotonic()
        isps = len(uplinks) if uplinks else isps
        built = Lab.up(
            name, isps=isps, clients=clients, weights=weights, plain_nat=plain_nat, ipv6=ipv6, uplinks=uplinks, ha=ha
        )
        modes = f" ({', '.join(built.topology.uplinks)})" if uplinks else ""
        click.echo(f"lab {name!r} is up in {time.monotonic() - start:.1f} s: {isps} ISPs{modes}, {clients} clients")
        if ha:
            _echo_ha(built)
        else:
            click.echo(f"  gateway namespace: {built.ns('gw')}")
            click.echo(f"  wanlb config:      {built.config_path}")
            click.echo(f"  start the gateway: wanlb lab exec --name {name} gw -- wanlb run -c {built.config_path} &")
        click.echo(f"  then try:          wanlb lab traffic --name {name} --connections 200")
        if api:
            _echo_api(built, *_enable_api(built, api_port))
        if not plain_nat:
            click.echo("  (until wanlb runs, nothing NATs LAN traffic and the ISPs drop it as a LAN leak)")
        click.echo(f"  remove with:       wanlb lab down --name {name}")


@lab.command()
@name_option
@click.option(
    "--all",
    "all_",
    is_flag=True,
    help="Remove every lab wanlb built on this machine (recorded under /run/wanlb/lab), crashed ones too; "
    "other wlab-* namespaces are left alone.",
)
def down(name: str, all_: bool) -> None:
    """Stop the lab's processes and remove its namespaces and state."""
    with _friendly_errors():
        removed = down_all() if all_ else remove_lab(name)
        what = "all labs" if all_ else f"lab {name!r}"
        click.echo(f"removed {what}: {len(removed)} namespaces" if removed else f"{what}: nothing to remove")


@lab.command()
@name_option
@click.argument("isp")
@click.option(
    "--mode", default="link", show_default=True, help="link | blackhole | loss:PERCENT (replaces any earlier mode)."
)
@click.option(
    "--family",
    type=click.Choice(["4", "6"]),
    help="Only this address family (blackhole and loss, in a dual-stack lab); default: both.",
)
def fail(name: str, isp: str, mode: str, family: str | None) -> None:
    """Break an ISP (isp2 or 2) inside its router namespace."""
    with _friendly_errors():
        the_lab = Lab.load(name)
        the_lab.fail(isp, mode, int(family) if family else None)
        click.echo(f"{isp}: {the_lab.fail_modes()[f'isp{the_lab.topology.isp_index(isp)}']}")


@lab.command()
@name_option
@click.argument("isp")
def heal(name: str, isp: str) -> None:
    """Undo any fail mode on an ISP."""
    with _friendly_errors():
        Lab.load(name).heal(isp)
        click.echo(f"{isp}: ok")


@lab.command()
@name_option
@click.argument("isp")
def lease(name: str, isp: str) -> None:
    """Renumber a dhcp ISP: its DHCP server hands out another subnet and router (100.64.i.0/24 <-> 100.80.i.0/24)
    and the gateway's client rebinds now."""
    with _friendly_errors():
        click.echo(f"{isp}: new lease {Lab.load(name).lease_change(isp)}")


@lab.command()
@name_option
@click.argument("isp")
def reconnect(name: str, isp: str) -> None:
    """End a p2p ISP's session and start a new one: the interface deleted and created again, another address."""
    with _friendly_errors():
        click.echo(f"{isp}: new session, address {Lab.load(name).reconnect(isp)}")


@lab.command()
@name_option
@click.argument("isp")
def unplug(name: str, isp: str) -> None:
    """Delete the gateway's WAN interface of an ISP (a USB modem pulled out)."""
    with _friendly_errors():
        Lab.load(name).unplug(isp)
        click.echo(f"{isp}: unplugged")


@lab.command()
@name_option
@click.argument("isp")
def replug(name: str, isp: str) -> None:
    """Create an unplugged WAN interface again under its name (a new index; DHCP leases it afresh)."""
    with _friendly_errors():
        Lab.load(name).replug(isp)
        click.echo(f"{isp}: plugged in")


@lab.command()
@name_option
@click.argument("gateway")
def kill(name: str, gateway: str) -> None:
    """An HA lab's gateway (gw1, gw2) dies: its links set down, every process in it SIGKILLed."""
    with _friendly_errors():
        Lab.load(name).kill(gateway)
        click.echo(f"{gateway}: killed (links down, processes gone; `wanlb lab revive --name {name} {gateway}`)")


@lab.command()
@name_option
@click.argument("gateway")
def revive(name: str, gateway: str) -> None:
    """A killed gateway comes back: links up, addresses and routes as built (no VIP); no process restarted."""
    with _friendly_errors():
        Lab.load(name).revive(gateway)
        click.echo(f"{gateway}: revived (links up, addresses and routes as built; start its daemon again)")


@lab.command(name="exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@name_option
@click.argument("node")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(name: str, node: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside NODE's namespace (gw, c1.., isp1.., inet), e.g. `wanlb lab exec gw -- ip route`."""
    with _friendly_errors():
        ns = Lab.load(name).ns(node)
    if command[0] == "--":  # click keeps the separator when options precede NODE
        command = command[1:]
    if not command:
        raise click.UsageError("no command given")
    os.execvp("ip", ["ip", "netns", "exec", ns, *command])


@lab.command()
@name_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(name: str, as_json: bool) -> None:
    """Show nodes, links, fail modes and running processes."""
    with _friendly_errors():
        info = Lab.load(name).status()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"lab {info['name']!r}   config {info['config']}")
    click.echo("nodes:")
    for node in info["nodes"]:
        where = node["namespace"] if node["exists"] else f"{node['namespace']} (MISSING)"
        where += " (KILLED)" if node["killed"] else ""
        click.echo(f"  {node['node']:<6} {where:<28} {' '.join(node['addresses'])}")
    click.echo("links:")
    for link in info["links"]:
        click.echo(f"  {link['a']:<11} {link['a_state']:<11} <-> {link['b']:<11} {link['b_state']}")
    click.echo("isps:")
    for isp in info["isps"]:
        counters = " ".join(f"{name}={isp[name]}" for name in COUNTERS)
        click.echo(f"  {isp['name']:<6} {isp['mode']:<10} {counters}")
    click.echo("processes:")
    for proc in info["processes"]:
        state = "running" if proc["running"] else "exited"
        click.echo(f"  {proc['label']:<14} {proc['node']:<6} pid {proc['pid']:<8} {state}")


@lab.command()
@name_option
@click.option("--connections", default=100, show_default=True, help="Short connections to open in total.")
@click.option("--parallel", default=32, show_default=True, help="Connections in flight at once, in total.")
@click.option("--timeout", default=2.0, show_default=True, help="Seconds per connection before it counts as failed.")
@click.option("--from", "nodes", multiple=True, help="Node to connect from (repeatable; default: all clients).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def traffic(name: str, connections: int, parallel: int, timeout: float, nodes: tuple[str, ...], as_json: bool) -> None:
    """Open short HTTP connections and count which ISP each left through, as the server saw it."""
    with _friendly_errors():
        the_lab = Lab.load(name)
        for node in nodes:
            the_lab.ns(node)  # unknown node: error before starting anything
        report = the_lab.traffic_report(connections, parallel, timeout, list(nodes) or None)
    if as_json:
        out: dict[str, Any] = {"counts": report.counts, "errors": report.errors, "elapsed": report.elapsed}
        click.echo(json.dumps(out))
        return
    click.echo(f"{report.total} connections in {report.elapsed:.2f} s")
    for key, count in report.counts.items():
        if count or key not in ("other", "failed"):
            click.echo(f"  {key:<7} {count:>7}  {100 * count / report.total:5.1f} %")
    for kind, count in report.errors.items():
        click.echo(f"  failed: {count} x {kind}")
