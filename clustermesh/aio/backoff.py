"""Jittered exponential backoff for retry loops: the one retry-delay policy used across the project."""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Delays growing from initial to maximum by factor, each randomised by +/- jitter (a fraction).

    Call wait() after a failure and reset() after a success. Not shared between tasks.
    """

    def __init__(
        self, *, initial: float = 0.2, maximum: float = 5.0, factor: float = 2.0, jitter: float = 0.2
    ) -> None:
        if initial <= 0 or maximum < initial or factor < 1 or not 0 <= jitter < 1:
            raise ValueError("backoff needs 0 < initial <= maximum, factor >= 1 and 0 <= jitter < 1")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self.attempts = 0

    def __repr__(self) -> str:
        return f"<Backoff attempts={self.attempts} initial={self.initial} maximum={self.maximum}>"

    def next_delay(self) -> float:
        """The delay before the next attempt; counts an attempt."""
        base = min(self.maximum, self.initial * self.factor**self.attempts)
        self.attempts += 1
        return base * (1 + random.uniform(-self.jitter, self.jitter))

    async def wait(self) -> None:
        """Sleep for next_delay()."""
        await asyncio.sleep(self.next_delay())

    def reset(self) -> None:
        """Start again from the initial delay."""
        self.attempts = 0
