"""Fixtures of the apiserver tests: an admin etcd client, a manual clock, an in-process publisher, no leaks.

The publisher runs in the test's event loop against the real etcd of the `etcd` fixture, fed by a real
source (a manifest directory, or the Kubernetes API source against the fake API server); only time is
faked, through the Clock the identity allocator waits on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import itertools
from collections.abc import AsyncIterator, Callable

import pytest

from apiserver import publisher as publisher_module
from clustermesh import kube
from clustermesh.etcd import client as etcd_client

CLUSTER = "cluster-a"
CLUSTER_ID = 3
DEADLINE = 15.0
STATE_PREFIXES = (b"cilium/state/", b"cilium/cluster-config/")


class ManualClock:
    """A Clock that moves only when advance() is called; sleepers wake once their deadline has passed."""

    def __init__(self) -> None:
        self._now = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __repr__(self) -> str:
        return f"<ManualClock now={self._now} sleepers={len(self._sleepers)}>"

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        await future

    def advance(self, seconds: float) -> None:
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)


def options(**overrides: object) -> publisher_module.Options:
    """Publisher options for tests: cluster-a with ID 3, a short lease, otherwise the defaults."""
    values: dict[str, object] = {"cluster": CLUSTER, "cluster_id": CLUSTER_ID, "lease_ttl": 30}
    values.update(overrides)
    return publisher_module.Options(**values)  # type: ignore[arg-type]


@pytest.fixture
async def admin(etcd, certs_dir) -> AsyncIterator[etcd_client.EtcdClient]:
    client = await etcd_client.EtcdClient.connect(etcd.client_config(certs_dir.admin))
    yield client
    await client.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@dataclasses.dataclass
class Running:
    """A publisher running in a task of the test."""

    publisher: publisher_module.Publisher

    async def settled(self) -> None:
        """Wait until every event delivered so far is converted and every write has landed."""
        async with asyncio.timeout(DEADLINE):
            await self.publisher.flush()


Start = Callable[..., "contextlib.AbstractAsyncContextManager[Running]"]


@pytest.fixture
def start_publisher(admin, clock) -> Start:
    """`async with start_publisher(source, **options) as running:` — returns once the publisher is ready."""

    @contextlib.asynccontextmanager
    async def start(source: kube.Source, **overrides: object) -> AsyncIterator[Running]:
        publisher = publisher_module.Publisher(admin, source, options(**overrides), clock=clock)
        task = asyncio.create_task(publisher.run(), name="test publisher")
        try:
            ready = asyncio.create_task(publisher.ready.wait(), name="test publisher ready")
            try:
                async with asyncio.timeout(DEADLINE):
                    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ready.cancel()
                await asyncio.gather(ready, return_exceptions=True)
            if task.done():
                task.result()
            yield Running(publisher)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    return start


async def state(client: etcd_client.EtcdClient) -> dict[str, etcd_client.KeyValue]:
    """Every published record and the cluster config (not the heartbeat, not the canaries), by key."""
    found: dict[str, etcd_client.KeyValue] = {}
    for prefix in STATE_PREFIXES:
        for kv in (await client.list_prefix(prefix)).kvs:
            found[kv.key.decode()] = kv
    return found


async def canaries(client: etcd_client.EtcdClient) -> dict[str, etcd_client.KeyValue]:
    return {kv.key.decode(): kv for kv in (await client.list_prefix(f"cilium/synced/{CLUSTER}/".encode())).kvs}


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves tasks it created running."""
    before = asyncio.all_tasks()
    yield
    # Let tasks cancelled at teardown finish unwinding.
    for _ in range(3):
        await asyncio.sleep(0)
    leaked = [task for task in asyncio.all_tasks() - before if not task.done() and task is not asyncio.current_task()]
    assert not leaked, f"tasks left running: {[task.get_name() for task in leaked]}"

