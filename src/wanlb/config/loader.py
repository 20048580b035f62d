"""YAML in, a validated :class:`~wanlb.config.schema.Config` out, for any bytes at all.

The file is read bounded (a regular file of at most :data:`MAX_CONFIG_BYTES`), parsed by a safe loader
hardened for hostile input (no aliases, no duplicate keys, bounded depth and size), validated per field
by pydantic and then across fields (:mod:`wanlb.config.checks`); every error names its line.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from wanlb.config.checks import _cross_checks
from wanlb.config.errors import MAX_ISSUES, ConfigError, ConfigIssue, _clip
from wanlb.config.explain import Paths, default_of, explain
from wanlb.config.schema import Config

MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 50
MAX_NODES = 50_000


# --- YAML with line numbers -------------------------------------------------


class _LineMap:
    """Maps a path of keys/indexes to the 1-based line where that node starts, and to the path an operator
    reads (``isps[fiber].weight``: :class:`~wanlb.config.explain.Paths`)."""

    def __init__(self, root: yaml.Node | None, data: Any = None):
        self.lines: dict[tuple[Any, ...], int] = {}
        self.key_lines: dict[tuple[Any, ...], int] = {}
        self.paths = Paths(data)
        if root is not None:
            self._walk(root, ())

    def path(self, loc: Iterable[Any]) -> str:
        return self.paths.path(tuple(loc))

    def issue(self, loc: Iterable[Any], message: str) -> ConfigIssue:
        """An issue at ``loc``: its line, its path as an operator reads it, the message."""
        loc = tuple(loc)
        return ConfigIssue(self.line_for(loc), self.paths.path(loc), message)

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


def _clean_loc(loc: tuple[Any, ...], error_type: str = "") -> tuple[Any, ...]:
    """Drop pydantic's union/function tags (``function-before[...]``, ``literal[...]``) from a location;
    the key an unknown-key error names is the user's own, whatever it looks like (``"a[0]": 1``)."""
    key = loc[-1:] if error_type in ("extra_forbidden", "invalid_key") else ()
    loc = loc[: len(loc) - len(key)]
    return (*(p for p in loc if not (isinstance(p, str) and ("[" in p or p in {"function-after"}))), *key)


def _pydantic_issues(err: ValidationError, lines: _LineMap) -> tuple[list[ConfigIssue], int]:
    """The first MAX_ISSUES issues, and how many more there are (counted, never built: up to 50,000)."""
    kinds: dict[tuple[Any, ...], list[str]] = {}  # a union fails once per member: one issue, all the kinds
    messages: dict[tuple[Any, ...], str] = {}
    # Without input, context and URL: each error dict is then a third of the size.
    errors = err.errors(include_url=False, include_context=False, include_input=False)
    locs = [_clean_loc(tuple(e["loc"]), e["type"]) for e in errors]
    seen: set[tuple[Any, ...]] = set()
    for e, loc in zip(errors, locs, strict=True):
        if e["type"] == "too_short" and any(other[: len(loc)] == loc and other != loc for other in locs):
            continue  # "isps: at least 1 item" only because an item was invalid: that item's error says why
        if loc in kinds:
            kinds[loc].append(e["type"])
        elif loc not in seen and len(kinds) < MAX_ISSUES:
            kinds[loc], messages[loc] = [e["type"]], e["msg"]
        seen.add(loc)
    issues = [lines.issue(loc, explain(kinds[loc], messages[loc], loc, lines.paths)) for loc in kinds]
    return issues, len(seen) - len(issues)


def _checks_despite(err: ValidationError, data: dict[Any, Any], lines: _LineMap) -> list[ConfigIssue]:
    """The checks across the file, run although some fields are invalid: on the file with each invalid value
    left out where the schema has a default for it, so a LAN interface used as a WAN is said together with a
    bad weight, not once the weight is fixed.  None where a required value is invalid (an ISP without a
    usable name or interface: checks on what is left would speak of ISPs that are not there), nor past
    MAX_ISSUES field errors.  The checks are told what was left out, so as not to judge by defaults the user
    never wrote (marks against the default mask)."""
    left_out: set[tuple[Any, ...]] = set()
    for _ in range(3):  # leaving a value out can fail what depended on it (a tcp probe without its port)
        if err.error_count() > MAX_ISSUES:
            return []
        cuts = {default_of(_clean_loc(tuple(e["loc"]), e["type"])) for e in err.errors(include_url=False)}
        if None in cuts:
            return []
        left_out |= cuts  # type: ignore[arg-type]
        data = _without(data, cuts)  # type: ignore[arg-type]
        try:
            cfg = Config.model_validate(data)
        except ValidationError as exc:
            err = exc
            continue
        return _cross_checks(cfg, lines, frozenset(left_out))
    return []


def _without(node: Any, cuts: set[tuple[Any, ...]]) -> Any:
    """``node`` without the mapping keys at ``cuts``; only the containers on their way are copied."""
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for key in {cut[0] for cut in cuts}:
        below = {cut[1:] for cut in cuts if cut[0] == key}
        if () in below:
            out.pop(key, None)
        elif isinstance(out.get(key), list):
            items = list(out[key])
            for i in {c[0] for c in below if isinstance(c[0], int) and 0 <= c[0] < len(items)}:
                items[i] = _without(items[i], {c[1:] for c in below if c[0] == i})
            out[key] = items
        else:
            out[key] = _without(out.get(key), below)
    return out


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
    lines = _LineMap(root, data)
    del root  # the node tree (two marks a value) is not needed past here: free it for what validation builds
    if data is None:
        raise ConfigError(filename, [ConfigIssue(1, "", "the file is empty")])
    if not isinstance(data, dict):
        raise ConfigError(filename, [ConfigIssue(1, "", "the top level must be a mapping of keys")])
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        issues, unlisted = _pydantic_issues(exc, lines)
        issues += _checks_despite(exc, data, lines)
        raise ConfigError(filename, _in_file_order(issues), unlisted) from None
    issues = _cross_checks(cfg, lines)
    if issues:
        raise ConfigError(filename, _in_file_order(issues))
    return cfg


def _in_file_order(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    """Read top to bottom, like the file (errors without a line first)."""
    return sorted(issues, key=lambda i: i.line or 0)


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
