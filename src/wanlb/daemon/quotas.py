"""The data quotas' shell: read the WAN counters on a timer, hand them to the fleet, keep the counts on disk.

The arithmetic is :mod:`wanlb.quota` (pure) and the counts are the fleet's (:attr:`wanlb.fleet.Fleet.quotas`).
This reads our nft counters every :data:`INTERVAL` seconds (one netlink dump of the table's counters,
:meth:`wanlb.kernel.Kernel.nft_counters`) in a worker thread, on a timer of its own: a slow read delays the next
count, never a probe round.  The counts live in
``control.data_dir``/``quota.json`` (``/var/lib/wanlb``: they must outlive a reboot, unlike the runtime state
in /run), written atomically every :data:`SAVE_EVERY` seconds, at once after an event or a reset, and on the
way out.  Between two writes nothing is lost to a ``kill -9``: the file keeps the counter readings it
counted up to, and the kernel's counters go on counting; only a power cut loses up to a minute.

A file that cannot be trusted — unreadable, too big, not JSON, a negative or absurd number, a wrong type —
never stops the daemon: the error is logged, the file kept beside as ``quota.json.bad``, and counting starts
again from zero.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wanlb import quota
from wanlb.runtime import state_dir_problem, write_private

if TYPE_CHECKING:
    from wanlb.config import Config
    from wanlb.daemon.executor import Daemon

log = logging.getLogger("wanlb.daemon")

INTERVAL = 5.0  # seconds between readings of the counters
SAVE_EVERY = 60.0  # seconds between writes while nothing happens (a router's flash wears)
MAX_FILE_BYTES = 64 * 1024  # 64 ISPs take about 10 kB
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """This boot's id: readings taken in another boot are of counters that have since started from zero."""
    try:
        return BOOT_ID.read_text()[:64].strip()
    except OSError:
        return ""


def load(path: Path, boot: str) -> tuple[dict[str, quota.Usage], str | None]:
    """The counts in ``path`` ({} when there is none yet) and, when they cannot be used, why.  A bad file is
    moved aside as ``<path>.bad`` (the next write starts a fresh one); a directory others could write is not
    read at all (its file could be anyone's)."""
    problem = state_dir_problem(path.parent)
    if problem:
        return {}, f"refusing to read {path}: {problem}; counting starts from zero"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        return {}, _set_aside(path, f"cannot be opened ({exc.strerror})")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}, _set_aside(path, "is not a regular file")
        raw = os.read(fd, MAX_FILE_BYTES + 1)
    except OSError as exc:
        return {}, _set_aside(path, f"cannot be read ({exc.strerror})")
    finally:
        os.close(fd)
    if len(raw) > MAX_FILE_BYTES:
        return {}, _set_aside(path, f"is larger than {MAX_FILE_BYTES} bytes")
    try:
        return quota.parse(json.loads(raw), boot), None
    except (ValueError, TypeError, RecursionError) as exc:  # (UnicodeDecodeError, JSONDecodeError: ValueErrors)
        return {}, _set_aside(path, f"is invalid ({str(exc)[:200]})")


def _set_aside(path: Path, what: str) -> str:
    """Keep a bad file as ``<path>.bad`` (replacing an older one: one copy is enough to look at) and say so."""
    bad = path.with_name(path.name + ".bad")
    try:
        os.replace(path, bad)
        kept = f"kept as {bad}"
    except OSError as exc:
        kept = f"could not be moved aside ({exc.strerror})"
    return f"the quota counts in {path} {what}: {kept}; counting starts again from zero"


def save(path: Path, data: dict[str, Any]) -> None:
    """Write atomically and durably (the counts outlive a power cut), root-only, into a directory only root can
    write (an OSError saying why otherwise)."""
    try:
        write_private(path, data, durable=True)
    except PermissionError as exc:
        raise OSError(f"refusing to write in {path.parent}: {exc}") from None


