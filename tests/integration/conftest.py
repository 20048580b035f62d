"""Shared fixtures for tests against the real kernel: root detection and throw-away network labs."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from wanlb.lab.lab import Lab

TESTS = str(Path(__file__).resolve().parents[1])
if TESTS not in sys.path:  # the shared test helpers in tests/ (badinputs) import as top-level modules
    sys.path.insert(0, TESTS)

from harness import gw, unique_lab_name  # noqa: E402, F401  (the shared lab harness: tests/integration/harness.py)


@pytest.fixture
def require_root() -> None:
    """Skip unless we can build namespaces and nftables: root with iproute2 and nft. Use it as
    `pytestmark = pytest.mark.usefixtures("require_root")`; `lab_factory` and `lab_name` imply it."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None:
        pytest.skip("needs root, iproute2 and nft")


@pytest.fixture
def lab_name(require_root: None) -> str:
    """A fresh lab name (for tests that call `Lab.up` themselves)."""
    return unique_lab_name()


@pytest.fixture
def lab_factory(require_root: None) -> Iterator[Callable[..., Lab]]:
    """`make(**Lab.up kwargs) -> Lab` with a unique name each call; every lab made is torn down at the end
    of the test, whatever happened."""
    labs: list[Lab] = []

    def make(**kwargs: Any) -> Lab:
        lab = Lab.up(unique_lab_name(), **kwargs)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.down()
