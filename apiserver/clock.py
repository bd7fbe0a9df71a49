"""The clock the apiserver's grace periods run on: real time in the daemon, a manual one in tests.

Only code whose correctness depends on elapsed time (identity release after a grace period) takes a Clock,
so that tests advance time instead of sleeping. Network timeouts and intervals that merely pace work
(heartbeat, re-enforcing the cluster config) use asyncio directly.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds and a sleep measured on the same scale."""

    def now(self) -> float:
        """Seconds on a monotonic scale; only differences are meaningful."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once now() has advanced by at least `seconds`."""
        ...


class SystemClock:
    """The process's monotonic clock."""

    def __repr__(self) -> str:
        return "<SystemClock>"

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