def readings(config: Config, counters: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """ISP → (bytes in, bytes out) of its WAN, for the ISPs with a quota whose counters exist."""
    out = {}
    for isp in config.isps:
        rx, tx = counters.get(f"isp_{isp.name}_rx"), counters.get(f"isp_{isp.name}_tx")
        if isp.quota is not None and rx is not None and tx is not None:
            out[isp.name] = (rx[1], tx[1])
    return out


class Quotas:
    """One daemon's quota counting: :meth:`restore` before the first reconcile, :meth:`sync` every
    :data:`INTERVAL` (and once right after the first reconcile), :meth:`reset` on request, :meth:`stop` last."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.boot = boot_id()
        self._saved_at: float | None = None  # wall time of the last write (None: not yet)
        self._write = asyncio.Lock()
        self._trouble: dict[str, str] = {}  # what failed last ("read", "write") and why: logged once a streak

    async def restore(self) -> None:
        """The counts the last run left, into the fleet; a file that cannot be used is logged and set aside."""
        usages, problem = await asyncio.to_thread(load, self.daemon.config.quota_path, self.boot)
        if problem:
            log.error("%s", problem)
        self.daemon.fleet.restore_quotas(usages)

    async def sync(self) -> None:
        """Read the counters, let the fleet count (and decide), carry out what it says, write if due."""
        d = self.daemon
        if not d.fleet.quotas and not any(i.quota is not None for i in d.config.isps):
            return
        counted = await self._read(d.config)
        before = set(d.fleet.quotas)
        effects = d.fleet.count_quotas(counted, d.wall())
        await d.execute(effects)
        due = self._saved_at is None or d.wall() - self._saved_at >= SAVE_EVERY
        if effects or due or set(d.fleet.quotas) != before:  # (a reload added or removed a quota: written now)
            await self.save()

    async def _read(self, config: Config) -> dict[str, tuple[int, int]]:
        """The WAN counters of the ISPs with a quota ({} when nft cannot say: the cycles still move)."""
        try:
            counters = await asyncio.to_thread(self.daemon.kernel.nft_counters)
        except Exception as exc:  # (a timeout too) the next reading adds what this one missed
            self._fails("read", f"cannot read the WAN counters for the quotas: {exc}")
            return {}
        self._recovers("read", "the quotas read the WAN counters again")
        return readings(config, counters or {})

    async def save(self, restarted: bool = False) -> None:
        """Write the counts (``restarted``: as of counters that start from zero, the table being deleted)."""
        d = self.daemon
        usages = quota.restarted(d.fleet.quotas) if restarted else d.fleet.quotas
        data, path = quota.to_json(usages, self.boot), d.config.quota_path
        async with self._write:
            try:
                await asyncio.to_thread(save, path, data)
            except OSError as exc:  # counting goes on in memory; the next write tries again
                self._fails("write", f"cannot write the quota counts to {path}: {exc}")
                return
        self._saved_at = d.wall()
        self._recovers("write", f"the quota counts are written to {path} again")

    async def reset(self, isp: str) -> dict[str, Any]:
        """``wanlb quota reset ISP``: the fleet starts its count again; the change is written at once."""
        d = self.daemon
        try:
            message, effects = d.fleet.reset_quota(isp, d.wall())
        except KeyError:
            return {"ok": False, "error": f"no ISP named {isp!r}"}
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        error = await d.execute(effects)
        await self.save()
        return {"ok": True, "message": message} if error is None else {"ok": False, "error": f"{message}; {error}"}

    async def stop(self, cleanup: bool) -> None:
        """The last reading and write; with ``cleanup`` (the table, so its counters, is deleted next) as of
        counters that start from zero."""
        if not self.daemon.fleet.quotas and not any(i.quota is not None for i in self.daemon.config.isps):
            return
        try:
            await self.sync()
        except Exception as exc:  # the way out goes on (a cleanup must still run): the counts are written anyway
            log.error("the last quota reading failed: %s", exc)
        await self.save(restarted=cleanup)

    def _fails(self, what: str, why: str) -> None:
        if self._trouble.get(what) != why:
            log.error("%s", why)
        self._trouble[what] = why

    def _recovers(self, what: str, news: str) -> None:
        if self._trouble.pop(what, None) is not None:
            log.info("%s", news)
