"""Field-by-field comparison of ``wanlb conntrack list -o json`` with ``conntrack -L -o extended,id``.

Shared by the parity tests on synthetic tables (``test_parity``) and on the lab
gateway's real table (``test_lab_parity``), so both hold the same bar.
"""

from __future__ import annotations

import json
import time

from conftest import Netns

_TOLERANT = {"timeout", "delta-time"}  # they tick between the two listings: allowed by the time between them


def parse_conntrack(line: str) -> dict:
    """One ``conntrack -L -o extended,id`` line -> a normalised record."""
    tok = line.split()
    rec: dict = {"family": tok[0], "proto": tok[2], "timeout": int(tok[4])}
    rest = tok[5:]
    if rest and "=" not in rest[0] and not rest[0].startswith("["):
        rec["state"] = rest.pop(0)
    side, tuples = "orig", {"orig": {}, "reply": {}}
    flags = []
    prev = ""
    for t in rest:
        if t.startswith("["):
            flags.append(t.strip("[]"))
            continue
        key, val = t.split("=", 1)
        prev, icmp_id = key, key == "id" and prev == "code"  # ICMP's id follows its code
        if key in ("mark", "zone", "use", "delta-time") or (key == "id" and not icmp_id):
            side = "done"  # past both tuples; "id" is the entry id now
            rec[key] = int(val)
        elif key in ("packets", "bytes"):
            rec.setdefault("counters", {}).setdefault(side, {})[key] = int(val)
        elif key in ("zone-orig", "zone-reply"):
            rec[key] = int(val)
        else:
            if key == "src" and "src" in tuples["orig"]:
                side = "reply"
            tuples[side][key] = val if key in ("src", "dst") else int(val)
    rec.update(orig=tuples["orig"], reply=tuples["reply"], flags=sorted(flags))
    return rec


def from_json(obj: dict, now: int) -> dict:
    """Our JSON object -> the same normalised record (what the text format can show).

    ``now`` (seconds) is when the listing was taken, for delta-time.
    """
    flags = []
    if "SEEN_REPLY" not in obj["status"]:
        flags.append("UNREPLIED")
    if "ASSURED" in obj["status"]:
        flags.append("ASSURED")
    rec = {"family": obj["family"], "proto": obj["proto"], "timeout": obj["timeout"], "id": obj["id"]}
    if obj["state"] is not None:
        rec["state"] = obj["state"]
    rec["orig"] = {k: v for k, v in obj["orig"].items() if k != "zone"}
    rec["reply"] = {k: v for k, v in obj["reply"].items() if k != "zone"}
    if obj["counters"]:
        rec["counters"] = obj["counters"]
    for key in ("mark", "zone", "use"):
        if obj[key] is not None:
            rec[key] = obj[key]
    if obj["start"] is not None:
        rec["delta-time"] = now - obj["start"] // 10**9
    rec["flags"] = sorted(flags)
    return rec


def assert_same(theirs: list[dict], ours: list[dict], slack: int = 3) -> None:
    """Equal records; ``timeout`` and ``delta-time`` may differ by ``slack`` seconds."""
    by_id = {r["id"]: r for r in theirs}
    assert len(by_id) == len(theirs)
    assert sorted(by_id) == sorted(r["id"] for r in ours)
    for rec in ours:
        other = by_id[rec["id"]]
        for key in set(rec) | set(other):
            if key in _TOLERANT:
                assert abs(rec[key] - other[key]) <= slack, (key, rec, other)
            else:
                assert rec.get(key) == other.get(key), (key, rec, other)


def json_parity(ns: Netns, ours: list[str], theirs: list[str], wanlb_opts: tuple[str, ...] = ()) -> list[dict]:
    """Compare both tools on one filter in ``ns``; returns our parsed objects (raw JSON) for further checks.

    ``wanlb_opts`` go before the subcommand (``--config``).  An empty selection
    fails: a filter that matches nothing would prove nothing.
    """
    began = time.time()
    listing = ns.run("conntrack", "-L", "-o", "extended,id", *theirs).stdout
    ref = [parse_conntrack(line) for line in listing.splitlines()]
    ours_out = ns.wanlb(*wanlb_opts, "list", "-o", "json", *ours).stdout
    ended = time.time()
    objs = [json.loads(line) for line in ours_out.splitlines()]
    # Both listings fall between ``began`` and ``ended``: the clock-derived fields may differ by that
    # much (rounded up, plus one for whole-second truncation), however slow a busy machine is.
    slack = int(ended - began) + 2
    assert_same(ref, [from_json(o, int(ended)) for o in objs], slack)
    assert objs, "the filter must select something, or this comparison proves nothing"
    return objs
