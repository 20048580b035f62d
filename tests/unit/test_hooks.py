"""Hooks run as real processes: success, failure and timeout are each logged, and a timeout kills the
hook's children too."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import pytest

from wanlb.hooks import run_hook, run_hooks

ENV = {"WANLB_ISP": "isp1", "WANLB_EVENT": "down", "WANLB_INTERFACE": "wan1"}


def hook(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_hook_sees_its_environment(tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = hook(tmp_path, "env.sh", f'echo "$WANLB_ISP $WANLB_EVENT $WANLB_INTERFACE" > {out}')
    assert asyncio.run(run_hook(path, ENV, 5))
    assert out.read_text() == "isp1 down wan1\n"


def test_failing_and_missing_hooks_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "wanlb.hooks")
    assert not asyncio.run(run_hook(hook(tmp_path, "bad.sh", "echo oops >&2; exit 4"), ENV, 5))
    assert not asyncio.run(run_hook(str(tmp_path / "absent"), ENV, 5))
    assert "bad.sh (isp1 down) failed with exit code 4: oops" in caplog.text
    assert "absent (isp1 down) could not start" in caplog.text


def test_timeout_kills_the_hook_and_its_children(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pidfile = tmp_path / "child"
    path = hook(tmp_path, "slow.sh", f"sleep 30 & echo $! > {pidfile}; wait")
    start = time.monotonic()
    assert not asyncio.run(run_hook(path, ENV, 0.5))
    assert time.monotonic() - start < 10
    assert "killed after 0.5s timeout" in caplog.text
    child = int(pidfile.read_text())
    time.sleep(0.1)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


def test_one_isps_events_run_their_hooks_in_order(tmp_path: Path) -> None:
    out = tmp_path / "order"
    # The down hook is the slow one: without ordering, "up" would be written first.
    path = hook(tmp_path, "rec.sh", f'[ "$WANLB_EVENT" = down ] && sleep 0.4; echo "$WANLB_EVENT" >> {out}')

    async def two_events() -> None:
        order = asyncio.Lock()
        down = asyncio.create_task(run_hooks((path,), ENV, 5, order))
        await asyncio.sleep(0)
        up = asyncio.create_task(run_hooks((path,), {**ENV, "WANLB_EVENT": "up"}, 5, order))
        await asyncio.gather(down, up)

    asyncio.run(two_events())
    assert out.read_text().split() == ["down", "up"]
    assert os.environ.get("WANLB_ISP") is None  # the daemon's own environment is untouched


def test_a_flood_of_output_is_bounded_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import resource

    caplog.set_level(logging.INFO, "wanlb.hooks")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    path = hook(tmp_path, "flood.sh", "head -c 200000000 /dev/zero")
    assert asyncio.run(run_hook(path, ENV, 30))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 20, f"the daemon grew by {grown_mb:.0f} MB reading 200 MB of hook output"
    assert f"[{200_000_000 - 64 * 1024} more bytes of output dropped]" in caplog.text


def test_exit_status_is_the_hooks_own_and_its_background_child_dies_at_the_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "wanlb.hooks")
    pidfile = tmp_path / "child.pid"
    path = hook(tmp_path, "bg.sh", f"sleep 60 & echo $! > {pidfile}; exit 0")
    assert asyncio.run(run_hook(path, ENV, 5.0)), caplog.text  # judged by the hook itself: exit 0
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the hook's background child outlived the timeout"
    assert "killed" not in caplog.text


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
