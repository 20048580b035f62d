"""The config's shape: immutable pydantic models, one per section, each field checked on its own.

Marks and routing tables the user left out stay ``None`` here: they are allocated by ISP name at run time
and kept in the runtime state (:mod:`wanlb.runtime`), so that editing the ISP list never renumbers an ISP
that stays.  What only the whole file can tell is :mod:`wanlb.config.checks`'.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationInfo,
    field_validator,
    model_validator,
)

from wanlb.config.errors import _clip
from wanlb.paths import DEFAULT_SOCKET
from wanlb.protocols import NUMBERS as PROTOCOLS
from wanlb.protocols import PORT_PROTOS
from wanlb.quota import MAX_BYTES
from wanlb.runtime import mark_shift

MIN_INTERVAL = 0.01  # seconds between probe rounds, at least
MAX_TIMEOUT = 60.0
MAX_ROUNDS_IN_FLIGHT = 100
_DURATION_RE = re.compile(r"\s*(\d{1,9}(?:\.\d{1,9})?)\s*(ms|s|m|h)?\s*")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_IFNAME_RE = re.compile(r"[A-Za-z0-9_.@:+-]{1,15}")
_ISP_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,14}")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DNS_NAME_RE = re.compile(rf"\.|(?=.{{1,253}}\.?$)(?:{_LABEL}\.)*{_LABEL}\.?")
_HTTP_PATH_RE = re.compile(r"/[\x21-\x7e]{0,1023}")
MAX_DURATION = 86400.0  # a day: anything longer is a typo


def parse_duration(value: Any) -> float:
    """Turn ``200ms``, ``1s``, ``5m``, ``2h`` or a bare number of seconds into seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 200ms, 1s or 5m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.fullmatch(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError(f"cannot parse duration {_clip(repr(value), 40)}: use e.g. 200ms, 1s or 5m")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("duration must be a positive, finite number")
    if seconds > MAX_DURATION:
        raise ValueError(f"duration {seconds:g}s is longer than a day")
    return seconds


def _parse_ifname(value: Any) -> str:
    if not isinstance(value, str) or not _IFNAME_RE.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"{_clip(repr(value), 40)} is not a valid interface name (1-15 characters, no spaces or '/')")
    return value


def _parse_int(value: Any) -> Any:
    """Accept hex strings like ``"0xff00"`` as well as YAML integers (never booleans)."""
    if isinstance(value, str) and len(value) <= 20:
        try:
            return int(value, 0)
        except ValueError:
            raise ValueError(f"{value!r} is not an integer") from None
    if isinstance(value, str):
        raise ValueError("not an integer")
    return value


def _absolute_path(value: Any) -> Any:
    if isinstance(value, str) and not value.startswith("/"):
        raise ValueError(f"{value!r}: a hook must be an absolute path (the daemon's working directory is /)")
    return value


def _at_most(limit: int) -> BeforeValidator:
    """A list longer than ``limit`` is refused before its items are validated: pydantic checks
    ``max_length`` only after every item, and 50,000 bad items would be 50,000 errors (over 100 MB)."""

    def check(value: Any) -> Any:
        if isinstance(value, list | tuple | dict) and len(value) > limit:
            raise ValueError(f"at most {limit} items, not {len(value)}")
        return value

    return BeforeValidator(check)


