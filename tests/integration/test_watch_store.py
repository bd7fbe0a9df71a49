"""WatchStore against a real etcd: the consumer always ends with exactly the server's state.

Covers: initial list + watch, every change seen, by name (keys that are not UTF-8 included, the name one
string shared with the observer); a disconnect (through a TCP proxy that cuts the connection, and an etcd
kill+restart) during which keys are deleted and changed — deletes are delivered after the relist, and only
what changed is delivered again (lists paged); compaction past the consumer's revision while it is
disconnected; sibling prefixes never leak in; drain; misuse.
Excludes: validation of values (the agent's job), the writer (test_sync_store.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import pytest

from clustermesh.aio import backoff, tcp_proxy
from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import watch_store
from tests.helpers import eventually


class RecordingObserver:
    """Applies events to a dict of names and records every delete, so tests can assert deletes were delivered."""

    def __init__(self) -> None:
        self.state: dict[str, bytes] = {}
        self.upserted: list[str] = []
        self.deleted: list[str] = []
        self.list_done = 0

    def on_upsert(self, name: str, value: bytes) -> None:
        self.state[name] = value
        self.upserted.append(name)

    def on_delete(self, name: str) -> None:
        assert name in self.state, f"delete for unknown name {name!r}"
        del self.state[name]
        self.deleted.append(name)

    def on_list_done(self) -> None:
        self.list_done += 1


async def server_state(client: etcd_client.EtcdClient, prefix: bytes) -> dict[str, bytes]:
    """The prefix's keys and values in etcd, by the names a store hands its observer."""
    return {watch_store.name_of(kv.key, len(prefix)): kv.value for kv in (await client.list_prefix(prefix)).kvs}


@contextlib.asynccontextmanager
async def running(store: watch_store.WatchStore):
    task = asyncio.create_task(store.run(), name=f"watch {store.name}")
    try:
        await asyncio.wait_for(store.synced.wait(), 15)
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def admin(etcd, certs_dir):
    c = await etcd_client.EtcdClient.connect(etcd.client_config(certs_dir.admin))
    yield c
    await c.close()


@pytest.fixture
async def proxy(etcd):
    host, port = etcd.endpoint.removeprefix("https://").rsplit(":", 1)
    p = tcp_proxy.TCPProxy(host, int(port))
    ready = asyncio.Event()
    task = asyncio.create_task(p.run(ready=ready))
    await ready.wait()
    yield p
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
async def proxied(proxy, etcd, certs_dir):
    config = dataclasses.replace(
        etcd.client_config(certs_dir.admin), endpoints=(f"https://{proxy.address}",), server_name="localhost",
        keepalive_time=1, keepalive_timeout=1, initial_reconnect_backoff=0.05, max_reconnect_backoff=0.2,
        request_timeout=3,
    )
    c = await etcd_client.EtcdClient.connect(config)
    yield c
    await c.close()


def fast_retry() -> backoff.Backoff:
    return backoff.Backoff(initial=0.05, maximum=0.2)


async def test_list_then_watch_sees_every_change(admin) -> None:
    await admin.put(b"s/a", b"1")
    await admin.put(b"s/b", b"1")
    await admin.put(b"s-sibling/x", b"never seen")
    observer = RecordingObserver()
    store = watch_store.WatchStore(admin, b"s/", observer)
    async with running(store):
        assert observer.state == {"a": b"1", "b": b"1"} and observer.list_done == 1
        await admin.put(b"s/c", b"2")
        await admin.put(b"s/a", b"3")
        await admin.delete(b"s/b")
        await admin.put(b"s-sibling/y", b"never seen")
        await eventually(lambda: observer.state == {"a": b"3", "c": b"2"})
        assert observer.deleted == ["b"]
    assert "state=stopped" in repr(store) and len(store) == 2


async def test_deletes_while_disconnected_are_delivered_after_relist(admin, proxied, proxy) -> None:
    for i in range(50):
        await admin.put(f"d/{i}".encode(), b"v1")
    observer = RecordingObserver()
    store = watch_store.WatchStore(proxied, b"d/", observer, retry=fast_retry())
    async with running(store):
        proxy.set_mode(tcp_proxy.Mode.REJECT)
        await eventually(lambda: store.state is not watch_store.State.WATCHING)
        for i in range(0, 50, 2):
            await admin.delete(f"d/{i}".encode())
        await admin.put(b"d/1", b"v2")
        await admin.put(b"d/new", b"v1")
        lists_before = store.lists
        proxy.set_mode(tcp_proxy.Mode.FORWARD)
        await eventually(lambda: store.lists > lists_before and store.state is watch_store.State.WATCHING)
        expected = await server_state(admin, b"d/")
        await eventually(lambda: observer.state == expected, timeout=10)
        assert sorted(observer.deleted) == sorted(str(i) for i in range(0, 50, 2))
        assert observer.state["1"] == b"v2"


