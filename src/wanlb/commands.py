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

import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from wanlb import trends, view
from wanlb.protocols import NAMES as PROTOCOL_NAMES
from wanlb.protocols import NUMBERS as PROTOCOL_NUMBERS
from wanlb.protocols import PORT_PROTOS


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
class QuotaReset:
    """Start an ISP's data quota count again (``wanlb quota reset``): a topped-up or re-billed line."""

    isp: str


@dataclass(frozen=True)
class Stop:
    cleanup: bool = False


@dataclass(frozen=True)
class Explain:
    """Which ISP a NEW connection would take now, and why (:mod:`wanlb.flow_explain`): from ``src`` to ``dst``
    (an address, or a rule's destination domain: the addresses the daemon resolved for it), arriving on
    ``iif`` (None: the first LAN interface).  Build it with :func:`explain`, which checks every field."""

    src: str
    dst: str
    proto: int = 6
    sport: int | None = None
    dport: int | None = None
    iif: str | None = None
    dscp: int = 0
    src_mac: str | None = None  # lowercase with colons; None: not given (a rule on MAC addresses cannot decide)


Command = GetStatus | GetConnCounts | Reload | Try | Confirm | Enable | Disable | Flush | QuotaReset | Stop | Explain
NAMES: dict[str, type] = {
    "status": GetStatus,
    "conn_counts": GetConnCounts,
    "reload": Reload,
    "try": Try,
    "confirm": Confirm,
    "enable": Enable,
    "disable": Disable,
    "flush": Flush,
    "quota_reset": QuotaReset,
    "stop": Stop,
    "explain": Explain,
}
_CMD = {cls: name for name, cls in NAMES.items()}
MAX_TRY_SECONDS = 3600
MAX_DRAIN_SECONDS = 7 * 86400
MAX_REASON = 200
MAX_ENDPOINT = 300  # characters of an explain endpoint (a name is at most 253, a port 5, brackets and a colon)
_DOMAIN = re.compile(r"(?=.{1,253}\.?$)[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})+\.?")
_IFNAME = re.compile(r"[A-Za-z0-9_.@:+-]{1,15}")
_MAC = re.compile(r"[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(?:\1[0-9a-fA-F]{2}){4}")


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
    if cls in (Enable, Flush, QuotaReset):
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
    if cls is Explain:
        if "src" not in message or "dst" not in message:
            raise BadRequest("bad request: explain needs src and dst")
        fields = ("src", "dst", "proto", "sport", "dport", "iif", "dscp", "src_mac")
        return explain(**{k: message[k] for k in fields if k in message})
    return cls()


def drain(isp: str, reason: Any = "", seconds: Any = None) -> Disable:
    """A checked :class:`Disable` (the socket's and the API's): a reason is one line of printable text of at most
    :data:`MAX_REASON` characters (it reaches logs, hooks' environment and the dashboard); a timer is 1 s..7 days."""
    if not isinstance(reason, str) or len(reason) > MAX_REASON or not reason.isprintable():
        raise BadRequest(f"bad request: reason must be one line of printable text, at most {MAX_REASON} characters")
    if seconds is not None and (type(seconds) not in (int, float) or not 1 <= seconds <= MAX_DRAIN_SECONDS):
        raise BadRequest(f"bad request: seconds must be a number in 1..{MAX_DRAIN_SECONDS} (7 days)")
    return Disable(isp, reason.strip(), None if seconds is None else float(seconds))


def explain(
    src: Any,
    dst: Any,
    proto: Any = 6,
    sport: Any = None,
    dport: Any = None,
    iif: Any = None,
    dscp: Any = 0,
    src_mac: Any = None,
) -> Explain:
    """A checked :class:`Explain` (the socket's, the API's and the CLI's): ``src`` an IP address, ``dst`` one of
    the same family or a domain name, ``proto`` a name (``tcp``, ``udp``, ``icmp`` …) or number, ports 1..65535
    (only for a protocol that has them), ``iif`` an interface name, ``dscp`` a name (``ef``, ``af41``) or 0..63,
    ``src_mac`` six pairs of hex digits."""
    source = _address(src, "from")
    destination = dst if _name(dst) else None
    if destination is None:
        target = _address(dst, "to", " or a domain name")
        if target.version != source.version:
            raise BadRequest(f"bad request: {source} and {target} are of different address families")
        destination = str(target)
    number = _protocol(proto)
    ports = [_port(sport, "the source port"), _port(dport, "the destination port")]
    if number not in PORT_PROTOS and any(p is not None for p in ports):
        raise BadRequest(f"bad request: {PROTOCOL_NAMES.get(number, number)} has no ports")
    if iif is not None and (not isinstance(iif, str) or not _IFNAME.fullmatch(iif)):
        raise BadRequest(f"bad request: iif must be an interface name, got {_shown(iif)}")
    if src_mac is not None and (not isinstance(src_mac, str) or not _MAC.fullmatch(src_mac)):
        raise BadRequest(f"bad request: the MAC address must be six pairs of hex digits, got {_shown(src_mac)}")
    mac = src_mac.lower().replace("-", ":") if src_mac is not None else None
    return Explain(str(source), destination.lower(), number, *ports, iif, _dscp(dscp), mac)