Duration = Annotated[float, BeforeValidator(parse_duration)]
Helper = Literal["ftp", "tftp", "irc", "sip", "pptp", "h323", "amanda", "sane", "snmp", "netbios-ns"]
HookPath = Annotated[str, BeforeValidator(_absolute_path)]
IfName = Annotated[str, BeforeValidator(_parse_ifname)]
Int = Annotated[int, BeforeValidator(_parse_int), Strict()]
SInt = Annotated[int, Strict()]
SFloat = Annotated[float, Strict(), Field(allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    @field_validator("*", mode="before")
    @classmethod
    def _one_is_a_list_of_one(cls, value: Any, info: ValidationInfo) -> Any:
        """``helpers: ftp`` is ``helpers: [ftp]``, ``api.listen: 127.0.0.1:9180`` a list of one, as people write
        them: one value wherever a list is meant (a mapping, for a list of mappings: ``isps: {name: …}``)."""
        item = _list_item(cls, info.field_name or "")
        if item is _NOT_A_LIST or value is None or isinstance(value, list | tuple):
            return value
        is_model = isinstance(item, type) and issubclass(item, BaseModel)
        return [value] if isinstance(value, dict) == is_model else value


_NOT_A_LIST = object()


@cache
def _list_item(model: type[BaseModel], name: str) -> Any:
    """The item type of ``model.name`` if that field is a list (a tuple), else ``_NOT_A_LIST``."""
    info = model.model_fields.get(name)
    if info is None or get_origin(info.annotation) is not tuple:
        return _NOT_A_LIST
    return get_args(info.annotation)[0]


NEXT_HOP_TARGETS = {"gateway": 4, "gateway6": 6}
"""Health target names that stand for the ISP's next hop (static or learned), by address family."""


def _parse_target(value: Any) -> Any:
    """A health target: an address of either family, or ``gateway``/``gateway6`` (the ISP's next hop)."""
    if isinstance(value, str) and value in NEXT_HOP_TARGETS:
        return value
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    try:
        return ipaddress.ip_address(value.strip() if isinstance(value, str) else value)
    except (ValueError, TypeError):
        raise ValueError(
            f"{_clip(repr(value), 40)} is not a target: give an IPv4 or IPv6 address, or gateway / gateway6 "
            "(the ISP's next hop)"
        ) from None


Target = Annotated[
    ipaddress.IPv4Address | ipaddress.IPv6Address | Literal["gateway", "gateway6"], BeforeValidator(_parse_target)
]


def target_family(target: ipaddress.IPv4Address | ipaddress.IPv6Address | str) -> int:
    """4 or 6: the address family a health target is probed over."""
    return NEXT_HOP_TARGETS[target] if isinstance(target, str) else target.version


class HealthConfig(_Model):
    """How one ISP is probed.  Probes always leave through the probed ISP."""

    method: Literal["icmp", "tcp", "http", "https", "dns"] = "icmp"
    targets: Annotated[tuple[Target, ...], _at_most(64)] = Field(default=(), max_length=64)
    """IPv4 targets decide the ISP's (IPv4) health; IPv6 ones, if any, its IPv6 health apart.  ``gateway``
    (``gateway6``) probes the ISP's next hop, as learned now when its gateway is ``auto``."""
    port: SInt | None = Field(default=None, ge=1, le=65535)
    interval: Duration = 0.2
    timeout: Duration = 0.3
    down_after: SInt = Field(default=3, ge=1, le=100)
    up_after: SInt = Field(default=5, ge=1, le=1000)
    quorum: SInt = Field(default=1, ge=1)
    window: SInt = Field(default=20, ge=1, le=1000)
    max_loss: SFloat | None = Field(default=None, ge=0, le=100)
    max_latency: Duration | None = None
    recover_loss: SFloat | None = Field(default=None, ge=0, le=100)
    recover_latency: Duration | None = None
    standby_interval: Duration = Field(default=30.0, le=3600)
    """An ISP with ``standby: true`` is probed this often (never more often than ``interval``) while it carries
    no NEW connections, every ``interval`` as soon as it does: a metered backup's probes cost data too."""
    flap_window: Duration = 60.0
    hold_down: Duration = 5.0
    hold_down_max: Duration = 300.0
    http_path: str = "/"
    http_status: SInt = Field(default=200, ge=100, le=599)
    dns_name: str = "."

    @model_validator(mode="after")
    def _port_fits_method(self) -> HealthConfig:
        if self.method == "tcp" and self.port is None:
            raise ValueError("method tcp needs a port")
        if self.method == "icmp" and self.port is not None:
            raise ValueError("method icmp has no port")
        return self

    @model_validator(mode="after")
    def _timing_makes_sense(self) -> HealthConfig:
        if self.interval < MIN_INTERVAL:
            raise ValueError(f"interval must be at least {MIN_INTERVAL * 1000:g} ms")
        if self.timeout > MAX_TIMEOUT:
            raise ValueError(f"timeout must be at most {MAX_TIMEOUT:g}s")
        if self.timeout > self.interval * MAX_ROUNDS_IN_FLIGHT:
            raise ValueError(
                f"timeout {self.timeout:g}s is more than {MAX_ROUNDS_IN_FLIGHT} intervals: rounds start every "
                f"interval and wait up to timeout, so that many would be in flight at once"
            )
        if self.hold_down > self.hold_down_max:
            raise ValueError("hold_down is longer than hold_down_max")
        return self

    @field_validator("http_path")
    @classmethod
    def _valid_path(cls, v: str) -> str:
        if not _HTTP_PATH_RE.fullmatch(v):
            raise ValueError("must start with / and hold only printable ASCII without spaces (≤ 1024 characters)")
        return v

    @field_validator("dns_name")
    @classmethod
    def _valid_dns_name(cls, v: str) -> str:
        if not _DNS_NAME_RE.fullmatch(v):
            raise ValueError(f"{_clip(repr(v), 40)} is not a DNS name (labels of 1-63 letters, digits, - or _)")
        return v

    def targets_of(self, family: int) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address | str, ...]:
        """The targets of one address family (4 or 6), in config order (``gateway``/``gateway6`` included)."""
        return tuple(t for t in self.targets if target_family(t) == family)

    def quorum_of(self, family: int) -> int:
        """The quorum of one family's rounds: ``quorum``, at most that family's number of targets."""
        return max(1, min(self.quorum, len(self.targets_of(family))))

    @field_validator("quorum")
    @classmethod
    def _quorum_le_targets(cls, v: int, info: Any) -> int:
        targets = info.data.get("targets") or ()
        if targets and v > len(targets):
            raise ValueError(f"quorum {v} is larger than the number of targets ({len(targets)})")
        return v


class Ipv6Config(_Model):
    """How an ISP carries the LAN's IPv6 (``off``: not at all).

    ``netmap`` maps the LAN's translated prefix 1:1 onto ``prefix`` (host bits kept) through conntrack
    NAT chosen by the same ct mark as IPv4; ``masquerade`` is NAT66 to the WAN's address; ``routed``:
    ``prefix`` is this ISP's global prefix on the LAN, whose sources leave through it untranslated.
    """

    mode: Literal["netmap", "masquerade", "routed", "off"] = "off"
    prefix: ipaddress.IPv6Network | None = None
    prefix_from: IfName | None = None
    """netmap: follow the global prefix configured on this interface (a delegated prefix, which the ISP may
    change), instead of a fixed ``prefix``; read with the connected routes at every reconcile."""
    inbound: Annotated[bool, Strict()] = False
    """netmap: connections from the internet to an address of ``prefix`` reach the LAN host with the same
    host bits (``dnat ip6 prefix``), and their replies leave through this ISP.  Off by default: it makes
    every LAN host reachable, as far as the gateway's own firewall (its forward rules) lets it."""

    @model_validator(mode="after")
    def _consistent(self) -> Ipv6Config:
        if self.prefix_from is not None and (self.mode != "netmap" or self.prefix is not None):
            raise ValueError("prefix_from is for mode netmap, instead of prefix")
        if self.mode == "netmap" and self.prefix is None and self.prefix_from is None:
            raise ValueError("mode netmap needs the ISP-side prefix (prefix: 2001:db8:100::/64, or prefix_from: IF)")
        if self.mode == "routed" and self.prefix is None:
            raise ValueError("mode routed needs the ISP's prefix on the LAN (prefix: 2001:db8:300::/64)")
        if self.mode in ("masquerade", "off") and self.prefix is not None:
            raise ValueError(f"prefix is used only by modes netmap and routed, not {self.mode}")
        if self.inbound and self.mode != "netmap":
            raise ValueError(f"inbound maps the netmap prefix back to the LAN: it needs mode netmap, not {self.mode}")
        return self


def _parse_gateway(version: int) -> BeforeValidator:
    """``auto`` or an address of one family, with a message that says what ``auto`` is for."""
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address

    def check(value: Any) -> Any:
        if value == "auto" or value is None or isinstance(value, cls):
            return value
        try:
            return cls(value.strip() if isinstance(value, str) else value)
        except (ValueError, TypeError):
            pass
        family = "IPv4" if version == 4 else "IPv6"
        raise ValueError(
            f"{_clip(repr(value), 40)} is not an {family} address or auto: write auto for a next hop learned from "
            "the uplink's own default route (DHCP, PPP, an LTE modem, any client)"
        )

    return BeforeValidator(check)


Gateway4 = Annotated[ipaddress.IPv4Address | Literal["auto"], _parse_gateway(4)]
Gateway6 = Annotated[ipaddress.IPv6Address | Literal["auto"] | None, _parse_gateway(6)]

_SIZE_RE = re.compile(r"\s*(\d{1,20}(?:\.\d{1,9})?)\s*([kmgtpe]i?b|b)?\s*", re.I)
_SIZE_UNITS = {"b": 1, **{f"{p}b": 1000**n for n, p in enumerate("kmgtpe", 1)},
               **{f"{p}ib": 1024**n for n, p in enumerate("kmgtpe", 1)}}  # fmt: skip
MIN_QUOTA = 1 << 20  # bytes: a smaller limit is a number written without its unit


def parse_size(value: Any) -> int:
    """``20GiB``, ``500MB``, ``1.5TB`` or a bare number of bytes → bytes.  ``KiB``/``MiB``/``GiB``… are powers of
    1024, ``kB``/``MB``/``GB``… powers of 1000 (as ISPs sell them); case does not matter."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 20GiB, 500MB or a number of bytes")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE_RE.fullmatch(value)):
        number, unit = m.group(1), _SIZE_UNITS[(m.group(2) or "b").lower()]
        size = int(number) * unit if "." not in number else int(float(number) * unit)
    else:
        raise ValueError(f"cannot parse size {_clip(repr(value), 40)}: use e.g. 20GiB, 500MB or 1.5TB")
    if size < MIN_QUOTA:
        raise ValueError(f"{size} bytes is less than 1 MiB: write the unit, e.g. 20GiB or 500MB")
    if size > MAX_BYTES:
        raise ValueError("must be at most 8 EiB (2^63 - 1 bytes)")
    return size


def _parse_percent(value: Any) -> float:
    """``75%`` or ``75`` → 75.0: a share of the limit, above 0 and below 100 (the limit itself is always told)."""
    text = value.strip().removesuffix("%").strip() if isinstance(value, str) else value
    try:
        percent = float(text) if not isinstance(text, bool) and isinstance(text, int | float | str) else math.nan
    except ValueError:
        percent = math.nan
    if not 0 < percent < 100:
        raise ValueError(f"{_clip(repr(value), 40)} is not a percentage of the limit above 0 and below 100, like 75%")
    if percent < 1 and not (isinstance(value, str) and value.strip().endswith("%")):
        raise ValueError(f"{value!r} looks like a fraction: write a percentage, like {percent * 100:g}% ({percent:g}% "
                         "with the % sign if that is meant)")  # fmt: skip
    return percent


def _parse_cycle_days(value: Any) -> int:
    """``30d``, ``4w`` or a bare number of days → days (1..366)."""
    m = re.fullmatch(r"\s*(\d{1,4})\s*([dw]?)\s*", value) if isinstance(value, str) else None
    if isinstance(value, int) and not isinstance(value, bool):
        days = value
    elif m is not None:
        days = int(m.group(1)) * (7 if m.group(2) == "w" else 1)
    else:
        raise ValueError(f"{_clip(repr(value), 40)} is not a number of days: use e.g. 30d or 4w")
    if not 1 <= days <= 366:
        raise ValueError(f"a cycle is 1..366 days, got {days}")
    return days


def _monthly(value: Any) -> Any:
    if value != "monthly":
        raise ValueError(f"must be monthly, got {_clip(repr(value), 40)}: for a cycle of N days write every: Nd")
    return value


class QuotaConfig(_Model):
    """A data quota: bytes through the ISP's WAN (both directions, its probes included) per billing cycle —
    monthly from ``start_day`` (the last day of a shorter month), or every ``every`` days from when counting
    began.  At the ``limit`` the ISP leaves balancing as ``at_limit`` says; its connections continue."""

    limit: Annotated[int, BeforeValidator(parse_size)]
    cycle: Annotated[Literal["monthly"], BeforeValidator(_monthly)] = "monthly"
    start_day: SInt = Field(default=1, ge=1, le=31)
    every: Annotated[int | None, BeforeValidator(lambda v: None if v is None else _parse_cycle_days(v))] = None
    warn: Annotated[tuple[Annotated[float, BeforeValidator(_parse_percent)], ...], _at_most(8)] = (75.0, 95.0)
    at_limit: Literal["standby", "last-resort", "drop"] = "standby"
    """standby: NEW connections only while no other ISP is usable; last-resort: like a degraded ISP (only while
    no ISP is up); drop: none at all (docs/configuration.md, "Data quotas")."""

    @field_validator("warn")
    @classmethod
    def _sorted_once(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if len(set(v)) != len(v):
            raise ValueError("a threshold is listed twice")
        return tuple(sorted(v))

    @model_validator(mode="after")
    def _one_cycle(self) -> QuotaConfig:
        if self.every is not None and {"cycle", "start_day"} & self.model_fields_set:
            raise ValueError("give cycle: monthly (with start_day) or every: N days, not both")
        return self


class IspConfig(_Model):
    """One uplink.  ``mark``/``table`` left out (``None``) are allocated by name at run time."""

    name: str
    interface: IfName
    gateway: Gateway4 = "auto"
    """The IPv4 next hop, or ``auto``: learned from the default route through ``interface`` that the uplink's
    own client installed (``default via X dev IF``, or ``default dev IF`` on a point-to-point link)."""
    gateway_table: Int | None = Field(default=None, ge=1, le=0xFFFFFFFF)
    """Where ``auto`` looks for that default route: the main table unless the client puts it elsewhere."""
    weight: SInt = Field(default=1, ge=1, le=1000)
    tier: SInt = Field(default=1, ge=1, le=100)
    snat: Literal["masquerade", "none"] | ipaddress.IPv4Address = "masquerade"
    mark: Int | None = Field(default=None, ge=1, le=0xFFFFFFFF)
    table: Int | None = Field(default=None, ge=1, le=0xFFFFFFFF)
    health: HealthConfig = HealthConfig()
    standby: Annotated[bool, Strict()] = False
    """Probe it every ``health.standby_interval`` while it is in no policy's use (a better tier carries the
    traffic), at the full rate once it is: a metered backup (docs/health.md, "Standby ISPs")."""
    gateway6: Gateway6 = None
    """IPv6 next hop (link-local allowed: it is reached through ``interface``), or ``auto``: learned from the
    default route through ``interface`` (router advertisements, DHCPv6 clients, static)."""
    ipv6: Ipv6Config = Ipv6Config()
    quota: QuotaConfig | None = None
    """A data quota per billing cycle (:mod:`wanlb.quota`); none: its traffic is not limited."""

    @model_validator(mode="after")
    def _ipv6_needs_a_gateway(self) -> IspConfig:
        if self.ipv6.mode != "off" and self.gateway6 is None:
            raise ValueError(
                f"ipv6 mode {self.ipv6.mode} needs gateway6 (the ISP's IPv6 next hop, or auto to learn it)"
            )
        if self.ipv6.mode == "off" and self.health.targets_of(6):
            raise ValueError("IPv6 health targets need ipv6 mode netmap or masquerade (this ISP carries no IPv6)")
        return self

    @field_validator("gateway_table")
    @classmethod
    def _not_local_table(cls, v: int | None) -> int | None:
        if v == 255:
            raise ValueError("table 255 is the local table: no default route lives there")
        return v

    @property
    def learns(self) -> bool:
        """Whether its IPv4 next hop is learned from the kernel (``gateway: auto``)."""
        return self.gateway == "auto"

    @property
    def lookup_table(self) -> int:
        """The table an ``auto`` gateway is learned from."""
        return self.gateway_table or 254

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        if not _ISP_NAME_RE.fullmatch(v):
            raise ValueError(f"{_clip(repr(v), 40)} must match [a-z][a-z0-9_-]{{0,14}}")
        if v == "none":  # what the conntrack tools call unmarked connections
            raise ValueError("'none' is reserved: `wanlb conntrack` shows unmarked connections under that name")
        return v

    @field_validator("table")
    @classmethod
    def _not_reserved_table(cls, v: int | None) -> int | None:
        if v in (253, 254, 255):
            raise ValueError(f"table {v} is reserved (default/main/local)")
        return v


def _parse_network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address or network of either family, with an error that says why (pydantic's union answers
    "not a valid IPv4 network" to any IPv6 mistake, and never mentions host bits)."""
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    shown = _clip(repr(value), 60)
    if not isinstance(value, str):
        raise ValueError(f"{shown}: give an address or network as text, like 10.0.0.0/24 or fd00::/64")
    try:
        return ipaddress.ip_network(value.strip())
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{shown} is not an IPv4 or IPv6 address or network (like 10.0.0.0/24 or fd00::/64)") from None
    raise ValueError(f"{shown} has host bits set: the network is {loose}")


