"""SyncStore and LeasePool against a real etcd: coalescing, skipping unchanged values, leases, sweep, canary;
pipelining (a bounded number of transactions in flight, never two writes of one key in flight, a later write of
a key landing after an earlier one, failures and a lost lease while in flight, ClusterIDChanged ending run()).

Transactions are held and failed by wrapping the real client (GatedClient). Excludes: what the apiserver
publishes (tests/apiserver), reading (test_watch_store.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Sequence
from typing import Any, cast

import pytest

from clustermesh import errors
from clustermesh.aio import backoff
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


async def test_sweep_lists_only_keys_that_predate_the_session(admin) -> None:
    await admin.put(b"p/left-over", b"from an earlier run")
    leases = etcd_lease.LeasePool(admin, ttl=30)
    store = sync_store.SyncStore(admin, leases, prefix=b"p/", canary=(b"synced/p", lambda: b"now"))
    listed: list[int] = []
    list_prefix = admin.list_prefix

    async def recording_list(prefix: bytes, **kwargs: Any) -> etcd_client.ListResult:
        result = await list_prefix(prefix, **kwargs)
        listed.append(len(result.kvs))
        return result

    async with running(leases, store):
        for i in range(300):
            store.upsert(f"p/{i}".encode(), b"v")
        await asyncio.wait_for(store.flush(), 10)
        # Created by another writer during the session: documented as not swept (a later session sweeps it).
        await admin.put(b"p/foreign", b"written meanwhile")
        admin.list_prefix = recording_list
        try:
            store.mark_synced()
            await asyncio.wait_for(store.synced.wait(), 10)
        finally:
            del admin.list_prefix
    # The sweep listed the one key older than the session, not the 300 just written.
    assert listed == [1]
    assert await admin.get(b"p/left-over") is None
    assert await admin.get(b"p/foreign") is not None
    assert await admin.count_prefix(b"p/") == 301


async def test_lease_granted_ahead_takes_over_without_a_grant_on_the_write_path(admin) -> None:
    client = GatedClient(admin)
    grants = asyncio.Event()
    grants.set()
    lease_grant = admin.lease_grant

    async def gated_grant(ttl: int, **kwargs: Any) -> int:
        await grants.wait()
        return await lease_grant(ttl, **kwargs)

    client.lease_grant = gated_grant  # type: ignore[method-assign]
    leases = etcd_lease.LeasePool(cast(etcd_client.EtcdClient, client), ttl=30, max_keys_per_lease=10)
    async with running(leases):
        first = [await leases.lease_for(f"g/{i}".encode()) for i in range(5)]
        # Half full: run() grants the next lease ahead.
        await eventually(lambda: leases.spare != 0, timeout=5)
        spare = leases.spare
        grants.clear()
        # Every grant now blocks: the next lease must be the spare, taken without waiting for etcd.
        later = [await asyncio.wait_for(leases.lease_for(f"g/{i}".encode()), 5) for i in range(5, 15)]
        assert set(first) == set(later[:5]) and first[0] != spare
        assert later[5:] == [spare] * 5 and leases.leases == [first[0], spare] and leases.spare == 0
        grants.set()
        await eventually(lambda: leases.spare not in (0, spare), timeout=5)
        assert (await admin.lease_ttl(leases.spare)) > 0
        await leases.revoke_all()
    assert leases.leases == [] and leases.spare == 0


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


# --- pipelining: several transactions in flight, per-key order kept ---------------------------------------------


class GatedClient:
    """The real client, with its transactions held at gates and watched: how many are in flight, which keys.

    write() waits at `before` (not yet sent) and, once etcd has answered, at `after` (landed, not yet reported);
    a StoreError queued in `failures` fails the next transaction to pass `before`, unsent. Everything else
    delegates.
    """

    def __init__(self, client: etcd_client.EtcdClient) -> None:
        self._client = client
        self.before = asyncio.Event()
        self.after = asyncio.Event()
        self.before.set()
        self.after.set()
        self.failures: list[errors.StoreError] = []
        self.inflight = 0
        self.max_inflight = 0
        self.keys_inflight: collections.Counter[bytes] = collections.Counter()
        self.shared_keys: set[bytes] = set()
        self.sent: list[list[bytes]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._client, name)

    async def write(
        self, puts: Sequence[tuple[bytes, bytes, int]], deletes: Sequence[bytes] = (), **kwargs: Any
    ) -> int:
        keys = [key for key, _, _ in puts] + list(deletes)
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        self.shared_keys.update(key for key in keys if self.keys_inflight[key])
        self.keys_inflight.update(keys)
        try:
            await self.before.wait()
            if self.failures:
                raise self.failures.pop(0)
            self.sent.append(keys)
            revision = await self._client.write(puts, deletes, **kwargs)
            await self.after.wait()
            return revision
        finally:
            self.inflight -= 1
            self.keys_inflight.subtract(keys)


def gated_store(
    gated: GatedClient,
    leases: etcd_lease.LeasePool | None,
    *,
    prefix: bytes,
    canary: tuple[bytes, Callable[[], bytes]] | None = None,
    retry: backoff.Backoff | None = None,
    max_inflight: int = sync_store.DEFAULT_MAX_INFLIGHT,
) -> sync_store.SyncStore:
    """A SyncStore writing through gated, which stands in for the client it wraps."""
    client = cast(etcd_client.EtcdClient, gated)
    return sync_store.SyncStore(client, leases, prefix=prefix, canary=canary, retry=retry, max_inflight=max_inflight)


async def put_values(client: etcd_client.EtcdClient, key: bytes, start: int, end: int) -> list[bytes]:
    """The values key was put with in revisions [start, end], in order, from etcd's history."""
    values: list[bytes] = []

    async def consume() -> None:
        async for batch in etcd_watch.Watch.prefix(client, key, start_revision=start, progress_notify=False):
            values.extend(e.value for e in batch.events if e.key == key and e.type is etcd_watch.EventType.PUT)
            if batch.revision >= end and (not batch.events or batch.events[-1].mod_revision >= end):
                return

    await asyncio.wait_for(consume(), 10)
    return values


