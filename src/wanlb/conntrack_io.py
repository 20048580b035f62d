"""The conntrack CLIs' shared I/O (``wanlb conntrack`` and its conntrack(8) drop-in): kernel calls with
the errors an operator understands, and batched writes to stdout that fail loudly when the reader leaves."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

from wanlb.ctnetlink.nlsock import DumpInterrupted

WRITE_BATCH = 4096  # lines per write


def kernel_call(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except BrokenPipeError:
        raise  # our reader left (`| head`): not a conntrack error, see _Group.invoke
    except PermissionError:
        raise click.ClickException("permission denied: conntrack needs CAP_NET_ADMIN (run as root)") from None
    except DumpInterrupted:
        raise click.ClickException(
            "the table changed during the dump (NLM_F_DUMP_INTR): entries may be missing or repeated; run again"
        ) from None
    except OSError as err:
        raise click.ClickException(f"conntrack: {err.strerror or err}") from None


class Out:
    """Batched writes to stdout: one write per few thousand lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.limit = WRITE_BATCH

    def add(self, line: str) -> None:
        self.lines.append(line)
        if len(self.lines) >= self.limit:
            self.flush()

    def extend(self, lines: list[str]) -> None:
        self.lines += lines
        if len(self.lines) >= self.limit:
            self.flush()

    def flush(self) -> None:
        sys.stdout.flush()
        if self.lines:
            lines, self.lines = self.lines, []  # dropped even if the write fails: never written twice
            lines.append("")
            write_all("\n".join(lines).encode())


def write_all(data: bytes) -> None:
    """Write everything to stdout's descriptor, or raise BrokenPipeError.

    Not through ``sys.stdout``: unbuffered (``PYTHONUNBUFFERED``, ``-u``) it ignores a
    partial write, which is what a pipe gives when its reader leaves during a large
    write, so the command would end with status 0 and lines silently lost.
    """
    view, fd = memoryview(data), sys.stdout.fileno()
    while view:
        view = view[os.write(fd, view) :]


def event_stream(sock: Any) -> Iterator[Any]:
    """Events from a non-blocking EventSocket; yields None when idle (time to flush output)."""
    import select

    while True:
        got = False
        for ev in sock.read():
            got = True
            yield ev
        if not got:
            yield None
            select.select([sock], [], [])
