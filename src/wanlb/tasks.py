"""Background tasks must never die unnoticed: :func:`log_crash` is every task's done-callback."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("wanlb")


def log_crash(task: asyncio.Task[Any]) -> None:
    """Log the exception a finished task died of (a cancelled or successful one says nothing)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("background task %s crashed", task.get_coro(), exc_info=exc)
