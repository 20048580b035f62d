"""The bad-input corpus: config files wanlb must refuse, each with the ``FILE:LINE: field: message`` it must say.

``tests/corpus/bad/*.yaml`` are committed, with ``expected.json`` giving for each the line (``null`` when no
line applies: the error is about the file, or a value YAML reads but Python cannot hold), the field path
(``""`` when the error is not about one field) and a fragment the first line of the report must contain.
Most are ``tests/corpus/good/base.yaml`` with one thing wrong.  The inputs that are no plain file, or too big
to commit (a FIFO, a symlink to /dev/zero, 50 MB, 20,000 levels of nesting, 50,000 values...), are made at
run time by :data:`GENERATED`.  Shared by ``tests/unit/test_bad_inputs.py`` (``wanlb check``) and
``tests/integration/test_reload_hostile.py`` (a reload of a running daemon).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"
BAD = CORPUS / "bad"
GOOD = CORPUS / "good"
EXAMPLES = CORPUS.parents[1] / "examples"
BASE = (GOOD / "base.yaml").read_text()
BASE_LINES = BASE.splitlines()
MIB = 1 << 20


@dataclass(frozen=True)
class BadInput:
    name: str
    line: int | None
    field: str
    message: str
    why: str
    make: Callable[[Path], None] | None = None
    """Creates the input at the given (absent) path; None for a committed file in tests/corpus/bad."""

    def prefix(self, filename: str) -> str:
        """How the first line of the report must start."""
        if self.line is None:
            return f"{filename}: "
        return f"{filename}:{self.line}: {self.field}:" if self.field else f"{filename}:{self.line}: "

    def place(self, path: Path) -> None:
        """Put this input at ``path``, replacing whatever is there (file, FIFO, symlink or directory)."""
        remove(path)
        if self.make is None:
            shutil.copyfile(BAD / self.name, path)
        else:
            self.make(path)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _line(text: str, nth: int = 0) -> int:
    """1-based line number of the ``nth`` base line equal to ``text``."""
    return [i + 1 for i, line in enumerate(BASE_LINES) if line == text][nth]


def _base_with(old: str, new: list[str]) -> str:
    i = _line(old) - 1
    return "\n".join([*BASE_LINES[:i], *new, *BASE_LINES[i + 1 :]]) + "\n"


def _write(text: str | bytes) -> Callable[[Path], None]:
    data = text.encode() if isinstance(text, str) else text

    def make(path: Path) -> None:
        path.write_bytes(data)

    return make


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _dangling(path: Path) -> None:
    path.symlink_to(path.with_name(path.name + ".nowhere"))


def _loop(path: Path) -> None:
    path.symlink_to(path)


def _directory(path: Path) -> None:
    path.mkdir()


def _nothing(path: Path) -> None:
    pass


def _sized(size: int) -> Callable[[Path], None]:
    """A file of exactly ``size`` bytes: the base config, then comment lines (all of it real YAML)."""

    def make(path: Path) -> None:
        line = b"#" * 63 + b"\n"
        lines, rest = divmod(size - len(BASE.encode()), len(line))
        with path.open("wb") as fh:
            fh.write(BASE.encode())
            for start in range(0, lines, 1 << 14):
                fh.write(line * min(1 << 14, lines - start))
            if rest:
                fh.write(b"#" * (rest - 1) + b"\n")

    return make


def _max_valid_looking() -> str:
    """The biggest input that looks valid all the way: 64 ISPs probing 64 targets each, 10,000 bypass
    networks, padded with comments to just under 1 MiB; only the last ISP's interface repeats the first's,
    which only the cross-checks after full validation see."""
    targets = "[" + ", ".join(f"198.51.{j // 256}.{j % 256}" for j in range(64)) + "]"
    isps = []
    for i in range(64):
        interface = "wan0" if i == 63 else f"wan{i}"
        isps.append(
            f"  - name: isp{i}\n    interface: {interface}\n    gateway: 100.{64 + i // 256}.{i % 256}.1\n"
            f"    weight: {i % 10 + 1}\n    tier: {i % 3 + 1}\n"
            f"    health: {{method: icmp, targets: {targets}, quorum: 2, interval: 200ms, timeout: 300ms}}\n"
        )
    bypass = "".join(f"    - 10.{i // 256}.{i % 256}.0/24\n" for i in range(10000))
    head = "# the biggest valid-looking config\nlan:\n  interfaces: [lan0]\n  bypass:\n" + bypass + "isps:\n"
    text = head + "".join(isps)
    padding = "# " + "x" * 76 + "\n"
    text += padding * ((MIB - 4096 - len(text)) // len(padding))
    return text


MAX_VALID_LOOKING = _max_valid_looking()
_WAN0 = [i + 1 for i, line in enumerate(MAX_VALID_LOOKING.splitlines()) if line == "    interface: wan0"]

GENERATED = [
    BadInput("fifo.yaml", None, "", "cannot use config: not a regular file", "a FIFO (opened without blocking)", _fifo),
    BadInput("dev_zero.yaml", None, "", "cannot use config: not a regular file", "a symlink to /dev/zero", _dev_zero),
    BadInput("directory.yaml", None, "", "cannot use config: not a regular file", "a directory", _directory),
    BadInput("missing.yaml", None, "", "cannot read config: No such file", "no file at all", _nothing),
    BadInput("dangling.yaml", None, "", "cannot read config: No such file", "a dangling symlink", _dangling),
    BadInput("symlink_loop.yaml", None, "", "Too many levels of symbolic links", "a symlink to itself", _loop),
    BadInput("size_50mb.yaml", None, "", "larger than 1024 KiB", "a 50 MB file", _sized(50 * MIB)),
    BadInput("size_1mib_plus_1.yaml", None, "", "larger than 1024 KiB", "one byte over the limit", _sized(MIB + 1)),
    BadInput(
        "deep_20000.yaml",
        1,
        "",
        "nested deeper than 50",
        "20,000 levels of flow lists",
        _write("lan: " + "[" * 20000 + "]" * 20000 + "\n"),
    ),
    BadInput(
        "deep_20000_map.yaml",
        1,
        "",
        "nested deeper than 50",
        "20,000 levels of flow mappings",
        _write("lan: " + "{a: " * 20000 + "1" + "}" * 20000 + "\n"),
    ),
    BadInput(
        "values_60000.yaml",
        _line("helpers: [ftp]"),
        "",
        "more than 50000 values",
        "60,000 values in one list",
        _write(_base_with("helpers: [ftp]", ["helpers: [" + ",".join(["ftp"] * 60000) + "]"])),
    ),
    BadInput(
        "targets_49000.yaml",
        _line("      targets: [203.0.113.10, 203.0.113.30]"),
        "isps[fiber].health.targets",
        "at most 64 items",
        "49,000 bad health targets (each would be one validation error)",
        _write(
            _base_with(
                "      targets: [203.0.113.10, 203.0.113.30]",
                ["      targets: [" + ",".join(f"t{i}" for i in range(49000)) + "]"],
            )
        ),
    ),
    BadInput(
        "unknown_keys_24000.yaml",
        len(BASE_LINES) + 1,
        "k00000",
        "unknown key",
        "24,000 unknown keys: 20 reported, the rest counted",
        _write(BASE + "".join(f"k{i:05d}: {i}\n" for i in range(24000))),
    ),
    BadInput(
        "bypass_10001.yaml",
        _line("  bypass: [10.99.0.0/16]"),
        "lan.bypass",
        "at most 10000 items",
        "10,001 valid bypass networks",
        _write(
            _base_with(
                "  bypass: [10.99.0.0/16]",
                ["  bypass:", *(f"    - 10.{i // 256 % 256}.{i % 256}.0/24" for i in range(10001))],
            )
        ),
    ),
    BadInput(
        "long_name_1mb.yaml",
        _line("  - name: lte"),
        "isps[2].name",
        "must match",
        "a 1,000,000-character ISP name (quoted back clipped)",
        _write(_base_with("  - name: lte", ["  - name: " + "l" * 1_000_000])),
    ),
    BadInput(
        "max_valid_looking.yaml",
        _WAN0[1],  # isp63's (isp0's is the first)
        "isps[isp63].interface",
        "duplicate interface 'wan0'",
        "~1 MiB: 64 ISPs x 64 targets, 10,000 bypass networks; the last ISP repeats wan0",
        _write(MAX_VALID_LOOKING),
    ),
]


def committed() -> list[BadInput]:
    manifest = json.loads((BAD / "expected.json").read_text())
    files = sorted(p.name for p in BAD.glob("*.yaml"))
    assert files == sorted(manifest), "tests/corpus/bad and its expected.json list different files"
    return [BadInput(name, e["line"], e["field"], e["message"], e["why"]) for name, e in sorted(manifest.items())]


def all_inputs() -> list[BadInput]:
    return [*committed(), *GENERATED]


def good_configs() -> list[Path]:
    return sorted(GOOD.glob("*.yaml")) + sorted(EXAMPLES.glob("*.yaml"))
