"""``wanlb tune``: the conntrack table's size and timeouts, read, explained and recommended for a gateway.

The seed's "Connection Tracking Tuning": a busy gateway needs a bigger table
than a desktop (``nf_conntrack_max``), and established TCP connections that
vanished without a FIN should not hold an entry for five days.  The report and
the recommendation are pure functions of what was read (:class:`Reading`);
reading, applying and persisting are the thin I/O around them.

Baseline: max 262,144 entries (the seed's), TCP established 7,440 s and UDP
stream 120 s: the least the NAT standards allow (RFC 5382 REQ-5, RFC 4787
REQ-5), where the seed's 3,600 s and 60 s trade them for a table that empties
sooner.  ``--expect N`` raises the table to twice N (bursts, and
TIME_WAIT/closing entries that linger), rounded up to a power of two, within a
memory budget of 1/16 of RAM; when that budget binds, the notes name the
seed's shorter timeouts as the other way to make room.

``--persist`` also writes a modules-load.d line: systemd-sysctl applies
/etc/sysctl.d before anything loads nf_conntrack, and a ``net.netfilter.*``
key that does not exist yet is skipped, so without the module loaded at boot
the persisted values would never apply.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc/sys/net/netfilter")
SLABINFO = Path("/proc/slabinfo")
MEMINFO = Path("/proc/meminfo")
PERSIST_PATH = "/etc/sysctl.d/90-wanlb.conf"
MODULE = "nf_conntrack"
BASELINE_MAX = 262144
ENTRY_BYTES_FALLBACK = 320  # struct nf_conn and its usual extensions, when /proc/slabinfo is not readable
BUCKET_BYTES = 8  # one hash bucket: an hlist_nulls_head pointer
MEMORY_SHARE = 16  # the table may use at most 1/16 of RAM
WARN_USAGE = 0.8

# key (under net.netfilter) -> what it means, for the report.
EXPLAIN = {
    "nf_conntrack_max": "most entries the table holds; at the limit new connections are dropped "
    "(after evicting unreplied ones)",
    "nf_conntrack_count": "entries now (this network namespace)",
    "nf_conntrack_buckets": "hash buckets; one per entry keeps lookups short (the kernel's own default ratio)",
    "nf_conntrack_tcp_timeout_established": "seconds an idle established TCP connection keeps its entry; "
    "the default 5 days lets vanished peers fill the table; RFC 5382 REQ-5 asks a NAT for at least 7,440 "
    "(2 h 4 min: a TCP keepalive every 2 h keeps an idle SSH session), as OpenWrt ships; the seed's 3,600 "
    "empties a busy table sooner, but a connection idle for an hour then loses its entry",
    "nf_conntrack_udp_timeout": "seconds a one-way UDP flow keeps its entry",
    "nf_conntrack_udp_timeout_stream": "seconds an idle two-way UDP flow (DNS, QUIC, VPN) keeps its entry; "
    "RFC 4787 REQ-5 asks a NAT for at least 120 (it recommends 300), recent kernels' default; the seed's 60 "
    "empties a busy table sooner, but a flow quiet for a minute (a VPN's keepalive) then starts over, "
    "perhaps on another ISP",
    "nf_conntrack_events": "0 off, 1 on, 2 only while a listener exists; wanlb counts from events "
    "and resyncs from dumps, so 2 works (1 makes counts exact between resyncs)",
    "nf_conntrack_acct": "per-entry packet/byte counters (shown by wanlb conntrack list); costs a little per packet",
}
RECOMMENDED_FIXED = {
    "nf_conntrack_tcp_timeout_established": 7440,  # RFC 5382 REQ-5: not less than 2 hours 4 minutes
    "nf_conntrack_udp_timeout_stream": 120,  # RFC 4787 REQ-5: not less than 2 minutes
}
SEED_TIMEOUTS_NOTE = (
    "if the table still fills, the seed's shorter timeouts (TCP established 3,600 s, UDP stream 60 s) free "
    "entries sooner, below what RFC 5382 and RFC 4787 ask: an idle SSH session or a quiet VPN then loses its "
    "entry, and its next packet starts a NEW connection that may get another ISP"
)
SHARED_KEYS = ("nf_conntrack_max", "nf_conntrack_buckets")  # read-only inside a non-init network namespace


@dataclass(frozen=True)
class Reading:
    values: Mapping[str, int]  # key -> current value (keys of EXPLAIN that could be read)
    entry_bytes: int
    entry_bytes_source: str  # "slabinfo" or "estimate"
    ram_bytes: int
    writable: Mapping[str, bool]


@dataclass(frozen=True)
class Row:
    key: str
    current: int | None
    recommended: int | None  # None: nothing to recommend (report only)
    note: str

    @property
    def change(self) -> bool:
        return self.recommended is not None and self.current is not None and self.recommended != self.current


def _power_of_two_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def recommend(reading: Reading, expect: int | None = None) -> tuple[list[Row], list[str]]:
    """Rows for the report and notes (limits hit, what cannot be written here).  Pure."""
    v = reading.values
    notes: list[str] = []
    budget = reading.ram_bytes // MEMORY_SHARE // (reading.entry_bytes + BUCKET_BYTES)
    want = BASELINE_MAX if expect is None else max(BASELINE_MAX, _power_of_two_at_least(2 * expect))
    current_max = v.get("nf_conntrack_max", 0)
    want = max(want, current_max)  # never shrink a table someone already sized up
    if want > budget:
        cap = 1 << (budget.bit_length() - 1) if budget > 0 else 0
        notes.append(
            f"{want:,} entries would need {want * (reading.entry_bytes + BUCKET_BYTES) / 2**20:,.0f} MiB, "
            f"more than 1/{MEMORY_SHARE} of RAM: recommending {cap:,}"
        )
        want = max(cap, current_max)
        notes.append(SEED_TIMEOUTS_NOTE)
    rows = []
    for key, note in EXPLAIN.items():
        current = v.get(key)
        if key == "nf_conntrack_max":
            rec: int | None = want
        elif key == "nf_conntrack_buckets":
            rec = want
        else:
            rec = RECOMMENDED_FIXED.get(key)
        rows.append(Row(key, current, rec, note))
    for key in SHARED_KEYS:
        row = next(r for r in rows if r.key == key)
        if row.change and not reading.writable.get(key, False):
            notes.append(
                f"{key} cannot be written here: inside a network namespace other than the host's it is "
                "read-only (the table and its limit are shared by all namespaces); set it on the host"
            )
    return rows, notes


def memory_line(reading: Reading, rows: list[Row]) -> str:
    per = reading.entry_bytes + BUCKET_BYTES
    rec = next(r.recommended for r in rows if r.key == "nf_conntrack_max") or 0
    return (
        f"each entry costs about {reading.entry_bytes} bytes ({reading.entry_bytes_source}) plus {BUCKET_BYTES} "
        f"for its bucket: {rec:,} entries at most = {rec * per / 2**20:,.0f} MiB of {reading.ram_bytes / 2**30:.1f} GiB"
    )


def sysctl_file(rows: list[Row]) -> str:
    """The persistent form (``sysctl -p`` syntax) of every recommendation."""
    lines = ["# Written by `wanlb tune --persist`: conntrack sizing and timeouts for a multi-WAN gateway."]
    for row in rows:
        if row.recommended is not None:
            lines.append(f"# {row.note}")
            lines.append(f"net.netfilter.{row.key} = {row.recommended}")
    return "\n".join(lines) + "\n"


MODULES_LOAD_WARNING = (
    "net.netfilter.* lines in /etc/sysctl.d apply at boot only if nf_conntrack is loaded by then: "
    "systemd-sysctl runs early, before a firewall's or wanlb's rules load the module, and skips keys that do "
    "not exist yet, so the kernel's defaults would stay. A modules-load.d line loads it before systemd-sysctl:"
)


def modules_load_file(sysctl_path: str) -> str:
    """The modules-load.d file (systemd-modules-load, which runs before systemd-sysctl) that loads nf_conntrack."""
    return (
        "# Written by `wanlb tune --persist`: load nf_conntrack at boot, before systemd-sysctl applies\n"
        f"# the net.netfilter.* settings of {sysctl_path} (a key that does not exist yet is skipped).\n"
        f"{MODULE}\n"
    )


@dataclass(frozen=True)
class TableStats:
    """The table's fill and the kernel's trouble counters (summed over CPUs), as the daemon samples them."""

    count: int
    max: int
    drop: int = 0
    early_drop: int = 0
    insert_failed: int = 0


def table_warnings(previous: TableStats | None, now: TableStats) -> list[str]:
    """What an operator must hear about the table since the last sample.  Pure."""
    out = []
    if now.max and now.count >= WARN_USAGE * now.max:
        out.append(
            f"conntrack table {100 * now.count / now.max:.0f}% full ({now.count:,} of {now.max:,}): "
            "`wanlb tune` recommends a size"
        )
    if previous is not None:
        for name in ("drop", "early_drop", "insert_failed"):
            rose = getattr(now, name) - getattr(previous, name)
            if rose > 0:
                out.append(f"conntrack {name} rose by {rose:,}: the table turned connections away")
    return out


# --- I/O ------------------------------------------------------------------------------------------


def read() -> Reading:
    values = {}
    writable = {}
    for key in EXPLAIN:
        path = PROC / key
        try:
            values[key] = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        writable[key] = os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o200)
    entry_bytes, source = ENTRY_BYTES_FALLBACK, "estimate"
    try:
        for line in SLABINFO.read_text().splitlines():
            fields = line.split()
            if fields and fields[0] == "nf_conntrack":
                entry_bytes, source = int(fields[3]), "slabinfo"
                break
    except (OSError, ValueError, IndexError):
        pass
    ram = 0
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return Reading(values, entry_bytes, source, ram, writable)


def apply(rows: list[Row], reading: Reading) -> tuple[list[str], list[str]]:
    """Write every changed recommendation that can be written here; (done, skipped with why)."""
    done, skipped = [], []
    # Buckets before max: a larger limit on a small hash table is what the kernel warns about.
    for row in sorted((r for r in rows if r.change), key=lambda r: r.key != "nf_conntrack_buckets"):
        if not reading.writable.get(row.key, False):
            skipped.append(f"{row.key}: read-only here (a non-init network namespace shares the host's table)")
            continue
        try:
            (PROC / row.key).write_text(f"{row.recommended}\n")
            done.append(f"{row.key} = {row.recommended} (was {row.current})")
        except OSError as exc:
            skipped.append(f"{row.key}: {exc.strerror}")
    return done, skipped
