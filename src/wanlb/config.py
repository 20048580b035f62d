"""Configuration: YAML in, immutable validated models out.

Errors are reported as ``FILE:LINE: path.to.field: message`` so an operator can
jump straight to the offending line.  Validation happens in two passes: pydantic
checks shapes and types per field, then :func:`_cross_checks` checks what only
the whole file can tell (duplicate names, interfaces, marks, tables).  Marks and
routing tables the user left out stay ``None`` here: they are allocated by ISP
name at run time and kept in the runtime state (:mod:`wanlb.runtime`), so that
editing the ISP list never renumbers an ISP that stays.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from wanlb.runtime import mark_shift

DEFAULT_CONFIG_PATH = "/etc/wanlb/wanlb.yaml"
DEFAULT_SOCKET = "/run/wanlb/wanlb.sock"

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.@:+-]{1,15}$")
_ISP_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,14}$")


def parse_duration(value: Any) -> float:
    """Turn ``200ms``, ``1s``, ``5m``, ``2h`` or a bare number of seconds into seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 200ms, 1s or 5m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError(f"cannot parse duration {value!r}: use e.g. 200ms, 1s or 5m")
    if seconds <= 0:
        raise ValueError("duration must be positive")
    return seconds


def _parse_ifname(value: Any) -> str:
    if not isinstance(value, str) or not _IFNAME_RE.match(value):
        raise ValueError(f"{value!r} is not a valid interface name (1-15 characters, no spaces or '/')")
    return value


def _parse_int(value: Any) -> Any:
    """Accept hex strings like ``"0xff00"`` as well as YAML integers."""
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            raise ValueError(f"{value!r} is not an integer") from None
    return value


def _absolute_path(value: Any) -> Any:
    if isinstance(value, str) and not value.startswith("/"):
        raise ValueError(f"{value!r}: a hook must be an absolute path (the daemon's working directory is /)")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
