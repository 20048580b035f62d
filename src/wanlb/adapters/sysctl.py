"""Sysctl adapter: read and write `/proc/sys` keys; which ones, and their originals, is the reconciler's call."""

from __future__ import annotations

from pathlib import Path

from wanlb.runtime import sysctl_key_allowed

PROC_SYS = Path("/proc/sys")


def read(key: str) -> str | None:
    try:
        return (PROC_SYS / key).read_text().strip()
    except OSError:
        return None


def write(key: str, value: str) -> None:
    """Write one of the keys wanlb may change; any other key is refused, whatever asked for it."""
    if not sysctl_key_allowed(key):
        raise ValueError(f"refusing to write sysctl {key!r}: not one wanlb changes")
    (PROC_SYS / key).write_text(value + "\n")
