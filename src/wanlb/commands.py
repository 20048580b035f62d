"""The one command surface: what a client may ask the daemon, parsed and validated once.

The control socket (``wanlb status``, ``disable``, ``try`` …) and the HTTP API both turn what arrives
into one of these typed requests (:func:`parse` for the socket's JSON lines, the API's routes build them
directly) and hand it to the daemon's :meth:`Port.submit`; the daemon answers with a JSON object
(``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``).  :func:`message` is the client side: the
JSON line a request is sent as.

:class:`Port` is all the API knows of the daemon: a snapshot of the read model, the submit door, the
recent events, the counters, the ISPs' marks and the kept history — no daemon internals, so nothing here or in the API
imports the daemon.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from wanlb import trends, view


@dataclass(frozen=True)
class GetStatus:
    """The read model (``view.Status``), with the nft counters read for it."""


@dataclass(frozen=True)
class GetConnCounts:
    """The live conntrack counts per mark and per ISP (``wanlb conntrack count`` asks for them)."""


@dataclass(frozen=True)
class Reload:
    """Re-read the config file; refused (and nothing changes) if it is invalid or would move connections."""


@dataclass(frozen=True)
class Try:
    """Apply ``config`` now, roll back after ``timeout`` seconds unless confirmed."""

    config: str
    timeout: float = 60.0


@dataclass(frozen=True)
class Confirm:
    """Keep the config a pending ``Try`` applied."""


@dataclass(frozen=True)
class Enable:
    isp: str


@dataclass(frozen=True)
class Disable:
    """Drain ``isp``; ``reason`` is shown with it (status, events, hooks), and after ``seconds`` (if given) the
    drain ends by itself."""

    isp: str
    reason: str = ""
    seconds: float | None = None


@dataclass(frozen=True)
class Flush:
    """Delete one ISP's conntrack entries (``wanlb conntrack delete --isp``)."""

    isp: str


@dataclass(frozen=True)
class Stop:
    cleanup: bool = False


Command = GetStatus | GetConnCounts | Reload | Try | Confirm | Enable | Disable | Flush | Stop
NAMES: dict[str, type] = {
    "status": GetStatus,
    "conn_counts": GetConnCounts,
    "reload": Reload,
    "try": Try,
    "confirm": Confirm,
    "enable": Enable,
    "disable": Disable,
    "flush": Flush,
    "stop": Stop,
}
_CMD = {cls: name for name, cls in NAMES.items()}
MAX_TRY_SECONDS = 3600
MAX_DRAIN_SECONDS = 7 * 86400
MAX_REASON = 200


class BadRequest(ValueError):
    """A request that names no command or carries a bad field; the message is the answer's ``error``."""


def parse(message: Mapping[str, Any]) -> Command:
    """One request line's object as a command, or :class:`BadRequest` saying what is wrong with it."""
    cmd = message.get("cmd")
    cls = NAMES.get(cmd) if isinstance(cmd, str) else None
    if cls is None:
        raise BadRequest(f"unknown command {cmd!r}")
    if cls is Disable:
        return drain(str(message.get("isp")), message.get("reason", ""), message.get("seconds"))
    if cls in (Enable, Flush):
        return cls(str(message.get("isp")))
    if cls is Try:
        timeout = message.get("timeout", 60)
        if type(timeout) not in (int, float) or not 1 <= timeout <= MAX_TRY_SECONDS:
            raise BadRequest(f"bad request: timeout must be a number of seconds in 1..{MAX_TRY_SECONDS}")
        path = message.get("config")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise BadRequest("bad request: config must be an absolute path")
        return Try(path, float(timeout))
    if cls is Stop:
        cleanup = message.get("cleanup", False)
        if not isinstance(cleanup, bool):
            raise BadRequest("bad request: cleanup must be true or false")
        return Stop(cleanup)
    return cls()


def drain(isp: str, reason: Any = "", seconds: Any = None) -> Disable:
    """A checked :class:`Disable` (the socket's and the API's): a reason is one line of printable text of at most
    :data:`MAX_REASON` characters (it reaches logs, hooks' environment and the dashboard); a timer is 1 s..7 days."""
    if not isinstance(reason, str) or len(reason) > MAX_REASON or not reason.isprintable():
        raise BadRequest(f"bad request: reason must be one line of printable text, at most {MAX_REASON} characters")
    if seconds is not None and (type(seconds) not in (int, float) or not 1 <= seconds <= MAX_DRAIN_SECONDS):
        raise BadRequest(f"bad request: seconds must be a number in 1..{MAX_DRAIN_SECONDS} (7 days)")
    return Disable(isp, reason.strip(), None if seconds is None else float(seconds))


def message(command: Command) -> dict[str, Any]:
    """The JSON object a client sends for ``command``."""
    out: dict[str, Any] = {"cmd": _CMD[type(command)]}
    out.update(vars(command))
    return out


class Port(Protocol):
    """What the API needs of the daemon (the daemon implements it)."""

    async def submit(self, command: Command) -> dict[str, Any]:
        """Carry out one command; ``{"ok": ...}`` and its fields."""

    async def read_counters(self) -> dict[str, dict[str, int]]:
        """Our table's named nft counters (bounded in time; ``{}`` if nft does not answer)."""

    def snapshot(self, counters: Mapping[str, Mapping[str, int]]) -> view.Status:
        """The read model, with ``counters`` for the rules' hits and the ISPs' traffic."""

    def recent_events(self) -> Sequence[view.Event]:
        """The event history, oldest first."""

    def metrics_text(self, status: view.Status, counters: Mapping[str, Mapping[str, int]]) -> bytes:
        """The Prometheus exposition for one scrape."""

    def isp_marks(self) -> tuple[dict[str, int], int]:
        """Each ISP's conntrack mark, and the mark mask."""

    async def history(self, since: float) -> trends.History:
        """The kept 10 s samples (the dashboard's charts) newer than ``since`` (wall time)."""
