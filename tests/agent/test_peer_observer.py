"""PeerObserver fed with names and values, as a WatchStore hands them over: what reaches the cache and what is
rejected.

Covers: each kind decoded under its cache name (ipcache entries kept as the fields served); hand-written bad
records (wrong cluster, identity out of the peer's range, bad IP, truncated JSON, name/key mismatch, a key that
is not UTF-8) skipped, counted per peer and reason and logged with the key, never evicting the good value stored
under the same name; hypothesis-generated garbage never raising and never touching the cache; the codec's name
fast path agreeing with its full path on every outcome and reason; repeated values shared across a peer's
records; one string per name for the cache key and the record; deletes; the names held for the store (cached
and rejected) and a new store's sweep over them (a fake list page, the store's lowest seam); the bounded reason
table.
Excludes: etcd (test_remote_cluster.py runs the same observers behind real watches).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import hypothesis
import msgspec
import pytest
from hypothesis import strategies as st

from agent import cache as mesh_cache
from agent import peer_observer
from clustermesh import codec, keys, records
from clustermesh.api.etcd import rpc_pb2
from clustermesh.errors import DecodeError
from clustermesh.etcd import watch_store
from clustermesh.keys import Kind
from tests.agent.peer_harness import Published, cached_form, identity, ip_entry, node, record_key, service

CLUSTER = "cluster-b"
CLUSTER_ID = 2
BASE = CLUSTER_ID << 16


class Fixture:
    """One observer per kind for cluster-b (ID 2) over one cache, as a connection binds them; keys are handed
    over as a WatchStore does, by name."""

    def __init__(self, *, cached: bool = False) -> None:
        self.cache = mesh_cache.MeshCache()
        self.invalid = peer_observer.InvalidRecords()
        self.listed: list[Kind] = []
        self.observers = {}
        self.prefixes = {kind: keys.watch_prefix(kind, CLUSTER, cached=cached).encode() for kind in Kind}
        shared = peer_observer.Shared()
        for kind in Kind:
            observer = peer_observer.PeerObserver(
                kind, cluster=CLUSTER, cache=self.cache, invalid=self.invalid, clock=lambda: 0.0,
                on_listed=self.listed.append, shared=shared,
            )
            observer.bind(prefix=self.prefixes[kind], cluster_id=CLUSTER_ID, max_clusters=255)
            self.observers[kind] = observer

    def name(self, kind: Kind, key: str | bytes) -> str:
        key = key.encode() if isinstance(key, str) else key
        assert key.startswith(self.prefixes[kind]), "a store hands over only keys under its prefix"
        return watch_store.name_of(key, len(self.prefixes[kind]))

    def put(self, kind: Kind, key: str | bytes, value: bytes) -> None:
        self.observers[kind].on_upsert(self.name(kind, key), value)

    def delete(self, kind: Kind, key: str | bytes) -> None:
        self.observers[kind].on_delete(self.name(kind, key))

    def put_record(self, kind: Kind, record: Published, *, cached: bool = False) -> None:
        self.put(kind, record_key(CLUSTER, record, cached=cached), codec.encode(record))

    def names(self, kind: Kind) -> dict[str, mesh_cache.Record]:
        return {name: record for _, name, record in self.cache.items(kind, CLUSTER)}


@pytest.mark.parametrize("cached", [False, True])
def test_every_kind_is_cached_under_its_name(cached: bool) -> None:
    f = Fixture(cached=cached)
    good_node = node(CLUSTER, CLUSTER_ID, "n1", cidr="10.2.0.0/24")
    good_service = service(CLUSTER, CLUSTER_ID, "ns", "svc", ["10.2.0.10"])
    good_identity = identity(CLUSTER, BASE + 5, "web")
    good_ip = ip_entry("10.2.0.10", BASE + 5)
    cidr_ip = records.IPIdentityPair(ip="10.2.1.0", mask=bytes([255, 255, 255, 0]), id=2)
    export = records.ServiceExport(cluster=CLUSTER, namespace="ns", name="svc", type="ClusterSetIP",
                                   export_creation_timestamp="2026-01-01T00:00:00Z")
    f.put_record(Kind.NODES, good_node, cached=cached)
    f.put_record(Kind.SERVICES, good_service, cached=cached)
    f.put_record(Kind.IDENTITIES, good_identity, cached=cached)
    f.put_record(Kind.IPCACHE, good_ip, cached=cached)
    f.put_record(Kind.IPCACHE, cidr_ip, cached=cached)
    f.put_record(Kind.SERVICE_EXPORTS, export, cached=cached)
    assert f.names(Kind.NODES) == {"n1": good_node}
    assert f.names(Kind.SERVICES) == {"ns/svc": good_service}
    assert f.names(Kind.IDENTITIES) == {str(BASE + 5): good_identity}
    assert f.names(Kind.IPCACHE) == {"10.2.0.10": cached_form(good_ip), "10.2.1.0/24": cached_form(cidr_ip)}
    assert f.names(Kind.IPCACHE)["10.2.1.0/24"] == mesh_cache.IPCacheEntry(prefix="10.2.1.0/24", id=2)
    assert f.names(Kind.SERVICE_EXPORTS) == {"ns/svc": export}
    assert f.invalid.total == 0
    f.delete(Kind.NODES, record_key(CLUSTER, good_node, cached=cached))
    assert f.names(Kind.NODES) == {}
    f.observers[Kind.NODES].on_list_done()
    assert f.listed == [Kind.NODES]


def test_host_identity_is_read_as_remote_node() -> None:
    f = Fixture()
    f.put_record(Kind.IPCACHE, ip_entry("172.18.0.2", 1))
    assert f.names(Kind.IPCACHE)["172.18.0.2"].id == 6


N1 = keys.node_key(CLUSTER, "n1")
BAD = [
    (Kind.NODES, N1, codec.encode(node("cluster-x", CLUSTER_ID, "n1")), "unexpected cluster name"),
    (Kind.NODES, N1, codec.encode(node(CLUSTER, 9, "n1")), "unexpected cluster ID"),
    (Kind.NODES, N1, codec.encode(node(CLUSTER, CLUSTER_ID, "n2")), "name does not match key"),
    (Kind.NODES, N1, codec.encode(node(CLUSTER, CLUSTER_ID, "n1", ip="10.0.0.300")), "IPAddresses"),
    (Kind.SERVICES, keys.service_key(CLUSTER, "ns", "svc"), b'{"cluster":"cluster-b","namespace":"ns","na',
     "invalid value"),
    (Kind.SERVICES, keys.service_key(CLUSTER, "ns", "svc"),
     codec.encode(service(CLUSTER, CLUSTER_ID, "ns", "svc", ["fe80::1%eth0"])), "backends"),
    (Kind.IDENTITIES, keys.identity_key(3 << 16), codec.encode(identity(CLUSTER, 3 << 16, "x")),
     "does not belong to the allocation range"),
    (Kind.IDENTITIES, keys.identity_key(BASE + 1), b"k8s:app=x;", "could not find expected label"),
    (Kind.IPCACHE, keys.ip_key("10.2.0.9"), codec.encode(ip_entry("10.2.0.9", 5 << 16)),
     "does not belong to the allocation range"),
    (Kind.IPCACHE, keys.ip_key("10.2.0.9"), codec.encode(ip_entry("10.2.0.8", BASE + 1)), "IP does not match key"),
    (Kind.IPCACHE, keys.ip_key("10.2.0.9"), b"\xff\xfe", "invalid value"),
    (Kind.NODES, b"cilium/state/nodes/v1/cluster-b/\xff", b"{}", "key is not valid UTF-8"),
]


@pytest.mark.parametrize(("kind", "key", "value", "reason"), BAD, ids=[b[3] for b in BAD])
def test_bad_record_is_counted_logged_and_skipped(
    kind: Kind, key: str | bytes, value: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    f = Fixture()
    f.put(kind, key, value)
    assert f.names(kind) == {}
    assert f.invalid.total == 1
    ((category, count),) = f.invalid.by_reason()
    assert category.startswith(f"{kind.value}: ") and count == 1
    line = caplog.records[-1].getMessage()
    assert "event=peer.record.invalid" in line and "cluster=cluster-b" in line and reason in line
    assert (key if isinstance(key, str) else repr(key)) in line


def test_bad_update_never_evicts_the_good_value() -> None:
    f = Fixture()
    good = service(CLUSTER, CLUSTER_ID, "ns", "svc", ["10.2.0.10"])
    f.put_record(Kind.SERVICES, good)
    f.put(Kind.SERVICES, keys.service_key(CLUSTER, "ns", "svc"), b"{truncated")
    assert f.names(Kind.SERVICES) == {"ns/svc": good}
    newer = service(CLUSTER, CLUSTER_ID, "ns", "svc", ["10.2.0.11"])
    f.put_record(Kind.SERVICES, newer)
    assert f.names(Kind.SERVICES) == {"ns/svc": newer}
    # A delete needs no valid value.
    f.delete(Kind.SERVICES, keys.service_key(CLUSTER, "ns", "svc"))
    assert f.names(Kind.SERVICES) == {}


def test_reasons_are_categories_and_bounded() -> None:
    invalid = peer_observer.InvalidRecords(max_reasons=2)
    invalid.add(Kind.IPCACHE, "ID 5 does not belong to the allocation range of cluster ID 2")
    invalid.add(Kind.IPCACHE, "ID 70000 does not belong to the allocation range of cluster ID 2")
    invalid.add(Kind.NODES, "unexpected cluster name: got 'x', expected 'cluster-b'")
    invalid.add(Kind.NODES, "name does not match key: got 'a', expected 'b'")
    assert invalid.total == 4
    assert invalid.by_reason() == (
        ("ip: ID N does not belong to the allocation range of cluster ID N", 2),
        ("nodes: unexpected cluster name", 1),
        ("other", 1),
    )


def test_held_names_are_the_cached_and_the_rejected_ones() -> None:
    f = Fixture()
    observer = f.observers[Kind.NODES]
    f.put_record(Kind.NODES, node(CLUSTER, CLUSTER_ID, "n1"))
    f.put(Kind.NODES, keys.node_key(CLUSTER, "n1"), b"{truncated")  # the last good value stays: held once
    f.put(Kind.NODES, keys.node_key(CLUSTER, "bad"), b"{truncated")
    f.put(Kind.NODES, b"cilium/state/nodes/v1/cluster-b/\xff", b"{}")
    assert sorted(observer.names) == ["bad", "n1", "\udcff"] and len(observer.names) == 3
    assert "bad" in observer.names and "n2" not in observer.names and 7 not in observer.names
    f.put_record(Kind.NODES, node(CLUSTER, CLUSTER_ID, "bad"))  # fixed: cached, no longer rejected
    assert observer.names.rejected == {"\udcff"} and len(observer.names) == 3
    f.delete(Kind.NODES, keys.node_key(CLUSTER, "n1"))
    f.delete(Kind.NODES, b"cilium/state/nodes/v1/cluster-b/\xff")
    assert list(observer.names) == ["bad"] and f.names(Kind.NODES).keys() == {"bad"}


class PagedClient:
    """A WatchStore's lowest seam: one list page of fixed keys at one revision, then a watch that stays silent."""

    def __init__(self, pairs: dict[str, bytes], revision: int) -> None:
        self.pairs = pairs
        self.revision = revision
        self.watch_stub = self

    async def list_pages(self, prefix: bytes, **_: object) -> AsyncIterator[tuple[int, list[rpc_pb2.KeyValue]]]:
        yield self.revision, [rpc_pb2.KeyValue(key=key.encode(), value=value, mod_revision=self.revision)
                              for key, value in self.pairs.items() if key.encode().startswith(prefix)]

    def Watch(self, requests: object) -> PagedClient:  # etcd's method name, as the gRPC stub has it
        return self

    def __aiter__(self) -> PagedClient:
        return self

    async def __anext__(self) -> object:
        await asyncio.Event().wait()
        raise StopAsyncIteration

    def cancel(self) -> None:
        pass


