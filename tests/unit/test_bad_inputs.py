"""Every input of the bad-input corpus (tests/badinputs.py) is refused by `wanlb check` the way an operator needs:
exit 2, no traceback, `FILE:LINE: field: message` first, a few KiB of text at most, bounded memory; and no input
at all makes the config loader raise anything but ConfigError.

Times are measured and reported, never asserted tightly (the machine is shared): only a 10 s bound catches a hang.
The figures go to ``<pytest basetemp>/bad_inputs.json``; `-s` shows a one-line summary.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from badinputs import BAD, BASE, BadInput, all_inputs, good_configs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wanlb
from wanlb.config import MAX_ISSUES, Config, ConfigError, load_config, parse_config

INPUTS = all_inputs()
PEAK_RSS_LIMIT = 100_000_000  # bytes: the issue's "≤ 100 MB peak"
HANG = 10.0  # seconds: far above the ~0.5-2 s a check takes; only a hang gets near it
OUTPUT_LIMIT = 4096
SRC = str(Path(wanlb.__file__).resolve().parents[1])
TIME = shutil.which("time", path="/usr/bin:/bin")  # GNU time (the shell keyword is no help here)


def test_the_corpus_is_big_enough() -> None:
    assert len(INPUTS) >= 80
    assert len({i.name for i in INPUTS}) == len(INPUTS)


@pytest.mark.parametrize("path", good_configs(), ids=lambda p: p.name)
def test_good_configs_load(path: Path) -> None:
    assert isinstance(load_config(path), Config)


def test_the_base_of_the_corpus_is_valid() -> None:
    """Most bad files are the base with one thing changed: the base itself must pass, so that thing is the error."""
    assert isinstance(parse_config(BASE), Config)


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, Any]]]:
    """Rows of (input, wall seconds, peak RSS, output bytes); written and summarised when the module is done."""
    rows: list[dict[str, Any]] = []
    yield rows
    if not rows:
        return
    walls = [r["wall_s"] for r in rows]
    slowest = max(rows, key=lambda r: r["wall_s"])
    biggest = max(rows, key=lambda r: r["peak_rss_bytes"])
    summary = {
        "inputs": len(rows),
        "wall_s_max": slowest["wall_s"],
        "wall_s_max_input": slowest["input"],
        "wall_s_median": round(statistics.median(walls), 3),
        "peak_rss_mb_max": round(biggest["peak_rss_bytes"] / 1e6, 1),
        "peak_rss_max_input": biggest["input"],
        "peak_rss_mb_median": round(statistics.median(r["peak_rss_bytes"] for r in rows) / 1e6, 1),
        "output_bytes_max": max(r["output_bytes"] for r in rows),
        "rows": sorted(rows, key=lambda r: -r["wall_s"]),
    }
    out = tmp_path_factory.getbasetemp() / "bad_inputs.json"
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(
        f"\nwanlb check of {len(rows)} bad inputs: wall max {summary['wall_s_max']:.2f} s ({slowest['input']}), "
        f"median {summary['wall_s_median']:.2f} s; peak RSS max {summary['peak_rss_mb_max']} MB "
        f"({biggest['input']}), median {summary['peak_rss_mb_median']} MB; output ≤ {summary['output_bytes_max']} "
        f"bytes; details in {out}"
    )


def run_check(path: Path, tmp_path: Path) -> tuple[int, str, float, int]:
    """`python -m wanlb.cli check -c PATH` from this checkout: exit code, output, wall seconds, peak RSS in bytes.

    The peak comes from GNU time (``%M``), which forks the check from its own small process. Without it,
    from wait4(): that child's own rusage, but counting the RSS of this pytest process it was forked from
    (an upper bound)."""
    out_path, rss_path = tmp_path / "check.out", tmp_path / "check.rss"
    argv = [sys.executable, "-m", "wanlb.cli", "check", "-c", str(path)]
    if TIME:
        argv = [TIME, "-f", "%M", "-o", str(rss_path), *argv]
    with out_path.open("wb") as out:
        start = time.monotonic()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ | {"PYTHONPATH": SRC},
            start_new_session=True,  # a hung check is killed with GNU time, its parent
        )
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > HANG:
                os.killpg(proc.pid, signal.SIGKILL)
                os.wait4(proc.pid, 0)
                pytest.fail(f"`wanlb check` of {path.name} still running after {HANG} s")
            time.sleep(0.005)
        wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    output = out_path.read_bytes().decode(errors="replace")
    # GNU time puts "Command exited with non-zero status N" in its -o file before the figure.
    peak_kib = int(rss_path.read_text().split()[-1]) if TIME else usage.ru_maxrss
    return proc.returncode, output, wall, peak_kib * 1024


@pytest.mark.parametrize("item", INPUTS, ids=lambda i: i.name)
def test_check_refuses(item: BadInput, tmp_path: Path, measured: list[dict[str, Any]]) -> None:
    if item.make is None:
        path = BAD / item.name
    else:
        path = tmp_path / item.name
        item.make(path)
    code, output, wall, peak = run_check(path, tmp_path)
    measured.append(
        {"input": item.name, "wall_s": round(wall, 3), "peak_rss_bytes": peak, "output_bytes": len(output.encode())}
    )

    assert code == 2, output
    assert "Traceback" not in output, output
    assert len(output.encode()) <= OUTPUT_LIMIT, output
    lines = output.splitlines()
    assert lines, "no output"
    assert lines[0].startswith(item.prefix(str(path))), f"{item.why}: {lines[0]!r}"
    assert item.message.lower() in lines[0].lower(), f"{item.why}: {lines[0]!r}"
    # One line per issue, each naming the file: nothing spills onto a line of its own, no control characters.
    assert all(line.startswith(f"{path}:") and line.isprintable() for line in output.split("\n")[:-1]), output
    assert output.endswith("\n"), output
    assert len(lines) <= MAX_ISSUES + 1, output
    assert peak <= PEAK_RSS_LIMIT, f"{item.name}: peak RSS {peak / 1e6:.1f} MB"


def test_many_errors_are_counted_not_listed(tmp_path: Path) -> None:
    path = tmp_path / "thirty.yaml"
    next(i for i in INPUTS if i.name == "thirty_errors.yaml").place(path)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert len(lines) == MAX_ISSUES + 1
    assert lines[-1] == f"{path}: … and 10 more errors"


# --- any input at all: ConfigError or a Config, never another exception, never an unbounded report ----------

# A report line: file (≤ 200) + line + field (≤ 100) + message (≤ 300); MAX_ISSUES of them and a count line.
REPORT_LIMIT = (MAX_ISSUES + 1) * 700
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _bounded_report(exc: ConfigError, filename: str) -> None:
    """At most MAX_ISSUES + 1 lines of bounded length, each naming the file, printable (user text escaped)."""
    report = str(exc)
    assert report and len(report) <= REPORT_LIMIT, report[:1000]
    lines = report.split("\n")
    assert len(lines) <= MAX_ISSUES + 1, report[:1000]
    assert all(line.startswith(filename) and line.isprintable() for line in lines), report[:1000]


def _parsed_or_refused(text: str) -> None:
    try:
        parse_config(text, "fuzz.yaml")
    except ConfigError as exc:
        _bounded_report(exc, "fuzz.yaml")


YAMLISH = st.lists(
    st.sampled_from(
        [
            *"abz09:-[]{},&*!|>'\"#?%@`~\\. \t\n\r",
            "\x00",
            "\x07",
            "\x85",
            "\ufeff",
            "\ud800",
            "é",
            "\n  ",
            "\n    ",
            "- ",
            ": ",
            "lan",
            "isps",
            "interfaces",
            "name",
            "interface",
            "gateway",
            "health",
            "targets",
            "mark",
            "mark_mask",
            "0x",
            "1e9",
            ".nan",
            ".inf",
            "~",
            "true",
            "!!python/name:os.system",
            "!!binary",
            "!!set",
            "!!omap",
            "<<",
            "2024-13-45",
            "12:30:45",
            "9" * 30,
            "---",
            "...",
            "%YAML 1.1",
        ]
    ),
    max_size=80,
).map("".join)


@FUZZ
@given(YAMLISH)
def test_yamlish_text_is_parsed_or_refused(text: str) -> None:
    _parsed_or_refused(text)


@FUZZ
@given(st.text(max_size=300))
def test_any_text_is_parsed_or_refused(text: str) -> None:
    _parsed_or_refused(text)


@FUZZ
@given(st.integers(0, len(BASE)), st.integers(0, 20), st.text(max_size=20))
def test_edited_base_is_parsed_or_refused(at: int, cut: int, insert: str) -> None:
    """Near-valid input: the corpus base with a few characters cut and others inserted somewhere."""
    _parsed_or_refused(BASE[:at] + insert + BASE[at + cut :])


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(10**30), 10**30)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["lan0", "wan1", "100.64.1.1", "203.0.113.10", "10.0.0.0/8", "200ms", "icmp", "tcp", "/x"])
)
FIELDS = st.sampled_from(
    ["lan", "interfaces", "bypass", "isps", "name", "interface", "gateway", "weight", "mark", "table", "health",
     "method", "targets", "port", "interval", "timeout", "quorum", "snat", "mark_mask", "helpers", "hooks",
     "control", "socket", "routing", "failover", "dns_name", "http_path"]
)  # fmt: skip
DATA = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(FIELDS | SCALARS, inner, max_size=5),
    max_leaves=30,
)


@FUZZ
@given(st.dictionaries(FIELDS, DATA, max_size=6))
def test_any_structure_is_parsed_or_refused(data: dict[Any, Any]) -> None:
    """Well-formed YAML of any shape, with wanlb's own keys in odd places and odd types under them."""
    try:
        text = yaml.safe_dump(data, allow_unicode=True)
    except yaml.YAMLError:
        return
    _parsed_or_refused(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_any_bytes_are_loaded_or_refused(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bytes.yaml"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError as exc:
        _bounded_report(exc, str(path))
