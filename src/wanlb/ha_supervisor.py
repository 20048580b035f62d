"""Running an HA node's helpers: conntrackd and keepalived, configured by :mod:`wanlb.ha`, kept running by the
daemon (restarted with backoff when they exit), and conntrackd told what to do when keepalived says the role
changed.  Nothing here blocks the loop: the programs are asynchronous subprocesses, their output is read in
bounded lines, every conntrackd command has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wanlb import ha
from wanlb.config import Config
from wanlb.tasks import log_crash

log = logging.getLogger("wanlb.ha")

BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0  # seconds before a restart: doubled per quick exit, reset after a good run
GOOD_RUN = 60.0  # a run this long resets the backoff
COMMAND_TIMEOUT = 5.0  # one conntrackd -C … command
OUTPUT_KEPT = 20  # lines of a helper's output kept for status
LINE_MAX = 1000  # characters of one output line kept


@dataclass
class HelperState:
    """What status shows of one helper."""

    running: bool = False
    pid: int | None = None
    starts: int = 0
    last_exit: str | None = None
    missing: str | None = None  # the program is not installed


class Helper:
    """One supervised program: started, restarted with backoff when it exits, stopped with the daemon."""

    def __init__(self, name: str, argv: list[str], pidfile: Path, stale: tuple[Path, ...] = ()) -> None:
        self.name, self.argv, self.pidfile = name, argv, pidfile
        self.stale = stale  # lock and pid files the program leaves when killed: stale once our run of it ended
        self.state = HelperState()
        self.output: deque[str] = deque(maxlen=OUTPUT_KEPT)
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"ha-{self.name}")
        self._task.add_done_callback(log_crash)

    async def _supervise(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._stopping:
            if shutil.which(self.argv[0]) is None:
                self.state.missing = f"{self.argv[0]} is not installed (Debian: apt install {self.name})"
                log.error("ha: %s", self.state.missing)
                await asyncio.sleep(BACKOFF_MAX)
                continue
            self.state.missing = None
            for path in self.stale:  # ours: no run of it is left (the daemon ended leftovers before the first)
                path.unlink(missing_ok=True)
            started = time.monotonic()
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            except OSError as exc:
                self.state.last_exit = f"cannot start: {exc}"
                log.error("ha: %s: %s", self.name, self.state.last_exit)
            else:
                self.state.running, self.state.pid = True, self._proc.pid
                self.state.starts += 1
                self.pidfile.write_text(f"{self._proc.pid}\n")  # for the next daemon, should this one be killed
                log.info("ha: %s started (pid %d)", self.name, self._proc.pid)
                await self._read(self._proc)
                code = await self._proc.wait()
                self.state.running, self.state.pid = False, None
                self.state.last_exit = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
                if self._stopping:
                    return
                log.error("ha: %s ended (%s); restarting in %gs: %s", self.name, self.state.last_exit, backoff,
                          " | ".join(list(self.output)[-3:]))  # fmt: skip
            backoff = BACKOFF_FIRST if time.monotonic() - started > GOOD_RUN else min(BACKOFF_MAX, backoff * 2)
            await asyncio.sleep(backoff)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        """Its output, line by line, bounded: kept for status, logged at debug."""
        assert proc.stdout is not None
        while True:
            try:
                raw = await proc.stdout.readline()
            except ValueError:  # a line longer than the stream's limit: skip what is buffered
                raw = await proc.stdout.read(64 * 1024)
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip()[:LINE_MAX]
            self.output.append(line)
            log.debug("ha: %s: %s", self.name, line)

    async def stop(self) -> None:
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 3.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class HaNode:
    """The helpers of one node, and its role as keepalived last said it (``backup`` until it says otherwise)."""

    def __init__(self, config: Config) -> None:
        self.paths = ha.paths_for(config)
        self.config = config
        self.role: str | None = None  # the role conntrackd was last told: none yet
        self.role_since = time.time()
        self.last_commit: str | None = None  # how the last role change's conntrackd steps went
        self._fifo: int | None = None
        self._keep = -1
        self._buffer = b""
        root = self.paths.root
        self.conntrackd = Helper("conntrackd", ["conntrackd", "-C", str(self.paths.conntrackd_conf)],
                                 root / "conntrackd.pid", (self.paths.conntrackd_lock,))  # fmt: skip
        self.keepalived = Helper("keepalived", [
            "keepalived", "--dont-fork", "--log-console", "--log-detail", "--vrrp",
            "--use-file", str(self.paths.keepalived_conf), "--pid", str(self.paths.keepalived_pid),
            "--vrrp_pid", str(self.paths.vrrp_pid),
        ], root / "keepalived.supervised.pid", (self.paths.keepalived_pid, self.paths.vrrp_pid))  # fmt: skip

    def write(self, config: Config) -> None:
        """The helpers' files for ``config`` (called off the loop: file I/O); root-only directory."""
        self.config = config
        self.paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.paths.root, 0o700)
        for path, text in (
            (self.paths.conntrackd_conf, ha.conntrackd_conf(config, self.paths)),
            (self.paths.keepalived_conf, ha.keepalived_conf(config, self.paths)),
        ):
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)

    def prepare(self) -> None:
        """Before the first start (off the loop): keepalived's FIFO, and what a killed daemon left behind."""
        if not self.paths.notify_fifo.is_fifo():
            self.paths.notify_fifo.unlink(missing_ok=True)
            os.mkfifo(self.paths.notify_fifo, 0o600)
        for helper in (self.keepalived, self.conntrackd):  # left running by a daemon that was killed
            _end_leftover(helper.pidfile, str(self.paths.root))

    def listen(self, on_role: Callable[[str], None]) -> None:
        """Read keepalived's FIFO on the loop (made by :meth:`write`): each line about our instance's state →
        ``on_role(role)``.  The daemon holds a write end too, so a keepalived restart is no end of file."""
        self._fifo = os.open(self.paths.notify_fifo, os.O_RDONLY | os.O_NONBLOCK)
        self._keep = os.open(self.paths.notify_fifo, os.O_WRONLY | os.O_NONBLOCK)
        self._buffer = b""
        asyncio.get_running_loop().add_reader(self._fifo, self._readable, on_role)

    def _readable(self, on_role: Callable[[str], None]) -> None:
        try:
            self._buffer += os.read(self._fifo, 4096)
        except BlockingIOError:
            return
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > 4096:  # no line is this long: not keepalived's
            self._buffer = b""
        for line in lines:
            if role := ha.parse_notify(line.decode(errors="replace")):
                on_role(role)

    def start(self) -> None:
        """conntrackd first: the node must be syncing before keepalived may make it primary."""
        self.conntrackd.start()
        self.keepalived.start()

    async def stop(self) -> None:
        await self.keepalived.stop()  # the VIPs go first (keepalived removes them), then the sync
        await self.conntrackd.stop()
        if self._fifo is not None:
            asyncio.get_running_loop().remove_reader(self._fifo)
            os.close(self._fifo)
            os.close(self._keep)
            self._fifo = None

    async def reload_keepalived(self) -> None:
        """keepalived re-reads its file on SIGHUP (VIPs, priority, interval)."""
        proc = self.keepalived._proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(1)

    async def become(self, role: str) -> str:
        """keepalived says the role changed: conntrackd's steps for it, in order, each bounded in time."""
        if role not in ha.ROLES:
            raise ValueError(f"unknown role {role!r}")
        self.role, self.role_since = role, time.time()
        outcome = []
        for args in ha.role_commands(role):
            argv = ["conntrackd", "-C", str(self.paths.conntrackd_conf), *args]
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                )  # fmt: skip
                out, _ = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                outcome.append(f"conntrackd {' '.join(args)}: {exc or 'timed out'}")
                continue
            if proc.returncode != 0:
                text = out.decode(errors="replace").strip()[:200]
                outcome.append(f"conntrackd {' '.join(args)}: exit {proc.returncode}: {text}")
        self.last_commit = "; ".join(outcome) or "ok"
        return self.last_commit


def _end_leftover(pidfile: Path, root: str) -> None:
    """End the helper a killed daemon left running — only if that pid still runs a command line naming this
    node's helper directory (a recycled pid is someone else's)."""
    try:
        pid = int(pidfile.read_text()[:20])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()[:4096]
    except (OSError, ValueError):
        return
    if root.encode() not in cmdline:
        return
    log.warning("ha: ending pid %d, a helper left running by the previous daemon", pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        for _ in range(30):
            time.sleep(0.1)
            os.kill(pid, 0)
        os.kill(pid, signal.SIGKILL)