def explain_between(
    source: Any, destination: Any, proto: Any = "tcp", iif: Any = None, dscp: Any = 0, src_mac: Any = None
) -> Explain:
    """:func:`explain` from endpoints as ``wanlb explain --from/--to`` and the API's ``from``/``to`` write them."""
    src, sport = endpoint(source, "from")
    dst, dport = endpoint(destination, "to", names=True)
    return explain(src, dst, proto, sport, dport, iif, dscp, src_mac)


def endpoint(text: Any, what: str, names: bool = False) -> tuple[str, int | None]:
    """``ADDRESS``, ``ADDRESS:PORT`` or ``[IPv6]:PORT`` (with ``names``, ``NAME[:PORT]`` too) → (host, port): how
    ``explain --from/--to`` and the API's ``from``/``to`` are written (``what``: which, for the errors).  A bare
    IPv6 address has no port."""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_ENDPOINT or not text.isprintable():
        raise BadRequest(f"bad request: {what} is ADDRESS[:PORT], one line of at most {MAX_ENDPOINT} characters")
    host, port = text, None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise BadRequest(f"bad request: {_shown(text)}: write an IPv6 address with a port as [ADDRESS]:PORT")
        port = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    if names and _name(host):
        return host, _port_text(port)
    return str(_address(host, what, " or a domain name" if names else "")), _port_text(port)


def _port_text(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or len(text) > 5:
        raise BadRequest(f"bad request: port {_shown(text)} is not a number in 1..65535")
    return _port(int(text), "a port")


def _address(value: Any, what: str, alternative: str = "") -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        if isinstance(value, str) and len(value) <= MAX_ENDPOINT:
            return ipaddress.ip_address(value)
    except ValueError:
        pass
    raise BadRequest(f"bad request: {what} must be an IPv4 or IPv6 address{alternative}, got {_shown(value)}")


def _name(text: Any) -> bool:
    """A domain name: its pattern, and not only digits and dots (an IPv4 address, or one with a typo)."""
    return isinstance(text, str) and bool(_DOMAIN.fullmatch(text)) and not text.replace(".", "").isdigit()


def _protocol(value: Any) -> int:
    if isinstance(value, str) and value.lower() in PROTOCOL_NUMBERS:
        return PROTOCOL_NUMBERS[value.lower()]
    if isinstance(value, str) and value.isdigit() and len(value) <= 3:
        value = int(value)
    if type(value) is int and 0 <= value <= 255:
        return value
    names = ", ".join(PROTOCOL_NUMBERS)
    raise BadRequest(f"bad request: proto must be {names} or a number 0..255, got {_shown(value)}")


def _port(value: Any, what: str) -> int | None:
    if value is not None and (type(value) is not int or not 1 <= value <= 65535):
        raise BadRequest(f"bad request: {what} must be a number in 1..65535, got {_shown(value)}")
    return value


def _dscp(value: Any) -> int:
    from wanlb.config import DSCP_NAMES

    by_name = {name: number for number, name in DSCP_NAMES.items()}
    if isinstance(value, str):
        value = by_name.get(value.lower(), int(value) if value.isdigit() and len(value) <= 2 else value)
    if type(value) is not int or not 0 <= value <= 63:
        raise BadRequest(f"bad request: dscp must be a name (ef, af41, cs1 …) or a number 0..63, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    """A value as an error message quotes it: bounded, whatever a client sent."""
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


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

    def peer_addresses(self) -> frozenset[bytes]:
        """An HA node's peer's addresses (packed: its sync and LAN ones), whose connections to this node are
        the pair's own traffic, not a LAN client's; empty without a pair."""

    async def history(self, since: float) -> trends.History:
        """The kept 10 s samples (the dashboard's charts) newer than ``since`` (wall time)."""