AnyNetwork = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_parse_network)]


class LanConfig(_Model):
    interfaces: Annotated[tuple[IfName, ...], _at_most(64)] = Field(min_length=1, max_length=64)
    bypass: Annotated[tuple[AnyNetwork, ...], _at_most(10000)] = Field(default=(), max_length=10000)
    """Destinations never balanced (besides the connected networks, which are always bypassed), both families."""
    ipv6_prefixes: Annotated[tuple[ipaddress.IPv6Network, ...], _at_most(16)] = Field(default=(), max_length=16)
    """The LAN's IPv6 prefixes (ULA or global): what is balanced, translated, and never leaves a WAN as it is."""


Algorithm = Literal["weighted", "hash", "least-conn", "latency", "failover"]
HashField = Literal["src", "dst", "proto", "sport", "dport"]
_RULE_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,23}")
_DSCP = {"ef": 46, "va": 44, **{f"cs{i}": i * 8 for i in range(8)}}
_DSCP.update({f"af{c}{d}": c * 8 + d * 2 for c in range(1, 5) for d in range(1, 4)})
DSCP_NAMES = {v: k for k, v in _DSCP.items()}
MAX_RULES = 10_000
MAX_RULE_VALUES = 10_000  # addresses (or ports) in one rule


def _parse_name(pattern: re.Pattern[str], what: str) -> BeforeValidator:
    def check(value: Any) -> Any:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ValueError(f"{_clip(repr(value), 40)} is not a valid {what} name (must match {pattern.pattern})")
        return value

    return BeforeValidator(check)


