"""Test helpers shared by the suite: waiting for a condition instead of sleeping.

Tests import it as `from tests import helpers`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

Predicate = Callable[[], bool | Awaitable[bool]]


async def eventually(
    predicate: Predicate,
    *,
    timeout: float = 10.0,
    interval: float = 0.01,
    description: str | None = None,
) -> None:
    """Return once predicate() (sync or async) is true; raise AssertionError after `timeout` seconds.

    A predicate may also raise AssertionError to mean "not yet"; the last one is chained to the failure, so a
    test can write its expectations as plain asserts.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_failure: AssertionError | None = None
    while True:
        try:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            last_failure = None
        except AssertionError as exc:
            last_failure = exc
        if loop.time() >= deadline:
            what = description or getattr(predicate, "__qualname__", repr(predicate))
            raise AssertionError(f"not true within {timeout}s: {what}") from last_failure
        await asyncio.sleep(interval)
