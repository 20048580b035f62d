"""The read model: its JSON round-trips, every field is documented, nobody reads the status by its keys,
and the import graph has no circles (the shell's layering)."""

from __future__ import annotations

import ast
import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from test_daemon_fake import CONFIG, Harness, run, settle

from wanlb import view
from wanlb.commands import Disable
from wanlb.daemon.surface import Surface
from wanlb.top import IspRates, Rates

SRC = Path(__file__).resolve().parents[2] / "src" / "wanlb"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> view.Status:
    rules = "rules:\n  - {name: pin, src: [192.168.77.11], via: b}\n"
    h = Harness(tmp_path, monkeypatch, CONFIG + rules)
    out: list[view.Status] = []

    async def test() -> None:
        d = h.build()
        await d.reconcile("start")
        d.monitors.start(d.config, d.fleet)
        await d.admin(Disable("a"))
        await d.reload()
        await settle(d)
        surface = Surface(d)
        out.append(surface.snapshot(await surface.read_counters()))
        d.monitors.stop()

    run(test)
    return out[0]


def test_the_json_reads_back_into_the_same_view(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    status = _built(tmp_path, monkeypatch)
    assert status.events and status.rules and status.last_reload is not None
    wire = view.to_json(status)
    assert view.from_json(view.Status, wire) == status
    assert wire["events"][0]["from"] == "up" and "from_" not in wire["events"][0]  # the wire's own names
    assert wire["isps"][2]["health"] == {"monitored": False}  # nothing else for an ISP nobody probes
    assert view.from_json(view.Status, {"isps": [{"name": "x"}], "unknown": 1}).isps[0].weight == 1  # an older daemon


# --- every field documented -----------------------------------------------------------------------------------

PLACEHOLDERS = {"domains": "<name>"}  # maps whose keys are names: documented as `path.<placeholder>.field`
WHOLE = {"domains.<name>.ipv6", "isps[].ipv6"}  # objects documented in one row, fields and all


def _schema_paths(cls: type, prefix: str = "") -> set[str]:
    out: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.metadata.get('json', f.name)}" if prefix else f.metadata.get("json", f.name)
        out.add(path)
        if path in WHOLE:
            continue
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if dataclasses.is_dataclass(tp):
            out |= _schema_paths(tp, path)
        elif typing.get_origin(tp) is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            out |= _schema_paths(typing.get_args(tp)[0], f"{path}[]")
        elif typing.get_origin(tp) in (Mapping, dict) and dataclasses.is_dataclass(typing.get_args(tp)[1]):
            out |= _schema_paths(typing.get_args(tp)[1], f"{path}.{PLACEHOLDERS[path]}")
    return out


def _json_paths(value: Any, prefix: str) -> set[str]:
    """``rates``' documented paths: its maps by ISP and by rule are documented as the map (and, per ISP,
    its fields under ``<isp>``)."""
    if not isinstance(value, dict) or prefix == "rates.rules":
        return set()
    if prefix == "rates.isps":
        return set().union(*(_json_paths(v, f"{prefix}.<isp>") for v in value.values()))
    return set().union(*({f"{prefix}.{k}"} | _json_paths(v, f"{prefix}.{k}") for k, v in value.items()))


def test_every_field_of_the_status_json_is_documented() -> None:
    rates = Rates(1.0, {"a": IspRates(1.0, 1.0, 1.0)}, {"pin": 1.0}).json()
    sent = _schema_paths(view.Status) | {"rates"} | _json_paths(rates, "rates")
    section = DOCS.read_text().split("## Status JSON")[1].split("\n## ")[0]
    documented = {m.group(1) for m in re.finditer(r"^\| `([^`]+)` \|", section, re.M)}
    assert sent - documented == set(), "fields the daemon sends that docs/operations.md does not describe"
    assert documented - sent == set(), "docs/operations.md describes fields the daemon does not send"


# --- nobody reads the status by its keys ---------------------------------------------------------------------

CONSUMERS = ("cli.py", "top.py", "api.py", "metrics.py", "demo.py", "lab/gateway.py", "history.py", "daemon/surface.py",
             "quota_cli.py")  # fmt: skip
# Keys of the command replies and of other JSON the consumers handle: not the status structure's.
NOT_STATUS = {"ok", "error", "message", "cmd", "name", "time", "family", "counter", "packets", "bytes", "config",
              "timeout", "isp", "connections", "counts", "sources", "failed", "src", "result"}  # fmt: skip


def _status_keys(cls: type = view.Status) -> set[str]:
    keys: set[str] = set()
    for f in dataclasses.fields(cls):
        keys.add(f.metadata.get("json", f.name))
    for tp in typing.get_type_hints(cls).values():
        for arg in (tp, *typing.get_args(tp), *(a for t in typing.get_args(tp) for a in typing.get_args(t))):
            if dataclasses.is_dataclass(arg) and arg is not cls:
                keys |= _status_keys(arg)
    return keys


def test_no_consumer_reads_the_status_structure_by_its_keys() -> None:
    keys = _status_keys() - NOT_STATUS
    found = []
    for name in CONSUMERS:
        tree = ast.parse((SRC / name).read_text())
        for node in ast.walk(tree):
            key = None
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                key = node.slice.value
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                  and node.args and isinstance(node.args[0], ast.Constant)):  # fmt: skip
                key = node.args[0].value
            if isinstance(key, str) and key in keys:
                found.append(f"{name}:{node.lineno}: [{key!r}]")
    assert found == [], "read the view's attributes instead (wanlb.view)"


# --- layering ------------------------------------------------------------------------------------------------


def _imports() -> dict[str, set[str]]:
    """Module → the wanlb modules it imports at run time (not under TYPE_CHECKING), functions' imports too."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        module = "wanlb." + ".".join(path.relative_to(SRC).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}  # fmt: skip
        deps = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("wanlb"):
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("wanlb")}
        graph[module] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_the_import_graph_has_no_circles_and_nothing_below_the_daemon_imports_it() -> None:
    graph = _imports()

    def circle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for dep in graph[node]:
                if dep == start:
                    return [*path, start]
                if dep not in path and len(path) < 12:
                    stack.append((dep, [*path, dep]))
        return None

    # A package imports its own modules (wanlb.daemon → wanlb.daemon.executor): not a circle of the layers.
    for module in graph:
        graph[module] = {d for d in graph[module] if not d.startswith(module + ".")}
    circles = [c for m in sorted(graph) if (c := circle_from(m))]
    assert circles == []
    above = {"wanlb.cli", "wanlb.daemon", "wanlb.daemon.main", "wanlb.daemon.surface", "wanlb.daemon.executor"}
    below = [m for m, deps in graph.items() if m not in above and any(d.startswith("wanlb.daemon") for d in deps)]
    assert below == []


def test_the_executor_stays_small() -> None:
    """The daemon's executor carries out effects and nothing else; past 400 lines something else moved in."""
    executor = Path(view.__file__).parent / "daemon" / "executor.py"
    assert len(executor.read_text().splitlines()) <= 400
