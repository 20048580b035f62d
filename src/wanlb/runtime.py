"""Runtime state: what wanlb allocated and installed, kept in /run apart from the config.

The config says *what* the operator wants; this file says *which numbers* the
running system uses for it, so they survive reloads, restarts and ``kill -9``:

* each ISP's conntrack mark and routing table, allocated by ISP **name**, so
  adding, removing or reordering other ISPs never moves a live connection;
* marks of removed (or replaced) ISPs that may still be on conntrack entries:
  they are flushed and not handed out again until no entry carries them;
* what was installed: the route protocols wanlb tagged its rules and routes
  with, and the original value of every sysctl it changed.

:func:`allocate` is pure; :func:`load` and :func:`save` are the only I/O.  The
file is data, never instructions: it is read without following symlinks, from
a directory only root can write, bounded in size, and every field is checked
(a sysctl key must be one wanlb itself may write).
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wanlb.config import Config

VERSION = 1
MAX_STATE_BYTES = 1 << 20

_IFNAME = r"[A-Za-z0-9_.@:+-]{1,15}"
_SYSCTL_KEY_RE = re.compile(
    rf"net/ipv4/ip_forward|net/ipv4/conf/(?!\.{{1,2}}/)({_IFNAME})/(rp_filter|src_valid_mark)"
    rf"|net/ipv6/conf/all/forwarding|net/ipv6/conf/(?!\.{{1,2}}/)({_IFNAME})/accept_ra"
)
_ISP_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,14}")
_SYSCTL_VALUE_RE = re.compile(r"-?[0-9]{1,10}")


class StateError(Exception):
    """The state file cannot be trusted or written; the message says what to do."""


class AllocationRefused(Exception):
    """A config whose numbers would move live connections; the message is one sentence per reason."""


def mark_shift(mask: int) -> int:
    """Index of the lowest set bit: ISP number n is stored as ``n << shift``."""
    return (mask & -mask).bit_length() - 1


def sysctl_key_allowed(key: str) -> bool:
    """Whether ``key`` (relative to /proc/sys) is one of the sysctls wanlb may change."""
    return _SYSCTL_KEY_RE.fullmatch(key) is not None


@dataclass(frozen=True)
class Slot:
    """The numbers one ISP uses.  ``interface`` is recorded so a moved ISP is recognised."""

    mark: int
    table: int
    interface: str


@dataclass(frozen=True)
class Retired:
    """A mark no ISP uses any more; entries carrying it are flushed, then the mark is free again."""

    mark: int
    mask: int
    name: str


@dataclass(frozen=True)
class RuntimeState:
    mark_mask: int = 0
    table_base: int = 0
    isps: Mapping[str, Slot] = field(default_factory=dict)
    retired: tuple[Retired, ...] = ()
    protocols: tuple[int, ...] = ()
    sysctls: Mapping[str, str] = field(default_factory=dict)  # key -> original value

    def mark_of(self, name: str) -> int:
        return self.isps[name].mark

    def names_by_mark(self) -> dict[int, str]:
        return {slot.mark: name for name, slot in self.isps.items()}

    def with_protocol(self, protocol: int) -> RuntimeState:
        if protocol in self.protocols:
            return self
        return replace(self, protocols=(*self.protocols, protocol))

    def release(self, empty_marks: set[int]) -> RuntimeState:
        """Forget retired marks that no conntrack entry carries any more."""
        kept = tuple(r for r in self.retired if r.mark not in empty_marks)
        return self if kept == self.retired else replace(self, retired=kept)


@dataclass(frozen=True)
class Allocation:
    """The result of :func:`allocate`: the new state and what changed, for events and logs."""

    state: RuntimeState
    added: tuple[str, ...]
    removed: tuple[str, ...]  # names gone from the config: their connections are flushed
    replaced: tuple[str, ...]  # same name, other interface or explicit mark: flushed, new mark


def allocate(config: Config, previous: RuntimeState | None, reload: bool) -> Allocation:
    """Give every ISP of ``config`` a mark and a table, keeping those of ISPs that stay.

    Explicit ``mark:``/``table:`` win.  An ISP keeps its mark while its name and
    interface stay and no explicit mark says otherwise; a removed or replaced
    ISP's mark is retired (flushed, then reusable).  Tables only route, so an
    auto table may move (e.g. when ``table_base`` changes) without disturbing
    a connection.  Raises :class:`AllocationRefused` when keeping a promise is
    impossible: on ``reload`` a changed ``mark_mask``, an explicit mark that a
    staying ISP or an unflushed retired mark holds, or no free mark.
    """
    prev = previous or RuntimeState()
    mask = config.mark_mask
    shift = mark_shift(mask)
    capacity = mask >> shift
    base = config.routing.table_base
    reasons: list[str] = []
    retired = list(prev.retired)
    prev_isps = dict(prev.isps)
    if prev_isps and prev.mark_mask != mask:
        if reload:
            raise AllocationRefused(
                f"mark_mask cannot change from {prev.mark_mask:#x} to {mask:#x} by reload: every live "
                "connection would lose its ISP; restart wanlb to change it (connections are then flushed)"
            )
        retired += [Retired(s.mark, prev.mark_mask, n) for n, s in prev_isps.items()]
        prev_isps = {}

    names = {isp.name for isp in config.isps}
    removed = tuple(n for n in prev_isps if n not in names)
    replaced: list[str] = []
    kept: dict[str, int] = {}
    for isp in config.isps:
        old = prev_isps.get(isp.name)
        if old is None:
            continue
        if old.interface != isp.interface or (isp.mark is not None and isp.mark != old.mark):
            replaced.append(isp.name)
        else:
            kept[isp.name] = old.mark
    retired += [Retired(prev_isps[n].mark, mask, n) for n in (*removed, *replaced)]
    retired_marks = {r.mark for r in retired if r.mask == mask}

    explicit = {isp.name: isp.mark for isp in config.isps if isp.mark is not None}
    holders = {mark: name for name, mark in kept.items()}
    for name, mark in explicit.items():
        holder = holders.get(mark)
        if holder is not None and holder != name:
            reasons.append(
                f"ISP {name!r} asks for mark {mark:#x}, which {holder!r} has carried its live connections with; "
                f"give {name!r} another mark or remove the explicit one"
            )
        elif mark in retired_marks and kept.get(name) != mark:
            gone = next(r for r in retired if r.mark == mark)
            if gone in prev.retired:
                reasons.append(
                    f"ISP {name!r} asks for mark {mark:#x}, still on connections of the removed ISP {gone.name!r}; "
                    "they are being flushed: reload again in a few seconds"
                )
            else:
                reasons.append(
                    f"ISP {name!r} asks for mark {mark:#x}, the mark of {gone.name!r}, which this edit removes or "
                    f"replaces: its connections must be flushed first; apply the edit in two reloads"
                )
    if reasons:
        raise AllocationRefused("; ".join(reasons))

    used = set(explicit.values()) | set(kept.values()) | retired_marks

    def free(mark: int) -> bool:
        # A retired mark under another (older) mask still matches every mark that agrees on its bits.
        return mark not in used and not any(mark & r.mask == r.mark for r in retired)

    marks: dict[str, int] = {}
    added: list[str] = []
    for isp in config.isps:
        if isp.name in explicit:
            marks[isp.name] = explicit[isp.name]
        elif isp.name in kept:
            marks[isp.name] = kept[isp.name]
        else:
            index = next((n for n in range(1, capacity + 1) if free(n << shift)), None)
            if index is None:
                raise AllocationRefused(
                    f"no free mark in mark_mask {mask:#x} for ISP {isp.name!r} "
                    f"({len(retired_marks)} marks wait until their connections are flushed)"
                )
            marks[isp.name] = index << shift
            used.add(marks[isp.name])
        if isp.name not in prev_isps or isp.name in replaced:
            added.append(isp.name)

    tables = _tables(config, prev if prev.table_base == base else RuntimeState(), base)
    isps = {isp.name: Slot(marks[isp.name], tables[isp.name], isp.interface) for isp in config.isps}
    state = replace(prev, mark_mask=mask, table_base=base, isps=isps, retired=tuple(retired))
    state = state.with_protocol(config.routing.protocol)
    return Allocation(state, tuple(added), removed, tuple(replaced))


def _tables(config: Config, prev: RuntimeState, base: int) -> dict[str, int]:
    explicit = {isp.name: isp.table for isp in config.isps if isp.table is not None}
    # The tables uplink clients write their default routes to (gateway_table) are never wanlb's.
    used = set(explicit.values()) | {253, 254, 255} | {i.gateway_table for i in config.isps if i.gateway_table}
    tables: dict[str, int] = dict(explicit)
    for isp in config.isps:
        old = prev.isps.get(isp.name)
        if isp.name not in tables and old is not None and old.table not in used:
            tables[isp.name] = old.table
            used.add(old.table)
    candidate = base + 1
    for isp in config.isps:
        if isp.name in tables:
            continue
        while candidate in used:
            candidate += 1
        tables[isp.name] = candidate
        used.add(candidate)
    return tables


# --- the file ----------------------------------------------------------------------------------


def state_dir_problem(directory: Path) -> str | None:
    """Why ``directory`` is unfit for wanlb's state (someone other than root could write it), or None."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return None  # created by us, 0700
    except OSError as exc:
        return f"cannot inspect {directory}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{directory} is not a directory"
    if st.st_uid != 0 and os.geteuid() == 0:
        return f"{directory} is owned by uid {st.st_uid}, not root"
    if st.st_mode & 0o022:
        return f"{directory} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def load(path: Path) -> RuntimeState | None:
    """The state at ``path``, or None if there is none.  Raises :class:`StateError` if it is not trustworthy."""
    problem = state_dir_problem(path.parent)
    if problem:
        raise StateError(f"refusing to use runtime state in {path.parent}: {problem}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot open runtime state {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StateError(f"runtime state {path} is not a regular file")
        raw = os.read(fd, MAX_STATE_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_STATE_BYTES:
        raise StateError(f"runtime state {path} is larger than {MAX_STATE_BYTES} bytes")
    try:
        return parse(json.loads(raw))
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise StateError(f"runtime state {path} is invalid ({exc}); move it away to start afresh") from None


def _int(value: Any, low: int, high: int, what: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{what} must be an integer in {low}..{high}")
    return value


def parse(data: Any) -> RuntimeState:
    """Validate decoded JSON into a :class:`RuntimeState` (strictly: unknown shapes are errors)."""
    if not isinstance(data, dict):
        raise ValueError("top level must be an object")
    if "version" not in data:  # written by wanlb 0.1: only sysctl originals
        return RuntimeState(sysctls=_sysctls(data.get("sysctls", {})))
    _int(data["version"], VERSION, VERSION, "version")
    isps = {}
    for name, slot in _obj(data.get("isps", {}), "isps").items():
        if _ISP_NAME_RE.fullmatch(name) is None:
            raise ValueError(f"bad ISP name {name!r}")
        slot = _obj(slot, f"isps.{name}")
        interface = slot.get("interface")
        if not isinstance(interface, str) or re.fullmatch(_IFNAME, interface) is None:
            raise ValueError(f"isps.{name}.interface is not an interface name")
        isps[name] = Slot(
            _int(slot.get("mark"), 1, 0xFFFFFFFF, f"isps.{name}.mark"),
            _int(slot.get("table"), 1, 0xFFFFFFFF, f"isps.{name}.table"),
            interface,
        )
    retired = []
    for r in _list(data.get("retired", []), "retired"):
        r = _obj(r, "retired[]")
        name = r.get("name")
        if not isinstance(name, str) or _ISP_NAME_RE.fullmatch(name) is None:
            raise ValueError("retired[].name is not an ISP name")
        retired.append(
            Retired(
                _int(r.get("mark"), 1, 0xFFFFFFFF, "retired.mark"), _int(r.get("mask"), 1, 0xFFFFFFFF, "mask"), name
            )
        )
    protocols = tuple(_int(p, 5, 255, "protocols[]") for p in _list(data.get("protocols", []), "protocols"))
    mark_mask = _int(data.get("mark_mask", 0), 0, 0xFFFFFFFF, "mark_mask")
    marks = [slot.mark for slot in isps.values()]
    tables = [slot.table for slot in isps.values()]
    if len(set(marks)) != len(marks) or len(set(tables)) != len(tables):
        raise ValueError("two ISPs share a mark or a table")
    if isps and any(m & ~mark_mask or not m & mark_mask for m in marks):
        raise ValueError(f"an ISP mark lies outside mark_mask {mark_mask:#x}")
    return RuntimeState(
        mark_mask=mark_mask,
        table_base=_int(data.get("table_base", 0), 0, 0xFFFFFFFF, "table_base"),
        isps=isps,
        retired=tuple(retired),
        protocols=protocols,
        sysctls=_sysctls(data.get("sysctls", {})),
    )


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or len(value) > 1024:
        raise ValueError(f"{what} must be an object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list) or len(value) > 1024:
        raise ValueError(f"{what} must be a list")
    return value


def _sysctls(value: Any) -> dict[str, str]:
    out = {}
    for key, original in _obj(value, "sysctls").items():
        if not sysctl_key_allowed(key):
            raise ValueError(f"sysctl {key!r} is not one wanlb changes")
        if not isinstance(original, str) or _SYSCTL_VALUE_RE.fullmatch(original) is None:
            raise ValueError(f"sysctl {key!r} has a bad original value")
        out[key] = original
    return out


def to_json(state: RuntimeState) -> dict[str, Any]:
    return {
        "version": VERSION,
        "mark_mask": state.mark_mask,
        "table_base": state.table_base,
        "isps": {n: {"mark": s.mark, "table": s.table, "interface": s.interface} for n, s in state.isps.items()},
        "retired": [{"mark": r.mark, "mask": r.mask, "name": r.name} for r in state.retired],
        "protocols": list(state.protocols),
        "sysctls": dict(state.sysctls),
    }


def save(path: Path, state: RuntimeState) -> None:
    """Write atomically (temp file + rename), root-only, into a directory only root can write."""
    try:
        write_private(path, to_json(state))
    except PermissionError as exc:
        raise StateError(f"refusing to write runtime state in {path.parent}: {exc}") from None


def write_private(path: Path, data: Any, durable: bool = False) -> None:
    """``data`` as JSON, atomically (a temporary file, fsync, rename), root-only (0600), into a directory only
    root can write (PermissionError otherwise); ``durable``: the directory fsynced too, so the file outlives a
    power cut (the quota counts in /var/lib; /run does not outlive a boot anyway)."""
    if problem := state_dir_problem(path.parent):
        raise PermissionError(problem)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.write(fd, json.dumps(data, indent=1, sort_keys=True).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)


class StateStore:
    """The runtime state file and its in-memory copy; a change counts only once it is written.

    Two writers share the file: the :class:`~wanlb.fleet.Fleet` (allocations,
    from the event loop) and the reconciler (sysctl originals, from its worker
    thread).  Each replaces only its own part, under one lock.  ``path`` None
    keeps the state in memory only (unit tests).
    """

    def __init__(self, path: Path | None, state: RuntimeState):
        import threading

        self.path = path
        self._state = state
        self._lock = threading.Lock()

    @property
    def state(self) -> RuntimeState:
        return self._state

    def _write(self, state: RuntimeState) -> None:
        if self.path is not None:
            save(self.path, state)
        self._state = state

    def set_allocation(self, allocated: RuntimeState) -> None:
        with self._lock:
            protocols = tuple(dict.fromkeys((*self._state.protocols, *allocated.protocols)))
            self._write(replace(allocated, sysctls=self._state.sysctls, protocols=protocols))

    def set_sysctls(self, originals: Mapping[str, str]) -> None:
        with self._lock:
            self._write(replace(self._state, sysctls=dict(originals)))
