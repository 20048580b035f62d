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
import math
import os
import re
import stat
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
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from wanlb.runtime import mark_shift

DEFAULT_CONFIG_PATH = "/etc/wanlb/wanlb.yaml"
MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 50
MIN_INTERVAL = 0.01  # seconds between probe rounds, at least
MAX_TIMEOUT = 60.0
MAX_ROUNDS_IN_FLIGHT = 100
MAX_NODES = 50_000
MAX_ISSUES = 20
DEFAULT_SOCKET = "/run/wanlb/wanlb.sock"

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
        if isinstance(value, list | tuple) and len(value) > limit:
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


class HealthConfig(_Model):
    """How one ISP is probed.  Probes always leave through the probed ISP."""

    method: Literal["icmp", "tcp", "http", "https", "dns"] = "icmp"
    targets: Annotated[tuple[ipaddress.IPv4Address, ...], _at_most(64)] = Field(default=(), max_length=64)
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
    weight: SInt = Field(default=1, ge=1, le=1000)
    tier: SInt = Field(default=1, ge=1, le=100)
    snat: Literal["masquerade", "none"] | ipaddress.IPv4Address = "masquerade"
    mark: Int | None = Field(default=None, ge=1, le=0xFFFFFFFF)
    table: Int | None = Field(default=None, ge=1, le=0xFFFFFFFF)
    health: HealthConfig = HealthConfig()

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        if not _ISP_NAME_RE.fullmatch(v):
            raise ValueError(f"{_clip(repr(v), 40)} must match [a-z][a-z0-9_-]{{0,14}}")
        return v

    @field_validator("table")
    @classmethod
    def _not_reserved_table(cls, v: int | None) -> int | None:
        if v in (253, 254, 255):
            raise ValueError(f"table {v} is reserved (default/main/local)")
        return v


class LanConfig(_Model):
    interfaces: Annotated[tuple[IfName, ...], _at_most(64)] = Field(min_length=1, max_length=64)
    bypass: Annotated[tuple[ipaddress.IPv4Network, ...], _at_most(10000)] = Field(default=(), max_length=10000)
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

    def __init__(self, filename: str, issues: list[ConfigIssue], unlisted: int = 0):
        self.filename = filename
        self.issues = issues
        self.unlisted = unlisted  # further errors, only counted: 50,000 bad values are not 50,000 issues
        super().__init__(self.render())

    def render(self) -> str:
        """One line per issue, each of bounded length, at most MAX_ISSUES of them."""
        lines = []
        for issue in self.issues[:MAX_ISSUES]:
            where = f"{_clip(self.filename)}:{issue.line}" if issue.line else _clip(self.filename)
            field = f" {_clip(issue.path, 100)}:" if issue.path else ""
            lines.append(f"{where}:{field} {_clip(issue.message, 300)}")
        more = len(self.issues) + self.unlisted - min(len(self.issues), MAX_ISSUES)
        if more:
            lines.append(f"{_clip(self.filename)}: … and {more} more errors")
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
                k = _loc_key(key)
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


_KEYS = SafeConstructor()


def _loc_key(key: yaml.Node) -> Any:
    """A mapping key as pydantic names it in an error location: a str or int as it is, anything else
    by its repr (``5: x`` is at ``(5,)``, ``yes: x`` at ``(1,)``, ``1.5: x`` at ``('1.5',)``)."""
    if key.tag == "tag:yaml.org,2002:str" or not isinstance(key, yaml.ScalarNode):
        return key.value
    construct = SafeConstructor.yaml_constructors.get(key.tag)
    try:
        value = construct(_KEYS, key) if construct else key.value
    except Exception:  # it was constructed once already; this is only for the line number
        return key.value
    return value if isinstance(value, str) else int(value) if isinstance(value, int) else repr(value)


try:  # libyaml's parser (C) under PyYAML's composer (Python), which the hooks below need
    from yaml._yaml import CParser as _Parser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser as _Parser  # type: ignore[assignment]