async def test_a_store_taking_over_the_held_names_delivers_again_and_sweeps() -> None:
    # A new store for an observer that holds names (another etcd behind the endpoint: revisions mean nothing
    # any more): its first list delivers every key again and deletes what it does not return.
    f = Fixture()
    observer = f.observers[Kind.NODES]
    kept, gone = node(CLUSTER, CLUSTER_ID, "kept"), node(CLUSTER, CLUSTER_ID, "gone")
    f.put_record(Kind.NODES, kept)
    f.put_record(Kind.NODES, gone)
    f.put(Kind.NODES, keys.node_key(CLUSTER, "bad"), b"{truncated")
    newer = msgspec.structs.replace(kept, boot_id="rebooted")
    client = PagedClient({keys.node_key(CLUSTER, "kept"): codec.encode(newer)}, revision=3)
    store = watch_store.WatchStore(
        client, f.prefixes[Kind.NODES], observer, names=observer.names  # type: ignore[arg-type]
    )
    ready = asyncio.Event()
    running = asyncio.create_task(store.run(ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 5)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert f.names(Kind.NODES) == {"kept": newer} and list(observer.names) == ["kept"] and len(store) == 1
    assert f.listed == [Kind.NODES] and f.invalid.total == 1
    assert store.drain() == 1 and f.names(Kind.NODES) == {} and len(observer.names) == 0


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    kind=st.sampled_from(list(Kind)),
    suffix=st.binary(min_size=1, max_size=40),
    value=st.one_of(
        st.binary(max_size=200),
        st.dictionaries(st.text(max_size=10), st.one_of(st.text(max_size=10), st.integers(), st.none()))
        .map(msgspec.json.encode),
    ),
)
def test_garbage_never_raises_nor_touches_the_cache(kind: Kind, suffix: bytes, value: bytes) -> None:
    f = Fixture()
    good = node(CLUSTER, CLUSTER_ID, "n1")
    f.put_record(Kind.NODES, good)
    f.put(kind, keys.watch_prefix(kind, CLUSTER, cached=False).encode() + suffix, value)
    # Random bytes are (almost) never a valid record; if one is, it is cached, else counted.
    stored = sum(f.cache.count(CLUSTER, k) for k in Kind) - 1
    assert stored + f.invalid.total == 1
    assert f.names(Kind.NODES)["n1"] == good or kind is Kind.NODES


