"""The daemon under stress it must survive: idle control clients past its file-descriptor limit, kill -9
and restart under traffic, a SIGHUP storm, nft failing during a reload, a WAN deleted and recreated, every
ISP down at once.

Project rule: no tight timed assertions. Each test asserts correctness (no stream broken, no paced
connection failed, the right ruleset) with only generous bounds that catch a hang, and records what it
measured in ``figures.json`` in its pytest tmp dir (also printed: run with ``-s`` or ``-rA`` to see them).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from acceptance import RESYNC_WAIT, STALL, Streams, diff, marked, normalize_nft, poll, wait_streams_established

from wanlb.control import ControlError, DaemonRefused, request
from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab, LabError, python_module
from wanlb.lab.topology import ISP_CUSTOMER_IF, isp_gateway, wan_addr

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

ALL_UP = {"isp1": "up", "isp2": "up", "isp3": "up"}
REAL_NFT = "/usr/sbin/nft"
SHIM_MESSAGE = "nft shim: injected apply failure"
HANG = 20.0
"""Seconds after which something the daemon should do in about a second counts as hung."""


# --- figures -------------------------------------------------------------------------------------


@pytest.fixture
def figures(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """What a test measured: written to ``tmp_path/figures.json`` and printed, whatever the outcome."""
    data: dict[str, Any] = {}
    yield data
    path = tmp_path / "figures.json"
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    print(f"\nFIGURES {request.node.name} ({path}):\n{json.dumps(data, indent=1, default=str)}")


# --- helpers -------------------------------------------------------------------------------------


def try_status(gw: LabGateway, timeout: float = 10.0) -> tuple[dict[str, Any] | None, str | None, float]:
    """One status request: (reply, None) or (None, the refusal or error), and how long it took."""
    start = time.monotonic()
    try:
        reply = request(str(gw.lab.socket_path), {"cmd": "status"}, timeout=timeout)
        return reply, None, time.monotonic() - start
    except ControlError as exc:
        return None, str(exc), time.monotonic() - start


def wait_status(gw: LabGateway, check: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    """Poll status (a "busy" refusal is just another try) until ``check`` holds; the reply that passed."""
    last: dict[str, Any] | None = None
    errors: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        reply, error, _ = try_status(gw)
        if reply is not None:
            last = reply
            if check(reply):
                return reply
        elif error:
            errors.append(error)
        if time.monotonic() > deadline:
            seen = {i["name"]: i["status"] for i in (last or {}).get("isps", [])}
            raise AssertionError(f"not reached in {timeout} s; last status {seen}; errors {errors[-3:]}")
        time.sleep(0.1)


def events(reply: dict[str, Any], isp: str, event: str, after: float = 0.0) -> list[dict[str, Any]]:
    return [e for e in reply["events"] if e["isp"] == isp and e["event"] == event and e["time"] >= after]


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def nofile_soft(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no open-files limit in /proc/{pid}/limits")


def set_weights(gw: LabGateway, weights: Sequence[int]) -> None:
    """Write the lab config with these weights atomically (a reload racing the write must never read half)."""
    data = copy.deepcopy(gw.base)
    for isp, weight in zip(data["isps"], weights, strict=True):
        isp["weight"] = weight
    tmp = gw.config.with_name(gw.config.name + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, gw.config)


def expected_balance(weights: Sequence[int]) -> str:
    """The balance map for three ISPs at these weights, as nft lists it (reduced by the gcd, in config order)."""
    divisor = math.gcd(*weights)
    entries, start = [], 0
    for k, weight in enumerate(weights, start=1):
        end = start + weight // divisor - 1
        entries.append(f"{start if start == end else f'{start}-{end}'} : goto isp_isp{k}")
        start = end + 1
    return f"numgen inc mod {start} vmap {{ {', '.join(entries)} }}"


def balance_rule(gw: LabGateway) -> str | None:
    """The rule of chain balance as nft lists it; None without the chain or with an empty one."""
    try:
        out = gw.run("nft", "list", "chain", "inet", "wanlb", "balance")
    except LabError:
        return None
    body = [line.strip() for line in out.splitlines()[2:-2] if line.strip()]
    rules = [line for line in body if "numgen" in line]
    return None if not body else rules[0] if len(rules) == 1 else out


def table_text(gw: LabGateway) -> str:
    return gw.run("nft", "list", "table", "inet", "wanlb")


def blocks(text: str) -> list[str]:
    """The top-level objects (chains, sets, counters...) of an `nft list table` listing, normalized
    (counter values, set elements) and sorted: object order depends on creation history, not content."""
    found: list[str] = []
    current: list[str] = []
    for line in normalize_nft(text).splitlines():
        if re.match(r"\t\S", line):
            current = [line]
        elif line == "\t}":
            current.append(line)
            found.append("\n".join(current))
            current = []
        elif current:
            current.append(line)
    return sorted(found)


class Pacers:
    """`traffic pace` on every LAN client: one new connection each ``every`` seconds per client."""

    def __init__(self, lab: Lab, every: float = 0.05, timeout: float = 1.0):
        argv = python_module("wanlb.lab.traffic", "pace", "--every", str(every), "--timeout", str(timeout))
        self.procs = [
            lab.popen(c, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in lab.clients
        ]

    def stop(self) -> dict[str, Any]:
        for proc in self.procs:
            proc.terminate()
        records = []
        for proc in self.procs:
            out, err = proc.communicate(timeout=30)
            try:
                records += json.loads(out)["connections"]
            except (json.JSONDecodeError, KeyError):
                raise AssertionError(f"a pacer gave no result: {err.strip()[-500:]}") from None
        failed = [r for r in records if r[1] is None]
        done = sorted(r[1] for r in records if r[1] is not None)
        return {
            "connections": len(records),
            "failed": len(failed),
            "failures": [{"start": r[0], "error": r[2]} for r in failed[:20]],
            "median_s": done[len(done) // 2] if done else None,
            "max_s": done[-1] if done else None,
        }

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def stream_summary(stopped: Sequence[Any]) -> dict[str, Any]:
    by_isp: dict[str, int] = {}
    for s in stopped:
        by_isp[s.isp or "?"] = by_isp.get(s.isp or "?", 0) + 1
    return {
        "streams": len(stopped),
        "broken": sum(1 for s in stopped if not s.ok),
        "by_isp": by_isp,
        "min_counters": min((s.result or {}).get("counters", 0) for s in stopped) if stopped else None,
    }


def stop(gw: LabGateway) -> None:
    """``stop --cleanup``, retried while the control socket says busy; SIGKILL if it never answers."""
    if gw.proc is None or gw.proc.poll() is not None:
        return
    deadline = time.monotonic() + 15
    while True:
        try:
            gw.stop(cleanup=True)
            return
        except DaemonRefused as exc:
            if "busy" not in str(exc) or time.monotonic() > deadline:
                gw.kill9()
                raise
            time.sleep(0.2)


def log_problems(text: str) -> list[str]:
    """Lines of the daemon log that say something crashed."""
    return [line for line in text.splitlines() if "Traceback" in line or "crashed" in line]


# --- 1. idle control clients past the fd limit ----------------------------------------------------

IDLE_CLIENTS = 1100
NOFILE = "--nofile=1024:4096"

IDLE_HELPER = r"""
import collections, json, resource, selectors, socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, n + 200)), hard))
socks, errors = [], collections.Counter()
t0 = time.monotonic()
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    deadline = time.monotonic() + 20
    while True:
        try:
            s.connect(path)
        except BlockingIOError:  # the listen backlog is full: wait for the daemon to accept
            if time.monotonic() < deadline:
                time.sleep(0.001)
                continue
            errors["backlog full for 20 s"] += 1
        except OSError as exc:
            errors[type(exc).__name__] += 1
        else:
            socks.append(s)
            break
        s.close()
        break