def _parse_port(value: Any) -> tuple[int, int]:
    """``443``, ``"443"`` or ``"27015-27030"`` → an inclusive range."""
    if isinstance(value, int) and not isinstance(value, bool):
        lo = hi = value
    elif isinstance(value, str) and (m := re.fullmatch(r"\s*(\d{1,5})\s*(?:-\s*(\d{1,5})\s*)?", value)):
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    else:
        raise ValueError(f"{_clip(repr(value), 40)} is not a port or a range like 27015-27030")
    if not (1 <= lo <= hi <= 65535):
        raise ValueError(f"port range {lo}-{hi} must lie within 1-65535, low end first")
    return (lo, hi)


def _parse_proto(value: Any) -> int:
    if isinstance(value, str) and value.lower() in PROTOCOLS:
        return PROTOCOLS[value.lower()]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
        return value
    raise ValueError(f"{_clip(repr(value), 40)}: use {', '.join(PROTOCOLS)} or a number 0-255")


def _parse_dscp(value: Any) -> int:
    if isinstance(value, str) and value.lower() in _DSCP:
        return _DSCP[value.lower()]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 63:
        return value
    raise ValueError(f"{_clip(repr(value), 40)}: use a DSCP name (ef, cs0-cs7, af11-af43, va) or a number 0-63")


