"""`wanlb run --log-format text|json`: the plain lines it always wrote, or one JSON object per line."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from wanlb import cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "wanlb.yaml"

# `wanlb run` with the daemon replaced by one that logs a few records: the real option parsing and logging
# setup, in a fresh interpreter (pytest's own log capture would make logging.basicConfig a no-op here).
_FAKE_RUN = """
import logging, sys
import wanlb.daemon

def fake_daemon(config_path, cleanup_on_exit):
    log = logging.getLogger("wanlb.daemon")
    log.debug("debug detail")
    log.info("reconciled: %d change(s)", 3)
    log.warning("isp1 up → down: 3 failed rounds\\nsecond line", extra={"isp": "isp1", "event": "down", "n": 48})
    try:
        raise RuntimeError("nft refused")
    except RuntimeError:
        log.exception("apply failed")

wanlb.daemon.run = fake_daemon
from wanlb.cli import main
main(sys.argv[1:], prog_name="wanlb")
"""


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _FAKE_RUN, "run", "-c", str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "WANLB_LOG_FORMAT"} | (env or {}),
    )


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("wanlb.daemon", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_text_is_the_default_and_unchanged() -> None:
    res = _run()
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(rf"{stamp} INFO wanlb\.daemon: reconciled: 3 change\(s\)", lines[0])
    assert re.fullmatch(rf"{stamp} WARNING wanlb\.daemon: isp1 up → down: 3 failed rounds", lines[1])
    assert lines[2] == "second line"
    assert re.fullmatch(rf"{stamp} ERROR wanlb\.daemon: apply failed", lines[3])
    assert "Traceback" in lines[4] and "RuntimeError: nft refused" in res.stderr
    assert "debug detail" not in res.stderr
    assert _run("--log-format", "text").stderr.count("\n") == res.stderr.count("\n")


@pytest.mark.parametrize("how", ["option", "env"])
def test_json_is_one_object_per_line(how: str) -> None:
    res = _run("--log-format", "json") if how == "option" else _run(env={"WANLB_LOG_FORMAT": "json"})
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in res.stderr.splitlines()]  # every line is one object
    assert len(records) == 3
    info, warning, error = records
    assert list(info) == ["ts", "level", "logger", "message"]
    assert info["level"] == "INFO" and info["logger"] == "wanlb.daemon"
    assert info["message"] == "reconciled: 3 change(s)"  # %-args applied
    ts = datetime.fromisoformat(info["ts"])
    assert ts.utcoffset() is not None and ts.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs((datetime.now(ts.tzinfo) - ts).total_seconds()) < 60
    assert warning["message"] == "isp1 up → down: 3 failed rounds\nsecond line"  # newline escaped, one line
    assert (warning["isp"], warning["event"], warning["n"]) == ("isp1", "down", 48)
    assert error["level"] == "ERROR" and "RuntimeError: nft refused" in error["exc"]


def test_verbose_json_includes_debug() -> None:
    res = _run("--log-format", "json", "-v")
    assert json.loads(res.stderr.splitlines()[0]) | {"ts": ""} == {
        "ts": "",
        "level": "DEBUG",
        "logger": "wanlb.daemon",
        "message": "debug detail",
    }


def test_unknown_format_is_a_usage_error() -> None:
    res = CliRunner().invoke(cli.main, ["run", "--log-format", "xml", "-c", str(EXAMPLE)])
    assert res.exit_code == 2 and "xml" in res.output


def test_help_documents_the_option() -> None:
    res = CliRunner().invoke(cli.main, ["run", "--help"])
    assert res.exit_code == 0 and "--log-format [text|json]" in res.output


def test_extra_values_json_cannot_encode_become_strings() -> None:
    out = json.loads(cli.JsonLogFormatter().format(_record("x %s", "y", path=Path("/etc/wanlb"), kind=set)))
    assert out["message"] == "x y" and out["path"] == "/etc/wanlb" and out["kind"] == "<class 'set'>"


def test_extra_fields_do_not_override_the_standard_ones() -> None:
    out = json.loads(cli.JsonLogFormatter().format(_record("real", ts="fake", level="fake")))
    assert out["message"] == "real" and out["level"] == "WARNING" and out["ts"] != "fake"


def test_stack_info_is_kept() -> None:
    record = _record("m")
    record.stack_info = "Stack (most recent call last):\n  File x"
    assert json.loads(cli.JsonLogFormatter().format(record))["stack"].startswith("Stack")


def test_the_standard_attribute_list_matches_python() -> None:
    """Every attribute a plain LogRecord has is known, so only `extra=` fields reach the JSON."""
    record = logging.LogRecord("n", logging.INFO, "p", 1, "m", (), None)
    logging.Formatter("%(asctime)s %(message)s").format(record)  # adds message and asctime
    assert set(vars(record)) <= cli._RECORD_ATTRS


def test_setup_writes_to_the_given_stream() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = []
    try:
        buf = io.StringIO()
        cli.setup_run_logging("json", verbose=False, stream=buf)
        logging.getLogger("wanlb.test").info("hello", extra={"isp": "isp2"})
        assert json.loads(buf.getvalue())["isp"] == "isp2"
    finally:
        root.handlers, root.level = saved[0], saved[1]
