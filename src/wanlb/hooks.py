"""User hooks: programs run on every ISP state change, never in the failover path.

Each hook runs as its own subprocess with ``WANLB_ISP``, ``WANLB_EVENT``
(``up``/``down``/``degraded``/``disabled``) and ``WANLB_INTERFACE`` in its
environment.  The daemon starts them after the kernel has been updated and
does not wait for them (one ISP's events run their hooks in order, so a ``down``
hook finishes before that ISP's ``up`` hooks start); one that outlives ``hook_timeout`` is killed with its
process group, and every failure (cannot start, non-zero exit, timeout) is logged with its output.  A
process that leaves the group (``setsid``, a double-forking daemon) escapes the kill: under systemd the
unit's cgroup still ends it when wanlb stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

log = logging.getLogger("wanlb.hooks")

OUTPUT_LIMIT = 2000  # characters of a hook's output worth logging
OUTPUT_KEEP = 64 * 1024  # bytes of a hook's output kept; the rest is counted and dropped


def _kill_group(pid: int) -> None:
    """Kill the hook's whole process group (a shell hook's children too), if it still exists."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


async def run_hooks(paths: tuple[str, ...], env: dict[str, str], timeout: float, order: asyncio.Lock) -> None:
    """Run one event's hooks side by side; ``order`` (one per ISP) makes an ISP's events run in sequence."""
    async with order:
        await asyncio.gather(*(run_hook(path, env, timeout) for path in paths))


async def run_hook(path: str, env: dict[str, str], timeout: float) -> bool:
    """Run one hook; returns whether it succeeded.

    Its exit status is the hook process's own: a child it leaves running in
    the background (holding the output pipe open) neither delays nor spoils
    it.  Output is kept up to :data:`OUTPUT_KEEP` bytes (the rest is counted
    and dropped, so a chatty hook costs no memory).  At ``timeout`` — counted
    from the start, for the hook and everything it started in its process
    group — the whole group is killed; so is it when the daemon stops.
    """
    what = f"hook {path} ({env.get('WANLB_ISP')} {env.get('WANLB_EVENT')})"
    # Our own pipe, not asyncio's: asyncio's Process.wait() also waits for its pipes to close,
    # which a background child of the hook would hold open.
    read_fd, write_fd = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            path,
            env={**os.environ, **env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            start_new_session=True,
        )
    except OSError as exc:
        os.close(read_fd)
        log.error("%s could not start: %s", what, exc)
        return False
    finally:
        os.close(write_fd)
    stream = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stream), os.fdopen(read_fd, "rb", buffering=0)
    )
    output = _Output()
    reading = asyncio.create_task(output.drain(stream))
    try:
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()
            log.error("%s killed after %gs timeout%s", what, timeout, output.describe())
            return False
        # Children still holding the pipe get until the timeout to finish writing, then the group goes.
        try:
            async with asyncio.timeout(max(0.0, timeout - (asyncio.get_running_loop().time() - output.started))):
                await asyncio.shield(reading)
        except TimeoutError:
            _kill_group(proc.pid)
    except asyncio.CancelledError:  # the daemon is stopping: leave nothing behind
        _kill_group(proc.pid)
        raise
    finally:
        reading.cancel()
        transport.close()
    if proc.returncode != 0:
        log.error("%s failed with exit code %s%s", what, proc.returncode, output.describe())
        return False
    log.info("%s done%s", what, output.describe())
    return True


class _Output:
    """A hook's output: the first OUTPUT_KEEP bytes kept, the rest counted."""

    def __init__(self) -> None:
        self.kept = bytearray()
        self.dropped = 0
        self.started = asyncio.get_running_loop().time()

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            room = OUTPUT_KEEP - len(self.kept)
            self.kept += chunk[:room]
            self.dropped += max(0, len(chunk) - room)

    def describe(self) -> str:
        text = self.kept.decode(errors="replace").strip()[-OUTPUT_LIMIT:]
        more = f" [{self.dropped} more bytes of output dropped]" if self.dropped else ""
        return f": {text}{more}" if text or more else ""