def _parse_domain(value: Any) -> str:
    from wanlb.domains import validate_name  # dnspython is imported only by configs that name domains

    return validate_name(value)


PolicyName = Annotated[str, _parse_name(_RULE_NAME_RE, "policy")]
RuleName = Annotated[str, _parse_name(_RULE_NAME_RE, "rule")]
Port = Annotated[tuple[int, int], BeforeValidator(_parse_port)]
Proto = Annotated[int, BeforeValidator(_parse_proto)]
Dscp = Annotated[int, BeforeValidator(_parse_dscp)]
Domain = Annotated[str, BeforeValidator(_parse_domain)]
Networks = Annotated[tuple[AnyNetwork, ...], _at_most(MAX_RULE_VALUES)]
"""A rule's addresses: IPv4 ones match IPv4 connections, IPv6 ones IPv6 connections."""
Ports = Annotated[tuple[Port, ...], _at_most(1000)]
MAX_RULE_MACS = 256  # source MAC addresses in one rule: LAN hosts, not a list of every device
_MAC_RE = re.compile(r"[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(?:\1[0-9a-fA-F]{2}){4}")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_NAMES = {name: i for i, names in enumerate(zip(WEEKDAYS, _FULL_DAYS, strict=True)) for name in names}
_CLOCK = r"(\d{1,2}):(\d{2})(?::(\d{2}))?"
_WINDOW_RE = re.compile(rf"\s*{_CLOCK}\s*-\s*{_CLOCK}\s*")
DAY_SECONDS = 86400


def _as_written(value: int, groups: int) -> str | None:
    """What YAML 1.1 read as a base-60 number looked like (``10:20:30`` is 37230): ``groups`` groups of two
    digits, or None if it cannot have been written so.  Unquoted, ``22:00`` and a MAC address of digits only
    are such numbers, and an error had better show what the operator wrote."""
    parts = []
    for _ in range(groups - 1):
        value, part = divmod(value, 60)
        parts.append(part)
    return ":".join(f"{p:02d}" for p in (value, *reversed(parts))) if 1 <= value <= 99 else None


def _parse_mac(value: Any) -> str:
    """``AA:BB:CC:DD:EE:FF`` or ``aa-bb-cc-dd-ee-ff`` → ``aa:bb:cc:dd:ee:ff`` (what nft prints back)."""
    if isinstance(value, int) and not isinstance(value, bool) and (text := _as_written(value, 6)):
        raise ValueError(f"YAML read {text} as the number {value}: put a MAC address of digits only in quotes")
    if not isinstance(value, str) or not _MAC_RE.fullmatch(value.strip()):
        raise ValueError(f"{_clip(repr(value), 40)} is not a MAC address (six pairs of hex digits, like "
                         "aa:bb:cc:dd:ee:ff)")  # fmt: skip
    mac = value.strip().lower().replace("-", ":")
    if int(mac[:2], 16) & 1:
        raise ValueError(f"{mac} is a multicast address: no host sends from it")
    if mac == "00:00:00:00:00:00":
        raise ValueError("00:00:00:00:00:00 is no host's address")
    return mac


def _parse_days(value: Any) -> tuple[int, ...]:
    """``mon``, ``monday``, ``mon-fri`` or ``fri-mon`` (across the weekend): the weekdays it names, 0 = Monday."""
    first, _, last = value.strip().lower().partition("-") if isinstance(value, str) else ("", "", "")
    lo, hi = _DAY_NAMES.get(first.strip()), _DAY_NAMES.get((last or first).strip())
    if lo is None or hi is None:
        raise ValueError(f"{_clip(repr(value), 40)} is not a day or a range of days: use {', '.join(WEEKDAYS)} "
                         "or a range like mon-fri")  # fmt: skip
    return tuple((lo + i) % 7 for i in range((hi - lo) % 7 + 1))


def _clock(hours: str, minutes: str, seconds: str | None, end: bool) -> int:
    """One end of a window in seconds since midnight; ``24:00`` only as the end (the end of the day)."""
    value = int(hours) * 3600 + int(minutes) * 60 + int(seconds or 0)
    if int(minutes) > 59 or int(seconds or 0) > 59 or value > DAY_SECONDS or (value == DAY_SECONDS and not end):
        shown = f"{hours}:{minutes}" + (f":{seconds}" if seconds else "")
        raise ValueError(f"{shown} is not a time of day (00:00 to 23:59:59{', or 24:00' if end else ''})")
    return value


