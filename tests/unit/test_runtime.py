"""Runtime state: marks and tables allocated by ISP name, and the state file that keeps them (no root needed)."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wanlb import runtime
from wanlb.config import Config, parse_config
from wanlb.runtime import AllocationRefused, Retired, RuntimeState, Slot, StateError, StateStore, allocate


def config(*isps: str, mask: int = 0xFF00, extra: str = "") -> Config:
    """``config("a:wan1", "b:wan2:0x500")``: ISPs as name:interface[:explicit mark]."""
    rows = []
    for spec in isps:
        name, interface, *mark = spec.split(":")
        explicit = f", mark: {mark[0]}" if mark else ""
        rows.append(f"  - {{name: {name}, interface: {interface}, gateway: 100.64.0.1{explicit}}}\n")
    return parse_config(f"lan: {{interfaces: [lan0]}}\nmark_mask: {mask:#x}\nisps:\n{''.join(rows)}{extra}")


def marks(state: RuntimeState) -> dict[str, int]:
    return {name: slot.mark for name, slot in state.isps.items()}


def tables(state: RuntimeState) -> dict[str, int]:
    return {name: slot.table for name, slot in state.isps.items()}


def start(*isps: str, **kwargs: object) -> RuntimeState:
    return allocate(config(*isps, **kwargs), None, reload=False).state  # type: ignore[arg-type]


# --- allocation: a staying ISP keeps its numbers --------------------------------------------------------


def test_first_allocation_numbers_isps_in_config_order() -> None:
    a = allocate(config("fiber:wan1", "lte:wan2"), None, reload=False)
    assert [(n, s.mark, s.table) for n, s in a.state.isps.items()] == [("fiber", 0x100, 201), ("lte", 0x200, 202)]
    assert (a.added, a.removed, a.replaced) == (("fiber", "lte"), (), ())
    assert (a.state.mark_mask, a.state.table_base, a.state.protocols, a.state.retired) == (0xFF00, 200, (119,), ())


def test_removing_the_first_isp_moves_nobody() -> None:
    prev = start("a:wan1", "b:wan2", "c:wan3")
    a = allocate(config("b:wan2", "c:wan3"), prev, reload=True)
    assert marks(a.state) == {"b": 0x200, "c": 0x300}
    assert tables(a.state) == {"b": 202, "c": 203}
    assert (a.added, a.removed, a.replaced) == ((), ("a",), ())
    assert a.state.retired == (Retired(0x100, 0xFF00, "a"),)


def test_inserting_an_isp_at_the_top_moves_nobody() -> None:
    prev = start("a:wan1", "b:wan2")
    a = allocate(config("z:wan9", "a:wan1", "b:wan2"), prev, reload=True)
    assert marks(a.state) == {"z": 0x300, "a": 0x100, "b": 0x200}
    assert tables(a.state) == {"z": 203, "a": 201, "b": 202}
    assert a.added == ("z",) and a.removed == a.replaced == ()


def test_reversing_the_order_moves_nobody() -> None:
    prev = start("a:wan1", "b:wan2", "c:wan3")
    a = allocate(config("c:wan3", "b:wan2", "a:wan1"), prev, reload=True)
    assert a.state.isps == prev.isps and a.added == a.removed == a.replaced == ()


def test_renaming_retires_the_old_mark_until_it_is_released() -> None:
    prev = start("a:wan1", "b:wan2")
    a = allocate(config("a:wan1", "bee:wan2"), prev, reload=True)
    assert marks(a.state) == {"a": 0x100, "bee": 0x300}  # not b's 0x200: b's connections still carry it
    assert (a.added, a.removed) == (("bee",), ("b",))
    assert a.state.retired == (Retired(0x200, 0xFF00, "b"),)
    more = allocate(config("a:wan1", "bee:wan2", "c:wan3"), a.state, reload=True)
    assert marks(more.state)["c"] == 0x400  # still not 0x200
    released = more.state.release({0x200})
    assert released.retired == ()
    again = allocate(config("a:wan1", "bee:wan2", "c:wan3", "d:wan4"), released, reload=True)
    assert marks(again.state)["d"] == 0x200  # free again once no entry carries it


def test_an_interface_change_is_a_new_uplink() -> None:
    prev = start("a:wan1", "b:wan2")
    a = allocate(config("a:wan1", "b:ppp0"), prev, reload=True)
    assert a.replaced == ("b",) and a.added == ("b",) and a.removed == ()
    assert marks(a.state) == {"a": 0x100, "b": 0x300}
    assert a.state.isps["b"].interface == "ppp0"
    assert a.state.retired == (Retired(0x200, 0xFF00, "b"),)


def test_explicit_marks_win_and_auto_marks_avoid_them() -> None:
    a = allocate(config("a:wan1", "b:wan2:0x100", "c:wan3"), None, reload=False)
    assert marks(a.state) == {"a": 0x200, "b": 0x100, "c": 0x300}


def test_explicit_tables_win_and_auto_tables_avoid_them() -> None:
    text = "lan: {interfaces: [lan0]}\nisps:\n"
    text += "  - {name: a, interface: wan1, gateway: 100.64.0.1}\n"
    text += "  - {name: b, interface: wan2, gateway: 100.64.0.1, table: 201}\n"
    a = allocate(parse_config(text), None, reload=False)
    assert tables(a.state) == {"a": 202, "b": 201}


def test_an_explicit_mark_equal_to_the_current_one_keeps_the_isp() -> None:
    prev = start("a:wan1", "b:wan2")
    a = allocate(config("a:wan1", "b:wan2:0x200"), prev, reload=True)
    assert a.state.isps == prev.isps and a.replaced == ()


def test_a_new_explicit_mark_replaces_the_isp() -> None:
    prev = start("a:wan1", "b:wan2")
    a = allocate(config("a:wan1", "b:wan2:0x700"), prev, reload=True)
    assert marks(a.state) == {"a": 0x100, "b": 0x700} and a.replaced == ("b",)
    assert a.state.retired == (Retired(0x200, 0xFF00, "b"),)


def test_an_explicit_mark_a_staying_isp_holds_is_refused() -> None:
    prev = start("a:wan1", "b:wan2")
    with pytest.raises(AllocationRefused) as info:
        allocate(config("a:wan1", "b:wan2:0x100"), prev, reload=True)
    assert str(info.value) == (
        "ISP 'b' asks for mark 0x100, which 'a' has carried its live connections with; "
        "give 'b' another mark or remove the explicit one"
    )


def test_an_explicit_mark_still_on_a_removed_isps_connections_is_refused() -> None:
    prev = allocate(config("a:wan1"), start("a:wan1", "b:wan2"), reload=True).state
    with pytest.raises(AllocationRefused, match=r"^ISP 'c' asks for mark 0x200, still on connections of the removed "
                       r"ISP 'b'; they are being flushed: reload again in a few seconds$"):  # fmt: skip
        allocate(config("a:wan1", "c:wan3:0x200"), prev, reload=True)
    after_flush = allocate(config("a:wan1", "c:wan3:0x200"), prev.release({0x200}), reload=True)
    assert marks(after_flush.state) == {"a": 0x100, "c": 0x200}


def test_every_reason_is_reported_in_one_refusal() -> None:
    prev = start("a:wan1", "b:wan2", "c:wan3")
    with pytest.raises(AllocationRefused) as info:
        allocate(config("a:wan1:0x200", "b:wan2:0x100", "c:wan3"), prev, reload=True)
    assert str(info.value).count("asks for mark") == 2


def test_mark_mask_change_is_refused_by_reload() -> None:
    prev = start("a:wan1", "b:wan2")
    with pytest.raises(AllocationRefused, match=r"mark_mask cannot change from 0xff00 to 0xff0000 by reload"):
        allocate(config("a:wan1", "b:wan2", mask=0xFF0000), prev, reload=True)


def test_mark_mask_change_at_start_retires_every_old_mark() -> None:
    prev = start("a:wan1", "b:wan2")
    a = allocate(config("a:wan1", "b:wan2", mask=0xFF0000), prev, reload=False)
    assert marks(a.state) == {"a": 0x10000, "b": 0x20000}
    assert set(a.state.retired) == {Retired(0x100, 0xFF00, "a"), Retired(0x200, 0xFF00, "b")}
    assert a.state.mark_mask == 0xFF0000 and set(a.added) == {"a", "b"}


def test_no_free_mark_is_refused() -> None:
    prev = start("a:wan1", "b:wan2", "c:wan3", mask=0x3)
    with pytest.raises(AllocationRefused, match=r"no free mark in mark_mask 0x3 for ISP 'd' \(1 marks wait"):
        allocate(config("a:wan1", "b:wan2", "d:wan4", mask=0x3), prev, reload=True)
    c_flushed = allocate(config("a:wan1", "b:wan2", mask=0x3), prev, reload=True).state.release({0x3})
    a = allocate(config("a:wan1", "b:wan2", "d:wan4", mask=0x3), c_flushed, reload=True)
    assert marks(a.state) == {"a": 1, "b": 2, "d": 3}


def test_table_base_change_moves_auto_tables_only() -> None:
    text = "lan: {interfaces: [lan0]}\nrouting: {table_base: BASE}\nisps:\n"
    text += "  - {name: a, interface: wan1, gateway: 100.64.0.1}\n"
    text += "  - {name: b, interface: wan2, gateway: 100.64.0.1, table: 50}\n"
    prev = allocate(parse_config(text.replace("BASE", "200")), None, reload=False).state
    a = allocate(parse_config(text.replace("BASE", "300")), prev, reload=True)
    assert tables(prev) == {"a": 201, "b": 50} and tables(a.state) == {"a": 301, "b": 50}
    assert marks(a.state) == marks(prev) and a.replaced == ()


def test_tables_skip_the_reserved_ones() -> None:
    text = "lan: {interfaces: [lan0]}\nrouting: {table_base: 252}\nisps:\n"
    text += "".join(f"  - {{name: i{n}, interface: wan{n}, gateway: 100.64.0.1}}\n" for n in range(3))
    assert sorted(tables(allocate(parse_config(text), None, reload=False).state).values()) == [256, 257, 258]


def test_every_protocol_used_is_remembered() -> None:
    prev = start("a:wan1")
    a = allocate(config("a:wan1", extra="routing: {protocol: 120}\n"), prev, reload=True)
    assert a.state.protocols == (119, 120)


# --- the property: edits of the ISP list never move an ISP that stays -------------------------------------

NAMES = [f"i{n}" for n in range(12)]
Edit = tuple[str, int, int]


@st.composite
def edits(draw: st.DrawFn) -> list[Edit]:
    kind = st.sampled_from(["add", "remove", "rename", "move", "reverse", "reinterface", "flushed"])
    return draw(st.lists(st.tuples(kind, st.integers(0, 99), st.integers(0, 99)), min_size=1, max_size=12))


def _apply(isps: list[tuple[str, str]], edit: Edit, fresh: list[int]) -> list[tuple[str, str]]:
    kind, x, y = edit
    isps = list(isps)
    unused = [n for n in NAMES if n not in {name for name, _ in isps}]
    if kind == "add" and unused and len(isps) < 8:
        fresh[0] += 1
        isps.insert(x % (len(isps) + 1), (unused[y % len(unused)], f"wan{fresh[0]}"))
    elif kind == "remove" and len(isps) > 1:
        del isps[x % len(isps)]
    elif kind == "rename" and unused:
        i = x % len(isps)
        isps[i] = (unused[y % len(unused)], isps[i][1])
    elif kind == "move":
        isps.insert(y % len(isps), isps.pop(x % len(isps)))
    elif kind == "reverse":
        isps.reverse()
    elif kind == "reinterface":
        fresh[0] += 1
        i = x % len(isps)
        isps[i] = (isps[i][0], f"wan{fresh[0]}")
    return isps


@settings(max_examples=150, deadline=None)
@given(edits())
def test_an_isp_that_stays_keeps_its_mark_through_any_edits(steps: list[Edit]) -> None:
    isps = [("i0", "wan0"), ("i1", "wan1")]
    fresh = [1]
    state = allocate(config(*(f"{n}:{i}" for n, i in isps)), None, reload=False).state
    for edit in steps:
        if edit[0] == "flushed":  # every retired mark's connections are gone: the marks are free again
            state = state.release({r.mark for r in state.retired})
            continue
        new = _apply(isps, edit, fresh)
        result = allocate(config(*(f"{n}:{i}" for n, i in new)), state, reload=True)
        after = result.state
        for name, interface in new:
            if (name, interface) in isps:
                assert after.isps[name].mark == state.isps[name].mark, (edit, name)
                assert name not in result.added + result.removed + result.replaced
        assert len({s.mark for s in after.isps.values()}) == len(after.isps)
        assert len({s.table for s in after.isps.values()}) == len(after.isps)
        assert not {s.mark for s in after.isps.values()} & {r.mark for r in after.retired}
        # a new (or renamed, or moved) ISP never gets a mark that was live or unflushed before the edit
        taken = {s.mark for s in state.isps.values()} | {r.mark for r in state.retired}
        for name, interface in new:
            if (name, interface) not in isps:
                assert after.isps[name].mark not in taken, (edit, name)
        isps, state = new, after


# --- the state file -----------------------------------------------------------------------------------------

FULL = RuntimeState(
    mark_mask=0xFF00,
    table_base=200,
    isps={"fiber": Slot(0x100, 201, "wan1"), "lte": Slot(0x300, 203, "wwan0")},
    retired=(Retired(0x200, 0xFF00, "dsl"),),
    protocols=(119, 120),
    sysctls={
        "net/ipv4/ip_forward": "0",
        "net/ipv4/conf/wan1/rp_filter": "1",
        "net/ipv4/conf/wwan0/src_valid_mark": "0",
    },
)


def good_json() -> dict:
    return json.loads(json.dumps(runtime.to_json(FULL)))


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    return d


def test_parse_of_to_json_is_the_identity() -> None:
    assert runtime.parse(good_json()) == FULL


def test_save_then_load_round_trips(state_dir: Path) -> None:
    path = state_dir / "wanlb.state.json"
    runtime.save(path, FULL)
    assert runtime.load(path) == FULL


def test_load_of_a_missing_file_is_none(state_dir: Path) -> None:
    assert runtime.load(state_dir / "nothing.json") is None


def test_the_wanlb_01_format_is_accepted() -> None:
    old = {"sysctls": {"net/ipv4/ip_forward": "0", "net/ipv4/conf/wan1/rp_filter": "1"}}
    assert runtime.parse(old) == RuntimeState(sysctls=old["sysctls"])


@pytest.mark.parametrize(
    "key",
    [
        "../../tmp/x",
        "net/ipv4/conf/../../x",
        "net/ipv4/conf/../rp_filter",
        "net/ipv4/conf/wan1/../../../../etc/passwd",
        "net/ipv4/conf/wan1/forwarding",
        "net/ipv4/conf/wan1/rp_filter/x",
        "net/ipv4/conf/a/b/rp_filter",
        "net/ipv4/conf//rp_filter",
        "/proc/sys/net/ipv4/ip_forward",
        "net/ipv4/ip_forward\n",
        "kernel/core_pattern",
        "net/ipv6/conf/all/disable_ipv6",
        "net/ipv6/conf/wan1/../all/forwarding",
        "net/ipv6/conf/wan1/forwarding",
    ],
)
def test_a_sysctl_wanlb_does_not_write_is_refused(key: str) -> None:
    data = good_json()
    data["sysctls"][key] = "1"
    with pytest.raises(ValueError, match="is not one wanlb changes"):
        runtime.parse(data)
    with pytest.raises(ValueError, match="is not one wanlb changes"):
        runtime.parse({"sysctls": {key: "1"}})  # the old format is checked the same way


@pytest.mark.parametrize("value", ["1; reboot", "", "one", "1\n", "12345678901", 1, None, True, ["1"]])
def test_a_bad_sysctl_value_is_refused(value: object) -> None:
    data = good_json()
    data["sysctls"]["net/ipv4/ip_forward"] = value
    with pytest.raises(ValueError, match="bad original value"):
        runtime.parse(data)


def _set(data: dict, path: str, value: object) -> dict:
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("version", 2),
        ("version", 0),
        ("version", "1"),
        ("version", True),
        ("version", 1.0),
        ("isps", []),
        ("isps", "fiber"),
        ("isps.fiber", [0x100, 201, "wan1"]),
        ("isps.fiber.mark", "0x100"),
        ("isps.fiber.mark", True),
        ("isps.fiber.mark", 0),
        ("isps.fiber.mark", 1 << 32),
        ("isps.fiber.mark", 256.0),
        ("isps.fiber.table", False),
        ("isps.fiber.table", None),
        ("isps.fiber.interface", "wan 1"),
        ("isps.fiber.interface", "../wan1"),
        ("isps.fiber.interface", "a" * 16),
        ("isps.fiber.interface", 7),
        ("retired", {}),
        ("retired.0", "dsl"),
        ("retired.0.mark", True),
        ("retired.0.mask", 0),
        ("retired.0.name", "DSL"),
        ("protocols", 119),
        ("protocols.0", True),
        ("protocols.0", 4),
        ("protocols.0", 256),
        ("mark_mask", True),
        ("mark_mask", -1),
        ("table_base", "200"),
        ("sysctls", []),
    ],
)
def test_a_malformed_field_is_refused(path: str, value: object) -> None:
    data = _set(good_json(), path, value)
    with pytest.raises((ValueError, TypeError, KeyError)):
        runtime.parse(data)


@pytest.mark.parametrize("name", ["Fiber", "1fiber", "a" * 16, "fi ber", "../x", ""])
def test_a_bad_isp_name_is_refused(name: str) -> None:
    data = good_json()
    data["isps"][name] = data["isps"].pop("fiber")
    with pytest.raises(ValueError, match="bad ISP name"):
        runtime.parse(data)


@pytest.mark.parametrize("top", [[], "x", 1, None])
def test_the_top_level_must_be_an_object(top: object) -> None:
    with pytest.raises(ValueError, match="top level"):
        runtime.parse(top)


def test_load_turns_every_problem_into_one_state_error(state_dir: Path) -> None:
    path = state_dir / "s.json"
    for text in ("{", "[]", '{"version": 9}', '{"sysctls": {"kernel/x": "1"}}', "1" * 5000 + "]", "[" * 100000):
        path.write_text(text)
        with pytest.raises(StateError, match="is invalid"):
            runtime.load(path)


def test_load_refuses_a_symlink_even_to_a_good_file(state_dir: Path) -> None:
    good = state_dir / "good.json"
    runtime.save(good, FULL)
    link = state_dir / "wanlb.state.json"
    link.symlink_to(good)
    with pytest.raises(StateError, match="cannot open runtime state"):
        runtime.load(link)


def test_load_refuses_a_fifo_without_hanging(state_dir: Path) -> None:
    fifo = state_dir / "wanlb.state.json"
    os.mkfifo(fifo, 0o600)
    outcome: list[BaseException | object] = []

    def load() -> None:
        try:
            outcome.append(runtime.load(fifo))
        except BaseException as exc:  # reported below
            outcome.append(exc)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "load() blocked on a FIFO"
    assert isinstance(outcome[0], StateError) and "not a regular file" in str(outcome[0])


def test_load_refuses_a_directory(state_dir: Path) -> None:
    (state_dir / "wanlb.state.json").mkdir()
    with pytest.raises(StateError):
        runtime.load(state_dir / "wanlb.state.json")


def test_load_refuses_a_file_over_one_mib(state_dir: Path) -> None:
    path = state_dir / "s.json"
    text = json.dumps(runtime.to_json(FULL))
    path.write_text(text + " " * (runtime.MAX_STATE_BYTES + 1 - len(text)))
    with pytest.raises(StateError, match="larger than 1048576 bytes"):
        runtime.load(path)
    path.write_text(text + " " * (runtime.MAX_STATE_BYTES - len(text)))  # exactly the limit is fine
    assert runtime.load(path) == FULL


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702, 0o1777])
def test_load_and_save_refuse_a_directory_others_can_write(state_dir: Path, mode: int) -> None:
    path = state_dir / "s.json"
    runtime.save(path, FULL)
    state_dir.chmod(mode)
    with pytest.raises(StateError, match="writable by group or others"):
        runtime.load(path)
    with pytest.raises(StateError, match="writable by group or others"):
        runtime.save(path, FULL)


def test_a_state_directory_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("")
    with pytest.raises(StateError, match="is not a directory"):
        runtime.load(tmp_path / "run" / "s.json")


def test_save_creates_a_private_directory_and_a_0600_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "wanlb.state.json"
    runtime.save(path, FULL)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == runtime.to_json(FULL)


def test_save_replaces_the_file_atomically(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = state_dir / "wanlb.state.json"
    runtime.save(path, RuntimeState(sysctls={"net/ipv4/ip_forward": "0"}))
    before = path.read_bytes()
    inode = path.stat().st_ino

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runtime.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        runtime.save(path, FULL)
    assert path.read_bytes() == before  # a failed write never leaves a torn file in place
    monkeypatch.undo()
    runtime.save(path, FULL)
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    assert runtime.load(path) == FULL
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in state_dir.iterdir() if p.name != path.name and not p.name.endswith(".tmp")) == []


def test_save_does_not_follow_a_planted_temp_symlink(state_dir: Path) -> None:
    path = state_dir / "wanlb.state.json"
    victim = state_dir / "victim"
    victim.write_text("keep")
    (state_dir / f".{path.name}.{os.getpid()}.tmp").symlink_to(victim)
    with pytest.raises(OSError):
        runtime.save(path, FULL)
    assert victim.read_text() == "keep"


# --- StateStore: two writers, one file -------------------------------------------------------------------


def test_state_store_merges_allocation_and_sysctls(state_dir: Path) -> None:
    path = state_dir / "wanlb.state.json"
    store = StateStore(path, RuntimeState())
    allocated = start("a:wan1", "b:wan2")
    store.set_sysctls({"net/ipv4/ip_forward": "0"})
    store.set_allocation(allocated)
    assert store.state.isps == allocated.isps and store.state.sysctls == {"net/ipv4/ip_forward": "0"}
    store.set_sysctls({"net/ipv4/ip_forward": "0", "net/ipv4/conf/wan1/rp_filter": "1"})
    assert store.state.isps == allocated.isps  # the sysctl writer keeps the allocation
    assert runtime.load(path) == store.state


def test_state_store_keeps_every_protocol_ever_used() -> None:
    store = StateStore(None, RuntimeState(protocols=(100,)))
    store.set_allocation(start("a:wan1"))
    assert store.state.protocols == (100, 119)


def test_state_store_without_a_path_stays_in_memory(tmp_path: Path) -> None:
    store = StateStore(None, RuntimeState())
    store.set_allocation(start("a:wan1"))
    store.set_sysctls({"net/ipv4/ip_forward": "0"})
    assert store.state.isps["a"].mark == 0x100 and list(tmp_path.iterdir()) == []


def test_a_failed_write_does_not_change_the_store(state_dir: Path) -> None:
    path = state_dir / "wanlb.state.json"
    store = StateStore(path, RuntimeState())
    state_dir.chmod(0o777)
    with pytest.raises(StateError):
        store.set_sysctls({"net/ipv4/ip_forward": "0"})
    assert store.state == RuntimeState()  # a change counts only once it is written


@pytest.mark.parametrize(
    "isps",
    [
        {
            "a": {"mark": 0x100, "table": 201, "interface": "wan1"},
            "b": {"mark": 0x100, "table": 202, "interface": "wan2"},
        },
        {
            "a": {"mark": 0x1, "table": 201, "interface": "wan1"},
            "b": {"mark": 0x200, "table": 202, "interface": "wan2"},
        },
    ],
    ids=["shared-mark", "mark-outside-mask"],
)
def test_a_state_whose_isps_share_a_mark_or_leave_the_mask_is_refused(isps: dict) -> None:
    data = good_json()
    data["isps"], data["retired"] = isps, []
    try:
        state = runtime.parse(data)
    except ValueError:
        return
    after = allocate(config("a:wan1", "b:wan2"), state, reload=False).state
    assert len({s.mark for s in after.isps.values()}) == 2
    assert all(s.mark & ~0xFF00 == 0 for s in after.isps.values())


def test_after_a_mask_change_no_new_mark_matches_a_retired_one() -> None:
    prev = start("a:wan1", "b:wan2")
    after = allocate(config("a:wan1", "b:wan2", mask=0xFFFF00), prev, reload=False).state
    assert {r.mask for r in after.retired} == {0xFF00}
    for name, slot in after.isps.items():
        for r in after.retired:
            assert slot.mark & r.mask != r.mark, (name, hex(slot.mark), r)