Helper = Literal["ftp", "tftp", "irc", "sip", "pptp", "h323", "amanda", "sane", "snmp", "netbios-ns"]
HookPath = Annotated[str, BeforeValidator(_absolute_path)]
IfName = Annotated[str, BeforeValidator(_parse_ifname)]
Int = Annotated[int, BeforeValidator(_parse_int)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class HealthConfig(_Model):
    """How one ISP is probed.  Probes always leave through the probed ISP."""

    method: Literal["icmp", "tcp", "http", "https", "dns"] = "icmp"
    targets: tuple[ipaddress.IPv4Address, ...] = ()
    port: int | None = Field(default=None, ge=1, le=65535)
    interval: Duration = 0.2
    timeout: Duration = 0.3
    down_after: int = Field(default=3, ge=1, le=100)
    up_after: int = Field(default=5, ge=1, le=1000)
    quorum: int = Field(default=1, ge=1)
    window: int = Field(default=20, ge=1, le=1000)
    max_loss: float | None = Field(default=None, ge=0, le=100)
    max_latency: Duration | None = None
    recover_loss: float | None = Field(default=None, ge=0, le=100)
    recover_latency: Duration | None = None
    flap_window: Duration = 60.0
    hold_down: Duration = 5.0
    hold_down_max: Duration = 300.0
    http_path: str = "/"
    http_status: int = Field(default=200, ge=100, le=599)
    dns_name: str = "."

    @model_validator(mode="after")
    def _port_fits_method(self) -> HealthConfig:
        if self.method == "tcp" and self.port is None:
            raise ValueError("method tcp needs a port")
        if self.method == "icmp" and self.port is not None:
            raise ValueError("method icmp has no port")
        return self

    @field_validator("quorum")
    @classmethod
    def _quorum_le_targets(cls, v: int, info: Any) -> int:
        targets = info.data.get("targets") or ()
        if targets and v > len(targets):
            raise ValueError(f"quorum {v} is larger than the number of targets ({len(targets)})")
        return v


class IspConfig(_Model):
    """One uplink.  ``mark``/``table`` left out (``None``) are allocated by name at run time."""

    name: str
    interface: IfName
    gateway: ipaddress.IPv4Address
    weight: int = Field(default=1, ge=1, le=1000)
    tier: int = Field(default=1, ge=1, le=100)
    snat: Literal["masquerade", "none"] | ipaddress.IPv4Address = "masquerade"
    mark: Int | None = Field(default=None, ge=1, le=0xFFFFFFFF)
    table: Int | None = Field(default=None, ge=1, le=0xFFFFFFFF)
    health: HealthConfig = HealthConfig()

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        if not _ISP_NAME_RE.match(v):
            raise ValueError(f"{v!r} must match [a-z][a-z0-9_-]{{0,14}}")
        return v

    @field_validator("table")
    @classmethod
    def _not_reserved_table(cls, v: int | None) -> int | None:
        if v in (253, 254, 255):
            raise ValueError(f"table {v} is reserved (default/main/local)")
        return v


class LanConfig(_Model):
    interfaces: tuple[IfName, ...] = Field(min_length=1)
    bypass: tuple[ipaddress.IPv4Network, ...] = ()
    """Destinations never balanced (besides the connected networks, which are always bypassed)."""


class BalanceConfig(_Model):
    algorithm: Literal["weighted"] = "weighted"


class FailoverConfig(_Model):
    on_down: Literal["flush", "keep"] = "flush"
    last_resort: Literal["main", "unreachable", "blackhole"] = "main"


class RoutingConfig(_Model):
    """Where wanlb's routing objects live; everything wanlb owns is found by these numbers."""

    table_base: Int = Field(default=200, ge=1, le=0xFFFF0000)
    rule_priority: Int = Field(default=10000, ge=1, le=30000)
    protocol: Int = Field(default=119, ge=5, le=255)


class ControlConfig(_Model):
    socket: str = DEFAULT_SOCKET


class Config(_Model):
    lan: LanConfig
    isps: tuple[IspConfig, ...] = Field(min_length=1, max_length=64)
    balance: BalanceConfig = BalanceConfig()
    mark_mask: Int = Field(default=0xFF00, ge=1, le=0xFFFFFFFF)
    local_traffic: bool = True
    failover: FailoverConfig = FailoverConfig()
    helpers: tuple[Helper, ...] = ("ftp",)
    """Conntrack helpers assigned to NEW connections (see render.HELPERS): ``ftp`` by default."""
    hooks: tuple[HookPath, ...] = ()
    hook_timeout: Duration = 10.0
    routing: RoutingConfig = RoutingConfig()
    control: ControlConfig = ControlConfig()

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
    def state_path(self) -> Path:
        """The runtime state (allocations, what was installed), next to the control socket."""
        return Path(self.control.socket).with_suffix(".state.json")


@dataclass(frozen=True)
class ConfigIssue:
    line: int | None
    path: str
    message: str


class ConfigError(Exception):
    """A config that cannot be used; ``str()`` is the operator-facing report."""

    def __init__(self, filename: str, issues: list[ConfigIssue]):
        self.filename = filename
        self.issues = issues
        super().__init__(self.render())

    def render(self) -> str:
        lines = []
        for issue in self.issues:
            where = f"{self.filename}:{issue.line}" if issue.line else self.filename
            field = f" {issue.path}:" if issue.path else ""
            lines.append(f"{where}:{field} {issue.message}")
        return "\n".join(lines)


# --- YAML with line numbers -------------------------------------------------


class _LineMap:
    """Maps a path of keys/indexes to the 1-based line where that node starts."""

    def __init__(self, root: yaml.Node | None):
        self.lines: dict[tuple[Any, ...], int] = {}
        self.key_lines: dict[tuple[Any, ...], int] = {}
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: yaml.Node, path: tuple[Any, ...]) -> None:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                k = key.value
                self.key_lines[(*path, k)] = key.start_mark.line + 1
                self._walk(value, (*path, k))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, (*path, i))

    def line_for(self, path: Iterable[Any]) -> int | None:
        path = tuple(path)
        # The key's own line is the most useful for "unknown key"/"wrong type";
        # fall back to the closest existing ancestor for missing fields.
        while True:
            if path in self.key_lines:
                return self.key_lines[path]
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys instead of silently keeping the last."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key]})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _format_loc(loc: Iterable[Any]) -> str:
    return ".".join(str(p) for p in loc)


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop pydantic's union/function tags (``function-before[...]``, ``literal[...]``) from a location."""
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in {"function-after"})))