def _parse_window(value: Any) -> tuple[int, int]:
    """``08:00-18:00`` (seconds optional: ``08:00:30-08:00:45``) → (start, end), seconds since local midnight.
    An end before the start is on the next day (``22:00-06:00``)."""
    written = _as_written(value, 2) or _as_written(value, 3) if isinstance(value, int) else None
    if written is not None and not isinstance(value, bool):
        raise ValueError(f"a single time is not a window (YAML read {written} as the number {value}): give "
                         "from-to, like 08:00-18:00")  # fmt: skip
    m = _WINDOW_RE.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"{_clip(repr(value), 40)} is not a time window: give from-to in 24-hour time, like "
                         "08:00-18:00 or 22:00-06:00")  # fmt: skip
    start, end = _clock(*m.group(1, 2, 3), end=False), _clock(*m.group(4, 5, 6), end=True)
    if start == end:
        raise ValueError(f"{value.strip()} is empty (from and to are the same time); for all day, leave time out")
    return start, end


@cache
def _zone_names() -> frozenset[str]:
    import zoneinfo

    return frozenset(zoneinfo.available_timezones())


def _parse_zone(value: Any) -> str:
    """An IANA time zone name that this machine's zone database holds (``Europe/Berlin``, ``UTC``)."""
    names = _zone_names()
    if isinstance(value, str) and value in names:
        return value
    if not names:
        raise ValueError("this machine has no time zone database (install tzdata), or leave tz out: the system's zone")
    folded = {n.lower(): n for n in names}
    close = folded.get(value.strip().lower()) if isinstance(value, str) else None
    if close is None and isinstance(value, str):
        close = next(iter(difflib.get_close_matches(value, sorted(names), n=1, cutoff=0.8)), None)
    hint = f" (did you mean {close}?)" if close else ""
    raise ValueError(f"{_clip(repr(value), 40)} is not a time zone{hint}: give an IANA name like Europe/Berlin or UTC")


Mac = Annotated[str, BeforeValidator(_parse_mac)]
Days = Annotated[tuple[int, ...], BeforeValidator(_parse_days)]
TimeWindow = Annotated[tuple[int, int], BeforeValidator(_parse_window)]
Zone = Annotated[str, BeforeValidator(_parse_zone)]


class WhenConfig(_Model):
    """When a rule or policy is in effect (:mod:`wanlb.schedule` switches it): on ``days`` (every day if left
    out), during ``time`` (all day if left out), read on the wall clock of ``tz`` (the system's zone if left
    out).  A window across midnight belongs to the day it starts on: ``{days: fri, time: 22:00-06:00}`` is
    Friday night into Saturday morning."""

    days: Annotated[tuple[Days, ...], _at_most(7)] = ()
    time: TimeWindow | None = None
    tz: Zone | None = None

    @model_validator(mode="after")
    def _a_window(self) -> WhenConfig:
        if not self.days and self.time is None:
            raise ValueError("give days (like mon-fri), time (like 08:00-18:00) or both")
        return self

    @property
    def weekdays(self) -> frozenset[int]:
        """The days a window starts on, 0 = Monday: every day when ``days`` is left out."""
        return frozenset(d for span in self.days for d in span) if self.days else frozenset(range(7))


class StickyConfig(_Model):
    """A client (or client-destination pair) keeps the ISP of its first connection until idle for ``timeout``."""

    by: Literal["source", "source-dest"] = "source"
    timeout: Duration = 600.0


class HashConfig(_Model):
    fields: Annotated[tuple[HashField, ...], _at_most(5)] = Field(default=("src", "dst"), min_length=1)

    @field_validator("fields")
    @classmethod
    def _unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError("a field is listed twice")
        return v


class BalanceConfig(_Model):
    """How the default policy (every ISP, by its tier and weight) picks an ISP for a NEW connection."""

    algorithm: Algorithm = "weighted"
    hash: HashConfig = HashConfig()
    sticky: StickyConfig | None = None
    adjust_interval: Duration = 5.0
    """least-conn and latency: how often the weights are recomputed (from the live counts, the probes)."""


class PolicyMember(_Model):
    isp: str
    tier: SInt | None = Field(default=None, ge=1, le=100)  # None: the ISP's own tier
    weight: SInt | None = Field(default=None, ge=1, le=1000)  # None: the ISP's own weight


class PolicyConfig(_Model):
    """A named group of ISPs that rules can send traffic to."""

    members: Annotated[tuple[PolicyMember, ...], _at_most(64)] = Field(min_length=1, max_length=64)
    algorithm: Algorithm | None = None  # None: balance.algorithm
    on_unavailable: Literal["default", "drop", "unreachable"] = "default"
    sticky: StickyConfig | None = None  # None: balance.sticky
    when: WhenConfig | None = None
    """Outside this window the policy is off: every rule that sends to it is skipped (see RuleConfig.when)."""


