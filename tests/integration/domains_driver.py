"""The resolver side of tests/integration/test_domains_dns.py, run inside the test's network namespace.

``domains_driver.py resolve '{"name": ..., "settings": {...}}'`` prints one JSON line: the addresses and TTL,
or the error.  ``domains_driver.py watch '{"names": [...], "settings": {...}}'`` runs a DomainWatcher and
prints a JSON line for every hand-on (``{"change": {address: timeout}}``) and every status change
(``{"status": {...}}``) until killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from ipaddress import IPv4Address
from typing import Any

from wanlb.domains import DomainWatcher, ResolveError, ResolverSettings, resolve


def settings(raw: dict[str, Any]) -> ResolverSettings:
    return ResolverSettings(**{**raw, "servers": tuple(IPv4Address(s) for s in raw.get("servers", ()))})


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


async def resolve_one(args: dict[str, Any]) -> None:
    try:
        addresses, ttl = await resolve(args["name"], settings(args["settings"]))
    except ResolveError as exc:
        emit({"error": str(exc)})
    else:
        emit({"addresses": [str(a) for a in addresses], "ttl": ttl})


async def watch(args: dict[str, Any]) -> None:
    watcher = DomainWatcher(
        args["names"],
        settings(args["settings"]),
        lambda elements: emit({"change": {str(a): t for a, t in elements.items()}}),
    )
    task = asyncio.create_task(watcher.run())
    shown = None
    while not task.done():
        status = {
            name: {k: v for k, v in entry.items() if k in ("state", "addresses", "ttl", "error")}
            for name, entry in watcher.status().items()
        }
        if status != shown:
            emit({"status": status})
            shown = status
        await asyncio.sleep(0.05)
    await task  # raises what stopped it


if __name__ == "__main__":
    mode, payload = sys.argv[1], json.loads(sys.argv[2])
    asyncio.run({"resolve": resolve_one, "watch": watch}[mode](payload))
