"""PeerObserver fed with raw keys and values, as a WatchStore would: what reaches the cache and what is rejected.

Covers: each kind decoded under its cache name; hand-written bad records (wrong cluster, identity out of the
peer's range, bad IP, truncated JSON, name/key mismatch, a key that is not UTF-8) skipped, counted per peer and
reason and logged with the key, never evicting the good value stored under the same name; hypothesis-generated
garbage never raising and never touching the cache; the codec's name fast path agreeing with its full path on
every outcome and reason; repeated values shared across a peer's records; deletes; the full-resync sweep; the
bounded reason table.
Excludes: etcd (test_remote_cluster.py runs the same observers behind real watches).
"""

from __future__ import annotations

import logging

import hypothesis
import msgspec
import pytest
from hypothesis import strategies as st

from agent import cache as mesh_cache
from agent import peer_observer
from clustermesh import codec, keys, records
from clustermesh.errors import DecodeError
from clustermesh.keys import Kind
from tests.agent.test_peer_harness import identity, ip_entry, node, record_key, service

CLUSTER = "cluster-b"
CLUSTER_ID = 2
BASE = CLUSTER_ID << 16


class Fixture:
    """One observer per kind for cluster-b (ID 2) over one cache, as a connection binds them."""

    def __init__(self, *, cached: bool = False) -> None:
        self.cache = mesh_cache.MeshCache()
        self.invalid = peer_observer.InvalidRecords()
        self.listed: list[Kind] = []
        self.observers = {}
        for kind in Kind:
            observer = peer_observer.PeerObserver(
                kind, cluster=CLUSTER, cache=self.cache, invalid=self.invalid, clock=lambda: 0.0,
                on_listed=self.listed.append,
            )
            observer.bind(prefix=keys.watch_prefix(kind, CLUSTER, cached=cached).encode(), cluster_id=CLUSTER_ID,
                          max_clusters=255)
            self.observers[kind] = observer

    def put(self, kind: Kind, key: str | bytes, value: bytes) -> None:
        self.observers[kind].on_upsert(key.encode() if isinstance(key, str) else key, value)

    def put_record(self, kind: Kind, record: mesh_cache.Record, *, cached: bool = False) -> None:
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
    assert f.names(Kind.IPCACHE) == {"10.2.0.10": good_ip, "10.2.1.0/24": cidr_ip}
    assert f.names(Kind.SERVICE_EXPORTS) == {"ns/svc": export}
    assert f.invalid.total == 0
    f.observers[Kind.NODES].on_delete(record_key(CLUSTER, good_node, cached=cached).encode())
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
    f.observers[Kind.SERVICES].on_delete(keys.service_key(CLUSTER, "ns", "svc").encode())
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


def test_full_resync_sweeps_what_the_new_list_does_not_deliver() -> None:
    f = Fixture()
    kept, gone = node(CLUSTER, CLUSTER_ID, "kept"), node(CLUSTER, CLUSTER_ID, "gone")
    f.put_record(Kind.NODES, kept)
    f.put_record(Kind.NODES, gone)
    observer = f.observers[Kind.NODES]
    observer.begin_full_resync()
    f.put_record(Kind.NODES, kept)
    assert f.names(Kind.NODES).keys() == {"kept", "gone"}
    observer.on_list_done()
    assert f.names(Kind.NODES) == {"kept": kept}
    assert observer.drain_rest() == 1 and f.names(Kind.NODES) == {}


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
        record: mesh_cache.Record = node(CLUSTER, CLUSTER_ID, record_name)
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
    assert first.named_ports == ports and first.named_ports is second.named_ports
    assert first.id is second.id
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


def test_shared_values_are_bounded() -> None:
    shared = peer_observer.Shared(limit=2)
    one, two = (1000 + 1, 2000 + 2)
    assert shared(one) is one and shared(int("1001")) is one
    shared(two)
    shared(3000 + 3)  # over the limit: the table starts over
    assert shared(int("1001")) is not one