async def test_relist_delivers_only_what_changed(admin, proxied, proxy) -> None:
    for i in range(30):
        await admin.put(f"p/{i:02}".encode(), b"v1")
    observer = RecordingObserver()
    store = watch_store.WatchStore(proxied, b"p/", observer, page_size=7, retry=fast_retry())
    async with running(store):
        assert sorted(observer.upserted) == sorted(f"{i:02}" for i in range(30)), "5 pages, once each"
        assert b"p/03" in store and b"p/99" not in store and b"q/03" not in store
        await admin.put(b"p/01", b"v2")  # through the watch: the store's revision moves past it
        await eventually(lambda: observer.state["01"] == b"v2")
        proxy.set_mode(tcp_proxy.Mode.REJECT)
        await eventually(lambda: store.state is not watch_store.State.WATCHING)
        observer.upserted.clear()
        await admin.put(b"p/02", b"v2")
        await admin.delete(b"p/03")
        await admin.put(b"p/new", b"v1")
        lists_before = store.lists
        proxy.set_mode(tcp_proxy.Mode.FORWARD)
        await eventually(lambda: store.lists > lists_before and store.state is watch_store.State.WATCHING)
        assert observer.state == await server_state(admin, b"p/")
        assert sorted(observer.upserted) == ["02", "new"], "unchanged keys are not delivered again"
        assert observer.deleted == ["03"] and len(store) == 30


async def test_compaction_while_disconnected_relists_and_sweeps(admin, proxied, proxy) -> None:
    for i in range(20):
        await admin.put(f"k/{i}".encode(), b"v")
    observer = RecordingObserver()
    store = watch_store.WatchStore(proxied, b"k/", observer, retry=fast_retry())
    async with running(store):
        proxy.set_mode(tcp_proxy.Mode.REJECT)
        await eventually(lambda: store.state is not watch_store.State.WATCHING)
        for round_ in range(5):
            for i in range(20):
                await admin.put(f"k/{i}".encode(), f"v{round_}".encode())
        await admin.delete_prefix(b"k/1")
        rev = await admin.put(b"k/0", b"final")
        await admin.compact(rev)
        proxy.set_mode(tcp_proxy.Mode.FORWARD)
        expected = await server_state(admin, b"k/")
        await eventually(lambda: observer.state == expected, timeout=10)
        assert set(observer.deleted) == {"1"} | {str(i) for i in range(10, 20)}


async def test_etcd_restart_converges(admin, etcd, certs_dir) -> None:
    config = dataclasses.replace(etcd.client_config(certs_dir.admin), initial_reconnect_backoff=0.05,
                                 max_reconnect_backoff=0.3, request_timeout=3)
    reader = await etcd_client.EtcdClient.connect(config)
    try:
        for i in range(10):
            await admin.put(f"r/{i}".encode(), b"v")
        observer = RecordingObserver()
        store = watch_store.WatchStore(reader, b"r/", observer, retry=fast_retry())
        async with running(store):
            await etcd.kill()
            await etcd.restart()
            writer = await etcd_client.EtcdClient.connect(etcd.client_config(certs_dir.admin))
            try:
                await writer.delete(b"r/3")
                await writer.put(b"r/4", b"changed")
                expected = await server_state(writer, b"r/")
            finally:
                await writer.close()
            await eventually(lambda: observer.state == expected, timeout=15)
            assert "3" in observer.deleted
    finally:
        await reader.close()


async def test_names_are_handed_over_once_decoded_and_any_bytes_round_trip(admin) -> None:
    # A key that is not UTF-8 is still mirrored (as lone surrogates): its delete is delivered like any other.
    odd = b"u/caf\xe9"
    await admin.put(odd, b"1")
    await admin.put("u/café".encode(), b"2")
    observer = RecordingObserver()
    store = watch_store.WatchStore(admin, b"u/", observer)
    async with running(store):
        assert observer.state == {"caf\udce9": b"1", "café": b"2"} and odd in store
        assert watch_store.key_of(b"u/", "caf\udce9") == odd
        await admin.delete(odd)
        await eventually(lambda: observer.deleted == ["caf\udce9"])
    # One string per name: what the observer keeps is what the store remembers, not a copy.
    (handed,) = observer.state
    assert next(iter(store._known)) is handed


async def test_drain_only_when_stopped(admin) -> None:
    await admin.put(b"x/a", b"1")
    observer = RecordingObserver()
    store = watch_store.WatchStore(admin, b"x/", observer)
    async with running(store):
        with pytest.raises(RuntimeError):
            store.drain()
        with pytest.raises(RuntimeError):
            await store.run()
    assert store.drain() == 1
    assert observer.state == {} and observer.deleted == ["a"]


def test_prefix_must_end_with_slash() -> None:
    with pytest.raises(ValueError):
        watch_store.WatchStore(None, b"cilium/state/nodes/v1/cluster-a", RecordingObserver())  # type: ignore[arg-type]