class RuleConfig(_Model):
    """Match NEW connections from the LAN and send them to one ISP, a policy, the main table or nowhere.

    Every listed field must match (values within one field are alternatives); ``src_not``/``dst_not``
    (or ``!`` before an address) exclude.  Exactly one of ``via``, ``policy`` and ``action``.
    """

    name: RuleName
    src: Networks = ()
    src_not: Networks = ()
    dst: Networks = ()
    dst_not: Networks = ()
    dst_domains: Annotated[tuple[Domain, ...], _at_most(64)] = ()
    proto: Proto | None = None
    sport: Ports = ()
    dport: Ports = ()
    iif: Annotated[tuple[IfName, ...], _at_most(64)] = ()
    dscp: Annotated[tuple[Dscp, ...], _at_most(64)] = ()
    via: str | None = None
    policy: str | None = None
    action: Literal["bypass", "drop"] | None = None
    src_mac: Annotated[tuple[Mac, ...], _at_most(MAX_RULE_MACS)] = ()
    """Ethernet source addresses (``ether saddr``): a LAN host whatever IPv4 or IPv6 address it uses now."""
    when: WhenConfig | None = None
    """Outside this window the rule is skipped, as if it were not there: NEW connections fall through to the
    next rules; established ones keep their ISP."""
    on_recover: Literal["keep", "move-lower-tier"] | None = None
    """What a better tier's recovery does to this rule's connections on a worse tier it takes out of use (None:
    ``failover.on_recover``): metered traffic can come back while a long download stays (:mod:`wanlb.recover`)."""

    @model_validator(mode="before")
    @classmethod
    def _negations(cls, data: Any) -> Any:
        """``src: [!10.0.0.0/8]`` is ``src_not: [10.0.0.0/8]``."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in ("src", "dst"):
            values = data.get(key)
            if isinstance(values, str):
                values = [values]
            if isinstance(values, list | tuple) and len(values) <= MAX_RULE_VALUES:
                neg = [v[1:].strip() for v in values if isinstance(v, str) and v.startswith("!")]
                for i, v in enumerate(values):  # an error in src_not.N would not say which entry of src it was
                    if isinstance(v, str) and v.startswith("!"):
                        try:
                            _parse_network(v[1:])
                        except ValueError as exc:
                            raise ValueError(f"{key}[{i + 1}]: {exc}") from None
                if neg:
                    data[key] = [v for v in values if not (isinstance(v, str) and v.startswith("!"))]
                    extra = data.get(f"{key}_not") or []
                    data[f"{key}_not"] = [*(extra if isinstance(extra, list | tuple) else [extra]), *neg]
        return data

    @model_validator(mode="after")
    def _one_target(self) -> RuleConfig:
        targets = [k for k in ("via", "policy", "action") if getattr(self, k) is not None]
        if len(targets) != 1:
            raise ValueError("give exactly one of via (an ISP), policy (a policy name) or action (bypass, drop)")
        if (self.sport or self.dport) and self.proto is not None and self.proto not in PORT_PROTOS:
            raise ValueError("ports need proto tcp, udp, sctp, dccp or udplite (or no proto: tcp and udp)")
        return self


class PassiveConfig(_Model):
    """Failover from the datapath's own evidence (docs/health.md, "Passive detection"): an ISP whose NEW TCP
    connections get no SYN-ACK while the other ISPs' do is taken out of balancing at once and probed."""

    enabled: Annotated[bool, Strict()] = True
    timeout: Duration = Field(default=0.15, ge=0.02, le=5)
    """How long a SYN may wait for its SYN-ACK before it counts as unanswered."""
    min_connections: SInt = Field(default=2, ge=1, le=1000)
    """Unanswered NEW connections (with no SYN-ACK at all on the ISP) before it is suspected."""
    window: Duration = Field(default=1.0, ge=0.2, le=60)
    """The span the SYNs and SYN-ACKs are counted over."""


class FailoverConfig(_Model):
    on_down: Literal["flush", "keep"] = "flush"
    last_resort: Literal["main", "unreachable", "blackhole"] = "main"
    on_recover: Literal["keep", "move-lower-tier"] = "keep"
    """move-lower-tier: when a better tier recovers, flush the connections on worse tiers so they come back."""
    passive: PassiveConfig = PassiveConfig()
    failback_after: Duration = Field(default=0.0, ge=0, le=86400)
    """An ISP back from down while another is up takes NEW connections again only after this long (until then
    it is a last choice, like a degraded one); 0: at once. With move-lower-tier the flush waits for it too."""


def _parse_listen(value: Any) -> str:
    """``127.0.0.1:9180`` or ``[::1]:9180``: an address literal (never a name) and a port."""
    if isinstance(value, str) and (m := re.fullmatch(r"(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d{1,5})", value)):
        host = m.group(1) or m.group(2)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            if 1 <= int(m.group(3)) <= 65535:
                return value
    raise ValueError(f"{_clip(repr(value), 40)}: use ADDRESS:PORT, e.g. 127.0.0.1:9180 or [::1]:9180")


Listen = Annotated[str, BeforeValidator(_parse_listen)]


class ApiConfig(_Model):
    """The HTTP API, /metrics and the dashboard (off unless this section is present)."""

    listen: Annotated[tuple[Listen, ...], _at_most(8)] = Field(default=("127.0.0.1:9180",), min_length=1)
    """Where to listen; 0.0.0.0 only if written so."""
    token_file: str | None = None
    """A file (mode 0600) holding the bearer token that writes (disable, enable, reload) need."""
    public_read: Annotated[bool, Strict()] = False
    """True: reads need no token."""

    @field_validator("token_file")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or "\0" in v):
            raise ValueError("must be an absolute path")
        return v

    @model_validator(mode="after")
    def _someone_can_read(self) -> ApiConfig:
        if self.token_file is None and not self.public_read:
            raise ValueError("give token_file (reads and writes need its token) or public_read: true")
        return self


class DnsConfig(_Model):
    """The resolver for rules' ``dst_domains``."""

    servers: Annotated[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...], _at_most(8)] = Field(
        default=(), max_length=8
    )
    """Empty: the system's (/etc/resolv.conf)."""
    timeout: Duration = 2.0
    min_ttl: Duration = 60.0
    max_ttl: Duration = 3600.0
    """Also the default timeout of an element that something else (dnsmasq's ``nftset=``) adds."""
    resolve: Annotated[bool, Strict()] = True
    """False: the daemon never resolves; the ``dom_<rule>`` sets are fed by dnsmasq (``nftset=``)."""


class RoutingConfig(_Model):
    """Where wanlb's routing objects live; everything wanlb owns is found by these numbers."""

    table_base: Int = Field(default=200, ge=1, le=0xFFFF0000)
    rule_priority: Int = Field(default=10000, ge=1, le=30000)
    protocol: Int = Field(default=119, ge=5, le=255)


class SyncConfig(_Model):
    """The dedicated link conntrackd syncs connection state over (FTFW over UDP)."""

    interface: IfName
    address: ipaddress.IPv4Address
    """This node's address on it."""
    peer: ipaddress.IPv4Address
    """The other node's address on it."""
    port: SInt = Field(default=3780, ge=1, le=65535)