def test_invalid_record_log_line_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    f = Fixture()
    f.put(Kind.NODES, keys.node_key(CLUSTER, "n" * 1000), b"{}")
    assert len(caplog.records[-1].getMessage()) < 600


def _outcome(decode, *args, **kwargs) -> object:  # type: ignore[no-untyped-def]
    try:
        return decode(*args, **kwargs)
    except DecodeError as exc:
        return exc.reason


NAMES = st.one_of(st.sampled_from(["n1", "n/1", "", "/", "a/", "ns/svc", "ns/", "/svc", "ns/svc/x", "ns//svc"]),
                  st.text(max_size=12))
IPS = st.sampled_from(["10.2.0.9", "10.2.0.0", "::ffff:10.2.0.9", "010.2.0.9", "fd00::9", "fd00:0::9", "10.2.0.9%x",
                       "", "10.2.0.0/24", "10.2.0.9/32", "fd00::/64", "10.2.0.0//24", "/24"])


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(kind=st.sampled_from([Kind.NODES, Kind.SERVICES, Kind.SERVICE_EXPORTS]), name=NAMES,
                  record_name=st.sampled_from(["n1", "svc", "n/1", ""]), namespace=st.sampled_from(["ns", "", "a/b"]),
                  cached=st.booleans(), truncate=st.booleans())