print(json.dumps({"connected": len(socks), "errors": dict(errors), "connect_s": round(time.monotonic() - t0, 3)}),
      flush=True)
sel = selectors.DefaultSelector()
for s in socks:
    sel.register(s, selectors.EVENT_READ)
sel.register(sys.stdin, selectors.EVENT_READ)
busy = answered = closed = 0
closed_at = []
running = True
while running:
    for key, _ in sel.select():
        if key.fileobj is sys.stdin:
            running = False
            break
        try:
            data = key.fileobj.recv(4096)
        except OSError:
            data = b""
        if data:
            if b"busy" in data:
                busy += 1
            else:
                answered += 1
        else:  # the daemon closed it; our end stays open until told to go
            closed += 1
            closed_at.append(time.monotonic() - t0)
            sel.unregister(key.fileobj)
print(json.dumps({"busy": busy, "other_replies": answered, "closed_by_daemon": closed,
                  "last_closed_s": round(max(closed_at), 3) if closed_at else None}), flush=True)
for s in socks:
    s.close()
"""


def test_1100_idle_control_clients_at_nofile_1024(lab_factory: Callable[..., Lab], figures: dict[str, Any]) -> None:
    lab = lab_factory(isps=3, clients=2)
    gw = LabGateway(lab)
    gw.write(lambda cfg: None)  # the lab default: icmp probes every 200 ms on every ISP
    gw.start(prefix=["prlimit", NOFILE])
    helper: subprocess.Popen[str] | None = None
    try:
        status = gw.wait_for(ALL_UP)
        pid = status["pid"]
        assert nofile_soft(pid) == 1024, "the daemon does not run at a soft NOFILE of 1024"
        mark, mask = status["isps"][0]["mark"], status["mark_mask"]
        counts = lab.traffic(connections=60)  # isp1 holds connections (in TIME_WAIT) for the failover to flush
        assert counts["failed"] == 0 and counts["isp1"] == 20, counts
        figures["daemon_fds_before"] = fd_count(pid)
        log_before = gw.log.stat().st_size

        helper = lab.popen(
            "gw",
            [sys.executable, "-c", IDLE_HELPER, str(lab.socket_path), str(IDLE_CLIENTS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert helper.stdout is not None and helper.stdin is not None
        opened = json.loads(helper.stdout.readline() or "null")
        assert opened is not None, f"the idle-client helper failed: {helper.stderr.read() if helper.stderr else ''}"
        figures["idle_clients"] = opened
        t_open = time.time()
        assert opened["connected"] == IDLE_CLIENTS, opened

        reply, error, took = try_status(gw)
        figures["fresh_status_during"] = {"answered": reply is not None, "error": error, "seconds": round(took, 3)}
        assert reply is not None or (error and "busy" in error), f"status neither answered nor busy: {error}"
        figures["daemon_fds_during"] = fd_count(pid)

        t0 = time.time()
        lab.fail("isp1", "blackhole")
        down = wait_status(gw, lambda r: bool(events(r, "isp1", "down", t0)), timeout=HANG)
        event = events(down, "isp1", "down", t0)[0]
        figures["failover_down_s"] = round(event["time"] - t0, 3)
        figures["failover_event"] = {k: event[k] for k in ("applied_ms", "done_ms", "flushed", "error")}
        figures["first_status_answer_after_connects_s"] = round(time.time() - t_open, 3)
        assert event["error"] is None and event["flushed"], event
        assert {i["name"]: i["status"] for i in down["isps"]} == {**ALL_UP, "isp1": "down"}
        assert marked(gw, mark, mask) == []
        counts = lab.traffic(connections=60)  # the idle clients are still there
        figures["traffic_after_failover"] = counts
        assert counts["failed"] == 0 and counts["isp1"] == 0 and counts["isp2"] == counts["isp3"] == 30, counts
        figures["daemon_fds_max_seen"] = max(figures["daemon_fds_during"], fd_count(pid))
        # Every idle client still holds its end open; the daemon must have let go of all of them
        # (the busy ones at once, the 64 it served after its 5 s read timeout).
        baseline = figures["daemon_fds_before"] + 4
        assert poll(lambda: fd_count(pid) <= baseline, HANG, 0.05), f"daemon still holds {fd_count(pid)} fds"
        figures["daemon_fds_released_s_after_connects"] = round(time.time() - t_open, 3)

        out, err = helper.communicate(timeout=30)  # closes its stdin: the idle clients go away
        figures["idle_clients_end"] = json.loads(out.strip().splitlines()[-1]) if out.strip() else err[-500:]

        reply, error, took = try_status(gw)
        figures["status_after_s"] = round(took, 3)
        assert reply is not None, f"status after the idle clients left: {error}"
        assert gw.proc is not None and gw.proc.poll() is None, "the daemon died"
        figures["daemon_fds_after"] = fd_count(pid)
        growth = gw.log.stat().st_size - log_before
        figures["log_growth_bytes"] = growth
        assert growth < 1_000_000, f"the log grew by {growth} bytes"
        new_log = gw.log.read_bytes()[log_before:].decode(errors="replace")
        assert log_problems(new_log) == [], new_log[-3000:]
    finally:
        if helper is not None and helper.poll() is None:
            helper.kill()
            helper.wait()
        lab.heal("isp1")
        stop(gw)


# --- 2. kill -9 and restart under traffic ----------------------------------------------------------

STREAMS = 20
AFTER = 5.0  # seconds of traffic after the event under test


@pytest.fixture
def traffic_lab(lab_factory: Callable[..., Lab]) -> Iterator[tuple[Lab, LabGateway, Streams]]:
    """A lab with the daemon up (all ISPs up) and a Streams holder; everything stopped at the end."""
    lab = lab_factory(isps=3, clients=2)
    gw = LabGateway(lab)
    gw.write(lambda cfg: None)
    gw.start()
    streams = Streams(lab)
    try:
        gw.wait_for(ALL_UP)
        yield lab, gw, streams
    finally:
        streams.kill()
        stop(gw)


def test_kill_9_and_restart_under_traffic_break_nothing(
    traffic_lab: tuple[Lab, LabGateway, Streams], figures: dict[str, Any]
) -> None:
    lab, gw, streams = traffic_lab
    streams.start(STREAMS)
    figures["streams_per_isp"] = wait_streams_established(gw, STREAMS)
    pacers = Pacers(lab)
    try:
        time.sleep(1.0)
        before = blocks(table_text(gw))
        applies_before = gw.status()["nft_applies"]
        t0 = time.monotonic()
        gw.kill9()
        killed_table = blocks(table_text(gw))
        assert killed_table == before, "kill -9 changed table inet wanlb"
        time.sleep(1.0)  # traffic flows with no daemon at all
        t1 = time.monotonic()
        gw.start()
        figures["restart_to_socket_s"] = round(time.monotonic() - t1, 3)
        status = gw.wait_for(ALL_UP, timeout=HANG)
        figures["restart_to_all_up_s"] = round(time.monotonic() - t1, 3)
        figures["daemon_down_s"] = round(t1 - t0, 3)
        figures["nft_applies_before_kill"] = applies_before
        figures["nft_applies_after_restart"] = status["nft_applies"]
        figures["last_error_after_restart"] = status["last_error"]
        time.sleep(AFTER)
        after = blocks(table_text(gw))
        assert after == before, "the restarted daemon's table differs from the one before kill -9"
        paced = pacers.stop()
    finally:
        pacers.kill()
    stopped = streams.stop()
    figures["streams"] = stream_summary(stopped)
    figures["paced"] = paced
    assert gw.proc is not None and gw.proc.poll() is None, "the restarted daemon died"
    assert [s.describe() for s in stopped if not s.ok] == []
    assert paced["failed"] == 0, paced
    assert log_problems(gw.log_text()) == []


# --- 3. a SIGHUP storm ----------------------------------------------------------------------------

SIGHUPS = 50
STORM_SECONDS = 10.0
WEIGHT_CYCLE = ((2, 1, 1), (1, 3, 1), (2, 2, 4), (5, 1, 3), (1, 1, 1), (4, 2, 3))
LAST_WEIGHTS = (3, 1, 2)


def test_50_sighups_in_10_s_half_changing_weights(
    traffic_lab: tuple[Lab, LabGateway, Streams], figures: dict[str, Any]
) -> None:
    lab, gw, streams = traffic_lab
    assert gw.proc is not None
    streams.start(STREAMS)
    figures["streams_per_isp"] = wait_streams_established(gw, STREAMS)
    pacers = Pacers(lab)
    try:
        time.sleep(1.0)
        status = gw.status()
        reloads_before, applies_before = status["reloads"], status["nft_applies"]
        changes = 0
        t0 = time.monotonic()
        for n in range(SIGHUPS):
            time.sleep(max(0.0, t0 + n * STORM_SECONDS / SIGHUPS - time.monotonic()))
            if n % 2 == 0:
                changes += 1
                set_weights(gw, LAST_WEIGHTS if n == SIGHUPS - 2 else WEIGHT_CYCLE[changes % len(WEIGHT_CYCLE)])
            gw.proc.send_signal(signal.SIGHUP)
        sent = time.monotonic()
        figures["storm_s"] = round(sent - t0, 3)
        figures["weight_changes"] = changes
        # SIGHUPs that arrive while a reload waits for its turn coalesce into it: what must hold is that a
        # reload ran after the last one, and that it applied the last config.
        sent_wall = time.time()
        wait_status(
            gw,
            lambda r: bool(r["last_reload"]) and r["last_reload"]["time"] >= sent_wall
            and [i["weight"] for i in r["isps"]] == list(LAST_WEIGHTS),
            timeout=60,
        )  # fmt: skip
        figures["last_reload_done_after_last_sighup_s"] = round(time.monotonic() - sent, 3)
        time.sleep(AFTER)
        paced = pacers.stop()
    finally:
        pacers.kill()
    stopped = streams.stop()
    final = gw.status()
    figures["reloads"] = final["reloads"] - reloads_before
    figures["nft_applies"] = final["nft_applies"] - applies_before
    figures["streams"] = stream_summary(stopped)
    figures["paced"] = paced
    figures["last_error"] = final["last_error"]

    assert gw.proc.poll() is None, "the daemon died"
    assert 1 <= final["reloads"] - reloads_before <= SIGHUPS
    assert final["last_reload"]["ok"], final["last_reload"]
    assert [s.describe() for s in stopped if not s.ok] == []
    assert paced["failed"] == 0, paced
    assert final["last_error"] is None
    # The ruleset is what the last config renders: the balance map, and the whole table against
    # `wanlb render --nft-only` of that config loaded in a scratch namespace.
    assert balance_rule(gw) == expected_balance(LAST_WEIGHTS)
    assert {i["name"]: i["weight"] for i in final["isps"]} == dict(
        zip(("isp1", "isp2", "isp3"), LAST_WEIGHTS, strict=True)
    )
    assert [i["share_percent"] for i in final["isps"]] == [50.0, 16.67, 33.33]
    rendered = gw.cli("render", "--nft-only")
    assert rendered.returncode == 0, rendered.stderr
    scratch = f"{lab.topology.prefix}scratch"  # the lab's prefix: lab.down removes it on any exit path too
    subprocess.run(["ip", "netns", "add", scratch], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", scratch, "nft", "-f", "-"], input=rendered.stdout, text=True, check=True)
        want = subprocess.run(
            ["ip", "netns", "exec", scratch, "nft", "list", "table", "inet", "wanlb"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        subprocess.run(["ip", "netns", "del", scratch], check=False)
    have = table_text(gw)
    assert blocks(have) == blocks(want), diff("\n".join(blocks(want)), "\n".join(blocks(have)), "rendered", "kernel")
    assert log_problems(gw.log_text()) == []


# --- 4. nft failing during a reload ---------------------------------------------------------------


def nft_apply_shim(directory: Path, flag: Path) -> Path:
    """A directory with an ``nft`` that fails every apply (``nft -f``) while ``flag`` exists; reads and
    checks (``nft -c``, so a reload's verification passes) go to the real nft."""
    directory.mkdir()
    shim = directory / "nft"
    shim.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{flag}" ] && [ "$1" = "-f" ]; then echo "{SHIM_MESSAGE} ({flag} exists)" >&2; exit 1; fi\n'
        f'exec {REAL_NFT} "$@"\n'
    )
    shim.chmod(0o755)
    return directory


