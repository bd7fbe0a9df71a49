"""The etcd client against a real etcd 3.5 with mutual TLS: every RPC we declared, on the real wire.

Covers: KV (get, paginated list at a pinned revision, put, delete, delete-prefix, transactions and their
limit, compaction), watch streams (events, progress, compaction error), unary lease calls, status, cluster-id
pinning across a different etcd behind the same address, and error translation.
Excludes: auth administration (test_access.py) and the stores built on the client (test_watch_store.py,
test_sync_store.py).
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from clustermesh import errors
from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import process as etcd_process
from clustermesh.etcd import watch as etcd_watch


@pytest.fixture
async def admin(etcd, certs_dir):
    c = await etcd_client.EtcdClient.connect(etcd.client_config(certs_dir.admin))
    yield c
    await c.close()


async def test_status_pins_cluster_id(admin: etcd_client.EtcdClient) -> None:
    status = await admin.status()
    assert status.version.startswith("3.5")
    assert admin.cluster_id == status.cluster_id != 0


async def test_put_get_delete(admin: etcd_client.EtcdClient) -> None:
    rev = await admin.put(b"t/a", b"1")
    kv = await admin.get(b"t/a")
    assert kv is not None and kv.value == b"1" and kv.mod_revision == rev
    assert await admin.delete(b"t/a") == 1
    assert await admin.get(b"t/a") is None


async def test_list_paginates_at_one_revision(admin: etcd_client.EtcdClient) -> None:
    for start in range(0, 1000, 128):
        chunk = range(start, min(start + 128, 1000))
        await admin.txn([etcd_client.put_op(f"p/{i:04}".encode(), b"x" * 300) for i in chunk])
    await admin.put(b"p0", b"sibling outside the prefix")
    result = await admin.list_prefix(b"p/", page_size=97)
    assert [kv.key for kv in result.kvs] == [f"p/{i:04}".encode() for i in range(1000)]
    assert await admin.count_prefix(b"p/") == 1000
    assert result.revision == (await admin.status()).revision


async def test_txn_compare_and_limit(admin: etcd_client.EtcdClient) -> None:
    create = [etcd_client.put_op(b"id/1", b"labels")]
    first = await admin.txn(create, compare=[etcd_client.version_equals(b"id/1", 0)])
    second = await admin.txn(create, compare=[etcd_client.version_equals(b"id/1", 0)])
    assert first.succeeded and not second.succeeded
    with pytest.raises(ValueError):
        await admin.txn([etcd_client.put_op(b"k", b"v")] * (etcd_client.MAX_TXN_OPS + 1))
    assert await admin.delete_prefix(b"id/") == 1


async def test_watch_delivers_events_and_progress(admin: etcd_client.EtcdClient) -> None:
    rev = await admin.put(b"w/a", b"1")
    watch = etcd_watch.Watch.prefix(admin, b"w/", start_revision=rev)
    seen: list[etcd_watch.WatchEvent] = []

    async def consume() -> None:
        async for batch in watch:
            seen.extend(batch.events)
            if len(seen) >= 3:
                return

    task = asyncio.create_task(consume())
    await admin.put(b"w/b", b"2")
    await admin.delete(b"w/a")
    await asyncio.wait_for(task, 10)
    assert [(e.type, e.key) for e in seen] == [
        (etcd_watch.EventType.PUT, b"w/a"), (etcd_watch.EventType.PUT, b"w/b"), (etcd_watch.EventType.DELETE, b"w/a")
    ]
    assert watch.next_revision == seen[-1].mod_revision + 1


async def test_idle_watch_advances_with_progress_notify(admin: etcd_client.EtcdClient) -> None:
    start = await admin.put(b"elsewhere", b"x")
    watch = etcd_watch.Watch.prefix(admin, b"idle/", start_revision=start + 1)
    await admin.put(b"elsewhere", b"y")

    async def first_progress() -> etcd_watch.WatchBatch:
        async for batch in watch:
            return batch
        raise AssertionError("watch ended")

    batch = await asyncio.wait_for(first_progress(), 15)
    assert batch.events == [] and watch.next_revision > start + 1


async def test_watch_from_compacted_revision_raises(admin: etcd_client.EtcdClient) -> None:
    first = await admin.put(b"c/a", b"1")
    last = await admin.put(b"c/a", b"2")
    await admin.compact(last)
    with pytest.raises(errors.Compacted) as info:
        async for _ in etcd_watch.Watch.prefix(admin, b"c/", start_revision=first):
            pass
    assert info.value.compact_revision == last


async def test_lease_grant_ttl_revoke(admin: etcd_client.EtcdClient) -> None:
    lease = await admin.lease_grant(30)
    await admin.put(b"l/a", b"1", lease=lease)
    assert 0 < await admin.lease_ttl(lease) <= 30
    await admin.lease_revoke(lease)
    assert await admin.get(b"l/a") is None
    assert await admin.lease_ttl(lease) == -1
    with pytest.raises(errors.LeaseExpired):
        await admin.put(b"l/b", b"1", lease=lease)


async def test_unreachable_endpoint_is_store_unavailable(certs_dir) -> None:
    config = etcd_client.EtcdConfig(endpoints=(f"https://127.0.0.1:{etcd_process.free_port()}",), tls=certs_dir.admin)
    with pytest.raises(errors.StoreUnavailable):
        await etcd_client.EtcdClient.connect(config, timeout=1)


async def test_other_etcd_behind_same_address_raises_cluster_id_changed(etcd, certs_dir, tmp_path) -> None:
    config = dataclasses.replace(etcd.client_config(certs_dir.admin), request_timeout=5)
    c = await etcd_client.EtcdClient.connect(config)
    try:
        await c.put(b"k", b"v")
        await etcd.stop()
        other = etcd_process.EtcdProcess(
            tmp_path / "other", name="other", server_tls=certs_dir.server,
            client_port=int(etcd.endpoint.rsplit(":", 1)[1]), peer_port=etcd_process.free_port(),
        )
        async with other:
            deadline = asyncio.get_running_loop().time() + 20
            while True:
                try:
                    await c.get(b"k")
                except errors.ClusterIDChanged as exc:
                    assert exc.expected != exc.got
                    break
                except errors.StoreUnavailable:
                    assert asyncio.get_running_loop().time() < deadline, "never reached the other etcd"
                    await asyncio.sleep(0.1)
    finally:
        await c.close()
