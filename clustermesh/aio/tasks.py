"""Ending tasks an owner holds: cancel them and wait until they have really ended, cancelled or not.

An owner that stops its children in a `finally` must not leave them running because it was cancelled a second
time while waiting (kopf's `aiotasks.stop`; Cilium's `Stop()` = cancel + wait). stop() and wait_ended() wait
through cancellation and re-raise it once every awaited future is done; they neither raise the futures' own
exceptions nor mark them retrieved: the owner decides what a failure means (log it, raise it). finish() runs
one cleanup coroutine to its end the same way and returns its result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Collection
from typing import Any, TypeVar

T = TypeVar("T")


async def stop(tasks: Collection[asyncio.Future[Any]]) -> None:
    """Cancel every task, then wait_ended() for them all."""
    for task in tasks:
        task.cancel()
    await wait_ended(tasks)


async def wait_ended(futures: Collection[asyncio.Future[Any]]) -> None:
    """Return once every future is done; if cancelled meanwhile, keep waiting, then raise CancelledError."""
    cancelled = False
    pending = {future for future in futures if not future.done()}
    while pending:
        try:
            _, pending = await asyncio.wait(pending)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


async def join(task: asyncio.Future[Any]) -> None:
    """Wait for task to end on its own (its owner has asked it to stop), even if cancelled meanwhile.

    Its outcome is retrieved (a failure was reported by whoever noticed it, or is moot once stopping); a
    cancellation received while waiting is re-raised once the task has ended.
    """
    try:
        await wait_ended([task])
    finally:
        if task.done() and not task.cancelled():
            task.exception()


async def finish(coro: Awaitable[T]) -> T:
    """Run cleanup to the end even if the caller is cancelled meanwhile (again); then re-raise the cancel."""
    task = asyncio.ensure_future(coro)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
    result = task.result()
    if cancelled:
        raise asyncio.CancelledError
    return result
