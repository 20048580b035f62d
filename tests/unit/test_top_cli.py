"""`wanlb status` (totals, --rates, --json) and `wanlb top` in a real pseudo-terminal, against a stand-in
daemon on a unix socket (the real daemon in the lab: tests/integration/test_top.py); the daemon's
per-ISP counter fields; and the status JSON documentation covering every field the daemon sends."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_daemon_fake import Harness, run
from test_top_screen import status as fake_status

from wanlb import cli
from wanlb.daemon.surface import Surface
from wanlb.view import Domain, from_json

SRC = str(Path(__file__).resolve().parents[2] / "src")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


class FakeDaemon:
    """Answers every control request with the next ``status`` answer: step k has isp1 at 7000 + k
    connections and 1000·k bytes received."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.k = 0
        self.ipv6: dict[str, dict[str, Any]] = {}  # ISP name -> its status's "ipv6" (else null)
        self.edit: Callable[[dict[str, Any]], None] = lambda answer: None  # changes every answer before it is sent
        self.sock: socket.socket | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        Path(self.path).unlink(missing_ok=True)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, args=(self.sock,), daemon=True)
        self.thread.start()

    def _serve(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.makefile("rb").readline()
                self.k += 1
                answer = fake_status(self.k)
                answer["conn_counts"]["isp1"] = 7000 + self.k
                for isp in answer["isps"]:
                    isp["ipv6"] = self.ipv6.get(isp["name"])
                self.edit(answer)
                conn.sendall(json.dumps(answer).encode() + b"\n")

    def stop(self) -> None:
        assert self.sock is not None
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        Path(self.path).unlink(missing_ok=True)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[FakeDaemon]:
    d = FakeDaemon(str(tmp_path / "wanlb.sock"))
    d.start()
    yield d
    if d.sock is not None and d.sock.fileno() != -1:
        d.stop()


# --- wanlb status -----------------------------------------------------------------------------------


def test_status_shows_totals_and_answers_at_once(daemon: FakeDaemon) -> None:
    started = time.monotonic()
    result = CliRunner().invoke(cli.main, ["status", "--socket", daemon.path])
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 0.9 and daemon.k == 1  # one question, no waiting
    row = next(line for line in result.output.splitlines() if "isp3" in line)
    assert "15" in row and "3.0 kB" in row and "300 B" in row  # new connections, bytes in, bytes out
    assert "new/s" not in result.output


def test_status_shows_each_isps_ipv6_only_when_some_isp_carries_it(daemon: FakeDaemon) -> None:
    result = CliRunner().invoke(cli.main, ["status", "--socket", daemon.path])
    assert "ipv6" not in result.output.lower(), result.output
    down = {"mode": "netmap", "status": "down", "own_health": True, "health": {"monitored": True, "loss_percent": 100}}
    daemon.ipv6 = {"isp1": down, "isp2": {"mode": "masquerade", "status": "up", "own_health": False, "health": None}}
    result = CliRunner().invoke(cli.main, ["status", "--wide", "--socket", daemon.path])
    assert result.exit_code == 0, result.output
    cells = {  # (two spaces or more between the cells of a row)
        row[0]: row
        for line in result.output.splitlines()
        if (row := re.split(r"\s{2,}", line.strip()))[:1] in (["isp1"], ["isp2"], ["isp3"])
    }
    assert "ipv6" in result.output, result.output
    assert cells["isp1"][:3] == ["isp1", "up", "netmap down (loss 100%)"], cells
    assert cells["isp2"][2] == "masquerade up" and cells["isp3"][2] == "-", cells


def test_status_rates_asks_twice_a_second_apart(daemon: FakeDaemon) -> None:
    started = time.monotonic()
    result = CliRunner().invoke(cli.main, ["status", "--rates", "--socket", daemon.path])
    assert result.exit_code == 0, result.output
    assert daemon.k == 2 and 0.95 < time.monotonic() - started < 3
    assert "new/s" in result.output and "hits/s" in result.output and "rates over the last 1.0 s" in result.output
    assert re.search(r"[0-9.]+ kB/s", result.output)


def test_status_json_is_the_answer_and_rates_are_added_only_when_asked(daemon: FakeDaemon) -> None:
    plain = json.loads(CliRunner().invoke(cli.main, ["status", "--json", "--socket", daemon.path]).output)
    assert "rates" not in plain and plain["isps"][0]["bytes_rx"] == 1000
    rated = json.loads(CliRunner().invoke(cli.main, ["status", "--json", "--rates", "--socket", daemon.path]).output)
    assert rated["isps"][0]["bytes_rx"] == 3000  # the second answer
    seconds = rated["rates"]["interval_seconds"]
    assert 0.95 < seconds < 3
    assert rated["rates"]["isps"]["isp1"]["rx_bytes_per_second"] == pytest.approx(1000 / seconds, rel=0.01)
    assert rated["rates"]["rules"]["pin"] == pytest.approx(3 / seconds, rel=0.05)


def test_status_without_a_daemon_exits_3(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.main, ["status", "--rates", "--socket", str(tmp_path / "none.sock")])
    assert result.exit_code == cli.EXIT_NO_DAEMON


def test_top_needs_a_terminal(daemon: FakeDaemon) -> None:
    result = CliRunner().invoke(cli.main, ["top", "--socket", daemon.path])
    assert result.exit_code == cli.EXIT_CONFIG and "needs a terminal" in result.output


# --- wanlb top in a pseudo-terminal -------------------------------------------------------------------


def _controlling_terminal() -> None:
    """In the child, after setsid: stdin becomes its controlling terminal (so Ctrl-C and Ctrl-Z signal it)."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Pty:
    """``wanlb top ARGS`` (or ``argv``) on a 120×40 pseudo-terminal of its own; ``out`` is all it wrote."""

    def __init__(self, *args: str, argv: list[str] | None = None) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.before = termios.tcgetattr(self.slave)
        env = {**os.environ, "PYTHONPATH": SRC, "TERM": "xterm-256color", "PS1": "$ "}
        env.pop("COLUMNS", None)
        env.pop("LINES", None)
        self.proc = subprocess.Popen(argv or [sys.executable, "-m", "wanlb.cli", "top", *args], stdin=self.slave,
                                     stdout=self.slave, stderr=self.slave, env=env, start_new_session=True,
                                     preexec_fn=_controlling_terminal)  # fmt: skip
        self.out = b""
        self.pos = 0  # where the last pattern found ended: the next is looked for after it

    def read_until(self, pattern: bytes, timeout: float = 10.0) -> bytes:
        """Output up to and including the next ``pattern`` after the previous one found."""
        deadline = time.monotonic() + timeout
        while (found := self.out.find(pattern, self.pos)) < 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pattern!r} not seen; tail: {self.out[-3000:]!r}")
            if select.select([self.master], [], [], left)[0]:
                try:
                    self.out += os.read(self.master, 65536)
                except OSError:  # the child closed the terminal
                    raise AssertionError(f"{pattern!r} not seen before exit; tail: {self.out[-3000:]!r}") from None
        start, self.pos = self.pos, found + len(pattern)
        return self.out[start : self.pos]

    def finish(self, timeout: float = 10.0) -> int:
        code = self.proc.wait(timeout)
        while select.select([self.master], [], [], 0.2)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.out += chunk
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


def test_top_in_a_pty_updates_survives_the_daemon_going_away_and_quits_on_q(daemon: FakeDaemon) -> None:
    t = Pty("--socket", daemon.path, "--interval", "0.3")
    try:
        t.read_until(b"\x1b[?1049h")  # the alternate screen
        screen = t.read_until(b"7002")  # connections of isp1, second answer
        assert all(name.encode() in t.out for name in ("isp1", "isp2", "isp3"))
        assert b"kB/s" in t.out and b"pin" in screen
        assert any(c.encode() in t.out for c in "▂▃▄▅▆▇█")
        t.read_until(b"7004")  # and it goes on
        daemon.stop()
        t.read_until(b"daemon not answering")
        daemon.start()
        t.read_until(str(7000 + daemon.k + 1).encode())  # back as soon as it answers again
        os.write(t.master, b"q")
        assert t.finish() == 0
        tail = t.out[t.out.rindex(b"\x1b[?1049h") :]
        assert b"\x1b[?1049l" in tail and b"\x1b[?25h" in tail  # left the alternate screen, cursor shown
        assert termios.tcgetattr(t.slave) == t.before  # echo and line mode back
    finally:
        t.close()


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "sighup"])
def test_top_restores_the_terminal_on_every_way_out(tmp_path: Path, how: str) -> None:
    t = Pty("--socket", str(tmp_path / "nobody.sock"))  # no daemon at all: it says so and keeps trying
    try:
        t.read_until(b"daemon not answering")
        assert termios.tcgetattr(t.slave) != t.before  # cbreak while it runs
        if how == "ctrl-c":
            os.write(t.master, b"\x03")
        else:
            t.proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGHUP)
        code = t.finish()
        assert code == {"ctrl-c": 0, "sigterm": 128 + signal.SIGTERM, "sighup": 128 + signal.SIGHUP}[how]
        assert t.out.rstrip().endswith(b"\x1b[?1049l") or b"\x1b[?1049l" in t.out[t.out.rindex(b"\x1b[?1049h") :]
        assert termios.tcgetattr(t.slave) == t.before
    finally:
        t.close()


def test_top_suspends_with_ctrl_z_and_comes_back_with_fg(tmp_path: Path) -> None:
    """In an interactive shell, as an operator would: Ctrl-Z leaves the alternate screen and stops top,
    `fg` takes the screen back, `q` quits with 0."""
    t = Pty(argv=["bash", "--norc", "--noprofile", "-i"])
    try:
        os.write(t.master, f"{sys.executable} -m wanlb.cli top --socket {tmp_path / 'nobody.sock'}\n".encode())
        t.read_until(b"\x1b[?1049h")
        t.read_until(b"daemon not answering")
        os.write(t.master, b"\x1a")  # Ctrl-Z
        t.read_until(b"\x1b[?1049l")
        assert "│".encode() not in t.read_until(b"Stopped")  # no frame drawn on the shell's screen
        os.write(t.master, b"fg\n")
        t.read_until(b"\x1b[?1049h")
        t.read_until(b"daemon not answering")
        os.write(t.master, b"q")
        t.read_until(b"\x1b[?1049l")
        os.write(t.master, b"echo top-exited-$?\n")
        t.read_until(b"top-exited-0")
        os.write(t.master, b"exit\n")
        assert t.finish() == 0
    finally:
        t.close()


# --- the daemon's answer ------------------------------------------------------------------------------


def test_the_daemon_reports_each_isps_counter_totals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(tmp_path, monkeypatch)

    async def test() -> None:
        d = h.build()
        await d.reconcile("start")
        h.kernel.nft_bump("isp_a_rx", 3)
        h.kernel.nft_bump("isp_a_tx", 2)
        h.kernel.nft_bump("isp_b_new", 5)
        surface = Surface(d)
        isps = {i["name"]: i for i in (await surface.handle({"cmd": "status"}))["isps"]}
        counters = ("packets_rx", "packets_tx", "bytes_rx", "bytes_tx", "new_connections")
        assert [isps["a"][c] for c in counters] == [3, 2, 300, 200, 0]
        assert [isps["b"][c] for c in counters] == [0, 0, 0, 0, 5]

        def broken(table: str = "wanlb") -> None:
            raise RuntimeError("nft: cannot list")

        monkeypatch.setattr(h.kernel, "nft_read", broken)
        unreadable = (await surface.handle({"cmd": "status"}))["isps"]
        assert all(isp[c] is None for isp in unreadable for c in counters)  # unknown, not zero
        assert surface.snapshot().isps[0].bytes_rx is None  # status without counters at all

    run(test)


def test_status_shows_a_domains_addresses_of_both_families_and_only_real_problems() -> None:
    def line(d: dict[str, Any]) -> str:
        return cli.domain_line(from_json(Domain, d))

    def side(state: str, addresses: list[str], error: str | None = None) -> dict[str, Any]:
        return {"state": state, "addresses": addresses, "error": error}

    v4 = side("ok", ["192.0.2.1"])
    assert line(v4) == "192.0.2.1"
    no_aaaa = side("none", [], "x.example: no IPv6 address (the domain has no AAAA record)")
    assert line(v4 | {"ipv6": no_aaaa}) == "192.0.2.1"  # an IPv4-only name is fine
    assert line(v4 | {"ipv6": side("ok", ["2001:db8::1"])}) == "192.0.2.1, 2001:db8::1"
    stale = side("stale", ["2001:db8::1"], "x.example: no answer within 2s")
    shown = "192.0.2.1, 2001:db8::1 (IPv6 stale: x.example: no answer within 2s)"
    assert line(v4 | {"ipv6": stale}) == shown
    no_a = side("none", [], "x.example: no IPv4 address (the domain has no A record)")
    assert line(no_a | {"ipv6": no_aaaa}) == (
        "no address (x.example: no IPv4 address (the domain has no A record); "
        "x.example: no IPv6 address (the domain has no AAAA record))"
    )
    assert line(side("pending", [])) == "none yet"
    assert line(side("failed", [], "x.example: no such domain (NXDOMAIN)")) == (
        "none yet (failed: x.example: no such domain (NXDOMAIN))"
    )