def test_nft_failing_during_a_reload_keeps_the_ruleset_and_the_resync_applies_it_later(
    lab_factory: Callable[..., Lab], tmp_path: Path, figures: dict[str, Any]
) -> None:
    lab = lab_factory(isps=3, clients=2)
    flag = tmp_path / "nft-broken"
    shim = nft_apply_shim(tmp_path / "bin", flag)
    gw = LabGateway(lab)
    gw.write(lambda cfg: None)
    gw.start(env={"PATH": f"{shim}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"})
    new_weights = (3, 1, 2)
    try:
        gw.wait_for(ALL_UP)
        before_text = table_text(gw)
        before = blocks(before_text)
        old_balance = balance_rule(gw)
        assert old_balance == expected_balance((1, 1, 1))
        log_before = gw.log.stat().st_size

        set_weights(gw, new_weights)
        flag.touch()
        t0 = time.monotonic()
        with pytest.raises(DaemonRefused) as refused:
            gw.reload()
        figures["reload_reply_s"] = round(time.monotonic() - t0, 3)
        figures["reload_error"] = str(refused.value)
        assert "applying it failed" in str(refused.value) and SHIM_MESSAGE in str(refused.value)

        assert blocks(table_text(gw)) == before, diff("\n".join(before), "\n".join(blocks(table_text(gw))))
        assert balance_rule(gw) == old_balance
        status = gw.status()
        figures["last_error"] = status["last_error"]
        figures["status_weights_during_outage"] = {i["name"]: i["weight"] for i in status["isps"]}
        figures["status_shares_during_outage"] = {i["name"]: i["share_percent"] for i in status["isps"]}
        assert SHIM_MESSAGE in (status["last_error"] or ""), status["last_error"]
        # status shows what the kernel has: still the old weights
        assert figures["status_weights_during_outage"] == {"isp1": 1, "isp2": 1, "isp3": 1}
        assert status["reloads"] == 1
        new_log = gw.log.read_bytes()[log_before:].decode(errors="replace")
        assert SHIM_MESSAGE in new_log, new_log[-2000:]
        counts = lab.traffic(connections=60)  # the old ruleset still forwards, at the old weights
        figures["traffic_during_outage"] = counts
        assert counts["failed"] == 0 and counts["isp1"] == counts["isp2"] == counts["isp3"] == 20, counts

        time.sleep(1.0)  # the outage outlasts at least part of a resync cycle
        flag.unlink()
        t1 = time.monotonic()
        want = expected_balance(new_weights)
        applied = poll(lambda: balance_rule(gw) == want, RESYNC_WAIT, 0.05)
        figures["applied_after_nft_works_s"] = round(time.monotonic() - t1, 3)
        assert applied, f"{RESYNC_WAIT} s after nft works: balance is {balance_rule(gw)!r}, want {want!r}"
        status = wait_status(gw, lambda r: r["last_error"] is None, timeout=RESYNC_WAIT)
        assert {i["name"]: i["weight"] for i in status["isps"]} == {"isp1": 3, "isp2": 1, "isp3": 2}
        counts = lab.traffic(connections=60)
        figures["traffic_after"] = counts
        assert counts["failed"] == 0 and (counts["isp1"], counts["isp2"], counts["isp3"]) == (30, 10, 20), counts
        figures["log_lines_with_shim_message"] = gw.log_text().count(SHIM_MESSAGE)
        assert log_problems(gw.log_text()) == []
    finally:
        flag.unlink(missing_ok=True)
        stop(gw)