def fast_retry() -> backoff.Backoff:
    return backoff.Backoff(initial=0.01, maximum=0.02)


async def test_transactions_in_flight_are_bounded_and_never_share_a_key(admin) -> None:
    gated = GatedClient(admin)
    gated.before.clear()
    store = gated_store(gated, None, prefix=b"p/", max_inflight=3)
    for i in range(1000):
        store.upsert(f"p/{i:04}".encode(), b"1")
    async with running(store):
        await eventually(lambda: gated.inflight == 3)
        # Keys in flight written again: queued behind their transaction, not sent alongside it.
        for i in range(0, 1000, 7):
            store.upsert(f"p/{i:04}".encode(), b"2")
        for _ in range(10):
            await asyncio.sleep(0)
        assert store.inflight == 3 and gated.inflight == 3
        gated.before.set()
        await asyncio.wait_for(store.flush(), 20)
    assert gated.max_inflight == 3 and not gated.shared_keys
    assert all(len(keys) <= etcd_client.MAX_TXN_OPS for keys in gated.sent)
    kvs = {kv.key: kv.value for kv in (await admin.list_prefix(b"p/")).kvs}
    assert kvs == {f"p/{i:04}".encode(): b"2" if i % 7 == 0 else b"1" for i in range(1000)}


async def test_later_write_of_a_key_lands_after_the_one_in_flight(admin) -> None:
    gated = GatedClient(admin)
    store = gated_store(gated, None, prefix=b"o/")
    start = (await admin.status()).revision + 1
    gated.after.clear()
    async with running(store):
        store.upsert(b"o/k", b"first")
        await eventually(lambda: gated.sent == [[b"o/k"]])
        # The first put has landed in etcd but the store has not heard back yet: the second must wait.
        store.upsert(b"o/k", b"second")
        store.upsert(b"o/other", b"x")
        await eventually(lambda: [b"o/other"] in gated.sent)
        assert [b"o/k"] == gated.sent[0] and store.pending == 1
        gated.after.set()
        await asyncio.wait_for(store.flush(), 10)
    end = (await admin.status()).revision
    assert await put_values(admin, b"o/k", start, end) == [b"first", b"second"]
    assert not gated.shared_keys and store.puts == 3


async def test_upsert_of_the_value_in_flight_is_skipped_and_delete_in_flight_is_kept(admin) -> None:
    gated = GatedClient(admin)
    gated.before.clear()
    store = gated_store(gated, None, prefix=b"s/")
    async with running(store):
        store.upsert(b"s/a", b"1")
        await eventually(lambda: gated.inflight == 1)
        store.upsert(b"s/a", b"2")
        store.upsert(b"s/a", b"1")  # back to what the transaction in flight writes: nothing more to do
        assert store.pending == 0 and store.skipped == 1
        store.upsert(b"s/b", b"1")
        await eventually(lambda: gated.inflight == 2)
        store.delete(b"s/b")  # its first put is still in flight: the delete must follow it
        assert store.pending == 1
        gated.before.set()
        await asyncio.wait_for(store.flush(), 10)
    assert (await admin.get(b"s/a")).value == b"1"
    assert await admin.get(b"s/b") is None
    assert (store.puts, store.deletes) == (2, 1)


