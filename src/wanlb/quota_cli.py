"""``wanlb quota``: the data quotas (``isps[].quota``) as the running daemon counts them, and their reset."""

from __future__ import annotations

import json
import time

import click

from wanlb.cli import ask_daemon, config_option, fail, resolve_socket, socket_option


@click.group()
def quota() -> None:
    """Data quotas per ISP: what each counted this cycle, and a manual reset."""


@quota.command()
@config_option
@socket_option
@click.option("--json", "as_json", is_flag=True, help="Print ISP → its quota as JSON (fields: docs/operations.md).")
@click.argument("isp", required=False)
def show(config_path: str, socket_path: str | None, as_json: bool, isp: str | None) -> None:
    """Each ISP's quota (or ISP's): used and limit, the cycle and when it ends, what happens at the limit.

    Counted from the kernel on the ISP's WAN, both directions, its health probes included; read every 5 s.
    """
    from wanlb.commands import GetStatus, message
    from wanlb.top import quota_line
    from wanlb.view import Status, from_json, to_json

    status = from_json(Status, ask_daemon(resolve_socket(socket_path, config_path), message(GetStatus())))
    isps = [i for i in status.isps if isp is None or i.name == isp]
    if isp is not None and not isps:
        fail(f"no ISP named {isp!r}")
    if as_json:
        click.echo(json.dumps({i.name: to_json(i.quota) for i in isps}, indent=2))
        return
    lines = [line for i in isps if (line := quota_line(i, time.time()))]
    click.echo("\n".join(lines) if lines else "no quota (isps[].quota) on " + (isp or "any ISP"))


@quota.command()
@config_option
@socket_option
@click.argument("isp")
def reset(config_path: str, socket_path: str | None, isp: str) -> None:
    """Start ISP's count again from zero (a topped-up or re-billed line): back in balancing if the limit held it
    out. An `every` cycle starts again now too; a monthly one stays on its calendar."""
    from wanlb.commands import QuotaReset, message

    click.echo(ask_daemon(resolve_socket(socket_path, config_path), message(QuotaReset(isp)))["message"])