def test_name_fast_path_agrees_with_the_full_path(
    kind: Kind, name: str, record_name: str, namespace: str, cached: bool, truncate: bool
) -> None:
    if kind is Kind.NODES:
        record: Published = node(CLUSTER, CLUSTER_ID, record_name)
        decode = codec.decode_node
        extra = {"cluster_id": CLUSTER_ID}
    elif kind is Kind.SERVICES:
        record = msgspec.structs.replace(service(CLUSTER, CLUSTER_ID, "ns", "svc", ["10.2.0.9"]), name=record_name,
                                         namespace=namespace)
        decode, extra = codec.decode_service, {"cluster_id": CLUSTER_ID}
    else:
        record = records.ServiceExport(cluster=CLUSTER, namespace=namespace, name=record_name, type="ClusterSetIP",
                                       export_creation_timestamp="2026-01-01T00:00:00Z")
        decode, extra = codec.decode_service_export, {}
    value = codec.encode(record)[: -3 if truncate else None]
    key = keys.watch_prefix(kind, CLUSTER, cached=cached) + name
    full = _outcome(decode, key, value, cluster=CLUSTER, **extra)
    assert _outcome(decode, key, value, cluster=CLUSTER, name=name, **extra) == full


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(key_ip=IPS, record_ip=IPS, mask=st.sampled_from([None, bytes([255, 255, 255, 0]), b"\xff"]),
                  number=st.sampled_from([BASE + 1, 6, 1, 5 << 16]), cached=st.booleans(), truncate=st.booleans())
def test_ip_name_fast_path_agrees_with_the_full_path(
    key_ip: str, record_ip: str, mask: bytes | None, number: int, cached: bool, truncate: bool
) -> None:
    value = codec.encode(records.IPIdentityPair(ip=record_ip, mask=mask, host_ip="172.18.0.2", id=number))
    value = value[: -3 if truncate else None]
    key = keys.watch_prefix(Kind.IPCACHE, CLUSTER, cached=cached) + key_ip
    args = {"cluster": CLUSTER, "cluster_id": CLUSTER_ID, "max_clusters": 255}
    full = _outcome(codec.decode_ip_identity, key, value, **args)
    assert _outcome(codec.decode_ip_identity, key, value, name=key_ip, **args) == full


