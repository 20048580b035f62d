"""pydantic's errors in a router's words: ``isps[fiber].weight: must be 1..1000, got 0``.

pydantic says "Input should be greater than or equal to 1" at ``('isps', 0, 'weight')``.  An operator wants
the ISP by its name, what is allowed and what was written, as VyOS' verify or netplan say it.  The schema
knows what is allowed (field types, bounds, keys), the parsed YAML what was written and what each item is
called; this module joins the two.  Pure: a location and the data in, text out.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import types
from collections import Counter
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel

from wanlb.config.errors import _clip
from wanlb.config.schema import (
    _ISP_NAME_RE,
    _RULE_NAME_RE,
    AnyNetwork,
    Config,
    Days,
    Domain,
    Dscp,
    HookPath,
    IfName,
    IspConfig,
    Listen,
    Mac,
    Port,
    RuleConfig,
    Target,
)

_MISSING = object()
_NAMES = {IspConfig: _ISP_NAME_RE, RuleConfig: _RULE_NAME_RE}  # items named by their (valid) name
_PLURAL = {  # what a list of these holds, for "expected a list of …"
    IfName: "interface names",
    AnyNetwork: "networks (like 10.0.0.0/24 or fd00::/64)",
    Target: "addresses (or gateway, gateway6)",
    HookPath: "absolute paths",
    Listen: "ADDRESS:PORT values",
    Port: "ports or port ranges",
    Dscp: "DSCP values",
    Domain: "domain names",
    Days: "days (mon, tue, …, sun) or ranges of days (mon-fri)",
    Mac: "MAC addresses (like aa:bb:cc:dd:ee:ff)",
    ipaddress.IPv4Address: "IPv4 addresses",
    ipaddress.IPv6Address: "IPv6 addresses",
    ipaddress.IPv6Network: "IPv6 networks (like fd00::/64)",
}
_SINGULAR = {
    ipaddress.IPv4Address: "an IPv4 address",
    ipaddress.IPv6Address: "an IPv6 address",
    ipaddress.IPv4Network: "an IPv4 network",
    ipaddress.IPv6Network: "an IPv6 network",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    str: "text",
}
_ADDRESS_KINDS = {
    "ip_v4_address": ("an IPv4 address", "192.0.2.1"),
    "ip_v6_address": ("an IPv6 address", "2001:db8::1"),
    "ip_v4_network": ("an IPv4 network", "10.0.0.0/24"),
    "ip_v6_network": ("an IPv6 network", "fd00::/64"),
    "ip_v4_interface": ("an IPv4 address with its prefix length", "192.0.2.1/24"),
    "ip_v6_interface": ("an IPv6 address with its prefix length", "2001:db8::1/64"),
}


# --- the schema along a location ----------------------------------------------------------------------


def _members(tp: Any) -> tuple[Any, ...]:
    """A union's members (``X | None`` is ``(X,)``), anything else as itself; Annotated unwrapped."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, types.UnionType):
        return tuple(m for a in get_args(tp) for m in _members(a) if m is not type(None))
    return (tp,)


def _container(tp: Any) -> tuple[str, Any]:
    """What ``tp`` holds: ``("model", cls)``, ``("list", item)``, ``("dict", value)`` or ``("value", tp)``."""
    for member in _members(tp):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return "model", member
        if get_origin(member) in (tuple, list):
            return "list", get_args(member)[0]
        if get_origin(member) is dict:
            return "dict", get_args(member)[1]
    return "value", tp


def _field(loc: Sequence[Any]) -> tuple[Any, Any]:
    """The annotation and the FieldInfo (None for a list item or a dict value) at ``loc``; (None, None)
    where the schema has no such place (an unknown key)."""
    tp: Any = Config
    info = None
    for seg in loc:
        kind, inner = _container(tp)
        if kind == "model":
            info = inner.model_fields.get(seg) if isinstance(seg, str) else None
            if info is None:
                return None, None
            tp = info.annotation
        elif kind in ("list", "dict"):
            tp, info = inner, None
        else:
            return None, None
    return tp, info


def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    tp, _ = _field(loc)
    kind, inner = _container(tp) if tp is not None else ("value", None)
    return inner if kind == "model" else None


