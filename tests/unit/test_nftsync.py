"""nftsync: the smallest atomic transaction from what the kernel shows to the desired table.

The first tests are pure (desired tables and hand-made ``nft -j`` listings); the convergence tests apply the
transactions to the FakeKernel's nft, which refuses what nft refuses (a chain deleted while still jumped to,
an object missing); one test asks the real nft, in a scratch network namespace, when we are root.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
from typing import Any

import pytest
from fakekernel import FakeKernel, table_objects
from hypothesis import given, settings
from hypothesis import strategies as st

from wanlb import nftsync, runtime
from wanlb.config import Config, parse_config
from wanlb.nftsync import Chain, Counter, Helper, Set, Table
from wanlb.plan import plan
from wanlb.render import render_nft
from wanlb.states import IspStatus
from wanlb.uplink import ConnectedRoute

LAN = (ConnectedRoute(ipaddress.IPv4Network("192.168.77.0/24"), "lan0"),)
ISPS = {"a": ("wan1", 3, 1), "b": ("wan2", 1, 1), "c": ("wan3", 2, 2)}  # interface, weight, tier


def config(names: str = "abc", extra: str = "", weights: dict[str, int] | None = None, lan: str = "") -> Config:
    rows = []
    for n in names:
        interface, weight, tier = ISPS[n]
        weight = (weights or {}).get(n, weight)
        rows.append(f"  - {{name: {n}, interface: {interface}, gateway: 100.64.0.1, weight: {weight}, tier: {tier}}}\n")
    return parse_config(f"lan:\n  interfaces: [lan0]\n{lan}isps:\n{''.join(rows)}{extra}")


def table(cfg: Config, state: runtime.RuntimeState | None = None, statuses: dict | None = None) -> Table:
    state = state or runtime.allocate(cfg, None, reload=False).state
    return render_nft(plan(cfg, state, statuses, LAN))


def listing(desired: Table, **drift: Any) -> list[dict[str, Any]]:
    """``nft -j list table inet wanlb`` as the kernel would show ``desired`` (the element and expr shapes are
    nft's business: only their stability matters).  ``drift`` edits it: ``drop_rule=(chain, index)``,
    ``extra_chain=name``, ``set_timeout=(set, seconds)``, ``policy=(chain, policy)``, ``clients=[...]``."""
    base = {"family": "inet", "table": "wanlb"}
    out: list[dict[str, Any]] = [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "inet", "name": "wanlb"}}]
    rules: list[dict[str, Any]] = []
    for handle, o in enumerate(desired.objects, 1):
        if isinstance(o, Counter):
            out.append({"counter": {**base, "name": o.name, "handle": handle, "packets": handle * 7, "bytes": 9}})
        elif isinstance(o, Helper):
            out.append({"ct helper": {**base, "name": o.name, "type": o.type, "protocol": o.protocol, "l3proto": "ip"}})
        elif isinstance(o, Set):
            item: dict[str, Any] = {**base, "name": o.name, "handle": handle, "type": o.type}
            if o.map_type:
                item["map"] = o.map_type
            if o.size is not None:
                item["size"] = o.size
            if [f for f in o.flags if f != "dynamic"]:
                item["flags"] = [f for f in o.flags if f != "dynamic"]
            timeout = drift.get("set_timeout", (None, None))
            if o.timeout is not None or timeout[0] == o.name:
                item["timeout"] = timeout[1] if timeout[0] == o.name else o.timeout
            elements = list(o.elements) if o.elements is not None else drift.get("clients", [])
            if elements:
                item["elem"] = [{"prefix": {"addr": e.split("/")[0], "len": 24}} if "/" in e else e for e in elements]
            out.append({o.kind: item})
        elif isinstance(o, Chain):
            chain: dict[str, Any] = {**base, "name": o.name, "handle": handle}
            if o.hook:
                policy = drift["policy"][1] if drift.get("policy", ("",))[0] == o.name else o.hook[3]
                chain.update(type=o.hook[0], hook=o.hook[1], prio=o.hook[2], policy=policy)
            out.append({"chain": chain})
            for i, rule in enumerate(o.rules):
                if drift.get("drop_rule") != (o.name, i):
                    rules.append({"rule": {**base, "chain": o.name, "handle": 1000 + i, "expr": [{"text": rule}]}})
    if "extra_chain" in drift:
        out.append({"chain": {**base, "name": drift["extra_chain"], "handle": 999}})
    return out + rules


def observed(desired: Table, **drift: Any) -> nftsync.Observed:
    return nftsync.observe(listing(desired, **drift), {"clients"})


def synced(desired: Table) -> tuple[nftsync.Observed, nftsync.Record]:
    """The kernel showing ``desired`` right after we applied it: what it shows, and our record of it."""
    seen = observed(desired)
    return seen, nftsync.record_after(desired, seen)


def lines(text: str) -> list[str]:
    return text.splitlines()


def assert_clients_untouched(text: str) -> None:
    assert not [line for line in lines(text) if line.split(" inet wanlb ")[-1].split(" ")[0] == "clients"], text


# --- pure: which lines, in which order -----------------------------------------------------------------


def test_no_change_is_an_empty_transaction() -> None:
    t = table(config())
    assert nftsync.transaction(t, *synced(t)) == ""


def test_counter_values_and_dynamic_elements_are_no_change() -> None:
    t = table(config())
    _, record = synced(t)
    assert nftsync.transaction(t, observed(t, clients=["192.168.77.5", "192.168.77.9"]), record) == ""


def test_a_weight_change_rewrites_only_the_balance_chain() -> None:
    old = table(config())
    new = table(config(weights={"a": 1}))
    text = nftsync.transaction(new, *synced(old))
    assert lines(text) == [
        "flush chain inet wanlb balance",
        "add rule inet wanlb balance numgen inc mod 2 vmap { 0 : goto isp_a, 1 : goto isp_b }",
    ]


def test_a_failover_rewrites_only_the_chains_that_changed() -> None:
    cfg = config()
    old = table(cfg)
    new = table(cfg, statuses={"a": IspStatus.DOWN})
    text = nftsync.transaction(new, *synced(old))
    assert lines(text) == [
        "flush chain inet wanlb balance",
        "add rule inet wanlb balance goto isp_b",
    ]


def test_a_rule_deleted_by_hand_rewrites_that_chain_only() -> None:
    t = table(config())
    _, record = synced(t)
    from_lan = t.by_key()[("chain", "from_lan")]
    assert isinstance(from_lan, Chain)
    text = nftsync.transaction(t, observed(t, drop_rule=("from_lan", 2)), record)
    assert lines(text) == ["flush chain inet wanlb from_lan"] + [
        f"add rule inet wanlb from_lan {r}" for r in from_lan.rules
    ]


def test_without_a_record_every_content_is_rewritten_once_but_no_object_is_recreated() -> None:
    t = table(config())
    text = nftsync.transaction(t, observed(t), {})
    assert text.startswith("flush ") and "delete" not in text and "add counter" not in text
    assert not [line for line in lines(text) if line.startswith(("add chain", "add set", "add map"))]
    assert_clients_untouched(text)


def test_a_removed_isp_is_deleted_after_every_reference_to_it_is_flushed() -> None:
    cfg3 = config("abc")
    state3 = runtime.allocate(cfg3, None, reload=False).state
    cfg2 = config("ac")
    state2 = runtime.allocate(cfg2, state3, reload=True).state
    old, new = table(cfg3, state3), table(cfg2, state2)
    text = nftsync.transaction(new, *synced(old))
    rows = lines(text)
    deletes = [r for r in rows if r.startswith("delete")]
    assert set(deletes) == {
        "delete chain inet wanlb restore_b",
        "delete chain inet wanlb isp_b",
        "delete counter inet wanlb isp_b_rx",
        "delete counter inet wanlb isp_b_tx",
        "delete counter inet wanlb isp_b_new",
        "delete counter inet wanlb isp_b_syn",
        "delete counter inet wanlb isp_b_answer",
    }
    first_delete = rows.index(deletes[0])
    assert all(r.startswith("flush") for r in rows[:first_delete])
    assert all(not r.startswith("flush") for r in rows[first_delete:])
    assert [r for r in deletes if r.startswith("delete chain")] == deletes[-2:]  # chains after the rest
    for name in ("balance", "from_lan", "output", "prerouting", "egress", "restore_b", "isp_b"):
        assert f"flush chain inet wanlb {name}" in rows, name
    assert "add rule inet wanlb prerouting ct mark & 0xff00 { 0x200 } drop" in rows  # b's mark is retired
    assert not [r for r in rows if r.startswith("add") and "isp_b" in r]
    assert_clients_untouched(text)


def test_the_dynamic_clients_set_is_never_flushed_or_rewritten() -> None:
    cfg = config()
    old = table(cfg)
    for new in (
        table(config("ab")),
        table(cfg, statuses=dict.fromkeys("abc", IspStatus.DOWN)),
        table(config(extra="helpers: [sip]\n")),
    ):
        text = nftsync.transaction(new, *synced(old))
        assert text and "@clients" not in "".join(r for r in lines(text) if not r.startswith("add rule"))
        assert_clients_untouched(text)


def test_a_changed_definition_is_deleted_and_created_again() -> None:
    t = table(config())
    _, record = synced(t)
    text = nftsync.transaction(t, observed(t, set_timeout=("clients", 600)), record)
    rows = lines(text)
    assert "delete set inet wanlb clients" in rows
    assert "add set inet wanlb clients { type ipv4_addr; size 65535; flags dynamic,timeout; timeout 900s; }" in rows
    assert rows.index("delete set inet wanlb clients") < rows.index(
        "add set inet wanlb clients { type ipv4_addr; size 65535; flags dynamic,timeout; timeout 900s; }"
    )
    assert "flush chain inet wanlb from_lan" in rows  # its "update @clients" is rewritten around the new set


def test_a_base_chain_whose_policy_was_changed_by_hand_is_created_again() -> None:
    t = table(config())
    _, record = synced(t)
    rows = lines(nftsync.transaction(t, observed(t, policy=("prerouting", "drop")), record))
    add = "add chain inet wanlb prerouting { type filter hook prerouting priority -150; policy accept; }"
    assert rows.index("delete chain inet wanlb prerouting") < rows.index(add)
    prerouting = t.by_key()[("chain", "prerouting")]
    assert isinstance(prerouting, Chain)
    refill = [r for r in rows if r.startswith("add rule inet wanlb prerouting ")]
    assert refill == [f"add rule inet wanlb prerouting {r}" for r in prerouting.rules]
    assert rows.index(add) < rows.index(refill[0])


def test_a_foreign_chain_in_our_table_is_deleted() -> None:
    t = table(config())
    _, record = synced(t)
    rows = lines(nftsync.transaction(t, observed(t, extra_chain="someone_elses"), record))
    assert "delete chain inet wanlb someone_elses" in rows
    assert rows.index("flush chain inet wanlb someone_elses") < rows.index("delete chain inet wanlb someone_elses")


def test_a_missing_table_is_created_whole() -> None:
    t = table(config())
    text = nftsync.transaction(t, None, {})
    assert text == nftsync.full_text(t)
    rows = lines(text)
    assert rows[0] == "add table inet wanlb"
    declared = [r for r in rows if r.startswith(("add chain", "add set", "add map", "add counter", "add ct helper"))]
    assert len(declared) == len(t.objects)
    # Everything is declared before any rule or element refers to it.
    assert max(rows.index(r) for r in declared) < min(
        i for i, r in enumerate(rows) if r.startswith(("add rule", "add element"))
    )


def test_full_text_into_a_scratch_table_renames_every_line() -> None:
    text = nftsync.full_text(table(config()), table="wanlb_verify")
    assert all(" inet wanlb_verify " in r or r == "add table inet wanlb_verify" for r in lines(text))
    assert " inet wanlb " not in text


# --- convergence on the fake kernel ---------------------------------------------------------------------


def sync(kernel: FakeKernel, desired: Table, record: nftsync.Record) -> tuple[str, nftsync.Record]:
    """One reconciler step: observe, diff, apply, record."""
    listing = kernel.nft_read()
    seen = None if listing is None else nftsync.observe(listing, {"clients"})
    text = nftsync.transaction(desired, seen, record)
    if text:
        kernel.nft_apply(text)
    after = kernel.nft_read()
    assert after is not None
    return text, nftsync.record_after(desired, nftsync.observe(after, {"clients"}))


def converge(kernel: FakeKernel, desired: Table, record: nftsync.Record) -> tuple[str, nftsync.Record]:
    text, record = sync(kernel, desired, record)
    assert kernel.nft_objects() == table_objects(desired)
    again, record2 = sync(kernel, desired, record)
    assert again == "", again
    assert record2 == record
    return text, record


def test_convergence_through_failover_removal_and_drift_keeps_counters_and_clients() -> None:
    kernel = FakeKernel()
    cfg3 = config("abc")
    state3 = runtime.allocate(cfg3, None, reload=False).state
    _, record = converge(kernel, table(cfg3, state3), {})
    kernel.nft_bump("isp_a_rx", 5)
    kernel.nft_bump("invalid_dropped", 2)
    kernel.nft_add_dynamic("clients", "192.168.77.5")

    text, record = converge(kernel, table(cfg3, state3, {"a": IspStatus.DOWN}), record)
    assert text.startswith("flush chain inet wanlb balance")
    text, record = converge(kernel, table(config("abc", weights={"b": 4}), state3), record)

    cfg2 = config("ac")
    state2 = runtime.allocate(cfg2, state3, reload=True).state
    converge(kernel, table(cfg2, state2), record)
    kernel.nft_delete_rule("prerouting", 3)  # drift: by hand
    kernel.nft_edit("add chain inet wanlb someone_elses\nadd rule inet wanlb from_lan jump someone_elses\n")
    text, record = converge(kernel, table(cfg2, state2), record)
    assert "delete chain inet wanlb someone_elses" in text

    wanlb = kernel.tables["wanlb"]
    assert wanlb.counters["isp_a_rx"][0] == 5 and wanlb.counters["invalid_dropped"][0] == 2
    assert wanlb.sets["clients"].elements == ["192.168.77.5"]
    assert kernel.nft_refused == []


def test_the_fake_refuses_what_nft_refuses_and_changes_nothing() -> None:
    kernel = FakeKernel()
    t = table(config())
    kernel.nft_apply(nftsync.full_text(t))
    before = kernel.everything()
    for bad in (
        "delete chain inet wanlb restore_a\n",  # still in the restore vmaps
        "flush chain inet wanlb isp_a\ndelete chain inet wanlb isp_a\n",  # still in the balance map
        "delete counter inet wanlb isp_a_rx\n",  # still in the rx counter map
        "delete set inet wanlb bypass\n",  # from_lan still matches @bypass
        "delete ct helper inet wanlb helper_ftp\n",
        "add rule inet wanlb from_lan goto nowhere\n",
        "add rule inet wanlb from_lan jump prerouting\n",
        "add rule inet wanlb nochain accept\n",
        "flush set inet wanlb nosuchset\n",
        "add set inet wanlb bypass { type ipv4_addr; }\n",  # exists with another definition
        "add chain inet wanlb output { type filter hook forward priority 0; policy accept; }\n",
        "flush chain inet wanlb balance\nbogus line\n",
        "delete table inet other\n",
    ):
        with pytest.raises(nftsync_error()):
            kernel.nft_apply(bad)
        assert kernel.everything() == before, bad
    kernel.nft_apply("flush chain inet wanlb balance\nflush chain inet wanlb isp_a\ndelete chain inet wanlb isp_a\n")
    assert ("chain", "isp_a") not in kernel.nft_objects()


def test_fail_nft_refuses_everything() -> None:
    kernel = FakeKernel()
    kernel.fail_nft = "Error: Could not process rule: Operation not permitted"
    with pytest.raises(nftsync_error(), match="not permitted"):
        kernel.nft_apply(nftsync.full_text(table(config())))
    assert kernel.nft_read() is None and kernel.calls == []


def nftsync_error() -> type[Exception]:
    from wanlb.adapters.nft import NftError

    return NftError


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Config, runtime.RuntimeState, dict[str, IspStatus]]:
    chosen = "".join(sorted(draw(st.sets(st.sampled_from("abc"), min_size=1))))
    weights = {n: draw(st.integers(1, 5)) for n in chosen}
    helpers = draw(st.lists(st.sampled_from(["ftp", "sip", "h323", "tftp"]), unique=True, max_size=3))
    bypass = draw(st.sampled_from(["", "  bypass: [10.9.0.0/16]\n"]))
    extra = f"helpers: [{', '.join(helpers)}]\nlocal_traffic: {draw(st.booleans())}\n"
    cfg = config(chosen, extra, weights, lan=bypass)
    statuses = {n: draw(st.sampled_from(list(IspStatus))) for n in chosen}
    return cfg, runtime.allocate(cfg, None, reload=False).state, statuses


@settings(max_examples=60, deadline=None)
@given(scenarios(), scenarios(), st.booleans())
def test_any_table_converges_to_any_other_in_one_transaction(
    first: tuple[Config, runtime.RuntimeState, dict[str, IspStatus]],
    second: tuple[Config, runtime.RuntimeState, dict[str, IspStatus]],
    remembered: bool,
) -> None:
    kernel = FakeKernel()
    _, record = converge(kernel, table(first[0], first[1], first[2]), {})
    cfg, fresh, statuses = second
    state = runtime.allocate(cfg, first[1], reload=True).state
    assert state.isps.keys() == fresh.isps.keys()
    converge(kernel, table(cfg, state, statuses), record if remembered else {})
    assert kernel.nft_refused == []


# --- the real nft, when we may ------------------------------------------------------------------------


@pytest.mark.root
def test_real_nft_accepts_the_full_table_and_the_incremental_transactions() -> None:
    if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"):
        pytest.skip("needs root, nft and ip")
    ns = f"wlunit-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:

        def nft(*args: str, stdin: str | None = None) -> str:
            proc = subprocess.run(
                ["ip", "netns", "exec", ns, "nft", *args], input=stdin, capture_output=True, text=True, check=False
            )
            assert proc.returncode == 0, f"nft {' '.join(args)}: {proc.stderr}\n{stdin}"
            return proc.stdout

        def read() -> nftsync.Observed:
            import json

            return nftsync.observe(json.loads(nft("-j", "list", "table", "inet", "wanlb"))["nftables"], {"clients"})

        cfg3 = config("abc", extra="helpers: [ftp, h323, sip]\n")
        state3 = runtime.allocate(cfg3, None, reload=False).state
        full = table(cfg3, state3)
        nft("-c", "-f", "-", stdin=nftsync.full_text(full))
        nft("-c", "-f", "-", stdin=nftsync.full_text(full, table="wanlb_verify"))
        nft("-f", "-", stdin=nftsync.full_text(full))
        record = nftsync.record_after(full, read())
        assert nftsync.transaction(full, read(), record) == ""

        cfg2 = config("ac", extra="helpers: [ftp]\n")
        state2 = runtime.allocate(cfg2, state3, reload=True).state
        fake = FakeKernel()  # takes the same transactions: it must accept what nft accepts
        fake.nft_apply(nftsync.full_text(full))
        for desired in (table(cfg3, state3, {"a": IspStatus.DOWN}), table(cfg2, state2)):
            text = nftsync.transaction(desired, read(), record)
            assert text
            nft("-f", "-", stdin=text)
            fake.nft_apply(text)
            assert fake.nft_objects() == table_objects(desired)
            record = nftsync.record_after(desired, read())
            assert nftsync.transaction(desired, read(), record) == ""
        assert "isp_b" not in nft("list", "table", "inet", "wanlb")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_the_real_nft_json_shape_is_what_observe_reads() -> None:
    """A trimmed ``nft -j`` listing recorded from nft 1.0.6: base chain fields, set flags without "dynamic"."""
    where = {"family": "inet", "table": "wanlb"}
    real = [
        {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "wanlb", "handle": 1}},
        {"counter": {**where, "name": "isp_a_rx", "handle": 3, "packets": 0, "bytes": 0}},
        {"ct helper": {**where, "name": "helper_ftp", "handle": 9, "type": "ftp", "protocol": "tcp", "l3proto": "ip"}},
        {"set": {**where, "name": "clients", "type": "ipv4_addr", "size": 65535, "flags": ["timeout"], "timeout": 900}},
        {
            "chain": {
                **where,
                "name": "prerouting",
                "type": "filter",
                "hook": "prerouting",
                "prio": -150,
                "policy": "accept",
            }
        },
    ]
    seen = nftsync.observe(real, {"clients"}).objects
    t = table(config()).by_key()
    for key in (("counter", "isp_a_rx"), ("ct helper", "helper_ftp"), ("set", "clients"), ("chain", "prerouting")):
        assert seen[key].signature == t[key].signature, key
    assert seen[("set", "clients")].fingerprint is None


def test_record_after_keeps_only_what_the_kernel_shows() -> None:
    t = table(config())
    seen = observed(t)
    partial = nftsync.Observed({k: v for k, v in seen.objects.items() if k != ("chain", "balance")})
    record = nftsync.record_after(t, partial)
    assert ("chain", "balance") not in record and ("chain", "from_lan") in record
    assert nftsync.transaction(t, seen, record).splitlines() == ["flush chain inet wanlb balance"] + [
        f"add rule inet wanlb balance {r}" for r in t.by_key()[("chain", "balance")].content or ()
    ]


DRIFTS = [
    "delete_rule",
    "append_rule",
    "flush_chain",
    "foreign_chain",
    "foreign_set",
    "foreign_counter",
    "foreign_map",
    "bypass_element",
    "flush_bypass",
    "policy",
]


def drift(kernel: FakeKernel, kind: str, n: int, tag: str) -> None:
    """One change by hand, as an operator (or another tool) could make it with nft; ``tag`` names new objects."""
    t = kernel.tables["wanlb"]
    chains = sorted(t.chains)
    chain = chains[n % len(chains)]
    regular = [c for c in chains if t.chains[c].hook is None]
    if kind == "delete_rule" and t.chains[chain].rules:
        kernel.nft_delete_rule(chain, n % len(t.chains[chain].rules))
    elif kind == "append_rule":
        kernel.nft_edit(f"add rule inet wanlb {chain} meta mark 0x{n:x} accept")
    elif kind == "flush_chain":
        kernel.nft_edit(f"flush chain inet wanlb {chain}")
    elif kind == "foreign_chain":
        kernel.nft_edit(
            f"add chain inet wanlb {tag}\nadd rule inet wanlb {tag} accept\nadd rule inet wanlb {chain} jump {tag}"
        )
    elif kind == "foreign_set":
        kernel.nft_edit(
            f"add set inet wanlb {tag} {{ type ipv4_addr; }}\n"
            f"add element inet wanlb {tag} {{ 10.0.0.{n % 250} }}\n"
            f"add rule inet wanlb {chain} ip saddr @{tag} drop"
        )
    elif kind == "foreign_counter":
        kernel.nft_edit(f'add counter inet wanlb {tag}\nadd rule inet wanlb {chain} counter name "{tag}"')
    elif kind == "foreign_map" and regular:
        target = regular[n % len(regular)]
        kernel.nft_edit(
            f"add map inet wanlb {tag} {{ type ipv4_addr : verdict; }}\n"
            f"add element inet wanlb {tag} {{ 10.0.0.1 : jump {target} }}\n"
            f"add rule inet wanlb {chain} ip daddr vmap @{tag}"
        )
    elif kind == "bypass_element" and "bypass" in t.sets:
        kernel.nft_edit(f"add element inet wanlb bypass {{ 172.16.{n % 250}.0/24 }}")
    elif kind == "flush_bypass" and "bypass" in t.sets:
        kernel.nft_edit("flush set inet wanlb bypass")
    elif kind == "policy" and t.chains[chain].hook:
        typ, hook, prio, _ = t.chains[chain].hook
        kernel.nft_edit(f"add chain inet wanlb {chain} {{ type {typ} hook {hook} priority {prio}; policy drop; }}")


@settings(max_examples=80, deadline=None)
@given(
    scenarios(),
    st.lists(st.tuples(st.sampled_from(DRIFTS), st.integers(0, 1000)), min_size=1, max_size=6),
    st.booleans(),
)
def test_any_drift_is_repaired_in_one_transaction(
    scenario: tuple[Config, runtime.RuntimeState, dict[str, IspStatus]],
    drifts: list[tuple[str, int]],
    remembered: bool,
) -> None:
    cfg, state, statuses = scenario
    desired = table(cfg, state, statuses)
    kernel = FakeKernel()
    _, record = converge(kernel, desired, {})
    kernel.nft_add_dynamic("clients", "192.168.77.7")
    for i, (kind, n) in enumerate(drifts):
        drift(kernel, kind, n, f"x{i}")
    converge(kernel, desired, record if remembered else {})
    assert kernel.nft_refused == []
    assert kernel.tables["wanlb"].sets["clients"].elements == ["192.168.77.7"]


def test_a_base_chain_policy_changed_by_hand_converges() -> None:
    kernel = FakeKernel()
    desired = table(config())
    _, record = converge(kernel, desired, {})
    kernel.nft_edit("add chain inet wanlb prerouting { type filter hook prerouting priority -150; policy drop; }")
    text, _ = converge(kernel, desired, record)
    assert "delete chain inet wanlb prerouting" in text


def test_a_recreated_base_chain_does_not_block_removing_an_isp() -> None:
    kernel = FakeKernel()
    cfg3 = config("abc")
    state3 = runtime.allocate(cfg3, None, reload=False).state
    _, record = converge(kernel, table(cfg3, state3), {})
    kernel.nft_edit("add chain inet wanlb prerouting { type filter hook prerouting priority -150; policy drop; }")
    cfg2 = config("ac")
    state2 = runtime.allocate(cfg2, state3, reload=True).state
    kernel.nft_bump("isp_a_rx", 3)
    converge(kernel, table(cfg2, state2), record)  # prerouting's counter map still names isp_b_rx
    left = kernel.tables["wanlb"]
    assert left.chains["prerouting"].hook == ("filter", "prerouting", -150, "accept")
    assert not any("isp_b" in name for name in [*left.counters, *left.sets, *left.chains])
    assert not any("isp_b" in ref for _, (_, ref) in left.references())
    assert left.counters["isp_a_rx"][0] == 3  # the other ISPs' counters survive the rebuilt chain