# --- 5. a WAN deleted and recreated; every ISP down and back ---------------------------------------


def recreate_wan(lab: Lab, i: int) -> None:
    """Rebuild WAN i as ``lab up`` builds it: a veth wan<i> (gw) ↔ cust0 (isp<i>), addresses, links up."""
    gw, isp = lab.ns("gw"), lab.ns(f"isp{i}")
    batch = (
        f"link add name wan{i} type veth peer name {ISP_CUSTOMER_IF} netns {isp}\n"
        f"addr add {wan_addr(i)}/24 dev wan{i}\n"
        f"link set wan{i} up\n"
    )
    subprocess.run(["ip", "-n", gw, "-batch", "-"], input=batch, text=True, check=True)
    batch = f"addr add {isp_gateway(i)}/24 dev {ISP_CUSTOMER_IF}\nlink set {ISP_CUSTOMER_IF} up\n"
    subprocess.run(["ip", "-n", isp, "-batch", "-"], input=batch, text=True, check=True)


def sysctl(gw: LabGateway, key: str) -> str:
    return gw.run("sysctl", "-n", key).strip()


def test_wan_deleted_and_recreated(traffic_lab: tuple[Lab, LabGateway, Streams], figures: dict[str, Any]) -> None:
    lab, gw, streams = traffic_lab
    status = gw.status()
    isp2 = next(i for i in status["isps"] if i["name"] == "isp2")
    mark, mask = isp2["mark"], status["mark_mask"]
    table = ["ip", "route", "show", "table", str(isp2["table"])]
    streams.start(12)
    per_isp = wait_streams_established(gw, 12)
    figures["streams_per_isp"] = per_isp
    assert per_isp.get("isp2") and marked(gw, mark, mask), "isp2 carries no stream: the test would prove nothing"
    link_events = status["link_events"]

    t0 = time.time()
    gw.run("ip", "link", "del", "wan2")
    reply = wait_status(gw, lambda r: bool(events(r, "isp2", "down", t0)), timeout=HANG)
    down = events(reply, "isp2", "down", t0)[0]
    figures["down_after_delete_s"] = round(down["time"] - t0, 3)
    figures["down_event"] = {k: down[k] for k in ("reason", "flushed", "error", "applied_ms", "done_ms")}
    assert "wan2" in down["reason"] and down["error"] is None, down
    # The down event's "flushed" is usually 0: deleting the device makes the kernel's masquerade code drop
    # the entries NATed through it before the daemon counts them. Either way none may be left.
    assert poll(lambda: not marked(gw, mark, mask), 5.0), "isp2's connections were not flushed"
    figures["isp2_entries_gone_s"] = round(time.time() - t0, 3)
    assert {i["name"]: i["status"] for i in reply["isps"]} == {**ALL_UP, "isp2": "down"}
    counts = lab.traffic(connections=60)
    figures["traffic_while_deleted"] = counts
    assert counts["failed"] == 0 and counts["isp2"] == 0 and counts["isp1"] == counts["isp3"] == 30, counts

    t1 = time.time()
    recreate_wan(lab, 2)
    reply = wait_status(gw, lambda r: bool(events(r, "isp2", "up", t1)), timeout=HANG)
    up = events(reply, "isp2", "up", t1)[0]
    figures["up_after_recreate_s"] = round(up["time"] - t1, 3)
    figures["up_event"] = {k: up[k] for k in ("reason", "error")}
    figures["link_events"] = reply["link_events"] - link_events
    assert f"default via {isp_gateway(2)} dev wan2" in gw.run(*table)
    assert sysctl(gw, "net.ipv4.conf.wan2.src_valid_mark") == "1"
    assert sysctl(gw, "net.ipv4.conf.wan2.rp_filter") == "2"
    counts = lab.traffic(connections=90)
    figures["traffic_after_recreate"] = counts
    assert counts["failed"] == 0 and counts["isp1"] == counts["isp2"] == counts["isp3"] == 30, counts

    # A stream fails by itself after STALL s without data: only a stream still running that long after
    # the deletion has really kept flowing through it.
    time.sleep(max(0.0, t0 + STALL + 1.0 - time.time()))
    stopped = streams.stop()
    figures["streams"] = stream_summary(stopped)
    others = [s for s in stopped if s.isp != "isp2"]
    assert len(others) == per_isp.get("isp1", 0) + per_isp.get("isp3", 0)
    assert [s.describe() for s in others if not s.ok] == []
    figures["isp2_streams"] = [s.describe() for s in stopped if s.isp == "isp2"]
    assert gw.proc is not None and gw.proc.poll() is None
    assert log_problems(gw.log_text()) == []