def _value_at(data: Any, loc: Sequence[Any]) -> Any:
    for seg in loc:
        there = seg in data if isinstance(data, dict) else isinstance(data, list) and type(seg) is int
        if not there or (isinstance(data, list) and not 0 <= seg < len(data)):
            return _MISSING
        data = data[seg]
    return data


# --- where: isps[fiber].health.targets[2] ---------------------------------------------------------------


class Paths:
    """Locations as an operator reads them: list items by their ``name`` when they have one (unique among
    their siblings), else by their position counting from 1; a dict's entries (policies) by their key."""

    def __init__(self, data: Any):
        self.data = data
        self._names: dict[int, Counter[str]] = {}  # id(list) -> how often each item name occurs in it
        self.keys_listed: set[type[BaseModel]] = set()  # sections whose keys a report listed already: once is enough

    def path(self, loc: Sequence[Any]) -> str:
        out = ""
        for end, seg in enumerate(loc):
            tp, _ = _field(loc[:end])
            kind, inner = _container(tp) if tp is not None else ("value", None)
            if kind == "list" and isinstance(seg, int):
                out += f"[{self._item_label(_value_at(self.data, loc[:end]), seg, _NAMES.get(inner))}]"
            elif kind == "dict":
                out += f"[{seg}]"
            else:
                out += f"{'.' if out else ''}{seg}"
        return out

    def _item_label(self, items: Any, index: int, valid: re.Pattern[str] | None) -> str:
        item = items[index] if isinstance(items, list) and 0 <= index < len(items) else None
        name = item.get("name") if isinstance(item, dict) else None
        if valid is not None and isinstance(name, str) and valid.fullmatch(name):
            if id(items) not in self._names:  # counted once per list: 10,000 rules, 10,000 issues
                self._names[id(items)] = Counter(i["name"] for i in items if isinstance(i, dict) and _is_str(i, "name"))
            if self._names[id(items)][name] == 1:
                return name
        return str(index + 1)


def _is_str(item: dict[Any, Any], key: str) -> bool:
    return isinstance(item.get(key), str)


# --- what: must be 1..1000, got 0 -------------------------------------------------------------------------


def shown(value: Any) -> str:
    """A written value as YAML shows it, clipped: ``true``, ``'three'``, ``a mapping``, ``nothing``."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return _clip(repr(value) if isinstance(value, str | bytes) else str(value), 40)


def _bounds(info: Any) -> str:
    """``1..1000``, ``at least 1``, ``at most 100`` or ``""``, from the field's Ge/Le metadata."""
    lo = hi = None
    for m in getattr(info, "metadata", ()):
        if isinstance(m, annotated_types.Ge | annotated_types.Gt):
            lo = m.ge if isinstance(m, annotated_types.Ge) else m.gt
        elif isinstance(m, annotated_types.Le | annotated_types.Lt):
            hi = m.le if isinstance(m, annotated_types.Le) else m.lt
    if lo is not None and hi is not None:
        return f"{lo}..{hi}"
    return f"at least {lo}" if lo is not None else f"at most {hi}" if hi is not None else ""


def _keys(model: type[BaseModel]) -> str:
    names = list(model.model_fields)
    return ", ".join(names[:12]) + (", …" if len(names) > 12 else "")


def allowed(tp: Any) -> str:
    """What a value of ``tp`` may be, for people: ``masquerade, none or an IPv4 address``."""
    words: list[str] = []
    for member in _members(tp):
        if get_origin(member) is Literal:
            words += [str(a) for a in get_args(member)]
        elif isinstance(member, type) and issubclass(member, BaseModel):
            words.append(f"a mapping (keys: {_keys(member)})")
        elif get_origin(member) in (tuple, list):
            words.append(f"a list of {plural(get_args(member)[0])}")
        else:
            words.append(_SINGULAR.get(member, getattr(member, "__name__", "a value")))
    if len(words) < 2:
        return words[0] if words else "a value"
    return ", ".join(words[:-1]) + " or " + words[-1]


def plural(tp: Any) -> str:
    """What a list of ``tp`` holds, for people: ``interface names``."""
    known = next((words for known, words in _PLURAL.items() if known == tp), None)  # (== only: not all hash)
    if known is not None:
        return known
    members = _members(tp)
    if len(members) == 1 and isinstance(members[0], type) and issubclass(members[0], BaseModel):
        return f"mappings (keys: {_keys(members[0])})"
    if set(members) == {ipaddress.IPv4Address, ipaddress.IPv6Address}:
        return "IPv4 or IPv6 addresses"
    return f"values ({allowed(tp)})"