def _pydantic_issues(err: ValidationError, lines: _LineMap) -> list[ConfigIssue]:
    issues: dict[tuple[Any, ...], ConfigIssue] = {}
    errors = err.errors()
    locs = [_clean_loc(tuple(e["loc"])) for e in errors]
    for e, loc in zip(errors, locs, strict=True):
        if e["type"] == "too_short" and any(other[: len(loc)] == loc and other != loc for other in locs):
            continue  # "isps: at least 1 item" only because an item was invalid: that item's error says why
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required field is missing"
        msg = msg.removeprefix("Value error, ")
        # A union (snat: literal | address) reports once per member; keep the first.
        issues.setdefault(loc, ConfigIssue(lines.line_for(loc), _format_loc(loc), msg))
    return list(issues.values())


def _cross_checks(cfg: Config, lines: _LineMap) -> list[ConfigIssue]:
    """Checks across ISPs that single-field validation cannot see."""
    issues: list[ConfigIssue] = []

    def dup(field: str, value_of) -> None:
        seen: dict[Any, int] = {}
        for i, isp in enumerate(cfg.isps):
            value = value_of(isp)
            if value is None:
                continue
            if value in seen:
                loc = ("isps", i, field)
                issues.append(
                    ConfigIssue(
                        lines.line_for(loc),
                        _format_loc(loc),
                        f"duplicate {field} {_show(value)} (also used by isps.{seen[value]})",
                    )
                )
            else:
                seen[value] = i

    dup("name", lambda i: i.name)
    dup("interface", lambda i: i.interface)
    dup("mark", lambda i: i.mark)
    dup("table", lambda i: i.table)

    shift = mark_shift(cfg.mark_mask)
    for i, isp in enumerate(cfg.isps):
        if isp.mark is not None and (isp.mark & ~cfg.mark_mask or not isp.mark & cfg.mark_mask):
            loc = ("isps", i, "mark")
            issues.append(
                ConfigIssue(
                    lines.line_for(loc),
                    _format_loc(loc),
                    f"mark {isp.mark:#x} is outside mark_mask {cfg.mark_mask:#x}",
                )
            )
        if isp.interface in cfg.lan.interfaces:
            loc = ("isps", i, "interface")
            issues.append(
                ConfigIssue(lines.line_for(loc), _format_loc(loc), f"{isp.interface} is also a LAN interface")
            )
    capacity = cfg.mark_mask >> shift
    if len(cfg.isps) > capacity:
        loc = ("mark_mask",)
        issues.append(
            ConfigIssue(
                lines.line_for(loc),
                "mark_mask",
                f"mark_mask {cfg.mark_mask:#x} holds only {capacity} ISP marks, {len(cfg.isps)} ISPs configured",
            )
        )
    return issues


def _show(value: Any) -> str:
    return (
        f"{value:#x}"
        if isinstance(value, int) and value > 255
        else repr(value)
        if isinstance(value, str)
        else str(value)
    )


def parse_config(text: str, filename: str = "<config>") -> Config:
    """Validate YAML text into a resolved :class:`Config` or raise :class:`ConfigError`."""
    try:
        root = yaml.compose(text, Loader=_UniqueKeyLoader)
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(filename, [ConfigIssue(line, "", f"YAML syntax error: {problem}")]) from None
    lines = _LineMap(root)
    if data is None:
        raise ConfigError(filename, [ConfigIssue(1, "", "the file is empty")])
    if not isinstance(data, dict):
        raise ConfigError(filename, [ConfigIssue(1, "", "the top level must be a mapping of keys")])
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(filename, _pydantic_issues(exc, lines)) from None
    issues = _cross_checks(cfg, lines)
    if issues:
        raise ConfigError(filename, issues)
    return cfg


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; a missing/unreadable file is a ConfigError too."""
    filename = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(filename, [ConfigIssue(None, "", f"cannot read config: {exc.strerror}")]) from None
    return parse_config(text, filename)