class _UniqueKeyLoader(Composer, _Parser, SafeConstructor, Resolver):  # type: ignore[misc]
    """A safe loader hardened for files anyone may hand wanlb.

    Duplicate mapping keys are errors (not "last one wins"); aliases are
    refused (an alias bomb expands a few hundred bytes into gigabytes);
    nesting deeper than :data:`MAX_DEPTH` and more than :data:`MAX_NODES`
    values are refused.  With the file size capped too, parse time and memory
    are bounded (see docs/reliability.md for the measured worst case).
    """

    def __init__(self, stream: str) -> None:
        _Parser.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not supported in a wanlb config", event.start_mark
            )
        self._depth += 1
        self._nodes += 1
        try:
            if self._nodes > MAX_NODES:
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_NODES} values", self.peek_event().start_mark
                )
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value, not a list or mapping", key_node.start_mark
            )
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {_clip(repr(key))} (first at line {seen[key]})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _clip(text: str, limit: int = 200) -> str:
    """Error text quotes user input: keep each quote short, on one line and free of terminal controls
    (a key like ``"x\nFILE:1: ..."`` must not forge a line of the report)."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _format_loc(loc: Iterable[Any]) -> str:
    return ".".join(str(p) for p in loc)


def _clean_loc(loc: tuple[Any, ...], error_type: str = "") -> tuple[Any, ...]:
    """Drop pydantic's union/function tags (``function-before[...]``, ``literal[...]``) from a location;
    the key an unknown-key error names is the user's own, whatever it looks like (``"a[0]": 1``)."""
    key = loc[-1:] if error_type in ("extra_forbidden", "invalid_key") else ()
    loc = loc[: len(loc) - len(key)]
    return (*(p for p in loc if not (isinstance(p, str) and ("[" in p or p in {"function-after"}))), *key)


def _pydantic_issues(err: ValidationError, lines: _LineMap) -> tuple[list[ConfigIssue], int]:
    """The first MAX_ISSUES issues, and how many more there are (counted, never built: up to 50,000)."""
    issues: dict[tuple[Any, ...], ConfigIssue] = {}
    # Without input, context and URL: each error dict is then a third of the size.
    errors = err.errors(include_url=False, include_context=False, include_input=False)
    locs = [_clean_loc(tuple(e["loc"]), e["type"]) for e in errors]
    seen: set[tuple[Any, ...]] = set()
    for e, loc in zip(errors, locs, strict=True):
        if e["type"] == "too_short" and any(other[: len(loc)] == loc and other != loc for other in locs):
            continue  # "isps: at least 1 item" only because an item was invalid: that item's error says why
        if loc in seen:
            continue  # a union (snat: literal | address) reports once per member; keep the first
        seen.add(loc)
        if len(issues) == MAX_ISSUES:
            continue
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required field is missing"
        msg = msg.removeprefix("Value error, ")
        issues[loc] = ConfigIssue(lines.line_for(loc), _format_loc(loc), msg)
    return list(issues.values()), len(seen) - len(issues)


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
    """Validate YAML text into a :class:`Config` or raise :class:`ConfigError` — for any text at all."""
    try:
        loader = _UniqueKeyLoader(text)
        try:
            root = loader.get_single_node()
            data = None if root is None else loader.construct_document(root)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark else None
        problem = _clip(str(getattr(exc, "problem", None) or exc))
        if isinstance(exc, yaml.reader.ReaderError):
            # A character YAML does not allow: no mark, only a byte offset into the text as UTF-8.
            line = text.encode("utf-8", "surrogatepass")[: exc.position].count(b"\n") + 1
            char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
            problem = f"unacceptable character {char}: {exc.reason}"
        if isinstance(exc, yaml.scanner.ScannerError | yaml.parser.ParserError | yaml.reader.ReaderError):
            problem = f"YAML syntax error: {problem}"
        raise ConfigError(filename, [ConfigIssue(line, "", problem)]) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # A value YAML recognises but Python cannot hold: a date like 2024-13-45, a 5,000-digit integer.
        raise ConfigError(filename, [ConfigIssue(None, "", f"unusable value: {_clip(str(exc))}")]) from None
    lines = _LineMap(root)
    del root  # the node tree (two marks a value) is not needed past here: free it for what validation builds
    if data is None:
        raise ConfigError(filename, [ConfigIssue(1, "", "the file is empty")])
    if not isinstance(data, dict):
        raise ConfigError(filename, [ConfigIssue(1, "", "the top level must be a mapping of keys")])
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(filename, *_pydantic_issues(exc, lines)) from None
    issues = _cross_checks(cfg, lines)
    if issues:
        raise ConfigError(filename, issues)
    return cfg


def read_bounded(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; OSError/ValueError otherwise.

    Opened non-blocking so a FIFO cannot hang the reader, checked to be a
    regular file (not a device, FIFO or directory), read with a hard cap.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise ValueError(f"larger than {limit // 1024} KiB")
    return b"".join(chunks)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; anything wrong with it, the file itself included, is a ConfigError."""
    filename = str(path)
    try:
        raw = read_bounded(path, MAX_CONFIG_BYTES)
    except OSError as exc:
        raise ConfigError(filename, [ConfigIssue(None, "", f"cannot read config: {exc.strerror}")]) from None
    except ValueError as exc:
        raise ConfigError(filename, [ConfigIssue(None, "", f"cannot use config: {exc}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(filename, [ConfigIssue(line, "", f"not UTF-8 text (byte {exc.start})")]) from None
    if "\0" in text:
        raise ConfigError(filename, [ConfigIssue(text[: text.index("\0")].count("\n") + 1, "", "NUL byte")])
    return parse_config(text, filename)