def explain(kinds: Sequence[str], msg: str, loc: Sequence[Any], paths: Paths) -> str:
    """One location's error(s) — several when a union's members each failed — as an operator reads them."""
    kind = kinds[0]
    tp, info = _field(loc)
    value = _value_at(paths.data, loc)
    got = f", got {shown(value)}" if value is not _MISSING else ""
    bounds = _bounds(info)
    if kind == "extra_forbidden" or kind == "invalid_key":
        return _unknown_key(loc, paths.keys_listed)
    if kind == "missing":
        return _missing(loc, paths.data)
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than") and bounds:
        return f"must be {bounds}{got}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number{' ' + bounds if bounds else ''}{got}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number{' ' + bounds if bounds else ''}{got}"
    if kind == "finite_number":
        return f"must be a finite number{got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false{got}"
    if kind in ("string_type", "bytes_type"):
        return f"expected text{got}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        model = _model_at(loc)
        keys = f" (keys: {_keys(model)})" if model is not None else ""
        return f"expected a mapping{keys}{got}"
    if kind in ("tuple_type", "list_type"):
        return f"expected a list of {plural(_container(tp)[1])}{got}" if tp is not None else f"expected a list{got}"
    if kind == "too_short":
        return f"needs at least {_min_items(info)}" + (", got none" if value == [] else "")
    if tp is not None and (kind == "literal_error" or len(kinds) > 1):  # several: each member of a union failed
        return f"must be {allowed(tp)}{got}"
    if kind in _ADDRESS_KINDS:
        noun, example = _ADDRESS_KINDS[kind]
        return f"{shown(value) if got else 'this'} is not {noun} (like {example}){_host_bits(value)}"
    return msg.removeprefix("Value error, ")


def _min_items(info: Any) -> str:
    n = next((m.min_length for m in getattr(info, "metadata", ()) if isinstance(m, annotated_types.MinLen)), 1)
    return f"{n} item" if n == 1 else f"{n} items"


def _host_bits(value: Any) -> str:
    if isinstance(value, str):
        try:
            network = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            return ""
        if str(network) != value.strip():
            return f": it has host bits set, the network is {network}"
    return ""


def _unknown_key(loc: Sequence[Any], listed: set[type[BaseModel]]) -> str:
    """``unknown key (did you mean health?)``: the closest of the keys this section allows, or those keys
    (once a report: 20 unknown keys of one section need not list its keys 20 times)."""
    model = _model_at(loc[:-1])
    key = loc[-1]
    fits = model is not None and isinstance(key, str)
    close = difflib.get_close_matches(key, list(model.model_fields), n=1, cutoff=0.6) if fits else []  # type: ignore[union-attr]
    if close:
        return f"unknown key (did you mean {close[0]}?)"
    text = "unknown key" if isinstance(key, str) else f"unknown key: keys are names, not {shown(key)}"
    if model is None or model in listed:
        return text
    listed.add(model)
    return f"{text}; allowed here: {_keys(model)}"


def _missing(loc: Sequence[Any], data: Any) -> str:
    """``required field is missing``, and which unknown key beside it is probably that field misspelt."""
    beside = _value_at(data, loc[:-1])
    model = _model_at(loc[:-1])
    if isinstance(beside, dict) and model is not None and isinstance(loc[-1], str):
        strays = [k for k in beside if isinstance(k, str) and k not in model.model_fields]
        close = difflib.get_close_matches(loc[-1], strays, n=1, cutoff=0.6)
        if close:
            return f"required field is missing (is {_clip(close[0], 40)} meant to be {loc[-1]}?)"
    return "required field is missing"


def default_of(loc: Sequence[Any]) -> tuple[Any, ...] | None:
    """The mapping key to leave out so that the error at ``loc`` goes (the value falls back to the schema's
    default, an unknown key goes away): the deepest one on ``loc`` that has a default; None if there is none
    (a required field, a list item)."""
    for end in range(len(loc), 0, -1):
        model = _model_at(loc[: end - 1])
        if model is None:
            continue
        info = model.model_fields.get(loc[end - 1]) if isinstance(loc[end - 1], str) else None
        if info is None or not info.is_required():
            return tuple(loc[:end])
    return None