async def test_failed_transaction_is_queued_again_and_the_latest_value_wins(admin) -> None:
    gated = GatedClient(admin)
    gated.before.clear()
    gated.failures.append(errors.StoreUnavailable("injected"))
    store = gated_store(gated, None, prefix=b"f/", retry=fast_retry())
    start = (await admin.status()).revision + 1
    async with running(store):
        store.upsert(b"f/k", b"old")
        await eventually(lambda: gated.inflight == 1)
        store.upsert(b"f/k", b"new")  # queued behind the transaction in flight, which then fails
        gated.before.set()
        await asyncio.wait_for(store.flush(), 10)
    end = (await admin.status()).revision
    assert await put_values(admin, b"f/k", start, end) == [b"new"]
    assert store.puts == 1 and store.failures == 1 and store.last_error.endswith("injected")


async def test_cluster_id_changed_ends_run_and_cancels_the_transactions_in_flight(admin) -> None:
    gated = GatedClient(admin)
    gated.after.clear()
    store = gated_store(gated, None, prefix=b"c/")
    for i in range(500):
        store.upsert(f"c/{i:03}".encode(), b"v")
    gated.failures.append(errors.ClusterIDChanged(1, 2))
    with pytest.raises(errors.ClusterIDChanged):
        await asyncio.wait_for(store.run(), 10)
    # The others were cancelled while in flight: nothing stays in flight, nothing counts as written (what etcd
    # holds is void), every key is queued again, and run() may be called anew.
    assert store.inflight == 0 and gated.inflight == 0 and len(gated.sent) == 3
    assert store.pending == 500 and store.puts == 0 and store.failures == 0
    gated.after.set()
    async with running(store):
        await asyncio.wait_for(store.flush(), 10)
    assert len((await admin.list_prefix(b"c/")).kvs) == 500


async def test_sync_waits_for_every_transaction_in_flight(admin) -> None:
    await admin.put(b"y/left-over", b"from an earlier run")
    gated = GatedClient(admin)
    gated.after.clear()
    store = gated_store(gated, None, prefix=b"y/", canary=(b"synced/y", lambda: b"2026-01-01T00:00:00Z"))
    for i in range(600):
        store.upsert(f"y/{i:03}".encode(), b"v")
    store.mark_synced()
    async with running(store):
        await eventually(lambda: gated.inflight == sync_store.DEFAULT_MAX_INFLIGHT)
        assert not store.synced.is_set() and await admin.get(b"synced/y") is None
        gated.after.set()
        await asyncio.wait_for(store.synced.wait(), 10)
    assert await admin.get(b"y/left-over") is None
    assert len((await admin.list_prefix(b"y/")).kvs) == 600
    assert await admin.get(b"synced/y") is not None


async def test_put_landing_on_a_lease_lost_meanwhile_is_written_again(admin) -> None:
    gated = GatedClient(admin)
    leases = etcd_lease.LeasePool(admin, ttl=30)
    store = gated_store(gated, leases, prefix=b"l/", retry=fast_retry())
    async with running(leases, store):
        store.upsert(b"l/a", b"1")
        await asyncio.wait_for(store.flush(), 10)
        (lease,) = leases.leases
        gated.after.clear()
        store.upsert(b"l/b", b"1")
        await eventually(lambda: gated.sent[-1] == [b"l/b"])
        # l/b has landed on the lease, but the store has not heard back when the lease is found gone.
        await admin.lease_revoke(lease)
        await leases.verify()
        gated.after.set()

        async def both_on_a_new_lease() -> bool:
            kvs = (await admin.list_prefix(b"l/")).kvs
            return {kv.key for kv in kvs} == {b"l/a", b"l/b"} and all(kv.lease not in (0, lease) for kv in kvs)

        await eventually(both_on_a_new_lease, timeout=10)
        await asyncio.wait_for(store.flush(), 10)
        # What the store believes etcd holds matches etcd: the same values are not written again.
        puts = store.puts
        store.upsert(b"l/a", b"1")
        store.upsert(b"l/b", b"1")
        assert store.pending == 0 and store.puts == puts


def test_max_inflight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_inflight"):
        sync_store.SyncStore(cast(etcd_client.EtcdClient, object()), None, prefix=b"x/", max_inflight=0)


async def test_delete_in_flight_when_its_lease_is_lost_is_not_undone(admin) -> None:
    gated = GatedClient(admin)
    leases = etcd_lease.LeasePool(admin, ttl=30)
    store = gated_store(gated, leases, prefix=b"d/", retry=fast_retry())
    async with running(leases, store):
        store.upsert(b"d/a", b"1")
        store.upsert(b"d/b", b"1")
        await asyncio.wait_for(store.flush(), 10)
        (lease,) = leases.leases
        gated.after.clear()
        store.delete(b"d/a")
        await eventually(lambda: gated.sent[-1] == [b"d/a"])
        await admin.lease_revoke(lease)
        await leases.verify()
        gated.after.set()

        async def b_republished() -> bool:
            kv = await admin.get(b"d/b")
            return kv is not None and kv.lease != lease

        await eventually(b_republished, timeout=10)
        await asyncio.wait_for(store.flush(), 10)
    assert await admin.get(b"d/a") is None
