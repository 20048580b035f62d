"""The small vocabulary every layer shares: an ISP's state and the address families.

Apart from the planner so the health machines, the fleet and the read model can say "up" or "IPv6"
without importing the code that decides where connections go.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

Family = Literal[4, 6]
FAMILIES: tuple[Family, ...] = (4, 6)


class IspStatus(StrEnum):
    """What the health monitor (or an admin) says about an ISP."""

    UP = "up"
    DEGRADED = "degraded"  # quality limits exceeded but still usable as a last choice
    DOWN = "down"
    DISABLED = "disabled"  # administratively drained

    @property
    def usable(self) -> bool:
        return self in (IspStatus.UP, IspStatus.DEGRADED)