def test_all_isps_down_and_back(traffic_lab: tuple[Lab, LabGateway, Streams], figures: dict[str, Any]) -> None:
    lab, gw, _ = traffic_lab
    assert gw.status()["isps"][0]["health"]["monitored"]
    t0 = time.time()
    try:
        for isp in lab.isps:
            lab.fail(isp, "blackhole")
        reply = wait_status(gw, lambda r: all(events(r, isp, "down", t0) for isp in lab.isps), timeout=HANG)
        figures["all_down_s"] = round(max(events(reply, i, "down", t0)[0]["time"] for i in lab.isps) - t0, 3)
        figures["down_errors"] = [events(reply, i, "down", t0)[0]["error"] for i in lab.isps]
        assert {i["name"]: i["status"] for i in reply["isps"]} == dict.fromkeys(lab.isps, "down")
        assert not any(i["active"] for i in reply["isps"]) and reply["last_error"] is None, reply["last_error"]
        assert balance_rule(gw) is None, "chain balance still balances with no ISP active"
        assert "goto balance" not in gw.run("nft", "list", "chain", "inet", "wanlb", "from_lan")
        time.sleep(1.0)  # a while with nothing usable (last_resort main: the main table's default route)
        assert gw.proc is not None and gw.proc.poll() is None
    finally:
        t1 = time.time()
        for isp in lab.isps:
            lab.heal(isp)
    reply = wait_status(gw, lambda r: all(events(r, isp, "up", t1) for isp in lab.isps), timeout=HANG)
    figures["all_up_s"] = round(max(events(reply, i, "up", t1)[0]["time"] for i in lab.isps) - t1, 3)
    assert {i["name"]: i["status"] for i in reply["isps"]} == ALL_UP
    assert balance_rule(gw) == expected_balance((1, 1, 1))
    counts = lab.traffic(connections=90)
    figures["traffic_after"] = counts
    assert counts["failed"] == 0 and counts["isp1"] == counts["isp2"] == counts["isp3"] == 30, counts
    final = gw.status()
    figures["last_error"] = final["last_error"]
    figures["nft_applies"] = final["nft_applies"]
    assert final["last_error"] is None
    assert log_problems(gw.log_text()) == []