def test_repeated_values_are_shared_across_a_peer() -> None:
    f = Fixture()
    ports = (records.NamedPort("http", 8080, "TCP"),)
    for ip in ("10.2.0.1", "10.2.0.2"):
        f.put_record(Kind.IPCACHE, msgspec.structs.replace(ip_entry(ip, BASE + 7), named_ports=ports))
    first, second = f.names(Kind.IPCACHE).values()
    assert isinstance(first, mesh_cache.IPCacheEntry) and isinstance(second, mesh_cache.IPCacheEntry)
    assert first.id is second.id
    f.put_record(Kind.IDENTITIES, identity(CLUSTER, BASE + 7, "web"))
    assert f.names(Kind.IDENTITIES)[str(BASE + 7)].id is first.id  # type: ignore[union-attr]
    for name in ("n1", "n2"):
        f.put_record(Kind.NODES, msgspec.structs.replace(
            node(CLUSTER, CLUSTER_ID, name, cidr=f"10.2.{name[1]}.0/24"), labels={"kubernetes.io/hostname": name}))
    n1, n2 = (f.names(Kind.NODES)[name] for name in ("n1", "n2"))
    assert n1 == msgspec.structs.replace(node(CLUSTER, CLUSTER_ID, "n1", cidr="10.2.1.0/24"),
                                         labels={"kubernetes.io/hostname": "n1"}), "sharing changes no value"
    assert n1.cluster is n2.cluster and n1.source is n2.source
    assert n1.ip_addresses[0].type is n2.ip_addresses[0].type
    assert n1.ipv4_alloc_cidr.mask is n2.ipv4_alloc_cidr.mask  # type: ignore[union-attr]
    assert next(iter(n1.labels)) is next(iter(n2.labels))  # type: ignore[arg-type]
    f.put_record(Kind.SERVICES, service(CLUSTER, CLUSTER_ID, "ns", "svc", ["10.2.0.1", "10.2.0.2", "10.2.0.3"]))
    backends = f.names(Kind.SERVICES)["ns/svc"].backends  # type: ignore[union-attr]
    assert len({id(ports) for ports in backends.values()}) == 1


def test_one_string_per_name_for_the_cache_key_and_the_record() -> None:
    f = Fixture()
    ip_name = f.name(Kind.IPCACHE, keys.ip_key("10.2.0.10"))
    f.observers[Kind.IPCACHE].on_upsert(ip_name, codec.encode(ip_entry("10.2.0.10", BASE + 5)))
    node_name = f.name(Kind.NODES, keys.node_key(CLUSTER, "n1"))
    f.observers[Kind.NODES].on_upsert(node_name, codec.encode(node(CLUSTER, CLUSTER_ID, "n1")))
    ((ip_key, entry),) = f.names(Kind.IPCACHE).items()
    ((node_key, cached_node),) = f.names(Kind.NODES).items()
    assert ip_key is ip_name and entry.prefix is ip_name  # type: ignore[union-attr]
    assert node_key is node_name and cached_node.name is node_name  # type: ignore[union-attr]


def test_an_ipcache_entry_is_served_with_its_own_prefix_text() -> None:
    # A writer printing an IPv4-mapped address (Go does not) is accepted under the key's canonical name; what
    # is served is the entry's own text, as before the cache kept only the served fields.
    f = Fixture()
    f.put(Kind.IPCACHE, keys.ip_key("10.2.0.9"), codec.encode(ip_entry("::ffff:10.2.0.9", BASE + 1)))
    assert f.names(Kind.IPCACHE)["10.2.0.9"] == mesh_cache.IPCacheEntry(
        prefix="::ffff:10.2.0.9", id=BASE + 1, host_ip="172.18.0.2", k8s_namespace="default", k8s_pod_name="p"
    )


def test_shared_values_are_bounded() -> None:
    shared = peer_observer.Shared(limit=2)
    one, two = (1000 + 1, 2000 + 2)
    assert shared(one) is one and shared(int("1001")) is one
    shared(two)
    shared(3000 + 3)  # over the limit: the table starts over
    assert shared(int("1001")) is not one
