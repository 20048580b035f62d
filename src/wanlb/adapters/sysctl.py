"""Sysctl adapter that remembers original values so cleanup can restore them.

Originals are kept in a small JSON state file, written before the first change
and never overwritten by a later start: after a ``kill -9`` and a restart the
file still holds what the machine had before wanlb ever ran.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

PROC_SYS = Path("/proc/sys")


def read(key: str) -> str | None:
    try:
        return (PROC_SYS / key).read_text().strip()
    except OSError:
        return None


def write(key: str, value: str) -> None:
    (PROC_SYS / key).write_text(value + "\n")


class SysctlKeeper:
    """Sets sysctls while recording each original once in ``state_path``."""

    def __init__(self, state_path: str):
        self.state_path = Path(state_path)

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        return dict(data.get("sysctls", {}))

    def _save(self, originals: dict[str, str]) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"sysctls": originals}, indent=2, sort_keys=True))
        os.replace(tmp, self.state_path)

    def ensure(self, wanted: tuple[tuple[str, str], ...]) -> list[str]:
        """Set each key to its value; returns the keys that changed."""
        originals = self._load()
        changed = []
        for key, value in wanted:
            current = read(key)
            if current is None or current == value:
                continue
            if key not in originals:
                originals[key] = current
                self._save(originals)
            write(key, value)
            changed.append(key)
        return changed

    def restore(self) -> list[str]:
        """Put back every recorded original and forget the state file."""
        originals = self._load()
        restored = []
        for key, value in originals.items():
            if read(key) is not None:
                write(key, value)
                restored.append(key)
        self.state_path.unlink(missing_ok=True)
        return restored
