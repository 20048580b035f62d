"""User hooks: programs run on every ISP state change, never in the failover path.

Each hook runs as its own subprocess with ``WANLB_ISP``, ``WANLB_EVENT``
(``up``/``down``/``degraded``/``disabled``) and ``WANLB_INTERFACE`` in its
environment.  The daemon starts them after the kernel has been updated and
does not wait for them (one ISP's events run their hooks in order, so a ``down``
hook finishes before that ISP's ``up`` hooks start); one that outlives ``hook_timeout`` is killed, and every
failure (cannot start, non-zero exit, timeout) is logged with its output.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

log = logging.getLogger("wanlb.hooks")

OUTPUT_LIMIT = 2000  # characters of a failing hook's output worth logging


def _kill_group(pid: int) -> None:
    """Kill the hook's whole process group (a shell hook's children too), if it still exists."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


async def run_hooks(paths: tuple[str, ...], env: dict[str, str], timeout: float, order: asyncio.Lock) -> None:
    """Run one event's hooks side by side; ``order`` (one per ISP) makes an ISP's events run in sequence."""
    async with order:
        await asyncio.gather(*(run_hook(path, env, timeout) for path in paths))


async def run_hook(path: str, env: dict[str, str], timeout: float) -> bool:
    """Run one hook to completion or timeout; returns whether it succeeded."""
    what = f"hook {path} ({env.get('WANLB_ISP')} {env.get('WANLB_EVENT')})"
    try:
        proc = await asyncio.create_subprocess_exec(
            path,
            env={**os.environ, **env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        log.error("%s could not start: %s", what, exc)
        return False
    try:
        async with asyncio.timeout(timeout):
            output, _ = await proc.communicate()
    except TimeoutError:
        _kill_group(proc.pid)
        await proc.wait()
        log.error("%s killed after %gs timeout", what, timeout)
        return False
    except asyncio.CancelledError:  # the daemon is stopping: leave nothing behind
        _kill_group(proc.pid)
        raise
    text = output.decode(errors="replace").strip()[-OUTPUT_LIMIT:]
    if proc.returncode != 0:
        log.error("%s failed with exit code %s%s", what, proc.returncode, f": {text}" if text else "")
        return False
    log.info("%s done%s", what, f": {text}" if text else "")
    return True
