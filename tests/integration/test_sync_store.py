"""SyncStore and LeasePool against a real etcd: coalescing, skipping unchanged values, leases, sweep, canary.

Excludes: what the apiserver publishes (tests/apiserver), reading (test_watch_store.py).
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import lease as etcd_lease
from clustermesh.etcd import sync_store
from clustermesh.etcd import watch as etcd_watch
from tests.helpers import eventually


@pytest.fixture
async def admin(etcd, certs_dir):
    c = await etcd_client.EtcdClient.connect(etcd.client_config(certs_dir.admin))
    yield c
    await c.close()


@contextlib.asynccontextmanager
async def running(*components):
    tasks = [asyncio.create_task(c.run()) for c in components]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def count_puts(client: etcd_client.EtcdClient, prefix: bytes, start: int, end: int) -> int:
    """PUT events under prefix in revisions [start, end], read back from etcd's history."""
    puts = 0

    async def consume() -> None:
        nonlocal puts
        async for batch in etcd_watch.Watch.prefix(client, prefix, start_revision=start, progress_notify=False):
            puts += sum(e.type is etcd_watch.EventType.PUT for e in batch.events)
            if batch.revision >= end and (not batch.events or batch.events[-1].mod_revision >= end):
                return

    await asyncio.wait_for(consume(), 10)
    return puts


async def test_10000_updates_to_1000_keys_issue_at_most_1000_puts(admin) -> None:
    start = (await admin.status()).revision + 1
    leases = etcd_lease.LeasePool(admin, ttl=30)
    store = sync_store.SyncStore(admin, leases, prefix=b"w/")
    for i in range(10_000):
        store.upsert(f"w/{i % 1000:04}".encode(), f"value-{i}".encode())
    async with running(leases, store):
        await asyncio.wait_for(store.flush(), 20)
    end = (await admin.status()).revision
    assert await count_puts(admin, b"w/", start, end) <= 1000
    assert (await admin.get(b"w/0999")).value == b"value-9999"
    assert len(leases.leases) == 1


async def test_unchanged_value_causes_no_write(admin) -> None:
    store = sync_store.SyncStore(admin, None, prefix=b"u/")
    async with running(store):
        store.upsert(b"u/a", b"same")
        await asyncio.wait_for(store.flush(), 10)
        revision = (await admin.status()).revision
        for _ in range(100):
            store.upsert(b"u/a", b"same")
        store.upsert(b"u/a", b"other")
        store.upsert(b"u/a", b"same")
        await asyncio.wait_for(store.flush(), 10)
        assert (await admin.status()).revision == revision
        assert store.puts == 1 and store.skipped >= 100


async def test_keys_spread_over_leases_of_at_most_the_cap(admin) -> None:
    leases = etcd_lease.LeasePool(admin, ttl=30, max_keys_per_lease=100)
    store = sync_store.SyncStore(admin, leases, prefix=b"m/")
    for i in range(250):
        store.upsert(f"m/{i}".encode(), b"v")
    async with running(leases, store):
        await asyncio.wait_for(store.flush(), 10)
    kvs = (await admin.list_prefix(b"m/")).kvs
    per_lease: dict[int, int] = {}
    for kv in kvs:
        per_lease[kv.lease] = per_lease.get(kv.lease, 0) + 1
    assert len(kvs) == 250 and 0 not in per_lease and max(per_lease.values()) <= 100


async def test_sync_sweeps_leftovers_then_writes_canary(admin) -> None:
    await admin.put(b"n/left-over", b"from an earlier run")
    await admin.put(b"n/kept", b"old value")
    leases = etcd_lease.LeasePool(admin, ttl=30)
    store = sync_store.SyncStore(admin, leases, prefix=b"n/", canary=(b"synced/n", lambda: b"2026-01-01T00:00:00Z"))
    store.upsert(b"n/kept", b"new value")
    store.mark_synced()
    async with running(leases, store):
        await asyncio.wait_for(store.synced.wait(), 10)
    assert await admin.get(b"n/left-over") is None
    assert (await admin.get(b"n/kept")).value == b"new value"
    canary = await admin.get(b"synced/n")
    assert canary is not None and canary.value == b"2026-01-01T00:00:00Z" and canary.lease != 0


async def test_delete_removes_key_and_lost_lease_republishes(admin) -> None:
    leases = etcd_lease.LeasePool(admin, ttl=3)
    store = sync_store.SyncStore(admin, leases, prefix=b"q/")
    async with running(leases, store):
        store.upsert(b"q/a", b"1")
        store.upsert(b"q/b", b"1")
        await asyncio.wait_for(store.flush(), 10)
        store.delete(b"q/b")
        await asyncio.wait_for(store.flush(), 10)
        assert await admin.get(b"q/b") is None
        (lease,) = leases.leases
        await admin.lease_revoke(lease)
        assert await admin.get(b"q/a") is None

        async def republished() -> bool:
            kv = await admin.get(b"q/a")
            return kv is not None and kv.lease != lease

        await eventually(republished, timeout=15)


async def test_restarted_writer_adopts_lease_and_rewrites_nothing(admin) -> None:
    first_leases = etcd_lease.LeasePool(admin, ttl=30)
    first = sync_store.SyncStore(admin, first_leases, prefix=b"r/")
    for i in range(10):
        first.upsert(f"r/{i}".encode(), b"v")
    async with running(first_leases, first):
        await asyncio.wait_for(first.flush(), 10)
    existing = (await admin.list_prefix(b"r/")).kvs
    (lease,) = {kv.lease for kv in existing}
    revision = (await admin.status()).revision

    leases = etcd_lease.LeasePool(admin, ttl=30)
    leases.adopt(lease, [kv.key for kv in existing])
    store = sync_store.SyncStore(admin, leases, prefix=b"r/")
    store.prime(existing)
    for i in range(10):
        store.upsert(f"r/{i}".encode(), b"v")
    async with running(leases, store):
        await asyncio.wait_for(store.flush(), 10)
        assert (await admin.status()).revision == revision
        assert leases.leases == [lease] and store.puts == 0
        store.upsert(b"r/new", b"v")
        await asyncio.wait_for(store.flush(), 10)
    assert (await admin.get(b"r/new")).lease == lease
