"""Test helpers shared by the suite: waiting for a condition instead of sleeping, and running a component for
the length of a block.

Tests import it as `from tests import helpers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

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


class Runnable(Protocol):
    """A component that runs until cancelled and sets `ready` once it has started (the codebase's convention)."""

    async def run(self, *, ready: asyncio.Event | None = None) -> None: ...


R = TypeVar("R", bound=Runnable)


@contextlib.asynccontextmanager
async def running(component: R, *, timeout: float = 10.0) -> AsyncIterator[R]:
    """Run component.run() in a task until the block ends; enter once it is ready, or raise why it stopped."""
    ready = asyncio.Event()
    task = asyncio.create_task(component.run(ready=ready))
    waiter = asyncio.create_task(ready.wait())
    try:
        async with asyncio.timeout(timeout):
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            await task  # raises why it could not start
        yield component
    finally:
        for pending in (waiter, task):
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending

