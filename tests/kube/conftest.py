"""Fixtures shared by the Kubernetes source tests: a recording sink, running a source, environment hygiene."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from clustermesh import kube

DEADLINE = 10.0


class Recorder:
    """A sink that records every item and lets a test wait, with a deadline, for a condition on them."""

    def __init__(self) -> None:
        self.items: list[kube.SourceItem] = []
        self._changed = asyncio.Condition()

    def __repr__(self) -> str:
        return f"<Recorder items={self.items!r}>"

    async def __call__(self, item: kube.SourceItem) -> None:
        async with self._changed:
            self.items.append(item)
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` holds; fail the test after DEADLINE seconds."""
        async with asyncio.timeout(DEADLINE), self._changed:
            await self._changed.wait_for(predicate)

    async def wait_for_event(self, type_: kube.EventType, key: kube.ObjectKey) -> kube.Event:
        """The first recorded event of `type_` for `key`, waiting for it if needed."""
        await self.wait_for(lambda: self.find(type_, key) is not None)
        found = self.find(type_, key)
        assert found is not None
        return found

    def find(self, type_: kube.EventType, key: kube.ObjectKey) -> kube.Event | None:
        return next((e for e in self.events() if e.type is type_ and e.key == key), None)

    def events(self) -> list[kube.Event]:
        return [item for item in self.items if item is not kube.SYNCED]

    def mark(self) -> int:
        """A position in the recording, for `since`."""
        return len(self.items)

    def since(self, mark: int) -> list[tuple[kube.EventType, str]]:
        """(type, key) of what was recorded after `mark`; SYNCED shows as (None, "SYNCED")."""
        return [_brief(item) for item in self.items[mark:]]

    def state(self) -> dict[kube.ObjectKey, dict[str, Any]]:
        """What a consumer applying every event would hold."""
        current: dict[kube.ObjectKey, dict[str, Any]] = {}
        for item in self.events():
            if item.type is kube.EventType.UPSERT:
                current[item.key] = item.obj
            else:
                current.pop(item.key, None)
        return current


def _brief(item: kube.SourceItem) -> Any:
    if item is kube.SYNCED:
        return (None, "SYNCED")
    return (item.type, str(item.key))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


Starter = Callable[[kube.Source, kube.EventSink], Awaitable["asyncio.Task[None]"]]


@pytest.fixture
async def start() -> AsyncIterator[Starter]:
    """`await start(source, sink)` runs a source in a task, returned once SYNCED; teardown cancels it."""
    tasks: list[asyncio.Task[None]] = []

    async def start_source(source: kube.Source, sink: kube.EventSink) -> asyncio.Task[None]:
        ready = asyncio.Event()
        task = asyncio.create_task(source.run(sink, ready=ready), name=f"test run {source!r}")
        tasks.append(task)
        ready_wait = asyncio.create_task(ready.wait(), name="test wait ready")
        try:
            async with asyncio.timeout(DEADLINE):
                await asyncio.wait({task, ready_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready_wait.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ready_wait
        if task.done():
            task.result()
        return task

    yield start_source
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a reflector or fake-server thread running."""
    before = set(threading.enumerate())
    yield
    leaked = [
        thread.name
        for thread in threading.enumerate()
        if thread not in before and thread.is_alive() and thread.name.startswith(("kube reflector", "fake"))
    ]
    assert not leaked, f"threads left running: {leaked}"