class HaConfig(_Model):
    """An active/backup pair (docs/ha.md): keepalived holds the VIPs on the primary, conntrackd syncs the
    connections (their ct marks, so their ISPs, and their NAT bindings) to the backup."""

    node: str = Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_-]*$")
    """This node's name (status, events, keepalived's router_id)."""
    priority: SInt = Field(ge=1, le=254)
    """VRRP priority: the higher node is primary while both run."""
    vrid: SInt = Field(default=51, ge=1, le=255)
    interface: IfName | None = None
    """Where VRRP adverts go: the first LAN interface unless given."""
    unicast_peer: ipaddress.IPv4Address | None = None
    """The peer's address on ``interface`` for unicast adverts; multicast (224.0.0.18) without it."""
    advert_interval: Duration = 1.0
    """VRRPv3 adverts, in steps of 10 ms (0.01 s to 40 s): 100ms takes over in about 0.35 s."""
    preempt_delay: Duration = 5.0
    """A returning primary waits this long (syncing the connections) before it takes the VIPs back."""
    lan_vip: ipaddress.IPv4Interface
    """The LAN's default gateway, held by the primary (on the VRRP interface)."""
    wan_vips: Annotated[dict[str, ipaddress.IPv4Interface], _at_most(64)] = Field(default_factory=dict)
    """Per ISP, a WAN address both nodes can hold (a /29 or larger segment): its connections are SNATed to
    it, so they survive a takeover. An ISP without one (a single-address DHCP/PPPoE WAN) masquerades to the
    node's own address: its connections end when the other node takes over."""
    sync: SyncConfig
    takeover_guard: Annotated[bool, Strict()] = True
    """Drop NEW TCP packets that are not a SYN (docs/ha.md); false only to see what it prevents: resets."""

    @field_validator("advert_interval")
    @classmethod
    def _centiseconds(cls, v: float) -> float:
        if not 0.01 <= v <= 40.95 or abs(v * 100 - round(v * 100)) > 1e-6:
            raise ValueError(f"must be 10ms..40.95s in steps of 10ms (VRRPv3 centiseconds), got {v:g}s")
        return v


class ControlConfig(_Model):
    socket: str = DEFAULT_SOCKET

    @field_validator("socket")
    @classmethod
    def _absolute_socket(cls, v: str) -> str:
        path = Path(v)
        if not v.startswith("/") or v.endswith("/") or "\0" in v or path.name in ("", ".", ".."):
            raise ValueError("must be an absolute path of a socket file (e.g. /run/wanlb/wanlb.sock)")
        if len(v.encode()) > 100:
            raise ValueError("is too long for a unix socket (at most 100 bytes)")
        if ".." in path.parts:
            raise ValueError("must not contain '..'")
        return v

    data_dir: str = "/var/lib/wanlb"
    """What must outlive a reboot (the data quotas' counts, ``quota.json``), unlike the runtime state in /run: a
    directory only root may write."""

    @field_validator("data_dir")
    @classmethod
    def _absolute_dir(cls, v: str) -> str:
        if not v.startswith("/") or "\0" in v or ".." in Path(v).parts or len(v.encode()) > 200:
            raise ValueError("must be an absolute path of a directory (e.g. /var/lib/wanlb), without '..'")
        return v


class Config(_Model):
    lan: LanConfig
    isps: Annotated[tuple[IspConfig, ...], _at_most(64)] = Field(min_length=1, max_length=64)
    balance: BalanceConfig = BalanceConfig()
    mark_mask: Int = Field(default=0xFF00, ge=1, le=0xFFFFFFFF)
    local_traffic: Annotated[bool, Strict()] = True
    failover: FailoverConfig = FailoverConfig()
    helpers: Annotated[tuple[Helper, ...], _at_most(16)] = Field(default=("ftp",), max_length=16)
    """Conntrack helpers assigned to NEW connections (see render.HELPERS): ``ftp`` by default."""
    hooks: Annotated[tuple[HookPath, ...], _at_most(16)] = Field(default=(), max_length=16)
    hook_timeout: Duration = 10.0
    routing: RoutingConfig = RoutingConfig()
    control: ControlConfig = ControlConfig()
    policies: Annotated[dict[PolicyName, PolicyConfig], _at_most(64)] = Field(default_factory=dict)
    rules: Annotated[tuple[RuleConfig, ...], _at_most(MAX_RULES)] = Field(default=(), max_length=MAX_RULES)
    """First match wins; unmatched traffic uses ``balance`` over every ISP (the ``default`` policy)."""
    dns: DnsConfig = DnsConfig()
    api: ApiConfig | None = None
    ha: HaConfig | None = None
    """An HA pair (keepalived + conntrackd); off unless this section is present."""

    @field_validator("mark_mask")
    @classmethod
    def _contiguous_mask(cls, v: int) -> int:
        shifted = v >> mark_shift(v)
        if shifted & (shifted + 1):
            raise ValueError(f"mark_mask {v:#x} must be one contiguous run of bits")
        return v

    def isp(self, name: str) -> IspConfig:
        for isp in self.isps:
            if isp.name == name:
                return isp
        raise KeyError(name)

    @property
    def ipv6(self) -> bool:
        """Whether IPv6 is balanced: some ISP carries it (its IPv6 mode is not ``off``)."""
        return any(i.ipv6.mode != "off" for i in self.isps)

    @property
    def state_path(self) -> Path:
        """The runtime state (allocations, what was installed), next to the control socket."""
        return Path(self.control.socket).with_suffix(".state.json")

    @property
    def quota_path(self) -> Path:
        """The data quotas' counts (:mod:`wanlb.daemon.quotas`), in ``control.data_dir``."""
        return Path(self.control.data_dir) / "quota.json"
